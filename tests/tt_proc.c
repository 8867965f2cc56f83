/* SPDX-License-Identifier: MIT */
/* See tt_proc.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "tt_proc.h"

void tt_child_prepare(pid_t parent) {
    sigset_t none;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent)
        _exit(127); /* the test already died */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

pid_t tt_fork_piped(void (*run)(const char *url, int wfd), const char *url, int *rfd) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        run(url, fds[1]);
    close(fds[1]);
    *rfd = fds[0];
    return pid;
}

bool tt_have_redis_cli(void) {
    return system("command -v redis-cli >/dev/null 2>&1") == 0;
}

typedef struct tt_cli_child {
    pid_t pid;
    int status;
} tt_cli_child;

static bool tt_child_exited(void *arg) {
    tt_cli_child *c = arg;
    return waitpid(c->pid, &c->status, WNOHANG) == c->pid;
}

char *tt_redis_cli(struct event_base *base, int port, const char *const *args) {
    int fds[2];
    char p[16];
    const char *argv[16] = {"redis-cli", "-h", "127.0.0.1", "-p", p};
    int argc = 5;
    snprintf(p, sizeof p, "%d", port);
    for (; *args != NULL && argc < 15; args++)
        argv[argc++] = *args;
    assert_int_equal(pipe(fds), 0);
    tt_cli_child ch = {.pid = fork()};
    assert_true(ch.pid >= 0);
    if (ch.pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        execvp("redis-cli", (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    assert_true(tt_run_until(base, tt_child_exited, &ch, 10000));
    char *text = calloc(1, 4096);
    assert_true(read(fds[0], text, 4095) >= 0);
    close(fds[0]);
    return text;
}
