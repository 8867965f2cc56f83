/* SPDX-License-Identifier: MIT */
/*
 * Server-Sent Events at the front. `GET /sub/<channel>` opens a stream on a
 * channel entry (sse_chan) that owns one tempest_subscriber: every local
 * stream of a channel shares it, so the node's single subscribe connection
 * holds one SUBSCRIBE per channel however many browsers listen. The entry
 * goes (and unsubscribes) when its last stream leaves.
 *
 * With the `history` option the pub/sub message of a channel is only a
 * wake-up: the channel reads its history stream `{<channel>}:history` after
 * the newest id it delivered (XRANGE on the node's command connection, one
 * at a time, in notification order) and sends the new entries with their
 * ids. The publish script XADDs before it PUBLISHes, so the entry of a
 * scripted message is always found by the XRANGE that its own notification
 * starts, or by an earlier one; such messages are remembered ("ahead") so
 * that their notification, when it comes, is not sent again. A message that
 * is not in the history (a plain PUBLISH) is sent as it came, without id.
 * Entries whose notification never comes (published before the SUBSCRIBE
 * took effect, or during an interruption) are found by the next XRANGE: the
 * one of an INTERRUPTED event, or the one a new channel runs SETTLE_MS after
 * it is made. A stream that comes with `Last-Event-ID` first holds what the
 * channel sends it, reads the history from that id on, sends it, then what
 * it held; every stream remembers the newest id it sent and never sends an
 * older one: no gap, no duplicate.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <tempest/pubsub.h>

#include "guard.h"
#include "node.h"
#include "sse.h"

#define SSE_PREFIX "/sub/"
#define MAX_CHANNEL 400    /* bytes of a decoded channel name */
#define AHEAD_MAX 1024     /* messages sent from the history, notification not yet seen */
#define AHEAD_TTL_MS 10000 /* how long such a message waits for its notification */
#define SEED 16            /* newest entries a new channel expects late notifications of */
#define SEED_TTL_MS 2000   /* ... for this long */
#define SETTLE_MS 1000     /* then the history is read once more: see chan_open */

static const char retry_line[] = "retry: 2000\n\n";
static const char keepalive_line[] = ": keep-alive\n\n";
static const char interrupted_line[] = ": interrupted\n\n";
static const char truncated_line[] = ": history truncated\n\n";
static const char unavailable_line[] = ": history unavailable\n\n";
static const char end_event[] = "event: end\ndata: \n\n";

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

/** A message sent from the history before its notification came. */
typedef struct sse_ahead {
    struct sse_ahead *next;
    long long at; /* monotonic ms */
    sse_msg msg;
} sse_ahead;

enum note_kind {
    NOTE_MESSAGE,     /* a pub/sub message */
    NOTE_INTERRUPTED, /* the subscription was lost and is back */
    NOTE_SETTLE,      /* a while after the channel was made */
};

/** A notification waiting for its XRANGE. */
typedef struct sse_note {
    struct sse_note *next;
    enum note_kind kind;
    sse_msg msg;
} sse_note;

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

static void chan_check(sse_chan *ch);

/* ---- ids, messages and the wire format ------------------------------- */

static bool id_parse(const char *s, size_t len, sse_id *id) {
    char buf[48], *end;
    if (len == 0 || len >= sizeof buf || s[0] < '0' || s[0] > '9')
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    unsigned long long ms = strtoull(buf, &end, 10), seq = 0;
    if (*end == '-') {
        if (end[1] < '0' || end[1] > '9')
            return false;
        seq = strtoull(end + 1, &end, 10);
    }
    if (*end != '\0' || errno == ERANGE)
        return false;
    *id = (sse_id){ms, seq};
    return true;
}

static int id_cmp(sse_id a, sse_id b) {
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    return a.seq == b.seq ? 0 : a.seq < b.seq ? -1 : 1;
}

static void id_format(sse_id id, char *buf, size_t len) {
    snprintf(buf, len, "%" PRIu64 "-%" PRIu64, id.ms, id.seq);
}

static void msg_clear(sse_msg *m) {
    free((void *)m->event);
    free((void *)m->data);
    *m = (sse_msg){0};
}

static int msg_copy(sse_msg *dst, const sse_msg *src) {
    char *event = src->event ? tp_strdup(src->event) : NULL;
    char *data = tp_malloc(src->len + 1);
    if ((src->event && event == NULL) || data == NULL) {
        free(event);
        free(data);
        return TEMPEST_ENOMEM;
    }
    if (src->len)
        memcpy(data, src->data, src->len);
    data[src->len] = '\0';
    *dst = (sse_msg){src->kind, event, data, src->len};
    return 0;
}

/* Decodes a payload by the rules of lib/pubsub.c, so that a history entry
 * and the notification of the same message compare equal. */
static int msg_decode(sse_msg *m, const char *payload, size_t len) {
    json_t *j = json_loadb(payload, len, JSON_ALLOW_NUL, NULL);
    size_t n = json_is_array(j) ? json_array_size(j) : 0;
    json_t *a = json_array_get(j, 0), *b = json_array_get(j, 1);
    bool strings = n >= 1 && n <= 2 && json_is_string(a) && (n == 1 || json_is_string(b));
    sse_msg view = {TEMPEST_SUB_RAW, NULL, payload, len};
    if (strings && n == 1 && strcmp(json_string_value(a), "$unsubscribe") == 0)
        view = (sse_msg){TEMPEST_SUB_END, NULL, NULL, 0};
    else if (strings && n == 1)
        view = (sse_msg){TEMPEST_SUB_MESSAGE, NULL, json_string_value(a), json_string_length(a)};
    else if (strings)
        view = (sse_msg){TEMPEST_SUB_MESSAGE, json_string_value(a), json_string_value(b),
                         json_string_length(b)};
    int rc = msg_copy(m, &view);
    json_decref(j);
    return rc;
}

static bool msg_equal(const sse_msg *a, const sse_msg *b) {
    if (a->kind != b->kind || a->len != b->len || (a->event == NULL) != (b->event == NULL))
        return false;
    if (a->event && strcmp(a->event, b->event) != 0)
        return false;
    return a->len == 0 || memcmp(a->data, b->data, a->len) == 0;
}

/* One `data:` line per line of `s`; LF, CRLF and CR all end a line, so no
 * raw CR reaches the stream. */
static void put_data(struct evbuffer *out, const char *s, size_t len) {
    const char *end = s + len;
    for (;;) {
        const char *q = s;
        while (q < end && *q != '\n' && *q != '\r')
            q++;
        evbuffer_add(out, "data: ", 6);
        if (q > s)
            evbuffer_add(out, s, (size_t)(q - s));
        evbuffer_add(out, "\n", 1);
        if (q == end)
            return;
        s = q + (*q == '\r' && q + 1 < end && q[1] == '\n' ? 2 : 1);
    }
}

/* An event name on one line: CR and LF become spaces. */
static void put_name(struct evbuffer *out, const char *name) {
    evbuffer_add(out, "event: ", 7);
    for (const char *p = name; *p; p++)
        evbuffer_add(out, *p == '\r' || *p == '\n' ? " " : p, 1);
    evbuffer_add(out, "\n", 1);
}

static void put_event(struct evbuffer *out, const sse_id *id, const sse_msg *m) {
    if (id) {
        char buf[48];
        id_format(*id, buf, sizeof buf);
        evbuffer_add_printf(out, "id: %s\n", buf);
    }
    if (m->kind == TEMPEST_SUB_END) {
        evbuffer_add(out, end_event, sizeof end_event - 1);
        return;
    }
    if (m->event)
        put_name(out, m->event);
    put_data(out, m->data, m->len);
    evbuffer_add(out, "\n", 1);
}

/* ---- history replies ------------------------------------------------- */

/* The id of an XRANGE entry `[id, [field, value, ...]]`. */
static bool entry_id(const redisReply *e, sse_id *id) {
    return e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
           e->element[0]->type == REDIS_REPLY_STRING &&
           id_parse(e->element[0]->str, e->element[0]->len, id);
}

/* Decodes the entry's field `m` into `m` (owned); -1 when it has none. */
static int entry_msg(const redisReply *e, sse_msg *m) {
    const redisReply *f = e->element[1];
    for (size_t i = 0; f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && k->len == 1 && k->str[0] == 'm' &&
            v->type == REDIS_REPLY_STRING)
            return msg_decode(m, v->str, v->len);
    }
    return -1;
}

/* Frees a finished command; returns its owner, or NULL when the owner left
 * (or the node's connection was freed: then nothing may be sent again). */
static void *op_done(redisAsyncContext *ac, void *privdata, sse_op **slot_of_owner) {
    sse_op *op = privdata;
    void *owner = op->owner;
    free(op);
    if (owner && slot_of_owner)
        *slot_of_owner = NULL;
    return owner && tp_redis_from(ac) ? owner : NULL;
}

static sse_op *op_new(void *owner) {
    sse_op *op = tp_malloc(sizeof *op);
    if (op)
        op->owner = owner;
    return op;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- streams --------------------------------------------------------- */

static void held_free(sse_stream *st) {
    while (st->held) {
        sse_held *h = st->held;
        st->held = h->next;
        free(h);
    }
    st->held_tail = NULL;
    st->held_bytes = 0;
}

/* Detaches a stream from the front and its channel and frees it; the
 * caller decides what becomes of its request. May free the channel. */
static void stream_unlink(sse_stream *st) {
    tp_sse *s = st->s;
    sse_chan *ch = st->ch;
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    if (--s->nstreams == 0)
        evtimer_del(s->keepalive);
    if (st->cprev)
        st->cprev->cnext = st->cnext;
    else
        ch->streams = st->cnext;
    if (st->cnext)
        st->cnext->cprev = st->cprev;
    ch->nstreams--;
    evhttp_connection_set_closecb(st->evcon, NULL, NULL);
    if (st->peek)
        event_free(st->peek);
    if (st->op)
        st->op->owner = NULL;
    held_free(st);
    free(st);
    chan_check(ch);
}

/* Closes the client's connection (which frees the request). */
static void stream_close(sse_stream *st) {
    struct evhttp_connection *evcon = st->evcon;
    stream_unlink(st);
    evhttp_connection_free(evcon);
}

static struct timeval ms_tv(int ms) {
    return (struct timeval){ms / 1000, (ms % 1000) * 1000};
}

/* A stream's client sends nothing: only writes are timed while it lasts. */
static void stream_timeouts(sse_stream *st, bool streaming) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(st->evcon);
    struct timeval io = ms_tv(st->s->io_timeout_ms);
    if (bev)
        bufferevent_set_timeouts(bev, streaming ? NULL : &io, &io);
}

/* Ends the response after the `end` event; the connection may serve
 * another request. */
static void stream_end(sse_stream *st) {
    struct evhttp_request *req = st->req;
    stream_timeouts(st, false);
    stream_unlink(st);
    evhttp_send_reply_end(req);
}

static void stream_drop(sse_stream *st, size_t buffered) {
    tp_sse *s = st->s;
    s->dropped++;
    tp_log(&s->node->log, TEMPEST_LOG_WARN,
           "sse: a client of '%s' is too slow (%zu bytes waiting): dropped", st->ch->name,
           buffered);
    stream_close(st);
}

/* Sends what s->out holds; false when the stream was dropped because its
 * output passed the cap. */
static bool stream_flush(sse_stream *st) {
    tp_sse *s = st->s;
    evhttp_send_reply_chunk(st->req, s->out);
    evbuffer_drain(s->out, evbuffer_get_length(s->out));
    struct bufferevent *bev = evhttp_connection_get_bufferevent(st->evcon);
    size_t n = bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
    if (n <= s->max_buffered)
        return true;
    stream_drop(st, n);
    return false;
}

static bool stream_write(sse_stream *st, const void *bytes, size_t len) {
    evbuffer_add(st->s->out, bytes, len);
    return stream_flush(st);
}

/* Keeps an event for a stream that is catching up; false when the stream
 * was dropped (what it holds passed the cap). */
static bool stream_hold(sse_stream *st, const sse_id *id, bool end, const char *bytes, size_t len) {
    sse_held *h = NULL;
    if (st->held_bytes + len <= st->s->max_buffered)
        h = tp_malloc(sizeof *h + len);
    if (h == NULL) {
        stream_drop(st, st->held_bytes + len);
        return false;
    }
    *h = (sse_held){.has_id = id != NULL, .end = end, .id = id ? *id : (sse_id){0, 0}, .len = len};
    memcpy(h->bytes, bytes, len);
    if (st->held_tail)
        st->held_tail->next = h;
    else
        st->held = h;
    st->held_tail = h;
    st->held_bytes += len;
    return true;
}

/* Sends (or holds) one formatted event; false when the stream is gone. */
static bool stream_emit(sse_stream *st, const sse_id *id, bool end, const char *bytes, size_t len) {
    if (id && st->has_last && id_cmp(*id, st->last) <= 0)
        return true; /* sent already, by the catch-up */
    if (st->catching)
        return stream_hold(st, id, end, bytes, len);
    if (!stream_write(st, bytes, len))
        return false;
    if (id) {
        st->last = *id;
        st->has_last = true;
    }
    if (end)
        stream_end(st);
    return !end;
}

/* ---- resume ---------------------------------------------------------- */

/* Sends the events held while catching up that are newer than what the
 * catch-up sent (and those without id, in their order), then goes live. */
static void stream_go_live(sse_stream *st) {
    st->catching = false;
    while (st->held) {
        sse_held *h = st->held;
        st->held = h->next;
        if (st->held == NULL)
            st->held_tail = NULL;
        st->held_bytes -= h->len;
        bool alive = stream_emit(st, h->has_id ? &h->id : NULL, h->end, h->bytes, h->len);
        free(h);
        if (!alive)
            return;
    }
}

/* Sends the entries of an XRANGE from `st->from` (inclusive) that come
 * after it; false when the stream is gone. */
static bool stream_send_entries(sse_stream *st, const redisReply *r) {
    sse_id id;
    /* Trimming removes the oldest entries: `from` still there means nothing
     * after it was lost. */
    if (r->elements > 0 && entry_id(r->element[0], &id) && id_cmp(id, st->from) != 0 &&
        !stream_write(st, truncated_line, sizeof truncated_line - 1))
        return false;
    for (size_t i = 0; i < r->elements; i++) {
        sse_msg m;
        if (!entry_id(r->element[i], &id) || id_cmp(id, st->last) <= 0)
            continue;
        st->last = id;
        if (entry_msg(r->element[i], &m) != 0)
            continue;
        put_event(st->s->out, &id, &m);
        bool end = m.kind == TEMPEST_SUB_END;
        msg_clear(&m);
        if (!stream_flush(st))
            return false;
        if (end) {
            stream_end(st);
            return false;
        }
    }
    return true;
}

static void on_catch_up(redisAsyncContext *ac, void *reply, void *privdata) {
    sse_op *op = privdata;
    sse_stream *st = op->owner;
    if ((st = op_done(ac, privdata, st ? &st->op : NULL)) == NULL)
        return;
    const redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        if (!stream_write(st, unavailable_line, sizeof unavailable_line - 1))
            return;
    } else if (!stream_send_entries(st, r)) {
        return;
    }
    stream_go_live(st);
}

/* Reads the history from `st->from` on; live events are held meanwhile. */
static void stream_catch_up(sse_stream *st) {
    char from[48];
    id_format(st->from, from, sizeof from);
    sse_op *op = op_new(st);
    if (op && tp_redis_cmd(st->s->node->redis, on_catch_up, op, "XRANGE %s %s +", st->ch->key,
                           from) == 0) {
        st->op = op;
        st->catching = true;
        return;
    }
    free(op);
    stream_write(st, unavailable_line, sizeof unavailable_line - 1);
}

/* ---- channels -------------------------------------------------------- */

static size_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (size_t)h;
}

static sse_chan **chan_slot(tp_sse *s, const char *name) {
    sse_chan **c = &s->buckets[name_hash(name) & (s->nbuckets - 1)];
    while (*c && strcmp((*c)->name, name) != 0)
        c = &(*c)->next;
    return c;
}

static int chan_grow(tp_sse *s) {
    size_t n = s->nbuckets ? s->nbuckets * 2 : 64;
    sse_chan **b = tp_calloc(n, sizeof *b);
    if (b == NULL)
        return TEMPEST_ENOMEM;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (sse_chan *c = s->buckets[i], *next; c; c = next) {
            next = c->next;
            size_t j = name_hash(c->name) & (n - 1);
            c->next = b[j];
            b[j] = c;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
    return 0;
}

static void ahead_pop(sse_chan *ch) {
    sse_ahead *a = ch->ahead;
    ch->ahead = a->next;
    if (ch->ahead == NULL)
        ch->ahead_tail = NULL;
    ch->nahead--;
    msg_clear(&a->msg);
    free(a);
}

/* Remembers a message sent from the history (stolen); `ttl_ms` is how
 * long it waits for its notification. */
static void ahead_push(sse_chan *ch, sse_msg *m, int ttl_ms) {
    if (ch->nahead >= AHEAD_MAX)
        ahead_pop(ch);
    sse_ahead *a = tp_malloc(sizeof *a);
    if (a == NULL) {
        msg_clear(m); /* its notification will be sent once more, without id */
        return;
    }
    *a = (sse_ahead){.at = now_ms() - (AHEAD_TTL_MS - ttl_ms), .msg = *m};
    if (ch->ahead_tail)
        ch->ahead_tail->next = a;
    else
        ch->ahead = a;
    ch->ahead_tail = a;
    ch->nahead++;
}

/* True when the notification `m` is of a message already sent from the
 * history. Notifications of scripted messages come in history order, so
 * messages before the match never got one (published before the
 * subscription was made, or during an interruption): they go too. */
static bool ahead_match(sse_chan *ch, const sse_msg *m) {
    long long now = now_ms();
    while (ch->ahead && now - ch->ahead->at > AHEAD_TTL_MS)
        ahead_pop(ch);
    size_t k = 0;
    sse_ahead *a = ch->ahead;
    for (; a && !msg_equal(&a->msg, m); a = a->next)
        k++;
    if (a == NULL)
        return false;
    for (size_t i = 0; i <= k; i++)
        ahead_pop(ch);
    return true;
}

/* Sends bytes to every stream of the channel (held by those catching up).
 * The caller holds ch->depth. */
static void chan_broadcast(sse_chan *ch, const sse_id *id, bool end, const char *bytes,
                           size_t len) {
    for (sse_stream *st = ch->streams, *next; st; st = next) {
        next = st->cnext;
        stream_emit(st, id, end, bytes, len);
    }
}

static void chan_send(sse_chan *ch, const sse_id *id, const sse_msg *m) {
    struct evbuffer *ev = evbuffer_new();
    if (ev == NULL)
        return;
    put_event(ev, id, m);
    size_t len = evbuffer_get_length(ev);
    const char *bytes = (const char *)evbuffer_pullup(ev, -1);
    if (bytes)
        chan_broadcast(ch, id, m->kind == TEMPEST_SUB_END, bytes, len);
    evbuffer_free(ev);
}

static void note_pop(sse_chan *ch) {
    sse_note *n = ch->notes;
    ch->notes = n->next;
    if (ch->notes == NULL)
        ch->notes_tail = NULL;
    msg_clear(&n->msg);
    free(n);
}

/* The first notification's XRANGE is done (`ok`) or failed: send it unless
 * it was sent from the history. */
static void note_finish(sse_chan *ch, bool ok) {
    sse_note *n = ch->notes;
    if (n->kind == NOTE_INTERRUPTED) {
        if (!ok || !ch->has_history)
            chan_broadcast(ch, NULL, false, interrupted_line, sizeof interrupted_line - 1);
    } else if (n->kind == NOTE_MESSAGE && !ahead_match(ch, &n->msg)) {
        chan_send(ch, NULL, &n->msg);
    }
    note_pop(ch);
}

/* Sends a history entry to the channel's streams if it is new. */
static void chan_entry(sse_chan *ch, const redisReply *e) {
    sse_id id;
    sse_msg m;
    if (!entry_id(e, &id) || id_cmp(id, ch->last) <= 0)
        return;
    ch->last = id;
    ch->has_history = true;
    if (entry_msg(e, &m) != 0)
        return;
    chan_send(ch, &id, &m);
    ahead_push(ch, &m, AHEAD_TTL_MS);
}

static void chan_pump(sse_chan *ch);

static void on_range(redisAsyncContext *ac, void *reply, void *privdata) {
    sse_op *op = privdata;
    sse_chan *ch = op->owner;
    if ((ch = op_done(ac, privdata, ch ? &ch->op : NULL)) == NULL)
        return;
    const redisReply *r = reply;
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    ch->depth++;
    for (size_t i = 0; ok && i < r->elements; i++)
        chan_entry(ch, r->element[i]);
    note_finish(ch, ok);
    chan_pump(ch);
    ch->depth--;
    chan_check(ch);
}

/* The newest entries, before the channel starts: notifications of theirs
 * may still be on their way (the node may have been subscribed already),
 * and must not be sent as plain messages. */
static void chan_seed(sse_chan *ch, const redisReply *r) {
    for (size_t i = r->elements; i-- > 0;) {
        sse_msg m;
        if (r->element[i]->type == REDIS_REPLY_ARRAY && r->element[i]->elements == 2 &&
            entry_msg(r->element[i], &m) == 0)
            ahead_push(ch, &m, SEED_TTL_MS);
    }
}

static void on_base(redisAsyncContext *ac, void *reply, void *privdata) {
    sse_op *op = privdata;
    sse_chan *ch = op->owner;
    if ((ch = op_done(ac, privdata, ch ? &ch->op : NULL)) == NULL)
        return;
    const redisReply *r = reply;
    ch->depth++;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        ch->have_base = true;
        ch->last = (sse_id){0, 0};
        ch->has_history = r->elements > 0 && entry_id(r->element[0], &ch->last);
        chan_seed(ch, r);
    } else if (ch->notes) {
        note_finish(ch, false); /* one try per notification */
    }
    chan_pump(ch);
    ch->depth--;
    chan_check(ch);
}

/* Reads the newest history entries: the channel starts live after them. */
static int chan_send_base(sse_chan *ch) {
    sse_op *op = op_new(ch);
    int rc = op ? tp_redis_cmd(ch->s->node->redis, on_base, op, "XREVRANGE %s + - COUNT %d",
                               ch->key, SEED)
                : TEMPEST_ENOMEM;
    if (rc == 0)
        ch->op = op;
    else
        free(op);
    return rc;
}

static int chan_send_range(sse_chan *ch) {
    char last[48];
    id_format(ch->last, last, sizeof last);
    sse_op *op = op_new(ch);
    int rc = op ? tp_redis_cmd(ch->s->node->redis, on_range, op, "XRANGE %s (%s +", ch->key, last)
                : TEMPEST_ENOMEM;
    if (rc == 0)
        ch->op = op;
    else
        free(op);
    return rc;
}

/* Starts the XRANGE of the first notification waiting, if none runs. */
static void chan_pump(sse_chan *ch) {
    while (ch->notes && ch->op == NULL) {
        int rc = ch->have_base ? chan_send_range(ch) : chan_send_base(ch);
        if (rc == 0)
            return;
        note_finish(ch, false);
    }
}

/* Queues a notification of a history channel (copied). */
static void chan_note(sse_chan *ch, enum note_kind kind, const sse_msg *m) {
    sse_note *n = tp_calloc(1, sizeof *n);
    if (n == NULL || (kind == NOTE_MESSAGE && msg_copy(&n->msg, m) != 0)) {
        free(n);
        if (kind == NOTE_MESSAGE)
            chan_send(ch, NULL, m); /* no memory: at least it is not lost */
        return;
    }
    n->kind = kind;
    if (ch->notes_tail)
        ch->notes_tail->next = n;
    else
        ch->notes = n;
    ch->notes_tail = n;
    chan_pump(ch);
}

static void on_message(tempest_subscriber *sub, int what, const char *channel, const char *event,
                       const char *data, size_t len, void *arg) {
    (void)sub;
    (void)channel;
    sse_chan *ch = arg;
    sse_msg m = {what, event, data, len};
    bool interrupted = what == TEMPEST_SUB_INTERRUPTED;
    ch->depth++;
    if (ch->s->history)
        chan_note(ch, interrupted ? NOTE_INTERRUPTED : NOTE_MESSAGE, &m);
    else if (interrupted)
        chan_broadcast(ch, NULL, false, interrupted_line, sizeof interrupted_line - 1);
    else
        chan_send(ch, NULL, &m);
    ch->depth--;
    chan_check(ch);
}

static void chan_free(sse_chan *ch) {
    tp_sse *s = ch->s;
    sse_chan **slot = chan_slot(s, ch->name);
    if (*slot == ch) {
        *slot = ch->next;
        s->nchans--;
    }
    tempest_subscriber_free(ch->sub); /* the last one unsubscribes in Redis */
    if (ch->settle)
        event_free(ch->settle);
    if (ch->op)
        ch->op->owner = NULL;
    while (ch->notes)
        note_pop(ch);
    while (ch->ahead)
        ahead_pop(ch);
    free(ch->name);
    free(ch->key);
    free(ch);
}

/* Frees the channel once it has no stream and nothing runs on it. */
static void chan_check(sse_chan *ch) {
    if (ch->nstreams == 0 && ch->depth == 0)
        chan_free(ch);
}

static sse_chan *chan_new(tp_sse *s, const char *name) {
    size_t len = strlen(name);
    sse_chan *ch = tp_calloc(1, sizeof *ch);
    if (ch == NULL)
        return NULL;
    ch->s = s;
    ch->name = tp_strdup(name);
    ch->key = tp_malloc(len + sizeof "{}:history");
    if (ch->name == NULL || ch->key == NULL)
        goto fail;
    snprintf(ch->key, len + sizeof "{}:history", "{%s}:history", name);
    ch->sub = tempest_subscriber_new(s->node, on_message, ch, NULL);
    if (ch->sub == NULL || tempest_subscribe(ch->sub, name, false) != 0)
        goto fail;
    return ch;
fail:
    tempest_subscriber_free(ch->sub);
    free(ch->name);
    free(ch->key);
    free(ch);
    return NULL;
}

/* The history was read before the SUBSCRIBE took effect in Redis (the
 * node's subscribe connection may still be connecting, or resubscribing
 * after an UNSUBSCRIBE): a message published in between has no
 * notification. Reading the history once more a while later sends it. */
static void on_settle(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    sse_chan *ch = arg;
    ch->depth++;
    chan_note(ch, NOTE_SETTLE, NULL);
    ch->depth--;
    chan_check(ch);
}

/* The channel `name`, made (and subscribed) when it has no stream yet. */
static sse_chan *chan_open(tp_sse *s, const char *name) {
    if (s->nbuckets) {
        sse_chan *found = *chan_slot(s, name);
        if (found)
            return found;
    }
    if (s->nchans >= s->nbuckets && chan_grow(s) != 0)
        return NULL;
    sse_chan *ch = chan_new(s, name);
    if (ch == NULL)
        return NULL;
    sse_chan **slot = chan_slot(s, name);
    ch->next = *slot;
    *slot = ch;
    s->nchans++;
    if (s->history) {
        chan_send_base(ch); /* when Redis is down, the first notification asks */
        struct timeval tv = ms_tv(SETTLE_MS);
        if ((ch->settle = evtimer_new(s->node->base, on_settle, ch)) != NULL)
            evtimer_add(ch->settle, &tv);
    }
    return ch;
}

/* ---- requests -------------------------------------------------------- */

static void on_close(struct evhttp_connection *evcon, void *arg) {
    (void)evcon;
    sse_stream *st = arg;
    struct evhttp_request *req = st->req;
    tp_log(&st->s->node->log, TEMPEST_LOG_DEBUG, "sse: a client of '%s' left", st->ch->name);
    stream_unlink(st);
    /* After a failure libevent detaches the unfinished request and leaves
     * it to us. */
    if (evhttp_request_get_connection(req) == NULL)
        evhttp_request_free(req);
}

/* evhttp does not read a connection while its reply is open, so it would
 * see the client leave only at a later write: peek at the socket. Data
 * (a pipelined request) is left to evhttp, and watching stops. */
static void on_peek(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    sse_stream *st = arg;
    if (!tp_client_gone(fd, st->peek))
        return;
    tp_log(&st->s->node->log, TEMPEST_LOG_DEBUG, "sse: a client of '%s' left", st->ch->name);
    stream_close(st);
}

static void watch_client(sse_stream *st) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(st->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0)
        st->peek = event_new(st->s->node->base, fd, EV_READ | EV_PERSIST, on_peek, st);
    if (st->peek == NULL || event_add(st->peek, NULL) != 0)
        tp_log(&st->s->node->log, TEMPEST_LOG_WARN, "sse: cannot watch a client connection");
}

static void on_keepalive(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_sse *s = arg;
    for (sse_stream *st = s->streams, *next; st; st = next) {
        next = st->next;
        stream_write(st, keepalive_line, sizeof keepalive_line - 1);
    }
}

static void stream_link(tp_sse *s, sse_stream *st) {
    sse_chan *ch = st->ch;
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    st->cnext = ch->streams;
    if (ch->streams)
        ch->streams->cprev = st;
    ch->streams = st;
    ch->nstreams++;
    if (s->nstreams++ == 0) {
        struct timeval tv = ms_tv(s->keepalive_ms);
        evtimer_add(s->keepalive, &tv);
    }
}

static void start_reply(tp_sse *s, struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    if (s->cors)
        evhttp_add_header(h, "Access-Control-Allow-Origin", s->cors);
    evhttp_send_reply_start(req, 200, "OK");
}

static int stream_open(tp_sse *s, struct evhttp_request *req, const char *name) {
    sse_chan *ch = chan_open(s, name);
    sse_stream *st = ch ? tp_calloc(1, sizeof *st) : NULL;
    if (st == NULL) {
        if (ch)
            chan_check(ch);
        return TEMPEST_ENOMEM;
    }
    *st = (sse_stream){.s = s, .ch = ch, .req = req, .evcon = evhttp_request_get_connection(req)};
    stream_link(s, st);
    start_reply(s, req);
    evhttp_connection_set_closecb(st->evcon, on_close, st);
    stream_timeouts(st, true);
    watch_client(st);
    if (!stream_write(st, retry_line, sizeof retry_line - 1))
        return 0;
    const char *last = evhttp_find_header(evhttp_request_get_input_headers(req), "Last-Event-ID");
    if (s->history && last && id_parse(last, strlen(last), &st->from)) {
        st->last = st->from; /* the client has it */
        st->has_last = true;
        stream_catch_up(st);
    }
    return 0;
}

static void reply_text(struct evhttp_request *req, int status, const char *text) {
    struct evbuffer *body = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; charset=utf-8");
    if (body)
        evbuffer_add_printf(body, "%s\n", text);
    evhttp_send_reply(req, status, NULL, body);
    if (body)
        evbuffer_free(body);
}

bool tp_sse_handle(tp_sse *s, struct evhttp_request *req) {
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET)
        return false;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL || strncmp(path, SSE_PREFIX, sizeof SSE_PREFIX - 1) != 0)
        return false;
    size_t len = 0;
    char *name = evhttp_uridecode(path + sizeof SSE_PREFIX - 1, 0, &len);
    if (name == NULL || len == 0 || len != strlen(name) || len > MAX_CHANNEL)
        reply_text(req, 404, "tempest: no such channel");
    else if (s->nstreams >= s->max_streams)
        reply_text(req, 503, "tempest: too many streams");
    else if (stream_open(s, req, name) != 0)
        reply_text(req, 503, "tempest: out of memory");
    free(name);
    return true;
}

/* ---- life cycle ------------------------------------------------------ */

tp_sse *tp_sse_new(tempest_node *node, const tempest_front_options *o, tempest_error *err) {
    if (o->sse_keepalive_ms < 0 || o->max_streams < 0) {
        tp_error_set(err, TEMPEST_EINVAL, "front: sse_keepalive_ms and max_streams must be >= 0");
        return NULL;
    }
    tp_sse *s = tp_calloc(1, sizeof *s);
    if (s == NULL)
        goto nomem;
    s->node = node;
    s->keepalive_ms = o->sse_keepalive_ms ? o->sse_keepalive_ms : 15000;
    s->io_timeout_ms = o->io_timeout_ms > 0 ? o->io_timeout_ms : 60000;
    s->max_buffered = o->sse_max_buffered ? o->sse_max_buffered : 1 << 20;
    s->max_streams = o->max_streams ? (size_t)o->max_streams : 10000;
    s->history = o->history;
    if ((o->cors_origin && (s->cors = tp_strdup(o->cors_origin)) == NULL) ||
        (s->keepalive = event_new(node->base, -1, EV_PERSIST, on_keepalive, s)) == NULL ||
        (s->out = evbuffer_new()) == NULL)
        goto nomem;
    return s;
nomem:
    tp_sse_free(s);
    tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
    return NULL;
}

size_t tp_sse_streams(const tp_sse *s) {
    return s ? s->nstreams : 0;
}

unsigned long long tp_sse_dropped(const tp_sse *s) {
    return s ? s->dropped : 0;
}

void tp_sse_free(tp_sse *s) {
    if (s == NULL)
        return;
    while (s->streams)
        stream_unlink(s->streams); /* the last stream of a channel frees it */
    if (s->keepalive)
        event_free(s->keepalive);
    if (s->out)
        evbuffer_free(s->out);
    free(s->buckets);
    free(s->cors);
    free(s);
}
