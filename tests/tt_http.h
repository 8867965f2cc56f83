/* SPDX-License-Identifier: MIT */
/*
 * Small HTTP clients for the tests (evhttp's client API on the test's
 * event_base), one request per connection: tt_http_do runs the loop until
 * the response is in; tt_http_start only starts the request, for the tests
 * that watch it while it runs (streamed bodies, clients that leave).
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

/** One request started by tt_http_start, and what came back. */
typedef struct tt_http_call {
    struct evhttp_connection *conn;
    bool used;
    bool done;
    int status; /* 0: no response (connection failed) */
    struct evkeyvalq headers;
    struct evbuffer *body; /* what came so far (chunks as they come) */
    char *text;            /* the body, NUL-terminated, once done */
    long long started, finished;
} tt_http_call;

/**
 * Starts `cmd uri` to 127.0.0.1:`port` on a connection of its own, with
 * `Host: 127.0.0.1`, the NULL-ended name, value pairs of `headers` (may be
 * NULL) and `len` bytes of `body` (may be NULL). Asserts (cmocka) that the
 * request could be made. The loop then fills `c`; free it with
 * tt_http_call_free().
 */
void tt_http_start(tt_http_call *c, struct event_base *base, int port, enum evhttp_cmd_type cmd,
                   const char *uri, const char *const *headers, const char *body, size_t len);

/** Frees what a call holds (its connection too) and zeroes it; a call never
 *  started is left as it is. */
void tt_http_call_free(tt_http_call *c);

#endif
