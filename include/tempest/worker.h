/* SPDX-License-Identifier: MIT */
/**
 * @file
 * Workers: take jobs from a Redis list, dispatch them by action to
 * handlers, and send the answers straight to the producer's node listener.
 * tempest_worker_loop() is the single call a daemon needs. Same threading
 * rule as the node: one event_base, not thread-safe.
 */
#ifndef TEMPEST_WORKER_H
#define TEMPEST_WORKER_H

#include <jansson.h>
#include <tempest/tempest.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A worker (opaque): takes jobs from its queues and runs their handlers. */
typedef struct tempest_worker tempest_worker;
/** A job in hand (opaque), from its handler's call until it is finished. */
typedef struct tempest_job tempest_job;

/**
 * Handles one job. The job is "in hand" from this call until the handler
 * (now or later, from any callback on the same loop) finishes it with a
 * final tempest_job_answer() or tempest_job_done(); the job pointer is
 * invalid after that. At most `concurrency` jobs are in hand at once.
 */
typedef void tempest_handler_fn(tempest_worker *worker, tempest_job *job, void *arg);

/**
 * A callback about one job in hand (tempest_job_on_drain,
 * tempest_job_on_cancel). It runs on the node's loop, never from inside the
 * call that set it, and may answer, finish or fail the job, or free the
 * worker.
 */
typedef void tempest_job_fn(tempest_job *job, void *arg);

/**
 * Worker options. Zero (or NULL) means the default of each field.
 *
 * Reliability: a job is moved (BLMOVE, or LMOVE in a Lua script) from its
 * queue into a processing list of this worker, and removed from it only
 * when the job is finished (final answer, tempest_job_done, or
 * tempest_job_fail). The worker refreshes a presence key every
 * `heartbeat_ms` with a time-to-live of `ttl_ms`; any live worker of the
 * queue requeues (at the head) the jobs of a worker whose presence expired,
 * counting an attempt; past `max_attempts` a job goes to the dead letters.
 * Delivery is at least once: a job may run twice when a worker dies or
 * stalls longer than `ttl_ms` after taking it.
 */
typedef struct tempest_worker_options {
    const char *queue; /**< Redis list to take jobs from; NULL: "tempest" */
    int concurrency;   /**< most jobs in hand at once; 0: 1 */
    /** Redis-side block timeout of each take, which bounds how long a stop
     *  or a dead connection goes unnoticed; 0: 1000 ms (one command a
     *  second while idle). When the queues run dry, the timeout starts at
     *  10 ms and doubles with each take that comes back empty, up to this
     *  value, so that a stop soon after a burst of jobs is prompt. */
    int block_timeout_ms;
    /** List that receives dead letters (undecodable jobs, jobs failed
     *  without retry, jobs past max_attempts) as
     *  `{"job":..., "reason":..., "queue":..., "at": <ms>}`;
     *  NULL: "{<queue>}:dead". */
    const char *dead_letter;
    /** From tempest_worker_start() (or tempest_worker_loop()) until the
     *  worker has stopped, SIGINT and SIGTERM stop it gracefully; SIGPIPE is
     *  set to be ignored (process-wide: a peer that resets a connection
     *  would otherwise kill the process). Without this option, ignore
     *  SIGPIPE yourself, as every libevent server must. */
    bool handle_signals;
    /** Several queues in strict priority order, highest first, NULL-
     *  terminated (at most 15); overrides `queue`. When all are empty the
     *  worker blocks on the first one, so a job on a lower queue waits up to
     *  block_timeout_ms while the worker is idle. Borrowed during
     *  tempest_worker_new() only (names are copied). */
    const char *const *queues;
    int max_attempts; /**< deliveries before a job is dead-lettered; 0: 5 */
    int heartbeat_ms; /**< presence refresh period; 0: 1000 */
    /** presence time-to-live; at least twice block_timeout_ms and
     *  heartbeat_ms; 0: 5000 */
    int ttl_ms;
    /** At stop, how long jobs in hand may take to finish before they are
     *  requeued; 0: 10000 ms. */
    int stop_grace_ms;
} tempest_worker_options;

/**
 * Creates a worker on a node. The worker opens its own Redis connection for
 * the blocking take. It does not take jobs until tempest_worker_start() or
 * tempest_worker_loop().
 *
 * @param node the node (borrowed; it must outlive the worker)
 * @param options the options (borrowed during the call); NULL: defaults
 * @param err where to explain a failure (optional)
 * @return the worker, or NULL with `err` filled on a bad option or no
 *         memory.
 */
TEMPEST_API tempest_worker *
tempest_worker_new(tempest_node *node, const tempest_worker_options *options, tempest_error *err);

/**
 * Sets the handler of an action, replacing an earlier one. A job whose
 * action has no handler is logged and, if someone waits, answered with an
 * error.
 *
 * @param worker the worker
 * @param action the action (copied); "*" is the fallback for actions with
 *        no handler of their own; `auth` is reserved (TEMPEST_EINVAL)
 * @param handler runs for each job of that action
 * @param arg passed to `handler`
 * @return 0, TEMPEST_EINVAL or TEMPEST_ENOMEM.
 */
TEMPEST_API int tempest_worker_on(tempest_worker *worker, const char *action,
                                  tempest_handler_fn *handler, void *arg);

/**
 * Starts taking jobs on the node's loop (attach mode: the caller runs the
 * event_base).
 * @param worker the worker
 * @return 0, or TEMPEST_ESTATE when already started.
 */
TEMPEST_API int tempest_worker_start(tempest_worker *worker);

/**
 * Asks the worker to stop: it takes no new job (a take already waiting in
 * Redis returns within block_timeout_ms, and a job it brings is still
 * handled), lets the jobs in hand finish for up to stop_grace_ms, then
 * requeues (at the head of their queue) those still in hand, removes its
 * presence, and tempest_worker_loop() returns. A handler that later calls
 * tempest_job_answer/done/fail on a requeued job gets TEMPEST_ECANCELED
 * and the job is freed. Safe from handlers and signal-driven callbacks.
 *
 * @param worker the worker
 */
TEMPEST_API void tempest_worker_stop(tempest_worker *worker);

/**
 * Runs the node's event_base until the worker has stopped
 * (tempest_worker_stop(), or SIGINT/SIGTERM with handle_signals) and its
 * jobs in hand are finished; starts the worker first if it was never
 * started. A worker that has already stopped makes it return at once
 * (restart one with tempest_worker_start()). The one blocking call of the
 * library.
 *
 * @param worker the worker
 * @return 0, or a negative code when the loop could not run.
 */
TEMPEST_API int tempest_worker_loop(tempest_worker *worker);

/**
 * Number of jobs in hand now.
 * @param worker the worker
 * @return that number
 */
TEMPEST_API int tempest_worker_in_hand(const tempest_worker *worker);

/**
 * Number of jobs this worker has taken since it was created.
 * @param worker the worker
 * @return that number
 */
TEMPEST_API unsigned long long tempest_worker_taken(const tempest_worker *worker);

/**
 * The worker's random id, used in its Redis keys `{queue}:processing:<id>`
 * and `{queue}:alive:<id>`.
 * @param worker the worker
 * @return the id, 16 hex digits (borrowed)
 */
TEMPEST_API const char *tempest_worker_id(const tempest_worker *worker);

/**
 * Frees the worker at once (prefer tempest_worker_stop() for a graceful
 * end). Jobs still in hand are requeued at the head of their queue when
 * Redis is reachable (otherwise the reaper of another worker requeues them
 * after ttl_ms), their job pointers become invalid, and a waiting producer
 * gets its answer from the next worker. Safe from a handler; inside
 * tempest_worker_loop() the free completes when the loop returns (it
 * returns at once).
 *
 * @param worker the worker; NULL does nothing
 */
TEMPEST_API void tempest_worker_free(tempest_worker *worker);

/**
 * The job's action.
 * @param job a job in hand
 * @return the action (borrowed; valid while the job is in hand)
 */
TEMPEST_API const char *tempest_job_action(const tempest_job *job);

/**
 * The job's arguments.
 * @param job a job in hand
 * @return a JSON array (borrowed; valid while the job is in hand)
 */
TEMPEST_API json_t *tempest_job_args(const tempest_job *job);

/**
 * Where the answer goes.
 * @param job a job in hand
 * @return the producer's `host:port`, or NULL for a fire-and-forget job
 */
TEMPEST_API const char *tempest_job_respond_to(const tempest_job *job);

/**
 * The job id given by its producer.
 * @param job a job in hand
 * @return the id
 */
TEMPEST_API long long tempest_job_id(const tempest_job *job);

/**
 * Sends an answer to the job's producer as `<action> <id> <json> [MORE]`.
 * With `more` the job stays in hand and further answers may follow, on a
 * connection of the job's own (see tempest_job_write() for the window that
 * partial answers count in); without it the job is finished: removed from
 * the worker's processing list in Redis, and freed. For a fire-and-forget
 * job nothing is sent. A failure to reach the producer is logged, never
 * reported to a handler that cannot act on it.
 *
 * @param job a job in hand
 * @param answer the answer (borrowed; encoded at once)
 * @param more true for a partial answer, false for the final one
 * @return 0, TEMPEST_EINVAL (NULL job or answer), TEMPEST_ENOMEM (the job
 *         is still finished when `more` is false), or TEMPEST_ECANCELED for
 *         a job requeued at stop (the job is freed) or one its producer gave
 *         up (see tempest_job_active(): nothing is sent; a final answer
 *         finishes the job).
 */
TEMPEST_API int tempest_job_answer(tempest_job *job, json_t *answer, bool more);

/**
 * Finishes the job without an answer (nothing is sent) and frees it.
 * @param job a job in hand
 * @return 0, TEMPEST_EINVAL, or TEMPEST_ECANCELED (requeued at stop).
 */
TEMPEST_API int tempest_job_done(tempest_job *job);

/**
 * Fails the job on purpose and frees it. With `retry`, the job goes back to
 * the tail of its queue with one more attempt counted (dead-lettered when
 * that reaches max_attempts); a waiting producer keeps waiting for the next
 * worker. Without it, the job is dead-lettered with `reason` and a waiting
 * producer is answered with an error (TEMPEST_EREMOTE at the producer, 502
 * at a front).
 *
 * @param job a job in hand
 * @param reason why (copied); NULL gives a generic text
 * @param retry requeue at the tail instead of dead-lettering
 * @return 0, TEMPEST_EINVAL, TEMPEST_EDOWN (Redis unreachable: the job
 *         stays in the processing list and is requeued by the reaper once
 *         this worker is gone), or TEMPEST_ECANCELED (requeued at stop).
 */
TEMPEST_API int tempest_job_fail(tempest_job *job, const char *reason, bool retry);

/**
 * Streams raw bytes to the job's producer, as a partial answer; with
 * `more == false` the stream ends: the bytes (if any) are followed by the
 * final answer (`[null,null,null]` for a `url` job, `null` otherwise), and
 * the job is finished and freed as by a final tempest_job_answer(). Any
 * bytes go, NULs and non-UTF-8 included; a `url` job's bytes become the
 * HTTP body as they are. Send the status and headers first, with
 * `tempest_job_answer(job, [status, headers, null], true)`; bytes before
 * that make the front start a 200 response without headers.
 *
 * Backpressure: a streamed job has its own connection to the producer, and
 * at most 1 MiB of its partial answers may wait for the producer's reply
 * (a front holds its replies back while its HTTP client is slow). Past
 * that, and until the producer's listener has told what it supports (just
 * after the first call), the call refuses with TEMPEST_EAGAIN and sends
 * nothing; the drain callback (tempest_job_on_drain) runs once there is
 * room again (half the window). So the worker's memory for a stream stays
 * within the window plus one chunk, whatever the size of the stream.
 *
 * To a producer that does not take raw answers (an older listener, which
 * does not list `raw` in its INFO `tempest_features:`), the bytes go as
 * JSON text when they are valid UTF-8 (in the body element of a `url`
 * answer) and are refused with TEMPEST_EPROTO otherwise.
 *
 * For a fire-and-forget job nothing is sent (the final call finishes the
 * job). A failure to reach the producer is logged and cancels the job
 * (tempest_job_active() turns false).
 *
 * @param job a job in hand
 * @param bytes the bytes (borrowed; copied before the call returns); NULL
 *        only with `len == 0`
 * @param len how many
 * @param more false ends the stream with the final answer
 * @return 0; TEMPEST_EAGAIN (nothing sent: wait for the drain callback,
 *         then call again with the same bytes); TEMPEST_ECANCELED when the
 *         producer gave up the job (nothing sent; with `more == false` the
 *         job is finished and freed) or it was requeued at stop (the job is
 *         freed); TEMPEST_EPROTO (see above); TEMPEST_EINVAL (NULL job, or
 *         NULL bytes with `len > 0`); TEMPEST_ENOMEM.
 */
TEMPEST_API int tempest_job_write(tempest_job *job, const void *bytes, size_t len, bool more);

/**
 * Whether tempest_job_write() would accept bytes now.
 * @param job a job in hand
 * @return true when the job is active, its stream window has room, and its
 *         producer's features are known or not asked yet; false for a NULL
 *         or fire-and-forget job.
 */
TEMPEST_API bool tempest_job_writable(const tempest_job *job);

/**
 * Sets the callback that runs when a write refused with TEMPEST_EAGAIN can
 * go. It runs once per refusal, on the node's loop, from the producer's
 * reply. tempest_job_answer() with `more` never refuses (older code keeps
 * working) but counts in the same window: a streaming handler should check
 * tempest_job_writable() between chunks.
 *
 * @param job a job in hand
 * @param fn the callback; NULL: none
 * @param arg passed back to `fn`
 * @return 0 or TEMPEST_EINVAL (NULL job).
 */
TEMPEST_API int tempest_job_on_drain(tempest_job *job, tempest_job_fn *fn, void *arg);

/**
 * False once the job's producer no longer wants it: the HTTP client of a
 * `url` job left, the producer cancelled it (tempest_work_cancel) or its
 * deadline passed, or the connection a stream went on was lost; also
 * false for a job requeued at stop. The worker learns it from the
 * producer's Redis channel `tempest:cancel:<respond_to>` (at once, even
 * while the handler has sent nothing), from asking the producer when that
 * channel may have missed the cancel (the job was cancelled while queued,
 * or the subscription was not yet active or was interrupted:
 * docs/protocol.md, "Cancellation"), and from the `-CANCELED` reply to
 * any answer or progress report. Answers to an inactive job are refused
 * with TEMPEST_ECANCELED. The job stays in hand until it is finished.
 *
 * @param job a job in hand
 * @return whether the producer still wants the job; false for NULL.
 */
TEMPEST_API bool tempest_job_active(const tempest_job *job);

/**
 * Sets the callback that runs once when the job stops being active (see
 * tempest_job_active(); not for a requeue at stop). It is not called for a
 * job already cancelled when it is set: check tempest_job_active() after
 * setting it. The callback should finish the job soon (tempest_job_done(),
 * or a final answer, which returns TEMPEST_ECANCELED and finishes it).
 *
 * @param job a job in hand
 * @param fn the callback; NULL: none
 * @param arg passed back to `fn`
 * @return 0 or TEMPEST_EINVAL.
 */
TEMPEST_API int tempest_job_on_cancel(tempest_job *job, tempest_job_fn *fn, void *arg);

/**
 * Tells the producer the job is still being worked on: sends
 * `<action> <id> null PROGRESS`, which starts the producer's deadline
 * (tempest_work_options.timeout_ms, a front's timeout_ms) again, so a long
 * job stays alive while it reports progress more often than that timeout.
 * Partial answers do the same. Sent only to producers whose listener lists
 * `progress` in its features (an older one would take the report for the
 * answer): to others nothing is sent. The first report to a producer not
 * yet asked waits for its listener's features.
 *
 * @param job a job in hand
 * @return 0, TEMPEST_ECANCELED (the job is not active; it stays in hand),
 *         or TEMPEST_EINVAL.
 */
TEMPEST_API int tempest_job_progress(tempest_job *job);

/**
 * Which of the worker's queues the job came from.
 * @param job a job in hand
 * @return the index of its queue in the `queues` option (0 with `queue`)
 */
TEMPEST_API int tempest_job_queue_index(const tempest_job *job);

#ifdef __cplusplus
}
#endif

#endif
