/* SPDX-License-Identifier: MIT */
/*
 * Sentinel tests on loopback: one master, one replica and three sentinels
 * (private processes on free ports, persistence off, stopped by PID). A
 * node finds the master through the sentinels, skipping dead ones; then,
 * under a steady load of jobs, the master is SIGKILLed, the sentinels
 * promote the replica, and the node and the worker follow it. Replication
 * is asynchronous, so a few jobs may be lost: they are counted and
 * printed, not forbidden; every job must still get exactly one callback.
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
#include "tt_node.h"

#define NSENTINELS 3
#define MAX_JOBS 200000
#define WINDOW 16
#define JOB_TIMEOUT_MS 2000

typedef struct fixture {
    tt_redis master, replica, sentinels[NSENTINELS];
    struct event_base *base;
    char url[512];
} fixture;

/* ---- helpers ------------------------------------------------------------- */

/* The master port that sentinel `s` names for "m", or -1. */
static int sentinel_master_port(const tt_redis *s) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    int port = -1;
    if (c != NULL && c->err == 0) {
        redisReply *r = redisCommand(c, "SENTINEL get-master-addr-by-name m");
        if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
            port = atoi(r->element[1]->str);
        freeReplyObject(r);
    }
    redisFree(c);
    return port;
}

/* Polls `fn` (sleeping 50 ms between tries) until true or `ms` pass. */
static bool poll_until(bool (*fn)(fixture *), fixture *f, int ms) {
    long long deadline = tt_now_ms() + ms;
    while (!fn(f)) {
        if (tt_now_ms() > deadline)
            return false;
        tt_run_for(f->base, 50);
    }
    return true;
}

static bool replica_synced(fixture *f) {
    return tt_redis_int(&f->master, "WAIT 1 50") == 1;
}

/* Every sentinel knows the replica and the two other sentinels. */
static bool sentinels_ready(fixture *f) {
    for (int i = 0; i < NSENTINELS; i++) {
        if (tt_redis_int(&f->sentinels[i], "SENTINEL replicas m") != 1 ||
            tt_redis_int(&f->sentinels[i], "SENTINEL sentinels m") != NSENTINELS - 1)
            return false;
    }
    return true;
}

static void sentinel_unavailable(const char *why) {
    const char *ci = getenv("CI");
    if (ci != NULL && strcmp(ci, "true") == 0) {
        fprintf(stderr, "FAIL: %s, and CI=true forbids skipping\n", why);
        exit(1);
    }
    fprintf(stderr, "SKIP: %s (apt-get install redis-server redis-sentinel)\n", why);
    exit(77);
}

/* Exits 77 (or fails under CI=true) when redis-server has no sentinel mode. */
static void require_sentinel(void) {
    tt_redis s;
    if (tt_sentinel_start(&s, "probe", tt_free_port()) != 0)
        sentinel_unavailable("redis-server --sentinel does not start");
    tt_redis_stop(&s);
}

static int setup(void **state) {
    static fixture f;
    memset(&f, 0, sizeof f);
    f.base = event_base_new();
    if (tt_redis_start(&f.master, NULL) != 0)
        return -1;
    char port[16];
    snprintf(port, sizeof port, "%d", f.master.port);
    const char *replica[] = {"--replicaof", "127.0.0.1", port, NULL};
    if (tt_redis_start(&f.replica, replica) != 0 || !poll_until(replica_synced, &f, 10000))
        return -1;
    size_t n = (size_t)snprintf(f.url, sizeof f.url, "redis+sentinel://");
    for (int i = 0; i < NSENTINELS; i++) {
        if (tt_sentinel_start(&f.sentinels[i], "m", f.master.port) != 0)
            return -1;
        n += (size_t)snprintf(f.url + n, sizeof f.url - n, "%s127.0.0.1:%d", i ? "," : "",
                              f.sentinels[i].port);
    }
    snprintf(f.url + n, sizeof f.url - n, "/m");
    if (!poll_until(sentinels_ready, &f, 15000)) {
        fprintf(stderr, "sentinels did not discover each other and the replica\n");
        return -1;
    }
    *state = &f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    for (int i = 0; i < NSENTINELS; i++)
        tt_redis_stop(&f->sentinels[i]);
    tt_redis_stop(&f->replica);
    tt_redis_stop(&f->master);
    event_base_free(f->base);
    return 0;
}

static void print_log(int level, const char *message, void *arg) {
    (void)arg;
    if (level >= TEMPEST_LOG_INFO && strstr(message, "redis:") != NULL)
        fprintf(stderr, "[%lld] %s\n", tt_now_ms() % 100000, message);
}

static tempest_node *sentinel_node_cb(fixture *f, const char *url, tempest_state_fn *on_state) {
    tempest_node_options o = tt_node_options(url, print_log, NULL, TEMPEST_LOG_INFO);
    o.connect_timeout_ms = 500;
    o.on_state = on_state;
    return tt_node_new(f->base, &o);
}

static tempest_node *sentinel_node(fixture *f, const char *url) {
    return sentinel_node_cb(f, url, NULL);
}

static bool node_not_up(void *arg) {
    return tempest_node_state(arg) == TEMPEST_NODE_DOWN;
}

/* ---- resolving ----------------------------------------------------------- */

static void test_resolve_skips_dead_sentinels(void **state) {
    fixture *f = *state;
    char url[600];
    /* A dead sentinel first: it is skipped. */
    snprintf(url, sizeof url, "redis+sentinel://127.0.0.1:%d,%s", tt_free_port(),
             f->url + strlen("redis+sentinel://"));
    tempest_node *node = sentinel_node(f, url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 5000));
    assert_true(tempest_work(node, "sq0", "x", NULL, NULL, NULL, NULL) > 0);
    tt_run_for(f->base, 50);
    assert_int_equal(tt_redis_int(&f->master, "LLEN sq0"), 1);
    tempest_node_free(node);

    /* No sentinel at all: a normal DOWN with backoff. */
    snprintf(url, sizeof url, "redis+sentinel://127.0.0.1:%d,127.0.0.1:%d/m", tt_free_port(),
             tt_free_port());
    node = sentinel_node(f, url);
    assert_true(tt_run_until(f->base, node_not_up, node, 3000));
    assert_non_null(strstr(tempest_node_errstr(node), "no sentinel gave the address"));
    tempest_node_free(node);

    /* A master name that the sentinels do not know. */
    snprintf(url, sizeof url, "redis+sentinel://127.0.0.1:%d/nosuch", f->sentinels[0].port);
    node = sentinel_node(f, url);
    assert_true(tt_run_until(f->base, node_not_up, node, 3000));
    assert_non_null(strstr(tempest_node_errstr(node), "does not know master"));
    tempest_node_free(node);
}

/* ---- failover under load ------------------------------------------------- */

typedef struct load {
    fixture *f;
    tempest_node *node;
    bool producing;
    int inflight;
    long long submitted, refused; /* tempest_work > 0; EDOWN at once */
    long long answered, edown, timedout, other, extra;
    unsigned char *calls; /* callbacks per job, by id - base */
    long long base;       /* the first job's id - 1 (a node's ids start anywhere) */
} load;

static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg);

static void fill(load *l) {
    tempest_work_options wo = {.timeout_ms = JOB_TIMEOUT_MS};
    while (l->producing && l->inflight < WINDOW && l->submitted < MAX_JOBS - 1) {
        json_t *args = json_pack("[I]", (json_int_t)l->submitted);
        long long id = tempest_work(l->node, "sq", "echo", args, &wo, on_answer, l);
        json_decref(args);
        if (id == TEMPEST_EDOWN) {
            l->refused++;
            return; /* the ticker tries again */
        }
        if (l->base == 0)
            l->base = id - 1;
        assert_true(id - l->base > 0 && id - l->base < MAX_JOBS);
        l->submitted++;
        l->inflight++;
    }
}

static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)answer;
    load *l = arg;
    id -= l->base;
    if (id <= 0 || id >= MAX_JOBS || l->calls[id]++ > 0) {
        l->extra++;
        return;
    }
    l->inflight--;
    if (status == 0)
        l->answered++;
    else if (status == TEMPEST_EDOWN)
        l->edown++;
    else if (status == TEMPEST_ETIMEDOUT)
        l->timedout++;
    else
        l->other++;
    fill(l);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    fill(arg);
}

typedef struct wait_answers {
    load *l;
    long long target;
} wait_answers;

static bool answers_reached(void *arg) {
    wait_answers *w = arg;
    return w->l->answered >= w->target;
}

static bool all_called_back(void *arg) {
    return ((load *)arg)->inflight == 0;
}

typedef struct wait_promotion {
    fixture *f;
    long long next;
    int port;
} wait_promotion;

static bool promoted(void *arg) {
    wait_promotion *p = arg;
    if (!tt_every(&p->next, 100))
        return false;
    p->port = sentinel_master_port(&p->f->sentinels[0]);
    return p->port == p->f->replica.port;
}

static void test_failover_under_load(void **state) {
    fixture *f = *state;
    load l = {.f = f, .calls = calloc(MAX_JOBS, 1)};
    assert_non_null(l.calls);
    l.node = sentinel_node(f, f->url);
    tempest_node *wnode = sentinel_node(f, f->url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, l.node, 5000));
    assert_true(tt_run_until(f->base, tt_node_up_with_id, wnode, 5000));
    tempest_worker_options wo = {.queue = "sq", .concurrency = 8, .block_timeout_ms = 200};
    tempest_worker *w = tempest_worker_new(wnode, &wo, NULL);
    assert_non_null(w);
    assert_int_equal(tempest_worker_on(w, "echo", tt_echo, NULL), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    struct event *tick = event_new(f->base, -1, EV_PERSIST, on_tick, &l);
    event_add(tick, &(struct timeval){0, 20000});

    /* Steady load on the first master. */
    l.producing = true;
    fill(&l);
    wait_answers wa = {&l, 300};
    assert_true(tt_run_until(f->base, answers_reached, &wa, 10000));
    long long before = l.answered;
    unsigned long long taken_before = tempest_worker_taken(w);

    /* Crash the master; the sentinels promote the replica. */
    long long t0 = tt_now_ms();
    tt_redis_kill(&f->master);
    wait_promotion wp = {.f = f};
    bool ok = tt_run_until(f->base, promoted, &wp, 15000);
    long long t_promoted = tt_now_ms() - t0;
    if (!ok)
        fail_msg("no promotion within 15 s (sentinel names port %d)", wp.port);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, l.node, 10000));
    long long t_node_up = tt_now_ms() - t0;

    /* The load carries on against the new master. */
    long long when_up = l.answered;
    wa.target = l.answered + 300;
    assert_true(tt_run_until(f->base, answers_reached, &wa, 15000));
    long long t_resumed = tt_now_ms() - t0;
    assert_true(tempest_worker_taken(w) > taken_before);

    /* Drain: every job gets its one callback (answer, EDOWN or timeout). */
    l.producing = false;
    assert_true(tt_run_until(f->base, all_called_back, &l, JOB_TIMEOUT_MS + 5000));
    tt_run_for(f->base, 100);
    print_message("failover: promoted after %lld ms, node UP after %lld ms, load resumed "
                  "(+300 answers) after %lld ms\n",
                  t_promoted, t_node_up, t_resumed);
    print_message(
        "jobs: %lld submitted (%lld refused at once with EDOWN); %lld answered "
        "(%lld before the kill, %lld when the node was UP again), %lld failed fast (EDOWN), "
        "%lld timed out (lost in the failover), %lld other, %lld duplicate callbacks\n",
        l.submitted, l.refused, l.answered, before, when_up, l.edown, l.timedout, l.other, l.extra);
    assert_int_equal(l.extra, 0);
    assert_int_equal(l.other, 0);
    assert_int_equal(l.answered + l.edown + l.timedout, l.submitted);
    long long called = 0;
    for (long long id = 1; id < MAX_JOBS; id++)
        called += l.calls[id] == 1;
    assert_int_equal(called, l.submitted); /* none lost without a callback */

    /* One more job after the failover succeeds. */
    l.producing = true;
    wa.target = l.answered + 1;
    fill(&l);
    assert_true(tt_run_until(f->base, answers_reached, &wa, 5000));
    l.producing = false;
    assert_true(tt_run_until(f->base, all_called_back, &l, JOB_TIMEOUT_MS + 2000));

    event_free(tick);
    tempest_worker_free(w);
    tempest_node_free(wnode);
    tempest_node_free(l.node);
    free(l.calls);
}

/* ---- a demoted master ---------------------------------------------------- */

static bool seen_readonly, seen_not_master;
static int job_calls, job_status;

static void note_state(tempest_node *node, int state, const char *reason, void *arg) {
    (void)node;
    (void)arg;
    if (state == TEMPEST_NODE_DOWN && strstr(reason, "READONLY") != NULL)
        seen_readonly = true;
    if (state == TEMPEST_NODE_DOWN && strstr(reason, "is not a master") != NULL)
        seen_not_master = true;
}

static void on_one(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)id;
    (void)answer;
    (void)arg;
    job_calls++;
    job_status = status;
}

static bool demotion_seen(void *arg) {
    (void)arg;
    return seen_readonly && seen_not_master && job_calls > 0;
}

/*
 * A master turned replica under a live connection answers writes with
 * -READONLY: the connection drops, and the sentinels (here a lone one, which
 * cannot fail over) still name it, so ROLE refuses it on every retry.
 */
static void test_demoted_master(void **state) {
    fixture *f = *state;
    tt_redis m, r, s;
    assert_int_equal(tt_redis_start(&m, NULL), 0);
    char port[16];
    snprintf(port, sizeof port, "%d", m.port);
    const char *replica[] = {"--replicaof", "127.0.0.1", port, NULL};
    assert_int_equal(tt_redis_start(&r, replica), 0);
    assert_int_equal(tt_sentinel_start(&s, "d", m.port), 0);
    char url[128];
    snprintf(url, sizeof url, "redis+sentinel://127.0.0.1:%d/d", s.port);
    seen_readonly = seen_not_master = false;
    job_calls = 0;
    tempest_node *node = sentinel_node_cb(f, url, note_state);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 5000));
    assert_int_equal(tt_redis_int(&r, "REPLICAOF NO ONE"), 0);
    assert_int_equal(tt_redis_int(&m, "REPLICAOF 127.0.0.1 %d", r.port), 0);
    tempest_work_options wo = {.timeout_ms = 2000};
    assert_true(tempest_work(node, "dq", "x", NULL, &wo, on_one, NULL) > 0);
    assert_true(tt_run_until(f->base, demotion_seen, NULL, 5000));
    assert_int_equal(job_calls, 1);
    assert_int_equal(job_status, TEMPEST_EREDIS);
    assert_int_not_equal(tempest_node_state(node), TEMPEST_NODE_UP);
    tempest_node_free(node);
    tt_redis_stop(&s);
    tt_redis_stop(&r);
    tt_redis_stop(&m);
}

int main(void) {
    tt_require_redis();
    require_sentinel();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolve_skips_dead_sentinels),
        cmocka_unit_test(test_demoted_master),
        cmocka_unit_test(test_failover_under_load),
    };
    return cmocka_run_group_tests_name("sentinel", tests, setup, teardown);
}
