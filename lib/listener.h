/* SPDX-License-Identifier: MIT */
/*
 * Node listener: a small RESP server. Requests are RESP arrays parsed with
 * hiredis's redisReader (no hand-written RESP parser). The listener answers
 * the commands an ordinary Redis client sends on its own (PING, ECHO, INFO,
 * SELECT, CLIENT ..., QUIT, COMMAND, HELLO, AUTH), TEMPEST PEER (a
 * libtempest worker saying who it is) and hands every other
 * command to its owner's tp_command_fn. With a shared secret, nothing but
 * AUTH, QUIT and HELLO runs before a successful AUTH.
 *
 * The protocol core (tp_session, lib/listener_session.c) is separate from
 * the sockets (lib/listener.c) so that tests can feed it bytes in any split
 * and read its replies; the built-in commands are in lib/listener_builtins.c
 * and the tp_resp_* helpers in lib/listener_resp.c.
 */
#ifndef TEMPEST_LISTENER_H
#define TEMPEST_LISTENER_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;
struct event_base;

/**
 * Handles one command the listener does not answer itself. argv[0] is the
 * command name as sent (any case); the strings are borrowed, valid during
 * the call, NUL-terminated and may hold NULs (use argvlen). It must append
 * exactly one RESP reply to `out` (tp_resp_* helpers below), or take a
 * reply slot with tp_listener_defer(out) and append nothing.
 */
typedef void tp_command_fn(void *arg, int argc, const char **argv, const size_t *argvlen,
                           struct evbuffer *out);

/** Limits of the listener; zero fields take the defaults shown. */
typedef struct tp_listener_limits {
    size_t max_request;  /**< bytes of one request (and of unparsed input); 0: 64 MiB */
    size_t max_buffered; /**< reply bytes pending per connection before reads pause; 0: 1 MiB */
    int max_args;        /**< elements of one request array; 0: 1024 */
    int max_connections; /**< simultaneous connections, more are closed at once; 0: 1024 */
    /** Shared secret a client must send with `AUTH` before anything but QUIT
     *  and HELLO (borrowed for the call that takes the struct, then copied);
     *  NULL or "": none. Until AUTH succeeds, a request is limited to
     *  10 arguments and 16 KiB (as Redis limits unauthenticated clients),
     *  and the third wrong AUTH closes the connection. */
    const char *secret;
} tp_listener_limits;

typedef struct tp_session tp_session;

/** Creates a protocol session. `limits` and its secret are copied (NULL:
 *  defaults). */
tp_session *tp_session_new(const tp_listener_limits *limits, tp_command_fn *fn, void *arg);

/**
 * Feeds `len` bytes of client input; appends every reply to `out`.
 * Returns 0 to go on, 1 when the client asked to QUIT (close after the
 * replies are flushed), or -1 when the input cannot be resynchronised
 * (protocol error, a request over the limits) or after the last allowed
 * wrong AUTH: an error reply explaining why is already in `out`; flush it,
 * then close. Inline commands (plain text lines such as `PING\r\n`, as
 * telnet sends) are accepted too.
 */
int tp_session_feed(tp_session *s, const char *buf, size_t len, struct evbuffer *out);

/** Frees a session (its copy of the secret is zeroed first); NULL does
 *  nothing. Its reply slots still pending become orphans (see below). */
void tp_session_free(tp_session *s);

/*
 * Deferred replies. A tp_command_fn that cannot answer at once calls
 * tp_listener_defer(out) with the `out` it was given and appends nothing;
 * it (or whoever it hands the slot to) later completes the slot exactly
 * once with tp_slot_reply_bulk() or tp_slot_reply_error(), from anywhere on
 * the loop's thread. Replies still leave in request order: a completed slot
 * behind a pending one is held (with every synchronous reply after it)
 * until the earlier ones complete, then written to the `out` of the
 * session's latest feed (a connection's output for the listener). Once the
 * session or its connection is gone, a slot is an orphan: completing it
 * only frees it. A connection with pending slots stops reading at 1024 of
 * them, and a connection that quits or hits a protocol error stays open
 * until its pending slots complete and their replies are written.
 */
typedef struct tp_reply_slot tp_reply_slot;

/** From inside a tp_command_fn, with its `out` only: takes the slot of the
 *  running command's reply. NULL (reply synchronously then) when called
 *  elsewhere, twice for one command, or when out of memory. */
tp_reply_slot *tp_listener_defer(struct evbuffer *out);

/**
 * From inside a tp_command_fn, with its `out`: true when the client has
 * said it is a libtempest peer (`TEMPEST PEER <version>`), false for a
 * foreign client (any other Redis client), whose answers must never get
 * an error reply. True when called elsewhere.
 */
bool tp_listener_peer(const struct evbuffer *out);

/** The version a libtempest worker sends in `TEMPEST PEER <version>`. */
#define TP_PEER_PROTOCOL 1

/** Completes `slot` with a bulk string reply, or with `-message` (CR/LF
 *  replaced); `slot` is freed by the call. NULL does nothing. */
void tp_slot_reply_bulk(tp_reply_slot *slot, const char *buf, size_t len);
void tp_slot_reply_error(tp_reply_slot *slot, const char *message);
/** Completes `slot` with `+status`; `slot` is freed by the call. */
void tp_slot_reply_status(tp_reply_slot *slot, const char *status);

/** False once the client of `slot` is gone (its reply would be dropped). */
bool tp_slot_alive(const tp_reply_slot *slot);

/** Slots of `s` taken and not yet completed. */
size_t tp_session_deferred(const tp_session *s);

typedef struct tp_listener tp_listener;

/**
 * Binds `host:port` (port 0: any free port) on `base` and starts
 * accepting. `limits` and its secret are copied. Returns NULL with `err`
 * set when the address cannot be bound.
 */
tp_listener *tp_listener_new(struct event_base *base, const char *host, int port,
                             const tp_listener_limits *limits, tp_command_fn *fn, void *arg,
                             char *err, size_t errlen);

/** The bound port. */
int tp_listener_port(const tp_listener *l);

/** Number of open client connections. */
int tp_listener_connections(const tp_listener *l);

/** Closes every connection and the socket; NULL does nothing. Never calls
 *  the command callback. */
void tp_listener_free(tp_listener *l);

/** True when `host` is a loopback address: 127.0.0.0/8, ::1 (also as
 *  `[::1]` or IPv4-mapped) or `localhost`. Other names are not resolved. */
bool tp_host_is_loopback(const char *host);

/* RESP reply helpers (append one reply to `out`). */
void tp_resp_status(struct evbuffer *out, const char *status); /**< +status */
void tp_resp_error(struct evbuffer *out, const char *message); /**< -message (CR/LF replaced) */
void tp_resp_integer(struct evbuffer *out, long long value);   /**< :value */
void tp_resp_bulk(struct evbuffer *out, const char *buf, size_t len); /**< $len bulk */
void tp_resp_nil(struct evbuffer *out);                               /**< $-1 */

#endif
