/* SPDX-License-Identifier: MIT */
/*
 * Helpers around tempest nodes for the tests: the conditions the tests
 * wait for (a node is up), the options of nodes that must notice Redis
 * going and coming fast, a front on a free port, the echo handler, status
 * reads (tempest_cluster_status), and the fixture of the tests that share
 * one node (test_node, test_queue, test_rpc, test_monitor, test_security):
 * a private server, a loop and, when asked, a node on them that is up.
 */
#ifndef TEMPEST_TEST_NODE_H
#define TEMPEST_TEST_NODE_H

#include <stdbool.h>

#include <tempest/tempest.h>

#include "harness.h"

/** tt_run_until conditions on the node `node`: it is UP; it is UP and has
 *  its id; it is not UP. */
bool tt_node_up(void *node);
bool tt_node_up_with_id(void *node);
bool tt_node_not_up(void *node);

/**
 * The options of the tests' nodes that must notice Redis going and coming
 * fast: `url`, connecting for at most 1 s, reconnecting after 20 to 200 ms,
 * logging to `log` (may be NULL) with `log_arg` from `log_level` on.
 */
tempest_node_options tt_node_options(const char *url, tempest_log_fn *log, void *log_arg,
                                     int log_level);

/** A node with the options `o`; fails the test (cmocka) with the error
 *  text when it cannot be made. */
tempest_node *tt_node_new(struct event_base *base, const tempest_node_options *o);

/**
 * A front on `node` with `options` (NULL: the defaults) listening on a
 * free port of 127.0.0.1, which goes to `*port`. Asserts (cmocka) that it
 * is made, after printing why not.
 */
tempest_front *tt_front_new(tempest_node *node, const tempest_front_options *options, int *port);

/** A tempest_handler_fn that answers every job with its args (and prints
 *  a line when it cannot). */
void tt_echo(tempest_worker *w, tempest_job *job, void *arg);

/** What a tempest_cluster_status call gave (tt_on_status fills it). */
typedef struct tt_status {
    bool done;
    int status, calls;
    json_t *snap; /* a new reference to the snapshot, or NULL */
} tt_status;

/** The tempest_status_fn that fills the tt_status `arg`. */
void tt_on_status(tempest_node *node, int status, json_t *snapshot, void *arg);

/** tt_run_until condition: the tt_status `arg` is filled. */
bool tt_status_done(void *arg);

/** The record of node `id` in the "nodes" of a snapshot (borrowed), or NULL. */
json_t *tt_snapshot_node(json_t *snap, long long id);

typedef struct tt_node_fixture {
    tt_redis redis;
    struct event_base *base;
    tempest_node *node; /* NULL unless tt_node_setup was given `up` */
} tt_node_fixture;

/**
 * cmocka setup: zeroes the fixture (one, static), starts its server and
 * its loop and, when `up` is not NULL, a node with the options `o` and the
 * server's URL, waited for (3 s) until `up(node)` holds. Stores the fixture
 * in `*state`; returns 0 or -1.
 */
int tt_node_setup(void **state, tempest_node_options o, bool (*up)(void *));

/** cmocka teardown of tt_node_setup: frees the node and the loop, stops the
 *  server. */
int tt_node_teardown(void **state);

#endif
