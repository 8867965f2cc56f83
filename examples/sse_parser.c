/* SPDX-License-Identifier: MIT */
/*
 * The `text/event-stream` parser: three stages, one byte at a time. The
 * WHATWG UTF-8 decoder turns bytes into code points (U+FFFD for what is not
 * UTF-8, the first code point dropped if it is a BOM); the line splitter cuts
 * on CR, LF or CRLF, remembering a CR across calls so that a CRLF split
 * between two chunks is one line end; and each complete line is interpreted
 * as the standard's "Interpreting an event stream" says. Code points are kept
 * as UTF-8, so the strings handed out are the stream's bytes when they were
 * valid. The last event ID follows the standard: an `id` field fills the
 * last event ID buffer, and the next blank line copies it into the last event
 * ID string (which events and sse_parser_last_id() report). A new stream
 * starts its buffer from that string, as browsers do.
 */
#include "sse_parser.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A growable byte string, always NUL-terminated once allocated. */
typedef struct buf {
    char *s;
    size_t len, cap;
} buf;

struct sse_parser {
    sse_parser_callbacks cb;
    void *arg;
    size_t max;
    /* UTF-8 decoder: the sequence so far, its expected length, and the
     * allowed range of its next byte (the standard's lower/upper boundary). */
    unsigned char seq[4];
    int seq_len, seq_need;
    unsigned char lower, upper;
    bool started;  /* a code point was seen on this stream: no BOM any more */
    bool after_cr; /* the last line ended with CR: a LF now ends nothing */
    bool failed;
    bool in_callback, freeing;
    buf line, data, type;
    buf id;      /* the last event ID buffer */
    buf last_id; /* the last event ID string */
    long retry_ms;
};

/* ---- byte strings ------------------------------------------------------- */

static int buf_append(buf *b, const char *s, size_t n, size_t max) {
    if (n > max - b->len) {
        errno = EMSGSIZE;
        return -1;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        char *s2 = realloc(b->s, cap);
        if (s2 == NULL)
            return -1; /* errno is ENOMEM */
        b->s = s2;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 0;
}

static void buf_clear(buf *b) {
    b->len = 0;
    if (b->s != NULL)
        b->s[0] = '\0';
}

static int buf_set(buf *b, const char *s, size_t n, size_t max) {
    buf_clear(b);
    return buf_append(b, s, n, max);
}

static const char *buf_str(const buf *b) {
    return b->s != NULL ? b->s : "";
}

static bool buf_is(const buf *b, const char *s, size_t n) {
    return b->len == n && (n == 0 || memcmp(b->s, s, n) == 0);
}

/* ---- interpreting lines ------------------------------------------------- */

static bool is_field(const char *name, size_t len, const char *want) {
    return len == strlen(want) && memcmp(name, want, len) == 0;
}

/* `retry`: only ASCII digits (at least one) set the reconnection time; a
 * value too large for a long saturates. */
static void set_retry(sse_parser *p, const char *v, size_t n) {
    long ms = 0;
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return;
        int digit = v[i] - '0';
        ms = ms > (LONG_MAX - digit) / 10 ? LONG_MAX : ms * 10 + digit;
    }
    p->retry_ms = ms;
}

static int process_field(sse_parser *p, const char *name, size_t name_len, const char *v,
                         size_t n) {
    if (is_field(name, name_len, "event"))
        return buf_set(&p->type, v, n, p->max);
    if (is_field(name, name_len, "data")) {
        if (buf_append(&p->data, v, n, p->max) != 0)
            return -1;
        return buf_append(&p->data, "\n", 1, p->max);
    }
    if (is_field(name, name_len, "id"))
        return memchr(v, '\0', n) != NULL ? 0 : buf_set(&p->id, v, n, p->max);
    if (is_field(name, name_len, "retry"))
        set_retry(p, v, n);
    return 0; /* any other field is ignored */
}

static void call_event(sse_parser *p, const sse_event *ev) {
    if (p->cb.on_event == NULL)
        return;
    p->in_callback = true;
    p->cb.on_event(ev, p->arg);
    p->in_callback = false;
}

/* The standard's "dispatch the event" steps. */
static int dispatch(sse_parser *p) {
    if (!buf_is(&p->last_id, p->id.s, p->id.len) &&
        buf_set(&p->last_id, buf_str(&p->id), p->id.len, p->max) != 0)
        return -1;
    if (p->data.len > 0) {
        p->data.s[--p->data.len] = '\0'; /* the LF after the last data line */
        sse_event ev = {
            .type = p->type.len > 0 ? p->type.s : "message",
            .type_len = p->type.len > 0 ? p->type.len : strlen("message"),
            .data = p->data.s,
            .data_len = p->data.len,
            .id = buf_str(&p->last_id),
        };
        call_event(p, &ev);
    }
    buf_clear(&p->data);
    buf_clear(&p->type);
    return 0;
}

static void call_comment(sse_parser *p, const char *text, size_t len) {
    if (p->cb.on_comment == NULL)
        return;
    p->in_callback = true;
    p->cb.on_comment(text, len, p->arg);
    p->in_callback = false;
}

static int process_line(sse_parser *p, const char *s, size_t n) {
    if (n == 0)
        return dispatch(p);
    if (s[0] == ':') {
        call_comment(p, s + 1, n - 1);
        return 0;
    }
    const char *colon = memchr(s, ':', n);
    size_t name_len = colon != NULL ? (size_t)(colon - s) : n;
    const char *value = colon != NULL ? colon + 1 : s + n;
    size_t value_len = n - (size_t)(value - s);
    if (value_len > 0 && value[0] == ' ') {
        value++;
        value_len--;
    }
    return process_field(p, s, name_len, value, value_len);
}

/* ---- splitting lines ---------------------------------------------------- */

/* One decoded code point, as its `n` UTF-8 bytes. */
static int put_code_point(sse_parser *p, const char *s, size_t n) {
    bool after_cr = p->after_cr;
    p->started = true;
    p->after_cr = false;
    if (s[0] == '\n' && after_cr)
        return 0;
    if (s[0] != '\r' && s[0] != '\n')
        return buf_append(&p->line, s, n, p->max);
    p->after_cr = s[0] == '\r';
    /* The line buffer is kept allocated across lines; only its length resets. */
    int rc = process_line(p, buf_str(&p->line), p->line.len);
    buf_clear(&p->line);
    return rc;
}

/* ---- decoding UTF-8 ----------------------------------------------------- */

static void utf8_restart(sse_parser *p) {
    p->seq_len = p->seq_need = 0;
    p->lower = 0x80;
    p->upper = 0xBF;
}

/* A lead byte: starts a sequence, or is a whole code point (ASCII or an
 * invalid byte, which becomes U+FFFD). */
static int utf8_lead(sse_parser *p, unsigned char c) {
    if (c < 0x80)
        return put_code_point(p, (const char *)&c, 1);
    if (c >= 0xC2 && c <= 0xDF)
        p->seq_need = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        p->seq_need = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        p->seq_need = 4;
    else
        return put_code_point(p, "\xEF\xBF\xBD", 3);
    p->lower = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    p->upper = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    p->seq[p->seq_len++] = c;
    return 0;
}

/* The WHATWG UTF-8 decoder's handler for one byte. */
static int utf8_byte(sse_parser *p, unsigned char c) {
    if (p->seq_need == 0)
        return utf8_lead(p, c);
    if (c < p->lower || c > p->upper) {
        /* The sequence ends early: U+FFFD, and the byte starts afresh. */
        utf8_restart(p);
        if (put_code_point(p, "\xEF\xBF\xBD", 3) != 0) /* never a line end */
            return -1;
        return utf8_lead(p, c);
    }
    p->lower = 0x80;
    p->upper = 0xBF;
    p->seq[p->seq_len++] = c;
    if (p->seq_len < p->seq_need)
        return 0;
    size_t n = (size_t)p->seq_len;
    utf8_restart(p);
    if (!p->started && n == 3 && memcmp(p->seq, "\xEF\xBB\xBF", 3) == 0) {
        p->started = true; /* a BOM, only at the very start */
        return 0;
    }
    return put_code_point(p, (const char *)p->seq, n);
}

/* ---- the public functions ----------------------------------------------- */

sse_parser *sse_parser_new(const sse_parser_callbacks *cb, void *arg, size_t max) {
    sse_parser *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    if (cb != NULL)
        p->cb = *cb;
    p->arg = arg;
    p->max = max != 0 ? max : SSE_PARSER_DEFAULT_MAX;
    p->retry_ms = -1;
    utf8_restart(p);
    return p;
}

static void destroy(sse_parser *p) {
    free(p->line.s);
    free(p->data.s);
    free(p->type.s);
    free(p->id.s);
    free(p->last_id.s);
    free(p);
}

int sse_parser_feed(sse_parser *p, const char *buf, size_t len) {
    if (p->failed)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int rc = utf8_byte(p, (unsigned char)buf[i]);
        if (p->freeing) {
            destroy(p);
            return 0;
        }
        if (rc != 0) {
            p->failed = true;
            return -1;
        }
    }
    return 0;
}

void sse_parser_reset(sse_parser *p) {
    buf_clear(&p->line);
    buf_clear(&p->data);
    buf_clear(&p->type);
    /* Cannot fail: the buffer already held a string this long. */
    if (!buf_is(&p->id, p->last_id.s, p->last_id.len))
        (void)buf_set(&p->id, buf_str(&p->last_id), p->last_id.len, p->max);
    utf8_restart(p);
    p->started = p->after_cr = p->failed = false;
}

const char *sse_parser_last_id(const sse_parser *p) {
    return buf_str(&p->last_id);
}

long sse_parser_retry_ms(const sse_parser *p) {
    return p->retry_ms;
}

void sse_parser_free(sse_parser *p) {
    if (p == NULL)
        return;
    if (p->in_callback)
        p->freeing = true;
    else
        destroy(p);
}
