/* SPDX-License-Identifier: MIT */
/*
 * Test harness: private redis-servers and event-loop helpers for the cmocka
 * tests. Each server runs on 127.0.0.1 and a free port (never 6379) with
 * persistence off, in its own mkdtemp directory, started with fork/exec (no
 * shell) and stopped by PID. The child asks the kernel to SIGKILL it when
 * the test process dies (tt_child_prepare: PR_SET_PDEATHSIG) and stays in
 * the test's process group, so neither a crashed test nor a meson timeout
 * leaves servers behind.
 * Servers still running at exit() are stopped and their directories removed
 * by an atexit handler (a failed cmocka assertion skips the test's cleanup);
 * directories left by a test that aborted are swept by the next test run.
 * Test code only: it prints to stderr freely and is not thread-safe.
 */
#include "harness.h"
#include "tt_proc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#define TT_START_TIMEOUT_MS 5000
#define TT_STOP_GRACE_MS 2000
#define TT_START_ATTEMPTS 3
#define TT_MAX_ARGS 64
#define TT_MAX_SERVERS 16

/*
 * Every server started and not yet stopped, keyed by port (which survives a
 * restart): for the atexit cleanup, and to remember a --requirepass so that
 * tt_redis_int can AUTH (the public struct has no room for it).
 */
struct tt_slot {
    int port; /* 0: free slot */
    pid_t pid;
    char dir[256];
    char password[128];
};

static struct tt_slot tt_slots[TT_MAX_SERVERS];
static bool tt_atexit_registered;

long long tt_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void tt_sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* ---- finding redis-server ---------------------------------------------- */

/* Fills `out` with the first executable redis-server in $PATH; false if none. */
static bool tt_find_redis(char *out, size_t size) {
    const char *path = getenv("PATH");
    if (path == NULL || *path == '\0')
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path != '\0') {
        size_t len = strcspn(path, ":");
        int n = snprintf(out, size, "%.*s/redis-server", (int)len, len ? path : ".");
        if (n > 0 && (size_t)n < size && access(out, X_OK) == 0)
            return true;
        path += len;
        if (*path == ':')
            path++;
    }
    return false;
}

void tt_require_redis(void) {
    /* The tests are libevent servers: a peer that resets must not kill them. */
    signal(SIGPIPE, SIG_IGN);
    char path[PATH_MAX];
    if (tt_find_redis(path, sizeof path))
        return;
    const char *ci = getenv("CI");
    if (ci != NULL && strcmp(ci, "true") == 0) {
        fprintf(stderr, "FAIL: redis-server not found in PATH, and CI=true forbids "
                        "skipping the integration tests (apt-get install redis-server)\n");
        exit(1);
    }
    fprintf(stderr, "SKIP: redis-server not found in PATH (apt-get install redis-server)\n");
    exit(77);
}

/* ---- ports --------------------------------------------------------------- */

static int tt_bound_port(int fd) {
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == -1)
        return -1;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) == -1)
        return -1;
    return ntohs(sa.sin_port);
}

int tt_free_port(void) {
    for (int attempt = 0; attempt < 10; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd == -1)
            return -1;
        int port = tt_bound_port(fd);
        close(fd);
        if (port > 0 && port != 6379)
            return port;
    }
    return -1;
}

/* A port whose neighbour `offset` above is free too, both at most 65535:
 * a cluster node also binds its bus port, its own port + 10000, and Redis
 * refuses a port above 55535. The kernel's ephemeral range (often up to
 * 60999) cannot give that, so ports are drawn below it, from 20000-32767,
 * and both are checked by binding them. */
static int tt_free_port_pair(int offset) {
    static unsigned seed;
    if (seed == 0)
        seed = (unsigned)getpid() ^ (unsigned)tt_now_ms();
    for (int attempt = 0; attempt < 200; attempt++) {
        seed = seed * 1103515245u + 12345u;
        int port = 20000 + (int)((seed >> 8) % 12768u);
        int fds[2] = {-1, -1}, ok = 1;
        for (int i = 0; i < 2 && ok; i++) {
            fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            struct sockaddr_in sa = {.sin_family = AF_INET,
                                     .sin_port = htons((uint16_t)(port + i * offset))};
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            ok = fds[i] != -1 && bind(fds[i], (struct sockaddr *)&sa, sizeof sa) == 0;
        }
        for (int i = 0; i < 2; i++)
            if (fds[i] != -1)
                close(fds[i]);
        if (ok && port != 6379)
            return port;
    }
    return -1;
}

/* ---- the registry of running servers ------------------------------------ */

static struct tt_slot *tt_slot_find(int port) {
    for (int i = 0; i < TT_MAX_SERVERS; i++)
        if (tt_slots[i].port == port && port != 0)
            return &tt_slots[i];
    return NULL;
}

static struct tt_slot *tt_slot_get(int port) {
    struct tt_slot *s = tt_slot_find(port);
    for (int i = 0; s == NULL && i < TT_MAX_SERVERS; i++)
        if (tt_slots[i].port == 0)
            s = &tt_slots[i];
    if (s != NULL && s->port != port) {
        memset(s, 0, sizeof *s);
        s->port = port;
    }
    return s;
}

/* The value of --requirepass among the extra arguments, or "". */
static const char *tt_extra_password(const char *const *extra) {
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        if (strcmp(extra[i], "--requirepass") == 0 && extra[i + 1] != NULL)
            return extra[i + 1];
    return "";
}

static void tt_register(const tt_redis *r, const char *const *extra) {
    struct tt_slot *s = tt_slot_get(r->port);
    if (s == NULL) {
        fprintf(stderr, "harness: more than %d servers, atexit cleanup incomplete\n",
                TT_MAX_SERVERS);
        return;
    }
    s->pid = r->pid;
    snprintf(s->dir, sizeof s->dir, "%s", r->dir);
    snprintf(s->password, sizeof s->password, "%s", tt_extra_password(extra));
}

static void tt_unregister(int port) {
    struct tt_slot *s = tt_slot_find(port);
    if (s != NULL)
        memset(s, 0, sizeof *s);
}

/* ---- directories --------------------------------------------------------- */

static int tt_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) == -1 && errno != ENOENT)
        fprintf(stderr, "harness: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

/* Removes `dir` and everything below it (no symlink is followed). */
static void tt_rmtree(const char *dir) {
    if (dir[0] != '\0')
        nftw(dir, tt_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *tt_tmpdir(void) {
    const char *tmp = getenv("TMPDIR");
    return tmp != NULL && *tmp != '\0' ? tmp : "/tmp";
}

/*
 * Removes the directories of test processes that died without cleaning up
 * (abort() skips atexit): their name carries the owner's PID, and the owner
 * no longer exists. Their servers died with them (PR_SET_PDEATHSIG).
 */
static void tt_sweep_stale_dirs(void) {
    static const char prefix[] = "tempest-redis-";
    char path[PATH_MAX];
    DIR *d = opendir(tt_tmpdir());
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char *end;
        if (strncmp(e->d_name, prefix, sizeof prefix - 1) != 0)
            continue;
        long pid = strtol(e->d_name + sizeof prefix - 1, &end, 10);
        if (end == e->d_name + sizeof prefix - 1 || *end != '-' || pid <= 0 ||
            pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        if (snprintf(path, sizeof path, "%s/%s", tt_tmpdir(), e->d_name) < (int)sizeof path)
            tt_rmtree(path);
    }
    if (d != NULL)
        closedir(d);
}

/* Creates r->dir: a fresh mkdtemp under $TMPDIR (or /tmp), named after our PID. */
static int tt_make_dir(tt_redis *r) {
    int n =
        snprintf(r->dir, sizeof r->dir, "%s/tempest-redis-%ld-XXXXXX", tt_tmpdir(), (long)getpid());
    if (n < 0 || (size_t)n >= sizeof r->dir || mkdtemp(r->dir) == NULL) {
        fprintf(stderr, "harness: mkdtemp in %s failed: %s\n", tt_tmpdir(), strerror(errno));
        r->dir[0] = '\0';
        return -1;
    }
    return 0;
}

/* Prints the end of the server's log, to explain a failed start. */
static void tt_print_log(const tt_redis *r) {
    char path[PATH_MAX], buf[4096];
    snprintf(path, sizeof path, "%s/redis.log", r->dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    if (fseek(f, -(long)(sizeof buf - 1), SEEK_END) == -1)
        rewind(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "---- %s (end) ----\n%s\n---- end of log ----\n", path, buf);
}

/* ---- the child process --------------------------------------------------- */

/*
 * Builds the redis-server argv; `port` (16 bytes) and `logfile` (PATH_MAX)
 * hold strings. With `conf` (a sentinel's config file) it runs in sentinel
 * mode.
 */
static int tt_build_argv(const tt_redis *r, const char *exe, const char *conf,
                         const char *const *extra, char *port, char *logfile, const char **argv) {
    static const char *const fixed[] = {"--bind",       "127.0.0.1", "--save",      "",
                                        "--appendonly", "no",        "--daemonize", "no"};
    size_t n = 0;
    snprintf(port, 16, "%d", r->port);
    snprintf(logfile, PATH_MAX, "%s/redis.log", r->dir);
    argv[n++] = exe;
    if (conf != NULL) {
        argv[n++] = conf; /* the config file must come first */
        argv[n++] = "--sentinel";
    }
    argv[n++] = "--port";
    argv[n++] = port;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    argv[n++] = "--dir";
    argv[n++] = r->dir;
    argv[n++] = "--logfile";
    argv[n++] = logfile;
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
        if (n + 1 >= TT_MAX_ARGS)
            return -1;
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    return 0;
}

/* Closes every inherited descriptor above stderr (sockets of the test). */
static void tt_close_inherited(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max > 0 ? max : 1024); fd++)
        close((int)fd);
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static void tt_child(const char *exe, const char **argv, pid_t parent) {
    tt_child_prepare(parent);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    int null = open("/dev/null", O_RDONLY);
    if (null != -1) {
        dup2(null, STDIN_FILENO);
        dup2(STDERR_FILENO, STDOUT_FILENO); /* meson captures stderr */
    }
    tt_close_inherited();
    execv(exe, (char *const *)argv);
    _exit(127);
}

static int tt_spawn(tt_redis *r, const char *conf, const char *const *extra) {
    char exe[PATH_MAX], port[16], logfile[PATH_MAX];
    const char *argv[TT_MAX_ARGS];
    if (!tt_find_redis(exe, sizeof exe)) {
        fprintf(stderr, "harness: redis-server not found in PATH\n");
        return -1;
    }
    if (tt_build_argv(r, exe, conf, extra, port, logfile, argv) == -1) {
        fprintf(stderr, "harness: too many extra redis-server arguments\n");
        return -1;
    }
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == -1) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0)
        tt_child(exe, argv, parent);
    r->pid = pid;
    return 0;
}

/* ---- waiting for the server --------------------------------------------- */

/* Reaps the child if it exited; returns true when it is gone. */
static bool tt_reaped(pid_t pid) {
    int status;
    pid_t got;
    do {
        got = waitpid(pid, &status, WNOHANG);
    } while (got == -1 && errno == EINTR);
    return got == pid || (got == -1 && errno == ECHILD);
}

static void tt_reap_blocking(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {
    }
}

static redisContext *tt_connect(int port, int timeout_ms) {
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c != NULL && c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK)
        return c;
    redisFree(c);
    return NULL;
}

/* True when the server answers PING (NOAUTH counts: it is up, it wants AUTH). */
static bool tt_pings(int port) {
    redisContext *c = tt_connect(port, 200);
    if (c == NULL)
        return false;
    redisReply *reply = redisCommand(c, "PING");
    bool up = reply != NULL &&
              ((reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0) ||
               (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOAUTH", 6) == 0));
    freeReplyObject(reply);
    redisFree(c);
    return up;
}

/* Waits for PING; 0 when up, -1 when the child died or 5 s passed. */
static int tt_wait_ready(tt_redis *r) {
    long long deadline = tt_now_ms() + TT_START_TIMEOUT_MS;
    while (tt_now_ms() < deadline) {
        if (tt_reaped(r->pid)) {
            r->pid = 0;
            return -1;
        }
        if (tt_pings(r->port))
            return 0;
        tt_sleep_ms(10);
    }
    fprintf(stderr, "harness: redis-server on port %d not ready after %d ms\n", r->port,
            TT_START_TIMEOUT_MS);
    return -1;
}

/* Spawns on r->port and r->dir and waits; on failure nothing is left running. */
static int tt_launch(tt_redis *r, const char *conf, const char *const *extra) {
    if (tt_spawn(r, conf, extra) == -1)
        return -1;
    if (tt_wait_ready(r) == 0) {
        tt_register(r, extra);
        return 0;
    }
    tt_print_log(r);
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        tt_reap_blocking(r->pid);
        r->pid = 0;
    }
    return -1;
}

/* ---- start, stop, kill, restart ----------------------------------------- */

static void tt_cleanup_at_exit(void) {
    for (int i = 0; i < TT_MAX_SERVERS; i++) {
        struct tt_slot *s = &tt_slots[i];
        if (s->port == 0)
            continue;
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            tt_reap_blocking(s->pid);
        }
        tt_rmtree(s->dir);
        memset(s, 0, sizeof *s);
    }
}

/* Zeroes `r`, sets up the cleanup at exit (once) and makes r's directory. */
static int tt_prepare(tt_redis *r) {
    memset(r, 0, sizeof *r);
    if (!tt_atexit_registered) {
        tt_sweep_stale_dirs();
        tt_atexit_registered = atexit(tt_cleanup_at_exit) == 0;
    }
    return tt_make_dir(r);
}

/* Launches the server on r->port, its URL set. */
static int tt_launch_at_port(tt_redis *r, const char *conf, const char *const *extra) {
    snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d", r->port);
    return tt_launch(r, conf, extra);
}

/* A start that failed every attempt: removes the dir and zeroes `r`. */
static int tt_give_up(tt_redis *r) {
    tt_rmtree(r->dir);
    memset(r, 0, sizeof *r);
    return -1;
}

int tt_redis_start(tt_redis *r, const char *const *extra) {
    if (tt_prepare(r) == -1)
        return -1;
    /* Another process may take the free port before redis binds it: retry. */
    bool cluster = false;
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        cluster = cluster || strcmp(extra[i], "--cluster-enabled") == 0;
    for (int attempt = 0; attempt < TT_START_ATTEMPTS; attempt++) {
        r->port = cluster ? tt_free_port_pair(10000) : tt_free_port();
        if (r->port <= 0)
            break;
        if (tt_launch_at_port(r, NULL, extra) == 0)
            return 0;
    }
    return tt_give_up(r);
}

void tt_redis_kill(tt_redis *r) {
    if (r->pid <= 0)
        return;
    kill(r->pid, SIGKILL);
    tt_reap_blocking(r->pid);
    r->pid = 0;
    struct tt_slot *s = tt_slot_find(r->port);
    if (s != NULL)
        s->pid = 0; /* the dir stays registered until tt_redis_stop */
}

/* SIGTERM, then SIGKILL when it has not exited after the grace period. */
static void tt_terminate(pid_t pid) {
    long long deadline = tt_now_ms() + TT_STOP_GRACE_MS;
    kill(pid, SIGTERM);
    while (tt_now_ms() < deadline) {
        if (tt_reaped(pid))
            return;
        tt_sleep_ms(5);
    }
    kill(pid, SIGKILL);
    tt_reap_blocking(pid);
}

void tt_redis_stop(tt_redis *r) {
    if (r->pid > 0)
        tt_terminate(r->pid);
    r->pid = 0;
    tt_rmtree(r->dir);
    tt_unregister(r->port);
}

int tt_redis_restart(tt_redis *r, const char *const *extra) {
    if (r->port <= 0)
        return -1;
    tt_redis_kill(r);
    /* After tt_redis_stop the dir is gone: recreate it, or take a new one. */
    if (r->dir[0] == '\0' || (mkdir(r->dir, 0700) == -1 && errno != EEXIST))
        if (tt_make_dir(r) == -1)
            return -1;
    return tt_launch(r, NULL, extra);
}

/* Writes the sentinel's config (it must be writable: Sentinel rewrites it). */
static int tt_sentinel_conf(const tt_redis *r, const char *name, int master_port, char *path,
                            size_t size) {
    snprintf(path, size, "%s/sentinel.conf", r->dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f,
            "port %d\n"
            "sentinel monitor %s 127.0.0.1 %d 2\n"
            "sentinel down-after-milliseconds %s 500\n"
            "sentinel failover-timeout %s 3000\n",
            r->port, name, master_port, name, name);
    return fclose(f) == 0 ? 0 : -1;
}

int tt_sentinel_start(tt_redis *r, const char *name, int master_port) {
    char conf[PATH_MAX];
    if (tt_prepare(r) == -1)
        return -1;
    for (int attempt = 0; attempt < TT_START_ATTEMPTS; attempt++) {
        r->port = tt_free_port();
        if (r->port <= 0 || tt_sentinel_conf(r, name, master_port, conf, sizeof conf) == -1)
            break;
        if (tt_launch_at_port(r, conf, NULL) == 0)
            return 0;
    }
    return tt_give_up(r);
}

/* ---- fixtures -------------------------------------------------------------- */

static tt_redis *tt_group; /* the server of tt_group_setup */

void tt_group_redis(tt_redis *r) {
    tt_group = r;
}

int tt_group_setup(void **state) {
    (void)state;
    return tt_redis_start(tt_group, NULL);
}

int tt_group_teardown(void **state) {
    (void)state;
    tt_redis_stop(tt_group);
    return 0;
}

/* A pointer to a struct also points to its first member (C11 6.7.2.1). */
int tt_fixture_setup(void **state, size_t size, const tt_redis *r) {
    struct event_base **base = calloc(1, size);
    if (base == NULL || tt_redis_int(r, "FLUSHALL") != 0 || (*base = event_base_new()) == NULL) {
        free(base);
        return -1;
    }
    *state = base;
    return 0;
}

void tt_fixture_free(void *fixture) {
    event_base_free(*(struct event_base **)fixture);
    free(fixture);
}

/* ---- a cluster of masters ------------------------------------------------ */

/* The reply's text (status, bulk or error) into `out`; -1 on no reply. */
static int tt_cmd_text(int port, char *out, size_t size, const char *fmt, ...) {
    redisContext *c = tt_connect(port, 5000);
    va_list ap;
    int rc = -1;
    out[0] = '\0';
    if (c == NULL) {
        redisFree(c);
        return -1;
    }
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (reply != NULL && reply->str != NULL) {
        snprintf(out, size, "%s", reply->str);
        rc = reply->type == REDIS_REPLY_ERROR ? -1 : 0;
    }
    freeReplyObject(reply);
    redisFree(c);
    return rc;
}

static bool tt_cluster_ok(const tt_redis *nodes, int n) {
    char info[4096], known[48];
    snprintf(known, sizeof known, "cluster_known_nodes:%d", n);
    for (int i = 0; i < n; i++)
        if (tt_cmd_text(nodes[i].port, info, sizeof info, "CLUSTER INFO") != 0 ||
            strstr(info, "cluster_state:ok") == NULL || strstr(info, known) == NULL)
            return false;
    return true;
}

static int tt_cluster_form(tt_redis *nodes, int n) {
    char text[256];
    for (int i = 0; i < n; i++) {
        int from = 16384 * i / n, to = 16384 * (i + 1) / n - 1;
        if (tt_cmd_text(nodes[i].port, text, sizeof text, "CLUSTER ADDSLOTSRANGE %d %d", from,
                        to) != 0 ||
            tt_cmd_text(nodes[i].port, text, sizeof text, "CLUSTER SET-CONFIG-EPOCH %d", i + 1) !=
                0)
            return -1;
    }
    for (int i = 1; i < n; i++)
        if (tt_cmd_text(nodes[0].port, text, sizeof text, "CLUSTER MEET 127.0.0.1 %d",
                        nodes[i].port) != 0)
            return -1;
    for (long long deadline = tt_now_ms() + 20000; tt_now_ms() < deadline; tt_sleep_ms(50))
        if (tt_cluster_ok(nodes, n))
            return 0;
    return -1;
}

static const char *const tt_cluster_extra[] = {"--cluster-enabled",
                                               "yes",
                                               "--cluster-config-file",
                                               "nodes.conf",
                                               "--cluster-node-timeout",
                                               "5000",
                                               NULL};

int tt_cluster_start(tt_redis *nodes, int n, char *url, size_t urlsize) {
    const char *const *extra = tt_cluster_extra;
    int started = 0;
    size_t len = (size_t)snprintf(url, urlsize, "redis+cluster://");
    if (n < 1 || n > 16)
        return -1;
    for (; started < n; started++) {
        if (tt_redis_start(&nodes[started], extra) != 0)
            break;
        len += (size_t)snprintf(url + len, len < urlsize ? urlsize - len : 0, "%s127.0.0.1:%d",
                                started ? "," : "", nodes[started].port);
    }
    if (started == n && len < urlsize && tt_cluster_form(nodes, n) == 0)
        return 0;
    fprintf(stderr, "harness: the cluster did not form\n");
    while (started > 0)
        tt_redis_stop(&nodes[--started]);
    return -1;
}

/* ---- synchronous commands ------------------------------------------------ */

/* Sends AUTH when the server was started with --requirepass. */
static int tt_auth(redisContext *c, int port) {
    const struct tt_slot *s = tt_slot_find(port);
    if (s == NULL || s->password[0] == '\0')
        return 0;
    redisReply *reply = redisCommand(c, "AUTH %s", s->password);
    int rc = reply != NULL && reply->type == REDIS_REPLY_STATUS ? 0 : -1;
    freeReplyObject(reply);
    return rc;
}

/*
 * :N gives N; an array its length; a status (+OK, +PONG) 0; a bulk string
 * that is a whole decimal integer (GET of a counter) its value; anything
 * else (nil, error, other strings, connection failure) -1.
 */
static long long tt_reply_int(const redisReply *reply) {
    char *end;
    switch (reply->type) {
    case REDIS_REPLY_INTEGER:
        return reply->integer;
    case REDIS_REPLY_ARRAY:
        return (long long)reply->elements;
    case REDIS_REPLY_STATUS:
        return 0;
    case REDIS_REPLY_STRING: {
        errno = 0;
        long long v = strtoll(reply->str, &end, 10);
        return reply->len > 0 && *end == '\0' && errno == 0 ? v : -1;
    }
    case REDIS_REPLY_ERROR:
        fprintf(stderr, "harness: redis error: %s\n", reply->str);
        return -1;
    default:
        return -1;
    }
}

long long tt_redis_int(const tt_redis *r, const char *fmt, ...) {
    long long result = -1;
    va_list ap;
    redisContext *c = tt_connect(r->port, 5000);
    if (c == NULL || tt_auth(c, r->port) == -1) {
        redisFree(c);
        return -1;
    }
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (reply != NULL)
        result = tt_reply_int(reply);
    freeReplyObject(reply);
    redisFree(c);
    return result;
}

/* ---- running the event loop ---------------------------------------------- */

struct tt_run {
    struct event_base *base;
    bool (*cond)(void *);
    void *arg;
    long long deadline; /* tt_now_ms() */
    bool done;
    bool timed_out;
};

/*
 * The deadline is checked against our own monotonic clock, not by a libevent
 * timer: libevent may use CLOCK_MONOTONIC_COARSE and fire a few ms early.
 */
static void tt_on_tick(evutil_socket_t fd, short what, void *arg) {
    struct tt_run *run = arg;
    (void)fd;
    (void)what;
    if (run->cond(run->arg))
        run->done = true;
    else if (tt_now_ms() >= run->deadline)
        run->timed_out = true;
    if (run->done || run->timed_out)
        event_base_loopbreak(run->base);
}

/*
 * Own timer event rather than event_base_loopexit(): a pending loopexit
 * would outlive this call and end the caller's next loop early. The loop
 * runs again when something else broke it before the condition or timeout.
 */
bool tt_run_until(struct event_base *base, bool (*cond)(void *), void *arg, int timeout_ms) {
    struct tt_run run = {.base = base, .cond = cond, .arg = arg};
    struct timeval tick = {.tv_sec = 0, .tv_usec = 5000};
    if (cond(arg))
        return true;
    run.deadline = tt_now_ms() + timeout_ms;
    struct event *ticker = event_new(base, -1, EV_PERSIST, tt_on_tick, &run);
    if (ticker == NULL || event_add(ticker, &tick) == -1)
        goto done;
    while (!run.done && !run.timed_out)
        if (event_base_loop(base, 0) == -1)
            break;
done:
    if (ticker != NULL)
        event_free(ticker);
    return run.done || cond(arg);
}

void tt_log_append(char *buf, size_t size, size_t *len, int level, const char *message) {
    int n = snprintf(buf + *len, size - *len, "%d %s\n", level, message);
    if (n > 0 && *len + (size_t)n < size)
        *len += (size_t)n;
}

bool tt_count_reached(void *arg) {
    const tt_count *c = arg;
    return *c->count >= c->n;
}

bool tt_every(long long *next, int ms) {
    long long now = tt_now_ms();
    if (now < *next)
        return false;
    *next = now + ms;
    return true;
}

static bool tt_never(void *arg) {
    (void)arg;
    return false;
}

void tt_run_for(struct event_base *base, int ms) {
    (void)tt_run_until(base, tt_never, NULL, ms);
}

/* Waits (50 ms steps, until `deadline`) for a replica's step to succeed. */
static bool tt_replica_step(const tt_redis *replica, const char *id, long long deadline) {
    char text[4096];
    for (;;) {
        bool ok =
            id != NULL
                ? tt_cmd_text(replica->port, text, sizeof text, "CLUSTER REPLICATE %s", id) == 0
                : tt_cmd_text(replica->port, text, sizeof text, "INFO replication") == 0 &&
                      strstr(text, "master_link_status:up") != NULL;
        if (ok)
            return true;
        if (tt_now_ms() >= deadline)
            return false;
        tt_sleep_ms(50);
    }
}

int tt_cluster_add_replica(tt_redis *replica, const tt_redis *master) {
    char id[64], text[256];
    if (tt_cmd_text(master->port, id, sizeof id, "CLUSTER MYID") != 0 ||
        tt_redis_start(replica, tt_cluster_extra) != 0)
        return -1;
    long long deadline = tt_now_ms() + 20000;
    /* REPLICATE needs the master known by gossip ("Unknown node" until
     * then); then the replica's link must come up. */
    if (tt_cmd_text(replica->port, text, sizeof text, "CLUSTER MEET 127.0.0.1 %d", master->port) ==
            0 &&
        tt_replica_step(replica, id, deadline) && tt_replica_step(replica, NULL, deadline))
        return 0;
    fprintf(stderr, "harness: the replica of port %d did not sync\n", master->port);
    tt_redis_stop(replica);
    return -1;
}

struct redisReply *tt_redis_command(const tt_redis *r, const char *fmt, ...) {
    redisContext *c = redisConnect("127.0.0.1", r->port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    assert_non_null(reply);
    return reply;
}

long long tt_redis_numsub(const tt_redis *r, const char *channel) {
    redisContext *c = redisConnect("127.0.0.1", r->port);
    redisReply *reply = c && !c->err ? redisCommand(c, "PUBSUB NUMSUB %s", channel) : NULL;
    long long n = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
                      ? reply->element[1]->integer
                      : -1;
    freeReplyObject(reply);
    redisFree(c);
    return n;
}

bool tt_numsub_is(void *arg) {
    const tt_numsub *w = arg;
    return tt_redis_numsub(w->r, w->channel) == w->n;
}

json_t *tt_json_named(json_t *obj, const char *list, const char *key, const char *name) {
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(obj, list), i, v) {
        const char *s = json_string_value(json_object_get(v, key));
        if (s && strcmp(s, name) == 0)
            return v;
    }
    return NULL;
}
