/* SPDX-License-Identifier: MIT */
/*
 * Header deadline for an evhttp server: a connection must deliver a whole
 * request (request line and headers) within a time limit, counted from
 * the connection's start or from the end of its previous response. evhttp
 * only has idle timeouts, which a client sending one byte at a time (slow
 * loris) never trips.
 */
#ifndef TEMPEST_GUARD_H
#define TEMPEST_GUARD_H

#include <stdbool.h>
#include <stddef.h>

struct event;
struct event_base;
struct evhttp;
struct evhttp_request;

typedef struct tp_guard tp_guard;

/** Installs the guard on `http` (it creates the connections' bufferevents
 *  through evhttp_set_bevcb). NULL on no memory. */
tp_guard *tp_guard_new(struct event_base *base, struct evhttp *http, int timeout_ms);

/** A complete request arrived: its connection is exempt until the reply
 *  has been sent (then its deadline starts again). */
void tp_guard_request(tp_guard *g, struct evhttp_request *req);

/** Connections cut for missing their deadline so far. */
size_t tp_guard_cut(const tp_guard *g);

/**
 * For a connection whose reply is pending (evhttp does not read it then, so
 * it would notice a departed client only at its next write): peeks at the
 * socket. Returns true when the client is gone (end of file or an error).
 * On data (a pipelined request, left for evhttp) it stops `watcher` and
 * returns false; on nothing to read, false.
 */
bool tp_client_gone(int fd, struct event *watcher);

/** Frees the guard; call after evhttp_free(). NULL does nothing. */
void tp_guard_free(tp_guard *g);

#endif
