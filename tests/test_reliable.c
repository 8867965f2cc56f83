/* SPDX-License-Identifier: MIT */
/*
 * The reliable queue against a private redis-server: processing lists and
 * acknowledgement, presence keys, recovery of a crashed worker's jobs (a
 * forked child killed with SIGKILL), attempt counting and dead letters,
 * tempest_job_fail, priorities, acks of jobs finished out of order, a
 * prompt stop after a burst, graceful stop with a grace period, and
 * requeue on free; the scripts loaded again after a SCRIPT FLUSH.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_node.h"

typedef struct fixture {
    tt_redis redis;
    struct event_base *base;
    tempest_node *node;
} fixture;

static fixture fx;

static int each_setup(void **state) {
    (void)state;
    fx.base = event_base_new();
    tempest_node_options o = {.redis_url = fx.redis.url};
    fx.node = tempest_node_new(fx.base, &o, NULL);
    if (fx.node == NULL || !tt_run_until(fx.base, tt_node_up, fx.node, 3000))
        return -1;
    return tt_redis_int(&fx.redis, "FLUSHALL") == 0 ? 0 : -1;
}

static int each_teardown(void **state) {
    (void)state;
    tempest_node_free(fx.node);
    event_base_free(fx.base);
    return 0;
}

static tempest_worker *worker(const char *queue, int concurrency) {
    tempest_worker_options wo = {.queue = queue,
                                 .concurrency = concurrency,
                                 .block_timeout_ms = 200,
                                 .heartbeat_ms = 100,
                                 .ttl_ms = 500};
    tempest_worker *w = tempest_worker_new(fx.node, &wo, NULL);
    assert_non_null(w);
    return w;
}

static long long llen(const char *fmt, const char *a, const char *b) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    return tt_redis_int(&fx.redis, cmd);
}

/* Handler that keeps its jobs for the test to finish. */
typedef struct held {
    tempest_job *jobs[32];
    int n;
    int order[32];
} held;

static void hold(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    held *h = arg;
    h->order[h->n] = (int)json_integer_value(json_array_get(tempest_job_args(job), 0));
    h->jobs[h->n++] = job;
}

static void push(const char *queue, int n) {
    json_t *args = json_pack("[i]", n);
    assert_true(tempest_work(fx.node, queue, "x", args, NULL, NULL, NULL) > 0);
    json_decref(args);
}

static void test_processing_and_ack(void **state) {
    (void)state;
    held h = {0};
    tempest_worker *w = worker("rq1", 2);
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    push("rq1", 1);
    push("rq1", 2);
    tt_count two = {&h.n, 2};
    assert_true(tt_run_until(fx.base, tt_count_reached, &two, 3000));
    const char *id = tempest_worker_id(w);
    assert_int_equal(strlen(id), 16);
    assert_int_equal(llen("LLEN {%s}:processing:%s", "rq1", id), 2);
    assert_int_equal(llen("LLEN %s%s", "rq1", ""), 0);
    assert_int_equal(llen("SISMEMBER {%s}:workers %s", "rq1", id), 1);
    long long pttl = llen("PTTL {%s}:alive:%s", "rq1", id);
    assert_true(pttl > 0 && pttl <= 500);
    assert_int_equal(tempest_job_done(h.jobs[0]), 0);
    json_t *a = json_true();
    assert_int_equal(tempest_job_answer(h.jobs[1], a, false), 0);
    json_decref(a);
    tt_run_for(fx.base, 100);
    assert_int_equal(llen("LLEN {%s}:processing:%s", "rq1", id), 0);
    tempest_worker_free(w);
}

/* A child process takes two jobs and dies without answering. */
static pid_t crashing_child(const char *queue) {
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct event_base *base = event_base_new();
    tempest_node_options o = {.redis_url = fx.redis.url};
    tempest_node *node = tempest_node_new(base, &o, NULL);
    held h = {0};
    tempest_worker_options wo = {.queue = queue,
                                 .concurrency = 2,
                                 .block_timeout_ms = 200,
                                 .heartbeat_ms = 100,
                                 .ttl_ms = 500};
    tempest_worker *w = tempest_worker_new(node, &wo, NULL);
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    tt_count two = {&h.n, 2};
    tt_run_until(base, tt_count_reached, &two, 5000);
    tt_run_for(base, 50);
    raise(SIGKILL);
    _exit(1);
}

static bool queued_two(void *arg) {
    (void)arg;
    return tt_redis_int(&fx.redis, "LLEN rq2") == 2;
}

static void test_crashed_worker_jobs_requeued(void **state) {
    (void)state;
    push("rq2", 1);
    push("rq2", 2);
    assert_true(tt_run_until(fx.base, queued_two, NULL, 2000)); /* flushed before the fork */
    pid_t pid = crashing_child("rq2");
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(llen("LLEN %s%s", "rq2", ""), 0); /* both were in the child's hands */
    held h = {0};
    tempest_worker *w = worker("rq2", 2);
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    tt_count two = {&h.n, 2};
    long long t0 = tt_now_ms();
    assert_true(tt_run_until(fx.base, tt_count_reached, &two, 5000));
    assert_true(tt_now_ms() - t0 < 3000);
    assert_int_equal(h.order[0] + h.order[1], 3);
    assert_int_equal(llen("HLEN {%s}:attempts%s", "rq2", ""), 2);
    assert_int_equal(llen("SCARD {%s}:workers%s", "rq2", ""), 1); /* the dead one is gone */
    tempest_job_done(h.jobs[0]);
    tempest_job_done(h.jobs[1]);
    tt_run_for(fx.base, 100);
    assert_int_equal(llen("HLEN {%s}:attempts%s", "rq2", ""), 0);
    tempest_worker_free(w);
}

static int failures;
static void fail_retry(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    failures++;
    assert_int_equal(tempest_job_fail(job, "flaky", true), 0);
}

static bool dead_one(void *arg) {
    (void)arg;
    return tt_redis_int(&fx.redis, "LLEN {rq3}:dead") == 1;
}

static void test_retry_until_dead(void **state) {
    (void)state;
    tempest_worker_options wo = {.queue = "rq3", .max_attempts = 3, .block_timeout_ms = 200};
    tempest_worker *w = tempest_worker_new(fx.node, &wo, NULL);
    tempest_worker_on(w, "x", fail_retry, NULL);
    tempest_worker_start(w);
    failures = 0;
    push("rq3", 7);
    assert_true(tt_run_until(fx.base, dead_one, NULL, 5000));
    tt_run_for(fx.base, 100);
    assert_int_equal(failures, 3);
    redisContext *c = redisConnect("127.0.0.1", fx.redis.port);
    redisReply *rep = redisCommand(c, "LINDEX {rq3}:dead 0");
    json_t *dead = json_loads(rep->str, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(dead, "reason")),
                        "flaky (after 3 attempts)");
    assert_string_equal(json_string_value(json_object_get(dead, "queue")), "rq3");
    assert_non_null(strstr(json_string_value(json_object_get(dead, "job")), "[7]"));
    json_decref(dead);
    freeReplyObject(rep);
    redisFree(c);
    assert_int_equal(tt_redis_int(&fx.redis, "HLEN {rq3}:attempts"), 0);
    assert_int_equal(tt_redis_int(&fx.redis, "LLEN rq3"), 0);
    tempest_worker_free(w);
}

static void fail_now(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    assert_int_equal(tempest_job_fail(job, "cannot do it", false), 0);
}

typedef struct result {
    int calls, status;
    char text[128];
} result;

static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)id;
    result *r = arg;
    r->calls++;
    r->status = status;
    if (json_is_string(answer))
        snprintf(r->text, sizeof r->text, "%s", json_string_value(answer));
}

static bool answered(void *arg) {
    return ((result *)arg)->calls > 0;
}

static void test_fail_without_retry(void **state) {
    (void)state;
    tempest_worker *w = worker("rq4", 1);
    tempest_worker_on(w, "x", fail_now, NULL);
    tempest_worker_start(w);
    result r = {0};
    assert_true(tempest_work(fx.node, "rq4", "x", NULL, NULL, on_answer, &r) > 0);
    assert_true(tt_run_until(fx.base, answered, &r, 3000));
    assert_int_equal(r.status, TEMPEST_EREMOTE);
    assert_string_equal(r.text, "cannot do it");
    tt_run_for(fx.base, 50);
    assert_int_equal(tt_redis_int(&fx.redis, "LLEN {rq4}:dead"), 1);
    assert_int_equal(llen("LLEN {%s}:processing:%s", "rq4", tempest_worker_id(w)), 0);
    tempest_worker_free(w);
}

static bool high_has_one(void *arg) {
    (void)arg;
    return tt_redis_int(&fx.redis, "LLEN high") == 1;
}

static void test_priorities(void **state) {
    (void)state;
    for (int i = 1; i <= 3; i++)
        push("low", 100 + i);
    for (int i = 1; i <= 3; i++)
        push("high", i);
    const char *queues[] = {"high", "low", NULL};
    tempest_worker_options wo = {.queues = queues, .block_timeout_ms = 200};
    tempest_worker *w = tempest_worker_new(fx.node, &wo, NULL);
    held h = {0};
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    for (int i = 0; i < 6; i++) {
        tt_count next = {&h.n, i + 1};
        assert_true(tt_run_until(fx.base, tt_count_reached, &next, 3000));
        assert_int_equal(tempest_job_queue_index(h.jobs[i]), h.order[i] > 100);
        if (i == 3) { /* arrives while low still has work: served first */
            push("high", 4);
            assert_true(tt_run_until(fx.base, high_has_one, NULL, 2000));
        }
        tempest_job_done(h.jobs[i]);
    }
    tt_count seven = {&h.n, 7};
    assert_true(tt_run_until(fx.base, tt_count_reached, &seven, 3000));
    tempest_job_done(h.jobs[6]);
    /* high drains first; 4 arrives on high after 101 was taken and beats 102 */
    int expected[] = {1, 2, 3, 101, 4, 102, 103};
    for (int i = 0; i < 7; i++)
        assert_int_equal(h.order[i], expected[i]);
    tempest_worker_free(w);
}

static bool processing_empty(void *arg) {
    return llen("LLEN {%s}:processing:%s", "rq6", tempest_worker_id(arg)) == 0;
}

/* Jobs finished out of order are acknowledged all the same, whether their
 * acks ride on a take or go on their own, and the attempt count of an
 * acknowledged job goes with it. */
static void test_acks_out_of_order(void **state) {
    (void)state;
    static const char *const jobs[] = {"[\"x\",[1],null,1]", "[\"x\",[2],null,2]",
                                       "[\"x\",[3],null,3]", "[\"x\",[4],null,4]",
                                       "[\"x\",[5],null,5]", "[\"x\",[6],null,6]"};
    for (int i = 0; i < 6; i++)
        assert_int_equal(tt_redis_int(&fx.redis, "RPUSH rq6 %s", jobs[i]), i + 1);
    assert_int_equal(tt_redis_int(&fx.redis, "EVAL %s 1 %s %s",
                                  "return redis.call('HSET', KEYS[1], redis.sha1hex(ARGV[1]), 1)",
                                  "{rq6}:attempts", jobs[2]),
                     1);
    tempest_worker *w = worker("rq6", 6);
    held h = {0};
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    tt_count all = {&h.n, 6};
    assert_true(tt_run_until(fx.base, tt_count_reached, &all, 3000));
    assert_int_equal(llen("LLEN {%s}:processing:%s", "rq6", tempest_worker_id(w)), 6);
    for (int i = 5; i >= 0; i -= 2) /* 6, 4, 2, then 5, 3, 1 */
        tempest_job_done(h.jobs[i]);
    tt_run_for(fx.base, 50);
    assert_int_equal(llen("LLEN {%s}:processing:%s", "rq6", tempest_worker_id(w)), 3);
    for (int i = 4; i >= 0; i -= 2)
        tempest_job_done(h.jobs[i]);
    assert_true(tt_run_until(fx.base, processing_empty, w, 3000));
    assert_int_equal(tt_redis_int(&fx.redis, "EXISTS {rq6}:attempts"), 0);
    tempest_worker_free(w);
}

static void finish(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    ++*(int *)arg;
    tempest_job_done(job);
}

static bool three_done(void *arg) {
    return *(int *)arg == 3;
}

/* Once the queue ran dry, a worker takes with short blocking timeouts at
 * first: a stop right after a burst does not wait for block_timeout_ms. */
static void test_prompt_stop_after_burst(void **state) {
    (void)state;
    tempest_worker_options wo = {.queue = "rq7", .block_timeout_ms = 2000, .ttl_ms = 5000};
    tempest_worker *w = tempest_worker_new(fx.node, &wo, NULL);
    int done = 0;
    tempest_worker_on(w, "x", finish, &done);
    for (int i = 0; i < 3; i++)
        push("rq7", i);
    tempest_worker_start(w);
    assert_true(tt_run_until(fx.base, three_done, &done, 3000));
    tempest_worker_stop(w);
    long long t0 = tt_now_ms();
    assert_int_equal(tempest_worker_loop(w), 0);
    assert_true(tt_now_ms() - t0 < 1000);
    assert_int_equal(tt_redis_int(&fx.redis, "LLEN {rq7}:processing:%s", tempest_worker_id(w)), 0);
    tempest_worker_free(w);
}

static void test_graceful_stop_requeues(void **state) {
    (void)state;
    tempest_worker_options wo = {
        .queue = "rq5", .concurrency = 2, .block_timeout_ms = 200, .stop_grace_ms = 200};
    tempest_worker *w = tempest_worker_new(fx.node, &wo, NULL);
    held h = {0};
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    push("rq5", 1);
    push("rq5", 2);
    tt_count two = {&h.n, 2};
    assert_true(tt_run_until(fx.base, tt_count_reached, &two, 3000));
    tempest_job_done(h.jobs[1]); /* one finishes, one is still in hand at stop */
    char alive[80];
    snprintf(alive, sizeof alive, "EXISTS {rq5}:alive:%s", tempest_worker_id(w));
    assert_int_equal(tt_redis_int(&fx.redis, alive), 1);
    tempest_worker_stop(w);
    long long t0 = tt_now_ms();
    assert_int_equal(tempest_worker_loop(w), 0);
    long long took = tt_now_ms() - t0;
    assert_true(took >= 150 && took < 1500);
    assert_int_equal(tt_redis_int(&fx.redis, "LLEN rq5"), 1);
    assert_int_equal(tt_redis_int(&fx.redis, alive), 0);
    assert_int_equal(tt_redis_int(&fx.redis, "SCARD {rq5}:workers"), 0);
    json_t *a = json_true();
    assert_int_equal(tempest_job_answer(h.jobs[0], a, false), TEMPEST_ECANCELED);
    json_decref(a);
    tempest_worker_free(w);
}

static void test_free_requeues(void **state) {
    (void)state;
    tempest_worker *w = worker("rq6", 1);
    held h = {0};
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    push("rq6", 1);
    tt_count one = {&h.n, 1};
    assert_true(tt_run_until(fx.base, tt_count_reached, &one, 3000));
    tempest_worker_free(w);
    tt_run_for(fx.base, 100);
    assert_int_equal(tt_redis_int(&fx.redis, "LLEN rq6"), 1);
}

/* SCRIPT FLUSH under a running worker: the NOSCRIPT replies make the
 * connection load the scripts again, and takes and acks go on. */
static void test_script_flush(void **state) {
    (void)state;
    held h = {0};
    tempest_worker *w = worker("rq9", 2);
    tempest_worker_on(w, "x", hold, &h);
    tempest_worker_start(w);
    push("rq9", 1);
    tt_count one = {&h.n, 1};
    assert_true(tt_run_until(fx.base, tt_count_reached, &one, 3000));
    assert_int_equal(tt_redis_int(&fx.redis, "SCRIPT FLUSH"), 0);
    assert_int_equal(tempest_job_done(h.jobs[0]), 0);
    push("rq9", 2);
    tt_count two = {&h.n, 2};
    assert_true(tt_run_until(fx.base, tt_count_reached, &two, 5000));
    assert_int_equal(tempest_job_done(h.jobs[1]), 0);
    const char *id = tempest_worker_id(w);
    long long deadline = tt_now_ms() + 5000;
    while (llen("LLEN {%s}:processing:%s", "rq9", id) != 0 && tt_now_ms() < deadline)
        tt_run_for(fx.base, 50);
    assert_int_equal(llen("LLEN {%s}:processing:%s", "rq9", id), 0);
    tempest_worker_free(w);
}

static void test_options_checked(void **state) {
    (void)state;
    tempest_error err = {0};
    tempest_worker_options bad = {.ttl_ms = 1000, .block_timeout_ms = 800};
    assert_null(tempest_worker_new(fx.node, &bad, &err));
    assert_int_equal(err.code, TEMPEST_EINVAL);
    assert_non_null(strstr(err.message, "ttl_ms"));
    const char *none[] = {NULL};
    tempest_worker_options empty = {.queues = none};
    assert_null(tempest_worker_new(fx.node, &empty, &err));
    assert_int_equal(tempest_job_fail(NULL, "x", false), TEMPEST_EINVAL);
    assert_int_equal(tempest_job_done(NULL), TEMPEST_EINVAL);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_processing_and_ack, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_crashed_worker_jobs_requeued, each_setup,
                                        each_teardown),
        cmocka_unit_test_setup_teardown(test_retry_until_dead, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_fail_without_retry, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_priorities, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_acks_out_of_order, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_prompt_stop_after_burst, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_graceful_stop_requeues, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_free_requeues, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_script_flush, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_options_checked, each_setup, each_teardown),
    };
    tt_group_redis(&fx.redis);
    return cmocka_run_group_tests_name("reliable", tests, tt_group_setup, tt_group_teardown);
}
