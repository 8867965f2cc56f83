/* SPDX-License-Identifier: MIT */
/*
 * SSE channels and the writing to their streams. A channel entry (sse_chan)
 * owns one tempest_subscriber: every local stream of a channel shares it,
 * so the node's single subscribe connection holds one SUBSCRIBE per channel
 * however many browsers listen. What the channel receives is formatted once
 * and written to each of its streams, which is dropped when its output
 * passes the cap. The entry goes (and unsubscribes) when its last stream
 * leaves.
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
 * it is made. A stream that is catching up (lib/sse.c) holds what its
 * channel sends it; every stream remembers the newest id it sent and never
 * sends an older one.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tempest/pubsub.h>

#include "sse_internal.h"

#define AHEAD_MAX 1024     /* messages sent from the history, notification not yet seen */
#define AHEAD_TTL_MS 10000 /* how long such a message waits for its notification */
#define SEED 16            /* newest entries a new channel expects late notifications of */
#define SEED_TTL_MS 2000   /* ... for this long */
#define SETTLE_MS 1000     /* then the history is read once more: see tp_sse_chan_open */

static const char interrupted_line[] = ": interrupted\n\n";

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

/* ---- commands in flight --------------------------------------------- */

void *tp_sse_op_done(redisAsyncContext *ac, void *privdata, sse_op **slot_of_owner) {
    sse_op *op = privdata;
    void *owner = op->owner;
    free(op);
    if (owner && slot_of_owner)
        *slot_of_owner = NULL;
    return owner && tp_redis_from(ac) ? owner : NULL;
}

sse_op *tp_sse_op_new(void *owner) {
    sse_op *op = tp_malloc(sizeof *op);
    if (op)
        op->owner = owner;
    return op;
}

/* ---- streams --------------------------------------------------------- */

static struct timeval ms_tv(int ms) {
    return (struct timeval){ms / 1000, (ms % 1000) * 1000};
}

void tp_sse_stream_link(tp_sse *s, sse_stream *st) {
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

static void held_free(sse_stream *st) {
    while (st->held) {
        sse_held *h = st->held;
        st->held = h->next;
        free(h);
    }
    st->held_tail = NULL;
    st->held_bytes = 0;
}

void tp_sse_stream_unlink(sse_stream *st) {
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
    tp_sse_chan_check(ch);
}

void tp_sse_stream_close(sse_stream *st) {
    struct evhttp_connection *evcon = st->evcon;
    tp_sse_stream_unlink(st);
    evhttp_connection_free(evcon);
}

void tp_sse_stream_timeouts(sse_stream *st, bool streaming) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(st->evcon);
    struct timeval io = ms_tv(st->s->io_timeout_ms);
    if (bev)
        bufferevent_set_timeouts(bev, streaming ? NULL : &io, &io);
}

void tp_sse_stream_end(sse_stream *st) {
    struct evhttp_request *req = st->req;
    tp_sse_stream_timeouts(st, false);
    tp_sse_stream_unlink(st);
    evhttp_send_reply_end(req);
}

static void stream_drop(sse_stream *st, size_t buffered) {
    tp_sse *s = st->s;
    s->dropped++;
    tp_log(&s->node->log, TEMPEST_LOG_WARN,
           "sse: a client of '%s' is too slow (%zu bytes waiting): dropped", st->ch->name,
           buffered);
    tp_sse_stream_close(st);
}

bool tp_sse_stream_flush(sse_stream *st) {
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

bool tp_sse_stream_write(sse_stream *st, const void *bytes, size_t len) {
    evbuffer_add(st->s->out, bytes, len);
    return tp_sse_stream_flush(st);
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

bool tp_sse_stream_emit(sse_stream *st, const sse_id *id, bool end, const char *bytes, size_t len) {
    if (id && st->has_last && tp_sse_id_cmp(*id, st->last) <= 0)
        return true; /* sent already, by the catch-up */
    if (st->catching)
        return stream_hold(st, id, end, bytes, len);
    if (!tp_sse_stream_write(st, bytes, len))
        return false;
    if (id) {
        st->last = *id;
        st->has_last = true;
    }
    if (end)
        tp_sse_stream_end(st);
    return !end;
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
    tp_sse_msg_clear(&a->msg);
    free(a);
}

/* Remembers a message sent from the history (stolen); `ttl_ms` is how
 * long it waits for its notification. */
static void ahead_push(sse_chan *ch, sse_msg *m, int ttl_ms) {
    if (ch->nahead >= AHEAD_MAX)
        ahead_pop(ch);
    sse_ahead *a = tp_malloc(sizeof *a);
    if (a == NULL) {
        tp_sse_msg_clear(m); /* its notification will be sent once more, without id */
        return;
    }
    *a = (sse_ahead){.at = tp_now_ms() - (AHEAD_TTL_MS - ttl_ms), .msg = *m};
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
    long long now = tp_now_ms();
    while (ch->ahead && now - ch->ahead->at > AHEAD_TTL_MS)
        ahead_pop(ch);
    size_t k = 0;
    sse_ahead *a = ch->ahead;
    for (; a && !tp_sse_msg_equal(&a->msg, m); a = a->next)
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
        tp_sse_stream_emit(st, id, end, bytes, len);
    }
}

static void chan_send(sse_chan *ch, const sse_id *id, const sse_msg *m) {
    struct evbuffer *ev = evbuffer_new();
    if (ev == NULL)
        return;
    tp_sse_put_event(ev, id, m);
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
    tp_sse_msg_clear(&n->msg);
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
    if (!tp_sse_entry_id(e, &id) || tp_sse_id_cmp(id, ch->last) <= 0)
        return;
    ch->last = id;
    ch->has_history = true;
    if (tp_sse_entry_msg(e, &m) != 0)
        return;
    chan_send(ch, &id, &m);
    ahead_push(ch, &m, AHEAD_TTL_MS);
}

static void chan_pump(sse_chan *ch);

static void on_range(redisAsyncContext *ac, void *reply, void *privdata) {
    sse_op *op = privdata;
    sse_chan *ch = op->owner;
    if ((ch = tp_sse_op_done(ac, privdata, ch ? &ch->op : NULL)) == NULL)
        return;
    const redisReply *r = reply;
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    ch->depth++;
    for (size_t i = 0; ok && i < r->elements; i++)
        chan_entry(ch, r->element[i]);
    note_finish(ch, ok);
    chan_pump(ch);
    ch->depth--;
    tp_sse_chan_check(ch);
}

/* The newest entries, before the channel starts: notifications of theirs
 * may still be on their way (the node may have been subscribed already),
 * and must not be sent as plain messages. */
static void chan_seed(sse_chan *ch, const redisReply *r) {
    for (size_t i = r->elements; i-- > 0;) {
        sse_msg m;
        if (r->element[i]->type == REDIS_REPLY_ARRAY && r->element[i]->elements == 2 &&
            tp_sse_entry_msg(r->element[i], &m) == 0)
            ahead_push(ch, &m, SEED_TTL_MS);
    }
}

static void on_base(redisAsyncContext *ac, void *reply, void *privdata) {
    sse_op *op = privdata;
    sse_chan *ch = op->owner;
    if ((ch = tp_sse_op_done(ac, privdata, ch ? &ch->op : NULL)) == NULL)
        return;
    const redisReply *r = reply;
    ch->depth++;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        ch->have_base = true;
        ch->last = (sse_id){0, 0};
        ch->has_history = r->elements > 0 && tp_sse_entry_id(r->element[0], &ch->last);
        chan_seed(ch, r);
    } else if (ch->notes) {
        note_finish(ch, false); /* one try per notification */
    }
    chan_pump(ch);
    ch->depth--;
    tp_sse_chan_check(ch);
}

/* Reads the newest history entries: the channel starts live after them. */
static int chan_send_base(sse_chan *ch) {
    sse_op *op = tp_sse_op_new(ch);
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
    tp_sse_id_format(ch->last, last, sizeof last);
    sse_op *op = tp_sse_op_new(ch);
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
    if (n == NULL || (kind == NOTE_MESSAGE && tp_sse_msg_copy(&n->msg, m) != 0)) {
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
    tp_sse_chan_check(ch);
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

void tp_sse_chan_check(sse_chan *ch) {
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
    tp_sse_chan_check(ch);
}

sse_chan *tp_sse_chan_open(tp_sse *s, const char *name) {
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
