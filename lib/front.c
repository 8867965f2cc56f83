/* SPDX-License-Identifier: MIT */
/*
 * The HTTP front: evhttp turns each request into a `url` job on the
 * front's queue and keeps the connection until the job's answer arrives.
 * A final answer becomes an ordinary response; partial answers (MORE)
 * become a chunked response. evhttp does not tell a handler when its
 * client leaves, so each waiting request watches its connection's close
 * callback and cancels its job there. `GET /sub/<channel>` is not a job:
 * lib/sse.c streams it (Server-Sent Events).
 *
 * Backpressure: the jobs are "flow" jobs, whose partial answers' +OK the
 * node holds until they are delivered here. While the HTTP connection's
 * unsent output is over FLOW_HIGH, the front keeps one reply back (the
 * worker's pipeline stalls behind it: RESP replies are in order) and lets
 * it go once the output is down to FLOW_LOW. A foreign worker's reply is
 * never held (its client may give up on a late reply and crash): its
 * stream to a client that falls FLOW_CUT behind is cut instead.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "cache.h"
#include "guard.h"
#include "node.h"
#include "presence.h"
#include "session.h"
#include "sse.h"

typedef struct front_req {
    struct front_req *prev, *next;
    tempest_front *front;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct event *peek; /* notices a client that leaves while we wait */
    long long job;
    bool started;             /* a chunked response has begun */
    tp_reply_slot *held;      /* a worker's reply held back (backpressure) */
    struct event *drain;      /* checks the output while a reply is held */
    char sid[TP_SID_LEN + 1]; /* the request's session id, or "" */
    tp_cache_lookup *lookup;  /* reading the cache, before the job */
} front_req;

/* Unsent HTTP output of one request past which the worker is held back,
 * and below which it may go on. */
#define FLOW_HIGH ((size_t)4 << 20)
#define FLOW_LOW ((size_t)1 << 20)
/* Unsent output past which a stream that cannot hold its worker back is
 * cut (the client is too slow for a foreign worker's answers). */
#define FLOW_CUT ((size_t)32 << 20)
enum { FLOW_CHECK_MS = 5 };

struct tempest_front {
    tempest_node *node;
    struct evhttp *http;
    char *queue;
    int timeout_ms;
    int max_pending;
    int port;
    size_t pending;
    front_req *reqs;
    tp_sse *sse;     /* GET /sub/<channel> */
    tp_guard *guard; /* header deadline (slow clients) */
    /* counters for the presence record */
    uint64_t requests;     /* HTTP requests received, streams included */
    uint64_t errors;       /* answered 5xx by the front itself (502, 503, 504) */
    bool joined;           /* in the node's presence */
    tp_sessions *sessions; /* NULL: off */
    tp_cache *cache;       /* NULL: off */
};

/* ---- request bookkeeping --------------------------------------------- */

static void release_held(front_req *fr, const char *error);

static void req_unlink(front_req *fr) {
    tempest_front *f = fr->front;
    release_held(fr, NULL);
    if (fr->drain)
        event_free(fr->drain);
    if (fr->prev)
        fr->prev->next = fr->next;
    else
        f->reqs = fr->next;
    if (fr->next)
        fr->next->prev = fr->prev;
    f->pending--;
    tp_cache_lookup_cancel(fr->lookup);
    evhttp_connection_set_closecb(fr->evcon, NULL, NULL);
    if (fr->peek)
        event_free(fr->peek);
    free(fr);
}

static void on_client_close(struct evhttp_connection *evcon, void *arg) {
    (void)evcon;
    front_req *fr = arg;
    tp_log(&fr->front->node->log, TEMPEST_LOG_DEBUG, "front: client left, job %lld cancelled",
           fr->job);
    tempest_work_cancel(fr->front->node, fr->job);
    release_held(fr, "CANCELED the HTTP client left");
    /* After a failed write libevent detaches the request and leaves it to us;
     * an attached one it frees itself after this callback. */
    if (evhttp_request_get_connection(fr->req) == NULL)
        evhttp_request_free(fr->req);
    req_unlink(fr);
}

/* evhttp stops reading a connection while its request waits for a reply,
 * so it would only see the client leave at the next write. This watcher
 * peeks at the socket: end of file or an error means the client is gone;
 * data (a pipelined request) is left for evhttp, and watching stops. */
static void on_peek(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    front_req *fr = arg;
    if (!tp_client_gone(fd, fr->peek))
        return;
    struct evhttp_connection *evcon = fr->evcon;
    tp_log(&fr->front->node->log, TEMPEST_LOG_DEBUG, "front: client left, job %lld cancelled",
           fr->job);
    tempest_work_cancel(fr->front->node, fr->job);
    release_held(fr, "CANCELED the HTTP client left");
    req_unlink(fr);
    evhttp_connection_free(evcon); /* frees the request too */
}

static int watch_client(front_req *fr) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(fr->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0)
        return 0;
    fr->peek = event_new(fr->front->node->base, fd, EV_READ | EV_PERSIST, on_peek, fr);
    return fr->peek && event_add(fr->peek, NULL) == 0 ? 0 : TEMPEST_ENOMEM;
}

/* ---- backpressure ---------------------------------------------------- */

static size_t unsent(const front_req *fr) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(fr->evcon);
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

/* Lets the held reply go: +OK, or `-error` when the request is over. */
static void release_held(front_req *fr, const char *error) {
    tp_reply_slot *slot = fr->held;
    if (slot == NULL)
        return;
    fr->held = NULL;
    if (fr->drain)
        evtimer_del(fr->drain);
    if (error)
        tp_slot_reply_error(slot, error);
    else
        tp_slot_reply_status(slot, "OK");
}

static void on_drain_check(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    front_req *fr = arg;
    struct timeval tv = {0, FLOW_CHECK_MS * 1000};
    if (unsent(fr) <= FLOW_LOW)
        release_held(fr, NULL);
    else
        evtimer_add(fr->drain, &tv);
}

/* The client of a stream whose worker cannot be held back fell FLOW_CUT
 * behind: its connection is closed and the job cancelled. */
static void cut_slow(front_req *fr) {
    struct evhttp_connection *evcon = fr->evcon;
    tp_log(&fr->front->node->log, TEMPEST_LOG_WARN,
           "front: job %lld: the client is over %zu MiB behind a worker that cannot be held "
           "back; closed",
           fr->job, FLOW_CUT >> 20);
    fr->front->errors++;
    tempest_work_cancel(fr->front->node, fr->job);
    req_unlink(fr);
    evhttp_connection_free(evcon); /* frees the request too */
}

/* From the answer callback: holds the answer's reply while the client is
 * behind. One held reply is enough: the ones after it wait in order.
 * May cut the request: `fr` must not be used after the call. */
static void flow_check(front_req *fr) {
    struct timeval tv = {0, FLOW_CHECK_MS * 1000};
    if (fr->held || unsent(fr) <= FLOW_HIGH)
        return;
    if (fr->drain == NULL &&
        (fr->drain = evtimer_new(fr->front->node->base, on_drain_check, fr)) == NULL)
        return;
    fr->held = tp_node_hold_reply(fr->front->node);
    if (fr->held)
        evtimer_add(fr->drain, &tv);
    else if (unsent(fr) > FLOW_CUT)
        cut_slow(fr);
}

/* The front's jobs hold their partial answers' replies (see above). */
static void flow_on(tempest_front *f, long long id) {
    tp_pending *p = tp_map_get(&f->node->pending, id);
    if (p)
        p->flow = true;
}

/* ---- responses ------------------------------------------------------- */

static void reply_text(struct evhttp_request *req, int status, const char *text) {
    struct evbuffer *body = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/plain; charset=utf-8");
    if (body)
        evbuffer_add_printf(body, "%s\n", text);
    evhttp_send_reply(req, status, NULL, body);
    if (body)
        evbuffer_free(body);
}

static bool skipped_header(const char *name) {
    return strcasecmp(name, "content-length") == 0 || strcasecmp(name, "transfer-encoding") == 0 ||
           strcasecmp(name, "connection") == 0 || tp_cache_is_marker(name);
}

static void add_header_value(struct evkeyvalq *h, const char *name, json_t *v) {
    char num[64];
    if (json_is_string(v)) {
        evhttp_add_header(h, name, json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        evhttp_add_header(h, name, num);
    } else if (json_is_real(v)) {
        snprintf(num, sizeof num, "%.17g", json_real_value(v));
        evhttp_add_header(h, name, num);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) add_header_value(h, name, item);
    }
}

static void set_headers(struct evhttp_request *req, json_t *headers) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    const char *name;
    json_t *v;
    json_object_foreach(headers, name, v) {
        if (!skipped_header(name))
            add_header_value(h, name, v);
    }
}

static void send_chunk(struct evhttp_request *req, const tp_http_answer *a) {
    if (a->body == NULL || a->body_len == 0)
        return;
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL)
        return;
    evbuffer_add(buf, a->body, a->body_len);
    evhttp_send_reply_chunk(req, buf);
    evbuffer_free(buf);
}

/* Raw bytes (tempest_job_write): a body chunk; a 200 if nothing came first. */
static bool apply_raw(front_req *fr, json_t *answer) {
    tp_http_answer a = {.body = json_string_value(answer), .body_len = json_string_length(answer)};
    if (!fr->started)
        evhttp_send_reply_start(fr->req, 200, NULL);
    fr->started = true;
    send_chunk(fr->req, &a);
    return true;
}

/* Applies one answer; returns false when the request is over. */
static bool apply_answer(front_req *fr, int status, json_t *answer) {
    if (status == TEMPEST_MORE_RAW)
        return apply_raw(fr, answer);
    char err[200];
    tp_http_answer a;
    if (tp_http_answer_parse(answer, !fr->started, &a, err, sizeof err) != 0) {
        tp_log(&fr->front->node->log, TEMPEST_LOG_WARN, "front: job %lld: %s", fr->job, err);
        fr->front->errors++;
        if (fr->started)
            evhttp_send_reply_end(fr->req);
        else
            reply_text(fr->req, 502, "tempest: the worker sent a malformed answer");
        return false;
    }
    if (!fr->started && a.headers)
        set_headers(fr->req, a.headers);
    if (status == TEMPEST_MORE) {
        if (!fr->started)
            evhttp_send_reply_start(fr->req, a.status, NULL);
        fr->started = true;
        send_chunk(fr->req, &a);
        return true;
    }
    if (fr->started) {
        send_chunk(fr->req, &a);
        evhttp_send_reply_end(fr->req);
        return false;
    }
    if (tp_cache_final(fr->front->cache, fr->req, &a))
        return false; /* 304 */
    struct evbuffer *body = evbuffer_new();
    if (body && a.body)
        evbuffer_add(body, a.body, a.body_len);
    evhttp_send_reply(fr->req, a.status, NULL, body);
    if (body)
        evbuffer_free(body);
    return false;
}

static void reply_failure(front_req *fr, int status, json_t *answer) {
    char text[300];
    fr->front->errors++;
    if (fr->started) {
        evhttp_send_reply_end(fr->req);
        return;
    }
    switch (status) {
    case TEMPEST_ETIMEDOUT:
        snprintf(text, sizeof text, "tempest: no answer within %d ms", fr->front->timeout_ms);
        reply_text(fr->req, 504, text);
        break;
    case TEMPEST_EPROTO: /* a foreign worker's answer that does not decode */
        reply_text(fr->req, 502, "tempest: the worker sent a malformed answer");
        break;
    case TEMPEST_EREMOTE:
        snprintf(text, sizeof text, "tempest: the worker failed: %.200s",
                 json_is_string(answer) ? json_string_value(answer) : "unknown error");
        reply_text(fr->req, 502, text);
        break;
    default:
        snprintf(text, sizeof text, "tempest: %s", tempest_strerror(status));
        reply_text(fr->req, 503, text);
    }
}

static void on_answer(tempest_node *node, long long job, int status, json_t *answer, void *arg) {
    (void)node;
    (void)job;
    front_req *fr = arg;
    bool more = status == TEMPEST_MORE || status == TEMPEST_MORE_RAW;
    evhttp_connection_set_closecb(fr->evcon, NULL, NULL);
    if (status == 0 || more) {
        bool partial = more;
        more = apply_answer(fr, status, answer);
        if (more) {
            evhttp_connection_set_closecb(fr->evcon, on_client_close, fr);
            flow_check(fr);
            return;
        }
        if (partial)
            tempest_work_cancel(fr->front->node, fr->job);
    } else {
        reply_failure(fr, status, answer);
    }
    req_unlink(fr);
}

/* ---- requests -------------------------------------------------------- */

static const char *method_name(enum evhttp_cmd_type cmd) {
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "GET";
}

/* Builds the `url` job's single argument; NULL with `err` set. */
static json_t *build_args(struct evhttp_request *req, char *err, size_t errlen) {
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    tp_http_header hdrs[128];
    size_t n = 0;
    for (struct evkeyval *kv = in->tqh_first; kv && n < 128; kv = kv->next.tqe_next)
        hdrs[n++] = (tp_http_header){kv->key, kv->value};
    struct evbuffer *input = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(input);
    bool has_body = len > 0 || evhttp_find_header(in, "Content-Length") ||
                    evhttp_find_header(in, "Transfer-Encoding");
    const char *body = has_body ? (const char *)evbuffer_pullup(input, -1) : NULL;
    if (has_body && body == NULL)
        body = "";
    json_t *arg = tp_url_request_new(method_name(evhttp_request_get_command(req)),
                                     evhttp_request_get_uri(req), hdrs, n, body, len, err, errlen);
    return arg ? json_pack("[o]", arg) : NULL;
}

static int submit(tempest_front *f, front_req *fr, char *err, size_t errlen) {
    json_t *args = build_args(fr->req, err, errlen);
    if (args == NULL)
        return TEMPEST_EPROTO;
    if (tp_sessions_annotate(f->sessions, json_array_get(args, 0), fr->sid) != 0) {
        json_decref(args);
        snprintf(err, errlen, "tempest: out of memory");
        return TEMPEST_ENOMEM;
    }
    tempest_work_options wo = {.timeout_ms = f->timeout_ms};
    long long id = tempest_work(f->node, f->queue, "url", args, &wo, on_answer, fr);
    json_decref(args);
    if (id < 0) {
        snprintf(err, errlen, "tempest: %s", tempest_strerror((int)id));
        return (int)id;
    }
    fr->job = id;
    flow_on(f, id);
    return 0;
}

static void link_req(tempest_front *f, front_req *fr) {
    fr->next = f->reqs;
    if (f->reqs)
        f->reqs->prev = fr;
    f->reqs = fr;
    f->pending++;
    evhttp_connection_set_closecb(fr->evcon, on_client_close, fr);
    if (watch_client(fr) != 0)
        tp_log(&f->node->log, TEMPEST_LOG_WARN, "front: cannot watch a client connection");
}

/* The cache lookup's outcome: answer from the cache, or queue the job. */
static void on_cached(json_t *answer, void *arg) {
    front_req *fr = arg;
    tempest_front *f = fr->front;
    char err[256];
    int rc = 0;
    fr->lookup = NULL;
    evhttp_connection_set_closecb(fr->evcon, NULL, NULL);
    if (answer != NULL)
        apply_answer(fr, 0, answer);
    else if ((rc = submit(f, fr, err, sizeof err)) == 0) {
        evhttp_connection_set_closecb(fr->evcon, on_client_close, fr);
        return;
    }
    if (rc != 0) {
        f->errors += rc != TEMPEST_EPROTO;
        reply_text(fr->req, rc == TEMPEST_EPROTO ? 400 : 503, err);
    }
    req_unlink(fr);
}

static void on_request(struct evhttp_request *req, void *arg) {
    tempest_front *f = arg;
    char err[256];
    tp_guard_request(f->guard, req);
    f->requests++;
    if (tp_sse_handle(f->sse, req))
        return;
    if (f->pending >= (size_t)f->max_pending) {
        f->errors++;
        reply_text(req, 503, "tempest: too many requests waiting");
        return;
    }
    front_req *fr = tp_calloc(1, sizeof *fr);
    if (fr == NULL) {
        f->errors++;
        reply_text(req, 503, "tempest: out of memory");
        return;
    }
    *fr = (front_req){.front = f, .req = req, .evcon = evhttp_request_get_connection(req)};
    tp_sessions_begin(f->sessions, f->node, req, fr->sid);
    if ((fr->lookup = tp_cache_lookup_start(f->cache, req, on_cached, fr)) != NULL) {
        link_req(f, fr);
        return;
    }
    int rc = submit(f, fr, err, sizeof err);
    if (rc != 0) {
        free(fr);
        f->errors += rc != TEMPEST_EPROTO;
        reply_text(req, rc == TEMPEST_EPROTO ? 400 : 503, err);
        return;
    }
    link_req(f, fr);
}

/* ---- life cycle ------------------------------------------------------ */

static void describe(void *owner, json_t *record) {
    tempest_front *f = owner;
    tp_presence_add_role(record, "front");
    tp_presence_add_item(record, "queues", json_pack("{s:s}", "name", f->queue));
    tp_presence_add_count(record, "front", "requests", f->requests);
    tp_presence_add_count(record, "front", "in_flight", f->pending);
    tp_presence_add_count(record, "front", "errors", f->errors);
    tp_presence_add_count(record, "front", "streams", tp_sse_streams(f->sse));
    tp_presence_add_count(record, "front", "sse_dropped", tp_sse_dropped(f->sse));
}

static int bind_http(tempest_front *f, const char *addr, tempest_error *err) {
    char msg[200], *host = NULL;
    int port;
    if (tp_addr_parse(addr, &host, &port, msg, sizeof msg) != 0) {
        tp_error_set(err, TEMPEST_EADDR, "http address: %s", msg);
        return TEMPEST_EADDR;
    }
    struct evhttp_bound_socket *s =
        evhttp_bind_socket_with_handle(f->http, host, (ev_uint16_t)port);
    free(host);
    if (s == NULL) {
        tp_error_set(err, TEMPEST_EADDR, "cannot bind HTTP to %s", addr);
        return TEMPEST_EADDR;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&ss, &sl);
    f->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

static void configure_http(tempest_front *f, const tempest_front_options *o) {
    int io_ms = o->io_timeout_ms > 0 ? o->io_timeout_ms : 60000;
    struct timeval tv = {io_ms / 1000, (io_ms % 1000) * 1000};
    evhttp_set_timeout_tv(f->http, &tv);
    evhttp_set_max_body_size(f->http, (ev_ssize_t)(o->max_body ? o->max_body : 1 << 20));
    evhttp_set_max_headers_size(f->http, (ev_ssize_t)(o->max_headers ? o->max_headers : 64 << 10));
    evhttp_set_allowed_methods(f->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_default_content_type(f->http, NULL);
    evhttp_set_gencb(f->http, on_request, f);
}

TEMPEST_API tempest_front *
tempest_front_new(tempest_node *node, const tempest_front_options *options, tempest_error *err) {
    static const tempest_front_options defaults;
    const tempest_front_options *o = options ? options : &defaults;
    if (node == NULL || o->timeout_ms < 0 || o->max_pending < 0) {
        tp_error_set(err, TEMPEST_EINVAL, "front: a node is required; limits must be >= 0");
        return NULL;
    }
    tempest_front *f = tp_calloc(1, sizeof *f);
    if (f == NULL || (f->queue = tp_strdup(o->queue ? o->queue : "tempest")) == NULL)
        goto nomem;
    f->node = node;
    f->timeout_ms = o->timeout_ms ? o->timeout_ms : 30000;
    f->max_pending = o->max_pending ? o->max_pending : 10000;
    if ((f->http = evhttp_new(node->base)) == NULL)
        goto nomem;
    configure_http(f, o);
    if ((f->guard = tp_guard_new(node->base, f->http,
                                 o->header_timeout_ms > 0 ? o->header_timeout_ms : 10000)) == NULL)
        goto nomem;
    if ((f->sse = tp_sse_new(node, o, err)) == NULL)
        goto fail;
    if (tp_sessions_new(o, &f->sessions, err) != 0 ||
        tp_cache_new(node, o, f->queue, &f->cache, err) != 0)
        goto fail;
    if (bind_http(f, o->http ? o->http : "127.0.0.1:1337", err) != 0)
        goto fail;
    if (tp_node_ensure_listener(node) != 0) {
        tp_error_set(err, TEMPEST_EADDR, "%s", node->errstr);
        goto fail;
    }
    if (tp_presence_join(node, f, describe, NULL, 0) != 0)
        goto nomem;
    f->joined = true;
    return f;
nomem:
    tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
fail:
    tempest_front_free(f);
    return NULL;
}

TEMPEST_API int tempest_front_port(const tempest_front *f) {
    return f ? f->port : 0;
}

TEMPEST_API size_t tempest_front_pending(const tempest_front *f) {
    return f ? f->pending : 0;
}

TEMPEST_API size_t tempest_front_streams(const tempest_front *f) {
    return f ? tp_sse_streams(f->sse) : 0;
}

TEMPEST_API unsigned long long tempest_front_sse_dropped(const tempest_front *f) {
    return f ? tp_sse_dropped(f->sse) : 0;
}

TEMPEST_API unsigned long long tempest_front_slow_cut(const tempest_front *f) {
    return f ? tp_guard_cut(f->guard) : 0;
}

TEMPEST_API void tempest_front_free(tempest_front *f) {
    if (f == NULL)
        return;
    if (f->joined)
        tp_presence_leave(f->node, f);
    while (f->reqs) {
        front_req *fr = f->reqs;
        tempest_work_cancel(f->node, fr->job);
        release_held(fr, "CANCELED the front is shutting down");
        req_unlink(fr);
    }
    tp_sse_free(f->sse); /* before evhttp_free, which closes the streams */
    if (f->http)
        evhttp_free(f->http);
    tp_guard_free(f->guard); /* after evhttp_free: it holds the connections' bufferevents */
    tp_sessions_free(f->sessions);
    tp_cache_free(f->cache);
    free(f->queue);
    free(f);
}
