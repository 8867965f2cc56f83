/* SPDX-License-Identifier: MIT */
/*
 * The HTTP front: every request becomes a `url` job on a Redis queue and
 * the first worker to answer it writes the response.
 *
 *   front [--redis URL] [--http HOST:PORT] [--listen HOST:PORT] [--advertise HOST:PORT]
 *         [--queue NAME] [--timeout MS] [--cors ORIGIN] [--max-streams N]
 *         [--sessions] [--cache]
 *
 * --sessions gives browsers a session cookie (the signing secret comes from
 * $TEMPEST_SESSION_SECRET, at least 16 bytes); --cache serves answers that
 * workers mark with `X-Tempest-Cache: <ms>` from Redis.
 *
 * It also streams pub/sub channels as Server-Sent Events at /sub/<channel>;
 * --cors sends `Access-Control-Allow-Origin: ORIGIN` with them (`'*'` lets
 * any page subscribe, e.g. examples/sub.html opened from disk); past
 * --max-streams such streams at once (default 10000) it answers 503. Each
 * stream holds a descriptor: raise the open-files limit (`ulimit -n`) to
 * match.
 */
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static void on_signal(evutil_socket_t sig, short what, void *base) {
    (void)sig;
    (void)what;
    event_base_loopbreak(base);
}

static void usage(void) {
    fprintf(stderr, "usage: front [--redis URL] [--http HOST:PORT] [--listen HOST:PORT]"
                    " [--advertise HOST:PORT] [--queue NAME] [--timeout MS] [--cors ORIGIN]"
                    " [--max-streams N] [--sessions] [--cache]\n");
    exit(2);
}

static void parse(int argc, char **argv, tempest_node_options *no, tempest_front_options *fo) {
    static const struct option longopts[] = {
        {"redis", required_argument, 0, 'r'},  {"http", required_argument, 0, 'H'},
        {"listen", required_argument, 0, 'l'}, {"advertise", required_argument, 0, 'a'},
        {"queue", required_argument, 0, 'q'},  {"timeout", required_argument, 0, 't'},
        {"cors", required_argument, 0, 'c'},   {"max-streams", required_argument, 0, 's'},
        {"sessions", no_argument, 0, 'S'},     {"cache", no_argument, 0, 'C'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
        switch (c) {
        case 'r':
            no->redis_url = optarg;
            break;
        case 'H':
            fo->http = optarg;
            break;
        case 'l':
            no->listen = optarg;
            break;
        case 'a':
            no->advertise = optarg;
            break;
        case 'q':
            fo->queue = optarg;
            break;
        case 't':
            if ((fo->timeout_ms = atoi(optarg)) <= 0)
                usage();
            break;
        case 'c':
            fo->cors_origin = optarg;
            break;
        case 's':
            if ((fo->max_streams = atoi(optarg)) <= 0)
                usage();
            break;
        case 'S':
            fo->sessions = true; /* secret: $TEMPEST_SESSION_SECRET */
            break;
        case 'C':
            fo->cache = true;
            break;
        default:
            usage();
        }
    }
    if (optind != argc)
        usage();
}

int main(int argc, char **argv) {
    tempest_node_options no = {
        .log = log_stderr, .log_arg = "front", .log_level = TEMPEST_LOG_WARN};
    tempest_front_options fo = {.http = "127.0.0.1:1337"};
    parse(argc, argv, &no, &fo);
    tempest_error err;
    tempest_node *node = tempest_node_new(NULL, &no, &err);
    if (node == NULL) {
        fprintf(stderr, "front: %s\n", err.message);
        return 1;
    }
    if (wait_for_redis(node, 5) != 0) {
        fprintf(stderr, "front: cannot reach Redis: %s\n", tempest_node_errstr(node));
        tempest_node_free(node);
        return 1;
    }
    tempest_front *front = tempest_front_new(node, &fo, &err);
    if (front == NULL) {
        fprintf(stderr, "front: %s\n", err.message);
        tempest_node_free(node);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a client that resets must not kill the front */
    struct event_base *base = tempest_node_base(node);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    evsignal_add(sigint, NULL);
    evsignal_add(sigterm, NULL);
    const char *colon = strrchr(fo.http, ':');
    printf("front listening on http://%.*s:%d\n", (int)(colon - fo.http), fo.http,
           tempest_front_port(front));
    fflush(stdout);
    event_base_dispatch(base);
    event_free(sigint);
    event_free(sigterm);
    tempest_front_free(front);
    tempest_node_free(node);
    return 0;
}
