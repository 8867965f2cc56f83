/* SPDX-License-Identifier: MIT */
/*
 * The node: options, the Redis command connection, the cluster id, the
 * node listener and the table of jobs waiting for answers. Answers that
 * arrive on the listener are validated there (the worker gets `-ERR` for a
 * bad one) and queued; a node-owned event delivers them to the producers'
 * callbacks, outside the listener's stack, so that a callback may free the
 * node or anything else.
 *
 * The services built on the node reach it only through the tables of
 * node.h: their hooks (told of changes, run at teardown) and their
 * listener commands, attached by tempest_node_new (lib/services.c). The
 * node calls nothing above it.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "node.h"

static const char *default_url = "redis://127.0.0.1:6379";

void tp_node_errorf(tempest_node *node, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(node->errstr, sizeof node->errstr, fmt, ap);
    va_end(ap);
}

void tp_node_log_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL || rep == NULL || rep->type != REDIS_REPLY_ERROR)
        return;
    tempest_node *node = tp_redis_owner(r);
    tp_log(&node->log, TEMPEST_LOG_WARN, "%s: %s", (const char *)privdata, rep->str);
}

/* ---- services -------------------------------------------------------- */

int tp_node_attach(tempest_node *node, const tp_node_service *svc) {
    if (node->nservices == TP_NODE_SERVICES)
        return TEMPEST_ELIMIT;
    node->services[node->nservices++] = (tp_node_attached){.svc = svc};
    return 0;
}

/* The index of `svc` in the node's services, or -1. */
static int attached_at(const tempest_node *node, const tp_node_service *svc) {
    for (int i = 0; i < node->nservices; i++)
        if (node->services[i].svc == svc)
            return i;
    return -1;
}

void *tp_node_state(const tempest_node *node, const tp_node_service *svc) {
    int i = attached_at(node, svc);
    return i >= 0 ? node->services[i].state : NULL;
}

int tp_node_set_state(tempest_node *node, const tp_node_service *svc, void *state) {
    int i = attached_at(node, svc);
    if (i < 0)
        return TEMPEST_ESTATE;
    node->services[i].state = state;
    return 0;
}

int tp_node_add_command(tempest_node *node, const tp_node_command *cmd) {
    if (node->ncommands == TP_NODE_COMMANDS)
        return TEMPEST_ELIMIT;
    node->commands[node->ncommands++] = cmd;
    return 0;
}

/* Tells every service of a change, in the order of attachment. */
static void tell_services(tempest_node *node, int change) {
    for (int i = 0; i < node->nservices; i++)
        if (node->services[i].svc->on_change)
            node->services[i].svc->on_change(node, change);
}

/* One phase of the services' teardown, the last attached first. */
static void stop_services(tempest_node *node, bool last_phase) {
    for (int i = node->nservices; i-- > 0;) {
        const tp_node_service *svc = node->services[i].svc;
        void (*hook)(tempest_node *) = last_phase ? svc->free : svc->stop;
        if (hook)
            hook(node);
    }
}

/* ---- deliveries ------------------------------------------------------ */

int tp_node_deliver(tempest_node *node, tp_pending *job, int status, json_t *json) {
    return tp_node_deliver_held(node, job, status, json, NULL);
}

int tp_node_deliver_held(tempest_node *node, tp_pending *job, int status, json_t *json,
                         tp_reply_slot *slot) {
    tp_delivery *d = status <= 0 ? &job->final : tp_malloc(sizeof *d);
    if (d == NULL) {
        json_decref(json);
        return TEMPEST_ENOMEM;
    }
    *d = (tp_delivery){.job = job, .status = status, .json = json, .slot = slot};
    if (node->dq_tail)
        node->dq_tail->next = d;
    else
        node->dq_head = d;
    node->dq_tail = d;
    job->queued++;
    event_active(node->deliver_ev, EV_READ, 0);
    return 0;
}

tp_reply_slot *tp_node_hold_reply(tempest_node *node) {
    tp_delivery *d = node->delivering;
    tp_reply_slot *slot = d ? d->slot : NULL;
    if (d)
        d->slot = NULL;
    return slot;
}

static const char cancelled_error[] =
    "CANCELED job %lld was cancelled by its producer (client gone, cancelled or timed out)";

/* PUBLISH tempest:cancel:<address> ["<id>"] (best effort: no reply read). */
static void publish_cancel(tempest_node *node, long long id) {
    char channel[320], msg[32];
    snprintf(channel, sizeof channel, "tempest:cancel:%s", node->address);
    snprintf(msg, sizeof msg, "[\"%lld\"]", id);
    const char *argv[] = {"PUBLISH", channel, msg};
    (void)tp_redis_argv(node->redis, NULL, NULL, 3, argv, NULL);
}

void tp_node_cancelled(tempest_node *node, long long id) {
    node->cancelled[node->ncancelled++ % TP_CANCELLED_KEEP] = id;
    if (node->address != NULL && !node->freeing)
        publish_cancel(node, id);
}

static bool was_cancelled(const tempest_node *node, long long id) {
    unsigned n = node->ncancelled < TP_CANCELLED_KEEP ? node->ncancelled : TP_CANCELLED_KEEP;
    for (unsigned i = 0; i < n; i++)
        if (node->cancelled[i] == id)
            return true;
    return false;
}

/* The job stays in the table until its terminal event is delivered, so
 * that tempest_work_cancel() can still stop a queued final answer. */
void tp_node_finish(tempest_node *node, tp_pending *job) {
    (void)node;
    job->done = true;
    if (job->timer) {
        event_free(job->timer);
        job->timer = NULL;
    }
}

static tp_delivery *pop_delivery(tempest_node *node) {
    tp_delivery *d = node->dq_head;
    if (d) {
        node->dq_head = d->next;
        if (node->dq_head == NULL)
            node->dq_tail = NULL;
        d->job->queued--;
    }
    return d;
}

/* Delivers one queued item; returns true when the node was freed by it. A
 * terminal item takes its job out of the table before the callback runs,
 * so a node freed by that callback does not cancel the job a second time. */
static bool deliver_one(tempest_node *node, tp_delivery *d) {
    tp_pending *job = d->job;
    bool embedded = d == &job->final;
    bool terminal = d->status <= 0;
    bool freed = false;
    if (job->fn) {
        if (terminal)
            tp_map_del(&node->pending, job->id);
        tp_node_enter(node);
        node->delivering = d;
        job->fn(node, job->id, d->status, d->json, job->arg);
        node->delivering = NULL;
        freed = tp_node_leave(node);
        if (d->slot)
            tp_slot_reply_status(d->slot, "OK");
    } else {
        char msg[200];
        snprintf(msg, sizeof msg, cancelled_error, job->id);
        tp_slot_reply_error(d->slot, msg);
        terminal = job->queued == 0; /* cancelled: the last item frees it */
    }
    json_decref(d->json);
    if (!embedded)
        free(d);
    if (terminal)
        free(job);
    return freed;
}

static void on_deliver(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tempest_node *node = arg;
    /* Only what is queued now: answers queued by callbacks wait a turn. */
    tp_delivery *last = node->dq_tail;
    tp_delivery *d;
    while ((d = pop_delivery(node)) != NULL) {
        bool was_last = d == last;
        if (deliver_one(node, d))
            return; /* the callback freed the node */
        if (was_last)
            break;
    }
    if (!node->freeing && node->dq_head)
        event_active(node->deliver_ev, EV_READ, 0);
}

/* ---- answers from the listener --------------------------------------- */

static int parse_id(const char *s, size_t len, long long *id) {
    if (len == 0 || len > 19)
        return -1;
    long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *id = v;
    return 0;
}

enum {
    KIND_PROGRESS = 100, /* a sign of life, never delivered */
    KIND_CHECK = 101     /* a question: is the job still wanted? */
};

/* The 4th argument: 0 final, TEMPEST_MORE, TEMPEST_MORE_RAW, TEMPEST_EREMOTE,
 * KIND_PROGRESS, KIND_CHECK; -1 unknown. */
static int answer_kind(int argc, const char **argv) {
    if (argc == 3)
        return 0;
    if (strcasecmp(argv[3], "MORE") == 0)
        return TEMPEST_MORE;
    if (strcasecmp(argv[3], "RAW") == 0)
        return TEMPEST_MORE_RAW;
    if (strcasecmp(argv[3], "PROGRESS") == 0)
        return KIND_PROGRESS;
    if (strcasecmp(argv[3], "CHECK") == 0)
        return KIND_CHECK;
    if (strcasecmp(argv[3], "ERROR") == 0)
        return TEMPEST_EREMOTE;
    return -1;
}

/* A partial answer or a progress report: the deadline starts again. */
static void extend_deadline(tempest_node *node, tp_pending *job) {
    if (job->timer == NULL)
        return;
    if (job->timeout_ms == 0) {
        evtimer_add(job->timer, node->default_timeout);
        return;
    }
    struct timeval tv = {job->timeout_ms / 1000, (job->timeout_ms % 1000) * 1000};
    evtimer_add(job->timer, &tv);
}

/* Decodes an answer's payload: JSON, or raw bytes as a JSON string. */
static json_t *answer_payload(int kind, const char *buf, size_t len, char *err, size_t errlen) {
    if (kind != TEMPEST_MORE_RAW)
        return tp_answer_decode(buf, len, err, errlen);
    json_t *j = json_stringn_nocheck(buf, len);
    if (j == NULL)
        snprintf(err, errlen, "out of memory");
    return j;
}

/* Queues an accepted answer; a flow job's partial answer keeps its reply. */
static void accept_answer(tempest_node *node, tp_pending *job, int kind, json_t *json,
                          struct evbuffer *out) {
    bool partial = kind == TEMPEST_MORE || kind == TEMPEST_MORE_RAW;
    /* A foreign worker's client may time out a held reply (redis-rb: 5 s) */
    bool hold = partial && job->flow && tp_listener_peer(out);
    tp_reply_slot *slot = hold ? tp_listener_defer(out) : NULL;
    if (partial)
        extend_deadline(node, job);
    else
        tp_node_finish(node, job);
    if (tp_node_deliver_held(node, job, kind, json, slot) != 0) {
        if (slot)
            tp_slot_reply_error(slot, "ERR out of memory");
        else
            tp_resp_error(out, "ERR out of memory");
        return;
    }
    if (slot == NULL)
        tp_resp_status(out, "OK");
}

/*
 * Answers from foreign peers. The original front replied +OK to every
 * answer, and the original workers' Redis clients throw on an error reply
 * (redis-rb, redis-py, node_redis): a worker that has not said it is a
 * libtempest peer gets +OK for whatever it sends on the answer path, and
 * what cannot be used is dropped, counted and logged at most once per
 * DROP_LOG_MS. libtempest peers keep the precise error replies.
 */
enum { DROP_LOG_MS = 10000 };

static void note_drop(tempest_node *node, long long id, const char *why) {
    uint64_t now = (uint64_t)tp_now_ms();
    node->answers_dropped++;
    node->drops_unlogged++;
    if (node->drop_logged_ms != 0 && now - node->drop_logged_ms < DROP_LOG_MS)
        return;
    tp_log(&node->log, TEMPEST_LOG_WARN,
           "dropped %llu answer(s) from foreign workers since the last note (%llu in all), "
           "each acknowledged +OK as the original front did; the latest: job %lld: %s",
           (unsigned long long)node->drops_unlogged, (unsigned long long)node->answers_dropped, id,
           why);
    node->drop_logged_ms = now;
    node->drops_unlogged = 0;
}

/* Refuses an answer: `-message` to a libtempest peer, +OK to a foreign one. */
static void refuse_answer(tempest_node *node, long long id, const char *message,
                          struct evbuffer *out) {
    if (tp_listener_peer(out)) {
        tp_resp_error(out, message);
        return;
    }
    note_drop(node, id, message);
    tp_resp_status(out, "OK");
}

/* Why job `id` takes no answer now, or NULL when it does. */
static const char *unwanted(tempest_node *node, long long id, const tp_pending *job, char *msg,
                            size_t size) {
    if (job != NULL && !job->done)
        return NULL;
    if (was_cancelled(node, id))
        snprintf(msg, size, cancelled_error, id);
    else
        snprintf(msg, size, "ERR unknown job %lld (finished, timed out or never sent)", id);
    return msg;
}

/* A payload that does not decode. A foreign worker would never learn of
 * it (+OK), so its producer gets the failure now instead of a timeout. */
static void bad_answer(tempest_node *node, tp_pending *job, const char *err, struct evbuffer *out) {
    char msg[300];
    snprintf(msg, sizeof msg, "ERR bad answer for job %lld: %s", job->id, err);
    if (tp_listener_peer(out)) {
        tp_resp_error(out, msg);
        return;
    }
    note_drop(node, job->id, msg);
    tp_node_finish(node, job);
    (void)tp_node_deliver(node, job, TEMPEST_EPROTO, NULL);
    tp_resp_status(out, "OK");
}

static void on_answer_command(tempest_node *node, int argc, const char **argv,
                              const size_t *argvlen, struct evbuffer *out) {
    char msg[300];
    long long id = -1;
    int kind = answer_kind(argc, argv);
    if (kind == -1 && !tp_listener_peer(out))
        kind = 0; /* the original front ignored a fourth argument */
    if (kind == -1 || parse_id(argv[1], argvlen[1], &id) != 0) {
        snprintf(msg, sizeof msg,
                 "ERR usage: %.40s <job_id> <json> [MORE|RAW|PROGRESS|CHECK|ERROR]", argv[0]);
        refuse_answer(node, id, msg, out);
        return;
    }
    tp_pending *job = tp_map_get(&node->pending, id);
    if (unwanted(node, id, job, msg, sizeof msg) != NULL) {
        refuse_answer(node, id, msg, out);
        return;
    }
    if (kind == KIND_PROGRESS || kind == KIND_CHECK) {
        if (kind == KIND_PROGRESS)
            extend_deadline(node, job);
        tp_resp_status(out, "OK");
        return;
    }
    char err[200];
    json_t *json = answer_payload(kind, argv[2], argvlen[2], err, sizeof err);
    if (json == NULL) {
        bad_answer(node, job, err, out);
        return;
    }
    accept_answer(node, job, kind, json, out);
}

/* The first command added whose name and matcher take the request. */
static const tp_node_command *find_command(const tempest_node *node, int argc, const char **argv,
                                           const size_t *argvlen) {
    for (int i = 0; i < node->ncommands; i++) {
        const tp_node_command *cmd = node->commands[i];
        if (argvlen[0] == strlen(cmd->name) && strncasecmp(argv[0], cmd->name, argvlen[0]) == 0 &&
            (cmd->match == NULL || cmd->match(argc, argv, argvlen)))
            return cmd;
    }
    return NULL;
}

/* The listener's one command callback: the services' commands, else an
 * answer, else an unknown command. */
static void on_command(void *arg, int argc, const char **argv, const size_t *argvlen,
                       struct evbuffer *out) {
    tempest_node *node = arg;
    const tp_node_command *cmd = find_command(node, argc, argv, argvlen);
    if (cmd != NULL) {
        if (node->freeing)
            tp_resp_error(out, "ERR node is shutting down");
        else
            cmd->run(node, argc, argv, argvlen, out);
        return;
    }
    if ((argc == 3 || argc == 4) && node->freeing) {
        refuse_answer(node, -1, "ERR node is shutting down", out);
        return;
    }
    if (argc == 3 || argc == 4) {
        on_answer_command(node, argc, argv, argvlen, out);
        return;
    }
    char msg[120];
    snprintf(msg, sizeof msg, "ERR unknown command '%.60s'", argv[0]);
    tp_resp_error(out, msg);
}

TEMPEST_API unsigned long long tempest_node_answers_dropped(const tempest_node *node) {
    return node ? node->answers_dropped : 0;
}

/* ---- listener -------------------------------------------------------- */

static char *format_address(const char *host, int port) {
    char buf[300];
    bool v6 = strchr(host, ':') != NULL;
    snprintf(buf, sizeof buf, v6 ? "[%s]:%d" : "%s:%d", host, port);
    return tp_strdup(buf);
}

int tp_node_ensure_listener(tempest_node *node) {
    if (node->listener)
        return 0;
    char err[200] = "";
    node->listener = tp_listener_new(node->base, node->listen_host, node->listen_port,
                                     &node->limits, on_command, node, err, sizeof err);
    if (node->listener == NULL) {
        tp_node_errorf(node, "listener: %s", err);
        tp_log(&node->log, TEMPEST_LOG_ERROR, "%s", node->errstr);
        return TEMPEST_EADDR;
    }
    int port = tp_listener_port(node->listener);
    node->address = node->advertise_opt ? tp_strdup(node->advertise_opt)
                                        : format_address(node->listen_host, port);
    if (node->address == NULL) {
        tp_listener_free(node->listener);
        node->listener = NULL;
        return TEMPEST_ENOMEM;
    }
    tell_services(node, TP_NODE_LISTENING);
    tp_log(&node->log, TEMPEST_LOG_INFO, "node listener on %s:%d, advertised as %s%s",
           node->listen_host, port, node->address, node->secret ? " (AUTH required)" : "");
    if (node->secret == NULL && !tp_host_is_loopback(node->listen_host)) {
        char *bound = format_address(node->listen_host, port);
        tp_log(&node->log, TEMPEST_LOG_WARN,
               "node listener bound to %s without a secret: anyone who can reach it can answer "
               "jobs",
               bound ? bound : node->listen_host);
        free(bound);
    }
    return 0;
}

TEMPEST_API int tempest_node_listen(tempest_node *node) {
    if (node == NULL)
        return TEMPEST_EINVAL;
    return tp_node_ensure_listener(node);
}

/* ---- Redis state ----------------------------------------------------- */

static void on_id(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL || rep == NULL)
        return;
    tempest_node *node = tp_redis_owner(r);
    if (rep->type == REDIS_REPLY_INTEGER && node->id == 0) {
        node->id = rep->integer;
        tp_log(&node->log, TEMPEST_LOG_INFO, "node id %lld", node->id);
        tell_services(node, TP_NODE_ID_KNOWN);
    } else if (rep->type == REDIS_REPLY_ERROR) {
        tp_log(&node->log, TEMPEST_LOG_ERROR, "INCR cluster.ids: %s", rep->str);
    }
}

static void on_redis_state(tp_redis *r, int state, const char *reason, void *arg) {
    tempest_node *node = arg;
    if (state == TEMPEST_NODE_UP && node->id == 0)
        tp_redis_cmd(r, on_id, NULL, "INCR cluster.ids");
    if (state == TEMPEST_NODE_UP)
        tp_log(&node->log, TEMPEST_LOG_INFO, "redis connection up");
    else if (reason)
        tp_node_errorf(node, "redis: %s", reason);
    tell_services(node, state == TEMPEST_NODE_UP ? TP_NODE_REDIS_UP : TP_NODE_REDIS_DOWN);
    if (node->on_state == NULL)
        return;
    tp_node_enter(node);
    node->on_state(node, state, reason, node->state_arg);
    tp_node_leave(node);
}

/* ---- construction and teardown --------------------------------------- */

static int parse_listen(tempest_node *node, const char *listen, tempest_error *err) {
    char msg[200];
    if (tp_addr_parse(listen ? listen : "127.0.0.1:0", &node->listen_host, &node->listen_port, msg,
                      sizeof msg) != 0) {
        tp_error_set(err, TEMPEST_EADDR, "listen address: %s", msg);
        return TEMPEST_EADDR;
    }
    return 0;
}

static int parse_url(tempest_node *node, const char *url, tempest_error *err) {
    char msg[200];
    if (url == NULL)
        url = getenv("TEMPEST_REDIS_URL");
    if (url == NULL || *url == '\0')
        url = default_url;
    int rc = tp_redis_url_parse(url, &node->url, msg, sizeof msg);
    if (rc != 0)
        tp_error_set(err, rc, "redis URL: %s", msg);
    return rc;
}

static void copy_options(tempest_node *node, const tempest_node_options *o) {
    node->log = (tp_logger){.fn = o->log, .arg = o->log_arg, .level = o->log_level};
    node->on_state = o->on_state;
    node->state_arg = o->state_arg;
    node->timing = (tp_redis_timing){.connect_timeout_ms = o->connect_timeout_ms,
                                     .reconnect_min_ms = o->reconnect_min_ms,
                                     .reconnect_max_ms = o->reconnect_max_ms};
    node->limits = (tp_listener_limits){.max_request = o->max_request,
                                        .max_buffered = o->max_buffered,
                                        .max_args = o->max_args,
                                        .max_connections = o->max_connections};
}

/* The option, else $TEMPEST_SECRET; "" (either way) means none. */
static int copy_secret(tempest_node *node, const char *secret) {
    if (secret == NULL)
        secret = getenv("TEMPEST_SECRET");
    if (secret == NULL || *secret == '\0')
        return 0;
    node->secret = tp_strdup(secret);
    node->limits.secret = node->secret;
    return node->secret ? 0 : TEMPEST_ENOMEM;
}

static int setup_loop(tempest_node *node, struct event_base *base) {
    node->own_base = base == NULL;
    node->base = base ? base : event_base_new();
    if (node->base == NULL)
        return TEMPEST_ENOMEM;
    node->deliver_ev = event_new(node->base, -1, 0, on_deliver, node);
    if (node->deliver_ev == NULL)
        return TEMPEST_ENOMEM;
    struct timeval tv = {30, 0};
    node->default_timeout = event_base_init_common_timeout(node->base, &tv);
    return 0;
}

static void destroy(tempest_node *node);

static int copy_presence(tempest_node *node, const tempest_node_options *o, tempest_error *err) {
    const char *ns = o->namespace ? o->namespace : "default";
    if (!tp_name_valid(ns) || o->heartbeat_ms < 0 || o->presence_ttl_ms < 0) {
        tp_error_set(err, TEMPEST_EINVAL,
                     "node: invalid namespace, heartbeat_ms or presence_ttl_ms");
        return TEMPEST_EINVAL;
    }
    node->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : 1000;
    node->presence_ttl_ms = o->presence_ttl_ms > 0 ? o->presence_ttl_ms : 5000;
    if (node->presence_ttl_ms < 2 * node->heartbeat_ms)
        node->presence_ttl_ms = 2 * node->heartbeat_ms;
    node->started_ms = (uint64_t)tp_now_ms();
    if ((node->ns = tp_strdup(ns)) == NULL) {
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        return TEMPEST_ENOMEM;
    }
    return 0;
}

tempest_node *tp_node_new(struct event_base *base, const tempest_node_options *options,
                          tempest_error *err) {
    static const tempest_node_options defaults;
    const tempest_node_options *o = options ? options : &defaults;
    tempest_node *node = tp_calloc(1, sizeof *node);
    if (node == NULL) {
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        return NULL;
    }
    copy_options(node, o);
    if (copy_presence(node, o, err) != 0)
        goto fail;
    if (parse_url(node, o->redis_url, err) != 0 || parse_listen(node, o->listen, err) != 0)
        goto fail;
    if (o->advertise && (node->advertise_opt = tp_strdup(o->advertise)) == NULL)
        goto nomem;
    if (copy_secret(node, o->secret) != 0)
        goto nomem;
    if (setup_loop(node, base) != 0)
        goto nomem;
    node->redis =
        tp_redis_new(node->base, &node->url, &node->timing, &node->log, on_redis_state, node);
    if (node->redis == NULL)
        goto nomem;
    return node;
nomem:
    tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
fail:
    destroy(node);
    return NULL;
}

/* Every job still waiting gets its one terminal callback. */
/* Jobs still waited for when the node is freed: their workers are told
 * (at most CANCELS_AT_FREE of them, written before the connection closes),
 * so that they stop, and do not retry answers nobody can take. */
enum { CANCELS_AT_FREE = 4096 };

static void cancel_all(tempest_node *node) {
    tp_delivery *d;
    while ((d = pop_delivery(node)) != NULL)
        deliver_one(node, d);
    tp_pending *job;
    int told = 0;
    while ((job = tp_map_pop(&node->pending)) != NULL) {
        if (!job->done && node->address != NULL && told < CANCELS_AT_FREE) {
            publish_cancel(node, job->id);
            told++;
        }
        job->done = true;
        if (job->timer)
            event_free(job->timer);
        if (job->fn)
            job->fn(node, job->id, TEMPEST_ECANCELED, NULL, job->arg);
        free(job);
    }
    if (told > 0)
        tp_redis_flush(node->redis);
}

/* Jobs first (their callbacks may still use every service), then the
 * services while the connections are open, then the connections, then
 * what the services keep past them (node.h: tp_node_attach). */
static void destroy(tempest_node *node) {
    node->freeing = true;
    node->depth++; /* callbacks run by cancel_all cannot free it again */
    cancel_all(node);
    stop_services(node, false);
    tp_listener_free(node->listener);
    tp_redis_free(node->redis);
    tp_map_clear(&node->pending);
    tp_map_clear(&node->workers);
    stop_services(node, true);
    if (node->deliver_ev)
        event_free(node->deliver_ev);
    if (node->own_base && node->base)
        event_base_free(node->base);
    tp_redis_url_clear(&node->url);
    free(node->listen_host);
    free(node->advertise_opt);
    free(node->address);
    free(node->ns);
    if (node->secret)
        explicit_bzero(node->secret, strlen(node->secret));
    free(node->secret);
    free(node);
}

bool tp_node_leave(tempest_node *node) {
    if (--node->depth > 0 || !node->freeing)
        return false;
    destroy(node);
    return true;
}

TEMPEST_API void tempest_node_free(tempest_node *node) {
    if (node == NULL || node->freeing)
        return;
    node->freeing = true;
    if (node->depth == 0)
        destroy(node);
}

/* ---- accessors ------------------------------------------------------- */

TEMPEST_API struct event_base *tempest_node_base(const tempest_node *node) {
    return node ? node->base : NULL;
}

TEMPEST_API int tempest_node_state(const tempest_node *node) {
    return node ? tp_redis_state(node->redis) : TEMPEST_NODE_DOWN;
}

TEMPEST_API long long tempest_node_id(const tempest_node *node) {
    return node ? node->id : 0;
}

TEMPEST_API const char *tempest_node_address(const tempest_node *node) {
    return node ? node->address : NULL;
}

TEMPEST_API const char *tempest_node_namespace(const tempest_node *node) {
    return node ? node->ns : "";
}

TEMPEST_API const char *tempest_node_errstr(const tempest_node *node) {
    return node ? node->errstr : "";
}
