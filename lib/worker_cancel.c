/* SPDX-License-Identifier: MIT */
/*
 * Cancellation and CHECK: a worker subscribes to the cancel channel of
 * each producer it serves (`tempest:cancel:<address>`, at most
 * MAX_WATCHES), cancels the jobs in hand that a producer gave up, and
 * remembers recent cancels of jobs not taken yet. A cancel can be missed
 * before Redis confirms the subscription or while it is down: the jobs
 * taken meanwhile ask their producer (CHECK) whether they are still
 * wanted, and -CANCELED or -ERR unknown job replies cancel them too.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pubsub.h"
#include "worker.h"

/* Jobs of `addr` whose cancel was heard before they were taken, when the
 * producer cannot be reached to confirm it (it was freed, say): nobody can
 * take their answers. A cancel callback may finish jobs or free the worker:
 * the search starts over after each one. */
void tp_worker_cancel_heard(tempest_worker *w, const char *addr) {
    w->depth++;
    for (tempest_job *j = w->jobs; j && !w->freeing;) {
        if (j->heard && !j->canceled && !j->abandoned && j->own == NULL &&
            strcmp(j->parts.respond_to, addr) == 0) {
            tp_job_cancel(j, "cancelled by its producer, which cannot be reached");
            j = w->jobs;
        } else {
            j = j->next;
        }
    }
    tp_worker_leave(w);
}

/* The producer no longer wants the job; the callback runs once. */
void tp_job_cancel(tempest_job *job, const char *why) {
    if (job->canceled || job->abandoned)
        return;
    job->canceled = true;
    tp_log(&job->w->node->log, TEMPEST_LOG_DEBUG, "job %lld cancelled: %s", job->parts.id, why);
    if (job->on_cancel)
        tp_job_callback(job, job->on_cancel, job->cancel_arg);
}

bool tp_is_cancel_error(const redisReply *rep) {
    return rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "CANCELED", 8) == 0;
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
void tp_job_on_question_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL)
        return;
    tempest_worker *w = p->w;
    p->inflight--;
    w->answers_inflight--;
    tp_worker_check_finished(w);
    tempest_job *job = job_by_serial(w, (long long)(intptr_t)privdata);
    if (job && rep->type == REDIS_REPLY_ERROR &&
        (tp_is_cancel_error(rep) || strncmp(rep->str, "ERR unknown job", 15) == 0))
        tp_job_cancel(job, rep->str);
}

void tp_job_send_check(tempest_job *job, peer *p) {
    if (p->check) /* an older producer cannot be asked: its answer reply tells */
        tp_peer_send(p, job, "null", 4, "CHECK", tp_job_on_question_reply,
                     (void *)(intptr_t)job->serial);
}

/* Asks the job's producer whether the job is still wanted, once the
 * producer has told its features; a failure is the connection's (logged). */
static void start_check(tempest_job *job) {
    job->check = CHECK_NONE;
    peer *p = job->parts.respond_to ? tp_job_peer(job) : NULL;
    if (p == NULL || job->canceled || job->abandoned)
        return;
    tp_peer_probe(p);
    if (p->caps_known)
        tp_job_send_check(job, p);
    else
        job->check = CHECK_ON_CAPS;
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
            tp_job_cancel(j, "cancelled by its producer");
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

/* A cancel published before the subscription was active is missed: such a
 * job asks its producer once it is; so does one whose cancel was heard
 * before it was taken. */
void tp_job_watch(tempest_job *job) {
    tempest_worker *w = job->w;
    const tp_job_parts *parts = &job->parts;
    watch *wt = watch_producer(w, parts->respond_to);
    if (wt == NULL)
        start_check(job);
    else if (!wt->active)
        job->check = CHECK_ON_SUB;
    else if ((job->heard = recently_cancelled(w, parts->respond_to, parts->id)))
        start_check(job);
}

void tp_worker_free_watches(tempest_worker *w) {
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
