/* SPDX-License-Identifier: MIT */
/*
 * The managed Redis connection. A state machine on one redisAsyncContext:
 * CONNECTING (TCP connect, bounded by a timer) -> handshake (AUTH, SELECT,
 * pipelined) -> UP; any failure -> DOWN and a reconnect timer whose delay
 * doubles from reconnect_min to reconnect_max, with jitter in [50%, 100%].
 * hiredis 0.14 has no async timeouts, so the connect timer is ours; the
 * waits of blocking commands are bounded by their own Redis-side timeout.
 */
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "redis.h"
#include "scripts.h"

struct tp_redis {
    struct event_base *base;
    redisAsyncContext *ac; /* NULL while down */
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
};

static void start_connect(tp_redis *r);

tp_redis *tp_redis_from(const redisAsyncContext *ac) {
    return ac ? (tp_redis *)ac->data : NULL;
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

/* The context is gone (hiredis freed it or will): go DOWN and retry later. */
static void went_down(tp_redis *r, const char *why) {
    r->ac = NULL;
    snprintf(r->errstr, sizeof r->errstr, "%s", why);
    int ms = backoff_ms(r);
    r->attempt++;
    tp_log(r->log, TEMPEST_LOG_WARN, "redis: %s; reconnecting in %d ms", why, ms);
    arm_timer(r, ms);
    set_state(r, TEMPEST_NODE_DOWN, r->errstr);
}

/* Drops a live context on purpose (handshake failed, connect timed out). */
static void drop(tp_redis *r, const char *why) {
    redisAsyncContext *ac = r->ac;
    ac->data = NULL; /* its callbacks must not reach us any more */
    r->ac = NULL;
    redisAsyncFree(ac);
    went_down(r, why);
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
    intptr_t script = (intptr_t)privdata;
    if (script > 0 && rep->type == REDIS_REPLY_STRING && rep->len == 40)
        memcpy(r->shas[script - 1], rep->str, 41);
    if (--r->handshake_left > 0)
        return;
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
    /* SELECT even for db 0: its reply also proves the link is usable. */
    redisAsyncCommand(r->ac, on_handshake, NULL, "SELECT %s", db);
    r->handshake_left++;
    for (intptr_t i = 0; i < TP_SCRIPT_COUNT; i++) {
        redisAsyncCommand(r->ac, on_handshake, (void *)(i + 1), "SCRIPT LOAD %s", tp_scripts[i]);
        r->handshake_left++;
    }
}

static void on_connect(const redisAsyncContext *ac, int status) {
    tp_redis *r = tp_redis_from(ac);
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
    tp_redis *r = tp_redis_from(ac);
    if (r == NULL)
        return;
    char why[200];
    if (status == REDIS_OK)
        snprintf(why, sizeof why, "connection closed");
    else
        snprintf(why, sizeof why, "connection lost: %.150s", ac->errstr);
    went_down(r, why);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_redis *r = arg;
    if (r->ac != NULL) {
        char why[64];
        snprintf(why, sizeof why, "connect timed out after %d ms", r->timing.connect_timeout_ms);
        drop(r, why);
        return;
    }
    start_connect(r);
}

static redisAsyncContext *open_context(const tp_redis_url *url) {
    if (url->path)
        return redisAsyncConnectUnix(url->path);
    return redisAsyncConnect(url->host, url->port);
}

static void start_connect(tp_redis *r) {
    redisAsyncContext *ac = open_context(&r->url);
    if (ac == NULL || ac->err) {
        char why[200];
        snprintf(why, sizeof why, "connect failed: %.150s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        went_down(r, why);
        return;
    }
    ac->data = r;
    r->ac = ac;
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    arm_timer(r, r->timing.connect_timeout_ms);
}

static int copy_url(tp_redis_url *dst, const tp_redis_url *src) {
    *dst = *src;
    dst->host = tp_strdup(src->host);
    dst->path = tp_strdup(src->path);
    dst->user = tp_strdup(src->user);
    dst->password = tp_strdup(src->password);
    if ((src->host && !dst->host) || (src->path && !dst->path) || (src->user && !dst->user) ||
        (src->password && !dst->password))
        return TEMPEST_ENOMEM;
    return 0;
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
    if (r->timer == NULL || copy_url(&r->url, url) != 0)
        goto fail;
    start_connect(r);
    return r;
fail:
    tp_redis_free(r);
    return NULL;
}

void tp_redis_free(tp_redis *r) {
    if (r == NULL)
        return;
    if (r->ac) {
        r->ac->data = NULL;
        redisAsyncFree(r->ac);
    }
    if (r->timer)
        event_free(r->timer);
    tp_redis_url_clear(&r->url);
    free(r);
}

void tp_redis_flush(tp_redis *r) {
    int done = 0;
    if (r != NULL && r->ac != NULL && r->state == TEMPEST_NODE_UP)
        redisBufferWrite(&r->ac->c, &done);
}

int tp_redis_argv(tp_redis *r, redisCallbackFn *fn, void *privdata, int argc, const char **argv,
                  const size_t *argvlen) {
    if (r->state != TEMPEST_NODE_UP || r->ac == NULL)
        return TEMPEST_EDOWN;
    if (redisAsyncCommandArgv(r->ac, fn, privdata, argc, argv, argvlen) != REDIS_OK)
        return TEMPEST_EDOWN;
    return 0;
}

int tp_redis_cmd(tp_redis *r, redisCallbackFn *fn, void *privdata, const char *fmt, ...) {
    if (r->state != TEMPEST_NODE_UP || r->ac == NULL)
        return TEMPEST_EDOWN;
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(r->ac, fn, privdata, fmt, ap);
    va_end(ap);
    return rc == REDIS_OK ? 0 : TEMPEST_EDOWN;
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
    redisLibeventAttach(ac, base);
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
