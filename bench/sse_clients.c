/* SPDX-License-Identifier: MIT */
/*
 * Server-Sent Events load for bench/run. Opens N streams on a front's
 * `/sub/<channel>` (at most CONNECTING at a time, so that the front's listen
 * backlog never overflows), reads the chunked HTTP response and the
 * `text/event-stream` in it with a small parser of its own, and prints
 * `ready streams=N` once every stream is open. Without --redis it then holds
 * the streams until SIGINT, SIGTERM or --seconds (default 60) pass. With
 * --redis it is also the publisher: it publishes M messages with plain
 * synchronous hiredis, as any Tempest peer does (`PUBLISH <channel>
 * ["<ns>"]`, the data being the CLOCK_MONOTONIC time of the send in ns), at
 * --rate messages/s or, without a rate, as fast as the streams take them (at
 * most --window messages, default 32, ahead of the average stream), then
 * `["$unsubscribe"]`, which ends every stream. At the end it prints one line:
 *
 *   sse streams=N published=M delivered=D per_s=R p50_us=X p99_us=Y
 *       lost=L closed=C bad=B
 *
 * A delivery is one message parsed on one stream; per_s counts them from the
 * first publish to the last delivery, and the latency runs from just before
 * the PUBLISH to the blank line that ends the event. lost: deliveries that
 * did not come (M * N - D), closed: streams that ended without the `end`
 * event, bad: events whose data was not a time stamp. The publisher shares
 * the loop: at most one pipelined batch (one blocking round trip) per tick of
 * TICK_US. Exits 1 when a stream cannot be opened (the line is not printed).
 *
 *   sse_clients --port P [--channel NAME] [--streams N] [--seconds S]
 *               [--redis URL --messages M [--rate R | --window W]]
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CONNECTING 64 /* connections opening at once */
#define LINE_CAP 128  /* longer lines are cut: every line the figures need is short */
#define TICK_US 1000
#define BATCH 256 /* most publishes in one pipelined round trip */
#define SUB_BUCKETS 64
#define BUCKETS (128 + 40 * SUB_BUCKETS)

enum state {
    S_CONNECTING,
    S_STATUS,   /* the status line */
    S_HEADERS,  /* header lines up to the blank one */
    S_SIZE,     /* a chunk size line */
    S_DATA,     /* chunk data: event-stream bytes */
    S_DATA_END, /* the CRLF after chunk data */
    S_BODY,     /* not chunked: the rest is the event stream */
    S_DONE,
};

typedef struct bench bench;

typedef struct conn {
    bench *b;
    struct event *ev;
    evutil_socket_t fd;
    enum state state;
    bool chunked;
    size_t left; /* bytes left in the current chunk */
    size_t hlen; /* HTTP framing line */
    char http[LINE_CAP];
    /* the event stream: the line so far, and the event being built */
    bool after_cr, cut, has_data, is_end, bad_data;
    size_t slen;
    uint64_t sent_ns;
    char sse[LINE_CAP];
} conn;

struct bench {
    struct event_base *base;
    struct sockaddr_in addr;
    char request[600];
    conn *conns;
    int n, started, open, done, closed;
    int seconds; /* the run's limit from `ready` */
    bool failed;
    /* publishing */
    redisContext *redis;
    const char *channel;
    long messages, published, window;
    double rate;
    bool ended;
    uint64_t t0_ns, last_ns;
    unsigned long long delivered, bad;
    unsigned long long hist[BUCKETS]; /* latency in us, log-linear */
    struct event *tick, *deadline, *sigint, *sigterm;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- latency histogram: exact below 128 us, then 64 buckets per power of
 * two (1.6% resolution) ---------------------------------------------------- */

static size_t bucket_of(uint64_t us) {
    if (us < 128)
        return (size_t)us;
    int e = 63 - __builtin_clzll(us);
    size_t i = 128 + (size_t)(e - 7) * SUB_BUCKETS + ((us >> (e - 6)) & (SUB_BUCKETS - 1));
    return i < BUCKETS ? i : BUCKETS - 1;
}

/* The middle of bucket `i`, in us. */
static double bucket_value(size_t i) {
    if (i < 128)
        return (double)i;
    size_t e = 7 + (i - 128) / SUB_BUCKETS, sub = (i - 128) % SUB_BUCKETS;
    double low = (double)((SUB_BUCKETS + sub) << (e - 6));
    return low + (double)(1u << (e - 6)) / 2;
}

static double percentile(const bench *b, double p) {
    unsigned long long rank = (unsigned long long)(p * (double)b->delivered), seen = 0;
    for (size_t i = 0; i < BUCKETS; i++) {
        seen += b->hist[i];
        if (seen > rank)
            return bucket_value(i);
    }
    return 0;
}

/* ---- the event stream ------------------------------------------------ */

static void conn_finish(conn *c, bool ended);

static void record(conn *c) {
    bench *b = c->b;
    uint64_t t = now_ns();
    if (c->bad_data || c->sent_ns == 0 || c->sent_ns > t) {
        b->bad++;
        return;
    }
    b->hist[bucket_of((t - c->sent_ns) / 1000)]++;
    b->delivered++;
    b->last_ns = t;
}

/* One complete line (no end): a field, a comment, or the blank line that
 * dispatches the event. */
static void sse_line(conn *c, const char *s, size_t len) {
    if (len == 0) {
        if (c->is_end)
            conn_finish(c, true);
        else if (c->has_data)
            record(c);
        c->has_data = c->is_end = c->bad_data = false;
        c->sent_ns = 0;
        return;
    }
    const char *colon = memchr(s, ':', len);
    size_t nlen = colon ? (size_t)(colon - s) : len;
    const char *v = colon ? colon + 1 : s + len;
    if (v < s + len && *v == ' ')
        v++;
    size_t vlen = (size_t)(s + len - v);
    if (nlen == 4 && memcmp(s, "data", 4) == 0 && !c->has_data) {
        char *end;
        c->has_data = true;
        c->sent_ns = strtoull(v, &end, 10);
        c->bad_data = c->cut || vlen == 0 || end != s + len;
    } else if (nlen == 5 && memcmp(s, "event", 5) == 0) {
        c->is_end = vlen == 3 && memcmp(v, "end", 3) == 0;
    }
}

/* Event-stream bytes: lines end with LF, CRLF or CR, also when a read (or a
 * chunk) splits the CRLF. */
static void sse_bytes(conn *c, const char *p, size_t n) {
    for (size_t i = 0; i < n && c->state != S_DONE; i++) {
        char ch = p[i];
        if (c->after_cr && ch == '\n') {
            c->after_cr = false;
            continue;
        }
        c->after_cr = ch == '\r';
        if (ch == '\r' || ch == '\n') {
            c->sse[c->slen] = '\0';
            sse_line(c, c->sse, c->slen);
            c->slen = 0;
            c->cut = false;
        } else if (c->slen < LINE_CAP - 1) {
            c->sse[c->slen++] = ch;
        } else {
            c->cut = true;
        }
    }
}

/* ---- HTTP framing ---------------------------------------------------- */

static void conn_open(conn *c);

static void http_header(conn *c, const char *s) {
    static const char te[] = "transfer-encoding:";
    if (strncasecmp(s, te, sizeof te - 1) == 0 && strstr(s, "chunked"))
        c->chunked = true;
}

/* One complete framing line, CR removed. */
static void http_line(conn *c, const char *s, size_t len) {
    switch (c->state) {
    case S_STATUS:
        if (len < 12 || strncmp(s, "HTTP/1.", 7) != 0 || strncmp(s + 8, " 200", 4) != 0) {
            fprintf(stderr, "sse_clients: %s\n", s);
            c->b->failed = true;
            event_base_loopbreak(c->b->base);
        }
        c->state = S_HEADERS;
        break;
    case S_HEADERS:
        if (len > 0)
            http_header(c, s);
        else
            conn_open(c);
        break;
    case S_SIZE:
        c->left = strtoul(s, NULL, 16);
        c->state = c->left ? S_DATA : S_DONE;
        if (c->left == 0)
            conn_finish(c, false); /* the response ended without `end` */
        break;
    default: /* S_DATA_END */
        c->state = S_SIZE;
    }
}

/* Bytes up to a LF go to the framing line; returns how many were used. */
static size_t http_bytes(conn *c, const char *p, size_t n) {
    const char *lf = memchr(p, '\n', n);
    size_t take = lf ? (size_t)(lf - p) : n;
    size_t room = LINE_CAP - 1 - c->hlen;
    memcpy(c->http + c->hlen, p, take < room ? take : room);
    c->hlen += take < room ? take : room;
    if (lf == NULL)
        return n;
    if (c->hlen > 0 && c->http[c->hlen - 1] == '\r')
        c->hlen--;
    c->http[c->hlen] = '\0';
    c->hlen = 0;
    http_line(c, c->http, strlen(c->http));
    return take + 1;
}

static void feed(conn *c, const char *p, size_t n) {
    while (n > 0 && c->state != S_DONE && !c->b->failed) {
        size_t k = n;
        if (c->state == S_DATA) {
            k = n < c->left ? n : c->left;
            sse_bytes(c, p, k);
            if ((c->left -= k) == 0 && c->state == S_DATA)
                c->state = S_DATA_END;
        } else if (c->state == S_BODY) {
            sse_bytes(c, p, n);
        } else {
            k = http_bytes(c, p, n);
        }
        p += k;
        n -= k;
    }
}

/* ---- connections ------------------------------------------------------- */

static void conn_start(bench *b);
static void all_open(bench *b);

static void conn_finish(conn *c, bool ended) {
    bench *b = c->b;
    if (c->state == S_CONNECTING || c->state == S_STATUS || c->state == S_HEADERS) {
        fprintf(stderr, "sse_clients: a stream closed before it opened\n");
        b->failed = true;
        event_base_loopbreak(b->base);
    }
    c->state = S_DONE;
    event_free(c->ev);
    c->ev = NULL;
    close(c->fd);
    if (!ended)
        b->closed++;
    if (++b->done == b->n)
        event_base_loopbreak(b->base);
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    static char buf[1 << 16];
    conn *c = arg;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0)
        feed(c, buf, (size_t)n);
    else if (n == 0 || (errno != EAGAIN && errno != EINTR))
        conn_finish(c, false);
}

static void on_connected(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    conn *c = arg;
    bench *b = c->b;
    int err = 0;
    socklen_t len = sizeof err;
    size_t rlen = strlen(b->request);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0 ||
        send(fd, b->request, rlen, MSG_NOSIGNAL) != (ssize_t)rlen) {
        fprintf(stderr, "sse_clients: connect: %s\n", strerror(err ? err : errno));
        b->failed = true;
        event_base_loopbreak(b->base);
        return;
    }
    c->state = S_STATUS;
    event_assign(c->ev, b->base, fd, EV_READ | EV_PERSIST, on_read, c);
    event_add(c->ev, NULL);
}

static void conn_start(bench *b) {
    conn *c = &b->conns[b->started++];
    c->b = b;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || (connect(c->fd, (struct sockaddr *)&b->addr, sizeof b->addr) != 0 &&
                      errno != EINPROGRESS)) {
        fprintf(stderr, "sse_clients: stream %d: %s\n", b->started, strerror(errno));
        b->failed = true;
        event_base_loopbreak(b->base);
        return;
    }
    c->ev = event_new(b->base, c->fd, EV_WRITE, on_connected, c);
    event_add(c->ev, NULL);
}

/* The response headers are in: events follow. */
static void conn_open(conn *c) {
    bench *b = c->b;
    c->state = c->chunked ? S_SIZE : S_BODY;
    if (b->started < b->n)
        conn_start(b);
    if (++b->open == b->n)
        all_open(b);
}

/* ---- publishing -------------------------------------------------------- */

/* Waits until the front's subscription to the channel is in Redis. */
static int wait_subscribed(bench *b) {
    for (int i = 0; i < 500; i++) {
        redisReply *r = redisCommand(b->redis, "PUBSUB NUMSUB %s", b->channel);
        bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                  r->element[1]->type == REDIS_REPLY_INTEGER && r->element[1]->integer > 0;
        freeReplyObject(r);
        if (ok)
            return 0;
        usleep(10000);
    }
    return -1;
}

/* How many messages should have been published by now. */
static long publish_target(const bench *b) {
    long t;
    if (b->rate > 0)
        t = (long)((double)(now_ns() - b->t0_ns) / 1e9 * b->rate) + 1;
    else if (b->closed < b->n)
        t = (long)(b->delivered / (unsigned long long)(b->n - b->closed)) + b->window;
    else
        t = b->messages;
    return t < b->messages ? t : b->messages;
}

static int publish_batch(bench *b, long count) {
    for (long i = 0; i < count; i++) {
        char payload[48];
        snprintf(payload, sizeof payload, "[\"%llu\"]", (unsigned long long)now_ns());
        redisAppendCommand(b->redis, "PUBLISH %s %s", b->channel, payload);
    }
    for (long i = 0; i < count; i++) {
        redisReply *r;
        if (redisGetReply(b->redis, (void **)&r) != REDIS_OK)
            return -1;
        freeReplyObject(r);
    }
    b->published += count;
    return 0;
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    bench *b = arg;
    long count = publish_target(b) - b->published;
    if (count > BATCH)
        count = BATCH;
    if (count > 0 && publish_batch(b, count) != 0) {
        fprintf(stderr, "sse_clients: redis: %s\n", b->redis->errstr);
        b->failed = true;
        event_base_loopbreak(b->base);
        return;
    }
    if (b->published == b->messages && !b->ended) {
        redisReply *r = redisCommand(b->redis, "PUBLISH %s %s", b->channel, "[\"$unsubscribe\"]");
        freeReplyObject(r);
        b->ended = true;
        event_del(b->tick);
    }
}

static void all_open(bench *b) {
    printf("ready streams=%d\n", b->n);
    fflush(stdout);
    struct timeval limit = {b->seconds, 0}, tick = {0, TICK_US};
    evtimer_add(b->deadline, &limit);
    if (b->redis == NULL)
        return;
    if (wait_subscribed(b) != 0) {
        fprintf(stderr, "sse_clients: the front did not subscribe to '%s'\n", b->channel);
        b->failed = true;
        event_base_loopbreak(b->base);
        return;
    }
    b->t0_ns = now_ns();
    evtimer_add(b->tick, &tick);
}

/* ---- the run ------------------------------------------------------------ */

static void on_stop(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    event_base_loopbreak(((bench *)arg)->base);
}

static void report(const bench *b) {
    double secs = b->last_ns > b->t0_ns ? (double)(b->last_ns - b->t0_ns) / 1e9 : 0;
    long long lost = b->redis ? (long long)b->published * b->n - (long long)b->delivered : 0;
    printf("sse streams=%d published=%ld delivered=%llu per_s=%.0f p50_us=%.0f p99_us=%.0f "
           "lost=%lld closed=%d bad=%llu\n",
           b->n, b->published, b->delivered, secs > 0 ? (double)b->delivered / secs : 0,
           percentile(b, 0.50), percentile(b, 0.99), lost, b->closed, b->bad);
}

/* Enough descriptors for the streams, up to the hard limit. */
static void raise_nofile(int streams) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)streams + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void usage(void) {
    fprintf(stderr, "usage: sse_clients --port P [--channel NAME] [--streams N] [--seconds S]"
                    " [--redis URL --messages M [--rate R | --window W]]\n");
    exit(2);
}

static const char *parse(int argc, char **argv, bench *b, int *port) {
    static const struct option o[] = {
        {"port", 1, 0, 'p'},   {"channel", 1, 0, 'c'},  {"streams", 1, 0, 'n'},
        {"redis", 1, 0, 'r'},  {"messages", 1, 0, 'm'}, {"rate", 1, 0, 'R'},
        {"window", 1, 0, 'w'}, {"seconds", 1, 0, 's'},  {0, 0, 0, 0}};
    const char *url = NULL;
    for (int c; (c = getopt_long(argc, argv, "", o, NULL)) != -1;) {
        if (c == 'p')
            *port = atoi(optarg);
        else if (c == 'c')
            b->channel = optarg;
        else if (c == 'n')
            b->n = atoi(optarg);
        else if (c == 'r')
            url = optarg;
        else if (c == 'm')
            b->messages = atol(optarg);
        else if (c == 'R')
            b->rate = atof(optarg);
        else if (c == 'w')
            b->window = atol(optarg);
        else if (c == 's')
            b->seconds = atoi(optarg);
        else
            usage();
    }
    if (*port <= 0 || *port > 65535 || b->n <= 0 || optind != argc || b->window <= 0 ||
        (url && b->messages <= 0) || b->seconds <= 0)
        usage();
    return url;
}

static int connect_redis(bench *b, const char *url) {
    char host[64];
    int port;
    if (sscanf(url, "redis://%63[^:]:%d", host, &port) != 2)
        usage();
    b->redis = redisConnectWithTimeout(host, port, (struct timeval){5, 0});
    if (b->redis == NULL || b->redis->err) {
        fprintf(stderr, "sse_clients: cannot reach %s\n", url);
        return -1;
    }
    return 0;
}

static int setup(bench *b, int port, const char *url) {
    b->addr = (struct sockaddr_in){.sin_family = AF_INET,
                                   .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    snprintf(b->request, sizeof b->request,
             "GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\n\r\n",
             b->channel, port);
    b->conns = calloc((size_t)b->n, sizeof *b->conns);
    b->base = event_base_new();
    if (b->conns == NULL || b->base == NULL || (url && connect_redis(b, url) != 0))
        return -1;
    b->tick = event_new(b->base, -1, EV_PERSIST, on_tick, b);
    b->deadline = evtimer_new(b->base, on_stop, b);
    b->sigint = evsignal_new(b->base, SIGINT, on_stop, b);
    b->sigterm = evsignal_new(b->base, SIGTERM, on_stop, b);
    evsignal_add(b->sigint, NULL);
    evsignal_add(b->sigterm, NULL);
    return 0;
}

static void teardown(bench *b) {
    for (int i = 0; b->conns && i < b->started; i++) {
        if (b->conns[i].ev) {
            event_free(b->conns[i].ev);
            close(b->conns[i].fd);
        }
    }
    free(b->conns);
    struct event *evs[] = {b->tick, b->deadline, b->sigint, b->sigterm};
    for (size_t i = 0; i < sizeof evs / sizeof *evs; i++)
        if (evs[i])
            event_free(evs[i]);
    if (b->base)
        event_base_free(b->base);
    redisFree(b->redis);
}

int main(int argc, char **argv) {
    bench b = {.channel = "bench", .n = 1000, .window = 32, .seconds = 60};
    int port = 0;
    const char *url = parse(argc, argv, &b, &port);
    raise_nofile(b.n);
    int rc = 1;
    if (setup(&b, port, url) != 0)
        goto done;
    for (int i = 0; i < CONNECTING && b.started < b.n; i++)
        conn_start(&b);
    event_base_dispatch(b.base);
    if (!b.failed)
        report(&b);
    rc = b.failed ? 1 : 0;
done:
    teardown(&b);
    return rc;
}
