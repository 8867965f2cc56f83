/* SPDX-License-Identifier: MIT */
/*
 * The responder: serves `RPC <service> <type> <json>` on its node's
 * listener. The command is one of the node's listener commands (added by
 * tp_responder_attach); its reply is deferred to a listener slot, and the
 * handler runs from the responder's own event (never inside the listener)
 * and completes the slot, at once or later. The responder's entry in the
 * service registry (lib/rpc_registry.c) is refreshed on its node's
 * presence beat.
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <tempest/rpc.h>

#include "node.h"
#include "presence.h"
#include "rpc.h"

enum {
    DEFAULT_TTL_MS = 5000,
    DEFAULT_HEARTBEAT_MS = 1000,
    CODE_MAX_LEN = 64,
};

/* The node's responders, in creation order. */
static tempest_responder *first_responder(const tempest_node *node) {
    tp_rpc *rpc = tp_rpc_get(node);
    return rpc ? rpc->responders : NULL;
}

/* ---- responder: state ------------------------------------------------- */

struct handler {
    char *type;
    tempest_request_fn *fn;
    void *arg;
};

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
    return tp_rpc_joinf("ERR %s %s", n > 0 ? word : "ERROR", message != NULL ? message : "");
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

/* The node's beat: refresh the registry entry (a join when it had expired). */
static void on_beat(void *owner) {
    tp_registry_advertise(owner);
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
    char *prefix = tp_rpc_joinf("tempest:%s:svc:%s", ns, service);
    r->key = prefix;
    r->channel = prefix != NULL ? tp_rpc_joinf("%s%s", prefix, ":events") : NULL;
    r->join_msg = tp_registry_announcement("join", r->node->address);
    r->leave_msg = tp_registry_announcement("leave", r->node->address);
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
    tp_rpc *rpc = tp_rpc_of(node);
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
    tp_rpc *rpc = tp_rpc_get(r->node);
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
        tp_registry_withdraw(r);
    if (r->depth == 0)
        responder_destroy(r);
}

TEMPEST_API unsigned long long tempest_responder_served(const tempest_responder *r) {
    return r != NULL ? r->served : 0;
}
