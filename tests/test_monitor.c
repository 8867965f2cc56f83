/* SPDX-License-Identifier: MIT */
/*
 * Node presence and tempest_cluster_status() against a private
 * redis-server: the records of producers, workers, responders and
 * requesters with their counters; queue lengths, jobs in processing and
 * dead letters; namespaces kept apart; a freed node withdrawn at once; a
 * SIGKILLed one gone within its presence TTL; bad arguments; a read still
 * in flight when its node is freed. The example monitor program is run by
 * tests/test_examples.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_proc.h"
#include "tt_node.h"

typedef tt_node_fixture fixture; /* its node reads the status; a producer */

static tempest_node *new_node(fixture *f, const char *ns, int heartbeat_ms) {
    tempest_node_options o = {
        .redis_url = f->redis.url, .namespace = ns, .heartbeat_ms = heartbeat_ms};
    tempest_node *n = tempest_node_new(f->base, &o, NULL);
    assert_non_null(n);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, n, 3000));
    return n;
}

static int setup(void **state) {
    return tt_node_setup(state, (tempest_node_options){.heartbeat_ms = 50}, tt_node_up_with_id);
}

/* ---- reading the status ------------------------------------------------ */

/* A fresh snapshot of `ns` (NULL: the reader's); the caller decrefs it. */
static json_t *status_of(fixture *f, const char *ns) {
    tt_status r = {0};
    assert_int_equal(tempest_cluster_status(f->node, ns, tt_on_status, &r), 0);
    assert_true(tt_run_until(f->base, tt_status_done, &r, 2000));
    assert_int_equal(r.status, 0);
    assert_non_null(r.snap);
    assert_int_equal(r.calls, 1);
    return r.snap;
}

static long long stat_of(json_t *rec, const char *role, const char *name) {
    json_t *v = json_object_get(json_object_get(json_object_get(rec, "stats"), role), name);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static bool has_role(json_t *rec, const char *role) {
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(rec, "roles"), i, v) {
        if (strcmp(json_string_value(v), role) == 0)
            return true;
    }
    return false;
}

/* ---- a worker that holds its jobs, a responder ---------------------------- */

typedef struct held {
    tempest_job *jobs[8];
    int n;
} held;

static void hold(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    held *h = arg;
    h->jobs[h->n++] = job;
}

static void echo(tempest_responder *r, tempest_request *req, void *arg) {
    (void)r, (void)arg;
    tempest_request_reply(req, tempest_request_body(req));
}

static void on_reply(tempest_requester *q, long long id, int status, json_t *reply, void *arg) {
    (void)q, (void)id, (void)reply;
    int *n = arg;
    *n += status == 0;
}

static bool one_held(void *arg) {
    return ((held *)arg)->n == 1;
}

static bool replied(void *arg) {
    return *(int *)arg == 3;
}

/* ---- tests ------------------------------------------------------------- */

static void test_roles_queues_services(void **state) {
    fixture *f = *state;
    tempest_node *wn = new_node(f, NULL, 50);
    held h = {0};
    tempest_worker_options wo = {.queue = "mon", .concurrency = 1};
    tempest_worker *w = tempest_worker_new(wn, &wo, NULL);
    assert_non_null(w);
    assert_int_equal(tempest_worker_on(w, "hold", hold, &h), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    for (int i = 0; i < 3; i++)
        assert_true(tempest_work(f->node, "mon", "hold", NULL, NULL, NULL, NULL) > 0);
    assert_true(tt_run_until(f->base, one_held, &h, 2000));
    tt_redis_int(&f->redis, "RPUSH mon %s", "not json"); /* waits behind the held job */
    tempest_responder *r =
        tempest_responder_new(wn, &(tempest_responder_options){.service = "echo"}, NULL);
    assert_non_null(r);
    assert_int_equal(tempest_responder_on(r, "*", echo, NULL), 0);
    tempest_requester *rq =
        tempest_requester_new(f->node, &(tempest_requester_options){.service = "echo"}, NULL);
    assert_non_null(rq);
    int ok = 0;
    for (int i = 0; i < 3; i++) {
        json_t *body = json_integer(i);
        assert_true(tempest_requester_send(rq, "echo", body, NULL, on_reply, &ok) > 0);
        json_decref(body); /* borrowed */
    }
    assert_true(tt_run_until(f->base, replied, &ok, 3000));
    tt_run_for(f->base, 150); /* a few beats */

    json_t *snap = status_of(f, NULL);
    assert_string_equal(json_string_value(json_object_get(snap, "namespace")), "default");
    json_t *wrec = tt_snapshot_node(snap, tempest_node_id(wn));
    json_t *prec = tt_snapshot_node(snap, tempest_node_id(f->node));
    assert_non_null(wrec);
    assert_non_null(prec);
    assert_true(has_role(wrec, "worker") && has_role(wrec, "responder"));
    assert_false(has_role(wrec, "front"));
    assert_true(has_role(prec, "producer") && has_role(prec, "requester"));
    assert_int_equal(json_integer_value(json_object_get(wrec, "pid")), getpid());
    assert_string_equal(json_string_value(json_object_get(wrec, "address")),
                        tempest_node_address(wn));
    assert_int_equal(stat_of(wrec, "worker", "in_flight"), 1);
    assert_int_equal(stat_of(wrec, "responder", "requests"), 3);
    assert_int_equal(stat_of(wrec, "responder", "in_flight"), 0);
    assert_int_equal(stat_of(prec, "producer", "jobs"), 3);
    assert_int_equal(stat_of(prec, "requester", "requests"), 3);
    assert_int_equal(stat_of(prec, "requester", "responders"), 1);
    json_t *q = tt_json_named(snap, "queues", "name", "mon");
    assert_non_null(q);
    assert_int_equal(json_integer_value(json_object_get(q, "ready")), 3);
    assert_int_equal(json_integer_value(json_object_get(q, "processing")), 1);
    assert_int_equal(json_integer_value(json_object_get(q, "dead")), 0);
    assert_int_equal(json_integer_value(json_object_get(q, "workers")), 1);
    json_t *svc = tt_json_named(snap, "services", "service", "echo");
    assert_non_null(svc);
    json_t *who = json_object_get(svc, "responders");
    assert_int_equal(json_array_size(who), 1);
    assert_string_equal(json_string_value(json_array_get(who, 0)), tempest_node_address(wn));
    json_decref(snap);

    /* The held job finishes; the next ones run; the malformed one is buried. */
    for (int round = 0; round < 3; round++) {
        assert_int_equal(tempest_job_done(h.jobs[round]), 0);
        tt_run_for(f->base, 100);
    }
    tt_run_for(f->base, 200);
    snap = status_of(f, NULL);
    q = tt_json_named(snap, "queues", "name", "mon");
    assert_int_equal(json_integer_value(json_object_get(q, "ready")), 0);
    assert_int_equal(json_integer_value(json_object_get(q, "processing")), 0);
    assert_int_equal(json_integer_value(json_object_get(q, "dead")), 1);
    assert_int_equal(stat_of(tt_snapshot_node(snap, tempest_node_id(wn)), "worker", "jobs"), 3);
    json_decref(snap);

    /* A freed node leaves at once, not after its TTL; its responder too. */
    tempest_requester_free(rq);
    tempest_responder_free(r);
    tempest_worker_free(w);
    long long wid = tempest_node_id(wn);
    tempest_node_free(wn);
    tt_run_for(f->base, 60);
    snap = status_of(f, NULL);
    assert_null(tt_snapshot_node(snap, wid));
    svc = tt_json_named(snap, "services", "service", "echo");
    assert_true(svc == NULL || json_array_size(json_object_get(svc, "responders")) == 0);
    prec = tt_snapshot_node(snap, tempest_node_id(f->node));
    assert_non_null(prec);
    assert_false(has_role(prec, "requester")); /* the role left with its handle */
    json_decref(snap);
}

static void test_namespaces(void **state) {
    fixture *f = *state;
    tempest_node *other = new_node(f, "blue", 50);
    assert_string_equal(tempest_node_namespace(other), "blue");
    tempest_responder *r =
        tempest_responder_new(other, &(tempest_responder_options){.service = "paint"}, NULL);
    assert_non_null(r);
    tt_run_for(f->base, 150);
    json_t *mine = status_of(f, NULL);
    json_t *blue = status_of(f, "blue");
    assert_null(tt_snapshot_node(mine, tempest_node_id(other)));
    assert_null(tt_json_named(mine, "services", "service", "paint"));
    json_t *rec = tt_snapshot_node(blue, tempest_node_id(other));
    assert_non_null(rec);
    assert_string_equal(json_string_value(json_object_get(rec, "namespace")), "blue");
    json_t *svc = tt_json_named(blue, "services", "service", "paint");
    assert_non_null(svc);
    /* the responder took its node's namespace: its registry is blue's */
    assert_string_equal(json_string_value(json_object_get(svc, "namespace")), "blue");
    assert_int_equal(tt_redis_int(&f->redis, "ZCARD tempest:blue:svc:paint"), 1);
    assert_int_equal(tt_redis_int(&f->redis, "EXISTS tempest:default:svc:paint"), 0);
    json_decref(mine);
    json_decref(blue);
    tempest_responder_free(r);
    tempest_node_free(other);
}

/* The child: a worker on its own node (short TTL) that never stops. */
static void child_run(const char *url, int fd) {
    struct event_base *base = event_base_new();
    tempest_node_options o = {.redis_url = url, .heartbeat_ms = 100, .presence_ttl_ms = 400};
    tempest_node *n = tempest_node_new(base, &o, NULL);
    while (tempest_node_id(n) == 0)
        event_base_loop(base, EVLOOP_ONCE);
    tempest_worker *w = tempest_worker_new(n, &(tempest_worker_options){.queue = "kid"}, NULL);
    if (w == NULL || tempest_worker_start(w) != 0)
        _exit(1);
    long long id = tempest_node_id(n);
    if (write(fd, &id, sizeof id) != (ssize_t)sizeof id)
        _exit(1);
    event_base_dispatch(base);
    _exit(0);
}

static void test_sigkill_expires(void **state) {
    fixture *f = *state;
    int rfd;
    pid_t pid = tt_fork_piped(child_run, f->redis.url, &rfd);
    long long id = 0;
    assert_int_equal(read(rfd, &id, sizeof id), (ssize_t)sizeof id);
    close(rfd);
    tt_run_for(f->base, 300);
    json_t *snap = status_of(f, NULL);
    assert_non_null(tt_snapshot_node(snap, id));
    json_decref(snap);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    long long killed = tt_now_ms();
    long long gone_after = -1;
    while (tt_now_ms() - killed < 3000) {
        snap = status_of(f, NULL);
        bool gone = tt_snapshot_node(snap, id) == NULL;
        json_decref(snap);
        if (gone) {
            gone_after = tt_now_ms() - killed;
            break;
        }
        tt_run_for(f->base, 25);
    }
    print_message("SIGKILLed node left the status %lld ms after the kill (TTL 400 ms)\n",
                  gone_after);
    assert_true(gone_after >= 0 && gone_after <= 400 + 150);
}

static void test_bad_arguments(void **state) {
    fixture *f = *state;
    tt_status r = {0};
    assert_int_equal(tempest_cluster_status(NULL, NULL, tt_on_status, &r), TEMPEST_EINVAL);
    assert_int_equal(tempest_cluster_status(f->node, NULL, NULL, &r), TEMPEST_EINVAL);
    assert_int_equal(tempest_cluster_status(f->node, "a b", tt_on_status, &r), TEMPEST_EINVAL);
    assert_int_equal(tempest_cluster_status(f->node, "*", tt_on_status, &r), TEMPEST_EINVAL);
    assert_false(r.done);
    tempest_error err;
    tempest_node_options o = {.redis_url = f->redis.url, .namespace = "no\nway"};
    assert_null(tempest_node_new(f->base, &o, &err));
    assert_int_equal(err.code, TEMPEST_EINVAL);
    o = (tempest_node_options){.redis_url = f->redis.url, .heartbeat_ms = -1};
    assert_null(tempest_node_new(f->base, &o, &err));
    /* A record that is not JSON is skipped, not fatal. */
    tt_redis_int(&f->redis, "ZADD tempest:default:nodes 99999999999999 777");
    tt_redis_int(&f->redis, "HSET tempest:default:nodes:records 777 %s", "{oops");
    json_t *snap = status_of(f, NULL);
    assert_null(tt_snapshot_node(snap, 777));
    json_decref(snap);
    tt_redis_int(&f->redis, "ZREM tempest:default:nodes 777");
}

static void test_freed_while_reading(void **state) {
    fixture *f = *state;
    tempest_node *n = new_node(f, NULL, 0);
    tt_status r = {0};
    assert_int_equal(tempest_cluster_status(n, NULL, tt_on_status, &r), 0);
    tempest_node_free(n); /* before the reply */
    assert_true(r.done);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, TEMPEST_ECANCELED);
    assert_null(r.snap);
    tt_run_for(f->base, 50); /* the reply arrives to nobody */
    assert_int_equal(r.calls, 1);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles_queues_services), cmocka_unit_test(test_namespaces),
        cmocka_unit_test(test_sigkill_expires),       cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_freed_while_reading),
    };
    return cmocka_run_group_tests(tests, setup, tt_node_teardown);
}
