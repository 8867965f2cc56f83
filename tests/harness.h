/* SPDX-License-Identifier: MIT */
/*
 * Test harness shared by the cmocka tests: a private redis-server on a free
 * loopback port (persistence off), stopped by its PID; the group and
 * per-test fixtures built on it; synchronous commands to it; and helpers to
 * run an event loop until a condition holds. Nodes (tt_node.h), HTTP
 * (tt_http.h), child processes (tt_proc.h) and failing allocations
 * (tt_chaos.h) have headers of their own.
 */
#ifndef TEMPEST_TEST_HARNESS_H
#define TEMPEST_TEST_HARNESS_H

#include <stdbool.h>
#include <sys/types.h>

#include <jansson.h>

struct event_base;
struct redisReply;

typedef struct tt_redis {
    pid_t pid;     /* 0 when not running */
    int port;      /* loopback TCP port */
    char dir[256]; /* private working directory (removed by tt_redis_stop) */
    char url[128]; /* "redis://127.0.0.1:<port>" */
} tt_redis;

/**
 * Makes sure redis-server is available: when it is not, exits with 77
 * (meson's "skipped") unless the environment has CI=true, where it fails
 * (exit 1) with a message. Also ignores SIGPIPE, as every process that runs
 * libevent servers must. Call it at the top of main() of integration tests.
 */
void tt_require_redis(void);

/**
 * Starts redis-server on 127.0.0.1 and a free port with `--save ""
 * --appendonly no` plus the NULL-terminated `extra` arguments (may be NULL,
 * e.g. {"--requirepass", "secret", NULL}), and waits until it answers PING
 * (up to 5 s). Returns 0 or -1.
 */
int tt_redis_start(tt_redis *r, const char *const *extra);

/** Stops it by PID (SIGTERM, then SIGKILL after 2 s), reaps it, removes dir. */
void tt_redis_stop(tt_redis *r);

/** SIGKILLs it (a crash), reaps it; the dir stays for a restart. */
void tt_redis_kill(tt_redis *r);

/** Starts it again on the same port and dir (after kill or stop). 0 or -1. */
int tt_redis_restart(tt_redis *r, const char *const *extra);

/**
 * Starts a Sentinel (redis-server --sentinel) on 127.0.0.1 and a free port
 * that monitors master `name` at 127.0.0.1:`master_port` with quorum 2,
 * down-after 500 ms and failover-timeout 3000 ms, its config file in its
 * own dir. Stop or kill it like a server. Returns 0 or -1 (sentinel mode
 * unavailable, or it did not answer PING within 5 s).
 */
int tt_sentinel_start(tt_redis *r, const char *name, int master_port);

/**
 * Starts `n` (1..16) cluster-enabled servers (`--cluster-enabled yes`, the
 * cluster config file in each one's dir, node timeout 5000 ms, otherwise as
 * tt_redis_start), splits the 16384 slots evenly among them as masters
 * (ADDSLOTSRANGE, SET-CONFIG-EPOCH, MEET), and waits (up to 20 s) until every
 * node says cluster_state:ok and knows the others. Writes
 * `redis+cluster://127.0.0.1:<port>,...` to `url`. Returns 0, or -1 (the
 * servers started are stopped). Stop each with tt_redis_stop.
 */
int tt_cluster_start(tt_redis *nodes, int n, char *url, size_t urlsize);

/**
 * Starts a cluster-enabled server as a replica of `master` (a node of a
 * cluster tt_cluster_start made): MEET, REPLICATE, and waits (up to 20 s)
 * until its link to the master is up. Returns 0, or -1 (it is stopped).
 */
int tt_cluster_add_replica(tt_redis *replica, const tt_redis *master);

/**
 * Group fixtures for the tests of a file that share one server: name it
 * with tt_group_redis() in main(), then run the group with tt_group_setup
 * (tt_redis_start(server, NULL)) and tt_group_teardown (tt_redis_stop).
 */
void tt_group_redis(tt_redis *r);
int tt_group_setup(void **state);
int tt_group_teardown(void **state);

/**
 * A test's fixture: `size` zeroed bytes whose first member is a `struct
 * event_base *`, set to a new loop after FLUSHALL on `r`. Stores it in
 * `*state` and returns 0, or returns -1 with nothing left. Free it with
 * tt_fixture_free().
 */
int tt_fixture_setup(void **state, size_t size, const tt_redis *r);

/** Frees the loop that is the first member of `fixture`, then the fixture. */
void tt_fixture_free(void *fixture);

/**
 * Runs a synchronous command on the server (hiredis, blocking; test only)
 * and returns the reply as an integer (for :N replies), or the length of a
 * list/array reply, or -1 on error. `fmt` as redisCommand.
 */
long long tt_redis_int(const tt_redis *r, const char *fmt, ...);

/**
 * Runs a synchronous command on the server and returns its reply (free it
 * with freeReplyObject). Asserts (cmocka) that the connection came up and
 * that a reply came.
 */
struct redisReply *tt_redis_command(const tt_redis *r, const char *fmt, ...);

/** PUBSUB NUMSUB of `channel` on the server: its subscribers, or -1. */
long long tt_redis_numsub(const tt_redis *r, const char *channel);

/** A tt_run_until condition (tt_numsub_is): the server reports `n`
 *  subscribers of `channel` (a SUBSCRIBE or UNSUBSCRIBE was processed). */
typedef struct tt_numsub {
    const tt_redis *r;
    const char *channel;
    long long n;
} tt_numsub;

bool tt_numsub_is(void *arg);

/**
 * The first object of the array `obj[list]` whose string member `key` is
 * `name` (borrowed), or NULL: finds a queue or a service in a monitor
 * snapshot.
 */
json_t *tt_json_named(json_t *obj, const char *list, const char *key, const char *name);

/** Returns a free TCP port on 127.0.0.1 (bind to port 0, read, close). */
int tt_free_port(void);

/**
 * Runs `base` until `cond(arg)` is true or `timeout_ms` passes; checks the
 * condition at least every 5 ms. Returns true when the condition holds.
 */
bool tt_run_until(struct event_base *base, bool (*cond)(void *), void *arg, int timeout_ms);

/**
 * Appends "<level> <message>\n" to the log text in `buf` (`size` bytes,
 * `*len` used) when it fits: the body of the tests' log callbacks.
 */
void tt_log_append(char *buf, size_t size, size_t *len, int level, const char *message);

/** A tt_run_until condition (tt_count_reached): `*count` has reached `n`. */
typedef struct tt_count {
    const int *count;
    int n;
} tt_count;

bool tt_count_reached(void *arg);

/** For conditions costly to check (a Redis round trip each): true at most
 *  once every `ms`; `*next` (0 at first) holds when it may be next. */
bool tt_every(long long *next, int ms);

/** Runs `base` for `ms` milliseconds. */
void tt_run_for(struct event_base *base, int ms);

/** Monotonic milliseconds. */
long long tt_now_ms(void);

#endif
