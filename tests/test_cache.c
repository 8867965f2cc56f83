/* SPDX-License-Identifier: MIT */
/*
 * Cached answers through the real front and a private redis-server: a
 * worker marks answers with `X-Tempest-Cache: <ms>` and counts its jobs.
 * Checks that a second identical GET is served from Redis (one job), that
 * the marker never reaches the client, that URL, Host and the Vary headers
 * separate entries, expiry, ETag and If-None-Match (304, no body), the
 * size cap, Set-Cookie answers, streamed answers, POST, and a front with
 * the cache off.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_http.h"

#define WAIT_MS 5000

static tt_redis g_redis;

typedef struct fx {
    struct event_base *base;
    tempest_node *node, *wnode;
    tempest_front *front;
    tempest_worker *worker;
    int port;
    int jobs;
    int cache_ms; /* the marker the worker sends */
    size_t big;   /* body size of /big */
} fx;

/* ---- the worker --------------------------------------------------------- */

static const char *req_header(json_t *req, const char *name) {
    return json_string_value(json_object_get(json_object_get(req, "headers"), name));
}

static void h_url(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fx *f = arg;
    f->jobs++;
    json_t *req = json_array_get(tempest_job_args(job), 0);
    const char *url = json_string_value(json_object_get(req, "url"));
    char body[128], ms[16];
    snprintf(body, sizeof body, "%s #%d", url, f->jobs);
    snprintf(ms, sizeof ms, "%d", f->cache_ms);
    json_t *h = json_pack("{s:s,s:s}", "Content-Type", "text/plain", "X-Tempest-Cache", ms);
    if (strncmp(url, "/vary", 5) == 0) {
        const char *lang = req_header(req, "accept-language");
        snprintf(body, sizeof body, "%s #%d", lang ? lang : "-", f->jobs);
        json_object_set_new(h, "Vary", json_string("Accept-Encoding, Accept-Language"));
    } else if (strcmp(url, "/cookie") == 0) {
        json_object_set_new(h, "Set-Cookie", json_string("a=b"));
    } else if (strcmp(url, "/etag") == 0) {
        json_object_set_new(h, "ETag", json_string("\"mine\""));
    } else if (strcmp(url, "/number") == 0) {
        json_object_set_new(h, "x-tempest-cache", json_integer(f->cache_ms));
    } else if (strcmp(url, "/stream") == 0) {
        json_t *a = json_pack("[i,O,s]", 200, h, "part one, ");
        tempest_job_answer(job, a, true);
        json_decref(a);
    }
    json_t *a;
    if (strcmp(url, "/big") == 0) {
        char *big = malloc(f->big + 1);
        memset(big, 'x', f->big);
        big[f->big] = '\0';
        a = json_pack("[i,o,s]", 200, h, big);
        free(big);
    } else {
        a = json_pack("[i,o,s]", 200, h, body);
    }
    tempest_job_answer(job, a, false);
    json_decref(a);
}

/* ---- fixture ------------------------------------------------------------ */

static int setup(void **state) {
    if (tt_fixture_setup(state, sizeof(fx), &g_redis) != 0)
        return -1;
    ((fx *)*state)->cache_ms = 60000;
    return 0;
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

static void start(fx *f, tempest_front_options fo) {
    tempest_node_options no = {.redis_url = g_redis.url};
    f->node = tempest_node_new(f->base, &no, NULL);
    f->wnode = tempest_node_new(f->base, &no, NULL);
    assert_non_null(f->node);
    assert_non_null(f->wnode);
    fo.http = "127.0.0.1:0";
    f->front = tempest_front_new(f->node, &fo, NULL);
    assert_non_null(f->front);
    f->port = tempest_front_port(f->front);
    f->worker = tempest_worker_new(f->wnode, NULL, NULL);
    assert_non_null(f->worker);
    assert_int_equal(tempest_worker_on(f->worker, "url", h_url, f), 0);
    assert_int_equal(tempest_worker_start(f->worker), 0);
    assert_true(tt_run_until(f->base, nodes_up, f, WAIT_MS));
}

static void start_cached(fx *f) {
    start(f, (tempest_front_options){.cache = true});
}

/* Sends a request and checks its status; `headers` as tt_http_do. */
static void req(fx *f, enum evhttp_cmd_type cmd, const char *uri, const char *const *headers,
                int status, tt_http *r) {
    assert_int_equal(
        tt_http_do(f->base, f->port, cmd, uri, headers, cmd == EVHTTP_REQ_POST ? "x" : NULL, r), 0);
    assert_int_equal(r->status, status);
    assert_null(tt_http_header(r, "X-Tempest-Cache")); /* the marker is stripped */
}

/* GET `uri` and checks the body. */
static void get_body(fx *f, const char *uri, const char *const *headers, const char *want) {
    tt_http r;
    req(f, EVHTTP_REQ_GET, uri, headers, 200, &r);
    assert_string_equal(r.body, want);
    tt_http_clear(&r);
}

/* The PTTL of the one cache key (asserts there is exactly one). */
static long long entry_pttl(void) {
    redisContext *c = redisConnect("127.0.0.1", g_redis.port);
    assert_non_null(c);
    redisReply *keys = redisCommand(c, "KEYS tempest:default:cache:*");
    assert_non_null(keys);
    assert_int_equal(keys->elements, 1);
    redisReply *pttl = redisCommand(c, "PTTL %s", keys->element[0]->str);
    long long ms = pttl->integer;
    freeReplyObject(pttl);
    freeReplyObject(keys);
    redisFree(c);
    return ms;
}

static long long cache_keys(void) {
    return tt_redis_int(&g_redis, "KEYS tempest:default:cache:*");
}

/* ---- tests -------------------------------------------------------------- */

static void test_second_get_cached(void **state) {
    fx *f = *state;
    start_cached(f);
    tt_http r1, r2;
    req(f, EVHTTP_REQ_GET, "/a?x=1", NULL, 200, &r1);
    req(f, EVHTTP_REQ_GET, "/a?x=1", NULL, 200, &r2);
    assert_int_equal(f->jobs, 1);
    assert_string_equal(r1.body, "/a?x=1 #1");
    assert_string_equal(r2.body, "/a?x=1 #1");
    assert_string_equal(tt_http_header(&r2, "Content-Type"), "text/plain");
    const char *etag = tt_http_header(&r1, "ETag");
    assert_non_null(etag);
    assert_int_equal(strlen(etag), 34);
    assert_string_equal(tt_http_header(&r2, "ETag"), etag);
    tt_http_clear(&r1);
    tt_http_clear(&r2);
    long long pttl = entry_pttl(); /* the worker's 60000 ms, as PX */
    assert_true(pttl > 0 && pttl <= 60000);
    /* Another query string, another Host: other entries. */
    get_body(f, "/a?x=2", NULL, "/a?x=2 #2");
    get_body(f, "/a?x=2", NULL, "/a?x=2 #2");
    const char *host[] = {"Host", "other.example", NULL};
    get_body(f, "/a?x=1", host, "/a?x=1 #3");
    get_body(f, "/a?x=1", host, "/a?x=1 #3");
    assert_int_equal(f->jobs, 3);
    /* The marker as a JSON number, in another case, works too. */
    get_body(f, "/number", NULL, "/number #4");
    get_body(f, "/number", NULL, "/number #4");
    assert_int_equal(f->jobs, 4);
}

static void test_vary(void **state) {
    fx *f = *state;
    start_cached(f);
    const char *fr[] = {"Accept-Language", "fr", NULL};
    const char *en[] = {"Accept-Language", "en", NULL};
    const char *fr_gz[] = {"Accept-Language", "fr", "Accept-Encoding", "gzip", NULL};
    get_body(f, "/vary", fr, "fr #1");
    get_body(f, "/vary", en, "en #2");
    get_body(f, "/vary", fr, "fr #1");
    get_body(f, "/vary", en, "en #2");
    get_body(f, "/vary", NULL, "- #3");
    get_body(f, "/vary", NULL, "- #3");
    get_body(f, "/vary", fr_gz, "fr #4"); /* the second Vary header counts too */
    assert_int_equal(f->jobs, 4);
    assert_int_equal(cache_keys(), 5); /* the Vary record and four answers */
}

static bool expired(void *arg) {
    (void)arg;
    return cache_keys() == 0;
}

static void test_expiry(void **state) {
    fx *f = *state;
    start_cached(f);
    f->cache_ms = 400;
    get_body(f, "/e", NULL, "/e #1");
    tt_http r;
    long long pttl = entry_pttl();
    assert_true(pttl > 0 && pttl <= 400);
    /* The entry lives N ms in Redis (PX), then the request queues again. */
    assert_true(tt_run_until(f->base, expired, NULL, WAIT_MS));
    req(f, EVHTTP_REQ_GET, "/e", NULL, 200, &r);
    assert_string_equal(r.body, "/e #2");
    tt_http_clear(&r);
    assert_int_equal(f->jobs, 2);
}

static void test_if_none_match(void **state) {
    fx *f = *state;
    start_cached(f);
    tt_http r;
    req(f, EVHTTP_REQ_GET, "/n", NULL, 200, &r);
    char etag[64], weak[80], list[160];
    snprintf(etag, sizeof etag, "%s", tt_http_header(&r, "ETag"));
    tt_http_clear(&r);
    /* From the cache: 304 without a body. */
    const char *h[] = {"If-None-Match", etag, NULL};
    req(f, EVHTTP_REQ_GET, "/n", h, 304, &r);
    assert_int_equal(r.len, 0);
    assert_string_equal(tt_http_header(&r, "ETag"), etag);
    tt_http_clear(&r);
    snprintf(weak, sizeof weak, "W/%s", etag);
    snprintf(list, sizeof list, "\"zzz\", %s", weak);
    const char *hl[] = {"If-None-Match", list, NULL};
    req(f, EVHTTP_REQ_GET, "/n", hl, 304, &r);
    tt_http_clear(&r);
    const char *star[] = {"If-None-Match", "*", NULL};
    req(f, EVHTTP_REQ_GET, "/n", star, 304, &r);
    tt_http_clear(&r);
    const char *other[] = {"If-None-Match", "\"other\"", NULL};
    req(f, EVHTTP_REQ_GET, "/n", other, 200, &r);
    assert_string_equal(r.body, "/n #1");
    tt_http_clear(&r);
    assert_int_equal(f->jobs, 1);
    /* A worker's own ETag is kept, and a fresh answer can be a 304 too. */
    const char *mine[] = {"If-None-Match", "\"mine\"", NULL};
    req(f, EVHTTP_REQ_GET, "/etag", mine, 304, &r);
    assert_int_equal(r.len, 0);
    assert_string_equal(tt_http_header(&r, "ETag"), "\"mine\"");
    tt_http_clear(&r);
    req(f, EVHTTP_REQ_GET, "/etag", NULL, 200, &r);
    assert_string_equal(tt_http_header(&r, "ETag"), "\"mine\"");
    tt_http_clear(&r);
    assert_int_equal(f->jobs, 2);
}

static void test_size_cap(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){.cache = true, .cache_max_entry = 1000});
    tt_http r;
    f->big = 1001;
    for (int i = 1; i <= 2; i++) {
        req(f, EVHTTP_REQ_GET, "/big", NULL, 200, &r);
        assert_int_equal(r.len, 1001);
        assert_null(tt_http_header(&r, "ETag")); /* not cached: no ETag */
        tt_http_clear(&r);
        assert_int_equal(f->jobs, i);
    }
    assert_int_equal(cache_keys(), 0);
    f->big = 1000; /* at the cap: cached */
    const char *host[] = {"Host", "fits", NULL};
    for (int i = 0; i < 2; i++) {
        req(f, EVHTTP_REQ_GET, "/big", host, 200, &r);
        assert_int_equal(r.len, 1000);
        tt_http_clear(&r);
    }
    assert_int_equal(f->jobs, 3);
}

static void test_not_cached(void **state) {
    fx *f = *state;
    start_cached(f);
    tt_http r;
    /* POST is never cached nor served from the cache. */
    req(f, EVHTTP_REQ_POST, "/p", NULL, 200, &r);
    tt_http_clear(&r);
    req(f, EVHTTP_REQ_POST, "/p", NULL, 200, &r);
    tt_http_clear(&r);
    assert_int_equal(f->jobs, 2);
    get_body(f, "/p", NULL, "/p #3");
    req(f, EVHTTP_REQ_POST, "/p", NULL, 200, &r);
    assert_string_equal(r.body, "/p #4");
    tt_http_clear(&r);
    /* An answer that sets a cookie is not shared. */
    get_body(f, "/cookie", NULL, "/cookie #5");
    get_body(f, "/cookie", NULL, "/cookie #6");
    /* Nor is a streamed one. */
    get_body(f, "/stream", NULL, "part one, /stream #7");
    get_body(f, "/stream", NULL, "part one, /stream #8");
    assert_int_equal(f->jobs, 8);
    assert_int_equal(cache_keys(), 1); /* the GET /p */
}

static void test_disabled(void **state) {
    fx *f = *state;
    start(f, (tempest_front_options){0});
    get_body(f, "/d", NULL, "/d #1");
    get_body(f, "/d", NULL, "/d #2");
    get_body(f, "/d", NULL, "/d #3");
    assert_int_equal(f->jobs, 3);
    assert_int_equal(cache_keys(), 0);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_second_get_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_if_none_match, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled, setup, teardown),
    };
    tt_group_redis(&g_redis);
    return cmocka_run_group_tests_name("cache", tests, tt_group_setup, tt_group_teardown);
}
