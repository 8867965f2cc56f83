/* SPDX-License-Identifier: MIT */
/*
 * The HTTP front: an evhttp server that turns every request into a queued
 * `url` job, keeps the connection open until a worker answers (or streams
 * the answer as a chunked response), and maps failures to HTTP statuses.
 * Same threading rule as the node: one event_base, not thread-safe.
 */
#ifndef TEMPEST_FRONT_H
#define TEMPEST_FRONT_H

#include <tempest/tempest.h>

#ifdef __cplusplus
extern "C" {
#endif

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
} tempest_front_options;

/**
 * Creates a front on `node` (borrowed; must outlive the front), binds the
 * HTTP address at once and opens the node listener. Requests are answered:
 * with the worker's `[status, headers, body]`; 504 after timeout_ms; 503
 * while Redis is down or max_pending is reached; 413 over max_body; 502 for
 * a malformed answer.
 * Returns NULL with `err` (optional) filled: TEMPEST_EADDR when an address
 * cannot be bound, TEMPEST_EINVAL, TEMPEST_ENOMEM.
 */
TEMPEST_API tempest_front *
tempest_front_new(tempest_node *node, const tempest_front_options *options, tempest_error *err);

/** The bound HTTP port (useful with port 0). */
TEMPEST_API int tempest_front_port(const tempest_front *front);

/** Requests waiting for an answer now. */
TEMPEST_API size_t tempest_front_pending(const tempest_front *front);

/** Frees the front: closes the HTTP server and its connections, and cancels
 *  the jobs of requests still waiting. NULL does nothing. */
TEMPEST_API void tempest_front_free(tempest_front *front);

#ifdef __cplusplus
}
#endif

#endif
