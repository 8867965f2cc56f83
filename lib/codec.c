/* SPDX-License-Identifier: MIT */
/*
 * Codec: the formats of what travels on the wire (jobs, answers, `url`
 * requests and answers), encoded and decoded strictly, as laid down in
 * docs/protocol.md. Every function here is pure: no I/O, no global state, no
 * event loop. Input buffers are read by length and need not be
 * NUL-terminated; on every error path the outputs are zeroed, nothing leaks,
 * and `err` receives one sentence that names the problem. Strings returned
 * by the encoders come from json_dumps(): free() them (they come from
 * jansson's allocator, which is malloc unless the application called
 * json_set_alloc_funcs()). The decoders go through the JSON fast path of
 * lib/codec_fast.c; Redis URLs and host:port addresses are parsed in
 * lib/codec_addr.c; the helpers the three share are in lib/codec_text.c.
 */
#include "codec.h"
#include "codec_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tempest/tempest.h>

/* ---- Small helpers ---- */

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

/* ---- UTF-8 ---- */

static bool utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        size_t k = tp_utf8_seq(p + i, len - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* ---- Jobs ---- */

static int job_check(json_t *root, tp_job_parts *out, char *err, size_t errlen) {
    json_t *action, *args, *respond_to, *id;
    char num[32];

    if (!json_is_array(root))
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                               "job: expected an array of 4 elements, got %s",
                               describe(root, num, sizeof num));
    if (json_array_size(root) != 4)
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                               "job: expected an array of 4 elements, got %zu",
                               json_array_size(root));
    action = json_array_get(root, 0);
    args = json_array_get(root, 1);
    respond_to = json_array_get(root, 2);
    id = json_array_get(root, 3);
    if (!is_cstring(action))
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                               "job: element 1 (action) must be a non-empty string, got %s",
                               describe(action, num, sizeof num));
    if (!json_is_array(args))
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                               "job: element 2 (args) must be an array, got %s",
                               describe(args, num, sizeof num));
    if (!json_is_null(respond_to) && !is_cstring(respond_to))
        return tp_codec_seterr(
            err, errlen, TEMPEST_EPROTO,
            "job: element 3 (respond_to) must be a non-empty string or null, got %s",
            describe(respond_to, num, sizeof num));
    if (!json_is_integer(id) || json_integer_value(id) < 0)
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
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
        return tp_codec_seterr(err, errlen, TEMPEST_EINVAL, "job: no output given");
    memset(out, 0, sizeof *out);
    if (buf == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO, "job: no data");
    root = tp_json_load(buf, len, JSON_ALLOW_NUL, &jerr);
    if (root == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                               "job: invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                               jerr.text);
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
        tp_codec_seterr(err, errlen, TEMPEST_EPROTO, "answer: no data");
        return NULL;
    }
    v = tp_json_load(buf, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (v == NULL)
        tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                        "answer: invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                        jerr.text);
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
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO, "request %s is not valid UTF-8", what);
    if (json_object_set_new(obj, key, json_stringn_nocheck(s, len)) != 0)
        return tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
    return 0;
}

/* A malloc'd copy of `name` with ASCII letters lower-cased (UTF-8 kept). */
static char *lower_dup(const char *name) {
    char *p = tp_codec_dupn(name, strlen(name));

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
        return tp_codec_seterr(err, errlen, TEMPEST_EINVAL,
                               "request header %zu has no name or value", i);
    if (!utf8_valid(h->name, strlen(h->name)))
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                               "request header %zu name is not valid UTF-8", i);
    key = lower_dup(h->name);
    if (key == NULL)
        goto nomem;
    if (!utf8_valid(h->value, strlen(h->value))) {
        rc = tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                             "request header \"%s\" value is not valid UTF-8", key);
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
    rc = tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
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
    tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
fail:
    json_decref(hdrs);
    return NULL;
}

json_t *tp_url_request_new(const char *method, const char *url, const tp_http_header *headers,
                           size_t nheaders, const char *body, size_t body_len, char *err,
                           size_t errlen) {
    json_t *req = NULL, *hdrs;

    if (method == NULL || url == NULL || (nheaders > 0 && headers == NULL)) {
        tp_codec_seterr(err, errlen, TEMPEST_EINVAL, "request: method, url or headers missing");
        return NULL;
    }
    req = json_object();
    if (req == NULL) {
        tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
        return NULL;
    }
    if (set_text(req, "method", method, strlen(method), "method", err, errlen) != 0 ||
        set_text(req, "url", url, strlen(url), "URL", err, errlen) != 0)
        goto fail;
    hdrs = make_headers(headers, nheaders, err, errlen);
    if (hdrs == NULL)
        goto fail;
    if (json_object_set_new_nocheck(req, "headers", hdrs) != 0) {
        tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "request: out of memory");
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
        return tp_codec_seterr(
            err, errlen, TEMPEST_EPROTO,
            "answer: header \"%s\" must be a string, a number or an array of strings", name);
    json_array_foreach(v, i, item) {
        if (!json_is_string(item))
            return tp_codec_seterr(
                err, errlen, TEMPEST_EPROTO,
                "answer: header \"%s\": element %zu of its array must be a string", name, i + 1);
        if (!is_header_text(item))
            goto injection;
    }
    return 0;

injection:
    return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
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
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                               "answer: headers must be an object or null");
    json_object_foreach(hdrs, name, value) {
        if (!is_token(name, key_length(name)))
            return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
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
        return tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
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
        return tp_codec_seterr(err, errlen, TEMPEST_EINVAL, "answer: no output given");
    memset(out, 0, sizeof *out);
    if (!json_is_array(answer))
        return tp_codec_seterr(
            err, errlen, TEMPEST_EPROTO,
            "answer: expected an array of 3 elements [status, headers, body], got %s",
            describe(answer, num, sizeof num));
    if (json_array_size(answer) != 3)
        return tp_codec_seterr(
            err, errlen, TEMPEST_EPROTO,
            "answer: expected an array of 3 elements [status, headers, body], got %zu",
            json_array_size(answer));
    headers = json_array_get(answer, 1);
    body = json_array_get(answer, 2);
    rc = check_status(json_array_get(answer, 0), first, &out->status, err, errlen);
    if (rc == 0)
        rc = check_headers(headers, err, errlen);
    if (rc == 0 && !json_is_string(body) && !json_is_null(body))
        rc = tp_codec_seterr(err, errlen, TEMPEST_EPROTO,
                             "answer: body must be a string or null, got %s",
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
