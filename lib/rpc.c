/* SPDX-License-Identifier: MIT */
/*
 * Requester and responder. A responder serves `RPC <service> <type> <json>`
 * on its node's listener: the node hands the command here, the reply is
 * deferred to a listener slot, and the handler runs from the responder's
 * own event (never inside the listener) and completes the slot, at once or
 * later. The responder keeps `address -> expiry` in the Redis sorted set
 * `tempest:<ns>:svc:<service>`, refreshed on its node's presence beat (expiries use Redis's
 * clock, so node clocks do not matter) and announces joins and leaves on
 * `tempest:<ns>:svc:<service>:events`.
 *
 * A requester keeps one pipelined hiredis connection per responder, learns
 * of responders from the announcements and from a periodic registry read
 * (which also drops expired entries), and sends round-robin over the
 * connected ones. A call lives in the requester's table (id -> call) from
 * send to its one callback; replies find their call by id, so a reply to a
 * call that timed out finds nothing and is dropped. Failures seen inside
 * hiredis's teardown of a connection are queued and settled from the
 * requester's own event. Direct calls (tempest_call) use one internal
 * requester per address, owned by the node.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <tempest/pubsub.h>
#include <tempest/rpc.h>

#include "node.h"
#include "presence.h"
#include "rpc.h"

enum {
    DEFAULT_TTL_MS = 5000,
    DEFAULT_HEARTBEAT_MS = 1000,
    DEFAULT_TIMEOUT_MS = 5000,
    DEFAULT_MAX_QUEUED = 1000,
    DEFAULT_REFRESH_MS = 1000,
    EARLY_POLL_MS = 50, /* registry reads until the first one succeeds */
    CODE_MAX_LEN = 64,
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

/* ---- the node's share ------------------------------------------------- */

typedef struct tp_rpc {
    tempest_responder *responders; /* creation order */
    tp_map requesters;             /* serial -> requester, for registry replies */
    long long next_serial;
    tempest_requester *direct; /* tempest_call's requesters, one per address */
    long long next_call;       /* ids of direct calls, shared by all addresses */
} tp_rpc;

/* The share is a service of the node (node.h), made on first use; its
 * `stop` hook cancels the direct calls and frees it. */
static void rpc_stop(tempest_node *node);

static const tp_node_service rpc_service = {.stop = rpc_stop};

int tp_rpc_attach(tempest_node *node) {
    return tp_node_attach(node, &rpc_service);
}

static tp_rpc *rpc_get(const tempest_node *node) {
    return tp_node_state(node, &rpc_service);
}

/* The node's responders, in creation order. */
static tempest_responder *first_responder(const tempest_node *node) {
    tp_rpc *rpc = rpc_get(node);
    return rpc ? rpc->responders : NULL;
}

static tp_rpc *rpc_of(tempest_node *node) {
    tp_rpc *rpc = rpc_get(node);
    if (rpc != NULL)
        return rpc;
    if ((rpc = tp_calloc(1, sizeof *rpc)) != NULL &&
        tp_node_set_state(node, &rpc_service, rpc) != 0) {
        free(rpc);
        rpc = NULL;
    }
    return rpc;
}

static char *joinf(const char *fmt, const char *a, const char *b) {
    size_t n = strlen(fmt) + strlen(a) + strlen(b);
    char *s = tp_malloc(n);
    if (s != NULL)
        snprintf(s, n, fmt, a, b);
    return s;
}

/* ---- responder: state ------------------------------------------------- */

typedef struct handler {
    char *type;
    tempest_request_fn *fn;
    void *arg;
} handler;

struct tempest_request {
    tempest_responder *r;
    tempest_request *prev, *next; /* r's requests not yet answered */
    tempest_request *qnext;       /* r's dispatch queue */
    tp_reply_slot *slot;
    tempest_request_fn *fn;
    void *arg;
    json_t *body;
    char type[];
};

struct tempest_responder {
    tempest_node *node;
    tempest_responder *next; /* the node's list */
    char *service, *ns;
    char *key;     /* tempest:<ns>:svc:<service> */
    char *channel; /* <key>:events */
    char *join_msg, *leave_msg;
    int ttl_ms, heartbeat_ms;
    handler *handlers;
    size_t nhandlers;
    tempest_request *head, *tail;   /* not yet answered */
    tempest_request *qhead, *qtail; /* not yet handed to a handler */
    struct event *dispatch_ev;
    unsigned long long served, errors; /* errors: error replies of its handlers */
    int in_flight;                     /* requests not yet answered */
    bool joined;                       /* in the node's presence (its heartbeat) */
    int depth;
    bool freeing;
};

static void responder_destroy(tempest_responder *r);

static const handler *find_handler(const tempest_responder *r, const char *type, size_t len) {
    const handler *any = NULL;
    for (size_t i = 0; i < r->nhandlers; i++) {
        const handler *h = &r->handlers[i];
        if (strlen(h->type) == len && memcmp(h->type, type, len) == 0)
            return h;
        if (strcmp(h->type, "*") == 0)
            any = h;
    }
    return any;
}

/* ---- responder: requests --------------------------------------------- */

static void request_unlink(tempest_request *q) {
    tempest_responder *r = q->r;
    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        r->head = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    else
        r->tail = q->prev;
}

/* The request is answered: forget it. */
static void request_free(tempest_request *q) {
    q->r->in_flight--;
    request_unlink(q);
    json_decref(q->body);
    free(q);
}

TEMPEST_API const char *tempest_request_type(const tempest_request *req) {
    return req != NULL ? req->type : NULL;
}

TEMPEST_API json_t *tempest_request_body(const tempest_request *req) {
    return req != NULL ? req->body : NULL;
}

TEMPEST_API int tempest_request_reply(tempest_request *req, json_t *reply) {
    if (req == NULL)
        return TEMPEST_EINVAL;
    char *s = json_dumps(reply != NULL ? reply : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    if (s == NULL)
        tp_slot_reply_error(req->slot, "ERR ENCODE the reply cannot be encoded as JSON");
    else
        tp_slot_reply_bulk(req->slot, s, strlen(s));
    free(s);
    request_free(req);
    return s != NULL ? 0 : TEMPEST_EINVAL;
}

/* `ERR <code> <message>`, the code one word of printable bytes. */
static char *error_text(const char *code, const char *message) {
    char word[CODE_MAX_LEN + 1];
    size_t n = 0;
    for (; code != NULL && code[n] != '\0' && n < CODE_MAX_LEN; n++)
        word[n] = (unsigned char)code[n] <= ' ' || code[n] == 127 ? '_' : code[n];
    word[n] = '\0';
    return joinf("ERR %s %s", n > 0 ? word : "ERROR", message != NULL ? message : "");
}

TEMPEST_API int tempest_request_error(tempest_request *req, const char *code, const char *message) {
    if (req == NULL)
        return TEMPEST_EINVAL;
    req->r->errors++;
    char *text = error_text(code, message);
    tp_slot_reply_error(req->slot, text != NULL ? text : "ERR ERROR out of memory");
    free(text);
    request_free(req);
    return 0;
}

/* ---- responder: dispatch ---------------------------------------------- */

static tempest_request *dispatch_pop(tempest_responder *r) {
    tempest_request *q = r->qhead;
    if (q != NULL) {
        r->qhead = q->qnext;
        if (r->qhead == NULL)
            r->qtail = NULL;
    }
    return q;
}

static bool responder_leave(tempest_responder *r) {
    if (--r->depth > 0 || !r->freeing)
        return false;
    responder_destroy(r);
    return true;
}

/* Hands the queued requests to their handlers, those queued now only. */
static void on_dispatch(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tempest_responder *r = arg;
    tempest_node *node = r->node;
    tempest_request *last = r->qtail, *q;
    tp_node_enter(node);
    r->depth++;
    while (!r->freeing && (q = dispatch_pop(r)) != NULL) {
        bool was_last = q == last;
        if (!tp_slot_alive(q->slot)) {
            tp_slot_reply_error(q->slot, "ERR GONE"); /* the client left: only frees */
            request_free(q);
        } else {
            r->served++;
            q->fn(r, q, q->arg);
        }
        if (was_last)
            break;
    }
    if (!r->freeing && r->qhead != NULL)
        event_active(r->dispatch_ev, EV_READ, 0);
    responder_leave(r);
    tp_node_leave(node);
}

/* ---- responder: the RPC command --------------------------------------- */

/* True when a listener command is a request (`RPC <service> <type> <json>`)
 * rather than an answer to a job whose action is named RPC
 * (`RPC <job_id> <json> [MORE|ERROR]`). */
static bool is_request(int argc, const char **argv, const size_t *argvlen) {
    if (argc < 1 || argvlen[0] != 3 || strncasecmp(argv[0], "RPC", 3) != 0)
        return false;
    if (argc != 3 && argc != 4)
        return true;
    for (size_t i = 0; i < argvlen[1]; i++)
        if (argv[1][i] < '0' || argv[1][i] > '9')
            return true;
    if (argvlen[1] == 0)
        return true;
    /* `RPC <job_id> <json> [MORE|ERROR]`: an answer to a job named RPC */
    return argc == 4 && strcasecmp(argv[3], "MORE") != 0 && strcasecmp(argv[3], "ERROR") != 0;
}

/* Printable copy of a name for an error text. */
static void shown(char *dst, size_t cap, const char *s, size_t len) {
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = s[i] > ' ' && s[i] < 127 ? s[i] : '?';
    dst[n] = '\0';
}

/* The responder of `service`; for "*", the first with a handler for `type`. */
static tempest_responder *find_responder(tempest_node *node, const char *service, size_t len,
                                         const char *type, size_t type_len) {
    bool any = len == 1 && service[0] == '*';
    for (tempest_responder *r = first_responder(node); r; r = r->next) {
        if (any ? find_handler(r, type, type_len) != NULL
                : strlen(r->service) == len && memcmp(r->service, service, len) == 0)
            return r;
    }
    return NULL;
}

/* Queues a request for its handler; the reply goes to a deferred slot. */
static void accept_request(tempest_responder *r, const handler *h, const char *type, size_t len,
                           json_t *body, struct evbuffer *out) {
    tempest_request *q = tp_calloc(1, sizeof *q + len + 1);
    if (q == NULL || (q->slot = tp_listener_defer(out)) == NULL) {
        free(q);
        json_decref(body);
        tp_resp_error(out, "ERR NOMEM out of memory");
        return;
    }
    q->r = r;
    q->fn = h->fn;
    q->arg = h->arg;
    q->body = body;
    memcpy(q->type, type, len);
    q->prev = r->tail;
    if (r->tail != NULL)
        r->tail->next = q;
    else
        r->head = q;
    r->tail = q;
    r->in_flight++;
    if (r->qtail != NULL)
        r->qtail->qnext = q;
    else
        r->qhead = q;
    r->qtail = q;
    event_active(r->dispatch_ev, EV_READ, 0);
}

/* Serves one `RPC` command: replies at once with an error, or defers the
 * reply to the responder's handler. */
static void on_rpc_command(tempest_node *node, int argc, const char **argv, const size_t *argvlen,
                           struct evbuffer *out) {
    char msg[200], name[64];
    if (argc != 4) {
        tp_resp_error(out, "ERR usage: RPC <service> <type> <json>");
        return;
    }
    tempest_responder *r = find_responder(node, argv[1], argvlen[1], argv[2], argvlen[2]);
    const handler *h = r != NULL ? find_handler(r, argv[2], argvlen[2]) : NULL;
    bool any = argvlen[1] == 1 && argv[1][0] == '*';
    if (r == NULL && !any) {
        shown(name, sizeof name, argv[1], argvlen[1]);
        snprintf(msg, sizeof msg, "ERR NOSERVICE no service '%s' on this node", name);
        tp_resp_error(out, msg);
        return;
    }
    if (h == NULL) {
        shown(name, sizeof name, argv[2], argvlen[2]);
        snprintf(msg, sizeof msg, "ERR NOTYPE no handler for type '%s'", name);
        tp_resp_error(out, msg);
        return;
    }
    json_error_t e;
    json_t *body = json_loadb(argv[3], argvlen[3], JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (body == NULL) {
        snprintf(msg, sizeof msg, "ERR BADJSON %s (at %d:%d)", e.text, e.line, e.column);
        tp_resp_error(out, msg);
        return;
    }
    accept_request(r, h, argv[2], argvlen[2], body, out);
}

static const tp_node_command rpc_command = {
    .name = "RPC", .match = is_request, .run = on_rpc_command};

int tp_responder_attach(tempest_node *node) {
    return tp_node_add_command(node, &rpc_command);
}

/* ---- responder: registry ---------------------------------------------- */

static void send_register(tempest_responder *r) {
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", r->ttl_ms);
    const char *argv[] = {"EVAL",           register_lua, "1",         r->key,
                          r->node->address, ttl,          r->join_msg, r->channel};
    if (tp_redis_argv(r->node->redis, tp_node_log_reply, (void *)"service registry", 8, argv,
                      NULL) != 0)
        tp_log(&r->node->log, TEMPEST_LOG_DEBUG, "responder %s: redis down, not advertised",
               r->service);
}

static void send_withdraw(tempest_responder *r) {
    const char *argv[] = {"EVAL",           withdraw_lua, "1",       r->key,
                          r->node->address, r->leave_msg, r->channel};
    (void)tp_redis_argv(r->node->redis, tp_node_log_reply, (void *)"service registry", 7, argv,
                        NULL);
}

/* The node's beat: refresh the registry entry (a join when it had expired). */
static void on_beat(void *owner) {
    send_register(owner);
}

static void describe_responder(void *owner, json_t *record) {
    tempest_responder *r = owner;
    tp_presence_add_role(record, "responder");
    tp_presence_add_item(record, "services",
                         json_pack("{s:s,s:s}", "service", r->service, "namespace", r->ns));
    tp_presence_add_count(record, "responder", "requests", r->served);
    tp_presence_add_count(record, "responder", "in_flight", (uint64_t)r->in_flight);
    tp_presence_add_count(record, "responder", "errors", r->errors);
}
static char *announcement(const char *event, const char *address) {
    json_t *j = json_pack("{ssss}", "event", event, "address", address);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

/* ---- responder: life -------------------------------------------------- */

static int responder_check(tempest_node *node, const tempest_responder_options *o, const char *ns,
                           tempest_error *err) {
    if (node == NULL || o == NULL || !tp_name_valid(o->service) || !tp_name_valid(ns)) {
        tp_error_set(err, TEMPEST_EINVAL, "responder: a node and a valid service name are needed");
        return TEMPEST_EINVAL;
    }
    if (o->ttl_ms < 0 || o->heartbeat_ms < 0) {
        tp_error_set(err, TEMPEST_EINVAL, "responder: negative ttl_ms or heartbeat_ms");
        return TEMPEST_EINVAL;
    }
    for (tempest_responder *r = first_responder(node); r; r = r->next) {
        if (strcmp(r->service, o->service) == 0) {
            tp_error_set(err, TEMPEST_ESTATE, "responder: the node already serves '%s'",
                         o->service);
            return TEMPEST_ESTATE;
        }
    }
    return 0;
}

static void responder_timing(tempest_responder *r, const tempest_responder_options *o) {
    r->ttl_ms = o->ttl_ms > 0 ? o->ttl_ms : DEFAULT_TTL_MS;
    r->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    if (r->heartbeat_ms > r->ttl_ms / 2)
        r->heartbeat_ms = r->ttl_ms / 2 > 0 ? r->ttl_ms / 2 : 1;
}

static int responder_strings(tempest_responder *r, const char *service, const char *ns) {
    r->service = tp_strdup(service);
    r->ns = tp_strdup(ns);
    char *prefix = joinf("tempest:%s:svc:%s", ns, service);
    r->key = prefix;
    r->channel = prefix != NULL ? joinf("%s%s", prefix, ":events") : NULL;
    r->join_msg = announcement("join", r->node->address);
    r->leave_msg = announcement("leave", r->node->address);
    bool ok = r->service && r->ns && r->key && r->channel && r->join_msg && r->leave_msg;
    return ok ? 0 : TEMPEST_ENOMEM;
}

TEMPEST_API tempest_responder *tempest_responder_new(tempest_node *node,
                                                     const tempest_responder_options *options,
                                                     tempest_error *err) {
    const char *ns =
        options && options->namespace ? options->namespace : tempest_node_namespace(node);
    int rc = responder_check(node, options, ns, err);
    if (rc != 0)
        return NULL;
    if ((rc = tp_node_ensure_listener(node)) != 0) {
        tp_error_set(err, rc, "responder: %s", tempest_node_errstr(node));
        return NULL;
    }
    tp_rpc *rpc = rpc_of(node);
    tempest_responder *r = rpc ? tp_calloc(1, sizeof *r) : NULL;
    if (r == NULL)
        goto nomem;
    r->node = node;
    responder_timing(r, options);
    r->dispatch_ev = event_new(node->base, -1, 0, on_dispatch, r);
    if (r->dispatch_ev == NULL || responder_strings(r, options->service, ns) != 0)
        goto nomem;
    /* the first beat (and so the first registration) on the next turn */
    if (tp_presence_join(node, r, describe_responder, on_beat, r->heartbeat_ms) != 0)
        goto nomem;
    r->joined = true;
    tempest_responder **tail = &rpc->responders;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = r;
    return r;
nomem:
    tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
    responder_destroy(r);
    return NULL;
}

TEMPEST_API int tempest_responder_on(tempest_responder *r, const char *type, tempest_request_fn *fn,
                                     void *arg) {
    if (r == NULL || type == NULL || *type == '\0' || fn == NULL || r->freeing)
        return TEMPEST_EINVAL;
    for (size_t i = 0; i < r->nhandlers; i++) {
        if (strcmp(r->handlers[i].type, type) == 0) {
            r->handlers[i].fn = fn;
            r->handlers[i].arg = arg;
            return 0;
        }
    }
    handler *grown = tp_realloc(r->handlers, (r->nhandlers + 1) * sizeof *grown);
    if (grown == NULL)
        return TEMPEST_ENOMEM;
    r->handlers = grown;
    char *copy = tp_strdup(type);
    if (copy == NULL)
        return TEMPEST_ENOMEM;
    r->handlers[r->nhandlers++] = (handler){.type = copy, .fn = fn, .arg = arg};
    return 0;
}

static void responder_unlink(tempest_responder *r) {
    tp_rpc *rpc = rpc_get(r->node);
    for (tempest_responder **p = rpc ? &rpc->responders : NULL; p && *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            return;
        }
    }
}

/* Answers what is pending with SHUTDOWN and frees everything. */
static void responder_destroy(tempest_responder *r) {
    if (r == NULL)
        return;
    while (r->head != NULL) {
        tp_slot_reply_error(r->head->slot, "ERR SHUTDOWN the responder is shutting down");
        request_free(r->head);
    }
    if (r->joined)
        tp_presence_leave(r->node, r);
    if (r->dispatch_ev)
        event_free(r->dispatch_ev);
    for (size_t i = 0; i < r->nhandlers; i++)
        free(r->handlers[i].type);
    free(r->handlers);
    free(r->service);
    free(r->ns);
    free(r->key);
    free(r->channel);
    free(r->join_msg);
    free(r->leave_msg);
    free(r);
}

TEMPEST_API void tempest_responder_free(tempest_responder *r) {
    if (r == NULL || r->freeing)
        return;
    r->freeing = true;
    responder_unlink(r);
    if (r->joined) {
        tp_presence_leave(r->node, r); /* no more beats, so no registration after this */
        r->joined = false;
    }
    if (!r->node->freeing)
        send_withdraw(r);
    if (r->depth == 0)
        responder_destroy(r);
}

TEMPEST_API unsigned long long tempest_responder_served(const tempest_responder *r) {
    return r != NULL ? r->served : 0;
}

/* ---- requester: state ------------------------------------------------- */

enum call_state { CALL_NEW, CALL_QUEUED, CALL_SENT, CALL_FAILED };

typedef struct peer {
    tempest_requester *owner;
    char *addr;
    redisAsyncContext *ac; /* NULL while down */
    bool up;               /* connected: takes calls unless gone */
    bool gone;             /* left the registry: no new calls; closed when idle */
    bool seen;             /* in the registry read being applied */
    int inflight;          /* reply callbacks hiredis still owes */
    unsigned long epoch;   /* the requester's epoch when last announced */
} peer;

typedef struct call {
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
} call;

typedef struct call_list {
    call *head, *tail;
    int len;
} call_list;

struct tempest_requester {
    tempest_node *node;
    long long serial; /* key in the node's table; 0 for a direct requester */
    char *service, *key, *channel;
    int timeout_ms, max_queued, refresh_ms;
    const struct timeval *common_timeout; /* timeout_ms as a common timeout, or NULL */
    tempest_peer_fn *on_peer;
    void *peer_arg;
    bool direct;                    /* tempest_call: one fixed peer, no discovery */
    bool connect_failed;            /* direct: fail the waiting calls */
    tempest_requester *next_direct; /* the node's list of direct requesters */
    peer **peers;
    int npeers, rr;
    tp_map calls;      /* id -> call, every call not yet answered */
    long long next_id; /* unless direct: the node's counter */
    call_list queue;   /* waiting for a live responder */
    call_list failed;  /* connection lost: retry or fail, from `kick` */
    tempest_subscriber *sub;
    char *ns;
    unsigned long long answered, failures; /* counters for the presence record */
    bool joined;
    struct event *poll, *kick;
    bool polled, polling;
    long long poll_sent;      /* monotonic ms */
    unsigned long epoch;      /* announcements received */
    unsigned long poll_epoch; /* `epoch` when the registry read in flight was sent */
    int depth;
    bool freeing;
};

static void requester_destroy(tempest_requester *q);
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

static void rq_enter(tempest_requester *q) {
    tp_node_enter(q->node);
    q->depth++;
}

/* Returns true when the requester (or the node) was freed meanwhile. */
static bool rq_leave(tempest_requester *q) {
    tempest_node *node = q->node;
    bool freed = false;
    if (--q->depth == 0 && q->freeing) {
        requester_destroy(q);
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
    rq_enter(q);
    fn(q->direct ? NULL : q, id, status, json, arg);
    return rq_leave(q);
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

static peer *find_peer(const tempest_requester *q, const char *addr) {
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

static int peer_connect(peer *p) {
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

static peer *peer_add(tempest_requester *q, const char *addr) {
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
    (void)peer_connect(p); /* retried at the next registry read */
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

static void peer_remove(tempest_requester *q, int at) {
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
    if (q->queue.head != NULL && p->ac == NULL && peer_connect(p) != 0)
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
    long long *counter = q->direct ? &rpc_get(q->node)->next_call : &q->next_id;
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

/* ---- requester: discovery ------------------------------------------------ */

typedef struct peer_event {
    int event;
    char *addr;
} peer_event;

/* Tells the application; true when a callback freed the requester. */
static bool tell(tempest_requester *q, peer_event *ev, int n) {
    bool freed = false;
    for (int i = 0; i < n; i++) {
        if (!freed && q->on_peer != NULL) {
            rq_enter(q);
            q->on_peer(q, ev[i].event, ev[i].addr, q->peer_arg);
            freed = rq_leave(q);
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
    peer *p = find_peer(q, addr);
    if (p == NULL && (p = peer_add(q, addr)) != NULL)
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
            peer_remove(q, i);
        else if (!p->gone && p->ac == NULL)
            (void)peer_connect(p);
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
    tp_rpc *rpc = rpc_get(node);
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

static long long monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One registry read at a time (a reply lost with a dropped connection
 * frees the turn after a while). */
static void on_poll(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tempest_requester *q = arg;
    const char *argv[] = {"EVAL", list_lua, "1", q->key};
    long long now = monotonic_ms();
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
    peer *p = find_peer(q, addr);
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

/* ---- requester: life --------------------------------------------------- */

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

/* The parts every requester has: options, events, the kick. */
static tempest_requester *requester_alloc(tempest_node *node, const tempest_requester_options *o) {
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
        requester_destroy(q);
        return NULL;
    }
    return q;
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
    tp_rpc *rpc = rpc_get(q->node);
    q->service = tp_strdup(service);
    q->ns = tp_strdup(ns);
    q->key = joinf("tempest:%s:svc:%s", ns, service);
    q->channel = q->key ? joinf("%s%s", q->key, ":events") : NULL;
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
    tempest_requester *q = rpc_of(node) ? requester_alloc(node, options) : NULL;
    if (q == NULL || requester_discovery(q, options->service, ns) != 0) {
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        requester_destroy(q);
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
    tp_rpc *rpc = rpc_get(q->node);
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

static void requester_destroy(tempest_requester *q) {
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
        peer_remove(q, q->npeers - 1);
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
        requester_destroy(q);
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

/* ---- direct calls ------------------------------------------------------ */

static tempest_requester *direct_get(tempest_node *node, const char *address) {
    tp_rpc *rpc = rpc_of(node);
    if (rpc == NULL)
        return NULL;
    for (tempest_requester *q = rpc->direct; q; q = q->next_direct)
        if (strcmp(q->peers[0]->addr, address) == 0)
            return q;
    tempest_requester *q = requester_alloc(node, &(tempest_requester_options){0});
    if (q == NULL)
        return NULL;
    q->direct = true;
    peer *p = tp_calloc(1, sizeof *p);
    q->peers = tp_calloc(1, sizeof *q->peers);
    if (p == NULL || q->peers == NULL || (p->addr = tp_strdup(address)) == NULL) {
        free(p);
        requester_destroy(q);
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
    if (p->ac == NULL && peer_connect(p) != 0)
        return TEMPEST_EDOWN;
    return submit(q, type, json, options, fn, arg);
}

/* Responders and requesters must be freed before (they are logged and
 * left alone otherwise). */
static void rpc_stop(tempest_node *node) {
    tp_rpc *rpc = rpc_get(node);
    if (rpc == NULL)
        return;
    while (rpc->direct != NULL)
        requester_destroy(rpc->direct);
    if (rpc->responders != NULL || rpc->requesters.len > 0)
        tp_log(&node->log, TEMPEST_LOG_ERROR,
               "node freed before its requesters or responders: free them first");
    tp_map_clear(&rpc->requesters);
    free(rpc);
    tp_node_set_state(node, &rpc_service, NULL);
}
