/* SPDX-License-Identifier: MIT */
/*
 * Fault tests against private redis-servers, loopback only, each bounded in
 * time and count: worker processes (tests/fault_worker) SIGKILLed and
 * restarted under load, Redis SIGKILLed and restarted with an fsync'ed AOF
 * under load, a node and front started while Redis is down, and bad input
 * of every kind (jobs, answers, RESP, HTTP) beside a steady trickle of good
 * traffic that must keep flowing. Child processes die with the test
 * (PR_SET_PDEATHSIG) and are SIGKILLed and reaped by every teardown. The
 * measured counts (duplicates, re-deliveries) are printed in the test log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_proc.h"
#include "tt_node.h"

#define WAIT_MS 5000
#define MAX_KIDS 4
#define JOB_TIMEOUT_MS 60000

/* Tight time bounds are multiplied by this: 10 under valgrind (its
 * preload library is in LD_PRELOAD), else 1. */
static int slow = 1;

/* ---- fixture ------------------------------------------------------------ */

/* A fault_worker process and the read end of its stdout. */
typedef struct child {
    pid_t pid; /* 0: not running */
    int out;
    char wid[32];
} child;

/* A producer that keeps `window` jobs in flight until `total` are done. */
typedef struct load {
    const char *queue;
    int total, window;
    int next;             /* next logical job never sent */
    int *resend, nresend; /* logical jobs whose push failed with EDOWN */
    int inflight;
    int *answers;         /* per logical job: final answers (status 0) */
    long long *answer_id; /* per logical job: the id that was answered */
    int *of_id;           /* job id -> logical job + 1 */
    long long base;       /* the first job's id - 1: every id here is relative to
                           * it, so that the arrays indexed by id stay small (a
                           * node's ids start anywhere; lib/queue.c) */
    size_t cap;
    int answered, edown_sync, edown_async, errors;
} load;

/* One HTTP request of the trickle, on a connection of its own (a reused
 * keep-alive connection would race the front's idle timeout whenever the
 * test's loop stalls). Freed by the tick after the request ends. */
typedef struct trickle_conn {
    struct fx *f;
    struct evhttp_connection *conn; /* NULL: free slot */
    bool done;
} trickle_conn;

#define TRICKLE_CONNS 64

/* Good traffic beside the bad input: a job and an HTTP request every 20 ms. */
typedef struct trickle {
    struct event *ticker;
    trickle_conn conns[TRICKLE_CONNS];
    int jobs_sent, jobs_ok, jobs_bad;
    int http_sent, http_ok, http_bad;
    long long last_done_id; /* a job of the producer that is finished */
} trickle;

typedef struct fx {
    tt_redis redis;
    struct event_base *base;
    redisContext *sync;
    tempest_node *node; /* the producer's, or the front's */
    tempest_node *wnode;
    tempest_worker *workers[2];
    tempest_front *front;
    int http_port;
    child kids[MAX_KIDS];
    load load;
    trickle tr;
    bool closing; /* teardown: callbacks do nothing */
    int states[4];
} fx;

static void on_log(int level, const char *message, void *arg) {
    (void)arg;
    if (level >= TEMPEST_LOG_ERROR)
        fprintf(stderr, "  log: %s\n", message);
}

static void on_state(tempest_node *node, int state, const char *reason, void *arg) {
    (void)node;
    (void)reason;
    fx *f = arg;
    if (state >= 0 && state < 4)
        f->states[state]++;
}

static tempest_node_options node_opts(fx *f, const char *url) {
    tempest_node_options o = tt_node_options(url, on_log, NULL, TEMPEST_LOG_ERROR);
    o.on_state = on_state;
    o.state_arg = f;
    return o;
}

/* A node with no state callback (f->states counts f->node's only). */
static tempest_node *new_node(fx *f) {
    tempest_node_options no = node_opts(f, f->redis.url);
    no.on_state = NULL;
    tempest_node *node = tempest_node_new(f->base, &no, NULL);
    assert_non_null(node);
    assert_true(tt_run_until(f->base, tt_node_up, node, WAIT_MS));
    return node;
}

static int fx_new(void **state, const char *const *extra, bool with_redis) {
    fx *f = calloc(1, sizeof *f);
    if (f == NULL || (f->base = event_base_new()) == NULL)
        return -1;
    *state = f;
    if (with_redis && tt_redis_start(&f->redis, extra) != 0)
        return -1;
    for (int i = 0; i < MAX_KIDS; i++)
        f->kids[i].out = -1;
    return 0;
}

static int setup(void **state) {
    return fx_new(state, NULL, true);
}

static int setup_aof(void **state) {
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
    return fx_new(state, aof, true);
}

static int setup_no_redis(void **state) {
    return fx_new(state, NULL, false);
}

static void child_kill(child *c);

static int teardown(void **state) {
    fx *f = *state;
    if (f == NULL)
        return 0;
    f->closing = true;
    for (int i = 0; i < MAX_KIDS; i++)
        child_kill(&f->kids[i]);
    if (f->tr.ticker)
        event_free(f->tr.ticker);
    for (int i = 0; i < TRICKLE_CONNS; i++)
        if (f->tr.conns[i].conn)
            evhttp_connection_free(f->tr.conns[i].conn);
    tempest_front_free(f->front);
    for (int i = 0; i < 2; i++)
        tempest_worker_free(f->workers[i]);
    tempest_node_free(f->wnode);
    tempest_node_free(f->node);
    if (f->base)
        event_base_free(f->base);
    redisFree(f->sync);
    free(f->load.resend);
    free(f->load.answers);
    free(f->load.answer_id);
    free(f->load.of_id);
    if (f->redis.port > 0)
        tt_redis_stop(&f->redis);
    free(f);
    return 0;
}

/* ---- synchronous Redis from the test ------------------------------------ */

/* A command on the test's own connection, reconnecting once; NULL on error. */
static redisReply *cmd(fx *f, const char *fmt, ...) {
    redisReply *r = NULL;
    for (int attempt = 0; attempt < 2 && r == NULL; attempt++) {
        if (f->sync == NULL || f->sync->err) {
            redisFree(f->sync);
            struct timeval tv = {5, 0};
            f->sync = redisConnectWithTimeout("127.0.0.1", f->redis.port, tv);
            if (f->sync == NULL || f->sync->err || redisSetTimeout(f->sync, tv) != REDIS_OK)
                continue;
        }
        va_list ap;
        va_start(ap, fmt);
        r = redisvCommand(f->sync, fmt, ap);
        va_end(ap);
    }
    return r;
}

/* The job id of a raw job (its fourth element) less `base`, or -1. */
static long long raw_job_id(const char *raw, size_t len, long long base) {
    json_t *job = json_loadb(raw, len, 0, NULL);
    long long id = json_is_integer(json_array_get(job, 3))
                       ? json_integer_value(json_array_get(job, 3)) - base
                       : -1;
    json_decref(job);
    return id;
}

/* Marks (counts) in `seen[id]` the jobs of every processing list of
 * `queue`; returns how many jobs they hold. `seen` may be NULL. */
static long long processing_jobs(fx *f, const char *queue, int *seen, size_t cap) {
    long long n = 0;
    redisReply *keys = cmd(f, "KEYS {%s}:processing:*", queue);
    assert_non_null(keys);
    for (size_t i = 0; i < keys->elements; i++) {
        redisReply *list = cmd(f, "LRANGE %s 0 -1", keys->element[i]->str);
        assert_non_null(list);
        for (size_t j = 0; j < list->elements; j++) {
            long long id = raw_job_id(list->element[j]->str, list->element[j]->len, f->load.base);
            if (seen && id > 0 && (size_t)id < cap)
                seen[id]++;
            n++;
        }
        freeReplyObject(list);
    }
    freeReplyObject(keys);
    return n;
}

/* Fills `count[id]` from the hash `deliveries`; returns the number of jobs
 * delivered twice or more. */
static int deliveries(fx *f, int *count, size_t cap, int *max) {
    int twice = 0;
    redisReply *h = cmd(f, "HGETALL deliveries");
    assert_non_null(h);
    *max = 0;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        long long id = atoll(h->element[i]->str) - f->load.base;
        int n = atoi(h->element[i + 1]->str);
        if (id > 0 && (size_t)id < cap)
            count[id] = n;
        twice += n >= 2;
        *max = n > *max ? n : *max;
    }
    freeReplyObject(h);
    return twice;
}

/* Job ids of the dead letters of `queue` into `ids` (up to `max`); returns
 * how many dead letters there are. */
static long long dead_ids(fx *f, const char *queue, long long *ids, size_t max) {
    redisReply *list = cmd(f, "LRANGE {%s}:dead 0 -1", queue);
    assert_non_null(list);
    long long n = (long long)list->elements;
    for (size_t i = 0; i < list->elements && i < max; i++) {
        json_t *letter = json_loadb(list->element[i]->str, list->element[i]->len, 0, NULL);
        const char *job = json_string_value(json_object_get(letter, "job"));
        ids[i] = job ? raw_job_id(job, strlen(job), f->load.base) : -1;
        json_decref(letter);
    }
    freeReplyObject(list);
    return n;
}

typedef struct one_answer {
    int calls, status;
    char text[160];
} one_answer;

static void on_one_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg);
static bool answered(void *arg);
static int tcp_connect(int port);

/* ---- child processes ----------------------------------------------------- */

static void fault_worker_path(char *out, size_t size) {
    const char *root = getenv("TEMPEST_BUILD_ROOT");
    if (root && *root) {
        snprintf(out, size, "%s/tests/fault_worker", root);
        return;
    }
    /* Beside this test's executable. */
    ssize_t n = readlink("/proc/self/exe", out, size - sizeof "fault_worker");
    out[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(out, '/');
    strcpy(slash ? slash + 1 : out, "fault_worker");
}

/* Between fork and exec: dies with the test, stdout to the pipe. */
static void child_exec(const char *exe, char *const *argv, int out, pid_t parent) {
    tt_child_prepare(parent);
    signal(SIGPIPE, SIG_DFL); /* SIG_IGN would outlive the exec */
    if (dup2(out, STDOUT_FILENO) == -1)
        _exit(127);
    syscall(SYS_close_range, 3U, ~0U, 0U); /* sockets and pipes of the test */
    execv(exe, argv);
    _exit(127);
}

static void child_spawn(child *c, char *const *argv) {
    char exe[PATH_MAX];
    int fds[2];
    fault_worker_path(exe, sizeof exe);
    assert_int_equal(access(exe, X_OK), 0);
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        child_exec(exe, argv, fds[1], parent);
    close(fds[1]);
    *c = (child){.pid = pid, .out = fds[0]};
}

/* Waits for the "ready <worker id>" line. */
static bool child_ready(child *c, int timeout_ms) {
    char line[64];
    size_t len = 0;
    long long deadline = tt_now_ms() + timeout_ms;
    while (len < sizeof line - 1 && tt_now_ms() < deadline) {
        struct pollfd p = {.fd = c->out, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - tt_now_ms())) != 1)
            continue;
        ssize_t n = read(c->out, line + len, 1);
        if (n <= 0)
            return false;
        if (line[len++] == '\n') {
            line[len] = '\0';
            return sscanf(line, "ready %31s", c->wid) == 1;
        }
    }
    return false;
}

static void start_worker(fx *f, child *c, const char *queue, int concurrency, int ttl_ms,
                         int delay_us) {
    char conc[16], ttl[16], delay[16];
    snprintf(conc, sizeof conc, "%d", concurrency);
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    snprintf(delay, sizeof delay, "%d", delay_us);
    char *const argv[] = {"fault_worker",  "--redis", f->redis.url, "--queue", (char *)queue,
                          "--concurrency", conc,      "--ttl",      ttl,       "--delay-us",
                          delay,           NULL};
    child_spawn(c, argv);
    assert_true(child_ready(c, WAIT_MS));
}

static void child_kill(child *c) {
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        while (waitpid(c->pid, NULL, 0) == -1 && errno == EINTR) {
        }
    }
    if (c->out >= 0)
        close(c->out);
    *c = (child){.out = -1};
}

static bool child_alive(const child *c) {
    int status;
    pid_t r = c->pid > 0 ? waitpid(c->pid, &status, WNOHANG) : -1;
    if (r == c->pid) /* say how it died, for the log */
        print_message("child %d ended: %s %d\n", (int)c->pid,
                      WIFSIGNALED(status) ? "signal" : "exit status",
                      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    return r == 0;
}

/* SIGTERM (a graceful stop), then the exit status; -1 when it had to be
 * killed after `timeout_ms`. The sanitizers report at that exit. */
static int child_stop(child *c, int timeout_ms) {
    int status = -1;
    long long deadline = tt_now_ms() + timeout_ms;
    kill(c->pid, SIGTERM);
    while (tt_now_ms() < deadline) {
        if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
            c->pid = 0;
            child_kill(c);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        usleep(5000);
    }
    child_kill(c);
    return -1;
}

static void stop_kids(fx *f, int n) {
    for (int i = 0; i < n; i++)
        assert_int_equal(child_stop(&f->kids[i], 15000), 0);
}

/* ---- the producer -------------------------------------------------------- */

static void load_fill(fx *f);

static bool load_map(load *l, long long id, int job) {
    if ((size_t)id >= l->cap) {
        size_t cap = (size_t)id * 2 + 1024;
        int *m = realloc(l->of_id, cap * sizeof *m);
        if (m == NULL)
            return false;
        memset(m + l->cap, 0, (cap - l->cap) * sizeof *m);
        l->of_id = m;
        l->cap = cap;
    }
    l->of_id[id] = job + 1;
    return true;
}

static void on_load_answer(tempest_node *node, long long id, int status, json_t *answer,
                           void *arg) {
    (void)node;
    fx *f = arg;
    load *l = &f->load;
    if (f->closing)
        return;
    bool echoed = json_integer_value(json_array_get(answer, 0)) == id; /* the worker's [id] */
    id -= l->base;
    int job = id > 0 && (size_t)id < l->cap ? l->of_id[id] - 1 : -1;
    l->inflight--;
    if (job >= 0 && status == 0 && echoed) {
        l->answers[job]++;
        l->answer_id[job] = id;
        l->answered++;
    } else if (job >= 0 && status == TEMPEST_EDOWN) {
        l->edown_async++; /* the RPUSH was lost with Redis: send it again */
        l->resend[l->nresend++] = job;
    } else {
        fprintf(stderr, "job %lld (logical %d): status %s\n", id, job, tempest_strerror(status));
        l->errors++;
    }
    load_fill(f);
}

static void load_fill(fx *f) {
    load *l = &f->load;
    tempest_work_options wo = {.timeout_ms = JOB_TIMEOUT_MS};
    while (!f->closing && l->inflight < l->window && (l->nresend > 0 || l->next < l->total)) {
        int job = l->nresend > 0 ? l->resend[l->nresend - 1] : l->next;
        long long id = tempest_work(f->node, l->queue, "record", NULL, &wo, on_load_answer, f);
        if (id == TEMPEST_EDOWN) {
            l->edown_sync++; /* Redis is down: try again later */
            return;
        }
        if (id > 0 && l->base == 0)
            l->base = id - 1;
        if (id < 0 || !load_map(l, id - l->base, job)) {
            l->errors++;
            return;
        }
        if (l->nresend > 0)
            l->nresend--;
        else
            l->next++;
        l->inflight++;
    }
}

static void load_init(fx *f, const char *queue, int total, int window) {
    load *l = &f->load;
    *l = (load){.queue = queue, .total = total, .window = window, .base = l->base};
    l->resend = calloc((size_t)total, sizeof *l->resend);
    l->answers = calloc((size_t)total, sizeof *l->answers);
    l->answer_id = calloc((size_t)total, sizeof *l->answer_id);
    assert_true(l->resend && l->answers && l->answer_id);
    assert_true(load_map(l, total, -1)); /* room for the usual ids */
}

/* Jobs neither answered nor dead-lettered; cancels the dead ones' waits. */
static int load_missing(fx *f, long long ndead, const long long *dead) {
    load *l = &f->load;
    int missing = 0;
    for (long long i = 0; i < ndead; i++) {
        int job = dead[i] > 0 && (size_t)dead[i] < l->cap ? l->of_id[dead[i]] - 1 : -1;
        if (job >= 0 && l->answers[job] == 0)
            l->answers[job] = -1; /* dead, never answered */
        if (dead[i] > 0)
            (void)tempest_work_cancel(f->node, dead[i] + l->base);
    }
    for (int i = 0; i < l->total; i++)
        missing += l->answers[i] == 0;
    return missing;
}

typedef struct until {
    fx *f;
    int answered; /* stop at this many answers */
    long long next_check, dead;
} until;

/* True at `answered` answers, or when answers plus dead letters cover the
 * load (the dead-letter count is read from Redis every 100 ms). */
static bool load_reached(void *arg) {
    until *u = arg;
    load *l = &u->f->load;
    if (l->answered >= u->answered || l->answered == l->total)
        return true;
    if (tempest_node_state(u->f->node) != TEMPEST_NODE_UP || !tt_every(&u->next_check, 100))
        return false;
    u->dead = tt_redis_int(&u->f->redis, "LLEN {%s}:dead", l->queue);
    load_fill(u->f); /* sends what failed while Redis was down */
    return l->answered + u->dead >= l->total;
}

/* Explains a load that stalled. */
static void load_dump(fx *f) {
    load *l = &f->load;
    fprintf(stderr, "load on %s: %d answered, %d in flight, %d pending at the node, next %d\n",
            l->queue, l->answered, l->inflight, (int)tempest_work_pending(f->node), l->next);
    fprintf(stderr, "  LLEN %s = %lld, in processing lists %lld\n", l->queue,
            tt_redis_int(&f->redis, "LLEN %s", l->queue), processing_jobs(f, l->queue, NULL, 0));
    redisReply *keys = cmd(f, "KEYS {%s}:*", l->queue);
    for (size_t i = 0; keys && i < keys->elements; i++) {
        redisReply *t = cmd(f, "TYPE %s", keys->element[i]->str);
        redisReply *ttl = cmd(f, "PTTL %s", keys->element[i]->str);
        fprintf(stderr, "  %s (%s, pttl %lld)\n", keys->element[i]->str, t ? t->str : "?",
                ttl ? ttl->integer : -3);
        freeReplyObject(t);
        freeReplyObject(ttl);
    }
    freeReplyObject(keys);
    for (int i = 0; i < l->next; i++) {
        long long id = l->answer_id[i];
        if (l->answers[i] != 0)
            continue;
        for (size_t j = 1; j < l->cap && id == 0; j++)
            id = l->of_id[j] == i + 1 ? (long long)j : 0;
        fprintf(stderr, "  job %lld never answered: delivered %lld times\n", id + l->base,
                tt_redis_int(&f->redis, "HGET deliveries %lld", id + l->base));
    }
    for (int i = 0; i < MAX_KIDS; i++)
        if (f->kids[i].pid > 0)
            fprintf(stderr, "  worker %s (pid %d): %s\n", f->kids[i].wid, (int)f->kids[i].pid,
                    child_alive(&f->kids[i]) ? "alive" : "gone");
}

static bool load_run(fx *f, int answered, int timeout_ms, long long *dead) {
    until u = {.f = f, .answered = answered};
    bool ok = tt_run_until(f->base, load_reached, &u, timeout_ms);
    *dead = u.dead;
    if (!ok)
        load_dump(f);
    return ok;
}

typedef struct settled {
    fx *f;
    const char *queue;
    long long next_check;
} settled;

/* The queue and every processing list are empty (checked every 100 ms). */
static bool queue_settled(void *arg) {
    settled *s = arg;
    if (!tt_every(&s->next_check, 100))
        return false;
    return tt_redis_int(&s->f->redis, "LLEN %s", s->queue) == 0 &&
           processing_jobs(s->f, s->queue, NULL, 0) == 0;
}

/* ---- a. workers SIGKILLed under load ------------------------------------ */

#define A_JOBS 10000
#define A_WORKERS 4
#define A_KILL_EVERY 300

static void test_workers_killed(void **state) {
    fx *f = *state;
    long long t0 = tt_now_ms(), ndead = 0;
    f->node = new_node(f);
    for (int i = 0; i < A_WORKERS; i++)
        start_worker(f, &f->kids[i], "fa", 4, 1000, 50);
    load_init(f, "fa", A_JOBS, 200);
    load_fill(f);
    int kills = 0;
    while (f->load.answered + ndead < A_JOBS) {
        int at = (kills + 1) * A_KILL_EVERY;
        assert_true(load_run(f, at, 20000 * slow, &ndead));
        assert_int_equal(f->load.errors, 0);
        if (f->load.answered >= at && f->load.answered < A_JOBS) {
            child *c = &f->kids[kills++ % A_WORKERS];
            child_kill(c);
            start_worker(f, c, "fa", 4, 1000, 50);
        }
    }
    long long *dead = calloc((size_t)ndead + 1, sizeof *dead);
    assert_non_null(dead);
    ndead = dead_ids(f, "fa", dead, (size_t)ndead);
    assert_int_equal(load_missing(f, ndead, dead), 0);
    free(dead);
    for (int i = 0; i < A_JOBS; i++)
        assert_true(f->load.answers[i] == 1 || f->load.answers[i] == -1);
    assert_int_equal(f->load.answered + ndead, A_JOBS);
    assert_int_equal(tempest_work_pending(f->node), 0);

    /* After a reap window, nothing is left in the queue or in hand. */
    settled s = {.f = f, .queue = "fa"};
    assert_true(tt_run_until(f->base, queue_settled, &s, 6000));
    assert_int_equal(tt_redis_int(&f->redis, "LLEN fa"), 0);
    assert_int_equal(processing_jobs(f, "fa", NULL, 0), 0);

    int *count = calloc(A_JOBS + 1, sizeof *count), max;
    assert_non_null(count);
    int twice = deliveries(f, count, A_JOBS + 1, &max);
    for (int i = 0; i < A_JOBS; i++)
        if (f->load.answers[i] == 1)
            assert_true(count[f->load.answer_id[i]] >= 1);
    free(count);
    print_message("delivered twice: %d (of %d jobs; %d workers SIGKILLed; most deliveries of "
                  "one job %d; dead-lettered %lld; %lld ms)\n",
                  twice, A_JOBS, kills, max, ndead, tt_now_ms() - t0);
    assert_true(kills >= A_JOBS / A_KILL_EVERY - 2);
    stop_kids(f, A_WORKERS);
}

/* ---- b. Redis SIGKILLed under load -------------------------------------- */

#define B_JOBS 3000
#define B_WORKERS 2

static const char *const aof_args[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};

/* Jobs answered by the producer so far: marks their ids in `mark`. */
static int answered_ids(const load *l, char *mark, size_t cap) {
    int n = 0;
    for (int i = 0; i < l->total; i++)
        if (l->answers[i] == 1 && (size_t)l->answer_id[i] < cap) {
            mark[l->answer_id[i]] = 1;
            n++;
        }
    return n;
}

static bool all_kids_alive(fx *f, int n) {
    for (int i = 0; i < n; i++)
        if (!child_alive(&f->kids[i]))
            return false;
    return true;
}

/* While Redis is down: tempest_work fails at once with TEMPEST_EDOWN. */
static void check_fail_fast(fx *f) {
    tempest_work_options wo = {.timeout_ms = JOB_TIMEOUT_MS};
    assert_true(tt_run_until(f->base, tt_node_not_up, f->node, WAIT_MS));
    for (int i = 0; i < 10; i++) {
        long long t = tt_now_ms();
        long long id = tempest_work(f->node, "fb", "record", NULL, &wo, on_load_answer, f);
        assert_int_equal(id, TEMPEST_EDOWN);
        assert_true(tt_now_ms() - t < 5 * slow);
        f->load.edown_sync++;
        tt_run_for(f->base, 30);
    }
    assert_string_equal(tempest_node_errstr(f->node), "redis is not connected");
}

static void test_redis_killed(void **state) {
    fx *f = *state;
    size_t cap = B_JOBS * 4;
    long long ndead = 0, t0 = tt_now_ms();
    f->node = new_node(f);
    for (int i = 0; i < B_WORKERS; i++)
        start_worker(f, &f->kids[i], "fb", 4, 2000, 200);
    load_init(f, "fb", B_JOBS, 100);
    load_fill(f);
    assert_true(load_run(f, B_JOBS / 2, 20000 * slow, &ndead));

    /* Before the kill: what the producer saw answered, how often each job
     * was delivered, and which jobs the processing lists hold. The loop
     * does not run from here to the kill, so `before` is frozen. */
    char *before = calloc(cap, 1);
    int *count0 = calloc(cap, sizeof *count0), *count1 = calloc(cap, sizeof *count1);
    int *held = calloc(cap, sizeof *held), max;
    assert_true(before && count0 && count1 && held);
    int nbefore = answered_ids(&f->load, before, cap);
    deliveries(f, count0, cap, &max);
    long long nheld = processing_jobs(f, "fb", held, cap);
    tt_redis_kill(&f->redis);
    redisFree(f->sync);
    f->sync = NULL;

    check_fail_fast(f);
    tt_run_for(f->base, 300);
    assert_true(all_kids_alive(f, B_WORKERS));
    assert_int_equal(tt_redis_restart(&f->redis, aof_args), 0);
    assert_true(tt_run_until(f->base, tt_node_up, f->node, WAIT_MS));
    assert_true(load_run(f, B_JOBS, 20000 * slow, &ndead));
    assert_int_equal(f->load.errors, 0);
    assert_true(all_kids_alive(f, B_WORKERS));
    for (int i = 0; i < B_WORKERS; i++) /* reconnected: their presence is back */
        assert_int_equal(tt_redis_int(&f->redis, "EXISTS {fb}:alive:%s", f->kids[i].wid), 1);

    long long *dead = calloc((size_t)ndead + 1, sizeof *dead);
    assert_non_null(dead);
    ndead = dead_ids(f, "fb", dead, (size_t)ndead);
    assert_int_equal(load_missing(f, ndead, dead), 0);
    free(dead);
    assert_int_equal(f->load.answered + ndead, B_JOBS);

    /* At least once, and no more: a job answered before the kill is
     * delivered again only if its ack had not run in Redis when the
     * processing lists were read (with appendfsync always, an ack that ran
     * was on disk before Redis replied to that read). */
    tt_run_for(f->base, 500);
    int twice = deliveries(f, count1, cap, &max), redone = 0, redone_unacked = 0, unacked = 0;
    for (size_t id = 1; id < cap; id++) {
        if (!before[id])
            continue;
        unacked += held[id] > 0;
        if (count1[id] > count0[id]) {
            redone++;
            redone_unacked += held[id] > 0;
        }
    }
    /* Once the load is done, the workers' processing lists drain. */
    settled st = {.f = f, .queue = "fb"};
    (void)tt_run_until(f->base, queue_settled, &st, 3000);
    memset(held, 0, cap * sizeof *held);
    long long left = processing_jobs(f, "fb", held, cap), left_answered = 0;
    for (size_t id = 1; id < cap; id++)
        left_answered += held[id] > 0 && f->load.of_id[id] > 0 &&
                         f->load.answer_id[f->load.of_id[id] - 1] == (long long)id;
    print_message("redis killed after %d answers: %d of them re-delivered after the restart "
                  "(%d with an ack not yet run; %d acks pending at the kill, %lld jobs in "
                  "processing lists); EDOWN: %d at tempest_work, %d after the push; delivered "
                  "twice overall: %d; dead-lettered %lld; %lld ms\n",
                  nbefore, redone, redone_unacked, unacked, nheld, f->load.edown_sync,
                  f->load.edown_async, twice, ndead, tt_now_ms() - t0);
    print_message("after the load: %lld jobs left in live workers' processing lists "
                  "(%lld of them answered)\n",
                  left, left_answered);
    assert_int_equal(redone, redone_unacked);
    free(before);
    free(count0);
    free(count1);
    free(held);
    stop_kids(f, B_WORKERS);
    assert_int_equal(left, 0);
}

/* The minimal case of what test_redis_killed shows: a job answered while
 * Redis is down. The answer reaches the producer (it does not go through
 * Redis), the ack is lost with the connection, and once Redis is back the
 * job must not stay in the live worker's processing list (from where it
 * would be run again whenever that worker stops or dies). */
static void h_hold(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    *(tempest_job **)arg = job;
}

static bool job_held(void *arg) {
    return *(tempest_job **)arg != NULL;
}

static bool nodes_down(void *arg) {
    fx *f = arg;
    return tt_node_not_up(f->node) && tt_node_not_up(f->wnode);
}

static bool nodes_up(void *arg) {
    fx *f = arg;
    return tt_node_up(f->node) && tt_node_up(f->wnode);
}

static void test_answer_while_redis_down(void **state) {
    fx *f = *state;
    tempest_job *held = NULL;
    one_answer a = {0};
    f->node = new_node(f);
    f->wnode = new_node(f);
    tempest_worker_options wo = {
        .queue = "fr", .block_timeout_ms = 200, .heartbeat_ms = 250, .ttl_ms = 1000};
    f->workers[0] = tempest_worker_new(f->wnode, &wo, NULL);
    assert_non_null(f->workers[0]);
    assert_int_equal(tempest_worker_on(f->workers[0], "hold", h_hold, &held), 0);
    assert_int_equal(tempest_worker_start(f->workers[0]), 0);
    assert_true(tempest_work(f->node, "fr", "hold", NULL, NULL, on_one_answer, &a) > 0);
    assert_true(tt_run_until(f->base, job_held, &held, WAIT_MS));
    char key[64];
    snprintf(key, sizeof key, "{fr}:processing:%s", tempest_worker_id(f->workers[0]));
    assert_int_equal(tt_redis_int(&f->redis, "LLEN %s", key), 1);

    tt_redis_kill(&f->redis);
    assert_true(tt_run_until(f->base, nodes_down, f, WAIT_MS));
    json_t *answer = json_pack("[i]", 1);
    assert_int_equal(tempest_job_answer(held, answer, false), 0);
    json_decref(answer);
    assert_true(tt_run_until(f->base, answered, &a, WAIT_MS));
    assert_int_equal(a.status, 0); /* the producer has its answer */

    assert_int_equal(tt_redis_restart(&f->redis, aof_args), 0);
    assert_true(tt_run_until(f->base, nodes_up, f, WAIT_MS));
    tt_run_for(f->base, 2500); /* heartbeats, reaps */
    long long left = tt_redis_int(&f->redis, "LLEN %s", key);
    print_message("answered while Redis was down: %lld job(s) left in %s\n", left, key);
    assert_int_equal(left, 0);
}

/* A worker SIGKILLed after it answered a job but before the answer left
 * the process must not lose the job (at least once): the ack may only
 * remove it from the processing list once the answer is out. The
 * producer's listener here has a full accept queue (backlog 0, one
 * connection never accepted), so the worker's connect to it waits in
 * SYN_SENT for a second: the answer waits with it, in the worker. */
static int stalled_listener(int *port, int *filler) {
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 0), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    *filler = tcp_connect(*port); /* fills the accept queue */
    assert_true(*filler >= 0);
    return fd;
}

typedef struct job_state {
    fx *f;
    const char *processing;
    long long next_check;
} job_state;

/* Delivered once, and no longer in the worker's processing list. */
static bool answered_and_acked(void *arg) {
    job_state *js = arg;
    if (!tt_every(&js->next_check, 10))
        return false;
    return tt_redis_int(&js->f->redis, "HGET deliveries 42") == 1 &&
           tt_redis_int(&js->f->redis, "LLEN %s", js->processing) == 0;
}

static void test_worker_killed_before_answer_left(void **state) {
    fx *f = *state;
    int port, filler, lfd;
    char job[128], processing[64];
    lfd = stalled_listener(&port, &filler);
    start_worker(f, &f->kids[0], "fk", 1, 1000, 0);
    snprintf(processing, sizeof processing, "{fk}:processing:%s", f->kids[0].wid);
    snprintf(job, sizeof job, "[\"record\",[],\"127.0.0.1:%d\",42]", port);
    redisReply *r = cmd(f, "RPUSH fk %s", job);
    assert_non_null(r);
    freeReplyObject(r);

    job_state js = {.f = f, .processing = processing};
    bool acked = tt_run_until(f->base, answered_and_acked, &js, 900);
    child_kill(&f->kids[0]); /* the answer is still waiting for the connect */
    start_worker(f, &f->kids[1], "fk", 1, 1000, 0); /* its reaper runs after 1 s */
    tt_run_for(f->base, 2500);
    long long delivered = tt_redis_int(&f->redis, "HGET deliveries 42");
    long long where = tt_redis_int(&f->redis, "LLEN fk") + processing_jobs(f, "fk", NULL, 0) +
                      tt_redis_int(&f->redis, "LLEN {fk}:dead");
    print_message("worker killed before its answer left: acked before the kill: %s; "
                  "delivered %lld time(s); %lld copy(ies) left in Redis\n",
                  acked ? "yes" : "no", delivered, where);
    close(filler);
    close(lfd);
    assert_true(delivered >= 2 || where == 1); /* redone, or still there to redo */
}

/* ---- HTTP over evhttp, on the test's loop ------------------------------- */

typedef struct http_call {
    bool done;
    int status; /* 0: no response */
    char body[256];
    long long started, finished;
} http_call;

static void on_http_done(struct evhttp_request *req, void *arg) {
    http_call *c = arg;
    c->done = true;
    c->finished = tt_now_ms();
    if (req == NULL)
        return;
    c->status = evhttp_request_get_response_code(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_copyout(in, c->body, sizeof c->body - 1);
    c->body[n == (size_t)-1 ? 0 : n] = '\0';
}

static bool call_done(void *arg) {
    return ((http_call *)arg)->done;
}

/* One request on a connection of its own; runs the loop until it ends. */
static void http_do(fx *f, http_call *c, enum evhttp_cmd_type cmd, const char *uri,
                    const char *body, size_t len) {
    struct evhttp_connection *conn =
        evhttp_connection_base_new(f->base, NULL, "127.0.0.1", (ev_uint16_t)f->http_port);
    assert_non_null(conn);
    struct evhttp_request *req = evhttp_request_new(on_http_done, c);
    assert_non_null(req);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    if (body)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    *c = (http_call){.started = tt_now_ms()};
    assert_int_equal(evhttp_make_request(conn, req, cmd, uri), 0);
    bool done = tt_run_until(f->base, call_done, c, WAIT_MS);
    evhttp_connection_free(conn);
    assert_true(done);
}

/* ---- c. Redis down when the node starts ---------------------------------- */

static void h_up(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    json_t *a = json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "up");
    if (a == NULL || tempest_job_answer(job, a, false) != 0)
        fprintf(stderr, "h_up: answer failed\n");
    json_decref(a);
}

static bool state_down_seen(void *arg) {
    return ((fx *)arg)->states[TEMPEST_NODE_DOWN] > 0;
}

static void expect_503_fast(fx *f, int n) {
    for (int i = 0; i < n; i++) {
        http_call c;
        http_do(f, &c, EVHTTP_REQ_GET, "/down", NULL, 0);
        assert_int_equal(c.status, 503);
        assert_string_equal(c.body, "tempest: not connected\n");
        assert_true(c.finished - c.started < 100 * slow);
    }
}

static void test_redis_down_at_start(void **state) {
    fx *f = *state;
    /* A port on which nothing listens, that the same server takes later. */
    assert_int_equal(tt_redis_start(&f->redis, NULL), 0);
    tt_redis_kill(&f->redis);
    tempest_node_options no = node_opts(f, f->redis.url);
    f->node = tempest_node_new(f->base, &no, NULL);
    assert_non_null(f->node);
    tempest_front_options fo = {.http = "127.0.0.1:0"};
    f->front = tempest_front_new(f->node, &fo, NULL);
    assert_non_null(f->front);
    f->http_port = tempest_front_port(f->front);

    expect_503_fast(f, 3); /* connecting, or already down */
    assert_true(tt_run_until(f->base, state_down_seen, f, WAIT_MS));
    tt_run_for(f->base, 300); /* a few reconnect attempts fail */
    expect_503_fast(f, 3);
    assert_int_equal(f->states[TEMPEST_NODE_UP], 0);
    assert_int_equal(tempest_front_pending(f->front), 0);

    long long t = tt_now_ms();
    assert_int_equal(tt_redis_restart(&f->redis, NULL), 0);
    assert_true(tt_run_until(f->base, tt_node_up, f->node, 1000));
    print_message("node up %lld ms after redis-server answered PING\n", tt_now_ms() - t);
    f->wnode = new_node(f);
    f->workers[0] =
        tempest_worker_new(f->wnode, &(tempest_worker_options){.block_timeout_ms = 200}, NULL);
    assert_non_null(f->workers[0]);
    assert_int_equal(tempest_worker_on(f->workers[0], "url", h_up, NULL), 0);
    assert_int_equal(tempest_worker_start(f->workers[0]), 0);
    for (int i = 0; i < 3; i++) {
        http_call c;
        http_do(f, &c, EVHTTP_REQ_GET, "/up", NULL, 0);
        assert_int_equal(c.status, 200);
        assert_string_equal(c.body, "up");
    }
    assert_int_equal(f->states[TEMPEST_NODE_UP], 1);
}

/* ---- d. bad input beside good traffic ----------------------------------- */

#define D_HTTP_MAX_BODY 4096
#define D_IO_TIMEOUT_MS 500
#define TRICKLE_MS 20

/* Worker of queue "dq": answers `[id]`. */
static void h_job(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    json_t *a = json_pack("[I]", (json_int_t)tempest_job_id(job));
    if (a == NULL || tempest_job_answer(job, a, false) != 0)
        fprintf(stderr, "h_job: answer failed\n");
    json_decref(a);
}

/* Worker of the front's queue "fq": /ok, and answers of a wrong shape. */
static void h_url(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    json_t *req = json_array_get(tempest_job_args(job), 0);
    const char *url = json_string_value(json_object_get(req, "url"));
    json_t *a;
    if (url && strcmp(url, "/shape/1") == 0)
        a = json_pack("{s:i}", "status", 200);
    else if (url && strcmp(url, "/shape/2") == 0)
        a = json_pack("[i]", 200);
    else if (url && strcmp(url, "/shape/3") == 0)
        a = json_pack("[s,{},s]", "200", "x");
    else
        a = json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "ok");
    if (a == NULL || tempest_job_answer(job, a, false) != 0)
        fprintf(stderr, "h_url: answer failed\n");
    json_decref(a);
}

static void on_trickle_job(tempest_node *node, long long id, int status, json_t *answer,
                           void *arg) {
    (void)node;
    fx *f = arg;
    if (f->closing)
        return;
    if (status == 0 && json_integer_value(json_array_get(answer, 0)) == id) {
        f->tr.jobs_ok++;
        f->tr.last_done_id = id;
    } else {
        fprintf(stderr, "trickle job %lld: %s\n", id, tempest_strerror(status));
        f->tr.jobs_bad++;
    }
}

static void on_trickle_http(struct evhttp_request *req, void *arg) {
    trickle_conn *tc = arg;
    fx *f = tc->f;
    char body[16] = "";
    tc->done = true;
    if (f->closing)
        return;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (req)
        evbuffer_copyout(evhttp_request_get_input_buffer(req), body, sizeof body - 1);
    if (code == 200 && strcmp(body, "ok") == 0) {
        f->tr.http_ok++;
    } else {
        fprintf(stderr, "trickle request: status %d body '%s'\n", code, body);
        f->tr.http_bad++;
    }
}

/* A slot with a new connection to the front; frees those that are done. */
static trickle_conn *trickle_slot(fx *f) {
    trickle_conn *free_slot = NULL;
    for (int i = 0; i < TRICKLE_CONNS; i++) {
        trickle_conn *tc = &f->tr.conns[i];
        if (tc->conn && tc->done) {
            evhttp_connection_free(tc->conn);
            tc->conn = NULL;
        }
        if (tc->conn == NULL && free_slot == NULL)
            free_slot = tc;
    }
    if (free_slot == NULL)
        return NULL;
    *free_slot = (trickle_conn){.f = f};
    free_slot->conn =
        evhttp_connection_base_new(f->base, NULL, "127.0.0.1", (ev_uint16_t)f->http_port);
    return free_slot->conn ? free_slot : NULL;
}

static void on_trickle_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    fx *f = arg;
    trickle *t = &f->tr;
    tempest_work_options wo = {.timeout_ms = WAIT_MS * slow};
    t->jobs_sent++;
    if (tempest_work(f->node, "dq", "job", NULL, &wo, on_trickle_job, f) < 0)
        t->jobs_bad++;
    trickle_conn *tc = trickle_slot(f);
    t->http_sent++;
    struct evhttp_request *req = tc ? evhttp_request_new(on_trickle_http, tc) : NULL;
    if (req == NULL) {
        t->http_bad++;
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    if (evhttp_make_request(tc->conn, req, EVHTTP_REQ_GET, "/ok") != 0)
        t->http_bad++;
}

static void start_worker_on(fx *f, int i, const char *queue, const char *action,
                            tempest_handler_fn *fn) {
    tempest_worker_options wo = {.queue = queue, .concurrency = 4, .block_timeout_ms = 200};
    f->workers[i] = tempest_worker_new(f->wnode, &wo, NULL);
    assert_non_null(f->workers[i]);
    assert_int_equal(tempest_worker_on(f->workers[i], action, fn, NULL), 0);
    assert_int_equal(tempest_worker_start(f->workers[i]), 0);
}

/* A producer node that also carries the front, a worker node for "dq"
 * and "fq", and the trickle of good traffic. A front's io timeout shorter
 * than the test's loop stalls (a 10 MB job decoded in this process, under
 * valgrind) would cut the trickle's fresh connections. */
static void start_bad_env(fx *f, int io_timeout_ms) {
    f->node = new_node(f);
    assert_int_equal(tempest_node_listen(f->node), 0);
    tempest_front_options fo = {.http = "127.0.0.1:0",
                                .queue = "fq",
                                .timeout_ms = WAIT_MS * slow,
                                .max_body = D_HTTP_MAX_BODY,
                                .io_timeout_ms = io_timeout_ms,
                                .header_timeout_ms = 4 * io_timeout_ms};
    f->front = tempest_front_new(f->node, &fo, NULL);
    assert_non_null(f->front);
    f->http_port = tempest_front_port(f->front);
    f->wnode = new_node(f);
    start_worker_on(f, 0, "dq", "job", h_job);
    start_worker_on(f, 1, "fq", "url", h_url);
    f->tr.ticker = event_new(f->base, -1, EV_PERSIST, on_trickle_tick, f);
    struct timeval tv = {0, TRICKLE_MS * 1000};
    assert_non_null(f->tr.ticker);
    assert_int_equal(event_add(f->tr.ticker, &tv), 0);
    tt_run_for(f->base, 100);
}

static bool trickle_settled(void *arg) {
    trickle *t = arg;
    return t->jobs_ok + t->jobs_bad == t->jobs_sent && t->http_ok + t->http_bad == t->http_sent;
}

/* Stops the trickle once it sent `at_least` jobs and requests: every one
 * of them was answered, and well. */
static void check_trickle(fx *f, int at_least) {
    trickle *t = &f->tr;
    for (int i = 0; i < 4 * at_least && t->jobs_sent < at_least; i++)
        tt_run_for(f->base, TRICKLE_MS);
    event_del(t->ticker);
    assert_true(tt_run_until(f->base, trickle_settled, t, WAIT_MS * slow + 1000));
    print_message("good traffic beside: %d jobs, %d HTTP requests, all answered\n", t->jobs_ok,
                  t->http_ok);
    assert_int_equal(t->jobs_bad, 0);
    assert_int_equal(t->http_bad, 0);
    assert_true(t->jobs_ok >= at_least);
    assert_true(t->http_ok >= at_least);
    assert_int_equal(tempest_front_pending(f->front), 0);
    assert_int_equal(tempest_worker_in_hand(f->workers[0]), 0);
    assert_int_equal(tempest_worker_in_hand(f->workers[1]), 0);
}

/* -- d1. bad jobs: dead-lettered with their reason, the worker goes on -- */

typedef struct bad_job {
    const char *raw;
    size_t len;
    const char *reason; /* exact, or a prefix when it ends with '*' */
    int found;
} bad_job;

static bool reason_is(const char *got, const char *want) {
    size_t n = strlen(want);
    if (n > 0 && want[n - 1] == '*')
        return strncmp(got, want, n - 1) == 0;
    return strcmp(got, want) == 0;
}

/* Whether dead letter `j` (parsed; NULL when it is not valid JSON) is
 * that of bad job `b`. A letter whose job is not valid UTF-8 is not valid
 * JSON itself (Lua's cjson copies the bytes as they are): it is matched on
 * those bytes. */
static bool letter_is(const bad_job *b, json_t *j, const char *letter, size_t len) {
    json_t *job = json_object_get(j, "job");
    if (j != NULL)
        return json_string_length(job) == b->len &&
               memcmp(json_string_value(job), b->raw, b->len) == 0;
    return memchr(b->raw, 0xff, b->len) != NULL && memmem(letter, len, "\xff\xfe", 2) != NULL;
}

/* Counts dead letter `letter` in its bad job: +1, and +100 when its reason
 * is the expected one. */
static void match_letter(bad_job *bad, size_t n, const char *letter, size_t len) {
    json_t *j = json_loadb(letter, len, JSON_ALLOW_NUL, NULL);
    const char *reason = json_string_value(json_object_get(j, "reason"));
    const char *queue = json_string_value(json_object_get(j, "queue"));
    if (j == NULL) {
        const char *r = memmem(letter, len, "\"reason\":\"", 10);
        reason = r ? r + 10 : NULL;
        queue = memmem(letter, len, "\"queue\":\"dq\"", 12) ? "dq" : NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!letter_is(&bad[i], j, letter, len))
            continue;
        bad[i].found++;
        if (getenv("TT_SHOW_REASONS"))
            fprintf(stderr, "bad job %zu: '%.100s'\n", i, reason);
        if (reason && reason_is(reason, bad[i].reason) && queue && strcmp(queue, "dq") == 0)
            bad[i].found += 100;
        else
            fprintf(stderr, "dead letter of bad job %zu: reason '%.120s'\n", i, reason);
    }
    json_decref(j);
}

static bool dead_reached(void *arg) {
    until *u = arg;
    if (!tt_every(&u->next_check, 50))
        return false;
    return tt_redis_int(&u->f->redis, "LLEN {dq}:dead") >= u->answered;
}

static void test_bad_jobs(void **state) {
    fx *f = *state;
    size_t huge_len = 10u << 20;
    char *huge = malloc(huge_len + 2);
    assert_non_null(huge);
    memset(huge, 'a', huge_len + 2);
    huge[0] = huge[huge_len + 1] = '"';
    /* Exact reasons; jansson's own wording after the column is a prefix. */
    bad_job bad[] = {
        {"not json", 0, "job: invalid JSON at line 1 column 3: *", 0},
        {"[\"job\",[],null,1", 0, "job: invalid JSON at line 1 column 16: *", 0},
        {"{\"a\":1}", 0, "job: expected an array of 4 elements, got an object", 0},
        {"null", 0, "job: invalid JSON at line 1 column 4: *", 0},
        {"[]", 0, "job: expected an array of 4 elements, got 0", 0},
        {"[\"job\",[],null]", 0, "job: expected an array of 4 elements, got 3", 0},
        {"[\"job\",[],null,1,5]", 0, "job: expected an array of 4 elements, got 5", 0},
        {"[1,[],null,1]", 0, "job: element 1 (action) must be a non-empty string, got 1", 0},
        {"[\"\",[],null,1]", 0,
         "job: element 1 (action) must be a non-empty string, got an empty string", 0},
        {"[\"job\",{},null,1]", 0, "job: element 2 (args) must be an array, got an object", 0},
        {"[\"job\",[],5,1]", 0,
         "job: element 3 (respond_to) must be a non-empty string or null, got 5", 0},
        {"[\"job\",[],null,-1]", 0, "job: element 4 (job_id) must be an integer >= 0, got -1", 0},
        {"[\"job\",[],null,\"7\"]", 0,
         "job: element 4 (job_id) must be an integer >= 0, got a string", 0},
        /* 10 MiB: a JSON string, which jansson refuses at the top level */
        {huge, huge_len + 2, "job: invalid JSON at line 1 column 10485762: *", 0},
        {"[\"job\",[\"\xff\xfe\"],null,1]", 0,
         "job: invalid JSON at line 1 column 9: unable to decode byte 0xff*", 0},
    };
    size_t n = sizeof bad / sizeof bad[0];
    start_bad_env(f, 60000);
    for (size_t i = 0; i < n; i++) {
        bad[i].len = bad[i].len ? bad[i].len : strlen(bad[i].raw);
        redisReply *r = cmd(f, "RPUSH dq %b", bad[i].raw, bad[i].len);
        assert_non_null(r);
        freeReplyObject(r);
        tt_run_for(f->base, 20);
    }
    until u = {.f = f, .answered = (int)n};
    assert_true(tt_run_until(f->base, dead_reached, &u, 10000 * slow));
    tt_run_for(f->base, 200);
    redisReply *list = cmd(f, "LRANGE {dq}:dead 0 -1");
    assert_non_null(list);
    assert_int_equal(list->elements, n);
    for (size_t i = 0; i < list->elements; i++)
        match_letter(bad, n, list->element[i]->str, list->element[i]->len);
    freeReplyObject(list);
    for (size_t i = 0; i < n; i++) {
        if (bad[i].found != 101)
            fprintf(stderr, "bad job %zu ('%.40s'): found %d\n", i, bad[i].raw, bad[i].found);
        assert_int_equal(bad[i].found, 101);
    }
    free(huge);
    check_trickle(f, 10);
    assert_true(tempest_worker_taken(f->workers[0]) >= n + 10);
    settled st = {.f = f, .queue = "dq"}; /* acks trail the answers */
    assert_true(tt_run_until(f->base, queue_settled, &st, 2000 * slow));
    assert_int_equal(tt_redis_int(&f->redis, "LLEN {dq}:dead"), n);
}

/* -- blocking clients in a thread, while the test's loop runs ----------- */

static bool flag_set(void *arg) {
    return atomic_load((atomic_bool *)arg);
}

static void run_thread(fx *f, void *(*fn)(void *), void *arg, atomic_bool *done, int timeout_ms) {
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fn, arg), 0);
    bool ok = tt_run_until(f->base, flag_set, done, timeout_ms);
    pthread_join(t, NULL); /* every socket of the thread has a 5 s timeout */
    assert_true(ok);
}

static int tcp_connect(int port) {
    struct timeval tv = {5, 0};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return; /* the peer closed: what it replied is still readable */
        data += n;
        len -= (size_t)n;
    }
}

/* Reads until the peer closes (then *closed) or `until` is seen, up to
 * cap - 1 bytes; NUL-terminates. */
static size_t read_reply(int fd, char *buf, size_t cap, const char *until, bool *closed) {
    size_t len = 0;
    *closed = false;
    buf[0] = '\0';
    while (len < cap - 1 && !(until && strstr(buf, until))) {
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
            *closed = true;
            break;
        }
        if (n < 0)
            break; /* timed out */
        len += (size_t)n;
        buf[len] = '\0';
    }
    return len;
}

static int host_port(const char *addr) {
    const char *colon = strrchr(addr, ':');
    return colon ? atoi(colon + 1) : -1;
}

/* -- d2. bad answers, unknown actions -------------------------------------- */

static void on_one_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node;
    (void)id;
    one_answer *a = arg;
    if (status == TEMPEST_ECANCELED)
        return; /* a teardown frees the node: `a` may be gone with its test */
    char *s = answer ? json_dumps(answer, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    a->calls++;
    a->status = status;
    snprintf(a->text, sizeof a->text, "%s", s ? s : "");
    free(s);
}

static bool answered(void *arg) {
    return ((one_answer *)arg)->calls > 0;
}

typedef struct answers_client {
    atomic_bool done;
    int port;
    long long pending, finished;
    char replies[6][200];
} answers_client;

/* Answers the producer's listener as a worker would, but wrongly. */
static void *answers_thread(void *arg) {
    answers_client *ac = arg;
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", ac->port, tv);
    redisReply *r[6] = {0};
    /* As a libtempest peer, for the precise replies (a foreign worker gets
     * +OK for all of these: test_queue.c, test_listener_answers_foreign). */
    redisReply *hello = c && !c->err ? redisCommand(c, "TEMPEST PEER 1") : NULL;
    bool peer = hello != NULL && hello->type == REDIS_REPLY_STATUS;
    freeReplyObject(hello);
    if (peer && redisSetTimeout(c, tv) == REDIS_OK) {
        r[0] = redisCommand(c, "x 999999 [1]");
        r[1] = redisCommand(c, "job %lld [1]", ac->finished);
        r[2] = redisCommand(c, "x %lld {bad", ac->pending);
        r[3] = redisCommand(c, "x %lld \"ok\"", ac->pending);
        r[4] = redisCommand(c, "x %lld \"again\"", ac->pending);
        r[5] = redisCommand(c, "PING");
    }
    for (int i = 0; i < 6; i++) {
        snprintf(ac->replies[i], sizeof ac->replies[i], "%c%s",
                 r[i] ? (r[i]->type == REDIS_REPLY_ERROR ? '-' : '+') : '!',
                 r[i] && r[i]->str ? r[i]->str : "");
        freeReplyObject(r[i]);
    }
    redisFree(c);
    atomic_store(&ac->done, true);
    return NULL;
}

static void check_unknown_actions(fx *f) {
    for (int i = 0; i < 3; i++) {
        one_answer a = {0};
        assert_true(tempest_work(f->node, "dq", "nosuch", NULL, NULL, on_one_answer, &a) > 0);
        assert_true(tt_run_until(f->base, answered, &a, WAIT_MS));
        assert_int_equal(a.calls, 1);
        assert_int_equal(a.status, TEMPEST_EREMOTE);
        assert_string_equal(a.text, "\"no handler for action 'nosuch'\"");
    }
}

static void check_wrong_shapes(fx *f) {
    static const char *const urls[] = {"/shape/1", "/shape/2", "/shape/3"};
    for (size_t i = 0; i < 3; i++) {
        http_call c;
        http_do(f, &c, EVHTTP_REQ_GET, urls[i], NULL, 0);
        assert_int_equal(c.status, 502);
        assert_string_equal(c.body, "tempest: the worker sent a malformed answer\n");
    }
}

static void test_bad_answers(void **state) {
    fx *f = *state;
    char want[200];
    start_bad_env(f, D_IO_TIMEOUT_MS);
    check_unknown_actions(f);
    check_wrong_shapes(f);

    one_answer pending = {0};
    tempest_work_options wo = {.timeout_ms = WAIT_MS};
    answers_client ac = {.port = host_port(tempest_node_address(f->node)),
                         .finished = f->tr.last_done_id};
    ac.pending = tempest_work(f->node, "nobody", "x", NULL, &wo, on_one_answer, &pending);
    assert_true(ac.pending > 0 && ac.finished > 0);
    run_thread(f, answers_thread, &ac, &ac.done, 10000);
    assert_string_equal(ac.replies[0],
                        "-ERR unknown job 999999 (finished, timed out or never sent)");
    snprintf(want, sizeof want, "-ERR unknown job %lld (finished, timed out or never sent)",
             ac.finished);
    assert_string_equal(ac.replies[1], want);
    snprintf(want, sizeof want, "-ERR bad answer for job %lld: answer: invalid JSON", ac.pending);
    assert_memory_equal(ac.replies[2], want, strlen(want));
    assert_string_equal(ac.replies[3], "+OK");
    snprintf(want, sizeof want, "-ERR unknown job %lld (finished, timed out or never sent)",
             ac.pending);
    assert_string_equal(ac.replies[4], want);
    assert_string_equal(ac.replies[5], "+PONG");
    assert_true(tt_run_until(f->base, answered, &pending, WAIT_MS));
    assert_int_equal(pending.calls, 1);
    assert_int_equal(pending.status, 0);
    assert_string_equal(pending.text, "\"ok\"");
    check_trickle(f, 5);
}

/* -- d3. RESP garbage and oversized bulks to the node listener ------------ */

enum { R_PING1, R_GARBAGE, R_BULK_TOP, R_INTEGER, R_OVERSIZED, R_PING2, R_COUNT };

typedef struct resp_client {
    atomic_bool done;
    int port;
    char replies[R_COUNT][200];
    bool closed[R_COUNT];
    long long close_ms[R_COUNT];
} resp_client;

/* Sends `data` on a new connection (or `fd`), reads the reply (to the
 * close, or to `until`). Returns the connection, or -1 once closed. */
static int resp_exchange(resp_client *rc, int i, int fd, const char *data, size_t len,
                         const char *until) {
    if (fd < 0)
        fd = tcp_connect(rc->port);
    if (fd < 0)
        return -1;
    long long t = tt_now_ms();
    send_all(fd, data, len);
    read_reply(fd, rc->replies[i], sizeof rc->replies[i], until, &rc->closed[i]);
    rc->close_ms[i] = tt_now_ms() - t;
    if (!rc->closed[i])
        return fd;
    close(fd);
    return -1;
}

static void *resp_thread(void *arg) {
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    static const char integer[] = "*2\r\n$3\r\nfoo\r\n:1\r\n";
    static const char oversized[] = "*3\r\n$1\r\nx\r\n$1\r\n1\r\n$2000000000\r\n";
    resp_client *rc = arg;
    int keep = resp_exchange(rc, R_PING1, -1, ping, sizeof ping - 1, "\r\n");
    resp_exchange(rc, R_GARBAGE, -1, "*abc\r\n", 6, NULL);
    resp_exchange(rc, R_BULK_TOP, -1, "$5\r\nhello\r\n", 11, NULL);
    resp_exchange(rc, R_INTEGER, -1, integer, sizeof integer - 1, NULL);
    resp_exchange(rc, R_OVERSIZED, -1, oversized, sizeof oversized - 1, NULL);
    if (keep >= 0 && resp_exchange(rc, R_PING2, keep, ping, sizeof ping - 1, "\r\n") >= 0)
        close(keep);
    atomic_store(&rc->done, true);
    return NULL;
}

static void test_bad_resp(void **state) {
    fx *f = *state;
    start_bad_env(f, D_IO_TIMEOUT_MS);
    resp_client rc = {.port = host_port(tempest_node_address(f->node))};
    run_thread(f, resp_thread, &rc, &rc.done, 15000);
    static const char *const want[R_COUNT] = {
        [R_PING1] = "+PONG\r\n",
        [R_GARBAGE] = "-ERR Protocol error: Bad multi-bulk length\r\n", /* hiredis' words */
        [R_BULK_TOP] = "-ERR Protocol error: expected '*', got '$'\r\n",
        [R_INTEGER] = "-ERR Protocol error: expected '$', got ':'\r\n",
        [R_OVERSIZED] = "-ERR Protocol error: request over the limit of 67108864 bytes\r\n",
        [R_PING2] = "+PONG\r\n",
    };
    for (int i = 0; i < R_COUNT; i++) {
        if (strcmp(rc.replies[i], want[i]) != 0)
            fprintf(stderr, "exchange %d: got '%s'\n", i, rc.replies[i]);
        assert_string_equal(rc.replies[i], want[i]);
        /* Garbage closes its connection at once; the other one stays. */
        assert_int_equal(rc.closed[i], i != R_PING1 && i != R_PING2);
        if (rc.closed[i])
            assert_true(rc.close_ms[i] < 1000);
    }
    print_message("oversized bulk: -ERR and closed after %lld ms\n", rc.close_ms[R_OVERSIZED]);
    check_trickle(f, 5);
}

/* -- d4. HTTP: body over the limit, header flood --------------------------- */

typedef struct flood_client {
    atomic_bool done;
    int port;
    size_t sent;
    char reply[512];
    bool closed;
} flood_client;

/* 200 KB of headers in one request (the front's limit is 64 KiB). */
static void *flood_thread(void *arg) {
    flood_client *fc = arg;
    size_t cap = 256 << 10, len = 0;
    char *req = malloc(cap);
    int fd = tcp_connect(fc->port);
    if (req && fd >= 0) {
        len = (size_t)snprintf(req, cap, "GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (int i = 0; len < (200u << 10); i++)
            len += (size_t)snprintf(req + len, cap - len, "X-Flood-%05d: %090d\r\n", i, 0);
        len += (size_t)snprintf(req + len, cap - len, "\r\n");
        send_all(fd, req, len);
        fc->sent = len;
        read_reply(fd, fc->reply, sizeof fc->reply, NULL, &fc->closed);
    }
    if (fd >= 0)
        close(fd);
    free(req);
    atomic_store(&fc->done, true);
    return NULL;
}

static void test_bad_http(void **state) {
    fx *f = *state;
    char body[2 * D_HTTP_MAX_BODY];
    memset(body, 'b', sizeof body);
    start_bad_env(f, D_IO_TIMEOUT_MS);
    http_call c;
    http_do(f, &c, EVHTTP_REQ_POST, "/ok", body, sizeof body);
    assert_int_equal(c.status, 413);
    http_do(f, &c, EVHTTP_REQ_POST, "/ok", body, D_HTTP_MAX_BODY);
    assert_int_equal(c.status, 200);
    assert_string_equal(c.body, "ok");

    flood_client fc = {.port = f->http_port};
    run_thread(f, flood_thread, &fc, &fc.done, 15000);
    print_message("header flood (%zu bytes): '%.40s'\n", fc.sent, fc.reply);
    /* evhttp 2.1 reports headers over max_headers_size as an invalid
     * header (EVREQ_HTTP_INVALID_HEADER): 400, not 413 or 431. */
    assert_memory_equal(fc.reply, "HTTP/1.1 400 Bad Request\r\n", 26);
    assert_true(fc.closed);
    http_do(f, &c, EVHTTP_REQ_GET, "/ok", NULL, 0);
    assert_int_equal(c.status, 200);
    check_trickle(f, 5);
}

/* -- d5. slow loris -------------------------------------------------------- */

typedef struct loris_client {
    atomic_bool done;
    int port;
    int interval_ms;  /* one header byte this often; 0: none after the head */
    int bytes;        /* header bytes sent one by one */
    long long cut_ms; /* when the front closed the connection; -1: never */
    char reply[256];
} loris_client;

/* Sends a request head, then one header byte every interval_ms, for at
 * most 4 s or until the front closes the connection. */
static void *loris_thread(void *arg) {
    static const char head[] = "GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    loris_client *lc = arg;
    int fd = tcp_connect(lc->port);
    long long t0 = tt_now_ms();
    lc->cut_ms = -1;
    if (fd >= 0 && send(fd, head, sizeof head - 1, MSG_NOSIGNAL) > 0) {
        while (tt_now_ms() - t0 < 4000) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, lc->interval_ms ? lc->interval_ms : 100) == 1) {
                bool closed;
                read_reply(fd, lc->reply, sizeof lc->reply, NULL, &closed);
                lc->cut_ms = tt_now_ms() - t0;
                break;
            }
            if (lc->interval_ms && send(fd, "a", 1, MSG_NOSIGNAL) != 1) {
                lc->cut_ms = tt_now_ms() - t0;
                break;
            }
            lc->bytes += lc->interval_ms > 0;
        }
    }
    if (fd >= 0)
        close(fd);
    atomic_store(&lc->done, true);
    return NULL;
}

/* The io timeout cuts an idle client; a slow loris (a header byte every
 * 100 ms, never idle for io_timeout_ms) is cut off by the header deadline,
 * while the front keeps serving the others. */
static void test_slow_loris(void **state) {
    fx *f = *state;
    start_bad_env(f, D_IO_TIMEOUT_MS);
    loris_client idle = {.port = f->http_port};
    run_thread(f, loris_thread, &idle, &idle.done, 10000);
    print_message("idle client: cut off after %lld ms (io_timeout_ms %d)\n", idle.cut_ms,
                  D_IO_TIMEOUT_MS);
    assert_true(idle.cut_ms >= D_IO_TIMEOUT_MS - 50 && idle.cut_ms < 2 * D_IO_TIMEOUT_MS);
    assert_string_equal(idle.reply, ""); /* closed without a response */

    int before = f->tr.http_ok;
    loris_client lc = {.port = f->http_port, .interval_ms = 100};
    run_thread(f, loris_thread, &lc, &lc.done, 10000);
    print_message("slow loris: %d header bytes at 100 ms each; cut off after %lld ms "
                  "(-1: never)\n",
                  lc.bytes, lc.cut_ms);
    assert_true(f->tr.http_ok - before >= 50); /* the front served the others */
    check_trickle(f, 5);
    /* cut by the header deadline (header_timeout_ms = 4 x io_timeout_ms) */
    assert_true(lc.cut_ms >= 4 * D_IO_TIMEOUT_MS - 100 && lc.cut_ms < 4 * D_IO_TIMEOUT_MS + 1000);
    assert_int_equal(tempest_front_slow_cut(f->front), 1);
}

/* -- an action named like a built-in command of the listener --------------- */

/* PROTOCOL.md: an answer is the command `<action> <job_id> <json>`, with
 * any action name. The listener must not take such an answer for one of
 * the client commands it answers itself (PING, ECHO, INFO, ...). */
static void test_action_named_like_builtin(void **state) {
    fx *f = *state;
    static const char *const names[] = {"echo", "ping", "info", "select"};
    start_bad_env(f, D_IO_TIMEOUT_MS);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(tempest_worker_on(f->workers[0], names[i], h_job, NULL), 0);
    int ok = 0;
    for (size_t i = 0; i < 4; i++) {
        one_answer a = {0};
        tempest_work_options wo = {.timeout_ms = 1000};
        long long id = tempest_work(f->node, "dq", names[i], NULL, &wo, on_one_answer, &a);
        assert_true(id > 0);
        assert_true(tt_run_until(f->base, answered, &a, WAIT_MS));
        if (a.status != 0)
            fprintf(stderr, "action '%s': %s\n", names[i], tempest_strerror(a.status));
        ok += a.status == 0;
    }
    check_trickle(f, 5);
    assert_int_equal(ok, 4);
}

int main(void) {
    tt_require_redis();
    /* The node listener of this process writes answers' replies to workers
     * that get SIGKILLed: a libevent server must ignore SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    if (getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "vgpreload"))
        slow = 10;
    if (getenv("TT_TEST_FILTER"))
        cmocka_set_test_filter(getenv("TT_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_workers_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_killed, setup_aof, teardown),
        cmocka_unit_test_setup_teardown(test_answer_while_redis_down, setup_aof, teardown),
        cmocka_unit_test_setup_teardown(test_worker_killed_before_answer_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down_at_start, setup_no_redis, teardown),
        cmocka_unit_test_setup_teardown(test_bad_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_resp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_http, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_loris, setup, teardown),
        cmocka_unit_test_setup_teardown(test_action_named_like_builtin, setup, teardown),
    };
    return cmocka_run_group_tests_name("faults", tests, NULL, NULL);
}
