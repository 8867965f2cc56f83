/* SPDX-License-Identifier: MIT */
/*
 * Producing jobs: encode `[action, args, respond_to, id]`, RPUSH it on the
 * node's command connection, and keep a pending entry (with its deadline
 * timer) for the answers that the node listener will receive.
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include "node.h"
#include "presence.h"

/* The RPUSH reply: only a failure matters, and only while still waiting. */
static void on_pushed(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL || (rep && rep->type != REDIS_REPLY_ERROR))
        return;
    tempest_node *node = tp_redis_owner(r);
    long long id = (long long)(intptr_t)privdata;
    tp_log(&node->log, TEMPEST_LOG_ERROR, "job %lld not queued: %s", id,
           rep ? rep->str : "redis connection lost");
    tp_pending *job = tp_map_get(&node->pending, id);
    if (job == NULL)
        return;
    tp_node_finish(node, job);
    tp_node_deliver(node, job, rep ? TEMPEST_EREDIS : TEMPEST_EDOWN, NULL);
}

/* The WAIT reply: fewer replicas than asked ends the job for its producer. */
static void on_replicated(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL)
        return;
    tempest_node *node = tp_redis_owner(r);
    long long id = (long long)(intptr_t)privdata;
    tp_pending *job = tp_map_get(&node->pending, id);
    if (job == NULL)
        return; /* already ended (the push failed, or answered, or timed out) */
    long long want = job->replicas;
    if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer >= want)
        return;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        tp_node_errorf(node, "job %lld reached %lld of %lld replicas", id, rep->integer, want);
    else
        tp_node_errorf(node, "job %lld: WAIT failed: %s", id, rep ? rep->str : "connection lost");
    tp_log(&node->log, TEMPEST_LOG_WARN, "%s", tempest_node_errstr(node));
    tp_node_finish(node, job);
    tp_node_deliver(node, job, rep ? TEMPEST_EREDIS : TEMPEST_EDOWN, NULL);
}

/* WAIT after the push; privdata is the job id (the count is the job's). */
static int wait_replicas(tempest_node *node, long long id, int replicas, int timeout_ms) {
    tp_pending *job = tp_map_get(&node->pending, id); /* replicas > 0 needs on_answer */
    if (job != NULL)
        job->replicas = replicas;
    char n[16], ms[16];
    snprintf(n, sizeof n, "%d", replicas);
    snprintf(ms, sizeof ms, "%d", timeout_ms > 0 ? timeout_ms : 1000);
    const char *argv[] = {"WAIT", n, ms};
    size_t lens[] = {4, strlen(n), strlen(ms)};
    return tp_redis_argv(node->redis, on_replicated, (void *)(intptr_t)id, 3, argv, lens);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_pending *job = arg;
    tp_node_cancelled(job->node, job->id);
    tp_node_finish(job->node, job);
    tp_node_deliver(job->node, job, TEMPEST_ETIMEDOUT, NULL);
}

static int arm_deadline(tempest_node *node, tp_pending *job, int timeout_ms) {
    if (timeout_ms < 0)
        return 0;
    job->timer = evtimer_new(node->base, on_timeout, job);
    if (job->timer == NULL)
        return TEMPEST_ENOMEM;
    if (timeout_ms == 0)
        return evtimer_add(job->timer, node->default_timeout);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(job->timer, &tv);
}

static tp_pending *pending_new(tempest_node *node, long long id, tempest_answer_fn *fn, void *arg,
                               int timeout_ms) {
    tp_pending *job = tp_calloc(1, sizeof *job);
    if (job == NULL)
        return NULL;
    *job = (tp_pending){.node = node, .id = id, .fn = fn, .arg = arg, .timeout_ms = timeout_ms};
    if (arm_deadline(node, job, timeout_ms) != 0 || tp_map_put(&node->pending, id, job) != 0) {
        if (job->timer)
            event_free(job->timer);
        free(job);
        return NULL;
    }
    return job;
}

static int check_args(tempest_node *node, const char *queue, const char *action, json_t *args) {
    if (node == NULL || queue == NULL || *queue == '\0' || action == NULL || *action == '\0' ||
        strcasecmp(action, "auth") == 0) /* reserved: the listener's AUTH */
        return TEMPEST_EINVAL;
    if (args && !json_is_array(args))
        return TEMPEST_EINVAL;
    if (node->freeing)
        return TEMPEST_ECANCELED;
    if (tp_redis_state(node->redis) != TEMPEST_NODE_UP) {
        tp_node_errorf(node, "redis is not connected");
        return TEMPEST_EDOWN;
    }
    return 0;
}

static int push(tempest_node *node, const char *queue, const char *job, size_t len, long long id,
                bool wait) {
    const char *argv[] = {"RPUSH", queue, job};
    size_t lens[] = {5, strlen(queue), len};
    return tp_redis_argv(node->redis, wait ? on_pushed : NULL, (void *)(intptr_t)id, 3, argv, lens);
}

/*
 * A node's first job id. A producer that restarts on the same listener
 * address must not reuse the ids of its previous run: a late answer to an
 * old job would reach the new job of that number (and a foreign worker's
 * late answers get +OK, so nobody would notice). Ids start at the
 * milliseconds since 2020 times 4096: a new run starts past every id of an
 * earlier one unless that one averaged over 4 million jobs a second, and
 * ids stay below 2^53 (exact in JavaScript and Lua) until 2089.
 */
static long long first_job_id(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - 1577836800000LL;
    return ms > 0 ? ms << 12 : 0;
}

TEMPEST_API long long tempest_work(tempest_node *node, const char *queue, const char *action,
                                   json_t *args, const tempest_work_options *options,
                                   tempest_answer_fn *on_answer, void *arg) {
    int replicas = options ? options->replicas : 0;
    if (options && (replicas < 0 || replicas > 0xffff || options->replicas_timeout_ms < 0 ||
                    (replicas > 0 && on_answer == NULL)))
        return TEMPEST_EINVAL;
    int rc = check_args(node, queue, action, args);
    if (rc != 0)
        return rc;
    if (on_answer && (rc = tp_node_ensure_listener(node)) != 0)
        return rc;
    json_t *empty = args ? NULL : json_array();
    if (node->next_job == 0)
        node->next_job = first_job_id();
    long long id = ++node->next_job;
    size_t len;
    char *job =
        tp_job_encode(action, args ? args : empty, on_answer ? node->address : NULL, id, &len);
    json_decref(empty);
    if (job == NULL)
        return TEMPEST_ENOMEM;
    int timeout_ms = options ? options->timeout_ms : 0;
    if (on_answer && pending_new(node, id, on_answer, arg, timeout_ms) == NULL) {
        free(job);
        return TEMPEST_ENOMEM;
    }
    rc = push(node, queue, job, len, id, on_answer != NULL);
    free(job);
    if (rc == 0 && replicas > 0 && wait_replicas(node, id, replicas, options->replicas_timeout_ms))
        tp_log(&node->log, TEMPEST_LOG_WARN, "job %lld: WAIT not sent", id); /* pushed: keep it */
    if (rc != 0 && on_answer) {
        tp_pending *p = tp_map_del(&node->pending, id);
        tp_node_finish(node, p);
        free(p);
    }
    if (rc == 0)
        tp_presence_produced(node);
    return rc != 0 ? rc : id;
}

TEMPEST_API int tempest_work_cancel(tempest_node *node, long long job_id) {
    tp_pending *job = node ? tp_map_get(&node->pending, job_id) : NULL;
    if (job == NULL)
        return TEMPEST_EINVAL;
    tp_map_del(&node->pending, job_id);
    tp_node_finish(node, job);
    tp_node_cancelled(node, job_id);
    job->fn = NULL; /* queued answers, final ones included, are dropped */
    if (job->queued == 0)
        free(job);
    return 0;
}

TEMPEST_API size_t tempest_work_pending(const tempest_node *node) {
    return node ? node->pending.len : 0;
}
