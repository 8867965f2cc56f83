/* SPDX-License-Identifier: MIT */
/*
 * Security tests. The listener's shared secret at the protocol level (a
 * tp_session fed bytes): -NOAUTH before AUTH, -WRONGPASS and the close
 * after three failures, both AUTH forms, AUTH without a secret, the
 * tighter limits before AUTH. End to end against a private redis-server:
 * producer, worker and raw clients with and without the secret (option and
 * $TEMPEST_SECRET), the node's listener limits, the warning for a listener
 * bound beyond loopback, and Redis itself with --requirepass and with the
 * restricted ACL user that the README documents (default user off), where
 * a node/worker/front round trip and the queue's other paths (dead letters,
 * retry, reaper, requeue at stop) must run without a single ACL denial.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <tempest/tempest.h>

#include "harness.h"
#include "tt_node.h"
#include "listener.h"

#define LIT(s) (s), (sizeof(s) - 1)
#define SECRET "s3cret-Secr3t"
#define NOAUTH "-NOAUTH Authentication required.\r\n"
#define WRONGPASS "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
#define NOPASS                                                                                     \
    "-ERR AUTH <password> called without any password configured for the default user. Are "       \
    "you sure your configuration is correct?\r\n"

/*
 * The ACL user of the README, rules after the name. Every command the
 * library sends, directly or from its Lua scripts, and nothing else.
 */
#ifndef ACL_RULES /* -DACL_RULES=... to try another set */
#define ACL_RULES                                                                                  \
    "on >pw ~* resetchannels &tempest:cancel:* -@all +select +incr +rpush +blmove +evalsha "       \
    "+script|load +time "                                                                          \
    "+set +exists +del +sadd +srem +smembers +lrange +ltrim +lpush +lpop +lrem +llen +hincrby "    \
    "+hdel +hset +hget +zadd +zrem +zrangebyscore +publish +subscribe +unsubscribe +pexpire +get"
#endif

/* ---- session level --------------------------------------------------------- */

static void on_command(void *arg, int argc, const char **argv, const size_t *lens,
                       struct evbuffer *out) {
    (void)argc, (void)argv, (void)lens;
    (*(int *)arg)++;
    tp_resp_status(out, "DONE");
}

typedef struct sess {
    tp_session *s;
    struct evbuffer *out;
    int calls;
} sess;

static void sess_open(sess *x, const char *secret) {
    memset(x, 0, sizeof *x);
    x->s = tp_session_new(&(tp_listener_limits){.secret = secret}, on_command, &x->calls);
    x->out = evbuffer_new();
    assert_non_null(x->s);
    assert_non_null(x->out);
}

static void sess_close(sess *x) {
    tp_session_free(x->s);
    evbuffer_free(x->out);
}

/* Feeds `in`, checks the return code and that the replies are exactly `want`. */
static void sess_expect(sess *x, const char *in, size_t len, int rc, const char *want) {
    assert_int_equal(tp_session_feed(x->s, in, len, x->out), rc);
    size_t n = evbuffer_get_length(x->out);
    char *got = calloc(1, n + 1);
    assert_non_null(got);
    evbuffer_remove(x->out, got, n);
    if (strcmp(got, want) != 0) {
        print_error("got:\n%s\nexpected:\n%s\n", got, want);
        free(got);
        fail();
    }
    free(got);
}

static void test_noauth_first(void **state) {
    (void)state;
    sess x;
    sess_open(&x, SECRET);
    sess_expect(&x, LIT("PING\r\n"), 0, NOAUTH);
    sess_expect(&x, LIT("*3\r\n$3\r\nurl\r\n$1\r\n1\r\n$2\r\n[]\r\n"), 0, NOAUTH);
    sess_expect(&x, LIT("CLIENT SETNAME x\r\nINFO\r\nSELECT 0\r\nECHO hi\r\n"), 0,
                NOAUTH NOAUTH NOAUTH NOAUTH);
    sess_expect(&x, LIT("HELLO 3\r\n"), 0,
                "-NOAUTH HELLO must be called with the client already authenticated, otherwise "
                "the HELLO <proto> AUTH <user> <pass> option can be used\r\n");
    assert_int_equal(x.calls, 0); /* nothing reached the owner */
    sess_expect(&x, LIT("*2\r\n$4\r\nauth\r\n$13\r\n" SECRET "\r\n"), 0, "+OK\r\n");
    sess_expect(&x, LIT("PING\r\nurl 1 []\r\n"), 0, "+PONG\r\n+DONE\r\n");
    assert_int_equal(x.calls, 1);
    sess_close(&x);

    sess_open(&x, SECRET); /* HELLO with AUTH: a wrong secret counts, the right one opens */
    sess_expect(&x, LIT("HELLO 3 AUTH default nope\r\n"), 0, WRONGPASS);
    sess_expect(&x, LIT("HELLO 2 AUTH default " SECRET "\r\n"), 0,
                "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"
                "$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
                "$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n");
    sess_expect(&x, LIT("PING\r\n"), 0, "+PONG\r\n");
    sess_close(&x);

    sess_open(&x, SECRET); /* QUIT works before AUTH */
    sess_expect(&x, LIT("QUIT\r\nPING\r\n"), 1, "+OK\r\n");
    sess_close(&x);
}

static void test_wrongpass_closes(void **state) {
    (void)state;
    const char *wrong[] = {"AUTH s3cret-Secr3\r\n", "AUTH s3cret-Secr3tX\r\n", "AUTH \"\"\r\n",
                           "*2\r\n$4\r\nAUTH\r\n$0\r\n\r\n"};
    for (size_t i = 0; i < 2; i++) {
        sess x;
        sess_open(&x, SECRET);
        sess_expect(&x, wrong[i], strlen(wrong[i]), 0, WRONGPASS);
        sess_expect(&x, LIT("AUTH a b c\r\n"), 0,
                    "-ERR wrong number of arguments for 'auth' command\r\n"); /* not counted */
        sess_expect(&x, wrong[i + 1], strlen(wrong[i + 1]), 0, WRONGPASS);
        sess_expect(&x, LIT("PING\r\n"), 0, NOAUTH);
        /* The third failure closes, and what follows it is never run. */
        sess_expect(&x, wrong[i + 2], strlen(wrong[i + 2]), -1, WRONGPASS);
        sess_expect(&x, LIT("AUTH " SECRET "\r\n"), -1, "");
        assert_int_equal(x.calls, 0);
        sess_close(&x);
    }
    /* Pipelined: the right secret after the third failure is not read. */
    sess x;
    sess_open(&x, SECRET);
    sess_expect(&x, LIT("AUTH a\r\nAUTH b\r\nAUTH c\r\nAUTH " SECRET "\r\nurl 1 []\r\n"), -1,
                WRONGPASS WRONGPASS WRONGPASS);
    assert_int_equal(x.calls, 0);
    sess_close(&x);
}

static void test_auth_forms(void **state) {
    (void)state;
    static const char both[] = "*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$13\r\n" SECRET "\r\n"
                               "*3\r\n$3\r\nurl\r\n$1\r\n7\r\n$2\r\n{}\r\n";
    sess x;
    sess_open(&x, SECRET); /* AUTH <user> <secret>: any user */
    sess_expect(&x, LIT("AUTH anyone " SECRET "\r\nPING\r\n"), 0, "+OK\r\n+PONG\r\n");
    sess_close(&x);
    sess_open(&x, SECRET); /* one byte at a time, multibulk */
    for (size_t i = 0; i < sizeof both - 1; i++)
        assert_int_equal(tp_session_feed(x.s, both + i, 1, x.out), 0);
    sess_expect(&x, "", 0, 0, "+OK\r\n+DONE\r\n");
    assert_int_equal(x.calls, 1);
    /* A wrong AUTH later does not undo the first, but still counts. */
    sess_expect(&x, LIT("AUTH x\r\nPING\r\n"), 0, WRONGPASS "+PONG\r\n");
    sess_close(&x);
    sess_open(&x, SECRET); /* a secret with the wrong case is wrong */
    sess_expect(&x, LIT("AUTH S3CRET-SECR3T\r\n"), 0, WRONGPASS);
    sess_close(&x);
}

static void test_no_secret(void **state) {
    (void)state;
    sess x;
    sess_open(&x, NULL);
    sess_expect(&x, LIT("PING\r\nAUTH pw\r\nAUTH user pw\r\n"), 0, "+PONG\r\n" NOPASS NOPASS);
    sess_expect(&x, LIT("url 1 []\r\n"), 0, "+DONE\r\n");
    sess_close(&x);
    sess_open(&x, ""); /* "" means none too */
    sess_expect(&x, LIT("AUTH pw\r\nurl 1 []\r\n"), 0, NOPASS "+DONE\r\n");
    sess_close(&x);
}

static void test_preauth_limits(void **state) {
    (void)state;
    enum { BIG = 20000 };
    char *big = malloc(BIG + 64);
    assert_non_null(big);
    int n = snprintf(big, 64, "*3\r\n$3\r\nurl\r\n$1\r\n1\r\n$%d\r\n", BIG);
    memset(big + n, 'a', BIG);
    memcpy(big + n + BIG, "\r\n", 2);
    size_t len = (size_t)n + BIG + 2;
    static const char many[] = "*11\r\n$3\r\nurl\r\n";
    sess x;
    sess_open(&x, SECRET);
    sess_expect(&x, big, len, -1,
                "-ERR Protocol error: request over the limit of 16384 bytes before AUTH\r\n");
    sess_close(&x);
    sess_open(&x, SECRET);
    sess_expect(&x, LIT(many), -1,
                "-ERR Protocol error: 11 arguments, the limit is 10 before AUTH\r\n");
    sess_close(&x);
    sess_open(&x, SECRET); /* the configured limits once authenticated */
    sess_expect(&x, LIT("AUTH " SECRET "\r\n"), 0, "+OK\r\n");
    sess_expect(&x, big, len, 0, "+DONE\r\n");
    sess_close(&x);
    sess_open(&x, NULL); /* and without a secret */
    sess_expect(&x, big, len, 0, "+DONE\r\n");
    sess_close(&x);
    free(big);
}

static void test_secret_is_copied(void **state) {
    (void)state;
    char secret[] = "copied";
    tp_listener_limits lim = {.secret = secret};
    int calls = 0;
    tp_session *s = tp_session_new(&lim, on_command, &calls);
    struct evbuffer *out = evbuffer_new();
    memset(secret, 'x', sizeof secret - 1);
    assert_int_equal(tp_session_feed(s, LIT("AUTH copied\r\n"), out), 0);
    assert_int_equal(evbuffer_get_length(out), 5); /* +OK\r\n */
    tp_session_free(s);
    evbuffer_free(out);
}

static void test_loopback_hosts(void **state) {
    (void)state;
    const char *yes[] = {"127.0.0.1", "127.3.2.1",       "::1", "[::1]", "localhost",
                         "LocalHost", "::ffff:127.0.0.1"};
    const char *no[] = {"0.0.0.0", "::",   "10.0.0.1", "128.0.0.1",      "example.com",
                        "",        "[::]", "::2",      "::ffff:10.0.0.1"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        assert_true(tp_host_is_loopback(yes[i]));
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        assert_false(tp_host_is_loopback(no[i]));
    assert_false(tp_host_is_loopback(NULL));
}

/* ---- end to end ------------------------------------------------------------- */

typedef struct logbuf {
    char text[16384];
    size_t len;
} logbuf;

static void on_log(int level, const char *message, void *arg) {
    logbuf *lb = arg;
    tt_log_append(lb->text, sizeof lb->text, &lb->len, level, message);
}

typedef tt_node_fixture fixture; /* no node: the tests make theirs */

static int group_setup(void **state) {
    return tt_node_setup(state, (tempest_node_options){0}, NULL);
}

/* A node that is up; `secret` as the option (NULL: environment). */
static tempest_node *up_node(struct event_base *base, const char *url, const char *secret,
                             logbuf *lb) {
    tempest_node_options o = {.redis_url = url,
                              .reconnect_min_ms = 20,
                              .reconnect_max_ms = 200,
                              .secret = secret,
                              .log = lb ? on_log : NULL,
                              .log_arg = lb};
    tempest_error err = {0};
    tempest_node *node = tempest_node_new(base, &o, &err);
    if (node == NULL)
        print_error("tempest_node_new: %s\n", err.message);
    assert_non_null(node);
    if (!tt_run_until(base, tt_node_up_with_id, node, 5000)) {
        print_error("node not up: %s\n%s", tempest_node_errstr(node), lb ? lb->text : "");
        fail();
    }
    return node;
}

typedef struct result {
    int calls;
    int status;
    char answer[256];
} result;

static void on_answer(tempest_node *node, long long id, int status, json_t *answer, void *arg) {
    (void)node, (void)id;
    result *r = arg;
    char *text = answer ? json_dumps(answer, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    snprintf(r->answer, sizeof r->answer, "%s", text ? text : "");
    free(text);
    r->status = status;
    if (status <= 0)
        r->calls++;
}

static bool answered(void *arg) {
    return ((result *)arg)->calls > 0;
}

static void echo(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w, (void)arg;
    json_t *a = json_pack("[sO]", tempest_job_action(job), tempest_job_args(job));
    tempest_job_answer(job, a, false);
    json_decref(a);
}

/* Sends one job from `producer` to a worker on `wnode`; returns its terminal status. */
static int round_trip(struct event_base *base, tempest_node *producer, tempest_node *wnode,
                      const char *queue, int timeout_ms, result *r) {
    tempest_worker_options wo = {.queue = queue, .block_timeout_ms = 100};
    tempest_worker *w = tempest_worker_new(wnode, &wo, NULL);
    assert_non_null(w);
    assert_int_equal(tempest_worker_on(w, "sum", echo, NULL), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    memset(r, 0, sizeof *r);
    json_t *args = json_pack("[i,i]", 2, 3);
    tempest_work_options opt = {.timeout_ms = timeout_ms};
    long long id = tempest_work(producer, queue, "sum", args, &opt, on_answer, r);
    json_decref(args);
    assert_true(id > 0);
    assert_true(tt_run_until(base, answered, r, timeout_ms + 3000));
    tt_run_for(base, 50); /* late log lines of the worker */
    tempest_worker_free(w);
    return r->status;
}

/* ---- a raw client on a non-blocking socket, driven by the loop ---- */

typedef struct raw {
    int fd;
    char buf[4096];
    size_t len;
    size_t want;
    bool eof;
} raw;

static void raw_open(raw *c, const char *address) {
    const char *colon = strrchr(address, ':');
    assert_non_null(colon);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
}

static bool raw_poll(void *arg) {
    raw *c = arg;
    while (!c->eof && c->len < sizeof c->buf - 1) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, MSG_DONTWAIT);
        if (n > 0)
            c->len += (size_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            c->eof = true;
        else
            break;
    }
    c->buf[c->len] = '\0';
    return c->eof || c->len >= c->want;
}

/* Sends `in` and waits for exactly `want` back. */
static void raw_expect(struct event_base *base, raw *c, const char *in, const char *want) {
    c->len = 0;
    c->want = strlen(want);
    assert_int_equal(send(c->fd, in, strlen(in), MSG_NOSIGNAL), (ssize_t)strlen(in));
    tt_run_until(base, raw_poll, c, 3000);
    assert_string_equal(c->buf, want);
}

static void raw_expect_closed(struct event_base *base, raw *c) {
    c->len = 0;
    c->want = SIZE_MAX;
    assert_true(tt_run_until(base, raw_poll, c, 3000));
    assert_true(c->eof);
}

static void test_round_trip_with_secret(void **state) {
    fixture *f = *state;
    logbuf plog = {0}, wlog = {0};
    tempest_node *p = up_node(f->base, f->redis.url, SECRET, &plog);
    tempest_node *wn = up_node(f->base, f->redis.url, SECRET, &wlog);
    result r;
    assert_int_equal(round_trip(f->base, p, wn, "sec1", 3000, &r), 0);
    assert_string_equal(r.answer, "[\"sum\",[2,3]]");
    assert_null(strstr(wlog.text, "refused"));
    assert_non_null(strstr(plog.text, "(AUTH required)"));
    assert_null(strstr(plog.text, "without a secret"));
    tempest_node_free(wn);
    tempest_node_free(p);
}

static void test_raw_client(void **state) {
    fixture *f = *state;
    tempest_node *p = up_node(f->base, f->redis.url, SECRET, NULL);
    assert_int_equal(tempest_node_listen(p), 0);
    raw c;
    raw_open(&c, tempest_node_address(p));
    raw_expect(f->base, &c, "PING\r\n", NOAUTH);
    raw_expect(f->base, &c, "*4\r\n$3\r\nurl\r\n$1\r\n1\r\n$2\r\n[]\r\n$4\r\nMORE\r\n", NOAUTH);
    raw_expect(f->base, &c, "TEMPEST PEER 1\r\n", NOAUTH);
    raw_expect(f->base, &c, "AUTH nope\r\n", WRONGPASS);
    raw_expect(f->base, &c, "AUTH " SECRET "\r\nPING\r\n", "+OK\r\n+PONG\r\n");
    /* A foreign worker's late answer: +OK (docs/protocol.md); a peer's: the error. */
    raw_expect(f->base, &c, "url 1 []\r\n", "+OK\r\n");
    raw_expect(f->base, &c, "TEMPEST PEER 1\r\nurl 1 []\r\n",
               "+OK\r\n-ERR unknown job 1 (finished, timed out or never sent)\r\n");
    close(c.fd);

    raw_open(&c, tempest_node_address(p)); /* three wrong secrets: closed */
    raw_expect(f->base, &c, "AUTH a\r\nAUTH b\r\n", WRONGPASS WRONGPASS);
    raw_expect(f->base, &c, "AUTH c\r\n", WRONGPASS);
    raw_expect_closed(f->base, &c);
    close(c.fd);
    tempest_node_free(p);
}

/* The listener limits of the node options reach the sessions. */
static void test_node_limits(void **state) {
    fixture *f = *state;
    tempest_node_options o = {.redis_url = f->redis.url, .secret = SECRET, .max_args = 3};
    tempest_node *p = tempest_node_new(f->base, &o, NULL);
    assert_non_null(p);
    assert_int_equal(tempest_node_listen(p), 0);
    raw c;
    raw_open(&c, tempest_node_address(p));
    raw_expect(f->base, &c, "*4\r\n$3\r\nurl\r\n",
               "-ERR Protocol error: 4 arguments, the limit is 3 before AUTH\r\n");
    raw_expect_closed(f->base, &c);
    close(c.fd);
    raw_open(&c, tempest_node_address(p));
    raw_expect(f->base, &c, "AUTH " SECRET "\r\n*4\r\n$3\r\nurl\r\n",
               "+OK\r\n-ERR Protocol error: 4 arguments, the limit is 3\r\n");
    raw_expect_closed(f->base, &c);
    close(c.fd);
    tempest_node_free(p);
}

static void test_worker_without_secret(void **state) {
    fixture *f = *state;
    logbuf wlog = {0};
    tempest_node *p = up_node(f->base, f->redis.url, SECRET, NULL);
    tempest_node *wn = up_node(f->base, f->redis.url, "", &wlog);
    result r;
    assert_int_equal(round_trip(f->base, p, wn, "sec2", 300, &r), TEMPEST_ETIMEDOUT);
    if (strstr(wlog.text, "NOAUTH Authentication required.") == NULL) {
        print_error("worker log:\n%s", wlog.text);
        fail();
    }
    tempest_node_free(wn);
    tempest_node_free(p);
}

static void test_worker_wrong_secret(void **state) {
    fixture *f = *state;
    logbuf wlog = {0};
    tempest_node *p = up_node(f->base, f->redis.url, SECRET, NULL);
    tempest_node *wn = up_node(f->base, f->redis.url, "not-" SECRET, &wlog);
    result r;
    assert_int_equal(round_trip(f->base, p, wn, "sec3", 300, &r), TEMPEST_ETIMEDOUT);
    if (strstr(wlog.text, "refused AUTH: WRONGPASS") == NULL) {
        print_error("worker log:\n%s", wlog.text);
        fail();
    }
    tempest_node_free(wn);
    tempest_node_free(p);
}

/* A worker with a secret still answers a listener without one (mixed clusters). */
static void test_worker_secret_listener_without(void **state) {
    fixture *f = *state;
    logbuf wlog = {0};
    tempest_node *p = up_node(f->base, f->redis.url, "", NULL);
    tempest_node *wn = up_node(f->base, f->redis.url, SECRET, &wlog);
    result r;
    assert_int_equal(round_trip(f->base, p, wn, "sec4", 3000, &r), 0);
    assert_non_null(strstr(wlog.text, "refused AUTH: ERR AUTH <password> called without"));
    tempest_node_free(wn);
    tempest_node_free(p);
}

static void test_env_secret(void **state) {
    fixture *f = *state;
    assert_int_equal(setenv("TEMPEST_SECRET", "from-env", 1), 0);
    tempest_node *p = up_node(f->base, f->redis.url, NULL, NULL);
    tempest_node *wn = up_node(f->base, f->redis.url, NULL, NULL);
    tempest_node *none = up_node(f->base, f->redis.url, "", NULL); /* "" overrides it */
    assert_int_equal(unsetenv("TEMPEST_SECRET"), 0);
    result r;
    assert_int_equal(round_trip(f->base, p, wn, "sec5", 3000, &r), 0);
    raw c;
    raw_open(&c, tempest_node_address(p));
    raw_expect(f->base, &c, "PING\r\nAUTH " SECRET "\r\nAUTH from-env\r\nPING\r\n",
               NOAUTH WRONGPASS "+OK\r\n+PONG\r\n");
    close(c.fd);
    assert_int_equal(tempest_node_listen(none), 0);
    raw_open(&c, tempest_node_address(none));
    raw_expect(f->base, &c, "PING\r\n", "+PONG\r\n");
    close(c.fd);
    /* An empty variable is no secret. */
    assert_int_equal(setenv("TEMPEST_SECRET", "", 1), 0);
    tempest_node *empty = up_node(f->base, f->redis.url, NULL, NULL);
    assert_int_equal(unsetenv("TEMPEST_SECRET"), 0);
    assert_int_equal(tempest_node_listen(empty), 0);
    raw_open(&c, tempest_node_address(empty));
    raw_expect(f->base, &c, "PING\r\n", "+PONG\r\n");
    close(c.fd);
    tempest_node_free(empty);
    tempest_node_free(none);
    tempest_node_free(wn);
    tempest_node_free(p);
}

static void test_bind_warning(void **state) {
    fixture *f = *state;
    const struct {
        const char *listen;
        const char *secret;
        bool warns;
    } cases[] = {
        {"0.0.0.0:0", "", true},    {"0.0.0.0:0", SECRET, false}, {"127.0.0.1:0", "", false},
        {"localhost:0", "", false}, {"[::1]:0", "", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        logbuf lb = {0};
        tempest_node_options o = {.redis_url = f->redis.url,
                                  .listen = cases[i].listen,
                                  .secret = cases[i].secret,
                                  .log = on_log,
                                  .log_arg = &lb};
        tempest_node *node = tempest_node_new(f->base, &o, NULL);
        assert_non_null(node);
        if (tempest_node_listen(node) != 0) { /* no IPv6 here */
            tempest_node_free(node);
            continue;
        }
        const char *hit = strstr(lb.text, "2 node listener bound to ");
        if (cases[i].warns != (hit != NULL)) {
            print_error("%s: log:\n%s", cases[i].listen, lb.text);
            fail();
        }
        if (hit)
            assert_non_null(
                strstr(hit, " without a secret: anyone who can reach it can answer jobs"));
        tempest_node_free(node);
    }
}

/* ---- Redis authentication -------------------------------------------------- */

static void test_requirepass(void **state) {
    fixture *f = *state;
    tt_redis r;
    const char *extra[] = {"--requirepass", "redis-pw", NULL};
    assert_int_equal(tt_redis_start(&r, extra), 0);
    char url[128];
    snprintf(url, sizeof url, "redis://:redis-pw@127.0.0.1:%d", r.port);
    tempest_node *p = up_node(f->base, url, SECRET, NULL);
    tempest_node *wn = up_node(f->base, url, SECRET, NULL);
    result res;
    assert_int_equal(round_trip(f->base, p, wn, "sec6", 3000, &res), 0);
    assert_int_equal(tt_redis_int(&r, "LLEN sec6"), 0);
    tempest_node_free(wn);
    tempest_node_free(p);
    tt_redis_stop(&r);
}

/* A synchronous command as the ACL file's admin user (the default user is off). */
static redisReply *admin(const tt_redis *r, const char *fmt, ...) {
    redisContext *c = redisConnect("127.0.0.1", r->port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    redisReply *rep = redisCommand(c, "AUTH admin admin-pw");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    va_list ap;
    va_start(ap, fmt);
    rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    assert_non_null(rep);
    return rep;
}

/* Prints every ACL denial; returns how many there were. */
static size_t acl_denials(const tt_redis *r) {
    redisReply *log = admin(r, "ACL LOG");
    assert_int_equal(log->type, REDIS_REPLY_ARRAY);
    size_t n = log->elements;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = log->element[i];
        fprintf(stderr, "ACL LOG:");
        for (size_t k = 0; k + 1 < e->elements; k += 2)
            if (e->element[k + 1]->type == REDIS_REPLY_STRING)
                fprintf(stderr, " %s=%s", e->element[k]->str, e->element[k + 1]->str);
        fprintf(stderr, "\n");
    }
    freeReplyObject(log);
    return n;
}

typedef struct http_result {
    int status;
    char body[256];
    bool done;
} http_result;

static void on_http(struct evhttp_request *req, void *arg) {
    http_result *h = arg;
    h->done = true;
    if (req == NULL)
        return;
    h->status = evhttp_request_get_response_code(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    n = n < sizeof h->body - 1 ? n : sizeof h->body - 1;
    evbuffer_remove(in, h->body, n);
    h->body[n] = '\0';
}

static bool http_done(void *arg) {
    return ((http_result *)arg)->done;
}

static void hello(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w, (void)arg;
    json_t *a = json_pack("[i{ss}s]", 200, "Content-Type", "text/plain", "hello under ACL");
    tempest_job_answer(job, a, false);
    json_decref(a);
}

/* An HTTP GET through a front on `p` and a worker on `wn`, queue `q`. */
static void front_round_trip(struct event_base *base, tempest_node *p, tempest_node *wn,
                             const char *q) {
    tempest_front_options fo = {.http = "127.0.0.1:0", .queue = q, .timeout_ms = 3000};
    tempest_front *front = tempest_front_new(p, &fo, NULL);
    assert_non_null(front);
    tempest_worker *w = tempest_worker_new(wn, &(tempest_worker_options){.queue = q}, NULL);
    assert_non_null(w);
    assert_int_equal(tempest_worker_on(w, "url", hello, NULL), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    http_result h = {0};
    struct evhttp_connection *conn =
        evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)tempest_front_port(front));
    assert_non_null(conn);
    struct evhttp_request *req = evhttp_request_new(on_http, &h);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    assert_int_equal(evhttp_make_request(conn, req, EVHTTP_REQ_GET, "/acl"), 0);
    assert_true(tt_run_until(base, http_done, &h, 5000));
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "hello under ACL");
    evhttp_connection_free(conn);
    tempest_worker_free(w);
    tempest_front_free(front);
}

/* A session write and read, then an answer marked cacheable. */
typedef struct sess_trip {
    int jobs;
    int status; /* of the last session call */
} sess_trip;

static void on_sess_get(tempest_job *job, int status, json_t *value, void *arg) {
    sess_trip *t = arg;
    t->status = status;
    char body[64];
    snprintf(body, sizeof body, "v=%lld", (long long)json_integer_value(value));
    json_t *a = json_pack("[i,{s:s},s]", 200, "X-Tempest-Cache", "60000", body);
    tempest_job_answer(job, a, false);
    json_decref(a);
}

static void on_sess_set(tempest_job *job, int status, json_t *value, void *arg) {
    (void)value;
    sess_trip *t = arg;
    t->status = status;
    if (status != 0 || tempest_session_get(job, "n", on_sess_get, t) != 0)
        tempest_job_fail(job, "session call failed", false);
}

static void on_sess_job(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    sess_trip *t = arg;
    t->jobs++;
    json_t *one = json_integer(1);
    if (tempest_session_set(job, "n", one, on_sess_set, t) != 0)
        tempest_job_fail(job, "session call failed", false);
    json_decref(one);
}

static char g_cookie[200]; /* the session cookie's name=value, from Set-Cookie */

static void on_sess_http(struct evhttp_request *req, void *arg) {
    const char *sc =
        req ? evhttp_find_header(evhttp_request_get_input_headers(req), "Set-Cookie") : NULL;
    if (sc)
        snprintf(g_cookie, sizeof g_cookie, "%.*s", (int)strcspn(sc, ";"), sc);
    on_http(req, arg);
}

static void sess_get(struct event_base *base, int port, const char *cookie, http_result *h) {
    struct evhttp_connection *conn =
        evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)port);
    assert_non_null(conn);
    struct evhttp_request *req = evhttp_request_new(on_sess_http, h);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    if (cookie)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Cookie", cookie);
    assert_int_equal(evhttp_make_request(conn, req, EVHTTP_REQ_GET, "/s"), 0);
    assert_true(tt_run_until(base, http_done, h, 5000));
    evhttp_connection_free(conn);
}

/* Sessions (HSET, PEXPIRE, HGET) and the cache (GET, SET PX) under ACL:
 * the second GET, with the session cookie, is served from the cache. */
static void session_cache_trip(struct event_base *base, tempest_node *p, tempest_node *wn,
                               const char *q) {
    tempest_front_options fo = {.http = "127.0.0.1:0",
                                .queue = q,
                                .timeout_ms = 3000,
                                .sessions = true,
                                .session_secret = "a secret for the ACL test",
                                .cache = true};
    tempest_front *front = tempest_front_new(p, &fo, NULL);
    assert_non_null(front);
    sess_trip t = {0};
    tempest_worker *w = tempest_worker_new(wn, &(tempest_worker_options){.queue = q}, NULL);
    assert_non_null(w);
    assert_int_equal(tempest_worker_on(w, "url", on_sess_job, &t), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    http_result h1 = {0}, h2 = {0};
    sess_get(base, tempest_front_port(front), NULL, &h1);
    assert_int_equal(h1.status, 200);
    assert_string_equal(h1.body, "v=1");
    assert_int_equal(t.status, 0);
    char cookie[200];
    snprintf(cookie, sizeof cookie, "%s", g_cookie);
    assert_int_equal(strncmp(cookie, "tempest_sid=", 12), 0);
    g_cookie[0] = '\0';
    sess_get(base, tempest_front_port(front), cookie, &h2); /* refreshes the TTL */
    assert_int_equal(h2.status, 200);
    assert_string_equal(h2.body, "v=1");
    assert_int_equal(t.jobs, 1);
    assert_string_equal(g_cookie, ""); /* the cookie was valid: kept */
    tt_run_for(base, 100);             /* the refresh's reply */
    tempest_worker_free(w);
    tempest_front_free(front);
}

/* Handlers that walk the other paths of the reliable queue. */
typedef struct paths {
    int flaky;         /* calls of "flaky": fails with retry once, then answers */
    int counted;       /* calls of "count" */
    tempest_job *held; /* the job "hold" keeps */
} paths;

static void on_path_job(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    paths *p = arg;
    const char *action = tempest_job_action(job);
    if (strcmp(action, "flaky") == 0 && p->flaky++ == 0) {
        tempest_job_fail(job, "try again", true);
    } else if (strcmp(action, "flaky") == 0) {
        json_t *a = json_string("second time lucky");
        tempest_job_answer(job, a, false);
        json_decref(a);
    } else if (strcmp(action, "count") == 0) {
        p->counted++;
        tempest_job_done(job);
    } else {
        p->held = job;
    }
}

static bool path_counted(void *arg) {
    return ((paths *)arg)->counted > 0;
}

static bool path_held(void *arg) {
    return ((paths *)arg)->held != NULL;
}

static bool worker_stopped(void *arg) {
    return tempest_worker_in_hand(arg) == 0;
}

/* Retry, the reaper (a fake dead worker), requeue at stop, and leave. */
static void queue_paths(struct event_base *base, const tt_redis *r, tempest_node *p,
                        tempest_node *wn) {
    paths ps = {0};
    tempest_worker_options wo = {.queue = "acl4",
                                 .block_timeout_ms = 100,
                                 .heartbeat_ms = 100,
                                 .ttl_ms = 300,
                                 .stop_grace_ms = 100};
    tempest_worker *w = tempest_worker_new(wn, &wo, NULL);
    assert_non_null(w);
    assert_int_equal(tempest_worker_on(w, "*", on_path_job, &ps), 0);
    assert_int_equal(tempest_worker_start(w), 0);
    result res = {0};
    tempest_work_options opt = {.timeout_ms = 3000};
    assert_true(tempest_work(p, "acl4", "flaky", NULL, &opt, on_answer, &res) > 0);
    assert_true(tt_run_until(base, answered, &res, 4000));
    assert_int_equal(res.status, 0);
    assert_int_equal(ps.flaky, 2);
    freeReplyObject(admin(r, "SADD {acl4}:workers 00000000deadbeef"));
    freeReplyObject(
        admin(r, "RPUSH {acl4}:processing:00000000deadbeef %s", "[\"count\",[],null,99]"));
    assert_true(tt_run_until(base, path_counted, &ps, 3000));
    assert_true(tempest_work(p, "acl4", "hold", NULL, NULL, NULL, NULL) > 0);
    assert_true(tt_run_until(base, path_held, &ps, 3000));
    tempest_worker_stop(w);
    assert_true(tt_run_until(base, worker_stopped, w, 3000));
    tt_run_for(base, 100);
    assert_int_equal(tempest_job_done(ps.held), TEMPEST_ECANCELED);
    redisReply *len = admin(r, "LLEN acl4");
    assert_int_equal(len->integer, 1); /* "hold" is back on its queue */
    freeReplyObject(len);
    tempest_worker_free(w);
}

typedef struct status_seen {
    bool done;
    int status;
    size_t nodes;
} status_seen;

static void on_status(tempest_node *node, int status, json_t *snapshot, void *arg) {
    (void)node;
    status_seen *st = arg;
    st->done = true;
    st->status = status;
    st->nodes = json_array_size(json_object_get(snapshot, "nodes"));
}

static void test_acl_user(void **state) {
    fixture *f = *state;
    const char *tmp = getenv("TMPDIR") != NULL && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char dir[512], path[560];
    snprintf(dir, sizeof dir, "%s/tempest-acl-XXXXXX", tmp);
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/users.acl", dir);
    FILE *file = fopen(path, "w");
    assert_non_null(file);
    fprintf(file, "user default off\n"
                  "user admin on >admin-pw ~* &* +@all\n"
                  "user tempest " ACL_RULES "\n");
    fclose(file);
    tt_redis r;
    const char *extra[] = {"--aclfile", path, NULL};
    int started = tt_redis_start(&r, extra);
    unlink(path); /* read at startup only */
    rmdir(dir);
    assert_int_equal(started, 0);
    char url[128];
    snprintf(url, sizeof url, "redis://tempest:pw@127.0.0.1:%d", r.port);

    logbuf plog = {0}, wlog = {0};
    tempest_node *p = up_node(f->base, url, SECRET, &plog);
    tempest_node *wn = up_node(f->base, url, SECRET, &wlog);
    result res;
    assert_int_equal(round_trip(f->base, p, wn, "acl1", 3000, &res), 0);
    assert_string_equal(res.answer, "[\"sum\",[2,3]]");
    front_round_trip(f->base, p, wn, "acl2");
    session_cache_trip(f->base, p, wn, "acl5");
    /* A job nobody can decode goes to the dead letters: that path too. */
    tempest_worker_options wo = {.queue = "acl3", .dead_letter = "acl3:dead"};
    tempest_worker *w = tempest_worker_new(wn, &wo, NULL);
    assert_int_equal(tempest_worker_start(w), 0);
    freeReplyObject(admin(&r, "RPUSH acl3 %s", "not json"));
    tt_run_for(f->base, 500);
    redisReply *dead = admin(&r, "LLEN acl3:dead");
    if (dead->integer != 1) {
        acl_denials(&r);
        print_error("no dead letter; worker log:\n%s", wlog.text);
    }
    assert_int_equal(dead->integer, 1);
    freeReplyObject(dead);
    tempest_worker_stop(w);
    tt_run_for(f->base, 300);
    tempest_worker_free(w);
    queue_paths(f->base, &r, p, wn);
    /* The monitor's read, and (when the nodes are freed) the withdrawals. */
    status_seen st = {0};
    assert_int_equal(tempest_cluster_status(p, NULL, on_status, &st), 0);
    for (int i = 0; i < 100 && !st.done; i++)
        tt_run_for(f->base, 20);
    assert_int_equal(st.status, 0);
    assert_true(st.nodes >= 2);
    tempest_node_free(wn);
    tempest_node_free(p);
    if (acl_denials(&r) != 0) {
        print_error("ACL denials (above); logs:\n%s%s", plog.text, wlog.text);
        fail();
    }

    /* The default user is off: without credentials nothing works. */
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", r.port);
    tempest_node *anon = tempest_node_new(f->base, &(tempest_node_options){.redis_url = url}, NULL);
    tt_run_for(f->base, 300);
    assert_int_not_equal(tempest_node_state(anon), TEMPEST_NODE_UP);
    tempest_node_free(anon);
    tt_redis_stop(&r);
}

int main(void) {
    tt_require_redis();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_noauth_first),
        cmocka_unit_test(test_wrongpass_closes),
        cmocka_unit_test(test_auth_forms),
        cmocka_unit_test(test_no_secret),
        cmocka_unit_test(test_preauth_limits),
        cmocka_unit_test(test_secret_is_copied),
        cmocka_unit_test(test_loopback_hosts),
        cmocka_unit_test(test_round_trip_with_secret),
        cmocka_unit_test(test_raw_client),
        cmocka_unit_test(test_node_limits),
        cmocka_unit_test(test_worker_without_secret),
        cmocka_unit_test(test_worker_wrong_secret),
        cmocka_unit_test(test_worker_secret_listener_without),
        cmocka_unit_test(test_env_secret),
        cmocka_unit_test(test_bind_warning),
        cmocka_unit_test(test_requirepass),
        cmocka_unit_test(test_acl_user),
    };
    return cmocka_run_group_tests_name("security", tests, group_setup, tt_node_teardown);
}
