/* SPDX-License-Identifier: MIT */
/**
 * @file
 * Requester and responder: one-to-one calls between nodes. A responder
 * serves a named service on its node's listener and advertises the
 * listener's address in Redis (a registry with a time-to-live, refreshed by
 * a heartbeat; joins and leaves announced on a pub/sub channel). A
 * requester discovers the live responders of a service, keeps one
 * persistent pipelined connection to each and spreads its requests over
 * them round-robin; the request and its reply travel directly between the
 * two nodes, never through Redis. A request on the wire is one RESP command,
 * `RPC <service> <type> <json>`, so any Redis client can call a responder
 * (see docs/protocol.md). Same threading rule as the node: one event_base,
 * not thread-safe. Free requesters and responders before their node.
 */
#ifndef TEMPEST_RPC_H
#define TEMPEST_RPC_H

#include <jansson.h>
#include <tempest/tempest.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The node (see node.h), declared again so that this header stands alone. */
typedef struct tempest_node tempest_node;
/** A responder (opaque): serves one service on its node's listener. */
typedef struct tempest_responder tempest_responder;
/** A requester (opaque): calls the live responders of one service. */
typedef struct tempest_requester tempest_requester;
/** One request to a responder (opaque), valid until it is answered. */
typedef struct tempest_request tempest_request;

/* ---- responder -------------------------------------------------------- */

/**
 * Responder options. Zero means the default given for each field; strings
 * are copied by tempest_responder_new().
 */
typedef struct tempest_responder_options {
    /** The service name (required): 1 to 200 bytes, no blank or control
     *  character, not "*". One node serves a service name once. */
    const char *service;
    /** The namespace: the registry lives under the Redis key prefix
     *  `tempest:<namespace>:`. Same rules as `service`. NULL: "default".
     *  (The field is `namespace_` in C++, where `namespace` is a keyword.) */
#ifndef __cplusplus
    const char *namespace;
#else
    const char *namespace_;
#endif
    /** Time-to-live of the registry entry: a responder that stops
     *  refreshing it (a crash) drops out after this long; 0: 5000 ms. */
    int ttl_ms;
    /** Period of the registry refresh; 0: 1000 ms (at most ttl_ms / 2). */
    int heartbeat_ms;
} tempest_responder_options;

/**
 * Handles one request. `req` is valid until it is answered (or the
 * responder freed): answer it exactly once, in this call or later, with
 * tempest_request_reply() or tempest_request_error(). Runs on the loop,
 * never inside the listener; it may free the responder (then `req` and
 * every other pending request are answered with an error and freed).
 */
typedef void tempest_request_fn(tempest_responder *r, tempest_request *req, void *arg);

/**
 * Creates a responder of `options->service`, opening the node listener if
 * needed. It advertises itself from the next turn of the loop (register the
 * handlers first) and for as long as it lives.
 * @param node the node (borrowed; it must outlive the responder)
 * @param options the options (`service` is required)
 * @param err where to explain a failure (optional)
 * @return the responder, or NULL with `err` filled: TEMPEST_EINVAL for a
 *         bad option, TEMPEST_ESTATE when the node already serves that
 *         service, TEMPEST_EADDR when the listener cannot be opened,
 *         TEMPEST_ENOMEM.
 */
TEMPEST_API tempest_responder *tempest_responder_new(tempest_node *node,
                                                     const tempest_responder_options *options,
                                                     tempest_error *err);

/**
 * Sets the handler of a request type. A later call for the same type
 * replaces the handler.
 * @param r the responder
 * @param type the type (copied); "*" matches any type without a handler of
 *        its own
 * @param fn the handler
 * @param arg passed to `fn`
 * @return 0, TEMPEST_EINVAL or TEMPEST_ENOMEM.
 */
TEMPEST_API int tempest_responder_on(tempest_responder *r, const char *type, tempest_request_fn *fn,
                                     void *arg);

/**
 * Withdraws the responder from the registry (and announces it), answers
 * every pending request with the error `SHUTDOWN` (a requester retries an
 * idempotent one elsewhere) and frees it. Safe from its own handler.
 * @param r the responder; NULL does nothing
 */
TEMPEST_API void tempest_responder_free(tempest_responder *r);

/**
 * Requests handed to the responder's handlers so far.
 * @param r the responder
 * @return their number
 */
TEMPEST_API unsigned long long tempest_responder_served(const tempest_responder *r);

/**
 * The request's type.
 * @param req the request
 * @return the type (borrowed; valid until the request is answered)
 */
TEMPEST_API const char *tempest_request_type(const tempest_request *req);

/**
 * The request's JSON body.
 * @param req the request
 * @return any JSON value (borrowed; valid until the request is answered:
 *         json_incref() it to keep it longer)
 */
TEMPEST_API json_t *tempest_request_body(const tempest_request *req);

/**
 * Answers a request and frees it.
 * @param req the request; it must not be used again, whatever the result
 * @param reply the reply (borrowed; any JSON value; NULL is null)
 * @return 0, or TEMPEST_EINVAL when `reply` cannot be encoded (the caller
 *         then gets the error `ENCODE`; the request is answered all the
 *         same) or `req` is NULL.
 */
TEMPEST_API int tempest_request_reply(tempest_request *req, json_t *reply);

/**
 * Answers a request with an error and frees it. The caller's callback gets
 * TEMPEST_EREMOTE with the JSON string `"<code> <message>"`.
 * @param req the request
 * @param code one word, e.g. "NOTFOUND" (borrowed; blanks and control
 *        characters become '_'; NULL or "" gives "ERROR")
 * @param message free text on one line (borrowed; may be NULL)
 * @return 0, or TEMPEST_EINVAL for a NULL `req`.
 */
TEMPEST_API int tempest_request_error(tempest_request *req, const char *code, const char *message);

/* ---- requester -------------------------------------------------------- */

/** What tempest_peer_fn is told about a responder of the service. */
enum tempest_peer_event {
    TEMPEST_PEER_JOINED = 0,  /**< announced, or found in the registry */
    TEMPEST_PEER_LEFT = 1,    /**< withdrew (its leave message, or its registry tombstone) */
    TEMPEST_PEER_EXPIRED = 2, /**< its registry entry timed out (it died) */
};

/** Told when a responder joins, leaves or times out. `address`
 *  ("host:port") is borrowed, valid during the call. May free the
 *  requester. */
typedef void tempest_peer_fn(tempest_requester *rq, int event, const char *address, void *arg);

/**
 * Told once per request: `status` is 0 and `reply` the responder's JSON;
 * TEMPEST_EREMOTE when the responder (or its node) answered an error:
 * `reply` is then the JSON string `"<code> <message>"`, as queue answers
 * carry errors, whose first word is the code given to
 * tempest_request_error() or one of the library's (`NOTYPE`: no handler
 * for the type; `BADJSON`: the body is not JSON; `NOSERVICE`; `NOAUTH`...);
 * TEMPEST_ETIMEDOUT when the timeout passed first (a late reply is
 * dropped); TEMPEST_EDOWN when the connection to the responder broke with
 * the request in flight (an idempotent request is first retried once, on
 * another responder when there is one) or the responder shut down;
 * TEMPEST_EPROTO for a reply that is not JSON; TEMPEST_ECANCELED when the
 * requester (for tempest_call, the node) is freed first. `reply` is
 * borrowed, valid during the call, NULL when there is none. `rq` is NULL
 * for tempest_call(). The callback may free the requester.
 */
typedef void tempest_reply_fn(tempest_requester *rq, long long id, int status, json_t *reply,
                              void *arg);

/** Requester options. Zero means the default given; strings are copied. */
typedef struct tempest_requester_options {
    const char *service; /**< the service to call (required; same rules as the responder's) */
#ifndef __cplusplus
    const char *namespace; /**< NULL: "default" (see the responder's) */
#else
    const char *namespace_;
#endif
    int timeout_ms; /**< default request timeout; 0: 5000 */
    int max_queued; /**< requests waiting while no responder is live; 0: 1000 */
    /** Period of the registry re-read that catches expired (crashed)
     *  responders and missed announcements; 0: 1000 ms. */
    int refresh_ms;
    tempest_peer_fn *on_peer; /**< NULL: not told */
    void *peer_arg;           /**< passed to on_peer */
} tempest_requester_options;

/** Options of one request; NULL or zero fields: the defaults. */
typedef struct tempest_send_options {
    int timeout_ms;  /**< 0: the requester's (tempest_call: 5000) */
    bool idempotent; /**< safe to run twice: retried once when a connection breaks */
} tempest_send_options;

/**
 * Creates a requester of `options->service`. It starts discovering
 * responders at once.
 * @param node the node (borrowed; it must outlive the requester)
 * @param options the options (`service` is required)
 * @param err where to explain a failure (optional)
 * @return the requester, or NULL with `err` filled on a bad option
 *         (TEMPEST_EINVAL) or no memory.
 */
TEMPEST_API tempest_requester *tempest_requester_new(tempest_node *node,
                                                     const tempest_requester_options *options,
                                                     tempest_error *err);

/**
 * Sends a request to the next live responder, round-robin. While none is
 * live, the request waits in the queue until one appears or its timeout
 * passes.
 * @param rq the requester
 * @param type the request type (borrowed, copied)
 * @param json the body (borrowed, encoded at once; NULL is null)
 * @param options may be NULL: the requester's defaults
 * @param fn gets the reply; may be NULL
 * @param arg passed to `fn`
 * @return the request id (> 0): then `fn` runs exactly once, later, never
 *         inside this call. Or a negative code, and `fn` never runs:
 *         TEMPEST_EINVAL (bad argument, body not encodable), TEMPEST_ELIMIT
 *         (the queue is full), TEMPEST_ENOMEM.
 */
TEMPEST_API long long tempest_requester_send(tempest_requester *rq, const char *type, json_t *json,
                                             const tempest_send_options *options,
                                             tempest_reply_fn *fn, void *arg) TEMPEST_MUST_CHECK;

/**
 * Frees the requester: every request not yet answered gets
 * TEMPEST_ECANCELED before this returns. Safe from its callbacks.
 * @param rq the requester; NULL does nothing
 */
TEMPEST_API void tempest_requester_free(tempest_requester *rq);

/**
 * Responders the requester is connected to and sends to now.
 * @param rq the requester
 * @return their number
 */
TEMPEST_API int tempest_requester_live(const tempest_requester *rq);

/**
 * Requests sent or queued and not yet answered.
 * @param rq the requester
 * @return their number
 */
TEMPEST_API int tempest_requester_pending(const tempest_requester *rq);

/**
 * A direct call: sends `RPC * <type> <json>` to one node listener, without
 * discovery. The
 * node there hands it to its responder that has a handler for `type` (the
 * first one created, when several do). One persistent connection per
 * address is kept until the node is freed. If the connection cannot be
 * made or breaks, the call fails with TEMPEST_EDOWN (an idempotent one is
 * retried once on a new connection).
 * @param node the calling node
 * @param address the listener's "host:port" (IP literals are best)
 * @param type the request type (borrowed, copied)
 * @param json the body (borrowed, encoded at once; NULL is null)
 * @param options may be NULL: a 5000 ms timeout, not idempotent
 * @param fn gets the reply, with a NULL requester; may be NULL
 * @param arg passed to `fn`
 * @return the call id (> 0) or a negative code, as tempest_requester_send().
 */
TEMPEST_API long long tempest_call(tempest_node *node, const char *address, const char *type,
                                   json_t *json, const tempest_send_options *options,
                                   tempest_reply_fn *fn, void *arg) TEMPEST_MUST_CHECK;

#ifdef __cplusplus
}
#endif

#endif
