/* SPDX-License-Identifier: MIT */
/*
 * The worker's life cycle: its options, start, the loop, signals, stop and
 * free. A worker takes jobs on a connection of its own (lib/worker_take.c),
 * dispatches them by action to its handlers (lib/worker_job.c), sends the
 * answers over cached connections to the producers' node listeners
 * (lib/worker_answer.c) and watches the producers' cancels
 * (lib/worker_cancel.c). A stop lets the jobs in hand finish for a grace
 * period, requeues the rest, waits (bounded) for the answers and acks to be
 * confirmed, and then leaves the registry.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <time.h>
#include <sys/random.h>

#include "cluster.h"
#include "presence.h"
#include "worker.h"

static void destroy(tempest_worker *w);
static void signals_set(tempest_worker *w, bool on);

/* ---- callbacks guard ------------------------------------------------- */

bool tp_worker_leave(tempest_worker *w) {
    if (--w->depth > 0 || !w->freeing)
        return false;
    destroy(w);
    return true;
}

/* ---- stop ------------------------------------------------------------ */

static void finished(tempest_worker *w) {
    signals_set(w, false);
    w->leaving = false;
    w->finished = true;
    evtimer_del(w->heartbeat);
    evtimer_del(w->reap);
    evtimer_del(w->grace);
    tp_log(&w->node->log, TEMPEST_LOG_INFO, "worker %s stopped", w->wid);
}

static void on_left(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)reply;
    tempest_worker *w = tp_worker_of(ac, privdata);
    if (w && w->leaving)
        finished(w);
}

/* Removes the worker's presence; the registry keeps it while jobs remain
 * in its processing lists (the reaper requeues them). */
static int send_leave_of(tempest_worker *w, redisCallbackFn *fn, int first, int count) {
    const char *argv[3 * 15 + 1];
    int n = 0;
    for (int i = first; i < first + count; i++) {
        argv[n++] = w->queues[i].alive;
        argv[n++] = w->queues[i].workers;
        argv[n++] = w->queues[i].processing;
    }
    argv[n] = w->wid;
    return tp_redis_script(w->node->redis, fn, (void *)(intptr_t)w->serial, TP_SCRIPT_LEAVE, n,
                           n + 1, argv, NULL);
}

/* The last queue's reply tells `fn`. */
static int send_leave(tempest_worker *w, redisCallbackFn *fn) {
    if (!tp_worker_per_queue(w))
        return send_leave_of(w, fn, 0, w->nqueues);
    for (int i = 0; i < w->nqueues - 1; i++)
        send_leave_of(w, NULL, i, 1);
    return send_leave_of(w, fn, w->nqueues - 1, 1);
}

void tp_worker_check_finished(tempest_worker *w) {
    if (!w->stopping || w->finished || w->leaving || w->taking || w->in_hand > 0)
        return;
    if ((w->answers_inflight > 0 || tp_worker_acks_pending(w)) && !w->flush_expired) {
        tp_worker_flush_acks(w);
        struct timeval tv = {2, 0};
        if (!evtimer_pending(w->flush, NULL))
            evtimer_add(w->flush, &tv);
        return;
    }
    evtimer_del(w->flush);
    tp_worker_flush_acks(w); /* the LEAVE must follow them on the same connection */
    w->leaving = true;
    if (send_leave(w, on_left) != 0)
        finished(w); /* Redis is down: presence expires by itself */
}

static void on_flush_timeout(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tempest_worker *w = arg;
    tp_log(&w->node->log, TEMPEST_LOG_WARN,
           "worker: %d answers unconfirmed%s at stop: their jobs are left for the reaper",
           w->answers_inflight, tp_worker_acks_pending(w) ? " and acks pending" : "");
    w->flush_expired = true;
    tp_worker_check_finished(w);
}

/* The grace period is over: jobs still in hand go back to their queue. */
static void on_grace(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tempest_worker *w = arg;
    for (tempest_job *job = w->jobs; job; job = job->next) {
        if (job->abandoned)
            continue;
        tp_log(&w->node->log, TEMPEST_LOG_WARN, "job %lld still in hand at stop: requeued",
               job->parts.id);
        tp_job_requeue(job);
        job->abandoned = true;
        w->in_hand--;
    }
    tp_worker_check_finished(w);
}

TEMPEST_API void tempest_worker_stop(tempest_worker *w) {
    if (w == NULL || w->stopping || !w->started)
        return;
    w->stopping = true;
    evtimer_del(w->retry);
    if (w->in_hand > 0) {
        struct timeval tv = {w->grace_ms / 1000, (w->grace_ms % 1000) * 1000};
        evtimer_add(w->grace, &tv);
    }
    tp_worker_check_finished(w);
}

/* ---- life cycle ------------------------------------------------------ */

static char *key(const char *prefix, const char *what, const char *wid) {
    char *k = tp_malloc(strlen(prefix) + strlen(what) + (wid ? strlen(wid) : 0) + 1);
    if (k)
        sprintf(k, "%s%s%s", prefix, what, wid ? wid : "");
    return k;
}

static int queue_init(wqueue *q, const char *name, const char *dead, const char *wid) {
    q->name = tp_strdup(name);
    q->prefix = tp_malloc(strlen(name) + 4);
    if (q->name == NULL || q->prefix == NULL)
        return TEMPEST_ENOMEM;
    sprintf(q->prefix, "{%s}:", name);
    q->processing = key(q->prefix, "processing:", wid);
    q->alive = key(q->prefix, "alive:", wid);
    q->workers = key(q->prefix, "workers", NULL);
    q->attempts = key(q->prefix, "attempts", NULL);
    q->dead = dead ? tp_strdup(dead) : key(q->prefix, "dead", NULL);
    bool ok = q->processing && q->alive && q->workers && q->attempts && q->dead;
    return ok ? 0 : TEMPEST_ENOMEM;
}

static void queue_clear(wqueue *q) {
    for (int i = 0; i < q->nacks; i++)
        free(q->acks[i].raw);
    free(q->acks);
    free(q->name);
    free(q->prefix);
    free(q->processing);
    free(q->alive);
    free(q->workers);
    free(q->attempts);
    free(q->dead);
}

static void make_wid(char wid[20]) {
    unsigned char b[8];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        unsigned long long x =
            (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32);
        memcpy(b, &x, sizeof b);
    }
    for (int i = 0; i < 8; i++)
        sprintf(wid + 2 * i, "%02x", b[i]);
}

static int count_queues(const tempest_worker_options *o) {
    int n = 0;
    if (o->queues)
        while (o->queues[n])
            n++;
    return o->queues ? n : 1;
}

static int copy_options(tempest_worker *w, const tempest_worker_options *o) {
    w->concurrency = o->concurrency > 0 ? o->concurrency : 1;
    w->block_ms = o->block_timeout_ms > 0 ? o->block_timeout_ms : 1000;
    w->block_now_ms = tp_worker_block_min(w);
    w->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : 1000;
    w->ttl_ms = o->ttl_ms > 0 ? o->ttl_ms : 5000;
    w->grace_ms = o->stop_grace_ms > 0 ? o->stop_grace_ms : 10000;
    w->max_attempts = o->max_attempts > 0 ? o->max_attempts : 5;
    w->handle_signals = o->handle_signals;
    make_wid(w->wid);
    w->nqueues = count_queues(o);
    w->queues = tp_calloc((size_t)w->nqueues, sizeof *w->queues);
    if (w->queues == NULL)
        return TEMPEST_ENOMEM;
    for (int i = 0; i < w->nqueues; i++) {
        const char *name = o->queues ? o->queues[i] : (o->queue ? o->queue : "tempest");
        if (queue_init(&w->queues[i], name, o->dead_letter, w->wid) != 0)
            return TEMPEST_ENOMEM;
    }
    return 0;
}

static const char *check_options(const tempest_worker_options *o) {
    int n = count_queues(o);
    if (o->concurrency < 0 || o->block_timeout_ms < 0 || o->ttl_ms < 0 || o->heartbeat_ms < 0 ||
        o->max_attempts < 0 || o->stop_grace_ms < 0)
        return "options must not be negative";
    if (n < 1 || n > 15)
        return "a worker takes from 1 to 15 queues";
    for (int i = 0; i < n; i++) {
        const char *q = o->queues ? o->queues[i] : o->queue;
        if (q && *q == '\0')
            return "a queue name must not be empty";
    }
    int block = o->block_timeout_ms > 0 ? o->block_timeout_ms : 1000;
    int ttl = o->ttl_ms > 0 ? o->ttl_ms : 5000;
    int beat = o->heartbeat_ms > 0 ? o->heartbeat_ms : 1000;
    if (ttl < 2 * block || ttl < 2 * beat)
        return "ttl_ms must be at least twice block_timeout_ms and heartbeat_ms";
    return NULL;
}

static int make_timers(tempest_worker *w) {
    struct event_base *base = w->node->base;
    w->retry = evtimer_new(base, tp_worker_on_retry, w);
    w->flush = evtimer_new(base, on_flush_timeout, w);
    w->grace = evtimer_new(base, on_grace, w);
    w->heartbeat = event_new(base, -1, EV_PERSIST, tp_worker_on_heartbeat, w);
    w->reap = event_new(base, -1, EV_PERSIST, tp_worker_on_reap, w);
    w->ack_ev = event_new(base, -1, 0, tp_worker_on_flush_acks, w);
    return w->retry && w->flush && w->grace && w->heartbeat && w->reap && w->ack_ev
               ? 0
               : TEMPEST_ENOMEM;
}

TEMPEST_API tempest_worker *
tempest_worker_new(tempest_node *node, const tempest_worker_options *options, tempest_error *err) {
    static const tempest_worker_options defaults;
    const tempest_worker_options *o = options ? options : &defaults;
    const char *bad = node ? check_options(o) : "a node is required";
    for (int i = 0; bad == NULL && node->url.nseeds > 0 && i < count_queues(o); i++)
        bad = tp_cluster_check_queue(o->queues ? o->queues[i] : (o->queue ? o->queue : "tempest"),
                                     o->dead_letter);
    if (bad) {
        tp_error_set(err, TEMPEST_EINVAL, "worker: %s", bad);
        return NULL;
    }
    tempest_worker *w = tp_calloc(1, sizeof *w);
    if (w == NULL)
        goto nomem;
    w->node = node;
    w->serial = ++node->next_worker;
    if (copy_options(w, o) != 0 || make_timers(w) != 0 ||
        tp_map_put(&node->workers, w->serial, w) != 0)
        goto nomem;
    return w;
nomem:
    tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
    if (w)
        destroy(w);
    return NULL;
}

static void describe(void *owner, json_t *record) {
    tempest_worker *w = owner;
    tp_presence_add_role(record, "worker");
    for (int i = 0; i < w->nqueues; i++)
        tp_presence_add_item(
            record, "queues",
            json_pack("{s:s,s:s}", "name", w->queues[i].name, "dead", w->queues[i].dead));
    tp_presence_add_count(record, "worker", "jobs", w->released);
    tp_presence_add_count(record, "worker", "in_flight", (uint64_t)w->in_hand);
    tp_presence_add_count(record, "worker", "failed", w->failed);
    tp_presence_add_count(record, "worker", "taken", w->taken);
}

static void start_timers(tempest_worker *w) {
    struct timeval beat = {w->heartbeat_ms / 1000, (w->heartbeat_ms % 1000) * 1000};
    struct timeval reap = {w->ttl_ms / 1000, (w->ttl_ms % 1000) * 1000};
    evtimer_add(w->heartbeat, &beat);
    evtimer_add(w->reap, &reap);
}

TEMPEST_API int tempest_worker_start(tempest_worker *w) {
    if (w == NULL)
        return TEMPEST_EINVAL;
    if (w->started && !w->finished)
        return TEMPEST_ESTATE;
    w->started = true;
    w->stopping = w->finished = w->flush_expired = w->last_empty = false;
    if (w->redis == NULL) {
        tempest_node *n = w->node;
        w->redis = tp_redis_new(n->base, &n->url, &n->timing, &n->log, tp_worker_on_redis_state, w);
        if (w->redis == NULL)
            return TEMPEST_ENOMEM;
    }
    start_timers(w);
    if (!w->joined && tp_presence_join(w->node, w, describe, NULL, 0) == 0)
        w->joined = true; /* else the monitor misses it: not worth failing the start */
    if (w->handle_signals) {
        signals_set(w, true);
        signal(SIGPIPE, SIG_IGN); /* a producer that resets must not kill us */
    }
    tp_log(&w->node->log, TEMPEST_LOG_INFO, "worker %s taking jobs from %s%s", w->wid,
           w->queues[0].name, w->nqueues > 1 ? " and more" : "");
    tp_worker_maybe_take(w);
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
    if (!w->started) {
        int rc = tempest_worker_start(w);
        if (rc != 0)
            return rc;
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
    tp_worker_leave(w);
    return rc;
}

TEMPEST_API int tempest_worker_in_hand(const tempest_worker *w) {
    return w ? w->in_hand : 0;
}

TEMPEST_API unsigned long long tempest_worker_taken(const tempest_worker *w) {
    return w ? w->taken : 0;
}

TEMPEST_API const char *tempest_worker_id(const tempest_worker *w) {
    return w ? w->wid : NULL;
}

/* Freed while running: jobs in hand go back to their queue and the
 * presence goes, best effort (the reaper covers what this misses). */
static void abandon_all(tempest_worker *w) {
    if (!w->started || w->finished || tp_redis_state(w->node->redis) != TEMPEST_NODE_UP)
        return;
    tp_worker_take_settle(w, "worker freed"); /* a take in flight may not run: ack again */
    tp_worker_flush_acks(w);
    tp_worker_flush_acks(w);
    for (tempest_job *job = w->jobs; job; job = job->next)
        if (!job->abandoned)
            tp_job_requeue(job);
    send_leave(w, NULL);
}

static void free_events(tempest_worker *w) {
    struct event *evs[] = {w->retry, w->flush,      w->grace,      w->heartbeat,
                           w->reap,  w->signals[0], w->signals[1], w->ack_ev};
    for (size_t i = 0; i < sizeof evs / sizeof *evs; i++)
        if (evs[i])
            event_free(evs[i]);
}

static void destroy(tempest_worker *w) {
    tp_map_del(&w->node->workers, w->serial);
    tp_worker_cancel_calls(w);
    if (w->joined)
        tp_presence_leave(w->node, w);
    if (w->queues)
        abandon_all(w);
    while (w->jobs)
        tp_job_free(w->jobs);
    for (settle *st = w->settles; st; st = st->next)
        st->linked = false; /* freed by their reply callbacks, below or later */
    w->settles = NULL;
    tp_worker_free_watches(w);
    tp_worker_free_peers(w);
    tp_worker_take_settle(w, NULL); /* freed: what it carried unconfirmed is left for the reaper */
    while (w->acks_sent) {
        ack_batch *b = w->acks_sent;
        w->acks_sent = b->next;
        tp_ack_batch_free(b);
    }
    free_events(w);
    tp_redis_free(w->redis);
    for (size_t i = 0; i < w->nhandlers; i++)
        free(w->handlers[i].action);
    free(w->handlers);
    for (int i = 0; w->queues && i < w->nqueues; i++)
        queue_clear(&w->queues[i]);
    free(w->queues);
    free(w->info);
    free(w);
}

TEMPEST_API void tempest_worker_free(tempest_worker *w) {
    if (w == NULL || w->freeing)
        return;
    w->freeing = true;
    if (w->depth == 0)
        destroy(w);
}
