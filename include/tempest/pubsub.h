/* SPDX-License-Identifier: MIT */
/**
 * @file
 * Publisher and subscriber: Redis pub/sub with the Tempest message format
 * (`[data]`, `[event, data]`, `["$unsubscribe"]`). One subscribe connection
 * per node carries every local subscription, reference-counted: any number
 * of local subscribers of a channel cost one SUBSCRIBE. After a reconnect
 * the node resubscribes everything and tells each subscriber that it may
 * have missed messages. Same threading rule as the node: one event_base,
 * not thread-safe.
 */
#ifndef TEMPEST_PUBSUB_H
#define TEMPEST_PUBSUB_H

#include <tempest/tempest.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A publisher (opaque): publishes on any channel through its node. */
typedef struct tempest_publisher tempest_publisher;
/** A subscriber (opaque): one callback for the channels and patterns it
 *  subscribes to. */
typedef struct tempest_subscriber tempest_subscriber;

/** Publisher options. Zero (or NULL) means the default. */
typedef struct tempest_publisher_options {
    /** Keep the last `history` messages of each channel in the Redis stream
     *  `{<channel>}:history` (XADD MAXLEN ~ N, in one round trip with the
     *  PUBLISH) so that SSE clients can resume; 0: no history. */
    int history;
} tempest_publisher_options;

/**
 * Told once per publication: `status` 0 with the number of Redis clients
 * that received it, or a negative code (TEMPEST_EDOWN, TEMPEST_EREDIS,
 * TEMPEST_ECANCELED when the publisher is freed first). `id` is the history
 * stream id ("1700000000000-0") when history is on, else NULL; borrowed,
 * valid during the call.
 */
typedef void tempest_published_fn(tempest_publisher *pub, int status, long long receivers,
                                  const char *id, void *arg);

/**
 * Creates a publisher on a node.
 * @param node the node (borrowed; it must outlive the publisher)
 * @param options the options (borrowed during the call); NULL: defaults
 * @param err where to explain a failure (optional)
 * @return the publisher, or NULL with `err` filled on a bad option or no
 *         memory.
 */
TEMPEST_API tempest_publisher *tempest_publisher_new(tempest_node *node,
                                                     const tempest_publisher_options *options,
                                                     tempest_error *err);

/**
 * Frees the publisher; publications in flight get TEMPEST_ECANCELED. Safe
 * from its own callback.
 * @param pub the publisher; NULL does nothing
 */
TEMPEST_API void tempest_publisher_free(tempest_publisher *pub);

/**
 * Publishes `[data]`, or `[event, data]` when `event` is not NULL. The
 * strings are borrowed, copied at once, and must be valid UTF-8.
 *
 * @param pub the publisher
 * @param channel the channel
 * @param event the event name, or NULL for a plain message
 * @param data the data
 * @param done told the outcome; may be NULL
 * @param arg passed to `done`
 * @return 0 (then `done` runs exactly once, later), TEMPEST_EINVAL,
 *         TEMPEST_EDOWN (Redis not connected) or TEMPEST_ENOMEM.
 */
TEMPEST_API int tempest_publish(tempest_publisher *pub, const char *channel, const char *event,
                                const char *data, tempest_published_fn *done, void *arg);

/**
 * Publishes the end of stream `["$unsubscribe"]`: listeners stop.
 * @param pub the publisher
 * @param channel the channel (borrowed)
 * @param done told the outcome; may be NULL
 * @param arg passed to `done`
 * @return as tempest_publish().
 */
TEMPEST_API int tempest_publish_end(tempest_publisher *pub, const char *channel,
                                    tempest_published_fn *done, void *arg);

/**
 * Publishes bytes that are already an encoded message, as they are.
 * @param pub the publisher
 * @param channel the channel (borrowed)
 * @param payload the message (borrowed, copied at once)
 * @param len its length in bytes
 * @param done told the outcome; may be NULL
 * @param arg passed to `done`
 * @return as tempest_publish().
 */
TEMPEST_API int tempest_publish_raw(tempest_publisher *pub, const char *channel,
                                    const char *payload, size_t len, tempest_published_fn *done,
                                    void *arg);

/** What a subscriber is told. */
enum tempest_sub_event {
    TEMPEST_SUB_MESSAGE = 0,     /**< a message: event (or NULL) and data */
    TEMPEST_SUB_END = 1,         /**< `["$unsubscribe"]`: the stream ended */
    TEMPEST_SUB_INTERRUPTED = 2, /**< the connection to Redis was lost and is
                                      back: messages may have been missed */
    TEMPEST_SUB_RAW = 3,         /**< a malformed message: `data` is its bytes */
};

/**
 * A subscriber's callback. `channel` is the channel the message came on
 * (for a pattern, the matching channel). For TEMPEST_SUB_MESSAGE, `event`
 * is the event name or NULL and `data` the data; for TEMPEST_SUB_RAW,
 * `data` holds the raw payload (`len` bytes, may hold NULs); for END and
 * INTERRUPTED, `event` and `data` are NULL and `channel` is NULL (all
 * subscriptions were interrupted). All strings are borrowed, valid during
 * the call. The callback may free its subscriber or others. (Messages
 * published with history carry no id here: the SSE front reads the ids
 * from the history stream.)
 */
typedef void tempest_message_fn(tempest_subscriber *sub, int what, const char *channel,
                                const char *event, const char *data, size_t len, void *arg);

/**
 * Creates a subscriber that calls `fn` for every message of the channels
 * and patterns it subscribes to.
 * @param node the node (borrowed; it must outlive the subscriber)
 * @param fn the callback
 * @param arg passed to `fn`
 * @param err where to explain a failure (optional)
 * @return the subscriber, or NULL with `err` filled on a bad argument or no
 *         memory.
 */
TEMPEST_API tempest_subscriber *tempest_subscriber_new(tempest_node *node, tempest_message_fn *fn,
                                                       void *arg, tempest_error *err);

/**
 * Subscribes to a channel or a pattern. Idempotent. The first local
 * subscriber of a channel sends SUBSCRIBE; later ones cost nothing. Works
 * while Redis is down: the subscription is made when the connection comes
 * up.
 * @param sub the subscriber
 * @param channel the channel (copied)
 * @param pattern `channel` is a glob pattern (PSUBSCRIBE)
 * @return 0, TEMPEST_EINVAL or TEMPEST_ENOMEM.
 */
TEMPEST_API int tempest_subscribe(tempest_subscriber *sub, const char *channel, bool pattern);

/**
 * Unsubscribes from a channel or a pattern; the last local subscriber of it
 * sends UNSUBSCRIBE.
 * @param sub the subscriber
 * @param channel the channel or pattern
 * @param pattern as given to tempest_subscribe()
 * @return 0, or TEMPEST_EINVAL when not subscribed.
 */
TEMPEST_API int tempest_unsubscribe(tempest_subscriber *sub, const char *channel, bool pattern);

/**
 * Frees the subscriber and its subscriptions. Safe from its own callback.
 * @param sub the subscriber; NULL does nothing
 */
TEMPEST_API void tempest_subscriber_free(tempest_subscriber *sub);

/**
 * Number of distinct channels and patterns the node is subscribed to in
 * Redis: SUBSCRIBE (or PSUBSCRIBE) sent and confirmed on the current
 * connection. For tests and monitors.
 * @param node the node
 * @return that number
 */
TEMPEST_API size_t tempest_node_subscriptions(const tempest_node *node);

#ifdef __cplusplus
}
#endif

#endif
