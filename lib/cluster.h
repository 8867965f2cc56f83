/* SPDX-License-Identifier: MIT */
/*
 * The hash slots of Redis Cluster keys (lib/cluster.c): where a key lives,
 * and whether a worker's queue keeps its keys in one slot. Pure functions;
 * the cluster connection itself is lib/redis_cluster.c, behind a tp_redis.
 */
#ifndef TEMPEST_CLUSTER_H
#define TEMPEST_CLUSTER_H

#include <stddef.h>

/** Number of hash slots of a Redis Cluster. */
#define TP_CLUSTER_SLOTS 16384

/**
 * The hash slot of `key` (CRC16 XMODEM of the key, or of its first
 * non-empty `{tag}`, modulo 16384), as CLUSTER KEYSLOT computes it.
 */
int tp_cluster_slot(const char *key, size_t len);

/**
 * Why a worker's queue `name` (with its dead-letter list `dead`, NULL for
 * the default `{name}:dead`) cannot work in cluster mode: its keys would
 * span slots. A static string, or NULL when it is fine.
 */
const char *tp_cluster_check_queue(const char *name, const char *dead);

#endif
