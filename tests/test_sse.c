/* SPDX-License-Identifier: MIT */
/*
 * Server-Sent Events at the front, against a private redis-server. The
 * clients are raw sockets on the test's own event_base (bufferevents that
 * parse the HTTP response, de-chunk it and split it into events), so the
 * exact bytes on the wire are checked. Covers the event format (data-only,
 * named, multi-line, CR/CRLF, malformed, end) published by
 * tempest_publish, by a plain hiredis PUBLISH and by redis-cli; a thousand
 * clients on one channel over one Redis subscription; cleanup when clients
 * leave; keep-alive comments; the output cap; max_streams; CORS; the 404s;
 * an interruption; and resume from the history with Last-Event-ID.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_proc.h"
#include "tt_chaos.h"
#include "tt_node.h"

#define WAIT_MS 5000
#define MANY 1000
#define MANY_MESSAGES 20
#define MAX_RECORDS 64

static tt_redis g_redis;

enum parse_state { P_HEAD, P_SIZE, P_DATA, P_CRLF, P_DONE };

/* One SSE client on a raw socket. */
typedef struct client {
    struct fx *f;
    struct bufferevent *bev;
    bool connected, eof;
    /* HTTP */
    enum parse_state state;
    char head[4096];
    int status;
    bool chunked;
    size_t chunk_left;
    char *raw; /* every byte received, when keep_raw */
    size_t raw_len;
    bool keep_raw;
    char *body; /* de-chunked body, NUL-terminated */
    size_t len, cap;
    bool ended; /* the last chunk, or EOF of an unchunked body */
    /* events */
    size_t scanned;
    int events;   /* blocks with a data line */
    int comments; /* comment lines */
    int keepalives;
    int kill_after; /* > 0: close the socket right after that many events */
    bool killed;
    int nrec; /* records of the first MAX_RECORDS events: "id|event|data" */
    char *rec[MAX_RECORDS];
    char last_id[64];
} client;

typedef struct fx {
    struct event_base *base;
    tempest_node *node;
    tempest_front *front;
    tempest_publisher *pub;
    int port;
    int published, pub_errors;
    int errors;
} fx;

/* ---- small helpers -------------------------------------------------------- */

static void on_log(int level, const char *message, void *arg) {
    (void)arg;
    if (level >= TEMPEST_LOG_WARN && getenv("TEMPEST_TEST_VERBOSE"))
        fprintf(stderr, "  log: %s\n", message);
}

static void wait_numsub(fx *f, const char *channel, long long n) {
    tt_numsub w = {&g_redis, channel, n};
    assert_true(tt_run_until(f->base, tt_numsub_is, &w, WAIT_MS));
}

/* A plain PUBLISH, as redis-cli or any other Redis client sends it. */
static void plain_publish(const char *channel, const char *payload) {
    redisReply *r = tt_redis_command(&g_redis, "PUBLISH %s %s", channel, payload);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
}

static bool streams_are(fx *f, size_t n) {
    return tempest_front_streams(f->front) == n;
}

static bool no_streams(void *arg) {
    return streams_are(arg, 0);
}

static bool two_streams(void *arg) {
    return streams_are(arg, 2);
}

/* ---- the client ----------------------------------------------------------- */

static void body_add(client *c, const char *p, size_t n) {
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        while (cap < c->len + n + 1)
            cap *= 2;
        char *b = realloc(c->body, cap);
        if (b == NULL)
            abort();
        c->body = b;
        c->cap = cap;
    }
    memcpy(c->body + c->len, p, n);
    c->len += n;
    c->body[c->len] = '\0';
}

static void parse_head(client *c) {
    int minor;
    if (sscanf(c->head, "HTTP/1.%d %d", &minor, &c->status) != 2)
        c->status = -1;
    c->chunked = strcasestr(c->head, "\r\nTransfer-Encoding: chunked\r\n") != NULL;
    c->state = c->chunked ? P_SIZE : P_DATA;
}

/* Moves what `in` holds into the body, de-chunking; false: wait for more. */
static bool parse_step(client *c, struct evbuffer *in) {
    size_t avail = evbuffer_get_length(in);
    switch (c->state) {
    case P_HEAD: {
        struct evbuffer_ptr p = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (p.pos < 0)
            return false;
        size_t n = (size_t)p.pos + 4 < sizeof c->head ? (size_t)p.pos + 4 : sizeof c->head - 1;
        evbuffer_remove(in, c->head, n);
        c->head[n] = '\0';
        parse_head(c);
        return true;
    }
    case P_SIZE: {
        char *line = evbuffer_readln(in, NULL, EVBUFFER_EOL_CRLF_STRICT);
        if (line == NULL)
            return false;
        c->chunk_left = strtoul(line, NULL, 16);
        free(line);
        c->state = c->chunk_left ? P_DATA : P_DONE;
        c->ended = c->chunk_left == 0;
        return true;
    }
    case P_DATA: {
        size_t n = c->chunked && c->chunk_left < avail ? c->chunk_left : avail;
        if (n == 0)
            return false;
        body_add(c, (const char *)evbuffer_pullup(in, (ev_ssize_t)n), n);
        evbuffer_drain(in, n);
        if (c->chunked && (c->chunk_left -= n) == 0)
            c->state = P_CRLF;
        return true;
    }
    case P_CRLF:
        if (avail < 2)
            return false;
        evbuffer_drain(in, 2);
        c->state = P_SIZE;
        return true;
    case P_DONE:
        evbuffer_drain(in, avail);
        return false;
    }
    return false;
}

/* Records an event block's fields as "id|event|data". */
static void record_block(client *c, const char *b, size_t n) {
    char id[64] = "", event[64] = "", data[1024] = "";
    bool has_data = false;
    size_t dlen = 0;
    while (n > 0) {
        const char *nl = memchr(b, '\n', n);
        size_t l = nl ? (size_t)(nl - b) : n;
        if (l > 0 && b[0] == ':') {
            c->comments++;
            c->keepalives += l == 12 && memcmp(b, ": keep-alive", 12) == 0;
        } else if (l >= 4 && memcmp(b, "id: ", 4) == 0) {
            snprintf(id, sizeof id, "%.*s", (int)(l - 4), b + 4);
        } else if (l >= 7 && memcmp(b, "event: ", 7) == 0) {
            snprintf(event, sizeof event, "%.*s", (int)(l - 7), b + 7);
        } else if (l >= 6 && memcmp(b, "data: ", 6) == 0) {
            int w = snprintf(data + dlen, sizeof data - dlen, "%s%.*s", has_data ? "\n" : "",
                             (int)(l - 6), b + 6);
            if (w > 0 && dlen + (size_t)w < sizeof data)
                dlen += (size_t)w;
            has_data = true;
        }
        b += l + (nl != NULL);
        n -= l + (nl != NULL);
    }
    if (!has_data)
        return;
    c->events++;
    if (id[0])
        snprintf(c->last_id, sizeof c->last_id, "%s", id);
    if (c->nrec < MAX_RECORDS && asprintf(&c->rec[c->nrec], "%s|%s|%s", id, event, data) > 0)
        c->nrec++;
}

/* Splits the body into blocks ended by a blank line. */
static void scan_events(client *c) {
    while (!c->killed && c->scanned < c->len) {
        char *end = strstr(c->body + c->scanned, "\n\n");
        if (end == NULL)
            return;
        size_t start = c->scanned;
        c->scanned = (size_t)(end - c->body) + 2;
        record_block(c, c->body + start, (size_t)(end - c->body) - start + 1);
        if (c->kill_after > 0 && c->events == c->kill_after) {
            c->killed = true; /* what came after is never "received" */
            c->len = c->scanned;
            c->body[c->len] = '\0';
        }
    }
}

static void client_shut(client *c) {
    if (c->bev)
        bufferevent_free(c->bev); /* BEV_OPT_CLOSE_ON_FREE */
    c->bev = NULL;
}

static void on_client_read(struct bufferevent *bev, void *arg) {
    client *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->keep_raw) {
        size_t n = evbuffer_get_length(in);
        c->raw = realloc(c->raw, c->raw_len + n + 1);
        if (c->raw == NULL)
            abort();
        evbuffer_copyout(in, c->raw + c->raw_len, n);
        c->raw_len += n;
        c->raw[c->raw_len] = '\0';
    }
    while (parse_step(c, in))
        ;
    scan_events(c);
    if (c->killed)
        client_shut(c);
}

static void on_client_event(struct bufferevent *bev, short what, void *arg) {
    client *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = true;
        return;
    }
    on_client_read(bev, c);
    c->eof = true;
    if (c->state == P_DATA && !c->chunked)
        c->ended = true;
    client_shut(c);
}

static void client_request(client *c, const char *path, int minor, const char *extra) {
    evbuffer_add_printf(
        bufferevent_get_output(c->bev),
        "GET %s HTTP/1.%d\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n%s\r\n", path, minor,
        extra ? extra : "");
}

static client *client_connect(fx *f) {
    client *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->f = f;
    c->bev = bufferevent_socket_new(f->base, -1, BEV_OPT_CLOSE_ON_FREE);
    assert_non_null(c->bev);
    bufferevent_setcb(c->bev, on_client_read, NULL, on_client_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bufferevent_socket_connect(c->bev, (struct sockaddr *)&sin, sizeof sin), 0);
    return c;
}

/* Opens `path` with HTTP/1.`minor`; `extra` holds header lines ("X: y\r\n"). */
static client *client_open(fx *f, const char *path, int minor, const char *extra) {
    client *c = client_connect(f);
    client_request(c, path, minor, extra);
    return c;
}

static void client_free(client *c) {
    if (c == NULL)
        return;
    client_shut(c);
    for (int i = 0; i < c->nrec; i++)
        free(c->rec[i]);
    free(c->raw);
    free(c->body);
    free(c);
}

static bool client_open_done(void *arg) {
    client *c = arg;
    return c->status != 0 && (c->status != 200 || c->len >= 13 || c->eof);
}

/* Opens a stream and waits for its `retry:` line. */
static client *client_stream(fx *f, const char *path, const char *extra) {
    client *c = client_open(f, path, 1, extra);
    assert_true(tt_run_until(f->base, client_open_done, c, WAIT_MS));
    assert_int_equal(c->status, 200);
    assert_memory_equal(c->body, "retry: 2000\n\n", 13);
    return c;
}

static void wait_events(fx *f, client *c, int n) {
    tt_count w = {&c->events, n};
    assert_true(tt_run_until(f->base, tt_count_reached, &w, WAIT_MS));
}

static bool client_ended(void *arg) {
    return ((client *)arg)->ended;
}

static bool client_eof(void *arg) {
    return ((client *)arg)->eof;
}

static const char *header_of(client *c, const char *name) {
    static char value[256];
    char key[64];
    snprintf(key, sizeof key, "\r\n%s: ", name);
    const char *p = strcasestr(c->head, key);
    if (p == NULL)
        return NULL;
    p += strlen(key);
    size_t n = strcspn(p, "\r");
    snprintf(value, sizeof value, "%.*s", (int)n, p);
    return value;
}

/* ---- publishing ----------------------------------------------------------- */

static void on_published(tempest_publisher *pub, int status, long long receivers, const char *id,
                         void *arg) {
    (void)pub;
    (void)receivers;
    (void)id;
    fx *f = arg;
    f->published++;
    if (status != 0)
        f->pub_errors++;
}

static bool published_is(void *arg) {
    fx *f = arg;
    return f->published > 0;
}

static void make_publisher(fx *f, int history) {
    tempest_publisher_options po = {.history = history};
    f->pub = tempest_publisher_new(f->node, &po, NULL);
    assert_non_null(f->pub);
}

/* Publishes and waits for Redis's reply. */
static void publish(fx *f, const char *channel, const char *event, const char *data) {
    f->published = 0;
    assert_int_equal(tempest_publish(f->pub, channel, event, data, on_published, f), 0);
    assert_true(tt_run_until(f->base, published_is, f, WAIT_MS));
    assert_int_equal(f->pub_errors, 0);
}

/* ---- fixture -------------------------------------------------------------- */

static int group_setup(void **state) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    return tt_group_setup(state);
}

static int setup(void **state) {
    return tt_fixture_setup(state, sizeof(fx), &g_redis);
}

static int teardown(void **state) {
    fx *f = *state;
    tempest_publisher_free(f->pub);
    tempest_front_free(f->front);
    tempest_node_free(f->node);
    tt_fixture_free(f);
    return 0;
}

static void start_front(fx *f, const tempest_front_options *options) {
    tempest_error err = {0};
    tempest_node_options no = tt_node_options(g_redis.url, on_log, NULL, TEMPEST_LOG_DEBUG);
    f->node = tempest_node_new(f->base, &no, &err);
    assert_non_null(f->node);
    f->front = tt_front_new(f->node, options, &f->port);
    assert_true(tt_run_until(f->base, tt_node_up, f->node, WAIT_MS));
}

/* ---- the event format ----------------------------------------------------- */

static void publish_and_wait(fx *f, client *c, const char *event, const char *data) {
    int n = c->events;
    publish(f, "test", event, data);
    wait_events(f, c, n + 1);
}

static void plain_and_wait(fx *f, client *c, const char *payload) {
    int n = c->events;
    plain_publish("test", payload);
    wait_events(f, c, n + 1);
}

static void test_wire_bytes(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    make_publisher(f, 0);
    client *c = client_open(f, "/sub/test", 1, NULL);
    c->keep_raw = true;
    assert_true(tt_run_until(f->base, client_open_done, c, WAIT_MS));
    assert_int_equal(c->status, 200);
    assert_string_equal(header_of(c, "Content-Type"), "text/event-stream");
    assert_string_equal(header_of(c, "Cache-Control"), "no-cache");
    assert_null(header_of(c, "Access-Control-Allow-Origin"));
    assert_int_equal(tempest_front_streams(f->front), 1);
    wait_numsub(f, "test", 1);

    publish_and_wait(f, c, NULL, "hello");
    publish_and_wait(f, c, "greet", "hi there");
    publish_and_wait(f, c, NULL, "a\nb");
    publish_and_wait(f, c, NULL, "x\r\ny\rz\n");
    publish_and_wait(f, c, NULL, "");
    publish_and_wait(f, c, "bad\nname", "n");
    plain_and_wait(f, c, "[\"plain\"]");
    plain_and_wait(f, c, "[\"ev\", \"two\\nlines\"]");
    plain_and_wait(f, c, "not json");
    plain_and_wait(f, c, "[1,2,3]");
    bool cli = tt_have_redis_cli();
    if (cli) {
        char cmd[256];
        int n = c->events;
        snprintf(cmd, sizeof cmd, "redis-cli -p %d publish test '[\"Bob\"]' >/dev/null",
                 g_redis.port);
        assert_int_equal(system(cmd), 0);
        wait_events(f, c, n + 1);
    } else {
        fprintf(stderr, "  (redis-cli not found: its part is skipped)\n");
    }
    assert_int_equal(tempest_publish_end(f->pub, "test", NULL, NULL), 0);
    assert_true(tt_run_until(f->base, client_ended, c, WAIT_MS));

    char want[1024];
    snprintf(want, sizeof want, "%s%s%s",
             "retry: 2000\n\n"
             "data: hello\n\n"
             "event: greet\ndata: hi there\n\n"
             "data: a\ndata: b\n\n"
             "data: x\ndata: y\ndata: z\ndata: \n\n"
             "data: \n\n"
             "event: bad name\ndata: n\n\n"
             "data: plain\n\n"
             "event: ev\ndata: two\ndata: lines\n\n"
             "data: not json\n\n"
             "data: [1,2,3]\n\n",
             cli ? "data: Bob\n\n" : "", "event: end\ndata: \n\n");
    assert_string_equal(c->body, want);
    /* One event per chunk, and the last chunk. */
    assert_non_null(strstr(c->raw, "\r\n\r\nd\r\nretry: 2000\n\n\r\nd\r\ndata: hello\n\n\r\n"));
    assert_non_null(strstr(c->raw, "\r\n13\r\nevent: end\ndata: \n\n\r\n0\r\n\r\n"));
    assert_int_equal(tempest_front_streams(f->front), 0);
    wait_numsub(f, "test", 0);
    assert_int_equal(tempest_node_subscriptions(f->node), 0);
    client_free(c);
}

/* HTTP/1.0: no chunks, the connection closes after the end event. */
static void test_http10(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    make_publisher(f, 0);
    client *c = client_open(f, "/sub/test?ignored=1", 0, NULL);
    assert_true(tt_run_until(f->base, client_open_done, c, WAIT_MS));
    assert_int_equal(c->status, 200);
    assert_false(c->chunked);
    wait_numsub(f, "test", 1);
    publish_and_wait(f, c, "e", "1");
    assert_int_equal(tempest_publish_end(f->pub, "test", NULL, NULL), 0);
    assert_true(tt_run_until(f->base, client_eof, c, WAIT_MS));
    assert_string_equal(c->body, "retry: 2000\n\nevent: e\ndata: 1\n\nevent: end\ndata: \n\n");
    assert_true(tt_run_until(f->base, no_streams, f, WAIT_MS));
    client_free(c);
}

/* ---- many clients, leaving ------------------------------------------------ */

typedef struct many {
    client *c[MANY];
    int n;
    int want; /* events each must have */
} many;

static bool all_open(void *arg) {
    many *m = arg;
    for (int i = 0; i < m->n; i++)
        if (m->c[i]->status != 200 || m->c[i]->len < 13)
            return false;
    return true;
}

static bool all_have(void *arg) {
    many *m = arg;
    for (int i = 0; i < m->n; i++)
        if (m->c[i]->events < m->want)
            return false;
    return true;
}

static void test_thousand_clients(void **state) {
    fx *f = *state;
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 2 * MANY + 100) {
        fprintf(stderr, "  RLIMIT_NOFILE %llu is too low for %d clients\n",
                (unsigned long long)rl.rlim_cur, MANY);
        skip();
    }
    start_front(f, NULL);
    make_publisher(f, 0);
    many *m = calloc(1, sizeof *m);
    assert_non_null(m);
    for (m->n = 0; m->n < MANY; m->n++)
        m->c[m->n] = client_open(f, "/sub/crowd", 1, NULL);
    assert_true(tt_run_until(f->base, all_open, m, 4 * WAIT_MS));
    assert_int_equal(tempest_front_streams(f->front), MANY);
    wait_numsub(f, "crowd", 1);
    assert_int_equal(tempest_node_subscriptions(f->node), 1);

    char want[4096] = "retry: 2000\n\n", data[32];
    for (int i = 0; i < MANY_MESSAGES; i++) {
        snprintf(data, sizeof data, "message %d", i);
        assert_int_equal(tempest_publish(f->pub, "crowd", NULL, data, NULL, NULL), 0);
        size_t len = strlen(want);
        snprintf(want + len, sizeof want - len, "data: %s\n\n", data);
    }
    m->want = MANY_MESSAGES;
    assert_true(tt_run_until(f->base, all_have, m, 4 * WAIT_MS));
    tt_run_for(f->base, 50);
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(m->c[i]->events, MANY_MESSAGES);
        assert_string_equal(m->c[i]->body, want);
    }
    assert_int_equal(tt_redis_numsub(&g_redis, "crowd"), 1);

    for (int i = 0; i < MANY; i++)
        client_shut(m->c[i]);
    assert_true(tt_run_until(f->base, no_streams, f, WAIT_MS));
    wait_numsub(f, "crowd", 0);
    assert_int_equal(tempest_node_subscriptions(f->node), 0);
    for (int i = 0; i < MANY; i++)
        client_free(m->c[i]);
    free(m);
}

/* Two channels; one client leaves, the other stays subscribed. */
static void test_leave_one_channel(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    make_publisher(f, 0);
    client *a = client_stream(f, "/sub/one", NULL);
    client *b = client_stream(f, "/sub/two", NULL);
    client *b2 = client_stream(f, "/sub/two", NULL);
    wait_numsub(f, "one", 1);
    wait_numsub(f, "two", 1);
    client_shut(a);
    wait_numsub(f, "one", 0);
    assert_int_equal(tempest_front_streams(f->front), 2);
    client_shut(b);
    assert_true(tt_run_until(f->base, no_streams, f, 200) == false);
    assert_int_equal(tempest_front_streams(f->front), 1);
    assert_int_equal(tt_redis_numsub(&g_redis, "two"), 1);
    publish(f, "two", NULL, "still here");
    wait_events(f, b2, 1);
    assert_string_equal(b2->rec[0], "||still here");
    client_free(a);
    client_free(b);
    client_free(b2);
}

/* ---- keep-alive, caps, CORS, errors --------------------------------------- */

static void test_keepalive(void **state) {
    fx *f = *state;
    /* An io timeout shorter than the test: the stream must outlive it. */
    start_front(f, &(tempest_front_options){.sse_keepalive_ms = 200, .io_timeout_ms = 300});
    client *c = client_stream(f, "/sub/quiet", NULL);
    long long t0 = tt_now_ms();
    tt_count w = {&c->keepalives, 1};
    assert_true(tt_run_until(f->base, tt_count_reached, &w, 2000));
    assert_true(tt_now_ms() - t0 >= 150);
    w.n = 6;
    assert_true(tt_run_until(f->base, tt_count_reached, &w, 3000));
    assert_false(c->eof);
    assert_int_equal(tempest_front_streams(f->front), 1);
    assert_non_null(strstr(c->body, "retry: 2000\n\n: keep-alive\n\n"));
    assert_int_equal(c->events, 0);
    client_free(c);
}

/* A stream outlives the front's io timeout without writes; once it ends,
 * its idle connection times out again. */
static void test_quiet_stream_and_io_timeout(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.io_timeout_ms = 200});
    make_publisher(f, 0);
    client *c = client_stream(f, "/sub/quiet", NULL);
    wait_numsub(f, "quiet", 1);
    tt_run_for(f->base, 700);
    assert_false(c->eof);
    assert_int_equal(tempest_front_streams(f->front), 1);
    assert_int_equal(tempest_publish_end(f->pub, "quiet", NULL, NULL), 0);
    assert_true(tt_run_until(f->base, client_ended, c, WAIT_MS));
    assert_false(c->eof);
    long long t0 = tt_now_ms();
    assert_true(tt_run_until(f->base, client_eof, c, WAIT_MS));
    assert_true(tt_now_ms() - t0 < 1000);
    client_free(c);
}

static void test_slow_client_dropped(void **state) {
    fx *f = *state;
    /* No keep-alive comment in the byte count below, however slow the run
     * (one came in a valgrind run in CI). */
    start_front(f, &(tempest_front_options){.sse_max_buffered = 64 * 1024,
                                            .sse_keepalive_ms = 3600 * 1000});
    make_publisher(f, 0);
    client *reader = client_stream(f, "/sub/big", NULL);
    /* A client that never reads, with a small receive window. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    static const char req[] = "GET /sub/big HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(fd, req, sizeof req - 1, 0), (ssize_t)(sizeof req - 1));
    assert_true(tt_run_until(f->base, two_streams, f, WAIT_MS));

    size_t size = 32 * 1024;
    char *big = malloc(size + 1);
    assert_non_null(big);
    memset(big, 'x', size);
    big[size] = '\0';
    int sent = 0;
    while (tempest_front_sse_dropped(f->front) == 0 && sent < 2000) {
        publish(f, "big", NULL, big);
        sent++;
        wait_events(f, reader, sent);
    }
    assert_int_equal(tempest_front_sse_dropped(f->front), 1);
    assert_int_equal(tempest_front_streams(f->front), 1);
    /* The reader got everything, in full. */
    publish(f, "big", NULL, "after");
    wait_events(f, reader, sent + 1);
    assert_int_equal(reader->events, sent + 1);
    assert_int_equal(reader->len, 13 + (size_t)sent * (size + 8) + strlen("data: after\n\n"));
    close(fd);
    free(big);
    client_shut(reader);
    assert_true(tt_run_until(f->base, no_streams, f, WAIT_MS));
    wait_numsub(f, "big", 0);
    client_free(reader);
}

static void test_max_streams(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.max_streams = 2});
    client *a = client_stream(f, "/sub/a", NULL);
    client *b = client_stream(f, "/sub/b", NULL);
    client *c = client_open(f, "/sub/c", 1, NULL);
    assert_true(tt_run_until(f->base, client_open_done, c, WAIT_MS));
    assert_int_equal(c->status, 503);
    assert_int_equal(tempest_front_streams(f->front), 2);
    client_shut(a);
    assert_true(tt_run_until(f->base, no_streams, f, 300) == false);
    assert_int_equal(tempest_front_streams(f->front), 1);
    client *d = client_stream(f, "/sub/d", NULL);
    assert_int_equal(tempest_front_streams(f->front), 2);
    client_free(a);
    client_free(b);
    client_free(c);
    client_free(d);
}

static void test_cors_and_paths(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.cors_origin = "https://example.com"});
    make_publisher(f, 0);
    client *c = client_stream(f, "/sub/a%20b?x=1", NULL);
    assert_string_equal(header_of(c, "Access-Control-Allow-Origin"), "https://example.com");
    wait_numsub(f, "a b", 1);
    publish(f, "a b", NULL, "spaced");
    wait_events(f, c, 1);
    assert_string_equal(c->rec[0], "||spaced");
    static const char *const missing[] = {"/sub/", "/sub/?x=1", "/sub/%00x"};
    for (size_t i = 0; i < sizeof missing / sizeof *missing; i++) {
        client *e = client_open(f, missing[i], 1, NULL);
        assert_true(tt_run_until(f->base, client_open_done, e, WAIT_MS));
        assert_int_equal(e->status, 404);
        client_free(e);
    }
    assert_int_equal(tempest_front_streams(f->front), 1);
    client_free(c);
}

/* After a Redis restart a channel without history gets a comment, then
 * the live stream again. */
static void test_interrupted(void **state) {
    fx *f = *state;
    start_front(f, NULL);
    make_publisher(f, 0);
    client *c = client_stream(f, "/sub/test", NULL);
    wait_numsub(f, "test", 1);
    tt_redis_kill(&g_redis);
    assert_int_equal(tt_redis_restart(&g_redis, NULL), 0);
    assert_true(tt_run_until(f->base, tt_node_up, f->node, WAIT_MS));
    wait_numsub(f, "test", 1);
    assert_true(tt_run_until(f->base, tt_node_up, f->node, WAIT_MS));
    tt_run_for(f->base, 100);
    publish_and_wait(f, c, NULL, "back");
    assert_non_null(strstr(c->body, ": interrupted\n\ndata: back\n\n"));
    client_free(c);
}

/* ---- resume --------------------------------------------------------------- */

static void publish_n(fx *f, const char *channel, int from, int to) {
    char data[32];
    for (int i = from; i < to; i++) {
        snprintf(data, sizeof data, "m%d", i);
        publish(f, channel, NULL, data);
    }
}

/* "id|event|data" -> data */
static const char *rec_data(const char *rec) {
    const char *p = strchr(rec, '|');
    return p ? strchr(p + 1, '|') + 1 : rec;
}

static void test_resume(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.history = true});
    make_publisher(f, 100);
    client *a = client_stream(f, "/sub/r", NULL);
    a->kill_after = 4;
    wait_numsub(f, "r", 1);
    publish_n(f, "r", 0, 10);
    assert_true(a->killed);
    assert_int_equal(a->events, 4);
    assert_true(tt_run_until(f->base, no_streams, f, WAIT_MS));
    publish_n(f, "r", 10, 16); /* while the client is away */
    char extra[128];
    snprintf(extra, sizeof extra, "Last-Event-ID: %s\r\n", a->last_id);
    client *b = client_open(f, "/sub/r", 1, extra);
    /* Published while the client reconnects and catches up. */
    char data[32];
    for (int i = 16; i < 20; i++) {
        snprintf(data, sizeof data, "m%d", i);
        assert_int_equal(tempest_publish(f->pub, "r", NULL, data, NULL, NULL), 0);
    }
    wait_events(f, b, 16);
    tt_run_for(f->base, 100);
    assert_int_equal(b->events, 16);
    assert_null(strstr(b->body, ": history truncated"));

    /* The union is exactly m0..m19, in order, each with a distinct id. */
    const char *all[20];
    for (int i = 0; i < 4; i++)
        all[i] = a->rec[i];
    for (int i = 0; i < 16; i++)
        all[4 + i] = b->rec[i];
    for (int i = 0; i < 20; i++) {
        snprintf(data, sizeof data, "m%d", i);
        assert_string_equal(rec_data(all[i]), data);
        assert_true(all[i][0] >= '1' && all[i][0] <= '9'); /* an id */
        for (int j = 0; j < i; j++)
            assert_true(strncmp(all[i], all[j], strcspn(all[i], "|") + 1) != 0);
    }

    /* A plain PUBLISH is not in the history: live, without id. */
    plain_publish("r", "[\"plain\"]");
    wait_events(f, b, 17);
    assert_string_equal(b->rec[16], "||plain");
    /* And the history goes on with ids. */
    publish(f, "r", NULL, "m20");
    wait_events(f, b, 18);
    assert_string_equal(rec_data(b->rec[17]), "m20");
    assert_true(b->rec[17][0] != '|');
    tt_run_for(f->base, 50);
    assert_int_equal(b->events, 18);
    client_free(a);
    client_free(b);
}

/* A Last-Event-ID older than what the history keeps: a comment says so,
 * then what remains comes. */
static void test_resume_truncated(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.history = true});
    make_publisher(f, 100);
    publish(f, "t", NULL, "first");
    /* Exact trimming to 3 entries, as MAXLEN ~ does over time. */
    publish_n(f, "t", 0, 5);
    assert_true(tt_redis_int(&g_redis, "XTRIM {t}:history MAXLEN 3") >= 0);
    client *c = client_stream(f, "/sub/t", "Last-Event-ID: 1-0\r\n");
    wait_events(f, c, 3);
    assert_non_null(strstr(c->body, "retry: 2000\n\n: history truncated\n\nid: "));
    assert_string_equal(rec_data(c->rec[0]), "m2");
    assert_string_equal(rec_data(c->rec[2]), "m4");
    /* An id from the future: nothing old, live from now. */
    client *d = client_stream(f, "/sub/t", "Last-Event-ID: 99999999999999-0\r\n");
    tt_run_for(f->base, 100);
    assert_int_equal(d->events, 0);
    client_free(c);
    client_free(d);
}

/* Resume and live events of several clients at once, with end. */
static void test_resume_end(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.history = true});
    make_publisher(f, 100);
    client *live = client_stream(f, "/sub/e", NULL);
    wait_numsub(f, "e", 1);
    publish_n(f, "e", 0, 3);
    wait_events(f, live, 3);
    char first_id[64];
    snprintf(first_id, sizeof first_id, "%.*s", (int)strcspn(live->rec[0], "|"), live->rec[0]);
    f->published = 0;
    assert_int_equal(tempest_publish_end(f->pub, "e", on_published, f), 0);
    assert_true(tt_run_until(f->base, client_ended, live, WAIT_MS));
    assert_non_null(strstr(live->body, "event: end\ndata: \n\n"));
    /* A late client resuming from the first message gets the rest and the end. */
    char extra[128];
    snprintf(extra, sizeof extra, "Last-Event-ID: %s\r\n", first_id);
    client *late = client_open(f, "/sub/e", 1, extra);
    assert_true(tt_run_until(f->base, client_ended, late, WAIT_MS));
    assert_int_equal(late->events, 3);
    assert_string_equal(rec_data(late->rec[0]), "m1");
    assert_string_equal(rec_data(late->rec[1]), "m2");
    assert_non_null(strstr(late->rec[2], "|end|"));
    assert_true(tt_run_until(f->base, no_streams, f, WAIT_MS));
    client_free(live);
    client_free(late);
}

/* Clients resume while messages keep coming and the channel is busy: each
 * gets every message after its Last-Event-ID exactly once, in order. */
static void test_resume_concurrent(void **state) {
    fx *f = *state;
    enum { FIRST = 10, TOTAL = 60, RESUMERS = 5 };
    start_front(f, &(tempest_front_options){.history = true});
    make_publisher(f, 1000);
    client *live = client_stream(f, "/sub/busy", NULL);
    wait_numsub(f, "busy", 1);
    publish_n(f, "busy", 0, FIRST);
    wait_events(f, live, FIRST);
    client *r[RESUMERS];
    int from[RESUMERS];
    char data[32], extra[128];
    for (int k = 0, i = FIRST; k < RESUMERS; k++) {
        from[k] = 2 * k;
        snprintf(extra, sizeof extra, "Last-Event-ID: %.*s\r\n",
                 (int)strcspn(live->rec[from[k]], "|"), live->rec[from[k]]);
        r[k] = client_open(f, "/sub/busy", 1, extra);
        /* Publications interleaved with the resuming requests. */
        for (int j = 0; j < (TOTAL - FIRST) / RESUMERS; j++, i++) {
            snprintf(data, sizeof data, "m%d", i);
            assert_int_equal(tempest_publish(f->pub, "busy", NULL, data, NULL, NULL), 0);
            if (j % 3 == 0)
                tt_run_for(f->base, 1);
        }
    }
    wait_events(f, live, TOTAL);
    for (int k = 0; k < RESUMERS; k++)
        wait_events(f, r[k], TOTAL - from[k] - 1);
    tt_run_for(f->base, 100);
    assert_int_equal(live->events, TOTAL);
    for (int k = 0; k < RESUMERS; k++) {
        assert_int_equal(r[k]->events, TOTAL - from[k] - 1);
        for (int i = 0; i < r[k]->nrec; i++) {
            snprintf(data, sizeof data, "m%d", from[k] + 1 + i);
            assert_string_equal(rec_data(r[k]->rec[i]), data);
            /* the same id as the live client saw */
            assert_int_equal(strcmp(r[k]->rec[i], live->rec[from[k] + 1 + i]), 0);
        }
        client_free(r[k]);
    }
    client_free(live);
}

/* What the publish script does, from a synchronous connection. */
static void script_publish(const char *channel, const char *payload) {
    redisContext *c = redisConnect("127.0.0.1", g_redis.port);
    assert_non_null(c);
    redisReply *r =
        redisCommand(c, "EVAL %s 1 {%s}:history %s %s 1000",
                     "redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[2]) "
                     "return redis.call('PUBLISH', ARGV[1], ARGV[2])",
                     channel, channel, payload);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    redisFree(c);
}

static bool client_connected(void *arg) {
    return ((client *)arg)->connected;
}

/* A resume request and a publication reach the front at the same moment,
 * over and over: whichever the front sees first, the client gets the
 * message once. */
static void test_resume_race(void **state) {
    fx *f = *state;
    enum { TRIALS = 30 };
    start_front(f, &(tempest_front_options){.history = true});
    make_publisher(f, 1000);
    client *live = client_stream(f, "/sub/race", NULL);
    wait_numsub(f, "race", 1);
    publish(f, "race", NULL, "start");
    wait_events(f, live, 1);
    char data[32], extra[128];
    for (int t = 0; t < TRIALS; t++) {
        client *c = client_connect(f);
        assert_true(tt_run_until(f->base, client_connected, c, WAIT_MS));
        tt_run_for(f->base, 2);
        const char *last = live->rec[live->nrec - 1];
        snprintf(extra, sizeof extra, "Last-Event-ID: %.*s\r\n", (int)strcspn(last, "|"), last);
        snprintf(data, sizeof data, "[\"r%d\"]", t);
        if (t % 2)
            script_publish("race", data); /* the notification waits first */
        client_request(c, "/sub/race", 1, extra);
        evbuffer_write(bufferevent_get_output(c->bev), bufferevent_getfd(c->bev));
        if (t % 2 == 0)
            script_publish("race", data);
        wait_events(f, live, t + 2);
        wait_events(f, c, 1);
        tt_run_for(f->base, 5);
        assert_int_equal(c->events, 1);
        snprintf(data, sizeof data, "r%d", t);
        assert_string_equal(rec_data(c->rec[0]), data);
        assert_string_equal(c->rec[0], live->rec[t + 1]);
        client_free(c);
    }
    client_free(live);
}

static bool one_stream(void *arg) {
    return streams_are(arg, 1);
}

/* The first stream of a fresh node: the node's subscribe connection is
 * still connecting when the history is read. A message published in that
 * moment reaches neither the catch-up nor the subscription, and comes all
 * the same. */
static void test_resume_first_subscription(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.history = true});
    script_publish("fresh", "[\"before\"]");
    client *c = client_open(f, "/sub/fresh", 1, "Last-Event-ID: 1-0\r\n");
    assert_true(tt_run_until(f->base, one_stream, f, WAIT_MS));
    tt_run_for(f->base, 1); /* the catch-up XRANGE runs now */
    script_publish("fresh", "[\"during\"]");
    wait_events(f, c, 2);
    assert_string_equal(rec_data(c->rec[0]), "before");
    assert_string_equal(rec_data(c->rec[1]), "during");
    assert_true(c->rec[1][0] != '|');
    tt_run_for(f->base, 50);
    assert_int_equal(c->events, 2);
    client_free(c);
}

/* An entry whose notification never came (published before the
 * subscription took effect) is read from the history a moment later. */
static void test_missed_notification(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.history = true});
    make_publisher(f, 100);
    client *c = client_stream(f, "/sub/w", NULL);
    wait_numsub(f, "w", 1);
    tt_run_for(f->base, 20);
    redisContext *rc = redisConnect("127.0.0.1", g_redis.port);
    assert_non_null(rc);
    redisReply *r = redisCommand(rc, "XADD {w}:history * m %s", "[\"lost\"]");
    assert_true(r && r->type == REDIS_REPLY_STRING);
    freeReplyObject(r);
    redisFree(rc);
    long long t0 = tt_now_ms();
    wait_events(f, c, 1);
    assert_true(tt_now_ms() - t0 < 2000);
    assert_string_equal(rec_data(c->rec[0]), "lost");
    assert_true(c->rec[0][0] != '|');
    publish(f, "w", NULL, "next");
    wait_events(f, c, 2);
    assert_string_equal(rec_data(c->rec[1]), "next");
    tt_run_for(f->base, 50);
    assert_int_equal(c->events, 2);
    client_free(c);
}

/* The front freed while streams are open and a catch-up is in flight. */
static void test_free_with_streams(void **state) {
    fx *f = *state;
    start_front(f, &(tempest_front_options){.history = true});
    make_publisher(f, 10);
    publish_n(f, "x", 0, 3);
    client *a = client_stream(f, "/sub/x", NULL);
    client *b = client_open(f, "/sub/x", 1, "Last-Event-ID: 0-1\r\n");
    client *c = client_open(f, "/sub/y", 1, NULL);
    tt_run_for(f->base, 1); /* requests arrive; replies may be in flight */
    tempest_front_free(f->front);
    f->front = NULL;
    tt_run_for(f->base, 50);
    client_free(a);
    client_free(b);
    client_free(c);
}

/* ---- allocation failure in turn ------------------------------------------- */

typedef struct pair {
    client *a, *b;
} pair;

static bool pair_answered(void *arg) {
    pair *p = arg;
    return (p->a->status && p->a->len >= 13) || p->a->eof ||
           ((p->b->status && p->b->len >= 13) || p->b->eof);
}

static bool pair_ended(void *arg) {
    pair *p = arg;
    return (p->a->ended || p->a->eof || p->a->status != 200) &&
           (p->b->ended || p->b->eof || p->b->status != 200);
}

/* One run: a history front, a live and a resuming stream, messages, the
 * end; the `at`th allocation of the library (and jansson) fails. */
static bool node_subscribed(void *arg) {
    return tempest_node_subscriptions(arg) >= 1;
}

static void chaos_run(fx *f, long at) {
    tempest_node_options no = {.redis_url = g_redis.url, .log = on_log};
    f->node = tempest_node_new(f->base, &no, NULL);
    assert_non_null(f->node);
    assert_true(tt_run_until(f->base, tt_node_up, f->node, WAIT_MS));
    make_publisher(f, 10);
    tt_chaos_on(at);
    tempest_front_options fo = {.http = "127.0.0.1:0", .history = true};
    f->front = tempest_front_new(f->node, &fo, NULL);
    if (f->front) {
        f->port = tempest_front_port(f->front);
        pair p = {client_open(f, "/sub/c", 1, NULL),
                  client_open(f, "/sub/c", 1, "Last-Event-ID: 0-1\r\n")};
        tt_run_until(f->base, pair_answered, &p, 1000);
        /* headers go out before Redis confirms the SUBSCRIBE: wait for it,
         * since a plain PUBLISH before that reaches nobody */
        tt_run_until(f->base, node_subscribed, f->node, 1000);
        tt_run_for(f->base, 5);
        (void)tempest_publish(f->pub, "c", NULL, "one", NULL, NULL);
        plain_publish("c", "[\"two\"]");
        tt_run_for(f->base, 5);
        (void)tempest_publish_end(f->pub, "c", NULL, NULL);
        tt_run_until(f->base, pair_ended, &p, 1000);
        if (!tt_chaos_failed()) {
            assert_true(p.a->ended && p.b->ended);
            assert_string_equal(p.a->rec[p.a->nrec - 1], p.b->rec[p.b->nrec - 1]);
            assert_int_equal(p.a->events, 3);
        }
        client_free(p.a);
        client_free(p.b);
    }
    tt_chaos_off();
}

static void test_allocation_failures(void **state) {
    fx *f = *state;
    long n;
    for (n = 1; n < 2000; n++) {
        tt_redis_int(&g_redis, "DEL {c}:history");
        chaos_run(f, n);
        tempest_publisher_free(f->pub);
        tempest_front_free(f->front);
        tempest_node_free(f->node);
        f->pub = NULL;
        f->front = NULL;
        f->node = NULL;
        if (!tt_chaos_failed())
            break;
    }
    print_message("sse: %ld allocations failed in turn, all handled\n", n - 1);
    assert_true(n > 20);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_wire_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thousand_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leave_one_channel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quiet_stream_and_io_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_client_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cors_and_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_first_subscription, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missed_notification, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interrupted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocation_failures, setup, teardown),
    };
    tt_group_redis(&g_redis);
    return cmocka_run_group_tests_name("sse", tests, group_setup, tt_group_teardown);
}
