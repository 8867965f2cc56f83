/* SPDX-License-Identifier: MIT */
/*
 * Interoperability with the Tempest peers written in other languages, each
 * played by a thread that speaks the wire format with plain blocking code:
 *
 * - a foreign worker (as the Ruby and Python workers do it, with synchronous
 *   hiredis): BLPOP the job, decode it, connect to respond_to, open with
 *   SELECT / CLIENT SETNAME / PING as redis-rb does, send `url <id> <json>`,
 *   and the C front answers its HTTP client with that answer;
 * - a foreign front (as the Node.js front does it): the test RPUSHes a job
 *   by hand and plays the node listener on a plain TCP socket, parsing RESP
 *   with hiredis's redisReader; the C worker answers it, one answer or a
 *   stream (`MORE`), and a job with a null respond_to sends nothing.
 *
 * The threads never touch libtempest or cmocka: they record what they saw
 * and the main thread, which runs the event loop, checks it.
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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_node.h"
#include "tt_http.h"

#define WAIT_MS 5000
#define MAX_CMDS 16
#define MAX_ARGS 8

static tt_redis g_redis;

/* ---- the HTTP client (evhttp, on the test's loop) ------------------------- */

typedef tt_http_call http_call;

static void http_start(http_call *c, struct event_base *base, int port, const char *uri) {
    tt_http_start(c, base, port, EVHTTP_REQ_GET, uri, NULL, NULL, 0);
}

/* ---- a foreign worker: synchronous hiredis, as Ruby and Python do --------- */

typedef struct foreign_worker {
    int redis_port;
    pthread_t thread;
    bool started;
    atomic_bool finished;
    char error[256]; /* empty when every step went as expected */
    json_t *job;     /* the decoded job */
    char reply[64];  /* status of the answer command */
} foreign_worker;

static void fw_fail(foreign_worker *fw, const char *fmt, ...) {
    va_list ap;
    if (fw->error[0] != '\0')
        return;
    va_start(ap, fmt);
    vsnprintf(fw->error, sizeof fw->error, fmt, ap);
    va_end(ap);
}

static redisContext *fw_connect(const char *host, int port) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (c != NULL && c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK)
        return c;
    redisFree(c);
    return NULL;
}

/* Sends a command and checks for the status reply `want`. */
static bool fw_status(foreign_worker *fw, redisContext *c, const char *want, int argc,
                      const char **argv, const size_t *lens) {
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, want) == 0;
    if (!ok)
        fw_fail(fw, "%s: expected +%s, got type %d '%s'", argv[0], want, r ? r->type : -1,
                r && r->str ? r->str : (c->err ? c->errstr : ""));
    if (r && r->type == REDIS_REPLY_STATUS && strcmp(argv[0], "url") == 0)
        snprintf(fw->reply, sizeof fw->reply, "%s", r->str);
    freeReplyObject(r);
    return ok;
}

/* BLPOP tempest (bounded), as `BLPOP tempest 0` but unable to hang the test. */
static json_t *fw_take(foreign_worker *fw) {
    redisContext *c = fw_connect("127.0.0.1", fw->redis_port);
    if (c == NULL) {
        fw_fail(fw, "cannot connect to redis");
        return NULL;
    }
    redisReply *r = redisCommand(c, "BLPOP %s %d", "tempest", 5);
    json_t *job = NULL;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING) {
        json_error_t jerr;
        job = json_loadb(r->element[1]->str, r->element[1]->len, 0, &jerr);
        if (job == NULL)
            fw_fail(fw, "job is not JSON: %s", jerr.text);
    } else {
        fw_fail(fw, "BLPOP: no job (reply type %d)", r ? r->type : -1);
    }
    freeReplyObject(r);
    redisFree(c);
    return job;
}

/* Connects to respond_to and answers the job as a Ruby worker would. */
static void fw_answer(foreign_worker *fw, const char *respond_to, json_int_t id, const char *url) {
    char host[64], idtext[32];
    const char *colon = strrchr(respond_to, ':');
    if (colon == NULL || (size_t)(colon - respond_to) >= sizeof host) {
        fw_fail(fw, "bad respond_to '%s'", respond_to);
        return;
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - respond_to), respond_to);
    redisContext *c = fw_connect(host, atoi(colon + 1));
    if (c == NULL) {
        fw_fail(fw, "cannot connect to respond_to %s", respond_to);
        return;
    }
    json_t *a = json_pack("[i,{s:s,s:s},s+]", 200, "Content-Type", "text/plain", "X-Answered-By",
                          "ruby", "from a foreign worker: ", url);
    /* "/badjson": an answer that does not decode, as a buggy worker sends */
    char *payload =
        strstr(url, "badjson") ? strdup("[200,{},\"unterminated") : json_dumps(a, JSON_COMPACT);
    snprintf(idtext, sizeof idtext, "%" JSON_INTEGER_FORMAT, id);
    const char *select[] = {"SELECT", "0"}, *setname[] = {"CLIENT", "SETNAME", "rubyworker"};
    const char *ping[] = {"PING"}, *url_cmd[] = {"url", idtext, payload};
    size_t url_lens[] = {3, strlen(idtext), payload ? strlen(payload) : 0};
    if (payload && fw_status(fw, c, "OK", 2, select, NULL) &&
        fw_status(fw, c, "OK", 3, setname, NULL) && fw_status(fw, c, "PONG", 1, ping, NULL))
        fw_status(fw, c, "OK", 3, url_cmd, url_lens);
    free(payload);
    json_decref(a);
    redisFree(c);
}

static void *foreign_worker_main(void *arg) {
    foreign_worker *fw = arg;
    json_t *job = fw_take(fw);
    fw->job = job;
    if (job) {
        json_t *action = json_array_get(job, 0), *args = json_array_get(job, 1);
        json_t *respond_to = json_array_get(job, 2), *id = json_array_get(job, 3);
        json_t *url = json_object_get(json_array_get(args, 0), "url");
        if (!json_is_array(job) || json_array_size(job) != 4 || !json_is_string(action) ||
            !json_is_array(args) || !json_is_string(respond_to) || !json_is_integer(id) ||
            !json_is_string(url))
            fw_fail(fw, "job has the wrong shape");
        else
            fw_answer(fw, json_string_value(respond_to), json_integer_value(id),
                      json_string_value(url));
    }
    atomic_store(&fw->finished, true);
    return NULL;
}

/* ---- a foreign node listener: plain socket + redisReader ------------------ */

typedef struct fake_listener {
    int fd;
    int port;
    pthread_t thread;
    bool started;
    atomic_bool finished;
    atomic_int connections;
    char error[256];
    int ncmds;
    int argc[MAX_CMDS];
    char *argv[MAX_CMDS][MAX_ARGS];
    size_t arglen[MAX_CMDS][MAX_ARGS];
} fake_listener;

static void fl_fail(fake_listener *fl, const char *what) {
    if (fl->error[0] == '\0')
        snprintf(fl->error, sizeof fl->error, "%s (%s)", what, strerror(errno));
}

/* Records one request; returns true when it was the final `url` answer. */
static bool fl_record(fake_listener *fl, const redisReply *r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 || r->elements > MAX_ARGS ||
        fl->ncmds >= MAX_CMDS) {
        snprintf(fl->error, sizeof fl->error, "unexpected request (type %d, %zu elements)", r->type,
                 r->elements);
        return true;
    }
    int i = fl->ncmds++;
    fl->argc[i] = (int)r->elements;
    for (size_t k = 0; k < r->elements; k++) {
        const redisReply *e = r->element[k];
        fl->argv[i][k] = malloc(e->len + 1);
        if (fl->argv[i][k] == NULL)
            return true;
        memcpy(fl->argv[i][k], e->str, e->len);
        fl->argv[i][k][e->len] = '\0';
        fl->arglen[i][k] = e->len;
    }
    return strcmp(fl->argv[i][0], "url") == 0 && r->elements == 3;
}

/* Serves one client until its final `url` answer, EOF or 5 s of silence. */
static bool fl_serve(fake_listener *fl, int client) {
    redisReader *reader = redisReaderCreate();
    bool final = false, eof = false;
    char buf[4096];
    while (reader && !final && !eof) {
        struct pollfd p = {.fd = client, .events = POLLIN};
        if (poll(&p, 1, WAIT_MS) != 1) {
            fl_fail(fl, "client silent");
            break;
        }
        ssize_t n = recv(client, buf, sizeof buf, 0);
        if (n <= 0) {
            eof = true;
            break;
        }
        redisReaderFeed(reader, buf, (size_t)n);
        void *reply;
        while (!final && redisReaderGetReply(reader, &reply) == REDIS_OK && reply) {
            final = fl_record(fl, reply);
            freeReplyObject(reply);
            if (send(client, "+OK\r\n", 5, MSG_NOSIGNAL) != 5)
                fl_fail(fl, "send");
        }
        if (reader->err) {
            snprintf(fl->error, sizeof fl->error, "RESP: %s", reader->errstr);
            break;
        }
    }
    redisReaderFree(reader);
    return final;
}

static void *fake_listener_main(void *arg) {
    fake_listener *fl = arg;
    bool final = false;
    while (!final && fl->error[0] == '\0') {
        struct pollfd p = {.fd = fl->fd, .events = POLLIN};
        if (poll(&p, 1, WAIT_MS) != 1) {
            fl_fail(fl, "nobody connected");
            break;
        }
        int client = accept(fl->fd, NULL, NULL);
        if (client < 0) {
            fl_fail(fl, "accept");
            break;
        }
        atomic_fetch_add(&fl->connections, 1);
        final = fl_serve(fl, client);
        close(client);
    }
    atomic_store(&fl->finished, true);
    return NULL;
}

static void fake_listener_start(fake_listener *fl) {
    fl->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fl->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fl->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fl->fd, 8), 0);
    assert_int_equal(getsockname(fl->fd, (struct sockaddr *)&sa, &len), 0);
    fl->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&fl->thread, NULL, fake_listener_main, fl), 0);
    fl->started = true;
}

static void fake_listener_free(fake_listener *fl) {
    if (fl->started)
        pthread_join(fl->thread, NULL);
    if (fl->fd > 0)
        close(fl->fd);
    for (int i = 0; i < fl->ncmds; i++)
        for (int k = 0; k < fl->argc[i]; k++)
            free(fl->argv[i][k]);
    memset(fl, 0, sizeof *fl);
}

/* ---- fixture -------------------------------------------------------------- */

typedef struct fx {
    struct event_base *base;
    tempest_node *node;
    tempest_front *front;
    tempest_worker *worker;
    http_call call;
    foreign_worker fw;
    fake_listener fl;
    int handled;
    int errors;
    json_t *jobs; /* [action, args, respond_to, id] of each job handled */
} fx;

static void on_log(int level, const char *message, void *arg) {
    (void)arg;
    if (level >= TEMPEST_LOG_WARN)
        fprintf(stderr, "  log: %s\n", message);
}

static int setup(void **state) {
    if (tt_fixture_setup(state, sizeof(fx), &g_redis) != 0)
        return -1;
    fx *f = *state;
    if ((f->jobs = json_array()) == NULL) {
        tt_fixture_free(f);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    if (f->fw.started)
        pthread_join(f->fw.thread, NULL);
    json_decref(f->fw.job);
    fake_listener_free(&f->fl);
    tt_http_call_free(&f->call);
    tempest_worker_free(f->worker);
    tempest_front_free(f->front);
    tempest_node_free(f->node);
    event_base_free(f->base);
    json_decref(f->jobs);
    free(f);
    return 0;
}

static void start_node(fx *f) {
    tempest_error err = {0};
    tempest_node_options no = {
        .redis_url = g_redis.url, .reconnect_max_ms = 200, .log = on_log, .log_arg = f};
    f->node = tempest_node_new(f->base, &no, &err);
    assert_non_null(f->node);
    assert_true(tt_run_until(f->base, tt_node_up, f->node, WAIT_MS));
}

/* Worker handler: records the job, then answers as the job's url says. */
static void h_record(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->handled++;
    const char *rt = tempest_job_respond_to(job);
    json_array_append_new(f->jobs,
                          json_pack("[s,O,s?,I]", tempest_job_action(job), tempest_job_args(job),
                                    rt, (json_int_t)tempest_job_id(job)));
    const char *url =
        json_string_value(json_object_get(json_array_get(tempest_job_args(job), 0), "url"));
    bool stream = url && strcmp(url, "/stream") == 0;
    json_t *first = json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain",
                              stream ? "part one, " : "hello from C");
    if (tempest_job_answer(job, first, stream) != 0)
        f->errors++;
    json_decref(first);
    if (stream) {
        json_t *last = json_pack("[n,n,s]", "part two");
        if (tempest_job_answer(job, last, false) != 0)
            f->errors++;
        json_decref(last);
    }
}

static void start_worker(fx *f) {
    tempest_error err = {0};
    start_node(f);
    f->worker = tempest_worker_new(f->node, NULL, &err);
    assert_non_null(f->worker);
    assert_int_equal(tempest_worker_on(f->worker, "url", h_record, f), 0);
    assert_int_equal(tempest_worker_start(f->worker), 0);
}

static void expect_arg(const fake_listener *fl, int cmd, int k, const char *want) {
    assert_true(cmd < fl->ncmds && k < fl->argc[cmd]);
    assert_int_equal(fl->arglen[cmd][k], strlen(want));
    assert_string_equal(fl->argv[cmd][k], want);
}

/* argv[k] of request `cmd` must be JSON equal to `want` (stolen). */
static void expect_json_arg(const fake_listener *fl, int cmd, int k, json_t *want) {
    assert_true(cmd < fl->ncmds && k < fl->argc[cmd]);
    json_error_t jerr;
    json_t *got = json_loadb(fl->argv[cmd][k], fl->arglen[cmd][k], 0, &jerr);
    assert_non_null(got);
    assert_non_null(want);
    if (!json_equal(got, want))
        fprintf(stderr, "got %s\n", fl->argv[cmd][k]);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
}

/* Command `cmd` is the worker's `TEMPEST PEER 1`, sent before its answers. */
static void expect_hello(const fake_listener *fl, int cmd) {
    assert_true(cmd < fl->ncmds);
    assert_int_equal(fl->argc[cmd], 3);
    expect_arg(fl, cmd, 0, "TEMPEST");
    expect_arg(fl, cmd, 1, "PEER");
    expect_arg(fl, cmd, 2, "1");
}

static bool fl_finished(void *arg) {
    return atomic_load(&((fake_listener *)arg)->finished);
}

static bool fw_finished(void *arg) {
    return atomic_load(&((foreign_worker *)arg)->finished);
}

static bool call_done(void *arg) {
    return ((http_call *)arg)->done;
}

/* The C front on its node, and the foreign worker's thread started. */
static void start_front_and_foreign_worker(fx *f) {
    tempest_error err = {0};
    start_node(f);
    f->front = tempest_front_new(f->node, &(tempest_front_options){.http = "127.0.0.1:0"}, &err);
    assert_non_null(f->front);
    f->fw.redis_port = g_redis.port;
    assert_int_equal(pthread_create(&f->fw.thread, NULL, foreign_worker_main, &f->fw), 0);
    f->fw.started = true;
}

/* ---- tests ---------------------------------------------------------------- */

/* (a) A C front answered by a foreign worker. */
static void test_foreign_worker_answers_c_front(void **state) {
    fx *f = *state;
    start_front_and_foreign_worker(f);
    http_start(&f->call, f->base, tempest_front_port(f->front), "/from/c?q=1");
    assert_true(tt_run_until(f->base, call_done, &f->call, WAIT_MS * 2));
    assert_true(tt_run_until(f->base, fw_finished, &f->fw, WAIT_MS));
    pthread_join(f->fw.thread, NULL);
    f->fw.started = false;

    if (f->fw.error[0])
        fprintf(stderr, "foreign worker: %s\n", f->fw.error);
    assert_string_equal(f->fw.error, "");
    assert_string_equal(f->fw.reply, "OK");
    /* The job the C front queued, as a foreign worker sees it. */
    json_t *job = f->fw.job;
    assert_int_equal(json_array_size(job), 4);
    assert_string_equal(json_string_value(json_array_get(job, 0)), "url");
    assert_string_equal(json_string_value(json_array_get(job, 2)), tempest_node_address(f->node));
    assert_true(json_integer_value(json_array_get(job, 3)) > 0);
    json_t *req = json_array_get(json_array_get(job, 1), 0);
    assert_string_equal(json_string_value(json_object_get(req, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(req, "url")), "/from/c?q=1");
    assert_string_equal(json_string_value(json_object_get(json_object_get(req, "headers"), "host")),
                        "127.0.0.1");
    assert_null(json_object_get(req, "body"));

    assert_int_equal(f->call.status, 200);
    assert_string_equal(f->call.text, "from a foreign worker: /from/c?q=1");
    assert_string_equal(evhttp_find_header(&f->call.headers, "Content-Type"), "text/plain");
    assert_string_equal(evhttp_find_header(&f->call.headers, "X-Answered-By"), "ruby");
    assert_int_equal(tempest_front_pending(f->front), 0);
    assert_int_equal(tempest_work_pending(f->node), 0);
}

static bool handled_two(void *arg) {
    fx *f = arg;
    return f->handled == 2 && tempest_worker_in_hand(f->worker) == 0;
}

/* (a') A foreign worker's answer that does not decode: it gets +OK (its
 * client would throw on an error reply), and the HTTP client gets 502 at
 * once instead of waiting for the timeout. */
static void test_foreign_worker_bad_answer(void **state) {
    fx *f = *state;
    start_front_and_foreign_worker(f);
    long long t0 = tt_now_ms();
    http_start(&f->call, f->base, tempest_front_port(f->front), "/badjson");
    assert_true(tt_run_until(f->base, call_done, &f->call, WAIT_MS * 2));
    assert_true(tt_now_ms() - t0 < 10000); /* the front's timeout is 30 s */
    assert_true(tt_run_until(f->base, fw_finished, &f->fw, WAIT_MS));
    pthread_join(f->fw.thread, NULL);
    f->fw.started = false;
    assert_string_equal(f->fw.error, "");
    assert_string_equal(f->fw.reply, "OK");
    assert_int_equal(f->call.status, 502);
    assert_int_equal(tempest_node_answers_dropped(f->node), 1);
    assert_int_equal(tempest_front_pending(f->front), 0);
}

/* (b) A job pushed by hand as the Node.js front does, answered by a C worker. */
static void test_c_worker_answers_foreign_front(void **state) {
    fx *f = *state;
    char job[256];
    fake_listener_start(&f->fl);
    /* First a fire-and-forget job (respond_to null), then one that waits. */
    assert_int_equal(tt_redis_int(&g_redis, "RPUSH tempest %s",
                                  "[\"url\",[{\"method\":\"GET\",\"url\":\"/y\",\"headers\":{}}],"
                                  "null,8]"),
                     1);
    snprintf(job, sizeof job,
             "[\"url\",[{\"method\":\"GET\",\"url\":\"/x\",\"headers\":{}}],\"127.0.0.1:%d\",7]",
             f->fl.port);
    assert_int_equal(tt_redis_int(&g_redis, "RPUSH tempest %s", job), 2);
    start_worker(f);
    assert_true(tt_run_until(f->base, fl_finished, &f->fl, WAIT_MS * 2));
    assert_true(tt_run_until(f->base, handled_two, f, WAIT_MS));
    pthread_join(f->fl.thread, NULL);
    f->fl.started = false;

    if (f->fl.error[0])
        fprintf(stderr, "listener: %s\n", f->fl.error);
    assert_string_equal(f->fl.error, "");
    /* Two commands reached the listener, on one connection: the worker's
     * TEMPEST PEER (the listener answered +OK, as the original did to
     * every command), then the answer to job 7. */
    assert_int_equal(atomic_load(&f->fl.connections), 1);
    assert_int_equal(f->fl.ncmds, 2);
    expect_hello(&f->fl, 0);
    assert_int_equal(f->fl.argc[1], 3);
    expect_arg(&f->fl, 1, 0, "url");
    expect_arg(&f->fl, 1, 1, "7");
    expect_json_arg(&f->fl, 1, 2,
                    json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "hello from C"));
    expect_arg(&f->fl, 1, 2, "[200,{\"Content-Type\":\"text/plain\"},\"hello from C\"]");

    /* The handler saw both jobs exactly as pushed. */
    char rt[32];
    snprintf(rt, sizeof rt, "127.0.0.1:%d", f->fl.port);
    json_t *want =
        json_pack("[[s,[{s:s,s:s,s:{}}],n,i],[s,[{s:s,s:s,s:{}}],s,i]]", "url", "method", "GET",
                  "url", "/y", "headers", 8, "url", "method", "GET", "url", "/x", "headers", rt, 7);
    assert_non_null(want);
    assert_true(json_equal(f->jobs, want));
    json_decref(want);
    assert_int_equal(f->errors, 0);
    assert_int_equal(tempest_worker_taken(f->worker), 2);
    assert_int_equal(tt_redis_int(&g_redis, "LLEN {tempest}:dead"), 0);
}

/* (c) A streamed answer reaches a foreign listener as MORE, then final. */
static void test_c_worker_streams_to_foreign_front(void **state) {
    fx *f = *state;
    char job[256];
    fake_listener_start(&f->fl);
    snprintf(job, sizeof job,
             "[\"url\",[{\"method\":\"GET\",\"url\":\"/stream\",\"headers\":{}}],"
             "\"127.0.0.1:%d\",8]",
             f->fl.port);
    assert_int_equal(tt_redis_int(&g_redis, "RPUSH tempest %s", job), 1);
    start_worker(f);
    assert_true(tt_run_until(f->base, fl_finished, &f->fl, WAIT_MS * 2));
    pthread_join(f->fl.thread, NULL);
    f->fl.started = false;

    if (f->fl.error[0])
        fprintf(stderr, "listener: %s\n", f->fl.error);
    assert_string_equal(f->fl.error, "");
    assert_int_equal(f->handled, 1);
    assert_int_equal(f->errors, 0);
    assert_int_equal(f->fl.ncmds, 3);
    expect_hello(&f->fl, 0);
    assert_int_equal(f->fl.argc[1], 4);
    expect_arg(&f->fl, 1, 0, "url");
    expect_arg(&f->fl, 1, 1, "8");
    expect_json_arg(&f->fl, 1, 2,
                    json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", "part one, "));
    expect_arg(&f->fl, 1, 2, "[200,{\"Content-Type\":\"text/plain\"},\"part one, \"]");
    expect_arg(&f->fl, 1, 3, "MORE");
    assert_int_equal(f->fl.argc[2], 3);
    expect_arg(&f->fl, 2, 0, "url");
    expect_arg(&f->fl, 2, 1, "8");
    expect_json_arg(&f->fl, 2, 2, json_pack("[n,n,s]", "part two"));
    expect_arg(&f->fl, 2, 2, "[null,null,\"part two\"]");
    assert_int_equal(tempest_worker_in_hand(f->worker), 0);
}

int main(void) {
    tt_require_redis();
    if (getenv("TT_TEST_FILTER")) /* e.g. TT_TEST_FILTER='test_client_*' */
        cmocka_set_test_filter(getenv("TT_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_foreign_worker_answers_c_front, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_worker_bad_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_c_worker_answers_foreign_front, setup, teardown),
        cmocka_unit_test_setup_teardown(test_c_worker_streams_to_foreign_front, setup, teardown),
    };
    tt_group_redis(&g_redis);
    return cmocka_run_group_tests_name("interop", tests, tt_group_setup, tt_group_teardown);
}
