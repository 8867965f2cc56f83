/* SPDX-License-Identifier: MIT */
/*
 * The node's private state, shared by the files built on it (queue, worker,
 * front, and the services: presence, pub/sub, requester and responder).
 * User callbacks of the node (answers) run only from events the node owns,
 * never from inside the listener or hiredis, so that a callback may free the
 * node: `depth` counts callbacks running, and a free requested inside one is
 * finished when the outermost returns.
 *
 * The node knows nothing of what is built on it. A service attaches a table
 * of hooks (tp_node_service: told of changes, run at teardown) and adds its
 * listener commands (tp_node_command) when the node is made, in the manner
 * of nng's protocol ops; lib/services.c does it for every node.
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

/** Room for attached services and for listener commands (a fixed table:
 *  attaching never allocates). */
enum { TP_NODE_SERVICES = 8, TP_NODE_COMMANDS = 8 };

/** What changed, told to each service's on_change hook. */
enum tp_node_change {
    TP_NODE_REDIS_UP,   /**< the command connection is up (again after each reconnection) */
    TP_NODE_REDIS_DOWN, /**< the command connection is not up (the reason is in errstr) */
    TP_NODE_ID_KNOWN,   /**< the node id was assigned (`INCR cluster.ids`) */
    TP_NODE_LISTENING,  /**< the listener opened: the node's address is known */
};

/**
 * A service's hooks, attached with tp_node_attach(); NULL members are
 * skipped. The table is borrowed for the node's life (make it static const).
 */
typedef struct tp_node_service {
    /** Told of each change, services in the order of attachment; on
     *  TP_NODE_REDIS_UP and _DOWN, before the application's on_state. */
    void (*on_change)(struct tempest_node *node, int change);
    /** Teardown, first phase: after every job got its terminal callback,
     *  while the listener and the command connection are still open (the
     *  hook may write to the connection and flush it). */
    void (*stop)(struct tempest_node *node);
    /** Teardown, second phase: after the listener and the command
     *  connection are freed (their pending reply callbacks have run). */
    void (*free)(struct tempest_node *node);
} tp_node_service;

/**
 * A listener command added with tp_node_add_command(). The node's dispatch
 * tries its commands in the order they were added: the first whose `name`
 * equals argv[0] (any case) and whose `match` (when set) returns true
 * runs. A command none takes and that has three or four arguments is an
 * answer to a job (`<action> <job_id> <json> [FLAG]`, the node's own
 * path); anything else is an unknown command.
 */
typedef struct tp_node_command {
    const char *name;
    /** NULL, or tells this command from an answer to a job whose action
     *  has the same name (`RPC <job_id> <json> MORE`). */
    bool (*match)(int argc, const char **argv, const size_t *argvlen);
    /** Replies as a tp_command_fn does (listener.h); not called once the
     *  node is being freed (the node replies `-ERR node is shutting down`). */
    void (*run)(struct tempest_node *node, int argc, const char **argv, const size_t *argvlen,
                struct evbuffer *out);
} tp_node_command;

/** An attached service and its state (tp_node_state). */
typedef struct tp_node_attached {
    const tp_node_service *svc;
    void *state;
} tp_node_attached;

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
    /* the services attached, in order, and the commands they added */
    tp_node_attached services[TP_NODE_SERVICES];
    int nservices;
    const tp_node_command *commands[TP_NODE_COMMANDS];
    int ncommands;
    /* the options of the node's presence record */
    char *ns;
    int heartbeat_ms, presence_ttl_ms;
    uint64_t started_ms; /* CLOCK_MONOTONIC, for the record's uptime */
    uint64_t jobs_sent;  /* tempest_work calls that queued a job */
    /* answers from foreign peers that could not be used (acknowledged +OK) */
    uint64_t answers_dropped;
    uint64_t drops_unlogged; /* since the last log line about them */
    uint64_t drop_logged_ms; /* monotonic; 0: never */
    int depth;
    bool freeing;
    char errstr[256];
};

/** Makes a node with no service attached (tempest_node_new, in
 *  lib/services.c, attaches them): as tempest_node_new otherwise. */
tempest_node *tp_node_new(struct event_base *base, const tempest_node_options *options,
                          tempest_error *err);

/**
 * Attaches `svc` (borrowed for the node's life). Teardown runs the `stop`
 * hooks of every service, the last attached first, then closes the
 * listener and the command connection, then runs the `free` hooks, the
 * last attached first. Returns 0, or TEMPEST_ELIMIT past TP_NODE_SERVICES.
 */
int tp_node_attach(tempest_node *node, const tp_node_service *svc);

/** The state that `svc` keeps on the node: NULL until set, or when `svc`
 *  is not attached. */
void *tp_node_state(const tempest_node *node, const tp_node_service *svc);

/** Sets the state of `svc` (its hooks free it); TEMPEST_ESTATE when `svc`
 *  is not attached. */
int tp_node_set_state(tempest_node *node, const tp_node_service *svc, void *state);

/** Adds a listener command (borrowed for the node's life; see
 *  tp_node_command). Returns 0, or TEMPEST_ELIMIT past TP_NODE_COMMANDS. */
int tp_node_add_command(tempest_node *node, const tp_node_command *cmd);

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
