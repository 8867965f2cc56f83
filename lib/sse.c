/* SPDX-License-Identifier: MIT */
/*
 * Server-Sent Events at the front: `GET /sub/<channel>` becomes a
 * `text/event-stream` response on the channel's entry (lib/sse_chan.c),
 * watched for a client that leaves and kept alive by comment lines; here
 * too the front's SSE state is made and freed. A stream that comes with
 * `Last-Event-ID` (with the `history` option) first holds what the channel
 * sends it, reads the history from that id on, sends it, then what it held;
 * every stream remembers the newest id it sent and never sends an older
 * one: no gap, no duplicate.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "sse_internal.h"

#define SSE_PREFIX "/sub/"
#define MAX_CHANNEL 400 /* bytes of a decoded channel name */

static const char retry_line[] = "retry: 2000\n\n";
static const char keepalive_line[] = ": keep-alive\n\n";
static const char truncated_line[] = ": history truncated\n\n";
static const char unavailable_line[] = ": history unavailable\n\n";

/* ---- resume ---------------------------------------------------------- */

/* Sends the events held while catching up that are newer than what the
 * catch-up sent (and those without id, in their order), then goes live. */
static void stream_go_live(sse_stream *st) {
    st->catching = false;
    while (st->held) {
        sse_held *h = st->held;
        st->held = h->next;
        if (st->held == NULL)
            st->held_tail = NULL;
        st->held_bytes -= h->len;
        bool alive = tp_sse_stream_emit(st, h->has_id ? &h->id : NULL, h->end, h->bytes, h->len);
        free(h);
        if (!alive)
            return;
    }
}

/* Sends the entries of an XRANGE from `st->from` (inclusive) that come
 * after it; false when the stream is gone. */
static bool stream_send_entries(sse_stream *st, const redisReply *r) {
    sse_id id;
    /* Trimming removes the oldest entries: `from` still there means nothing
     * after it was lost. */
    if (r->elements > 0 && tp_sse_entry_id(r->element[0], &id) &&
        tp_sse_id_cmp(id, st->from) != 0 &&
        !tp_sse_stream_write(st, truncated_line, sizeof truncated_line - 1))
        return false;
    for (size_t i = 0; i < r->elements; i++) {
        sse_msg m;
        if (!tp_sse_entry_id(r->element[i], &id) || tp_sse_id_cmp(id, st->last) <= 0)
            continue;
        st->last = id;
        if (tp_sse_entry_msg(r->element[i], &m) != 0)
            continue;
        tp_sse_put_event(st->s->out, &id, &m);
        bool end = m.kind == TEMPEST_SUB_END;
        tp_sse_msg_clear(&m);
        if (!tp_sse_stream_flush(st))
            return false;
        if (end) {
            tp_sse_stream_end(st);
            return false;
        }
    }
    return true;
}

static void on_catch_up(redisAsyncContext *ac, void *reply, void *privdata) {
    sse_op *op = privdata;
    sse_stream *st = op->owner;
    if ((st = tp_sse_op_done(ac, privdata, st ? &st->op : NULL)) == NULL)
        return;
    const redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        if (!tp_sse_stream_write(st, unavailable_line, sizeof unavailable_line - 1))
            return;
    } else if (!stream_send_entries(st, r)) {
        return;
    }
    stream_go_live(st);
}

/* Reads the history from `st->from` on; live events are held meanwhile. */
static void stream_catch_up(sse_stream *st) {
    char from[48];
    tp_sse_id_format(st->from, from, sizeof from);
    sse_op *op = tp_sse_op_new(st);
    if (op && tp_redis_cmd(st->s->node->redis, on_catch_up, op, "XRANGE %s %s +", st->ch->key,
                           from) == 0) {
        st->op = op;
        st->catching = true;
        return;
    }
    free(op);
    tp_sse_stream_write(st, unavailable_line, sizeof unavailable_line - 1);
}

/* ---- requests -------------------------------------------------------- */

static void on_close(struct evhttp_connection *evcon, void *arg) {
    (void)evcon;
    sse_stream *st = arg;
    struct evhttp_request *req = st->req;
    tp_log(&st->s->node->log, TEMPEST_LOG_DEBUG, "sse: a client of '%s' left", st->ch->name);
    tp_sse_stream_unlink(st);
    /* After a failure libevent detaches the unfinished request and leaves
     * it to us. */
    if (evhttp_request_get_connection(req) == NULL)
        evhttp_request_free(req);
}

/* evhttp does not read a connection while its reply is open, so it would
 * see the client leave only at a later write: peek at the socket. Data
 * (a pipelined request) is left to evhttp, and watching stops. */
static void on_peek(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    sse_stream *st = arg;
    if (!tp_client_gone(fd, st->peek))
        return;
    tp_log(&st->s->node->log, TEMPEST_LOG_DEBUG, "sse: a client of '%s' left", st->ch->name);
    tp_sse_stream_close(st);
}

static void watch_client(sse_stream *st) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(st->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0)
        st->peek = event_new(st->s->node->base, fd, EV_READ | EV_PERSIST, on_peek, st);
    if (st->peek == NULL || event_add(st->peek, NULL) != 0)
        tp_log(&st->s->node->log, TEMPEST_LOG_WARN, "sse: cannot watch a client connection");
}

static void on_keepalive(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_sse *s = arg;
    for (sse_stream *st = s->streams, *next; st; st = next) {
        next = st->next;
        tp_sse_stream_write(st, keepalive_line, sizeof keepalive_line - 1);
    }
}

static void start_reply(tp_sse *s, struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    if (s->cors)
        evhttp_add_header(h, "Access-Control-Allow-Origin", s->cors);
    evhttp_send_reply_start(req, 200, "OK");
}

static int stream_open(tp_sse *s, struct evhttp_request *req, const char *name) {
    sse_chan *ch = tp_sse_chan_open(s, name);
    sse_stream *st = ch ? tp_calloc(1, sizeof *st) : NULL;
    if (st == NULL) {
        if (ch)
            tp_sse_chan_check(ch);
        return TEMPEST_ENOMEM;
    }
    *st = (sse_stream){.s = s, .ch = ch, .req = req, .evcon = evhttp_request_get_connection(req)};
    tp_sse_stream_link(s, st);
    start_reply(s, req);
    evhttp_connection_set_closecb(st->evcon, on_close, st);
    tp_sse_stream_timeouts(st, true);
    watch_client(st);
    if (!tp_sse_stream_write(st, retry_line, sizeof retry_line - 1))
        return 0;
    const char *last = evhttp_find_header(evhttp_request_get_input_headers(req), "Last-Event-ID");
    if (s->history && last && tp_sse_id_parse(last, strlen(last), &st->from)) {
        st->last = st->from; /* the client has it */
        st->has_last = true;
        stream_catch_up(st);
    }
    return 0;
}

static void reply_text(struct evhttp_request *req, int status, const char *text) {
    struct evbuffer *body = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; charset=utf-8");
    if (body)
        evbuffer_add_printf(body, "%s\n", text);
    evhttp_send_reply(req, status, NULL, body);
    if (body)
        evbuffer_free(body);
}

bool tp_sse_handle(tp_sse *s, struct evhttp_request *req) {
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET)
        return false;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL || strncmp(path, SSE_PREFIX, sizeof SSE_PREFIX - 1) != 0)
        return false;
    size_t len = 0;
    char *name = evhttp_uridecode(path + sizeof SSE_PREFIX - 1, 0, &len);
    if (name == NULL || len == 0 || len != strlen(name) || len > MAX_CHANNEL)
        reply_text(req, 404, "tempest: no such channel");
    else if (s->nstreams >= s->max_streams)
        reply_text(req, 503, "tempest: too many streams");
    else if (stream_open(s, req, name) != 0)
        reply_text(req, 503, "tempest: out of memory");
    free(name);
    return true;
}

/* ---- life cycle ------------------------------------------------------ */

tp_sse *tp_sse_new(tempest_node *node, const tempest_front_options *o, tempest_error *err) {
    if (o->sse_keepalive_ms < 0 || o->max_streams < 0) {
        tp_error_set(err, TEMPEST_EINVAL, "front: sse_keepalive_ms and max_streams must be >= 0");
        return NULL;
    }
    tp_sse *s = tp_calloc(1, sizeof *s);
    if (s == NULL)
        goto nomem;
    s->node = node;
    s->keepalive_ms = o->sse_keepalive_ms ? o->sse_keepalive_ms : 15000;
    s->io_timeout_ms = o->io_timeout_ms > 0 ? o->io_timeout_ms : 60000;
    s->max_buffered = o->sse_max_buffered ? o->sse_max_buffered : 1 << 20;
    s->max_streams = o->max_streams ? (size_t)o->max_streams : 10000;
    s->history = o->history;
    if ((o->cors_origin && (s->cors = tp_strdup(o->cors_origin)) == NULL) ||
        (s->keepalive = event_new(node->base, -1, EV_PERSIST, on_keepalive, s)) == NULL ||
        (s->out = evbuffer_new()) == NULL)
        goto nomem;
    return s;
nomem:
    tp_sse_free(s);
    tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
    return NULL;
}

size_t tp_sse_streams(const tp_sse *s) {
    return s ? s->nstreams : 0;
}

unsigned long long tp_sse_dropped(const tp_sse *s) {
    return s ? s->dropped : 0;
}

void tp_sse_free(tp_sse *s) {
    if (s == NULL)
        return;
    while (s->streams)
        tp_sse_stream_unlink(s->streams); /* the last stream of a channel frees it */
    if (s->keepalive)
        event_free(s->keepalive);
    if (s->out)
        evbuffer_free(s->out);
    free(s->buckets);
    free(s->cors);
    free(s);
}
