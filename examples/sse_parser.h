/* SPDX-License-Identifier: MIT */
/*
 * An incremental parser for `text/event-stream` (Server-Sent Events), as the
 * WHATWG HTML standard's "Parsing an event stream" and "Interpreting an event
 * stream" say: bytes are decoded as UTF-8 (invalid sequences become U+FFFD,
 * one leading BOM is dropped), lines end with CRLF, LF or CR even when a
 * chunk boundary splits the CRLF, and a blank line dispatches the event built
 * from the `event`, `data`, `id` and `retry` fields before it. Feed it the
 * response body in pieces of any size. Unlike a browser it bounds memory: a
 * line or an event's data longer than the limit is an error. A parser is not
 * thread-safe; use each from one thread at a time.
 */
#ifndef TEMPEST_EXAMPLES_SSE_PARSER_H
#define TEMPEST_EXAMPLES_SSE_PARSER_H

#include <stddef.h>

/** The limit used when sse_parser_new() is given 0: 1 MiB. */
#define SSE_PARSER_DEFAULT_MAX ((size_t)1 << 20)

typedef struct sse_parser sse_parser;

/**
 * One dispatched event. Every pointer is borrowed from the parser and valid
 * only during the callback.
 */
typedef struct sse_event {
    const char *type; /**< the `event` field, or "message"; NUL-terminated */
    size_t type_len;  /**< bytes in type (a NUL inside it is allowed) */
    const char *data; /**< the `data` lines joined with LF; NUL-terminated */
    size_t data_len;  /**< bytes in data (a NUL inside it is allowed) */
    const char *id;   /**< the last event ID: "" when none; never holds a NUL */
} sse_event;

/** What the parser reports; any member may be NULL. */
typedef struct sse_parser_callbacks {
    /** An event was dispatched (a blank line after at least one `data`). */
    void (*on_event)(const sse_event *event, void *arg);
    /**
     * A comment line: `text` is everything after the leading ':' (usually
     * starting with a space), `len` bytes, NUL-terminated, borrowed for the
     * call. Servers send comments as keep-alives; the standard ignores them.
     */
    void (*on_comment)(const char *text, size_t len, void *arg);
} sse_parser_callbacks;

/**
 * Creates a parser at the start of a stream. `cb` is copied (it may be NULL:
 * no callbacks) and `arg` is passed to every callback. `max` bounds both the
 * length of one line (without its end) and an event's data buffer (with one
 * LF per `data` line), in bytes; 0 means SSE_PARSER_DEFAULT_MAX. Returns NULL
 * when out of memory.
 */
sse_parser *sse_parser_new(const sse_parser_callbacks *cb, void *arg, size_t max);

/**
 * Parses `len` bytes of the stream (`buf` is borrowed for the call and may be
 * NULL when `len` is 0), calling the callbacks for each event and comment
 * they complete, in order, before it returns. A line or an event that is not
 * finished waits for the next call. Returns 0, or -1 with errno set to
 * EMSGSIZE when a line or the data buffer would exceed the limit (the events
 * before that point were delivered) or ENOMEM; after -1 the parser stays
 * failed and returns -1 until sse_parser_reset(). A callback may call
 * sse_parser_free() on this parser (then feed stops at once, returns 0 and
 * frees it), but must not call sse_parser_feed() or sse_parser_reset().
 */
int sse_parser_feed(sse_parser *p, const char *buf, size_t len);

/**
 * Starts a new stream, as when reconnecting: an unfinished line or event is
 * discarded (the standard discards them at the end of a stream), a BOM is
 * again allowed, and a failed parser recovers. The last event ID and the
 * reconnection time are kept: the next stream continues from them.
 */
void sse_parser_reset(sse_parser *p);

/**
 * The last event ID string: set by the `id` field of the last event that was
 * dispatched or ended with a blank line (even one without data), "" if none.
 * Send it as `Last-Event-ID` when not empty. Borrowed: valid until the next
 * call that takes `p`.
 */
const char *sse_parser_last_id(const sse_parser *p);

/** The reconnection time the server set with `retry`, in ms, or -1 if none. */
long sse_parser_retry_ms(const sse_parser *p);

/**
 * Frees the parser; NULL does nothing. From inside one of its callbacks the
 * parser is freed when sse_parser_feed() returns.
 */
void sse_parser_free(sse_parser *p);

#endif
