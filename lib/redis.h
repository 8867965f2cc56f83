/* SPDX-License-Identifier: MIT */
/*
 * The Redis connection the rest of the library holds: one handle, whatever
 * the URL names. A redis:// or unix:// URL is one managed connection
 * (connect with a timeout, AUTH and SELECT, TCP keepalive, reconnect with
 * capped exponential backoff and jitter); with redis+sentinel://, each
 * (re)connect first asks the sentinels where the master is; with
 * redis+cluster://, each command goes to the master of its key's slot. The
 * handle tells its owner when it goes up or down. The timing and the plain
 * async connections the worker uses to answer node listeners
 * (tp_redis_connect_raw) come from lib/redis_conn.h.
 *
 * Reply callbacks are hiredis's own (redisCallbackFn). A callback gets a
 * NULL reply when the connection is lost; when its tp_redis was freed,
 * tp_redis_from(ac) is NULL in the callback, which must then return at once
 * without touching its privdata (the owner has cleaned up already).
 */
#ifndef TEMPEST_REDIS_H
#define TEMPEST_REDIS_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "codec.h"
#include "internal.h"
#include "redis_conn.h"

struct event_base;

typedef struct tp_redis tp_redis;

/** Told on every change to TEMPEST_NODE_UP or TEMPEST_NODE_DOWN. */
typedef void tp_redis_state_fn(tp_redis *r, int state, const char *reason, void *arg);

/**
 * Creates the connection and starts connecting (never blocks, except that
 * hiredis resolves a host name synchronously: prefer IP literals). `url`
 * and `timing` are copied; `log` is borrowed and must outlive the handle.
 */
tp_redis *tp_redis_new(struct event_base *base, const tp_redis_url *url,
                       const tp_redis_timing *timing, const tp_logger *log, tp_redis_state_fn *fn,
                       void *arg);

/** Frees the connection; pending callbacks see tp_redis_from() == NULL. */
void tp_redis_free(tp_redis *r);

/** Writes what is queued on the connection now, without waiting (the
 *  socket is non-blocking): the last commands of an owner about to free
 *  it. Replies are not read. */
void tp_redis_flush(tp_redis *r);

/** The logger given to tp_redis_new (it outlives the connection). */
const tp_logger *tp_redis_logger(const tp_redis *r);

/** The `arg` given to tp_redis_new (the owner). */
void *tp_redis_owner(const tp_redis *r);

/** TEMPEST_NODE_CONNECTING, _UP or _DOWN. */
int tp_redis_state(const tp_redis *r);

/** Text of the last connection error ("" when none). */
const char *tp_redis_errstr(const tp_redis *r);

/** The tp_redis of an async context, or NULL once it was freed. */
tp_redis *tp_redis_from(const redisAsyncContext *ac);

/** Sends a command when up; returns 0, or TEMPEST_EDOWN (callback never runs). */
int tp_redis_argv(tp_redis *r, redisCallbackFn *fn, void *privdata, int argc, const char **argv,
                  const size_t *argvlen);

/** printf-style form of tp_redis_argv (hiredis's %s and %b). */
int tp_redis_cmd(tp_redis *r, redisCallbackFn *fn, void *privdata, const char *fmt, ...);

/**
 * Runs one of the library's Lua scripts (enum tp_script) with EVALSHA:
 * `nkeys` of the `argc` arguments are keys. Every connection loads the
 * scripts during its handshake. `argvlen` may be NULL for C strings.
 * Returns 0, TEMPEST_EDOWN or TEMPEST_EINVAL (callback never runs).
 */
int tp_redis_script(tp_redis *r, redisCallbackFn *fn, void *privdata, int script, int nkeys,
                    int argc, const char **argv, const size_t *argvlen);

/** Most arguments (keys included) tp_redis_script takes. */
#define TP_SCRIPT_MAX_ARGS 320

#endif
