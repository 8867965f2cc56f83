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
#include <hiredis/async.h>
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

static int attach(redisAsyncContext *ac, struct event_base *base) {
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
    if (attach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        went_down(r, "connect failed: out of memory");
        return;
    }
    ac->data = r;
    r->ac = ac;
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

int tp_redis_argv(tp_redis *r, redisCallbackFn *fn, void *privdata, int argc, const char **argv,
                  const size_t *argvlen) {
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
    if (attach(ac, base) != REDIS_OK) {
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
