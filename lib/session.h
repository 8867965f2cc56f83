/* SPDX-License-Identifier: MIT */
/*
 * Sessions: the front's signed cookie (issue, verify, refresh) and the
 * worker's pending session calls (include/tempest/session.h). The front
 * and the worker each keep one hook into this file.
 */
#ifndef TEMPEST_SESSION_PRIV_H
#define TEMPEST_SESSION_PRIV_H

#include <jansson.h>
#include <tempest/tempest.h>

struct evhttp_request;
struct tp_session_op;

/** Hex digits of a session id (128 random bits). */
#define TP_SID_LEN 32

/* ---- front ---------------------------------------------------------- */

typedef struct tp_sessions tp_sessions;

/**
 * The front's session settings from its options: *out is NULL when
 * sessions are off. Returns 0, or TEMPEST_EINVAL (no secret, a short one,
 * a bad cookie name) / TEMPEST_ENOMEM with `err` filled.
 */
int tp_sessions_new(const tempest_front_options *o, tp_sessions **out, tempest_error *err);

void tp_sessions_free(tp_sessions *s);

/**
 * Finds the request's session: a valid signed cookie gives its id (and
 * its hash's TTL is refreshed on `node`'s connection); otherwise a new id
 * is made and a Set-Cookie header added to the request's output headers.
 * Writes the id to `sid` ("" when `s` is NULL, or no random bytes could be
 * read: the request then goes without a session).
 */
void tp_sessions_begin(tp_sessions *s, struct tempest_node *node, struct evhttp_request *req,
                       char sid[TP_SID_LEN + 1]);

/** Adds `"session"` and `"session_ttl"` to the `url` request object
 *  (borrowed) when `sid` is not empty. Returns 0 or TEMPEST_ENOMEM. */
int tp_sessions_annotate(const tp_sessions *s, json_t *request, const char *sid);

/* ---- worker --------------------------------------------------------- */

/** The job's node and its worker's list of session calls in flight
 *  (lib/worker.c owns both). */
struct tempest_node *tp_job_node(const tempest_job *job);
struct tp_session_op **tp_job_session_ops(tempest_job *job);

/** The job is being freed: its calls in flight will report job == NULL. */
void tp_session_job_gone(struct tp_session_op **ops, const tempest_job *job);

/** The worker is being freed: every call in flight reports
 *  TEMPEST_ECANCELED now, and nothing later. */
void tp_session_cancel_all(struct tp_session_op **ops);

#endif
