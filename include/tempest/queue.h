/* SPDX-License-Identifier: MIT */
/**
 * @file
 * Producing jobs: push a job onto a Redis list (a queue) for any worker of
 * any language to take, and receive its answers on the node listener. Jobs
 * use the compatible four-element format of the Tempest protocol. Same
 * threading rule as the node: one event_base, not thread-safe.
 */
#ifndef TEMPEST_QUEUE_H
#define TEMPEST_QUEUE_H

#include <jansson.h>
#include <tempest/tempest.h>

#ifdef __cplusplus
extern "C" {
#endif

/** `status` of an answer that more answers of the same job will follow. */
#define TEMPEST_MORE 1

/**
 * `status` of a partial answer of raw bytes (a worker's tempest_job_write):
 * `answer` is a JSON string that holds the bytes as they were written. They
 * may hold NULs and need not be UTF-8: read them with json_string_value()
 * and json_string_length(), never as a C string or as text. More answers
 * follow, as for TEMPEST_MORE. Only libtempest workers send these, and only
 * to nodes whose listener advertises them (docs/protocol.md).
 */
#define TEMPEST_MORE_RAW 2

/**
 * Receives the answers to one job. It is called once per partial answer
 * with `status == TEMPEST_MORE`, then exactly once with a terminal status:
 * 0 with the final answer, or a negative code with `answer == NULL`
 * (TEMPEST_ETIMEDOUT, TEMPEST_EDOWN when Redis was lost before the job was
 * queued, TEMPEST_EREDIS when Redis refused the push or, with `replicas`,
 * did not replicate it in time, TEMPEST_EREMOTE when the worker reported an error, in which case
 * `answer` is the worker's error text as a JSON string, TEMPEST_ECANCELED
 * when the job was cancelled or the node freed). `answer` is borrowed and
 * valid only during the call; json_incref() it to keep it. The callback may
 * free the node or cancel other jobs.
 */
typedef void tempest_answer_fn(tempest_node *node, long long job_id, int status, json_t *answer,
                               void *arg);

/** Options of one job. Zero means the default. */
typedef struct tempest_work_options {
    /** How long to wait for the final answer; 0: 30000 ms; negative: no
     *  deadline. Each partial answer (TEMPEST_MORE, TEMPEST_MORE_RAW) and
     *  each progress report of the worker (tempest_job_progress) starts the
     *  wait again: the deadline is `timeout_ms` after the latest sign of
     *  life. When it passes, the job is cancelled as by tempest_work_cancel
     *  (its worker is told). */
    int timeout_ms;
    /** Durability across a failover (Redis replication is asynchronous):
     *  when > 0, the push is followed by `WAIT replicas replicas_timeout_ms`
     *  and, if fewer replicas than that acknowledged it in time, the job
     *  ends for its producer with TEMPEST_EREDIS (the node's last error
     *  says how many did) and a later answer is refused, as after a
     *  timeout; the job itself stays queued and may still run. Needs
     *  `on_answer`. WAIT holds the node's Redis connection (every command
     *  of the node queues behind it) for up to the timeout when replicas
     *  are missing: keep it short, or give such producers a node of their
     *  own. 0: no WAIT. */
    int replicas;
    int replicas_timeout_ms; /**< 0: 1000 */
} tempest_work_options;

/**
 * Pushes the job `[action, args, respond_to, job_id]` onto the Redis list
 * `queue` (RPUSH). With `on_answer`, respond_to is this node's listener
 * address (the listener is opened if needed) and `on_answer` receives the
 * answers as described above; with `on_answer == NULL` the job is fire and
 * forget (respond_to is null) and nothing is called back.
 *
 * @param node the producer's node
 * @param queue the Redis list to push onto
 * @param action the job's action; `auth` is reserved (the listener's AUTH)
 * @param args the arguments (borrowed): a JSON array; NULL means `[]`
 * @param options may be NULL; `replicas` without `on_answer`, or a negative
 *        `replicas` or `replicas_timeout_ms`, is TEMPEST_EINVAL
 * @param on_answer receives the answers; NULL: fire and forget
 * @param arg passed to `on_answer`
 * @return the job id (> 0, unique within the node), or a negative code:
 *         TEMPEST_EINVAL (bad argument), TEMPEST_EDOWN (Redis is not
 *         connected now), TEMPEST_EADDR (listener cannot be opened),
 *         TEMPEST_ENOMEM. On error the callback never runs.
 */
TEMPEST_API long long tempest_work(tempest_node *node, const char *queue, const char *action,
                                   json_t *args, const tempest_work_options *options,
                                   tempest_answer_fn *on_answer, void *arg) TEMPEST_MUST_CHECK;

/**
 * Stops waiting for a job: its callback is not called again (not
 * even for answers already received but not yet delivered), and a later
 * answer from a worker is refused with `-CANCELED` (the node remembers the
 * last 1024 cancelled ids; older ones get `-ERR unknown job`). The worker
 * that holds the job is told at once through Redis (`PUBLISH
 * tempest:cancel:<this node's address>`): a libtempest worker's
 * tempest_job_active() turns false and its cancel callback runs. The job
 * itself stays in the queue if no worker has taken it yet.
 *
 * @param node the producer's node
 * @param job_id the id tempest_work() returned
 * @return 0, or TEMPEST_EINVAL when no such job is pending (already
 *         finished, timed out or cancelled).
 */
TEMPEST_API int tempest_work_cancel(tempest_node *node, long long job_id);

/**
 * Number of jobs of this node still waiting for their final answer.
 * @param node the producer's node
 * @return that number
 */
TEMPEST_API size_t tempest_work_pending(const tempest_node *node);

#ifdef __cplusplus
}
#endif

#endif
