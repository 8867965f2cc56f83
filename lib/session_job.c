/* SPDX-License-Identifier: MIT */
/*
 * Sessions, worker side: the calls of include/tempest/session.h on the
 * session hash `session:<id>` of a job's front session. Each call is one
 * small struct sent on the node's connection and owned by its commands in
 * flight (hiredis calls every callback exactly once, with NULL when the
 * connection goes). It is linked in its worker's list of job calls
 * (lib/worker_job.h, all this file knows of the worker), so that a worker
 * that is freed cancels it and a job that is finished detaches from it.
 * The front side (the cookie) is lib/session.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node.h"
#include "worker_job.h"

typedef struct op {
    tp_job_call call; /* first: the worker's list links it; call.job is
                       * NULL once the job is finished */
    tempest_node *node;
    tempest_session_fn *fn;
    void *arg;
    bool get;
    int replies; /* commands in flight */
    int status;
    json_t *value;
} op;

static void op_value(op *o, const redisReply *rep) {
    if (rep->type == REDIS_REPLY_NIL)
        return;
    json_t *a = rep->type == REDIS_REPLY_STRING
                    ? json_loadb(rep->str, rep->len, JSON_ALLOW_NUL, NULL)
                    : NULL;
    if (json_is_array(a) && json_array_size(a) == 1)
        o->value = json_incref(json_array_get(a, 0));
    else
        o->status = TEMPEST_EPROTO;
    json_decref(a);
}

static void op_reply(op *o, tp_redis *r, const redisReply *rep) {
    if (o->status != 0)
        return; /* the first failure is the one told */
    if (r == NULL)
        o->status = TEMPEST_ECANCELED;
    else if (rep == NULL)
        o->status = TEMPEST_EDOWN;
    else if (rep->type == REDIS_REPLY_ERROR) {
        o->status = TEMPEST_EREDIS;
        tp_log(&o->node->log, TEMPEST_LOG_WARN, "session: %s", rep->str);
    } else if (o->get)
        op_value(o, rep);
}

static void on_op_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    op *o = privdata;
    tp_redis *r = tp_redis_from(ac);
    op_reply(o, r, reply);
    if (--o->replies > 0)
        return;
    tp_job_call_unlink(&o->call);
    if (o->fn) {
        if (r)
            tp_node_enter(o->node);
        o->fn(o->call.job, o->status, o->status == 0 ? o->value : NULL, o->arg);
        if (r)
            tp_node_leave(o->node);
    }
    json_decref(o->value);
    free(o);
}

TEMPEST_API const char *tempest_job_session(const tempest_job *job) {
    json_t *req = json_array_get(tempest_job_args(job), 0);
    const char *sid = json_string_value(json_object_get(req, "session"));
    return sid && *sid ? sid : NULL;
}

/* Sends `cmd key [field [value]]` for the call `o`; 0 or a code. */
static int op_send(op *o, const char *cmd, const char *key, const char *field, const char *value,
                   size_t value_len) {
    const char *argv[] = {cmd, key, field, value};
    size_t lens[] = {strlen(cmd), strlen(key), field ? strlen(field) : 0, value_len};
    int argc = field == NULL ? 2 : value == NULL ? 3 : 4;
    int rc = tp_redis_argv(o->node->redis, on_op_reply, o, argc, argv, lens);
    if (rc == 0)
        o->replies++;
    return rc;
}

/* The worker is being freed (the call is unlinked, its job NULL already):
 * the callback is told now, and nothing later. */
static void op_cancel(tp_job_call *c) {
    op *o = (op *)c; /* the call is the first member */
    tempest_session_fn *fn = o->fn;
    o->fn = NULL; /* its replies only free it now */
    if (fn)
        fn(NULL, TEMPEST_ECANCELED, NULL, o->arg);
}

/* Starts a call: `field` may be NULL (DEL), `value` (encoded) only for HSET. */
static int session_call(tempest_job *job, const char *cmd, const char *field, const char *value,
                        size_t value_len, tempest_session_fn *cb, void *arg) {
    const char *sid = tempest_job_session(job);
    if (sid == NULL)
        return TEMPEST_EINVAL;
    char *key = tp_malloc(strlen(sid) + sizeof "session:");
    op *o = tp_calloc(1, sizeof *o);
    if (key == NULL || o == NULL) {
        free(key);
        free(o);
        return TEMPEST_ENOMEM;
    }
    sprintf(key, "session:%s", sid);
    bool get = strcmp(cmd, "HGET") == 0;
    *o = (op){.call = {.job = job, .cancel = op_cancel},
              .node = tp_job_node(job),
              .fn = cb,
              .arg = arg,
              .get = get};
    int rc = op_send(o, cmd, key, field, value, value_len);
    json_t *ttl = json_object_get(json_array_get(tempest_job_args(job), 0), "session_ttl");
    if (rc == 0 && value != NULL && json_is_integer(ttl) && json_integer_value(ttl) > 0) {
        char ms[24];
        snprintf(ms, sizeof ms, "%" JSON_INTEGER_FORMAT, json_integer_value(ttl));
        op_send(o, "PEXPIRE", key, ms, NULL, 0); /* when it cannot go, the HSET still counts */
    }
    free(key);
    if (rc != 0) {
        free(o);
        return rc;
    }
    tp_job_call_link(&o->call);
    return 0;
}

TEMPEST_API int tempest_session_get(tempest_job *job, const char *key, tempest_session_fn *cb,
                                    void *arg) {
    if (job == NULL || key == NULL || cb == NULL)
        return TEMPEST_EINVAL;
    return session_call(job, "HGET", key, NULL, 0, cb, arg);
}

TEMPEST_API int tempest_session_set(tempest_job *job, const char *key, json_t *value,
                                    tempest_session_fn *cb, void *arg) {
    if (job == NULL || key == NULL || value == NULL)
        return TEMPEST_EINVAL;
    json_t *wrap = json_array();
    if (wrap == NULL || json_array_append(wrap, value) != 0) {
        json_decref(wrap);
        return TEMPEST_ENOMEM;
    }
    char *text = json_dumps(wrap, JSON_COMPACT);
    json_decref(wrap);
    if (text == NULL)
        return TEMPEST_EINVAL; /* a string that is not UTF-8, or no memory */
    int rc = session_call(job, "HSET", key, text, strlen(text), cb, arg);
    free(text);
    return rc;
}

TEMPEST_API int tempest_session_del(tempest_job *job, const char *key, tempest_session_fn *cb,
                                    void *arg) {
    if (job == NULL || key == NULL)
        return TEMPEST_EINVAL;
    return session_call(job, "HDEL", key, NULL, 0, cb, arg);
}

TEMPEST_API int tempest_session_clear(tempest_job *job, tempest_session_fn *cb, void *arg) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    return session_call(job, "DEL", NULL, NULL, 0, cb, arg);
}
