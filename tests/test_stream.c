/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of streamed answers, backpressure, cancellation and
 * progress reports, against a private redis-server. The front, the worker
 * and the producers run on one event_base in this process; the HTTP client
 * is a child process that reads the chunked response with blocking reads,
 * as slowly as it is told, and reports the byte count and an FNV-1a hash
 * of the body through a pipe.
 *
 * The big stream is TEMPEST_STREAM_BYTES bytes (default 1 GiB; 64 MiB
 * under a sanitizer and 8 MiB under valgrind, where RSS says nothing about
 * the library and the bound is not checked). The front's process RSS growth while it
 * streams must stay under STREAM_RSS_BOUND.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_node.h"

#define WAIT_MS 10000
#define CHUNK ((size_t)64 << 10)
#define STREAM_RSS_BOUND ((long long)64 << 20)

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

static tt_redis g_redis;

static bool under_valgrind(void) {
    const char *p = getenv("LD_PRELOAD");
    return p && strstr(p, "vgpreload") != NULL;
}

/* ---- byte sources and hashes ---------------------------------------- */

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

#define FNV_INIT 0xcbf29ce484222325ull

/* Byte i of the stream: mode 0 a pseudo-random pattern, mode 1 i % 256. */
static void fill(unsigned char *buf, size_t n, unsigned long long off, int mode) {
    for (size_t i = 0; i < n; i++) {
        unsigned long long x = off + i;
        buf[i] = mode == 1 ? (unsigned char)x : (unsigned char)((x * 2654435761u) >> 7 ^ x >> 11);
    }
}

/* ---- the HTTP client (a child process) ------------------------------ */

typedef struct client_result {
    int status;
    unsigned long long bytes;
    uint64_t hash;
} client_result;

typedef struct client_plan {
    size_t stall_after;         /* bytes read before the stall */
    int stall_ms;               /* the stall */
    size_t pause_every;         /* then a pause every so many bytes (0: none) */
    int pause_ms;               /* ... of this long */
    unsigned long long quit_at; /* close after this many body bytes (0: never) */
} client_plan;

/* Reads a chunked body from `in`; fills `r`. */
static void read_chunked(FILE *in, const client_plan *plan, client_result *r) {
    static unsigned char buf[CHUNK];
    char line[256];
    size_t since_pause = 0;
    bool stalled = false;
    while (fgets(line, sizeof line, in)) {
        size_t n = strtoul(line, NULL, 16);
        if (n == 0)
            return;
        while (n > 0) {
            size_t want = n < sizeof buf ? n : sizeof buf;
            size_t got = fread(buf, 1, want, in);
            if (got == 0)
                return;
            r->hash = fnv(r->hash, buf, got);
            r->bytes += got;
            n -= got;
            since_pause += got;
            if (plan->quit_at && r->bytes >= plan->quit_at)
                return;
            if (!stalled && r->bytes >= plan->stall_after) {
                stalled = true;
                usleep((useconds_t)plan->stall_ms * 1000);
            }
            if (plan->pause_every && since_pause >= plan->pause_every) {
                since_pause = 0;
                usleep((useconds_t)plan->pause_ms * 1000);
            }
        }
        if (!fgets(line, sizeof line, in)) /* the CRLF after the data */
            return;
    }
}

static void client_main(int port, const char *path, const client_plan *plan, int out) {
    client_result r = {.hash = FNV_INIT};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int rcvbuf = 64 << 10;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        char req[256];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                         path);
        if (write(fd, req, (size_t)n) == n) {
            FILE *in = fdopen(fd, "r");
            char line[1024];
            if (in && fgets(line, sizeof line, in) &&
                sscanf(line, "HTTP/1.%*d %d", &r.status) == 1) {
                while (fgets(line, sizeof line, in) && strcmp(line, "\r\n") != 0)
                    ;
                read_chunked(in, plan, &r);
            }
        }
    }
    if (write(out, &r, sizeof r) != (ssize_t)sizeof r)
        _exit(1);
    _exit(0);
}

typedef struct client {
    pid_t pid;
    int fd; /* read end of the result pipe */
    bool done;
    client_result r;
} client;

static void client_start(client *c, int port, const char *path, const client_plan *plan) {
    int p[2];
    assert_int_equal(pipe(p), 0);
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        close(p[0]);
        client_main(port, path, plan, p[1]);
    }
    close(p[1]);
    c->fd = p[0];
}

static bool client_finished(void *arg) {
    client *c = arg;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (!c->done && poll(&pfd, 1, 0) == 1) {
        c->done = read(c->fd, &c->r, sizeof c->r) == (ssize_t)sizeof c->r;
        if (!c->done)
            c->done = true, c->r.status = -1;
    }
    return c->done;
}

static void client_reap(client *c) {
    if (c->pid > 0) {
        if (!c->done)
            kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        close(c->fd);
        c->pid = 0;
    }
}

/* ---- fixture -------------------------------------------------------- */

typedef struct fx {
    struct event_base *base;
    tempest_node *fnode, *wnode, *pnode; /* front, worker, producer */
    tempest_front *front;
    tempest_worker *worker;
    int port;
    /* the streaming job */
    tempest_job *job;
    unsigned long long total, sent;
    uint64_t hash; /* of what was accepted */
    int mode;
    unsigned char chunk[CHUNK];
    size_t chunk_len; /* generated and not yet accepted */
    int eagain, drains, cancels, progress_sent;
    bool finished, write_error;
    int last_rc;
    /* producer side */
    long long job_id;
    int status;
    char *answer;
    long long answered_at;
    struct event *tick;
    tempest_job *held[4]; /* h_collect's jobs, in the order taken */
    int nheld;
    long long rss_base, rss_peak;
    struct event *rss_ev;
} fx;

static long long rss_bytes(void) {
    long long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lld %lld", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * sysconf(_SC_PAGESIZE);
}

static void on_log(int level, const char *message, void *arg) {
    (void)arg;
    if (level >= TEMPEST_LOG_WARN)
        fprintf(stderr, "  log: %s\n", message);
}

static tempest_node_options node_opts(void) {
    return tt_node_options(g_redis.url, on_log, NULL, TEMPEST_LOG_DEBUG);
}

static int setup(void **state) {
    return tt_fixture_setup(state, sizeof(fx), &g_redis);
}

static int teardown(void **state) {
    fx *f = *state;
    if (f->tick)
        event_free(f->tick);
    if (f->rss_ev)
        event_free(f->rss_ev);
    tempest_worker_free(f->worker);
    tempest_front_free(f->front);
    tempest_node_free(f->wnode);
    tempest_node_free(f->fnode);
    tempest_node_free(f->pnode);
    event_base_free(f->base);
    free(f->answer);
    free(f);
    return 0;
}

static tempest_node *new_node(fx *f) {
    tempest_error err = {0};
    tempest_node_options no = node_opts();
    tempest_node *n = tempest_node_new(f->base, &no, &err);
    assert_non_null(n);
    assert_true(tt_run_until(f->base, tt_node_up, n, WAIT_MS));
    return n;
}

static void start_front(fx *f, int timeout_ms) {
    tempest_error err = {0};
    f->fnode = new_node(f);
    tempest_front_options fo = {.http = "127.0.0.1:0", .timeout_ms = timeout_ms};
    f->front = tempest_front_new(f->fnode, &fo, &err);
    assert_non_null(f->front);
    f->port = tempest_front_port(f->front);
}

static void start_worker(fx *f, const char *action, tempest_handler_fn *fn) {
    tempest_error err = {0};
    f->wnode = new_node(f);
    f->worker = tempest_worker_new(f->wnode, NULL, &err);
    assert_non_null(f->worker);
    assert_int_equal(tempest_worker_on(f->worker, action, fn, f), 0);
    assert_int_equal(tempest_worker_start(f->worker), 0);
}

/* ---- the streaming handler ------------------------------------------ */

static void pump(tempest_job *job, void *arg);

static void on_cancel(tempest_job *job, void *arg) {
    fx *f = arg;
    (void)job;
    f->cancels++;
}

/* Writes chunks until the window is full (then waits for the drain
 * callback) or the stream is complete. */
static void pump(tempest_job *job, void *arg) {
    fx *f = arg;
    for (;;) {
        if (f->chunk_len == 0 && (f->total == 0 || f->sent < f->total)) {
            unsigned long long left = f->total ? f->total - f->sent : CHUNK;
            f->chunk_len = left < CHUNK ? (size_t)left : CHUNK;
            fill(f->chunk, f->chunk_len, f->sent, f->mode);
        }
        bool last = f->total && f->sent + f->chunk_len >= f->total;
        int rc = tempest_job_write(job, f->chunk, f->chunk_len, !last);
        f->last_rc = rc;
        if (rc == TEMPEST_EAGAIN) {
            f->eagain++;
            return;
        }
        if (rc != 0) {
            f->write_error = rc != TEMPEST_ECANCELED;
            return;
        }
        f->hash = fnv(f->hash, f->chunk, f->chunk_len);
        f->sent += f->chunk_len;
        f->chunk_len = 0;
        if (last) {
            f->finished = true;
            f->job = NULL;
            return;
        }
    }
}

static void on_drain(tempest_job *job, void *arg) {
    fx *f = arg;
    f->drains++;
    pump(job, f);
}

static void h_stream(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    json_t *head = json_pack("[i,{s:s},n]", 200, "Content-Type", "application/octet-stream");
    assert_int_equal(tempest_job_answer(job, head, true), 0);
    json_decref(head);
    tempest_job_on_drain(job, on_drain, f);
    tempest_job_on_cancel(job, on_cancel, f);
    f->hash = FNV_INIT;
    f->job = job;
    pump(job, f);
}

static void on_rss(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    fx *f = arg;
    long long r = rss_bytes();
    if (r > f->rss_peak)
        f->rss_peak = r;
}

static unsigned long long stream_size(void) {
    const char *e = getenv("TEMPEST_STREAM_BYTES");
    if (e && *e)
        return strtoull(e, NULL, 10);
    if (under_valgrind())
        return 8ull << 20;
    return UNDER_SANITIZER ? 64ull << 20 : 1ull << 30;
}

/* A worker streams a large body to a client that stalls for 1 s after the
 * first MiB, then pauses 2 ms every 256 KiB: every byte arrives, in order,
 * and the process RSS (front, its listener, the worker) stays bounded. */
static void test_big_stream_backpressure(void **state) {
    fx *f = *state;
    f->total = stream_size();
    f->mode = 0;
    start_front(f, 5000);
    start_worker(f, "url", h_stream);
    struct timeval tv = {0, 20000};
    f->rss_ev = event_new(f->base, -1, EV_PERSIST, on_rss, f);
    event_add(f->rss_ev, &tv);
    f->rss_base = f->rss_peak = rss_bytes();
    client c = {0};
    client_plan plan = {
        .stall_after = 1 << 20, .stall_ms = 1000, .pause_every = 256 << 10, .pause_ms = 2};
    long long t0 = tt_now_ms();
    client_start(&c, f->port, "/big", &plan);
    bool done = tt_run_until(f->base, client_finished, &c, 120000);
    long long ms = tt_now_ms() - t0;
    client_reap(&c);
    assert_true(done);
    long long growth = f->rss_peak - f->rss_base;
    fprintf(stderr,
            "stream: %llu bytes in %lld ms (%.1f MiB/s); %d refusals, %d drains; "
            "RSS %lld MiB at start, peak growth %lld KiB (bound %lld MiB%s)\n",
            c.r.bytes, ms, ms > 0 ? (double)c.r.bytes / (1 << 20) / (ms / 1000.0) : 0.0, f->eagain,
            f->drains, f->rss_base >> 20, growth >> 10, STREAM_RSS_BOUND >> 20,
            UNDER_SANITIZER || under_valgrind() ? ", not checked here" : "");
    assert_int_equal(c.r.status, 200);
    assert_true(f->finished);
    assert_false(f->write_error);
    assert_true(c.r.bytes == f->total);
    assert_true(c.r.hash == f->hash);
    assert_true(f->eagain > 0 && f->drains > 0); /* the worker was held back */
    assert_int_equal(f->cancels, 0);
    if (!UNDER_SANITIZER && !under_valgrind())
        assert_true(growth < STREAM_RSS_BOUND);
    assert_int_equal(tempest_front_pending(f->front), 0);
}

/* Every byte value, NULs included, goes through unchanged. */
static void test_binary_bytes(void **state) {
    fx *f = *state;
    f->total = 256 * 5 + 17;
    f->mode = 1;
    start_front(f, 5000);
    start_worker(f, "url", h_stream);
    client c = {0};
    client_plan plan = {.stall_after = (size_t)-1};
    client_start(&c, f->port, "/bin", &plan);
    bool done = tt_run_until(f->base, client_finished, &c, WAIT_MS);
    client_reap(&c);
    assert_true(done);
    unsigned char all[256 * 5 + 17];
    fill(all, sizeof all, 0, 1);
    assert_int_equal(c.r.status, 200);
    assert_true(c.r.bytes == sizeof all);
    assert_true(c.r.hash == fnv(FNV_INIT, all, sizeof all));
    assert_true(f->finished);
}

/* ---- cancellation --------------------------------------------------- */

static bool cancelled(void *arg) {
    return ((fx *)arg)->cancels > 0;
}

/* The HTTP client leaves mid-stream: the worker's cancel callback runs,
 * the job is inactive, and further answers get TEMPEST_ECANCELED. */
static void test_client_leaves_mid_stream(void **state) {
    fx *f = *state;
    f->total = 0; /* endless */
    start_front(f, 5000);
    start_worker(f, "url", h_stream);
    client c = {0};
    client_plan plan = {.stall_after = (size_t)-1, .quit_at = 3 << 20};
    client_start(&c, f->port, "/endless", &plan);
    assert_true(tt_run_until(f->base, client_finished, &c, WAIT_MS));
    client_reap(&c);
    assert_true(c.r.bytes >= 3u << 20);
    assert_true(tt_run_until(f->base, cancelled, f, WAIT_MS));
    assert_int_equal(f->cancels, 1);
    assert_false(f->write_error);
    /* The job is still in hand; answers are refused, the final one ends it. */
    assert_int_equal(tempest_worker_in_hand(f->worker), 1);
    assert_non_null(f->job);
    assert_false(tempest_job_active(f->job));
    assert_false(tempest_job_writable(f->job));
    assert_int_equal(tempest_job_write(f->job, "x", 1, true), TEMPEST_ECANCELED);
    json_t *a = json_pack("[n,n,s]", "late");
    assert_int_equal(tempest_job_answer(f->job, a, true), TEMPEST_ECANCELED);
    assert_int_equal(tempest_job_progress(f->job), TEMPEST_ECANCELED);
    assert_int_equal(tempest_job_answer(f->job, a, false), TEMPEST_ECANCELED);
    json_decref(a);
    f->job = NULL;
    assert_int_equal(tempest_worker_in_hand(f->worker), 0);
    assert_int_equal(f->cancels, 1);
}

/* A handler that holds its job without answering (a long computation). */
static void h_hold(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->job = job;
    tempest_job_on_cancel(job, on_cancel, f);
}

static void on_produced(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node, (void)id;
    fx *f = arg;
    f->status = status;
    free(f->answer);
    f->answer = answer ? json_dumps(answer, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    f->answered_at = tt_now_ms();
}

static bool job_held(void *arg) {
    fx *f = arg;
    return f->job != NULL && tempest_node_subscriptions(f->wnode) > 0;
}

/* The producer cancels a job whose handler has sent nothing yet: the
 * worker learns it at once through the producer's cancel channel. */
static void test_producer_cancels(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    start_worker(f, "long", h_hold);
    f->status = 99;
    f->job_id = tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_produced, f);
    assert_true(f->job_id > 0);
    assert_true(tt_run_until(f->base, job_held, f, WAIT_MS));
    assert_true(tempest_job_active(f->job));
    assert_int_equal(tempest_work_cancel(f->pnode, f->job_id), 0);
    assert_true(tt_run_until(f->base, cancelled, f, WAIT_MS));
    assert_false(tempest_job_active(f->job));
    json_t *a = json_string("too late");
    assert_int_equal(tempest_job_answer(f->job, a, true), TEMPEST_ECANCELED);
    assert_int_equal(tempest_job_answer(f->job, a, false), TEMPEST_ECANCELED);
    json_decref(a);
    f->job = NULL;
    assert_int_equal(tempest_worker_in_hand(f->worker), 0);
    tt_run_for(f->base, 50);
    assert_int_equal(f->status, 99); /* a cancelled job's callback never runs */
}

/* A partial answer that crosses the cancel is refused with -CANCELED as
 * well as the channel telling: the callback runs once. */
static void test_cancel_told_once(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    start_worker(f, "long", h_hold);
    f->job_id = tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_produced, f);
    assert_true(tt_run_until(f->base, job_held, f, WAIT_MS));
    assert_int_equal(tempest_work_cancel(f->pnode, f->job_id), 0);
    json_t *a = json_string("partial");
    assert_int_equal(tempest_job_answer(f->job, a, true), 0); /* may cross the cancel */
    json_decref(a);
    assert_true(tt_run_until(f->base, cancelled, f, WAIT_MS));
    tt_run_for(f->base, 200);
    assert_int_equal(f->cancels, 1); /* once, though told twice */
    assert_int_equal(tempest_job_done(f->job), 0);
    f->job = NULL;
}

/* ---- cancels the subscription could not hear ------------------------- */

static bool produced(void *arg) {
    return ((fx *)arg)->status != 99;
}

/* A cancelled job's callback never runs. */
static void on_second(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node, (void)id, (void)status, (void)answer, (void)arg;
    fail_msg("the callback of a cancelled job ran");
}

static void h_collect(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    assert_true(f->nheld < 4);
    f->held[f->nheld++] = job;
    tempest_job_on_cancel(job, on_cancel, f);
}

static void start_collector(fx *f) {
    tempest_error err = {0};
    f->wnode = new_node(f);
    tempest_worker_options wo = {.concurrency = 1};
    f->worker = tempest_worker_new(f->wnode, &wo, &err);
    assert_non_null(f->worker);
    assert_int_equal(tempest_worker_on(f->worker, "long", h_collect, f), 0);
    assert_int_equal(tempest_worker_start(f->worker), 0);
}

typedef struct want {
    fx *f;
    int held, cancels;
    bool subscribed;
} want;

static bool wanted(void *arg) {
    want *w = arg;
    return w->f->nheld >= w->held && w->f->cancels >= w->cancels &&
           (!w->subscribed || tempest_node_subscriptions(w->f->wnode) > 0);
}

/* Ends a job the worker holds; returns what tempest_job_answer said. */
static int end_job(tempest_job *job) {
    json_t *a = json_string("done");
    int rc = tempest_job_answer(job, a, false);
    json_decref(a);
    return rc;
}

/* A job cancelled while still queued, before the worker ever subscribed to
 * its producer's channel (the cancel went to nobody): once the subscription
 * is active the worker asks the producer (CHECK) and learns it. */
static void test_cancelled_before_subscription(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    f->status = 99;
    f->job_id = tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_produced, f);
    assert_true(f->job_id > 0);
    assert_int_equal(tempest_work_cancel(f->pnode, f->job_id), 0);
    tt_run_for(f->base, 50); /* the PUBLISH is out, heard by nobody */
    start_collector(f);
    want w = {f, 1, 1, false};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    assert_false(tempest_job_active(f->held[0]));
    assert_int_equal(f->cancels, 1);
    assert_int_equal(end_job(f->held[0]), TEMPEST_ECANCELED);
    assert_int_equal(tempest_worker_in_hand(f->worker), 0);
    assert_int_equal(f->status, 99);
}

/* A worker subscribed to the producer hears the cancel of a job it has not
 * taken yet (it is busy): when it takes that job later, it asks, and the
 * job is inactive from the start; the job before it is unaffected. */
static void test_cancel_heard_while_queued(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    start_collector(f);
    f->status = 99;
    long long a = tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_produced, f);
    assert_true(a > 0);
    want w = {f, 1, 0, true};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    long long b = tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_second, f);
    assert_true(b > 0);
    tt_run_for(f->base, 100);
    assert_int_equal(f->nheld, 1); /* concurrency 1: b waits in the queue */
    assert_int_equal(tt_redis_int(&g_redis, "LLEN tempest"), 1);
    assert_int_equal(tempest_work_cancel(f->pnode, b), 0);
    tt_run_for(f->base, 100); /* the worker hears it, for a job it does not hold */
    assert_int_equal(f->cancels, 0);
    assert_int_equal(end_job(f->held[0]), 0);
    w = (want){f, 2, 1, false};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    assert_false(tempest_job_active(f->held[1]));
    assert_int_equal(end_job(f->held[1]), TEMPEST_ECANCELED);
    assert_true(tt_run_until(f->base, produced, f, WAIT_MS));
    assert_int_equal(f->status, 0); /* the first job was answered */
    assert_int_equal(f->cancels, 1);
}

/* The subscribe connection is cut, and the cancel is published while it is
 * down: after it is back, the worker asks about the jobs it holds. */
static void test_cancel_while_unsubscribed(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    start_collector(f);
    f->status = 99;
    f->job_id = tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_produced, f);
    want w = {f, 1, 0, true};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    assert_true(tempest_job_active(f->held[0]));
    assert_int_equal(tt_redis_int(&g_redis, "CLIENT KILL TYPE pubsub"), 1);
    assert_int_equal(tempest_work_cancel(f->pnode, f->job_id), 0);
    w = (want){f, 1, 1, true};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    assert_false(tempest_job_active(f->held[0]));
    assert_int_equal(end_job(f->held[0]), TEMPEST_ECANCELED);
    assert_int_equal(f->status, 99);
}

/* A producer freed while a worker holds one of its jobs and another waits
 * in the queue: the free publishes their cancels; the held job is told at
 * once, the queued one when it is taken (its cancel was heard, and the
 * producer cannot be reached to say otherwise). Neither is retried nor
 * dead-lettered: nobody could take their answers. */
static void test_producer_freed(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    start_collector(f);
    long long a = tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_produced, f);
    assert_true(a > 0);
    want w = {f, 1, 0, true};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    assert_true(tempest_work(f->pnode, "tempest", "long", NULL, NULL, on_produced, f) > 0);
    tt_run_for(f->base, 100);
    assert_int_equal(tt_redis_int(&g_redis, "LLEN tempest"), 1);
    f->status = 99;
    tempest_node_free(f->pnode);
    f->pnode = NULL;
    assert_int_equal(f->status, TEMPEST_ECANCELED); /* its waiters were told */
    w = (want){f, 1, 1, false};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    assert_false(tempest_job_active(f->held[0]));
    assert_int_equal(end_job(f->held[0]), TEMPEST_ECANCELED);
    w = (want){f, 2, 2, false};
    assert_true(tt_run_until(f->base, wanted, &w, WAIT_MS));
    assert_false(tempest_job_active(f->held[1]));
    assert_int_equal(end_job(f->held[1]), TEMPEST_ECANCELED);
    tt_run_for(f->base, 300); /* the acks land */
    assert_int_equal(tempest_worker_in_hand(f->worker), 0);
    assert_int_equal(tt_redis_int(&g_redis, "LLEN tempest"), 0);
    assert_int_equal(tt_redis_int(&g_redis, "LLEN {tempest}:dead"), 0);
    assert_int_equal(tt_redis_int(&g_redis, "EXISTS {tempest}:attempts"), 0);
    char plist[80];
    snprintf(plist, sizeof plist, "LLEN {tempest}:processing:%s", tempest_worker_id(f->worker));
    assert_int_equal(tt_redis_int(&g_redis, plist), 0);
}

/* CHECK on the wire (any Redis client can ask): +OK for a job that is
 * waiting, and the deadline does not start again; -CANCELED once it timed
 * out; -ERR unknown job for an id never sent. */
typedef struct wire {
    char text[160];
    bool done;
} wire;

static void on_wire(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)ac;
    redisReply *r = reply;
    wire *w = privdata;
    snprintf(w->text, sizeof w->text, "%s%s",
             r == NULL                      ? "(none)"
             : r->type == REDIS_REPLY_ERROR ? "-"
                                            : "+",
             r && r->str ? r->str : "");
    w->done = true;
}

static bool wire_done(void *arg) {
    return ((wire *)arg)->done;
}

static const char *ask(fx *f, redisAsyncContext *ac, const char *fmt, long long id) {
    static wire w;
    w = (wire){{0}, false};
    assert_int_equal(redisAsyncCommand(ac, on_wire, &w, fmt, id), REDIS_OK);
    assert_true(tt_run_until(f->base, wire_done, &w, WAIT_MS));
    return w.text;
}

static void test_check_on_the_wire(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    f->status = 99;
    tempest_work_options wo = {.timeout_ms = 600};
    f->job_id = tempest_work(f->pnode, "tempest", "long", NULL, &wo, on_produced, f);
    assert_true(f->job_id > 0);
    const char *addr = tempest_node_address(f->pnode);
    assert_non_null(addr);
    int port = atoi(strrchr(addr, ':') + 1);
    redisAsyncContext *ac = redisAsyncConnect("127.0.0.1", port);
    assert_non_null(ac);
    assert_int_equal(redisLibeventAttach(ac, f->base), REDIS_OK);
    assert_string_equal(ask(f, ac, "TEMPEST PEER %lld", 1), "+OK");
    long long t0 = tt_now_ms();
    while (f->status == 99 && tt_now_ms() - t0 < 3000) {
        if (f->status == 99)
            assert_string_equal(ask(f, ac, "long %lld null CHECK", f->job_id), "+OK");
        tt_run_for(f->base, 100);
    }
    /* Asked every 100 ms, it still timed out: CHECK is no sign of life. */
    assert_int_equal(f->status, TEMPEST_ETIMEDOUT);
    assert_true(strncmp(ask(f, ac, "long %lld null CHECK", f->job_id), "-CANCELED", 9) == 0);
    assert_true(strncmp(ask(f, ac, "long %lld null CHECK", 4242), "-ERR unknown job", 16) == 0);
    redisAsyncFree(ac);
}

/* ---- a foreign streaming worker --------------------------------------- */

/* A worker as the Ruby or Python ones are written: BLPOP, then MORE
 * answers through a plain synchronous client that never said TEMPEST PEER,
 * with no error handling: it stops at the first reply that is not +OK. */
enum { FOREIGN_CHUNKS = 56, FOREIGN_CHUNK = 1 << 20 };

typedef struct foreign_streamer {
    int redis_port;
    int oks;    /* +OK replies */
    bool error; /* any other reply, or a failure */
    atomic_bool done;
} foreign_streamer;

static bool foreign_answer(redisContext *c, long long id, const char *json, bool more) {
    redisReply *rep = more ? redisCommand(c, "url %lld %s MORE", id, json)
                           : redisCommand(c, "url %lld %s", id, json);
    bool ok = rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "OK") == 0;
    freeReplyObject(rep);
    return ok;
}

static void foreign_stream(foreign_streamer *fs, redisContext *c, long long id) {
    char *json = malloc(FOREIGN_CHUNK + 32);
    if (json == NULL)
        return;
    for (int i = 0; i < FOREIGN_CHUNKS && !fs->error; i++) {
        int n = snprintf(json, 32, i == 0 ? "[200,{},\"" : "[null,null,\"");
        memset(json + n, 'a' + i % 26, FOREIGN_CHUNK);
        memcpy(json + n + FOREIGN_CHUNK, "\"]", 3);
        if (foreign_answer(c, id, json, true))
            fs->oks++;
        else
            fs->error = true;
    }
    if (!fs->error && foreign_answer(c, id, "[null,null,null]", false))
        fs->oks++;
    free(json);
}

static void *foreign_main(void *arg) {
    foreign_streamer *fs = arg;
    redisContext *r = redisConnect("127.0.0.1", fs->redis_port), *c = NULL;
    redisReply *job = r && !r->err ? redisCommand(r, "BLPOP tempest 10") : NULL;
    json_t *j = job && job->type == REDIS_REPLY_ARRAY && job->elements == 2
                    ? json_loads(job->element[1]->str, 0, NULL)
                    : NULL;
    char host[64];
    int port;
    const char *to = j ? json_string_value(json_array_get(j, 2)) : NULL;
    if (to && sscanf(to, "%63[^:]:%d", host, &port) == 2 &&
        (c = redisConnect(host, port)) != NULL && !c->err)
        foreign_stream(fs, c, json_integer_value(json_array_get(j, 3)));
    else
        fs->error = true;
    json_decref(j);
    freeReplyObject(job);
    if (c)
        redisFree(c);
    if (r)
        redisFree(r);
    atomic_store(&fs->done, true);
    return NULL;
}

static bool foreign_done(void *arg) {
    return atomic_load(&((foreign_streamer *)arg)->done);
}

/* A foreign worker's stream is never held back (its client could time out
 * on the held +OK and throw), so the front cuts a client that falls too far
 * behind (32 MiB) instead; the worker gets +OK to every answer, before and
 * after the cut, and never waits for the client. */
static void test_foreign_stream_to_slow_client(void **state) {
    fx *f = *state;
    start_front(f, 10000);
    client c = {0};
    client_plan plan = {.stall_after = 1, .stall_ms = 4000};
    client_start(&c, f->port, "/foreign", &plan);
    foreign_streamer fs = {.redis_port = g_redis.port};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, foreign_main, &fs), 0);
    long long t0 = tt_now_ms();
    assert_true(tt_run_until(f->base, foreign_done, &fs, WAIT_MS * 3));
    long long took = tt_now_ms() - t0;
    pthread_join(t, NULL);
    assert_false(fs.error);
    assert_int_equal(fs.oks, FOREIGN_CHUNKS + 1);
    assert_true(tempest_node_answers_dropped(f->fnode) > 0); /* those after the cut */
    assert_true(tt_run_until(f->base, client_finished, &c, WAIT_MS));
    client_reap(&c);
    print_message("      %d MiB sent by the foreign worker in %lld ms (client stalled 4 s); "
                  "client read %llu bytes before the cut, %llu answers dropped\n",
                  FOREIGN_CHUNKS, took, c.r.bytes,
                  (unsigned long long)tempest_node_answers_dropped(f->fnode));
    assert_true(c.r.bytes < (unsigned long long)FOREIGN_CHUNKS * FOREIGN_CHUNK);
}

/* ---- progress ------------------------------------------------------- */

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    fx *f = arg;
    if (f->job == NULL)
        return;
    if (tt_now_ms() - f->answered_at >= 3000) { /* answered_at: when the job began */
        json_t *a = json_string("done after 3 s");
        assert_int_equal(tempest_job_answer(f->job, a, false), 0);
        json_decref(a);
        f->job = NULL;
        f->answered_at = 0;
        return;
    }
    if (tempest_job_progress(f->job) == 0)
        f->progress_sent++;
}

static void h_slow(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->job = job;
    f->answered_at = tt_now_ms();
    tempest_job_on_cancel(job, on_cancel, f);
    struct timeval tv = {0, 200000};
    f->tick = event_new(f->base, -1, EV_PERSIST, on_tick, f);
    event_add(f->tick, &tv);
}

/* A 500 ms deadline, and a job that takes 3 s but reports every 200 ms:
 * it is answered. */
static void test_progress_keeps_alive(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    start_worker(f, "slow", h_slow);
    f->status = 99;
    long long t0 = tt_now_ms();
    tempest_work_options wo = {.timeout_ms = 500};
    f->job_id = tempest_work(f->pnode, "tempest", "slow", NULL, &wo, on_produced, f);
    assert_true(f->job_id > 0);
    assert_true(tt_run_until(f->base, produced, f, WAIT_MS));
    assert_int_equal(f->status, 0);
    assert_string_equal(f->answer, "\"done after 3 s\"");
    assert_true(tt_now_ms() - t0 >= 3000);
    assert_true(f->progress_sent >= 10);
    assert_int_equal(f->cancels, 0);
}

/* The same job without reports times out at 500 ms, and the worker is
 * told: its job turns inactive. */
static void test_no_progress_times_out(void **state) {
    fx *f = *state;
    f->pnode = new_node(f);
    start_worker(f, "long", h_hold);
    f->status = 99;
    long long t0 = tt_now_ms();
    tempest_work_options wo = {.timeout_ms = 500};
    f->job_id = tempest_work(f->pnode, "tempest", "long", NULL, &wo, on_produced, f);
    assert_true(tt_run_until(f->base, produced, f, WAIT_MS));
    assert_int_equal(f->status, TEMPEST_ETIMEDOUT);
    long long waited = tt_now_ms() - t0;
    assert_true(waited >= 450 && waited < 5000);
    assert_true(tt_run_until(f->base, cancelled, f, WAIT_MS));
    assert_false(tempest_job_active(f->job));
    assert_int_equal(tempest_job_done(f->job), 0);
    f->job = NULL;
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_binary_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_stream_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_leaves_mid_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_producer_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_told_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_before_subscription, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_heard_while_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_while_unsubscribed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_producer_freed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_on_the_wire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_stream_to_slow_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_progress_keeps_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_progress_times_out, setup, teardown),
    };
    tt_group_redis(&g_redis);
    return cmocka_run_group_tests(tests, tt_group_setup, tt_group_teardown);
}
