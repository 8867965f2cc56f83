/* SPDX-License-Identifier: MIT */
/**
 * @file
 * Sessions, as a worker sees them. A front with `sessions` enabled gives
 * every browser a signed cookie naming a session id and passes the id to
 * the worker in the `url` job (the `"session"` key of the request object).
 * The session itself is the Redis hash `session:<id>`: each field's value
 * is the JSON array of one element `[value]` (PROTOCOL.md), so that Ruby,
 * Python or Node code reading the same hash sees the same data and a
 * stored null differs from a missing field.
 *
 * The calls below run on the job's worker node: they send their command
 * on the node's Redis connection and call back from the node's loop, never
 * from inside the call. Same threading rule as the node: one event_base,
 * not thread-safe.
 */
#ifndef TEMPEST_SESSION_H
#define TEMPEST_SESSION_H

#include <jansson.h>
#include <tempest/tempest.h>
#include <tempest/worker.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Receives the outcome of one session call, exactly once.
 *
 * `job` is the job the call was made for while it is still in hand, or
 * NULL when it was finished (answered, done, failed) or requeued at stop
 * before the reply came: the command still ran in Redis, but the job can
 * no longer be answered.
 *
 * `status` is 0, or TEMPEST_EDOWN (the connection to Redis was lost with
 * the command in flight: it may or may not have run), TEMPEST_EREDIS
 * (Redis refused it, e.g. an ACL; the node logs Redis's text),
 * TEMPEST_EPROTO (get only: the stored value is not a JSON array of one
 * element), TEMPEST_ECANCELED (the worker or its node was freed; `job` is
 * then NULL).
 *
 * `value` is only set by tempest_session_get() with status 0: the stored
 * value (JSON null for a stored null), or NULL when the field does not
 * exist. It is borrowed and valid only during the call; json_incref() it
 * to keep it.
 */
typedef void tempest_session_fn(tempest_job *job, int status, json_t *value, void *arg);

/**
 * The session id the front gave this job (the `"session"` string of the
 * `url` request object).
 *
 * @param job a job in hand
 * @return the id, or NULL when the job has none (not a `url` job, or a
 *         front without sessions). Borrowed; valid while the job is in hand.
 */
TEMPEST_API const char *tempest_job_session(const tempest_job *job);

/**
 * Reads a field of the job's session: `HGET session:<id> <key>`.
 *
 * @param job a job in hand, with a session
 * @param key the field (copied)
 * @param cb gets the value, as tempest_session_fn says
 * @param arg passed to `cb`
 * @return 0 (then `cb` runs exactly once, later), or, with `cb` never
 *         called: TEMPEST_EINVAL (NULL job, key or cb; the job has no
 *         session), TEMPEST_EDOWN (Redis not connected now), TEMPEST_ENOMEM.
 */
TEMPEST_API int tempest_session_get(tempest_job *job, const char *key, tempest_session_fn *cb,
                                    void *arg);

/**
 * Stores a value in a field of the job's session: `HSET`, then
 * `PEXPIRE session:<id> <ttl>` when the front sent the session's idle TTL
 * (`"session_ttl"`), so that a session that a worker creates expires too.
 *
 * @param job a job in hand, with a session
 * @param key the field (copied)
 * @param value the value (borrowed; encoded at once as `[value]`, so any
 *        JSON value, null included)
 * @param cb told the outcome; NULL: nothing is told
 * @param arg passed to `cb`
 * @return as tempest_session_get(); TEMPEST_EINVAL also for a NULL value.
 */
TEMPEST_API int tempest_session_set(tempest_job *job, const char *key, json_t *value,
                                    tempest_session_fn *cb, void *arg);

/**
 * Deletes a field of the job's session (`HDEL`); deleting a missing field
 * is not an error.
 *
 * @param job a job in hand, with a session
 * @param key the field (copied)
 * @param cb told the outcome; NULL: nothing is told
 * @param arg passed to `cb`
 * @return as tempest_session_get().
 */
TEMPEST_API int tempest_session_del(tempest_job *job, const char *key, tempest_session_fn *cb,
                                    void *arg);

/**
 * Deletes the whole session hash (`DEL session:<id>`); the browser keeps
 * its cookie and the id, which now names an empty session.
 *
 * @param job a job in hand, with a session
 * @param cb told the outcome; NULL: nothing is told
 * @param arg passed to `cb`
 * @return as tempest_session_get() (no key argument).
 */
TEMPEST_API int tempest_session_clear(tempest_job *job, tempest_session_fn *cb, void *arg);

#ifdef __cplusplus
}
#endif

#endif
