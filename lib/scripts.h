/* SPDX-License-Identifier: MIT */
/*
 * The Lua scripts of the reliable queue. Every managed connection loads
 * them all with SCRIPT LOAD during its handshake and calls them with
 * EVALSHA (tp_redis_script). Keys of one queue share the hash tag `{q}`
 * (the queue's own name hashes to the same slot), so every script touches
 * a single slot.
 */
#ifndef TEMPEST_SCRIPTS_H
#define TEMPEST_SCRIPTS_H

enum tp_script {
    TP_SCRIPT_HEARTBEAT,   /* refresh presence keys and registry */
    TP_SCRIPT_TAKE,        /* heartbeat, then move up to N jobs, queues in priority order */
    TP_SCRIPT_ACK,         /* remove a finished job from processing, forget its attempts */
    TP_SCRIPT_RETRY,       /* a job back on its queue's tail, or dead past max attempts */
    TP_SCRIPT_BURY,        /* a job from processing to the dead-letter list */
    TP_SCRIPT_REQUEUE,     /* a job back at its queue's head, attempts unchanged */
    TP_SCRIPT_REAP,        /* requeue the jobs of dead workers */
    TP_SCRIPT_LEAVE,       /* remove a stopping worker's presence */
    TP_SCRIPT_PUBLISH,     /* XADD to a channel's history stream, then PUBLISH */
    TP_SCRIPT_PRESENCE,    /* a node's record in its namespace's registry */
    TP_SCRIPT_STATUS,      /* the monitor's view of a namespace */
    TP_SCRIPT_QUEUE_STATS, /* one queue's counts (the monitor in Redis Cluster mode) */
    TP_SCRIPT_COUNT
};

/** The source of each script, indexed by enum tp_script. */
extern const char *const tp_scripts[TP_SCRIPT_COUNT];

#endif
