/* SPDX-License-Identifier: MIT */
/**
 * @file
 * The HTTP front: an evhttp server that turns every request into a queued
 * `url` job, keeps the connection open until a worker answers (or streams
 * the answer as a chunked response), and maps failures to HTTP statuses;
 * `GET /sub/<channel>` streams a pub/sub channel as Server-Sent Events.
 * Same threading rule as the node: one event_base, not thread-safe.
 */
#ifndef TEMPEST_FRONT_H
#define TEMPEST_FRONT_H

#include <tempest/tempest.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An HTTP front (opaque): tempest_front_new() makes one on a node. */
typedef struct tempest_front tempest_front;

/** Front options. Zero (or NULL) means the default of each field. */
typedef struct tempest_front_options {
    const char *http; /**< `host:port` to serve HTTP on; NULL: "127.0.0.1:1337"; port 0 picks one */
    const char *queue;  /**< queue of the `url` jobs; NULL: "tempest" */
    int timeout_ms;     /**< wait for the final answer, then 504; 0: 30000 */
    size_t max_body;    /**< larger request bodies get 413; 0: 1 MiB */
    size_t max_headers; /**< larger request headers get an error; 0: 64 KiB */
    int max_pending;    /**< requests waiting at once, then 503; 0: 10000 */
    /** Idle read and write timeout of HTTP connections; 0: 60 s. */
    int io_timeout_ms;
    /** `Access-Control-Allow-Origin` sent with `/sub/` streams (copied);
     *  NULL: the header is not sent. */
    const char *cors_origin;
    /** A comment line `: keep-alive` is written on every `/sub/` stream
     *  this often, so that proxies keep idle streams and departed clients
     *  are noticed; 0: 15000. */
    int sse_keepalive_ms;
    /** Output cap of one `/sub/` stream: a client whose unsent output passes
     *  it is dropped (its connection closed) and counted, see
     *  tempest_front_sse_dropped(); 0: 1 MiB. */
    size_t sse_max_buffered;
    /** Concurrent `/sub/` streams, then 503; 0: 10000. */
    int max_streams;
    /** Serve every channel from its history stream `{<channel>}:history`
     *  (kept by publishers with tempest_publisher_options.history): events
     *  carry `id:`, and a client that reconnects with `Last-Event-ID` first
     *  gets what it missed (as far as the history reaches back), then the
     *  live stream, with no gap and no duplicate. false: live only. */
    bool history;
    /** A connection must deliver a whole request (line and headers) within
     *  this time from its start or from the end of its previous response,
     *  else it is closed and counted (tempest_front_slow_cut()): the defence
     *  against clients that send a byte at a time (slow loris), which the
     *  idle io_timeout_ms never catches; 0: 10000. */
    int header_timeout_ms;
    /** Sessions (docs/sessions.md): a signed cookie and a Redis hash for
     *  each browser. Every request without a valid
     *  session cookie gets a new random 128-bit id in a signed cookie
     *  (`Set-Cookie: <session_cookie>=<id>.<signature>`, with
     *  `Path=/; HttpOnly; SameSite=Lax`), and every `url` job carries the id (`"session"`)
     *  and the idle TTL (`"session_ttl"`, ms) in its request object. A
     *  missing, forged or tampered cookie is ignored and a new session
     *  issued. Each request with a valid cookie refreshes the TTL of the
     *  Redis hash `session:<id>` (PEXPIRE). false: no cookie, no id. */
    bool sessions;
    /** Key of the cookie signatures (HMAC-SHA256), at least 16 bytes,
     *  copied; NULL: `$TEMPEST_SESSION_SECRET`. With `sessions` and no
     *  secret, tempest_front_new() fails with TEMPEST_EINVAL: a random
     *  secret would silently log everyone out at each restart and differ
     *  between fronts. Every front of one site needs the same secret. */
    const char *session_secret;
    /** Name of the session cookie (an HTTP token, copied); NULL:
     *  "tempest_sid". */
    const char *session_cookie;
    /** Idle time-to-live of a session in Redis; 0: 86400000 (one day). */
    int session_ttl_ms;
    /** Adds `Secure` to the cookie (the site is served over HTTPS, e.g.
     *  behind a TLS proxy). */
    bool session_secure;
    /** Cached answers (docs/sessions.md): a worker marks a final
     *  answer cacheable for N ms with the answer header `X-Tempest-Cache:
     *  N`; the front then answers identical GET requests (same Host, URL,
     *  and the request headers the answer names in `Vary`) from Redis,
     *  without a job, for N ms, with an ETag and 304s for If-None-Match.
     *  Off by default: it costs every GET one Redis read before its job
     *  is queued. The marker header is never sent to clients, enabled or
     *  not. */
    bool cache;
    /** Largest body of a cached answer (larger ones are sent, not
     *  cached); 0: 256 KiB. */
    size_t cache_max_entry;
} tempest_front_options;

/**
 * Creates a front on `node`, binds the HTTP address at once and opens the
 * node listener. Requests are answered: with the worker's
 * `[status, headers, body]`; 504 after timeout_ms; 503 while Redis is down
 * or max_pending is reached; 413 over max_body; 502 for a malformed answer.
 * `GET /sub/<channel>` (the rest of the path, percent-decoded; the query is
 * ignored) is not a job: it answers 200 `text/event-stream` and streams the
 * channel's pub/sub messages as Server-Sent Events (docs/sse.md); 404 for
 * an empty channel, 503 past max_streams.
 *
 * @param node the node (borrowed; it must outlive the front)
 * @param options the options (borrowed during the call); NULL: defaults
 * @param err where to explain a failure (optional)
 * @return the front, or NULL with `err` filled: TEMPEST_EADDR when an
 *         address cannot be bound, TEMPEST_EINVAL, TEMPEST_ENOMEM.
 */
TEMPEST_API tempest_front *
tempest_front_new(tempest_node *node, const tempest_front_options *options, tempest_error *err);

/**
 * The bound HTTP port (useful with port 0).
 * @param front the front
 * @return the port
 */
TEMPEST_API int tempest_front_port(const tempest_front *front);

/**
 * Requests waiting for an answer now.
 * @param front the front
 * @return their number
 */
TEMPEST_API size_t tempest_front_pending(const tempest_front *front);

/**
 * Server-Sent Events streams (`GET /sub/<channel>`) open now.
 * @param front the front
 * @return their number
 */
TEMPEST_API size_t tempest_front_streams(const tempest_front *front);

/**
 * Streams dropped so far because their client was too slow (unsent output
 * past sse_max_buffered).
 * @param front the front
 * @return their number since the front was created
 */
TEMPEST_API unsigned long long tempest_front_sse_dropped(const tempest_front *front);

/**
 * Connections closed because they missed header_timeout_ms.
 * @param front the front
 * @return their number since the front was created
 */
TEMPEST_API unsigned long long tempest_front_slow_cut(const tempest_front *front);

/**
 * Frees the front: closes the HTTP server and its connections, and cancels
 * the jobs of requests still waiting.
 * @param front the front; NULL does nothing
 */
TEMPEST_API void tempest_front_free(tempest_front *front);

#ifdef __cplusplus
}
#endif

#endif
