/* SPDX-License-Identifier: MIT */
/*
 * Self-test of the test harness: a private redis-server starts on a free
 * loopback port, answers commands, survives a kill and a restart on the same
 * port, and leaves nothing behind when stopped; the loop helpers stop when
 * their condition holds or their time is up.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "harness.h"

static bool dir_exists(const char *dir) {
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
}

static void test_free_port(void **state) {
    (void)state;
    int a = tt_free_port();
    assert_true(a > 0 && a < 65536);
    assert_int_not_equal(a, 6379);
}

static void test_start_commands_stop(void **state) {
    (void)state;
    tt_redis r;
    char url[64], dir[256];
    assert_int_equal(tt_redis_start(&r, NULL), 0);
    assert_true(r.pid > 0);
    assert_int_not_equal(r.port, 6379);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", r.port);
    assert_string_equal(r.url, url);
    assert_true(dir_exists(r.dir));

    assert_int_equal(tt_redis_int(&r, "PING"), 0);
    assert_int_equal(tt_redis_int(&r, "INCR %s", "counter"), 1);
    assert_int_equal(tt_redis_int(&r, "INCR %s", "counter"), 2);
    assert_int_equal(tt_redis_int(&r, "GET %s", "counter"), 2);
    assert_int_equal(tt_redis_int(&r, "RPUSH list %s %s %s", "a", "b", "c"), 3);
    assert_int_equal(tt_redis_int(&r, "LLEN list"), 3);
    assert_int_equal(tt_redis_int(&r, "LRANGE list 0 -1"), 3);
    assert_int_equal(tt_redis_int(&r, "GET missing"), -1);
    assert_int_equal(tt_redis_int(&r, "NOSUCHCOMMAND"), -1);
    /* Persistence is off. */
    assert_int_equal(tt_redis_int(&r, "CONFIG GET save"), 2);

    snprintf(dir, sizeof dir, "%s", r.dir);
    pid_t pid = r.pid;
    tt_redis_stop(&r);
    assert_int_equal(r.pid, 0);
    assert_false(dir_exists(dir));
    assert_int_equal(kill(pid, 0), -1); /* reaped: no such process */
    assert_int_equal(tt_redis_int(&r, "PING"), -1);
    tt_redis_stop(&r); /* twice is harmless */
}

static void test_kill_restart(void **state) {
    (void)state;
    tt_redis r;
    assert_int_equal(tt_redis_start(&r, NULL), 0);
    int port = r.port;
    assert_int_equal(tt_redis_int(&r, "INCR n"), 1);

    tt_redis_kill(&r);
    assert_int_equal(r.pid, 0);
    assert_true(dir_exists(r.dir));
    assert_int_equal(tt_redis_int(&r, "PING"), -1);

    assert_int_equal(tt_redis_restart(&r, NULL), 0);
    assert_int_equal(r.port, port);
    assert_int_equal(tt_redis_int(&r, "INCR n"), 1); /* nothing was saved */

    /* Restart after a full stop recreates the directory. */
    tt_redis_stop(&r);
    assert_int_equal(tt_redis_restart(&r, NULL), 0);
    assert_int_equal(r.port, port);
    assert_true(dir_exists(r.dir));
    assert_int_equal(tt_redis_int(&r, "PING"), 0);
    tt_redis_stop(&r);
}

static void test_extra_args_password(void **state) {
    (void)state;
    tt_redis r;
    const char *const extra[] = {"--requirepass", "s3cret", NULL};
    assert_int_equal(tt_redis_start(&r, extra), 0);
    /* tt_redis_int sends AUTH itself. */
    assert_int_equal(tt_redis_int(&r, "RPUSH q x"), 1);
    assert_int_equal(tt_redis_restart(&r, extra), 0);
    assert_int_equal(tt_redis_int(&r, "LLEN q"), 0);
    tt_redis_stop(&r);
}

static void test_two_servers(void **state) {
    (void)state;
    tt_redis a, b;
    assert_int_equal(tt_redis_start(&a, NULL), 0);
    assert_int_equal(tt_redis_start(&b, NULL), 0);
    assert_int_not_equal(a.port, b.port);
    assert_string_not_equal(a.dir, b.dir);
    assert_int_equal(tt_redis_int(&a, "SET k 7"), 0);
    assert_int_equal(tt_redis_int(&b, "GET k"), -1);
    tt_redis_stop(&b);
    tt_redis_stop(&a);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    ++*(int *)arg;
}

static bool reached_three(void *arg) {
    return *(int *)arg >= 3;
}

static bool never(void *arg) {
    (void)arg;
    return false;
}

static void test_run_until(void **state) {
    (void)state;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    int ticks = 0;
    struct timeval ten_ms = {0, 10000};
    struct event *ev = event_new(base, -1, EV_PERSIST, on_tick, &ticks);
    assert_int_equal(event_add(ev, &ten_ms), 0);

    long long t0 = tt_now_ms();
    assert_true(tt_run_until(base, reached_three, &ticks, 5000));
    assert_true(ticks >= 3);
    assert_true(tt_now_ms() - t0 < 1000);

    t0 = tt_now_ms();
    assert_false(tt_run_until(base, never, NULL, 100));
    assert_true(tt_now_ms() - t0 >= 100);

    /* Already true: returns at once. */
    assert_true(tt_run_until(base, reached_three, &ticks, 0));

    /* Nothing left pending after tt_run_until: only our ticker remains. */
    event_free(ev);
    assert_int_equal(event_base_loop(base, EVLOOP_NONBLOCK), 1);

    t0 = tt_now_ms();
    tt_run_for(base, 50);
    assert_true(tt_now_ms() - t0 >= 50);
    event_base_free(base);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_port),    cmocka_unit_test(test_start_commands_stop),
        cmocka_unit_test(test_kill_restart), cmocka_unit_test(test_extra_args_password),
        cmocka_unit_test(test_two_servers),  cmocka_unit_test(test_run_until),
    };
    return cmocka_run_group_tests_name("harness", tests, NULL, NULL);
}
