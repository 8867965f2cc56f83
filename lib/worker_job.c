/* SPDX-License-Identifier: MIT */
/*
 * Dispatch: the handlers by action, the job object and its API. A decoded
 * job becomes a tempest_job in its worker's list and runs its handler
 * inside the take's reply callback; done and fail end it here, answers go
 * through lib/worker_answer.c. The job's calls in flight made by layers
 * above (sessions, lib/worker_job.h) are linked here too, so that a
 * finished job detaches from them and a freed worker cancels them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "worker.h"

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
    if (parts->respond_to)
        tp_job_watch(job);
    return job;
}

/* Runs the handler of one decoded job; returns true when `w` was freed. */
bool tp_job_dispatch(tempest_worker *w, int qi, tp_job_parts *parts, const char *raw, size_t len) {
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
        tp_job_answer_error(job, msg);
        tp_job_ack(job);
        tp_job_release(job);
        return false;
    }
    w->depth++;
    h->fn(w, job, h->arg);
    return tp_worker_leave(w);
}

/* The job is being freed: its calls in flight will report job == NULL. */
static void calls_job_gone(tempest_worker *w, const tempest_job *job) {
    for (tp_job_call *c = w->calls; c; c = c->next)
        if (c->job == job)
            c->job = NULL;
}

void tp_job_free(tempest_job *job) {
    tempest_worker *w = job->w;
    calls_job_gone(w, job);
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
void tp_job_release(tempest_job *job) {
    tempest_worker *w = job->w;
    w->in_hand--;
    w->released++;
    tp_job_free(job);
    tp_worker_check_finished(w);
    tp_worker_maybe_take(w);
}

/* Runs a user callback of a job; the worker may be freed by it. */
void tp_job_callback(tempest_job *job, tempest_job_fn *fn, void *arg) {
    tempest_worker *w = job->w;
    w->depth++;
    fn(job, arg);
    tp_worker_leave(w);
}

/* A call on a job requeued at stop: refused, and the job is freed. */
int tp_job_abandoned(tempest_job *job) {
    tp_job_free(job);
    return TEMPEST_ECANCELED;
}

/* An answer to a cancelled job: nothing is sent; a final one finishes it. */
int tp_job_refused(tempest_job *job, bool more) {
    if (!more) {
        tp_job_ack(job);
        tp_job_release(job);
    }
    return TEMPEST_ECANCELED;
}

TEMPEST_API int tempest_job_done(tempest_job *job) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return tp_job_abandoned(job);
    tp_job_ack(job);
    tp_job_release(job);
    return 0;
}

TEMPEST_API int tempest_job_fail(tempest_job *job, const char *reason, bool retry) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return tp_job_abandoned(job);
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
        rc = tp_job_script(job, TP_SCRIPT_RETRY, "retry", 4, 8, argv);
    } else {
        const char *argv[] = {q->processing, q->attempts, q->dead, job->raw, why, q->name};
        rc = tp_job_script(job, TP_SCRIPT_BURY, "bury", 3, 6, argv);
        tp_job_answer_error(job, why);
    }
    tp_job_release(job);
    return rc;
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

void tp_job_call_link(tp_job_call *c) {
    tp_job_call **head = &c->job->w->calls;
    c->head = head;
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

void tp_job_call_unlink(tp_job_call *c) {
    if (c->head == NULL)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        *c->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->head = NULL;
}

void tp_worker_cancel_calls(tempest_worker *w) {
    while (w->calls) {
        tp_job_call *c = w->calls;
        tp_job_call_unlink(c);
        c->job = NULL;
        c->cancel(c);
    }
}
