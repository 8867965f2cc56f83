/* SPDX-License-Identifier: MIT */
/*
 * What the files of the front's SSE share: the stream, the channel and the
 * front's SSE state, and the calls between the layers. lib/sse_event.c
 * (ids, messages, the event-stream format) is the bottom; lib/sse_chan.c
 * (channels and the writing to their streams) uses it; lib/sse.c (requests,
 * resume, life cycle) uses both. Nothing below calls up.
 */
#ifndef TEMPEST_SSE_INTERNAL_H
#define TEMPEST_SSE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tempest/pubsub.h>

#include "node.h"
#include "sse.h"

struct evbuffer;
struct evhttp_connection;
struct evhttp_request;

typedef struct sse_ahead sse_ahead; /* lib/sse_chan.c */
typedef struct sse_note sse_note;   /* lib/sse_chan.c */

/** A Redis stream id. */
typedef struct sse_id {
    uint64_t ms, seq;
} sse_id;

/** A decoded message; owned copies in queues, borrowed views elsewhere. */
typedef struct sse_msg {
    int kind;          /* TEMPEST_SUB_MESSAGE, _END or _RAW */
    const char *event; /* NULL: unnamed */
    const char *data;
    size_t len;
} sse_msg;

/** A formatted event held for a stream that is catching up. */
typedef struct sse_held {
    struct sse_held *next;
    bool has_id, end;
    sse_id id;
    size_t len;
    char bytes[];
} sse_held;

/** One Redis command in flight. It belongs to its callback, which always
 *  runs (hiredis calls pending callbacks with NULL when the connection goes
 *  or is freed); `owner` is cleared when the channel or stream goes first. */
typedef struct sse_op {
    void *owner;
} sse_op;

typedef struct sse_stream sse_stream;

typedef struct sse_chan {
    struct sse_chan *next; /* hash chain */
    tp_sse *s;
    char *name;
    char *key; /* "{name}:history" */
    tempest_subscriber *sub;
    sse_stream *streams;
    size_t nstreams;
    int depth; /* entry points running on it: it is not freed under them */
    /* history (tp_sse.history) */
    sse_op *op; /* the XREVRANGE or XRANGE in flight */
    struct event *settle;
    bool have_base;   /* `last` is known */
    bool has_history; /* the history stream had an entry */
    sse_id last;      /* newest history id sent to the streams */
    sse_note *notes, *notes_tail;
    sse_ahead *ahead, *ahead_tail;
    size_t nahead;
} sse_chan;

struct sse_stream {
    sse_stream *prev, *next;   /* tp_sse.streams */
    sse_stream *cprev, *cnext; /* sse_chan.streams */
    tp_sse *s;
    sse_chan *ch;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct event *peek; /* notices a client that leaves */
    bool has_last;
    sse_id last; /* newest id sent: an id not newer is never sent again */
    /* resume */
    bool catching; /* reading the history after `from`: live events are held */
    sse_id from;
    sse_op *op;
    sse_held *held, *held_tail;
    size_t held_bytes;
};

struct tp_sse {
    tempest_node *node;
    char *cors;
    int keepalive_ms;
    int io_timeout_ms; /* the front's: restored when a stream ends */
    size_t max_buffered;
    size_t max_streams;
    bool history;
    sse_chan **buckets;
    size_t nbuckets, nchans;
    sse_stream *streams;
    size_t nstreams;
    unsigned long long dropped;
    struct event *keepalive;
    struct evbuffer *out; /* scratch: evhttp_send_reply_chunk drains it */
};

/* ---- lib/sse_event.c: ids, messages and the wire format ---- */

/** Parses a stream id "ms" or "ms-seq" of `len` bytes. */
bool tp_sse_id_parse(const char *s, size_t len, sse_id *id);
/** -1, 0 or 1 as `a` is older than, equal to or newer than `b`. */
int tp_sse_id_cmp(sse_id a, sse_id b);
/** Writes "ms-seq" to `buf`. */
void tp_sse_id_format(sse_id id, char *buf, size_t len);
/** Frees an owned message's copies and zeroes it. */
void tp_sse_msg_clear(sse_msg *m);
/** Copies `src` into `dst` (owned); 0 or TEMPEST_ENOMEM. */
int tp_sse_msg_copy(sse_msg *dst, const sse_msg *src);
/** True when the two messages are the same. */
bool tp_sse_msg_equal(const sse_msg *a, const sse_msg *b);
/** Appends the event (`id` may be NULL) in the text/event-stream format. */
void tp_sse_put_event(struct evbuffer *out, const sse_id *id, const sse_msg *m);
/** The id of an XRANGE entry `[id, [field, value, ...]]`. */
bool tp_sse_entry_id(const redisReply *e, sse_id *id);
/** Decodes the entry's field `m` into `m` (owned); -1 when it has none. */
int tp_sse_entry_msg(const redisReply *e, sse_msg *m);

/* ---- lib/sse_chan.c: channels, and the writing to their streams ---- */

/** A command in flight for `owner` (NULL: no memory). */
sse_op *tp_sse_op_new(void *owner);
/** Frees a finished command; returns its owner, or NULL when the owner left
 *  (or the node's connection was freed: then nothing may be sent again). */
void *tp_sse_op_done(redisAsyncContext *ac, void *privdata, sse_op **slot_of_owner);
/** Links a new stream into the front's list and its channel's; the first
 *  stream starts the keep-alive timer. */
void tp_sse_stream_link(tp_sse *s, sse_stream *st);
/** Detaches a stream from the front and its channel and frees it; the
 *  caller decides what becomes of its request. May free the channel. */
void tp_sse_stream_unlink(sse_stream *st);
/** Closes the client's connection (which frees the request). */
void tp_sse_stream_close(sse_stream *st);
/** A stream's client sends nothing: only writes are timed while it lasts. */
void tp_sse_stream_timeouts(sse_stream *st, bool streaming);
/** Ends the response after the `end` event; the connection may serve
 *  another request. */
void tp_sse_stream_end(sse_stream *st);
/** Sends what s->out holds; false when the stream was dropped because its
 *  output passed the cap. */
bool tp_sse_stream_flush(sse_stream *st);
/** Sends `len` bytes; false when the stream was dropped. */
bool tp_sse_stream_write(sse_stream *st, const void *bytes, size_t len);
/** Sends (or holds) one formatted event; false when the stream is gone. */
bool tp_sse_stream_emit(sse_stream *st, const sse_id *id, bool end, const char *bytes, size_t len);
/** The channel `name`, made (and subscribed) when it has no stream yet. */
sse_chan *tp_sse_chan_open(tp_sse *s, const char *name);
/** Frees the channel once it has no stream and nothing runs on it. */
void tp_sse_chan_check(sse_chan *ch);

#endif
