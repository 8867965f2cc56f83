/* SPDX-License-Identifier: MIT */
/*
 * The worker: takes jobs on a connection of its own, with the take script
 * (up to `concurrency` jobs at once, the acks of finished jobs riding along)
 * or, once the queues are dry, with BLMOVE (bounded by a Redis-side
 * timeout); decodes them, dispatches them by action, and sends the answers
 * over cached connections to the producers' node listeners (one per
 * distinct respond_to address). Undecodable jobs go to a dead-letter list.
 * Handlers run inside the take's reply callback; `depth` and `freeing` let
 * a handler free the worker.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <unistd.h>
#include <time.h>
#include <sys/random.h>
#include <stdint.h>

#include "cluster.h"
#include "node.h"
#include "presence.h"
#include "scripts.h"
#include "session.h"

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
    int inflight;     /* answers sent, replies not yet read */
    tempest_job *job; /* the one job a stream connection serves; NULL: shared */
    bool stream;      /* a job's own connection (closed after its last reply) */
    bool probed;      /* INFO sent: only when a feature is needed */
    bool caps_known;  /* the listener answered INFO */
    bool raw;         /* ... and takes RAW answers */
    bool progress;    /* ... and PROGRESS reports */
    bool check;       /* ... and CHECK questions */
} peer;

/* Unreplied bytes of one job's partial answers past which tempest_job_write
 * refuses (TEMPEST_EAGAIN); its drain callback runs at half of it. */
enum { STREAM_WINDOW = 1 << 20, MAX_WATCHES = 256, RECENT_CANCELS = 256 };

/* A producer address whose cancel channel the worker subscribed to. */
typedef struct watch {
    struct watch *next;
    char *addr;
    bool active; /* Redis confirmed the subscription: no cancel is missed */
} watch;

/* A cancel heard for a job this worker did not hold (yet): it may still be
 * in the queue. Direct-mapped by id; a hit only makes the worker ask. */
typedef struct recent_cancel {
    long long id;
    uint32_t addr; /* hash of the producer's address */
} recent_cancel;

/* Whether a job must ask its producer if it is still wanted (CHECK). */
enum { CHECK_NONE, CHECK_ON_SUB, CHECK_ON_CAPS };

/* The keys of one queue for this worker (see lib/scripts.c). */
typedef struct wqueue {
    char *name;            /* the job list */
    char *prefix;          /* "{name}:" */
    char *processing;      /* {name}:processing:<wid> */
    char *alive;           /* {name}:alive:<wid> */
    char *workers;         /* {name}:workers */
    char *attempts;        /* {name}:attempts */
    char *dead;            /* {name}:dead, or the dead_letter option */
    struct ack_item *acks; /* finished jobs waiting for an ack batch, oldest first */
    int nacks, ack_cap;
} wqueue;

struct tempest_job {
    tempest_worker *w;
    tempest_job *prev, *next;
    tp_job_parts parts;
    char *raw; /* the job as taken: the exact bytes to acknowledge */
    size_t raw_len;
    int queue;      /* index in w->queues */
    bool abandoned; /* requeued at stop: the handler's next call frees it */
    long long serial;
    peer *own;      /* the job's stream connection, once it streams */
    size_t unacked; /* bytes of partial answers sent and not yet replied */
    bool canceled, want_drain, progress_wanted;
    unsigned char check; /* CHECK_*: a cancel may have been missed */
    bool heard;          /* its cancel was heard before it was taken */
    tempest_job_fn *on_cancel, *on_drain;
    void *cancel_arg, *drain_arg;
};

struct tempest_worker {
    tempest_node *node;
    long long serial; /* key in node->workers */
    tp_redis *redis;  /* the worker's own connection: takes and heartbeats */
    wqueue *queues;
    int nqueues;
    char wid[20];
    char *info; /* presence value */
    long long info_node;
    int concurrency, block_ms, ttl_ms, heartbeat_ms, grace_ms, max_attempts;
    int block_now_ms; /* the next blocking take's timeout, up to block_ms */
    bool handle_signals;
    handler *handlers;
    size_t nhandlers;
    tempest_job *jobs;
    int in_hand;                                /* jobs not finished nor abandoned */
    unsigned long long taken, released, failed; /* counters for the presence record */
    bool joined;                                /* in the node's presence */
    peer *peers;
    int answers_inflight;
    long long next_job_serial;
    tempest_subscriber *cancel_sub; /* tempest:cancel:<producer>, once needed */
    watch *watches;
    int nwatches;
    recent_cancel *recent;                   /* RECENT_CANCELS entries, once a cancel was heard */
    struct event *retry;                     /* take again after an error reply */
    struct event *flush;                     /* bound on waiting for answer replies at stop */
    struct event *heartbeat;                 /* presence refresh while no take is in flight */
    struct event *reap;                      /* requeue the jobs of dead workers */
    struct event *grace;                     /* requeue the jobs still in hand at stop */
    struct event *ack_ev;                    /* flushes the ack batches after this loop turn */
    struct ack_batch *acks_sent, *acks_last; /* sent, awaiting Redis, in order */
    struct settle *settles;                  /* final answers awaiting the producer's reply */
    int recovering;                          /* processing lists being checked after a reconnect */
    bool was_up;                             /* the take connection was up before */
    struct event *signals[2];
    struct take *take;                 /* the acks the take in flight carries, or NULL */
    struct tp_session_op *session_ops; /* session calls in flight (lib/session.c) */
    int next_queue; /* Redis Cluster, several queues: the queue of the next take */
    bool started, stopping, taking, last_empty, leaving, finished, flush_expired;
    int depth;
    bool freeing;
};

static void maybe_take(tempest_worker *w);
static void destroy(tempest_worker *w);
static void job_cancel(tempest_job *job, const char *why);

/* In Redis Cluster mode the queues of a worker may live on different
 * masters, so scripts go queue by queue: a take moves jobs from one queue
 * (next_queue, in priority order), heartbeats and leaves are per queue. */
static bool per_queue(const tempest_worker *w) {
    return w->nqueues > 1 && w->node->url.nseeds > 0;
}
static void check_finished(tempest_worker *w);
static void signals_set(tempest_worker *w, bool on);

/* ---- callbacks guard ------------------------------------------------- */

static bool leave(tempest_worker *w) {
    if (--w->depth > 0 || !w->freeing)
        return false;
    destroy(w);
    return true;
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
static tempest_worker *worker_of(redisAsyncContext *ac, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    tempest_node *node = r ? tp_redis_owner(r) : NULL;
    return node ? tp_map_get(&node->workers, (long long)(intptr_t)privdata) : NULL;
}

static int job_script(tempest_job *job, int script, const char *name, int nkeys, int argc,
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

/* Finished jobs are acknowledged in batches, oldest first: carried by the
 * next take (the take script acknowledges before it moves jobs), or else
 * one ack script call per queue at the end of the loop turn (at most
 * ACK_BATCH jobs a batch). A job stays in the processing list until Redis
 * confirms its batch; a batch that fails (connection lost, Redis down) goes
 * back to be sent again, from the heartbeat timer. */
enum { ACK_BATCH = 128 };
_Static_assert(ACK_BATCH + 2 <= TP_SCRIPT_MAX_ARGS, "an ack batch must fit one script call");

typedef struct ack_item {
    char *raw; /* the job as taken (owned) */
    size_t len;
} ack_item;

typedef struct ack_batch {
    struct ack_batch *next;
    int queue, n;
    ack_item items[];
} ack_batch;

/* The acknowledgements a take carries, at most one batch per queue. */
typedef struct take {
    ack_batch *acks;
} take;

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

static void batch_free(ack_batch *b) {
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
    batch_free(b); /* frees only what could not be kept (no memory) */
}

/* Redis answered a batch (in order: all batches go on one connection). */
static void on_acked(redisAsyncContext *ac, void *reply, void *privdata) {
    redisReply *rep = reply;
    tempest_worker *w = worker_of(ac, privdata);
    if (w == NULL || w->acks_sent == NULL)
        return; /* the worker was freed with its batches */
    ack_batch *b = w->acks_sent;
    w->acks_sent = b->next;
    if (w->acks_sent == NULL)
        w->acks_last = NULL;
    if (rep && rep->type != REDIS_REPLY_ERROR)
        batch_free(b);
    else
        batch_failed(w, b, rep ? rep->str : "connection lost");
    check_finished(w);
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

static void flush_acks(tempest_worker *w) {
    for (int i = 0; i < w->nqueues; i++)
        flush_acks_of(w, i);
}

static void on_flush_acks(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    flush_acks(arg);
}

/* True while acknowledgements are waiting to be sent or confirmed. */
static bool acks_pending(const tempest_worker *w) {
    if (w->acks_sent)
        return true;
    for (int i = 0; i < w->nqueues; i++)
        if (w->queues[i].nacks > 0)
            return true;
    return false;
}

/* Takes a finished job's raw text (ownership passes) into its batch. */
static void ack_raw(tempest_worker *w, int qi, char *raw, size_t len) {
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

static void ack(tempest_job *job) {
    ack_raw(job->w, job->queue, job->raw, job->raw_len);
    job->raw = NULL;
}

/* Puts a job whose answer was not confirmed back on its queue's tail, with
 * one more attempt counted (dead-lettered past max_attempts). */
static void retry_raw(tempest_worker *w, int qi, const char *raw, size_t len, const char *why) {
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

static void requeue(tempest_job *job) {
    wqueue *q = &job->w->queues[job->queue];
    const char *argv[] = {q->processing, q->name, job->raw};
    job_script(job, TP_SCRIPT_REQUEUE, "requeue", 2, 3, argv);
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
    tempest_worker *w = worker_of(ac, privdata);
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
    if (!per_queue(w))
        return send_leave_of(w, fn, 0, w->nqueues);
    for (int i = 0; i < w->nqueues - 1; i++)
        send_leave_of(w, NULL, i, 1);
    return send_leave_of(w, fn, w->nqueues - 1, 1);
}

static void check_finished(tempest_worker *w) {
    if (!w->stopping || w->finished || w->leaving || w->taking || w->in_hand > 0)
        return;
    if ((w->answers_inflight > 0 || acks_pending(w)) && !w->flush_expired) {
        flush_acks(w);
        struct timeval tv = {2, 0};
        if (!evtimer_pending(w->flush, NULL))
            evtimer_add(w->flush, &tv);
        return;
    }
    evtimer_del(w->flush);
    flush_acks(w); /* the LEAVE must follow them on the same connection */
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
           w->answers_inflight, acks_pending(w) ? " and acks pending" : "");
    w->flush_expired = true;
    check_finished(w);
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
        requeue(job);
        job->abandoned = true;
        w->in_hand--;
    }
    check_finished(w);
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
    check_finished(w);
}

/* ---- answers --------------------------------------------------------- */

/* Jobs of `addr` whose cancel was heard before they were taken, when the
 * producer cannot be reached to confirm it (it was freed, say): nobody can
 * take their answers. A cancel callback may finish jobs or free the worker:
 * the search starts over after each one. */
static void cancel_heard(tempest_worker *w, const char *addr) {
    w->depth++;
    for (tempest_job *j = w->jobs; j && !w->freeing;) {
        if (j->heard && !j->canceled && !j->abandoned && j->own == NULL &&
            strcmp(j->parts.respond_to, addr) == 0) {
            job_cancel(j, "cancelled by its producer, which cannot be reached");
            j = w->jobs;
        } else {
            j = j->next;
        }
    }
    leave(w);
}

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
    tempest_job *job = p->job;
    if (job)
        job->own = NULL;
    char *addr = p->addr;
    bool shared = p->job == NULL && !p->stream;
    free(p);
    check_finished(w);
    if (job) /* a stream cut short: nothing more can reach the producer */
        job_cancel(job, "connection to the producer lost");
    if (shared)
        cancel_heard(w, addr);
    free(addr);
}

static void on_peer_connect(const redisAsyncContext *ac, int status) {
    peer *p = ac->data;
    if (p == NULL || status == REDIS_OK)
        return;
    tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "cannot reach %s to answer: %s", p->addr,
           ac->errstr);
    peer_unlink(p); /* clears ac->data; hiredis frees the context after this */
}

static void on_peer_disconnect(const redisAsyncContext *ac, int status) {
    (void)status;
    peer *p = ac->data;
    if (p == NULL)
        return;
    peer_unlink(p); /* clears ac->data; hiredis frees the context after this */
}

/* A final answer on its way: the job is acknowledged only when the
 * producer's listener has replied to it, so a worker that dies first
 * leaves the job in its processing list for the reaper. */
typedef struct settle {
    struct settle *prev, *next; /* the worker's settlements, while linked */
    bool linked;
    tempest_node *node; /* outlives the worker: find it by serial */
    long long serial;
    int queue;
    char *raw;
    size_t len;
} settle;

static void settle_unlink(settle *st) {
    if (!st->linked)
        return;
    tempest_worker *w = tp_map_get(&st->node->workers, st->serial);
    if (st->prev)
        st->prev->next = st->next;
    else if (w)
        w->settles = st->next;
    if (st->next)
        st->next->prev = st->prev;
    st->linked = false;
}

static void settle_free(settle *st) {
    if (st) {
        settle_unlink(st);
        free(st->raw);
        free(st);
    }
}

/* The answer may not have arrived: run the job again (one attempt more). */
static void settle_retry(settle *st) {
    tempest_worker *w = tp_map_get(&st->node->workers, st->serial);
    if (w)
        retry_raw(w, st->queue, st->raw, st->len,
                  "answer not confirmed: connection to the producer lost");
    settle_free(st);
}

static void on_peer_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    settle *st = privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (rep == NULL) {
        if (st)
            settle_retry(st); /* the disconnect path settles the counts */
        return;
    }
    if (p == NULL) {
        settle_free(st);
        return;
    }
    p->inflight--;
    p->w->answers_inflight--;
    if (rep->type == REDIS_REPLY_ERROR)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "%s refused an answer: %s", p->addr, rep->str);
    if (st) {
        settle_unlink(st);
        ack_raw(p->w, st->queue, st->raw, st->len); /* refused or not, the job was handled */
        st->raw = NULL;
        settle_free(st);
    }
    check_finished(p->w);
}

/* The listener's reply to our AUTH: only a refusal matters (it is logged). */
static void on_peer_auth(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL || rep->type != REDIS_REPLY_ERROR)
        return;
    tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "%s refused AUTH: %s", p->addr, rep->str);
}

/* Queues `AUTH <secret>` first on a new peer connection when the node has a
 * secret; hiredis keeps the order, so it precedes every answer. */
static void peer_auth(peer *p) {
    const char *secret = p->w->node->secret;
    if (secret == NULL)
        return;
    const char *argv[] = {"AUTH", secret};
    size_t lens[] = {4, strlen(secret)};
    if (redisAsyncCommandArgv(p->ac, on_peer_auth, NULL, 2, argv, lens) != REDIS_OK)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "cannot send AUTH to %s", p->addr);
}

/* The listener's reply to TEMPEST PEER: an older listener refuses it and
 * then treats us as any Redis client (compatible replies). */
static void on_peer_hello(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL || rep->type != REDIS_REPLY_ERROR)
        return;
    tp_log(&p->w->node->log, TEMPEST_LOG_DEBUG, "%s is an older listener: %s", p->addr, rep->str);
}

/* Says who we are, pipelined after AUTH and before any answer (no round
 * trip is waited for): the listener then gives this connection its precise
 * replies (-CANCELED, -ERR unknown job, held +OK) instead of the +OK every
 * foreign worker gets (docs/protocol.md, "Who is answering"). */
static void peer_hello(peer *p) {
    if (redisAsyncCommand(p->ac, on_peer_hello, NULL, "TEMPEST PEER %d", TP_PEER_PROTOCOL) !=
        REDIS_OK)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "cannot send TEMPEST PEER to %s", p->addr);
}

static void on_peer_caps(redisAsyncContext *ac, void *reply, void *privdata);

static peer *peer_open(tempest_worker *w, const char *addr, bool stream) {
    char *host = NULL, err[200] = "out of memory";
    int port;
    peer *p = tp_calloc(1, sizeof *p);
    if (p == NULL || tp_addr_parse(addr, &host, &port, err, sizeof err) != 0)
        goto fail;
    p->ac = tp_redis_connect_raw(tempest_node_base(w->node), host, port, err, sizeof err);
    if (p->ac == NULL || (p->addr = tp_strdup(addr)) == NULL)
        goto fail;
    p->w = w;
    p->ac->data = p;
    redisAsyncSetConnectCallback(p->ac, on_peer_connect);
    redisAsyncSetDisconnectCallback(p->ac, on_peer_disconnect);
    p->stream = stream;
    p->next = w->peers;
    w->peers = p;
    peer_auth(p);
    peer_hello(p);
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
        if (!p->stream && strcmp(p->addr, addr) == 0)
            return p;
    return peer_open(w, addr, false);
}

/* The job's answers go on its stream connection once it has one. */
static peer *job_peer(tempest_job *job) {
    return job->own ? job->own : peer_get(job->w, job->parts.respond_to);
}

/* A streamed job gets a connection of its own, so that a producer that
 * holds back its replies (backpressure) stalls this job only. */
static peer *stream_peer(tempest_job *job) {
    if (job->own == NULL && (job->own = peer_open(job->w, job->parts.respond_to, true)) != NULL)
        job->own->job = job;
    return job->own;
}

/* Sends `<action> <id> <payload> [flag]` on `p`; `fn` gets `privdata`. */
static int send_to(peer *p, tempest_job *job, const char *payload, size_t len, const char *flag,
                   redisCallbackFn *fn, void *privdata) {
    char id[24];
    int idlen = snprintf(id, sizeof id, "%lld", job->parts.id);
    const char *argv[] = {job->parts.action, id, payload, flag};
    size_t lens[] = {strlen(job->parts.action), (size_t)idlen, len, flag ? strlen(flag) : 0};
    if (redisAsyncCommandArgv(p->ac, fn, privdata, flag ? 4 : 3, argv, lens) != REDIS_OK)
        return TEMPEST_EDOWN;
    p->inflight++;
    job->w->answers_inflight++;
    return 0;
}

/* Sends `<action> <id> <payload> [flag]` to the job's producer. `st` (a
 * final answer's settlement, or NULL) is taken over when this returns 0. */
static int send_answer(tempest_job *job, const char *payload, size_t len, const char *flag,
                       settle *st) {
    peer *p = job_peer(job);
    return p ? send_to(p, job, payload, len, flag, on_peer_reply, st) : TEMPEST_EDOWN;
}

/* Sends a job's final answer; its acknowledgement follows the producer's
 * reply. When it cannot be sent, the job is retried. */
static int send_final(tempest_job *job, const char *payload, size_t len) {
    tempest_worker *w = job->w;
    settle *st = tp_malloc(sizeof *st);
    if (st == NULL)
        return TEMPEST_ENOMEM;
    *st = (settle){.node = w->node,
                   .serial = w->serial,
                   .queue = job->queue,
                   .raw = job->raw,
                   .len = job->raw_len};
    int rc = send_answer(job, payload, len, NULL, st);
    if (rc == 0) {
        job->raw = NULL; /* the settlement owns it now */
        st->next = w->settles;
        if (w->settles)
            w->settles->prev = st;
        w->settles = st;
        st->linked = true;
    } else {
        free(st);
        retry_raw(w, job->queue, job->raw, job->raw_len, "cannot reach the producer");
    }
    return rc;
}

static void job_free(tempest_job *job) {
    tempest_worker *w = job->w;
    tp_session_job_gone(&w->session_ops, job);
    if (job->prev)
        job->prev->next = job->next;
    else
        w->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    if (job->own) { /* closed once its last reply is in */
        job->own->job = NULL;
        redisAsyncDisconnect(job->own->ac);
    }
    tp_job_parts_clear(&job->parts);
    free(job->raw);
    free(job);
}

/* The job leaves the worker's hands; `settle` sent its fate to Redis. */
static void job_release(tempest_job *job) {
    tempest_worker *w = job->w;
    w->in_hand--;
    w->released++;
    job_free(job);
    check_finished(w);
    maybe_take(w);
}

/* ---- streams, cancellation and progress ------------------------------ */

/* Runs a user callback of a job; the worker may be freed by it. */
static void job_callback(tempest_job *job, tempest_job_fn *fn, void *arg) {
    tempest_worker *w = job->w;
    w->depth++;
    fn(job, arg);
    leave(w);
}

/* The producer no longer wants the job; the callback runs once. */
static void job_cancel(tempest_job *job, const char *why) {
    if (job->canceled || job->abandoned)
        return;
    job->canceled = true;
    tp_log(&job->w->node->log, TEMPEST_LOG_DEBUG, "job %lld cancelled: %s", job->parts.id, why);
    if (job->on_cancel)
        job_callback(job, job->on_cancel, job->cancel_arg);
}

static bool job_writable(const tempest_job *job) {
    if (job->canceled || job->abandoned || job->parts.respond_to == NULL)
        return false;
    return (job->own == NULL || job->own->caps_known) && job->unacked < STREAM_WINDOW;
}

/* A write was refused and there is room again: the drain callback runs. */
static void maybe_drain(tempest_job *job) {
    if (!job->want_drain || !job_writable(job) || job->unacked > STREAM_WINDOW / 2)
        return;
    job->want_drain = false;
    if (job->on_drain)
        job_callback(job, job->on_drain, job->drain_arg);
}

static bool is_cancel_error(const redisReply *rep) {
    return rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "CANCELED", 8) == 0;
}

/* The producer's reply to a partial answer of `len` bytes (privdata). */
static void on_stream_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL)
        return; /* the disconnect path settles the counts */
    size_t len = (size_t)(uintptr_t)privdata;
    tempest_job *job = p->job;
    p->inflight--;
    p->w->answers_inflight--;
    if (job)
        job->unacked -= len < job->unacked ? len : job->unacked;
    if (rep->type == REDIS_REPLY_ERROR && !is_cancel_error(rep))
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "%s refused an answer: %s", p->addr, rep->str);
    check_finished(p->w);
    if (job && is_cancel_error(rep))
        job_cancel(job, rep->str);
    else if (job)
        maybe_drain(job);
}

static tempest_job *job_by_serial(tempest_worker *w, long long serial) {
    for (tempest_job *j = w->jobs; j; j = j->next)
        if (j->serial == serial)
            return j;
    return NULL;
}

/* The producer's reply to PROGRESS or CHECK: -CANCELED, or -ERR unknown
 * job (it timed out, or the producer restarted), means nobody waits for
 * the answer any more. */
static void on_question_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL)
        return;
    tempest_worker *w = p->w;
    p->inflight--;
    w->answers_inflight--;
    check_finished(w);
    tempest_job *job = job_by_serial(w, (long long)(intptr_t)privdata);
    if (job && rep->type == REDIS_REPLY_ERROR &&
        (is_cancel_error(rep) || strncmp(rep->str, "ERR unknown job", 15) == 0))
        job_cancel(job, rep->str);
}

static void send_check(tempest_job *job, peer *p) {
    if (p->check) /* an older producer cannot be asked: its answer reply tells */
        send_to(p, job, "null", 4, "CHECK", on_question_reply, (void *)(intptr_t)job->serial);
}

static void peer_probe(peer *p);

/* Asks the job's producer whether the job is still wanted, once the
 * producer has told its features; a failure is the connection's (logged). */
static void start_check(tempest_job *job) {
    job->check = CHECK_NONE;
    peer *p = job->parts.respond_to ? job_peer(job) : NULL;
    if (p == NULL || job->canceled || job->abandoned)
        return;
    peer_probe(p);
    if (p->caps_known)
        send_check(job, p);
    else
        job->check = CHECK_ON_CAPS;
}

static int send_progress(tempest_job *job, peer *p) {
    if (!p->progress)
        return 0; /* an older producer: it would take the report for the answer */
    return send_to(p, job, "null", 4, "PROGRESS", on_question_reply, (void *)(intptr_t)job->serial);
}

/* True when `list` (a comma-separated line of `n` bytes) holds `word`. */
static bool has_feature(const char *list, size_t n, const char *word) {
    size_t wl = strlen(word);
    for (size_t i = 0; i < n;) {
        size_t e = i;
        while (e < n && list[e] != ',')
            e++;
        if (e - i == wl && memcmp(list + i, word, wl) == 0)
            return true;
        i = e + 1;
    }
    return false;
}

/* The listener's INFO: `tempest_features:` says what it takes beyond the
 * compatible answers. Progress reports that waited for it go now. */
static void on_peer_caps(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL)
        return;
    static const char key[] = "tempest_features:";
    const char *f = rep->type == REDIS_REPLY_STRING ? strstr(rep->str, key) : NULL;
    if (f) {
        f += sizeof key - 1;
        size_t n = strcspn(f, "\r\n");
        p->raw = has_feature(f, n, "raw");
        p->progress = has_feature(f, n, "progress");
        p->check = has_feature(f, n, "check");
    }
    p->caps_known = true;
    for (tempest_job *j = p->w->jobs; j; j = j->next) {
        bool mine = j->own == p || (!p->stream && j->own == NULL && j->parts.respond_to &&
                                    strcmp(j->parts.respond_to, p->addr) == 0);
        if (mine && j->progress_wanted) {
            j->progress_wanted = false;
            send_progress(j, p);
        }
        if (mine && j->check == CHECK_ON_CAPS) {
            j->check = CHECK_NONE;
            send_check(j, p);
        }
    }
    if (p->job)
        maybe_drain(p->job);
}

/* Asks the listener what it takes, once, when a feature is first needed:
 * compatible answers never wait for it, so an older listener sees exactly
 * the commands it always saw. */
static void peer_probe(peer *p) {
    if (p->probed)
        return;
    p->probed = true;
    if (redisAsyncCommand(p->ac, on_peer_caps, NULL, "INFO server") != REDIS_OK)
        p->caps_known = true; /* cannot ask: an older listener, as far as we know */
}

static const char cancel_prefix[] = "tempest:cancel:";

static uint32_t addr_hash(const char *addr) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *addr; addr++)
        h = (h ^ (unsigned char)*addr) * 16777619u;
    return h;
}

static recent_cancel *recent_slot(tempest_worker *w, long long id) {
    return &w->recent[(unsigned long long)id % RECENT_CANCELS];
}

static bool recently_cancelled(tempest_worker *w, const char *addr, long long id) {
    if (w->recent == NULL)
        return false;
    const recent_cancel *rc = recent_slot(w, id);
    return rc->id == id && rc->addr == addr_hash(addr);
}

static watch *find_watch(tempest_worker *w, const char *addr) {
    for (watch *wt = w->watches; wt; wt = wt->next)
        if (strcmp(wt->addr, addr) == 0)
            return wt;
    return NULL;
}

/* Jobs of `addr` (every producer's when NULL) that wait for the cancel
 * subscription ask their producer now; no cancel can be missed from here. */
static void checks_after_sub(tempest_worker *w, const char *addr) {
    for (tempest_job *j = w->jobs; j; j = j->next)
        if (j->check == CHECK_ON_SUB && j->parts.respond_to &&
            (addr == NULL || strcmp(j->parts.respond_to, addr) == 0))
            start_check(j);
}

/* `PUBLISH tempest:cancel:<producer> ["<id>"]`: that producer gave up job id.
 * A cancel can be missed before Redis confirms the subscription, and while
 * the subscribe connection is down: the jobs taken meanwhile ask (CHECK). */
static void on_cancel_message(tempest_subscriber *sub, int what, const char *channel,
                              const char *event, const char *data, size_t len, void *arg) {
    (void)sub, (void)event, (void)len;
    tempest_worker *w = arg;
    size_t plen = sizeof cancel_prefix - 1;
    if (what == TEMPEST_SUB_INTERRUPTED) {
        for (watch *wt = w->watches; wt; wt = wt->next)
            wt->active = false;
        for (tempest_job *j = w->jobs; j; j = j->next)
            if (j->parts.respond_to && j->check == CHECK_NONE && !j->canceled)
                j->check = CHECK_ON_SUB;
        return;
    }
    if (channel == NULL || strncmp(channel, cancel_prefix, plen) != 0)
        return;
    const char *addr = channel + plen;
    if (what == TP_SUB_ACTIVE) {
        watch *wt = find_watch(w, addr);
        if (wt)
            wt->active = true;
        checks_after_sub(w, addr);
        return;
    }
    if (what != TEMPEST_SUB_MESSAGE || data == NULL)
        return;
    long long id = strtoll(data, NULL, 10);
    for (tempest_job *j = w->jobs; j; j = j->next) {
        if (j->parts.id == id && j->parts.respond_to && strcmp(j->parts.respond_to, addr) == 0) {
            job_cancel(j, "cancelled by its producer");
            return;
        }
    }
    /* Not held here: it may still be queued, for this worker to take. */
    if (w->recent == NULL && (w->recent = tp_calloc(RECENT_CANCELS, sizeof *w->recent)) == NULL)
        return;
    *recent_slot(w, id) = (recent_cancel){.id = id, .addr = addr_hash(addr)};
}

/* Subscribes to the cancel channel of a producer (at most MAX_WATCHES);
 * returns its watch, or NULL. */
static watch *watch_producer(tempest_worker *w, const char *addr) {
    watch *found = find_watch(w, addr);
    if (found)
        return found;
    if (w->nwatches >= MAX_WATCHES)
        return NULL; /* such jobs ask once, then learn from their answer's reply */
    if (w->cancel_sub == NULL) {
        if ((w->cancel_sub = tempest_subscriber_new(w->node, on_cancel_message, w, NULL)) == NULL)
            return NULL;
        tp_subscriber_want_active(w->cancel_sub);
    }
    char *channel = tp_malloc(sizeof cancel_prefix + strlen(addr));
    watch *wt = tp_calloc(1, sizeof *wt);
    if (channel)
        sprintf(channel, "%s%s", cancel_prefix, addr);
    if (channel == NULL || wt == NULL || (wt->addr = tp_strdup(addr)) == NULL ||
        tempest_subscribe(w->cancel_sub, channel, false) != 0) {
        free(channel);
        if (wt)
            free(wt->addr);
        free(wt);
        return NULL;
    }
    /* Another worker of this node may have subscribed to it already. */
    wt->active = tp_subscription_active(w->node, channel, false);
    free(channel);
    wt->next = w->watches;
    w->watches = wt;
    w->nwatches++;
    return wt;
}

static void free_watches(tempest_worker *w) {
    tempest_subscriber_free(w->cancel_sub);
    w->cancel_sub = NULL;
    while (w->watches) {
        watch *wt = w->watches;
        w->watches = wt->next;
        free(wt->addr);
        free(wt);
    }
    w->nwatches = 0;
    free(w->recent);
    w->recent = NULL;
}

/* Sends one partial answer on the job's stream connection. */
static int send_partial(tempest_job *job, const char *payload, size_t len, const char *flag) {
    peer *p = stream_peer(job);
    if (p == NULL)
        return TEMPEST_EDOWN;
    int rc = send_to(p, job, payload, len, flag, on_stream_reply, (void *)(uintptr_t)len);
    if (rc == 0)
        job->unacked += len;
    return rc;
}

static bool is_url(const tempest_job *job) {
    return strcmp(job->parts.action, "url") == 0;
}

/* A producer that takes JSON answers only: text goes as a JSON chunk (the
 * body element of a `url` answer); other bytes cannot go at all. */
static int send_text_chunk(tempest_job *job, const char *bytes, size_t len) {
    json_t *text = json_stringn(bytes, len);
    if (text == NULL)
        return TEMPEST_EPROTO;
    json_t *a = is_url(job) ? json_pack("[nno]", text) : text;
    size_t n;
    char *payload = a ? tp_answer_encode(a, &n) : NULL;
    json_decref(a);
    int rc = payload ? send_partial(job, payload, n, "MORE") : TEMPEST_ENOMEM;
    free(payload);
    return rc;
}

static int write_chunk(tempest_job *job, const char *bytes, size_t len) {
    peer *p = stream_peer(job);
    if (p == NULL)
        return TEMPEST_EDOWN;
    peer_probe(p);
    if (!p->caps_known || job->unacked >= STREAM_WINDOW) {
        job->want_drain = true;
        return TEMPEST_EAGAIN;
    }
    return p->raw ? send_partial(job, bytes, len, "RAW") : send_text_chunk(job, bytes, len);
}

/* A call on a job requeued at stop: refused, and the job is freed. */
static int job_abandoned(tempest_job *job) {
    job_free(job);
    return TEMPEST_ECANCELED;
}

/* An answer to a cancelled job: nothing is sent; a final one finishes it. */
static int job_refused(tempest_job *job, bool more) {
    if (!more) {
        ack(job);
        job_release(job);
    }
    return TEMPEST_ECANCELED;
}

TEMPEST_API int tempest_job_answer(tempest_job *job, json_t *answer, bool more) {
    if (job == NULL || answer == NULL)
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return job_abandoned(job);
    if (job->canceled)
        return job_refused(job, more);
    if (job->parts.respond_to == NULL) {
        if (!more) {
            ack(job);
            job_release(job);
        }
        return 0;
    }
    size_t len;
    char *payload = tp_answer_encode(answer, &len);
    int rc;
    if (more)
        rc = payload ? send_partial(job, payload, len, "MORE") : TEMPEST_ENOMEM;
    else if (payload)
        rc = send_final(job, payload, len);
    else {
        rc = TEMPEST_ENOMEM; /* nothing can be sent: the job ends here */
        ack(job);
    }
    free(payload);
    if (!more)
        job_release(job);
    return rc == TEMPEST_EDOWN ? 0 : rc; /* logged; the job is retried */
}

TEMPEST_API int tempest_job_write(tempest_job *job, const void *bytes, size_t len, bool more) {
    if (job == NULL || (bytes == NULL && len > 0))
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return job_abandoned(job);
    if (job->canceled)
        return job_refused(job, more);
    if (job->parts.respond_to == NULL) {
        if (!more) {
            ack(job);
            job_release(job);
        }
        return 0;
    }
    int rc = len > 0 ? write_chunk(job, bytes, len) : 0;
    if (rc != 0 || more)
        return rc == TEMPEST_EDOWN ? 0 : rc; /* logged; the final answer is retried */
    json_t *end = is_url(job) ? json_pack("[nnn]") : json_null();
    if (end == NULL)
        return TEMPEST_ENOMEM;
    rc = tempest_job_answer(job, end, false);
    json_decref(end);
    return rc;
}

TEMPEST_API bool tempest_job_writable(const tempest_job *job) {
    return job && job_writable(job);
}

TEMPEST_API int tempest_job_on_drain(tempest_job *job, tempest_job_fn *fn, void *arg) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    job->on_drain = fn;
    job->drain_arg = arg;
    return 0;
}

TEMPEST_API bool tempest_job_active(const tempest_job *job) {
    return job && !job->canceled && !job->abandoned;
}

TEMPEST_API int tempest_job_on_cancel(tempest_job *job, tempest_job_fn *fn, void *arg) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    job->on_cancel = fn;
    job->cancel_arg = arg;
    return 0;
}

TEMPEST_API int tempest_job_progress(tempest_job *job) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    if (job->canceled || job->abandoned)
        return TEMPEST_ECANCELED;
    if (job->parts.respond_to == NULL)
        return 0;
    peer *p = job_peer(job);
    if (p == NULL)
        return 0; /* logged: the producer cannot be reached */
    peer_probe(p);
    if (!p->caps_known) {
        job->progress_wanted = true; /* sent when the listener has told its features */
        return 0;
    }
    (void)send_progress(job, p); /* a failure is the connection's: logged there */
    return 0;
}

TEMPEST_API int tempest_job_done(tempest_job *job) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return job_abandoned(job);
    ack(job);
    job_release(job);
    return 0;
}

static void answer_error(tempest_job *job, const char *message) {
    if (job->parts.respond_to == NULL)
        return;
    json_t *s = json_string(message);
    size_t len;
    char *payload = s ? tp_answer_encode(s, &len) : NULL;
    if (payload)
        send_answer(job, payload, len, "ERROR", NULL);
    free(payload);
    json_decref(s);
}

TEMPEST_API int tempest_job_fail(tempest_job *job, const char *reason, bool retry) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return job_abandoned(job);
    tempest_worker *w = job->w;
    wqueue *q = &w->queues[job->queue];
    char max[16];
    snprintf(max, sizeof max, "%d", w->max_attempts);
    const char *why = reason && *reason ? reason : "failed by its handler";
    int rc;
    w->failed++;
    if (retry) {
        const char *argv[] = {q->processing, q->attempts, q->name, q->dead,
                              job->raw,      max,         why,     q->name};
        rc = job_script(job, TP_SCRIPT_RETRY, "retry", 4, 8, argv);
    } else {
        const char *argv[] = {q->processing, q->attempts, q->dead, job->raw, why, q->name};
        rc = job_script(job, TP_SCRIPT_BURY, "bury", 3, 6, argv);
        answer_error(job, why);
    }
    job_release(job);
    return rc;
}

/* ---- taking and dispatching ------------------------------------------ */

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

static tempest_job *job_new(tempest_worker *w, int qi, tp_job_parts *parts, const char *raw,
                            size_t len) {
    tempest_job *job = tp_calloc(1, sizeof *job);
    if (job == NULL || (job->raw = tp_malloc(len + 1)) == NULL) {
        free(job);
        return NULL;
    }
    memcpy(job->raw, raw, len);
    job->raw[len] = '\0';
    job->raw_len = len;
    job->w = w;
    job->queue = qi;
    job->parts = *parts;
    job->serial = ++w->next_job_serial;
    job->next = w->jobs;
    if (w->jobs)
        w->jobs->prev = job;
    w->jobs = job;
    w->in_hand++;
    if (parts->respond_to) {
        /* A cancel published before the subscription was active is missed:
         * such a job asks its producer once it is; so does one whose cancel
         * was heard before it was taken. */
        watch *wt = watch_producer(w, parts->respond_to);
        if (wt == NULL)
            start_check(job);
        else if (!wt->active)
            job->check = CHECK_ON_SUB;
        else if ((job->heard = recently_cancelled(w, parts->respond_to, parts->id)))
            start_check(job);
    }
    return job;
}

/* Runs the handler of one decoded job; returns true when `w` was freed. */
static bool dispatch(tempest_worker *w, int qi, tp_job_parts *parts, const char *raw, size_t len) {
    tempest_job *job = job_new(w, qi, parts, raw, len);
    if (job == NULL) {
        /* Still in the processing list: the reaper requeues it later. */
        tp_log(&w->node->log, TEMPEST_LOG_ERROR, "out of memory: job %lld left in processing",
               parts->id);
        tp_job_parts_clear(parts);
        return false;
    }
    handler *h = find_handler(w, job->parts.action);
    if (h == NULL) {
        char msg[200];
        snprintf(msg, sizeof msg, "no handler for action '%.100s'", job->parts.action);
        tp_log(&w->node->log, TEMPEST_LOG_WARN, "job %lld: %s", job->parts.id, msg);
        answer_error(job, msg);
        ack(job);
        job_release(job);
        return false;
    }
    w->depth++;
    h->fn(w, job, h->arg);
    return leave(w);
}

static bool handle_raw(tempest_worker *w, int qi, const char *raw, size_t len) {
    char err[200];
    tp_job_parts parts;
    w->taken++;
    if (tp_job_decode(raw, len, &parts, err, sizeof err) != 0) {
        bury_raw(w, qi, raw, len, err);
        return false;
    }
    return dispatch(w, qi, &parts, raw, len);
}

/* The take in flight is answered, or never will be: the acks it carried
 * are freed (confirmed), or queued to be sent again with `failed` logged. */
static void take_settle(tempest_worker *w, const char *failed) {
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
            batch_free(b);
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
    take_settle(w, rep == NULL                      ? "connection lost"
                   : rep->type == REDIS_REPLY_ERROR ? rep->str
                                                    : NULL);
    if (rep == NULL) {
        w->taking = false;
        check_finished(w);
        return NULL; /* taking resumes when the connection is back up */
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        w->taking = false;
        tp_log(&w->node->log, TEMPEST_LOG_ERROR, "%s on %s: %s", what, w->queues[0].name, rep->str);
        struct timeval tv = {1, 0};
        evtimer_add(w->retry, &tv);
        check_finished(w);
        return NULL;
    }
    return w;
}

/* After a take's jobs were dispatched: take again if there is room. */
static void take_done(tempest_worker *w) {
    w->taking = false;
    check_finished(w);
    maybe_take(w);
}

/* Once the queues run dry, blocking takes wait BLOCK_MIN_MS at first and
 * twice as long each time they come back empty, up to block_ms: a stop
 * soon after a burst of jobs is not kept waiting for a long take, and an
 * idle worker soon sends one command per block_ms. */
enum { BLOCK_MIN_MS = 10 };

static int block_min(const tempest_worker *w) {
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
        w->block_now_ms = block_min(w);
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
    if (per_queue(w)) { /* a short take moves on to the next queue; a full one starts over */
        w->next_queue = w->last_empty ? (first + 1) % w->nqueues : 0;
        w->last_empty = w->last_empty && w->next_queue == 0;
    }
    if (n > 0)
        w->block_now_ms = block_min(w);
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
    for (int i = 0; per_queue(w) && i < w->nqueues; i++)
        send_heartbeat_of(w, i, 1);
    if (!per_queue(w))
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
    int first = per_queue(w) ? w->next_queue : 0, count = per_queue(w) ? 1 : w->nqueues;
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

static void maybe_take(tempest_worker *w) {
    int room = w->concurrency - w->in_hand;
    if (!w->started || w->stopping || w->taking || w->freeing || room <= 0 || w->recovering > 0 ||
        evtimer_pending(w->retry, NULL) || tp_redis_state(w->redis) != TEMPEST_NODE_UP)
        return;
    if ((w->last_empty ? take_blocking(w) : take_batch(w, room)) == 0)
        w->taking = true;
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    maybe_take(arg);
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tempest_worker *w = arg;
    /* A take in flight was preceded by a heartbeat, and the next one will be. */
    if (!w->taking && !w->leaving && !w->finished && tp_redis_state(w->redis) == TEMPEST_NODE_UP)
        send_heartbeat(w);
    flush_acks(w); /* batches that failed earlier */
}

static void on_reaped(redisAsyncContext *ac, void *reply, void *privdata) {
    redisReply *rep = reply;
    tempest_worker *w = worker_of(ac, privdata);
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

static void on_reap(evutil_socket_t fd, short what, void *arg) {
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
        maybe_take(w);
}

static void recover(tempest_worker *w) {
    for (int i = 0; i < w->nqueues; i++)
        if (tp_redis_cmd(w->redis, on_recover, (void *)(intptr_t)i, "LRANGE %s 0 -1",
                         w->queues[i].processing) == 0)
            w->recovering++;
}

static void on_redis_state(tp_redis *r, int state, const char *reason, void *arg) {
    (void)r;
    (void)reason;
    tempest_worker *w = arg;
    take_settle(w, "connection lost"); /* if the old connection never answered */
    w->taking = false;
    w->last_empty = false; /* the first take after a reconnect is a batch */
    if (state != TEMPEST_NODE_UP) {
        w->recovering = 0;
        check_finished(w);
        return;
    }
    if (w->was_up)
        recover(w);
    w->was_up = true;
    maybe_take(w);
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
    w->block_now_ms = block_min(w);
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
    w->retry = evtimer_new(base, on_retry, w);
    w->flush = evtimer_new(base, on_flush_timeout, w);
    w->grace = evtimer_new(base, on_grace, w);
    w->heartbeat = event_new(base, -1, EV_PERSIST, on_heartbeat, w);
    w->reap = event_new(base, -1, EV_PERSIST, on_reap, w);
    w->ack_ev = event_new(base, -1, 0, on_flush_acks, w);
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

TEMPEST_API int tempest_worker_on(tempest_worker *w, const char *action, tempest_handler_fn *fn,
                                  void *arg) {
    if (w == NULL || action == NULL || *action == '\0' || fn == NULL ||
        strcasecmp(action, "auth") == 0) /* reserved: the listener's AUTH */
        return TEMPEST_EINVAL;
    for (size_t i = 0; i < w->nhandlers; i++) {
        if (strcmp(w->handlers[i].action, action) == 0) {
            w->handlers[i].fn = fn;
            w->handlers[i].arg = arg;
            return 0;
        }
    }
    handler *hs = tp_realloc(w->handlers, (w->nhandlers + 1) * sizeof *hs);
    if (hs == NULL)
        return TEMPEST_ENOMEM;
    w->handlers = hs;
    char *copy = tp_strdup(action);
    if (copy == NULL)
        return TEMPEST_ENOMEM;
    hs[w->nhandlers++] = (handler){.action = copy, .fn = fn, .arg = arg};
    return 0;
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
        w->redis = tp_redis_new(n->base, &n->url, &n->timing, &n->log, on_redis_state, w);
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
    leave(w);
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

/* Freed while running: jobs in hand go back to their queue and the
 * presence goes, best effort (the reaper covers what this misses). */
static void abandon_all(tempest_worker *w) {
    if (!w->started || w->finished || tp_redis_state(w->node->redis) != TEMPEST_NODE_UP)
        return;
    take_settle(w, "worker freed"); /* a take in flight may not run: ack again */
    flush_acks(w);
    flush_acks(w);
    for (tempest_job *job = w->jobs; job; job = job->next)
        if (!job->abandoned)
            requeue(job);
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
    tp_session_cancel_all(&w->session_ops);
    if (w->joined)
        tp_presence_leave(w->node, w);
    if (w->queues)
        abandon_all(w);
    while (w->jobs)
        job_free(w->jobs);
    for (settle *st = w->settles; st; st = st->next)
        st->linked = false; /* freed by their reply callbacks, below or later */
    w->settles = NULL;
    free_watches(w);
    free_peers(w);
    take_settle(w, NULL); /* freed: what it carried unconfirmed is left for the reaper */
    while (w->acks_sent) {
        ack_batch *b = w->acks_sent;
        w->acks_sent = b->next;
        batch_free(b);
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

TEMPEST_API int tempest_job_queue_index(const tempest_job *job) {
    return job ? job->queue : -1;
}

tempest_node *tp_job_node(const tempest_job *job) {
    return job->w->node;
}

struct tp_session_op **tp_job_session_ops(tempest_job *job) {
    return &job->w->session_ops;
}
