/* SPDX-License-Identifier: MIT */
/*
 * The worker process of the fault tests (tests/test_faults.c), which kill
 * and restart it at will:
 *
 *   fault_worker --redis URL --queue NAME [--concurrency N] [--ttl MS]
 *                [--delay-us N]
 *
 * One tempest_worker with handle_signals (SIGTERM stops it gracefully, so
 * the sanitizers get to check it at exit). Its handler "record" (not
 * "echo": the node listener takes an answer named like one of its
 * built-in commands, ECHO included, for that command) records each
 * delivery in the hash `deliveries` (HINCRBY deliveries <job id> 1) over a
 * synchronous hiredis connection of its own, optionally sleeps delay-us to
 * simulate work, and answers `[id]`. A blocking call in the handler is
 * fine in a test program: while Redis is down it retries for up to 10 s
 * (the worker's loop stalls meanwhile), so a delivery is never forgotten;
 * but a HINCRBY that ran in a Redis killed before it replied is counted
 * again by the retry.
 * Prints "ready <worker id>" on stdout once the node is connected.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <tempest/tempest.h>

#define RECORD_ATTEMPTS 100 /* 100 ms apart */

typedef struct fault_worker {
    const char *url, *queue;
    int concurrency, ttl_ms, delay_us;
    char host[64];
    int port;
    redisContext *sync; /* NULL while disconnected */
    tempest_worker *worker;
    bool ready;
} fault_worker;

static void usage(void) {
    fprintf(stderr, "usage: fault_worker --redis URL --queue NAME [--concurrency N] [--ttl MS] "
                    "[--delay-us N]\n");
    exit(2);
}

static void parse_args(fault_worker *fw, int argc, char **argv) {
    static const struct option opts[] = {
        {"redis", required_argument, NULL, 'r'},       {"queue", required_argument, NULL, 'q'},
        {"concurrency", required_argument, NULL, 'c'}, {"ttl", required_argument, NULL, 't'},
        {"delay-us", required_argument, NULL, 'd'},    {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            fw->url = optarg;
            break;
        case 'q':
            fw->queue = optarg;
            break;
        case 'c':
            fw->concurrency = atoi(optarg);
            break;
        case 't':
            fw->ttl_ms = atoi(optarg);
            break;
        case 'd':
            fw->delay_us = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (fw->url == NULL || fw->queue == NULL ||
        sscanf(fw->url, "redis://%63[^:/]:%d", fw->host, &fw->port) != 2)
        usage();
}

/* HINCRBY deliveries <id> 1, reconnecting as needed; false after 10 s. */
static bool record_delivery(fault_worker *fw, long long id) {
    for (int i = 0; i < RECORD_ATTEMPTS; i++) {
        if (fw->sync == NULL) {
            struct timeval tv = {1, 0};
            fw->sync = redisConnectWithTimeout(fw->host, fw->port, tv);
            if (fw->sync != NULL && (fw->sync->err || redisSetTimeout(fw->sync, tv) != REDIS_OK)) {
                redisFree(fw->sync);
                fw->sync = NULL;
            }
        }
        redisReply *r = fw->sync ? redisCommand(fw->sync, "HINCRBY deliveries %lld 1", id) : NULL;
        bool ok = r != NULL && r->type == REDIS_REPLY_INTEGER;
        freeReplyObject(r);
        if (ok)
            return true;
        redisFree(fw->sync);
        fw->sync = NULL;
        usleep(100000);
    }
    return false;
}

static void record(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    fault_worker *fw = arg;
    long long id = tempest_job_id(job);
    if (!record_delivery(fw, id))
        fprintf(stderr, "fault_worker[%d]: job %lld: delivery not recorded\n", (int)getpid(), id);
    if (fw->delay_us > 0)
        usleep((useconds_t)fw->delay_us);
    json_t *answer = json_pack("[I]", (json_int_t)id);
    if (answer == NULL || tempest_job_answer(job, answer, false) != 0)
        fprintf(stderr, "fault_worker[%d]: job %lld: answer failed\n", (int)getpid(), id);
    json_decref(answer);
}

static void on_state(tempest_node *node, int state, const char *reason, void *arg) {
    (void)node;
    (void)reason;
    fault_worker *fw = arg;
    if (state == TEMPEST_NODE_UP && !fw->ready) {
        fw->ready = true;
        printf("ready %s\n", tempest_worker_id(fw->worker));
        fflush(stdout);
    }
}

static void on_log(int level, const char *message, void *arg) {
    (void)level;
    (void)arg;
    fprintf(stderr, "fault_worker[%d]: %s\n", (int)getpid(), message);
}

int main(int argc, char **argv) {
    fault_worker fw = {.concurrency = 1};
    tempest_error err = {0};
    parse_args(&fw, argc, argv);
    tempest_node_options no = {.redis_url = fw.url,
                               .reconnect_min_ms = 20,
                               .reconnect_max_ms = 200,
                               .log = on_log,
                               .log_level = TEMPEST_LOG_WARN,
                               .on_state = on_state,
                               .state_arg = &fw};
    tempest_node *node = tempest_node_new(NULL, &no, &err);
    if (node == NULL) {
        fprintf(stderr, "fault_worker: %s\n", err.message);
        return 1;
    }
    /* The library wants ttl >= 2 x block timeout and 2 x heartbeat. */
    int ttl = fw.ttl_ms > 0 ? fw.ttl_ms : 5000;
    tempest_worker_options wo = {.queue = fw.queue,
                                 .concurrency = fw.concurrency,
                                 .handle_signals = true,
                                 .ttl_ms = ttl,
                                 .block_timeout_ms = ttl / 2 < 1000 ? ttl / 2 : 1000,
                                 .heartbeat_ms = ttl / 4 < 1000 ? ttl / 4 : 1000};
    fw.worker = tempest_worker_new(node, &wo, &err);
    int rc = fw.worker ? tempest_worker_on(fw.worker, "record", record, &fw) : err.code;
    if (rc == 0)
        rc = tempest_worker_loop(fw.worker);
    if (rc != 0)
        fprintf(stderr, "fault_worker: %s %s\n", tempest_strerror(rc), err.message);
    tempest_worker_free(fw.worker);
    tempest_node_free(node);
    redisFree(fw.sync);
    return rc == 0 ? 0 : 1;
}
