/* SPDX-License-Identifier: MIT */
/*
 * The hello-world worker of Tempest: answers every `url` job with
 * 200 text/plain "Hello world! #N", N counting the requests it answered.
 * With --service NAME it is also a responder of that service: a request of
 * type `hello` gets `{"hello": <the request's body>, "from": "<host:port>"}`,
 * its node listener's advertised address (examples/call sends them).
 * Two demos: `/visits` counts the visits of the browser's session (a front
 * with --sessions), and `/cached` is marked cacheable for 5 s (a front
 * with --cache serves it from Redis meanwhile).
 *
 *   worker [--redis URL] [--queue NAME] [--concurrency N]
 *          [--service NAME [--listen HOST:PORT] [--advertise HOST:PORT]]
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static void answer_text(tempest_job *job, const char *cache_ms, const char *body) {
    json_t *answer = json_pack("[i,{s:s},s]", 200, "Content-Type", "text/plain", body);
    if (cache_ms)
        json_object_set_new(json_array_get(answer, 1), "X-Tempest-Cache", json_string(cache_ms));
    if (tempest_job_answer(job, answer, false) != 0)
        fprintf(stderr, "worker: could not answer job %lld\n", tempest_job_id(job));
    json_decref(answer);
}

static void hello_request(tempest_responder *r, tempest_request *req, void *arg) {
    (void)r;
    json_t *reply = json_pack("{s:O,s:s}", "hello", tempest_request_body(req), "from",
                              tempest_node_address(arg));
    if (reply == NULL)
        tempest_request_error(req, "ENOMEM", "out of memory");
    else
        tempest_request_reply(req, reply);
    json_decref(reply);
}

/* /visits: the session's counter, read then written back. */
static void on_visits(tempest_job *job, int status, json_t *value, void *arg) {
    (void)arg;
    char body[64];
    if (job == NULL)
        return; /* the worker is going away */
    json_int_t n = status == 0 ? json_integer_value(value) + 1 : 0;
    json_t *v = json_integer(n);
    tempest_session_set(job, "visits", v, NULL, NULL); /* not waited for */
    json_decref(v);
    snprintf(body, sizeof body, "visits: %" JSON_INTEGER_FORMAT "\n", n);
    answer_text(job, NULL, status == 0 ? body : "no session\n");
}

static void hello(tempest_worker *worker, tempest_job *job, void *arg) {
    (void)worker;
    unsigned long *count = arg;
    json_t *url = json_object_get(json_array_get(tempest_job_args(job), 0), "url");
    const char *path = json_is_string(url) ? json_string_value(url) : "";
    char body[64];
    snprintf(body, sizeof body, "Hello world! #%lu\n", ++*count);
    if (strcmp(path, "/visits") == 0 && tempest_session_get(job, "visits", on_visits, NULL) == 0)
        return;
    answer_text(job, strcmp(path, "/cached") == 0 ? "5000" : NULL, body);
}

static void usage(void) {
    fprintf(stderr,
            "usage: worker [--redis URL] [--queue NAME] [--concurrency N]\n"
            "              [--service NAME [--listen HOST:PORT] [--advertise HOST:PORT]]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {{"redis", required_argument, 0, 'r'},
                                             {"queue", required_argument, 0, 'q'},
                                             {"concurrency", required_argument, 0, 'c'},
                                             {"service", required_argument, 0, 's'},
                                             {"listen", required_argument, 0, 'l'},
                                             {"advertise", required_argument, 0, 'a'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    tempest_node_options no = {
        .log = log_stderr, .log_arg = "worker", .log_level = TEMPEST_LOG_WARN};
    tempest_worker_options wo = {.handle_signals = true};
    tempest_responder_options ro = {0};
    for (int c; (c = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
        if (c == 'r')
            no.redis_url = optarg;
        else if (c == 's')
            ro.service = optarg;
        else if (c == 'l')
            no.listen = optarg;
        else if (c == 'a')
            no.advertise = optarg;
        else if (c == 'q')
            wo.queue = optarg;
        else if (c == 'c' && (wo.concurrency = atoi(optarg)) > 0)
            continue;
        else
            usage();
    }
    if (optind != argc)
        usage();
    tempest_error err;
    tempest_node *node = tempest_node_new(NULL, &no, &err);
    if (node == NULL) {
        fprintf(stderr, "worker: %s\n", err.message);
        return 1;
    }
    if (wait_for_redis(node, 5) != 0) {
        fprintf(stderr, "worker: cannot reach Redis: %s\n", tempest_node_errstr(node));
        tempest_node_free(node);
        return 1;
    }
    tempest_responder *responder = NULL;
    if (ro.service != NULL) {
        responder = tempest_responder_new(node, &ro, &err);
        if (responder == NULL || tempest_responder_on(responder, "hello", hello_request, node)) {
            fprintf(stderr, "worker: %s\n", responder ? "out of memory" : err.message);
            return 1;
        }
    }
    unsigned long count = 0;
    tempest_worker *worker = tempest_worker_new(node, &wo, &err);
    if (worker == NULL || tempest_worker_on(worker, "url", hello, &count) != 0) {
        fprintf(stderr, "worker: %s\n", worker ? "out of memory" : err.message);
        return 1;
    }
    if (tempest_worker_start(worker) != 0) { /* signals are handled from here on */
        fprintf(stderr, "worker: cannot start\n");
        return 1;
    }
    if (responder != NULL)
        printf("responder of %s at %s\n", ro.service, tempest_node_address(node));
    printf("worker ready on queue %s\n", wo.queue ? wo.queue : "tempest");
    fflush(stdout);
    int rc = tempest_worker_loop(worker);
    tempest_worker_free(worker);
    tempest_responder_free(responder);
    tempest_node_free(node);
    return rc == 0 ? 0 : 1;
}
