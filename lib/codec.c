/* SPDX-License-Identifier: MIT */
/*
 * Codec: strict, allocation-safe encoding and decoding of what travels on
 * the wire (jobs, answers, `url` requests and answers, Redis URLs and
 * host:port addresses), as laid down in PROTOCOL.md. Every function here is
 * pure: no I/O, no global state, no event loop. Input buffers are read by
 * length and need not be NUL-terminated; on every error path the outputs are
 * zeroed, nothing leaks, and `err` receives one sentence that names the
 * problem. Error text never quotes a password. Strings returned by the
 * encoders come from json_dumps(): free() them (they come from jansson's
 * allocator, which is malloc unless the application called
 * json_set_alloc_funcs()).
 */
#include "codec.h"
#include "internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tempest/tempest.h>

#define REDIS_DEFAULT_PORT 6379
#define SENTINEL_DEFAULT_PORT 26379

/* ---- Error text and small helpers ---- */

#if defined(__GNUC__)
#define CODEC_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define CODEC_PRINTF(fmt, args)
#endif

/* Writes the error sentence to `err` (when given) and returns `code`. */
static int seterr(char *err, size_t errlen, int code, const char *fmt, ...) CODEC_PRINTF(4, 5);

static int seterr(char *err, size_t errlen, int code, const char *fmt, ...) {
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* A malloc'd NUL-terminated copy of `n` bytes of `s`, or NULL. */
static char *dupn(const char *s, size_t n) {
    char *p = tp_malloc(n + 1);

    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static bool has_prefix_ci(const char *s, const char *prefix) {
    for (; *prefix != '\0'; s++, prefix++) {
        unsigned char a = (unsigned char)*s, b = (unsigned char)*prefix;
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a - 'A' + 'a');
        if (a != b)
            return false;
    }
    return true;
}

static bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int hexval(char c) {
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Parses the decimal digits [s, end) into *value <= max. No sign, no
 * blanks, at least one digit.
 */
static bool parse_uint(const char *s, const char *end, long max, long *value) {
    long v = 0;

    if (s == end)
        return false;
    for (; s < end; s++) {
        if (!is_digit(*s))
            return false;
        v = v * 10 + (*s - '0');
        if (v > max)
            return false;
    }
    *value = v;
    return true;
}

/*
 * Describes a JSON value for an error message ("a string", "-3"). The
 * result is a literal or `buf`.
 */
static const char *describe(const json_t *v, char *buf, size_t buflen) {
    if (v == NULL)
        return "nothing";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        if (json_string_length(v) == 0)
            return "an empty string";
        return memchr(json_string_value(v), '\0', json_string_length(v)) ? "a string with NUL"
                                                                         : "a string";
    case JSON_INTEGER:
        snprintf(buf, buflen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown value";
}

/* A JSON string, non-empty and without NUL: usable as a C string. */
static bool is_cstring(const json_t *v) {
    size_t n = json_string_length(v);

    return json_is_string(v) && n > 0 && memchr(json_string_value(v), '\0', n) == NULL;
}

/* ---- UTF-8 (RFC 3629, as jansson checks it) ---- */

/* The length of the valid UTF-8 sequence at p (n > 0 bytes left), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
    static const unsigned min[5] = {0, 0, 0x80, 0x800, 0x10000}; /* shortest form */
    unsigned cp;
    size_t k;

    if (p[0] < 0x80)
        return 1;
    if (p[0] < 0xC2 || p[0] > 0xF4) /* continuation, overlong lead, > U+10FFFF */
        return 0;
    k = p[0] < 0xE0 ? 2 : p[0] < 0xF0 ? 3 : 4;
    if (n < k)
        return 0;
    cp = p[0] & (0x7Fu >> k);
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3Fu);
    }
    if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k;
}

static bool utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        size_t k = utf8_seq(p + i, len - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* ---- A fast path to jansson's values ---- */

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
                   (k = utf8_seq((const unsigned char *)q, (size_t)(s->end - q))) == 0) {
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

/* ---- Jobs ---- */

static int job_check(json_t *root, tp_job_parts *out, char *err, size_t errlen) {
    json_t *action, *args, *respond_to, *id;
    char num[32];

    if (!json_is_array(root))
        return seterr(err, errlen, TEMPEST_EPROTO, "job: expected an array of 4 elements, got %s",
                      describe(root, num, sizeof num));
    if (json_array_size(root) != 4)
        return seterr(err, errlen, TEMPEST_EPROTO, "job: expected an array of 4 elements, got %zu",
                      json_array_size(root));
    action = json_array_get(root, 0);
    args = json_array_get(root, 1);
    respond_to = json_array_get(root, 2);
    id = json_array_get(root, 3);
    if (!is_cstring(action))
        return seterr(err, errlen, TEMPEST_EPROTO,
                      "job: element 1 (action) must be a non-empty string, got %s",
                      describe(action, num, sizeof num));
    if (!json_is_array(args))
        return seterr(err, errlen, TEMPEST_EPROTO, "job: element 2 (args) must be an array, got %s",
                      describe(args, num, sizeof num));
    if (!json_is_null(respond_to) && !is_cstring(respond_to))
        return seterr(err, errlen, TEMPEST_EPROTO,
                      "job: element 3 (respond_to) must be a non-empty string or null, got %s",
                      describe(respond_to, num, sizeof num));
    if (!json_is_integer(id) || json_integer_value(id) < 0)
        return seterr(err, errlen, TEMPEST_EPROTO,
                      "job: element 4 (job_id) must be an integer >= 0, got %s",
                      describe(id, num, sizeof num));
    out->action = json_string_value(action);
    out->args = args;
    out->respond_to = json_is_null(respond_to) ? NULL : json_string_value(respond_to);
    out->id = json_integer_value(id);
    return 0;
}

/*
 * JSON_ALLOW_NUL: args may carry strings with NUL (a request body does);
 * action and respond_to are checked to be NUL-free by is_cstring().
 */
int tp_job_decode(const char *buf, size_t len, tp_job_parts *out, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *root;
    int rc;

    if (out == NULL)
        return seterr(err, errlen, TEMPEST_EINVAL, "job: no output given");
    memset(out, 0, sizeof *out);
    if (buf == NULL)
        return seterr(err, errlen, TEMPEST_EPROTO, "job: no data");
    root = tp_json_fast(buf, len);
    if (root == NULL)
        root = json_loadb(buf, len, JSON_ALLOW_NUL, &jerr);
    if (root == NULL)
        return seterr(err, errlen, TEMPEST_EPROTO, "job: invalid JSON at line %d column %d: %s",
                      jerr.line, jerr.column, jerr.text);
    rc = job_check(root, out, err, errlen);
    if (rc != 0)
        goto fail;
    out->root = root;
    return 0;

fail:
    json_decref(root);
    memset(out, 0, sizeof *out);
    return rc;
}

void tp_job_parts_clear(tp_job_parts *parts) {
    if (parts == NULL)
        return;
    json_decref(parts->root);
    memset(parts, 0, sizeof *parts);
}

/*
 * The arguments are held to what tp_job_decode accepts, so that nothing
 * this node pushes is refused by a C worker.
 */
char *tp_job_encode(const char *action, json_t *args, const char *respond_to, long long id,
                    size_t *len) {
    json_t *job = NULL;
    char *s = NULL;

    if (len != NULL)
        *len = 0;
    if (action == NULL || *action == '\0' || !json_is_array(args) || id < 0 ||
        (respond_to != NULL && *respond_to == '\0'))
        goto fail;
    job = json_pack("[sOs?I]", action, args, respond_to, (json_int_t)id);
    if (job == NULL)
        goto fail;
    s = json_dumps(job, JSON_COMPACT);
    if (s != NULL && len != NULL)
        *len = strlen(s);

fail:
    json_decref(job);
    return s;
}

/* ---- Answers ---- */

json_t *tp_answer_decode(const char *buf, size_t len, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *v;

    if (buf == NULL) {
        seterr(err, errlen, TEMPEST_EPROTO, "answer: no data");
        return NULL;
    }
    if ((v = tp_json_fast(buf, len)) != NULL)
        return v; /* an array of plain values: a `url` answer, mostly */
    v = json_loadb(buf, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (v == NULL)
        seterr(err, errlen, TEMPEST_EPROTO, "answer: invalid JSON at line %d column %d: %s",
               jerr.line, jerr.column, jerr.text);
    return v;
}

char *tp_answer_encode(json_t *answer, size_t *len) {
    char *s = NULL;

    if (len != NULL)
        *len = 0;
    if (answer != NULL)
        s = json_dumps(answer, JSON_COMPACT | JSON_ENCODE_ANY);
    if (s != NULL && len != NULL)
        *len = strlen(s);
    return s;
}

/* ---- `url` requests ---- */

/* Sets obj[key] to the string [s, s + len), which must be valid UTF-8. */
static int set_text(json_t *obj, const char *key, const char *s, size_t len, const char *what,
                    char *err, size_t errlen) {
    if (!utf8_valid(s, len))
        return seterr(err, errlen, TEMPEST_EPROTO, "request %s is not valid UTF-8", what);
    if (json_object_set_new(obj, key, json_stringn_nocheck(s, len)) != 0)
        return seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
    return 0;
}

/* A malloc'd copy of `name` with ASCII letters lower-cased (UTF-8 kept). */
static char *lower_dup(const char *name) {
    char *p = dupn(name, strlen(name));

    for (char *c = p; c != NULL && *c != '\0'; c++) {
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    }
    return p;
}

/* Sets hdrs[key] to "<old>, <value>" (both already valid UTF-8). */
static int join_header(json_t *hdrs, const char *key, json_t *old, const char *value) {
    size_t olen = json_string_length(old), vlen = strlen(value);
    char *joined = tp_malloc(olen + 2 + vlen);
    int rc;

    if (joined == NULL)
        return -1;
    memcpy(joined, json_string_value(old), olen);
    memcpy(joined + olen, ", ", 2);
    memcpy(joined + olen + 2, value, vlen);
    rc = json_object_set_new_nocheck(hdrs, key, json_stringn_nocheck(joined, olen + 2 + vlen));
    free(joined);
    return rc;
}

static int add_header(json_t *hdrs, size_t i, const tp_http_header *h, char *err, size_t errlen) {
    char *key = NULL;
    json_t *old;
    int rc;

    if (h->name == NULL || h->value == NULL)
        return seterr(err, errlen, TEMPEST_EINVAL, "request header %zu has no name or value", i);
    if (!utf8_valid(h->name, strlen(h->name)))
        return seterr(err, errlen, TEMPEST_EPROTO, "request header %zu name is not valid UTF-8", i);
    key = lower_dup(h->name);
    if (key == NULL)
        goto nomem;
    if (!utf8_valid(h->value, strlen(h->value))) {
        rc = seterr(err, errlen, TEMPEST_EPROTO, "request header \"%s\" value is not valid UTF-8",
                    key);
        goto fail;
    }
    old = json_object_get(hdrs, key);
    if (old != NULL)
        rc = join_header(hdrs, key, old, h->value);
    else
        rc = json_object_set_new_nocheck(hdrs, key, json_string_nocheck(h->value));
    if (rc != 0)
        goto nomem;
    free(key);
    return 0;

nomem:
    rc = seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
fail:
    free(key);
    return rc;
}

static json_t *make_headers(const tp_http_header *headers, size_t nheaders, char *err,
                            size_t errlen) {
    json_t *hdrs = json_object();

    if (hdrs == NULL)
        goto nomem;
    for (size_t i = 0; i < nheaders; i++) {
        if (add_header(hdrs, i, &headers[i], err, errlen) != 0)
            goto fail;
    }
    return hdrs;

nomem:
    seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
fail:
    json_decref(hdrs);
    return NULL;
}

json_t *tp_url_request_new(const char *method, const char *url, const tp_http_header *headers,
                           size_t nheaders, const char *body, size_t body_len, char *err,
                           size_t errlen) {
    json_t *req = NULL, *hdrs;

    if (method == NULL || url == NULL || (nheaders > 0 && headers == NULL)) {
        seterr(err, errlen, TEMPEST_EINVAL, "request: method, url or headers missing");
        return NULL;
    }
    req = json_object();
    if (req == NULL) {
        seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
        return NULL;
    }
    if (set_text(req, "method", method, strlen(method), "method", err, errlen) != 0 ||
        set_text(req, "url", url, strlen(url), "URL", err, errlen) != 0)
        goto fail;
    hdrs = make_headers(headers, nheaders, err, errlen);
    if (hdrs == NULL)
        goto fail;
    if (json_object_set_new_nocheck(req, "headers", hdrs) != 0) {
        seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
        goto fail;
    }
    if (body != NULL && set_text(req, "body", body, body_len, "body", err, errlen) != 0)
        goto fail;
    return req;

fail:
    json_decref(req);
    return NULL;
}

/* ---- `url` answers ---- */

/* RFC 7230 tchar. */
static bool is_tchar(char c) {
    return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(const char *s, size_t n) {
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!is_tchar(s[i]))
            return false;
    }
    return true;
}

/* A string that may go on a header line: no CR, LF or NUL. */
static bool is_header_text(const json_t *v) {
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    return s != NULL && memchr(s, '\r', n) == NULL && memchr(s, '\n', n) == NULL &&
           memchr(s, '\0', n) == NULL;
}

static int check_header_value(const char *name, json_t *v, char *err, size_t errlen) {
    size_t i;
    json_t *item;

    if (json_is_number(v))
        return 0;
    if (json_is_string(v)) {
        if (is_header_text(v))
            return 0;
        goto injection;
    }
    if (!json_is_array(v))
        return seterr(err, errlen, TEMPEST_EPROTO,
                      "answer: header \"%s\" must be a string, a number or an array of strings",
                      name);
    json_array_foreach(v, i, item) {
        if (!json_is_string(item))
            return seterr(err, errlen, TEMPEST_EPROTO,
                          "answer: header \"%s\": element %zu of its array must be a string", name,
                          i + 1);
        if (!is_header_text(item))
            goto injection;
    }
    return 0;

injection:
    return seterr(err, errlen, TEMPEST_EPROTO,
                  "answer: header \"%s\" value must not contain CR, LF or NUL", name);
}

/* The length of a key of `obj`; jansson >= 2.14 allows NUL inside keys. */
static size_t key_length(const char *key) {
#if JANSSON_VERSION_HEX >= 0x020e00
    return json_object_iter_key_len(json_object_key_to_iter(key));
#else
    return strlen(key);
#endif
}

static int check_headers(json_t *hdrs, char *err, size_t errlen) {
    const char *name;
    json_t *value;
    int rc;

    if (json_is_null(hdrs))
        return 0;
    if (!json_is_object(hdrs))
        return seterr(err, errlen, TEMPEST_EPROTO, "answer: headers must be an object or null");
    json_object_foreach(hdrs, name, value) {
        if (!is_token(name, key_length(name)))
            return seterr(err, errlen, TEMPEST_EPROTO,
                          "answer: a header name is not an HTTP token (RFC 7230)");
        rc = check_header_value(name, value, err, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int check_status(json_t *v, bool first, int *status, char *err, size_t errlen) {
    json_int_t s = json_integer_value(v);
    char num[32];

    if (!first && json_is_null(v)) {
        *status = 0;
        return 0;
    }
    if (!json_is_integer(v) || s < 100 || s > 599)
        return seterr(err, errlen, TEMPEST_EPROTO,
                      "answer: status must be an integer from 100 to 599%s, got %s",
                      first ? "" : " or null", describe(v, num, sizeof num));
    *status = (int)s;
    return 0;
}

int tp_http_answer_parse(json_t *answer, bool first, tp_http_answer *out, char *err,
                         size_t errlen) {
    json_t *headers, *body;
    char num[32];
    int rc;

    if (out == NULL)
        return seterr(err, errlen, TEMPEST_EINVAL, "answer: no output given");
    memset(out, 0, sizeof *out);
    if (!json_is_array(answer))
        return seterr(err, errlen, TEMPEST_EPROTO,
                      "answer: expected an array of 3 elements [status, headers, body], got %s",
                      describe(answer, num, sizeof num));
    if (json_array_size(answer) != 3)
        return seterr(err, errlen, TEMPEST_EPROTO,
                      "answer: expected an array of 3 elements [status, headers, body], got %zu",
                      json_array_size(answer));
    headers = json_array_get(answer, 1);
    body = json_array_get(answer, 2);
    rc = check_status(json_array_get(answer, 0), first, &out->status, err, errlen);
    if (rc == 0)
        rc = check_headers(headers, err, errlen);
    if (rc == 0 && !json_is_string(body) && !json_is_null(body))
        rc = seterr(err, errlen, TEMPEST_EPROTO, "answer: body must be a string or null, got %s",
                    describe(body, num, sizeof num));
    if (rc != 0)
        goto fail;
    out->headers = json_is_object(headers) ? headers : NULL;
    out->body = json_string_value(body);
    out->body_len = json_string_length(body);
    return 0;

fail:
    memset(out, 0, sizeof *out);
    return rc;
}

/* ---- host:port (shared by Redis URLs and addresses) ---- */

/* RFC 3986 unreserved: letters, digits, "-._~". */
static bool is_host_char(char c) {
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool valid_host(const char *s, const char *end) {
    for (; s < end; s++) {
        if (!is_host_char(*s))
            return false;
    }
    return true;
}

/* Hex digits, ':' and '.', then an optional zone "%eth0"; at least one ':'. */
static bool valid_ipv6(const char *s, const char *end) {
    const char *zone = memchr(s, '%', (size_t)(end - s));
    bool colon = false;

    for (const char *p = s; p < (zone ? zone : end); p++) {
        if (*p == ':')
            colon = true;
        else if (*p != '.' && hexval(*p) < 0)
            return false;
    }
    if (zone != NULL && (zone + 1 == end || !valid_host(zone + 1, end)))
        return false;
    return colon;
}

/* Where host:port parsing reports and what it accepts. */
typedef struct hostport_rules {
    const char *ctx; /* "Redis URL" or "address" */
    bool need_port;  /* a missing port is an error (else default_port) */
    int default_port;
    long min_port; /* 0 or 1; the maximum is 65535 */
} hostport_rules;

/* Finds the host in [s, end): sets [*hs, *he) and *rest (just after it). */
static int split_host(const char *s, const char *end, const hostport_rules *r, const char **hs,
                      const char **he, const char **rest, char *err, size_t errlen) {
    const char *close;

    if (s < end && *s == '[') {
        close = memchr(s, ']', (size_t)(end - s));
        if (close == NULL)
            return seterr(err, errlen, TEMPEST_EADDR, "%s: missing ']' after the IPv6 address",
                          r->ctx);
        *hs = s + 1;
        *he = close;
        *rest = close + 1;
        if (*hs < *he && !valid_ipv6(*hs, *he))
            return seterr(err, errlen, TEMPEST_EADDR, "%s: invalid IPv6 address", r->ctx);
    } else {
        *hs = s;
        for (*he = s; *he < end && **he != ':'; (*he)++)
            ;
        *rest = *he;
        if (*he < end && memchr(*he + 1, ':', (size_t)(end - *he - 1)) != NULL)
            return seterr(err, errlen, TEMPEST_EADDR,
                          "%s: an IPv6 address must be in brackets, as in [::1]:6379", r->ctx);
        if (!valid_host(*hs, *he))
            return seterr(err, errlen, TEMPEST_EADDR, "%s: invalid character in the host", r->ctx);
    }
    if (*hs == *he)
        return seterr(err, errlen, TEMPEST_EADDR, "%s: empty host", r->ctx);
    return 0;
}

static int parse_port(const char *s, const char *end, const hostport_rules *r, int *port, char *err,
                      size_t errlen) {
    long v;

    if (s == end) {
        if (r->need_port)
            return seterr(err, errlen, TEMPEST_EADDR, "%s: missing port (host:port)", r->ctx);
        *port = r->default_port;
        return 0;
    }
    if (*s != ':')
        return seterr(err, errlen, TEMPEST_EADDR, "%s: unexpected characters after the host",
                      r->ctx);
    if (!parse_uint(s + 1, end, 65535, &v) || v < r->min_port)
        return seterr(err, errlen, TEMPEST_EADDR, "%s: port must be a number from %ld to 65535",
                      r->ctx, r->min_port);
    *port = (int)v;
    return 0;
}

/* Parses host[:port] or [v6][:port] in [s, end) into a malloc'd host. */
static int parse_host_port(const char *s, const char *end, const hostport_rules *r, char **host,
                           int *port, char *err, size_t errlen) {
    const char *hs = NULL, *he = NULL, *rest = NULL;
    int rc;

    rc = split_host(s, end, r, &hs, &he, &rest, err, errlen);
    if (rc == 0)
        rc = parse_port(rest, end, r, port, err, errlen);
    if (rc != 0)
        return rc;
    *host = dupn(hs, (size_t)(he - hs));
    if (*host == NULL)
        return seterr(err, errlen, TEMPEST_ENOMEM, "%s: out of memory", r->ctx);
    return 0;
}

int tp_addr_parse(const char *addr, char **host, int *port, char *err, size_t errlen) {
    static const hostport_rules rules = {.ctx = "address", .need_port = true, .min_port = 0};

    if (host == NULL || port == NULL)
        return seterr(err, errlen, TEMPEST_EINVAL, "address: no output given");
    *host = NULL;
    *port = 0;
    if (addr == NULL)
        return seterr(err, errlen, TEMPEST_EADDR, "address: missing");
    return parse_host_port(addr, addr + strlen(addr), &rules, host, port, err, errlen);
}

/* ---- Redis URLs ---- */

/* Percent-decodes [s, end) into a malloc'd string; %00 is refused. */
static int pct_decode(const char *s, const char *end, const char *what, char **out, char *err,
                      size_t errlen) {
    char *p = tp_malloc((size_t)(end - s) + 1), *d = p;

    if (p == NULL)
        return seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    for (; s < end; s++) {
        if (*s != '%') {
            *d++ = *s;
            continue;
        }
        if (end - s < 3 || hexval(s[1]) < 0 || hexval(s[2]) < 0 || (s[1] == '0' && s[2] == '0')) {
            free(p);
            return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: invalid %%-escape in the %s",
                          what);
        }
        *d++ = (char)(hexval(s[1]) * 16 + hexval(s[2]));
        s += 2;
    }
    *d = '\0';
    *out = p;
    return 0;
}

/* `[user]:password` in [s, end); an empty user means password only. */
static int parse_userinfo(const char *s, const char *end, tp_redis_url *out, char *err,
                          size_t errlen) {
    const char *colon = memchr(s, ':', (size_t)(end - s));
    int rc;

    if (colon == NULL)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: expected [user]:password before '@'");
    if (colon + 1 == end)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty password");
    if (colon > s) {
        rc = pct_decode(s, colon, "user", &out->user, err, errlen);
        if (rc != 0)
            return rc;
    }
    return pct_decode(colon + 1, end, "password", &out->password, err, errlen);
}

/*
 * The database in [s, end), all that follows the host or socket path: "",
 * or `prefix` and a number ("/" alone also means 0). `after` names what `s`
 * follows, for the error text.
 */
static int parse_db(const char *s, const char *end, const char *prefix, const char *after,
                    tp_redis_url *out, char *err, size_t errlen) {
    size_t plen = strlen(prefix);
    long v;

    if (s == end || (end - s == 1 && *s == '/'))
        return 0;
    if ((size_t)(end - s) < plen || memcmp(s, prefix, plen) != 0)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: unexpected '%c' after the %s", *s,
                      after);
    s += plen;
    if (!parse_uint(s, end, INT_MAX, &v))
        return seterr(err, errlen, TEMPEST_EADDR,
                      "Redis URL: the database must be a number from 0 to %d, got \"%.*s\"",
                      INT_MAX, end - s < 20 ? (int)(end - s) : 20, s);
    out->db = (int)v;
    return 0;
}

static int parse_tcp(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    static const hostport_rules rules = {
        .ctx = "Redis URL", .default_port = REDIS_DEFAULT_PORT, .min_port = 1};
    const char *end = s + strcspn(s, "/?#"), *host = s;
    int rc;

    for (const char *p = s; p < end; p++) {
        if (*p == '@')
            host = p + 1;
    }
    if (host > s) {
        rc = parse_userinfo(s, host - 1, out, err, errlen);
        if (rc != 0)
            return rc;
    }
    rc = parse_host_port(host, end, &rules, &out->host, &out->port, err, errlen);
    if (rc != 0)
        return rc;
    return parse_db(end, end + strlen(end), "/", "host", out, err, errlen);
}

static int parse_unix(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *end = s + strcspn(s, "?#");

    if (*s != '/')
        return seterr(err, errlen, TEMPEST_EADDR,
                      "Redis URL: expected an absolute socket path, as in unix:///run/redis.sock");
    if (end - s < 2)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty socket path");
    out->path = dupn(s, (size_t)(end - s));
    if (out->path == NULL)
        return seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    return parse_db(end, end + strlen(end), "?db=", "socket path (only ?db=N is allowed)", out, err,
                    errlen);
}

/* The comma-separated `host[:port]` list in [s, end) into *list (sentinels
 * or cluster seeds, `what` in the error text). */
static int parse_hosts(const char *s, const char *end, int default_port, const char *what,
                       tp_redis_sentinel **list, int *count, char *err, size_t errlen) {
    const hostport_rules rules = {.ctx = "Redis URL", .default_port = default_port, .min_port = 1};
    size_t n = 1;
    int rc;

    for (const char *p = s; p < end; p++)
        n += *p == ',';
    if (n > TP_MAX_SENTINELS)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: more than %d %s", TP_MAX_SENTINELS,
                      what);
    *list = tp_calloc(n, sizeof **list);
    if (*list == NULL)
        return seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    for (;;) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        tp_redis_sentinel *sn = &(*list)[*count];
        rc = parse_host_port(s, comma ? comma : end, &rules, &sn->host, &sn->port, err, errlen);
        if (rc != 0)
            return rc;
        (*count)++;
        if (comma == NULL)
            return 0;
        s = comma + 1;
    }
}

static int parse_sentinels(const char *s, const char *end, tp_redis_url *out, char *err,
                           size_t errlen) {
    return parse_hosts(s, end, SENTINEL_DEFAULT_PORT, "sentinels", &out->sentinels,
                       &out->nsentinels, err, errlen);
}

/* `[[user]:password@]` before a host list at `s`: parses the user info (the
 * last `@` ends it) and sets *hosts and *end to the list and its end (the
 * first of `/?#`). */
static int parse_host_list_userinfo(const char *s, const char **hosts, const char **end,
                                    tp_redis_url *out, char *err, size_t errlen) {
    *end = s + strcspn(s, "/?#");
    *hosts = s;
    for (const char *p = s; p < *end; p++) {
        if (*p == '@')
            *hosts = p + 1;
    }
    return *hosts > s ? parse_userinfo(s, *hosts - 1, out, err, errlen) : 0;
}

/* `[[user]:password@]host[:port][,host[:port]...][/0]`: seeds of a cluster. */
static int parse_cluster(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *hosts, *end;
    int rc = parse_host_list_userinfo(s, &hosts, &end, out, err, errlen);

    if (rc != 0)
        return rc;
    rc = parse_hosts(hosts, end, REDIS_DEFAULT_PORT, "cluster seeds", &out->seeds, &out->nseeds,
                     err, errlen);
    if (rc != 0)
        return rc;
    rc = parse_db(end, end + strlen(end), "/", "cluster seeds", out, err, errlen);
    if (rc == 0 && out->db != 0)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: a cluster has only database 0");
    return rc;
}

/* The optional `?sentinel_password=P` at `s` (the end of the URL). */
static int parse_sentinel_query(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    static const char key[] = "?sentinel_password=";
    const char *v, *end;

    if (*s == '\0')
        return 0;
    if (strncmp(s, key, strlen(key)) != 0)
        return seterr(err, errlen, TEMPEST_EADDR,
                      "Redis URL: only ?sentinel_password=P may follow the master name");
    v = s + strlen(key);
    end = v + strlen(v);
    if (strcspn(v, "&#") != (size_t)(end - v))
        return seterr(err, errlen, TEMPEST_EADDR,
                      "Redis URL: only ?sentinel_password=P may follow the master name");
    if (v == end)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty sentinel password");
    return pct_decode(v, end, "sentinel password", &out->sentinel_password, err, errlen);
}

/* `/master[/db][?sentinel_password=P]` at `s`. */
static int parse_master(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *name, *end, *query;
    int rc;

    if (*s != '/')
        return seterr(err, errlen, TEMPEST_EADDR,
                      "Redis URL: expected /mastername after the sentinels");
    name = s + 1;
    end = name + strcspn(name, "/?#");
    if (end == name)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty master name");
    if (!valid_host(name, end))
        return seterr(err, errlen, TEMPEST_EADDR,
                      "Redis URL: invalid character in the master name");
    out->master = dupn(name, (size_t)(end - name));
    if (out->master == NULL)
        return seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    query = end + strcspn(end, "?#");
    rc = parse_db(end, query, "/", "master name", out, err, errlen);
    if (rc != 0)
        return rc;
    return parse_sentinel_query(query, out, err, errlen);
}

static int parse_sentinel(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *hosts, *end;
    int rc = parse_host_list_userinfo(s, &hosts, &end, out, err, errlen);

    if (rc != 0)
        return rc;
    rc = parse_sentinels(hosts, end, out, err, errlen);
    if (rc != 0)
        return rc;
    return parse_master(end, out, err, errlen);
}

/* Names the scheme of `url` in the error, never the rest (it may hold a password). */
static int unknown_scheme(const char *url, char *err, size_t errlen) {
    size_t n = 0;

    while (n < 16 && (is_alnum(url[n]) || url[n] == '+' || url[n] == '-' || url[n] == '.'))
        n++;
    if (n > 0 && n < 16 && strncmp(url + n, "://", 3) == 0)
        return seterr(err, errlen, TEMPEST_EADDR,
                      "Redis URL: unknown scheme \"%.*s\" (expected redis://, unix://, "
                      "redis+sentinel:// or redis+cluster://)",
                      (int)n, url);
    return seterr(err, errlen, TEMPEST_EADDR,
                  "Redis URL: expected redis://[[user]:password@]host[:port][/db], "
                  "unix:///path[?db=N], redis+sentinel://host[:port][,...]/master[/db] or "
                  "redis+cluster://host[:port][,...]");
}

int tp_redis_url_parse(const char *url, tp_redis_url *out, char *err, size_t errlen) {
    int rc;

    if (out == NULL)
        return seterr(err, errlen, TEMPEST_EINVAL, "Redis URL: no output given");
    memset(out, 0, sizeof *out);
    if (url == NULL)
        return seterr(err, errlen, TEMPEST_EADDR, "Redis URL: missing");
    if (has_prefix_ci(url, "redis://"))
        rc = parse_tcp(url + strlen("redis://"), out, err, errlen);
    else if (has_prefix_ci(url, "redis+sentinel://"))
        rc = parse_sentinel(url + strlen("redis+sentinel://"), out, err, errlen);
    else if (has_prefix_ci(url, "redis+cluster://"))
        rc = parse_cluster(url + strlen("redis+cluster://"), out, err, errlen);
    else if (has_prefix_ci(url, "unix://"))
        rc = parse_unix(url + strlen("unix://"), out, err, errlen);
    else if (has_prefix_ci(url, "rediss://"))
        rc = seterr(err, errlen, TEMPEST_EADDR, "TLS (rediss://) is not supported by this build");
    else
        rc = unknown_scheme(url, err, errlen);
    if (rc != 0)
        tp_redis_url_clear(out);
    return rc;
}

void tp_redis_url_clear(tp_redis_url *url) {
    if (url == NULL)
        return;
    free(url->host);
    free(url->path);
    free(url->user);
    free(url->password);
    for (int i = 0; i < url->nsentinels; i++)
        free(url->sentinels[i].host);
    free(url->sentinels);
    for (int i = 0; i < url->nseeds; i++)
        free(url->seeds[i].host);
    free(url->seeds);
    free(url->master);
    free(url->sentinel_password);
    memset(url, 0, sizeof *url);
}
