/* SPDX-License-Identifier: MIT */
/*
 * Publisher and subscriber against a private redis-server: the message
 * format (data, named, end, malformed), patterns, one Redis subscription
 * for many local subscribers, unsubscribe, history, resubscription and
 * INTERRUPTED after a Redis restart, and frees from inside callbacks.
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
#include <tempest/tempest.h>

#include "harness.h"

static tt_redis redis;
static struct event_base *base;
static tempest_node *node;

static bool up(void *arg) {
    return tempest_node_state(arg) == TEMPEST_NODE_UP;
}

static int each_setup(void **state) {
    (void)state;
    base = event_base_new();
    tempest_node_options o = {
        .redis_url = redis.url, .reconnect_min_ms = 20, .reconnect_max_ms = 100};
    node = tempest_node_new(base, &o, NULL);
    return node && tt_run_until(base, up, node, 3000) ? 0 : -1;
}

static int each_teardown(void **state) {
    (void)state;
    tempest_node_free(node);
    event_base_free(base);
    return 0;
}

typedef struct seen {
    int n;
    int what[32];
    char channel[32][32];
    char event[32][32];
    char data[32][64];
    size_t len[32];
} seen;

static void record(tempest_subscriber *sub, int what, const char *channel, const char *event,
                   const char *data, size_t len, void *arg) {
    (void)sub;
    seen *s = arg;
    if (s->n >= 32)
        return;
    s->what[s->n] = what;
    snprintf(s->channel[s->n], 32, "%s", channel ? channel : "");
    snprintf(s->event[s->n], 32, "%s", event ? event : "");
    if (data)
        memcpy(s->data[s->n], data, len < 63 ? len : 63);
    s->len[s->n] = len;
    s->n++;
}

static bool subscribed(void *arg) {
    return tempest_node_subscriptions(node) == (size_t)(intptr_t)arg;
}

typedef struct pubres {
    int calls, status;
    long long receivers;
    char id[64];
} pubres;

static void on_published(tempest_publisher *pub, int status, long long receivers, const char *id,
                         void *arg) {
    (void)pub;
    pubres *r = arg;
    r->calls++;
    r->status = status;
    r->receivers = receivers;
    snprintf(r->id, sizeof r->id, "%s", id ? id : "");
}

static bool published(void *arg) {
    return ((pubres *)arg)->calls > 0;
}

static void test_message_forms(void **state) {
    (void)state;
    seen s = {0};
    tempest_subscriber *sub = tempest_subscriber_new(node, record, &s, NULL);
    assert_int_equal(tempest_subscribe(sub, "news", false), 0);
    assert_true(tt_run_until(base, subscribed, (void *)1, 2000));
    tempest_publisher *pub = tempest_publisher_new(node, NULL, NULL);
    pubres r = {0};
    assert_int_equal(tempest_publish(pub, "news", NULL, "Bob", NULL, NULL), 0);
    assert_int_equal(tempest_publish(pub, "news", "greet", "line1\nline2", on_published, &r), 0);
    assert_true(tt_run_until(base, published, &r, 2000)); /* in order before the ones below */
    assert_int_equal(r.receivers, 1);
    assert_int_equal(tt_redis_int(&redis, "PUBLISH news %s", "[1,2,3]"), 1); /* malformed */
    assert_int_equal(tt_redis_int(&redis, "PUBLISH news %s", "not json"), 1);
    assert_int_equal(tempest_publish_end(pub, "news", NULL, NULL), 0);
    tt_count five = {&s.n, 5};
    assert_true(tt_run_until(base, tt_count_reached, &five, 2000));
    assert_int_equal(s.what[0], TEMPEST_SUB_MESSAGE);
    assert_string_equal(s.channel[0], "news");
    assert_string_equal(s.event[0], "");
    assert_string_equal(s.data[0], "Bob");
    assert_string_equal(s.event[1], "greet");
    assert_string_equal(s.data[1], "line1\nline2");
    assert_int_equal(s.what[2], TEMPEST_SUB_RAW);
    assert_string_equal(s.data[2], "[1,2,3]");
    assert_int_equal(s.what[3], TEMPEST_SUB_RAW);
    assert_int_equal(s.what[4], TEMPEST_SUB_END);
    tempest_publisher_free(pub);
    tempest_subscriber_free(sub);
}

static void test_many_local_one_redis(void **state) {
    (void)state;
    enum { N = 200 };
    static seen s[N];
    tempest_subscriber *subs[N];
    memset(s, 0, sizeof s);
    for (int i = 0; i < N; i++) {
        subs[i] = tempest_subscriber_new(node, record, &s[i], NULL);
        assert_int_equal(tempest_subscribe(subs[i], "crowd", false), 0);
        assert_int_equal(tempest_subscribe(subs[i], "crowd", false), 0); /* idempotent */
    }
    assert_true(tt_run_until(base, subscribed, (void *)1, 2000));
    tt_numsub one = {&redis, "crowd", 1}, none = {&redis, "crowd", 0};
    assert_true(tt_run_until(base, tt_numsub_is, &one, 2000));
    tempest_publisher *pub = tempest_publisher_new(node, NULL, NULL);
    pubres r = {0};
    assert_int_equal(tempest_publish(pub, "crowd", NULL, "hi", on_published, &r), 0);
    assert_true(tt_run_until(base, published, &r, 2000));
    assert_int_equal(r.status, 0);
    assert_int_equal(r.receivers, 1); /* one Redis client: the node's */
    tt_count last = {&s[N - 1].n, 1};
    assert_true(tt_run_until(base, tt_count_reached, &last, 2000));
    for (int i = 0; i < N; i++)
        assert_int_equal(s[i].n, 1);
    for (int i = 0; i < N - 1; i++)
        assert_int_equal(tempest_unsubscribe(subs[i], "crowd", false), 0);
    tt_run_for(base, 50);
    assert_int_equal(tt_redis_numsub(&redis, "crowd"),
                     1); /* one local subscriber left: no UNSUBSCRIBE */
    assert_int_equal(tempest_unsubscribe(subs[N - 1], "crowd", false), 0);
    assert_int_equal(tempest_unsubscribe(subs[N - 1], "crowd", false), TEMPEST_EINVAL);
    assert_true(tt_run_until(base, subscribed, (void *)0, 2000));
    assert_true(tt_run_until(base, tt_numsub_is, &none, 2000));
    for (int i = 0; i < N; i++)
        tempest_subscriber_free(subs[i]);
    tempest_publisher_free(pub);
}

static void test_patterns(void **state) {
    (void)state;
    seen s = {0};
    tempest_subscriber *sub = tempest_subscriber_new(node, record, &s, NULL);
    assert_int_equal(tempest_subscribe(sub, "room.*", true), 0);
    assert_true(tt_run_until(base, subscribed, (void *)1, 2000));
    assert_int_equal(tt_redis_int(&redis, "PUBLISH room.42 %s", "[\"x\"]"), 1);
    tt_count one = {&s.n, 1};
    assert_true(tt_run_until(base, tt_count_reached, &one, 2000));
    assert_string_equal(s.channel[0], "room.42");
    assert_string_equal(s.data[0], "x");
    tempest_subscriber_free(sub);
    assert_true(tt_run_until(base, subscribed, (void *)0, 2000));
}

static void test_history(void **state) {
    (void)state;
    tempest_publisher_options po = {.history = 100};
    tempest_publisher *pub = tempest_publisher_new(node, &po, NULL);
    pubres r = {0};
    assert_int_equal(tempest_publish(pub, "hist", "e", "d", on_published, &r), 0);
    assert_true(tt_run_until(base, published, &r, 2000));
    assert_int_equal(r.status, 0);
    assert_int_equal(r.receivers, 0);
    assert_non_null(strchr(r.id, '-'));
    assert_int_equal(tt_redis_int(&redis, "XLEN {hist}:history"), 1);
    tempest_publisher_free(pub);
}

static void test_interrupted_and_resubscribed(void **state) {
    (void)state;
    seen s = {0};
    tempest_subscriber *sub = tempest_subscriber_new(node, record, &s, NULL);
    tempest_subscribe(sub, "a", false);
    tempest_subscribe(sub, "b", false);
    assert_true(tt_run_until(base, subscribed, (void *)2, 2000));
    tt_redis_kill(&redis);
    assert_true(tt_run_until(base, subscribed, (void *)0, 3000));
    assert_int_equal(tt_redis_restart(&redis, NULL), 0);
    assert_true(tt_run_until(base, subscribed, (void *)2, 5000));
    tt_count one = {&s.n, 1};
    assert_true(tt_run_until(base, tt_count_reached, &one, 2000));
    assert_int_equal(s.n, 1); /* once, though it has two channels */
    assert_int_equal(s.what[0], TEMPEST_SUB_INTERRUPTED);
    assert_int_equal(tt_redis_int(&redis, "PUBLISH b %s", "[\"after\"]"), 1);
    tt_count two = {&s.n, 2};
    assert_true(tt_run_until(base, tt_count_reached, &two, 2000));
    assert_string_equal(s.data[1], "after");
    tempest_subscriber_free(sub);
}

static tempest_subscriber *victim;
static int free_calls;
static void free_others(tempest_subscriber *sub, int what, const char *channel, const char *event,
                        const char *data, size_t len, void *arg) {
    (void)what, (void)channel, (void)event, (void)data, (void)len, (void)arg;
    free_calls++;
    if (victim) {
        tempest_subscriber_free(victim); /* another subscriber, mid-delivery */
        victim = NULL;
    }
    tempest_subscriber_free(sub); /* and itself */
}

static bool one_call(void *arg) {
    (void)arg;
    return free_calls > 0;
}

static void test_free_in_callback(void **state) {
    (void)state;
    tempest_subscriber *a = tempest_subscriber_new(node, free_others, NULL, NULL);
    victim = tempest_subscriber_new(node, free_others, NULL, NULL);
    tempest_subscribe(a, "f", false);
    tempest_subscribe(victim, "f", false);
    assert_true(tt_run_until(base, subscribed, (void *)1, 2000));
    free_calls = 0;
    assert_int_equal(tt_redis_int(&redis, "PUBLISH f %s", "[\"x\"]"), 1);
    assert_true(tt_run_until(base, one_call, NULL, 2000));
    tt_run_for(base, 50);
    assert_int_equal(free_calls, 1); /* the victim was freed before its turn */
    assert_true(tt_run_until(base, subscribed, (void *)0, 2000));
}

static void test_bad_arguments(void **state) {
    (void)state;
    assert_null(tempest_subscriber_new(NULL, record, NULL, NULL));
    assert_null(tempest_subscriber_new(node, NULL, NULL, NULL));
    tempest_publisher_options bad = {.history = -1};
    assert_null(tempest_publisher_new(node, &bad, NULL));
    tempest_publisher *pub = tempest_publisher_new(node, NULL, NULL);
    assert_int_equal(tempest_publish(pub, "", NULL, "x", NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_publish(pub, "c", NULL, NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_publish(pub, "c", NULL, "\xff", NULL, NULL), TEMPEST_EINVAL);
    tempest_subscriber *sub = tempest_subscriber_new(node, record, NULL, NULL);
    assert_int_equal(tempest_subscribe(sub, "", false), TEMPEST_EINVAL);
    assert_int_equal(tempest_unsubscribe(sub, "never", false), TEMPEST_EINVAL);
    tempest_subscriber_free(sub);
    tempest_publisher_free(pub);
    tempest_publisher_free(NULL);
    tempest_subscriber_free(NULL);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_message_forms, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_many_local_one_redis, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_patterns, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_history, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_interrupted_and_resubscribed, each_setup,
                                        each_teardown),
        cmocka_unit_test_setup_teardown(test_free_in_callback, each_setup, each_teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, each_setup, each_teardown),
    };
    tt_group_redis(&redis);
    return cmocka_run_group_tests_name("pubsub", tests, tt_group_setup, tt_group_teardown);
}
