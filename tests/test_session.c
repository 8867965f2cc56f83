/* SPDX-License-Identifier: MIT */
/*
 * Sessions through the real front and a private redis-server: the cookie
 * (attributes, reuse, forged and tampered values), the session id reaching
 * the worker in the `url` job, the worker's get/set/del/clear (null,
 * nested values, missing fields), the raw hash as the Ruby code reads it
 * (plain synchronous hiredis: `[value]` JSON), the idle TTL and its
 * refresh, and the callbacks of calls outlived by their job or worker.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_http.h"

#define SECRET "a test secret of some length"
#define WAIT_MS 5000

static tt_redis g_redis;

typedef struct fx {
    struct event_base *base;
    tempest_node *node, *wnode;
    tempest_front *front;
    tempest_worker *worker;
    int port;
    int jobs;
    char sid[64]; /* the session id the worker saw last ("-": none) */
    char ttl[32]; /* its "session_ttl" */
    tempest_job *held;
} fx;

/* One session call's outcome. */
typedef struct outcome {
    int calls;
    tempest_job *job;
    int status;
    char *value; /* the value as compact JSON, "MISSING" for NULL */
} outcome;

static void on_outcome(tempest_job *job, int status, json_t *value, void *arg) {
    outcome *o = arg;
    o->calls++;
    o->job = job;
    o->status = status;
    free(o->value);
    o->value = value ? json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("MISSING");
}

static bool outcome_in(void *arg) {
    return ((outcome *)arg)->calls > 0;
}

/* ---- Redis as the Ruby code reads it ------------------------------------ */

/* HGET session:<sid> <field> as a string ("(nil)" when missing). */
static void raw_field(const char *sid, const char *field, char *out, size_t len) {
    redisReply *r = tt_redis_command(&g_redis, "HGET session:%s %s", sid, field);
    snprintf(out, len, "%s", r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
    freeReplyObject(r);
}

/* ---- fixture ------------------------------------------------------------ */

static void h_url(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->jobs++;
    const char *sid = tempest_job_session(job);
    json_t *req = json_array_get(tempest_job_args(job), 0);
    snprintf(f->sid, sizeof f->sid, "%s", sid ? sid : "-");
    snprintf(f->ttl, sizeof f->ttl, "%lld",
             (long long)json_integer_value(json_object_get(req, "session_ttl")));
    const char *url = json_string_value(json_object_get(req, "url"));
    if (url && strcmp(url, "/hold") == 0) {
        f->held = job;
        return;
    }
    json_t *a = json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", f->sid);
    tempest_job_answer(job, a, false);
    json_decref(a);
}

static int setup(void **state) {
    return tt_fixture_setup(state, sizeof(fx), &g_redis);
}

static int teardown(void **state) {
    fx *f = *state;
    tempest_worker_free(f->worker);
    tempest_front_free(f->front);
    tempest_node_free(f->wnode);
    tempest_node_free(f->node);
    tt_fixture_free(f);
    return 0;
}

static bool nodes_up(void *arg) {
    fx *f = arg;
    return tempest_node_state(f->node) == TEMPEST_NODE_UP &&
           tempest_node_state(f->wnode) == TEMPEST_NODE_UP;
}

/* A front with `fo` (sessions on, SECRET unless set) and one worker. */
static void start(fx *f, tempest_front_options fo) {
    tempest_node_options no = {.redis_url = g_redis.url};
    tempest_error err = {0};
    f->node = tempest_node_new(f->base, &no, &err);
    f->wnode = tempest_node_new(f->base, &no, &err);
    assert_non_null(f->node);
    assert_non_null(f->wnode);
    fo.http = "127.0.0.1:0";
    fo.sessions = true;
    if (fo.session_secret == NULL)
        fo.session_secret = SECRET;
    f->front = tempest_front_new(f->node, &fo, &err);
    if (f->front == NULL)
        fprintf(stderr, "front: %s\n", err.message);
    assert_non_null(f->front);
    f->port = tempest_front_port(f->front);
    f->worker = tempest_worker_new(f->wnode, &(tempest_worker_options){.concurrency = 4}, &err);
    assert_non_null(f->worker);
    assert_int_equal(tempest_worker_on(f->worker, "url", h_url, f), 0);
    assert_int_equal(tempest_worker_start(f->worker), 0);
    assert_true(tt_run_until(f->base, nodes_up, f, WAIT_MS));
}

/* GET `uri` with an optional Cookie header. */
static void get(fx *f, const char *uri, const char *cookie, tt_http *r) {
    const char *h[] = {"Cookie", cookie, NULL};
    assert_int_equal(tt_http_do(f->base, f->port, EVHTTP_REQ_GET, uri, cookie ? h : NULL, NULL, r),
                     0);
    assert_int_equal(r->status, 200);
}

/* The cookie's `name=value` part (before the first ';'). */
static void cookie_pair(tt_http *r, char *out, size_t len) {
    const char *sc = tt_http_header(r, "Set-Cookie");
    assert_non_null(sc);
    snprintf(out, len, "%.*s", (int)strcspn(sc, ";"), sc);
}

static bool matches(const char *text, const char *pattern) {
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    return rc == 0;
}

/* ---- cookies ------------------------------------------------------------ */

static void test_cookie_issued(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){0});
    tt_http r;
    get(f, "/", NULL, &r);
    const char *sc = tt_http_header(&r, "Set-Cookie");
    assert_non_null(sc);
    assert_true(matches(sc, "^tempest_sid=[0-9a-f]{32}\\.[A-Za-z0-9_-]{43}; Path=/; HttpOnly; "
                            "SameSite=Lax$"));
    assert_int_equal(tt_http_header_count(&r, "Set-Cookie"), 1);
    /* The worker got the id of the cookie, and the idle TTL (one day). */
    assert_int_equal(strncmp(sc + strlen("tempest_sid="), f->sid, 32), 0);
    assert_string_equal(r.body, f->sid);
    assert_string_equal(f->ttl, "86400000");
    tt_http_clear(&r);
    /* Another browser, another id. */
    char first[64];
    snprintf(first, sizeof first, "%s", f->sid);
    get(f, "/", NULL, &r);
    assert_string_not_equal(f->sid, first);
    tt_http_clear(&r);
    /* Nothing is written to Redis until a worker writes. */
    assert_int_equal(tt_redis_int(&g_redis, "KEYS session:*"), 0);
}

static void test_cookie_options(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){
                 .session_cookie = "sid", .session_secure = true, .session_ttl_ms = 5000});
    tt_http r;
    get(f, "/", NULL, &r);
    assert_true(matches(tt_http_header(&r, "Set-Cookie"),
                        "^sid=[0-9a-f]{32}\\.[A-Za-z0-9_-]{43}; Path=/; HttpOnly; "
                        "SameSite=Lax; Secure$"));
    assert_string_equal(f->ttl, "5000");
    tt_http_clear(&r);
}

static void test_cookie_reused(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){0});
    tt_http r;
    char cookie[256], sid[64], many[400];
    get(f, "/", NULL, &r);
    cookie_pair(&r, cookie, sizeof cookie);
    snprintf(sid, sizeof sid, "%s", f->sid);
    tt_http_clear(&r);
    get(f, "/again", cookie, &r);
    assert_null(tt_http_header(&r, "Set-Cookie")); /* kept: no new cookie */
    assert_string_equal(f->sid, sid);
    tt_http_clear(&r);
    /* Among other cookies, with blanks. */
    snprintf(many, sizeof many, "a=1;  %s ; b=2", cookie);
    get(f, "/again", many, &r);
    assert_null(tt_http_header(&r, "Set-Cookie"));
    assert_string_equal(f->sid, sid);
    tt_http_clear(&r);
    /* Each use refreshes the hash's idle TTL. */
    freeReplyObject(tt_redis_command(&g_redis, "HSET session:%s k [1]", sid));
    freeReplyObject(tt_redis_command(&g_redis, "PEXPIRE session:%s 100000", sid));
    get(f, "/again", cookie, &r);
    tt_http_clear(&r);
    tt_run_for(f->base, 100); /* the refresh is not waited for */
    long long pttl = tt_redis_int(&g_redis, "PTTL session:%s", sid);
    assert_true(pttl > 100000 && pttl <= 86400000);
}

/* Each cookie value gets a new session: a different id, a new cookie. */
static void expect_new(fx *f, const char *cookie, const char *old_sid) {
    tt_http r;
    get(f, "/", cookie, &r);
    assert_non_null(tt_http_header(&r, "Set-Cookie"));
    assert_string_not_equal(f->sid, old_sid);
    assert_int_equal(strlen(f->sid), 32);
    tt_http_clear(&r);
}

static void test_cookie_tampered(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){0});
    tt_http r;
    char cookie[256], sid[64], bad[300];
    get(f, "/", NULL, &r);
    cookie_pair(&r, cookie, sizeof cookie);
    snprintf(sid, sizeof sid, "%s", f->sid);
    tt_http_clear(&r);
    char *dot = strchr(cookie, '.');
    assert_non_null(dot);
    /* The signature's last character changed. */
    snprintf(bad, sizeof bad, "%s", cookie);
    bad[strlen(bad) - 1] = bad[strlen(bad) - 1] == 'A' ? 'B' : 'A';
    expect_new(f, bad, sid);
    /* The id changed, the signature kept. */
    snprintf(bad, sizeof bad, "%s", cookie);
    char *idc = bad + strlen("tempest_sid=");
    *idc = *idc == '0' ? '1' : '0';
    expect_new(f, bad, sid);
    /* No signature, a truncated one, one too long, upper-case hex. */
    snprintf(bad, sizeof bad, "tempest_sid=%s", sid);
    expect_new(f, bad, sid);
    snprintf(bad, sizeof bad, "%.*s", (int)strlen(cookie) - 1, cookie);
    expect_new(f, bad, sid);
    snprintf(bad, sizeof bad, "%sA", cookie);
    expect_new(f, bad, sid);
    /* Signed under another secret. */
    tempest_front *other = tempest_front_new(
        f->node,
        &(tempest_front_options){
            .http = "127.0.0.1:0", .sessions = true, .session_secret = "another secret, 16+"},
        NULL);
    assert_non_null(other);
    int port = f->port;
    f->port = tempest_front_port(other);
    get(f, "/", NULL, &r);
    f->port = port;
    cookie_pair(&r, bad, sizeof bad);
    tt_http_clear(&r);
    tempest_front_free(other);
    expect_new(f, bad, sid);
    /* The genuine one still works. */
    get(f, "/", cookie, &r);
    assert_string_equal(f->sid, sid);
    tt_http_clear(&r);
}

static void test_bad_options(void **state) {
    fx *f = *state;
    tempest_error err = {0};
    f->node = tempest_node_new(f->base, &(tempest_node_options){.redis_url = g_redis.url}, NULL);
    assert_non_null(f->node);
    unsetenv("TEMPEST_SESSION_SECRET");
    tempest_front_options fo = {.http = "127.0.0.1:0", .sessions = true};
    assert_null(tempest_front_new(f->node, &fo, &err));
    assert_int_equal(err.code, TEMPEST_EINVAL);
    fo.session_secret = "too short";
    assert_null(tempest_front_new(f->node, &fo, &err));
    fo.session_secret = SECRET;
    fo.session_cookie = "bad name";
    assert_null(tempest_front_new(f->node, &fo, &err));
    /* The secret from the environment. */
    setenv("TEMPEST_SESSION_SECRET", SECRET, 1);
    fo = (tempest_front_options){.http = "127.0.0.1:0", .sessions = true};
    tempest_front *front = tempest_front_new(f->node, &fo, &err);
    unsetenv("TEMPEST_SESSION_SECRET");
    assert_non_null(front);
    tempest_front_free(front);
}

/* ---- the worker's calls ------------------------------------------------- */

static bool held(void *arg) {
    return ((fx *)arg)->held != NULL;
}

static void on_ignored(struct evhttp_request *req, void *arg) {
    (void)req;
    (void)arg;
}

/* Sends GET /hold (not waited for) and returns the job the worker holds. */
static tempest_job *hold(fx *f, struct evhttp_connection **conn, const char *cookie) {
    *conn = evhttp_connection_base_new(f->base, NULL, "127.0.0.1", (ev_uint16_t)f->port);
    struct evhttp_request *req = evhttp_request_new(on_ignored, NULL);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "x");
    if (cookie)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Cookie", cookie);
    assert_int_equal(evhttp_make_request(*conn, req, EVHTTP_REQ_GET, "/hold"), 0);
    f->held = NULL;
    assert_true(tt_run_until(f->base, held, f, WAIT_MS));
    return f->held;
}

static void wait_outcome(fx *f, outcome *o) {
    assert_true(tt_run_until(f->base, outcome_in, o, WAIT_MS));
    assert_int_equal(o->calls, 1);
}

static void do_set(fx *f, tempest_job *job, const char *key, json_t *v) {
    outcome o = {0};
    assert_int_equal(tempest_session_set(job, key, v, on_outcome, &o), 0);
    assert_int_equal(o.calls, 0); /* never from inside the call */
    wait_outcome(f, &o);
    assert_int_equal(o.status, 0);
    assert_ptr_equal(o.job, job);
    assert_string_equal(o.value, "MISSING");
    free(o.value);
    json_decref(v);
}

/* Gets `key` and checks its JSON text ("MISSING" when absent). */
static void expect_get(fx *f, tempest_job *job, const char *key, const char *want) {
    outcome o = {0};
    assert_int_equal(tempest_session_get(job, key, on_outcome, &o), 0);
    wait_outcome(f, &o);
    assert_int_equal(o.status, 0);
    assert_ptr_equal(o.job, job);
    assert_string_equal(o.value, want);
    free(o.value);
}

static void expect_raw(const char *sid, const char *field, const char *want) {
    char raw[512];
    raw_field(sid, field, raw, sizeof raw);
    assert_string_equal(raw, want);
}

static void test_round_trips(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){.session_ttl_ms = 60000});
    struct evhttp_connection *conn;
    tempest_job *job = hold(f, &conn, NULL);
    const char *sid = tempest_job_session(job);
    assert_non_null(sid);
    expect_get(f, job, "nothing", "MISSING");
    do_set(f, job, "n", json_null());
    do_set(f, job, "obj", json_pack("{s:[i,i,{s:n}],s:s}", "a", 1, 2, "b", "c", "d"));
    do_set(f, job, "s", json_string("caf\xc3\xa9 \"q\""));
    do_set(f, job, "i", json_integer(42));
    do_set(f, job, "f", json_false());
    /* What the Ruby code reads: one-element JSON arrays. */
    expect_raw(sid, "n", "[null]");
    expect_raw(sid, "obj", "[{\"a\":[1,2,{\"b\":null}],\"c\":\"d\"}]");
    expect_raw(sid, "s", "[\"caf\xc3\xa9 \\\"q\\\"\"]");
    expect_raw(sid, "i", "[42]");
    expect_raw(sid, "f", "[false]");
    long long pttl = tt_redis_int(&g_redis, "PTTL session:%s", sid);
    assert_true(pttl > 0 && pttl <= 60000); /* set refreshed the idle TTL */
    /* Null comes back as null, distinct from a missing field. */
    expect_get(f, job, "n", "null");
    expect_get(f, job, "obj", "{\"a\":[1,2,{\"b\":null}],\"c\":\"d\"}");
    expect_get(f, job, "s", "\"caf\xc3\xa9 \\\"q\\\"\"");
    expect_get(f, job, "i", "42");
    /* What Ruby writes, the worker reads. */
    freeReplyObject(tt_redis_command(&g_redis, "HSET session:%s ruby %s", sid, "[{\"x\":[true]}]"));
    expect_get(f, job, "ruby", "{\"x\":[true]}");
    /* A stored value that is not `[value]`. */
    freeReplyObject(tt_redis_command(&g_redis, "HSET session:%s bad %s", sid, "42"));
    outcome o = {0};
    assert_int_equal(tempest_session_get(job, "bad", on_outcome, &o), 0);
    wait_outcome(f, &o);
    assert_int_equal(o.status, TEMPEST_EPROTO);
    assert_string_equal(o.value, "MISSING");
    free(o.value);
    /* del, then clear. */
    o = (outcome){0};
    assert_int_equal(tempest_session_del(job, "s", on_outcome, &o), 0);
    wait_outcome(f, &o);
    assert_int_equal(o.status, 0);
    free(o.value);
    expect_get(f, job, "s", "MISSING");
    expect_get(f, job, "i", "42");
    assert_int_equal(tempest_session_del(job, "never", NULL, NULL), 0);
    o = (outcome){0};
    assert_int_equal(tempest_session_clear(job, on_outcome, &o), 0);
    wait_outcome(f, &o);
    assert_int_equal(o.status, 0);
    free(o.value);
    assert_int_equal(tt_redis_int(&g_redis, "EXISTS session:%s", sid), 0);
    expect_get(f, job, "obj", "MISSING");
    /* Bad arguments: the callback never runs. */
    assert_int_equal(tempest_session_get(NULL, "k", on_outcome, &o), TEMPEST_EINVAL);
    assert_int_equal(tempest_session_get(job, NULL, on_outcome, &o), TEMPEST_EINVAL);
    assert_int_equal(tempest_session_get(job, "k", NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_session_set(job, "k", NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_job_done(job), 0);
    evhttp_connection_free(conn);
}

/* The same session across requests: what one job sets, the next reads. */
static void test_across_requests(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){0});
    tt_http r;
    char cookie[256];
    get(f, "/", NULL, &r);
    cookie_pair(&r, cookie, sizeof cookie);
    tt_http_clear(&r);
    struct evhttp_connection *c1, *c2;
    tempest_job *job = hold(f, &c1, cookie);
    do_set(f, job, "visits", json_integer(7));
    tempest_job_done(job);
    job = hold(f, &c2, cookie);
    expect_get(f, job, "visits", "7");
    tempest_job_done(job);
    evhttp_connection_free(c1);
    evhttp_connection_free(c2);
}

/* A job without a session (not from a front with sessions). */
static void test_no_session(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){0});
    json_t *args = json_pack("[{s:s,s:s,s:{}}]", "method", "GET", "url", "/hold", "headers");
    f->held = NULL;
    long long id = tempest_work(f->node, "tempest", "url", args, NULL, NULL, NULL);
    json_decref(args);
    assert_true(id > 0);
    assert_true(tt_run_until(f->base, held, f, WAIT_MS));
    assert_null(tempest_job_session(f->held));
    assert_string_equal(f->sid, "-");
    outcome o = {0};
    assert_int_equal(tempest_session_get(f->held, "k", on_outcome, &o), TEMPEST_EINVAL);
    assert_int_equal(tempest_session_clear(f->held, NULL, NULL), TEMPEST_EINVAL);
    tempest_job_done(f->held);
    tt_run_for(f->base, 50);
    assert_int_equal(o.calls, 0);
}

/* A call that outlives its job reports job == NULL; one that outlives its
 * worker reports TEMPEST_ECANCELED at once, and nothing later. */
static void test_outlived(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){0});
    struct evhttp_connection *c1, *c2;
    tempest_job *job = hold(f, &c1, NULL);
    char sid[64];
    snprintf(sid, sizeof sid, "%s", tempest_job_session(job));
    outcome o = {0};
    assert_int_equal(tempest_session_set(job, "k", json_true(), on_outcome, &o), 0);
    json_t *a = json_pack("[i,{},s]", 200, "ok");
    assert_int_equal(tempest_job_answer(job, a, false), 0);
    json_decref(a);
    wait_outcome(f, &o);
    assert_int_equal(o.status, 0);
    assert_null(o.job);
    free(o.value);
    expect_raw(sid, "k", "[true]");
    job = hold(f, &c2, NULL);
    o = (outcome){0};
    assert_int_equal(tempest_session_get(job, "k", on_outcome, &o), 0);
    tempest_worker_free(f->worker);
    f->worker = NULL;
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.status, TEMPEST_ECANCELED);
    assert_null(o.job);
    tt_run_for(f->base, 200);
    assert_int_equal(o.calls, 1);
    free(o.value);
    evhttp_connection_free(c1);
    evhttp_connection_free(c2);
}

static bool session_gone(void *arg) {
    return tt_redis_int(&g_redis, "EXISTS session:%s", (const char *)arg) == 0;
}

static void test_idle_ttl(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){.session_ttl_ms = 300});
    struct evhttp_connection *conn;
    tempest_job *job = hold(f, &conn, NULL);
    char sid[64];
    snprintf(sid, sizeof sid, "%s", tempest_job_session(job));
    do_set(f, job, "k", json_integer(1));
    tempest_job_done(job);
    long long pttl = tt_redis_int(&g_redis, "PTTL session:%s", sid);
    assert_true(pttl > 0 && pttl <= 300);
    assert_true(tt_run_until(f->base, session_gone, sid, WAIT_MS));
    evhttp_connection_free(conn);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cookie_issued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cookie_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cookie_reused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cookie_tampered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_across_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outlived, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_ttl, setup, teardown),
    };
    tt_group_redis(&g_redis);
    return cmocka_run_group_tests_name("session", tests, tt_group_setup, tt_group_teardown);
}
