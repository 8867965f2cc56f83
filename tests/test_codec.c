/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the codec (lib/codec.c): jobs, answers, `url` requests and
 * answers, Redis URLs and host:port addresses, each valid form and each
 * error, with the error text checked for naming the problem. Decoders are
 * fed malloc'd copies of their input without a terminating NUL, so that
 * AddressSanitizer catches any read past the given length. A chaos test
 * fails jansson's Nth allocation in turn and checks that nothing leaks.
 * No Redis, no event loop.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include <tempest/tempest.h>

#include "codec.h"

/* ---- Helpers ---- */

static void assert_contains(const char *hay, const char *needle) {
    if (strstr(hay, needle) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

static void assert_lacks(const char *hay, const char *needle) {
    if (strstr(hay, needle) != NULL)
        fail_msg("\"%s\" should not contain \"%s\"", hay, needle);
}

/* A malloc'd copy of `n` bytes with no NUL after them. */
static char *exact(const char *s, size_t n) {
    char *p = malloc(n);

    assert_true(p != NULL || n == 0);
    if (n > 0)
        memcpy(p, s, n);
    return p;
}

static int decode_n(const char *text, size_t n, tp_job_parts *out, char *err, size_t errlen) {
    char *buf = exact(text, n);
    int rc = tp_job_decode(buf, n, out, err, errlen);

    free(buf);
    return rc;
}

static int decode(const char *text, tp_job_parts *out, char *err, size_t errlen) {
    return decode_n(text, strlen(text), out, err, errlen);
}

static void assert_parts_zero(const tp_job_parts *p) {
    assert_null(p->root);
    assert_null(p->action);
    assert_null(p->args);
    assert_null(p->respond_to);
    assert_int_equal(p->id, 0);
}

static void job_bad_n(const char *text, size_t n, const char *needle) {
    tp_job_parts p;
    char err[256] = "";

    memset(&p, 0xA5, sizeof p);
    assert_int_equal(decode_n(text, n, &p, err, sizeof err), TEMPEST_EPROTO);
    assert_parts_zero(&p);
    assert_contains(err, "job: ");
    assert_contains(err, needle);
}

static void job_bad(const char *text, const char *needle) {
    job_bad_n(text, strlen(text), needle);
}

static json_t *load(const char *text) {
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);

    if (v == NULL)
        fail_msg("test JSON %s: %s", text, jerr.text);
    return v;
}

/* ---- Jobs: decoding ---- */

static void test_job_decode_valid(void **state) {
    tp_job_parts p;
    char err[256] = "";

    (void)state;
    assert_int_equal(
        decode("[\"url\",[{\"method\":\"GET\"}],\"127.0.0.1:4000\",42]", &p, err, sizeof err), 0);
    assert_non_null(p.root);
    assert_string_equal(p.action, "url");
    assert_true(json_is_array(p.args));
    assert_int_equal(json_array_size(p.args), 1);
    assert_string_equal(p.respond_to, "127.0.0.1:4000");
    assert_int_equal(p.id, 42);
    tp_job_parts_clear(&p);
    assert_parts_zero(&p);

    assert_int_equal(decode(" [ \"ping\" , [ ] , null , 0 ]\n", &p, err, sizeof err), 0);
    assert_string_equal(p.action, "ping");
    assert_int_equal(json_array_size(p.args), 0);
    assert_null(p.respond_to);
    assert_int_equal(p.id, 0);
    tp_job_parts_clear(&p);

    assert_int_equal(decode("[\"a\",[],null,9223372036854775807]", &p, err, sizeof err), 0);
    assert_true(p.id == LLONG_MAX);
    tp_job_parts_clear(&p);
}

static void test_job_decode_respects_len(void **state) {
    static const char text[] = "[\"a\",[],null,7]GARBAGE";
    tp_job_parts p;

    (void)state;
    assert_int_equal(decode_n(text, strlen("[\"a\",[],null,7]"), &p, NULL, 0), 0);
    assert_int_equal(p.id, 7);
    tp_job_parts_clear(&p);
    /* one byte short */
    job_bad_n(text, strlen("[\"a\",[],null,7]") - 1, "invalid JSON");
}

static void test_job_decode_args_may_hold_nul(void **state) {
    tp_job_parts p;
    json_t *body;

    (void)state;
    assert_int_equal(decode("[\"url\",[{\"body\":\"a\\u0000b\"}],null,1]", &p, NULL, 0), 0);
    body = json_object_get(json_array_get(p.args, 0), "body");
    assert_int_equal(json_string_length(body), 3);
    assert_memory_equal(json_string_value(body), "a\0b", 3);
    tp_job_parts_clear(&p);
}

/* tp_json_fast either declines (NULL) or builds what json_loadb builds. */
static bool fast_agrees(const char *text, size_t n) {
    char *buf = exact(text, n);
    json_t *fast = tp_json_fast(buf, n);
    json_t *slow = json_loadb(buf, n, JSON_ALLOW_NUL, NULL);
    bool taken = fast != NULL;

    if (fast != NULL) {
        char *a = json_dumps(fast, JSON_COMPACT), *b = json_dumps(slow, JSON_COMPACT);
        assert_non_null(slow);
        assert_true(json_equal(fast, slow));
        assert_non_null(a);
        assert_non_null(b);
        assert_string_equal(a, b); /* object members in the same order too */
        free(a);
        free(b);
    }
    json_decref(fast);
    json_decref(slow);
    free(buf);
    return taken;
}

static void test_job_decode_fast_path(void **state) {
    static const char *const taken[] = {
        "[\"x\",[1],null,2]",
        " [ \"x\" , [ -0 , 0 , -12 , 123456789012345678 ] , \"h:1\" , 7 ] \n",
        "[\"url\",[{\"method\":\"GET\",\"url\":\"/a?b=c\",\"headers\":{\"x\":\"1\"}}],\"h:1\",3]",
        "[\"a\",[{\"k\":1,\"k\":2,\"j\":[]},{},[[[]]]],null,0]",
        "[\"a\",[\"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t end\",{\"\\n\":true}],null,1]",
        "[\"\xc3\xa9t\xc3\xa9\",[\"\xe2\x82\xac \xf0\x9f\x98\x80\",false,true,null],null,1]",
        "[\"\",[],\"\",1]",
    };
    static const char *const declined[] = {
        "[\"a\",[1.5],null,1]",
        "[\"a\",[1e3],null,1]",
        "[\"a\",[\"\\u0041\"],null,1]",
        "[\"a\",[01],null,1]",
        "[\"a\",[1234567890123456789],null,1]",
        "[\"a\",[-],null,1]",
        "[\"a\",[tru],null,1]",
        "[\"a\",[nullx],null,1]",
        "[\"a\",[1,],null,1]",
        "[\"a\",[\"\xc3\"],null,1]",
        "[\"a\",[\"\xed\xa0\x80\"],null,1]",
        "[\"a\",[\"\x01\"],null,1]",
        "[\"a\",[\"\\x\"],null,1]",
        "[\"a\",[],null,1] x",
        "{\"a\":1}",
        "[\"a\",[{\"k\" 1}],null,1]",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "[\"a\",[],null,1",
    };

    (void)state;
    for (size_t i = 0; i < sizeof taken / sizeof *taken; i++)
        assert_true(fast_agrees(taken[i], strlen(taken[i])));
    for (size_t i = 0; i < sizeof declined / sizeof *declined; i++)
        assert_false(fast_agrees(declined[i], strlen(declined[i])));
    /* Every one-byte change of every prefix of a rich job agrees as well. */
    const char *seed = taken[4];
    size_t n = strlen(seed);
    char buf[256];
    for (size_t len = 0; len <= n; len++) {
        for (size_t at = 0; at < len; at++) {
            for (int c = 0; c < 256; c += 7) {
                memcpy(buf, seed, len);
                buf[at] = (char)c;
                fast_agrees(buf, len);
            }
        }
    }
}

static void test_job_decode_shape(void **state) {
    (void)state;
    job_bad("{}", "expected an array of 4 elements, got an object");
    job_bad("[]", "expected an array of 4 elements, got 0");
    job_bad("[\"a\",[],null]", "expected an array of 4 elements, got 3");
    job_bad("[\"a\",[],null,1,{}]", "expected an array of 4 elements, got 5");
}

static void test_job_decode_action(void **state) {
    (void)state;
    job_bad("[1,[],null,1]", "element 1 (action) must be a non-empty string");
    job_bad("[\"\",[],null,1]", "element 1 (action)");
    job_bad("[null,[],null,1]", "element 1 (action)");
    job_bad("[[\"url\"],[],null,1]", "element 1 (action)");
    job_bad("[\"u\\u0000rl\",[],null,1]", "element 1 (action)");
}

static void test_job_decode_args(void **state) {
    (void)state;
    job_bad("[\"a\",{},null,1]", "element 2 (args) must be an array, got an object");
    job_bad("[\"a\",\"x\",null,1]", "element 2 (args)");
    job_bad("[\"a\",null,null,1]", "element 2 (args)");
    job_bad("[\"a\",7,null,1]", "element 2 (args)");
}

static void test_job_decode_respond_to(void **state) {
    (void)state;
    job_bad("[\"a\",[],\"\",1]", "element 3 (respond_to) must be a non-empty string or null");
    job_bad("[\"a\",[],4000,1]", "element 3 (respond_to)");
    job_bad("[\"a\",[],[],1]", "element 3 (respond_to)");
    job_bad("[\"a\",[],false,1]", "element 3 (respond_to)");
    job_bad("[\"a\",[],\"h:1\\u0000\",1]", "element 3 (respond_to)");
}

static void test_job_decode_id(void **state) {
    (void)state;
    job_bad("[\"a\",[],null,-1]", "element 4 (job_id) must be an integer >= 0, got -1");
    job_bad("[\"a\",[],null,\"42\"]", "element 4 (job_id)");
    job_bad("[\"a\",[],null,42.0]", "element 4 (job_id)");
    job_bad("[\"a\",[],null,1e3]", "element 4 (job_id)");
    job_bad("[\"a\",[],null,null]", "element 4 (job_id)");
    job_bad("[\"a\",[],null,true]", "element 4 (job_id)");
    job_bad("[\"a\",[],null,-9223372036854775808]", "got -9223372036854775808");
    /* above LLONG_MAX: jansson refuses it while parsing */
    job_bad("[\"a\",[],null,9223372036854775808]", "too big integer");
    job_bad("[\"a\",[],null,99999999999999999999]", "invalid JSON");
}

static void test_job_decode_bad_json(void **state) {
    static const char nul_after[] = "[\"a\",[],null,1]\0junk";
    static const char nul_inside[] = "[\"a\0b\",[],null,1]";

    (void)state;
    job_bad("[\"a\", x]", "job: invalid JSON at line 1 column 7: ");
    job_bad("[\"url\",", "invalid JSON at line 1");
    job_bad("", "invalid JSON");
    job_bad("   ", "invalid JSON");
    job_bad("42", "invalid JSON");
    job_bad("\"url\"", "invalid JSON");
    job_bad("[\"a\",[],null,1] x", "invalid JSON");
    job_bad("[\"a\",[],null,1][\"a\",[],null,2]", "invalid JSON");
    job_bad("[\"a\",[],null,1,]", "invalid JSON");
    job_bad("[\"\xff\",[],null,1]", "invalid JSON");
    job_bad("[\"a\",[\"\xc0\x80\"],null,1]", "invalid JSON");     /* overlong NUL */
    job_bad("[\"a\",[\"\xed\xa0\x80\"],null,1]", "invalid JSON"); /* surrogate */
    job_bad("[\"a\",[\"\xe2\x82\"],null,1]", "invalid JSON");     /* truncated */
    job_bad("[\"a\",[],null,1]\n\n[", "invalid JSON at line 3");
    job_bad_n(nul_after, sizeof nul_after - 1, "invalid JSON");
    job_bad_n(nul_inside, sizeof nul_inside - 1, "invalid JSON");
    job_bad_n("\0", 1, "invalid JSON");
}

static void test_job_decode_args_errors(void **state) {
    tp_job_parts p;
    char err[8];

    (void)state;
    memset(&p, 0xA5, sizeof p);
    assert_int_equal(tp_job_decode(NULL, 0, &p, err, sizeof err), TEMPEST_EPROTO);
    assert_parts_zero(&p);
    /* no error text wanted */
    assert_int_equal(decode("{}", &p, NULL, 0), TEMPEST_EPROTO);
    assert_int_equal(decode("{}", &p, err, 0), TEMPEST_EPROTO);
    /* a short buffer: truncated, terminated */
    assert_int_equal(decode("[1,[],null,1]", &p, err, sizeof err), TEMPEST_EPROTO);
    assert_int_equal(strlen(err), sizeof err - 1);
    assert_memory_equal(err, "job: el", sizeof err);
    assert_int_equal(tp_job_decode("[]", 2, NULL, NULL, 0), TEMPEST_EINVAL);
    tp_job_parts_clear(NULL);
    tp_job_parts_clear(&p);
    assert_parts_zero(&p);
}

/* ---- Jobs: encoding ---- */

static void test_job_encode(void **state) {
    json_t *args = load("[{\"method\":\"GET\",\"url\":\"/\"}]");
    size_t len = 99;
    char *s;

    (void)state;
    s = tp_job_encode("url", args, "127.0.0.1:4000", 42, &len);
    assert_string_equal(s, "[\"url\",[{\"method\":\"GET\",\"url\":\"/\"}],\"127.0.0.1:4000\",42]");
    assert_int_equal(len, strlen(s));
    free(s);
    assert_int_equal(args->refcount, 1); /* borrowed */
    json_decref(args);

    args = json_array();
    s = tp_job_encode("ping", args, NULL, 0, NULL);
    assert_string_equal(s, "[\"ping\",[],null,0]");
    free(s);
    json_decref(args);
}

static void test_job_encode_utf8_and_nul_verbatim(void **state) {
    json_t *args = load("[\"caf\xc3\xa9\",\"a\\u0000b\",\"x/y\"]");
    char *s;

    (void)state;
    s = tp_job_encode("say", args, NULL, 7, NULL);
    /* like JSON.stringify: UTF-8 kept raw, '/' not escaped, NUL escaped */
    assert_string_equal(s, "[\"say\",[\"caf\xc3\xa9\",\"a\\u0000b\",\"x/y\"],null,7]");
    free(s);
    json_decref(args);
}

static void test_job_encode_bad_args(void **state) {
    json_t *arr = json_array(), *obj = json_object();
    size_t len = 99;

    (void)state;
    assert_null(tp_job_encode("url", obj, NULL, 1, &len));
    assert_int_equal(len, 0);
    assert_null(tp_job_encode("url", NULL, NULL, 1, &len));
    assert_null(tp_job_encode(NULL, arr, NULL, 1, &len));
    assert_null(tp_job_encode("", arr, NULL, 1, &len));
    assert_null(tp_job_encode("url", arr, "", 1, &len));
    assert_null(tp_job_encode("url", arr, NULL, -1, &len));
    assert_null(tp_job_encode("\xff", arr, NULL, 1, &len));
    assert_null(tp_job_encode("url", arr, "\xff", 1, &len));
    assert_int_equal(arr->refcount, 1);
    assert_int_equal(obj->refcount, 1);
    json_decref(arr);
    json_decref(obj);
}

/* `got` is NULL when `want` is, else the same string. */
static void assert_string_or_null(const char *got, const char *want) {
    if (want == NULL)
        assert_null(got);
    else
        assert_string_equal(got, want);
}

static void round_trip(const char *action, const char *args_text, const char *respond_to,
                       long long id) {
    json_t *args = load(args_text);
    tp_job_parts p;
    char err[256] = "";
    size_t len;
    char *s = tp_job_encode(action, args, respond_to, id, &len);

    assert_non_null(s);
    assert_int_equal(decode_n(s, len, &p, err, sizeof err), 0);
    assert_string_equal(p.action, action);
    assert_true(json_equal(p.args, args));
    assert_string_or_null(p.respond_to, respond_to);
    assert_true(p.id == id);
    tp_job_parts_clear(&p);
    free(s);
    json_decref(args);
}

static void test_job_round_trip(void **state) {
    (void)state;
    round_trip("url", "[{\"method\":\"POST\",\"body\":\"a\\u0000b\\u00e9\"}]", "[::1]:4000", 1);
    round_trip("ping", "[]", NULL, 0);
    round_trip("x", "[1,2.5,true,null,[],{},\"\xf0\x9f\x98\x80\"]", "h:1", LLONG_MAX);
}

/* ---- Answers ---- */

static json_t *answer_decode(const char *text, size_t n, char *err, size_t errlen) {
    char *buf = exact(text, n);
    json_t *v = tp_answer_decode(buf, n, err, errlen);

    free(buf);
    return v;
}

static void test_answer_decode(void **state) {
    static const char *ok[] = {"[200,{\"Content-Type\":\"text/plain\"},\"Hello world! #1\"]",
                               "42",
                               "\"str\"",
                               "null",
                               "true",
                               "{}"};
    char err[256] = "";
    json_t *v;

    (void)state;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        v = answer_decode(ok[i], strlen(ok[i]), err, sizeof err);
        assert_non_null(v);
        json_decref(v);
    }
    v = answer_decode("\"a\\u0000b\"", 10, err, sizeof err);
    assert_int_equal(json_string_length(v), 3);
    json_decref(v);
    /* Arrays take the fast path or jansson's: the value is the same. */
    static const char *arrays[] = {"[200,{\"a\":\"\\n\\\"x\"},\"caf\xc3\xa9\"]", "[1.5,{},null]",
                                   "[200,{},\"\\u00e9\"]", " [ 1 , [ ] , { \"k\" : [true] } ] "};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) {
        json_t *slow = json_loads(arrays[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        v = answer_decode(arrays[i], strlen(arrays[i]), err, sizeof err);
        assert_non_null(slow);
        assert_true(json_equal(v, slow));
        json_decref(slow);
        json_decref(v);
    }
}

static void test_answer_decode_errors(void **state) {
    static const char *bad[] = {"", "[1,", "[1] x", "\"\xff\"", "{\"a\\u0000\":1}"};
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_null(answer_decode(bad[i], strlen(bad[i]), err, sizeof err));
        assert_contains(err, "answer: invalid JSON at line 1 column ");
    }
    assert_null(answer_decode("1\0 2", 4, err, sizeof err));
    assert_contains(err, "invalid JSON");
    assert_null(tp_answer_decode(NULL, 0, err, sizeof err));
    assert_contains(err, "answer: ");
    assert_null(answer_decode("[", 1, NULL, 0));
}

static void test_answer_encode(void **state) {
    json_t *v = load("[200,{\"Content-Type\":\"text/plain\"},\"Hello world! #1\"]");
    size_t len = 99;
    char *s;

    (void)state;
    s = tp_answer_encode(v, &len);
    assert_string_equal(s, "[200,{\"Content-Type\":\"text/plain\"},\"Hello world! #1\"]");
    assert_int_equal(len, strlen(s));
    free(s);
    json_decref(v);

    v = json_stringn("a\0b", 3);
    s = tp_answer_encode(v, &len);
    assert_string_equal(s, "\"a\\u0000b\"");
    free(s);
    json_decref(v);

    v = json_null();
    s = tp_answer_encode(v, NULL);
    assert_string_equal(s, "null");
    free(s);

    assert_null(tp_answer_encode(NULL, &len));
    assert_int_equal(len, 0);
}

/* ---- `url` requests ---- */

static char *dump(const json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT);

    assert_non_null(s);
    return s;
}

static void test_url_request_basic(void **state) {
    static const tp_http_header h[] = {{"Host", "example.com"}, {"Content-Type", "text/plain"}};
    char err[256] = "";
    json_t *r = tp_url_request_new("GET", "/path?q=1", h, 2, NULL, 0, err, sizeof err);
    char *s;

    (void)state;
    assert_non_null(r);
    s = dump(r);
    assert_string_equal(s, "{\"method\":\"GET\",\"url\":\"/path?q=1\",\"headers\":"
                           "{\"host\":\"example.com\",\"content-type\":\"text/plain\"}}");
    free(s);
    json_decref(r);

    r = tp_url_request_new("GET", "/", NULL, 0, NULL, 0, err, sizeof err);
    s = dump(r);
    assert_string_equal(s, "{\"method\":\"GET\",\"url\":\"/\",\"headers\":{}}");
    free(s);
    json_decref(r);
}

static void test_url_request_header_names(void **state) {
    static const tp_http_header h[] = {
        {"X-Custom-HEADER", "v"}, {"X-Caf\xc3\x89", "w"}, /* only ASCII is lower-cased */
        {"ACCEPT", "a"},          {"X-Other", "1"},       {"accept", "b"}, {"Accept", "c"},
    };
    json_t *r = tp_url_request_new("GET", "/", h, 6, NULL, 0, NULL, 0);
    json_t *hdrs = json_object_get(r, "headers");

    (void)state;
    assert_int_equal(json_object_size(hdrs), 4);
    assert_string_equal(json_string_value(json_object_get(hdrs, "x-custom-header")), "v");
    assert_string_equal(json_string_value(json_object_get(hdrs, "x-caf\xc3\x89")), "w");
    assert_string_equal(json_string_value(json_object_get(hdrs, "accept")), "a, b, c");
    assert_string_equal(json_string_value(json_object_get(hdrs, "x-other")), "1");
    json_decref(r);
}

static void test_url_request_body(void **state) {
    char *body = exact("a\0b\xc3\xa9", 5); /* not NUL-terminated */
    json_t *r = tp_url_request_new("POST", "/", NULL, 0, body, 5, NULL, 0);
    json_t *b = json_object_get(r, "body");

    (void)state;
    assert_int_equal(json_string_length(b), 5);
    assert_memory_equal(json_string_value(b), "a\0b\xc3\xa9", 5);
    json_decref(r);
    free(body);

    r = tp_url_request_new("POST", "/", NULL, 0, "", 0, NULL, 0);
    assert_string_equal(json_string_value(json_object_get(r, "body")), "");
    json_decref(r);

    r = tp_url_request_new("POST", "/", NULL, 0, "\xf0\x9f\x98\x80", 4, NULL, 0);
    assert_int_equal(json_string_length(json_object_get(r, "body")), 4);
    json_decref(r);

    r = tp_url_request_new("GET", "/", NULL, 0, NULL, 5, NULL, 0);
    assert_null(json_object_get(r, "body"));
    json_decref(r);
}

static void body_bad(const char *body, size_t len) {
    char *copy = exact(body, len);
    char err[256] = "";

    assert_null(tp_url_request_new("POST", "/", NULL, 0, copy, len, err, sizeof err));
    assert_string_equal(err, "request body is not valid UTF-8");
    free(copy);
}

static void test_url_request_bad_body(void **state) {
    (void)state;
    body_bad("\xff", 1);
    body_bad("ok\x80", 3);           /* lone continuation byte */
    body_bad("\xc0\x80", 2);         /* overlong NUL */
    body_bad("\xe0\x80\xaf", 3);     /* overlong '/' */
    body_bad("\xed\xa0\x80", 3);     /* surrogate */
    body_bad("\xf4\x90\x80\x80", 4); /* above U+10FFFF */
    body_bad("\xf5\x80\x80\x80", 4);
    body_bad("\xe2\x82", 2);     /* truncated */
    body_bad("\xe2\x82\xac", 2); /* truncated by the length */
    body_bad("\xc3(", 2);
}

static void test_url_request_bad_strings(void **state) {
    static const tp_http_header bad_value[] = {{"Host", "h"}, {"X-Name", "\xff"}};
    static const tp_http_header bad_name[] = {{"X-\xff", "v"}};
    static const tp_http_header null_value[] = {{"X", NULL}};
    char err[256] = "";

    (void)state;
    assert_null(tp_url_request_new("GET", "/\xff", NULL, 0, NULL, 0, err, sizeof err));
    assert_string_equal(err, "request URL is not valid UTF-8");
    assert_null(tp_url_request_new("G\xe9T", "/", NULL, 0, NULL, 0, err, sizeof err));
    assert_string_equal(err, "request method is not valid UTF-8");
    assert_null(tp_url_request_new("GET", "/", bad_value, 2, NULL, 0, err, sizeof err));
    assert_string_equal(err, "request header \"x-name\" value is not valid UTF-8");
    assert_null(tp_url_request_new("GET", "/", bad_name, 1, NULL, 0, err, sizeof err));
    assert_contains(err, "request header 0 name is not valid UTF-8");
    assert_null(tp_url_request_new("GET", "/", null_value, 1, NULL, 0, err, sizeof err));
    assert_contains(err, "request header 0");
    assert_null(tp_url_request_new(NULL, "/", NULL, 0, NULL, 0, err, sizeof err));
    assert_contains(err, "request: ");
    assert_null(tp_url_request_new("GET", NULL, NULL, 0, NULL, 0, NULL, 0));
    assert_null(tp_url_request_new("GET", "/", NULL, 1, NULL, 0, err, sizeof err));
    assert_contains(err, "headers");
}

/* ---- `url` answers ---- */

static int http_parse(const char *text, bool first, tp_http_answer *out, char *err, size_t errlen) {
    json_t *v = load(text);
    int rc = tp_http_answer_parse(v, first, out, err, errlen);

    json_decref(v);
    return rc;
}

static void http_bad(const char *text, bool first, const char *needle) {
    tp_http_answer a;
    char err[256] = "";

    memset(&a, 0xA5, sizeof a);
    assert_int_equal(http_parse(text, first, &a, err, sizeof err), TEMPEST_EPROTO);
    assert_int_equal(a.status, 0);
    assert_null(a.headers);
    assert_null(a.body);
    assert_int_equal(a.body_len, 0);
    assert_contains(err, "answer: ");
    assert_contains(err, needle);
}

static void test_http_answer_valid(void **state) {
    json_t *v = load("[201,{\"Content-Type\":\"text/plain\",\"X-N\":5,\"X-R\":1.5,"
                     "\"Set-Cookie\":[\"a=1\",\"b=2\"],\"X-E\":[],\"X-Empty\":\"\","
                     "\"!#$%&'*+-.^_`|~09aZ\":\"tchars\"},\"Hello\"]");
    tp_http_answer a;

    (void)state;
    assert_int_equal(tp_http_answer_parse(v, true, &a, NULL, 0), 0);
    assert_int_equal(a.status, 201);
    assert_ptr_equal(a.headers, json_array_get(v, 1));
    assert_string_equal(a.body, "Hello");
    assert_int_equal(a.body_len, 5);
    json_decref(v);

    v = load("[599,null,null]");
    assert_int_equal(tp_http_answer_parse(v, true, &a, NULL, 0), 0);
    assert_int_equal(a.status, 599);
    assert_null(a.headers);
    assert_null(a.body);
    assert_int_equal(a.body_len, 0);
    json_decref(v);

    v = load("[100,{},\"a\\u0000b\"]");
    assert_int_equal(tp_http_answer_parse(v, true, &a, NULL, 0), 0);
    assert_int_equal(a.body_len, 3);
    assert_memory_equal(a.body, "a\0b", 3);
    json_decref(v);
}

static void test_http_answer_later(void **state) {
    tp_http_answer a;

    (void)state;
    assert_int_equal(http_parse("[null,null,\"chunk\"]", false, &a, NULL, 0), 0);
    assert_int_equal(a.status, 0);
    assert_null(a.headers);
    assert_int_equal(a.body_len, 5);
    assert_int_equal(http_parse("[200,{\"a\":\"b\"},null]", false, &a, NULL, 0), 0);
    assert_int_equal(a.status, 200);
    assert_null(a.body);
    http_bad("[\"x\",null,\"c\"]", false, "status must be an integer from 100 to 599 or null");
    http_bad("[42,null,\"c\"]", false, "got 42");
    http_bad("[null,[],\"c\"]", false, "headers must be an object or null");
    http_bad("[null,null,1]", false, "body must be a string or null");
    http_bad("[null,null]", false, "expected an array of 3 elements");
}

static void test_http_answer_shape(void **state) {
    tp_http_answer a;
    char err[256] = "";

    (void)state;
    http_bad("{}", true, "expected an array of 3 elements [status, headers, body], got an object");
    http_bad("[200,{}]", true, "got 2");
    http_bad("[200,{},\"\",\"\"]", true, "got 4");
    http_bad("\"x\"", true, "got a string");
    assert_int_equal(tp_http_answer_parse(NULL, true, &a, err, sizeof err), TEMPEST_EPROTO);
    assert_contains(err, "answer: expected an array");
    assert_int_equal(tp_http_answer_parse(NULL, true, NULL, NULL, 0), TEMPEST_EINVAL);
}

static void test_http_answer_status(void **state) {
    (void)state;
    http_bad("[99,{},\"\"]", true, "answer: status must be an integer from 100 to 599, got 99");
    http_bad("[600,{},\"\"]", true, "got 600");
    http_bad("[-200,{},\"\"]", true, "status must be");
    http_bad("[\"200\",{},\"\"]", true, "got a string");
    http_bad("[200.0,{},\"\"]", true, "got a real number");
    http_bad("[null,{},\"\"]", true, "got null");
    http_bad("[true,{},\"\"]", true, "status must be");
    http_bad("[4294967496,{},\"\"]", true, "got 4294967496"); /* 200 mod 2^32 */
}

static void test_http_answer_body_and_headers_types(void **state) {
    (void)state;
    http_bad("[200,{},1]", true, "body must be a string or null, got 1");
    http_bad("[200,{},[\"a\"]]", true, "body must be");
    http_bad("[200,{},{}]", true, "body must be");
    http_bad("[200,[],\"\"]", true, "headers must be an object or null");
    http_bad("[200,\"h\",\"\"]", true, "headers must be");
    http_bad("[200,{\"X\":true},\"\"]", true,
             "header \"X\" must be a string, a number or an array of strings");
    http_bad("[200,{\"X\":null},\"\"]", true, "header \"X\" must be");
    http_bad("[200,{\"X\":{}},\"\"]", true, "header \"X\" must be");
    http_bad("[200,{\"X\":[\"a\",1]},\"\"]", true,
             "header \"X\": element 2 of its array must be a string");
    http_bad("[200,{\"X\":[[\"a\"]]},\"\"]", true, "element 1");
}

static void test_http_answer_header_names(void **state) {
    static const char *bad[] = {
        "[200,{\"Bad Header\":\"v\"},\"\"]", "[200,{\"\":\"v\"},\"\"]",
        "[200,{\"a:b\":\"v\"},\"\"]",        "[200,{\"X\\r\\nY\":\"v\"},\"\"]",
        "[200,{\"caf\\u00e9\":\"v\"},\"\"]", "[200,{\"(x)\":\"v\"},\"\"]",
        "[200,{\"a/b\":\"v\"},\"\"]",        "[200,{\"\\\"q\\\"\":\"v\"},\"\"]",
    };
    json_t *v = load("[200,{},\"\"]");
    tp_http_answer a;
    char err[256] = "";

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        http_bad(bad[i], true, "a header name is not an HTTP token");
    /* a key with NUL can only be made in-process: "X" must not hide "\0\r\nY" */
    assert_int_equal(json_object_setn_new(json_array_get(v, 1), "X\0\r\nY", 5, json_string("v")),
                     0);
    assert_int_equal(tp_http_answer_parse(v, true, &a, err, sizeof err), TEMPEST_EPROTO);
    assert_contains(err, "not an HTTP token");
    json_decref(v);
}

static void test_http_answer_injection(void **state) {
    static const char *bad[] = {
        "[200,{\"X\":\"a\\r\\nSet-Cookie: evil=1\"},\"\"]",
        "[200,{\"X\":\"a\\nb\"},\"\"]",
        "[200,{\"X\":\"a\\rb\"},\"\"]",
        "[200,{\"X\":\"a\\u0000b\"},\"\"]",
        "[200,{\"X\":\"\\r\\n\"},\"\"]",
        "[200,{\"X\":[\"ok\",\"a\\r\\nb\"]},\"\"]",
        "[200,{\"X\":[\"\\u0000\"]},\"\"]",
    };

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_bad(bad[i], true, "header \"X\" value must not contain CR, LF or NUL");
        http_bad(bad[i], false, "CR, LF or NUL");
    }
}

/* ---- Redis URLs ---- */

static void redis_ok(const char *url, const char *host, int port, const char *path,
                     const char *user, const char *password, int db) {
    tp_redis_url u;
    char err[256] = "";

    if (tp_redis_url_parse(url, &u, err, sizeof err) != 0)
        fail_msg("%s: %s", url, err);
    assert_string_or_null(u.host, host);
    assert_string_or_null(u.path, path);
    assert_string_or_null(u.user, user);
    assert_string_or_null(u.password, password);
    assert_int_equal(u.port, port);
    assert_int_equal(u.db, db);
    tp_redis_url_clear(&u);
    assert_null(u.host);
}

static void redis_bad(const char *url, const char *needle) {
    tp_redis_url u;
    char err[256] = "";

    memset(&u, 0xA5, sizeof u);
    if (tp_redis_url_parse(url, &u, err, sizeof err) != TEMPEST_EADDR)
        fail_msg("%s: accepted", url);
    assert_null(u.host);
    assert_null(u.path);
    assert_null(u.user);
    assert_null(u.password);
    assert_int_equal(u.port, 0);
    assert_int_equal(u.db, 0);
    assert_null(u.sentinels);
    assert_int_equal(u.nsentinels, 0);
    assert_null(u.master);
    assert_null(u.sentinel_password);
    assert_contains(err, needle);
    assert_lacks(err, "secret");
}

static void test_redis_url_tcp(void **state) {
    (void)state;
    redis_ok("redis://localhost", "localhost", 6379, NULL, NULL, NULL, 0);
    redis_ok("redis://127.0.0.1:6380/2", "127.0.0.1", 6380, NULL, NULL, NULL, 2);
    redis_ok("redis://host/", "host", 6379, NULL, NULL, NULL, 0);
    redis_ok("redis://host:1/0", "host", 1, NULL, NULL, NULL, 0);
    redis_ok("redis://host:65535/007", "host", 65535, NULL, NULL, NULL, 7);
    redis_ok("redis://host/2147483647", "host", 6379, NULL, NULL, NULL, INT_MAX);
    redis_ok("REDIS://My-Host.example_1", "My-Host.example_1", 6379, NULL, NULL, NULL, 0);
    redis_ok("redis://[::1]", "::1", 6379, NULL, NULL, NULL, 0);
    redis_ok("redis://[::1]:6390/1", "::1", 6390, NULL, NULL, NULL, 1);
    redis_ok("redis://[2001:db8::ffff:1.2.3.4]:7", "2001:db8::ffff:1.2.3.4", 7, NULL, NULL, NULL,
             0);
    redis_ok("redis://[fe80::1%eth0]", "fe80::1%eth0", 6379, NULL, NULL, NULL, 0);
}

static void test_redis_url_auth(void **state) {
    (void)state;
    redis_ok("redis://:secret@host", "host", 6379, NULL, NULL, "secret", 0);
    redis_ok("redis://alice:secret@host:7000/3", "host", 7000, NULL, "alice", "secret", 3);
    redis_ok("redis://al%69ce:s3cr%40t%3A%2f%25@[::1]", "::1", 6379, NULL, "alice", "s3cr@t:/%", 0);
    redis_ok("redis://u:p@w@host", "host", 6379, NULL, "u", "p@w", 0);
    redis_ok("redis://u:p:q@host", "host", 6379, NULL, "u", "p:q", 0);
    redis_ok("redis://:%C3%A9@host", "host", 6379, NULL, NULL, "\xc3\xa9", 0);
}

static void test_redis_url_unix(void **state) {
    (void)state;
    redis_ok("unix:///tmp/redis.sock", NULL, 0, "/tmp/redis.sock", NULL, NULL, 0);
    redis_ok("unix:///tmp/redis.sock?db=3", NULL, 0, "/tmp/redis.sock", NULL, NULL, 3);
    redis_ok("UNIX:///s", NULL, 0, "/s", NULL, NULL, 0);
}

static void test_redis_url_scheme_errors(void **state) {
    (void)state;
    redis_bad("rediss://host", "TLS (rediss://) is not supported by this build");
    redis_bad("rediss://:secret@host", "TLS (rediss://)");
    redis_bad("http://:secret@host", "unknown scheme \"http\"");
    redis_bad("localhost:6379", "expected redis://");
    redis_bad("redis:/host", "expected redis://");
    redis_bad("", "expected redis://");
    redis_bad(" redis://host", "expected redis://");
    redis_bad(NULL, "Redis URL: missing");
}

static void test_redis_url_host_errors(void **state) {
    (void)state;
    redis_bad("redis://", "Redis URL: empty host");
    redis_bad("redis:///0", "empty host");
    redis_bad("redis://:6379", "empty host");
    redis_bad("redis://:secret@", "empty host");
    redis_bad("redis://:secret@:6379", "empty host");
    redis_bad("redis://[]", "empty host");
    redis_bad("redis://ho st", "invalid character in the host");
    redis_bad("redis://host\n", "invalid character");
    redis_bad("redis://h[1]", "invalid character");
    redis_bad("redis://::1", "must be in brackets");
    redis_bad("redis://host:1:2", "must be in brackets");
    redis_bad("redis://[::1", "missing ']'");
    redis_bad("redis://[::1]x", "unexpected characters after the host");
    redis_bad("redis://[zz::1]", "invalid IPv6 address");
    redis_bad("redis://[127.0.0.1]", "invalid IPv6 address");
    redis_bad("redis://[::1%]", "invalid IPv6 address");
}

static void test_redis_url_port_errors(void **state) {
    static const char *bad[] = {
        "redis://host:0",     "redis://host:65536", "redis://host:99999999999999999999",
        "redis://host:",      "redis://host:abc",   "redis://host:-1",
        "redis://host: 80",   "redis://host:+80",   "redis://[::1]:",
        "redis://[::1]:7x/0",
    };

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        redis_bad(bad[i], "Redis URL: port must be a number from 1 to 65535");
}

static void test_redis_url_db_errors(void **state) {
    (void)state;
    redis_bad("redis://host/abc", "the database must be a number from 0 to 2147483647");
    redis_bad("redis://host/-1", "got \"-1\"");
    redis_bad("redis://host/1x", "database must be");
    redis_bad("redis://host/1/2", "database must be");
    redis_bad("redis://host//", "database must be");
    redis_bad("redis://host/2147483648", "database must be");
    redis_bad("redis://host/ 1", "database must be");
    redis_bad("redis://host?db=1", "unexpected '?' after the host");
    redis_bad("redis://host:80#x", "unexpected '#'");
    redis_bad("redis://host/1?x", "database must be");
}

static void test_redis_url_auth_errors(void **state) {
    (void)state;
    redis_bad("redis://secret@host", "expected [user]:password before '@'");
    redis_bad("redis://user:@host", "empty password");
    redis_bad("redis://:@host", "empty password");
    redis_bad("redis://:secret%zz@host", "invalid %-escape in the password");
    redis_bad("redis://:secret%4@host", "invalid %-escape in the password");
    redis_bad("redis://:secret%@host", "invalid %-escape in the password");
    redis_bad("redis://:secret%00x@host", "invalid %-escape in the password");
    redis_bad("redis://us%00er:secret@host", "invalid %-escape in the user");
}

static void test_redis_url_unix_errors(void **state) {
    (void)state;
    redis_bad("unix://relative.sock", "expected an absolute socket path");
    redis_bad("unix://", "expected an absolute socket path");
    redis_bad("unix://:secret@/tmp/s", "expected an absolute socket path");
    redis_bad("unix:///", "empty socket path");
    redis_bad("unix:///?db=1", "empty socket path");
    redis_bad("unix:///s?db=x", "database must be");
    redis_bad("unix:///s?db=", "database must be");
    redis_bad("unix:///s?db=-1", "database must be");
    redis_bad("unix:///s?db=1&x=2", "database must be");
    redis_bad("unix:///s?password=secret", "unexpected '?' after the socket path");
    redis_bad("unix:///s#x", "unexpected '#'");
}

/* Parses a sentinel URL and checks it; `hosts` is "h:p,h:p" as parsed. */
static void sentinel_ok(const char *url, const char *hosts, const char *master, const char *user,
                        const char *password, int db, const char *sentinel_password) {
    tp_redis_url u;
    char err[256] = "", got[512] = "";
    size_t n = 0;

    if (tp_redis_url_parse(url, &u, err, sizeof err) != 0)
        fail_msg("%s: %s", url, err);
    assert_null(u.host);
    assert_null(u.path);
    for (int i = 0; i < u.nsentinels; i++)
        n += (size_t)snprintf(got + n, sizeof got - n, "%s%s:%d", i ? "," : "", u.sentinels[i].host,
                              u.sentinels[i].port);
    assert_string_equal(got, hosts);
    assert_string_equal(u.master, master);
    assert_string_or_null(u.user, user);
    assert_string_or_null(u.password, password);
    assert_string_or_null(u.sentinel_password, sentinel_password);
    assert_int_equal(u.db, db);
    tp_redis_url_clear(&u);
    assert_null(u.sentinels);
    assert_int_equal(u.nsentinels, 0);
    assert_null(u.master);
}

static void test_redis_url_sentinel(void **state) {
    (void)state;
    sentinel_ok("redis+sentinel://127.0.0.1:26380/mymaster", "127.0.0.1:26380", "mymaster", NULL,
                NULL, 0, NULL);
    sentinel_ok("redis+sentinel://a,b:1,[::1]:2,[::1]/m", "a:26379,b:1,::1:2,::1:26379", "m", NULL,
                NULL, 0, NULL);
    sentinel_ok("REDIS+SENTINEL://:secret@h/m/3", "h:26379", "m", NULL, "secret", 3, NULL);
    sentinel_ok("redis+sentinel://al%69ce:p%40ss@h1,h2/my-master.1/", "h1:26379,h2:26379",
                "my-master.1", "alice", "p@ss", 0, NULL);
    sentinel_ok("redis+sentinel://h/m?sentinel_password=s%26p", "h:26379", "m", NULL, NULL, 0,
                "s&p");
    sentinel_ok("redis+sentinel://:pw@h/m/2?sentinel_password=sp", "h:26379", "m", NULL, "pw", 2,
                "sp");
    sentinel_ok("redis+sentinel://h1,h2,h3,h4,h5,h6,h7,h8,h9,h10,h11,h12,h13,h14,h15,h16/m",
                "h1:26379,h2:26379,h3:26379,h4:26379,h5:26379,h6:26379,h7:26379,h8:26379,"
                "h9:26379,h10:26379,h11:26379,h12:26379,h13:26379,h14:26379,h15:26379,h16:26379",
                "m", NULL, NULL, 0, NULL);
}

static void test_redis_url_sentinel_errors(void **state) {
    (void)state;
    redis_bad("redis+sentinel://", "empty host");
    redis_bad("redis+sentinel:///m", "empty host");
    redis_bad("redis+sentinel://h,/m", "empty host");
    redis_bad("redis+sentinel://,h/m", "empty host");
    redis_bad("redis+sentinel://:secret@/m", "empty host");
    redis_bad("redis+sentinel://h:0/m", "port must be a number from 1 to 65535");
    redis_bad("redis+sentinel://h:1,k:x/m", "port must be");
    redis_bad("redis+sentinel://::1/m", "must be in brackets");
    redis_bad("redis+sentinel://[::1/m", "missing ']'");
    redis_bad("redis+sentinel://h", "expected /mastername after the sentinels");
    redis_bad("redis+sentinel://:secret@h?x", "expected /mastername");
    redis_bad("redis+sentinel://h/", "empty master name");
    redis_bad("redis+sentinel://h//1", "empty master name");
    redis_bad("redis+sentinel://h/m%20x", "invalid character in the master name");
    redis_bad("redis+sentinel://h/m/x", "database must be");
    redis_bad("redis+sentinel://h/m/1/2", "database must be");
    redis_bad("redis+sentinel://h/m?db=1", "only ?sentinel_password=P may follow");
    redis_bad("redis+sentinel://h/m#x", "only ?sentinel_password=P");
    redis_bad("redis+sentinel://h/m?sentinel_password=", "empty sentinel password");
    redis_bad("redis+sentinel://h/m?sentinel_password=secret&x=1", "only ?sentinel_password=P");
    redis_bad("redis+sentinel://h/m?sentinel_password=secret%zz",
              "invalid %-escape in the sentinel password");
    redis_bad("redis+sentinel://secret@h/m", "expected [user]:password before '@'");
    redis_bad("redis+sentinel://:secret%0@h/m", "invalid %-escape in the password");
    redis_bad("redis+sentinel://h1,h2,h3,h4,h5,h6,h7,h8,h9,h10,h11,h12,h13,h14,h15,h16,h17/m",
              "more than 16 sentinels");
    redis_bad("redis+sentinels://h/m", "unknown scheme \"redis+sentinels\"");
}

static void test_redis_url_misc(void **state) {
    char err[256] = "";

    (void)state;
    assert_int_equal(tp_redis_url_parse("redis://h", NULL, err, sizeof err), TEMPEST_EINVAL);
    assert_int_equal(tp_redis_url_parse("x", &(tp_redis_url){0}, NULL, 0), TEMPEST_EADDR);
    tp_redis_url_clear(NULL);
}

/* ---- Addresses ---- */

static void addr_ok(const char *addr, const char *host, int port) {
    char *h = NULL;
    int p = -1;
    char err[256] = "";

    if (tp_addr_parse(addr, &h, &p, err, sizeof err) != 0)
        fail_msg("%s: %s", addr, err);
    assert_string_equal(h, host);
    assert_int_equal(p, port);
    free(h);
}

static void addr_bad(const char *addr, const char *needle) {
    char *h = (char *)"garbage";
    int p = -1;
    char err[256] = "";

    if (tp_addr_parse(addr, &h, &p, err, sizeof err) != TEMPEST_EADDR)
        fail_msg("%s: accepted", addr ? addr : "NULL");
    assert_null(h);
    assert_int_equal(p, 0);
    assert_contains(err, "address: ");
    assert_contains(err, needle);
}

static void test_addr_valid(void **state) {
    (void)state;
    addr_ok("127.0.0.1:4000", "127.0.0.1", 4000);
    addr_ok("localhost:0", "localhost", 0);
    addr_ok("my-host.example_x:80", "my-host.example_x", 80);
    addr_ok("0.0.0.0:65535", "0.0.0.0", 65535);
    addr_ok("[::1]:65535", "::1", 65535);
    addr_ok("[::]:0", "::", 0);
}

static void test_addr_errors(void **state) {
    char *h;
    int p;

    (void)state;
    addr_bad("host", "missing port");
    addr_bad("[::1]", "missing port");
    addr_bad(":80", "empty host");
    addr_bad("[]:80", "empty host");
    addr_bad("::1:80", "must be in brackets");
    addr_bad("host:65536", "port must be a number from 0 to 65535");
    addr_bad("host:", "port must be");
    addr_bad("host:x", "port must be");
    addr_bad("host:-1", "port must be");
    addr_bad("host:80 ", "port must be");
    addr_bad("[::1]:x", "port must be");
    addr_bad("[::1", "missing ']'");
    addr_bad("[::1]80", "unexpected characters after the host");
    addr_bad("ho st:80", "invalid character");
    addr_bad("", "empty host");
    addr_bad(NULL, "missing");
    assert_int_equal(tp_addr_parse("h:1", NULL, &p, NULL, 0), TEMPEST_EINVAL);
    assert_int_equal(tp_addr_parse("h:1", &h, NULL, NULL, 0), TEMPEST_EINVAL);
}

/* ---- Allocation failures (jansson's allocator) ---- */

/* Counts live allocations; fails the allocation when `countdown` hits 0. */
typedef struct chaos {
    long countdown; /* < 0: never fail */
    long live;
} chaos;

static chaos g_chaos = {-1, 0};

static void *chaos_malloc(size_t n) {
    void *p;

    if (g_chaos.countdown == 0)
        return NULL;
    if (g_chaos.countdown > 0)
        g_chaos.countdown--;
    p = malloc(n);
    if (p != NULL)
        g_chaos.live++;
    return p;
}

static void chaos_free(void *p) {
    if (p != NULL)
        g_chaos.live--;
    free(p);
}

/* Runs one codec call with the Nth allocation failing; returns its success. */
typedef bool chaos_op(void);

static bool op_job_decode(void) {
    static const char text[] = "[\"url\",[{\"a\":[1,2,\"x\"]},\"y\"],\"h:1\",5]";
    tp_job_parts p;
    char err[256] = "";
    int rc = tp_job_decode(text, sizeof text - 1, &p, err, sizeof err);

    if (rc != 0) {
        assert_int_equal(rc, TEMPEST_EPROTO);
        assert_parts_zero(&p);
        assert_true(err[0] != '\0');
    }
    tp_job_parts_clear(&p);
    return rc == 0;
}

static bool op_job_encode(void) {
    json_t *args;
    char *s;
    long armed = g_chaos.countdown;

    g_chaos.countdown = -1;
    args = load("[{\"a\":\"b\"},1]");
    g_chaos.countdown = armed;
    s = tp_job_encode("url", args, "h:1", 9, NULL);
    g_chaos.countdown = -1;
    if (s != NULL)
        assert_string_equal(s, "[\"url\",[{\"a\":\"b\"},1],\"h:1\",9]");
    chaos_free(s);
    json_decref(args);
    return s != NULL;
}

static bool op_url_request(void) {
    static const tp_http_header h[] = {{"A", "1"}, {"B", "2"}, {"a", "3"}};
    char err[256] = "";
    json_t *r = tp_url_request_new("POST", "/x", h, 3, "a\0b", 3, err, sizeof err);

    if (r == NULL)
        assert_string_equal(err, "request: out of memory");
    json_decref(r);
    return r != NULL;
}

static bool op_answer(void) {
    static const char text[] = "[200,{\"X\":[\"a\",\"b\"]},\"body\"]";
    char err[256] = "";
    json_t *v = tp_answer_decode(text, sizeof text - 1, err, sizeof err);
    char *s = tp_answer_encode(v, NULL);
    bool ok = s != NULL;

    if (v == NULL)
        assert_true(err[0] != '\0');
    chaos_free(s);
    json_decref(v);
    return ok;
}

static void run_chaos(chaos_op *op) {
    long n;

    json_set_alloc_funcs(chaos_malloc, chaos_free);
    for (n = 0; n < 1000; n++) {
        bool ok;

        g_chaos.countdown = n;
        g_chaos.live = 0;
        ok = op();
        g_chaos.countdown = -1;
        assert_int_equal(g_chaos.live, 0);
        if (ok)
            break;
    }
    json_set_alloc_funcs(malloc, free);
    assert_true(n > 0 && n < 1000); /* failed at first, then succeeded */
}

static void test_chaos(void **state) {
    (void)state;
    run_chaos(op_job_decode);
    run_chaos(op_job_encode);
    run_chaos(op_url_request);
    run_chaos(op_answer);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_decode_valid),
        cmocka_unit_test(test_job_decode_respects_len),
        cmocka_unit_test(test_job_decode_args_may_hold_nul),
        cmocka_unit_test(test_job_decode_fast_path),
        cmocka_unit_test(test_job_decode_shape),
        cmocka_unit_test(test_job_decode_action),
        cmocka_unit_test(test_job_decode_args),
        cmocka_unit_test(test_job_decode_respond_to),
        cmocka_unit_test(test_job_decode_id),
        cmocka_unit_test(test_job_decode_bad_json),
        cmocka_unit_test(test_job_decode_args_errors),
        cmocka_unit_test(test_job_encode),
        cmocka_unit_test(test_job_encode_utf8_and_nul_verbatim),
        cmocka_unit_test(test_job_encode_bad_args),
        cmocka_unit_test(test_job_round_trip),
        cmocka_unit_test(test_answer_decode),
        cmocka_unit_test(test_answer_decode_errors),
        cmocka_unit_test(test_answer_encode),
        cmocka_unit_test(test_url_request_basic),
        cmocka_unit_test(test_url_request_header_names),
        cmocka_unit_test(test_url_request_body),
        cmocka_unit_test(test_url_request_bad_body),
        cmocka_unit_test(test_url_request_bad_strings),
        cmocka_unit_test(test_http_answer_valid),
        cmocka_unit_test(test_http_answer_later),
        cmocka_unit_test(test_http_answer_shape),
        cmocka_unit_test(test_http_answer_status),
        cmocka_unit_test(test_http_answer_body_and_headers_types),
        cmocka_unit_test(test_http_answer_header_names),
        cmocka_unit_test(test_http_answer_injection),
        cmocka_unit_test(test_redis_url_tcp),
        cmocka_unit_test(test_redis_url_auth),
        cmocka_unit_test(test_redis_url_unix),
        cmocka_unit_test(test_redis_url_scheme_errors),
        cmocka_unit_test(test_redis_url_host_errors),
        cmocka_unit_test(test_redis_url_port_errors),
        cmocka_unit_test(test_redis_url_db_errors),
        cmocka_unit_test(test_redis_url_auth_errors),
        cmocka_unit_test(test_redis_url_unix_errors),
        cmocka_unit_test(test_redis_url_sentinel),
        cmocka_unit_test(test_redis_url_sentinel_errors),
        cmocka_unit_test(test_redis_url_misc),
        cmocka_unit_test(test_addr_valid),
        cmocka_unit_test(test_addr_errors),
        cmocka_unit_test(test_chaos),
    };

    return cmocka_run_group_tests_name("codec", tests, NULL, NULL);
}
