/* SPDX-License-Identifier: MIT */
/*
 * Server-Sent Events at the front: `GET /sub/<channel>` becomes a
 * `text/event-stream` response fed by one subscriber per channel (so any
 * number of local streams of a channel cost one SUBSCRIBE), with keep-alive
 * comments, an output cap per stream, a cap on concurrent streams and, with
 * the `history` option, ids and `Last-Event-ID` resume from the channel's
 * history stream `{<channel>}:history`. Private to front.c.
 */
#ifndef TEMPEST_SSE_H
#define TEMPEST_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <tempest/front.h>

struct evhttp_request;

typedef struct tp_sse tp_sse;

/** Creates the SSE part of a front on `node` (borrowed) with the SSE fields
 *  of `o`. NULL with `err` filled (TEMPEST_EINVAL, TEMPEST_ENOMEM). */
tp_sse *tp_sse_new(tempest_node *node, const tempest_front_options *o, tempest_error *err);

/** Takes `req` when it is `GET /sub/...` (answers it: a stream, 404 or 503)
 *  and returns true; returns false, untouched, for any other request. */
bool tp_sse_handle(tp_sse *s, struct evhttp_request *req);

/** Streams open now. */
size_t tp_sse_streams(const tp_sse *s);

/** Streams dropped so far because their output passed the cap. */
unsigned long long tp_sse_dropped(const tp_sse *s);

/** Forgets every stream (their connections stay for evhttp_free to close)
 *  and unsubscribes every channel. NULL does nothing. */
void tp_sse_free(tp_sse *s);

#endif
