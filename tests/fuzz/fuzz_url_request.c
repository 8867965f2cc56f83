/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the `url` request builder (tp_url_request_new). The
 * input is cut into a request like a tiny HTTP message:
 *
 *     method LF url LF (name ":" value LF)* LF body
 *
 * Method, URL and header fields are C strings (they end at a NUL); the body
 * is the rest after the blank line, NULs included, and absent without one.
 * jansson's own UTF-8 check is the oracle: the builder must succeed exactly
 * when every string is valid UTF-8. A built request must dump to JSON
 * (json_dumps) and load back equal, carry the method, URL and body
 * unchanged, and carry the headers lower-cased with repeated ones joined by
 * ", " in order.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <tempest/tempest.h>

#include "codec.h"
#include "fuzz.h"

typedef struct request {
    char *copy; /* the input, NUL-terminated, lines cut in place */
    const char *method;
    const char *url;
    tp_http_header *headers;
    size_t nheaders;
    const char *body; /* NULL when absent */
    size_t body_len;
} request;

/* The line at *p (up to LF or the end, cut there); *p moves past it. */
static char *take_line(char **p, char *end) {
    char *line = *p, *nl = memchr(line, '\n', (size_t)(end - line));

    if (nl == NULL) {
        *p = end;
        return line;
    }
    *nl = '\0';
    *p = nl + 1;
    return line;
}

static void add_header(request *r, char *line) {
    char *colon = strchr(line, ':');

    r->headers[r->nheaders].name = line;
    r->headers[r->nheaders].value = colon != NULL ? colon + 1 : line + strlen(line);
    if (colon != NULL)
        *colon = '\0';
    r->nheaders++;
}

static void split(request *r, const uint8_t *data, size_t size) {
    char *p, *end;

    r->copy = malloc(size + 1);
    r->headers = malloc((size / 2 + 1) * sizeof *r->headers);
    CHECK(r->copy != NULL && r->headers != NULL);
    memcpy(r->copy, data, size);
    r->copy[size] = '\0';
    p = r->copy;
    end = r->copy + size;
    r->method = take_line(&p, end);
    r->url = p < end ? take_line(&p, end) : "";
    while (p < end) {
        if (*p == '\n') {
            r->body = p + 1;
            r->body_len = (size_t)(end - r->body);
            return;
        }
        add_header(r, take_line(&p, end));
    }
}

/* jansson's verdict on [s, s + len) as UTF-8. */
static bool valid_utf8(const char *s, size_t len) {
    json_t *v = json_stringn(s, len);

    json_decref(v);
    return v != NULL;
}

static bool all_valid(const request *r) {
    if (!valid_utf8(r->method, strlen(r->method)) || !valid_utf8(r->url, strlen(r->url)))
        return false;
    for (size_t i = 0; i < r->nheaders; i++) {
        if (!valid_utf8(r->headers[i].name, strlen(r->headers[i].name)) ||
            !valid_utf8(r->headers[i].value, strlen(r->headers[i].value)))
            return false;
    }
    return r->body == NULL || valid_utf8(r->body, r->body_len);
}

static char *lower(const char *s) {
    char *p = strdup(s);

    CHECK(p != NULL);
    for (char *c = p; *c != '\0'; c++) {
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    }
    return p;
}

/* The headers object the builder should make, built independently. */
static json_t *expected_headers(const request *r) {
    json_t *hdrs = json_object();

    CHECK(hdrs != NULL);
    for (size_t i = 0; i < r->nheaders; i++) {
        char *key = lower(r->headers[i].name);
        const char *value = r->headers[i].value;
        json_t *old = json_object_get(hdrs, key);
        if (old != NULL) {
            size_t olen = json_string_length(old), vlen = strlen(value);
            char *joined = malloc(olen + 2 + vlen);
            CHECK(joined != NULL);
            memcpy(joined, json_string_value(old), olen);
            memcpy(joined + olen, ", ", 2);
            memcpy(joined + olen + 2, value, vlen);
            CHECK(json_object_set_new(hdrs, key, json_stringn(joined, olen + 2 + vlen)) == 0);
            free(joined);
        } else {
            CHECK(json_object_set_new(hdrs, key, json_string(value)) == 0);
        }
        free(key);
    }
    return hdrs;
}

static bool has_text(json_t *obj, const char *key, const char *s, size_t len) {
    json_t *v = json_object_get(obj, key);

    return json_is_string(v) && json_string_length(v) == len &&
           memcmp(json_string_value(v), s, len) == 0;
}

static void check_built(const request *r, json_t *req) {
    json_t *hdrs = expected_headers(r), *loaded;
    char *dump = json_dumps(req, JSON_COMPACT);

    CHECK(dump != NULL);
    loaded = json_loads(dump, JSON_ALLOW_NUL, NULL);
    CHECK(loaded != NULL && json_equal(loaded, req));
    CHECK(has_text(req, "method", r->method, strlen(r->method)));
    CHECK(has_text(req, "url", r->url, strlen(r->url)));
    CHECK(json_equal(json_object_get(req, "headers"), hdrs));
    if (r->body != NULL)
        CHECK(has_text(req, "body", r->body, r->body_len));
    else
        CHECK(json_object_get(req, "body") == NULL);
    CHECK(json_object_size(req) == (r->body != NULL ? 4u : 3u));
    json_decref(loaded);
    json_decref(hdrs);
    free(dump);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    request r = {0};
    char err[256] = "";
    json_t *req;

    split(&r, data, size);
    req = tp_url_request_new(r.method, r.url, r.headers, r.nheaders, r.body, r.body_len, err,
                             sizeof err);
    CHECK((req != NULL) == all_valid(&r));
    if (req != NULL)
        check_built(&r, req);
    else
        CHECK(err[0] != '\0');
    json_decref(req);
    free(r.headers);
    free(r.copy);
    return 0;
}
