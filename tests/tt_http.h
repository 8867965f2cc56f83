/* SPDX-License-Identifier: MIT */
/*
 * A small blocking-style HTTP client for the tests (evhttp's client API on
 * the test's event_base): one request per connection, run until answered.
 */
#ifndef TEMPEST_TEST_HTTP_H
#define TEMPEST_TEST_HTTP_H

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct tt_http {
    bool done;
    int status; /* 0: no response */
    struct evkeyvalq headers;
    char *body; /* NUL-terminated */
    size_t len;
} tt_http;

/**
 * Sends `cmd uri` to 127.0.0.1:`port` with the NULL-terminated name, value
 * pairs of `headers` (may be NULL) and `body` (may be NULL), and runs `base`
 * until the response is in (at most 5 s). Returns 0 when a response came.
 * Clear `out` with tt_http_clear().
 */
int tt_http_do(struct event_base *base, int port, enum evhttp_cmd_type cmd, const char *uri,
               const char *const *headers, const char *body, tt_http *out);

/** The first response header `name` (any case), or NULL. */
const char *tt_http_header(tt_http *r, const char *name);

/** How many response headers are named `name`. */
int tt_http_header_count(tt_http *r, const char *name);

void tt_http_clear(tt_http *r);

#endif
