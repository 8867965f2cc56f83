/* SPDX-License-Identifier: MIT */
/*
 * The JSON fast path: a hand decoder for the plain JSON of most jobs and
 * answers, with json_loadb() as its fallback. tp_json_load is what the
 * decoders of lib/codec.c (tp_job_decode, tp_answer_decode) call: it tries
 * tp_json_fast, then json_loadb().
 */
#include "codec.h"
#include "codec_internal.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/*
 * json_loadb() spends thousands of instructions on a twenty-byte job: it
 * reads through a stream, one character at a time. Most jobs hold only
 * plain values, which the scanner below turns into the very values
 * json_loadb() would build: strings (UTF-8 as jansson checks it, escapes
 * other than \u), integers of at most 18 digits, true, false, null, and
 * arrays and objects nested at most FAST_DEPTH deep. Anything else (a real,
 * a \u escape, a syntax error, no memory) makes it give up with NULL, and
 * json_loadb() decides, with its own error text.
 */
enum { FAST_DEPTH = 32 };

typedef struct scan {
    const char *p, *end;
} scan;

static json_t *fast_value(scan *s, int depth);

static bool fast_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void fast_skip(scan *s) {
    while (s->p < s->end && fast_ws(*s->p))
        s->p++;
}

/* Consumes `c` after blanks; false when something else comes. */
static bool fast_eat(scan *s, char c) {
    fast_skip(s);
    if (s->p == s->end || *s->p != c)
        return false;
    s->p++;
    return true;
}

/* A value ends at a blank, a separator or the end of the input. */
static bool fast_ends(const scan *s) {
    return s->p == s->end || fast_ws(*s->p) || *s->p == ',' || *s->p == ']' || *s->p == '}';
}

static char fast_unescape(char c) {
    switch (c) {
    case '"':
    case '\\':
    case '/':
        return c;
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    }
    return '\0'; /* \u, or not an escape: the slow path decides */
}

/*
 * Scans the string whose opening quote is at s->p: its `*raw` bytes start
 * at `*start` and hold `*escapes` escapes. False on anything the fast path
 * does not take.
 */
static bool fast_quoted(scan *s, const char **start, size_t *raw, size_t *escapes) {
    const char *q = s->p + 1;
    size_t esc = 0;
    while (q < s->end && *q != '"') {
        unsigned char c = (unsigned char)*q;
        size_t k = 1;
        if (c == '\\') {
            if (q + 1 == s->end || fast_unescape(q[1]) == '\0')
                return false;
            k = 2;
            esc++;
        } else if (c < 0x20) {
            return false;
        } else if (c >= 0x80 &&
                   (k = tp_utf8_seq((const unsigned char *)q, (size_t)(s->end - q))) == 0) {
            return false;
        }
        q += k;
    }
    if (q == s->end)
        return false;
    *start = s->p + 1;
    *raw = (size_t)(q - *start);
    *escapes = esc;
    s->p = q + 1;
    return true;
}

/* A malloc'd copy of the `raw` bytes at `p` with their escapes undone. */
static char *fast_unescaped(const char *p, size_t raw, size_t len) {
    char *buf = tp_malloc(len + 1), *out = buf;
    for (const char *end = p + raw; buf != NULL && p < end; p++)
        *out++ = *p == '\\' ? fast_unescape(*++p) : *p;
    if (buf != NULL)
        *out = '\0';
    return buf;
}

static json_t *fast_string(scan *s) {
    const char *p;
    size_t raw, esc;
    if (!fast_quoted(s, &p, &raw, &esc))
        return NULL;
    if (esc == 0)
        return json_stringn_nocheck(p, raw);
    char *buf = fast_unescaped(p, raw, raw - esc);
    json_t *v = buf ? json_stringn_nocheck(buf, raw - esc) : NULL;
    free(buf);
    return v;
}

/* An integer: -?(0|[1-9][0-9]*), at most 18 digits, no fraction nor exponent. */
static json_t *fast_integer(scan *s) {
    bool neg = *s->p == '-';
    const char *p = s->p + neg, *start = p;
    json_int_t v = 0;
    while (p < s->end && is_digit(*p) && p - start < 18)
        v = v * 10 + (*p++ - '0');
    s->p = p;
    if (p == start || (*start == '0' && p - start > 1) || !fast_ends(s))
        return NULL; /* no digit, a leading zero, a 19th digit, a fraction... */
    return json_integer(neg ? -v : v);
}

static json_t *fast_word(scan *s) {
    static const struct {
        const char *word;
        size_t len;
    } words[] = {{"true", 4}, {"false", 5}, {"null", 4}};
    for (int i = 0; i < 3; i++) {
        if ((size_t)(s->end - s->p) >= words[i].len &&
            memcmp(s->p, words[i].word, words[i].len) == 0) {
            s->p += words[i].len;
            if (!fast_ends(s))
                return NULL;
            return i == 0 ? json_true() : i == 1 ? json_false() : json_null();
        }
    }
    return NULL;
}

static json_t *fast_array(scan *s, int depth) {
    json_t *a = json_array();
    s->p++;
    if (a == NULL || fast_eat(s, ']'))
        return a;
    do {
        json_t *v = fast_value(s, depth + 1);
        if (v == NULL || json_array_append_new(a, v) != 0)
            goto fail;
    } while (fast_eat(s, ','));
    if (fast_eat(s, ']'))
        return a;
fail:
    json_decref(a);
    return NULL;
}

static bool fast_member(scan *s, json_t *o, int depth) {
    const char *p;
    size_t raw, esc;
    fast_skip(s);
    if (s->p == s->end || *s->p != '"' || !fast_quoted(s, &p, &raw, &esc))
        return false;
    char *key = esc ? fast_unescaped(p, raw, raw - esc) : NULL;
    json_t *v = (esc == 0 || key != NULL) && fast_eat(s, ':') ? fast_value(s, depth + 1) : NULL;
    bool ok = v != NULL && json_object_setn_new_nocheck(o, key ? key : p, raw - esc, v) == 0;
    free(key);
    return ok;
}

static json_t *fast_object(scan *s, int depth) {
    json_t *o = json_object();
    s->p++;
    if (o == NULL || fast_eat(s, '}'))
        return o;
    do {
        if (!fast_member(s, o, depth))
            goto fail;
    } while (fast_eat(s, ','));
    if (fast_eat(s, '}'))
        return o;
fail:
    json_decref(o);
    return NULL;
}

static json_t *fast_value(scan *s, int depth) {
    fast_skip(s);
    if (s->p == s->end || depth > FAST_DEPTH)
        return NULL;
    switch (*s->p) {
    case '[':
        return fast_array(s, depth);
    case '{':
        return fast_object(s, depth);
    case '"':
        return fast_string(s);
    case '-':
        return fast_integer(s);
    }
    return is_digit(*s->p) ? fast_integer(s) : fast_word(s);
}

/* The array in `buf` as json_loadb() would decode it, or NULL: ask it. */
json_t *tp_json_fast(const char *buf, size_t len) {
    scan s = {buf, buf + len};
    fast_skip(&s);
    if (s.p == s.end || *s.p != '[')
        return NULL;
    json_t *v = fast_value(&s, 1);
    fast_skip(&s);
    if (v != NULL && s.p != s.end) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* Plain arrays (a job, a `url` answer, mostly) take the fast path. */
json_t *tp_json_load(const char *buf, size_t len, size_t flags, json_error_t *jerr) {
    json_t *v = tp_json_fast(buf, len);

    return v != NULL ? v : json_loadb(buf, len, flags, jerr);
}
