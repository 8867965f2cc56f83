/* SPDX-License-Identifier: MIT */
/*
 * One managed Redis connection: the building block of every tp_redis, and
 * by itself its single-server implementation (tp_redis_single_ops).
 *
 * A state machine on one redisAsyncContext: CONNECTING (TCP connect,
 * bounded by a timer) -> handshake (AUTH, SELECT, pipelined) -> UP; any
 * failure -> DOWN and a reconnect timer whose delay doubles from
 * reconnect_min to reconnect_max, with jitter in [50%, 100%].
 * hiredis 0.14 has no async timeouts, so the connect timer is ours; the
 * waits of blocking commands are bounded by their own Redis-side timeout.
 *
 * Where to connect is the URL's address, or what a locate function answers
 * at each (re)connect (the sentinels, lib/redis_sentinel.c). A master_only
 * connection ends its handshake with ROLE, which must say "master", and a
 * -READONLY error reply on it (the master was demoted under us) drops it,
 * so that the reconnect locates the master again; a -NOSCRIPT reply loads
 * the scripts again. Both checks sit in the reply parser (a wrapped
 * createString), so they cost nothing on the replies that are not errors.
 * Every socket to Redis is opened here (open_async), on the library's
 * own libevent adapter.
 */
#include <event2/event.h>
#include <hiredis/async.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "redis_ops.h"
#include "scripts.h"

/* The privdata of the handshake's ROLE command (scripts use 1..N). */
#define ROLE_CHECK ((void *)(intptr_t)-1)

struct tp_redis_conn {
    struct event_base *base;
    redisAsyncContext *ac; /* NULL while down */
    tp_redis_link link;    /* the data of r->ac */
    tp_redis_url url;
    tp_redis_timing timing;
    const tp_logger *log;
    tp_redis_conn_state_fn *fn;
    void *arg;
    tp_redis_conn_locate_fn *locate; /* NULL: url.host and url.port */
    void *locate_arg;
    const char *host; /* where r->ac connects: url.host, or what locate gave */
    int port;
    bool master_only;
    struct event *timer; /* connect timeout, then reconnect delay */
    int state;
    int attempt;                    /* failures since the last UP */
    int handshake_left;             /* replies of AUTH/SELECT still awaited */
    char shas[TP_SCRIPT_COUNT][41]; /* SHA1 of each loaded script */
    char errstr[256];
    bool readonly;                          /* a READONLY reply closed the connection */
    struct event *demoted;                  /* made active by a -READONLY reply */
    struct event *noscript;                 /* made active by a -NOSCRIPT reply */
    int reloads_left;                       /* SCRIPT LOAD replies awaited after one */
    redisReplyObjectFunctions fns;          /* hiredis's, createString wrapped */
    redisReplyObjectFunctions *hiredis_fns; /* what the reader had */
};

/* ---- event loop adapter ---------------------------------------------- */

/*
 * hiredis's libevent adapter, less two system calls per command: the read
 * event persists (the stock adapter deletes and adds it around every read),
 * and a connected context writes at the end of the loop turn that queued
 * its commands, from a deferred callback, instead of waiting for epoll to
 * report the socket writable. Only a write the kernel did not take whole,
 * or a connect in progress, waits for EV_WRITE.
 */
typedef struct adapter {
    redisAsyncContext *ac;
    struct event *rev, *wev, *flush;
    bool flushing; /* inside redisAsyncHandleWrite from the flush */
    bool freed;    /* hiredis cleaned up during that write */
} adapter;

static void on_readable(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    redisAsyncHandleRead(((adapter *)arg)->ac);
}

static void on_writable(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    redisAsyncHandleWrite(((adapter *)arg)->ac);
}

static void on_flush(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    adapter *a = arg;
    a->flushing = true;
    redisAsyncHandleWrite(a->ac);
    if (a->freed)
        free(a);
    else
        a->flushing = false;
}

static void add_read(void *arg) {
    adapter *a = arg;
    if (!event_pending(a->rev, EV_READ, NULL))
        event_add(a->rev, NULL);
}

static void del_read(void *arg) {
    event_del(((adapter *)arg)->rev);
}

static void add_write(void *arg) {
    adapter *a = arg;
    if (a->flushing || !(a->ac->c.flags & REDIS_CONNECTED))
        event_add(a->wev, NULL);
    else
        event_active(a->flush, EV_TIMEOUT, 1);
}

static void del_write(void *arg) {
    event_del(((adapter *)arg)->wev);
}

static void free_events(adapter *a) {
    struct event *evs[] = {a->rev, a->wev, a->flush};
    for (int i = 0; i < 3; i++)
        if (evs[i])
            event_free(evs[i]);
}

static void cleanup(void *arg) {
    adapter *a = arg;
    free_events(a);
    if (a->flushing)
        a->freed = true; /* on_flush frees it when the write returns */
    else
        free(a);
}

static int loop_attach(redisAsyncContext *ac, struct event_base *base) {
    adapter *a = ac->ev.data == NULL ? tp_calloc(1, sizeof *a) : NULL;
    if (a == NULL)
        return REDIS_ERR;
    a->ac = ac;
    a->rev = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, on_readable, a);
    a->wev = event_new(base, ac->c.fd, EV_WRITE, on_writable, a);
    a->flush = event_new(base, -1, 0, on_flush, a);
    if (a->rev == NULL || a->wev == NULL || a->flush == NULL) {
        free_events(a);
        free(a);
        return REDIS_ERR;
    }
    ac->ev.data = a;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return REDIS_OK;
}

/* An async context to `host:port`, or to the unix socket `path` when not
 * NULL, on the loop; NULL with the reason in `err`. */
static redisAsyncContext *open_async(struct event_base *base, const char *host, int port,
                                     const char *path, char *err, size_t errlen) {
    redisAsyncContext *ac = path ? redisAsyncConnectUnix(path) : redisAsyncConnect(host, port);
    if (ac == NULL || ac->err) {
        snprintf(err, errlen, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        return NULL;
    }
    if (loop_attach(ac, base) != REDIS_OK) {
        snprintf(err, errlen, "out of memory");
        redisAsyncFree(ac);
        return NULL;
    }
    return ac;
}

/* ---- the managed connection ------------------------------------------ */

tp_redis_conn *tp_redis_conn_from(const redisAsyncContext *ac) {
    const tp_redis_link *l = ac ? ac->data : NULL;
    return l ? l->self : NULL;
}

void *tp_redis_conn_arg(const tp_redis_conn *r) {
    return r->arg;
}

int tp_redis_conn_state(const tp_redis_conn *r) {
    return r->state;
}

const char *tp_redis_conn_errstr(const tp_redis_conn *r) {
    return r->errstr;
}

const tp_redis_url *tp_redis_conn_url(const tp_redis_conn *r) {
    return &r->url;
}

const char *tp_redis_conn_sha(const tp_redis_conn *r, int script) {
    return r->shas[script];
}

static void set_state(tp_redis_conn *r, int state, const char *reason) {
    r->state = state;
    if (r->fn)
        r->fn(r, state, reason, r->arg);
}

static int backoff_ms(tp_redis_conn *r) {
    long long d = r->timing.reconnect_min_ms;
    for (int i = 0; i < r->attempt && d < r->timing.reconnect_max_ms; i++)
        d *= 2;
    if (d > r->timing.reconnect_max_ms)
        d = r->timing.reconnect_max_ms;
    return (int)(d / 2 + (long long)(random() % (d / 2 + 1)));
}

static void arm(struct event *ev, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

/* Takes the context out of *slot; its callbacks see a NULL data. */
static redisAsyncContext *detach(redisAsyncContext **slot) {
    redisAsyncContext *ac = *slot;
    *slot = NULL;
    if (ac != NULL)
        ac->data = NULL;
    return ac;
}

/*
 * Detaches r->ac from us (its callbacks see tp_redis_conn_from() == NULL, its
 * reader gets hiredis's functions back, since it may outlive us) and frees it
 * when `free_it` (else hiredis frees it after the current callback).
 */
static void release(tp_redis_conn *r, bool free_it) {
    redisAsyncContext *ac = detach(&r->ac);
    if (ac == NULL)
        return;
    event_del(r->demoted); /* a READONLY or NOSCRIPT seen on it is moot now */
    event_del(r->noscript);
    if (ac->c.reader->fn == &r->fns) {
        ac->c.reader->fn = r->hiredis_fns;
        ac->c.reader->privdata = NULL;
    }
    if (free_it)
        redisAsyncFree(ac);
}

/* The context is gone (hiredis freed it or will): go DOWN and retry later. */
static void went_down(tp_redis_conn *r, const char *why) {
    release(r, false);
    snprintf(r->errstr, sizeof r->errstr, "%s", why);
    int ms = backoff_ms(r);
    r->attempt++;
    /* A warning for the first failures, then one at each power of two: a
     * long outage does not flood the log (the rest go out at debug level). */
    bool loud = r->attempt <= 3 || (r->attempt & (r->attempt - 1)) == 0;
    tp_log(r->log, loud ? TEMPEST_LOG_WARN : TEMPEST_LOG_DEBUG,
           "redis: %s; reconnecting in %d ms (attempt %d)", why, ms, r->attempt);
    arm(r->timer, ms);
    set_state(r, TEMPEST_NODE_DOWN, r->errstr);
}

/* Drops a live context on purpose (handshake failed, connect timed out). */
static void drop(tp_redis_conn *r, const char *why) {
    release(r, true);
    went_down(r, why);
}

/* ROLE's reply: ["master", ...] or the address is not (or no longer) the master. */
static bool role_is_master(tp_redis_conn *r, const redisReply *rep) {
    const redisReply *e =
        rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 ? rep->element[0] : NULL;
    if (e != NULL && e->type == REDIS_REPLY_STRING && strcmp(e->str, "master") == 0)
        return true;
    char why[200];
    snprintf(why, sizeof why, "%s:%d is not a master (ROLE: %.40s)", r->host, r->port,
             e != NULL && e->type == REDIS_REPLY_STRING ? e->str : "?");
    drop(r, why);
    return false;
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis_conn *r = tp_redis_conn_from(ac);
    redisReply *rep = reply;
    if (r == NULL || rep == NULL)
        return; /* freed, or the disconnect callback handles it */
    if (rep->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof why, "handshake refused: %.150s", rep->str);
        drop(r, why);
        return;
    }
    if (privdata == ROLE_CHECK && !role_is_master(r, rep))
        return;
    intptr_t script = (intptr_t)privdata;
    if (script > 0 && rep->type == REDIS_REPLY_STRING && rep->len == 40)
        memcpy(r->shas[script - 1], rep->str, 41);
    if (--r->handshake_left > 0)
        return;
    if (r->attempt > 3)
        tp_log(r->log, TEMPEST_LOG_INFO, "redis: connected again after %d attempts", r->attempt);
    r->attempt = 0;
    r->errstr[0] = '\0';
    set_state(r, TEMPEST_NODE_UP, NULL);
}

static void send_handshake(tp_redis_conn *r) {
    char db[24];
    snprintf(db, sizeof db, "%d", r->url.db);
    r->handshake_left = 0;
    if (r->url.password && r->url.user) {
        redisAsyncCommand(r->ac, on_handshake, NULL, "AUTH %s %s", r->url.user, r->url.password);
        r->handshake_left++;
    } else if (r->url.password) {
        redisAsyncCommand(r->ac, on_handshake, NULL, "AUTH %s", r->url.password);
        r->handshake_left++;
    }
    /* SELECT even for db 0: its reply also proves the link is usable.
     * Cluster nodes have only db 0 (and SCRIPT LOAD's replies prove it). */
    if (!r->url.cluster_node) {
        redisAsyncCommand(r->ac, on_handshake, NULL, "SELECT %s", db);
        r->handshake_left++;
    }
    for (intptr_t i = 0; i < TP_SCRIPT_COUNT; i++) {
        redisAsyncCommand(r->ac, on_handshake, (void *)(i + 1), "SCRIPT LOAD %s", tp_scripts[i]);
        r->handshake_left++;
    }
    if (r->master_only) {
        redisAsyncCommand(r->ac, on_handshake, ROLE_CHECK, "ROLE");
        r->handshake_left++;
    }
}

static void on_connect(const redisAsyncContext *ac, int status) {
    tp_redis_conn *r = tp_redis_conn_from(ac);
    if (r == NULL)
        return;
    evtimer_del(r->timer);
    if (status != REDIS_OK) {
        char why[200];
        snprintf(why, sizeof why, "connect failed: %.150s", ac->errstr);
        went_down(r, why); /* hiredis frees the context after this */
        return;
    }
    redisEnableKeepAlive((redisContext *)&ac->c);
    send_handshake(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    tp_redis_conn *r = tp_redis_conn_from(ac);
    if (r == NULL)
        return;
    char why[200];
    if (r->readonly)
        snprintf(why, sizeof why, "closed: the master was demoted (READONLY)");
    else if (status == REDIS_OK)
        snprintf(why, sizeof why, "connection closed");
    else
        snprintf(why, sizeof why, "connection lost: %.150s", ac->errstr);
    went_down(r, why);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_redis_conn *r = arg;
    if (r->ac != NULL) {
        char why[64];
        snprintf(why, sizeof why, "connect timed out after %d ms", r->timing.connect_timeout_ms);
        drop(r, why);
        return;
    }
    tp_redis_conn_start(r);
}

/* Makes `ac` ours, as r->ac, and bounds its connect. */
static void attach(tp_redis_conn *r, redisAsyncContext *ac) {
    ac->data = &r->link;
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    arm(r->timer, r->timing.connect_timeout_ms);
}

/*
 * Error strings are the only replies looked at: a demoted master says
 * READONLY (master_only: Sentinel mode), and a server whose script cache
 * was emptied (SCRIPT FLUSH, or a failover to a replica that never loaded
 * them) says NOSCRIPT. Both are handled out of the parser, from an event.
 */
static void *on_reply_string(const redisReadTask *task, char *str, size_t len) {
    tp_redis_conn *r = task->privdata;
    if (task->type == REDIS_REPLY_ERROR) {
        if (len >= 8 && memcmp(str, "READONLY", 8) == 0 && r->master_only)
            event_active(r->demoted, 0, 0);
        else if (len >= 8 && memcmp(str, "NOSCRIPT", 8) == 0)
            event_active(r->noscript, 0, 0);
    }
    return r->hiredis_fns->createString(task, str, len);
}

static void watch_errors(tp_redis_conn *r, redisAsyncContext *ac) {
    r->hiredis_fns = ac->c.reader->fn;
    r->fns = *r->hiredis_fns;
    r->fns.createString = on_reply_string;
    ac->c.reader->fn = &r->fns;
    ac->c.reader->privdata = r;
}

/* Out of the parser: close the connection like a lost one (pending callbacks get NULL). */
static void on_demoted(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_redis_conn *r = arg;
    if (r->ac == NULL)
        return;
    tp_log(r->log, TEMPEST_LOG_WARN, "redis: %s:%d answered READONLY: no longer the master",
           r->host, r->port);
    r->readonly = true;
    redisAsyncFree(r->ac); /* runs on_disconnect, which goes DOWN */
}

static void on_reloaded(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis_conn *r = tp_redis_conn_from(ac);
    const redisReply *rep = reply;
    if (r == NULL || rep == NULL)
        return;
    if (rep->type == REDIS_REPLY_ERROR)
        tp_log(r->log, TEMPEST_LOG_ERROR, "redis: SCRIPT LOAD of script %d failed: %s",
               (int)(intptr_t)privdata, rep->str);
    if (r->reloads_left > 0)
        r->reloads_left--;
}

/*
 * Out of the parser: the commands that got NOSCRIPT failed (their callers
 * see the error and retry as for any error reply); load every script again so
 * that the retries, sent after these loads on the same connection, succeed.
 * NOSCRIPTs of commands sent before the loads do not load again.
 */
static void on_noscript(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_redis_conn *r = arg;
    if (r->ac == NULL || r->state != TEMPEST_NODE_UP || r->reloads_left > 0)
        return;
    tp_log(r->log, TEMPEST_LOG_WARN, "redis: the server lost its scripts (NOSCRIPT): loading them");
    for (intptr_t i = 0; i < TP_SCRIPT_COUNT; i++)
        if (redisAsyncCommand(r->ac, on_reloaded, (void *)(i + 1), "SCRIPT LOAD %s",
                              tp_scripts[i]) == REDIS_OK)
            r->reloads_left++;
}

static void connect_server(tp_redis_conn *r) {
    char err[160];
    redisAsyncContext *ac = open_async(r->base, r->host, r->port, r->url.path, err, sizeof err);
    if (ac == NULL) {
        char why[200];
        snprintf(why, sizeof why, "connect failed: %.150s", err);
        went_down(r, why);
        return;
    }
    attach(r, ac);
    r->readonly = false;
    r->reloads_left = 0;
    watch_errors(r, ac);
}

void tp_redis_conn_start(tp_redis_conn *r) {
    if (r->locate == NULL) {
        connect_server(r);
        return;
    }
    r->locate(r, r->locate_arg);
}

void tp_redis_conn_connect(tp_redis_conn *r, const char *host, int port) {
    r->host = host;
    r->port = port;
    connect_server(r);
}

void tp_redis_conn_fail(tp_redis_conn *r, const char *why) {
    went_down(r, why);
}

static bool dup_into(char **dst, const char *src) {
    *dst = tp_strdup(src);
    return src == NULL || *dst != NULL;
}

/* A copy of the `n` hosts at `src` into *dst (NULL when n is 0). */
static int copy_hosts(tp_redis_sentinel **dst, int *ndst, const tp_redis_sentinel *src, int n) {
    if (n > 0 && (*dst = tp_calloc((size_t)n, sizeof **dst)) == NULL)
        return TEMPEST_ENOMEM;
    for (; *ndst < n; (*ndst)++) {
        (*dst)[*ndst].port = src[*ndst].port;
        if (!dup_into(&(*dst)[*ndst].host, src[*ndst].host))
            return TEMPEST_ENOMEM;
    }
    return 0;
}

static int copy_url(tp_redis_url *dst, const tp_redis_url *src) {
    *dst = *src;
    dst->sentinels = dst->seeds = NULL;
    dst->nsentinels = dst->nseeds = 0;
    bool ok = dup_into(&dst->host, src->host) & dup_into(&dst->path, src->path) &
              dup_into(&dst->user, src->user) & dup_into(&dst->password, src->password) &
              dup_into(&dst->master, src->master) &
              dup_into(&dst->sentinel_password, src->sentinel_password);
    if (!ok)
        return TEMPEST_ENOMEM;
    if (copy_hosts(&dst->sentinels, &dst->nsentinels, src->sentinels, src->nsentinels) != 0)
        return TEMPEST_ENOMEM;
    return copy_hosts(&dst->seeds, &dst->nseeds, src->seeds, src->nseeds);
}

tp_redis_timing tp_redis_timing_defaults(const tp_redis_timing *timing) {
    tp_redis_timing t = timing ? *timing : (tp_redis_timing){0};
    if (t.connect_timeout_ms <= 0)
        t.connect_timeout_ms = 2000;
    if (t.reconnect_min_ms <= 0)
        t.reconnect_min_ms = 100;
    if (t.reconnect_max_ms < t.reconnect_min_ms)
        t.reconnect_max_ms = t.reconnect_min_ms > 5000 ? t.reconnect_min_ms : 5000;
    return t;
}

tp_redis_conn *tp_redis_conn_new(struct event_base *base, const tp_redis_conn_options *o) {
    tp_redis_conn *r = tp_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->base = base;
    r->link = (tp_redis_link){.handle = o->handle, .self = r};
    r->log = o->log;
    r->fn = o->state_fn;
    r->arg = o->arg;
    r->locate = o->locate;
    r->locate_arg = o->locate_arg;
    r->master_only = o->master_only;
    r->state = TEMPEST_NODE_CONNECTING;
    r->timing = *o->timing;
    r->timer = evtimer_new(base, on_timer, r);
    r->demoted = event_new(base, -1, 0, on_demoted, r);
    r->noscript = event_new(base, -1, 0, on_noscript, r);
    if (r->timer == NULL || r->demoted == NULL || r->noscript == NULL ||
        copy_url(&r->url, o->url) != 0) {
        tp_redis_conn_free(r);
        return NULL;
    }
    r->host = r->url.host;
    r->port = r->url.port;
    return r;
}

void tp_redis_conn_free(tp_redis_conn *r) {
    if (r == NULL)
        return;
    release(r, true);
    if (r->timer)
        event_free(r->timer);
    if (r->demoted)
        event_free(r->demoted);
    if (r->noscript)
        event_free(r->noscript);
    tp_redis_url_clear(&r->url);
    free(r);
}

void tp_redis_conn_flush(tp_redis_conn *r) {
    int done = 0;
    if (r != NULL && r->ac != NULL && r->state == TEMPEST_NODE_UP)
        redisBufferWrite(&r->ac->c, &done);
}

int tp_redis_conn_send(tp_redis_conn *r, redisCallbackFn *fn, void *privdata, const char *cmd,
                       size_t len) {
    if (r == NULL || r->state != TEMPEST_NODE_UP || r->ac == NULL)
        return TEMPEST_EDOWN;
    return redisAsyncFormattedCommand(r->ac, fn, privdata, cmd, len) == REDIS_OK ? 0
                                                                                 : TEMPEST_EDOWN;
}

redisAsyncContext *tp_redis_connect_raw(struct event_base *base, const char *host, int port,
                                        char *err, size_t errlen) {
    char why[160];
    redisAsyncContext *ac = open_async(base, host, port, NULL, why, sizeof why);
    if (ac == NULL) {
        snprintf(err, errlen, "cannot connect to %s:%d: %s", host, port, why);
        return NULL;
    }
    int one = 1;
    setsockopt(ac->c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return ac;
}

/* ---- one question (the sentinels) ------------------------------------- */

struct tp_redis_ask {
    redisAsyncContext *ac;
    struct event *timer; /* bounds the connect and the answer */
    tp_redis_ask_fn *fn;
    void *arg;
};

/* Detaches q->ac from us (its callbacks see a NULL data) and frees it when
 * `free_it` (else hiredis frees it after the current callback). */
static void ask_release(tp_redis_ask *q, bool free_it) {
    redisAsyncContext *ac = detach(&q->ac);
    if (ac != NULL && free_it)
        redisAsyncFree(ac);
}

/* The question has ended: freed first (`fn` may free its owner), then told. */
static void ask_done(tp_redis_ask *q, bool free_it, const redisReply *reply, const char *err) {
    tp_redis_ask_fn *fn = q->fn;
    void *arg = q->arg;
    ask_release(q, free_it);
    tp_redis_ask_free(q);
    fn(reply, err, arg);
}

static void on_ask_connect(const redisAsyncContext *ac, int status) {
    tp_redis_ask *q = ac->data;
    if (q != NULL && status != REDIS_OK)
        ask_done(q, false, NULL, ac->errstr); /* hiredis frees the context after this */
    /* else the timer still bounds the reply */
}

static void on_ask_disconnect(const redisAsyncContext *ac, int status) {
    tp_redis_ask *q = ac->data;
    if (q != NULL)
        ask_done(q, false, NULL, status == REDIS_OK ? "connection closed" : ac->errstr);
}

static void on_ask_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    ask_done(arg, true, NULL, "no answer within the connect timeout");
}

static void on_ask_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    tp_redis_ask *q = ac->data;
    if (q == NULL || reply == NULL)
        return;                     /* abandoned, or the disconnect callback tells */
    ask_done(q, true, reply, NULL); /* hiredis frees it when this callback returns */
}

tp_redis_ask *tp_redis_ask_new(struct event_base *base, const tp_redis_ask_options *o, char *err,
                               size_t errlen) {
    tp_redis_ask *q = tp_calloc(1, sizeof *q);
    if (q == NULL || (q->timer = evtimer_new(base, on_ask_timer, q)) == NULL) {
        snprintf(err, errlen, "out of memory");
        free(q);
        return NULL;
    }
    if ((q->ac = open_async(base, o->host, o->port, NULL, err, errlen)) == NULL) {
        tp_redis_ask_free(q);
        return NULL;
    }
    q->fn = o->fn;
    q->arg = o->arg;
    q->ac->data = q;
    redisAsyncSetConnectCallback(q->ac, on_ask_connect);
    redisAsyncSetDisconnectCallback(q->ac, on_ask_disconnect);
    arm(q->timer, o->timeout_ms);
    if (o->password)
        redisAsyncCommand(q->ac, NULL, NULL, "AUTH %s", o->password);
    redisAsyncCommandArgv(q->ac, on_ask_reply, NULL, o->argc, o->argv, NULL);
    return q;
}

void tp_redis_ask_free(tp_redis_ask *q) {
    if (q == NULL)
        return;
    ask_release(q, true);
    if (q->timer)
        event_free(q->timer);
    free(q);
}

/* ---- the single-server implementation of a tp_redis ------------------- */

static void *single_open(struct event_base *base, const tp_redis_conn_options *o) {
    tp_redis_conn *r = tp_redis_conn_new(base, o);
    if (r != NULL)
        tp_redis_conn_start(r);
    return r;
}

static void single_close(void *impl) {
    tp_redis_conn_free(impl);
}

static int single_send(void *impl, redisCallbackFn *fn, void *privdata, const char *cmd,
                       size_t len) {
    return tp_redis_conn_send(impl, fn, privdata, cmd, len);
}

static void single_flush(void *impl) {
    tp_redis_conn_flush(impl);
}

static const char *single_sha(const void *impl, int script) {
    return tp_redis_conn_sha(impl, script);
}

const tp_redis_ops tp_redis_single_ops = {
    .open = single_open,
    .close = single_close,
    .send = single_send,
    .flush = single_flush,
    .sha = single_sha,
};
