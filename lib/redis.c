/* SPDX-License-Identifier: MIT */
/*
 * The Redis connection callers hold (tp_redis): one handle whatever is
 * behind the URL. tp_redis_new picks an implementation from the URL (an
 * operation table, lib/redis_ops.h): one server (lib/redis_conn.c), a
 * master that the sentinels resolve (lib/redis_sentinel.c), or the masters
 * of a Redis Cluster (lib/redis_cluster.c). The handle keeps what callers
 * read (the state, the last error's text, the owner) and tells the owner of
 * every change the implementation reports; it formats commands into RESP
 * and hands them down, with EVALSHA for the library's scripts.
 *
 * Nothing below calls the handle: an implementation reports its state
 * through the function it was opened with, and the contexts it hands to
 * reply callbacks lead back here through their tp_redis_link.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis.h"
#include "redis_ops.h"
#include "scripts.h"

struct tp_redis {
    const tp_redis_ops *ops;
    void *impl;
    const tp_logger *log;
    tp_redis_state_fn *fn;
    void *arg;
    int state;
    char errstr[256];
};

tp_redis *tp_redis_from(const redisAsyncContext *ac) {
    const tp_redis_link *l = ac ? ac->data : NULL;
    return l ? l->handle : NULL;
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

/* What the implementation reports: the state and its reason, told to the owner. */
static void on_state(tp_redis_conn *c, int state, const char *reason, void *arg) {
    (void)c;
    tp_redis *r = arg;
    snprintf(r->errstr, sizeof r->errstr, "%s", reason ? reason : "");
    r->state = state;
    if (r->fn)
        r->fn(r, state, reason, r->arg);
}

static const tp_redis_ops *ops_of(const tp_redis_url *url) {
    if (url->nseeds > 0)
        return &tp_redis_cluster_ops;
    return url->nsentinels > 0 ? &tp_redis_sentinel_ops : &tp_redis_single_ops;
}

tp_redis *tp_redis_new(struct event_base *base, const tp_redis_url *url,
                       const tp_redis_timing *timing, const tp_logger *log, tp_redis_state_fn *fn,
                       void *arg) {
    tp_redis *r = tp_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->ops = ops_of(url);
    r->log = log;
    r->fn = fn;
    r->arg = arg;
    r->state = TEMPEST_NODE_CONNECTING;
    tp_redis_timing t = tp_redis_timing_defaults(timing);
    tp_redis_conn_options o = {
        .url = url, .timing = &t, .log = log, .state_fn = on_state, .arg = r, .handle = r};
    r->impl = r->ops->open(base, &o);
    if (r->impl == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

void tp_redis_free(tp_redis *r) {
    if (r == NULL)
        return;
    r->ops->close(r->impl);
    free(r);
}

void tp_redis_flush(tp_redis *r) {
    if (r != NULL)
        r->ops->flush(r->impl);
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
    if (r->state != TEMPEST_NODE_UP)
        return TEMPEST_EDOWN;
    char buf[4096];
    size_t len;
    char *cmd = format_argv(buf, sizeof buf, argc, argv, argvlen, &len);
    if (cmd == NULL)
        return TEMPEST_ENOMEM;
    int rc = r->ops->send(r->impl, fn, privdata, cmd, len);
    if (cmd != buf)
        free(cmd);
    return rc;
}

int tp_redis_cmd(tp_redis *r, redisCallbackFn *fn, void *privdata, const char *fmt, ...) {
    if (r->state != TEMPEST_NODE_UP)
        return TEMPEST_EDOWN;
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return TEMPEST_ENOMEM;
    int rc = r->ops->send(r->impl, fn, privdata, cmd, (size_t)len);
    free(cmd);
    return rc;
}

int tp_redis_script(tp_redis *r, redisCallbackFn *fn, void *privdata, int script, int nkeys,
                    int argc, const char **argv, const size_t *argvlen) {
    enum { MAX_ARGS = TP_SCRIPT_MAX_ARGS + 3 };
    if (script < 0 || script >= TP_SCRIPT_COUNT || argc < 0 || argc > TP_SCRIPT_MAX_ARGS)
        return TEMPEST_EINVAL;
    char nk[16];
    const char *v[MAX_ARGS] = {"EVALSHA", r->ops->sha(r->impl, script), nk};
    size_t l[MAX_ARGS] = {7, 40, (size_t)snprintf(nk, sizeof nk, "%d", nkeys)};
    for (int i = 0; i < argc; i++) {
        v[3 + i] = argv[i];
        l[3 + i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    return tp_redis_argv(r, fn, privdata, argc + 3, v, l);
}
