/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the node listener's input path (tp_session_feed) and its
 * deferred replies. The input is one client's byte stream. It is fed three
 * ways to fresh sessions: whole, cut at points drawn from a generator seeded
 * with its first bytes, and one byte at a time (up to BYTES_MAX bytes: the
 * cuts, mostly short, cover longer inputs), each until the first non-zero
 * return (QUIT or a stream that cannot go on). All must return the same
 * code, make the same command calls and write the same replies; when the
 * stream broke (-1), only the final -ERR line may differ in wording, as the
 * point where the break is noticed depends on the cuts.
 *
 * The same seed picks the limits (max_request of 64 KiB or 300 bytes,
 * max_args 1024 or 8, so that the limit paths are reached with short
 * inputs), whether the session wants `AUTH s3cret` first, whether it has a
 * command callback at all, and how the replies still pending at the end are
 * completed (in order, in reverse, or after the session is freed).
 *
 * The callback checks its arguments. A command whose name starts with 'd'
 * takes a reply slot (tp_listener_defer); one starting with 'c' completes
 * the oldest pending slot (no arguments) or the newest (with some), then
 * answers itself. Other commands get one tp_resp_* reply chosen by argc, or
 * none for an empty name (a broken owner the session must cover for). The
 * replies of the callback carry the command's number as "+#n" or "-#n": the
 * output must be well-formed RESP with those numbers in request order,
 * whatever order the slots complete in.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "listener.h"
#include "fuzz.h"

enum feed_way { FEED_WHOLE, FEED_CUTS, FEED_BYTES };
enum { MAX_SLOTS = 64, BYTES_MAX = 8 << 10 };

typedef struct run {
    int rc;
    size_t calls;                    /* command callbacks */
    struct evbuffer *out;            /* every reply */
    tp_reply_slot *slots[MAX_SLOTS]; /* pending, oldest first */
    size_t slot_call[MAX_SLOTS];     /* the number of the command of each */
    size_t nslots;
} run;

/* Completes pending slot `i` with its command's number. */
static void complete(run *r, size_t i) {
    char text[32];

    snprintf(text, sizeof text, "#%zu", r->slot_call[i]);
    tp_slot_reply_error(r->slots[i], text);
    memmove(&r->slots[i], &r->slots[i + 1], (r->nslots - i - 1) * sizeof *r->slots);
    memmove(&r->slot_call[i], &r->slot_call[i + 1], (r->nslots - i - 1) * sizeof *r->slot_call);
    r->nslots--;
}

/* Takes a slot for command `n`; false when none is given (reply at once). */
static bool defer(run *r, size_t n, struct evbuffer *out) {
    tp_reply_slot *slot;

    if (r->nslots == MAX_SLOTS)
        return false;
    slot = tp_listener_defer(out);
    if (slot == NULL)
        return false;
    CHECK(tp_slot_alive(slot));
    CHECK(tp_listener_defer(out) == NULL); /* one slot per command */
    r->slots[r->nslots] = slot;
    r->slot_call[r->nslots] = n;
    r->nslots++;
    return true;
}

static void on_command(void *arg, int argc, const char **argv, const size_t *argvlen,
                       struct evbuffer *out) {
    run *r = arg;
    size_t n = r->calls++;
    char text[32];

    CHECK(argc >= 1 && argv != NULL && argvlen != NULL);
    for (int i = 0; i < argc; i++)
        CHECK(argv[i] != NULL && argv[i][argvlen[i]] == '\0');
    if (argvlen[0] == 0)
        return;
    if ((argv[0][0] == 'd' || argv[0][0] == 'D') && defer(r, n, out))
        return;
    if ((argv[0][0] == 'c' || argv[0][0] == 'C') && r->nslots > 0)
        complete(r, argc == 1 ? 0 : r->nslots - 1);
    snprintf(text, sizeof text, "#%zu", n);
    switch (argc) {
    case 1:
        tp_resp_status(out, text);
        break;
    case 2:
        tp_resp_bulk(out, argv[1], argvlen[1]);
        break;
    case 3:
        tp_resp_error(out, text);
        break;
    case 4:
        tp_resp_nil(out);
        break;
    default:
        tp_resp_integer(out, argc);
        break;
    }
}

static uint64_t next_random(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* FNV-1a of the first 8 bytes; never 0 (xorshift's fixed point). */
static uint64_t seed_of(const uint8_t *data, size_t size) {
    uint64_t h = 0xcbf29ce484222325u;

    for (size_t i = 0; i < size && i < 8; i++)
        h = (h ^ data[i]) * 0x100000001b3u;
    return h != 0 ? h : 1;
}

/* Mostly short pieces, sometimes long ones. */
static size_t next_cut(uint64_t *x, size_t left) {
    uint64_t r = next_random(x);
    size_t n = (r & 3) == 0 ? 1 + (size_t)((r >> 8) % 4096) : 1 + (size_t)((r >> 8) % 16);

    return n < left ? n : left;
}

/* The end of the CRLF-terminated line at p[i..n), or 0 when there is none. */
static size_t line_end(const unsigned char *p, size_t i, size_t n) {
    for (; i + 1 < n; i++) {
        if (p[i] == '\r' && p[i + 1] == '\n')
            return i;
    }
    return 0;
}

/*
 * Reads one reply at p[*i..n) and moves *i past it; `last` is the highest
 * "#n" marker seen so far (+1), which markers must exceed.
 */
static void parse_reply(const unsigned char *p, size_t *i, size_t n, size_t *last) {
    size_t end = line_end(p, *i, n);
    unsigned char type = p[*i];
    long long len;

    CHECK(end > *i);
    if ((type == '+' || type == '-') && p[*i + 1] == '#') {
        size_t mark = (size_t)strtoull((const char *)p + *i + 2, NULL, 10);
        CHECK(mark + 1 > *last);
        *last = mark + 1;
    }
    if (type == '+' || type == '-' || type == ':' || type == '_') { /* '_': RESP3 null */
        *i = end + 2;
        return;
    }
    CHECK(type == '$' || type == '*' || type == '%'); /* '%': RESP3 map (HELLO 3) */
    len = strtoll((const char *)p + *i + 1, NULL, 10);
    if (type == '%') {
        type = '*';
        len *= 2;
    }
    *i = end + 2;
    if (type == '$' && len >= 0) {
        CHECK((size_t)len <= n - *i && n - *i - (size_t)len >= 2);
        CHECK(p[*i + (size_t)len] == '\r' && p[*i + (size_t)len + 1] == '\n');
        *i += (size_t)len + 2;
    }
    for (long long k = 0; type == '*' && k < len; k++)
        parse_reply(p, i, n, last);
}

/* The output is whole RESP replies, with the markers in request order. */
static void check_output(struct evbuffer *out) {
    size_t n = evbuffer_get_length(out), i = 0, last = 0;
    const unsigned char *p = evbuffer_pullup(out, -1);

    while (i < n)
        parse_reply(p, &i, n, &last);
    CHECK(i == n);
}

/* Once the session returned non-zero, it refuses input silently. */
static void check_sticky(tp_session *s, run *r) {
    size_t before = evbuffer_get_length(r->out);

    CHECK(tp_session_feed(s, "PING\r\n", 6, r->out) == r->rc);
    CHECK(evbuffer_get_length(r->out) == before);
}

/* Completes what is still pending: in order, in reverse, or as orphans. */
static void finish(tp_session *s, run *r, uint64_t seed) {
    tp_reply_slot *orphans[MAX_SLOTS];
    size_t norphans = r->nslots;

    CHECK(tp_session_deferred(s) == r->nslots);
    if ((seed >> 57) & 1) {
        memcpy(orphans, r->slots, r->nslots * sizeof *r->slots);
        tp_session_free(s);
        for (size_t i = 0; i < norphans; i++) {
            CHECK(!tp_slot_alive(orphans[i]));
            tp_slot_reply_bulk(orphans[i], "late", 4);
        }
        r->nslots = 0;
        return;
    }
    while (r->nslots > 0)
        complete(r, (seed >> 56) & 1 ? r->nslots - 1 : 0);
    CHECK(tp_session_deferred(s) == 0);
    tp_session_free(s);
}

static void feed(const tp_listener_limits *lim, tp_command_fn *fn, const uint8_t *data, size_t size,
                 enum feed_way way, run *r) {
    tp_session *s = tp_session_new(lim, fn, r);
    uint64_t seed = seed_of(data, size), x = seed;
    size_t at = 0;

    CHECK(s != NULL);
    r->out = evbuffer_new();
    CHECK(r->out != NULL);
    CHECK(tp_listener_defer(r->out) == NULL); /* outside a command callback */
    while (r->rc == 0 && at < size) {
        size_t n = way == FEED_WHOLE ? size - at : way == FEED_BYTES ? 1 : next_cut(&x, size - at);
        r->rc = tp_session_feed(s, (const char *)data + at, n, r->out);
        CHECK(r->rc >= -1 && r->rc <= 1);
        CHECK(tp_session_deferred(s) == r->nslots);
        at += n;
    }
    if (r->rc != 0)
        check_sticky(s, r);
    finish(s, r, seed);
    check_output(r->out);
}

/*
 * The length of `out` without its last reply when that is an error line
 * (the -ERR of a broken stream, unless it was held behind an orphaned
 * slot); 0 when the output is that line alone.
 */
static size_t before_error(struct evbuffer *out) {
    size_t n = evbuffer_get_length(out);
    const char *p = (const char *)evbuffer_pullup(out, -1);
    size_t i;

    if (n < 3)
        return n;
    for (i = n - 3; i >= 2; i--) {
        if (p[i - 2] == '\r' && p[i - 1] == '\n')
            break;
    }
    if (i < 2)
        i = 0;
    return p[i] == '-' ? i : n;
}

static void check_same(run *a, run *b) {
    size_t na = evbuffer_get_length(a->out), nb = evbuffer_get_length(b->out);

    CHECK(a->rc == b->rc);
    CHECK(a->calls == b->calls);
    if (a->rc == -1) {
        na = before_error(a->out);
        nb = before_error(b->out);
    }
    CHECK(na == nb);
    CHECK(na == 0 || memcmp(evbuffer_pullup(a->out, -1), evbuffer_pullup(b->out, -1), na) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint64_t seed = seed_of(data, size);
    tp_listener_limits lim = {
        .max_request = (seed >> 60) & 1 ? 300 : (size_t)64 << 10,
        .max_args = (seed >> 61) & 1 ? 8 : 0,
        .secret = (seed >> 62) & 1 ? "s3cret" : NULL,
    };
    tp_command_fn *fn = (seed >> 63) & 1 ? NULL : on_command;
    run whole = {0}, cuts = {0}, bytes = {0};

    feed(&lim, fn, data, size, FEED_WHOLE, &whole);
    feed(&lim, fn, data, size, FEED_CUTS, &cuts);
    check_same(&whole, &cuts);
    if (size <= BYTES_MAX) {
        feed(&lim, fn, data, size, FEED_BYTES, &bytes);
        check_same(&whole, &bytes);
        evbuffer_free(bytes.out);
    }
    evbuffer_free(whole.out);
    evbuffer_free(cuts.out);
    return 0;
}
