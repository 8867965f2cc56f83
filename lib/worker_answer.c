/* SPDX-License-Identifier: MIT */
/*
 * Answers to producers: the connections to their node listeners (one
 * shared per respond_to address, and one of its own for each streamed job
 * so that a producer that holds back its replies stalls that job only).
 * Each connection says AUTH and TEMPEST PEER first; INFO tells the
 * listener's features (RAW, PROGRESS, CHECK) when one is first needed. A
 * stream has a window of unreplied bytes and a drain callback; a final
 * answer is acknowledged only once the listener replied to it (settlement),
 * and retried when its connection is lost first.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

static void peer_unlink(peer *p) {
    tempest_worker *w = p->w;
    for (peer **pp = &w->peers; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    w->answers_inflight -= p->inflight;
    if (p->ac)
        p->ac->data = NULL;
    tempest_job *job = p->job;
    if (job)
        job->own = NULL;
    char *addr = p->addr;
    bool shared = p->job == NULL && !p->stream;
    free(p);
    tp_worker_check_finished(w);
    if (job) /* a stream cut short: nothing more can reach the producer */
        tp_job_cancel(job, "connection to the producer lost");
    if (shared)
        tp_worker_cancel_heard(w, addr);
    free(addr);
}

static void on_peer_connect(const redisAsyncContext *ac, int status) {
    peer *p = ac->data;
    if (p == NULL || status == REDIS_OK)
        return;
    tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "cannot reach %s to answer: %s", p->addr,
           ac->errstr);
    peer_unlink(p); /* clears ac->data; hiredis frees the context after this */
}

static void on_peer_disconnect(const redisAsyncContext *ac, int status) {
    (void)status;
    peer *p = ac->data;
    if (p == NULL)
        return;
    peer_unlink(p); /* clears ac->data; hiredis frees the context after this */
}

static void settle_unlink(settle *st) {
    if (!st->linked)
        return;
    tempest_worker *w = tp_map_get(&st->node->workers, st->serial);
    if (st->prev)
        st->prev->next = st->next;
    else if (w)
        w->settles = st->next;
    if (st->next)
        st->next->prev = st->prev;
    st->linked = false;
}

static void settle_free(settle *st) {
    if (st) {
        settle_unlink(st);
        free(st->raw);
        free(st);
    }
}

/* The answer may not have arrived: run the job again (one attempt more). */
static void settle_retry(settle *st) {
    tempest_worker *w = tp_map_get(&st->node->workers, st->serial);
    if (w)
        tp_worker_retry_raw(w, st->queue, st->raw, st->len,
                            "answer not confirmed: connection to the producer lost");
    settle_free(st);
}

static void on_peer_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    settle *st = privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (rep == NULL) {
        if (st)
            settle_retry(st); /* the disconnect path settles the counts */
        return;
    }
    if (p == NULL) {
        settle_free(st);
        return;
    }
    p->inflight--;
    p->w->answers_inflight--;
    if (rep->type == REDIS_REPLY_ERROR)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "%s refused an answer: %s", p->addr, rep->str);
    if (st) {
        settle_unlink(st);
        tp_worker_ack_raw(p->w, st->queue, st->raw,
                          st->len); /* refused or not, the job was handled */
        st->raw = NULL;
        settle_free(st);
    }
    tp_worker_check_finished(p->w);
}

/* The listener's reply to AUTH (privdata NULL) or TEMPEST PEER (non-NULL):
 * only a refusal matters. A refused AUTH is a warning; a refused TEMPEST
 * PEER only means an older listener, which gives us the compatible
 * replies. */
static void on_peer_opening(redisAsyncContext *ac, void *reply, void *privdata) {
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL || rep->type != REDIS_REPLY_ERROR)
        return;
    if (privdata == NULL)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "%s refused AUTH: %s", p->addr, rep->str);
    else
        tp_log(&p->w->node->log, TEMPEST_LOG_DEBUG, "%s is an older listener: %s", p->addr,
               rep->str);
}

/* Queues `AUTH <secret>` first on a new peer connection when the node has a
 * secret; hiredis keeps the order, so it precedes every answer. */
static void peer_auth(peer *p) {
    const char *secret = p->w->node->secret;
    if (secret == NULL)
        return;
    const char *argv[] = {"AUTH", secret};
    size_t lens[] = {4, strlen(secret)};
    if (redisAsyncCommandArgv(p->ac, on_peer_opening, NULL, 2, argv, lens) != REDIS_OK)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "cannot send AUTH to %s", p->addr);
}

/* Says who we are, pipelined after AUTH and before any answer (no round
 * trip is waited for): the listener then gives this connection its precise
 * replies (-CANCELED, -ERR unknown job, held +OK) instead of the +OK every
 * foreign worker gets (docs/protocol.md, "Who is answering"). */
static void peer_hello(peer *p) {
    if (redisAsyncCommand(p->ac, on_peer_opening, p, "TEMPEST PEER %d", TP_PEER_PROTOCOL) !=
        REDIS_OK)
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "cannot send TEMPEST PEER to %s", p->addr);
}

static peer *peer_open(tempest_worker *w, const char *addr, bool stream) {
    char *host = NULL, err[200] = "out of memory";
    int port;
    peer *p = tp_calloc(1, sizeof *p);
    if (p == NULL || tp_addr_parse(addr, &host, &port, err, sizeof err) != 0)
        goto fail;
    p->ac = tp_redis_connect_raw(tempest_node_base(w->node), host, port, err, sizeof err);
    if (p->ac == NULL || (p->addr = tp_strdup(addr)) == NULL)
        goto fail;
    p->w = w;
    p->ac->data = p;
    redisAsyncSetConnectCallback(p->ac, on_peer_connect);
    redisAsyncSetDisconnectCallback(p->ac, on_peer_disconnect);
    p->stream = stream;
    p->next = w->peers;
    w->peers = p;
    peer_auth(p);
    peer_hello(p);
    free(host);
    return p;
fail:
    tp_log(&w->node->log, TEMPEST_LOG_WARN, "cannot answer %s: %s", addr, p ? err : "no memory");
    if (p && p->ac)
        redisAsyncFree(p->ac);
    free(host);
    free(p);
    return NULL;
}

static peer *peer_get(tempest_worker *w, const char *addr) {
    for (peer *p = w->peers; p; p = p->next)
        if (!p->stream && strcmp(p->addr, addr) == 0)
            return p;
    return peer_open(w, addr, false);
}

/* The job's answers go on its stream connection once it has one. */
peer *tp_job_peer(tempest_job *job) {
    return job->own ? job->own : peer_get(job->w, job->parts.respond_to);
}

/* A streamed job gets a connection of its own, so that a producer that
 * holds back its replies (backpressure) stalls this job only. */
static peer *stream_peer(tempest_job *job) {
    if (job->own == NULL && (job->own = peer_open(job->w, job->parts.respond_to, true)) != NULL)
        job->own->job = job;
    return job->own;
}

/* Sends `<action> <id> <payload> [flag]` on `p`; `fn` gets `privdata`. */
int tp_peer_send(peer *p, tempest_job *job, const char *payload, size_t len, const char *flag,
                 redisCallbackFn *fn, void *privdata) {
    char id[24];
    int idlen = snprintf(id, sizeof id, "%lld", job->parts.id);
    const char *argv[] = {job->parts.action, id, payload, flag};
    size_t lens[] = {strlen(job->parts.action), (size_t)idlen, len, flag ? strlen(flag) : 0};
    if (redisAsyncCommandArgv(p->ac, fn, privdata, flag ? 4 : 3, argv, lens) != REDIS_OK)
        return TEMPEST_EDOWN;
    p->inflight++;
    job->w->answers_inflight++;
    return 0;
}

/* Sends `<action> <id> <payload> [flag]` to the job's producer. `st` (a
 * final answer's settlement, or NULL) is taken over when this returns 0. */
static int send_answer(tempest_job *job, const char *payload, size_t len, const char *flag,
                       settle *st) {
    peer *p = tp_job_peer(job);
    return p ? tp_peer_send(p, job, payload, len, flag, on_peer_reply, st) : TEMPEST_EDOWN;
}

/* Sends a job's final answer; its acknowledgement follows the producer's
 * reply. When it cannot be sent, the job is retried. */
static int send_final(tempest_job *job, const char *payload, size_t len) {
    tempest_worker *w = job->w;
    settle *st = tp_malloc(sizeof *st);
    if (st == NULL)
        return TEMPEST_ENOMEM;
    *st = (settle){.node = w->node,
                   .serial = w->serial,
                   .queue = job->queue,
                   .raw = job->raw,
                   .len = job->raw_len};
    int rc = send_answer(job, payload, len, NULL, st);
    if (rc == 0) {
        job->raw = NULL; /* the settlement owns it now */
        st->next = w->settles;
        if (w->settles)
            w->settles->prev = st;
        w->settles = st;
        st->linked = true;
    } else {
        free(st);
        tp_worker_retry_raw(w, job->queue, job->raw, job->raw_len, "cannot reach the producer");
    }
    return rc;
}

static bool job_writable(const tempest_job *job) {
    if (job->canceled || job->abandoned || job->parts.respond_to == NULL)
        return false;
    return (job->own == NULL || job->own->caps_known) && job->unacked < STREAM_WINDOW;
}

/* A write was refused and there is room again: the drain callback runs. */
static void maybe_drain(tempest_job *job) {
    if (!job->want_drain || !job_writable(job) || job->unacked > STREAM_WINDOW / 2)
        return;
    job->want_drain = false;
    if (job->on_drain)
        tp_job_callback(job, job->on_drain, job->drain_arg);
}

/* The producer's reply to a partial answer of `len` bytes (privdata). */
static void on_stream_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL)
        return; /* the disconnect path settles the counts */
    size_t len = (size_t)(uintptr_t)privdata;
    tempest_job *job = p->job;
    p->inflight--;
    p->w->answers_inflight--;
    if (job)
        job->unacked -= len < job->unacked ? len : job->unacked;
    if (rep->type == REDIS_REPLY_ERROR && !tp_is_cancel_error(rep))
        tp_log(&p->w->node->log, TEMPEST_LOG_WARN, "%s refused an answer: %s", p->addr, rep->str);
    tp_worker_check_finished(p->w);
    if (job && tp_is_cancel_error(rep))
        tp_job_cancel(job, rep->str);
    else if (job)
        maybe_drain(job);
}

static int send_progress(tempest_job *job, peer *p) {
    if (!p->progress)
        return 0; /* an older producer: it would take the report for the answer */
    return tp_peer_send(p, job, "null", 4, "PROGRESS", tp_job_on_question_reply,
                        (void *)(intptr_t)job->serial);
}

/* True when `list` (a comma-separated line of `n` bytes) holds `word`. */
static bool has_feature(const char *list, size_t n, const char *word) {
    size_t wl = strlen(word);
    for (size_t i = 0; i < n;) {
        size_t e = i;
        while (e < n && list[e] != ',')
            e++;
        if (e - i == wl && memcmp(list + i, word, wl) == 0)
            return true;
        i = e + 1;
    }
    return false;
}

/* The listener's INFO: `tempest_features:` says what it takes beyond the
 * compatible answers. Progress reports that waited for it go now. */
static void on_peer_caps(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    peer *p = ac->data;
    redisReply *rep = reply;
    if (p == NULL || rep == NULL)
        return;
    static const char key[] = "tempest_features:";
    const char *f = rep->type == REDIS_REPLY_STRING ? strstr(rep->str, key) : NULL;
    if (f) {
        f += sizeof key - 1;
        size_t n = strcspn(f, "\r\n");
        p->raw = has_feature(f, n, "raw");
        p->progress = has_feature(f, n, "progress");
        p->check = has_feature(f, n, "check");
    }
    p->caps_known = true;
    for (tempest_job *j = p->w->jobs; j; j = j->next) {
        bool mine = j->own == p || (!p->stream && j->own == NULL && j->parts.respond_to &&
                                    strcmp(j->parts.respond_to, p->addr) == 0);
        if (mine && j->progress_wanted) {
            j->progress_wanted = false;
            send_progress(j, p);
        }
        if (mine && j->check == CHECK_ON_CAPS) {
            j->check = CHECK_NONE;
            tp_job_send_check(j, p);
        }
    }
    if (p->job)
        maybe_drain(p->job);
}

/* Asks the listener what it takes, once, when a feature is first needed:
 * compatible answers never wait for it, so an older listener sees exactly
 * the commands it always saw. */
void tp_peer_probe(peer *p) {
    if (p->probed)
        return;
    p->probed = true;
    if (redisAsyncCommand(p->ac, on_peer_caps, NULL, "INFO server") != REDIS_OK)
        p->caps_known = true; /* cannot ask: an older listener, as far as we know */
}

/* Sends one partial answer on the job's stream connection. */
static int send_partial(tempest_job *job, const char *payload, size_t len, const char *flag) {
    peer *p = stream_peer(job);
    if (p == NULL)
        return TEMPEST_EDOWN;
    int rc = tp_peer_send(p, job, payload, len, flag, on_stream_reply, (void *)(uintptr_t)len);
    if (rc == 0)
        job->unacked += len;
    return rc;
}

static bool is_url(const tempest_job *job) {
    return strcmp(job->parts.action, "url") == 0;
}

/* A producer that takes JSON answers only: text goes as a JSON chunk (the
 * body element of a `url` answer); other bytes cannot go at all. */
static int send_text_chunk(tempest_job *job, const char *bytes, size_t len) {
    json_t *text = json_stringn(bytes, len);
    if (text == NULL)
        return TEMPEST_EPROTO;
    json_t *a = is_url(job) ? json_pack("[nno]", text) : text;
    size_t n;
    char *payload = a ? tp_answer_encode(a, &n) : NULL;
    json_decref(a);
    int rc = payload ? send_partial(job, payload, n, "MORE") : TEMPEST_ENOMEM;
    free(payload);
    return rc;
}

static int write_chunk(tempest_job *job, const char *bytes, size_t len) {
    peer *p = stream_peer(job);
    if (p == NULL)
        return TEMPEST_EDOWN;
    tp_peer_probe(p);
    if (!p->caps_known || job->unacked >= STREAM_WINDOW) {
        job->want_drain = true;
        return TEMPEST_EAGAIN;
    }
    return p->raw ? send_partial(job, bytes, len, "RAW") : send_text_chunk(job, bytes, len);
}

TEMPEST_API int tempest_job_answer(tempest_job *job, json_t *answer, bool more) {
    if (job == NULL || answer == NULL)
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return tp_job_abandoned(job);
    if (job->canceled)
        return tp_job_refused(job, more);
    if (job->parts.respond_to == NULL) {
        if (!more) {
            tp_job_ack(job);
            tp_job_release(job);
        }
        return 0;
    }
    size_t len;
    char *payload = tp_answer_encode(answer, &len);
    int rc;
    if (more)
        rc = payload ? send_partial(job, payload, len, "MORE") : TEMPEST_ENOMEM;
    else if (payload)
        rc = send_final(job, payload, len);
    else {
        rc = TEMPEST_ENOMEM; /* nothing can be sent: the job ends here */
        tp_job_ack(job);
    }
    free(payload);
    if (!more)
        tp_job_release(job);
    return rc == TEMPEST_EDOWN ? 0 : rc; /* logged; the job is retried */
}

TEMPEST_API int tempest_job_write(tempest_job *job, const void *bytes, size_t len, bool more) {
    if (job == NULL || (bytes == NULL && len > 0))
        return TEMPEST_EINVAL;
    if (job->abandoned)
        return tp_job_abandoned(job);
    if (job->canceled)
        return tp_job_refused(job, more);
    if (job->parts.respond_to == NULL) {
        if (!more) {
            tp_job_ack(job);
            tp_job_release(job);
        }
        return 0;
    }
    int rc = len > 0 ? write_chunk(job, bytes, len) : 0;
    if (rc != 0 || more)
        return rc == TEMPEST_EDOWN ? 0 : rc; /* logged; the final answer is retried */
    json_t *end = is_url(job) ? json_pack("[nnn]") : json_null();
    if (end == NULL)
        return TEMPEST_ENOMEM;
    rc = tempest_job_answer(job, end, false);
    json_decref(end);
    return rc;
}

TEMPEST_API bool tempest_job_writable(const tempest_job *job) {
    return job && job_writable(job);
}

TEMPEST_API int tempest_job_on_drain(tempest_job *job, tempest_job_fn *fn, void *arg) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    job->on_drain = fn;
    job->drain_arg = arg;
    return 0;
}

TEMPEST_API int tempest_job_progress(tempest_job *job) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    if (job->canceled || job->abandoned)
        return TEMPEST_ECANCELED;
    if (job->parts.respond_to == NULL)
        return 0;
    peer *p = tp_job_peer(job);
    if (p == NULL)
        return 0; /* logged: the producer cannot be reached */
    tp_peer_probe(p);
    if (!p->caps_known) {
        job->progress_wanted = true; /* sent when the listener has told its features */
        return 0;
    }
    (void)send_progress(job, p); /* a failure is the connection's: logged there */
    return 0;
}

void tp_job_answer_error(tempest_job *job, const char *message) {
    if (job->parts.respond_to == NULL)
        return;
    json_t *s = json_string(message);
    size_t len;
    char *payload = s ? tp_answer_encode(s, &len) : NULL;
    if (payload)
        send_answer(job, payload, len, "ERROR", NULL);
    free(payload);
    json_decref(s);
}

void tp_worker_free_peers(tempest_worker *w) {
    while (w->peers) {
        peer *p = w->peers;
        w->peers = p->next;
        if (p->ac) {
            p->ac->data = NULL;
            redisAsyncFree(p->ac);
        }
        free(p->addr);
        free(p);
    }
}
