/* SPDX-License-Identifier: MIT */
/*
 * The node listener's private header: the state of a protocol session,
 * shared by the listener's files, which form a stack. lib/listener.c (the
 * sockets) feeds the sessions of lib/listener_session.c (the protocol
 * core), which runs the built-in commands of lib/listener_builtins.c; all
 * of them reply with the helpers of lib/listener_resp.c. listener.h stays
 * the interface of the whole to the rest of the library.
 */
#ifndef TEMPEST_LISTENER_SESSION_H
#define TEMPEST_LISTENER_SESSION_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

#include "internal.h"
#include "listener.h"

struct evbuffer;

enum session_mode {
    MODE_IDLE,   /* between requests; nothing of the next one seen */
    MODE_INLINE, /* part of an inline command is in `line` */
    MODE_MULTI,  /* the reader holds part of a multibulk request */
};

/* The command being built: argv/lens/off have room for `cap` arguments. */
struct request {
    int argc; /* elements announced (multibulk) or found (inline) */
    int got;  /* multibulk elements received */
    int cap;
    size_t size;       /* argument bytes received, <= max_request */
    const char **argv; /* filled just before dispatch */
    size_t *lens;
    size_t *off; /* multibulk: offset of each argument in `arena` */
    char *arena; /* multibulk arguments, each NUL-terminated */
    size_t arena_len;
    size_t arena_cap;
};

struct tp_session {
    tp_listener_limits lim; /* as configured; lim.secret is NULL (see secret) */
    size_t max_request;     /* the limits in force: tighter until AUTH succeeds */
    int max_args;
    size_t inline_max;
    char *secret; /* NULL: no AUTH needed */
    size_t secret_len;
    bool authed;
    bool peer;  /* the client said `TEMPEST PEER`: a libtempest worker */
    bool resp3; /* the client said `HELLO 3` */
    int auth_failures;
    tp_command_fn *fn;
    void *arg;
    redisReader *reader;
    redisReplyObjectFunctions fns; /* the reader keeps a pointer to it */
    enum session_mode mode;
    int rc;        /* 0, or 1 / -1 once the client quit / the stream broke: sticky */
    long long id;  /* CLIENT ID */
    char err[200]; /* why an object function refused (the reader says "Out of memory") */
    struct request req;
    char *line; /* the inline command being read, without its '\n' */
    size_t line_len;
    size_t line_cap;
    char *name; /* CLIENT SETNAME */
    size_t name_len;
    /* deferred replies in request order; the head, if any, is pending */
    tp_reply_slot *head, *tail;
    size_t deferred;               /* slots taken and not yet completed */
    struct evbuffer *out;          /* where held replies go: the latest feed's */
    struct evbuffer *dispatch_out; /* the `out` of the command fn running, or NULL */
    tp_reply_slot *taken;          /* the slot that command deferred to */
};

/* ---- the protocol core (lib/listener_session.c) ------------------------ */

/** True while a session with a secret waits for AUTH. */
static inline bool tp_session_locked(const tp_session *s) {
    return s->secret != NULL && !s->authed;
}

/** Copies `src` (NULL: all defaults) to `dst`, with the defaults in its
 *  zero fields; the secret pointer is copied as it is. */
void tp_limits_fill(tp_listener_limits *dst, const tp_listener_limits *src);

/** Zeroes and frees a copy of a secret; NULL does nothing. */
void tp_secret_free(char *secret);

/* ---- the built-in commands (lib/listener_builtins.c) ------------------- */

/** A built-in command: appends one reply to `out` and returns 0 to go on,
 *  1 to close after the replies (QUIT), or -1 to close now. It changes
 *  only fields of `s`; once it sets `authed`, the session lifts its
 *  limits. */
typedef int tp_builtin_fn(tp_session *s, int argc, const char **argv, const size_t *lens,
                          struct evbuffer *out);

/** The built-in named `name` (any case), or NULL. */
tp_builtin_fn *tp_builtin_find(const char *name, size_t len);

/** True when the `len` bytes at `arg` are `word`, in any case. */
bool tp_word_is(const char *arg, size_t len, const char *word);

/* ---- replies (lib/listener_resp.c) ------------------------------------- */

/** Appends `-message`, formatted (at most 255 bytes). */
void tp_resp_errorf(struct evbuffer *out, const char *fmt, ...) TP_PRINTF(2, 3);

#endif
