/* SPDX-License-Identifier: MIT */
/**
 * @file
 * libtempest: a cluster of processes orchestrated by a real Redis.
 *
 * This header holds what every part of the API shares (the export macro,
 * error codes, tempest_strerror, the error struct and the log callback) and
 * includes the header of each subsystem. Every handle belongs to one
 * libevent event_base and is not thread-safe: call a handle's functions from
 * the thread that runs its base, or serialise the calls yourself.
 */
#ifndef TEMPEST_H
#define TEMPEST_H

#include <stdbool.h>
#include <stddef.h>

#include <tempest/version.h>

/** Marks a public function: the only symbols the shared library exports. */
#if defined(TEMPEST_BUILDING) && defined(__GNUC__)
#define TEMPEST_API __attribute__((visibility("default")))
#else
#define TEMPEST_API
#endif

/** Marks a function whose result must be used (GCC and Clang warn). */
#if defined(__GNUC__)
#define TEMPEST_MUST_CHECK __attribute__((warn_unused_result))
#else
#define TEMPEST_MUST_CHECK
#endif

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Error codes. Every fallible function returns 0 (or a non-negative value it
 * documents) on success and one of these negative codes on failure.
 */
enum tempest_errcode {
    TEMPEST_OK = 0,          /**< success */
    TEMPEST_EINVAL = -1,     /**< an argument or option is invalid */
    TEMPEST_ENOMEM = -2,     /**< out of memory */
    TEMPEST_EDOWN = -3,      /**< Redis (or the peer) is not reachable now */
    TEMPEST_ETIMEDOUT = -4,  /**< the operation's deadline passed */
    TEMPEST_ECANCELED = -5,  /**< the operation was cancelled or its handle freed */
    TEMPEST_EPROTO = -6,     /**< malformed data on the wire (JSON, RESP, shape) */
    TEMPEST_EREDIS = -7,     /**< Redis answered with an error */
    TEMPEST_ENOHANDLER = -8, /**< no handler for that action */
    TEMPEST_EIO = -9,        /**< a socket or system call failed */
    TEMPEST_ESTATE = -10,    /**< not possible in the handle's current state */
    TEMPEST_ELIMIT = -11,    /**< a configured limit was exceeded */
    TEMPEST_EADDR = -12,     /**< an address or URL could not be parsed or bound */
    TEMPEST_EREMOTE = -13,   /**< the remote side reported an error */
    TEMPEST_EAGAIN = -14,    /**< not now: wait for the documented callback, then retry */
};

/**
 * A static, human-readable name for an error code.
 *
 * @param code one of enum tempest_errcode (any int is accepted)
 * @return the name (never NULL; an unknown code gives "unknown error"). The
 *         string is a literal: do not free.
 */
TEMPEST_API const char *tempest_strerror(int code);

/**
 * An optional place where a constructor explains why it failed. Pass NULL
 * when you do not want it. On failure, `code` holds the TEMPEST_E* code and
 * `message` a NUL-terminated sentence; on success the struct is untouched.
 */
typedef struct tempest_error {
    int code;          /**< the TEMPEST_E* code of the failure */
    char message[256]; /**< why, as a NUL-terminated sentence */
} tempest_error;

/** Log levels for tempest_log_fn, in increasing severity. */
enum tempest_log_level {
    TEMPEST_LOG_DEBUG = 0, /**< details of the library's work */
    TEMPEST_LOG_INFO = 1,  /**< ordinary events: connections, reconnections */
    TEMPEST_LOG_WARN = 2,  /**< something unexpected that the library survives */
    TEMPEST_LOG_ERROR = 3, /**< a failure the application may need to act on */
};

/**
 * Receives the library's log lines. The library never prints anything
 * unless a log callback is set; it is called on the node's event loop
 * thread.
 *
 * @param level one of enum tempest_log_level
 * @param message the line (borrowed, valid only during the call)
 * @param arg the `log_arg` given with the callback
 */
typedef void tempest_log_fn(int level, const char *message, void *arg);

#ifdef __cplusplus
}
#endif

#include <tempest/node.h>
#include <tempest/queue.h>
#include <tempest/worker.h>
#include <tempest/front.h>
#include <tempest/pubsub.h>
#include <tempest/rpc.h>
#include <tempest/session.h>

#endif
