/* SPDX-License-Identifier: MIT */
/*
 * The service registry in Redis, and the requesters' discovery of
 * responders. A responder keeps `address -> expiry` in the sorted set
 * `tempest:<ns>:svc:<service>` (expiries use Redis's clock, so node clocks
 * do not matter) and announces joins and leaves on
 * `tempest:<ns>:svc:<service>:events`. A requester of a service learns of
 * its responders from the announcements and from a periodic registry read
 * (which also drops expired entries), and makes them the peers of the bare
 * requester of lib/rpc_requester.c: tempest_requester_new is here, as that
 * requester plus this discovery.
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tempest/pubsub.h>
#include <tempest/rpc.h>

#include "node.h"
#include "presence.h"
#include "rpc.h"

enum {
    EARLY_POLL_MS = 50, /* registry reads until the first one succeeds */
};

static const struct timeval zero_tv = {0, 0}; /* a timer for the next turn of the loop */

/* ---- registry scripts ------------------------------------------------ */

/* KEYS: registry. ARGV: address, ttl ms, join message, events channel (not
 * a key: in Redis Cluster it lives in no slot, and PUBLISH reaches every node).
 * Announces the address when it was absent or expired. */
static const char register_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ttl = tonumber(ARGV[2])\n"
    "local old = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
    "redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])\n"
    "if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end\n"
    "if not old or tonumber(old) <= now then\n"
    "  redis.call('PUBLISH', ARGV[4], ARGV[3])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* KEYS: registry. ARGV: address, leave message, events channel. A live
 * entry becomes a tombstone, score -(now + TOMBSTONE_MS), so that a
 * registry read that overtakes the leave message still tells "left" from
 * "expired". */
static const char withdraw_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local old = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
    "if not old or tonumber(old) < 0 then return 0 end\n"
    "redis.call('ZADD', KEYS[1], -(now + 10000), ARGV[1])\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[2])\n"
    "return 1\n";

/* KEYS: registry. Drops expired entries and tombstones older than 10 s;
 * returns {live addresses, addresses that left (tombstones)}. */
static const char list_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local n = string.format('%d', now)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '0', '(' .. n)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '(-' .. n, '(0')\n"
    "return {redis.call('ZRANGEBYSCORE', KEYS[1], n, '+inf'),\n"
    "        redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(0')}\n";

char *tp_rpc_joinf(const char *fmt, const char *a, const char *b) {
    size_t n = strlen(fmt) + strlen(a) + strlen(b);
    char *s = tp_malloc(n);
    if (s != NULL)
        snprintf(s, n, fmt, a, b);
    return s;
}

/* ---- responders' entries --------------------------------------------- */

void tp_registry_advertise(tempest_responder *r) {
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", r->ttl_ms);
    const char *argv[] = {"EVAL",           register_lua, "1",         r->key,
                          r->node->address, ttl,          r->join_msg, r->channel};
    if (tp_redis_argv(r->node->redis, tp_node_log_reply, (void *)"service registry", 8, argv,
                      NULL) != 0)
        tp_log(&r->node->log, TEMPEST_LOG_DEBUG, "responder %s: redis down, not advertised",
               r->service);
}

void tp_registry_withdraw(tempest_responder *r) {
    const char *argv[] = {"EVAL",           withdraw_lua, "1",       r->key,
                          r->node->address, r->leave_msg, r->channel};
    (void)tp_redis_argv(r->node->redis, tp_node_log_reply, (void *)"service registry", 7, argv,
                        NULL);
}

char *tp_registry_announcement(const char *event, const char *address) {
    json_t *j = json_pack("{ssss}", "event", event, "address", address);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

/* ---- discovery ------------------------------------------------------- */

typedef struct peer_event {
    int event;
    char *addr;
} peer_event;

/* Tells the application; true when a callback freed the requester. */
static bool tell(tempest_requester *q, peer_event *ev, int n) {
    bool freed = false;
    for (int i = 0; i < n; i++) {
        if (!freed && q->on_peer != NULL) {
            tp_requester_enter(q);
            q->on_peer(q, ev[i].event, ev[i].addr, q->peer_arg);
            freed = tp_requester_leave(q);
        }
        free(ev[i].addr);
    }
    free(ev);
    return freed;
}

static void note(peer_event **ev, int *n, int event, const char *addr) {
    peer_event *grown = tp_realloc(*ev, (size_t)(*n + 1) * sizeof *grown);
    if (grown == NULL)
        return; /* the event is lost, the peer table is right */
    *ev = grown;
    grown[*n] = (peer_event){.event = event, .addr = tp_strdup(addr)};
    if (grown[*n].addr != NULL)
        (*n)++;
}

/*
 * A responder is in the registry (`announced`: it said so itself): make
 * sure it is a peer. Only an announcement brings back a peer that left or
 * expired: a registry read may predate the leave it would undo.
 */
static void peer_present(tempest_requester *q, const char *addr, bool announced, peer_event **ev,
                         int *n) {
    peer *p = tp_peer_find(q, addr);
    if (p == NULL && (p = tp_peer_add(q, addr)) != NULL)
        note(ev, n, TEMPEST_PEER_JOINED, addr);
    else if (p != NULL && p->gone && announced) {
        p->gone = false;
        note(ev, n, TEMPEST_PEER_JOINED, addr);
    }
    if (p != NULL) {
        p->seen = true;
        p->epoch = announced ? q->epoch : p->epoch;
    }
}

/* Closes the idle connections of departed responders; reconnects the rest. */
static void sweep(tempest_requester *q) {
    for (int i = q->npeers - 1; i >= 0; i--) {
        peer *p = q->peers[i];
        if (p->gone && (p->ac == NULL || p->inflight == 0))
            tp_peer_remove(q, i);
        else if (!p->gone && p->ac == NULL)
            (void)tp_peer_connect(p);
    }
}

static bool listed(const redisReply *list, const char *addr) {
    for (size_t i = 0; i < list->elements; i++)
        if (list->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(list->element[i]->str, addr) == 0)
            return true;
    return false;
}

/* Applies a registry read {live, left}: joins, leaves, expiries,
 * reconnections. */
static void apply_registry(tempest_requester *q, const redisReply *live, const redisReply *left) {
    peer_event *ev = NULL;
    int n = 0;
    for (int i = 0; i < q->npeers; i++)
        q->peers[i]->seen = false;
    for (size_t i = 0; i < live->elements; i++)
        if (live->element[i]->type == REDIS_REPLY_STRING)
            peer_present(q, live->element[i]->str, false, &ev, &n);
    for (int i = 0; i < q->npeers; i++) {
        peer *p = q->peers[i];
        if (!p->seen && !p->gone && p->epoch <= q->poll_epoch) { /* not announced since */
            p->gone = true;
            note(&ev, &n, listed(left, p->addr) ? TEMPEST_PEER_LEFT : TEMPEST_PEER_EXPIRED,
                 p->addr);
        }
    }
    sweep(q);
    tell(q, ev, n);
}

static void on_poll_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL)
        return;
    tempest_node *node = tp_redis_owner(r);
    tp_rpc *rpc = tp_rpc_get(node);
    tempest_requester *q = rpc ? tp_map_get(&rpc->requesters, (long long)(intptr_t)privdata) : NULL;
    if (q == NULL)
        return;
    q->polling = false;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_ARRAY || rep->element[1]->type != REDIS_REPLY_ARRAY) {
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
            tp_log(&node->log, TEMPEST_LOG_WARN, "service registry: %s", rep->str);
        return;
    }
    q->polled = true;
    apply_registry(q, rep->element[0], rep->element[1]);
}

/* One registry read at a time (a reply lost with a dropped connection
 * frees the turn after a while). */
static void on_poll(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tempest_requester *q = arg;
    const char *argv[] = {"EVAL", list_lua, "1", q->key};
    long long now = tp_now_ms();
    bool busy = q->polling && now - q->poll_sent < 10LL * q->refresh_ms;
    void *serial = (void *)(intptr_t)q->serial;
    if (!busy && tp_redis_argv(q->node->redis, on_poll_reply, serial, 4, argv, NULL) == 0) {
        q->polling = true;
        q->poll_sent = now;
        q->poll_epoch = q->epoch;
    }
    int ms = q->polled ? q->refresh_ms : EARLY_POLL_MS;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(q->poll, &tv);
}

/* An announcement: {"event": "join"|"leave", "address": "host:port"}. */
static void on_announce(tempest_subscriber *sub, int what, const char *channel, const char *event,
                        const char *data, size_t len, void *arg) {
    (void)sub, (void)channel, (void)event;
    tempest_requester *q = arg;
    const char *kind = NULL, *addr = NULL;
    json_t *j = what == TEMPEST_SUB_RAW ? json_loadb(data, len, 0, NULL) : NULL;
    if (json_unpack(j, "{s:s, s:s}", "event", &kind, "address", &addr) != 0 || q->freeing) {
        json_decref(j);
        return;
    }
    peer_event *ev = NULL;
    int n = 0;
    peer *p = tp_peer_find(q, addr);
    q->epoch++;
    if (strcmp(kind, "join") == 0) {
        peer_present(q, addr, true, &ev, &n);
    } else if (strcmp(kind, "leave") == 0 && p != NULL && !p->gone) {
        p->gone = true;
        note(&ev, &n, TEMPEST_PEER_LEFT, addr);
    }
    json_decref(j);
    tell(q, ev, n);
}

/* ---- requesters of a service ----------------------------------------- */

static int requester_check(tempest_node *node, const tempest_requester_options *o, const char *ns,
                           tempest_error *err) {
    if (node == NULL || o == NULL || !tp_name_valid(o->service) || !tp_name_valid(ns)) {
        tp_error_set(err, TEMPEST_EINVAL, "requester: a node and a valid service name are needed");
        return TEMPEST_EINVAL;
    }
    if (o->timeout_ms < 0 || o->max_queued < 0 || o->refresh_ms < 0) {
        tp_error_set(err, TEMPEST_EINVAL,
                     "requester: negative timeout_ms, max_queued or refresh_ms");
        return TEMPEST_EINVAL;
    }
    return 0;
}

static void describe_requester(void *owner, json_t *record) {
    tempest_requester *q = owner;
    tp_presence_add_role(record, "requester");
    tp_presence_add_count(record, "requester", "requests", q->answered + q->calls.len);
    tp_presence_add_count(record, "requester", "in_flight", q->calls.len);
    tp_presence_add_count(record, "requester", "errors", q->failures);
    tp_presence_add_count(record, "requester", "responders", (uint64_t)tempest_requester_live(q));
}

static int requester_discovery(tempest_requester *q, const char *service, const char *ns) {
    tp_rpc *rpc = tp_rpc_get(q->node);
    q->service = tp_strdup(service);
    q->ns = tp_strdup(ns);
    q->key = tp_rpc_joinf("tempest:%s:svc:%s", ns, service);
    q->channel = q->key ? tp_rpc_joinf("%s%s", q->key, ":events") : NULL;
    q->poll = evtimer_new(q->node->base, on_poll, q);
    if (!q->service || !q->ns || !q->channel || !q->poll)
        return TEMPEST_ENOMEM;
    if (tp_presence_join(q->node, q, describe_requester, NULL, 0) != 0)
        return TEMPEST_ENOMEM;
    q->joined = true;
    q->sub = tempest_subscriber_new(q->node, on_announce, q, NULL);
    if (q->sub == NULL || tempest_subscribe(q->sub, q->channel, false) != 0)
        return TEMPEST_ENOMEM;
    q->serial = ++rpc->next_serial;
    if (tp_map_put(&rpc->requesters, q->serial, q) != 0) {
        q->serial = 0;
        return TEMPEST_ENOMEM;
    }
    evtimer_add(q->poll, &zero_tv);
    return 0;
}

TEMPEST_API tempest_requester *tempest_requester_new(tempest_node *node,
                                                     const tempest_requester_options *options,
                                                     tempest_error *err) {
    const char *ns =
        options && options->namespace ? options->namespace : tempest_node_namespace(node);
    if (requester_check(node, options, ns, err) != 0)
        return NULL;
    tempest_requester *q = tp_rpc_of(node) ? tp_requester_alloc(node, options) : NULL;
    if (q == NULL || requester_discovery(q, options->service, ns) != 0) {
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        tp_requester_destroy(q);
        return NULL;
    }
    return q;
}
