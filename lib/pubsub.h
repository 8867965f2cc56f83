/* SPDX-License-Identifier: MIT */
/*
 * What the library's own files need from the publisher and subscriber
 * (lib/pubsub.c) beyond the public API: the node service that keeps the
 * subscribe connection and the publications in flight, and the
 * confirmation of a subscription (the worker's cancel watch waits for it).
 */
#ifndef TEMPEST_PUBSUB_PRIV_H
#define TEMPEST_PUBSUB_PRIV_H

#include <stdbool.h>
#include <tempest/tempest.h>

/** Attaches pub/sub to a new node (lib/services.c): its `free` hook closes
 *  the subscribe connection (subscribers and publishers must be freed
 *  first). Returns 0 or a negative TEMPEST_E code. */
int tp_pubsub_attach(tempest_node *node);

/** An event of the library's own subscribers only (never delivered to an
 *  application's): Redis confirmed the subscription to `channel`; from now
 *  on every message published to it arrives. */
enum { TP_SUB_ACTIVE = 100 };

/** Asks for TP_SUB_ACTIVE events on `s` (lib/worker_cancel.c's cancel watch). */
void tp_subscriber_want_active(tempest_subscriber *s);

/** True when Redis has confirmed the node's subscription to `channel`. */
bool tp_subscription_active(const tempest_node *node, const char *channel, bool pattern);

#endif
