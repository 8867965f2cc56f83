/* SPDX-License-Identifier: MIT */
/* See tt_http.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "harness.h"
#include "tt_http.h"

static void on_done(struct evhttp_request *req, void *arg) {
    tt_http *r = arg;
    r->done = true;
    if (req == NULL || evhttp_request_get_response_code(req) == 0)
        return;
    r->status = evhttp_request_get_response_code(req);
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
        evhttp_add_header(&r->headers, kv->key, kv->value);
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    r->len = evbuffer_get_length(b);
    if ((r->body = malloc(r->len + 1)) != NULL) {
        evbuffer_copyout(b, r->body, r->len);
        r->body[r->len] = '\0';
    }
}

static bool is_done(void *arg) {
    return ((tt_http *)arg)->done;
}

int tt_http_do(struct event_base *base, int port, enum evhttp_cmd_type cmd, const char *uri,
               const char *const *headers, const char *body, tt_http *out) {
    memset(out, 0, sizeof *out);
    TAILQ_INIT(&out->headers);
    struct evhttp_connection *conn =
        evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)port);
    struct evhttp_request *req = conn ? evhttp_request_new(on_done, out) : NULL;
    if (req == NULL) {
        if (conn)
            evhttp_connection_free(conn);
        return -1;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (evhttp_find_header(h, "Host") == NULL)
        evhttp_add_header(h, "Host", "127.0.0.1");
    for (size_t i = 0; headers && headers[i]; i += 2) {
        if (strcasecmp(headers[i], "Host") == 0)
            evhttp_remove_header(h, "Host");
        evhttp_add_header(h, headers[i], headers[i + 1]);
    }
    if (body)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    int rc = evhttp_make_request(conn, req, cmd, uri);
    bool ok = rc == 0 && tt_run_until(base, is_done, out, 5000);
    evhttp_connection_free(conn);
    return ok && out->status != 0 ? 0 : -1;
}

const char *tt_http_header(tt_http *r, const char *name) {
    return evhttp_find_header(&r->headers, name);
}

int tt_http_header_count(tt_http *r, const char *name) {
    int n = 0;
    for (struct evkeyval *kv = r->headers.tqh_first; kv; kv = kv->next.tqe_next)
        n += strcasecmp(kv->key, name) == 0;
    return n;
}

void tt_http_clear(tt_http *r) {
    evhttp_clear_headers(&r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
    TAILQ_INIT(&r->headers);
}

static void on_call_chunk(struct evhttp_request *req, void *arg) {
    tt_http_call *c = arg;
    evbuffer_add_buffer(c->body, evhttp_request_get_input_buffer(req));
}

static void on_call_done(struct evhttp_request *req, void *arg) {
    tt_http_call *c = arg;
    c->done = true;
    c->finished = tt_now_ms();
    if (req == NULL)
        return;
    c->status = evhttp_request_get_response_code(req);
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
        evhttp_add_header(&c->headers, kv->key, kv->value);
    evbuffer_add_buffer(c->body, evhttp_request_get_input_buffer(req));
    size_t len = evbuffer_get_length(c->body);
    if ((c->text = malloc(len + 1)) != NULL) {
        evbuffer_copyout(c->body, c->text, len);
        c->text[len] = '\0';
    }
}

void tt_http_start(tt_http_call *c, struct event_base *base, int port, enum evhttp_cmd_type cmd,
                   const char *uri, const char *const *headers, const char *body, size_t len) {
    c->used = true;
    TAILQ_INIT(&c->headers);
    c->body = evbuffer_new();
    c->conn = evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)port);
    assert_non_null(c->body);
    assert_non_null(c->conn);
    struct evhttp_request *req = evhttp_request_new(on_call_done, c);
    assert_non_null(req);
    evhttp_request_set_chunked_cb(req, on_call_chunk);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Host", "127.0.0.1");
    for (size_t i = 0; headers && headers[i]; i += 2)
        evhttp_add_header(out, headers[i], headers[i + 1]);
    if (body)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    c->started = tt_now_ms();
    assert_int_equal(evhttp_make_request(c->conn, req, cmd, uri), 0);
}

void tt_http_call_free(tt_http_call *c) {
    if (!c->used)
        return;
    if (c->conn)
        evhttp_connection_free(c->conn);
    evhttp_clear_headers(&c->headers);
    if (c->body)
        evbuffer_free(c->body);
    free(c->text);
    memset(c, 0, sizeof *c);
}
