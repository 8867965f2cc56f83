/* SPDX-License-Identifier: MIT */
/*
 * Publisher and subscriber. Every subscriber of a node shares one Redis
 * connection in subscribe mode, kept in the node's share of pub/sub
 * (struct tp_pubsub, a node service made on first use, with the table of
 * publications waiting for their reply). A table maps each channel (and
 * each pattern) to its local subscribers; the first one sends SUBSCRIBE,
 * the last one UNSUBSCRIBE. After a reconnect everything is subscribed
 * again and every subscriber is told it may have missed messages.
 * Subscribers are reference-counted while a message is being delivered, so
 * a callback may free any of them.
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "node.h"
#include "pubsub.h"
#include "scripts.h"

/* ---- the channel table ----------------------------------------------- */

typedef struct chan {
    struct chan *next; /* hash chain */
    char *name;
    size_t len;
    bool pattern;
    bool in_redis;      /* SUBSCRIBE sent on the current connection */
    bool confirmed;     /* ... and Redis confirmed it */
    bool unsubscribing; /* UNSUBSCRIBE sent, confirmation not yet seen */
    tempest_subscriber **subs;
    size_t nsubs, cap;
} chan;

typedef struct tp_pubsub {
    tempest_node *node;
    tp_redis *redis; /* the subscribe connection, made for the first subscriber */
    chan **buckets;
    size_t nbuckets, nchans;
    bool was_up;         /* a later UP is a reconnection */
    unsigned generation; /* marks subscribers already told of an interruption */
    tp_map publications; /* waiting for their reply, by id */
    long long next_publication;
} tp_pubsub;

/* Pub/sub is a service of its node (node.h); the node frees it last, after
 * its command connection (whose replies the publications wait for). */
static void pubsub_free(tempest_node *node);

static const tp_node_service pubsub_service = {.free = pubsub_free};

int tp_pubsub_attach(tempest_node *node) {
    return tp_node_attach(node, &pubsub_service);
}

static tp_pubsub *pubsub_get(const tempest_node *node) {
    return tp_node_state(node, &pubsub_service);
}

struct tempest_subscriber {
    tempest_node *node;
    tempest_message_fn *fn;
    void *arg;
    int refs;      /* deliveries in progress hold a reference */
    bool dead;     /* freed by its owner; released when refs drop to 0 */
    unsigned seen; /* tp_pubsub.generation when last told of an interruption */
    bool active;   /* gets TP_SUB_ACTIVE events */
};

static size_t hash(const char *s, size_t len, bool pattern) {
    uint64_t h = pattern ? 0x84222325cbf29ce4ull : 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return (size_t)h;
}

static chan **slot(tp_pubsub *ps, const char *name, size_t len, bool pattern) {
    chan **c = &ps->buckets[hash(name, len, pattern) & (ps->nbuckets - 1)];
    while (*c && !((*c)->pattern == pattern && (*c)->len == len && !memcmp((*c)->name, name, len)))
        c = &(*c)->next;
    return c;
}

static int grow(tp_pubsub *ps) {
    size_t n = ps->nbuckets ? ps->nbuckets * 2 : 64;
    chan **b = tp_calloc(n, sizeof *b);
    if (b == NULL)
        return TEMPEST_ENOMEM;
    for (size_t i = 0; i < ps->nbuckets; i++) {
        for (chan *c = ps->buckets[i], *next; c; c = next) {
            next = c->next;
            size_t j = hash(c->name, c->len, c->pattern) & (n - 1);
            c->next = b[j];
            b[j] = c;
        }
    }
    free(ps->buckets);
    ps->buckets = b;
    ps->nbuckets = n;
    return 0;
}

static chan *chan_get(tp_pubsub *ps, const char *name, size_t len, bool pattern) {
    return ps->nbuckets ? *slot(ps, name, len, pattern) : NULL;
}

static chan *chan_add(tp_pubsub *ps, const char *name, bool pattern) {
    size_t len = strlen(name);
    chan *c = chan_get(ps, name, len, pattern);
    if (c)
        return c;
    if (ps->nchans >= ps->nbuckets && grow(ps) != 0)
        return NULL;
    if ((c = tp_calloc(1, sizeof *c)) == NULL || (c->name = tp_strdup(name)) == NULL) {
        free(c);
        return NULL;
    }
    c->len = len;
    c->pattern = pattern;
    chan **s = slot(ps, name, len, pattern);
    c->next = *s;
    *s = c;
    ps->nchans++;
    return c;
}

static void chan_remove(tp_pubsub *ps, chan *c) {
    chan **s = slot(ps, c->name, c->len, c->pattern);
    *s = c->next;
    ps->nchans--;
    free(c->subs);
    free(c->name);
    free(c);
}

/* ---- talking to Redis ------------------------------------------------ */

static void on_message(redisAsyncContext *ac, void *reply, void *privdata);

static int send_sub(tp_pubsub *ps, chan *c, bool subscribe) {
    const char *verb = c->pattern ? (subscribe ? "PSUBSCRIBE" : "PUNSUBSCRIBE")
                                  : (subscribe ? "SUBSCRIBE" : "UNSUBSCRIBE");
    const char *argv[] = {verb, c->name};
    size_t lens[] = {strlen(verb), c->len};
    /* hiredis keeps the callback of a subscription itself; UNSUBSCRIBE's
     * confirmation arrives through it too. */
    return tp_redis_argv(ps->redis, subscribe ? on_message : NULL, NULL, 2, argv, lens);
}

static void sync_chan(tp_pubsub *ps, chan *c) {
    if (tp_redis_state(ps->redis) != TEMPEST_NODE_UP || c->unsubscribing)
        return; /* done when the connection is up, or when the confirmation comes */
    if (c->nsubs > 0 && !c->in_redis && send_sub(ps, c, true) == 0) {
        c->in_redis = true;
    } else if (c->nsubs == 0 && c->in_redis && send_sub(ps, c, false) == 0) {
        c->in_redis = c->confirmed = false;
        c->unsubscribing = true;
    } else if (c->nsubs == 0 && !c->in_redis) {
        chan_remove(ps, c);
    }
}

/* Calls every subscriber of `c` with one event; returns true when the node
 * was freed by a callback. */
static bool deliver(tp_pubsub *ps, chan *c, int what, const char *channel, const char *event,
                    const char *data, size_t len) {
    size_t n = c->nsubs;
    tempest_subscriber *stack[16], **subs = n <= 16 ? stack : tp_malloc(n * sizeof *subs);
    if (subs == NULL)
        return false;
    memcpy(subs, c->subs, n * sizeof *subs);
    for (size_t i = 0; i < n; i++)
        subs[i]->refs++;
    tempest_node *node = ps->node;
    tp_node_enter(node);
    for (size_t i = 0; i < n; i++)
        if (!subs[i]->dead && !node->freeing && (what != TP_SUB_ACTIVE || subs[i]->active))
            subs[i]->fn(subs[i], what, channel, event, data, len, subs[i]->arg);
    for (size_t i = 0; i < n; i++)
        if (--subs[i]->refs == 0 && subs[i]->dead)
            free(subs[i]);
    if (subs != stack)
        free(subs);
    return tp_node_leave(node);
}

/* Decodes the Tempest message format and delivers it. */
static bool dispatch(tp_pubsub *ps, chan *c, const char *channel, const char *payload, size_t len) {
    json_t *msg = json_loadb(payload, len, JSON_ALLOW_NUL, NULL);
    size_t n = json_is_array(msg) ? json_array_size(msg) : 0;
    json_t *a = json_array_get(msg, 0), *b = json_array_get(msg, 1);
    bool strings = n >= 1 && n <= 2 && json_is_string(a) && (n == 1 || json_is_string(b));
    bool freed;
    if (!strings)
        freed = deliver(ps, c, TEMPEST_SUB_RAW, channel, NULL, payload, len);
    else if (n == 1 && strcmp(json_string_value(a), "$unsubscribe") == 0)
        freed = deliver(ps, c, TEMPEST_SUB_END, channel, NULL, NULL, 0);
    else if (n == 1)
        freed = deliver(ps, c, TEMPEST_SUB_MESSAGE, channel, NULL, json_string_value(a),
                        json_string_length(a));
    else
        freed = deliver(ps, c, TEMPEST_SUB_MESSAGE, channel, json_string_value(a),
                        json_string_value(b), json_string_length(b));
    json_decref(msg);
    return freed;
}

/* An UNSUBSCRIBE confirmed: subscribe again if someone came meanwhile. */
static void unsubscribed(tp_pubsub *ps, redisReply *name, bool pattern) {
    chan *c = chan_get(ps, name->str, name->len, pattern);
    if (c == NULL || !c->unsubscribing)
        return;
    c->unsubscribing = false;
    sync_chan(ps, c);
}

static void on_message(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL || rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
        return;
    tp_pubsub *ps = tp_redis_owner(r);
    const char *type = rep->element[0]->str;
    redisReply **e = rep->element;
    if (strcasecmp(type, "message") == 0 && e[1]->str && e[2]->str) {
        chan *c = chan_get(ps, e[1]->str, e[1]->len, false);
        if (c)
            dispatch(ps, c, e[1]->str, e[2]->str, e[2]->len);
    } else if (strcasecmp(type, "pmessage") == 0 && rep->elements == 4 && e[3]->str) {
        chan *c = chan_get(ps, e[1]->str, e[1]->len, true);
        if (c)
            dispatch(ps, c, e[2]->str, e[3]->str, e[3]->len);
    } else if (strcasecmp(type, "subscribe") == 0 || strcasecmp(type, "psubscribe") == 0) {
        chan *c = e[1]->type == REDIS_REPLY_STRING
                      ? chan_get(ps, e[1]->str, e[1]->len, type[0] == 'p' || type[0] == 'P')
                      : NULL;
        if (c && c->in_redis && !c->confirmed) {
            c->confirmed = true;
            deliver(ps, c, TP_SUB_ACTIVE, c->name, NULL, NULL, 0);
        }
    } else if (strcasecmp(type, "unsubscribe") == 0 || strcasecmp(type, "punsubscribe") == 0) {
        if (e[1]->type == REDIS_REPLY_STRING)
            unsubscribed(ps, e[1], type[0] == 'p' || type[0] == 'P');
    }
}

/* Tells every subscriber, once each, that messages may have been missed.
 * Returns true when a callback freed the node. */
static bool interrupted(tp_pubsub *ps) {
    unsigned gen = ++ps->generation;
    size_t n = 0, cap = 0;
    tempest_subscriber **all = NULL;
    for (size_t i = 0; i < ps->nbuckets; i++) {
        for (chan *c = ps->buckets[i]; c; c = c->next) {
            for (size_t j = 0; j < c->nsubs; j++) {
                tempest_subscriber *s = c->subs[j];
                if (s->seen == gen)
                    continue;
                if (n == cap) {
                    cap = cap ? cap * 2 : 16;
                    tempest_subscriber **grown = tp_realloc(all, cap * sizeof *all);
                    if (grown == NULL)
                        goto deliver;
                    all = grown;
                }
                s->seen = gen;
                s->refs++;
                all[n++] = s;
            }
        }
    }
deliver:;
    tempest_node *node = ps->node;
    tp_node_enter(node);
    for (size_t i = 0; i < n; i++)
        if (!all[i]->dead && !node->freeing)
            all[i]->fn(all[i], TEMPEST_SUB_INTERRUPTED, NULL, NULL, NULL, 0, all[i]->arg);
    for (size_t i = 0; i < n; i++)
        if (--all[i]->refs == 0 && all[i]->dead)
            free(all[i]);
    free(all);
    return tp_node_leave(node);
}

static void on_state(tp_redis *r, int state, const char *reason, void *arg) {
    (void)r;
    (void)reason;
    tp_pubsub *ps = arg;
    if (state != TEMPEST_NODE_UP) {
        for (size_t i = 0; i < ps->nbuckets; i++)
            for (chan *c = ps->buckets[i]; c; c = c->next)
                c->in_redis = c->confirmed = c->unsubscribing = false;
        return;
    }
    for (size_t i = 0; i < ps->nbuckets; i++) {
        for (chan *c = ps->buckets[i], *next; c; c = next) {
            next = c->next;
            sync_chan(ps, c);
        }
    }
    bool again = ps->was_up;
    ps->was_up = true;
    if (again)
        interrupted(ps); /* last: a callback may free the node */
}

/* The node's share of pub/sub, made on first use. */
static tp_pubsub *pubsub_of(tempest_node *node) {
    tp_pubsub *ps = pubsub_get(node);
    if (ps != NULL)
        return ps;
    if ((ps = tp_calloc(1, sizeof *ps)) == NULL)
        return NULL;
    ps->node = node;
    if (tp_node_set_state(node, &pubsub_service, ps) != 0) {
        free(ps);
        return NULL;
    }
    return ps;
}

/* The share with its subscribe connection, made for the first subscriber. */
static tp_pubsub *subscribing(tempest_node *node) {
    tp_pubsub *ps = pubsub_of(node);
    if (ps == NULL || ps->redis != NULL)
        return ps;
    ps->redis = tp_redis_new(node->base, &node->url, &node->timing, &node->log, on_state, ps);
    return ps->redis != NULL ? ps : NULL;
}

/* Subscribers and publishers are freed by now. */
static void pubsub_free(tempest_node *node) {
    tp_pubsub *ps = pubsub_get(node);
    if (ps == NULL)
        return;
    tp_map_clear(&ps->publications);
    tp_redis_free(ps->redis);
    for (size_t i = 0; i < ps->nbuckets; i++) {
        for (chan *c = ps->buckets[i], *next; c; c = next) {
            next = c->next;
            free(c->subs);
            free(c->name);
            free(c);
        }
    }
    free(ps->buckets);
    free(ps);
    tp_node_set_state(node, &pubsub_service, NULL);
}

TEMPEST_API size_t tempest_node_subscriptions(const tempest_node *node) {
    size_t n = 0;
    tp_pubsub *ps = node ? pubsub_get(node) : NULL;
    for (size_t i = 0; ps && i < ps->nbuckets; i++)
        for (chan *c = ps->buckets[i]; c; c = c->next)
            n += c->confirmed;
    return n;
}

bool tp_subscription_active(const tempest_node *node, const char *channel, bool pattern) {
    tp_pubsub *ps = node ? pubsub_get(node) : NULL;
    chan *c = ps ? chan_get(ps, channel, strlen(channel), pattern) : NULL;
    return c != NULL && c->confirmed;
}

void tp_subscriber_want_active(tempest_subscriber *s) {
    s->active = true;
}

/* ---- subscriber ------------------------------------------------------ */

TEMPEST_API tempest_subscriber *tempest_subscriber_new(tempest_node *node, tempest_message_fn *fn,
                                                       void *arg, tempest_error *err) {
    if (node == NULL || fn == NULL) {
        tp_error_set(err, TEMPEST_EINVAL, "subscriber: a node and a callback are required");
        return NULL;
    }
    tempest_subscriber *s = tp_calloc(1, sizeof *s);
    if (s == NULL || subscribing(node) == NULL) {
        free(s);
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        return NULL;
    }
    *s = (tempest_subscriber){.node = node, .fn = fn, .arg = arg};
    return s;
}

static bool has_sub(const chan *c, const tempest_subscriber *s, size_t *at) {
    for (size_t i = 0; i < c->nsubs; i++) {
        if (c->subs[i] == s) {
            *at = i;
            return true;
        }
    }
    return false;
}

TEMPEST_API int tempest_subscribe(tempest_subscriber *s, const char *channel, bool pattern) {
    if (s == NULL || channel == NULL || *channel == '\0' || s->dead)
        return TEMPEST_EINVAL;
    tp_pubsub *ps = pubsub_get(s->node);
    chan *c = chan_add(ps, channel, pattern);
    size_t at;
    if (c == NULL)
        return TEMPEST_ENOMEM;
    if (has_sub(c, s, &at))
        return 0;
    if (c->nsubs == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4;
        tempest_subscriber **subs = tp_realloc(c->subs, cap * sizeof *subs);
        if (subs == NULL) {
            sync_chan(ps, c); /* drops the entry if it is new and empty */
            return TEMPEST_ENOMEM;
        }
        c->subs = subs;
        c->cap = cap;
    }
    c->subs[c->nsubs++] = s;
    sync_chan(ps, c);
    return 0;
}

static void remove_sub(tp_pubsub *ps, chan *c, size_t at) {
    /* Order is kept so delivery order among subscribers stays stable. */
    memmove(&c->subs[at], &c->subs[at + 1], (c->nsubs - at - 1) * sizeof *c->subs);
    c->nsubs--;
    sync_chan(ps, c);
}

TEMPEST_API int tempest_unsubscribe(tempest_subscriber *s, const char *channel, bool pattern) {
    if (s == NULL || channel == NULL)
        return TEMPEST_EINVAL;
    tp_pubsub *ps = pubsub_get(s->node);
    chan *c = chan_get(ps, channel, strlen(channel), pattern);
    size_t at;
    if (c == NULL || !has_sub(c, s, &at))
        return TEMPEST_EINVAL;
    remove_sub(ps, c, at);
    return 0;
}

TEMPEST_API void tempest_subscriber_free(tempest_subscriber *s) {
    if (s == NULL || s->dead)
        return;
    tp_pubsub *ps = pubsub_get(s->node);
    for (size_t i = 0; i < ps->nbuckets; i++) {
        for (chan *c = ps->buckets[i], *next; c; c = next) {
            next = c->next; /* remove_sub may drop c */
            size_t at;
            if (has_sub(c, s, &at))
                remove_sub(ps, c, at);
        }
    }
    s->dead = true;
    if (s->refs == 0)
        free(s);
}

/* ---- publisher ------------------------------------------------------ */

typedef struct publication {
    struct publication *prev, *next; /* the publisher's publications in flight */
    tempest_publisher *pub;
    long long id; /* key in tp_pubsub.publications */
    tempest_published_fn *done;
    void *arg;
} publication;

struct tempest_publisher {
    tempest_node *node;
    tp_pubsub *ps; /* the node's share: the publications in flight */
    int history;
    publication *inflight;
    bool freeing;
};

TEMPEST_API tempest_publisher *tempest_publisher_new(tempest_node *node,
                                                     const tempest_publisher_options *options,
                                                     tempest_error *err) {
    int history = options ? options->history : 0;
    if (node == NULL || history < 0) {
        tp_error_set(err, TEMPEST_EINVAL, "publisher: a node is required; history >= 0");
        return NULL;
    }
    tp_pubsub *ps = pubsub_of(node);
    tempest_publisher *p = ps ? tp_calloc(1, sizeof *p) : NULL;
    if (p == NULL) {
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        return NULL;
    }
    *p = (tempest_publisher){.node = node, .ps = ps, .history = history};
    return p;
}

static void unlink_publication(publication *pb) {
    if (pb->prev)
        pb->prev->next = pb->next;
    else
        pb->pub->inflight = pb->next;
    if (pb->next)
        pb->next->prev = pb->prev;
    tp_map_del(&pb->pub->ps->publications, pb->id);
}

/* Runs the callback of a publication already unlinked, then frees it. */
static void finish(tempest_node *node, publication *pb, int status, long long n, const char *id) {
    if (pb->done) {
        tp_node_enter(node);
        pb->done(pb->pub, status, n, id, pb->arg);
        tp_node_leave(node);
    }
    free(pb);
}

static void on_published(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL)
        return;
    tempest_node *node = tp_redis_owner(r);
    publication *pb = tp_map_get(&pubsub_get(node)->publications, (long long)(intptr_t)privdata);
    if (pb == NULL)
        return; /* its publisher was freed */
    unlink_publication(pb);
    if (rep == NULL)
        finish(node, pb, TEMPEST_EDOWN, 0, NULL);
    else if (rep->type == REDIS_REPLY_INTEGER)
        finish(node, pb, 0, rep->integer, NULL);
    else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
             rep->element[1]->type == REDIS_REPLY_STRING)
        finish(node, pb, 0, rep->element[0]->integer, rep->element[1]->str);
    else
        finish(node, pb, TEMPEST_EREDIS, 0, NULL);
}

static int send_publish(tempest_publisher *p, const char *channel, const char *payload, size_t len,
                        long long id) {
    tp_redis *r = p->node->redis;
    void *priv = (void *)(intptr_t)id;
    if (p->history == 0) {
        const char *argv[] = {"PUBLISH", channel, payload};
        size_t lens[] = {7, strlen(channel), len};
        return tp_redis_argv(r, on_published, priv, 3, argv, lens);
    }
    char key[512], max[16];
    if (snprintf(key, sizeof key, "{%s}:history", channel) >= (int)sizeof key)
        return TEMPEST_EINVAL;
    snprintf(max, sizeof max, "%d", p->history);
    const char *argv[] = {key, channel, payload, max};
    size_t lens[] = {strlen(key), strlen(channel), len, strlen(max)};
    return tp_redis_script(r, on_published, priv, TP_SCRIPT_PUBLISH, 1, 4, argv, lens);
}

TEMPEST_API int tempest_publish_raw(tempest_publisher *p, const char *channel, const char *payload,
                                    size_t len, tempest_published_fn *done, void *arg) {
    if (p == NULL || channel == NULL || *channel == '\0' || payload == NULL)
        return TEMPEST_EINVAL;
    if (p->freeing)
        return TEMPEST_ECANCELED;
    publication *pb = tp_malloc(sizeof *pb);
    long long id = ++p->ps->next_publication;
    if (pb == NULL || tp_map_put(&p->ps->publications, id, pb) != 0) {
        free(pb);
        return TEMPEST_ENOMEM;
    }
    *pb = (publication){.pub = p, .id = id, .done = done, .arg = arg, .next = p->inflight};
    int rc = send_publish(p, channel, payload, len, id);
    if (rc != 0) {
        tp_map_del(&p->ps->publications, id);
        free(pb);
        return rc;
    }
    if (p->inflight)
        p->inflight->prev = pb;
    p->inflight = pb;
    return 0;
}

static int publish_json(tempest_publisher *p, const char *channel, json_t *msg,
                        tempest_published_fn *done, void *arg) {
    char *text = msg ? json_dumps(msg, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(msg);
    if (text == NULL)
        return TEMPEST_EINVAL; /* not UTF-8, or no memory */
    int rc = tempest_publish_raw(p, channel, text, strlen(text), done, arg);
    free(text);
    return rc;
}

TEMPEST_API int tempest_publish(tempest_publisher *p, const char *channel, const char *event,
                                const char *data, tempest_published_fn *done, void *arg) {
    if (p == NULL || data == NULL)
        return TEMPEST_EINVAL;
    json_t *msg = event ? json_pack("[ss]", event, data) : json_pack("[s]", data);
    return publish_json(p, channel, msg, done, arg);
}

TEMPEST_API int tempest_publish_end(tempest_publisher *p, const char *channel,
                                    tempest_published_fn *done, void *arg) {
    if (p == NULL)
        return TEMPEST_EINVAL;
    return publish_json(p, channel, json_pack("[s]", "$unsubscribe"), done, arg);
}

TEMPEST_API void tempest_publisher_free(tempest_publisher *p) {
    if (p == NULL || p->freeing)
        return;
    p->freeing = true;
    while (p->inflight) {
        publication *pb = p->inflight;
        unlink_publication(pb);
        finish(p->node, pb, TEMPEST_ECANCELED, 0, NULL);
    }
    free(p);
}
