/* SPDX-License-Identifier: MIT */
/*
 * Child processes for the tests: what a forked child does before exec (it
 * dies with the test), a forked child that reports on a pipe, and runs of
 * redis-cli against a server of the test.
 */
#ifndef TEMPEST_TEST_PROC_H
#define TEMPEST_TEST_PROC_H

#include <stdbool.h>
#include <sys/types.h>

struct event_base;

/**
 * In a child between fork and exec (async-signal-safe): has the kernel
 * SIGKILL it when `parent` (the test) dies, _exit(127)s when the test died
 * already, and unblocks every signal.
 */
void tt_child_prepare(pid_t parent);

/**
 * Forks a child that runs `run(url, wfd)`, which must not return (it ends
 * with _exit), `wfd` the write end of a pipe whose read end goes to `*rfd`
 * (the parent's copy of the write end is closed). Asserts (cmocka) that
 * the pipe and the fork worked; returns the child's pid.
 */
pid_t tt_fork_piped(void (*run)(const char *url, int wfd), const char *url, int *rfd);

/** True when redis-cli is in PATH. */
bool tt_have_redis_cli(void);

/**
 * Runs `redis-cli -h 127.0.0.1 -p <port>` with the NULL-ended `args` (at
 * most 10), running `base` until it exits (cmocka asserts: at most 10 s),
 * and returns what it wrote to stdout and stderr (malloc'd, at most 4095
 * bytes; free it).
 */
char *tt_redis_cli(struct event_base *base, int port, const char *const *args);

#endif
