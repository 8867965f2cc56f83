/* SPDX-License-Identifier: MIT */
/*
 * The example programs as a user runs them: a private redis-server, the
 * example front and two example workers as child processes (from
 * $TEMPEST_BUILD_ROOT/examples), HTTP requests on plain blocking sockets,
 * then SIGTERM and a clean exit 0; workers as responders and `call`. Also
 * the error paths: a bad flag, and a
 * Redis nobody listens on. Every child is killed and reaped in teardown,
 * and asks the kernel to SIGKILL it if the test dies.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"
#include "tt_proc.h"

#define WAIT_MS 5000
#define MAX_CHILDREN 6
#define OUT_SIZE 8192
#define NREQUESTS 8

static tt_redis g_redis;

/* A child process with its stdout and stderr on pipes. */
typedef struct child {
    pid_t pid;  /* 0 when not running (or reaped) */
    int status; /* waitpid status once reaped */
    bool reaped;
    int out, err; /* read ends, -1 when closed */
    char outbuf[OUT_SIZE], errbuf[OUT_SIZE];
    size_t outlen, errlen;
} child;

typedef struct fx {
    child children[MAX_CHILDREN];
    int nchildren;
} fx;

/* ---- processes ------------------------------------------------------------ */

static void exe_path(char *out, size_t size, const char *name) {
    const char *root = getenv("TEMPEST_BUILD_ROOT");
    snprintf(out, size, "%s/examples/%s", root && *root ? root : ".", name);
}

/* In the child between fork and exec: only async-signal-safe calls. */
static void child_exec(const char *exe, char *const *argv, int out, int err, pid_t parent) {
    tt_child_prepare(parent);
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(127);
    execv(exe, argv);
    _exit(127);
}

/* Starts examples/<argv[0]> with `argv` (NULL-ended). */
static child *spawn(fx *f, char *const *argv) {
    char exe[PATH_MAX];
    int out[2], err[2];
    assert_true(f->nchildren < MAX_CHILDREN);
    exe_path(exe, sizeof exe, argv[0]);
    assert_int_equal(access(exe, X_OK), 0);
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    assert_int_equal(pipe2(err, O_CLOEXEC), 0);
    child *c = &f->children[f->nchildren++];
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        child_exec(exe, argv, out[1], err[1], parent);
    close(out[1]);
    close(err[1]);
    *c = (child){.pid = pid, .out = out[0], .err = err[0]};
    return c;
}

/* Reads what is available on one pipe; closes it at EOF. */
static void drain(int *fd, char *buf, size_t *len) {
    char tmp[1024];
    ssize_t n = read(*fd, tmp, sizeof tmp);
    if (n > 0) {
        size_t room = OUT_SIZE - 1 - *len;
        size_t take = (size_t)n < room ? (size_t)n : room;
        memcpy(buf + *len, tmp, take);
        *len += take;
        buf[*len] = '\0';
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        close(*fd);
        *fd = -1;
    }
}

/* Waits up to `ms` for output from `c`; returns false on timeout or EOF. */
static bool pump(child *c, int ms) {
    struct pollfd p[2] = {{.fd = c->out, .events = POLLIN}, {.fd = c->err, .events = POLLIN}};
    if (c->out < 0 && c->err < 0)
        return false;
    int n = poll(p, 2, ms);
    if (n <= 0)
        return false;
    if (p[0].revents)
        drain(&c->out, c->outbuf, &c->outlen);
    if (p[1].revents)
        drain(&c->err, c->errbuf, &c->errlen);
    return true;
}

static bool has_line(const child *c, const char *line) {
    size_t n = strlen(line);
    for (const char *s = c->outbuf; (s = strstr(s, line)) != NULL; s++)
        if ((s == c->outbuf || s[-1] == '\n') && s[n] == '\n')
            return true;
    return false;
}

/* Waits until stdout holds `line` (a whole line) or `ms` pass. */
static bool wait_line(child *c, const char *line, int ms) {
    long long deadline = tt_now_ms() + ms;
    while (!has_line(c, line)) {
        long long left = deadline - tt_now_ms();
        if (left <= 0 || (c->out < 0 && c->err < 0)) {
            fprintf(stderr, "no line '%s'; stdout: %s\nstderr: %s\n", line, c->outbuf, c->errbuf);
            return false;
        }
        pump(c, (int)left);
    }
    return true;
}

/* Waits up to `ms` for the child to exit, reading its output meanwhile. */
static bool wait_exit(child *c, int ms) {
    long long deadline = tt_now_ms() + ms;
    while (!c->reaped) {
        if (waitpid(c->pid, &c->status, WNOHANG) == c->pid) {
            c->reaped = true;
            break;
        }
        long long left = deadline - tt_now_ms();
        if (left <= 0)
            return false;
        int step = left < 10 ? (int)left : 10;
        if (c->out >= 0 || c->err >= 0) {
            pump(c, step);
        } else {
            struct timespec ts = {0, (long)step * 1000000L};
            nanosleep(&ts, NULL); /* pipes closed: only the exit is left to see */
        }
    }
    while ((c->out >= 0 || c->err >= 0) && pump(c, 100)) {
    }
    return true;
}

static void child_free(child *c) {
    if (c->pid > 0 && !c->reaped) {
        kill(c->pid, SIGKILL);
        while (waitpid(c->pid, &c->status, 0) == -1 && errno == EINTR) {
        }
    }
    if (c->out >= 0)
        close(c->out);
    if (c->err >= 0)
        close(c->err);
    memset(c, 0, sizeof *c);
    c->out = c->err = -1;
}

/* ---- HTTP over a blocking socket ------------------------------------------ */

/* GET `path` with Connection: close; fills `resp` (NUL-terminated). */
static bool http_get(int port, const char *path, char *resp, size_t size) {
    char req[256];
    int n =
        snprintf(req, sizeof req,
                 "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", path, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct timeval tv = {WAIT_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    size_t len = 0;
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
              send(fd, req, (size_t)n, MSG_NOSIGNAL) == n;
    while (ok && len + 1 < size) {
        ssize_t got = recv(fd, resp + len, size - 1 - len, 0);
        if (got == 0)
            break;
        if (got < 0 && errno == EINTR)
            continue;
        ok = got > 0;
        if (ok)
            len += (size_t)got;
    }
    resp[len] = '\0';
    close(fd);
    return ok;
}

/* ---- fixture -------------------------------------------------------------- */

static int group_setup(void **state) {
    signal(SIGPIPE, SIG_IGN);
    return tt_group_setup(state);
}

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    for (int i = 0; i < MAX_CHILDREN; i++)
        f->children[i].out = f->children[i].err = -1;
    if (tt_redis_int(&g_redis, "FLUSHALL") != 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    for (int i = 0; i < MAX_CHILDREN; i++)
        child_free(&f->children[i]);
    free(f);
    return 0;
}

static bool exited_with(child *c, int code) {
    if (!WIFEXITED(c->status) || WEXITSTATUS(c->status) != code) {
        fprintf(stderr, "exit status %#x (wanted exit %d); stderr: %s\n", c->status, code,
                c->errbuf);
        return false;
    }
    return true;
}

/* ---- tests ---------------------------------------------------------------- */

/* The body must be exactly "Hello world! #N\n"; returns N, or -1. */
static int hello_number(const char *resp) {
    const char *body = strstr(resp, "\r\n\r\n");
    char want[64];
    int n = -1;
    if (body == NULL || sscanf(body + 4, "Hello world! #%d", &n) != 1)
        return -1;
    snprintf(want, sizeof want, "Hello world! #%d\n", n);
    return strcmp(body + 4, want) == 0 ? n : -1;
}

/* The counter `role.name` of the node record with process id `pid`, or -1. */
static long long counter_of(json_t *snap, pid_t pid, const char *role, const char *name) {
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(snap, "nodes"), i, n) {
        if (json_integer_value(json_object_get(n, "pid")) == pid) {
            json_t *part = json_object_get(json_object_get(n, "stats"), role);
            json_t *v = json_object_get(part, name);
            return json_is_integer(v) ? json_integer_value(v) : -1;
        }
    }
    return -1;
}

/* `monitor --once --json` and `monitor --once` see the front and both
 * workers, with the counters of the requests just served. */
static void check_monitor(fx *f, pid_t front_pid) {
    struct timespec beat = {1, 200000000}; /* records are at most 1 s old */
    nanosleep(&beat, NULL);
    char *json_argv[] = {"monitor", "--redis", g_redis.url, "--once", "--json", NULL};
    child *m = spawn(f, json_argv);
    assert_true(wait_exit(m, WAIT_MS));
    assert_true(exited_with(m, 0));
    json_error_t e;
    json_t *snap = json_loads(m->outbuf, 0, &e);
    if (snap == NULL)
        fprintf(stderr, "monitor --json printed: %s\n(%s)\n", m->outbuf, e.text);
    assert_non_null(snap);
    assert_int_equal(json_array_size(json_object_get(snap, "nodes")), 3);
    assert_true(counter_of(snap, front_pid, "front", "requests") >= NREQUESTS);
    assert_int_equal(counter_of(snap, front_pid, "front", "errors"), 0);
    long long jobs = 0;
    for (int i = 1; i <= 2; i++)
        jobs += counter_of(snap, f->children[i].pid, "worker", "jobs");
    assert_int_equal(jobs, NREQUESTS);
    json_t *q = json_array_get(json_object_get(snap, "queues"), 0);
    assert_string_equal(json_string_value(json_object_get(q, "name")), "tempest");
    assert_int_equal(json_integer_value(json_object_get(q, "workers")), 2);
    json_decref(snap);

    char *text_argv[] = {"monitor", "--redis", g_redis.url, "--once", NULL};
    child *t = spawn(f, text_argv);
    assert_true(wait_exit(t, WAIT_MS));
    assert_true(exited_with(t, 0));
    assert_non_null(strstr(t->outbuf, "NODES 3\n"));
    assert_non_null(strstr(t->outbuf, "QUEUES 1\n"));
    assert_non_null(strstr(t->outbuf, "front,producer"));
}

static void test_front_and_workers(void **state) {
    fx *f = *state;
    char http[64], ready[128], resp[4096];
    int port = tt_free_port();
    snprintf(http, sizeof http, "127.0.0.1:%d", port);
    char *front_argv[] = {"front", "--redis", g_redis.url, "--http", http, NULL};
    char *worker_argv[] = {"worker", "--redis", g_redis.url, NULL};

    child *front = spawn(f, front_argv);
    child *w1 = spawn(f, worker_argv);
    child *w2 = spawn(f, worker_argv);
    snprintf(ready, sizeof ready, "front listening on http://127.0.0.1:%d", port);
    assert_true(wait_line(front, ready, WAIT_MS));
    assert_true(wait_line(w1, "worker ready on queue tempest", WAIT_MS));
    assert_true(wait_line(w2, "worker ready on queue tempest", WAIT_MS));

    /* N counts per worker: the numbers are 1..k1 and 1..k2 with k1 + k2 requests. */
    int count[NREQUESTS + 2] = {0};
    for (int i = 0; i < NREQUESTS; i++) {
        assert_true(http_get(port, i % 2 ? "/" : "/some/path?x=1", resp, sizeof resp));
        if (strncmp(resp, "HTTP/1.1 200", 12) != 0 || hello_number(resp) < 0)
            fprintf(stderr, "response:\n%s\n", resp);
        assert_memory_equal(resp, "HTTP/1.1 200", 12);
        assert_non_null(strcasestr(resp, "\r\nContent-Type: text/plain\r\n"));
        int n = hello_number(resp);
        assert_true(n >= 1 && n <= NREQUESTS);
        count[n]++;
    }
    int total = 0;
    for (int n = 1; n <= NREQUESTS; n++) {
        assert_true(count[n] <= 2);
        assert_true(count[n] <= count[n - 1] || n == 1);
        total += count[n];
    }
    assert_int_equal(total, NREQUESTS);
    check_monitor(f, front->pid);

    for (int i = 0; i < f->nchildren; i++) {
        if (!f->children[i].reaped)
            assert_int_equal(kill(f->children[i].pid, SIGTERM), 0);
    }
    for (int i = 0; i < f->nchildren; i++) {
        assert_true(wait_exit(&f->children[i], WAIT_MS));
        assert_true(exited_with(&f->children[i], 0));
    }
}

/* `worker --service` answers `call`: through discovery (both responders
 * get requests), directly with --address, and a type nobody handles fails. */
static void test_worker_service_and_call(void **state) {
    fx *f = *state;
    char *worker_argv[] = {"worker", "--redis", g_redis.url, "--service", "greeter", NULL};
    child *w[2] = {spawn(f, worker_argv), spawn(f, worker_argv)};
    char addr[2][64];
    for (int i = 0; i < 2; i++) {
        assert_true(wait_line(w[i], "worker ready on queue tempest", WAIT_MS));
        const char *at = strstr(w[i]->outbuf, "responder of greeter at ");
        assert_non_null(at);
        assert_int_equal(sscanf(at, "responder of greeter at %63s", addr[i]), 1);
    }
    char *call_argv[] = {"call", "--redis", g_redis.url, "--service", "greeter",   "--responders",
                         "2",    "--count", "6",         "hello",     "{\"n\":1}", NULL};
    child *c = spawn(f, call_argv);
    assert_true(wait_exit(c, WAIT_MS));
    if (!exited_with(c, 0))
        fprintf(stderr, "call: %s%s\n", c->outbuf, c->errbuf);
    assert_true(exited_with(c, 0));
    int lines = 0, from[2] = {0};
    for (char *line = c->outbuf; line && *line;
         line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        json_t *reply = json_loads(line, JSON_DISABLE_EOF_CHECK, NULL);
        assert_non_null(reply);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(reply, "hello"), "n")),
                         1);
        const char *by = json_string_value(json_object_get(reply, "from"));
        assert_non_null(by);
        for (int i = 0; i < 2; i++)
            from[i] += strcmp(by, addr[i]) == 0;
        json_decref(reply);
        lines++;
    }
    assert_int_equal(lines, 6);
    assert_int_equal(from[0], 3); /* round-robin */
    assert_int_equal(from[1], 3);

    char *direct_argv[] = {"call", "--redis", g_redis.url, "--address", addr[1], "hello", NULL};
    child *d = spawn(f, direct_argv);
    assert_true(wait_exit(d, WAIT_MS));
    assert_true(exited_with(d, 0));
    assert_non_null(strstr(d->outbuf, addr[1]));
    assert_non_null(strstr(d->outbuf, "\"hello\":null"));

    char *bad_argv[] = {"call", "--redis", g_redis.url, "--service", "greeter", "nosuchtype", NULL};
    child *b = spawn(f, bad_argv);
    assert_true(wait_exit(b, WAIT_MS));
    assert_true(exited_with(b, 1));
    assert_non_null(strstr(b->errbuf, "NOTYPE"));
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kill(w[i]->pid, SIGTERM), 0);
        assert_true(wait_exit(w[i], WAIT_MS));
        assert_true(exited_with(w[i], 0));
    }
}

static void test_worker_bad_flag(void **state) {
    fx *f = *state;
    char *argv[] = {"worker", "--bogus", NULL};
    child *c = spawn(f, argv);
    assert_true(wait_exit(c, WAIT_MS));
    assert_true(WIFEXITED(c->status));
    assert_int_not_equal(WEXITSTATUS(c->status), 0);
    assert_non_null(strstr(c->errbuf, "usage"));
    assert_int_equal(c->outlen, 0);
}

static void test_monitor_redis_unreachable(void **state) {
    fx *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tt_free_port());
    char *argv[] = {"monitor", "--redis", url, "--once", NULL};
    child *c = spawn(f, argv);
    assert_true(wait_exit(c, 7500));
    assert_true(exited_with(c, 1));
    assert_non_null(strstr(c->errbuf, "cannot reach Redis"));
    assert_int_equal(c->outlen, 0);
}

static void test_front_redis_unreachable(void **state) {
    fx *f = *state;
    char url[64], http[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tt_free_port());
    snprintf(http, sizeof http, "127.0.0.1:%d", tt_free_port());
    char *argv[] = {"front", "--redis", url, "--http", http, NULL};
    long long start = tt_now_ms();
    child *c = spawn(f, argv);
    assert_true(wait_exit(c, 7500));
    assert_true(tt_now_ms() - start < 7500);
    assert_true(exited_with(c, 1));
    assert_non_null(strstr(c->errbuf, "cannot reach Redis"));
    assert_null(strstr(c->outbuf, "listening"));
}

int main(void) {
    tt_require_redis();
    if (getenv("TT_TEST_FILTER")) /* e.g. TT_TEST_FILTER='test_client_*' */
        cmocka_set_test_filter(getenv("TT_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_front_and_workers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_service_and_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_bad_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_monitor_redis_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_front_redis_unreachable, setup, teardown),
    };
    tt_group_redis(&g_redis);
    return cmocka_run_group_tests_name("examples", tests, group_setup, tt_group_teardown);
}
