/* SPDX-License-Identifier: MIT */
/*
 * Queue throughput: N jobs pushed fire-and-forget, then taken by W workers
 * with the reliable fetch and acknowledged (tempest_job_done, no answers).
 * Prints jobs/s for the consume phase, from the first take to the last ack
 * confirmed by Redis (the processing lists are empty).
 *
 *   queue_bench --redis URL [--jobs N] [--workers W] [--concurrency C] [--queues Q]
 *
 * URL is redis://HOST:PORT or redis+cluster://HOST:PORT[,...]. With Q
 * queues (bench0..), the jobs are spread evenly and worker i takes queue
 * i % Q (so W >= Q); with Q = 1 the queue is "bench".
 */
#include <event2/event.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tempest/tempest.h>
#include <time.h>

static long done_count;

static void done(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    tempest_job_done(job);
    done_count++;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void queue_name(char *out, size_t size, int queues, int i) {
    if (queues == 1)
        snprintf(out, size, "bench");
    else
        snprintf(out, size, "bench%d", i);
}

/* A connection to the server that holds `queue` (a cluster answers MOVED). */
static redisContext *owner(const char *host, int port, const char *queue) {
    redisContext *c = redisConnect(host, port);
    redisReply *r = c && !c->err ? redisCommand(c, "DEL %s", queue) : NULL;
    char h[64];
    int p;
    if (r && r->type == REDIS_REPLY_ERROR && sscanf(r->str, "MOVED %*d %63[^:]:%d", h, &p) == 2) {
        redisFree(c);
        freeReplyObject(r);
        return owner(h, p, queue);
    }
    freeReplyObject(r);
    return c && !c->err ? c : NULL;
}

/* Pushes the jobs with pipelined synchronous connections (setup, not measured). */
static int fill(const char *host, int port, long jobs, int queues) {
    for (int q = 0; q < queues; q++) {
        char name[32];
        queue_name(name, sizeof name, queues, q);
        redisContext *c = owner(host, port, name);
        if (c == NULL)
            return -1;
        long n = 0;
        for (long i = q; i < jobs; i += queues, n++) {
            char job[64];
            snprintf(job, sizeof job, "[\"x\",[%ld],null,%ld]", i, i + 1);
            redisAppendCommand(c, "RPUSH %s %s", name, job);
        }
        for (long i = 0; i < n; i++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK)
                return -1;
            freeReplyObject(r);
        }
        redisFree(c);
    }
    return 0;
}

static void tick(evutil_socket_t fd, short what, void *base) {
    (void)fd;
    (void)what;
    event_base_loopbreak(base);
}

int main(int argc, char **argv) {
    const char *url = NULL;
    long jobs = 200000;
    int workers = 1, concurrency = 64, queues = 1;
    static const struct option o[] = {{"redis", 1, 0, 'r'},       {"queues", 1, 0, 'q'},
                                      {"jobs", 1, 0, 'n'},        {"workers", 1, 0, 'w'},
                                      {"concurrency", 1, 0, 'c'}, {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", o, NULL)) != -1;) {
        if (c == 'r')
            url = optarg;
        else if (c == 'n')
            jobs = atol(optarg);
        else if (c == 'w')
            workers = atoi(optarg);
        else if (c == 'c')
            concurrency = atoi(optarg);
        else if (c == 'q')
            queues = atoi(optarg);
        else
            return 2;
    }
    char host[64];
    int port;
    if (queues < 1 || workers < queues || workers > 64)
        return fprintf(stderr, "queue_bench: need 1 <= queues <= workers <= 64\n"), 1;
    if (url == NULL ||
        (sscanf(url, "redis://%63[^:]:%d", host, &port) != 2 &&
         sscanf(url, "redis+cluster://%63[^:]:%d", host, &port) != 2) ||
        fill(host, port, jobs, queues))
        return fprintf(stderr, "queue_bench: need --redis redis://HOST:PORT or "
                               "redis+cluster://HOST:PORT[,...]\n"),
               1;
    struct event_base *base = event_base_new();
    tempest_node *node = tempest_node_new(base, &(tempest_node_options){.redis_url = url}, NULL);
    tempest_worker *ws[64];
    for (int i = 0; i < workers && i < 64; i++) {
        char name[32];
        queue_name(name, sizeof name, queues, i % queues);
        ws[i] = tempest_worker_new(
            node, &(tempest_worker_options){.queue = name, .concurrency = concurrency}, NULL);
        tempest_worker_on(ws[i], "x", done, NULL);
    }
    struct event *t = event_new(base, -1, EV_PERSIST, tick, base);
    event_add(t, &(struct timeval){0, 1000});
    while (tempest_node_state(node) != TEMPEST_NODE_UP)
        event_base_dispatch(base);
    double t0 = now();
    for (int i = 0; i < workers; i++)
        tempest_worker_start(ws[i]);
    while (done_count < jobs)
        event_base_dispatch(base);
    for (int i = 0; i < workers; i++)
        tempest_worker_stop(ws[i]);
    for (int i = 0; i < workers; i++)
        tempest_worker_loop(ws[i]); /* returns once its acks are confirmed */
    double secs = now() - t0;
    printf("jobs=%ld workers=%d queues=%d concurrency=%d seconds=%.3f jobs_per_s=%.0f\n", jobs,
           workers, queues, concurrency, secs, jobs / secs);
    for (int i = 0; i < workers; i++)
        tempest_worker_free(ws[i]);
    event_free(t);
    tempest_node_free(node);
    event_base_free(base);
    return 0;
}
