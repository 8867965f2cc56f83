/* SPDX-License-Identifier: MIT */
/*
 * Sessions, front side: the front's signed cookie (issue, verify,
 * refresh), lib/session.c. The worker side, the job's session calls of
 * include/tempest/session.h, is lib/session_job.c and needs nothing here.
 */
#ifndef TEMPEST_SESSION_PRIV_H
#define TEMPEST_SESSION_PRIV_H

#include <jansson.h>
#include <tempest/tempest.h>

struct evhttp_request;

/** Hex digits of a session id (128 random bits). */
#define TP_SID_LEN 32

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

#endif
