/* SPDX-License-Identifier: MIT */
/*
 * Node tests against a private redis-server: connection and id, URL
 * errors, AUTH (password and ACL user), fail-fast while down, reconnect
 * after a Redis restart, and cancellation of pending jobs on free.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include <event2/event.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_node.h"

typedef tt_node_fixture fixture; /* no node: the tests make theirs */

static int setup(void **state) {
    return tt_node_setup(state, (tempest_node_options){0}, NULL);
}

static tempest_node *connect_node(fixture *f, const char *url) {
    tempest_node_options o = {.redis_url = url, .reconnect_min_ms = 20, .reconnect_max_ms = 100};
    tempest_error err = {0};
    tempest_node *node = tempest_node_new(f->base, &o, &err);
    assert_non_null(node);
    return node;
}

static void test_connect_and_ids(void **state) {
    fixture *f = *state;
    tempest_node *a = connect_node(f, f->redis.url);
    tempest_node *b = connect_node(f, f->redis.url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, a, 3000));
    assert_true(tt_run_until(f->base, tt_node_up_with_id, b, 3000));
    assert_int_not_equal(tempest_node_id(a), tempest_node_id(b));
    assert_null(tempest_node_address(a));
    assert_int_equal(tempest_node_listen(a), 0);
    assert_non_null(strstr(tempest_node_address(a), "127.0.0.1:"));
    tempest_node_free(a);
    tempest_node_free(b);
    tempest_node_free(NULL);
}

static void test_bad_urls(void **state) {
    fixture *f = *state;
    const char *bad[] = {"http://127.0.0.1", "redis://", "redis://127.0.0.1:99999",
                         "redis://127.0.0.1/x", "rediss://127.0.0.1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tempest_error err = {0};
        tempest_node_options o = {.redis_url = bad[i]};
        assert_null(tempest_node_new(f->base, &o, &err));
        assert_int_equal(err.code, TEMPEST_EADDR);
        assert_true(strlen(err.message) > 0);
    }
    tempest_error err = {0};
    tempest_node_options o = {.redis_url = f->redis.url, .listen = "127.0.0.1"};
    assert_null(tempest_node_new(f->base, &o, &err));
    assert_int_equal(err.code, TEMPEST_EADDR);
}

static int states[3];
static void count_state(tempest_node *node, int state, const char *reason, void *arg) {
    (void)node;
    (void)arg;
    states[state]++;
    if (state == TEMPEST_NODE_DOWN)
        assert_non_null(reason);
}

static bool went_down(void *arg) {
    (void)arg;
    return states[TEMPEST_NODE_DOWN] > 0;
}

static void test_down_fails_fast(void **state) {
    fixture *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tt_free_port());
    memset(states, 0, sizeof states);
    tempest_node_options o = {.redis_url = url, .reconnect_min_ms = 20, .on_state = count_state};
    tempest_node *node = tempest_node_new(f->base, &o, NULL);
    assert_non_null(node);
    assert_true(tt_run_until(f->base, went_down, NULL, 2000));
    json_t *args = json_array();
    long long t0 = tt_now_ms();
    assert_int_equal(tempest_work(node, "q", "x", args, NULL, NULL, NULL), TEMPEST_EDOWN);
    assert_true(tt_now_ms() - t0 < 50);
    assert_non_null(strstr(tempest_node_errstr(node), "not connected"));
    json_decref(args);
    tempest_node_free(node);
}

static void test_reconnect_after_restart(void **state) {
    fixture *f = *state;
    memset(states, 0, sizeof states);
    tempest_node_options o = {.redis_url = f->redis.url,
                              .reconnect_min_ms = 20,
                              .reconnect_max_ms = 100,
                              .on_state = count_state};
    tempest_node *node = tempest_node_new(f->base, &o, NULL);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 3000));
    long long id = tempest_node_id(node);
    tt_redis_kill(&f->redis);
    assert_true(tt_run_until(f->base, tt_node_not_up, node, 3000));
    assert_int_equal(tt_redis_restart(&f->redis, NULL), 0);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 5000));
    assert_int_equal(tempest_node_id(node), id); /* the id is kept */
    assert_int_equal(states[TEMPEST_NODE_UP], 2);
    assert_true(states[TEMPEST_NODE_DOWN] >= 1);
    json_t *args = json_array();
    assert_true(tempest_work(node, "q", "x", args, NULL, NULL, NULL) > 0);
    json_decref(args);
    tempest_node_free(node);
}

static void test_auth(void **state) {
    (void)state;
    tt_redis r;
    const char *extra[] = {"--requirepass", "s3cret", "--user", "tempest", "on",
                           ">pw",           "~*",     "&*",     "+@all",   NULL};
    assert_int_equal(tt_redis_start(&r, extra), 0);
    struct event_base *base = event_base_new();
    char url[160];
    const char *forms[] = {"redis://:s3cret@127.0.0.1:%d", "redis://tempest:pw@127.0.0.1:%d/2"};
    for (int i = 0; i < 2; i++) {
        snprintf(url, sizeof url, forms[i], r.port);
        tempest_node_options o = {.redis_url = url};
        tempest_node *node = tempest_node_new(base, &o, NULL);
        assert_true(tt_run_until(base, tt_node_up_with_id, node, 3000));
        tempest_node_free(node);
    }
    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d", r.port);
    tempest_node_options o = {.redis_url = url, .reconnect_min_ms = 50};
    tempest_node *node = tempest_node_new(base, &o, NULL);
    tt_run_for(base, 300);
    assert_int_not_equal(tempest_node_state(node), TEMPEST_NODE_UP);
    assert_non_null(strstr(tempest_node_errstr(node), "handshake refused"));
    tempest_node_free(node);
    event_base_free(base);
    tt_redis_stop(&r);
}

static int cancelled;
static void expect_cancel(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)id;
    (void)arg;
    assert_int_equal(status, TEMPEST_ECANCELED);
    assert_null(answer);
    cancelled++;
}

static void test_free_cancels_pending(void **state) {
    fixture *f = *state;
    tempest_node *node = connect_node(f, f->redis.url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 3000));
    cancelled = 0;
    for (int i = 0; i < 3; i++)
        assert_true(tempest_work(node, "nobody", "x", NULL, NULL, expect_cancel, NULL) > 0);
    assert_int_equal(tempest_work_pending(node), 3);
    tt_run_for(f->base, 50);
    tempest_node_free(node);
    assert_int_equal(cancelled, 3);
    assert_int_equal(tt_redis_int(&f->redis, "LLEN nobody"), 3);
}

static int freed_in_callback;
static void free_on_timeout(tempest_node *node, long long id, int status, json_t *answer,
                            void *arg) {
    (void)id;
    (void)answer;
    (void)arg;
    if (status == TEMPEST_ETIMEDOUT)
        freed_in_callback++;
    tempest_node_free(node); /* the other job is then cancelled */
}

static bool one_freed(void *arg) {
    (void)arg;
    return freed_in_callback > 0;
}

static void test_free_inside_callback(void **state) {
    fixture *f = *state;
    tempest_node *node = connect_node(f, f->redis.url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 3000));
    freed_in_callback = 0;
    tempest_work_options wo = {.timeout_ms = 100};
    assert_true(tempest_work(node, "nobody2", "x", NULL, &wo, free_on_timeout, NULL) > 0);
    wo.timeout_ms = 5000;
    assert_true(tempest_work(node, "nobody2", "x", NULL, &wo, free_on_timeout, NULL) > 0);
    assert_true(tt_run_until(f->base, one_freed, NULL, 3000));
    assert_int_equal(freed_in_callback, 1);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_and_ids),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_down_fails_fast),
        cmocka_unit_test(test_reconnect_after_restart),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_free_cancels_pending),
        cmocka_unit_test(test_free_inside_callback),
    };
    return cmocka_run_group_tests_name("node", tests, setup, tt_node_teardown);
}
