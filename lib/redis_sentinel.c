/* SPDX-License-Identifier: MIT */
/*
 * The Redis Sentinel implementation of a tp_redis (redis+sentinel://): one
 * managed connection (lib/redis_conn.c) to the master, whose address the
 * sentinels give. Each (re)connect of that connection first asks them in
 * turn, each bounded by the connect timeout, for the master's address
 * (SENTINEL get-master-addr-by-name); DOWN, and the connection's backoff,
 * when none answers. The connection is master_only: its handshake ends with
 * ROLE, which must say "master", and a -READONLY reply (the master was
 * demoted under us: a failover) drops it, so that the reconnect asks the
 * sentinels again and follows the failover to the new master.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_ops.h"

typedef struct locator {
    tp_redis_conn *conn; /* to the master */
    struct event_base *base;
    const tp_logger *log;
    const tp_redis_url *url; /* the connection's copy */
    int connect_timeout_ms;
    tp_redis_ask *ask; /* of the sentinel being asked, or NULL */
    int sentinel;      /* index of the sentinel being asked */
    char *master_host; /* the address the sentinels gave */
    int master_port;
} locator;

static void sentinel_failed(locator *r, const char *why);
static void on_sentinel_reply(const redisReply *reply, const char *err, void *arg);

/* Asks sentinel number r->sentinel where the master is. */
static void ask_sentinel(locator *r) {
    const tp_redis_sentinel *s = &r->url->sentinels[r->sentinel];
    const char *argv[] = {"SENTINEL", "get-master-addr-by-name", r->url->master};
    char why[160];
    tp_redis_ask_options q = {.host = s->host,
                              .port = s->port,
                              .password = r->url->sentinel_password,
                              .argc = 3,
                              .argv = argv,
                              .timeout_ms = r->connect_timeout_ms,
                              .fn = on_sentinel_reply,
                              .arg = r};
    r->ask = tp_redis_ask_new(r->base, &q, why, sizeof why);
    if (r->ask == NULL)
        sentinel_failed(r, why);
}

/* The sentinel being asked failed: ask the next one; DOWN when none is left. */
static void sentinel_failed(locator *r, const char *why) {
    const tp_redis_sentinel *s = &r->url->sentinels[r->sentinel];
    tp_log(r->log, TEMPEST_LOG_WARN, "redis: sentinel %s:%d: %s", s->host, s->port, why);
    if (++r->sentinel < r->url->nsentinels) {
        ask_sentinel(r);
        return;
    }
    char all[200];
    snprintf(all, sizeof all, "no sentinel gave the address of master \"%.40s\" (last: %.100s)",
             r->url->master, why);
    tp_redis_conn_fail(r->conn, all);
}

/* ["host", "port"]: keeps the address (`changed` says if it is new); else false, `why` set. */
static bool take_master_addr(locator *r, const redisReply *rep, bool *changed, char *why,
                             size_t whylen) {
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(why, whylen, "%.150s", rep->str);
        return false;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        snprintf(why, whylen, "does not know master \"%.40s\"", r->url->master);
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

/* The sentinel's answer, or NULL and `err`; the question has ended. */
static void on_sentinel_reply(const redisReply *reply, const char *err, void *arg) {
    locator *r = arg;
    char why[200];
    r->ask = NULL;
    if (reply == NULL) {
        sentinel_failed(r, err);
        return;
    }
    bool changed = false;
    if (!take_master_addr(r, reply, &changed, why, sizeof why)) {
        sentinel_failed(r, why);
        return;
    }
    const tp_redis_sentinel *s = &r->url->sentinels[r->sentinel];
    tp_log(r->log, changed ? TEMPEST_LOG_INFO : TEMPEST_LOG_DEBUG,
           "redis: sentinel %s:%d: master \"%s\" is at %s:%d", s->host, s->port, r->url->master,
           r->master_host, r->master_port);
    tp_redis_conn_connect(r->conn, r->master_host, r->master_port);
}

/* Each (re)connect of the master's connection asks the sentinels in turn. */
static void locate(tp_redis_conn *c, void *arg) {
    (void)c;
    locator *r = arg;
    r->sentinel = 0;
    ask_sentinel(r);
}

static void sentinel_close(void *impl) {
    locator *r = impl;
    tp_redis_ask_free(r->ask);
    tp_redis_conn_free(r->conn);
    free(r->master_host);
    free(r);
}

static void *sentinel_open(struct event_base *base, const tp_redis_conn_options *o) {
    locator *r = tp_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    tp_redis_conn_options master = *o;
    master.locate = locate;
    master.locate_arg = r;
    master.master_only = true;
    r->base = base;
    r->log = o->log;
    r->connect_timeout_ms = o->timing->connect_timeout_ms;
    r->conn = tp_redis_conn_new(base, &master);
    if (r->conn == NULL) {
        sentinel_close(r);
        return NULL;
    }
    r->url = tp_redis_conn_url(r->conn);
    tp_redis_conn_start(r->conn);
    return r;
}

static int sentinel_send(void *impl, redisCallbackFn *fn, void *privdata, const char *cmd,
                         size_t len) {
    return tp_redis_conn_send(((locator *)impl)->conn, fn, privdata, cmd, len);
}

static void sentinel_flush(void *impl) {
    tp_redis_conn_flush(((locator *)impl)->conn);
}

static const char *sentinel_sha(const void *impl, int script) {
    return tp_redis_conn_sha(((const locator *)impl)->conn, script);
}

const tp_redis_ops tp_redis_sentinel_ops = {
    .open = sentinel_open,
    .close = sentinel_close,
    .send = sentinel_send,
    .flush = sentinel_flush,
    .sha = sentinel_sha,
};
