/* SPDX-License-Identifier: MIT */
/*
 * Producer and worker in one process against a private redis-server:
 * round trips, streamed answers, timeouts, late workers, missing handlers,
 * dead letters, fire-and-forget jobs, concurrency, graceful stop, and the
 * node listener's answers to bad or unknown answers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_node.h"

typedef tt_node_fixture fixture;

static int setup(void **state) {
    return tt_node_setup(state, (tempest_node_options){0}, tt_node_up);
}

/* Records every callback of a producer. */
typedef struct record {
    int calls;
    int terminal;
    int statuses[8];
    char answers[8][128];
} record;

static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)id;
    record *r = arg;
    if (r->calls < 8) {
        r->statuses[r->calls] = status;
        char *s = answer ? json_dumps(answer, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        snprintf(r->answers[r->calls], sizeof r->answers[0], "%s", s ? s : "");
        free(s);
    }
    r->calls++;
    if (status <= 0)
        r->terminal++;
}

static bool terminal(void *arg) {
    return ((record *)arg)->terminal > 0;
}

static tempest_worker *new_worker(fixture *f, const char *queue, int concurrency) {
    tempest_worker_options wo = {
        .queue = queue, .concurrency = concurrency, .block_timeout_ms = 200};
    tempest_worker *w = tempest_worker_new(f->node, &wo, NULL);
    assert_non_null(w);
    return w;
}

/* Handler: answers [action, args, respond_to != NULL]. */
static void echo(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    int *count = arg;
    if (count)
        (*count)++;
    json_t *a = json_pack("[sOb]", tempest_job_action(job), tempest_job_args(job),
                          tempest_job_respond_to(job) != NULL);
    assert_int_equal(tempest_job_answer(job, a, false), 0);
    json_decref(a);
}

static void test_round_trip(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q1", 1);
    assert_int_equal(tempest_worker_on(w, "sum", echo, NULL), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    assert_int_equal(tempest_worker_start(w), TEMPEST_ESTATE);
    record r = {0};
    json_t *args = json_pack("[i,i]", 2, 3);
    long long id = tempest_work(f->node, "q1", "sum", args, NULL, on_answer, &r);
    json_decref(args);
    assert_true(id > 0);
    assert_true(tt_run_until(f->base, terminal, &r, 3000));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.statuses[0], 0);
    assert_string_equal(r.answers[0], "[\"sum\",[2,3],true]");
    assert_int_equal(tempest_work_pending(f->node), 0);
    assert_int_equal(tempest_worker_taken(w), 1);
    tempest_worker_free(w);
}

static void stream3(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    for (int i = 1; i <= 3; i++) {
        json_t *n = json_integer(i);
        assert_int_equal(tempest_job_answer(job, n, i < 3), 0);
        json_decref(n);
    }
}

static void test_streamed_answers(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q2", 1);
    tempest_worker_on(w, "*", stream3, NULL);
    tempest_worker_start(w);
    record r = {0};
    assert_true(tempest_work(f->node, "q2", "anything", NULL, NULL, on_answer, &r) > 0);
    assert_true(tt_run_until(f->base, terminal, &r, 3000));
    assert_int_equal(r.calls, 3);
    assert_int_equal(r.statuses[0], TEMPEST_MORE);
    assert_int_equal(r.statuses[1], TEMPEST_MORE);
    assert_int_equal(r.statuses[2], 0);
    assert_string_equal(r.answers[2], "3");
    tempest_worker_free(w);
}

static void test_timeout_keeps_job(void **state) {
    fixture *f = *state;
    record r = {0};
    tempest_work_options wo = {.timeout_ms = 150};
    long long t0 = tt_now_ms();
    assert_true(tempest_work(f->node, "q3", "x", NULL, &wo, on_answer, &r) > 0);
    assert_true(tt_run_until(f->base, terminal, &r, 3000));
    long long took = tt_now_ms() - t0;
    assert_true(took >= 140 && took < 1000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.statuses[0], TEMPEST_ETIMEDOUT);
    assert_int_equal(tt_redis_int(&f->redis, "LLEN q3"), 1);
}

static void test_late_worker(void **state) {
    fixture *f = *state;
    record r = {0};
    assert_true(tempest_work(f->node, "q4", "hi", NULL, NULL, on_answer, &r) > 0);
    tt_run_for(f->base, 300);
    assert_int_equal(r.calls, 0);
    tempest_worker *w = new_worker(f, "q4", 1);
    tempest_worker_on(w, "hi", echo, NULL);
    tempest_worker_start(w);
    assert_true(tt_run_until(f->base, terminal, &r, 3000));
    assert_int_equal(r.statuses[0], 0);
    tempest_worker_free(w);
}

static void test_no_handler(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q5", 1);
    tempest_worker_on(w, "known", echo, NULL);
    tempest_worker_start(w);
    record r = {0};
    assert_true(tempest_work(f->node, "q5", "unknown", NULL, NULL, on_answer, &r) > 0);
    assert_true(tt_run_until(f->base, terminal, &r, 3000));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.statuses[0], TEMPEST_EREMOTE);
    assert_non_null(strstr(r.answers[0], "no handler for action 'unknown'"));
    tempest_worker_free(w);
}

static void test_dead_letters(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q6", 1);
    int count = 0;
    tempest_worker_on(w, "ok", echo, &count);
    tempest_worker_start(w);
    const char *bad[] = {"not json",           "[\"ok\",[],null]", "[\"ok\",[],null,1,5]",
                         "[\"ok\",{},null,1]", "{\"a\":1}",        "[\"\",[],null,1]"};
    for (size_t i = 0; i < 6; i++)
        assert_true(tt_redis_int(&f->redis, "RPUSH q6 %s", bad[i]) > 0);
    record r = {0};
    assert_true(tempest_work(f->node, "q6", "ok", NULL, NULL, on_answer, &r) > 0);
    assert_true(tt_run_until(f->base, terminal, &r, 3000));
    assert_int_equal(r.statuses[0], 0);
    assert_int_equal(count, 1);
    assert_int_equal(tt_redis_int(&f->redis, "LLEN {q6}:dead"), 6);
    redisContext *c = redisConnect("127.0.0.1", f->redis.port);
    redisReply *rep = redisCommand(c, "LINDEX {q6}:dead 0");
    assert_non_null(strstr(rep->str, "\"job\":\"not json\""));
    assert_non_null(strstr(rep->str, "\"reason\":\"job: invalid JSON"));
    freeReplyObject(rep);
    redisFree(c);
    tempest_worker_free(w);
}

static int fire_seen;
static void fire_handler(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    assert_null(tempest_job_respond_to(job));
    fire_seen++;
    json_t *a = json_true();
    assert_int_equal(tempest_job_answer(job, a, false), 0); /* nothing sent */
    json_decref(a);
}

static bool fire_done(void *arg) {
    (void)arg;
    return fire_seen == 1;
}

static void test_fire_and_forget(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q7", 1);
    tempest_worker_on(w, "ff", fire_handler, NULL);
    tempest_worker_start(w);
    fire_seen = 0;
    assert_true(tempest_work(f->node, "q7", "ff", NULL, NULL, NULL, NULL) > 0);
    assert_true(tt_run_until(f->base, fire_done, NULL, 3000));
    assert_int_equal(tempest_work_pending(f->node), 0);
    tempest_worker_free(w);
}

/* Concurrency: jobs are held and answered later from a timer. */
typedef struct held {
    tempest_job *jobs[16];
    int n, max_in_hand;
    tempest_worker *w;
} held;

static void hold(tempest_worker *w, tempest_job *job, void *arg) {
    held *h = arg;
    h->jobs[h->n++] = job;
    if (tempest_worker_in_hand(w) > h->max_in_hand)
        h->max_in_hand = tempest_worker_in_hand(w);
}

static void release(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    held *h = arg;
    for (int i = 0; i < h->n; i++) {
        json_t *a = json_integer(tempest_job_id(h->jobs[i]));
        tempest_job_answer(h->jobs[i], a, false);
        json_decref(a);
    }
    h->n = 0;
}

typedef struct counter {
    int answered;
    int target;
} counter;

static void count_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    counter *c = arg;
    assert_int_equal(status, 0);
    assert_int_equal(json_integer_value(answer), id); /* each to its own producer */
    c->answered++;
}

static bool all_answered(void *arg) {
    counter *c = arg;
    return c->answered == c->target;
}

static void test_concurrency(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q8", 3);
    held h = {.w = w};
    tempest_worker_on(w, "hold", hold, &h);
    tempest_worker_start(w);
    struct event *tick = event_new(f->base, -1, EV_PERSIST, release, &h);
    struct timeval tv = {0, 50000};
    event_add(tick, &tv);
    counter c = {.target = 9};
    for (int i = 0; i < 9; i++)
        assert_true(tempest_work(f->node, "q8", "hold", NULL, NULL, count_answer, &c) > 0);
    assert_true(tt_run_until(f->base, all_answered, &c, 5000));
    assert_int_equal(h.max_in_hand, 3);
    event_free(tick);
    tempest_worker_free(w);
}

static void answer_id(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    json_t *a = json_integer(tempest_job_id(job));
    tempest_job_answer(job, a, false);
    json_decref(a);
}

static void test_many_workers(void **state) {
    fixture *f = *state;
    tempest_worker *ws[3];
    for (int i = 0; i < 3; i++) {
        ws[i] = new_worker(f, "q9", 4);
        tempest_worker_on(ws[i], "id", answer_id, NULL);
        tempest_worker_start(ws[i]);
    }
    counter c = {.target = 600};
    for (int i = 0; i < c.target; i++)
        assert_true(tempest_work(f->node, "q9", "id", NULL, NULL, count_answer, &c) > 0);
    assert_true(tt_run_until(f->base, all_answered, &c, 10000));
    unsigned long long taken = 0;
    for (int i = 0; i < 3; i++) {
        taken += tempest_worker_taken(ws[i]);
        assert_true(tempest_worker_taken(ws[i]) > 0);
        tempest_worker_free(ws[i]);
    }
    assert_int_equal(taken, 600);
}

/* Graceful stop: the loop returns once the job in hand is answered. */
static void stop_then_answer(tempest_worker *w, tempest_job *job, void *arg) {
    (void)arg;
    tempest_worker_stop(w);
    answer_id(w, job, NULL);
}

static void test_loop_and_stop(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q10", 1);
    tempest_worker_on(w, "x", stop_then_answer, NULL);
    counter c = {.target = 1};
    assert_true(tempest_work(f->node, "q10", "x", NULL, NULL, count_answer, &c) > 0);
    long long t0 = tt_now_ms();
    assert_int_equal(tempest_worker_loop(w), 0);
    assert_true(tt_now_ms() - t0 < 3000);
    assert_int_equal(tempest_worker_in_hand(w), 0);
    assert_true(tt_run_until(f->base, all_answered, &c, 2000));
    tempest_worker_free(w);
}

static void free_in_handler(tempest_worker *w, tempest_job *job, void *arg) {
    (void)job;
    int *called = arg;
    (*called)++;
    tempest_worker_free(w); /* the job in hand goes with it */
}

static bool positive(void *arg) {
    return *(int *)arg > 0;
}

static void test_free_in_handler(void **state) {
    fixture *f = *state;
    tempest_worker *w = new_worker(f, "q11", 1);
    int called = 0;
    tempest_worker_on(w, "x", free_in_handler, &called);
    tempest_worker_start(w);
    assert_true(tempest_work(f->node, "q11", "x", NULL, NULL, NULL, NULL) > 0);
    assert_true(tt_run_until(f->base, positive, &called, 3000));
    tt_run_for(f->base, 50);
    assert_int_equal(called, 1);
}

/* The listener refuses answers it cannot accept, and stays usable. A
 * plain synchronous client in a thread talks to it while the loop runs:
 * as a libtempest peer (TEMPEST PEER first: precise error replies) or as
 * a foreign worker (+OK to every answer). */
enum { CLIENT_CMDS = 6 };

typedef struct client_run {
    char host[64];
    int port;
    long long id, id2;
    bool peer;
    const char *cmds[CLIENT_CMDS]; /* %lld: id, %lld%lld: id2 */
    int types[CLIENT_CMDS];
    char texts[CLIENT_CMDS][160];
    volatile int done;
} client_run;

static redisReply *client_command(redisContext *c, const client_run *cr, const char *cmd) {
    if (strstr(cmd, "%lld") == NULL)
        return redisCommand(c, cmd);
    if (strstr(cmd, "$2"))
        return redisCommand(c, cmd + 2, cr->id2);
    return redisCommand(c, cmd, cr->id);
}

static void *client_thread(void *arg) {
    client_run *cr = arg;
    redisContext *c = redisConnect(cr->host, cr->port);
    redisReply *hello = cr->peer && c && !c->err ? redisCommand(c, "TEMPEST PEER 1") : NULL;
    if (hello && hello->type != REDIS_REPLY_STATUS)
        cr->types[0] = -1;
    freeReplyObject(hello);
    for (int i = 0; c && !c->err && cr->types[0] != -1 && i < CLIENT_CMDS && cr->cmds[i]; i++) {
        redisReply *rep = client_command(c, cr, cr->cmds[i]);
        if (rep == NULL)
            break;
        cr->types[i] = rep->type;
        snprintf(cr->texts[i], sizeof cr->texts[i], "%s", rep->str ? rep->str : "");
        freeReplyObject(rep);
    }
    if (c)
        redisFree(c);
    cr->done = 1;
    return NULL;
}

static bool client_done(void *arg) {
    return ((client_run *)arg)->done;
}

static void run_client(fixture *f, client_run *cr) {
    assert_int_equal(sscanf(tempest_node_address(f->node), "%63[^:]:%d", cr->host, &cr->port), 2);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, client_thread, cr), 0);
    assert_true(tt_run_until(f->base, client_done, cr, 5000));
    pthread_join(t, NULL);
}

static void test_listener_answers(void **state) {
    fixture *f = *state;
    record r = {0};
    client_run cr = {
        .peer = true,
        .cmds = {"x 999999 1", "x %lld {bad", "x abc 1", "x %lld \"done\"", "x %lld \"again\""}};
    cr.id = tempest_work(f->node, "q12", "x", NULL, NULL, on_answer, &r);
    assert_true(cr.id > 0);
    run_client(f, &cr);
    assert_int_equal(cr.types[0], REDIS_REPLY_ERROR);
    assert_non_null(strstr(cr.texts[0], "unknown job 999999"));
    assert_int_equal(cr.types[1], REDIS_REPLY_ERROR);
    assert_non_null(strstr(cr.texts[1], "bad answer"));
    assert_int_equal(cr.types[2], REDIS_REPLY_ERROR);
    assert_int_equal(cr.types[3], REDIS_REPLY_STATUS);
    assert_int_equal(cr.types[4], REDIS_REPLY_ERROR);
    assert_true(tt_run_until(f->base, terminal, &r, 2000));
    assert_int_equal(r.calls, 1);
    assert_string_equal(r.answers[0], "\"done\"");
    assert_int_equal(tempest_node_answers_dropped(f->node), 0);
}

/* A foreign worker (no TEMPEST PEER) gets +OK for everything it sends on
 * the answer path, as from the original front; what cannot be used is
 * dropped and counted. An undecodable answer ends its job at once
 * (TEMPEST_EPROTO) instead of leaving the producer to time out, and a
 * fourth argument the listener does not know is ignored, as the original
 * ignored it. */
static void test_listener_answers_foreign(void **state) {
    fixture *f = *state;
    record r = {0}, r2 = {0};
    client_run cr = {.cmds = {"x 999999 1", "x abc 1", "x %lld \"done\" WHATEVER",
                              "x %lld \"again\"", "$2x %lld {bad", "x %lld 1 MORE"}};
    cr.id = tempest_work(f->node, "q12f", "x", NULL, NULL, on_answer, &r);
    cr.id2 = tempest_work(f->node, "q12f", "x", NULL, NULL, on_answer, &r2);
    assert_true(cr.id > 0 && cr.id2 > 0);
    run_client(f, &cr);
    for (int i = 0; i < CLIENT_CMDS; i++) {
        assert_int_equal(cr.types[i], REDIS_REPLY_STATUS);
        assert_string_equal(cr.texts[i], "OK");
    }
    assert_true(tt_run_until(f->base, terminal, &r, 2000));
    assert_true(tt_run_until(f->base, terminal, &r2, 2000));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.statuses[0], 0);
    assert_string_equal(r.answers[0], "\"done\"");
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r2.statuses[0], TEMPEST_EPROTO);
    /* unknown id, bad id, second final answer, bad JSON, a late MORE */
    assert_int_equal(tempest_node_answers_dropped(f->node), 5);
}

/* A producer that restarts (a new node, the same listener address) never
 * reuses the job ids of its previous run: a late answer to an old job
 * must not reach a new job of that number. Ids stay exact in JavaScript. */
static void test_ids_never_reused(void **state) {
    fixture *f = *state;
    tempest_node_options o = tt_node_options(f->redis.url, NULL, NULL, TEMPEST_LOG_ERROR);
    long long last = 0;
    for (int run = 0; run < 3; run++) {
        tempest_node *n = tt_node_new(f->base, &o);
        assert_true(tt_run_until(f->base, tt_node_up, n, 3000));
        long long first = tempest_work(n, "q-ids", "x", NULL, NULL, NULL, NULL);
        assert_true(first > last);
        assert_true(first < (1LL << 53));
        for (int i = 0; i < 100; i++)
            last = tempest_work(n, "q-ids", "x", NULL, NULL, NULL, NULL);
        assert_int_equal(last, first + 100);
        tempest_node_free(n);
    }
}

/* Two final answers arrive in one read; the first one's callback cancels
 * the second job, whose answer is already queued: it must never arrive. */
typedef struct two_answers {
    char host[64];
    int port;
    long long a, b;
    volatile int done;
} two_answers;

static void *answer_both(void *arg) {
    two_answers *t = arg;
    redisContext *c = redisConnect(t->host, t->port);
    redisAppendCommand(c, "x %lld 1", t->a);
    redisAppendCommand(c, "x %lld 2", t->b);
    for (int i = 0; i < 2; i++) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) == REDIS_OK)
            freeReplyObject(r);
    }
    redisFree(c);
    t->done = 1;
    return NULL;
}

static long long second_job;
static int cancel_calls;
static void cancel_other(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)answer;
    (void)arg;
    cancel_calls++;
    if (id != second_job) {
        assert_int_equal(status, 0);
        assert_int_equal(tempest_work_cancel(node, second_job), 0);
    }
}

static bool both_sent(void *arg) {
    return ((two_answers *)arg)->done;
}

static void test_cancel_queued_final_answer(void **state) {
    fixture *f = *state;
    two_answers t = {0};
    cancel_calls = 0;
    t.a = tempest_work(f->node, "q14", "x", NULL, NULL, cancel_other, NULL);
    t.b = second_job = tempest_work(f->node, "q14", "x", NULL, NULL, cancel_other, NULL);
    assert_true(t.a > 0 && t.b > 0);
    assert_int_equal(sscanf(tempest_node_address(f->node), "%63[^:]:%d", t.host, &t.port), 2);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, answer_both, &t), 0);
    assert_true(tt_run_until(f->base, both_sent, &t, 3000));
    pthread_join(th, NULL);
    tt_run_for(f->base, 50);
    assert_int_equal(cancel_calls, 1); /* the cancelled job's answer was dropped */
    assert_int_equal(tempest_work_pending(f->node), 0);
}

/* `replicas`: WAIT after the push, against a real replica of the test's
 * Redis; one replica short ends the job with EREDIS and leaves it queued. */
static void test_wait_replicas(void **state) {
    fixture *f = *state;
    char port[16];
    snprintf(port, sizeof port, "%d", f->redis.port);
    const char *extra[] = {"--replicaof", "127.0.0.1", port, NULL};
    tt_redis replica;
    /* The first sync starts at once (diskless, without the 5 s delay). */
    assert_int_equal(tt_redis_int(&f->redis, "CONFIG SET repl-diskless-sync-delay 0"), 0);
    assert_int_equal(tt_redis_start(&replica, extra), 0);
    long long deadline = tt_now_ms() + 5000;
    while (tt_redis_int(&f->redis, "WAIT 1 100") < 1 && tt_now_ms() < deadline)
        ;
    assert_int_equal(tt_redis_int(&f->redis, "WAIT 1 100"), 1);

    tempest_worker *w = new_worker(f, "qw", 1);
    assert_int_equal(tempest_worker_on(w, "x", echo, NULL), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    record ok = {0};
    tempest_work_options one = {.replicas = 1, .replicas_timeout_ms = 2000};
    assert_true(tempest_work(f->node, "qw", "x", NULL, &one, on_answer, &ok) > 0);
    assert_true(tt_run_until(f->base, terminal, &ok, 5000));
    assert_int_equal(ok.statuses[0], 0);
    tempest_worker_free(w);

    record shy = {0};
    tempest_work_options two = {.replicas = 2, .replicas_timeout_ms = 200};
    assert_true(tempest_work(f->node, "qw2", "x", NULL, &two, on_answer, &shy) > 0);
    assert_true(tt_run_until(f->base, terminal, &shy, 5000));
    assert_int_equal(shy.calls, 1);
    assert_int_equal(shy.statuses[0], TEMPEST_EREDIS);
    assert_non_null(strstr(tempest_node_errstr(f->node), "reached 1 of 2 replicas"));
    assert_int_equal(tt_redis_int(&f->redis, "LLEN qw2"), 1); /* still queued */
    assert_int_equal(tempest_work_pending(f->node), 0);

    assert_int_equal(tempest_work(f->node, "qw2", "x", NULL, &one, NULL, NULL), TEMPEST_EINVAL);
    tempest_work_options neg = {.replicas = -1};
    assert_int_equal(tempest_work(f->node, "qw2", "x", NULL, &neg, on_answer, &shy),
                     TEMPEST_EINVAL);
    tt_redis_stop(&replica);
}

static void test_bad_arguments(void **state) {
    fixture *f = *state;
    json_t *obj = json_object();
    assert_int_equal(tempest_work(NULL, "q", "a", NULL, NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_work(f->node, "", "a", NULL, NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_work(f->node, "q", NULL, NULL, NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_work(f->node, "q", "a", obj, NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_work_cancel(f->node, 123456), TEMPEST_EINVAL);
    json_decref(obj);
    tempest_error err = {0};
    tempest_worker_options wo = {.queue = ""};
    assert_null(tempest_worker_new(f->node, &wo, &err));
    assert_int_equal(err.code, TEMPEST_EINVAL);
    assert_null(tempest_worker_new(NULL, NULL, NULL));
    tempest_worker *w = new_worker(f, "q", 1);
    assert_int_equal(tempest_worker_on(w, NULL, echo, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_worker_on(w, "a", NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_job_answer(NULL, NULL, false), TEMPEST_EINVAL);
    tempest_worker_free(w);
    tempest_worker_free(NULL);
}

static void test_cancel(void **state) {
    fixture *f = *state;
    record r = {0};
    long long id = tempest_work(f->node, "q13", "x", NULL, NULL, on_answer, &r);
    assert_int_equal(tempest_work_cancel(f->node, id), 0);
    assert_int_equal(tempest_work_cancel(f->node, id), TEMPEST_EINVAL);
    tempest_worker *w = new_worker(f, "q13", 1);
    tempest_worker_on(w, "x", echo, NULL);
    tempest_worker_start(w);
    tt_run_for(f->base, 300);
    assert_int_equal(r.calls, 0); /* never called after a cancel */
    assert_int_equal(tempest_worker_taken(w), 1);
    tempest_worker_free(w);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),       cmocka_unit_test(test_wait_replicas),
        cmocka_unit_test(test_streamed_answers), cmocka_unit_test(test_timeout_keeps_job),
        cmocka_unit_test(test_late_worker),      cmocka_unit_test(test_no_handler),
        cmocka_unit_test(test_dead_letters),     cmocka_unit_test(test_fire_and_forget),
        cmocka_unit_test(test_concurrency),      cmocka_unit_test(test_many_workers),
        cmocka_unit_test(test_loop_and_stop),    cmocka_unit_test(test_free_in_handler),
        cmocka_unit_test(test_listener_answers), cmocka_unit_test(test_listener_answers_foreign),
        cmocka_unit_test(test_bad_arguments),    cmocka_unit_test(test_ids_never_reused),
        cmocka_unit_test(test_cancel),           cmocka_unit_test(test_cancel_queued_final_answer),
    };
    return cmocka_run_group_tests_name("queue", tests, setup, tt_node_teardown);
}
