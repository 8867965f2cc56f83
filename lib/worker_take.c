/* SPDX-License-Identifier: MIT */
/*
 * Taking and acknowledging jobs: the reliable fetch. A worker takes on a
 * connection of its own, with the take script (up to `concurrency` jobs at
 * once, the acks of finished jobs riding along) or, once the queues are
 * dry, with BLMOVE (bounded by a Redis-side timeout); every take refreshes
 * the worker's heartbeat. Finished jobs are acknowledged in batches, jobs
 * whose answer was not confirmed are retried, undecodable ones go to a
 * dead-letter list, and the reaper requeues the jobs of dead workers. After
 * a reconnect, jobs a lost take moved are requeued before taking again.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "worker.h"

/* In Redis Cluster mode the queues of a worker may live on different
 * masters, so scripts go queue by queue: a take moves jobs from one queue
 * (next_queue, in priority order), heartbeats and leaves are per queue. */
bool tp_worker_per_queue(const tempest_worker *w) {
    return w->nqueues > 1 && w->node->url.nseeds > 0;
}

/* ---- scripts on the node's connection -------------------------------- */

/* Logs a failed script; replies carry no worker pointer, so nothing here
 * can outlive its worker. The connection may be the node's or a worker's
 * own (the heartbeat): only its logger is used. */
static void on_script_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL || (rep && rep->type != REDIS_REPLY_ERROR))
        return;
    tp_log(tp_redis_logger(r), TEMPEST_LOG_ERROR, "queue script %s failed: %s",
           (const char *)privdata, rep ? rep->str : "connection lost");
}

/* The worker a reply on the node's connection is for, or NULL if freed. */
tempest_worker *tp_worker_of(redisAsyncContext *ac, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    tempest_node *node = r ? tp_redis_owner(r) : NULL;
    return node ? tp_map_get(&node->workers, (long long)(intptr_t)privdata) : NULL;
}

int tp_job_script(tempest_job *job, int script, const char *name, int nkeys, int argc,
                  const char **argv) {
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = argv[i] == job->raw ? job->raw_len : strlen(argv[i]);
    int rc = tp_redis_script(job->w->node->redis, on_script_reply, (void *)name, script, nkeys,
                             argc, argv, lens);
    if (rc != 0)
        tp_log(&job->w->node->log, TEMPEST_LOG_ERROR, "job %lld: %s not sent: %s", job->parts.id,
               name, tempest_strerror(rc));
    return rc;
}

/* Appends a finished job's raw text (taken over) to its queue's batch. */
static int ack_push(wqueue *q, char *raw, size_t len) {
    if (q->nacks == q->ack_cap) {
        int cap = q->ack_cap ? q->ack_cap * 2 : 64;
        ack_item *acks = tp_realloc(q->acks, (size_t)cap * sizeof *acks);
        if (acks == NULL)
            return TEMPEST_ENOMEM;
        q->acks = acks;
        q->ack_cap = cap;
    }
    q->acks[q->nacks++] = (ack_item){raw, len};
    return 0;
}

/* Moves the oldest acks of queue `qi` (at most `max`) into a new batch;
 * NULL when there are none or no memory (they stay queued). */
static ack_batch *batch_cut(tempest_worker *w, int qi, int max) {
    wqueue *q = &w->queues[qi];
    int n = q->nacks < max ? q->nacks : max;
    ack_batch *b = n > 0 ? tp_malloc(sizeof *b + (size_t)n * sizeof *b->items) : NULL;
    if (b == NULL)
        return NULL;
    *b = (ack_batch){.queue = qi, .n = n};
    memcpy(b->items, q->acks, (size_t)n * sizeof *b->items);
    q->nacks -= n;
    memmove(q->acks, &q->acks[n], (size_t)q->nacks * sizeof *q->acks);
    return b;
}

/* Puts a batch that was never sent back in front of its queue's acks. */
static void batch_uncut(tempest_worker *w, ack_batch *b) {
    wqueue *q = &w->queues[b->queue];
    memmove(&q->acks[b->n], q->acks, (size_t)q->nacks * sizeof *q->acks);
    memcpy(q->acks, b->items, (size_t)b->n * sizeof *b->items);
    q->nacks += b->n;
    free(b);
}

void tp_ack_batch_free(ack_batch *b) {
    for (int i = 0; i < b->n; i++)
        free(b->items[i].raw);
    free(b);
}

/* Redis did not confirm a batch: its acks are sent again later. */
static void batch_failed(tempest_worker *w, ack_batch *b, const char *why) {
    tp_log(&w->node->log, TEMPEST_LOG_WARN, "%d acks failed (%s): sent again later", b->n, why);
    wqueue *q = &w->queues[b->queue];
    int i = 0;
    while (i < b->n && ack_push(q, b->items[i].raw, b->items[i].len) == 0)
        b->items[i++].raw = NULL;
    tp_ack_batch_free(b); /* frees only what could not be kept (no memory) */
}

/* Redis answered a batch (in order: all batches go on one connection). */
static void on_acked(redisAsyncContext *ac, void *reply, void *privdata) {
    redisReply *rep = reply;
    tempest_worker *w = tp_worker_of(ac, privdata);
    if (w == NULL || w->acks_sent == NULL)
        return; /* the worker was freed with its batches */
    ack_batch *b = w->acks_sent;
    w->acks_sent = b->next;
    if (w->acks_sent == NULL)
        w->acks_last = NULL;
    if (rep && rep->type != REDIS_REPLY_ERROR)
        tp_ack_batch_free(b);
    else
        batch_failed(w, b, rep ? rep->str : "connection lost");
    tp_worker_check_finished(w);
}

static int send_batch(tempest_worker *w, int qi, ack_batch *b) {
    wqueue *q = &w->queues[qi];
    const char *argv[2 + ACK_BATCH] = {q->processing, q->attempts};
    size_t lens[2 + ACK_BATCH] = {strlen(q->processing), strlen(q->attempts)};
    for (int i = 0; i < b->n; i++) {
        argv[2 + i] = b->items[i].raw;
        lens[2 + i] = b->items[i].len;
    }
    return tp_redis_script(w->node->redis, on_acked, (void *)(intptr_t)w->serial, TP_SCRIPT_ACK, 2,
                           2 + b->n, argv, lens);
}

static void flush_acks_of(tempest_worker *w, int qi) {
    ack_batch *b;
    while ((b = batch_cut(w, qi, ACK_BATCH)) != NULL) {
        if (send_batch(w, qi, b) != 0) {
            batch_uncut(w, b); /* Redis is down: retried from the heartbeat */
            return;
        }
        if (w->acks_last)
            w->acks_last->next = b;
        else
            w->acks_sent = b;
        w->acks_last = b;
    }
}

void tp_worker_flush_acks(tempest_worker *w) {
    for (int i = 0; i < w->nqueues; i++)
        flush_acks_of(w, i);
}

void tp_worker_on_flush_acks(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_worker_flush_acks(arg);
}

/* True while acknowledgements are waiting to be sent or confirmed. */
bool tp_worker_acks_pending(const tempest_worker *w) {
    if (w->acks_sent)
        return true;
    for (int i = 0; i < w->nqueues; i++)
        if (w->queues[i].nacks > 0)
            return true;
    return false;
}

/* Takes a finished job's raw text (ownership passes) into its batch. */
void tp_worker_ack_raw(tempest_worker *w, int qi, char *raw, size_t len) {
    wqueue *q = &w->queues[qi];
    if (ack_push(q, raw, len) != 0) {
        const char *argv[] = {q->processing, q->attempts, raw};
        size_t lens[] = {strlen(q->processing), strlen(q->attempts), len};
        if (tp_redis_script(w->node->redis, on_script_reply, "ack", TP_SCRIPT_ACK, 2, 3, argv,
                            lens) != 0)
            tp_log(&w->node->log, TEMPEST_LOG_ERROR,
                   "no memory: an ack is lost; the job stays "
                   "in processing until its worker is reaped");
        free(raw);
        return;
    }
    event_active(w->ack_ev, EV_TIMEOUT, 0);
}

void tp_job_ack(tempest_job *job) {
    tp_worker_ack_raw(job->w, job->queue, job->raw, job->raw_len);
    job->raw = NULL;
}

/* Puts a job whose answer was not confirmed back on its queue's tail, with
 * one more attempt counted (dead-lettered past max_attempts). */
void tp_worker_retry_raw(tempest_worker *w, int qi, const char *raw, size_t len, const char *why) {
    wqueue *q = &w->queues[qi];
    char max[16];
    snprintf(max, sizeof max, "%d", w->max_attempts);
    const char *argv[] = {q->processing, q->attempts, q->name, q->dead, raw, max, why, q->name};
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = argv[i] == raw ? len : strlen(argv[i]);
    if (tp_redis_script(w->node->redis, on_script_reply, "retry", TP_SCRIPT_RETRY, 4, 8, argv,
                        lens) != 0)
        tp_log(&w->node->log, TEMPEST_LOG_ERROR,
               "a job to retry stays in processing until its worker is reaped (%s)", why);
}

void tp_job_requeue(tempest_job *job) {
    wqueue *q = &job->w->queues[job->queue];
    const char *argv[] = {q->processing, q->name, job->raw};
    tp_job_script(job, TP_SCRIPT_REQUEUE, "requeue", 2, 3, argv);
}

/* A job that cannot be decoded goes from processing to the dead letters. */
static void bury_raw(tempest_worker *w, int qi, const char *raw, size_t len, const char *reason) {
    wqueue *q = &w->queues[qi];
    const char *argv[] = {q->processing, q->attempts, q->dead, raw, reason, q->name};
    size_t lens[] = {strlen(q->processing), strlen(q->attempts), strlen(q->dead), len,
                     strlen(reason),        strlen(q->name)};
    int rc =
        tp_redis_script(w->node->redis, on_script_reply, "bury", TP_SCRIPT_BURY, 3, 6, argv, lens);
    tp_log(&w->node->log, rc ? TEMPEST_LOG_ERROR : TEMPEST_LOG_WARN,
           "malformed job %sdead-lettered to %s: %s", rc ? "NOT " : "", q->dead, reason);
}

static bool handle_raw(tempest_worker *w, int qi, const char *raw, size_t len) {
    char err[200];
    tp_job_parts parts;
    w->taken++;
    if (tp_job_decode(raw, len, &parts, err, sizeof err) != 0) {
        bury_raw(w, qi, raw, len, err);
        return false;
    }
    return tp_job_dispatch(w, qi, &parts, raw, len);
}

/* The take in flight is answered, or never will be: the acks it carried
 * are freed (confirmed), or queued to be sent again with `failed` logged. */
void tp_worker_take_settle(tempest_worker *w, const char *failed) {
    take *t = w->take;
    if (t == NULL)
        return;
    w->take = NULL;
    while (t->acks) {
        ack_batch *b = t->acks;
        t->acks = b->next;
        if (failed)
            batch_failed(w, b, failed);
        else
            tp_ack_batch_free(b);
    }
    free(t);
}

/* Common handling of a take's reply; returns the worker, or NULL when the
 * reply must be ignored (worker gone, connection lost, or an error). The
 * worker stays `taking` while the jobs are dispatched, so that jobs
 * finished at once do not each start a take for one job: the next take is
 * made after the whole batch, with all the room there is. */
static tempest_worker *take_reply(redisAsyncContext *ac, redisReply *rep, const char *what) {
    tp_redis *r = tp_redis_from(ac);
    if (r == NULL)
        return NULL;
    tempest_worker *w = tp_redis_owner(r);
    tp_worker_take_settle(w, rep == NULL                      ? "connection lost"
                             : rep->type == REDIS_REPLY_ERROR ? rep->str
                                                              : NULL);
    if (rep == NULL) {
        w->taking = false;
        tp_worker_check_finished(w);
        return NULL; /* taking resumes when the connection is back up */
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        w->taking = false;
        tp_log(&w->node->log, TEMPEST_LOG_ERROR, "%s on %s: %s", what, w->queues[0].name, rep->str);
        struct timeval tv = {1, 0};
        evtimer_add(w->retry, &tv);
        tp_worker_check_finished(w);
        return NULL;
    }
    return w;
}

/* After a take's jobs were dispatched: take again if there is room. */
static void take_done(tempest_worker *w) {
    w->taking = false;
    tp_worker_check_finished(w);
    tp_worker_maybe_take(w);
}

/* Once the queues run dry, blocking takes wait BLOCK_MIN_MS at first and
 * twice as long each time they come back empty, up to block_ms: a stop
 * soon after a burst of jobs is not kept waiting for a long take, and an
 * idle worker soon sends one command per block_ms. */
enum { BLOCK_MIN_MS = 10 };

int tp_worker_block_min(const tempest_worker *w) {
    return w->block_ms < BLOCK_MIN_MS ? w->block_ms : BLOCK_MIN_MS;
}

static void on_moved(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    redisReply *rep = reply;
    tempest_worker *w = take_reply(ac, rep, "BLMOVE");
    if (w == NULL)
        return;
    if (rep->type == REDIS_REPLY_STRING) {
        w->last_empty = false;
        w->block_now_ms = tp_worker_block_min(w);
        if (handle_raw(w, 0, rep->str, rep->len))
            return;
    } else if (w->block_now_ms < w->block_ms) {
        w->block_now_ms = w->block_now_ms * 2 < w->block_ms ? w->block_now_ms * 2 : w->block_ms;
    }
    take_done(w);
}

static void on_batch(redisAsyncContext *ac, void *reply, void *privdata) {
    int room = (int)((intptr_t)privdata >> 4), first = (int)((intptr_t)privdata & 15);
    redisReply *rep = reply;
    tempest_worker *w = take_reply(ac, rep, "take");
    if (w == NULL)
        return;
    size_t nq = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0, n = 0;
    if (nq > (size_t)(w->nqueues - first))
        nq = (size_t)(w->nqueues - first);
    for (size_t qi = 0; qi < nq; qi++)
        n += rep->element[qi]->type == REDIS_REPLY_ARRAY ? rep->element[qi]->elements : 0;
    w->last_empty = n < (size_t)room;
    if (tp_worker_per_queue(
            w)) { /* a short take moves on to the next queue; a full one starts over */
        w->next_queue = w->last_empty ? (first + 1) % w->nqueues : 0;
        w->last_empty = w->last_empty && w->next_queue == 0;
    }
    if (n > 0)
        w->block_now_ms = tp_worker_block_min(w);
    for (size_t qi = 0; qi < nq; qi++) {
        redisReply *jobs = rep->element[qi];
        for (size_t i = 0; jobs->type == REDIS_REPLY_ARRAY && i < jobs->elements; i++) {
            redisReply *job = jobs->element[i];
            if (job->type == REDIS_REPLY_STRING &&
                handle_raw(w, first + (int)qi, job->str, job->len))
                return;
        }
    }
    take_done(w);
}

/* Presence value: who this worker is, for monitors and people. */
static const char *presence_info(tempest_worker *w) {
    long long id = tempest_node_id(w->node);
    if (w->info && w->info_node == id)
        return w->info;
    char host[128] = "";
    gethostname(host, sizeof host - 1);
    json_t *j = json_pack("{s:s,s:I,s:i,s:s,s:i}", "worker", w->wid, "node", (json_int_t)id, "pid",
                          (int)getpid(), "host", host, "concurrency", w->concurrency);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text) {
        free(w->info);
        w->info = text;
        w->info_node = id;
    }
    return w->info ? w->info : "{}";
}

static void send_heartbeat_of(tempest_worker *w, int first, int count) {
    const char *argv[2 * 15 + 3];
    char ttl[16];
    int n = 0;
    snprintf(ttl, sizeof ttl, "%d", w->ttl_ms);
    for (int i = first; i < first + count; i++) {
        argv[n++] = w->queues[i].alive;
        argv[n++] = w->queues[i].workers;
    }
    argv[n] = ttl;
    argv[n + 1] = presence_info(w);
    argv[n + 2] = w->wid;
    tp_redis_script(w->redis, on_script_reply, "heartbeat", TP_SCRIPT_HEARTBEAT, n, n + 3, argv,
                    NULL);
}

static void send_heartbeat(tempest_worker *w) {
    for (int i = 0; tp_worker_per_queue(w) && i < w->nqueues; i++)
        send_heartbeat_of(w, i, 1);
    if (!tp_worker_per_queue(w))
        send_heartbeat_of(w, 0, w->nqueues);
}

/* The arguments of one script call. */
typedef struct args {
    int n;
    const char *v[TP_SCRIPT_MAX_ARGS];
    size_t len[TP_SCRIPT_MAX_ARGS];
} args;

static inline void arg_add(args *a, const char *s, size_t len) {
    a->v[a->n] = s;
    a->len[a->n++] = len;
}

static inline void arg_str(args *a, const char *s) {
    arg_add(a, s, strlen(s));
}

/* Adds, for each queue, the count and the text of its oldest finished jobs
 * (within the argument limit) to a take, which carries their batches. */
static void take_carry(tempest_worker *w, take *t, args *a, char counts[][12], int first,
                       int count) {
    ack_batch **last = &t->acks;
    for (int i = first; i < first + count; i++) {
        int budget = TP_SCRIPT_MAX_ARGS - a->n - (first + count - i);
        ack_batch *b = batch_cut(w, i, budget < ACK_BATCH ? budget : ACK_BATCH);
        int n = b ? b->n : 0;
        arg_add(a, counts[i], (size_t)snprintf(counts[i], 12, "%d", n));
        for (int j = 0; j < n; j++)
            arg_add(a, b->items[j].raw, b->items[j].len);
        if (b) {
            *last = b;
            last = &b->next;
        }
    }
}

/* Non-blocking: acknowledges the oldest finished jobs, refreshes presence,
 * then moves up to `room` jobs, queues in priority order. */
static int take_batch(tempest_worker *w, int room) {
    take *t = tp_calloc(1, sizeof *t);
    if (t == NULL)
        return TEMPEST_ENOMEM;
    args a;
    char ttl[16], max[16], counts[15][12];
    a.n = 0;
    snprintf(ttl, sizeof ttl, "%d", w->ttl_ms);
    snprintf(max, sizeof max, "%d", room);
    int first = tp_worker_per_queue(w) ? w->next_queue : 0,
        count = tp_worker_per_queue(w) ? 1 : w->nqueues;
    for (int i = first; i < first + count; i++) {
        const wqueue *q = &w->queues[i];
        const char *keys[] = {q->name, q->processing, q->alive, q->workers, q->attempts};
        for (int k = 0; k < 5; k++)
            arg_str(&a, keys[k]);
    }
    const char *tail[] = {ttl, presence_info(w), w->wid, max};
    for (int k = 0; k < 4; k++)
        arg_str(&a, tail[k]);
    take_carry(w, t, &a, counts, first, count);
    int rc = tp_redis_script(w->redis, on_batch, (void *)((intptr_t)room << 4 | first),
                             TP_SCRIPT_TAKE, 5 * count, a.n, a.v, a.len);
    if (rc != 0) {
        while (t->acks) {
            ack_batch *b = t->acks;
            t->acks = b->next;
            batch_uncut(w, b);
        }
        free(t);
        return rc;
    }
    w->take = t;
    return 0;
}

/* Blocking, bounded by the Redis-side timeout: heartbeat, then BLMOVE on
 * the first queue (pipelined on the same connection, in this order). */
static int take_blocking(tempest_worker *w) {
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%.3f", w->block_now_ms / 1000.0);
    send_heartbeat(w);
    return tp_redis_cmd(w->redis, on_moved, NULL, "BLMOVE %s %s LEFT LEFT %s", w->queues[0].name,
                        w->queues[0].processing, timeout);
}

void tp_worker_maybe_take(tempest_worker *w) {
    int room = w->concurrency - w->in_hand;
    if (!w->started || w->stopping || w->taking || w->freeing || room <= 0 || w->recovering > 0 ||
        evtimer_pending(w->retry, NULL) || tp_redis_state(w->redis) != TEMPEST_NODE_UP)
        return;
    if ((w->last_empty ? take_blocking(w) : take_batch(w, room)) == 0)
        w->taking = true;
}

void tp_worker_on_retry(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_worker_maybe_take(arg);
}

void tp_worker_on_heartbeat(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tempest_worker *w = arg;
    /* A take in flight was preceded by a heartbeat, and the next one will be. */
    if (!w->taking && !w->leaving && !w->finished && tp_redis_state(w->redis) == TEMPEST_NODE_UP)
        send_heartbeat(w);
    tp_worker_flush_acks(w); /* batches that failed earlier */
}

static void on_reaped(redisAsyncContext *ac, void *reply, void *privdata) {
    redisReply *rep = reply;
    tempest_worker *w = tp_worker_of(ac, privdata);
    if (w == NULL || rep == NULL)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        tp_log(&w->node->log, TEMPEST_LOG_ERROR, "reaper: %s", rep->str);
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
               (rep->element[0]->integer || rep->element[1]->integer)) {
        tp_log(&w->node->log, TEMPEST_LOG_WARN,
               "reaper: %lld jobs of dead workers requeued, %lld dead-lettered",
               rep->element[0]->integer, rep->element[1]->integer);
    }
}

void tp_worker_on_reap(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tempest_worker *w = arg;
    char max[16];
    snprintf(max, sizeof max, "%d", w->max_attempts);
    for (int i = 0; i < w->nqueues; i++) {
        wqueue *q = &w->queues[i];
        const char *argv[] = {q->name, q->workers, q->attempts, q->dead, q->prefix, max, q->name};
        tp_redis_script(w->node->redis, on_reaped, (void *)(intptr_t)w->serial, TP_SCRIPT_REAP, 4,
                        7, argv, NULL);
    }
}

static bool same(const char *a, size_t alen, const char *b, size_t blen) {
    return a && alen == blen && memcmp(a, b, alen) == 0;
}

static bool batch_holds(const ack_batch *b, int qi, const char *raw, size_t len) {
    for (int i = 0; b->queue == qi && i < b->n; i++)
        if (same(b->items[i].raw, b->items[i].len, raw, len))
            return true;
    return false;
}

/* Whether this worker holds the job `raw` of queue `qi` in any form: in
 * hand, awaiting the producer's reply, or awaiting its ack. */
static bool held(const tempest_worker *w, int qi, const char *raw, size_t len) {
    for (const tempest_job *j = w->jobs; j; j = j->next)
        if (j->queue == qi && same(j->raw, j->raw_len, raw, len))
            return true;
    for (const settle *st = w->settles; st; st = st->next)
        if (st->queue == qi && same(st->raw, st->len, raw, len))
            return true;
    const wqueue *q = &w->queues[qi];
    for (int i = 0; i < q->nacks; i++)
        if (same(q->acks[i].raw, q->acks[i].len, raw, len))
            return true;
    for (const ack_batch *b = w->acks_sent; b; b = b->next)
        if (batch_holds(b, qi, raw, len))
            return true;
    for (const ack_batch *b = w->take ? w->take->acks : NULL; b; b = b->next)
        if (batch_holds(b, qi, raw, len))
            return true;
    return false;
}

/* A take whose reply was lost with the connection moved jobs that this
 * worker never saw: they sit in its processing list. Requeue them (at the
 * head) before taking again. */
static void on_recover(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL)
        return;
    tempest_worker *w = tp_redis_owner(r);
    int qi = (int)(intptr_t)privdata;
    wqueue *q = &w->queues[qi];
    int n = 0;
    for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_STRING || held(w, qi, e->str, e->len))
            continue;
        const char *argv[] = {q->processing, q->name, e->str};
        size_t lens[] = {strlen(q->processing), strlen(q->name), e->len};
        if (tp_redis_script(w->redis, NULL, NULL, TP_SCRIPT_REQUEUE, 2, 3, argv, lens) == 0)
            n++;
    }
    if (n > 0)
        tp_log(&w->node->log, TEMPEST_LOG_WARN,
               "%d jobs of %s taken while the connection was lost: requeued", n, q->name);
    if (--w->recovering == 0)
        tp_worker_maybe_take(w);
}

static void recover(tempest_worker *w) {
    for (int i = 0; i < w->nqueues; i++)
        if (tp_redis_cmd(w->redis, on_recover, (void *)(intptr_t)i, "LRANGE %s 0 -1",
                         w->queues[i].processing) == 0)
            w->recovering++;
}

void tp_worker_on_redis_state(tp_redis *r, int state, const char *reason, void *arg) {
    (void)r;
    (void)reason;
    tempest_worker *w = arg;
    tp_worker_take_settle(w, "connection lost"); /* if the old connection never answered */
    w->taking = false;
    w->last_empty = false; /* the first take after a reconnect is a batch */
    if (state != TEMPEST_NODE_UP) {
        w->recovering = 0;
        tp_worker_check_finished(w);
        return;
    }
    if (w->was_up)
        recover(w);
    w->was_up = true;
    tp_worker_maybe_take(w);
}
