/* SPDX-License-Identifier: MIT */
/*
 * What the examples share: a stderr logger and a wait for the node's first
 * Redis connection, so that an unreachable Redis is a clear error at start.
 */
#ifndef TEMPEST_EXAMPLES_COMMON_H
#define TEMPEST_EXAMPLES_COMMON_H

#include <event2/event.h>
#include <stdio.h>
#include <tempest/tempest.h>

static void log_stderr(int level, const char *message, void *arg) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    fprintf(stderr, "%s: %s: %s\n", (const char *)arg, names[level & 3], message);
}

static void stop_waiting(evutil_socket_t fd, short what, void *base) {
    (void)fd;
    (void)what;
    event_base_loopbreak(base);
}

/* Runs the loop until the node is connected or `seconds` pass. */
static int wait_for_redis(tempest_node *node, int seconds) {
    struct event_base *base = tempest_node_base(node);
    struct event *tick = event_new(base, -1, EV_PERSIST, stop_waiting, base);
    struct timeval step = {0, 20000};
    event_add(tick, &step);
    for (int i = 0; i < seconds * 50 && tempest_node_state(node) != TEMPEST_NODE_UP; i++)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
    return tempest_node_state(node) == TEMPEST_NODE_UP ? 0 : -1;
}

#endif
