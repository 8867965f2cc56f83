/* SPDX-License-Identifier: MIT */
/**
 * @file
 * The node: one process's membership in a Tempest cluster. A node owns the
 * Redis command connection (with reconnection), its numeric id, and the
 * node listener, a small RESP server on which other nodes answer the jobs
 * this node is waiting for. Workers, producers and fronts are all built on
 * a node. A node and everything built on it belong to one event_base and
 * are not thread-safe.
 */
#ifndef TEMPEST_NODE_H
#define TEMPEST_NODE_H

#include <jansson.h>
#include <tempest/tempest.h>

struct event_base;

#ifdef __cplusplus
extern "C" {
#endif

/** A node (opaque): one process's membership in the cluster. */
typedef struct tempest_node tempest_node;

/** State of the node's Redis connection, as told to tempest_state_fn. */
enum tempest_node_state {
    TEMPEST_NODE_CONNECTING = 0, /**< first connection attempt in progress */
    TEMPEST_NODE_UP = 1,         /**< connected, authenticated, db selected */
    TEMPEST_NODE_DOWN = 2,       /**< lost; reconnecting with backoff */
};

/**
 * Called on the node's loop each time the Redis connection changes state.
 * `reason` (borrowed, valid during the call) explains a DOWN state and is
 * NULL otherwise. The callback may free the node.
 */
typedef void tempest_state_fn(tempest_node *node, int state, const char *reason, void *arg);

/**
 * Node options. Zero (or NULL for the whole struct) means the default given
 * for each field. Strings are copied by tempest_node_new().
 */
typedef struct tempest_node_options {
    /** Redis URL: `redis://[[user]:password@]host[:port][/db]`,
     *  `unix:///path[?db=N]`, or, through Redis Sentinel,
     *  `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]`
     *  with an optional `?sentinel_password=P` (sentinel port default
     *  26379; user and password are the master's). With sentinels, every
     *  connect and reconnect asks them in turn for the master's address and
     *  checks its ROLE; a -READONLY reply (a demoted master) drops the
     *  connection. A Redis Cluster:
     *  `redis+cluster://[[user]:password@]host[:port][,host[:port]...]`
     *  (seed nodes, tried in turn; port default 6379; database 0 only):
     *  every connection learns the slot map, keeps one connection per
     *  master, sends each command to its key's master and follows MOVED,
     *  ASK and TRYAGAIN; it is UP while every master is connected.
     *  NULL: $TEMPEST_REDIS_URL, else `redis://127.0.0.1:6379`. */
    const char *redis_url;
    /** `host:port` to bind the node listener to; port 0 picks a free port.
     *  NULL: `127.0.0.1:0`. The listener is opened when first needed (a
     *  producer that waits for answers, a front) or by tempest_node_listen(). */
    const char *listen;
    /** `host:port` that other nodes use to reach the listener (NAT, a
     *  container). NULL: the bound address. */
    const char *advertise;
    int connect_timeout_ms; /**< Redis connect timeout; 0: 2000 */
    int reconnect_min_ms;   /**< first reconnect delay; 0: 100 */
    int reconnect_max_ms;   /**< cap of the exponential backoff; 0: 5000 */
    /** Listener: largest request accepted on one connection; 0: 64 MiB. */
    size_t max_request;
    /** Listener: bytes of replies buffered per connection before it stops
     *  reading from that client; 0: 1 MiB. */
    size_t max_buffered;
    /** Listener: most simultaneous connections; 0: 1024. */
    int max_connections;
    tempest_log_fn *log;        /**< NULL: no logging at all */
    void *log_arg;              /**< passed to `log` */
    int log_level;              /**< lowest level passed to `log`; 0: DEBUG */
    tempest_state_fn *on_state; /**< NULL: not told */
    void *state_arg;            /**< passed to `on_state` */
    /** Shared secret of the node listener, and of the listeners this node's
     *  workers answer. When set, a client of the listener must send
     *  `AUTH <secret>` (or `AUTH <user> <secret>`; the user is ignored)
     *  before any other command but QUIT and HELLO: it gets `-NOAUTH`
     *  otherwise, and the third wrong secret closes its connection. The
     *  workers send `AUTH <secret>` first on every connection to a
     *  listener. NULL: $TEMPEST_SECRET when set and non-empty, else none;
     *  "": none, whatever the environment says. Copied; the copies are
     *  zeroed when freed. Without a secret, a listener bound elsewhere than
     *  loopback logs a warning when it opens. */
    const char *secret;
    /** Listener: most elements in one request array (command and
     *  arguments); 0: 1024. */
    int max_args;
    /** The namespace of the node's presence record (the monitor's view,
     *  `tempest:<namespace>:nodes`), and the default namespace of its
     *  responders and requesters: 1 to 200 bytes, no blank or control
     *  character, not "*". NULL: "default". Job queues are not namespaced
     *  (their names are the wire format). (`namespace_` in C++.) */
#ifndef __cplusplus
    const char *namespace;
#else
    const char *namespace_;
#endif
    /** Period of the node's presence record refresh (with its counters);
     *  0: 1000 ms. */
    int heartbeat_ms;
    /** Time-to-live of the presence record: a node that stops refreshing
     *  it (a crash) drops out of the monitor's view after this long;
     *  0: 5000 ms (at least twice heartbeat_ms). */
    int presence_ttl_ms;
} tempest_node_options;

/**
 * Creates a node and starts connecting to Redis (the connection completes
 * on the loop; tempest_node_new never blocks). Once connected, the node
 * takes its id with `INCR cluster.ids` (kept across reconnects). An
 * unreachable Redis is not an error here: the node retries with backoff.
 *
 * @param base the event_base to run on; NULL: the node creates its own,
 *        which tempest_worker_loop() runs and tempest_node_free() frees
 * @param options the options (borrowed during the call); NULL: defaults
 * @param err where to explain a failure (optional)
 * @return the node, or NULL with `err` filled: TEMPEST_EINVAL or
 *         TEMPEST_EADDR for a bad option or URL, TEMPEST_ENOMEM.
 */
TEMPEST_API tempest_node *tempest_node_new(struct event_base *base,
                                           const tempest_node_options *options, tempest_error *err);

/**
 * Frees the node. Every pending operation's callback (answers awaited,
 * commands in flight) runs once with TEMPEST_ECANCELED before this returns.
 * The workers of jobs still awaited are told they are cancelled (the
 * cancel channel, docs/protocol.md; at most 4096 jobs, written before the
 * Redis connection closes), so that they stop rather than retry answers
 * nobody can take.
 * Free the workers and fronts built on the node first. Safe from any
 * callback of the node.
 *
 * @param node the node; NULL does nothing
 */
TEMPEST_API void tempest_node_free(tempest_node *node);

/**
 * The event_base the node runs on.
 * @param node the node
 * @return the base (borrowed)
 */
TEMPEST_API struct event_base *tempest_node_base(const tempest_node *node);

/**
 * The state of the node's Redis connection.
 * @param node the node
 * @return one of enum tempest_node_state
 */
TEMPEST_API int tempest_node_state(const tempest_node *node);

/**
 * The node's cluster id, from `INCR cluster.ids`.
 * @param node the node
 * @return the id, or 0 before it is known
 */
TEMPEST_API long long tempest_node_id(const tempest_node *node);

/**
 * Opens the node listener now (it is otherwise opened when first needed).
 * Calling it again is harmless.
 * @param node the node
 * @return 0, or TEMPEST_EADDR when the address cannot be bound.
 */
TEMPEST_API int tempest_node_listen(tempest_node *node) TEMPEST_MUST_CHECK;

/**
 * The advertised `host:port` of the node listener (the `respond_to` of this
 * node's jobs).
 * @param node the node
 * @return the address, or NULL while the listener is not open. Borrowed;
 *         valid until the node is freed.
 */
TEMPEST_API const char *tempest_node_address(const tempest_node *node);

/**
 * The namespace of the node.
 * @param node the node
 * @return the namespace (borrowed; never NULL)
 */
TEMPEST_API const char *tempest_node_namespace(const tempest_node *node);

/**
 * Receives a cluster snapshot. `status` is 0 with `snapshot` (borrowed:
 * valid during the call; json_incref() it to keep it), or a negative code
 * with `snapshot` NULL: TEMPEST_EDOWN (the connection was lost before the
 * reply), TEMPEST_EREDIS, TEMPEST_EPROTO, TEMPEST_ECANCELED (node freed).
 * Runs on the node's loop; it may free the node.
 */
typedef void tempest_status_fn(tempest_node *node, int status, json_t *snapshot, void *arg);

/**
 * Reads what the cluster's nodes publish about themselves in a namespace,
 * in one script call (in Redis Cluster mode, where
 * those keys live on different masters: one read for the live ids, one for
 * their records, then one per queue and per service, all in flight
 * together; each queue's counts are read atomically, the whole is not),
 * and calls `fn` once with:
 *
 *     {"namespace": "...", "time_ms": <Redis clock>,
 *      "nodes": [{"id", "address" (or null), "host", "pid", "uptime_ms",
 *                 "namespace", "version", "roles": ["front", "worker",
 *                 "responder", "requester", "producer"], "queues":
 *                 [{"name", "dead"}], "services": [{"service", "namespace"}],
 *                 "stats": {"<role>": {"<counter>": n, ...}}}, ...],
 *      "queues": [{"name", "ready", "processing", "dead", "workers"}],
 *                 (in cluster mode, a queue whose keys cannot be read has
 *                 "error": "<Redis error>" instead of the counts)
 *      "services": [{"service", "namespace", "responders": ["host:port"]}]}
 *
 * Records are at most heartbeat_ms old. Counters (docs/monitor.md):
 * front requests/in_flight/errors/streams, worker jobs/in_flight/failed,
 * responder requests/in_flight/errors, requester requests/errors.
 *
 * @param node the node whose Redis connection reads
 * @param ns the namespace; NULL: the node's
 * @param fn receives the snapshot
 * @param arg passed to `fn`
 * @return 0 (then `fn` runs exactly once), or TEMPEST_EINVAL, TEMPEST_EDOWN
 *         (not connected now), TEMPEST_ENOMEM (`fn` never runs).
 */
TEMPEST_API int tempest_cluster_status(tempest_node *node, const char *ns, tempest_status_fn *fn,
                                       void *arg) TEMPEST_MUST_CHECK;

/**
 * The text of the node's last error.
 * @param node the node
 * @return the text (never NULL; "" when none). Borrowed; valid until the
 *         next call on the node.
 */
TEMPEST_API const char *tempest_node_errstr(const tempest_node *node);

/**
 * Answers the node's listener received from foreign workers (any Redis
 * client that has not said `TEMPEST PEER`: the Node.js, Ruby and Python
 * Tempest workers) and could not use: late, unknown, cancelled, duplicate
 * or undecodable. Each was still acknowledged `+OK`, as the original front
 * did, since those workers' clients throw on an error reply; they are
 * logged at most once per 10 s.
 *
 * @param node the node
 * @return their number since the node was created; 0 for NULL.
 */
TEMPEST_API unsigned long long tempest_node_answers_dropped(const tempest_node *node);

#ifdef __cplusplus
}
#endif

#endif
