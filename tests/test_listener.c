/* SPDX-License-Identifier: MIT */
/*
 * Tests of the node listener. The protocol core (tp_session) is fed byte by
 * byte and cut at every split point of a pipelined input, with inline
 * commands, every built-in, dispatched commands with binary arguments,
 * protocol errors and limits, and random input. The socket side runs a
 * tp_listener on 127.0.0.1 and a free port with plain non-blocking client
 * sockets driven from the same event loop: pipelining, a bad connection that
 * closes alone, max_connections, QUIT, half-close, backpressure, freeing the
 * listener from its own callback, and redis-cli when it is installed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include <tempest/tempest.h>

#include "harness.h"
#include "tt_proc.h"
#include "listener.h"

#define LIT(s) (s), (sizeof(s) - 1)

/* ---- a command callback that records what it gets ---------------------- */

typedef struct recorder {
    int calls;
    char log[1 << 14]; /* per call: argc, then "|len:bytes" per argument, then '\n' */
    size_t log_len;
    int big;                /* replies given to "big" */
    tp_listener **listener; /* freed by the "free" command */
} recorder;

static void log_bytes(recorder *r, const void *p, size_t n) {
    if (n > sizeof r->log - r->log_len)
        n = sizeof r->log - r->log_len;
    memcpy(r->log + r->log_len, p, n);
    r->log_len += n;
}

static void log_printf(recorder *r, const char *fmt, ...) {
    char text[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    log_bytes(r, text, (size_t)n);
}

static void big_reply(recorder *r, const char *arg, struct evbuffer *out) {
    size_t n = strtoul(arg, NULL, 10);
    char *p = malloc(n);
    assert_non_null(p);
    memset(p, 'a' + r->big % 26, n);
    r->big++;
    tp_resp_bulk(out, p, n);
    free(p);
}

static void on_command(void *arg, int argc, const char **argv, const size_t *argvlen,
                       struct evbuffer *out) {
    recorder *r = arg;
    r->calls++;
    log_printf(r, "%d", argc);
    for (int i = 0; i < argc; i++) {
        assert_int_equal(argv[i][argvlen[i]], '\0');
        log_printf(r, "|%zu:", argvlen[i]);
        log_bytes(r, argv[i], argvlen[i]);
    }
    log_bytes(r, "\n", 1);
    if (strcasecmp(argv[0], "big") == 0 && argc >= 2)
        big_reply(r, argv[1], out);
    else if (strcasecmp(argv[0], "noreply") == 0)
        return;
    else if (strcasecmp(argv[0], "peer?") == 0)
        tp_resp_status(out, tp_listener_peer(out) ? "yes" : "no");
    else if (strcasecmp(argv[0], "free") == 0) {
        tp_listener_free(*r->listener);
        *r->listener = NULL;
        tp_resp_status(out, "OK");
    } else
        tp_resp_status(out, "OK");
}

/* ---- session helpers -------------------------------------------------- */

static void assert_buffer(struct evbuffer *out, const char *expect, size_t len) {
    size_t n = evbuffer_get_length(out);
    const char *got = (const char *)evbuffer_pullup(out, -1);
    if (n != len || (len > 0 && memcmp(got, expect, len) != 0)) {
        print_error("got %zu bytes:\n%.*s\nexpected %zu bytes:\n%.*s\n", n, (int)n, got, len,
                    (int)len, expect);
        fail();
    }
}

/* Feeds `in` whole to a fresh session; returns rc, replies in `out`. */
static int feed_once(const tp_listener_limits *lim, recorder *r, const char *in, size_t len,
                     struct evbuffer *out) {
    tp_session *s = tp_session_new(lim, on_command, r);
    assert_non_null(s);
    int rc = tp_session_feed(s, in, len, out);
    tp_session_free(s);
    return rc;
}

/* Feeds `in` one byte at a time; `at` gets the index of the byte that ended it (or len). */
static int feed_bytes(const tp_listener_limits *lim, recorder *r, const char *in, size_t len,
                      struct evbuffer *out, size_t *at) {
    tp_session *s = tp_session_new(lim, on_command, r);
    assert_non_null(s);
    int rc = 0;
    size_t i = 0;
    for (; i < len && rc == 0; i++)
        rc = tp_session_feed(s, in + i, 1, out);
    if (at != NULL)
        *at = rc == 0 ? len : i - 1;
    tp_session_free(s);
    return rc;
}

/* Feeds `in` cut at `a` and `b` (a <= b <= len). */
static int feed_cut(recorder *r, const char *in, size_t len, size_t a, size_t b,
                    struct evbuffer *out) {
    tp_session *s = tp_session_new(NULL, on_command, r);
    assert_non_null(s);
    int rc = tp_session_feed(s, in, a, out);
    if (rc == 0)
        rc = tp_session_feed(s, in + a, b - a, out);
    if (rc == 0)
        rc = tp_session_feed(s, in + b, len - b, out);
    tp_session_free(s);
    return rc;
}

static void reset(recorder *r, struct evbuffer *out) {
    memset(r, 0, sizeof *r);
    evbuffer_drain(out, evbuffer_get_length(out));
}

/* ---- RESP helpers ----------------------------------------------------- */

static void test_resp_helpers(void **state) {
    (void)state;
    struct evbuffer *out = evbuffer_new();
    tp_resp_status(out, "OK");
    tp_resp_error(out, "ERR two\r\nlines\n");
    tp_resp_error(out, "NOAUTH Authentication required.");
    tp_resp_integer(out, -42);
    tp_resp_bulk(out, "a\0b", 3);
    tp_resp_bulk(out, NULL, 0);
    tp_resp_nil(out);
    assert_buffer(out, LIT("+OK\r\n-ERR two  lines \r\n-NOAUTH Authentication required.\r\n"
                           ":-42\r\n$3\r\na\0b\r\n$0\r\n\r\n$-1\r\n"));
    evbuffer_free(out);
}

/* ---- session: framing ------------------------------------------------- */

static const char pipeline[] = "*1\r\n$4\r\nPING\r\n"
                               "*4\r\n$3\r\nurl\r\n$2\r\n42\r\n$12\r\n[200,{},\"x\"]\r\n"
                               "$4\r\nMORE\r\n"
                               "ECHO hi\r\n"
                               "*2\r\n$3\r\nbin\r\n$3\r\na\0b\r\n"
                               "ping\n"
                               "\r\n"
                               "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"
                               "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$3\r\nbob\r\n"
                               "*2\r\n$6\r\nclient\r\n$7\r\ngetname\r\n"
                               "url 7 [1] \r\n";

static const char pipeline_replies[] = "+PONG\r\n+OK\r\n$2\r\nhi\r\n+OK\r\n+PONG\r\n$0\r\n\r\n"
                                       "+OK\r\n$3\r\nbob\r\n+OK\r\n";

static const char pipeline_log[] = "4|3:url|2:42|12:[200,{},\"x\"]|4:MORE\n"
                                   "2|3:bin|3:a\0b\n"
                                   "3|3:url|1:7|3:[1]\n";

static void assert_pipeline(recorder *r, struct evbuffer *out) {
    assert_buffer(out, LIT(pipeline_replies));
    assert_int_equal(r->calls, 3);
    assert_int_equal(r->log_len, sizeof pipeline_log - 1);
    assert_memory_equal(r->log, pipeline_log, sizeof pipeline_log - 1);
}

static void test_pipeline_whole_and_bytewise(void **state) {
    (void)state;
    recorder r;
    struct evbuffer *out = evbuffer_new();
    reset(&r, out);
    assert_int_equal(feed_once(NULL, &r, LIT(pipeline), out), 0);
    assert_pipeline(&r, out);
    reset(&r, out);
    assert_int_equal(feed_bytes(NULL, &r, LIT(pipeline), out, NULL), 0);
    assert_pipeline(&r, out);
    evbuffer_free(out);
}

static void test_pipeline_every_split(void **state) {
    (void)state;
    recorder r;
    struct evbuffer *out = evbuffer_new();
    size_t len = sizeof pipeline - 1;
    for (size_t a = 0; a <= len; a++) {
        for (size_t b = a; b <= len; b++) {
            reset(&r, out);
            assert_int_equal(feed_cut(&r, pipeline, len, a, b, out), 0);
            assert_pipeline(&r, out);
        }
    }
    evbuffer_free(out);
}

static void test_inline(void **state) {
    (void)state;
    recorder r;
    struct evbuffer *out = evbuffer_new();
    reset(&r, out);
    const char in[] = "PING\r\n\r\n\n  ECHO\t  hello  \r\nurl 42 [1] MORE\n"
                      "*1\r\n$4\r\nPING\r\nping x\r\n";
    assert_int_equal(feed_once(NULL, &r, LIT(in), out), 0);
    assert_buffer(out, LIT("+PONG\r\n$5\r\nhello\r\n+OK\r\n+PONG\r\n$1\r\nx\r\n"));
    assert_int_equal(r.calls, 1);
    static const char log[] = "4|3:url|2:42|3:[1]|4:MORE\n";
    assert_int_equal(r.log_len, sizeof log - 1);
    assert_memory_equal(r.log, log, sizeof log - 1);
    evbuffer_free(out);
}

static void test_inline_limit(void **state) {
    (void)state;
    recorder r;
    struct evbuffer *out = evbuffer_new();
    size_t max = 64 << 10;
    char *in = malloc(max + 3);
    assert_non_null(in);
    memset(in, 'a', max + 3);
    memcpy(in, "ECHO ", 5);
    memcpy(in + max, "\r\n", 2);
    /* 64 KiB and a CRLF is fine */
    reset(&r, out);
    assert_int_equal(feed_once(NULL, &r, in, max + 2, out), 0);
    assert_int_equal(evbuffer_get_length(out), strlen("$65531\r\n") + max - 5 + 2);
    /* one byte more without a newline is not */
    in[max] = 'a';
    in[max + 1] = 'a';
    reset(&r, out);
    assert_int_equal(feed_once(NULL, &r, in, max + 2, out), -1);
    assert_buffer(out, LIT("-ERR Protocol error: too big inline request\r\n"));
    reset(&r, out);
    size_t at;
    assert_int_equal(feed_bytes(NULL, &r, in, max + 2, out, &at), -1);
    assert_int_equal(at, max + 1);
    /* a smaller max_request caps inline commands too */
    reset(&r, out);
    assert_int_equal(
        feed_once(&(tp_listener_limits){.max_request = 10}, &r, LIT("ECHO 0123456789\r\n"), out),
        -1);
    assert_buffer(out, LIT("-ERR Protocol error: too big inline request\r\n"));
    free(in);
    evbuffer_free(out);
}

static void test_large_requests(void **state) {
    (void)state;
    enum { BIG = 200000 };
    char *in = malloc(BIG + 64);
    assert_non_null(in);
    int h = snprintf(in, 64, "*2\r\n$4\r\nECHO\r\n$%d\r\n", BIG);
    memset(in + h, 'z', BIG);
    memcpy(in + h + BIG, "\r\nPING\r\n", 8);
    size_t len = (size_t)h + BIG + 8;
    struct evbuffer *out = evbuffer_new();
    tp_session *s = tp_session_new(NULL, NULL, NULL);
    /* in pieces of 1000 bytes, as a socket would give them */
    for (size_t i = 0; i < len; i += 1000)
        assert_int_equal(tp_session_feed(s, in + i, len - i < 1000 ? len - i : 1000, out), 0);
    size_t hl = strlen("$200000\r\n");
    assert_int_equal(evbuffer_get_length(out), hl + BIG + 2 + 7);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    assert_memory_equal(text, "$200000\r\nzzz", hl + 3);
    assert_memory_equal(text + hl + BIG, "\r\n+PONG\r\n", 9);
    tp_session_free(s);
    /* an inline line over 64 KiB that ends with a bare LF */
    size_t max = 64 << 10;
    memset(in, 'a', max + 1);
    in[max + 1] = '\n';
    recorder r;
    reset(&r, out);
    assert_int_equal(feed_once(NULL, &r, in, max + 2, out), -1);
    assert_buffer(out, LIT("-ERR Protocol error: too big inline request\r\n"));
    free(in);
    evbuffer_free(out);
}

/* ---- session: built-ins ----------------------------------------------- */

struct exchange {
    const char *in;
    const char *out;
};

static void run_exchanges(tp_session *s, const struct exchange *x, size_t n) {
    struct evbuffer *out = evbuffer_new();
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(tp_session_feed(s, x[i].in, strlen(x[i].in), out), 0);
        assert_buffer(out, x[i].out, strlen(x[i].out));
        evbuffer_drain(out, evbuffer_get_length(out));
    }
    evbuffer_free(out);
}

/* HELLO's reply (session id 1) in RESP2 and RESP3. */
#define HELLO2                                                                                     \
    "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:2\r\n$" \
    "2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$"          \
    "7\r\nmodules\r\n*0\r\n"
#define HELLO3                                                                                     \
    "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:3\r\n$"  \
    "2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$"          \
    "7\r\nmodules\r\n*0\r\n"

static void test_builtins(void **state) {
    (void)state;
    static const struct exchange x[] = {
        {"PING\r\n", "+PONG\r\n"},
        {"pInG\r\n", "+PONG\r\n"},
        {"*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n", "$5\r\nhello\r\n"},
        {"PING a b\r\n", "-ERR wrong number of arguments for 'ping' command\r\n"},
        {"*2\r\n$4\r\necho\r\n$3\r\nx y\r\n", "$3\r\nx y\r\n"},
        {"ECHO\r\n", "-ERR wrong number of arguments for 'echo' command\r\n"},
        {"SELECT 3\r\n", "+OK\r\n"},
        {"select -1\r\n", "+OK\r\n"},
        {"SELECT x\r\n", "-ERR invalid DB index\r\n"},
        {"SELECT 1x\r\n", "-ERR invalid DB index\r\n"},
        {"SELECT\r\n", "-ERR wrong number of arguments for 'select' command\r\n"},
        {"CLIENT GETNAME\r\n", "$-1\r\n"},
        {"CLIENT SETNAME bob\r\n", "+OK\r\n"},
        {"client getname\r\n", "$3\r\nbob\r\n"},
        {"CLIENT SETNAME\r\n", "-ERR wrong number of arguments for 'client|setname' command\r\n"},
        {"CLIENT ID\r\n", ":1\r\n"},
        {"CLIENT SETINFO lib-name redis-py\r\n", "+OK\r\n"},
        {"CLIENT SETINFO LIB-VER 5.0.1\r\n", "+OK\r\n"},
        {"CLIENT NO-EVICT on\r\n", "+OK\r\n"},
        {"CLIENT INFO\r\n", "$30\r\nid=1 name=bob db=0 cmd=client\n\r\n"},
        {"CLIENT\r\n", "-ERR wrong number of arguments for 'client' command\r\n"},
        {"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$0\r\n\r\n", "+OK\r\n"},
        {"CLIENT GETNAME\r\n", "$-1\r\n"},
        {"COMMAND\r\n", "*0\r\n"},
        {"COMMAND DOCS\r\n", "*0\r\n"},
        {"command count\r\n", "*0\r\n"},
        {"HELLO 4\r\n", "-NOPROTO unsupported protocol version\r\n"},
        {"HELLO x\r\n", "-ERR Protocol version is not an integer or out of range\r\n"},
        {"HELLO 3 FOO BAR\r\n", "-ERR Syntax error in HELLO option 'FOO'\r\n"},
        {"*1\r\n$5\r\nhello\r\n", HELLO2},
        {"HELLO 3 AUTH default any SETNAME carol\r\n", HELLO3},
        {"CLIENT GETNAME\r\n", "$5\r\ncarol\r\n"},
        {"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$0\r\n\r\n", "+OK\r\n"},
        {"CLIENT GETNAME\r\n", "_\r\n"}, /* RESP3's null */
        {"HELLO 2\r\n", HELLO2},
        {"CLIENT GETNAME\r\n", "$-1\r\n"},
        {"READONLY\r\n", "+OK\r\n"},
        {"readwrite\r\n", "+OK\r\n"},
        {"INFO nosuchsection\r\n", "$0\r\n\r\n"},
        {"INFO replication\r\n",
         "$48\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n"},
    };
    recorder r;
    memset(&r, 0, sizeof r);
    tp_session *s = tp_session_new(NULL, on_command, &r);
    run_exchanges(s, x, sizeof x / sizeof *x);
    assert_int_equal(r.calls, 0); /* built-ins never reach the callback */
    tp_session_free(s);
}

/* `TEMPEST PEER <version>` marks the session as a libtempest peer; its
 * command fn can tell (tp_listener_peer), and nothing else sets it. */
static void test_tempest_peer(void **state) {
    (void)state;
    static const char usage[] = "-ERR usage: TEMPEST PEER <protocol version>\r\n";
    static const struct exchange x[] = {
        {"peer? 1 x\r\n", "+no\r\n"},
        {"CLIENT SETNAME tempest\r\n", "+OK\r\n"},
        {"TEMPEST PEER\r\n", usage},
        {"TEMPEST PEER 0\r\n", usage},
        {"TEMPEST PEER -1\r\n", usage},
        {"TEMPEST PEER one\r\n", usage},
        {"TEMPEST HELLO 1\r\n", usage},
        {"peer? 1 x\r\n", "+no\r\n"},
        {"*3\r\n$7\r\ntempest\r\n$4\r\npeer\r\n$1\r\n1\r\n", "+OK\r\n"},
        {"peer? 1 x\r\n", "+yes\r\n"},
        {"tempest 7 [1]\r\n", "+OK\r\n"}, /* an answer to a job named tempest */
    };
    recorder r;
    memset(&r, 0, sizeof r);
    tp_session *s = tp_session_new(NULL, on_command, &r);
    run_exchanges(s, x, sizeof x / sizeof *x);
    assert_int_equal(r.calls, 4); /* three peer? and the answer named tempest */
    tp_session_free(s);
    assert_true(tp_listener_peer(NULL)); /* outside a command: precise replies */
}

static void assert_info(const char *in, bool all) {
    static const char server[] = "# Server\r\nredis_version:7.0.0\r\n"
                                 "tempest_version:" TEMPEST_VERSION_STRING "\r\n"
                                 "tempest_features:raw,progress,cancel,check\r\n"
                                 "redis_mode:standalone\r\n";
    struct evbuffer *out = evbuffer_new();
    tp_session *s = tp_session_new(NULL, NULL, NULL);
    assert_int_equal(tp_session_feed(s, in, strlen(in), out), 0);
    size_t n = evbuffer_get_length(out);
    char *text = calloc(1, n + 1);
    evbuffer_remove(out, text, n);
    char *body = strstr(text, "\r\n") + 2;
    assert_int_equal(strtoul(text + 1, NULL, 10), n - (size_t)(body - text) - 2);
    assert_memory_equal(body, server, sizeof server - 1);
    assert_true((strstr(body, "loading:0\r\n") != NULL) == all);
    assert_true((strstr(body, "role:master\r\n") != NULL) == all);
    free(text);
    tp_session_free(s);
    evbuffer_free(out);
}

static void test_info(void **state) {
    (void)state;
    assert_info("INFO\r\n", true);
    assert_info("*1\r\n$4\r\ninfo\r\n", true);
    assert_info("INFO all\r\n", true);
    assert_info("INFO server\r\n", false);
    assert_info("INFO SERVER clients\r\n", false);
}

static void test_client_id_and_unknown(void **state) {
    (void)state;
    static const struct exchange x[] = {
        {"FOO bar\r\n", "-ERR unknown command 'FOO'\r\n"},
        {"CLIENT ID\r\n", ":1\r\n"},
    };
    tp_session *s = tp_session_new(NULL, NULL, NULL);
    run_exchanges(s, x, sizeof x / sizeof *x);
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(tp_session_feed(s, LIT("*1\r\n$5\r\nf\r\no\0\r\n"), out), 0);
    assert_buffer(out, LIT("-ERR unknown command 'f??o?'\r\n"));
    evbuffer_free(out);
    tp_session_free(s);
}

static void test_quit(void **state) {
    (void)state;
    recorder r;
    struct evbuffer *out = evbuffer_new();
    const char in[] = "PING\r\nQUIT\r\nurl 1 [1]\r\n";
    reset(&r, out);
    assert_int_equal(feed_once(NULL, &r, LIT(in), out), 1);
    assert_buffer(out, LIT("+PONG\r\n+OK\r\n"));
    assert_int_equal(r.calls, 0);
    reset(&r, out);
    size_t at;
    assert_int_equal(feed_bytes(NULL, &r, LIT(in), out, &at), 1);
    assert_int_equal(at, strlen("PING\r\nQUIT\r\n") - 1);
    /* multibulk, with more input after it and a later feed */
    tp_session *s = tp_session_new(NULL, on_command, &r);
    reset(&r, out);
    assert_int_equal(tp_session_feed(s, LIT("*1\r\n$4\r\nquit\r\n*1\r\n$4\r\nPING\r\n"), out), 1);
    assert_int_equal(tp_session_feed(s, LIT("PING\r\n"), out), 1);
    assert_buffer(out, LIT("+OK\r\n"));
    tp_session_free(s);
    evbuffer_free(out);
}

/* ---- session: dispatch ------------------------------------------------ */

static void test_dispatch_exact(void **state) {
    (void)state;
    recorder r;
    struct evbuffer *out = evbuffer_new();
    const char in[] = "*4\r\n$3\r\nurl\r\n$2\r\n42\r\n$12\r\n[200,{},\"x\"]\r\n$4\r\nMORE\r\n"
                      "*3\r\n$3\r\nbin\r\n$5\r\n\0\r\n\0\n\r\n$0\r\n\r\n"
                      "*1\r\n$7\r\nnoreply\r\n";
    reset(&r, out);
    assert_int_equal(feed_once(NULL, &r, LIT(in), out), 0);
    assert_buffer(out, LIT("+OK\r\n+OK\r\n-ERR the command gave no reply\r\n"));
    assert_int_equal(r.calls, 3);
    static const char log[] = "4|3:url|2:42|12:[200,{},\"x\"]|4:MORE\n"
                              "3|3:bin|5:\0\r\n\0\n|0:\n"
                              "1|7:noreply\n";
    assert_int_equal(r.log_len, sizeof log - 1);
    assert_memory_equal(r.log, log, sizeof log - 1);
    evbuffer_free(out);
}

/* ---- session: errors and limits --------------------------------------- */

struct bad_input {
    const char *in;
    size_t len;
    const char *reply; /* after "-ERR Protocol error: "; NULL: any (hiredis 1.x and
                          Debian's 0.14.1 check lengths themselves, older ones do not) */
};

#define BAD(in, reply)                                                                             \
    { (in), sizeof(in) - 1, (reply) }

static void assert_refused(const tp_listener_limits *lim, const struct bad_input *b) {
    recorder r;
    struct evbuffer *out = evbuffer_new();
    char expect[256];
    snprintf(expect, sizeof expect, "-ERR Protocol error: %s\r\n", b->reply);
    reset(&r, out);
    if (feed_once(lim, &r, b->in, b->len, out) != -1) {
        print_error("input %.*s was accepted\n", (int)b->len, b->in);
        fail();
    }
    if (b->reply != NULL)
        assert_buffer(out, expect, strlen(expect));
    /* byte by byte too: one error line, then nothing more */
    reset(&r, out);
    assert_int_equal(feed_bytes(lim, &r, b->in, b->len, out, NULL), -1);
    assert_int_equal(r.calls, 0);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    assert_true(evbuffer_get_length(out) > 24);
    assert_memory_equal(text, "-ERR Protocol error: ", 21);
    assert_ptr_equal(strstr(text, "\r\n"), text + evbuffer_get_length(out) - 2);
    evbuffer_free(out);
}

static void test_protocol_errors(void **state) {
    (void)state;
    static const struct bad_input bad[] = {
        BAD("$4\r\nPING\r\n", "expected '*', got '$'"),
        BAD(":1\r\n", "expected '*', got ':'"),
        BAD("+PING\r\n", "expected '*', got '+'"),
        BAD("*1\r\n:1\r\n", "expected '$', got ':'"),
        BAD("*1\r\n+PING\r\n", "expected '$', got '+'"),
        BAD("*1\r\n*1\r\n$4\r\nPING\r\n", "expected '$', got '*'"),
        BAD("*0\r\n", "empty request"),
        BAD("*-1\r\n", "expected an array of bulk strings"),
        BAD("*1x\r\n", NULL),
        BAD("*1\r\n$-1\r\n", "invalid bulk length"),
        BAD("*2\r\n$4\r\nECHO\r\n$x\r\n", NULL),
        BAD("*1\r\n$04\r\nPING\r\n", NULL),
        BAD("*1\r\n$+4\r\nPING\r\n", NULL),
        BAD("*1\r\n$4\r\nPINGxx", "invalid bulk length"),
        BAD("*1\r\n$18446744073709551620\r\nPING\r\n", NULL),
        BAD("*4294967297\r\n$4\r\nPING\r\n", NULL),
        BAD("*01\r\n$4\r\nPING\r\n", NULL),
        BAD("*1\r\n?x\r\n", "got \"?\" as reply type byte"),
        BAD("*-2\r\n", NULL),
        BAD("*2147483648\r\n", NULL),
        BAD("*1\r\n$-2\r\n", NULL),
        BAD("PING\r\n*1\r\n:1\r\n", "expected '$', got ':'"),
        BAD("*1\r\n$4\r\nPING\r\n$4\r\nPING\r\n", "expected '*', got '$'"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const struct bad_input *b = &bad[i];
        if (strncmp(b->in, "PING", 4) == 0 || strstr(b->in, "PING\r\n$4") != NULL) {
            /* a valid command comes first: only check the final rc and error */
            recorder r;
            struct evbuffer *out = evbuffer_new();
            reset(&r, out);
            assert_int_equal(feed_once(NULL, &r, b->in, b->len, out), -1);
            const char *text = (const char *)evbuffer_pullup(out, -1);
            assert_non_null(strstr(text, b->reply));
            assert_memory_equal(text, "+PONG\r\n-ERR Protocol error: ", 28);
            evbuffer_free(out);
            continue;
        }
        assert_refused(NULL, b);
    }
}

static void test_refuses_more_input(void **state) {
    (void)state;
    struct evbuffer *out = evbuffer_new();
    tp_session *s = tp_session_new(NULL, NULL, NULL);
    assert_int_equal(tp_session_feed(s, LIT("*1\r\n:1\r\n"), out), -1);
    evbuffer_drain(out, evbuffer_get_length(out));
    assert_int_equal(tp_session_feed(s, LIT("PING\r\n"), out), -1);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(tp_session_feed(NULL, LIT("PING\r\n"), out), -1);
    tp_session_free(s);
    tp_session_free(NULL);
    evbuffer_free(out);
}

static void test_oversize_announced(void **state) {
    (void)state;
    const tp_listener_limits lim = {.max_request = 1024};
    const char in[] = "*2\r\n$3\r\nurl\r\n$999999999\r\n";
    struct bad_input b = BAD(in, "request over the limit of 1024 bytes");
    assert_refused(&lim, &b);
    /* it fails on the header's LF, without waiting for the data */
    recorder r;
    struct evbuffer *out = evbuffer_new();
    size_t at;
    reset(&r, out);
    assert_int_equal(feed_bytes(&lim, &r, LIT(in), out, &at), -1);
    assert_int_equal(at, sizeof in - 2);
    /* a length too long for any limit fails before its CRLF */
    reset(&r, out);
    assert_int_equal(feed_bytes(&lim, &r, LIT("*1\r\n$99999999999999999999999\r\n"), out, &at), -1);
    assert_true(at < strlen("*1\r\n$9999999999999999999"));
    /* garbage where a length should be */
    struct bad_input g = BAD("*1\r\n$12a", "invalid length");
    recorder r2;
    reset(&r2, out);
    assert_int_equal(feed_once(NULL, &r2, g.in, g.len, out), -1);
    assert_buffer(out, LIT("-ERR Protocol error: invalid length\r\n"));
    evbuffer_free(out);
}

static void test_oversize_total(void **state) {
    (void)state;
    const tp_listener_limits lim = {.max_request = 1024};
    recorder r;
    struct evbuffer *out = evbuffer_new();
    char in[2048];
    /* three arguments of 400 bytes: the third header overflows the request */
    int n = snprintf(in, sizeof in,
                     "*4\r\n$3\r\nset\r\n$400\r\n%0400d\r\n$400\r\n%0400d\r\n$400\r\n", 0, 0);
    size_t at;
    reset(&r, out);
    assert_int_equal(feed_bytes(&lim, &r, in, (size_t)n, out, &at), -1);
    assert_int_equal(at, (size_t)n - 1);
    assert_buffer(out, LIT("-ERR Protocol error: request over the limit of 1024 bytes\r\n"));
    reset(&r, out);
    assert_int_equal(feed_once(&lim, &r, in, (size_t)n, out), -1);
    /* whole requests: the reader's pending bytes count, the data arrives at once */
    n = snprintf(in, sizeof in, "*2\r\n$3\r\nset\r\n$1100\r\n%01100d\r\n", 0);
    reset(&r, out);
    assert_int_equal(feed_once(&lim, &r, in, (size_t)n, out), -1);
    /* right at the limit is fine */
    n = snprintf(in, sizeof in, "*2\r\n$3\r\nset\r\n$1021\r\n%01021d\r\n", 0);
    reset(&r, out);
    assert_int_equal(feed_once(&lim, &r, in, (size_t)n, out), 0);
    assert_buffer(out, LIT("+OK\r\n"));
    reset(&r, out);
    assert_int_equal(feed_bytes(&lim, &r, in, (size_t)n, out, NULL), 0);
    assert_int_equal(r.calls, 1);
    evbuffer_free(out);
}

static void test_too_many_args(void **state) {
    (void)state;
    const tp_listener_limits lim = {.max_args = 3};
    struct bad_input b = BAD("*4\r\n$3\r\nurl\r\n", "4 arguments, the limit is 3");
    assert_refused(&lim, &b);
    struct bad_input i = BAD("url 1 [1] MORE\r\n", "too many arguments in inline request");
    assert_refused(&lim, &i);
    recorder r;
    struct evbuffer *out = evbuffer_new();
    reset(&r, out);
    assert_int_equal(feed_once(&lim, &r,
                               LIT("*3\r\n$3\r\nurl\r\n$1\r\n1\r\n$3\r\n[1]\r\n"
                                   "url 2 [2]\r\n"),
                               out),
                     0);
    assert_buffer(out, LIT("+OK\r\n+OK\r\n"));
    /* the default is 1024 */
    char big[32];
    snprintf(big, sizeof big, "*%d\r\n", 1025);
    reset(&r, out);
    assert_int_equal(feed_once(NULL, &r, big, strlen(big), out), -1);
    evbuffer_free(out);
}

/* Random input cut at random points: never a crash, a leak or an inconsistency. */
static uint64_t next_random(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static size_t random_input(uint64_t *seed, char *buf, size_t cap) {
    static const char *const parts[] = {
        "*",
        "*1\r\n",
        "*2\r\n",
        "*3\r\n",
        "$",
        "$0\r\n",
        "$1\r\n",
        "$3\r\n",
        "$4\r\n",
        "-1",
        "\r\n",
        "\r",
        "\n",
        "1",
        "4",
        "PING",
        "url",
        "quit",
        " ",
        "\t",
        ":",
        "+",
        "x",
        "99999999999999999999",
        "\r\nPING\r\n",
        "*1\r\n$4\r\nPING\r\n",
        "ECHO a\r\n",
        "$-1\r\n",
        "*-1\r\n",
        "?",
        "0",
        "abc",
    };
    size_t len = 0;
    size_t n = next_random(seed) % 24;
    for (size_t i = 0; i < n; i++) {
        uint64_t k = next_random(seed) % (sizeof parts / sizeof *parts + 1);
        const char *p = k < sizeof parts / sizeof *parts ? parts[k] : NULL;
        size_t plen = p != NULL ? strlen(p) : 1;
        if (len + plen > cap)
            break;
        if (p != NULL)
            memcpy(buf + len, p, plen);
        else
            buf[len] = (char)next_random(seed);
        len += plen;
    }
    return len;
}

static void test_random_input(void **state) {
    (void)state;
    const tp_listener_limits lim = {.max_request = 64, .max_args = 4};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    char in[512];
    recorder r1, r2;
    struct evbuffer *out1 = evbuffer_new(), *out2 = evbuffer_new();
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = random_input(&seed, in, sizeof in);
        reset(&r1, out1);
        reset(&r2, out2);
        int rc1 = feed_once(&lim, &r1, in, len, out1);
        int rc2 = feed_bytes(&lim, &r2, in, len, out2, NULL);
        assert_true(rc1 >= -1 && rc1 <= 1);
        if (rc1 != rc2 || r1.calls != r2.calls || r1.log_len != r2.log_len ||
            memcmp(r1.log, r2.log, r1.log_len) != 0) {
            print_error("input %zu bytes: %.*s\nrc %d vs %d\n", len, (int)len, in, rc1, rc2);
            fail();
        }
        if (rc1 != -1)
            assert_int_equal(evbuffer_get_length(out1), evbuffer_get_length(out2));
    }
    evbuffer_free(out1);
    evbuffer_free(out2);
}

/* ---- sockets ---------------------------------------------------------- */

enum { NCLIENTS = 4 };

typedef struct client {
    int fd;
    char buf[4096];
    size_t len;
    bool eof;
    const char *send; /* what is left to send */
    size_t send_len;
    bool reading;     /* read from the socket when pumped */
    struct event *ev; /* reads as soon as data arrives, when set */
    /* streaming check of "big" replies instead of buf */
    size_t reply_len; /* bytes of each bulk's data; 0: fill buf */
    size_t total;     /* bytes expected */
    size_t checked;   /* bytes received and checked */
    bool mismatch;
} client;

typedef struct fixture {
    struct event_base *base;
    tp_listener *l;
    recorder rec;
    client c[NCLIENTS];
} fixture;

static int fixture_listen(fixture *f, const tp_listener_limits *lim) {
    char err[200] = "";
    tp_listener_free(f->l);
    f->l = tp_listener_new(f->base, "127.0.0.1", 0, lim, on_command, &f->rec, err, sizeof err);
    assert_non_null(f->l);
    assert_true(tp_listener_port(f->l) > 0);
    f->rec.listener = &f->l;
    return tp_listener_port(f->l);
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->base = event_base_new();
    assert_non_null(f->base);
    for (int i = 0; i < NCLIENTS; i++)
        f->c[i].fd = -1;
    fixture_listen(f, NULL);
    *state = f;
    return 0;
}

static void client_close(client *c) {
    if (c->ev != NULL)
        event_free(c->ev);
    c->ev = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static int teardown(void **state) {
    fixture *f = *state;
    for (int i = 0; i < NCLIENTS; i++)
        client_close(&f->c[i]);
    tp_listener_free(f->l);
    event_base_free(f->base);
    free(f);
    return 0;
}

static void client_open(client *c, int port, int rcvbuf) {
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
    c->reading = true;
}

static void client_send(client *c, const char *p, size_t n) {
    c->send = p;
    c->send_len = n;
}

static void client_check_big(client *c, const char *p, size_t n) {
    char header[32];
    size_t hlen = (size_t)snprintf(header, sizeof header, "$%zu\r\n", c->reply_len);
    size_t each = hlen + c->reply_len + 2;
    for (size_t i = 0; i < n; i++, c->checked++) {
        size_t k = c->checked / each, o = c->checked % each;
        char want = o < hlen                  ? header[o]
                    : o < hlen + c->reply_len ? (char)('a' + k % 26)
                                              : "\r\n"[o - hlen - c->reply_len];
        c->mismatch |= p[i] != want;
    }
}

static void client_receive(client *c) {
    while (c->reading && !c->eof) {
        char tmp[65536];
        bool big = c->reply_len > 0;
        size_t room = big ? sizeof tmp : sizeof c->buf - c->len;
        if (room == 0)
            break;
        ssize_t n = recv(c->fd, big ? tmp : c->buf + c->len, room, 0);
        if (n < 0)
            break;
        c->eof = n == 0;
        if (big)
            client_check_big(c, tmp, (size_t)n);
        else
            c->len += (size_t)n;
    }
}

/* Sends and receives what the socket takes without blocking. */
static void client_pump(client *c) {
    if (c->fd < 0)
        return;
    while (c->send_len > 0) {
        ssize_t n = send(c->fd, c->send, c->send_len, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        c->send += n;
        c->send_len -= (size_t)n;
    }
    client_receive(c);
}

static void client_on_event(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    client_pump(arg);
}

struct waiter {
    struct event_base *base;
    bool (*cond)(void *);
    void *arg;
    struct timespec deadline;
    bool ok;
};

static bool passed(const struct timespec *t) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t->tv_sec || (now.tv_sec == t->tv_sec && now.tv_nsec >= t->tv_nsec);
}

static void waiter_tick(evutil_socket_t fd, short what, void *arg) {
    struct waiter *w = arg;
    (void)fd, (void)what;
    if (w->cond(w->arg)) {
        w->ok = true;
        event_base_loopbreak(w->base);
    } else if (passed(&w->deadline)) {
        event_base_loopbreak(w->base);
    }
}

/* Runs the loop until cond(arg) holds (checked every millisecond) or `ms` pass. */
static bool run_until(struct event_base *base, bool (*cond)(void *), void *arg, int ms) {
    struct waiter w = {.base = base, .cond = cond, .arg = arg};
    clock_gettime(CLOCK_MONOTONIC, &w.deadline);
    w.deadline.tv_sec += ms / 1000;
    w.deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (w.deadline.tv_nsec >= 1000000000L) {
        w.deadline.tv_sec++;
        w.deadline.tv_nsec -= 1000000000L;
    }
    struct event *ev = event_new(base, -1, EV_PERSIST, waiter_tick, &w);
    struct timeval tv = {.tv_usec = 1000};
    event_add(ev, &tv);
    event_base_dispatch(base);
    event_free(ev);
    return w.ok;
}

/* What clients of a fixture wait for: `want` bytes, EOF, a connection count. */
struct expect {
    fixture *f;
    size_t want[NCLIENTS];
    bool eof[NCLIENTS];
    int conns; /* -1: any */
};

static bool expect_done(void *arg) {
    struct expect *e = arg;
    bool done = e->conns < 0 || (e->f->l != NULL && tp_listener_connections(e->f->l) == e->conns);
    for (int i = 0; i < NCLIENTS; i++) {
        client *c = &e->f->c[i];
        client_pump(c);
        if (c->fd >= 0)
            done = done && (c->len >= e->want[i] || c->eof) && (!e->eof[i] || c->eof);
    }
    return done;
}

static void wait_for(fixture *f, struct expect e) {
    e.f = f;
    assert_true(run_until(f->base, expect_done, &e, 5000));
}

static void assert_client(const client *c, const char *expect, size_t len, bool eof) {
    if (c->len != len || memcmp(c->buf, expect, len) != 0) {
        print_error("client got %zu bytes: %.*s\nexpected: %.*s\n", c->len, (int)c->len, c->buf,
                    (int)len, expect);
        fail();
    }
    assert_int_equal(c->eof, eof);
}

static void test_socket_pipeline(void **state) {
    fixture *f = *state;
    int port = tp_listener_port(f->l);
    client_open(&f->c[0], port, 0);
    static const char req[] =
        "*1\r\n$4\r\nPING\r\n"
        "*4\r\n$3\r\nurl\r\n$2\r\n42\r\n$12\r\n[200,{},\"x\"]\r\n$4\r\nMORE\r\n"
        "*2\r\n$3\r\nbin\r\n$3\r\na\0b\r\n"
        "ECHO hi\r\nCLIENT ID\r\n";
    static const char rep[] = "+PONG\r\n+OK\r\n+OK\r\n$2\r\nhi\r\n:1\r\n";
    client_send(&f->c[0], LIT(req));
    wait_for(f, (struct expect){.want = {sizeof rep - 1}, .conns = 1});
    assert_client(&f->c[0], LIT(rep), false);
    static const char log[] = "4|3:url|2:42|12:[200,{},\"x\"]|4:MORE\n2|3:bin|3:a\0b\n";
    assert_int_equal(f->rec.log_len, sizeof log - 1);
    assert_memory_equal(f->rec.log, log, sizeof log - 1);
    /* a second connection gets the next id */
    client_open(&f->c[1], port, 0);
    client_send(&f->c[1], LIT("CLIENT ID\r\n"));
    wait_for(f, (struct expect){.want = {0, 4}, .conns = 2});
    assert_client(&f->c[1], LIT(":2\r\n"), false);
}

static void test_socket_bad_client_alone(void **state) {
    fixture *f = *state;
    int port = tp_listener_port(f->l);
    client_open(&f->c[0], port, 0);
    client_open(&f->c[1], port, 0);
    client_send(&f->c[1], LIT("PING\r\n*1\r\n:1\r\nPING\r\n"));
    static const char rep[] = "+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n";
    wait_for(f, (struct expect){.eof = {false, true}, .conns = 1});
    assert_client(&f->c[1], LIT(rep), true);
    client_close(&f->c[1]);
    client_send(&f->c[0], LIT("*1\r\n$4\r\nPING\r\n"));
    wait_for(f, (struct expect){.want = {7}, .conns = 1});
    assert_client(&f->c[0], LIT("+PONG\r\n"), false);
    /* an oversize announcement is refused without the data */
    client_close(&f->c[0]);
    fixture_listen(f, &(tp_listener_limits){.max_request = 1000});
    client_open(&f->c[2], tp_listener_port(f->l), 0);
    client_send(&f->c[2], LIT("*2\r\n$3\r\nset\r\n$1000000\r\nabc"));
    static const char big[] = "-ERR Protocol error: request over the limit of 1000 bytes\r\n";
    wait_for(f, (struct expect){.eof = {[2] = true}, .conns = 0});
    assert_client(&f->c[2], LIT(big), true);
}

static void test_socket_max_connections(void **state) {
    fixture *f = *state;
    int port = fixture_listen(f, &(tp_listener_limits){.max_connections = 2});
    client_open(&f->c[0], port, 0);
    client_open(&f->c[1], port, 0);
    wait_for(f, (struct expect){.conns = 2});
    client_open(&f->c[2], port, 0);
    static const char full[] = "-ERR max number of clients reached\r\n";
    wait_for(f, (struct expect){.eof = {[2] = true}, .conns = 2});
    assert_client(&f->c[2], LIT(full), true);
    client_close(&f->c[2]);
    /* the others still work; once one leaves, a new one gets in */
    client_send(&f->c[1], LIT("PING\r\n"));
    wait_for(f, (struct expect){.want = {0, 7}, .conns = 2});
    assert_client(&f->c[1], LIT("+PONG\r\n"), false);
    client_close(&f->c[0]);
    wait_for(f, (struct expect){.conns = 1});
    client_open(&f->c[3], port, 0);
    client_send(&f->c[3], LIT("PING\r\n"));
    wait_for(f, (struct expect){.want = {[3] = 7}, .conns = 2});
    assert_client(&f->c[3], LIT("+PONG\r\n"), false);
    assert_client(&f->c[1], LIT("+PONG\r\n"), false);
}

static void test_socket_quit_and_half_close(void **state) {
    fixture *f = *state;
    int port = tp_listener_port(f->l);
    client_open(&f->c[0], port, 0);
    client_open(&f->c[1], port, 0);
    client_send(&f->c[0], LIT("PING\r\nQUIT\r\nPING\r\n"));
    client_send(&f->c[1], LIT("*2\r\n$4\r\nECHO\r\n$3\r\nbye\r\n"));
    client_pump(&f->c[1]);
    assert_int_equal(shutdown(f->c[1].fd, SHUT_WR), 0);
    wait_for(f, (struct expect){.eof = {true, true}, .conns = 0});
    assert_client(&f->c[0], LIT("+PONG\r\n+OK\r\n"), true);
    assert_client(&f->c[1], LIT("$3\r\nbye\r\n"), true);
    /* a client that leaves without a word */
    client_close(&f->c[0]);
    client_close(&f->c[1]);
    client_open(&f->c[2], port, 0);
    wait_for(f, (struct expect){.conns = 1});
    client_close(&f->c[2]);
    wait_for(f, (struct expect){.conns = 0});
    /* and one that resets the connection */
    client_open(&f->c[3], port, 0);
    wait_for(f, (struct expect){.conns = 1});
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(f->c[3].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    client_close(&f->c[3]);
    wait_for(f, (struct expect){.conns = 0});
}

static bool never(void *arg) {
    client_pump(arg);
    return false;
}

static bool big_done(void *arg) {
    client *c = arg;
    client_pump(c);
    return c->eof || c->mismatch || c->checked >= c->total;
}

static void test_socket_backpressure(void **state) {
    fixture *f = *state;
    enum { COUNT = 300, REPLY = 65536, PAD = 1000 };
    int port = fixture_listen(f, &(tp_listener_limits){.max_buffered = 16384});
    char one[1200];
    int n = snprintf(one, sizeof one, "*3\r\n$3\r\nbig\r\n$5\r\n%d\r\n$%d\r\n%0*d\r\n", REPLY, PAD,
                     PAD, 0);
    char *req = malloc((size_t)n * COUNT);
    assert_non_null(req);
    for (int i = 0; i < COUNT; i++)
        memcpy(req + (size_t)i * (size_t)n, one, (size_t)n);
    client *c = &f->c[0];
    client_open(c, port, 4096);
    c->reply_len = REPLY;
    c->total = (size_t)COUNT * (strlen("$65536\r\n") + REPLY + 2);
    c->reading = false;
    client_send(c, req, (size_t)n * COUNT);
    /* the client does not read: the listener stops reading too */
    run_until(f->base, never, c, 300);
    assert_true(f->rec.calls > 0);
    assert_true(f->rec.calls < COUNT);
    /* once it reads, everything arrives, in order */
    int big = 1 << 20;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    c->reading = true;
    c->ev = event_new(f->base, c->fd, EV_READ | EV_PERSIST, client_on_event, c);
    event_add(c->ev, NULL);
    assert_true(run_until(f->base, big_done, c, 30000));
    assert_int_equal(c->checked, c->total);
    assert_false(c->mismatch);
    assert_false(c->eof);
    assert_int_equal(f->rec.calls, COUNT);
    client_close(c);
    free(req);
}

static bool listener_gone(void *arg) {
    fixture *f = arg;
    for (int i = 0; i < NCLIENTS; i++)
        client_pump(&f->c[i]);
    return f->l == NULL;
}

static void wait_eof(client *c) {
    for (int k = 0; k < 5000 && !c->eof; k++) {
        client_pump(c);
        struct timespec ts = {.tv_nsec = 1000000};
        nanosleep(&ts, NULL);
    }
    assert_true(c->eof);
}

static void test_socket_free_in_callback(void **state) {
    fixture *f = *state;
    int port = tp_listener_port(f->l);
    client_open(&f->c[0], port, 0);
    client_open(&f->c[1], port, 0);
    client_send(&f->c[1], LIT("PING\r\n"));
    wait_for(f, (struct expect){.want = {0, 7}, .conns = 2});
    client_send(&f->c[0], LIT("free\r\nurl 1 [1]\r\n"));
    assert_true(run_until(f->base, listener_gone, f, 5000));
    assert_int_equal(f->rec.calls, 1); /* "url" after "free" never ran */
    wait_eof(&f->c[0]);
    wait_eof(&f->c[1]);
}

static void test_free_with_clients(void **state) {
    fixture *f = *state;
    int port = tp_listener_port(f->l);
    client_open(&f->c[0], port, 0);
    client_open(&f->c[1], port, 0);
    client_send(&f->c[1], LIT("*3\r\n$3\r\nurl\r\n$2\r\n42\r\n$1000\r\npartial"));
    wait_for(f, (struct expect){.conns = 2});
    run_until(f->base, never, &f->c[1], 50);
    tp_listener_free(f->l);
    f->l = NULL;
    tp_listener_free(NULL);
    run_until(f->base, never, &f->c[1], 10); /* libevent closes freed bufferevents' sockets */
    assert_int_equal(tp_listener_connections(NULL), 0);
    assert_int_equal(tp_listener_port(NULL), -1);
    wait_eof(&f->c[0]);
    wait_eof(&f->c[1]);
    assert_int_equal(f->rec.calls, 0);
}

static void test_ipv6(void **state) {
    fixture *f = *state;
    char err[200] = "";
    tp_listener *l = tp_listener_new(f->base, "::1", 0, NULL, NULL, NULL, err, sizeof err);
    if (l == NULL)
        skip(); /* no IPv6 loopback here */
    assert_true(tp_listener_port(l) > 0);
    tp_listener_free(l);
}

/* Out of descriptors: the listener pauses accepting, then takes the connection. */
static void test_accept_error_retry(void **state) {
    fixture *f = *state;
    struct rlimit old, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    int probe = open("/dev/null", O_RDONLY); /* the lowest free descriptor */
    assert_true(probe >= 0);
    close(probe);
    low = old;
    low.rlim_cur = (rlim_t)probe + 1; /* room for the client socket, not for accept() */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    client_open(&f->c[0], tp_listener_port(f->l), 0);
    run_until(f->base, never, &f->c[0], 30);
    int conns = tp_listener_connections(f->l);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    assert_int_equal(conns, 0);
    client_send(&f->c[0], LIT("PING\r\n"));
    wait_for(f, (struct expect){.want = {7}, .conns = 1});
    assert_client(&f->c[0], LIT("+PONG\r\n"), false);
}

static void test_bind_errors(void **state) {
    fixture *f = *state;
    char err[200] = "";
    int port = tp_listener_port(f->l);
    tp_listener *l =
        tp_listener_new(f->base, "127.0.0.1", port, NULL, on_command, NULL, err, sizeof err);
    assert_null(l);
    assert_non_null(strstr(err, "cannot bind 127.0.0.1"));
    assert_non_null(strstr(err, "in use"));
    err[0] = '\0';
    assert_null(tp_listener_new(f->base, "256.1.2.3", 0, NULL, NULL, NULL, err, sizeof err));
    assert_true(strlen(err) > 0);
    err[0] = '\0';
    assert_null(tp_listener_new(f->base, "127.0.0.1", 70000, NULL, NULL, NULL, err, sizeof err));
    assert_true(strlen(err) > 0);
    assert_null(tp_listener_new(NULL, "127.0.0.1", 0, NULL, NULL, NULL, NULL, 0));
}

/* ---- redis-cli -------------------------------------------------------- */

static void test_redis_cli(void **state) {
    fixture *f = *state;
    if (!tt_have_redis_cli())
        skip();
    int port = tp_listener_port(f->l);
    char *out = tt_redis_cli(f->base, port, (const char *const[]){"ping", NULL});
    assert_string_equal(out, "PONG\n");
    free(out);
    out = tt_redis_cli(f->base, port,
                       (const char *const[]){"url", "42", "[200,{},\"x\"]", "MORE", NULL});
    assert_string_equal(out, "OK\n");
    free(out);
    out = tt_redis_cli(f->base, port, (const char *const[]){"info", "server", NULL});
    assert_non_null(strstr(out, "redis_version:7.0.0"));
    assert_non_null(strstr(out, "tempest_version:" TEMPEST_VERSION_STRING));
    free(out);
    out = tt_redis_cli(f->base, port, (const char *const[]){"-n", "3", "echo", "hi", NULL});
    assert_string_equal(out, "hi\n");
    free(out);
    static const char log[] = "4|3:url|2:42|12:[200,{},\"x\"]|4:MORE\n";
    assert_int_equal(f->rec.log_len, sizeof log - 1);
    assert_memory_equal(f->rec.log, log, sizeof log - 1);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resp_helpers),
        cmocka_unit_test(test_pipeline_whole_and_bytewise),
        cmocka_unit_test(test_pipeline_every_split),
        cmocka_unit_test(test_inline),
        cmocka_unit_test(test_inline_limit),
        cmocka_unit_test(test_large_requests),
        cmocka_unit_test(test_builtins),
        cmocka_unit_test(test_tempest_peer),
        cmocka_unit_test(test_info),
        cmocka_unit_test(test_client_id_and_unknown),
        cmocka_unit_test(test_quit),
        cmocka_unit_test(test_dispatch_exact),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_refuses_more_input),
        cmocka_unit_test(test_oversize_announced),
        cmocka_unit_test(test_oversize_total),
        cmocka_unit_test(test_too_many_args),
        cmocka_unit_test(test_random_input),
        cmocka_unit_test_setup_teardown(test_socket_pipeline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_socket_bad_client_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_socket_max_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_socket_quit_and_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_socket_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_socket_free_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accept_error_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bind_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_cli, setup, teardown),
    };
    return cmocka_run_group_tests_name("listener", tests, NULL, NULL);
}
