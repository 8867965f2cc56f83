/* SPDX-License-Identifier: MIT */
/*
 * The requester: calls to responders over RESP, and the node's share of
 * RPC. A requester keeps one pipelined hiredis connection per responder
 * and sends round-robin over the connected ones. A call lives in the
 * requester's table (id -> call) from send to its one callback; replies
 * find their call by id, so a reply to a call that timed out finds nothing
 * and is dropped. Failures seen inside hiredis's teardown of a connection
 * are queued and settled from the requester's own event. Direct calls
 * (tempest_call) use one internal requester per address, without
 * discovery, owned by the node's share of RPC: a node service whose `stop`
 * hook cancels them. A requester of a service adds discovery to this one
 * (lib/rpc_registry.c).
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <tempest/rpc.h>

#include "node.h"
#include "presence.h"
#include "rpc.h"

enum {
    DEFAULT_TIMEOUT_MS = 5000,
    DEFAULT_MAX_QUEUED = 1000,
    DEFAULT_REFRESH_MS = 1000,
};

/* ---- the node's share ------------------------------------------------ */

/* The share is a service of the node (node.h), made on first use; its
 * `stop` hook cancels the direct calls and frees it. */
static void rpc_stop(tempest_node *node);

static const tp_node_service rpc_service = {.stop = rpc_stop};

int tp_rpc_attach(tempest_node *node) {
    return tp_node_attach(node, &rpc_service);
}

tp_rpc *tp_rpc_get(const tempest_node *node) {
    return tp_node_state(node, &rpc_service);
}

tp_rpc *tp_rpc_of(tempest_node *node) {
    tp_rpc *rpc = tp_rpc_get(node);
    if (rpc != NULL)
        return rpc;
    if ((rpc = tp_calloc(1, sizeof *rpc)) != NULL &&
        tp_node_set_state(node, &rpc_service, rpc) != 0) {
        free(rpc);
        rpc = NULL;
    }
    return rpc;
}

/* ---- requester: state ------------------------------------------------- */

enum call_state { CALL_NEW, CALL_QUEUED, CALL_SENT, CALL_FAILED };

struct call {
    tempest_requester *owner;
    struct call *prev, *next; /* in the wait queue or the failed list */
    peer *peer;               /* CALL_SENT */
    struct event *timer;
    tempest_reply_fn *fn;
    void *arg;
    long long id;
    int state;
    bool idempotent, retried;
    size_t type_len, body_len;
    char *type, *body; /* in data[] */
    char data[];
};

static void route(call *c);

static void list_push(call_list *l, call *c) {
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->len++;
}

static void list_remove(call_list *l, call *c) {
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->len--;
}

static call *list_pop(call_list *l) {
    call *c = l->head;
    if (c != NULL)
        list_remove(l, c);
    return c;
}

static void kick(tempest_requester *q) {
    event_active(q->kick, EV_READ, 0);
}

/* ---- requester: callbacks guard --------------------------------------- */

void tp_requester_enter(tempest_requester *q) {
    tp_node_enter(q->node);
    q->depth++;
}

/* Returns true when the requester (or the node) was freed meanwhile. */
bool tp_requester_leave(tempest_requester *q) {
    tempest_node *node = q->node;
    bool freed = false;
    if (--q->depth == 0 && q->freeing) {
        tp_requester_destroy(q);
        freed = true;
    }
    return tp_node_leave(node) || freed;
}

/* Takes `c` out of every structure of its requester. */
static void call_detach(call *c) {
    tempest_requester *q = c->owner;
    tp_map_del(&q->calls, c->id);
    if (c->state == CALL_QUEUED)
        list_remove(&q->queue, c);
    else if (c->state == CALL_FAILED)
        list_remove(&q->failed, c);
    if (c->timer != NULL)
        event_free(c->timer);
}

/* Delivers the one callback of `c` and frees it. True when the callback
 * freed the requester or the node. */
static bool finish(call *c, int status, json_t *json) {
    tempest_requester *q = c->owner;
    tempest_reply_fn *fn = c->fn;
    void *arg = c->arg;
    long long id = c->id;
    call_detach(c);
    free(c);
    q->answered++;
    q->failures += status < 0;
    if (fn == NULL)
        return false;
    tp_requester_enter(q);
    fn(q->direct ? NULL : q, id, status, json, arg);
    return tp_requester_leave(q);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    finish(arg, TEMPEST_ETIMEDOUT, NULL);
}

/* ---- requester: peers ------------------------------------------------- */

static bool routable(const peer *p) {
    return p->up && !p->gone;
}

static peer *next_peer(tempest_requester *q) {
    for (int i = 0; i < q->npeers; i++) {
        int at = (q->rr + i) % q->npeers;
        if (routable(q->peers[at])) {
            q->rr = (at + 1) % q->npeers;
            return q->peers[at];
        }
    }
    return NULL;
}

peer *tp_peer_find(const tempest_requester *q, const char *addr) {
    for (int i = 0; i < q->npeers; i++)
        if (strcmp(q->peers[i]->addr, addr) == 0)
            return q->peers[i];
    return NULL;
}

/* Sends the waiting calls while a responder is live. */
static void drain_queue(tempest_requester *q) {
    while (q->queue.head != NULL && next_peer(q) != NULL) {
        call *c = list_pop(&q->queue);
        c->state = CALL_NEW;
        route(c);
    }
}

static void on_peer_connect(const redisAsyncContext *ac, int status) {
    peer *p = ac->data;
    if (p == NULL)
        return;
    tempest_requester *q = p->owner;
    if (status != REDIS_OK) {
        tp_log(&q->node->log, TEMPEST_LOG_WARN, "cannot reach responder %s: %s", p->addr,
               ac->errstr);
        ((redisAsyncContext *)ac)->data = NULL; /* hiredis frees it after this */
        p->ac = NULL;
        q->connect_failed = q->direct;
        kick(q);
        return;
    }
    p->up = true;
    drain_queue(q);
}

static void on_peer_disconnect(const redisAsyncContext *ac, int status) {
    (void)status;
    peer *p = ac->data;
    if (p == NULL)
        return;
    p->ac = NULL;
    p->up = false;
    tp_log(&p->owner->node->log, TEMPEST_LOG_INFO, "connection to responder %s closed", p->addr);
    kick(p->owner);
}

static void on_peer_auth(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p != NULL && rep != NULL && rep->type == REDIS_REPLY_ERROR)
        tp_log(&p->owner->node->log, TEMPEST_LOG_WARN, "responder %s refused AUTH: %s", p->addr,
               rep->str);
}

int tp_peer_connect(peer *p) {
    tempest_requester *q = p->owner;
    char *host = NULL, err[200] = "out of memory";
    int port;
    if (tp_addr_parse(p->addr, &host, &port, err, sizeof err) == 0)
        p->ac = tp_redis_connect_raw(q->node->base, host, port, err, sizeof err);
    free(host);
    if (p->ac == NULL) {
        tp_log(&q->node->log, TEMPEST_LOG_WARN, "responder %s: %s", p->addr, err);
        return TEMPEST_EDOWN;
    }
    p->ac->data = p;
    redisAsyncSetConnectCallback(p->ac, on_peer_connect);
    redisAsyncSetDisconnectCallback(p->ac, on_peer_disconnect);
    const char *secret = q->node->secret;
    if (secret != NULL) {
        const char *argv[] = {"AUTH", secret};
        size_t lens[] = {4, strlen(secret)};
        redisAsyncCommandArgv(p->ac, on_peer_auth, NULL, 2, argv, lens);
    }
    return 0;
}

peer *tp_peer_add(tempest_requester *q, const char *addr) {
    peer *p = tp_calloc(1, sizeof *p);
    peer **grown = p ? tp_realloc(q->peers, (size_t)(q->npeers + 1) * sizeof *grown) : NULL;
    if (grown != NULL)
        q->peers = grown;
    if (grown == NULL || (p->addr = tp_strdup(addr)) == NULL) {
        free(p);
        return NULL;
    }
    p->owner = q;
    q->peers[q->npeers++] = p;
    (void)tp_peer_connect(p); /* retried at the next registry read */
    return p;
}

/* Closes the connection (owed callbacks are ignored) and frees `p`. */
static void peer_free(peer *p) {
    if (p->ac != NULL) {
        p->ac->data = NULL;
        redisAsyncFree(p->ac);
    }
    free(p->addr);
    free(p);
}

void tp_peer_remove(tempest_requester *q, int at) {
    peer_free(q->peers[at]);
    memmove(&q->peers[at], &q->peers[at + 1], (size_t)(q->npeers - at - 1) * sizeof *q->peers);
    q->npeers--;
    if (q->rr >= q->npeers)
        q->rr = 0;
}

/* ---- requester: calls --------------------------------------------------- */

/* A call whose connection broke, or whose responder is shutting down. */
static void call_failed(call *c) {
    tempest_requester *q = c->owner;
    c->peer = NULL;
    c->state = CALL_FAILED;
    list_push(&q->failed, c);
    kick(q);
}

/* "ERR <code> <message>" -> "<code> <message>"; other errors as they are. */
static const char *error_body(const redisReply *rep) {
    return strncmp(rep->str, "ERR ", 4) == 0 ? rep->str + 4 : rep->str;
}

static bool code_is(const char *text, const char *code) {
    size_t n = strlen(code);
    return strncmp(text, code, n) == 0 && (text[n] == ' ' || text[n] == '\0');
}

/* Settles `c` with the reply; true when a callback freed the requester. */
static bool take_reply(call *c, peer *p, const redisReply *rep) {
    if (rep->type == REDIS_REPLY_STRING) {
        json_t *j = json_loadb(rep->str, rep->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        bool freed = finish(c, j != NULL ? 0 : TEMPEST_EPROTO, j);
        json_decref(j);
        return freed;
    }
    if (rep->type != REDIS_REPLY_ERROR)
        return finish(c, TEMPEST_EPROTO, NULL);
    const char *text = error_body(rep);
    bool shutdown = code_is(text, "SHUTDOWN");
    bool misrouted = code_is(text, "NOSERVICE") && !c->owner->direct && !c->retried;
    if (shutdown || misrouted) {
        p->gone = !c->owner->direct; /* stale registry entry: send elsewhere */
        if (misrouted)
            c->idempotent = true; /* it never ran: safe to send again */
        call_failed(c);
        return false;
    }
    json_t *j = json_string(text);
    bool freed = finish(c, TEMPEST_EREMOTE, j);
    json_decref(j);
    return freed;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    peer *p = ac->data;
    if (p == NULL)
        return;
    p->inflight--;
    tempest_requester *q = p->owner;
    call *c = tp_map_get(&q->calls, (long long)(intptr_t)privdata);
    if (reply == NULL)
        p->up = false; /* the connection is going down */
    if (c == NULL || c->state != CALL_SENT || c->peer != p)
        return; /* timed out meanwhile: the reply is dropped */
    if (reply == NULL)
        call_failed(c);
    else
        take_reply(c, p, reply);
}

/* Sends `c` (in no list) to the next live responder, or queues it. */
static void route(call *c) {
    tempest_requester *q = c->owner;
    const char *svc = q->direct ? "*" : q->service;
    const char *argv[] = {"RPC", svc, c->type, c->body};
    size_t lens[] = {3, strlen(svc), c->type_len, c->body_len};
    peer *p;
    while ((p = next_peer(q)) != NULL) {
        void *id = (void *)(intptr_t)c->id;
        if (redisAsyncCommandArgv(p->ac, on_reply, id, 4, argv, lens) == REDIS_OK) {
            p->inflight++;
            c->peer = p;
            c->state = CALL_SENT;
            return;
        }
        p->up = false; /* closing: its disconnect callback follows */
    }
    c->state = CALL_QUEUED;
    list_push(&q->queue, c);
}

/* Direct requester: connects when calls wait and nothing is connecting. */
static void direct_connect(tempest_requester *q) {
    peer *p = q->peers[0];
    if (q->queue.head != NULL && p->ac == NULL && tp_peer_connect(p) != 0)
        q->connect_failed = true;
}

/* Settles the failed calls and what waits on a failed direct connection. */
static void on_kick(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tempest_requester *q = arg;
    if (q->connect_failed) {
        q->connect_failed = false;
        for (call *c; (c = list_pop(&q->queue)) != NULL;) {
            c->retried = true; /* no second chance: nothing else to try */
            c->state = CALL_FAILED;
            list_push(&q->failed, c);
        }
    }
    call *last = q->failed.tail, *c;
    while ((c = list_pop(&q->failed)) != NULL) {
        bool was_last = c == last;
        c->state = CALL_NEW;
        if (c->idempotent && !c->retried) {
            c->retried = true;
            route(c);
        } else if (finish(c, TEMPEST_EDOWN, NULL)) {
            return;
        }
        if (was_last)
            break;
    }
    drain_queue(q);
    if (q->direct)
        direct_connect(q);
    if (q->failed.head != NULL || q->connect_failed)
        kick(q);
}

static call *call_new(tempest_requester *q, const char *type, const char *body) {
    size_t tl = strlen(type), bl = strlen(body);
    call *c = tp_calloc(1, sizeof *c + tl + bl + 2);
    if (c == NULL)
        return NULL;
    c->owner = q;
    c->type = c->data;
    c->body = c->data + tl + 1;
    memcpy(c->type, type, tl + 1);
    memcpy(c->body, body, bl + 1);
    c->type_len = tl;
    c->body_len = bl;
    c->timer = evtimer_new(q->node->base, on_timeout, c);
    if (c->timer == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

static void arm_timeout(tempest_requester *q, call *c, int timeout_ms) {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    bool common = timeout_ms == q->timeout_ms && q->common_timeout != NULL;
    evtimer_add(c->timer, common ? q->common_timeout : &tv);
}

static long long submit(tempest_requester *q, const char *type, json_t *json,
                        const tempest_send_options *o, tempest_reply_fn *fn, void *arg) {
    if (type == NULL || *type == '\0' || (o != NULL && o->timeout_ms < 0))
        return TEMPEST_EINVAL;
    if (q->freeing || q->node->freeing)
        return TEMPEST_ESTATE;
    if (q->queue.len >= q->max_queued && next_peer(q) == NULL)
        return TEMPEST_ELIMIT;
    char *body = json_dumps(json != NULL ? json : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (body == NULL)
        return TEMPEST_EINVAL;
    call *c = call_new(q, type, body);
    free(body);
    if (c == NULL)
        return TEMPEST_ENOMEM;
    long long *counter = q->direct ? &tp_rpc_get(q->node)->next_call : &q->next_id;
    c->id = ++*counter;
    c->fn = fn;
    c->arg = arg;
    c->idempotent = o != NULL && o->idempotent;
    if (tp_map_put(&q->calls, c->id, c) != 0) {
        event_free(c->timer);
        free(c);
        return TEMPEST_ENOMEM;
    }
    arm_timeout(q, c, o != NULL && o->timeout_ms > 0 ? o->timeout_ms : q->timeout_ms);
    route(c);
    if (q->direct && c->state == CALL_QUEUED)
        kick(q); /* connects if needed, outside this call */
    return c->id;
}

TEMPEST_API long long tempest_requester_send(tempest_requester *q, const char *type, json_t *json,
                                             const tempest_send_options *o, tempest_reply_fn *fn,
                                             void *arg) {
    if (q == NULL)
        return TEMPEST_EINVAL;
    return submit(q, type, json, o, fn, arg);
}

/* ---- requester: life ------------------------------------------------- */

/* The parts every requester has: options, events, the kick. */
tempest_requester *tp_requester_alloc(tempest_node *node, const tempest_requester_options *o) {
    tempest_requester *q = tp_calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->node = node;
    q->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
    q->max_queued = o->max_queued > 0 ? o->max_queued : DEFAULT_MAX_QUEUED;
    q->refresh_ms = o->refresh_ms > 0 ? o->refresh_ms : DEFAULT_REFRESH_MS;
    q->on_peer = o->on_peer;
    q->peer_arg = o->peer_arg;
    struct timeval tv = {q->timeout_ms / 1000, (q->timeout_ms % 1000) * 1000};
    /* NULL past libevent's 256 distinct common timeouts: plain timers then */
    q->common_timeout = event_base_init_common_timeout(node->base, &tv);
    q->kick = event_new(node->base, -1, 0, on_kick, q);
    if (q->kick == NULL) {
        tp_requester_destroy(q);
        return NULL;
    }
    return q;
}

/* Every call not yet answered gets TEMPEST_ECANCELED, now. */
static void cancel_calls(tempest_requester *q) {
    call *c;
    q->depth++; /* a callback cannot free it again */
    while ((c = tp_map_pop(&q->calls)) != NULL) {
        tempest_reply_fn *fn = c->fn;
        void *arg = c->arg;
        long long id = c->id;
        call_detach(c);
        free(c);
        if (fn != NULL)
            fn(q->direct ? NULL : q, id, TEMPEST_ECANCELED, NULL, arg);
    }
    q->depth--;
}

static void requester_unlink(tempest_requester *q) {
    tp_rpc *rpc = tp_rpc_get(q->node);
    if (rpc == NULL)
        return;
    if (q->serial != 0)
        tp_map_del(&rpc->requesters, q->serial);
    for (tempest_requester **p = &rpc->direct; *p; p = &(*p)->next_direct) {
        if (*p == q) {
            *p = q->next_direct;
            break;
        }
    }
}

void tp_requester_destroy(tempest_requester *q) {
    if (q == NULL)
        return;
    q->freeing = true;
    requester_unlink(q);
    if (q->joined)
        tp_presence_leave(q->node, q);
    tempest_subscriber_free(q->sub);
    q->sub = NULL;
    cancel_calls(q);
    while (q->npeers > 0)
        tp_peer_remove(q, q->npeers - 1);
    free(q->peers);
    tp_map_clear(&q->calls);
    if (q->poll)
        event_free(q->poll);
    if (q->kick)
        event_free(q->kick);
    free(q->service);
    free(q->ns);
    free(q->key);
    free(q->channel);
    free(q);
}

TEMPEST_API void tempest_requester_free(tempest_requester *q) {
    if (q == NULL || q->freeing || q->direct)
        return;
    q->freeing = true;
    if (q->depth == 0)
        tp_requester_destroy(q);
}

TEMPEST_API int tempest_requester_live(const tempest_requester *q) {
    int n = 0;
    for (int i = 0; q != NULL && i < q->npeers; i++)
        n += routable(q->peers[i]);
    return n;
}

TEMPEST_API int tempest_requester_pending(const tempest_requester *q) {
    return q != NULL ? (int)q->calls.len : 0;
}

/* ---- direct calls ---------------------------------------------------- */

static tempest_requester *direct_get(tempest_node *node, const char *address) {
    tp_rpc *rpc = tp_rpc_of(node);
    if (rpc == NULL)
        return NULL;
    for (tempest_requester *q = rpc->direct; q; q = q->next_direct)
        if (strcmp(q->peers[0]->addr, address) == 0)
            return q;
    tempest_requester *q = tp_requester_alloc(node, &(tempest_requester_options){0});
    if (q == NULL)
        return NULL;
    q->direct = true;
    peer *p = tp_calloc(1, sizeof *p);
    q->peers = tp_calloc(1, sizeof *q->peers);
    if (p == NULL || q->peers == NULL || (p->addr = tp_strdup(address)) == NULL) {
        free(p);
        tp_requester_destroy(q);
        return NULL;
    }
    p->owner = q;
    q->peers[q->npeers++] = p;
    q->next_direct = rpc->direct;
    rpc->direct = q;
    return q;
}

TEMPEST_API long long tempest_call(tempest_node *node, const char *address, const char *type,
                                   json_t *json, const tempest_send_options *options,
                                   tempest_reply_fn *fn, void *arg) {
    char *host = NULL, err[8];
    int port;
    if (node == NULL || address == NULL || tp_addr_parse(address, &host, &port, err, sizeof err))
        return TEMPEST_EINVAL;
    free(host);
    if (node->freeing)
        return TEMPEST_ESTATE;
    tempest_requester *q = direct_get(node, address);
    if (q == NULL)
        return TEMPEST_ENOMEM;
    peer *p = q->peers[0];
    if (p->ac == NULL && tp_peer_connect(p) != 0)
        return TEMPEST_EDOWN;
    return submit(q, type, json, options, fn, arg);
}

/* Responders and requesters must be freed before (they are logged and
 * left alone otherwise). */
static void rpc_stop(tempest_node *node) {
    tp_rpc *rpc = tp_rpc_get(node);
    if (rpc == NULL)
        return;
    while (rpc->direct != NULL)
        tp_requester_destroy(rpc->direct);
    if (rpc->responders != NULL || rpc->requesters.len > 0)
        tp_log(&node->log, TEMPEST_LOG_ERROR,
               "node freed before its requesters or responders: free them first");
    tp_map_clear(&rpc->requesters);
    free(rpc);
    tp_node_set_state(node, &rpc_service, NULL);
}
