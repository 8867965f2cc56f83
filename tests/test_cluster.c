/* SPDX-License-Identifier: MIT */
/*
 * Redis Cluster on loopback: three cluster-enabled masters (private
 * processes on free ports, persistence off). Slots against the server's own
 * CLUSTER KEYSLOT, the redis+cluster:// URL, a dead seed skipped, MOVED and
 * ASK followed by a plain connection, and the acceptance test: 50 queues
 * spread over the masters, jobs answered through workers while the slots of
 * some queues are migrated by hand (SETSLOT IMPORTING/MIGRATING, MIGRATE,
 * SETSLOT NODE) in the middle of the load; every job must be answered
 * exactly once, and no job may stay queued, in a processing list or dead.
 * Pub/sub across the masters, both ways.
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

#include "../lib/cluster.h"
#include "../lib/redis.h"
#include "harness.h"
#include "tt_node.h"

#define NMASTERS 3
#define NQUEUES 50
#define JOBS_PER_QUEUE 600
#define NJOBS (NQUEUES * JOBS_PER_QUEUE) /* at least this many jobs */
#define MAXJOBS 2000000                  /* the load goes on while slots move: at most this many */
#define WINDOW 400
#define NMOVED 10 /* queues whose slot is migrated under load */

typedef struct fixture {
    tt_redis nodes[NMASTERS];
    struct event_base *base;
    char url[512];
} fixture;

/* ---- synchronous helpers ------------------------------------------------- */

static redisReply *cmd(const tt_redis *n, const char *fmt, ...) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", n->port, tv);
    redisReply *r = NULL;
    if (c != NULL && c->err == 0) {
        va_list ap;
        va_start(ap, fmt);
        r = redisvCommand(c, fmt, ap);
        va_end(ap);
    }
    redisFree(c);
    return r;
}

static void cmd_ok(const tt_redis *n, const char *fmt, const char *a, const char *b) {
    redisReply *r = cmd(n, fmt, a, b);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", fmt, r->str);
    freeReplyObject(r);
}

static void node_id(const tt_redis *n, char *out) {
    redisReply *r = cmd(n, "CLUSTER MYID");
    assert_true(r != NULL && r->type == REDIS_REPLY_STRING && r->len == 40);
    memcpy(out, r->str, 41);
    freeReplyObject(r);
}

/* The index of the master that owns `slot`, per node 0's view. */
static int owner_of(fixture *f, int slot) {
    redisReply *r = cmd(&f->nodes[0], "CLUSTER SLOTS");
    int owner = -1;
    for (size_t i = 0; r && i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (slot >= e->element[0]->integer && slot <= e->element[1]->integer)
            for (int k = 0; k < NMASTERS; k++)
                if (e->element[2]->element[1]->integer == f->nodes[k].port)
                    owner = k;
    }
    freeReplyObject(r);
    return owner;
}

/* LLEN/SCARD... of a key on the master that owns it (0 when absent). */
static long long count_on_owner(fixture *f, const char *verb, const char *key) {
    int o = owner_of(f, tp_cluster_slot(key, strlen(key)));
    assert_true(o >= 0);
    char fmt[32];
    snprintf(fmt, sizeof fmt, "%s %%s", verb);
    return tt_redis_int(&f->nodes[o], fmt, key);
}

/* Step `step` (0..3) of moving `slot` from master `from` to `to`:
 * IMPORTING, MIGRATING, MIGRATE of every key, SETSLOT NODE everywhere. */
static int migrate_step(fixture *f, int slot, int from, int to, int step) {
    char sid[48], fid[41], tid[41];
    node_id(&f->nodes[from], fid);
    node_id(&f->nodes[to], tid);
    snprintf(sid, sizeof sid, "%d", slot);
    int keys = 0;
    if (step == 0)
        cmd_ok(&f->nodes[to], "CLUSTER SETSLOT %s IMPORTING %s", sid, fid);
    else if (step == 1)
        cmd_ok(&f->nodes[from], "CLUSTER SETSLOT %s MIGRATING %s", sid, tid);
    else if (step == 2) {
        for (;;) {
            redisReply *r = cmd(&f->nodes[from], "CLUSTER GETKEYSINSLOT %d 100", slot);
            assert_true(r != NULL && r->type == REDIS_REPLY_ARRAY);
            size_t n = r->elements;
            for (size_t i = 0; i < n; i++) {
                redisReply *m = cmd(&f->nodes[from], "MIGRATE 127.0.0.1 %d %s 0 5000",
                                    f->nodes[to].port, r->element[i]->str);
                assert_non_null(m);
                if (m->type == REDIS_REPLY_ERROR)
                    fail_msg("MIGRATE %s: %s", r->element[i]->str, m->str);
                freeReplyObject(m);
                keys++;
            }
            freeReplyObject(r);
            if (n == 0)
                break;
        }
    } else {
        cmd_ok(&f->nodes[to], "CLUSTER SETSLOT %s NODE %s", sid, tid);
        cmd_ok(&f->nodes[from], "CLUSTER SETSLOT %s NODE %s", sid, tid);
        for (int k = 0; k < NMASTERS; k++)
            if (k != from && k != to)
                cmd_ok(&f->nodes[k], "CLUSTER SETSLOT %s NODE %s", sid, tid);
    }
    return keys;
}

static void move_slot(fixture *f, int slot, int from, int to) {
    migrate_step(f, slot, from, to, 0);
    migrate_step(f, slot, from, to, 1);
    while (migrate_step(f, slot, from, to, 2) > 0)
        ;
    migrate_step(f, slot, from, to, 3);
}

/* Redirects and waits the library logged (at debug level). */
static int redirects[3]; /* MOVED, ASK, TRYAGAIN */
static int crossslot;    /* CROSSSLOT errors logged: a script spanning slots */

/* ---- fixture ------------------------------------------------------------- */

static int group_setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    if (tt_cluster_start(f->nodes, NMASTERS, f->url, sizeof f->url) != 0) {
        const char *ci = getenv("CI");
        fprintf(stderr, "cluster: cannot start a Redis Cluster%s\n",
                ci && strcmp(ci, "true") == 0 ? "" : " (skipped)");
        free(f);
        exit(ci && strcmp(ci, "true") == 0 ? 1 : 77);
    }
    f->base = event_base_new();
    *state = f;
    return f->base ? 0 : -1;
}

static int group_teardown(void **state) {
    fixture *f = *state;
    for (int i = 0; i < NMASTERS; i++)
        tt_redis_stop(&f->nodes[i]);
    event_base_free(f->base);
    free(f);
    return 0;
}

static void print_log(int level, const char *message, void *arg) {
    (void)arg;
    const char *kinds[] = {"redis cluster: MOVED", "redis cluster: ASK", "redis cluster: TRYAGAIN"};
    for (int i = 0; i < 3; i++)
        redirects[i] += strncmp(message, kinds[i], strlen(kinds[i])) == 0;
    crossslot += strstr(message, "CROSSSLOT") != NULL;
    if (level >= TEMPEST_LOG_WARN)
        fprintf(stderr, "[%lld] %s\n", tt_now_ms() % 100000, message);
}

static tempest_node *cluster_node(fixture *f, const char *url) {
    tempest_node_options o = tt_node_options(url, print_log, NULL, TEMPEST_LOG_DEBUG);
    o.connect_timeout_ms = 500;
    return tt_node_new(f->base, &o);
}

/* ---- slots and URLs ------------------------------------------------------ */

static void test_slots(void **state) {
    fixture *f = *state;
    /* Values of the Redis Cluster specification. */
    assert_int_equal(tp_cluster_slot("123456789", 9), 12739);
    assert_int_equal(tp_cluster_slot("{user1000}.following", 20),
                     tp_cluster_slot("{user1000}.followers", 20));
    assert_int_equal(tp_cluster_slot("foo{}{bar}", 10),
                     tp_cluster_slot("foo{}{bar}", 10)); /* empty tag: the whole key */
    const char *keys[] = {
        "foo",           "q",     "{q}:processing:17", "tempest", "foo{}{bar}", "foo{{bar}}zap",
        "foo{bar}{zap}", "a{b}c", "{a{b}c}:dead",      "{"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_int_equal(tp_cluster_slot(keys[i], strlen(keys[i])),
                         tt_redis_int(&f->nodes[0], "CLUSTER KEYSLOT %s", keys[i]));
    /* A queue's list and its {queue}: keys share a slot unless the name has braces. */
    assert_int_equal(tp_cluster_slot("jobs", 4), tp_cluster_slot("{jobs}:dead", 11));
    assert_int_not_equal(tp_cluster_slot("a{b}c", 5), tp_cluster_slot("{a{b}c}:dead", 12));
}

static void test_url(void **state) {
    (void)state;
    tp_redis_url u;
    char err[200];
    assert_int_equal(tp_redis_url_parse("redis+cluster://u:p%40w@10.0.0.1:7000,[::1],h3:7002", &u,
                                        err, sizeof err),
                     0);
    assert_int_equal(u.nseeds, 3);
    assert_string_equal(u.seeds[0].host, "10.0.0.1");
    assert_int_equal(u.seeds[0].port, 7000);
    assert_string_equal(u.seeds[1].host, "::1");
    assert_int_equal(u.seeds[1].port, 6379);
    assert_string_equal(u.user, "u");
    assert_string_equal(u.password, "p@w");
    assert_null(u.host);
    assert_int_equal(u.nsentinels, 0);
    tp_redis_url_clear(&u);
    assert_int_equal(tp_redis_url_parse("redis+cluster://h:1/0", &u, err, sizeof err), 0);
    tp_redis_url_clear(&u);
    assert_int_equal(tp_redis_url_parse("redis+cluster://h:1/2", &u, err, sizeof err),
                     TEMPEST_EADDR);
    assert_non_null(strstr(err, "only database 0"));
    assert_int_equal(tp_redis_url_parse("redis+cluster://", &u, err, sizeof err), TEMPEST_EADDR);
    assert_int_equal(tp_redis_url_parse("redis+cluster://h:1,", &u, err, sizeof err),
                     TEMPEST_EADDR);
}

static void test_dead_seed_skipped(void **state) {
    fixture *f = *state;
    char url[600];
    snprintf(url, sizeof url, "redis+cluster://127.0.0.1:%d,%s", tt_free_port(),
             f->url + strlen("redis+cluster://"));
    tempest_node *node = cluster_node(f, url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 5000));
    assert_true(tempest_work(node, "seedq", "x", NULL, NULL, NULL, NULL) > 0);
    tt_run_for(f->base, 100);
    assert_int_equal(count_on_owner(f, "LLEN", "seedq"), 1);
    tempest_node_free(node);
}

/* ---- MOVED and ASK on a plain connection -------------------------------- */

typedef struct replies {
    int n;
    long long last;
    char err[200];
} replies;

static void on_int(redisAsyncContext *ac, void *reply, void *privdata) {
    replies *r = privdata;
    redisReply *rep = reply;
    assert_non_null(tp_redis_from(ac));
    r->n++;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        r->last = rep->integer;
    else
        snprintf(r->err, sizeof r->err, "%s", rep ? (rep->str ? rep->str : "?") : "lost");
}

static bool redis_up(void *arg) {
    return tp_redis_state(arg) == TEMPEST_NODE_UP;
}

static bool got(void *arg) {
    return ((replies *)arg)->n > 0;
}

static void test_moved_and_ask(void **state) {
    fixture *f = *state;
    tp_redis_url url;
    char err[200];
    tp_logger log = {.fn = print_log, .level = TEMPEST_LOG_DEBUG};
    assert_int_equal(tp_redis_url_parse(f->url, &url, err, sizeof err), 0);
    tp_redis *r = tp_redis_new(f->base, &url, NULL, &log, NULL, NULL);
    tp_redis_url_clear(&url);
    assert_non_null(r);
    assert_true(tt_run_until(f->base, redis_up, r, 5000));

    /* MOVED: the slot of "mk" moves after the map was learned. */
    int slot = tp_cluster_slot("mk", 2), from = owner_of(f, slot), to = (from + 1) % NMASTERS;
    move_slot(f, slot, from, to);
    replies a = {0};
    assert_int_equal(tp_redis_cmd(r, on_int, &a, "RPUSH mk v"), 0);
    assert_true(tt_run_until(f->base, got, &a, 3000));
    assert_int_equal(a.n, 1);
    assert_string_equal(a.err, "");
    assert_int_equal(a.last, 1);
    assert_int_equal(tt_redis_int(&f->nodes[to], "LLEN mk"), 1);

    /* ASK: "ak" is in a slot half-migrated (IMPORTING/MIGRATING, key absent
     * from the source): the push goes to the target after ASKING. */
    slot = tp_cluster_slot("ak", 2);
    from = owner_of(f, slot);
    to = (from + 1) % NMASTERS;
    migrate_step(f, slot, from, to, 0);
    migrate_step(f, slot, from, to, 1);
    replies b = {0};
    assert_int_equal(tp_redis_cmd(r, on_int, &b, "RPUSH ak v"), 0);
    assert_true(tt_run_until(f->base, got, &b, 3000));
    assert_int_equal(b.n, 1);
    assert_string_equal(b.err, "");
    assert_int_equal(b.last, 1);
    migrate_step(f, slot, from, to, 3);
    assert_int_equal(tt_redis_int(&f->nodes[to], "LLEN ak"), 1);
    /* The old owner's map entry is stale: MOVED is followed again. */
    replies c = {0};
    assert_int_equal(tp_redis_cmd(r, on_int, &c, "RPUSH ak w"), 0);
    assert_true(tt_run_until(f->base, got, &c, 3000));
    assert_int_equal(c.last, 2);
    tp_redis_free(r);
}

/* ---- resharding under load ---------------------------------------------- */

typedef struct load {
    fixture *f;
    tempest_node *node;
    long long submitted, answered, failed, extra;
    long long limit; /* submit up to this many jobs */
    int inflight;
    unsigned char *phase; /* job id -> phase_now when it was submitted (or NULL) */
    unsigned char phase_now;
    long long failed_late;          /* failures of jobs submitted in a phase > 0 */
    long long timed_out, down, err; /* failures by kind */
    bool quiet;                     /* failures are counted, not printed */
    int timeout_ms;                 /* of each job; 0: 30 s */
    unsigned char *calls;           /* callbacks per job, by id - base */
    long long base;                 /* the first job's id - 1 (a node's ids start anywhere) */
    long long *ids;                 /* job id -> sequence number, for the answers */
} load;

static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg);

static void fill(load *l) {
    tempest_work_options wo = {.timeout_ms = l->timeout_ms ? l->timeout_ms : 30000};
    while (l->inflight < WINDOW && l->submitted < l->limit) {
        char queue[16];
        snprintf(queue, sizeof queue, "cq%lld", l->submitted % NQUEUES);
        json_t *args = json_pack("[I]", (json_int_t)l->submitted);
        long long id = tempest_work(l->node, queue, "echo", args, &wo, on_answer, l);
        json_decref(args);
        if (id <= 0) {
            fprintf(stderr, "tempest_work: %s\n", tempest_strerror((int)id));
            return;
        }
        if (l->base == 0)
            l->base = id - 1;
        id -= l->base;
        assert_true(id < 2 * MAXJOBS);
        if (l->phase)
            l->phase[id] = l->phase_now;
        l->submitted++;
        l->inflight++;
    }
}

static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)answer;
    load *l = arg;
    id -= l->base;
    if (id <= 0 || id >= 2 * MAXJOBS || l->calls[id]++ > 0) {
        l->extra++;
        return;
    }
    l->inflight--;
    if (status == 0)
        l->answered++;
    else {
        if (!l->quiet)
            fprintf(stderr, "job %lld: %s\n", id, tempest_strerror(status));
        l->failed++;
        l->failed_late += l->phase && l->phase[id] > 0;
        if (status == TEMPEST_ETIMEDOUT)
            l->timed_out++;
        else if (status == TEMPEST_EDOWN)
            l->down++;
        else
            l->err++;
    }
    fill(l);
}

typedef struct target {
    load *l;
    long long n;
} target;

static bool reached(void *arg) {
    target *t = arg;
    return t->l->answered + t->l->failed >= t->n;
}

/* The producer's node (l->node) and a worker node with an echo worker on
 * each of the NQUEUES queues (into w); returns the worker node. */
static tempest_node *start_load(fixture *f, load *l, tempest_worker **w) {
    l->node = cluster_node(f, f->url);
    tempest_node *wnode = cluster_node(f, f->url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, l->node, 5000));
    assert_true(tt_run_until(f->base, tt_node_up_with_id, wnode, 5000));
    for (int q = 0; q < NQUEUES; q++) {
        char name[16];
        snprintf(name, sizeof name, "cq%d", q);
        tempest_worker_options wo = {.queue = name, .concurrency = 8, .block_timeout_ms = 200};
        w[q] = tempest_worker_new(wnode, &wo, NULL);
        assert_non_null(w[q]);
        assert_int_equal(tempest_worker_on(w[q], "echo", tt_echo, NULL), 0);
        assert_int_equal(tempest_worker_start(w[q]), 0);
    }
    return wnode;
}

static void stop_load(load *l, tempest_node *wnode, tempest_worker **w) {
    for (int q = 0; q < NQUEUES; q++)
        tempest_worker_free(w[q]);
    tempest_node_free(wnode);
    tempest_node_free(l->node);
    free(l->calls);
    free(l->phase);
}

static void test_reshard_under_load(void **state) {
    fixture *f = *state;
    /* The load has no fixed size while the slots move, so that the moves
     * happen under load however fast this machine is; it stops after. */
    load l = {.f = f, .calls = calloc(2 * MAXJOBS, 1), .limit = MAXJOBS};
    assert_non_null(l.calls);
    /* The queues spread over every master. */
    int per_master[NMASTERS] = {0}, slots[NQUEUES];
    for (int q = 0; q < NQUEUES; q++) {
        char name[16];
        snprintf(name, sizeof name, "cq%d", q);
        slots[q] = tp_cluster_slot(name, strlen(name));
        per_master[owner_of(f, slots[q])]++;
    }
    for (int m = 0; m < NMASTERS; m++)
        assert_true(per_master[m] > 0);
    fprintf(stderr, "queues per master: %d %d %d\n", per_master[0], per_master[1], per_master[2]);

    tempest_worker *w[NQUEUES];
    tempest_node *wnode = start_load(f, &l, w);
    fill(&l);
    target t = {&l, NJOBS / 10};
    assert_true(tt_run_until(f->base, reached, &t, 60000));
    long long before = l.answered;

    /* Move the slots of NMOVED queues, one step at a time, with the load
     * running between the steps (while a slot is MIGRATING/IMPORTING). */
    int moved = 0, keys = 0;
    for (int q = 0; q < NMOVED; q++) {
        int from = owner_of(f, slots[q]), to = (from + 1) % NMASTERS;
        for (int step = 0; step < 4; step++) {
            int k;
            do { /* the load runs between the steps, and between the keys */
                keys += k = migrate_step(f, slots[q], from, to, step);
                tt_run_for(f->base, 10);
            } while (step == 2 && k > 0);
        }
        assert_int_equal(owner_of(f, slots[q]), to);
        moved++;
    }
    long long during = l.answered - before;
    fprintf(stderr,
            "slots moved under load: %d (%d keys migrated), answered during the moves: %lld\n",
            moved, keys, during);
    /* The moves happened under load: jobs were answered meanwhile, and the
     * producer never ran out of jobs to submit. */
    assert_true(during > 0);
    assert_true(l.submitted < MAXJOBS);
    l.limit = l.submitted + NJOBS / 10; /* and some more after the moves */
    if (l.limit < NJOBS)
        l.limit = NJOBS;
    fill(&l);
    t.n = l.limit;
    assert_true(tt_run_until(f->base, reached, &t, 120000));
    fprintf(stderr, "jobs: %lld, answered: %lld, failed: %lld, duplicate callbacks: %lld\n",
            l.limit, l.answered, l.failed, l.extra);
    fprintf(stderr, "redirects followed: %d MOVED, %d ASK, %d TRYAGAIN\n", redirects[0],
            redirects[1], redirects[2]);
    assert_true(redirects[0] > 0);
    assert_int_equal(crossslot, 0);
    assert_int_equal(l.answered, l.limit);
    assert_int_equal(l.failed, 0);
    assert_int_equal(l.extra, 0);

    /* Let the acks land, then nothing is left anywhere. */
    tt_run_for(f->base, 300);
    for (int q = 0; q < NQUEUES; q++) {
        char name[16], plist[64], dead[32];
        snprintf(name, sizeof name, "cq%d", q);
        snprintf(plist, sizeof plist, "{cq%d}:processing:%s", q, tempest_worker_id(w[q]));
        snprintf(dead, sizeof dead, "{cq%d}:dead", q);
        assert_int_equal(count_on_owner(f, "LLEN", name), 0);
        assert_int_equal(count_on_owner(f, "LLEN", plist), 0);
        assert_int_equal(count_on_owner(f, "LLEN", dead), 0);
    }
    stop_load(&l, wnode, w);
}

/* ---- the monitor's snapshot ----------------------------------------------- */

static bool has_node(json_t *snap, long long id) {
    return tt_snapshot_node(snap, id) != NULL;
}

static void h_keep(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    tempest_job **held = arg;
    *held = job;
}

static void r_echo(tempest_responder *r, tempest_request *req, void *arg) {
    (void)r, (void)arg;
    tempest_request_reply(req, tempest_request_body(req));
}

static bool job_kept(void *arg) {
    return *(tempest_job **)arg != NULL;
}

static long long int_of(json_t *obj, const char *name) {
    return json_integer_value(json_object_get(obj, name));
}

/* tempest_cluster_status() in cluster mode: the registry's keys, each
 * queue's and each service's live in different slots, on different
 * masters; the snapshot has them all, as on one Redis. */
static void test_status_in_cluster(void **state) {
    fixture *f = *state;
    tempest_node *pnode = cluster_node(f, f->url), *wnode = cluster_node(f, f->url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, pnode, 5000));
    assert_true(tt_run_until(f->base, tt_node_up_with_id, wnode, 5000));
    const char *queues[] = {"mon1", "mon2", "mon3", "mon4", "mon5", "mon6"};
    int masters[NMASTERS] = {0};
    for (size_t i = 0; i < 6; i++)
        masters[owner_of(f, tp_cluster_slot(queues[i], 4))]++;
    fprintf(stderr, "monitor: queues per master %d %d %d\n", masters[0], masters[1], masters[2]);
    tempest_worker *w[6];
    tempest_job *held[6] = {0};
    for (size_t i = 0; i < 6; i++) {
        tempest_worker_options wo = {.queue = queues[i], .concurrency = 1};
        w[i] = tempest_worker_new(wnode, &wo, NULL);
        assert_non_null(w[i]);
        assert_int_equal(tempest_worker_on(w[i], "hold", h_keep, &held[i]), 0);
        assert_int_equal(tempest_worker_start(w[i]), 0);
        for (int k = 0; k < 3; k++)
            assert_true(tempest_work(pnode, queues[i], "hold", NULL, NULL, NULL, NULL) > 0);
        assert_true(tt_run_until(f->base, job_kept, &held[i], 5000));
    }
    tempest_responder *r =
        tempest_responder_new(wnode, &(tempest_responder_options){.service = "echo"}, NULL);
    assert_non_null(r);
    assert_int_equal(tempest_responder_on(r, "*", r_echo, NULL), 0);
    tt_run_for(f->base, 300);
    /* A foreign record naming a queue whose keys span two slots. */
    const char *nodes = "tempest:default:nodes", *records = "tempest:default:nodes:records";
    assert_int_equal(tt_redis_int(&f->nodes[owner_of(f, tp_cluster_slot(nodes, strlen(nodes)))],
                                  "ZADD %s 99999999999999 424242", nodes),
                     1);
    assert_int_equal(tt_redis_int(&f->nodes[owner_of(f, tp_cluster_slot(records, strlen(records)))],
                                  "HSET %s 424242 %s", records,
                                  "{\"id\":424242,\"queues\":[{\"name\":\"a{b}c\"}]}"),
                     1);

    tt_status rd = {0};
    assert_int_equal(tempest_cluster_status(pnode, NULL, tt_on_status, &rd), 0);
    assert_true(tt_run_until(f->base, tt_status_done, &rd, 5000));
    assert_int_equal(rd.status, 0);
    assert_int_equal(rd.calls, 1);
    json_t *snap = rd.snap;
    assert_true(has_node(snap, tempest_node_id(pnode)));
    assert_true(has_node(snap, tempest_node_id(wnode)));
    assert_true(int_of(snap, "time_ms") > 0);
    for (size_t i = 0; i < 6; i++) {
        json_t *q = tt_json_named(snap, "queues", "name", queues[i]);
        assert_non_null(q);
        assert_null(json_object_get(q, "error"));
        assert_int_equal(int_of(q, "ready"), 2);
        assert_int_equal(int_of(q, "processing"), 1);
        assert_int_equal(int_of(q, "dead"), 0);
        assert_int_equal(int_of(q, "workers"), 1);
    }
    json_t *svc = tt_json_named(snap, "services", "service", "echo");
    assert_non_null(svc);
    json_t *who = json_object_get(svc, "responders");
    assert_int_equal(json_array_size(who), 1);
    assert_string_equal(json_string_value(json_array_get(who, 0)), tempest_node_address(wnode));
    json_t *bad = tt_json_named(snap, "queues", "name", "a{b}c"); /* spoils nothing else */
    assert_non_null(bad);
    assert_true(has_node(snap, 424242));
    fprintf(stderr, "monitor: a{b}c: %s\n", json_string_value(json_object_get(bad, "error")));
    assert_non_null(json_string_value(json_object_get(bad, "error")));
    json_decref(snap);

    tempest_responder_free(r);
    for (size_t i = 0; i < 6; i++)
        tempest_worker_free(w[i]); /* the held jobs go back to their queues */
    tempest_node_free(wnode);
    tempest_node_free(pnode);
}

/* ---- a master killed under load, its replica promoted ------------------ */

typedef struct failover {
    load *l;
    const tt_redis *replica;
    long long next_check;
} failover;

/* The master (0..2) that serves `slot` after the failover, asked of
 * `promoted` (master 0's replica, which now holds master 0's slots). */
static int owner_after(fixture *f, const tt_redis *promoted, int slot) {
    redisReply *r = cmd(promoted, "CLUSTER SLOTS");
    int owner = -1;
    for (size_t i = 0; r && i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (slot < e->element[0]->integer || slot > e->element[1]->integer)
            continue;
        long long port = e->element[2]->element[1]->integer;
        owner = port == promoted->port ? 0 : -1;
        for (int k = 1; k < NMASTERS; k++)
            if (port == f->nodes[k].port)
                owner = k;
    }
    freeReplyObject(r);
    assert_true(owner >= 0);
    return owner;
}

/* The load goes on (tempest_work fails fast while the handle is DOWN, so
 * the window is refilled here too) until the replica says it is master. */
static bool promoted(void *arg) {
    failover *fo = arg;
    fill(fo->l);
    if (!tt_every(&fo->next_check, 50))
        return false;
    redisReply *r = cmd(fo->replica, "ROLE");
    bool master = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                  r->element[0]->type == REDIS_REPLY_STRING &&
                  strcmp(r->element[0]->str, "master") == 0;
    freeReplyObject(r);
    return master;
}

typedef struct both {
    tempest_node *a, *b;
    load *l;
} both;

static bool both_up(void *arg) {
    both *x = arg;
    fill(x->l);
    return tempest_node_state(x->a) == TEMPEST_NODE_UP &&
           tempest_node_state(x->b) == TEMPEST_NODE_UP;
}

static bool reached_filling(void *arg) {
    target *t = arg;
    fill(t->l);
    return reached(arg);
}

/* Every master gets a replica; master 0 is SIGKILLed in the middle of a
 * load over 50 queues. Its replica is promoted, the producer's and the
 * workers' handles follow it, and the load goes on: jobs in flight at the
 * kill may fail fast (EDOWN) or be lost (replication is asynchronous: their
 * producer times out); every job submitted after the handles are back is
 * answered. Runs last: it leaves the cluster without master 0. */
static void test_failover_under_load(void **state) {
    fixture *f = *state;
    tt_redis replicas[NMASTERS];
    for (int m = 0; m < NMASTERS; m++)
        assert_int_equal(tt_cluster_add_replica(&replicas[m], &f->nodes[m]), 0);
    for (int m = 0; m < NMASTERS; m++) { /* fail over in about 2 s, not 6 */
        assert_int_equal(tt_redis_int(&f->nodes[m], "CONFIG SET cluster-node-timeout 1000"), 0);
        assert_int_equal(tt_redis_int(&replicas[m], "CONFIG SET cluster-node-timeout 1000"), 0);
    }
    load l = {.f = f,
              .calls = calloc(2 * MAXJOBS, 1),
              .phase = calloc(2 * MAXJOBS, 1),
              .limit = MAXJOBS,
              .quiet = true,
              .timeout_ms = 8000};
    assert_true(l.calls && l.phase);
    tempest_worker *w[NQUEUES];
    tempest_node *wnode = start_load(f, &l, w);
    fill(&l);
    target t = {&l, 3000};
    assert_true(tt_run_until(f->base, reached_filling, &t, 60000));

    long long killed_at = tt_now_ms(), answered_before = l.answered;
    tt_redis_kill(&f->nodes[0]);
    failover fo = {&l, &replicas[0], 0};
    assert_true(tt_run_until(f->base, promoted, &fo, 30000));
    long long promoted_at = tt_now_ms();
    both b = {l.node, wnode, &l};
    assert_true(tt_run_until(f->base, both_up, &b, 30000));
    long long up_at = tt_now_ms();
    fprintf(stderr,
            "master 0 killed after %lld answers; replica promoted %lld ms later; handles "
            "UP %lld ms after that; %lld answered meanwhile\n",
            answered_before, promoted_at - killed_at, up_at - promoted_at,
            l.answered - answered_before);

    /* Everything submitted from now on must be answered. */
    l.phase_now = 1;
    l.limit = l.submitted + NJOBS / 10;
    fill(&l);
    t.n = l.limit;
    assert_true(tt_run_until(f->base, reached_filling, &t, 60000));
    fprintf(stderr,
            "failover: %lld jobs, %lld answered, %lld failed fast (EDOWN), %lld lost "
            "(timed out), %lld other errors, %lld duplicate callbacks\n",
            l.limit, l.answered, l.down, l.timed_out, l.err, l.extra);
    assert_int_equal(l.answered + l.failed, l.limit);
    assert_int_equal(l.failed_late, 0);
    assert_int_equal(l.extra, 0);
    assert_true(l.failed <= 2 * WINDOW); /* only jobs around the kill */

    /* A lost job is one the old master acknowledged and never replicated:
     * none is stuck in a queue or a processing list of the new masters. */
    tt_run_for(f->base, 300); /* the last acks land */
    long long queued = 0, processing = 0;
    for (int q = 0; q < NQUEUES; q++) {
        char name[16], plist[64];
        snprintf(name, sizeof name, "cq%d", q);
        snprintf(plist, sizeof plist, "{cq%d}:processing:%s", q, tempest_worker_id(w[q]));
        int o = owner_after(f, &replicas[0], tp_cluster_slot(name, strlen(name)));
        const tt_redis *m = o == 0 ? &replicas[0] : &f->nodes[o];
        queued += tt_redis_int(m, "LLEN %s", name);
        processing += tt_redis_int(m, "LLEN %s", plist);
    }
    fprintf(stderr, "failover: left in queues %lld, in processing lists %lld\n", queued,
            processing);
    assert_int_equal(queued, 0);
    assert_int_equal(processing, 0);

    stop_load(&l, wnode, w);
    for (int m = 0; m < NMASTERS; m++)
        tt_redis_stop(&replicas[m]);
}

/* ---- a worker of several queues on several masters --------------------- */

typedef struct multi {
    int answered, failed;
} multi;

static void on_multi(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node, (void)id, (void)answer;
    multi *m = arg;
    if (status == 0)
        m->answered++;
    else
        m->failed++;
}

static bool multi_done(void *arg) {
    multi *m = arg;
    return m->answered + m->failed >= 3 * 100;
}

static void test_multi_queue_worker(void **state) {
    fixture *f = *state;
    /* Three queue names on three different masters. */
    const char *names[3] = {NULL, NULL, NULL};
    static char pool[64][16];
    for (int i = 0; i < 64; i++) {
        snprintf(pool[i], sizeof pool[i], "mq%d", i);
        int o = owner_of(f, tp_cluster_slot(pool[i], strlen(pool[i])));
        if (names[o] == NULL)
            names[o] = pool[i];
    }
    assert_true(names[0] && names[1] && names[2]);
    tempest_node *node = cluster_node(f, f->url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 5000));
    tempest_error err = {0};
    /* Keys that would span slots are refused. */
    tempest_worker_options bad = {.queue = "a{b}c"};
    assert_null(tempest_worker_new(node, &bad, &err));
    assert_int_equal(err.code, TEMPEST_EINVAL);
    tempest_worker_options bad_dead = {.queue = "jobs", .dead_letter = "dead"};
    assert_null(tempest_worker_new(node, &bad_dead, &err));
    tempest_worker_options ok_dead = {.queue = "jobs", .dead_letter = "{jobs}:graveyard"};
    tempest_worker *w = tempest_worker_new(node, &ok_dead, &err);
    assert_non_null(w);
    tempest_worker_free(w);

    const char *queues[] = {names[0], names[1], names[2], NULL};
    tempest_worker_options wo = {.queues = queues, .concurrency = 4, .block_timeout_ms = 100};
    w = tempest_worker_new(node, &wo, &err);
    assert_non_null(w);
    assert_int_equal(tempest_worker_on(w, "echo", tt_echo, NULL), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    multi m = {0};
    for (int i = 0; i < 3 * 100; i++)
        assert_true(tempest_work(node, queues[i % 3], "echo", NULL, NULL, on_multi, &m) > 0);
    assert_true(tt_run_until(f->base, multi_done, &m, 20000));
    assert_int_equal(m.answered, 300);
    tt_run_for(f->base, 300); /* idle: blocking takes, heartbeats per queue */
    for (int i = 0; i < 3; i++) {
        char plist[64];
        snprintf(plist, sizeof plist, "{%s}:processing:%s", queues[i], tempest_worker_id(w));
        assert_int_equal(count_on_owner(f, "LLEN", queues[i]), 0);
        assert_int_equal(count_on_owner(f, "LLEN", plist), 0);
    }
    assert_int_equal(crossslot, 0);
    tempest_worker_free(w);
    tempest_node_free(node);
}

/* ---- pub/sub across the cluster ----------------------------------------- */

typedef struct heard {
    int n;
    char data[8][32];
} heard;

static void on_heard(tempest_subscriber *sub, int what, const char *channel, const char *event,
                     const char *data, size_t len, void *arg) {
    (void)sub, (void)channel, (void)event, (void)len;
    heard *h = arg;
    if (what == TEMPEST_SUB_MESSAGE && h->n < 8)
        snprintf(h->data[h->n++], sizeof h->data[0], "%s", data);
}

static bool subscribed(void *arg) {
    return tempest_node_subscriptions(arg) == 1;
}

/* A cluster node's subscriber hears a PUBLISH sent to any master (the
 * cluster bus carries it), and its publisher reaches a plain SUBSCRIBE on
 * every master. */
static void test_pubsub_across_masters(void **state) {
    fixture *f = *state;
    tempest_node *node = cluster_node(f, f->url);
    assert_true(tt_run_until(f->base, tt_node_up_with_id, node, 5000));
    heard h = {0};
    tempest_subscriber *sub = tempest_subscriber_new(node, on_heard, &h, NULL);
    assert_non_null(sub);
    assert_int_equal(tempest_subscribe(sub, "news", false), 0);
    assert_true(tt_run_until(f->base, subscribed, node, 5000));
    for (int i = 0; i < NMASTERS; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "[\"from %d\"]", i);
        redisReply *r = cmd(&f->nodes[i], "PUBLISH news %s", msg);
        assert_non_null(r);
        freeReplyObject(r);
    }
    tt_count all = {&h.n, NMASTERS};
    assert_true(tt_run_until(f->base, tt_count_reached, &all, 5000));
    /* Each once; the order is not kept across masters (the cluster bus). */
    for (int i = 0; i < NMASTERS; i++) {
        char want[16];
        int seen = 0;
        snprintf(want, sizeof want, "from %d", i);
        for (int k = 0; k < h.n; k++)
            seen += strcmp(h.data[k], want) == 0;
        assert_int_equal(seen, 1);
    }
    assert_int_equal(h.n, NMASTERS);

    /* The other way: plain subscribers on each master hear tempest_publish. */
    redisContext *plain[NMASTERS];
    for (int i = 0; i < NMASTERS; i++) {
        struct timeval tv = {5, 0};
        plain[i] = redisConnectWithTimeout("127.0.0.1", f->nodes[i].port, tv);
        assert_true(plain[i] != NULL && plain[i]->err == 0);
        redisReply *r = redisCommand(plain[i], "SUBSCRIBE weather");
        assert_non_null(r);
        freeReplyObject(r);
        redisSetTimeout(plain[i], tv);
    }
    tempest_publisher *pub = tempest_publisher_new(node, NULL, NULL);
    assert_non_null(pub);
    assert_int_equal(tempest_publish(pub, "weather", NULL, "sunny", NULL, NULL), 0);
    tt_run_for(f->base, 100);
    for (int i = 0; i < NMASTERS; i++) {
        redisReply *m = NULL;
        assert_int_equal(redisGetReply(plain[i], (void **)&m), REDIS_OK);
        assert_true(m->type == REDIS_REPLY_ARRAY && m->elements == 3);
        assert_string_equal(m->element[2]->str, "[\"sunny\"]");
        freeReplyObject(m);
        redisFree(plain[i]);
    }
    tempest_publisher_free(pub);
    tempest_subscriber_free(sub);
    tempest_node_free(node);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_dead_seed_skipped),
        cmocka_unit_test(test_moved_and_ask),
        cmocka_unit_test(test_reshard_under_load),
        cmocka_unit_test(test_multi_queue_worker),
        cmocka_unit_test(test_pubsub_across_masters),
        cmocka_unit_test(test_status_in_cluster),
        cmocka_unit_test(test_failover_under_load),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
