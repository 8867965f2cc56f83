/* SPDX-License-Identifier: MIT */
/*
 * Node fixtures for the tests: a private server, a loop and, when asked,
 * a node on them that is up, as the cmocka setup and teardown of the tests
 * that share one node (test_node, test_queue, test_rpc, test_monitor,
 * test_security).
 */
#ifndef TEMPEST_TEST_NODE_H
#define TEMPEST_TEST_NODE_H

#include <stdbool.h>

#include <tempest/tempest.h>

#include "harness.h"

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
