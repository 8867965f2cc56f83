/* SPDX-License-Identifier: MIT */
/*
 * The hash slots of Redis Cluster keys: CRC16 of the key (or of its hash
 * tag) as the servers compute it, and the check that a worker's queue keeps
 * all its keys in one slot. Pure functions, without a connection: the
 * cluster connection (lib/redis_cluster.c) routes commands with them, the
 * worker checks its queue names, and the tests compute where keys live.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "internal.h"

static uint16_t crc16(const char *buf, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

int tp_cluster_slot(const char *key, size_t len) {
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t from = (size_t)(open - key) + 1;
        const char *close = memchr(open + 1, '}', len - from);
        if (close != NULL && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (TP_CLUSTER_SLOTS - 1);
    }
    return crc16(key, len) & (TP_CLUSTER_SLOTS - 1);
}

const char *tp_cluster_check_queue(const char *name, const char *dead) {
    size_t len = strlen(name);
    char *prefix = tp_malloc(len + 4);
    if (prefix == NULL)
        return "out of memory";
    int n = snprintf(prefix, len + 4, "{%s}:", name), slot = tp_cluster_slot(prefix, (size_t)n);
    free(prefix);
    if (tp_cluster_slot(name, len) != slot)
        return "in Redis Cluster mode, a queue name must not hold '}' (its list and its "
               "{queue}: keys would hash to different slots)";
    if (dead != NULL && tp_cluster_slot(dead, strlen(dead)) != slot)
        return "in Redis Cluster mode, the dead_letter list must hash to its queue's slot "
               "(name it {queue}:something)";
    return NULL;
}
