/* SPDX-License-Identifier: MIT */
/*
 * The node's private state, shared by node.c, queue.c, worker.c and
 * front.c. User callbacks of the node (answers) run only from events the
 * node owns, never from inside the listener or hiredis, so that a callback
 * may free the node: `depth` counts callbacks running, and a free requested
 * inside one is finished when the outermost returns.
 */
#ifndef TEMPEST_NODE_PRIV_H
#define TEMPEST_NODE_PRIV_H

#include <jansson.h>
#include <stdint.h>
#include <tempest/tempest.h>

#include "codec.h"
#include "internal.h"
#include "listener.h"
#include "redis.h"

struct event;

/** How many cancelled job ids a node remembers, to refuse their late
 *  answers with -CANCELED instead of -ERR unknown job. */
#define TP_CANCELLED_KEEP 1024

/** One answer (or terminal event) queued for delivery to its producer. */
typedef struct tp_delivery {
    struct tp_delivery *next;
    struct tp_pending *job;
    int status;          /* TEMPEST_MORE, TEMPEST_MORE_RAW, 0, or a negative code */
    json_t *json;        /* owned reference, or NULL */
    tp_reply_slot *slot; /* the worker's +OK, held until delivered (flow jobs) */
} tp_delivery;

/** A job of this node waiting for its answers. */
typedef struct tp_pending {
    struct tempest_node *node;
    long long id;
    tempest_answer_fn *fn;
    void *arg;
    struct event *timer;
    int timeout_ms;    /* as given to tempest_work: re-armed by each sign of life */
    int replicas;      /* WAIT for so many replicas after the push (0: none) */
    bool flow;         /* partial answers' replies wait for their delivery */
    bool done;         /* terminal event queued: further answers are refused */
    int queued;        /* deliveries queued that point here */
    tp_delivery final; /* the terminal event needs no allocation: it always arrives */
} tp_pending;

struct tempest_node {
    struct event_base *base;
    bool own_base;
    tp_logger log;
    tempest_state_fn *on_state;
    void *state_arg;
    tp_redis_url url;
    tp_redis_timing timing;
    tp_redis *redis;
    long long id;
    long long next_job;
    /* listener */
    char *listen_host;
    int listen_port;
    char *advertise_opt;
    char *address;
    tp_listener *listener;
    tp_listener_limits limits; /* limits.secret is `secret` */
    char *secret;              /* listener and answers; NULL: none */
    /* pending jobs and their deliveries */
    tp_map pending;
    tp_delivery *dq_head, *dq_tail;
    tp_delivery *delivering;                /* the delivery whose callback runs, or NULL */
    long long cancelled[TP_CANCELLED_KEEP]; /* recently cancelled job ids, a ring */
    unsigned ncancelled;
    struct event *deliver_ev;
    const struct timeval *default_timeout; /* common timeout for 30 s */
    /* workers built on the node, by serial: lets replies on the node's
     * connection find a worker, or learn that it was freed */
    tp_map workers;
    long long next_worker;
    /* publications waiting for their reply, by id (lib/pubsub.c) */
    tp_map publications;
    long long next_publication;
    struct tp_pubsub *pubsub; /* the subscribe connection, once needed */
    struct tp_rpc *rpc;       /* responders and direct calls (lib/rpc.c), once needed */
    /* presence (lib/presence.c) */
    char *ns;
    int heartbeat_ms, presence_ttl_ms;
    uint64_t started_ms; /* CLOCK_MONOTONIC, for the record's uptime */
    struct tp_presence *presence;
    uint64_t jobs_sent; /* tempest_work calls that queued a job */
    bool producing;     /* joined the presence as a producer */
    /* answers from foreign peers that could not be used (acknowledged +OK) */
    uint64_t answers_dropped;
    uint64_t drops_unlogged; /* since the last log line about them */
    uint64_t drop_logged_ms; /* monotonic; 0: never */
    int depth;
    bool freeing;
    char errstr[256];
};

/** Opens the listener if it is not open; 0 or TEMPEST_EADDR. */
int tp_node_ensure_listener(tempest_node *node);

/** Queues a delivery for `job` and wakes the delivery event. Steals `json`.
 *  A terminal status (<= 0) never fails: it uses the job's own slot. */
int tp_node_deliver(tempest_node *node, tp_pending *job, int status, json_t *json);

/** As tp_node_deliver, with the reply `slot` of the answer (or NULL): it is
 *  completed with +OK after the producer's callback, unless the callback
 *  took it with tp_node_hold_reply(). */
int tp_node_deliver_held(tempest_node *node, tp_pending *job, int status, json_t *json,
                         tp_reply_slot *slot);

/** From inside a producer's answer callback: takes the reply slot of the
 *  answer being delivered (NULL when it has none); the caller completes it
 *  later (tp_slot_reply_status / tp_slot_reply_error), exactly once. */
tp_reply_slot *tp_node_hold_reply(tempest_node *node);

/** Remembers `id` as cancelled (its answers get -CANCELED) and tells the
 *  workers: PUBLISH tempest:cancel:<address> ["<id>"]. */
void tp_node_cancelled(tempest_node *node, long long id);

/** Marks `job` done (no more answers taken) and stops its timer; it leaves
 *  the table when its terminal event is delivered or it is cancelled. */
void tp_node_finish(tempest_node *node, tp_pending *job);

/** An event of the library's own subscribers only (never delivered to an
 *  application's): Redis confirmed the subscription to `channel`; from now
 *  on every message published to it arrives. */
enum { TP_SUB_ACTIVE = 100 };

/** Asks for TP_SUB_ACTIVE events on `s` (lib/worker.c's cancel watch). */
void tp_subscriber_want_active(tempest_subscriber *s);

/** True when Redis has confirmed the node's subscription to `channel`. */
bool tp_subscription_active(const tempest_node *node, const char *channel, bool pattern);

/** Frees the node's subscribe connection and channel table (node.c's
 *  destroy calls it; subscribers must be freed first). */
void tp_pubsub_free(struct tp_pubsub *ps);

/** A reply callback for commands on the node's connection whose only
 *  outcome of interest is an error: logs it as a warning, prefixed with
 *  `privdata` (a static string). */
void tp_node_log_reply(redisAsyncContext *ac, void *reply, void *privdata);

/** Sets the node's last error text. */
void tp_node_errorf(tempest_node *node, const char *fmt, ...) TP_PRINTF(2, 3);

/** Enter/leave a user callback; leave returns true when the node was freed. */
static inline void tp_node_enter(tempest_node *node) {
    node->depth++;
}
bool tp_node_leave(tempest_node *node);

#endif
