/* SPDX-License-Identifier: MIT */
/*
 * Requester and responder against a private redis-server: the listener's
 * deferred replies (order kept per connection, orphaned slots), round-robin
 * over three responders, a responder that joins, one killed with SIGKILL in
 * a child process, requests queued before any responder exists (and those
 * that time out first, never delivered later), pipelining 10,000 requests
 * over one connection, errors, direct calls, redis-cli, shutdown with
 * requests pending, and handles freed from their own callbacks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_proc.h"
#include "tt_node.h"
#include "listener.h"
#include "node.h"
#include "redis.h"

#define LIT(s) (s), (sizeof(s) - 1)

/* ---- deferred replies in the listener (no Redis) ---------------------- */

typedef struct slots {
    tp_reply_slot *held[8];
    int n;
} slots;

/* "slow" defers its reply; every other command answers +OK at once. */
static void defer_command(void *arg, int argc, const char **argv, const size_t *lens,
                          struct evbuffer *out) {
    (void)argc, (void)lens;
    slots *s = arg;
    if (strcmp(argv[0], "slow") == 0) {
        assert_null(tp_listener_defer(NULL));
        s->held[s->n] = tp_listener_defer(out);
        assert_non_null(s->held[s->n]);
        assert_null(tp_listener_defer(out)); /* once per command */
        s->n++;
    } else if (strcmp(argv[0], "now") == 0) {
        tp_reply_slot *slot = tp_listener_defer(out);
        tp_slot_reply_bulk(slot, LIT("now"));
    } else {
        tp_resp_status(out, "OK");
    }
}

static void assert_out(struct evbuffer *out, const char *expect) {
    size_t n = evbuffer_get_length(out);
    const char *got = (const char *)evbuffer_pullup(out, -1);
    if (n != strlen(expect) || (n > 0 && memcmp(got, expect, n) != 0)) {
        print_error("got: %.*s\nexpected: %s\n", (int)n, got ? got : "", expect);
        fail();
    }
}

static void test_deferred_order(void **state) {
    (void)state;
    slots sl = {0};
    struct evbuffer *out = evbuffer_new();
    tp_session *s = tp_session_new(NULL, defer_command, &sl);
    assert_null(tp_listener_defer(out)); /* outside a command */
    static const char in[] = "*1\r\n$4\r\nslow\r\n*1\r\n$4\r\nfast\r\nslow\r\nPING\r\nnow\r\n";
    assert_int_equal(tp_session_feed(s, LIT(in), out), 0);
    assert_int_equal(sl.n, 2);
    assert_int_equal(tp_session_deferred(s), 2);
    assert_out(out, ""); /* all held behind the first slow one */
    assert_true(tp_slot_alive(sl.held[1]));
    tp_slot_reply_error(sl.held[1], "ERR second\r\nline");
    assert_out(out, "");
    tp_slot_reply_bulk(sl.held[0], LIT("first"));
    assert_out(out, "$5\r\nfirst\r\n+OK\r\n-ERR second  line\r\n+PONG\r\n$3\r\nnow\r\n");
    assert_int_equal(tp_session_deferred(s), 0);
    evbuffer_drain(out, evbuffer_get_length(out));
    /* nothing pending: straight through again */
    assert_int_equal(tp_session_feed(s, LIT("fast\r\nnow\r\n"), out), 0);
    assert_out(out, "+OK\r\n$3\r\nnow\r\n");
    evbuffer_drain(out, evbuffer_get_length(out));
    /* a protocol error behind a pending slot waits its turn too */
    sl.n = 0;
    assert_int_equal(tp_session_feed(s, LIT("slow\r\n$3\r\n"), out), -1);
    assert_out(out, "");
    tp_slot_reply_bulk(sl.held[0], LIT("x"));
    assert_out(out, "$1\r\nx\r\n-ERR Protocol error: expected '*', got '$'\r\n");
    tp_session_free(s);
    evbuffer_free(out);
}

static void test_deferred_orphan(void **state) {
    (void)state;
    slots sl = {0};
    struct evbuffer *out = evbuffer_new();
    tp_session *s = tp_session_new(NULL, defer_command, &sl);
    assert_int_equal(tp_session_feed(s, LIT("slow\r\nslow\r\nfast\r\n"), out), 0);
    tp_slot_reply_bulk(sl.held[1], LIT("b"));
    tp_session_free(s); /* held replies freed; the first slot is an orphan */
    assert_false(tp_slot_alive(sl.held[0]));
    tp_slot_reply_bulk(sl.held[0], LIT("a")); /* only frees */
    assert_out(out, "");
    tp_slot_reply_bulk(NULL, LIT("x"));
    tp_slot_reply_error(NULL, "x");
    assert_false(tp_slot_alive(NULL));
    evbuffer_free(out);
}

/* ---- fixture ----------------------------------------------------------- */

typedef tt_node_fixture fixture; /* its node is the requesters' */

static tempest_node *new_node(fixture *f) {
    tempest_node *n =
        tempest_node_new(f->base, &(tempest_node_options){.redis_url = f->redis.url}, NULL);
    assert_non_null(n);
    assert_true(tt_run_until(f->base, tt_node_up, n, 3000));
    return n;
}

static int setup(void **state) {
    return tt_node_setup(state, (tempest_node_options){0}, tt_node_up);
}

/* ---- responders -------------------------------------------------------- */

typedef struct server {
    tempest_node *node;
    tempest_responder *r;
    int index;
    int served;
    int delay_ms; /* "slow": reply after this long */
    int held;     /* slow requests not yet answered */
    bool free_in_handler;
} server;

/* echo: {"i": body.i, "by": index}. */
static void echo(tempest_responder *r, tempest_request *req, void *arg) {
    (void)r;
    server *s = arg;
    s->served++;
    json_t *i = json_object_get(tempest_request_body(req), "i");
    json_t *reply = json_pack("{sOsi}", "i", i ? i : json_null(), "by", s->index);
    assert_int_equal(tempest_request_reply(req, reply), 0);
    json_decref(reply);
}

static void fail_handler(tempest_responder *r, tempest_request *req, void *arg) {
    (void)r, (void)arg;
    assert_string_equal(tempest_request_type(req), "fail");
    assert_int_equal(tempest_request_error(req, "NOT FOUND", "no such\nthing"), 0);
}

typedef struct later {
    server *s;
    tempest_request *req;
    struct event *ev;
} later;

static void on_later(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    later *l = arg;
    l->s->held--;
    json_t *reply = json_pack("{ss}", "slow", "done");
    tempest_request_reply(l->req, reply);
    json_decref(reply);
    event_free(l->ev);
    free(l);
}

/* slow: answers after delay_ms, from a timer. */
static void slow(tempest_responder *r, tempest_request *req, void *arg) {
    (void)r;
    server *s = arg;
    s->served++;
    s->held++;
    later *l = calloc(1, sizeof *l);
    l->s = s;
    l->req = req;
    l->ev = evtimer_new(tempest_node_base(s->node), on_later, l);
    struct timeval tv = {s->delay_ms / 1000, (s->delay_ms % 1000) * 1000};
    evtimer_add(l->ev, &tv);
}

/* hold: never answers by itself (the responder's free does). */
static void hold(tempest_responder *r, tempest_request *req, void *arg) {
    (void)req;
    server *s = arg;
    s->served++;
    s->held++;
    if (s->free_in_handler) {
        tempest_responder_free(r);
        s->r = NULL;
    }
}

static void start_server(fixture *f, server *s, const char *service, int index) {
    s->node = new_node(f);
    s->index = index;
    tempest_error err;
    s->r = tempest_responder_new(
        s->node,
        &(tempest_responder_options){.service = service, .heartbeat_ms = 200, .ttl_ms = 1000},
        &err);
    assert_non_null(s->r);
    assert_int_equal(tempest_responder_on(s->r, "echo", echo, s), 0);
    assert_int_equal(tempest_responder_on(s->r, "fail", fail_handler, s), 0);
    assert_int_equal(tempest_responder_on(s->r, "slow", slow, s), 0);
    assert_int_equal(tempest_responder_on(s->r, "hold", hold, s), 0);
}

static void stop_server(server *s) {
    tempest_responder_free(s->r);
    tempest_node_free(s->node);
    memset(s, 0, sizeof *s);
}

/* ---- requests ---------------------------------------------------------- */

typedef struct tally {
    int replies, ok, remote, timedout, down, canceled, other, mismatched;
    int by[4];
    long long max_late_ms; /* longest wait past its timeout */
    char last_error[200];
    int order[64]; /* i of the first replies, in arrival order */
} tally;

typedef struct ticket {
    tally *t;
    int i;
    long long deadline; /* sent + timeout */
} ticket;

static void on_reply(tempest_requester *rq, long long id, int status, json_t *reply, void *arg) {
    (void)rq, (void)id;
    ticket *k = arg;
    tally *t = k->t;
    if (t->replies < 64)
        t->order[t->replies] = k->i;
    t->replies++;
    long long late = tt_now_ms() - k->deadline;
    if (late > t->max_late_ms)
        t->max_late_ms = late;
    if (status == 0) {
        json_t *i = json_object_get(reply, "i");
        json_t *by = json_object_get(reply, "by");
        if (json_is_integer(i) && json_integer_value(i) != k->i)
            t->mismatched++;
        if (json_is_integer(by) && json_integer_value(by) >= 0 && json_integer_value(by) < 4)
            t->by[json_integer_value(by)]++;
        t->ok++;
    } else if (status == TEMPEST_EREMOTE) {
        assert_true(json_is_string(reply));
        snprintf(t->last_error, sizeof t->last_error, "%s", json_string_value(reply));
        t->remote++;
    } else if (status == TEMPEST_ETIMEDOUT) {
        t->timedout++;
    } else if (status == TEMPEST_EDOWN) {
        t->down++;
    } else if (status == TEMPEST_ECANCELED) {
        t->canceled++;
    } else {
        t->other++;
    }
    free(k);
}

static long long send_i(tempest_requester *rq, tally *t, const char *type, int i, int timeout_ms,
                        bool idempotent) {
    ticket *k = calloc(1, sizeof *k);
    k->t = t;
    k->i = i;
    k->deadline = tt_now_ms() + (timeout_ms ? timeout_ms : 5000);
    json_t *body = json_pack("{si}", "i", i);
    tempest_send_options o = {.timeout_ms = timeout_ms, .idempotent = idempotent};
    long long id = tempest_requester_send(rq, type, body, &o, on_reply, k);
    json_decref(body);
    if (id <= 0)
        free(k);
    return id;
}

static void wait_replies(fixture *f, tally *t, int n, int ms) {
    tt_count w = {&t->replies, n};
    assert_true(tt_run_until(f->base, tt_count_reached, &w, ms));
}

typedef struct live_wait {
    tempest_requester *rq;
    int n;
} live_wait;

static bool live_reach(void *arg) {
    live_wait *w = arg;
    return tempest_requester_live(w->rq) == w->n;
}

static void wait_live(fixture *f, tempest_requester *rq, int n) {
    live_wait w = {rq, n};
    assert_true(tt_run_until(f->base, live_reach, &w, 3000));
}

/* Peer events, counted. */
typedef struct peers {
    int joined, left, expired;
    long long expired_at;
} peers;

static void on_peer(tempest_requester *rq, int event, const char *address, void *arg) {
    (void)rq;
    peers *p = arg;
    assert_non_null(address);
    if (event == TEMPEST_PEER_JOINED)
        p->joined++;
    else if (event == TEMPEST_PEER_LEFT)
        p->left++;
    else if (event == TEMPEST_PEER_EXPIRED) {
        p->expired++;
        p->expired_at = tt_now_ms();
    }
}

static tempest_requester *new_requester(fixture *f, const char *service, peers *p, int timeout_ms) {
    tempest_requester_options o = {.service = service,
                                   .timeout_ms = timeout_ms,
                                   .refresh_ms = 200,
                                   .on_peer = p ? on_peer : NULL,
                                   .peer_arg = p};
    tempest_requester *rq = tempest_requester_new(f->node, &o, NULL);
    assert_non_null(rq);
    return rq;
}

/* Keeps `window` requests in flight until `total` were sent. */
typedef struct pump {
    tempest_requester *rq;
    tally *t;
    int sent, total, window;
} pump;

static void pump_fill(pump *p) {
    while (p->sent < p->total && p->sent - p->t->replies < p->window) {
        assert_true(send_i(p->rq, p->t, "echo", p->sent, 10000, false) > 0);
        p->sent++;
    }
}

static bool pump_done(void *arg) {
    pump *p = arg;
    pump_fill(p);
    return p->t->replies >= p->total;
}

/* ---- round-robin, join, pipelining ------------------------------------ */

static void test_round_robin(void **state) {
    fixture *f = *state;
    server s[3] = {0};
    peers pe = {0};
    for (int i = 0; i < 3; i++)
        start_server(f, &s[i], "rr", i);
    tempest_requester *rq = new_requester(f, "rr", &pe, 0);
    wait_live(f, rq, 3);
    assert_int_equal(pe.joined, 3);
    tally t = {0};
    pump p = {.rq = rq, .t = &t, .total = 3000, .window = 30};
    assert_true(tt_run_until(f->base, pump_done, &p, 30000));
    assert_int_equal(t.ok, 3000);
    assert_int_equal(t.mismatched, 0);
    for (int i = 0; i < 3; i++) {
        assert_in_range(s[i].served, 970, 1030); /* within 3% of 1000 */
        assert_int_equal(t.by[i], s[i].served);
    }
    assert_int_equal(tempest_requester_pending(rq), 0);
    tempest_requester_free(rq);
    for (int i = 0; i < 3; i++)
        stop_server(&s[i]);
}

typedef struct first_served {
    server *s;
    long long at;
} first_served;

static bool steady_until_served(void *arg) {
    first_served *fs = arg;
    if (fs->s->served > 0 && fs->at == 0)
        fs->at = tt_now_ms();
    return fs->at != 0;
}

static void on_steady(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    pump *p = arg;
    if (send_i(p->rq, p->t, "echo", p->sent, 5000, false) > 0)
        p->sent++;
}

static void test_join_gets_traffic(void **state) {
    fixture *f = *state;
    server a = {0}, b = {0};
    start_server(f, &a, "join", 0);
    tempest_requester *rq = new_requester(f, "join", NULL, 0);
    wait_live(f, rq, 1);
    tally t = {0};
    pump p = {.rq = rq, .t = &t};
    struct event *steady = event_new(f->base, -1, EV_PERSIST, on_steady, &p);
    event_add(steady, &(struct timeval){0, 5000});
    tt_run_for(f->base, 100);
    long long joined = tt_now_ms();
    start_server(f, &b, "join", 1);
    first_served fs = {.s = &b};
    assert_true(tt_run_until(f->base, steady_until_served, &fs, 1000)); /* one heartbeat */
    print_message("      new responder served its first request %lld ms after it started\n",
                  fs.at - joined);
    event_free(steady);
    wait_replies(f, &t, p.sent, 3000);
    assert_int_equal(t.ok, p.sent);
    tempest_requester_free(rq);
    stop_server(&a);
    stop_server(&b);
}

static void test_pipelining(void **state) {
    fixture *f = *state;
    server s = {0};
    start_server(f, &s, "pipe", 0);
    tempest_requester *rq = new_requester(f, "pipe", NULL, 0);
    wait_live(f, rq, 1);
    tally t = {0};
    pump p = {.rq = rq, .t = &t, .total = 10000, .window = 100};
    assert_true(tt_run_until(f->base, pump_done, &p, 60000));
    assert_int_equal(t.ok, 10000);
    assert_int_equal(t.mismatched, 0);
    assert_int_equal(s.served, 10000);
    assert_int_equal(tp_listener_connections(s.node->listener), 1); /* one connection */
    tempest_requester_free(rq);
    stop_server(&s);
}

/* ---- queueing while no responder is live --------------------------------- */

static void test_queued_before_responder(void **state) {
    fixture *f = *state;
    tempest_requester *rq = new_requester(f, "late", NULL, 0);
    tally t = {0};
    for (int i = 0; i < 5; i++)
        assert_true(send_i(rq, &t, "echo", i, 4000, false) > 0);
    for (int i = 5; i < 10; i++)
        assert_true(send_i(rq, &t, "echo", i, 200, i % 2 == 0) > 0);
    assert_int_equal(t.replies, 0); /* never inside the call */
    tt_run_for(f->base, 500);
    assert_int_equal(t.timedout, 5);
    assert_int_equal(t.replies, 5);
    assert_true(t.max_late_ms < 100);
    server s = {0};
    start_server(f, &s, "late", 0);
    wait_replies(f, &t, 10, 3000);
    assert_int_equal(t.ok, 5);
    tt_run_for(f->base, 300);
    assert_int_equal(s.served, 5); /* the timed-out ones never arrive */
    assert_int_equal(t.replies, 10);
    tempest_requester_free(rq);
    stop_server(&s);
}

static void test_queue_limit_and_cancel(void **state) {
    fixture *f = *state;
    tempest_requester_options o = {.service = "none", .max_queued = 3};
    tempest_requester *rq = tempest_requester_new(f->node, &o, NULL);
    assert_non_null(rq);
    tally t = {0};
    for (int i = 0; i < 3; i++)
        assert_true(send_i(rq, &t, "echo", i, 0, false) > 0);
    assert_int_equal(send_i(rq, &t, "echo", 3, 0, false), TEMPEST_ELIMIT);
    assert_int_equal(tempest_requester_send(rq, "", NULL, NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_requester_send(NULL, "x", NULL, NULL, NULL, NULL), TEMPEST_EINVAL);
    assert_int_equal(tempest_requester_pending(rq), 3);
    tempest_requester_free(rq);
    assert_int_equal(t.canceled, 3); /* before free returns */
    tempest_requester_free(NULL);
    tempest_error err;
    assert_null(tempest_requester_new(f->node, &(tempest_requester_options){0}, &err));
    assert_int_equal(err.code, TEMPEST_EINVAL);
    assert_null(
        tempest_requester_new(f->node, &(tempest_requester_options){.service = "a b"}, NULL));
    assert_null(tempest_responder_new(f->node, &(tempest_responder_options){.service = "*"}, &err));
    assert_int_equal(err.code, TEMPEST_EINVAL);
}

/* ---- a responder killed with SIGKILL ------------------------------------- */

static bool expired(void *arg) {
    return ((peers *)arg)->expired > 0;
}

static void child_run(const char *url, int wfd) {
    for (int fd = 3; fd < 1024; fd++)
        if (fd != wfd)
            close(fd);
    struct event_base *b = event_base_new();
    tempest_node *n = tempest_node_new(b, &(tempest_node_options){.redis_url = url}, NULL);
    if (n == NULL || !tt_run_until(b, tt_node_up, n, 3000))
        _exit(2);
    server s = {.node = n, .index = 3, .delay_ms = 400};
    s.r = tempest_responder_new(
        n, &(tempest_responder_options){.service = "kill", .heartbeat_ms = 200, .ttl_ms = 1000},
        NULL);
    if (s.r == NULL || tempest_responder_on(s.r, "echo", slow, &s) != 0)
        _exit(3);
    const char *addr = tempest_node_address(n);
    if (write(wfd, addr, strlen(addr) + 1) < 0)
        _exit(4);
    event_base_dispatch(b);
    _exit(0);
}

static pid_t spawn_responder(fixture *f, char *addr, size_t len) {
    int rfd;
    pid_t pid = tt_fork_piped(child_run, f->redis.url, &rfd);
    ssize_t n = read(rfd, addr, len - 1);
    close(rfd);
    assert_true(n > 0);
    addr[n] = '\0';
    return pid;
}

static void test_sigkill(void **state) {
    fixture *f = *state;
    char addr[64];
    pid_t child = spawn_responder(f, addr, sizeof addr);
    server local = {0};
    start_server(f, &local, "kill", 0);
    peers pe = {0};
    tempest_requester *rq = new_requester(f, "kill", &pe, 2000);
    wait_live(f, rq, 2);
    tally t = {0};
    for (int i = 0; i < 40; i++) /* half to each; in each half, half idempotent */
        assert_true(send_i(rq, &t, "echo", i, 2000, i % 4 < 2) > 0);
    tt_run_for(f->base, 150); /* the local ones are answered; the child holds its 20 */
    assert_int_equal(t.ok, 20);
    kill(child, SIGKILL);
    long long killed = tt_now_ms();
    waitpid(child, NULL, 0);
    wait_replies(f, &t, 40, 3000);
    assert_int_equal(t.ok, 30);   /* the child's idempotent ones, retried locally */
    assert_int_equal(t.down, 10); /* the others fail with their own error */
    assert_int_equal(local.served, 30);
    assert_true(t.max_late_ms <= 0); /* nobody waited past its timeout */
    /* at once, before its entry expires, no traffic goes to the dead one */
    tally u = {0};
    for (int i = 0; i < 50; i++)
        assert_true(send_i(rq, &u, "echo", i, 1000, false) > 0);
    wait_replies(f, &u, 50, 2000);
    assert_int_equal(u.ok, 50);
    assert_true(tt_now_ms() - killed < 1000);
    /* and its entry expires within its ttl (plus one registry read) */
    assert_true(tt_run_until(f->base, expired, &pe, 3000));
    print_message("      dead responder %s expired %lld ms after SIGKILL (ttl 1000)\n", addr,
                  pe.expired_at - killed);
    assert_true(pe.expired_at - killed <= 1000 + 200 + 300);
    assert_int_equal(tt_redis_int(&f->redis, "ZCARD tempest:default:svc:kill"), 1);
    tempest_requester_free(rq);
    stop_server(&local);
}

/* ---- errors -------------------------------------------------------------- */

typedef struct raw {
    int replies;
    char text[8][200];
} raw;

static void on_raw(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)ac;
    raw *r = privdata;
    redisReply *rep = reply;
    if (rep != NULL && r->replies < 8)
        snprintf(r->text[r->replies], sizeof r->text[0], "%c%.*s",
                 rep->type == REDIS_REPLY_ERROR ? '-' : '$', (int)rep->len, rep->str);
    r->replies++;
}

static bool raw_done(void *arg) {
    return ((raw *)arg)->replies >= 6;
}

static void test_errors(void **state) {
    fixture *f = *state;
    server s = {0};
    start_server(f, &s, "err", 0);
    tempest_requester *rq = new_requester(f, "err", NULL, 0);
    wait_live(f, rq, 1);
    tally t = {0};
    assert_true(send_i(rq, &t, "nosuch", 1, 0, false) > 0);
    wait_replies(f, &t, 1, 2000);
    assert_int_equal(t.remote, 1);
    assert_string_equal(t.last_error, "NOTYPE no handler for type 'nosuch'");
    assert_true(send_i(rq, &t, "fail", 2, 0, false) > 0);
    wait_replies(f, &t, 2, 2000);
    assert_string_equal(t.last_error, "NOT_FOUND no such thing");
    /* what a plain client gets: malformed JSON, usage, other services */
    char err[200];
    redisAsyncContext *ac = tp_redis_connect_raw(
        f->base, "127.0.0.1", tp_listener_port(s.node->listener), err, sizeof err);
    assert_non_null(ac);
    raw r = {0};
    redisAsyncCommand(ac, on_raw, &r, "RPC err echo %s", "{bad");
    redisAsyncCommand(ac, on_raw, &r, "RPC err echo");
    redisAsyncCommand(ac, on_raw, &r, "RPC other echo {}");
    redisAsyncCommand(ac, on_raw, &r, "RPC err echo %s", "{\"i\":5}");
    redisAsyncCommand(ac, on_raw, &r, "RPC 5 null");
    redisAsyncCommand(ac, on_raw, &r, "RPC * echo %s", "[1,2]");
    assert_true(tt_run_until(f->base, raw_done, &r, 2000));
    assert_non_null(strstr(r.text[0], "-ERR BADJSON "));
    assert_string_equal(r.text[1], "-ERR usage: RPC <service> <type> <json>");
    assert_string_equal(r.text[2], "-ERR NOSERVICE no service 'other' on this node");
    assert_string_equal(r.text[3], "${\"i\":5,\"by\":0}");
    /* `RPC 5 null` is an answer (to no job): +OK (no error), as to any foreign worker */
    assert_string_equal(r.text[4], "$OK");
    assert_string_equal(r.text[5], "${\"i\":null,\"by\":0}");
    redisAsyncFree(ac);
    tempest_requester_free(rq);
    stop_server(&s);
}

/* ---- direct calls, order, a slow handler ---------------------------------- */

/* tempest_call's callback: records the call's id as its `i`. */
static void on_call(tempest_requester *rq, long long id, int status, json_t *reply, void *arg) {
    assert_null(rq);
    ticket *k = calloc(1, sizeof *k);
    *k = (ticket){.t = arg, .i = (int)id, .deadline = tt_now_ms() + 5000};
    on_reply(NULL, id, status, status == 0 ? NULL : reply, k); /* its i is not the id */
    if (status == 0)
        assert_true(json_is_object(reply));
}

static void test_direct_call(void **state) {
    fixture *f = *state;
    server s = {0};
    start_server(f, &s, "direct", 0);
    s.delay_ms = 300;
    const char *addr = tempest_node_address(s.node);
    tally t = {0};
    json_t *body = json_pack("{si}", "i", 1);
    long long id = tempest_call(f->node, addr, "echo", body, NULL, on_call, &t);
    assert_true(id > 0);
    wait_replies(f, &t, 1, 2000);
    assert_int_equal(t.ok, 1);
    assert_int_equal(tempest_call(f->node, "nonsense", "echo", body, NULL, on_call, &t),
                     TEMPEST_EINVAL);
    int port = tt_free_port();
    char closed[32];
    snprintf(closed, sizeof closed, "127.0.0.1:%d", port);
    assert_true(tempest_call(f->node, closed, "echo", body, NULL, on_call, &t) > 0);
    wait_replies(f, &t, 2, 2000);
    assert_int_equal(t.down, 1);
    assert_true(tempest_call(f->node, addr, "nosuch", body, NULL, on_call, &t) > 0);
    wait_replies(f, &t, 3, 2000);
    assert_int_equal(t.remote, 1);
    /* a slow request on the requester's connection does not hold up a
     * direct call on another connection; on its own connection, the reply
     * after it waits its turn */
    tempest_requester *rq = new_requester(f, "direct", NULL, 0);
    wait_live(f, rq, 1);
    tally u = {0};
    assert_true(send_i(rq, &u, "slow", 100, 0, false) > 0);
    assert_true(send_i(rq, &u, "echo", 101, 0, false) > 0);
    tt_run_for(f->base, 50);
    assert_true(tempest_call(f->node, addr, "echo", body, NULL, on_call, &u) > 0);
    wait_replies(f, &u, 1, 250);
    assert_int_equal(u.order[0], 4); /* the direct call (id 4) */
    wait_replies(f, &u, 3, 2000);
    assert_int_equal(u.order[1], 100);
    assert_int_equal(u.order[2], 101);
    json_decref(body);
    tempest_requester_free(rq);
    stop_server(&s);
}

/* ---- shutdown with requests pending; frees from callbacks ----------------- */

static void test_shutdown_pending(void **state) {
    fixture *f = *state;
    server a = {0}, b = {0};
    start_server(f, &a, "shut", 0);
    tempest_requester *rq = new_requester(f, "shut", NULL, 0);
    wait_live(f, rq, 1);
    tally t = {0};
    assert_true(send_i(rq, &t, "hold", 1, 0, false) > 0);
    assert_true(send_i(rq, &t, "hold", 2, 0, true) > 0);
    tt_run_for(f->base, 100);
    assert_int_equal(a.held, 2);
    start_server(f, &b, "shut", 1);
    wait_live(f, rq, 2);
    b.free_in_handler = false;
    tempest_responder_free(a.r); /* answers SHUTDOWN; withdraws */
    a.r = NULL;
    wait_replies(f, &t, 1, 2000);
    assert_int_equal(t.down, 1); /* the non-idempotent one */
    tt_run_for(f->base, 100);
    assert_int_equal(b.held, 1); /* the idempotent one went to b */
    b.free_in_handler = true;
    assert_true(send_i(rq, &t, "hold", 3, 0, false) > 0);
    wait_replies(f, &t, 3, 3000); /* b frees itself in the handler */
    assert_int_equal(t.down, 3);
    assert_null(b.r);
    tempest_requester_free(rq);
    stop_server(&a);
    stop_server(&b);
}

typedef struct freer {
    tempest_requester *rq;
    int calls, canceled;
} freer;

static void free_on_reply(tempest_requester *rq, long long id, int status, json_t *reply,
                          void *arg) {
    (void)id, (void)reply;
    freer *fr = arg;
    fr->calls++;
    if (status == TEMPEST_ECANCELED)
        fr->canceled++;
    if (status == 0) {
        assert_ptr_equal(rq, fr->rq);
        tempest_requester_free(rq); /* the others get ECANCELED */
        fr->rq = NULL;
    }
}

static bool freer_done(void *arg) {
    return ((freer *)arg)->rq == NULL;
}

static void test_free_from_callback(void **state) {
    fixture *f = *state;
    server s = {0};
    start_server(f, &s, "freecb", 0);
    s.delay_ms = 200;
    freer fr = {0};
    fr.rq = new_requester(f, "freecb", NULL, 0);
    wait_live(f, fr.rq, 1);
    json_t *body = json_object();
    assert_true(tempest_requester_send(fr.rq, "echo", body, NULL, free_on_reply, &fr) > 0);
    for (int i = 0; i < 3; i++)
        assert_true(tempest_requester_send(fr.rq, "slow", body, NULL, free_on_reply, &fr) > 0);
    json_decref(body);
    assert_true(tt_run_until(f->base, freer_done, &fr, 2000));
    assert_int_equal(fr.calls, 4);
    assert_int_equal(fr.canceled, 3);
    tt_run_for(f->base, 300); /* late replies to a freed requester go nowhere */
    stop_server(&s);
}

/* 1,500 requests that stay pending: the listener stops reading from that
 * connection at 1,024 pending replies and resumes once they are answered. */
static void test_pending_limit(void **state) {
    fixture *f = *state;
    server s = {0};
    start_server(f, &s, "many", 0);
    tempest_requester *rq = new_requester(f, "many", NULL, 0);
    wait_live(f, rq, 1);
    tally t = {0};
    for (int i = 0; i < 1500; i++)
        assert_true(send_i(rq, &t, "hold", i, 1500, false) > 0);
    tt_run_for(f->base, 400);
    print_message("      %d of 1500 requests read while their replies were pending\n", s.served);
    assert_in_range(s.served, 1024, 1200);
    tempest_responder_free(s.r); /* answers them all; reading resumes */
    s.r = NULL;
    wait_replies(f, &t, 1500, 3000);
    assert_int_equal(t.down, s.served);            /* SHUTDOWN, not idempotent */
    assert_int_equal(t.timedout, 1500 - s.served); /* NOSERVICE, then nowhere to go */
    assert_true(t.max_late_ms < 200);
    tempest_requester_free(rq);
    stop_server(&s);
}

/* Nodes with a shared secret: requesters and direct calls send AUTH. */
static void test_secret(void **state) {
    fixture *f = *state;
    tempest_node_options o = {.redis_url = f->redis.url, .secret = "s3cret"};
    tempest_node *rn = tempest_node_new(f->base, &o, NULL);
    tempest_node *qn = tempest_node_new(f->base, &o, NULL);
    assert_true(tt_run_until(f->base, tt_node_up, rn, 3000) &&
                tt_run_until(f->base, tt_node_up, qn, 3000));
    server s = {.node = rn};
    s.r = tempest_responder_new(rn, &(tempest_responder_options){.service = "sec"}, NULL);
    assert_int_equal(tempest_responder_on(s.r, "echo", echo, &s), 0);
    tempest_requester *rq =
        tempest_requester_new(qn, &(tempest_requester_options){.service = "sec"}, NULL);
    fixture g = *f;
    g.node = qn;
    wait_live(&g, rq, 1);
    tally t = {0};
    assert_true(send_i(rq, &t, "echo", 1, 0, false) > 0);
    json_t *body = json_pack("{si}", "i", 1);
    assert_true(tempest_call(qn, tempest_node_address(rn), "echo", body, NULL, on_call, &t) > 0);
    assert_true(tempest_call(f->node, tempest_node_address(rn), "echo", body, NULL, on_call, &t) >
                0);
    json_decref(body);
    wait_replies(f, &t, 3, 2000);
    assert_int_equal(t.ok, 2);
    assert_int_equal(t.remote, 1); /* the node without the secret */
    assert_non_null(strstr(t.last_error, "NOAUTH"));
    assert_int_equal(s.served, 2);
    tempest_requester_free(rq);
    tempest_responder_free(s.r);
    tempest_node_free(qn);
    tempest_node_free(rn);
}

/* ---- redis-cli ------------------------------------------------------------ */

static void test_redis_cli(void **state) {
    fixture *f = *state;
    if (!tt_have_redis_cli())
        skip();
    server s = {0};
    start_server(f, &s, "cli", 2);
    int port = tp_listener_port(s.node->listener);
    char *out =
        tt_redis_cli(f->base, port, (const char *const[]){"RPC", "cli", "echo", "{\"i\":7}", NULL});
    assert_string_equal(out, "{\"i\":7,\"by\":2}\n");
    free(out);
    out = tt_redis_cli(f->base, port, (const char *const[]){"RPC", "cli", "echo", "{bad", NULL});
    assert_non_null(strstr(out, "ERR BADJSON"));
    free(out);
    out = tt_redis_cli(f->base, port, (const char *const[]){"RPC", "cli", "fail", "null", NULL});
    assert_non_null(strstr(out, "ERR NOT_FOUND no such thing"));
    free(out);
    assert_int_equal(s.served, 1);
    stop_server(&s);
}

/* ---- the registry ------------------------------------------------------------ */

static void test_registry_and_leave(void **state) {
    fixture *f = *state;
    server s = {0};
    peers pe = {0};
    tempest_requester *rq = new_requester(f, "reg", &pe, 0);
    start_server(f, &s, "reg", 0);
    wait_live(f, rq, 1);
    assert_int_equal(pe.joined, 1);
    assert_int_equal(tt_redis_int(&f->redis, "ZCARD tempest:default:svc:reg"), 1);
    tempest_error err;
    assert_null(
        tempest_responder_new(s.node, &(tempest_responder_options){.service = "reg"}, &err));
    assert_int_equal(err.code, TEMPEST_ESTATE);
    /* another namespace sees nothing */
    tempest_requester *other = tempest_requester_new(
        f->node, &(tempest_requester_options){.service = "reg", .namespace = "ns2"}, NULL);
    assert_non_null(other);
    tempest_responder_free(s.r);
    s.r = NULL;
    wait_live(f, rq, 0);
    tt_run_for(f->base, 300);
    /* No live entry; a tombstone (negative score) says it left. */
    assert_int_equal(tt_redis_int(&f->redis, "ZCOUNT tempest:default:svc:reg 0 +inf"), 0);
    assert_int_equal(tt_redis_int(&f->redis, "ZCOUNT tempest:default:svc:reg -inf (0"), 1);
    /* Told once, and LEFT even when a registry read overtakes the `leave`
     * announcement (a valgrind CI run once saw EXPIRED before tombstones). */
    assert_int_equal(pe.left, 1);
    assert_int_equal(pe.expired, 0);
    assert_int_equal(tempest_requester_live(other), 0);
    tempest_requester_free(other);
    tempest_requester_free(rq);
    stop_server(&s);
}

/* The `leave` announcement is lost (the requester's subscribe connection
 * is cut just before the responder stops): the next registry read still
 * reports LEFT, from the tombstone, not EXPIRED. */
static void test_leave_announcement_lost(void **state) {
    fixture *f = *state;
    server s = {0};
    peers pe = {0};
    tempest_requester *rq = new_requester(f, "lost", &pe, 0);
    start_server(f, &s, "lost", 0);
    wait_live(f, rq, 1);
    assert_true(tt_redis_int(&f->redis, "CLIENT KILL TYPE pubsub") >= 1);
    tempest_responder_free(s.r); /* its `leave` is published to nobody */
    s.r = NULL;
    wait_live(f, rq, 0);
    assert_int_equal(pe.left, 1);
    assert_int_equal(pe.expired, 0);
    tempest_requester_free(rq);
    stop_server(&s);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest unit[] = {
        cmocka_unit_test(test_deferred_order),
        cmocka_unit_test(test_deferred_orphan),
    };
    int failed = cmocka_run_group_tests_name("listener deferred replies", unit, NULL, NULL);
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_join_gets_traffic),
        cmocka_unit_test(test_pipelining),
        cmocka_unit_test(test_queued_before_responder),
        cmocka_unit_test(test_queue_limit_and_cancel),
        cmocka_unit_test(test_sigkill),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_direct_call),
        cmocka_unit_test(test_shutdown_pending),
        cmocka_unit_test(test_free_from_callback),
        cmocka_unit_test(test_pending_limit),
        cmocka_unit_test(test_secret),
        cmocka_unit_test(test_redis_cli),
        cmocka_unit_test(test_registry_and_leave),
        cmocka_unit_test(test_leave_announcement_lost),
    };
    return failed | cmocka_run_group_tests_name("rpc", tests, setup, tt_node_teardown);
}
