/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of the HTTP front against a private redis-server: the
 * front, its workers (each on a node of its own) and an evhttp client all
 * run on one event_base in this process. Every request goes through the
 * real path: HTTP -> RPUSH -> BLPOP -> handler -> answer on the front's
 * node listener -> HTTP response. Covers answers, request encoding, worker
 * headers, 504/413/502/503, streamed (chunked) answers, a client that
 * leaves early, 300 concurrent requests over 3 workers, and a Redis crash
 * and restart in the middle of a run.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_node.h"
#include "tt_http.h"

#define WAIT_MS 5000
#define NWORKERS 3
#define NCALLS 512
#define NCONC 300
#define LOG_SIZE 65536

static tt_redis g_redis;

typedef tt_http_call http_call;

/* An answer sent later by a timer (asynchronous handlers). */
typedef struct deferred {
    struct deferred *next;
    struct fx *f;
    struct event *ev;
    tempest_job *job;
    json_t *answer; /* owned until sent */
    bool more;
} deferred;

typedef struct fx {
    struct event_base *base;
    tempest_node *node; /* the front's node */
    tempest_front *front;
    int port;
    tempest_node *wnodes[NWORKERS];
    tempest_worker *workers[NWORKERS];
    http_call calls[NCALLS];
    size_t ncalls;
    deferred *deferred;
    tempest_job *held;
    struct event *ticker;
    bool stop_stream;
    int ticks;
    int handled;
    int errors; /* problems seen inside callbacks, where asserts cannot run */
    int max_in_hand;
    int seen[NCONC];
    char log[LOG_SIZE];
    size_t loglen;
} fx;

/* ---- logging and small helpers ------------------------------------------- */

static void on_log(int level, const char *message, void *arg) {
    fx *f = arg;
    tt_log_append(f->log, sizeof f->log, &f->loglen, level, message);
    if (level >= TEMPEST_LOG_WARN)
        fprintf(stderr, "  log: %s\n", message);
}

static bool log_has(const fx *f, const char *text) {
    return strstr(f->log, text) != NULL;
}

static void callback_error(fx *f, const char *what) {
    fprintf(stderr, "error in a callback: %s\n", what);
    f->errors++;
}

static tempest_node_options node_opts(fx *f, const char *url) {
    return tt_node_options(url, on_log, f, TEMPEST_LOG_DEBUG);
}

static bool all_nodes_up(void *arg) {
    fx *f = arg;
    if (!tt_node_up(f->node))
        return false;
    for (int i = 0; i < NWORKERS; i++)
        if (f->wnodes[i] && !tt_node_up(f->wnodes[i]))
            return false;
    return true;
}

static bool all_nodes_down(void *arg) {
    fx *f = arg;
    if (!tt_node_not_up(f->node))
        return false;
    for (int i = 0; i < NWORKERS; i++)
        if (f->wnodes[i] && !tt_node_not_up(f->wnodes[i]))
            return false;
    return true;
}

static const char *job_url(tempest_job *job) {
    json_t *req = json_array_get(tempest_job_args(job), 0);
    return json_string_value(json_object_get(req, "url"));
}

/* Answers now; `a` is stolen. */
static void answer(fx *f, tempest_job *job, json_t *a, bool more) {
    if (a == NULL) {
        callback_error(f, "json_pack failed");
        tempest_job_done(job);
        return;
    }
    bool active = tempest_job_active(job);
    int rc = tempest_job_answer(job, a, more);
    if (rc != 0 && (active || rc != TEMPEST_ECANCELED)) /* a job given up is refused */
        callback_error(f, "tempest_job_answer failed");
    json_decref(a);
}

static void on_deferred(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    deferred *d = arg;
    json_t *a = d->answer;
    d->answer = NULL;
    answer(d->f, d->job, a, d->more);
}

/* Answers `job` after `ms` milliseconds; `a` is stolen. */
static void defer_answer(fx *f, tempest_job *job, json_t *a, bool more, int ms) {
    deferred *d = calloc(1, sizeof *d);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (d == NULL || (d->ev = evtimer_new(f->base, on_deferred, d)) == NULL) {
        callback_error(f, "no memory for a deferred answer");
        free(d);
        json_decref(a);
        tempest_job_done(job);
        return;
    }
    *d =
        (deferred){.next = f->deferred, .f = f, .ev = d->ev, .job = job, .answer = a, .more = more};
    f->deferred = d;
    evtimer_add(d->ev, &tv);
}

/* ---- HTTP client ---------------------------------------------------------- */

/* Starts a request on a connection of its own (as tt_http_start). */
static http_call *http_start(fx *f, enum evhttp_cmd_type cmd, const char *uri,
                             const char *const *headers, const char *body, size_t len) {
    assert_true(f->ncalls < NCALLS);
    http_call *c = &f->calls[f->ncalls++];
    tt_http_start(c, f->base, f->port, cmd, uri, headers, body, len);
    return c;
}

static bool call_done(void *arg) {
    return ((http_call *)arg)->done;
}

static http_call *http_do(fx *f, enum evhttp_cmd_type cmd, const char *uri,
                          const char *const *headers, const char *body, size_t len) {
    http_call *c = http_start(f, cmd, uri, headers, body, len);
    assert_true(tt_run_until(f->base, call_done, c, WAIT_MS));
    return c;
}

static http_call *http_get(fx *f, const char *uri) {
    return http_do(f, EVHTTP_REQ_GET, uri, NULL, NULL, 0);
}

/* The body as a NUL-terminated string (valid until the call is freed). */
static const char *body_of(http_call *c) {
    return c->text ? c->text : "";
}

static int header_count(http_call *c, const char *name) {
    int n = 0;
    for (struct evkeyval *kv = c->headers.tqh_first; kv; kv = kv->next.tqe_next)
        if (strcasecmp(kv->key, name) == 0)
            n++;
    return n;
}

static const char *header(http_call *c, const char *name) {
    return evhttp_find_header(&c->headers, name);
}

/* ---- fixture -------------------------------------------------------------- */

static int setup(void **state) {
    return tt_fixture_setup(state, sizeof(fx), &g_redis);
}

static int teardown(void **state) {
    fx *f = *state;
    for (size_t i = 0; i < NCALLS; i++)
        tt_http_call_free(&f->calls[i]);
    if (f->ticker)
        event_free(f->ticker);
    for (int i = 0; i < NWORKERS; i++)
        tempest_worker_free(f->workers[i]);
    tempest_front_free(f->front);
    while (f->deferred) {
        deferred *d = f->deferred;
        f->deferred = d->next;
        event_free(d->ev);
        json_decref(d->answer);
        free(d);
    }
    for (int i = 0; i < NWORKERS; i++)
        tempest_node_free(f->wnodes[i]);
    tempest_node_free(f->node);
    tt_fixture_free(f);
    return 0;
}

/* Creates the front's node and the front on a free port; waits for Redis. */
static void start_front_on(fx *f, const char *redis_url, const tempest_front_options *options,
                           bool wait_up) {
    tempest_error err = {0};
    tempest_node_options no = node_opts(f, redis_url);
    f->node = tempest_node_new(f->base, &no, &err);
    assert_non_null(f->node);
    f->front = tt_front_new(f->node, options, &f->port);
    assert_true(f->port > 0 && f->port < 65536);
    assert_int_equal(tempest_front_pending(f->front), 0);
    if (wait_up)
        assert_true(tt_run_until(f->base, tt_node_up, f->node, WAIT_MS));
}

static void start_front(fx *f, const tempest_front_options *options) {
    start_front_on(f, g_redis.url, options, true);
}

/* Worker `i` on a node of its own, handling `action`. */
static void add_worker(fx *f, int i, const char *action, tempest_handler_fn *fn, int concurrency) {
    tempest_error err = {0};
    tempest_node_options no = node_opts(f, g_redis.url);
    f->wnodes[i] = tempest_node_new(f->base, &no, &err);
    assert_non_null(f->wnodes[i]);
    tempest_worker_options wo = {.concurrency = concurrency};
    f->workers[i] = tempest_worker_new(f->wnodes[i], &wo, &err);
    assert_non_null(f->workers[i]);
    assert_int_equal(tempest_worker_on(f->workers[i], action, fn, f), 0);
    assert_int_equal(tempest_worker_start(f->workers[i]), 0);
    assert_true(tt_run_until(f->base, tt_node_up, f->wnodes[i], WAIT_MS));
}

static void check_idle(fx *f) {
    assert_int_equal(f->errors, 0);
    assert_int_equal(tempest_front_pending(f->front), 0);
    assert_int_equal(tempest_work_pending(f->node), 0);
}

/* ---- handlers ------------------------------------------------------------- */

static void h_hello(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->handled++;
    answer(f, job, json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "Hello world!"),
           false);
}

/* Answers with the job's url argument (JSON) as the body. */
static void h_echo(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->handled++;
    if (json_array_size(tempest_job_args(job)) != 1)
        callback_error(f, "url job without exactly one argument");
    char *text = json_dumps(json_array_get(tempest_job_args(job), 0), JSON_COMPACT);
    answer(f, job,
           json_pack("[i,{s:s},s]", 200, "Content-Type", "application/json", text ? text : ""),
           false);
    free(text);
}

static void h_headers(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->handled++;
    answer(f, job,
           json_pack("[i,{s:s,s:s,s:[s,s],s:i},s]", 201, "Content-Type", "text/plain", "X-Tempest",
                     "yes", "X-Multi", "a", "b", "X-Number", 42, "created"),
           false);
}

static void h_malformed(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    const char *url = job_url(job);
    f->handled++;
    if (strcmp(url, "/bad/1") == 0)
        answer(f, job, json_pack("[s]", "x"), false);
    else if (strcmp(url, "/bad/2") == 0)
        answer(f, job, json_pack("[i,{},i]", 200, 5), false);
    else if (strcmp(url, "/bad/3") == 0)
        answer(f, job, json_pack("[i,{},s]", 99, "status out of range"), false);
    else
        answer(f, job, json_string("not an array"), false);
}

/* Three answers, 10 ms apart: two partial ones, then the final one. */
static void h_stream(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->handled++;
    defer_answer(f, job, json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "one,"), true,
                 10);
    defer_answer(f, job, json_pack("[n,n,s]", "two,"), true, 20);
    defer_answer(f, job, json_pack("[n,n,s]", "three"), false, 30);
}

/* Keeps the job of /leave without answering; answers the others. */
static void h_hold(tempest_worker *w, tempest_job *job, void *arg) {
    fx *f = arg;
    if (strcmp(job_url(job), "/leave") == 0) {
        f->handled++;
        f->held = job;
        return;
    }
    h_hello(w, job, arg);
}

/* /r/<n>: answers its own path a few ms later (jobs stay in hand). */
static void h_path_later(tempest_worker *w, tempest_job *job, void *arg) {
    fx *f = arg;
    const char *url = job_url(job);
    int n = -1;
    f->handled++;
    if (url == NULL || sscanf(url, "/r/%d", &n) != 1 || n < 0 || n >= NCONC) {
        callback_error(f, "unexpected url");
        tempest_job_done(job);
        return;
    }
    f->seen[n]++;
    int in_hand = tempest_worker_in_hand(w);
    if (in_hand > f->max_in_hand)
        f->max_in_hand = in_hand;
    defer_answer(f, job, json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", url), false,
                 n % 7);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_get_root(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    add_worker(f, 0, "url", h_hello, 1);
    http_call *c = http_get(f, "/");
    assert_int_equal(c->status, 200);
    assert_string_equal(body_of(c), "Hello world!");
    assert_string_equal(header(c, "Content-Type"), "text/plain");
    assert_string_equal(header(c, "Content-Length"), "12");
    assert_int_equal(f->handled, 1);
    assert_int_equal(tempest_worker_taken(f->workers[0]), 1);
    check_idle(f);
}

static void test_post_echo(void **state) {
    fx *f = *state;
    static const char body[] = "name=tempest&greeting=h\xc3\xa9llo";
    static const char *const headers[] = {"X-Custom-Header",
                                          "Hello There",
                                          "Content-Type",
                                          "application/x-www-form-urlencoded",
                                          "X-UPPER",
                                          "V",
                                          NULL};
    start_front(f, NULL);
    add_worker(f, 0, "url", h_echo, 1);
    http_call *c =
        http_do(f, EVHTTP_REQ_POST, "/submit/it?x=1&y=%20", headers, body, sizeof body - 1);
    assert_int_equal(c->status, 200);
    assert_string_equal(header(c, "Content-Type"), "application/json");

    json_error_t jerr;
    json_t *got = json_loads(body_of(c), 0, &jerr);
    assert_non_null(got);
    char len[16];
    snprintf(len, sizeof len, "%zu", sizeof body - 1);
    json_t *want = json_pack(
        "{s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s},s:s}", "method", "POST", "url", "/submit/it?x=1&y=%20",
        "headers", "host", "127.0.0.1", "x-custom-header", "Hello There", "content-type",
        "application/x-www-form-urlencoded", "x-upper", "V", "content-length", len, "body", body);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);
        fprintf(stderr, "got  %s\nwant %s\n", g, w);
        free(g);
        free(w);
    }
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);

    /* A GET has no body member at all. */
    c = http_get(f, "/plain");
    assert_int_equal(c->status, 200);
    got = json_loads(body_of(c), 0, &jerr);
    assert_non_null(got);
    assert_string_equal(json_string_value(json_object_get(got, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(got, "url")), "/plain");
    assert_null(json_object_get(got, "body"));
    json_decref(got);
    assert_int_equal(f->handled, 2);
    check_idle(f);
}

static void test_worker_headers(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    add_worker(f, 0, "url", h_headers, 1);
    http_call *c = http_get(f, "/h");
    assert_int_equal(c->status, 201);
    assert_string_equal(body_of(c), "created");
    assert_string_equal(header(c, "Content-Type"), "text/plain");
    assert_string_equal(header(c, "X-Tempest"), "yes");
    assert_string_equal(header(c, "X-Number"), "42");
    assert_int_equal(header_count(c, "X-Multi"), 2);
    assert_int_equal(header_count(c, "Content-Length"), 1);
    check_idle(f);
}

static void test_timeout_504(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.timeout_ms = 300});
    http_call *c = http_get(f, "/nobody");
    assert_int_equal(c->status, 504);
    long long took = c->finished - c->started;
    assert_true(took >= 250);
    assert_true(took < 3000);
    /* The job is still queued (nobody took it); the request is over. */
    assert_int_equal(tt_redis_int(&g_redis, "LLEN tempest"), 1);
    check_idle(f);
}

static void test_body_too_large_413(void **state) {
    fx *f = *state;
    char big[4096];
    memset(big, 'a', sizeof big);
    start_front(f, &(tempest_front_options){.max_body = 1024});
    add_worker(f, 0, "url", h_hello, 1);
    http_call *c = http_do(f, EVHTTP_REQ_POST, "/upload", NULL, big, sizeof big);
    assert_int_equal(c->status, 413);
    assert_int_equal(f->handled, 0);
    assert_int_equal(tt_redis_int(&g_redis, "LLEN tempest"), 0);
    /* A body under the limit still goes through. */
    c = http_do(f, EVHTTP_REQ_POST, "/upload", NULL, big, 1000);
    assert_int_equal(c->status, 200);
    assert_int_equal(f->handled, 1);
    check_idle(f);
}

static void test_malformed_answer_502(void **state) {
    fx *f = *state;
    static const char *const urls[] = {"/bad/1", "/bad/2", "/bad/3", "/bad/4"};
    start_front(f, NULL);
    add_worker(f, 0, "url", h_malformed, 1);
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        http_call *c = http_get(f, urls[i]);
        if (c->status != 502)
            fprintf(stderr, "%s: status %d\n", urls[i], c->status);
        assert_int_equal(c->status, 502);
    }
    assert_int_equal(f->handled, 4);
    check_idle(f);
}

static void test_no_handler_502(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    add_worker(f, 0, "other", h_hello, 1);
    http_call *c = http_get(f, "/unhandled");
    assert_int_equal(c->status, 502);
    assert_non_null(strstr(body_of(c), "no handler"));
    assert_int_equal(f->handled, 0);
    assert_int_equal(tempest_worker_taken(f->workers[0]), 1);
    assert_int_equal(tempest_worker_in_hand(f->workers[0]), 0);
    assert_true(log_has(f, "no handler for action 'url'"));
    check_idle(f);
}

static void test_streamed_chunked(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    add_worker(f, 0, "url", h_stream, 1);
    http_call *c = http_get(f, "/stream");
    assert_int_equal(c->status, 200);
    assert_string_equal(body_of(c), "one,two,three");
    assert_string_equal(header(c, "Content-Type"), "text/plain");
    assert_non_null(header(c, "Transfer-Encoding"));
    assert_string_equal(header(c, "Transfer-Encoding"), "chunked");
    assert_null(header(c, "Content-Length"));
    assert_int_equal(f->handled, 1);
    assert_int_equal(tempest_worker_in_hand(f->workers[0]), 0);
    check_idle(f);
}

static void test_redis_unreachable_503(void **state) {
    fx *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tt_free_port());
    start_front_on(f, url, NULL, false);
    assert_true(tt_run_until(f->base, tt_node_not_up, f->node, WAIT_MS));
    for (int i = 0; i < 3; i++) {
        http_call *c = http_get(f, "/down");
        assert_int_equal(c->status, 503);
        assert_true(c->finished - c->started < 1000);
    }
    assert_int_not_equal(tempest_node_state(f->node), TEMPEST_NODE_UP);
    check_idle(f);
}

static bool held_and_pending(void *arg) {
    fx *f = arg;
    return f->held != NULL && tempest_front_pending(f->front) == 1;
}

static bool none_pending(void *arg) {
    fx *f = arg;
    return tempest_front_pending(f->front) == 0 && tempest_work_pending(f->node) == 0;
}

/* The worker was told that the producer gave up its job. */
static bool held_inactive(void *arg) {
    fx *f = arg;
    return f->held != NULL && !tempest_job_active(f->held);
}

/* A plain socket that sends `path` as a GET and keeps the connection. */
static int raw_request(fx *f, const char *path) {
    char request[256];
    int n = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(send(fd, request, (size_t)n, MSG_NOSIGNAL), n);
    return fd;
}

/* A worker holds the job of a client that leaves; with the front's own
 * timeout far away, the front must notice the client left (the job is
 * cancelled, nothing is pending), the worker is told (its job turns
 * inactive), and its late answer is refused with TEMPEST_ECANCELED. */
static void test_client_leaves_early(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.timeout_ms = 20000});
    add_worker(f, 0, "url", h_hold, 1);

    int fd = raw_request(f, "/leave");
    assert_true(tt_run_until(f->base, held_and_pending, f, WAIT_MS));
    assert_int_equal(tempest_work_pending(f->node), 1);
    close(fd);

    /* The front notices, drops the request and cancels its job. */
    bool noticed = tt_run_until(f->base, none_pending, f, WAIT_MS);
    if (!noticed)
        fprintf(stderr, "front: %zu request(s) still pending %d ms after the client left\n",
                tempest_front_pending(f->front), WAIT_MS);
    assert_true(noticed);
    assert_true(log_has(f, "client left"));

    /* The worker learns it; the late answer is refused, and ends the job. */
    assert_true(tt_run_until(f->base, held_inactive, f, WAIT_MS));
    tempest_job *job = f->held;
    f->held = NULL;
    json_t *late = json_pack("[i,{},s]", 200, "too late");
    assert_int_equal(tempest_job_answer(job, late, false), TEMPEST_ECANCELED);
    json_decref(late);
    assert_int_equal(tempest_worker_in_hand(f->workers[0]), 0);

    /* The front and the worker go on. */
    http_call *c = http_get(f, "/after");
    assert_int_equal(c->status, 200);
    assert_string_equal(body_of(c), "Hello world!");
    assert_int_equal(f->handled, 2);
    check_idle(f);
}

/* The same client, but the worker answers right after the client left,
 * whether or not the front has noticed: the answer either lands on a
 * closed socket or is refused; either way nothing stays pending, nothing
 * leaks, and the front goes on. */
static void test_client_leaves_answer_right_after(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.timeout_ms = 20000});
    add_worker(f, 0, "url", h_hold, 1);

    int fd = raw_request(f, "/leave");
    assert_true(tt_run_until(f->base, held_and_pending, f, WAIT_MS));
    close(fd);
    tempest_job *job = f->held;
    f->held = NULL;
    answer(f, job, json_pack("[i,{},s]", 200, "to nobody"), false);
    assert_true(tt_run_until(f->base, none_pending, f, WAIT_MS));
    assert_int_equal(tempest_worker_in_hand(f->workers[0]), 0);

    http_call *c = http_get(f, "/after");
    assert_int_equal(c->status, 200);
    assert_string_equal(body_of(c), "Hello world!");
    check_idle(f);
}

/* Streams chunks every 5 ms until the test says stop; then finishes. */
static void on_stream_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    fx *f = arg;
    if (f->stop_stream || ++f->ticks > 1000) {
        event_del(f->ticker);
        answer(f, f->held, json_pack("[n,n,s]", "end"), false);
        f->held = NULL;
        return;
    }
    answer(f, f->held, json_pack("[n,n,s]", "tick,"), true);
}

static void h_endless_stream(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    struct timeval tv = {0, 5000};
    f->handled++;
    f->held = job;
    answer(f, job, json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "first,"), true);
    f->ticker = event_new(f->base, -1, EV_PERSIST, on_stream_tick, f);
    if (f->ticker == NULL || event_add(f->ticker, &tv) != 0)
        callback_error(f, "cannot start the stream ticker");
}

static bool fd_readable(void *arg) {
    struct pollfd p = {.fd = *(int *)arg, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

static bool stream_over(void *arg) {
    fx *f = arg;
    return f->held == NULL;
}

/* A client leaves in the middle of a chunked response: the front ends the
 * request at the first failed write (the job is cancelled, later chunks
 * are refused), and the half-sent response leaks nothing. */
static void test_client_leaves_during_stream(void **state) {
    fx *f = *state;
    char buf[512];
    start_front(f, &(tempest_front_options){.timeout_ms = 20000});
    add_worker(f, 0, "url", h_endless_stream, 1);

    int fd = raw_request(f, "/endless");
    assert_true(tt_run_until(f->base, fd_readable, &fd, WAIT_MS));
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_memory_equal(buf, "HTTP/1.1 200", 12);
    assert_non_null(strcasestr(buf, "Transfer-Encoding: chunked"));
    close(fd);

    assert_true(tt_run_until(f->base, none_pending, f, WAIT_MS));
    assert_true(tt_run_until(f->base, held_inactive, f, WAIT_MS));
    f->stop_stream = true;
    assert_true(tt_run_until(f->base, stream_over, f, WAIT_MS));
    assert_int_equal(tempest_worker_in_hand(f->workers[0]), 0);
    check_idle(f);
}

static bool calls_done(void *arg) {
    fx *f = arg;
    for (size_t i = 0; i < f->ncalls; i++)
        if (!f->calls[i].done)
            return false;
    return true;
}

static void test_concurrent_300(void **state) {
    fx *f = *state;
    char uri[32];
    start_front(f, NULL);
    for (int i = 0; i < NWORKERS; i++)
        add_worker(f, i, "url", h_path_later, 4);
    for (int n = 0; n < NCONC; n++) {
        snprintf(uri, sizeof uri, "/r/%d", n);
        http_start(f, EVHTTP_REQ_GET, uri, NULL, NULL, 0);
    }
    assert_true(tt_run_until(f->base, calls_done, f, 30000));
    for (int n = 0; n < NCONC; n++) {
        http_call *c = &f->calls[n];
        snprintf(uri, sizeof uri, "/r/%d", n);
        if (c->status != 200 || strcmp(body_of(c), uri) != 0 || f->seen[n] != 1)
            fprintf(stderr, "request %d: status %d body '%s' handled %d times\n", n, c->status,
                    body_of(c), f->seen[n]);
        assert_int_equal(c->status, 200);
        assert_string_equal(body_of(c), uri);
        assert_int_equal(f->seen[n], 1);
    }
    assert_int_equal(f->handled, NCONC);
    unsigned long long taken = 0;
    for (int i = 0; i < NWORKERS; i++) {
        fprintf(stderr, "worker %d took %llu jobs\n", i, tempest_worker_taken(f->workers[i]));
        taken += tempest_worker_taken(f->workers[i]);
    }
    assert_int_equal(taken, NCONC);
    assert_true(f->max_in_hand >= 1 && f->max_in_hand <= 4);
    check_idle(f);
}

static bool queue_has_one(void *arg) {
    (void)arg;
    return tt_redis_int(&g_redis, "LLEN tempest") == 1;
}

static void test_worker_started_later(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    http_call *c = http_start(f, EVHTTP_REQ_GET, "/early", NULL, NULL, 0);
    assert_true(tt_run_until(f->base, queue_has_one, NULL, WAIT_MS));
    assert_false(c->done);
    add_worker(f, 0, "url", h_hello, 1);
    assert_true(tt_run_until(f->base, call_done, c, WAIT_MS));
    assert_int_equal(c->status, 200);
    assert_string_equal(body_of(c), "Hello world!");
    check_idle(f);
}

static void test_redis_restart(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    add_worker(f, 0, "url", h_hello, 2);
    http_call *c = http_get(f, "/before");
    assert_int_equal(c->status, 200);

    tt_redis_kill(&g_redis);
    assert_true(tt_run_until(f->base, all_nodes_down, f, WAIT_MS));
    c = http_get(f, "/during");
    assert_int_equal(c->status, 503);

    assert_int_equal(tt_redis_restart(&g_redis, NULL), 0);
    assert_true(tt_run_until(f->base, all_nodes_up, f, WAIT_MS));
    for (int i = 0; i < 3; i++) {
        c = http_get(f, "/after");
        assert_int_equal(c->status, 200);
        assert_string_equal(body_of(c), "Hello world!");
    }
    assert_int_equal(f->handled, 4);
    check_idle(f);
}

int main(void) {
    tt_require_redis();
    if (getenv("TT_TEST_FILTER")) /* e.g. TT_TEST_FILTER='test_client_*' */
        cmocka_set_test_filter(getenv("TT_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_504, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_too_large_413, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_answer_502, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_handler_502, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streamed_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_unreachable_503, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_leaves_early, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_leaves_answer_right_after, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_leaves_during_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_300, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_started_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart, setup, teardown),
    };
    tt_group_redis(&g_redis);
    return cmocka_run_group_tests_name("front", tests, tt_group_setup, tt_group_teardown);
}
