/* SPDX-License-Identifier: MIT */
/*
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

typedef struct tempest_worker tempest_worker;
typedef struct tempest_job tempest_job;

/**
 * Handles one job. The job is "in hand" from this call until the handler
 * (now or later, from any callback on the same loop) finishes it with a
 * final tempest_job_answer() or tempest_job_done(); the job pointer is
 * invalid after that. At most `concurrency` jobs are in hand at once.
 */
typedef void tempest_handler_fn(tempest_worker *worker, tempest_job *job, void *arg);

/** Worker options. Zero (or NULL) means the default of each field. */
typedef struct tempest_worker_options {
    const char *queue; /**< Redis list to take jobs from; NULL: "tempest" */
    int concurrency;   /**< most jobs in hand at once; 0: 1 */
    /** Redis-side block timeout of each take, which bounds how long a stop
     *  or a dead connection goes unnoticed; 0: 1000 ms (at most one command
     *  a second while idle). */
    int block_timeout_ms;
    /** List that receives undecodable jobs, as `{"job":..., "reason":...}`;
     *  NULL: "<queue>:dead". */
    const char *dead_letter;
    /** tempest_worker_loop() stops the worker on SIGINT and SIGTERM, and
     *  sets SIGPIPE to be ignored (process-wide; a peer that resets a
     *  connection would otherwise kill the process). Without this option,
     *  ignore SIGPIPE yourself, as every libevent server must. */
    bool handle_signals;
} tempest_worker_options;

/**
 * Creates a worker on `node` (borrowed; it must outlive the worker). The
 * worker opens its own Redis connection for the blocking take. It does not
 * take jobs until tempest_worker_start() or tempest_worker_loop().
 * Returns NULL with `err` (optional) filled on a bad option or no memory.
 */
TEMPEST_API tempest_worker *
tempest_worker_new(tempest_node *node, const tempest_worker_options *options, tempest_error *err);

/**
 * Sets the handler of `action` (copied), replacing an earlier one. Action
 * "*" is the fallback for actions with no handler of their own. A job whose
 * action has no handler is logged and, if someone waits, answered with an
 * error. Returns 0, TEMPEST_EINVAL or TEMPEST_ENOMEM.
 */
TEMPEST_API int tempest_worker_on(tempest_worker *worker, const char *action,
                                  tempest_handler_fn *handler, void *arg);

/** Starts taking jobs on the node's loop (attach mode: the caller runs the
 *  event_base). Returns 0, or TEMPEST_ESTATE when already started. */
TEMPEST_API int tempest_worker_start(tempest_worker *worker);

/**
 * Asks the worker to stop: it takes no new job (a take already waiting in
 * Redis returns within block_timeout_ms, and a job it brings is still
 * handled), lets the jobs in hand finish, and then tempest_worker_loop()
 * returns. Safe from handlers and signal-driven callbacks of the loop.
 */
TEMPEST_API void tempest_worker_stop(tempest_worker *worker);

/**
 * Starts the worker and runs the node's event_base until the worker has
 * stopped (tempest_worker_stop(), or SIGINT/SIGTERM with handle_signals)
 * and its jobs in hand are finished. Returns 0, or a negative code when the
 * loop could not run. The one blocking call of the library.
 */
TEMPEST_API int tempest_worker_loop(tempest_worker *worker);

/** Number of jobs in hand now. */
TEMPEST_API int tempest_worker_in_hand(const tempest_worker *worker);

/** Number of jobs this worker has taken since it was created. */
TEMPEST_API unsigned long long tempest_worker_taken(const tempest_worker *worker);

/**
 * Frees the worker. Jobs still in hand are finished without an answer (a
 * waiting producer then times out). Safe from a handler; inside
 * tempest_worker_loop() the free completes when the loop returns (it
 * returns at once). NULL does nothing.
 */
TEMPEST_API void tempest_worker_free(tempest_worker *worker);

/** The job's action (borrowed; valid while the job is in hand). */
TEMPEST_API const char *tempest_job_action(const tempest_job *job);

/** The job's arguments, a JSON array (borrowed; valid while in hand). */
TEMPEST_API json_t *tempest_job_args(const tempest_job *job);

/** `host:port` the answer goes to, or NULL for a fire-and-forget job. */
TEMPEST_API const char *tempest_job_respond_to(const tempest_job *job);

/** The job id given by its producer. */
TEMPEST_API long long tempest_job_id(const tempest_job *job);

/**
 * Sends an answer (borrowed; encoded at once) to the job's producer as
 * `<action> <id> <json> [MORE]`. With `more` the job stays in hand and
 * further answers may follow; without it the job is finished and freed.
 * For a fire-and-forget job nothing is sent. A failure to reach the
 * producer is logged, never reported to a handler that cannot act on it.
 * Returns 0, TEMPEST_EINVAL (NULL job or answer) or TEMPEST_ENOMEM (the
 * job is still finished when `more` is false).
 */
TEMPEST_API int tempest_job_answer(tempest_job *job, json_t *answer, bool more);

/** Finishes the job without an answer (nothing is sent) and frees it. */
TEMPEST_API void tempest_job_done(tempest_job *job);

#ifdef __cplusplus
}
#endif

#endif
