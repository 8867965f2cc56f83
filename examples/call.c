/* SPDX-License-Identifier: MIT */
/*
 * A requester on the command line: finds the responders of a service
 * through Redis and sends them requests, round-robin, printing each reply as
 * one line of JSON. With --address it skips discovery and calls that node
 * listener directly (tempest_call).
 *
 *   call [--redis URL] [--namespace NS] [--timeout MS] [--count N]
 *        (--service NAME [--responders N] | --address HOST:PORT) TYPE [JSON]
 *
 * JSON is the request's body (default null). Requests go out as soon as one
 * responder is known; --responders N first waits (up to the timeout) until N
 * are, so that round-robin spreads them from the first request. Exits 0 when every request got
 * a reply, 1 otherwise (each failure is printed on stderr), 2 on bad usage.
 * For example, against `worker --service greeter`:
 *
 *   call --service greeter --count 4 hello '"you"'
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef struct run {
    struct event_base *base;
    int left;   /* replies still awaited */
    int failed; /* requests that got an error */
} run;

static void on_reply(tempest_requester *rq, long long id, int status, json_t *reply, void *arg) {
    (void)rq;
    run *r = arg;
    char *text = reply != NULL ? json_dumps(reply, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (status == 0) {
        printf("%s\n", text != NULL ? text : "null");
    } else {
        fprintf(stderr, "call: request %lld: %s%s%s\n", id, tempest_strerror(status),
                text != NULL ? ": " : "", text != NULL ? text : "");
        r->failed++;
    }
    free(text);
    fflush(stdout);
    if (--r->left == 0)
        event_base_loopbreak(r->base);
}

/* Runs the loop until `n` responders are live or `ms` pass; 0 when they are. */
static int wait_for_responders(tempest_requester *rq, struct event_base *base, int n, int ms) {
    struct event *tick = event_new(base, -1, EV_PERSIST, stop_waiting, base);
    struct timeval step = {0, 20000};
    event_add(tick, &step);
    for (int i = 0; i < ms / 20 && tempest_requester_live(rq) < n; i++)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
    return tempest_requester_live(rq) >= n ? 0 : -1;
}

static void usage(void) {
    fprintf(stderr, "usage: call [--redis URL] [--namespace NS] [--timeout MS] [--count N]\n"
                    "            (--service NAME [--responders N] | --address HOST:PORT)"
                    " TYPE [JSON]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {{"redis", required_argument, 0, 'r'},
                                             {"namespace", required_argument, 0, 'n'},
                                             {"service", required_argument, 0, 's'},
                                             {"address", required_argument, 0, 'a'},
                                             {"timeout", required_argument, 0, 't'},
                                             {"count", required_argument, 0, 'c'},
                                             {"responders", required_argument, 0, 'p'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    tempest_node_options no = {.log = log_stderr, .log_arg = "call", .log_level = TEMPEST_LOG_WARN};
    tempest_requester_options ro = {0};
    const char *address = NULL;
    int count = 1, responders = 0;
    for (int c; (c = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
        if (c == 'r')
            no.redis_url = optarg;
        else if (c == 'n')
            no.namespace = optarg;
        else if (c == 's')
            ro.service = optarg;
        else if (c == 'a')
            address = optarg;
        else if (c == 't' && (ro.timeout_ms = atoi(optarg)) > 0)
            continue;
        else if (c == 'c' && (count = atoi(optarg)) > 0)
            continue;
        else if (c == 'p' && (responders = atoi(optarg)) > 0)
            continue;
        else
            usage();
    }
    if ((ro.service == NULL) == (address == NULL) || argc - optind < 1 || argc - optind > 2)
        usage();
    const char *type = argv[optind];
    json_error_t jerr;
    json_t *body = optind + 1 < argc ? json_loads(argv[optind + 1], JSON_DECODE_ANY, &jerr) : NULL;
    if (optind + 1 < argc && body == NULL) {
        fprintf(stderr, "call: the body is not JSON: %s\n", jerr.text);
        return 2;
    }
    tempest_error err;
    tempest_node *node = tempest_node_new(NULL, &no, &err);
    if (node == NULL) {
        fprintf(stderr, "call: %s\n", err.message);
        json_decref(body);
        return 1;
    }
    if (wait_for_redis(node, 5) != 0) {
        fprintf(stderr, "call: cannot reach Redis: %s\n", tempest_node_errstr(node));
        tempest_node_free(node);
        json_decref(body);
        return 1;
    }
    tempest_requester *rq = NULL;
    if (address == NULL && (rq = tempest_requester_new(node, &ro, &err)) == NULL) {
        fprintf(stderr, "call: %s\n", err.message);
        tempest_node_free(node);
        json_decref(body);
        return 1;
    }
    run r = {.base = tempest_node_base(node)};
    if (rq != NULL && responders > 0 &&
        wait_for_responders(rq, r.base, responders, ro.timeout_ms ? ro.timeout_ms : 5000)) {
        fprintf(stderr, "call: %d of %d responders of %s found\n", tempest_requester_live(rq),
                responders, ro.service);
        r.failed = 1;
        count = 0;
    }
    tempest_send_options so = {.timeout_ms = ro.timeout_ms};
    for (int i = 0; i < count; i++) {
        long long id = rq != NULL ? tempest_requester_send(rq, type, body, &so, on_reply, &r)
                                  : tempest_call(node, address, type, body, &so, on_reply, &r);
        if (id < 0) {
            fprintf(stderr, "call: cannot send: %s\n", tempest_strerror((int)id));
            r.failed++;
        } else {
            r.left++;
        }
    }
    json_decref(body);
    if (r.left > 0)
        event_base_dispatch(r.base);
    tempest_requester_free(rq);
    tempest_node_free(node);
    return r.failed == 0 ? 0 : 1;
}
