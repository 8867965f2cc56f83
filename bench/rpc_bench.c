/* SPDX-License-Identifier: MIT */
/*
 * Requester/responder round trips: R responders, each a child process with
 * its own node, and one requester in this process that keeps K requests in
 * flight until N have been answered (after a warm-up of N/10). Prints
 * requests/s and the p50/p99 latency from send to reply callback.
 *
 *   rpc_bench --redis URL [--requests N] [--inflight K] [--responders R]
 */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <tempest/tempest.h>
#include <time.h>
#include <unistd.h>

typedef struct bench {
    tempest_requester *rq;
    struct event_base *base;
    json_t *body;
    long total, sent, done, failed, warmup;
    int inflight;
    double *lat; /* seconds, per measured request */
    double *start;
    double t0, t1;
} bench;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void echo(tempest_responder *r, tempest_request *req, void *arg) {
    (void)r, (void)arg;
    tempest_request_reply(req, tempest_request_body(req));
}

static char ns[32]; /* a namespace of this run: stale entries of killed runs stay apart */

static void child(const char *url) {
    struct event_base *base = event_base_new();
    tempest_node *node = tempest_node_new(base, &(tempest_node_options){.redis_url = url}, NULL);
    tempest_responder *r = tempest_responder_new(
        node, &(tempest_responder_options){.service = "bench", .namespace = ns}, NULL);
    if (r == NULL || tempest_responder_on(r, "echo", echo, NULL) != 0)
        _exit(2);
    event_base_dispatch(base);
    _exit(0);
}

static void send_one(bench *b);

static void on_reply(tempest_requester *rq, long long id, int status, json_t *reply, void *arg) {
    (void)rq, (void)reply;
    bench *b = arg;
    long i = (long)id - 1;
    if (status != 0)
        b->failed++;
    if (i >= b->warmup)
        b->lat[i - b->warmup] = now() - b->start[i];
    if (++b->done == b->warmup)
        b->t0 = now();
    if (b->done == b->total) {
        b->t1 = now();
        event_base_loopbreak(b->base);
        return;
    }
    send_one(b);
}

static void send_one(bench *b) {
    if (b->sent >= b->total)
        return;
    b->start[b->sent++] = now();
    if (tempest_requester_send(b->rq, "echo", b->body, NULL, on_reply, b) <= 0) {
        fprintf(stderr, "send failed\n");
        exit(1);
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void wait_live(bench *b, int n) {
    double until = now() + 10;
    while (tempest_requester_live(b->rq) < n && now() < until)
        event_base_loop(b->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    if (tempest_requester_live(b->rq) < n) {
        fprintf(stderr, "responders did not show up\n");
        exit(1);
    }
}

static void report(bench *b, int responders) {
    long n = b->total - b->warmup;
    qsort(b->lat, (size_t)n, sizeof *b->lat, cmp);
    double secs = b->t1 - b->t0;
    printf("rpc  responders=%d inflight=%-3d requests=%ld  %9.0f req/s  p50 %7.1f us  p99 %7.1f "
           "us  failed %ld\n",
           responders, b->inflight, n, n / secs, b->lat[n / 2] * 1e6, b->lat[n * 99 / 100] * 1e6,
           b->failed);
}

int main(int argc, char **argv) {
    const char *url = "redis://127.0.0.1:6379";
    long requests = 100000;
    int inflight = 1, responders = 2, opt;
    static const struct option longopts[] = {{"redis", 1, NULL, 'u'},
                                             {"requests", 1, NULL, 'n'},
                                             {"inflight", 1, NULL, 'k'},
                                             {"responders", 1, NULL, 'r'},
                                             {NULL, 0, NULL, 0}};
    while ((opt = getopt_long(argc, argv, "u:n:k:r:", longopts, NULL)) != -1) {
        if (opt == 'u')
            url = optarg;
        else if (opt == 'n')
            requests = atol(optarg);
        else if (opt == 'k')
            inflight = atoi(optarg);
        else if (opt == 'r')
            responders = atoi(optarg);
        else
            return 2;
    }
    snprintf(ns, sizeof ns, "bench-%d", (int)getpid());
    pid_t pids[16];
    for (int i = 0; i < responders && i < 16; i++)
        if ((pids[i] = fork()) == 0)
            child(url);
    bench b = {.base = event_base_new(), .inflight = inflight, .warmup = requests / 10};
    b.total = requests + b.warmup;
    b.lat = calloc((size_t)requests, sizeof *b.lat);
    b.start = calloc((size_t)b.total, sizeof *b.start);
    b.body = json_pack("{sssi}", "hello", "world", "n", 42);
    tempest_node *node = tempest_node_new(b.base, &(tempest_node_options){.redis_url = url}, NULL);
    b.rq = tempest_requester_new(
        node, &(tempest_requester_options){.service = "bench", .namespace = ns}, NULL);
    wait_live(&b, responders);
    for (int i = 0; i < inflight; i++)
        send_one(&b);
    event_base_dispatch(b.base);
    report(&b, responders);
    tempest_requester_free(b.rq);
    tempest_node_free(node);
    for (int i = 0; i < responders && i < 16; i++) {
        kill(pids[i], SIGTERM);
        waitpid(pids[i], NULL, 0);
    }
    json_decref(b.body);
    free(b.lat);
    free(b.start);
    event_base_free(b.base);
    return 0;
}
