/* SPDX-License-Identifier: MIT */
/*
 * Cached answers of the front (README, "Cached answers"). A worker marks a
 * final answer with the header `X-Tempest-Cache: <ms>`; the front stores
 * it in Redis with that time-to-live and serves identical GET requests
 * from there, without a job. Keys (<ns> is the node's namespace):
 *
 *   tempest:<ns>:cache:<h>      the answer `[status, headers, body]`, or
 *                               `{"vary": [names]}` when it has a Vary
 *   tempest:<ns>:cache:<h>:<v>  the answer for one set of Vary values
 *
 * <h> is 32 hex digits of SHA-256 over the queue, the Host header and the
 * request URI; <v> over the Vary headers' names and values. Both with PX.
 */
#ifndef TEMPEST_CACHE_H
#define TEMPEST_CACHE_H

#include <jansson.h>
#include <stdbool.h>
#include <tempest/tempest.h>

#include "codec.h"

struct evhttp_request;

typedef struct tp_cache tp_cache;
typedef struct tp_cache_lookup tp_cache_lookup;

/** The answer header that marks an answer cacheable (stripped). */
#define TP_CACHE_MARKER "X-Tempest-Cache"

/** A lookup's outcome: the stored answer (borrowed, valid during the call)
 *  or NULL on a miss (or a failed read). */
typedef void tp_cache_fn(json_t *answer, void *arg);

/** The front's cache from its options: *out is NULL when the cache is
 *  off. `queue` is copied. Returns 0 or TEMPEST_ENOMEM with `err` set. */
int tp_cache_new(struct tempest_node *node, const tempest_front_options *o, const char *queue,
                 tp_cache **out, tempest_error *err);

void tp_cache_free(tp_cache *c);

/**
 * Starts reading the entry of `req` (borrowed; must live until `fn` runs
 * or the lookup is cancelled). Returns NULL when there is nothing to look
 * up (`c` NULL, not a GET, Redis down, no memory): queue the job at once.
 * Otherwise `fn` runs once, from a Redis reply, unless cancelled first.
 */
tp_cache_lookup *tp_cache_lookup_start(tp_cache *c, struct evhttp_request *req, tp_cache_fn *fn,
                                       void *arg);

/** Drops a lookup whose request went away; NULL does nothing. */
void tp_cache_lookup_cancel(tp_cache_lookup *l);

/**
 * A final, whole answer `a` for `req`, whose headers the front has already
 * set (without the marker): stores it when it is marked and may be cached,
 * adds an ETag header (SHA-256 of the body) to it and to the response when
 * the worker gave none, and answers 304 itself when the request's
 * If-None-Match matches the ETag of a 200. Returns true when it answered.
 * `c` NULL: does nothing (false).
 */
bool tp_cache_final(tp_cache *c, struct evhttp_request *req, const tp_http_answer *a);

/** True for the marker's name, in any case. */
bool tp_cache_is_marker(const char *name);

#endif
