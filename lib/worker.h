/* SPDX-License-Identifier: MIT */
/*
 * The worker's private state, shared by its files: lib/worker.c (life
 * cycle, options, the loop, signals, stop), lib/worker_take.c (taking and
 * acknowledging), lib/worker_job.c (dispatch and the job object),
 * lib/worker_answer.c (answers to producers) and lib/worker_cancel.c
 * (cancellation and CHECK). Handlers and job callbacks run inside reply
 * callbacks: `depth` and `freeing` let them free the worker, which is then
 * destroyed when the outermost callback returns (tp_worker_leave).
 */
#ifndef TEMPEST_WORKER_PRIV_H
#define TEMPEST_WORKER_PRIV_H

#include <stdbool.h>
#include <stdint.h>
#include <event2/util.h>

#include "node.h"
#include "scripts.h"
#include "worker_job.h"

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
    struct take *take;  /* the acks the take in flight carries, or NULL */
    tp_job_call *calls; /* calls in flight for its jobs (lib/worker_job.h) */
    int next_queue;     /* Redis Cluster, several queues: the queue of the next take */
    bool started, stopping, taking, last_empty, leaving, finished, flush_expired;
    int depth;
    bool freeing;
};

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

/* ---- lib/worker.c: life cycle ----------------------------------------- */

/** Ends a callback that raised `w->depth`; returns true when `w` was freed
 *  inside it (it is destroyed now, and must not be touched). */
bool tp_worker_leave(tempest_worker *w);

/** A stopping worker with nothing left in hand leaves the registry once its
 *  answers and acks are confirmed (or their wait timed out). */
void tp_worker_check_finished(tempest_worker *w);

/* ---- lib/worker_take.c: taking and acknowledging ---------------------- */

/** Redis Cluster with several queues: scripts go queue by queue. */
bool tp_worker_per_queue(const tempest_worker *w);
/** The worker a reply on the node's connection is for (privdata: its
 *  serial), or NULL when it was freed. */
tempest_worker *tp_worker_of(redisAsyncContext *ac, void *privdata);
/** Runs `script` on the node's connection for `job` (argv[i] == job->raw
 *  is sent with its length); a failure is logged. */
int tp_job_script(tempest_job *job, int script, const char *name, int nkeys, int argc,
                  const char **argv);
void tp_ack_batch_free(ack_batch *b);
/** Sends the queued acks now (one script call per batch). */
void tp_worker_flush_acks(tempest_worker *w);
/** True while acks wait to be sent or confirmed. */
bool tp_worker_acks_pending(const tempest_worker *w);
/** Queues the ack of a finished job's raw text (taken over). */
void tp_worker_ack_raw(tempest_worker *w, int qi, char *raw, size_t len);
/** Queues the ack of a finished job (its raw text passes to the batch). */
void tp_job_ack(tempest_job *job);
/** Runs the job `raw` of queue `qi` again (one attempt more). */
void tp_worker_retry_raw(tempest_worker *w, int qi, const char *raw, size_t len, const char *why);
/** Puts a job in hand back at the head of its queue. */
void tp_job_requeue(tempest_job *job);
/** The take in flight is answered (failed NULL) or never will be. */
void tp_worker_take_settle(tempest_worker *w, const char *failed);
/** The first timeout of a blocking take once the queues run dry. */
int tp_worker_block_min(const tempest_worker *w);
/** Takes jobs when there is room and nothing prevents it. */
void tp_worker_maybe_take(tempest_worker *w);
/** Timer and connection callbacks (arg: the worker). */
void tp_worker_on_flush_acks(evutil_socket_t fd, short what, void *arg);
void tp_worker_on_retry(evutil_socket_t fd, short what, void *arg);
void tp_worker_on_heartbeat(evutil_socket_t fd, short what, void *arg);
void tp_worker_on_reap(evutil_socket_t fd, short what, void *arg);
void tp_worker_on_redis_state(tp_redis *r, int state, const char *reason, void *arg);

/* ---- lib/worker_job.c: dispatch and the job object -------------------- */

/** Makes the job of one decoded take (`parts` taken over) and runs its
 *  handler; returns true when `w` was freed by it. */
bool tp_job_dispatch(tempest_worker *w, int qi, tp_job_parts *parts, const char *raw, size_t len);
/** Unlinks and frees a job (its stream connection closes after its last
 *  reply; its calls in flight are detached). */
void tp_job_free(tempest_job *job);
/** The job leaves the worker's hands: freed, and the worker may take. */
void tp_job_release(tempest_job *job);
/** Runs a user callback of a job; the worker may be freed by it. */
void tp_job_callback(tempest_job *job, tempest_job_fn *fn, void *arg);
/** A call on a job requeued at stop: frees it, returns TEMPEST_ECANCELED. */
int tp_job_abandoned(tempest_job *job);
/** An answer to a cancelled job: a final one finishes it; returns
 *  TEMPEST_ECANCELED. */
int tp_job_refused(tempest_job *job, bool more);
/** The worker is being freed: every call in flight is cancelled. */
void tp_worker_cancel_calls(tempest_worker *w);

/* ---- lib/worker_answer.c: answers to producers ------------------------ */

/** The connection the job's answers go on (its stream connection once it
 *  streams), opened when needed; NULL when the producer cannot be reached. */
peer *tp_job_peer(tempest_job *job);
/** Sends `<action> <id> <payload> [flag]` on `p`; `fn` gets `privdata`.
 *  Returns 0 or TEMPEST_EDOWN. */
int tp_peer_send(peer *p, tempest_job *job, const char *payload, size_t len, const char *flag,
                 redisCallbackFn *fn, void *privdata);
/** Asks the listener for its features, once. */
void tp_peer_probe(peer *p);
/** Sends `message` as the job's ERROR answer (nothing for a job without
 *  a producer). */
void tp_job_answer_error(tempest_job *job, const char *message);
void tp_worker_free_peers(tempest_worker *w);

/* ---- lib/worker_cancel.c: cancellation and CHECK ---------------------- */

/** The producer no longer wants the job: its cancel callback runs once. */
void tp_job_cancel(tempest_job *job, const char *why);
/** Cancels the jobs of `addr` whose cancel was heard before they were
 *  taken, now that their producer cannot be reached to confirm it. */
void tp_worker_cancel_heard(tempest_worker *w, const char *addr);
/** A `-CANCELED` reply. */
bool tp_is_cancel_error(const redisReply *rep);
/** The reply to a PROGRESS or CHECK question (privdata: the job's serial). */
void tp_job_on_question_reply(redisAsyncContext *ac, void *reply, void *privdata);
/** Asks `p` whether the job is still wanted, when its listener can tell. */
void tp_job_send_check(tempest_job *job, peer *p);
/** A new job with a producer: watches the producer's cancel channel, and
 *  asks (CHECK) when a cancel may have been missed. */
void tp_job_watch(tempest_job *job);
void tp_worker_free_watches(tempest_worker *w);

#endif
