/* SPDX-License-Identifier: MIT */
/*
 * Node presence: the one heartbeat of a node. Every role built on a node
 * (front, worker, responder, requester) joins its node's presence with a
 * `describe` hook, which adds the role, the queues or services it serves
 * and a few counters to the node's record, and an optional `beat` hook,
 * run on every beat, for what the role must refresh itself (a responder's
 * entry in its service registry). One timer per node, one script per beat:
 *
 *   tempest:<ns>:nodes          sorted set: node id -> expiry (Redis ms)
 *   tempest:<ns>:nodes:records  hash: node id -> JSON record
 *
 * The record is rebuilt once per beat from plain counters, so counting
 * costs nothing on the hot path. A node without roles (a producer that
 * never opened its listener, a monitor) is not listed. The worker's
 * per-queue leases (`{q}:alive:<w>`) are not refreshed here: they must be
 * written on the worker's take connection, before each take (scripts.c).
 */
#ifndef TEMPEST_PRESENCE_H
#define TEMPEST_PRESENCE_H

#include <jansson.h>
#include <stdint.h>

struct tempest_node;

/** Adds a role's part to `record` (use the tp_presence_add_* helpers). */
typedef void tp_presence_describe_fn(void *owner, json_t *record);
/** Runs after each beat was sent (the Redis connection is up). */
typedef void tp_presence_beat_fn(void *owner);

/**
 * Joins `owner` to the node's presence; the first beat follows on the next
 * turn of the loop. `period_ms` (0: the node's heartbeat_ms) shortens the
 * node's beat when smaller. Returns 0 or TEMPEST_ENOMEM.
 */
int tp_presence_join(struct tempest_node *node, void *owner, tp_presence_describe_fn *describe,
                     tp_presence_beat_fn *beat, int period_ms);

/** Leaves; the next beat sends the record without the role (or withdraws
 *  the node when it was the last). Unknown owners are ignored. */
void tp_presence_leave(struct tempest_node *node, void *owner);

/** Counts a job sent, and joins the node as a producer on the first. */
void tp_presence_produced(struct tempest_node *node);

/** Attaches the presence to a new node (lib/services.c): it beats at once
 *  when the connection comes up, the id or the address becomes known, and
 *  its `stop` hook withdraws the record (best effort) and frees it. Returns
 *  0 or a negative TEMPEST_E code. */
int tp_presence_attach(struct tempest_node *node);

/** Adds `role` to the record's "roles" (once). */
void tp_presence_add_role(json_t *record, const char *role);
/** Adds `value` (stolen) to the record's array `list` ("queues", "services"). */
void tp_presence_add_item(json_t *record, const char *list, json_t *value);
/** Adds `n` to the counter `stats.<role>.<name>`. */
void tp_presence_add_count(json_t *record, const char *role, const char *name, uint64_t n);

#endif
