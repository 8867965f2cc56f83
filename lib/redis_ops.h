/* SPDX-License-Identifier: MIT */
/*
 * The interface between a tp_redis handle and what is behind its URL.
 * lib/redis.c picks one operation table from the URL (one server, a
 * Sentinel-resolved master, or the masters of a Redis Cluster) and does
 * everything else itself: the owner's callback, the state and error text
 * callers read, and the formatting of commands, which reach the
 * implementation in RESP form.
 *
 * An implementation never calls its handle by name: it tells its state
 * through the state_fn of the options it was opened with (whose `arg` and
 * `handle` are the tp_redis), and every context it hands to a reply
 * callback has a tp_redis_link whose `handle` is the tp_redis (lib/redis_conn.h).
 */
#ifndef TEMPEST_REDIS_OPS_H
#define TEMPEST_REDIS_OPS_H

#include "redis_conn.h"

typedef struct tp_redis_ops {
    /* Starts connecting; `o` is borrowed for the call. NULL when out of
     * memory. A connect that fails at once may tell state_fn already. */
    void *(*open)(struct event_base *base, const tp_redis_conn_options *o);
    /* Frees it: pending callbacks get a NULL reply, in a context whose
     * data is NULL (tp_redis_from() is NULL). */
    void (*close)(void *impl);
    /* Sends a RESP command (NUL-terminated, borrowed for the call): 0, and
     * the callback runs exactly once (for a subscription: for every
     * message), or a negative code and it never runs. */
    int (*send)(void *impl, redisCallbackFn *fn, void *privdata, const char *cmd, size_t len);
    /* Writes what is queued now, without waiting. */
    void (*flush)(void *impl);
    /* The SHA1 of script number `script` (enum tp_script). */
    const char *(*sha)(const void *impl, int script);
} tp_redis_ops;

extern const tp_redis_ops tp_redis_single_ops;   /* redis:// and unix://: lib/redis_conn.c */
extern const tp_redis_ops tp_redis_sentinel_ops; /* redis+sentinel://: lib/redis_sentinel.c */
extern const tp_redis_ops tp_redis_cluster_ops;  /* redis+cluster://: lib/redis_cluster.c */

#endif
