/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the examples' `text/event-stream` parser against the WHATWG
 * HTML standard's examples and rules. Every input is fed whole, one byte at a
 * time, and cut in two at every point, and each way must give the same
 * transcript: `[type](data){id}` per event, `#text` per comment, then the
 * final `last=<id> retry=<ms>`. Random inputs check the same invariance.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse_parser.h"

#define OUT_SIZE 4096

/* What the callbacks saw. */
typedef struct rec {
    char out[OUT_SIZE];
    size_t len;
    int events, comments;
    bool count_only;              /* big events: count them, no transcript */
    sse_parser *free_in_callback; /* freed in the first callback when set */
} rec;

static void put(rec *r, const char *s, size_t n) {
    assert_true(n <= sizeof r->out - r->len);
    memcpy(r->out + r->len, s, n);
    r->len += n;
}

static void puts_(rec *r, const char *s) {
    put(r, s, strlen(s));
}

static void maybe_free(rec *r) {
    sse_parser_free(r->free_in_callback);
    r->free_in_callback = NULL;
}

static void on_event(const sse_event *ev, void *arg) {
    rec *r = arg;
    assert_int_equal(ev->type[ev->type_len], '\0');
    assert_int_equal(ev->data[ev->data_len], '\0');
    if (r->count_only) {
        r->events++;
        return;
    }
    puts_(r, "[");
    put(r, ev->type, ev->type_len);
    puts_(r, "](");
    put(r, ev->data, ev->data_len);
    puts_(r, "){");
    puts_(r, ev->id);
    puts_(r, "}\n");
    r->events++;
    maybe_free(r);
}

static void on_comment(const char *text, size_t len, void *arg) {
    rec *r = arg;
    assert_int_equal(text[len], '\0');
    puts_(r, "#");
    put(r, text, len);
    puts_(r, "\n");
    r->comments++;
    maybe_free(r);
}

static const sse_parser_callbacks cbs = {.on_event = on_event, .on_comment = on_comment};

/* Feeds `in` in pieces that end at each offset of `cuts` (ascending), then
 * the rest; stops at the first error. */
static int feed_cut(sse_parser *p, const char *in, size_t n, const size_t *cuts, size_t ncuts) {
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        if (sse_parser_feed(p, in + at, end - at) != 0)
            return -1;
        at = end;
    }
    return 0;
}

static void finish(rec *r, sse_parser *p) {
    char tail[64];
    puts_(r, "last=");
    puts_(r, sse_parser_last_id(p));
    snprintf(tail, sizeof tail, " retry=%ld", sse_parser_retry_ms(p));
    puts_(r, tail);
}

/* One run: a fresh parser, `in` fed in pieces, the transcript compared. */
static void run(const char *in, size_t n, const size_t *cuts, size_t ncuts, const char *want,
                size_t want_len, size_t max, int want_rc, const char *how) {
    rec r = {0};
    sse_parser *p = sse_parser_new(&cbs, &r, max);
    assert_non_null(p);
    int rc = feed_cut(p, in, n, cuts, ncuts);
    finish(&r, p);
    sse_parser_free(p);
    if (rc != want_rc || r.len != want_len || memcmp(r.out, want, want_len) != 0) {
        print_error("fed %s: rc %d (want %d)\n got: %.*s\nwant: %.*s\n", how, rc, want_rc,
                    (int)r.len, r.out, (int)want_len, want);
        fail();
    }
}

/* Feeds `in` whole, byte by byte and cut in two at every point. */
static void check_max(const char *in, size_t n, const char *want, size_t want_len, size_t max,
                      int want_rc) {
    size_t *cuts = calloc(n + 1, sizeof *cuts);
    assert_non_null(cuts);
    run(in, n, NULL, 0, want, want_len, max, want_rc, "whole");
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    run(in, n, cuts, n, want, want_len, max, want_rc, "byte by byte");
    for (size_t i = 0; i <= n; i++) {
        char how[64];
        snprintf(how, sizeof how, "cut at %zu", i);
        run(in, n, &i, 1, want, want_len, max, want_rc, how);
    }
    free(cuts);
}

/* String literals, so that sizeof counts NUL bytes inside them. */
#define CHECK(in, want) check_max(in, sizeof(in) - 1, want, sizeof(want) - 1, 0, 0)
#define CHECK_MAX(in, want, max, rc) check_max(in, sizeof(in) - 1, want, sizeof(want) - 1, max, rc)

/* ---- the standard's examples --------------------------------------------- */

static void test_spec_messages(void **state) {
    (void)state;
    CHECK("data: This is the first message.\n"
          "\n"
          "data: This is the second message, it\n"
          "data: has two lines.\n"
          "\n"
          "data: This is the third message.\n"
          "\n",
          "[message](This is the first message.){}\n"
          "[message](This is the second message, it\nhas two lines.){}\n"
          "[message](This is the third message.){}\n"
          "last= retry=-1");
    CHECK("event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\n"
          "event: add\ndata: 113411\n\n",
          "[add](73857293){}\n[remove](2153){}\n[add](113411){}\nlast= retry=-1");
    CHECK("data: YHOO\ndata: +2\ndata: 10\n\n", "[message](YHOO\n+2\n10){}\nlast= retry=-1");
}

/* The four blocks: a comment, an id, an empty id, and a value whose second
 * space is kept. */
static void test_spec_four_blocks(void **state) {
    (void)state;
    CHECK(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
          "data:  third event\n\n",
          "# test stream\n[message](first event){1}\n[message](second event){}\n"
          "[message]( third event){}\nlast= retry=-1");
}

/* `data` alone is an empty value; the last block never ends. */
static void test_spec_empty_data(void **state) {
    (void)state;
    CHECK("data\n\ndata\ndata\n\ndata:", "[message](){}\n[message](\n){}\nlast= retry=-1");
    CHECK("data:test\n\ndata: test\n\n", "[message](test){}\n[message](test){}\nlast= retry=-1");
}

/* ---- fields -------------------------------------------------------------- */

static void test_one_space_removed(void **state) {
    (void)state;
    CHECK("data:\n\n", "[message](){}\nlast= retry=-1");
    CHECK("data: \n\n", "[message](){}\nlast= retry=-1");
    CHECK("data:  x\n\n", "[message]( x){}\nlast= retry=-1");
    CHECK("data:x \n\n", "[message](x ){}\nlast= retry=-1");
    CHECK("data:\tx\n\n", "[message](\tx){}\nlast= retry=-1");
    CHECK("data: a: b\n\n", "[message](a: b){}\nlast= retry=-1");
}

static void test_event_names(void **state) {
    (void)state;
    /* The type resets after each dispatch. */
    CHECK("event: add\ndata: 1\n\ndata: 2\n\n", "[add](1){}\n[message](2){}\nlast= retry=-1");
    CHECK("event\ndata: 1\n\n", "[message](1){}\nlast= retry=-1");
    CHECK("event: a\nevent: b\ndata: 1\n\n", "[b](1){}\nlast= retry=-1");
    CHECK("data: 1\nevent: late\n\n", "[late](1){}\nlast= retry=-1");
    /* A block without data resets the type too. */
    CHECK("event: x\n\ndata: 1\n\n", "[message](1){}\nlast= retry=-1");
    CHECK("event:  spaced \ndata: 1\n\n", "[ spaced ](1){}\nlast= retry=-1");
}

static void test_unknown_fields(void **state) {
    (void)state;
    CHECK("foo: bar\ndata: 1\nData: 2\ndata : 3\n DATA: 4\n\n", "[message](1){}\nlast= retry=-1");
    CHECK("foo\n\n", "last= retry=-1");
}

static void test_comments(void **state) {
    (void)state;
    CHECK(":\n", "#\nlast= retry=-1");
    CHECK(": keep-alive\n", "# keep-alive\nlast= retry=-1");
    CHECK(":no space: here\r\n", "#no space: here\nlast= retry=-1");
    /* A comment inside an event neither ends nor changes it. */
    CHECK("data: a\n: hi\ndata: b\n\n", "# hi\n[message](a\nb){}\nlast= retry=-1");
    /* An unterminated comment is not reported. */
    CHECK(": partial", "last= retry=-1");
}

static void test_id_persists(void **state) {
    (void)state;
    CHECK("id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n",
          "[message](a){1}\n[message](b){1}\n[message](c){2}\nlast=2 retry=-1");
    CHECK("data: a\nid: 3\n\n", "[message](a){3}\nlast=3 retry=-1");
    /* An empty id clears it; the last id line of a block wins. */
    CHECK("id: 1\ndata: a\n\nid\ndata: b\n\n", "[message](a){1}\n[message](b){}\nlast= retry=-1");
    CHECK("id: 1\nid: 2\ndata: a\n\n", "[message](a){2}\nlast=2 retry=-1");
    CHECK("id:  x\ndata: a\n\n", "[message](a){ x}\nlast= x retry=-1");
}

/* The blank line commits the id even when it dispatches nothing; an id in a
 * block that never ends is not committed. */
static void test_id_commit(void **state) {
    (void)state;
    CHECK("id: 7\n\n", "last=7 retry=-1");
    CHECK("id: 1\ndata: a\n\nid: 2\ndata: b\n", "[message](a){1}\nlast=1 retry=-1");
    CHECK("id: 1\ndata: a\n\nid: 2\n", "[message](a){1}\nlast=1 retry=-1");
}

static void test_id_with_nul_ignored(void **state) {
    (void)state;
    CHECK("id: 1\ndata: a\n\nid: 2\0"
          "3\ndata: b\n\n",
          "[message](a){1}\n[message](b){1}\nlast=1 retry=-1");
    CHECK("id: \0\ndata: b\n\n", "[message](b){}\nlast= retry=-1");
    /* NUL is allowed in data and in an event name. */
    CHECK("event: x\0y\ndata: a\0b\n\n", "[x\0y](a\0b){}\nlast= retry=-1");
}

static void test_retry(void **state) {
    (void)state;
    CHECK("retry: 100\n", "last= retry=100");
    CHECK("retry:100\nretry: 0\n", "last= retry=0");
    CHECK("retry: 007\n", "last= retry=7");
    CHECK("retry: 100\nretry: abc\n", "last= retry=100");
    const char *bad[] = {"retry: 1x\n",  "retry: -1\n",  "retry:  100\n", "retry: 100 \n",
                         "retry\n",      "retry:\n",     "retry: 1.5\n",  "retry: +1\n",
                         "retry: 1e3\n", "Retry: 100\n", "retry: 100"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        check_max(bad[i], strlen(bad[i]), "last= retry=-1", strlen("last= retry=-1"), 0, 0);
    /* Only ASCII digits: a fullwidth digit is not one. */
    CHECK("retry: \xEF\xBC\x91\n", "last= retry=-1");
    /* Too large for a long: saturates. */
    char want[64];
    snprintf(want, sizeof want, "last= retry=%ld", LONG_MAX);
    const char *huge = "retry: 99999999999999999999999999\n";
    check_max(huge, strlen(huge), want, strlen(want), 0, 0);
    /* retry neither dispatches nor disturbs the event. */
    CHECK("data: a\nretry: 5\ndata: b\n\n", "[message](a\nb){}\nlast= retry=5");
}

/* ---- encoding and lines -------------------------------------------------- */

static void test_bom(void **state) {
    (void)state;
    CHECK("\xEF\xBB\xBF"
          "data: a\n\n",
          "[message](a){}\nlast= retry=-1");
    /* Only one, only at the very start: a second BOM is part of the line, here
     * of the field name, so the field is unknown. */
    CHECK("\xEF\xBB\xBF\xEF\xBB\xBF"
          "data: a\n\n",
          "last= retry=-1");
    CHECK("data: a\n\n\xEF\xBB\xBF"
          "data: b\n\n",
          "[message](a){}\nlast= retry=-1");
    CHECK("\n\xEF\xBB\xBF"
          "data: b\n\n",
          "last= retry=-1");
    CHECK("data: \xEF\xBB\xBFx\n\n", "[message](\xEF\xBB\xBFx){}\nlast= retry=-1");
    /* A lone U+FEFF-looking prefix that is not one. */
    CHECK("\xEF\xBB"
          "data: a\n\n",
          "last= retry=-1");
}

static void test_line_ends(void **state) {
    (void)state;
    CHECK("data: a\r\rdata: b\n\ndata: c\r\n\r\n",
          "[message](a){}\n[message](b){}\n[message](c){}\nlast= retry=-1");
    CHECK("data: a\r\ndata: b\rdata: c\n\n", "[message](a\nb\nc){}\nlast= retry=-1");
    /* CR LF is one end; LF CR is two. */
    CHECK("data: a\r\n\n", "[message](a){}\nlast= retry=-1");
    CHECK("data: a\n\r\n", "[message](a){}\nlast= retry=-1");
    CHECK("data: a\r\n\r\n\r\n", "[message](a){}\nlast= retry=-1");
    CHECK("data: a\n\r\rdata: b\r\r", "[message](a){}\n[message](b){}\nlast= retry=-1");
    CHECK("id: 1\r\rdata: a\r\n", "last=1 retry=-1");
    CHECK("\r\n\r\n\n\r", "last= retry=-1");
}

/* A CR alone ends a line at once: the event is out before the next byte. */
static void test_cr_at_chunk_end(void **state) {
    (void)state;
    rec r = {0};
    sse_parser *p = sse_parser_new(&cbs, &r, 0);
    assert_non_null(p);
    assert_int_equal(sse_parser_feed(p, "data: a\r", 8), 0);
    assert_int_equal(r.events, 0);
    assert_int_equal(sse_parser_feed(p, "\r", 1), 0);
    assert_int_equal(r.events, 1);
    /* The LF after that CR is part of its line end, not another blank line. */
    assert_int_equal(sse_parser_feed(p, "\ndata: b\r", 9), 0);
    assert_int_equal(r.events, 1);
    assert_int_equal(sse_parser_feed(p, "\n", 1), 0);
    assert_int_equal(r.events, 1);
    assert_int_equal(sse_parser_feed(p, "\n", 1), 0);
    assert_int_equal(r.events, 2);
    sse_parser_free(p);
    put(&r, "", 1);
    assert_string_equal(r.out, "[message](a){}\n[message](b){}\n");
}

static void test_utf8(void **state) {
    (void)state;
    CHECK("data: \xE2\x82\xAC \xF0\x9F\x98\x80 \xC3\xA9\n\n",
          "[message](\xE2\x82\xAC \xF0\x9F\x98\x80 \xC3\xA9){}\nlast= retry=-1");
    /* Invalid bytes become U+FFFD, as the WHATWG UTF-8 decoder says. */
    CHECK("data: \xFF\n\n", "[message](\xEF\xBF\xBD){}\nlast= retry=-1");
    CHECK("data: \xC3\n\n", "[message](\xEF\xBF\xBD){}\nlast= retry=-1");
    CHECK("data: \xE2\x82x\n\n", "[message](\xEF\xBF\xBDx){}\nlast= retry=-1");
    CHECK("data: \xC0\xAF\n\n", "[message](\xEF\xBF\xBD\xEF\xBF\xBD){}\nlast= retry=-1");
    CHECK("data: \xED\xA0\x80\n\n",
          "[message](\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD){}\nlast= retry=-1");
    CHECK("data: \xF4\x90\x80\x80\n\n",
          "[message](\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD){}\nlast= retry=-1");
    /* A truncated sequence before the line end does not swallow the CR. */
    CHECK("data: \xF0\x9F\r\r", "[message](\xEF\xBF\xBD){}\nlast= retry=-1");
    /* An invalid first byte ends the chance of a BOM. */
    CHECK("\xFF\xEF\xBB\xBF"
          "data: a\n\n",
          "last= retry=-1");
}

/* ---- what is not dispatched ---------------------------------------------- */

static void test_not_dispatched(void **state) {
    (void)state;
    CHECK("event: x\nid: 1\n\n", "last=1 retry=-1");
    CHECK("\n\n\n", "last= retry=-1");
    CHECK("data: a\n\ndata: b", "[message](a){}\nlast= retry=-1");
    CHECK("data: a\n\ndata: b\n", "[message](a){}\nlast= retry=-1");
    CHECK("data: a\n\ndata: b\r", "[message](a){}\nlast= retry=-1");
    CHECK("", "last= retry=-1");
}

/* ---- limits -------------------------------------------------------------- */

static void test_overflow(void **state) {
    (void)state;
    /* A line of exactly `max` bytes fits; one more does not. */
    CHECK_MAX("data: 12\n\n", "[message](12){}\nlast= retry=-1", 8, 0);
    CHECK_MAX("data: 123\n\n", "last= retry=-1", 8, -1);
    CHECK_MAX(": comment", "last= retry=-1", 8, -1);
    /* The data buffer, with its LFs: the events before are delivered. */
    CHECK_MAX("data:1\n\ndata:123\ndata:123\n\n",
              "[message](1){}\n[message](123\n123){}\nlast= retry=-1", 8, 0);
    CHECK_MAX("data:1\n\ndata:123\ndata:123\ndata:1\n\n", "[message](1){}\nlast= retry=-1", 8, -1);
    CHECK_MAX("id: 1\ndata:1\n\nid: 2\ndata:12345678\n\n", "[message](1){1}\nlast=1 retry=-1", 8,
              -1);
}

/* After an error the parser stays failed until reset. */
static void test_failed_until_reset(void **state) {
    (void)state;
    rec r = {0};
    sse_parser *p = sse_parser_new(&cbs, &r, 4);
    assert_non_null(p);
    errno = 0;
    assert_int_equal(sse_parser_feed(p, "data: toolong\n\n", 15), -1);
    assert_int_equal(errno, EMSGSIZE);
    assert_int_equal(sse_parser_feed(p, "\n", 1), -1);
    sse_parser_reset(p);
    assert_int_equal(sse_parser_feed(p, "data\n\n", 6), 0);
    assert_int_equal(r.events, 1);
    sse_parser_free(p);
}

static void test_default_max(void **state) {
    (void)state;
    size_t n = SSE_PARSER_DEFAULT_MAX + 2;
    char *in = malloc(n);
    assert_non_null(in);
    memset(in, 'x', n);
    memcpy(in, "data:", 5);
    in[SSE_PARSER_DEFAULT_MAX] = '\n';
    in[SSE_PARSER_DEFAULT_MAX + 1] = '\n';
    rec r = {.count_only = true};
    sse_parser *p = sse_parser_new(&cbs, &r, 0);
    assert_non_null(p);
    assert_int_equal(sse_parser_feed(p, in, n), 0); /* a line of exactly 1 MiB */
    assert_int_equal(r.events, 1);
    sse_parser_free(p);
    in[SSE_PARSER_DEFAULT_MAX] = 'x';
    p = sse_parser_new(NULL, NULL, 0);
    assert_non_null(p);
    assert_int_equal(sse_parser_feed(p, in, n), -1); /* one byte more */
    sse_parser_free(p);
    free(in);
}

/* ---- lifetime and streams ------------------------------------------------ */

static void test_free_in_callback(void **state) {
    (void)state;
    static const char *inputs[] = {"data: a\n\ndata: b\n\n", ": a\n: b\ndata: c\n\n",
                                   "data: a\r\n\r\n\xFF"};
    for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
        rec r = {0};
        sse_parser *p = sse_parser_new(&cbs, &r, 0);
        assert_non_null(p);
        r.free_in_callback = p;
        assert_int_equal(sse_parser_feed(p, inputs[i], strlen(inputs[i])), 0);
        assert_int_equal(r.events + r.comments, 1);
        assert_null(r.free_in_callback); /* freed; ASan checks nothing touched it */
    }
}

static void test_reset(void **state) {
    (void)state;
    rec r = {0};
    sse_parser *p = sse_parser_new(&cbs, &r, 0);
    assert_non_null(p);
    /* A committed id carries over; the unfinished block, CR and UTF-8
     * sequence do not, and a BOM is allowed again. */
    const char first[] = "\xEF\xBB\xBFid: 4\nretry: 50\n\ndata: lost\nid: 5\nevent: x\n\xE2\x82";
    assert_int_equal(sse_parser_feed(p, first, sizeof first - 1), 0);
    assert_string_equal(sse_parser_last_id(p), "4");
    sse_parser_reset(p);
    const char second[] = "\xEF\xBB\xBF"
                          "data: b\n\nid: 6\ndata: c\r";
    assert_int_equal(sse_parser_feed(p, second, sizeof second - 1), 0);
    sse_parser_reset(p);
    assert_int_equal(sse_parser_feed(p, "\ndata: d\n\n", 10), 0);
    finish(&r, p);
    put(&r, "", 1);
    assert_string_equal(r.out, "[message](b){4}\n[message](d){4}\nlast=4 retry=50");
    sse_parser_free(p);
}

static void test_null_arguments(void **state) {
    (void)state;
    sse_parser_free(NULL);
    sse_parser *p = sse_parser_new(NULL, NULL, 0);
    assert_non_null(p);
    assert_int_equal(sse_parser_feed(p, NULL, 0), 0);
    assert_int_equal(sse_parser_feed(p, "id: 9\nretry: 1\ndata: x\n\n", 24), 0);
    assert_string_equal(sse_parser_last_id(p), "9");
    assert_int_equal(sse_parser_retry_ms(p), 1);
    sse_parser_free(p);
    /* Only the comment callback. */
    rec r = {0};
    p = sse_parser_new(&(sse_parser_callbacks){.on_comment = on_comment}, &r, 0);
    assert_non_null(p);
    assert_int_equal(sse_parser_feed(p, ":c\ndata: x\n\n", 12), 0);
    assert_int_equal(r.comments, 1);
    sse_parser_free(p);
}

/* Random streams from SSE-shaped pieces: random chunking never changes what
 * comes out (nor whether the limit is hit). */
static void test_random_chunking(void **state) {
    (void)state;
    static const char *pieces[] = {"data", "id",           "event", "retry", ":",
                                   " ",    "\r",           "\n",    "\r\n",  "x",
                                   "12",   "\xEF\xBB\xBF", "\xC3",  "\xA9",  "\xFF"};
    enum { NP = sizeof pieces / sizeof *pieces, RUNS = 3000, MAXLEN = 120 };
    char in[MAXLEN + 8];
    size_t cuts[MAXLEN + 8];
    srand(42);
    for (int run_i = 0; run_i < RUNS; run_i++) {
        size_t n = 0;
        while (n < MAXLEN) {
            const char *s = pieces[rand() % NP];
            memcpy(in + n, s, strlen(s));
            n += strlen(s);
        }
        rec whole = {0};
        sse_parser *p = sse_parser_new(&cbs, &whole, 16);
        assert_non_null(p);
        int rc = sse_parser_feed(p, in, n);
        finish(&whole, p);
        sse_parser_free(p);
        size_t ncuts = 0;
        for (size_t i = 1; i < n; i++)
            if (rand() % 4 == 0)
                cuts[ncuts++] = i;
        run(in, n, cuts, ncuts, whole.out, whole.len, 16, rc, "randomly");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_messages),
        cmocka_unit_test(test_spec_four_blocks),
        cmocka_unit_test(test_spec_empty_data),
        cmocka_unit_test(test_one_space_removed),
        cmocka_unit_test(test_event_names),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_id_persists),
        cmocka_unit_test(test_id_commit),
        cmocka_unit_test(test_id_with_nul_ignored),
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_line_ends),
        cmocka_unit_test(test_cr_at_chunk_end),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_not_dispatched),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_failed_until_reset),
        cmocka_unit_test(test_default_max),
        cmocka_unit_test(test_free_in_callback),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_random_chunking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
