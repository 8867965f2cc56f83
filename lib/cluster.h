/* SPDX-License-Identifier: MIT */
/*
 * Redis Cluster mode of the managed connection (redis+cluster:// URLs).
 * A tp_redis made from such a URL is a facade: lib/redis.c hands its
 * commands to tp_cluster_send, which routes each to the master of its key's
 * slot over one managed connection (a plain tp_redis) per master. Reply
 * callbacks get an async context whose tp_redis_from() is the facade, so
 * callers are the same in both modes.
 */
#ifndef TEMPEST_CLUSTER_H
#define TEMPEST_CLUSTER_H

#include <stddef.h>

#include "redis.h"

typedef struct tp_cluster tp_cluster;

/** Number of hash slots of a Redis Cluster. */
#define TP_CLUSTER_SLOTS 16384

/**
 * The hash slot of `key` (CRC16 XMODEM of the key, or of its first
 * non-empty `{tag}`, modulo 16384), as CLUSTER KEYSLOT computes it.
 */
int tp_cluster_slot(const char *key, size_t len);

/**
 * Why a worker's queue `name` (with its dead-letter list `dead`, NULL for
 * the default `{name}:dead`) cannot work in cluster mode: its keys would
 * span slots. A static string, or NULL when it is fine.
 */
const char *tp_cluster_check_queue(const char *name, const char *dead);

/**
 * Starts the cluster behind `facade`: asks the seeds of `url` in turn for
 * the slot map, then connects to every master. `url` and `timing` are
 * copied; `log` is borrowed. The facade's state follows: UP once every
 * master's connection is up. Returns NULL when out of memory.
 */
tp_cluster *tp_cluster_new(tp_redis *facade, struct event_base *base, const tp_redis_url *url,
                           const tp_redis_timing *timing, const tp_logger *log);

/** Frees the connections; pending callbacks get a NULL reply and a context
 *  whose tp_redis_from() is NULL. */
void tp_cluster_free(tp_cluster *cl);

/**
 * Sends the RESP command `cmd` (malloc'd, taken over even on failure) to
 * the master of its key's slot, following MOVED, ASK and TRYAGAIN. Returns
 * 0 (the callback will run exactly once, or for every message of a
 * subscription) or a negative code (it never runs).
 */
int tp_cluster_send(tp_cluster *cl, redisCallbackFn *fn, void *privdata, char *cmd, size_t len);

/** tp_redis_flush on every master's connection. */
void tp_cluster_flush(tp_cluster *cl);

/* ---- lib/redis.c's side, for lib/cluster.c only ----------------------- */

/** Sets the facade's state (and error text) and tells its owner. */
void tp_redis_set_state(tp_redis *r, int state, const char *reason);

/** Copies the script SHA1s of an UP connection into `dst` (the facade). */
void tp_redis_copy_shas(tp_redis *dst, const tp_redis *src);

/** Sends a command already in RESP form when up; 0 or TEMPEST_EDOWN. */
int tp_redis_formatted(tp_redis *r, redisCallbackFn *fn, void *privdata, const char *cmd,
                       size_t len);

#endif
