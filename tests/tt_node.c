/* SPDX-License-Identifier: MIT */
/* See tt_node.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "tt_node.h"

bool tt_node_up(void *node) {
    return tempest_node_state(node) == TEMPEST_NODE_UP;
}

bool tt_node_up_with_id(void *node) {
    return tempest_node_state(node) == TEMPEST_NODE_UP && tempest_node_id(node) > 0;
}

bool tt_node_not_up(void *node) {
    return tempest_node_state(node) != TEMPEST_NODE_UP;
}

tempest_node_options tt_node_options(const char *url, tempest_log_fn *log, void *log_arg,
                                     int log_level) {
    return (tempest_node_options){.redis_url = url,
                                  .connect_timeout_ms = 1000,
                                  .reconnect_min_ms = 20,
                                  .reconnect_max_ms = 200,
                                  .log = log,
                                  .log_arg = log_arg,
                                  .log_level = log_level};
}

tempest_node *tt_node_new(struct event_base *base, const tempest_node_options *o) {
    tempest_error err = {0};
    tempest_node *node = tempest_node_new(base, o, &err);
    if (node == NULL)
        fail_msg("tempest_node_new: %s", err.message);
    return node;
}

tempest_front *tt_front_new(tempest_node *node, const tempest_front_options *options, int *port) {
    tempest_error err = {0};
    tempest_front_options fo = options ? *options : (tempest_front_options){0};
    fo.http = "127.0.0.1:0";
    tempest_front *front = tempest_front_new(node, &fo, &err);
    if (front == NULL)
        fprintf(stderr, "tempest_front_new: %s\n", err.message);
    assert_non_null(front);
    *port = tempest_front_port(front);
    return front;
}

void tt_echo(tempest_worker *w, tempest_job *job, void *arg) {
    (void)w;
    (void)arg;
    if (tempest_job_answer(job, tempest_job_args(job), false) != 0)
        fprintf(stderr, "tt_echo: answer failed\n");
}

void tt_on_status(tempest_node *node, int status, json_t *snapshot, void *arg) {
    (void)node;
    tt_status *r = arg;
    r->done = true;
    r->calls++;
    r->status = status;
    r->snap = json_incref(snapshot);
}

bool tt_status_done(void *arg) {
    return ((tt_status *)arg)->done;
}

json_t *tt_snapshot_node(json_t *snap, long long id) {
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(snap, "nodes"), i, n) {
        if (json_integer_value(json_object_get(n, "id")) == id)
            return n;
    }
    return NULL;
}

int tt_node_setup(void **state, tempest_node_options o, bool (*up)(void *)) {
    static tt_node_fixture f;
    memset(&f, 0, sizeof f);
    if (tt_redis_start(&f.redis, NULL) != 0 || (f.base = event_base_new()) == NULL)
        return -1;
    if (up != NULL) {
        o.redis_url = f.redis.url;
        f.node = tempest_node_new(f.base, &o, NULL);
        if (f.node == NULL || !tt_run_until(f.base, up, f.node, 3000))
            return -1;
    }
    *state = &f;
    return 0;
}

int tt_node_teardown(void **state) {
    tt_node_fixture *f = *state;
    tempest_node_free(f->node);
    event_base_free(f->base);
    tt_redis_stop(&f->redis);
    return 0;
}
