/* SPDX-License-Identifier: MIT */
/*
 * The EventSource example client end to end, without the library or Redis: a
 * scripted SSE server on 127.0.0.1 (a thread on plain sockets, so the bytes
 * and their timing are exact) answers each connection of
 * $TEMPEST_BUILD_ROOT/examples/es_client in turn and records its requests.
 * The client must print each event as it arrives, reconnect after `retry:`
 * with the right Last-Event-ID, give up on a response that is not an event
 * stream, and exit 0 on `end`, after --max-events, or on SIGTERM.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "tt_proc.h"

#define WAIT_MS 10000
#define MAX_CONNS 4
#define REQ_SIZE 4096
#define OUT_SIZE 8192

/* What the server does with one connection: read the request, write each
 * piece (20 ms apart, so that they arrive as separate reads), then close,
 * or first wait for the client to close. With `chunked`, every piece after
 * the first (the head) goes out as one HTTP chunk, and no last chunk. */
typedef struct conn_script {
    const char *pieces[12]; /* NULL-ended */
    bool chunked;
    bool wait_eof;
} conn_script;

typedef struct server {
    int fd, port;
    const conn_script *script;
    int nconns;
    char requests[MAX_CONNS][REQ_SIZE];
    int nrequests;
    char error[256]; /* empty when all went as scripted */
    pthread_t thread;
    bool running;
} server;

typedef struct fx {
    server srv;
    pid_t pid;
    FILE *out, *err;
    char outbuf[OUT_SIZE], errbuf[OUT_SIZE];
} fx;

/* ---- the scripted server -------------------------------------------------- */

static bool readable(int fd, int ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) == 1;
}

static int write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

static int read_request(int fd, char *out) {
    size_t len = 0;
    while (strstr(out, "\r\n\r\n") == NULL) {
        if (len + 1 >= REQ_SIZE || !readable(fd, WAIT_MS))
            return -1;
        ssize_t k = recv(fd, out + len, REQ_SIZE - 1 - len, 0);
        if (k <= 0)
            return -1;
        len += (size_t)k;
        out[len] = '\0';
    }
    return 0;
}

static int send_piece(int fd, const char *piece, bool as_chunk) {
    char head[32];
    snprintf(head, sizeof head, "%zx\r\n", strlen(piece));
    if (as_chunk && write_all(fd, head, strlen(head)) != 0)
        return -1;
    if (write_all(fd, piece, strlen(piece)) != 0)
        return -1;
    return as_chunk ? write_all(fd, "\r\n", 2) : 0;
}

/* Waits for the client to close its end (it may send nothing more). */
static int wait_eof(int fd) {
    char buf[256];
    while (readable(fd, WAIT_MS))
        if (recv(fd, buf, sizeof buf, 0) <= 0)
            return 0;
    return -1;
}

static const char *serve_one(server *s, int i) {
    if (!readable(s->fd, WAIT_MS))
        return "no connection came";
    int fd = accept(s->fd, NULL, NULL);
    if (fd < 0)
        return "accept failed";
    const conn_script *c = &s->script[i];
    const char *error = NULL;
    if (read_request(fd, s->requests[i]) != 0)
        error = "no complete request";
    s->nrequests = i + 1;
    for (int k = 0; error == NULL && c->pieces[k] != NULL; k++) {
        if (send_piece(fd, c->pieces[k], c->chunked && k > 0) != 0)
            error = "write failed";
        usleep(20000);
    }
    if (error == NULL && c->wait_eof && wait_eof(fd) != 0)
        error = "the client did not close";
    close(fd);
    return error;
}

static void *serve(void *arg) {
    server *s = arg;
    for (int i = 0; i < s->nconns; i++) {
        const char *error = serve_one(s, i);
        if (error != NULL) {
            snprintf(s->error, sizeof s->error, "connection %d: %s", i + 1, error);
            return NULL;
        }
    }
    /* No connection beyond the script. */
    if (readable(s->fd, 300))
        snprintf(s->error, sizeof s->error, "an unexpected connection %d", s->nconns + 1);
    return NULL;
}

static void server_start(server *s, const conn_script *script, int nconns) {
    s->script = script;
    s->nconns = nconns;
    assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
    s->running = true;
}

/* Joins the server thread and fails the test if it saw anything unscripted. */
static void server_check(server *s) {
    if (s->running)
        pthread_join(s->thread, NULL);
    s->running = false;
    if (s->error[0] != '\0') {
        print_error("server: %s\n", s->error);
        fail();
    }
}

/* ---- the client process ---------------------------------------------------- */

static void exe_path(char *out, size_t size) {
    const char *root = getenv("TEMPEST_BUILD_ROOT");
    snprintf(out, size, "%s/examples/es_client", root != NULL && *root ? root : ".");
}

/* In the child between fork and exec: only async-signal-safe calls. */
static void child_exec(const char *exe, char *const *argv, int out, int err, pid_t parent) {
    tt_child_prepare(parent);
    if (dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(127);
    execv(exe, argv);
    _exit(127);
}

/* Starts es_client with `args` (NULL-ended, without argv[0]); its stdout and
 * stderr go to temporary files. */
static void spawn(fx *f, const char *const *args) {
    char exe[4096];
    char *argv[8] = {"es_client"};
    exe_path(exe, sizeof exe);
    for (int i = 0; args[i] != NULL && i < 6; i++)
        argv[i + 1] = (char *)args[i];
    assert_non_null(f->out = tmpfile());
    assert_non_null(f->err = tmpfile());
    pid_t parent = getpid();
    f->pid = fork();
    assert_true(f->pid >= 0);
    if (f->pid == 0)
        child_exec(exe, argv, fileno(f->out), fileno(f->err), parent);
}

static void slurp(FILE *fp, char *buf) {
    rewind(fp);
    size_t n = fread(buf, 1, OUT_SIZE - 1, fp);
    buf[n] = '\0';
}

/* Waits for the client to exit; returns its exit status (or -signal). */
static int wait_exit(fx *f) {
    int status = 0;
    for (int ms = 0; ms < WAIT_MS; ms += 10) {
        pid_t r = waitpid(f->pid, &status, WNOHANG);
        if (r == f->pid) {
            f->pid = 0;
            slurp(f->out, f->outbuf);
            slurp(f->err, f->errbuf);
            return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        }
        usleep(10000);
    }
    print_error("es_client did not exit within %d ms\n", WAIT_MS);
    fail();
    return -1;
}

static char *url(fx *f, char *buf, size_t size, const char *path) {
    snprintf(buf, size, "http://127.0.0.1:%d%s", f->srv.port, path);
    return buf;
}

/* ---- fixtures -------------------------------------------------------------- */

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    f->srv.fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->srv.fd >= 0);
    assert_int_equal(bind(f->srv.fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(f->srv.fd, 8), 0);
    assert_int_equal(getsockname(f->srv.fd, (struct sockaddr *)&a, &alen), 0);
    f->srv.port = ntohs(a.sin_port);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    if (f->pid > 0) {
        kill(f->pid, SIGKILL);
        waitpid(f->pid, NULL, 0);
    }
    if (f->srv.running)
        pthread_join(f->srv.thread, NULL);
    close(f->srv.fd);
    if (f->out != NULL)
        fclose(f->out);
    if (f->err != NULL)
        fclose(f->err);
    free(f);
    return 0;
}

/* ---- tests ----------------------------------------------------------------- */

#define SSE_HEAD                                                                                   \
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"            \
    "Connection: close\r\n\r\n"
#define SSE_HEAD_CHUNKED                                                                           \
    "HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\n"                        \
    "Transfer-Encoding: chunked\r\n\r\n"

static void assert_header(const char *request, const char *line) {
    const char *found = strstr(request, line);
    if (found == NULL)
        print_error("no \"%s\" in the request:\n%s", line, request);
    assert_non_null(found);
}

/* Three connections: a close-delimited stream that sets retry and ends
 * with half an event, a chunked one cut in the middle after an id without
 * data, then `end`. Each reconnect carries the last committed id. */
static void test_resume(void **state) {
    fx *f = *state;
    static const conn_script script[] = {
        {.pieces = {SSE_HEAD, "retry: 100\n: hello\n\ndata: Bob\n\n",
                    "event: greet\nid: 1\ndata: line one\ndata: line two\n\n",
                    "id: 2\ndata: plain\r\n\r\n", "event: partial\ndata: never dispatched\n",
                    NULL}},
        {.pieces = {SSE_HEAD_CHUNKED, "data: after resume\n\n", "id: 3\n\n", "data: cut", NULL},
         .chunked = true},
        {.pieces = {SSE_HEAD, "event: end\ndata\n\n", NULL}, .wait_eof = true},
    };
    char u[128];
    server_start(&f->srv, script, 3);
    spawn(f, (const char *[]){url(f, u, sizeof u, "/sub/test?x=1"), NULL});
    assert_int_equal(wait_exit(f), 0);
    server_check(&f->srv);
    assert_string_equal(f->outbuf, "message: Bob\n"
                                   "greet: line one\nline two\n"
                                   "message: plain\n"
                                   "message: after resume\n"
                                   "end: \n");
    char host[64];
    snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", f->srv.port);
    for (int i = 0; i < 3; i++) {
        const char *r = f->srv.requests[i];
        assert_true(strncmp(r, "GET /sub/test?x=1 HTTP/1.1\r\n", 28) == 0);
        assert_header(r, host);
        assert_header(r, "\r\nAccept: text/event-stream\r\n");
        assert_header(r, "\r\nCache-Control: no-cache\r\n");
    }
    assert_null(strstr(f->srv.requests[0], "Last-Event-ID"));
    assert_header(f->srv.requests[1], "\r\nLast-Event-ID: 2\r\n");
    assert_header(f->srv.requests[2], "\r\nLast-Event-ID: 3\r\n");
    assert_non_null(strstr(f->errbuf, "stream ended; reconnecting in 100 ms"));
    assert_non_null(strstr(f->errbuf, "connection lost; reconnecting in 100 ms"));
}

/* Chunks that split a BOM, lines and CRLF pairs: each event is printed once
 * it is complete. */
static void test_split_chunks(void **state) {
    fx *f = *state;
    static const conn_script script[] = {
        {.pieces = {SSE_HEAD_CHUNKED, "\xEF\xBB", "\xBF: hi\r", "\ndata: a\r", "\n\r",
                    "\nevent: end\r", "\ndata\r\n", "\r\n", NULL},
         .chunked = true,
         .wait_eof = true},
    };
    char u[128];
    server_start(&f->srv, script, 1);
    spawn(f, (const char *[]){url(f, u, sizeof u, "/"), NULL});
    assert_int_equal(wait_exit(f), 0);
    server_check(&f->srv);
    assert_string_equal(f->outbuf, "message: a\nend: \n");
}

/* Stops after N events even when more came in the same read. */
static void test_max_events(void **state) {
    fx *f = *state;
    static const conn_script script[] = {
        {.pieces = {SSE_HEAD, "data: 1\n\nevent: two\ndata: 2\n\ndata: 3\n\n", NULL},
         .wait_eof = true},
    };
    char u[128];
    server_start(&f->srv, script, 1);
    spawn(f, (const char *[]){"--max-events", "2", url(f, u, sizeof u, "/sub/x"), NULL});
    assert_int_equal(wait_exit(f), 0);
    server_check(&f->srv);
    assert_string_equal(f->outbuf, "message: 1\ntwo: 2\n");
}

/* Not a 200, or not an event stream: the connection fails for good. */
static void test_fail_connection(void **state) {
    fx *f = *state;
    static const conn_script not_found[] = {
        {.pieces = {"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", NULL}},
    };
    char u[128];
    server_start(&f->srv, not_found, 1);
    spawn(f, (const char *[]){url(f, u, sizeof u, "/sub/x"), NULL});
    assert_int_equal(wait_exit(f), 1);
    server_check(&f->srv);
    assert_string_equal(f->outbuf, "");
    assert_non_null(strstr(f->errbuf, "HTTP 404 Not Found"));
}

static void test_fail_content_type(void **state) {
    fx *f = *state;
    static const conn_script plain[] = {
        {.pieces =
             {"HTTP/1.1 200 OK\r\nContent-Type: text/event-streamer\r\nConnection: close\r\n\r\n"
              "data: x\n\n",
              NULL}},
    };
    char u[128];
    server_start(&f->srv, plain, 1);
    spawn(f, (const char *[]){url(f, u, sizeof u, "/sub/x"), NULL});
    assert_int_equal(wait_exit(f), 1);
    server_check(&f->srv);
    assert_string_equal(f->outbuf, "");
    assert_non_null(strstr(f->errbuf, "text/event-streamer is not text/event-stream"));
}

/* SIGTERM while streaming: exit 0, and the connection closes. */
static void test_sigterm(void **state) {
    fx *f = *state;
    static const conn_script script[] = {
        {.pieces = {SSE_HEAD, "data: hi\n\n", NULL}, .wait_eof = true},
    };
    char u[128];
    server_start(&f->srv, script, 1);
    spawn(f, (const char *[]){url(f, u, sizeof u, "/sub/x"), NULL});
    struct stat st = {0};
    for (int ms = 0; ms < WAIT_MS && st.st_size < 12; ms += 10) {
        usleep(10000);
        fstat(fileno(f->out), &st);
    }
    assert_int_equal(st.st_size, 12); /* "message: hi\n", flushed at once */
    kill(f->pid, SIGTERM);
    assert_int_equal(wait_exit(f), 0);
    server_check(&f->srv);
    assert_string_equal(f->outbuf, "message: hi\n");
}

static void test_usage(void **state) {
    fx *f = *state;
    spawn(f, (const char *[]){NULL});
    assert_int_equal(wait_exit(f), 2);
    assert_non_null(strstr(f->errbuf, "usage: es_client"));
    fclose(f->out);
    fclose(f->err);
    spawn(f, (const char *[]){"--max-events", "0", "http://127.0.0.1/", NULL});
    assert_int_equal(wait_exit(f), 2);
    fclose(f->out);
    fclose(f->err);
    spawn(f, (const char *[]){"https://127.0.0.1/", NULL});
    assert_int_equal(wait_exit(f), 1);
    assert_non_null(strstr(f->errbuf, "not an http:// URL"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fail_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fail_content_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigterm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
