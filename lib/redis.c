/* SPDX-License-Identifier: MIT */
/*
 * The managed Redis connection. A state machine on one redisAsyncContext:
 * CONNECTING (TCP connect, bounded by a timer) -> handshake (AUTH, SELECT,
 * pipelined) -> UP; any failure -> DOWN and a reconnect timer whose delay
 * doubles from reconnect_min to reconnect_max, with jitter in [50%, 100%].
 * hiredis 0.14 has no async timeouts, so the connect timer is ours; the
 * waits of blocking commands are bounded by their own Redis-side timeout.
 *
 * With sentinels (redis+sentinel://), each (re)connect first asks them in
 * turn, each bounded by the connect timeout, for the master's address
 * (SENTINEL get-master-addr-by-name); the handshake then ends with ROLE,
 * which must say "master". A -READONLY error reply on the connection (the
 * master was demoted under us) drops it, so that the reconnect asks again:
 * the check sits in the reply parser (a wrapped createString), so it costs
 * nothing on the replies that are not errors.
 */
#include <errno.h>
#include <event2/event.h>
#include <hiredis/async.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cluster.h"
#include "redis.h"
#include "scripts.h"

enum { PHASE_MASTER, PHASE_SENTINEL };

/* The privdata of the handshake's ROLE command (scripts use 1..N). */
#define ROLE_CHECK ((void *)(intptr_t)-1)

struct tp_redis {
    struct event_base *base;
    redisAsyncContext *ac; /* NULL while down */
    int phase;             /* what r->ac is connected to */
    tp_redis_url url;
    tp_redis_timing timing;
    const tp_logger *log;
    tp_redis_state_fn *fn;
    void *arg;
    struct event *timer; /* connect timeout, then reconnect delay */
    int state;
    int attempt;                    /* failures since the last UP */
    int handshake_left;             /* replies of AUTH/SELECT still awaited */
    char shas[TP_SCRIPT_COUNT][41]; /* SHA1 of each loaded script */
    char errstr[256];
    /* Sentinel mode only. */
    int sentinel;      /* index of the sentinel being asked */
    char *master_host; /* the address the sentinels gave */
    int master_port;
    bool readonly;                          /* a READONLY reply closed the connection */
    struct event *demoted;                  /* made active by a -READONLY reply */
    struct event *noscript;                 /* made active by a -NOSCRIPT reply */
    int reloads_left;                       /* SCRIPT LOAD replies awaited after one */
    redisReplyObjectFunctions fns;          /* hiredis's, createString wrapped */
    redisReplyObjectFunctions *hiredis_fns; /* what the reader had */
    tp_cluster *cluster;                    /* redis+cluster://: this is a facade (lib/cluster.c) */
};

static void start_connect(tp_redis *r);
static void sentinel_failed(tp_redis *r, const char *why);
static void on_sentinel_reply(redisAsyncContext *ac, void *reply, void *privdata);

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

/* ---- the managed connection ------------------------------------------ */

tp_redis *tp_redis_from(const redisAsyncContext *ac) {
    return ac ? (tp_redis *)ac->data : NULL;
}

const tp_logger *tp_redis_logger(const tp_redis *r) {
    return r->log;
}

void *tp_redis_owner(const tp_redis *r) {
    return r->arg;
}

int tp_redis_state(const tp_redis *r) {
    return r->state;
}

const char *tp_redis_errstr(const tp_redis *r) {
    return r->errstr;
}

static void set_state(tp_redis *r, int state, const char *reason) {
    r->state = state;
    if (r->fn)
        r->fn(r, state, reason, r->arg);
}

static int backoff_ms(tp_redis *r) {
    long long d = r->timing.reconnect_min_ms;
    for (int i = 0; i < r->attempt && d < r->timing.reconnect_max_ms; i++)
        d *= 2;
    if (d > r->timing.reconnect_max_ms)
        d = r->timing.reconnect_max_ms;
    return (int)(d / 2 + (long long)(random() % (d / 2 + 1)));
}

static void arm_timer(tp_redis *r, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(r->timer, &tv);
}

/*
 * Detaches r->ac from us (its callbacks see tp_redis_from() == NULL, its
 * reader gets hiredis's functions back, since it may outlive us) and frees it
 * when `free_it` (else hiredis frees it after the current callback).
 */
static void release(tp_redis *r, bool free_it) {
    redisAsyncContext *ac = r->ac;
    if (ac == NULL)
        return;
    r->ac = NULL;
    ac->data = NULL;
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
static void went_down(tp_redis *r, const char *why) {
    release(r, false);
    snprintf(r->errstr, sizeof r->errstr, "%s", why);
    int ms = backoff_ms(r);
    r->attempt++;
    /* A warning for the first failures, then one at each power of two: a
     * long outage does not flood the log (the rest go out at debug level). */
    bool loud = r->attempt <= 3 || (r->attempt & (r->attempt - 1)) == 0;
    tp_log(r->log, loud ? TEMPEST_LOG_WARN : TEMPEST_LOG_DEBUG,
           "redis: %s; reconnecting in %d ms (attempt %d)", why, ms, r->attempt);
    arm_timer(r, ms);
    set_state(r, TEMPEST_NODE_DOWN, r->errstr);
}

/* Drops a live context on purpose (handshake failed, connect timed out). */
static void drop(tp_redis *r, const char *why) {
    release(r, true);
    went_down(r, why);
}

/* ROLE's reply: ["master", ...] or the address is not (or no longer) the master. */
static bool role_is_master(tp_redis *r, const redisReply *rep) {
    const redisReply *e =
        rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 ? rep->element[0] : NULL;
    if (e != NULL && e->type == REDIS_REPLY_STRING && strcmp(e->str, "master") == 0)
        return true;
    char why[200];
    snprintf(why, sizeof why, "%s:%d is not a master (ROLE: %.40s)", r->master_host, r->master_port,
             e != NULL && e->type == REDIS_REPLY_STRING ? e->str : "?");
    drop(r, why);
    return false;
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
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

static void send_handshake(tp_redis *r) {
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
    if (r->url.nsentinels > 0) {
        redisAsyncCommand(r->ac, on_handshake, ROLE_CHECK, "ROLE");
        r->handshake_left++;
    }
}

static void on_connect(const redisAsyncContext *ac, int status) {
    tp_redis *r = tp_redis_from(ac);
    if (r == NULL)
        return;
    if (r->phase == PHASE_SENTINEL) {
        if (status != REDIS_OK)
            sentinel_failed(r, ac->errstr); /* hiredis frees the context after this */
        return;                             /* the timer still bounds the reply */
    }
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
    tp_redis *r = tp_redis_from(ac);
    if (r == NULL)
        return;
    if (r->phase == PHASE_SENTINEL) {
        sentinel_failed(r, status == REDIS_OK ? "connection closed" : ac->errstr);
        return;
    }
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
    tp_redis *r = arg;
    if (r->ac != NULL && r->phase == PHASE_SENTINEL) {
        release(r, true);
        sentinel_failed(r, "no answer within the connect timeout");
        return;
    }
    if (r->ac != NULL) {
        char why[64];
        snprintf(why, sizeof why, "connect timed out after %d ms", r->timing.connect_timeout_ms);
        drop(r, why);
        return;
    }
    start_connect(r);
}

static redisAsyncContext *open_context(const tp_redis *r) {
    if (r->url.path)
        return redisAsyncConnectUnix(r->url.path);
    if (r->url.nsentinels > 0)
        return redisAsyncConnect(r->master_host, r->master_port);
    return redisAsyncConnect(r->url.host, r->url.port);
}

/* Makes `ac` ours, as r->ac, and bounds its connect (or the sentinel's answer). */
static bool attach(tp_redis *r, redisAsyncContext *ac, int phase) {
    if (loop_attach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        return false;
    }
    ac->data = r;
    r->ac = ac;
    r->phase = phase;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    arm_timer(r, r->timing.connect_timeout_ms);
    return true;
}

/*
 * Error strings are the only replies looked at: a demoted master says
 * READONLY (Sentinel mode), and a server whose script cache was emptied
 * (SCRIPT FLUSH, or a failover to a replica that never loaded them) says
 * NOSCRIPT. Both are handled out of the parser, from an event.
 */
static void *on_reply_string(const redisReadTask *task, char *str, size_t len) {
    tp_redis *r = task->privdata;
    if (task->type == REDIS_REPLY_ERROR) {
        if (len >= 8 && memcmp(str, "READONLY", 8) == 0 && r->url.nsentinels > 0)
            event_active(r->demoted, 0, 0);
        else if (len >= 8 && memcmp(str, "NOSCRIPT", 8) == 0)
            event_active(r->noscript, 0, 0);
    }
    return r->hiredis_fns->createString(task, str, len);
}

static void watch_errors(tp_redis *r, redisAsyncContext *ac) {
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
    tp_redis *r = arg;
    if (r->ac == NULL || r->phase != PHASE_MASTER)
        return;
    tp_log(r->log, TEMPEST_LOG_WARN, "redis: %s:%d answered READONLY: no longer the master",
           r->master_host, r->master_port);
    r->readonly = true;
    redisAsyncFree(r->ac); /* runs on_disconnect, which goes DOWN */
}

static void on_reloaded(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
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
    tp_redis *r = arg;
    if (r->ac == NULL || r->state != TEMPEST_NODE_UP || r->reloads_left > 0)
        return;
    tp_log(r->log, TEMPEST_LOG_WARN, "redis: the server lost its scripts (NOSCRIPT): loading them");
    for (intptr_t i = 0; i < TP_SCRIPT_COUNT; i++)
        if (redisAsyncCommand(r->ac, on_reloaded, (void *)(i + 1), "SCRIPT LOAD %s",
                              tp_scripts[i]) == REDIS_OK)
            r->reloads_left++;
}

static void connect_master(tp_redis *r) {
    redisAsyncContext *ac = open_context(r);
    if (ac == NULL || ac->err) {
        char why[200];
        snprintf(why, sizeof why, "connect failed: %.150s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        went_down(r, why);
        return;
    }
    if (!attach(r, ac, PHASE_MASTER)) {
        went_down(r, "connect failed: out of memory");
        return;
    }
    r->readonly = false;
    r->reloads_left = 0;
    watch_errors(r, ac);
}

/* Asks sentinel number r->sentinel where the master is. */
static void ask_sentinel(tp_redis *r) {
    const tp_redis_sentinel *s = &r->url.sentinels[r->sentinel];
    redisAsyncContext *ac = redisAsyncConnect(s->host, s->port);
    if (ac == NULL || ac->err) {
        char why[200];
        snprintf(why, sizeof why, "%.150s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        sentinel_failed(r, why);
        return;
    }
    if (!attach(r, ac, PHASE_SENTINEL)) {
        sentinel_failed(r, "out of memory");
        return;
    }
    if (r->url.sentinel_password)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", r->url.sentinel_password);
    redisAsyncCommand(ac, on_sentinel_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                      r->url.master);
}

/* The sentinel being asked failed: ask the next one; DOWN when none is left. */
static void sentinel_failed(tp_redis *r, const char *why) {
    const tp_redis_sentinel *s = &r->url.sentinels[r->sentinel];
    tp_log(r->log, TEMPEST_LOG_WARN, "redis: sentinel %s:%d: %s", s->host, s->port, why);
    release(r, false);
    if (++r->sentinel < r->url.nsentinels) {
        ask_sentinel(r);
        return;
    }
    char all[200];
    snprintf(all, sizeof all, "no sentinel gave the address of master \"%.40s\" (last: %.100s)",
             r->url.master, why);
    went_down(r, all);
}

/* ["host", "port"]: keeps the address (`changed` says if it is new); else false, `why` set. */
static bool take_master_addr(tp_redis *r, const redisReply *rep, bool *changed, char *why,
                             size_t whylen) {
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(why, whylen, "%.150s", rep->str);
        return false;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        snprintf(why, whylen, "does not know master \"%.40s\"", r->url.master);
        return false;
    }
    char *end = NULL;
    long port = 0;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING && rep->element[1]->type == REDIS_REPLY_STRING)
        port = strtol(rep->element[1]->str, &end, 10);
    char *host = port > 0 && port <= 65535 && *end == '\0' ? tp_strdup(rep->element[0]->str) : NULL;
    if (host == NULL) {
        snprintf(why, whylen, "unexpected reply to SENTINEL get-master-addr-by-name");
        return false;
    }
    *changed =
        r->master_host == NULL || strcmp(host, r->master_host) != 0 || port != r->master_port;
    free(r->master_host);
    r->master_host = host;
    r->master_port = (int)port;
    return true;
}

static void on_sentinel_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    tp_redis *r = tp_redis_from(ac);
    char why[200];
    if (r == NULL || reply == NULL)
        return;       /* freed, or the disconnect callback handles it */
    release(r, true); /* hiredis frees it when this callback returns */
    bool changed = false;
    if (!take_master_addr(r, reply, &changed, why, sizeof why)) {
        sentinel_failed(r, why);
        return;
    }
    const tp_redis_sentinel *s = &r->url.sentinels[r->sentinel];
    tp_log(r->log, changed ? TEMPEST_LOG_INFO : TEMPEST_LOG_DEBUG,
           "redis: sentinel %s:%d: master \"%s\" is at %s:%d", s->host, s->port, r->url.master,
           r->master_host, r->master_port);
    connect_master(r);
}

static void start_connect(tp_redis *r) {
    if (r->url.nsentinels == 0) {
        connect_master(r);
        return;
    }
    r->sentinel = 0;
    ask_sentinel(r);
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

tp_redis *tp_redis_new(struct event_base *base, const tp_redis_url *url,
                       const tp_redis_timing *timing, const tp_logger *log, tp_redis_state_fn *fn,
                       void *arg) {
    tp_redis *r = tp_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->base = base;
    r->log = log;
    r->fn = fn;
    r->arg = arg;
    r->state = TEMPEST_NODE_CONNECTING;
    r->timing = timing ? *timing : (tp_redis_timing){0};
    if (r->timing.connect_timeout_ms <= 0)
        r->timing.connect_timeout_ms = 2000;
    if (r->timing.reconnect_min_ms <= 0)
        r->timing.reconnect_min_ms = 100;
    if (r->timing.reconnect_max_ms < r->timing.reconnect_min_ms)
        r->timing.reconnect_max_ms =
            r->timing.reconnect_min_ms > 5000 ? r->timing.reconnect_min_ms : 5000;
    r->timer = evtimer_new(base, on_timer, r);
    r->demoted = event_new(base, -1, 0, on_demoted, r);
    r->noscript = event_new(base, -1, 0, on_noscript, r);
    if (r->timer == NULL || r->demoted == NULL || r->noscript == NULL ||
        copy_url(&r->url, url) != 0)
        goto fail;
    if (url->nseeds > 0) { /* a facade: lib/cluster.c connects */
        if ((r->cluster = tp_cluster_new(r, base, url, &r->timing, log)) == NULL)
            goto fail;
        return r;
    }
    start_connect(r);
    return r;
fail:
    tp_redis_free(r);
    return NULL;
}

void tp_redis_free(tp_redis *r) {
    if (r == NULL)
        return;
    tp_cluster_free(r->cluster);
    release(r, true);
    if (r->timer)
        event_free(r->timer);
    if (r->demoted)
        event_free(r->demoted);
    if (r->noscript)
        event_free(r->noscript);
    free(r->master_host);
    tp_redis_url_clear(&r->url);
    free(r);
}

void tp_redis_flush(tp_redis *r) {
    int done = 0;
    if (r != NULL && r->cluster != NULL)
        tp_cluster_flush(r->cluster);
    if (r != NULL && r->ac != NULL && r->state == TEMPEST_NODE_UP)
        redisBufferWrite(&r->ac->c, &done);
}

/* Writes `c` then the decimal digits of `n` then CRLF at `p`; returns the end. */
static char *put_header(char *p, char c, size_t n) {
    char digits[24];
    int k = 0;
    do
        digits[k++] = (char)('0' + n % 10);
    while ((n /= 10) > 0);
    *p++ = c;
    while (k > 0)
        *p++ = digits[--k];
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

static size_t arg_len(const char **argv, const size_t *argvlen, int i) {
    return argvlen ? argvlen[i] : strlen(argv[i]);
}

/* The RESP form of a command, in `buf` when it fits (else malloc'd): what
 * redisFormatCommandArgv makes, without its per-argument sdscatfmt.
 * `argvlen` may be NULL for C strings. NUL-terminated, as hiredis's own:
 * redisAsyncFormattedCommand scans (P)SUBSCRIBE commands with strchr. */
static char *format_argv(char *buf, size_t size, int argc, const char **argv, const size_t *argvlen,
                         size_t *len) {
    size_t need = 25;
    for (int i = 0; i < argc; i++)
        need += arg_len(argv, argvlen, i) + 28;
    char *cmd = need <= size ? buf : tp_malloc(need), *p = cmd;
    if (cmd == NULL)
        return NULL;
    p = put_header(p, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t n = arg_len(argv, argvlen, i);
        p = put_header(p, '$', n);
        memcpy(p, argv[i], n);
        p += n;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p = '\0';
    *len = (size_t)(p - cmd);
    return cmd;
}

static int cluster_argv(tp_redis *r, redisCallbackFn *fn, void *privdata, int argc,
                        const char **argv, const size_t *argvlen);

int tp_redis_argv(tp_redis *r, redisCallbackFn *fn, void *privdata, int argc, const char **argv,
                  const size_t *argvlen) {
    if (r->cluster)
        return cluster_argv(r, fn, privdata, argc, argv, argvlen);
    if (r->state != TEMPEST_NODE_UP || r->ac == NULL)
        return TEMPEST_EDOWN;
    char buf[4096];
    size_t len;
    char *cmd = format_argv(buf, sizeof buf, argc, argv, argvlen, &len);
    if (cmd == NULL)
        return TEMPEST_ENOMEM;
    int rc = redisAsyncFormattedCommand(r->ac, fn, privdata, cmd, len);
    if (cmd != buf)
        free(cmd);
    return rc == REDIS_OK ? 0 : TEMPEST_EDOWN;
}

int tp_redis_cmd(tp_redis *r, redisCallbackFn *fn, void *privdata, const char *fmt, ...) {
    if (r->cluster && r->state == TEMPEST_NODE_UP) {
        char *cmd = NULL;
        va_list ap;
        va_start(ap, fmt);
        int len = redisvFormatCommand(&cmd, fmt, ap);
        va_end(ap);
        return len < 0 ? TEMPEST_ENOMEM
                       : tp_cluster_send(r->cluster, fn, privdata, cmd, (size_t)len);
    }
    if (r->state != TEMPEST_NODE_UP || r->ac == NULL)
        return TEMPEST_EDOWN;
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(r->ac, fn, privdata, fmt, ap);
    va_end(ap);
    return rc == REDIS_OK ? 0 : TEMPEST_EDOWN;
}

/* ---- hooks of cluster mode (lib/cluster.c) --------------------------- */

static int cluster_argv(tp_redis *r, redisCallbackFn *fn, void *privdata, int argc,
                        const char **argv, const size_t *argvlen) {
    if (r->state != TEMPEST_NODE_UP)
        return TEMPEST_EDOWN;
    size_t len;
    char *cmd = format_argv(NULL, 0, argc, argv, argvlen, &len);
    if (cmd == NULL)
        return TEMPEST_ENOMEM;
    return tp_cluster_send(r->cluster, fn, privdata, cmd, len);
}

void tp_redis_set_state(tp_redis *r, int state, const char *reason) {
    snprintf(r->errstr, sizeof r->errstr, "%s", reason ? reason : "");
    set_state(r, state, reason);
}

void tp_redis_copy_shas(tp_redis *dst, const tp_redis *src) {
    memcpy(dst->shas, src->shas, sizeof dst->shas);
}

int tp_redis_formatted(tp_redis *r, redisCallbackFn *fn, void *privdata, const char *cmd,
                       size_t len) {
    if (r == NULL || r->state != TEMPEST_NODE_UP || r->ac == NULL)
        return TEMPEST_EDOWN;
    return redisAsyncFormattedCommand(r->ac, fn, privdata, cmd, len) == REDIS_OK ? 0
                                                                                 : TEMPEST_EDOWN;
}

redisAsyncContext *tp_redis_connect_raw(struct event_base *base, const char *host, int port,
                                        char *err, size_t errlen) {
    redisAsyncContext *ac = redisAsyncConnect(host, port);
    if (ac == NULL || ac->err) {
        snprintf(err, errlen, "cannot connect to %s:%d: %s", host, port,
                 ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        return NULL;
    }
    int one = 1;
    setsockopt(ac->c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (loop_attach(ac, base) != REDIS_OK) {
        snprintf(err, errlen, "cannot connect to %s:%d: out of memory", host, port);
        redisAsyncFree(ac);
        return NULL;
    }
    return ac;
}

int tp_redis_script(tp_redis *r, redisCallbackFn *fn, void *privdata, int script, int nkeys,
                    int argc, const char **argv, const size_t *argvlen) {
    enum { MAX_ARGS = TP_SCRIPT_MAX_ARGS + 3 };
    if (script < 0 || script >= TP_SCRIPT_COUNT || argc < 0 || argc > TP_SCRIPT_MAX_ARGS)
        return TEMPEST_EINVAL;
    char nk[16];
    const char *v[MAX_ARGS] = {"EVALSHA", r->shas[script], nk};
    size_t l[MAX_ARGS] = {7, 40, (size_t)snprintf(nk, sizeof nk, "%d", nkeys)};
    for (int i = 0; i < argc; i++) {
        v[3 + i] = argv[i];
        l[3 + i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    return tp_redis_argv(r, fn, privdata, argc + 3, v, l);
}
