/* SPDX-License-Identifier: MIT */
/*
 * The worker: takes jobs with BLPOP (bounded by a Redis-side timeout) on a
 * connection of its own, decodes them, dispatches them by action, and sends
 * the answers over cached connections to the producers' node listeners (one
 * per distinct respond_to address). Undecodable jobs go to a dead-letter
 * list. Handlers run inside the take's reply callback; `depth` and
 * `freeing` let a handler free the worker.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "node.h"

typedef struct handler {
    char *action;
    tempest_handler_fn *fn;
    void *arg;
} handler;

/* A connection to one producer's node listener. */
typedef struct peer {
    struct peer *next;
    tempest_worker *w;
    char *addr;
    redisAsyncContext *ac;
    int inflight; /* answers sent, replies not yet read */
} peer;

struct tempest_job {
    tempest_worker *w;
    tempest_job *prev, *next;
    tp_job_parts parts;
};

struct tempest_worker {
    tempest_node *node;
    tp_redis *redis;
    char *queue;
    char *dead;
    int concurrency;
    int block_ms;
    bool handle_signals;
    handler *handlers;
    size_t nhandlers;
    tempest_job *jobs;
    int in_hand;
    unsigned long long taken;
    peer *peers;
    int answers_inflight;
    struct event *retry; /* take again after an error reply */
    struct event *flush; /* bound on waiting for answer replies at stop */
    struct event *signals[2];
    bool started, stopping, taking, finished, flush_expired;
    int depth;
    bool freeing;
};

static void maybe_take(tempest_worker *w);
static void destroy(tempest_worker *w);

/* ---- callbacks guard ------------------------------------------------- */

static bool leave(tempest_worker *w) {
    if (--w->depth > 0 || !w->freeing)
        return false;
    destroy(w);
    return true;
}

/* ---- stop ------------------------------------------------------------ */

static void check_finished(tempest_worker *w) {
    if (!w->stopping || w->finished || w->taking || w->in_hand > 0)
        return;
    if (w->answers_inflight > 0 && !w->flush_expired) {
        struct timeval tv = {2, 0};
        if (!evtimer_pending(w->flush, NULL))
            evtimer_add(w->flush, &tv);
        return;
    }
    evtimer_del(w->flush);
    w->finished = true;
    tp_log(&w->node->log, TEMPEST_LOG_INFO, "worker on %s stopped", w->queue);
}

static void on_flush_timeout(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tempest_worker *w = arg;
    tp_log(&w->node->log, TEMPEST_LOG_WARN, "worker: %d answers unacknowledged at stop",
           w->answers_inflight);
    w->flush_expired = true;
    check_finished(w);
}

TEMPEST_API void tempest_worker_stop(tempest_worker *w) {
    if (w == NULL || w->stopping)
        return;
    w->stopping = true;
    evtimer_del(w->retry);
    check_finished(w);
}

/* ---- answers --------------------------------------------------------- */

static void peer_unlink(peer *p) {
    tempest_worker *w = p->w;
    for (peer **pp = &w->peers; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    w->answers_inflight -= p->inflight;
    if (p->ac)
        p->ac->data = NULL;
    free(p->addr);
    free(p);
    check_finished(w);
}

static void on_peer_connect(const redisAsyncContext *ac, int status) {
    peer *p = ac->data;
    if (p == NULL || status == REDIS_OK)
        return;
    tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "cannot reach %s to answer: %s", p->addr,
           ac->errstr);
    p->ac = NULL; /* hiredis frees the context */
    peer_unlink(p);
}

static void on_peer_disconnect(const redisAsyncContext *ac, int status) {
    (void)status;
    peer *p = ac->data;
    if (p == NULL)
        return;
    p->ac = NULL;
    peer_unlink(p);
}

static void on_peer_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL)
        return; /* the disconnect path settles the counts */
    p->inflight--;
    p->w->answers_inflight--;
    if (rep->type == REDIS_REPLY_ERROR)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "%s refused an answer: %s", p->addr, rep->str);
    check_finished(p->w);
}

static peer *peer_open(tempest_worker *w, const char *addr) {
    char *host = NULL, err[200];
    int port;
    peer *p = calloc(1, sizeof *p);
    if (p == NULL || tp_addr_parse(addr, &host, &port, err, sizeof err) != 0)
        goto fail;
    p->ac = tp_redis_connect_raw(tempest_node_base(w->node), host, port, err, sizeof err);
    if (p->ac == NULL || (p->addr = strdup(addr)) == NULL)
        goto fail;
    p->w = w;
    p->ac->data = p;
    redisAsyncSetConnectCallback(p->ac, on_peer_connect);
    redisAsyncSetDisconnectCallback(p->ac, on_peer_disconnect);
    p->next = w->peers;
    w->peers = p;
    free(host);
    return p;
fail:
    tp_log(&w->node->log, TEMPEST_LOG_WARN, "cannot answer %s: %s", addr, p ? err : "no memory");
    if (p && p->ac)
        redisAsyncFree(p->ac);
    free(host);
    free(p);
    return NULL;
}

static peer *peer_get(tempest_worker *w, const char *addr) {
    for (peer *p = w->peers; p; p = p->next)
        if (strcmp(p->addr, addr) == 0)
            return p;
    return peer_open(w, addr);
}

/* Sends `<action> <id> <payload> [flag]` to the job's producer. */
static int send_answer(tempest_job *job, const char *payload, size_t len, const char *flag) {
    tempest_worker *w = job->w;
    peer *p = peer_get(w, job->parts.respond_to);
    if (p == NULL)
        return TEMPEST_EDOWN;
    char id[24];
    int idlen = snprintf(id, sizeof id, "%lld", job->parts.id);
    const char *argv[] = {job->parts.action, id, payload, flag};
    size_t lens[] = {strlen(job->parts.action), (size_t)idlen, len, flag ? strlen(flag) : 0};
    if (redisAsyncCommandArgv(p->ac, on_peer_reply, NULL, flag ? 4 : 3, argv, lens) != REDIS_OK)
        return TEMPEST_EDOWN;
    p->inflight++;
    w->answers_inflight++;
    return 0;
}

static void job_finish(tempest_job *job) {
    tempest_worker *w = job->w;
    if (job->prev)
        job->prev->next = job->next;
    else
        w->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    w->in_hand--;
    tp_job_parts_clear(&job->parts);
    free(job);
    check_finished(w);
    maybe_take(w);
}

TEMPEST_API int tempest_job_answer(tempest_job *job, json_t *answer, bool more) {
    if (job == NULL || answer == NULL)
        return TEMPEST_EINVAL;
    int rc = 0;
    if (job->parts.respond_to) {
        size_t len;
        char *payload = tp_answer_encode(answer, &len);
        rc = payload ? send_answer(job, payload, len, more ? "MORE" : NULL) : TEMPEST_ENOMEM;
        free(payload);
        rc = rc == TEMPEST_EDOWN ? 0 : rc; /* logged; the producer times out */
    }
    if (!more)
        job_finish(job);
    return rc;
}

TEMPEST_API void tempest_job_done(tempest_job *job) {
    if (job)
        job_finish(job);
}

static void answer_error(tempest_job *job, const char *message) {
    if (job->parts.respond_to == NULL)
        return;
    json_t *s = json_string(message);
    size_t len;
    char *payload = s ? tp_answer_encode(s, &len) : NULL;
    if (payload)
        send_answer(job, payload, len, "ERROR");
    free(payload);
    json_decref(s);
}

/* ---- taking and dispatching ------------------------------------------ */

static void dead_letter(tempest_worker *w, const char *raw, size_t len, const char *reason) {
    struct timeval now;
    gettimeofday(&now, NULL);
    json_t *entry = json_pack("{s:s%,s:s,s:s,s:I}", "job", raw, len, "reason", reason, "queue",
                              w->queue, "at", (json_int_t)now.tv_sec * 1000 + now.tv_usec / 1000);
    if (entry == NULL) /* not UTF-8: keep the bytes' length at least */
        entry = json_pack("{s:s,s:s,s:s,s:I}", "job", "(invalid UTF-8)", "reason", reason, "queue",
                          w->queue, "bytes", (json_int_t)len);
    char *text = entry ? json_dumps(entry, JSON_COMPACT) : NULL;
    int rc = text ? tp_redis_cmd(w->node->redis, NULL, NULL, "RPUSH %s %s", w->dead, text)
                  : TEMPEST_ENOMEM;
    tp_log(&w->node->log, rc ? TEMPEST_LOG_ERROR : TEMPEST_LOG_WARN,
           "job %s dead-lettered (%s): %s", rc ? "NOT" : "", w->dead, reason);
    free(text);
    json_decref(entry);
}

static handler *find_handler(tempest_worker *w, const char *action) {
    handler *fallback = NULL;
    for (size_t i = 0; i < w->nhandlers; i++) {
        if (strcmp(w->handlers[i].action, action) == 0)
            return &w->handlers[i];
        if (strcmp(w->handlers[i].action, "*") == 0)
            fallback = &w->handlers[i];
    }
    return fallback;
}

static tempest_job *job_new(tempest_worker *w, tp_job_parts *parts) {
    tempest_job *job = calloc(1, sizeof *job);
    if (job == NULL)
        return NULL;
    job->w = w;
    job->parts = *parts;
    job->next = w->jobs;
    if (w->jobs)
        w->jobs->prev = job;
    w->jobs = job;
    w->in_hand++;
    return job;
}

/* Runs the handler of one decoded job; returns true when `w` was freed. */
static bool dispatch(tempest_worker *w, tp_job_parts *parts) {
    tempest_job *job = job_new(w, parts);
    if (job == NULL) {
        tp_log(&w->node->log, TEMPEST_LOG_ERROR, "out of memory: job %lld dropped", parts->id);
        tp_job_parts_clear(parts);
        return false;
    }
    handler *h = find_handler(w, job->parts.action);
    if (h == NULL) {
        char msg[200];
        snprintf(msg, sizeof msg, "no handler for action '%.100s'", job->parts.action);
        tp_log(&w->node->log, TEMPEST_LOG_WARN, "job %lld: %s", job->parts.id, msg);
        answer_error(job, msg);
        job_finish(job);
        return false;
    }
    w->depth++;
    h->fn(w, job, h->arg);
    return leave(w);
}

static bool handle_raw(tempest_worker *w, const char *raw, size_t len) {
    char err[200];
    tp_job_parts parts;
    w->taken++;
    if (tp_job_decode(raw, len, &parts, err, sizeof err) != 0) {
        dead_letter(w, raw, len, err);
        return false;
    }
    return dispatch(w, &parts);
}

static void on_taken(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL)
        return;
    tempest_worker *w = tp_redis_owner(r);
    w->taking = false;
    if (rep == NULL)
        return; /* connection lost: taking resumes when it is back up */
    if (rep->type == REDIS_REPLY_ERROR) {
        tp_log(&w->node->log, TEMPEST_LOG_ERROR, "BLPOP %s: %s", w->queue, rep->str);
        struct timeval tv = {1, 0};
        evtimer_add(w->retry, &tv);
        return;
    }
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[1]->type == REDIS_REPLY_STRING) {
        if (handle_raw(w, rep->element[1]->str, rep->element[1]->len))
            return;
    }
    check_finished(w);
    maybe_take(w);
}

static void maybe_take(tempest_worker *w) {
    if (!w->started || w->stopping || w->taking || w->freeing || w->in_hand >= w->concurrency ||
        evtimer_pending(w->retry, NULL))
        return;
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%.3f", w->block_ms / 1000.0);
    if (tp_redis_cmd(w->redis, on_taken, NULL, "BLPOP %s %s", w->queue, timeout) == 0)
        w->taking = true;
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    maybe_take(arg);
}

static void on_redis_state(tp_redis *r, int state, const char *reason, void *arg) {
    (void)r;
    (void)reason;
    tempest_worker *w = arg;
    if (state == TEMPEST_NODE_UP)
        maybe_take(w);
    else
        check_finished(w);
}

/* ---- life cycle ------------------------------------------------------ */

static int copy_options(tempest_worker *w, const tempest_worker_options *o) {
    w->queue = strdup(o->queue ? o->queue : "tempest");
    if (w->queue == NULL)
        return TEMPEST_ENOMEM;
    if (o->dead_letter) {
        w->dead = strdup(o->dead_letter);
    } else if ((w->dead = malloc(strlen(w->queue) + 6)) != NULL) {
        sprintf(w->dead, "%s:dead", w->queue);
    }
    w->concurrency = o->concurrency > 0 ? o->concurrency : 1;
    w->block_ms = o->block_timeout_ms > 0 ? o->block_timeout_ms : 1000;
    w->handle_signals = o->handle_signals;
    return w->dead ? 0 : TEMPEST_ENOMEM;
}

TEMPEST_API tempest_worker *
tempest_worker_new(tempest_node *node, const tempest_worker_options *options, tempest_error *err) {
    static const tempest_worker_options defaults;
    const tempest_worker_options *o = options ? options : &defaults;
    if (node == NULL || o->concurrency < 0 || (o->queue && *o->queue == '\0')) {
        tp_error_set(err, TEMPEST_EINVAL, "worker: a node is required, and a non-empty queue");
        return NULL;
    }
    tempest_worker *w = calloc(1, sizeof *w);
    if (w == NULL)
        goto nomem;
    w->node = node;
    if (copy_options(w, o) != 0)
        goto nomem;
    w->retry = evtimer_new(node->base, on_retry, w);
    w->flush = evtimer_new(node->base, on_flush_timeout, w);
    if (w->retry == NULL || w->flush == NULL)
        goto nomem;
    return w;
nomem:
    tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
    if (w)
        destroy(w);
    return NULL;
}

TEMPEST_API int tempest_worker_on(tempest_worker *w, const char *action, tempest_handler_fn *fn,
                                  void *arg) {
    if (w == NULL || action == NULL || *action == '\0' || fn == NULL)
        return TEMPEST_EINVAL;
    for (size_t i = 0; i < w->nhandlers; i++) {
        if (strcmp(w->handlers[i].action, action) == 0) {
            w->handlers[i].fn = fn;
            w->handlers[i].arg = arg;
            return 0;
        }
    }
    handler *hs = realloc(w->handlers, (w->nhandlers + 1) * sizeof *hs);
    if (hs == NULL)
        return TEMPEST_ENOMEM;
    w->handlers = hs;
    char *copy = strdup(action);
    if (copy == NULL)
        return TEMPEST_ENOMEM;
    hs[w->nhandlers++] = (handler){.action = copy, .fn = fn, .arg = arg};
    return 0;
}

TEMPEST_API int tempest_worker_start(tempest_worker *w) {
    if (w == NULL)
        return TEMPEST_EINVAL;
    if (w->started && !w->finished)
        return TEMPEST_ESTATE;
    w->started = true;
    w->stopping = w->finished = w->flush_expired = false;
    if (w->redis == NULL) {
        tempest_node *n = w->node;
        w->redis = tp_redis_new(n->base, &n->url, &n->timing, &n->log, on_redis_state, w);
        if (w->redis == NULL)
            return TEMPEST_ENOMEM;
    }
    tp_log(&w->node->log, TEMPEST_LOG_INFO, "worker taking jobs from %s", w->queue);
    maybe_take(w);
    return 0;
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)what;
    tempest_worker *w = arg;
    tp_log(&w->node->log, TEMPEST_LOG_INFO, "signal %d: stopping", (int)sig);
    tempest_worker_stop(w);
}

static void signals_set(tempest_worker *w, bool on) {
    static const int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        if (on && w->signals[i] == NULL) {
            w->signals[i] = evsignal_new(w->node->base, sigs[i], on_signal, w);
            if (w->signals[i])
                evsignal_add(w->signals[i], NULL);
        } else if (!on && w->signals[i]) {
            event_free(w->signals[i]);
            w->signals[i] = NULL;
        }
    }
}

TEMPEST_API int tempest_worker_loop(tempest_worker *w) {
    if (w == NULL)
        return TEMPEST_EINVAL;
    if (!w->started || w->finished) {
        int rc = tempest_worker_start(w);
        if (rc != 0)
            return rc;
    }
    if (w->handle_signals) {
        signals_set(w, true);
        signal(SIGPIPE, SIG_IGN); /* a producer that resets must not kill us */
    }
    w->depth++; /* a free inside the loop is finished below */
    int rc = 0;
    while (!w->freeing && !w->finished) {
        int r = event_base_loop(w->node->base, EVLOOP_ONCE);
        if (r != 0) {
            rc = r < 0 ? TEMPEST_EIO : TEMPEST_ESTATE;
            break;
        }
    }
    signals_set(w, false);
    leave(w);
    return rc;
}

TEMPEST_API int tempest_worker_in_hand(const tempest_worker *w) {
    return w ? w->in_hand : 0;
}

TEMPEST_API unsigned long long tempest_worker_taken(const tempest_worker *w) {
    return w ? w->taken : 0;
}

static void free_peers(tempest_worker *w) {
    while (w->peers) {
        peer *p = w->peers;
        w->peers = p->next;
        if (p->ac) {
            p->ac->data = NULL;
            redisAsyncFree(p->ac);
        }
        free(p->addr);
        free(p);
    }
}

static void destroy(tempest_worker *w) {
    while (w->jobs) {
        tempest_job *job = w->jobs;
        w->jobs = job->next;
        tp_job_parts_clear(&job->parts);
        free(job);
    }
    free_peers(w);
    for (int i = 0; i < 2; i++)
        if (w->signals[i])
            event_free(w->signals[i]);
    tp_redis_free(w->redis);
    if (w->retry)
        event_free(w->retry);
    if (w->flush)
        event_free(w->flush);
    for (size_t i = 0; i < w->nhandlers; i++)
        free(w->handlers[i].action);
    free(w->handlers);
    free(w->queue);
    free(w->dead);
    free(w);
}

TEMPEST_API void tempest_worker_free(tempest_worker *w) {
    if (w == NULL || w->freeing)
        return;
    w->freeing = true;
    if (w->depth == 0)
        destroy(w);
}

TEMPEST_API const char *tempest_job_action(const tempest_job *job) {
    return job ? job->parts.action : NULL;
}

TEMPEST_API json_t *tempest_job_args(const tempest_job *job) {
    return job ? job->parts.args : NULL;
}

TEMPEST_API const char *tempest_job_respond_to(const tempest_job *job) {
    return job ? job->parts.respond_to : NULL;
}

TEMPEST_API long long tempest_job_id(const tempest_job *job) {
    return job ? job->parts.id : 0;
}
