/* SPDX-License-Identifier: MIT */
/*
 * Allocation failure, in turn: a job round trip (node, worker, producer,
 * answer), an HTTP request through a front, and a job cancelled while
 * queued (the worker asks its producer: CHECK) run again and again, the Nth
 * allocation of the library and of jansson failing on run N, until a run
 * completes without reaching N. Every run must end cleanly (no crash, no
 * hang past its deadline); under ASan/LSan, nothing may leak. hiredis
 * 0.14 has no allocator hooks (it aborts on out-of-memory) and libevent's
 * are process-wide, so their allocations are not failed here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_chaos.h"

static tt_redis redis;
/*
 * Runs `fn` on a fresh event_base (after DEL `queue`) with allocation N
 * failing, for N = 1, 2, ... until a run reaches no N: that run must
 * return `want`; a run that had a failure must satisfy `check` (NULL: any
 * result). At least ten failure points must have been run.
 */
static void chaos_loop(const char *name, const char *queue, int (*fn)(struct event_base *),
                       int want, bool (*check)(int)) {
    long n;
    for (n = 1; n < 5000; n++) {
        struct event_base *base = event_base_new();
        tt_redis_int(&redis, "DEL %s", queue);
        tt_chaos_on(n);
        int result = fn(base);
        tt_chaos_off();
        event_base_free(base);
        if (!tt_chaos_failed()) {
            assert_int_equal(result, want); /* no failure injected: it must have worked */
            break;
        }
        if (check)
            assert_true(check(result));
    }
    print_message("%s: %ld allocations failed in turn, all handled\n", name, n - 1);
    assert_true(n > 10);
}

static bool up(void *arg) {
    return tempest_node_state(arg) == TEMPEST_NODE_UP;
}

static void echo(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    json_t *a = json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "ok");
    if (a == NULL)
        tempest_job_done(job);
    else
        tempest_job_answer(job, a, false); /* finishes the job even on failure */
    json_decref(a);
}

static int answers;
static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)id;
    (void)answer;
    (void)arg;
    if (status <= 0)
        answers++;
}

static bool answered(void *arg) {
    (void)arg;
    return answers > 0;
}

/* One round trip; returns 1 when it got its answer, else 0. */
static int round_trip(struct event_base *base) {
    tempest_node_options no = {.redis_url = redis.url};
    tempest_node *node = tempest_node_new(base, &no, NULL);
    tempest_worker *w = NULL;
    bool ok = false;
    answers = 0;
    if (node == NULL)
        return false;
    tempest_worker_options wo = {
        .queue = "chaos", .block_timeout_ms = 100, .heartbeat_ms = 200, .ttl_ms = 1000};
    w = tempest_worker_new(node, &wo, NULL);
    if (w == NULL || tempest_worker_on(w, "x", echo, NULL) != 0 || tempest_worker_start(w) != 0)
        goto done;
    if (!tt_run_until(base, up, node, 1000))
        goto done;
    json_t *args = json_pack("[i]", 1);
    tempest_work_options opts = {.timeout_ms = 150};
    long long id = args ? tempest_work(node, "chaos", "x", args, &opts, on_answer, NULL) : -1;
    json_decref(args);
    if (id > 0)
        ok = tt_run_until(base, answered, NULL, 1000) && answers == 1;
done:
    tempest_worker_free(w);
    tempest_node_free(node);
    return ok;
}

static void test_round_trip_chaos(void **state) {
    (void)state;
    chaos_loop("round trip", "chaos", round_trip, 1, NULL);
}

/* The front: a GET through it with a worker behind. */
typedef struct http_result {
    int status;
    bool done;
} http_result;

static void on_http(struct evhttp_request *req, void *arg) {
    http_result *r = arg;
    r->status = req ? evhttp_request_get_response_code(req) : -1;
    r->done = true;
}

static bool http_done(void *arg) {
    return ((http_result *)arg)->done;
}

static int front_request(struct event_base *base) {
    tempest_node_options no = {.redis_url = redis.url};
    tempest_node *node = tempest_node_new(base, &no, NULL);
    tempest_worker *w = NULL;
    tempest_front *front = NULL;
    int status = 0;
    if (node == NULL)
        return 0;
    tempest_worker_options wo = {
        .queue = "chaos2", .block_timeout_ms = 100, .heartbeat_ms = 200, .ttl_ms = 1000};
    tempest_front_options fo = {.http = "127.0.0.1:0", .queue = "chaos2", .timeout_ms = 150};
    w = tempest_worker_new(node, &wo, NULL);
    if (w == NULL || tempest_worker_on(w, "url", echo, NULL) != 0 || tempest_worker_start(w) != 0)
        goto done;
    if ((front = tempest_front_new(node, &fo, NULL)) == NULL || !tt_run_until(base, up, node, 1000))
        goto done;
    http_result r = {0};
    struct evhttp_connection *c =
        evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)tempest_front_port(front));
    struct evhttp_request *req = evhttp_request_new(on_http, &r);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "x");
    evhttp_make_request(c, req, EVHTTP_REQ_GET, "/");
    tt_run_until(base, http_done, &r, 1500);
    evhttp_connection_free(c);
    status = r.status;
done:
    tempest_front_free(front);
    tempest_worker_free(w);
    tempest_node_free(node);
    return status;
}

/* A failure shows as a clean HTTP error or a closed connection. */
static bool clean_status(int status) {
    return status == 0 || status == -1 || status == 200 || status >= 400;
}

static void test_front_chaos(void **state) {
    (void)state;
    chaos_loop("front", "chaos2", front_request, 200, clean_status);
}

/* A job cancelled while still queued: the worker that takes it learns it
 * by asking its producer (CHECK) once its cancel subscription is active. */
static tempest_job *held;
static int cancels;

static void on_cancel(tempest_job *job, void *arg) {
    (void)job, (void)arg;
    cancels++;
}

static void hold(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w, (void)arg;
    held = job;
    tempest_job_on_cancel(job, on_cancel, NULL);
}

static bool cancel_seen(void *arg) {
    (void)arg;
    return cancels > 0;
}

static int cancel_trip(struct event_base *base) {
    tempest_node_options no = {.redis_url = redis.url};
    tempest_node *node = tempest_node_new(base, &no, NULL);
    tempest_worker *w = NULL;
    bool ok = false;
    held = NULL;
    cancels = 0;
    if (node == NULL || !tt_run_until(base, up, node, 1000))
        goto done;
    tempest_work_options opts = {.timeout_ms = 2000};
    long long id = tempest_work(node, "chaos3", "x", NULL, &opts, on_answer, NULL);
    if (id <= 0 || tempest_work_cancel(node, id) != 0)
        goto done;
    tempest_worker_options wo = {
        .queue = "chaos3", .block_timeout_ms = 100, .heartbeat_ms = 200, .ttl_ms = 1000};
    w = tempest_worker_new(node, &wo, NULL);
    if (w == NULL || tempest_worker_on(w, "x", hold, NULL) != 0 || tempest_worker_start(w) != 0)
        goto done;
    ok = tt_run_until(base, cancel_seen, NULL, 1000) && held && !tempest_job_active(held);
done:
    if (held)
        tempest_job_done(held);
    tempest_worker_free(w);
    tempest_node_free(node);
    return ok;
}

static void test_cancel_chaos(void **state) {
    (void)state;
    chaos_loop("cancel", "chaos3", cancel_trip, 1, NULL);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_chaos),
        cmocka_unit_test(test_front_chaos),
        cmocka_unit_test(test_cancel_chaos),
    };
    tt_group_redis(&redis);
    return cmocka_run_group_tests_name("alloc", tests, tt_group_setup, tt_group_teardown);
}
