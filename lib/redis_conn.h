/* SPDX-License-Identifier: MIT */
/*
 * One managed asynchronous Redis connection, the building block of every
 * tp_redis: connect with a timeout, AUTH and SELECT, SCRIPT LOAD, TCP
 * keepalive, reconnect with capped exponential backoff and jitter, and tell
 * the owner when it goes up or down. It is also the single-server
 * implementation of a tp_redis (tp_redis_single_ops, lib/redis_ops.h), and
 * Sentinel and Cluster build on it.
 *
 * This is the layer that does the I/O: every socket to a Redis server that
 * the library opens is opened here, on hiredis's async API and the
 * library's own libevent adapter: the managed connections, the questions
 * asked of sentinels (tp_redis_ask), and the plain connections that answer
 * node listeners (tp_redis_connect_raw). The
 * context a managed connection hands to a reply callback has a
 * tp_redis_link as its data (NULL once the connection was freed), which
 * leads to the handle the callback's caller knows.
 */
#ifndef TEMPEST_REDIS_CONN_H
#define TEMPEST_REDIS_CONN_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>

#include "codec.h"
#include "internal.h"

struct event_base;

typedef struct tp_redis_conn tp_redis_conn;

/** Timing of a managed connection; zero fields take the defaults. */
typedef struct tp_redis_timing {
    int connect_timeout_ms; /* 0: 2000 */
    int reconnect_min_ms;   /* 0: 100 */
    int reconnect_max_ms;   /* 0: 5000 */
} tp_redis_timing;

/** `t` (NULL: all defaults) with the defaults in its zero fields. */
tp_redis_timing tp_redis_timing_defaults(const tp_redis_timing *t);

/**
 * What the data of a context handed to a reply callback points at:
 * `handle`, the tp_redis its caller holds (tp_redis_from), and `self`, the
 * connection (tp_redis_conn_from; NULL in a context that stands for many).
 */
typedef struct tp_redis_link {
    void *handle;
    void *self;
} tp_redis_link;

/** Told on every change to TEMPEST_NODE_UP or TEMPEST_NODE_DOWN (`c` is
 *  NULL when an implementation with many connections tells its handle). */
typedef void tp_redis_conn_state_fn(tp_redis_conn *c, int state, const char *reason, void *arg);

/** Asked at each (re)connect where the server is: answers, then or later,
 *  with tp_redis_conn_connect or tp_redis_conn_fail. */
typedef void tp_redis_conn_locate_fn(tp_redis_conn *c, void *arg);

/** What a connection is made of (designated initializers; zero: none). */
typedef struct tp_redis_conn_options {
    const tp_redis_url *url;          /* copied */
    const tp_redis_timing *timing;    /* copied; tp_redis_timing_defaults applied */
    const tp_logger *log;             /* borrowed: outlives the connection */
    tp_redis_conn_state_fn *state_fn; /* may be NULL */
    void *arg;                        /* state_fn's */
    void *handle;                     /* tp_redis_link.handle of its contexts */
    tp_redis_conn_locate_fn *locate;  /* NULL: the url's host and port */
    void *locate_arg;
    bool master_only; /* the handshake ends with ROLE, which must say "master";
                         a -READONLY reply drops the connection */
} tp_redis_conn_options;

/** A connection, not yet connecting (tp_redis_conn_start); NULL when out
 *  of memory. */
tp_redis_conn *tp_redis_conn_new(struct event_base *base, const tp_redis_conn_options *o);

/** Starts connecting (never blocks, except that hiredis resolves a host
 *  name synchronously: prefer IP literals). */
void tp_redis_conn_start(tp_redis_conn *c);

/** Frees the connection; pending callbacks get a NULL reply, in a context
 *  whose data is NULL. */
void tp_redis_conn_free(tp_redis_conn *c);

/** The answer of a locate function: connect to `host` (borrowed: it must
 *  stay valid until the next locate) and `port`. */
void tp_redis_conn_connect(tp_redis_conn *c, const char *host, int port);

/** The answer of a locate function that found no server: DOWN, `why`,
 *  and a reconnect after the backoff. */
void tp_redis_conn_fail(tp_redis_conn *c, const char *why);

/** Sends a command already in RESP form (NUL-terminated; borrowed) when
 *  up; returns 0 or TEMPEST_EDOWN (the callback never runs). */
int tp_redis_conn_send(tp_redis_conn *c, redisCallbackFn *fn, void *privdata, const char *cmd,
                       size_t len);

/** Writes what is queued now, without waiting (see tp_redis_flush). */
void tp_redis_conn_flush(tp_redis_conn *c);

/** The connection of a context (NULL once it was freed). */
tp_redis_conn *tp_redis_conn_from(const redisAsyncContext *ac);

/** The `arg` of its options. */
void *tp_redis_conn_arg(const tp_redis_conn *c);

/** TEMPEST_NODE_CONNECTING, _UP or _DOWN. */
int tp_redis_conn_state(const tp_redis_conn *c);

/** Text of the last connection error ("" when none). */
const char *tp_redis_conn_errstr(const tp_redis_conn *c);

/** Its copy of the URL. */
const tp_redis_url *tp_redis_conn_url(const tp_redis_conn *c);

/** The SHA1 of script number `script` (enum tp_script) as the server
 *  loaded it during the handshake ("" before). */
const char *tp_redis_conn_sha(const tp_redis_conn *c, int script);

typedef struct tp_redis_ask tp_redis_ask;

/** The answer to a question: its reply (borrowed for the call), or NULL
 *  and why not (`err`: connect failed, connection lost, no answer). */
typedef void tp_redis_ask_fn(const redisReply *reply, const char *err, void *arg);

/** One question to one server (designated initializers). */
typedef struct tp_redis_ask_options {
    const char *host; /* borrowed for the call */
    int port;
    const char *password; /* AUTH first when not NULL (its reply is not looked at) */
    int argc;             /* the command: `argc` C strings */
    const char **argv;
    int timeout_ms; /* bounds the connect and the answer */
    tp_redis_ask_fn *fn;
    void *arg;
} tp_redis_ask_options;

/**
 * Connects to a server, asks it one command and hangs up (the sentinels:
 * no handshake, no reconnect). `fn` runs exactly once, never inside this
 * call, unless tp_redis_ask_free comes first; the question has ended (and
 * is freed) when it runs. Returns NULL with the reason in `err` (`fn` never
 * runs).
 */
tp_redis_ask *tp_redis_ask_new(struct event_base *base, const tp_redis_ask_options *o, char *err,
                               size_t errlen);

/** Abandons a question that has not ended: `fn` never runs. NULL: nothing. */
void tp_redis_ask_free(tp_redis_ask *q);

/**
 * Opens a plain async connection to `host:port` on `base` (no AUTH, no
 * reconnect), for answering node listeners. Returns NULL with `err` set.
 * Sets TCP_NODELAY.
 */
redisAsyncContext *tp_redis_connect_raw(struct event_base *base, const char *host, int port,
                                        char *err, size_t errlen);

#endif
