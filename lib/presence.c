/* SPDX-License-Identifier: MIT */
/*
 * Node presence (presence.h) and the monitor's read of a namespace
 * (tempest_cluster_status). Both are one script call each: the beat writes
 * the node's record, the status read returns every live record with the
 * queues and services they name. In Redis Cluster mode those keys live in
 * different slots, so the status read takes steps (see "Cluster mode").
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tempest/version.h>

#include "node.h"
#include "presence.h"
#include "scripts.h"

typedef struct member {
    struct member *next;
    void *owner;
    tp_presence_describe_fn *describe;
    tp_presence_beat_fn *beat;
    int period_ms;
} member;

/* A tempest_cluster_status call, from the command to its one callback. */
typedef struct status_req {
    struct status_req *prev, *next;
    tempest_node *node;
    tempest_status_fn *fn;
    void *arg;
    struct event *ev; /* runs the callback outside hiredis */
    json_t *snapshot;
    int status;
    char *ns;
    int waiting; /* Redis Cluster mode: replies still to come */
} status_req;

typedef struct tp_presence {
    member *members;
    struct event *beat_ev;
    bool listed;   /* a record was written and not withdrawn */
    char *nodes;   /* tempest:<ns>:nodes */
    char *records; /* tempest:<ns>:nodes:records */
    status_req *reqs;
    bool producing; /* the node joined as a producer */
} tp_presence;

/* The presence is a service of its node (node.h): the node tells it of
 * changes and stops it at teardown; its state is made on first use. */
static void on_change(tempest_node *node, int change);
static void presence_stop(tempest_node *node);

static const tp_node_service presence_service = {.on_change = on_change, .stop = presence_stop};

int tp_presence_attach(tempest_node *node) {
    return tp_node_attach(node, &presence_service);
}

static tp_presence *presence_get(const tempest_node *node) {
    return tp_node_state(node, &presence_service);
}

static char *key_of(const char *ns, const char *suffix) {
    size_t n = strlen("tempest::") + strlen(ns) + strlen(suffix) + 1;
    char *k = tp_malloc(n);
    if (k != NULL)
        snprintf(k, n, "tempest:%s:%s", ns, suffix);
    return k;
}

static void on_beat(evutil_socket_t fd, short what, void *arg);

static tp_presence *presence_of(tempest_node *node) {
    tp_presence *p = presence_get(node);
    if (p != NULL)
        return p;
    if ((p = tp_calloc(1, sizeof *p)) == NULL)
        return NULL;
    p->beat_ev = evtimer_new(node->base, on_beat, node);
    p->nodes = key_of(node->ns, "nodes");
    p->records = key_of(node->ns, "nodes:records");
    if (p->beat_ev == NULL || p->nodes == NULL || p->records == NULL ||
        tp_node_set_state(node, &presence_service, p) != 0) {
        if (p->beat_ev)
            event_free(p->beat_ev);
        free(p->nodes);
        free(p->records);
        free(p);
        return NULL;
    }
    return p;
}

/* ---- the record ------------------------------------------------------ */

void tp_presence_add_role(json_t *record, const char *role) {
    json_t *roles = json_object_get(record, "roles");
    size_t i;
    json_t *v;
    json_array_foreach(roles, i, v) {
        if (strcmp(json_string_value(v), role) == 0)
            return;
    }
    json_array_append_new(roles, json_string(role));
}

void tp_presence_add_item(json_t *record, const char *list, json_t *value) {
    json_t *a = json_object_get(record, list);
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        if (json_equal(v, value)) {
            json_decref(value);
            return;
        }
    }
    json_array_append_new(a, value);
}

void tp_presence_add_count(json_t *record, const char *role, const char *name, uint64_t n) {
    json_t *stats = json_object_get(record, "stats");
    json_t *part = json_object_get(stats, role);
    if (part == NULL) {
        part = json_object();
        if (json_object_set_new(stats, role, part) != 0)
            return;
    }
    json_int_t old = json_integer_value(json_object_get(part, name));
    json_object_set_new(part, name, json_integer(old + (json_int_t)n));
}

static json_t *build_record(tempest_node *node) {
    char host[128] = "";
    gethostname(host, sizeof host - 1);
    json_t *rec =
        json_pack("{s:I,s:s,s:i,s:I,s:s,s:s,s:[],s:[],s:[],s:{}}", "id", (json_int_t)node->id,
                  "host", host, "pid", (int)getpid(), "uptime_ms",
                  (json_int_t)((uint64_t)tp_now_ms() - node->started_ms), "namespace", node->ns,
                  "version", TEMPEST_VERSION_STRING, "roles", "queues", "services", "stats");
    if (rec == NULL)
        return NULL;
    json_object_set_new(rec, "address", node->address ? json_string(node->address) : json_null());
    for (member *m = presence_get(node)->members; m; m = m->next)
        m->describe(m->owner, rec);
    return rec;
}

/* ---- the beat -------------------------------------------------------- */

static void withdraw(tempest_node *node) {
    tp_presence *p = presence_get(node);
    char id[24];
    snprintf(id, sizeof id, "%lld", node->id);
    tp_redis_cmd(node->redis, tp_node_log_reply, (void *)"presence", "ZREM %s %s", p->nodes, id);
    tp_redis_cmd(node->redis, tp_node_log_reply, (void *)"presence", "HDEL %s %s", p->records, id);
    p->listed = false;
}

/* Redis Cluster: the records of the expired ids the presence script returned. */
static void on_expired(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    redisReply *rep = reply;
    if (r == NULL || rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        tp_node_log_reply(ac, reply, privdata);
        return;
    }
    tp_presence *p = presence_get(tp_redis_owner(r));
    for (size_t i = 0; p && i < rep->elements; i++)
        if (rep->element[i]->type == REDIS_REPLY_STRING)
            tp_redis_cmd(r, tp_node_log_reply, (void *)"presence", "HDEL %s %s", p->records,
                         rep->element[i]->str);
}

/* In Redis Cluster mode the two keys live in different slots: the script
 * runs on the zset alone and the record is written beside it. */
static int send_record_cluster(tempest_node *node, const char *id, const char *ttl,
                               const char *text) {
    tp_presence *p = presence_get(node);
    const char *argv[] = {p->nodes, id, ttl, text};
    int rc = tp_redis_script(node->redis, on_expired, (void *)"presence", TP_SCRIPT_PRESENCE, 1, 4,
                             argv, NULL);
    if (rc == 0)
        rc = tp_redis_cmd(node->redis, tp_node_log_reply, (void *)"presence", "HSET %s %s %s",
                          p->records, id, text);
    return rc;
}

static void send_record(tempest_node *node) {
    json_t *rec = build_record(node);
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    if (text == NULL) {
        tp_log(&node->log, TEMPEST_LOG_WARN, "presence: out of memory, beat skipped");
        return;
    }
    char id[24], ttl[16];
    snprintf(id, sizeof id, "%lld", node->id);
    snprintf(ttl, sizeof ttl, "%d", node->presence_ttl_ms);
    tp_presence *p = presence_get(node);
    const char *argv[] = {p->nodes, p->records, id, ttl, text};
    if (node->url.nseeds > 0 ? send_record_cluster(node, id, ttl, text) == 0
                             : tp_redis_script(node->redis, tp_node_log_reply, (void *)"presence",
                                               TP_SCRIPT_PRESENCE, 2, 5, argv, NULL) == 0)
        p->listed = true;
    free(text);
}

static int period_of(tempest_node *node) {
    int period = node->heartbeat_ms;
    for (member *m = presence_get(node)->members; m; m = m->next)
        if (m->period_ms > 0 && m->period_ms < period)
            period = m->period_ms;
    return period;
}

static void on_beat(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tempest_node *node = arg;
    tp_presence *p = presence_get(node);
    bool up = tp_redis_state(node->redis) == TEMPEST_NODE_UP && node->id != 0;
    if (p->members == NULL) {
        if (up && p->listed)
            withdraw(node);
        return; /* no role: no beat until one joins */
    }
    if (up) {
        send_record(node);
        /* A hook may leave (and free its member): take the next one first. */
        for (member *m = p->members, *next; m; m = next) {
            next = m->next;
            if (m->beat)
                m->beat(m->owner);
        }
    }
    int period = period_of(node);
    struct timeval tv = {period / 1000, (period % 1000) * 1000};
    evtimer_add(p->beat_ev, &tv);
}

/* Beats on the next turn of the loop; nothing without a presence. */
static void kick(tempest_node *node) {
    tp_presence *p = presence_get(node);
    if (p != NULL)
        event_active(p->beat_ev, EV_TIMEOUT, 0);
}

/* The connection is up, the id or the address is known: beat now. */
static void on_change(tempest_node *node, int change) {
    if (change != TP_NODE_REDIS_DOWN)
        kick(node);
}

int tp_presence_join(tempest_node *node, void *owner, tp_presence_describe_fn *describe,
                     tp_presence_beat_fn *beat, int period_ms) {
    tp_presence *p = presence_of(node);
    member *m = p ? tp_calloc(1, sizeof *m) : NULL;
    if (m == NULL)
        return TEMPEST_ENOMEM;
    *m = (member){.owner = owner, .describe = describe, .beat = beat, .period_ms = period_ms};
    member **tail = &p->members;
    while (*tail)
        tail = &(*tail)->next;
    *tail = m;
    kick(node);
    return 0;
}

void tp_presence_leave(tempest_node *node, void *owner) {
    tp_presence *p = presence_get(node);
    for (member **mp = p ? &p->members : NULL; mp && *mp; mp = &(*mp)->next) {
        if ((*mp)->owner == owner) {
            member *m = *mp;
            *mp = m->next;
            free(m);
            if (!node->freeing)
                kick(node);
            return;
        }
    }
}

static void describe_producer(void *owner, json_t *record) {
    tempest_node *node = owner;
    tp_presence_add_role(record, "producer");
    tp_presence_add_count(record, "producer", "jobs", node->jobs_sent);
    tp_presence_add_count(record, "producer", "in_flight", node->pending.len);
}

void tp_presence_produced(tempest_node *node) {
    node->jobs_sent++;
    tp_presence *p = presence_get(node);
    if ((p == NULL || !p->producing) &&
        tp_presence_join(node, node, describe_producer, NULL, 0) == 0)
        presence_get(node)->producing = true;
}

/* ---- tempest_cluster_status ------------------------------------------ */

static void req_free(status_req *q) {
    tp_presence *p = presence_get(q->node);
    if (q->prev)
        q->prev->next = q->next;
    else
        p->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (q->ev)
        event_free(q->ev);
    json_decref(q->snapshot);
    free(q->ns);
    free(q);
}

static void on_status_event(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    status_req *q = arg;
    tempest_node *node = q->node;
    tempest_status_fn *fn = q->fn;
    void *fn_arg = q->arg;
    json_t *snapshot = json_incref(q->snapshot);
    int status = q->status;
    req_free(q);
    tp_node_enter(node);
    fn(node, status, snapshot, fn_arg);
    json_decref(snapshot);
    tp_node_leave(node);
}

/* An array (Lua's cjson encodes an empty table as an object), or []. */
static json_t *array_or_empty(json_t *v) {
    if (json_is_array(v))
        return json_incref(v);
    return json_array();
}

static json_t *decode(const redisReply *e) {
    if (e->type != REDIS_REPLY_STRING)
        return NULL;
    return json_loadb(e->str, e->len, 0, NULL);
}

/* {now, queues JSON, services JSON, record...} -> the snapshot. */
static json_t *snapshot_of(const status_req *q, const redisReply *rep) {
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER)
        return NULL;
    json_t *queues = decode(rep->element[1]);
    json_t *services = decode(rep->element[2]);
    json_t *snap = json_pack("{s:s,s:I,s:[],s:o,s:o}", "namespace", q->ns, "time_ms",
                             (json_int_t)rep->element[0]->integer, "nodes", "queues",
                             array_or_empty(queues), "services", array_or_empty(services));
    json_decref(queues);
    json_decref(services);
    json_t *nodes = json_object_get(snap, "nodes");
    for (size_t i = 3; nodes && i < rep->elements; i++) {
        json_t *rec = decode(rep->element[i]);
        if (json_is_object(rec))
            json_array_append(nodes, rec);
        json_decref(rec);
    }
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(snap, "services"), i, s) {
        json_object_set_new(s, "responders", array_or_empty(json_object_get(s, "responders")));
    }
    return snap;
}

static void on_status_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_redis *r = tp_redis_from(ac);
    if (r == NULL)
        return; /* the node is gone, and the request with it */
    status_req *q = privdata;
    redisReply *rep = reply;
    if (rep == NULL) {
        q->status = TEMPEST_EDOWN;
    } else if (rep->type == REDIS_REPLY_ERROR) {
        tp_node_errorf(q->node, "status: %s", rep->str);
        q->status = TEMPEST_EREDIS;
    } else if ((q->snapshot = snapshot_of(q, rep)) == NULL) {
        tp_node_errorf(q->node, "status: unexpected reply");
        q->status = TEMPEST_EPROTO;
    }
    event_active(q->ev, EV_TIMEOUT, 0);
}

/* ---- tempest_cluster_status in Redis Cluster mode ----------------------- */

/* The live ids (one script on the nodes key), their records (HMGET on the
 * records' master), then one read per queue (TP_SCRIPT_QUEUE_STATS in the
 * queue's slot) and per service (ZRANGEBYSCORE), all in flight together;
 * the last reply completes the snapshot. It is not one atomic read: a
 * queue's counts are each read atomically, at slightly different times. */

typedef struct status_part {
    status_req *q;
    json_t *target; /* the queue or service this reply fills (in q->snapshot) */
} status_part;

static void part_done(status_req *q) {
    if (--q->waiting > 0)
        return;
    if (q->status != 0) {
        json_decref(q->snapshot);
        q->snapshot = NULL;
    }
    event_active(q->ev, EV_TIMEOUT, 0);
}

/* A reply the snapshot cannot use: the first failure is the status. */
static void part_failed(status_req *q, int status, const char *what) {
    if (what != NULL)
        tp_node_errorf(q->node, "status: %s", what);
    if (q->status == 0)
        q->status = status;
}

static int status_of(const redisReply *rep) {
    return rep == NULL ? TEMPEST_EDOWN : rep->type == REDIS_REPLY_ERROR ? TEMPEST_EREDIS : 0;
}

static void on_part_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    status_part *part = privdata;
    status_req *q = part->q;
    json_t *target = part->target;
    free(part);
    if (tp_redis_from(ac) == NULL)
        return; /* the node is gone, and the request with it */
    redisReply *rep = reply;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        /* One queue or service that cannot be read (a record naming keys
         * of two slots, say) does not spoil the rest of the snapshot. */
        json_object_set_new(target, "error", json_stringn(rep->str, rep->len));
    } else if (rep == NULL) {
        part_failed(q, TEMPEST_EDOWN, NULL);
    } else if (json_object_get(target, "responders") != NULL) {
        json_t *ids = json_object_get(target, "responders");
        for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++)
            if (rep->element[i]->type == REDIS_REPLY_STRING)
                json_array_append_new(ids,
                                      json_stringn(rep->element[i]->str, rep->element[i]->len));
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 4) {
        static const char *const names[] = {"ready", "processing", "dead", "workers"};
        for (size_t i = 0; i < 4; i++)
            json_object_set_new(target, names[i], json_integer(rep->element[i]->integer));
    } else {
        part_failed(q, TEMPEST_EPROTO, "unexpected reply");
    }
    part_done(q);
}

/* Sends one read that fills `target`; counts it in q->waiting. */
static void send_part(status_req *q, json_t *target, int script, int argc, const char **argv) {
    status_part *part = tp_malloc(sizeof *part);
    if (part == NULL) {
        part_failed(q, TEMPEST_ENOMEM, NULL);
        return;
    }
    *part = (status_part){q, target};
    tp_redis *r = q->node->redis;
    int rc = script >= 0 ? tp_redis_script(r, on_part_reply, part, script, 2, 2, argv, NULL)
                         : tp_redis_argv(r, on_part_reply, part, argc, argv, NULL);
    if (rc != 0) {
        free(part);
        part_failed(q, rc, NULL);
        return;
    }
    q->waiting++;
}

/* The queues and services a record names, each read once. */
static void read_named(status_req *q, json_t *rec, json_t *seen, long long now) {
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(rec, "queues"), i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *dead = json_string_value(json_object_get(v, "dead"));
        char *key = name ? tp_malloc(strlen(name) + 8) : NULL;
        if (key == NULL)
            continue;
        sprintf(key, "q %s", name);
        json_t *queue = json_object_get(seen, key) ? NULL : json_pack("{s:s}", "name", name);
        if (queue != NULL && json_object_set_new(seen, key, json_true()) == 0 &&
            json_array_append_new(json_object_get(q->snapshot, "queues"), queue) == 0) {
            sprintf(key, "{%s}:dead", name);
            const char *argv[] = {name, dead ? dead : key};
            send_part(q, queue, TP_SCRIPT_QUEUE_STATS, 2, argv);
        }
        free(key);
    }
    json_array_foreach(json_object_get(rec, "services"), i, v) {
        const char *name = json_string_value(json_object_get(v, "service"));
        const char *ns = json_string_value(json_object_get(v, "namespace"));
        char *key = name && ns ? tp_malloc(strlen(name) + strlen(ns) + 16) : NULL;
        if (key == NULL)
            continue;
        sprintf(key, "s %s %s", ns, name);
        json_t *svc = json_object_get(seen, key) ? NULL
                                                 : json_pack("{s:s,s:s,s:[]}", "service", name,
                                                             "namespace", ns, "responders");
        if (svc != NULL && json_object_set_new(seen, key, json_true()) == 0 &&
            json_array_append_new(json_object_get(q->snapshot, "services"), svc) == 0) {
            char min[24];
            snprintf(min, sizeof min, "%lld", now);
            sprintf(key, "tempest:%s:svc:%s", ns, name);
            const char *argv[] = {"ZRANGEBYSCORE", key, min, "+inf"};
            send_part(q, svc, -1, 4, argv);
        }
        free(key);
    }
}

static void on_records_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    if (tp_redis_from(ac) == NULL)
        return;
    status_req *q = privdata;
    redisReply *rep = reply;
    int st = status_of(rep);
    if (st != 0 || rep->type != REDIS_REPLY_ARRAY) {
        part_failed(q, st ? st : TEMPEST_EPROTO, rep ? rep->str : NULL);
        part_done(q);
        return;
    }
    json_t *seen = json_object();
    json_t *nodes = json_object_get(q->snapshot, "nodes");
    long long now = json_integer_value(json_object_get(q->snapshot, "time_ms"));
    q->waiting++; /* this reply's own share, released below */
    for (size_t i = 0; i < rep->elements && seen != NULL; i++) {
        json_t *rec = decode(rep->element[i]);
        if (json_is_object(rec)) {
            json_array_append(nodes, rec);
            read_named(q, rec, seen, now);
        }
        json_decref(rec);
    }
    json_decref(seen);
    q->waiting--;
    part_done(q);
}

static void on_live_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    if (tp_redis_from(ac) == NULL)
        return;
    status_req *q = privdata;
    redisReply *rep = reply;
    int st = status_of(rep);
    if (st != 0 || rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER) {
        part_failed(q, st ? st : TEMPEST_EPROTO, rep ? rep->str : "unexpected reply");
        part_done(q);
        return;
    }
    q->snapshot = json_pack("{s:s,s:I,s:[],s:[],s:[]}", "namespace", q->ns, "time_ms",
                            (json_int_t)rep->element[0]->integer, "nodes", "queues", "services");
    size_t n = rep->elements - 1;
    char *records = key_of(q->ns, "nodes:records");
    const char **argv = tp_malloc((n + 2) * sizeof *argv);
    size_t *lens = tp_malloc((n + 2) * sizeof *lens);
    int rc = TEMPEST_ENOMEM;
    if (n == 0 && q->snapshot != NULL) {
        rc = 0; /* nobody is live: the empty snapshot is the answer */
    } else if (q->snapshot != NULL && records != NULL && argv != NULL && lens != NULL) {
        argv[0] = "HMGET", lens[0] = 5;
        argv[1] = records, lens[1] = strlen(records);
        for (size_t i = 0; i < n; i++) {
            argv[i + 2] = rep->element[i + 1]->str ? rep->element[i + 1]->str : "";
            lens[i + 2] = rep->element[i + 1]->str ? rep->element[i + 1]->len : 0;
        }
        rc = tp_redis_argv(q->node->redis, on_records_reply, q, (int)n + 2, argv, lens);
        if (rc == 0)
            q->waiting++;
    }
    free(records);
    free(argv);
    free(lens);
    if (rc != 0)
        part_failed(q, rc, NULL);
    part_done(q);
}

static int cluster_status(status_req *q) {
    char *nodes = key_of(q->ns, "nodes");
    int rc = TEMPEST_ENOMEM;
    if (nodes != NULL) {
        const char *argv[] = {nodes};
        rc = tp_redis_script(q->node->redis, on_live_reply, q, TP_SCRIPT_STATUS, 1, 1, argv, NULL);
    }
    free(nodes);
    if (rc == 0)
        q->waiting = 1;
    return rc;
}

TEMPEST_API int tempest_cluster_status(tempest_node *node, const char *ns, tempest_status_fn *fn,
                                       void *arg) {
    if (node == NULL || fn == NULL || node->freeing || (ns != NULL && !tp_name_valid(ns)))
        return TEMPEST_EINVAL;
    if (tp_redis_state(node->redis) != TEMPEST_NODE_UP)
        return TEMPEST_EDOWN;
    tp_presence *p = presence_of(node);
    status_req *q = p ? tp_calloc(1, sizeof *q) : NULL;
    if (q == NULL)
        return TEMPEST_ENOMEM;
    *q = (status_req){.node = node, .fn = fn, .arg = arg, .next = p->reqs};
    if (p->reqs)
        p->reqs->prev = q;
    p->reqs = q;
    q->ns = tp_strdup(ns ? ns : node->ns);
    q->ev = event_new(node->base, -1, 0, on_status_event, q);
    if (node->url.nseeds > 0) { /* Redis Cluster: the keys live in different slots */
        int rc = q->ns && q->ev ? cluster_status(q) : TEMPEST_ENOMEM;
        if (rc != 0)
            req_free(q);
        return rc;
    }
    char *nodes = q->ns ? key_of(q->ns, "nodes") : NULL;
    char *records = q->ns ? key_of(q->ns, "nodes:records") : NULL;
    int rc = TEMPEST_ENOMEM;
    if (q->ev && nodes && records) {
        const char *argv[] = {nodes, records};
        rc = tp_redis_script(node->redis, on_status_reply, q, TP_SCRIPT_STATUS, 2, 2, argv, NULL);
    }
    free(nodes);
    free(records);
    if (rc != 0)
        req_free(q);
    return rc;
}

/* ---- teardown -------------------------------------------------------- */

/* Withdraws the record (best effort), cancels the status reads, frees. */
static void presence_stop(tempest_node *node) {
    tp_presence *p = presence_get(node);
    if (p == NULL)
        return;
    if (p->listed && tp_redis_state(node->redis) == TEMPEST_NODE_UP && node->id != 0) {
        withdraw(node);
        tp_redis_flush(node->redis);
    }
    while (p->reqs) {
        status_req *q = p->reqs;
        tempest_status_fn *fn = q->fn;
        void *arg = q->arg;
        req_free(q);
        fn(node, TEMPEST_ECANCELED, NULL, arg);
    }
    while (p->members) {
        member *m = p->members;
        p->members = m->next;
        free(m);
    }
    event_free(p->beat_ev);
    free(p->nodes);
    free(p->records);
    free(p);
    tp_node_set_state(node, &presence_service, NULL);
}
