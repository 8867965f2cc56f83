/* SPDX-License-Identifier: MIT */
/*
 * The Redis Cluster implementation of a tp_redis (redis+cluster://): the
 * slot map (CLUSTER SLOTS, asked of a seed, then of any master), one
 * managed connection (lib/redis_conn.c: AUTH, SCRIPT LOAD, reconnect; no
 * SELECT) per master, and the routing of each command to the master of
 * its key's slot. The key is argument 1, or the first key of EVAL/EVALSHA;
 * commands without one (PING, TIME, PUBLISH, SUBSCRIBE...) go to the "home"
 * master, the same one as long as it stays a master (a subscription lives
 * on its connection), and WAIT to the node the previous command went to.
 *
 * Each command is a request that owns its RESP text until its final reply:
 * MOVED updates the slot's entry (and refreshes the whole map when it names
 * an unknown node) and resends; ASK sends ASKING then the command to the
 * named node, once per redirect; TRYAGAIN and CLUSTERDOWN wait 10 ms,
 * doubling up to 200 ms, and resend. A request gives up after MAX_TRIES
 * redirects and waits, with the last error. A NULL reply (a connection
 * lost) is passed on: the command may have run, so it is never resent.
 * A master's connection going down takes the handle DOWN and refreshes the
 * map (a failover moves its slots to another node). The handle's state is
 * what this file reports to it (reported); the hash slots of keys are
 * lib/cluster.c's.
 */
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cluster.h"
#include "redis_ops.h"
#include "scripts.h"

typedef struct tp_cluster tp_cluster;

enum {
    MAX_NODES = 128, /* masters of one cluster we keep connections to */
    MAX_TRIES = 40,  /* redirects and waits of one command */
    WAIT_MIN_MS = 10,
    WAIT_MAX_MS = 200,
};

typedef struct cnode {
    char *host;
    int port;
    tp_redis_conn *r;
} cnode;

typedef struct creq {
    struct creq *prev, *next;
    tp_cluster *cl; /* NULL once the cluster was freed (a reply still due) */
    redisCallbackFn *fn;
    void *privdata;
    char *cmd;
    size_t len;
    int slot; /* -1: no key */
    bool wait;
    int tries;
    struct event *timer; /* parked: sent again when it fires */
} creq;

struct tp_cluster {
    tp_redis_link link;               /* fake.data: its handle is the tp_redis */
    tp_redis_conn_state_fn *state_fn; /* tells the handle */
    void *state_arg;
    int reported;                   /* the state last told to the handle */
    char shas[TP_SCRIPT_COUNT][41]; /* as the last master that came UP loaded them */
    struct event_base *base;
    const tp_logger *log;
    tp_redis_url url; /* user and password; the seeds */
    tp_redis_timing timing;
    redisAsyncContext fake; /* what callbacks get: fake.data is &link */
    cnode nodes[MAX_NODES];
    int nnodes;
    int16_t slots[TP_CLUSTER_SLOTS]; /* index in nodes, -1: unknown */
    bool mapped;                     /* a slot map was applied */
    tp_redis_conn *home;             /* keyless commands and subscriptions */
    tp_redis_conn *last;             /* where the previous command went (WAIT) */
    tp_redis_conn *seed;             /* asking a seed while no master can be */
    char *seed_host;
    int seed_port, seed_next;
    struct event *seed_ev; /* the next seed (out of the seed's own callback) */
    bool refreshing, refresh_again;
    long long refresh_ms;     /* when the CLUSTER SLOTS in flight was sent */
    struct event *refresh_ev; /* a refresh after a failed one */
    tp_redis_conn **dead;     /* connections of former masters, freed from reap_ev */
    int ndead;
    struct event *reap_ev;
    struct event *state_ev;  /* tells the handle's owner, out of our callbacks */
    char why[300];           /* why the cluster is down */
    bool cycle;              /* DOWN then UP: the home master changed */
    creq *reqs;              /* in flight or parked */
    redisCallbackFn *sub_fn; /* the callback of subscriptions */
    void *sub_priv;
    bool up;
};

/* What a callback gets once the cluster is gone: tp_redis_from() is NULL. */
static redisAsyncContext orphan;

static void refresh(tp_cluster *cl);
static void send_req(creq *q);

static void arm(struct event *ev, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

/* ---- commands and their slots ---------------------------------------- */

/* The first `max` arguments of the RESP command `cmd`; returns their count
 * (at most `max`), or -1 when it is not a RESP array of bulk strings. */
static int resp_args(const char *cmd, size_t len, const char **v, size_t *l, int max) {
    const char *p = cmd, *end = cmd + len;
    char *e;
    if (p >= end || *p != '*')
        return -1;
    long n = strtol(p + 1, &e, 10);
    int k = 0;
    for (p = e + 2; k < n && k < max && p < end && *p == '$'; k++) {
        long m = strtol(p + 1, &e, 10);
        if (m < 0 || e + 2 + m > end)
            return -1;
        v[k] = e + 2;
        l[k] = (size_t)m;
        p = e + 2 + m + 2;
    }
    return k;
}

static bool is(const char *s, size_t n, const char *name) {
    return n == strlen(name) && strncasecmp(s, name, n) == 0;
}

enum { KEYED, KEYLESS, WAIT, SUBSCRIBE };

/* What kind of command `cmd` is; for KEYED, its slot. */
static int classify(const char *cmd, size_t len, int *slot) {
    const char *v[4];
    size_t l[4];
    int n = resp_args(cmd, len, v, l, 4);
    if (n < 1)
        return KEYLESS;
    if (is(v[0], l[0], "SUBSCRIBE") || is(v[0], l[0], "PSUBSCRIBE") ||
        is(v[0], l[0], "UNSUBSCRIBE") || is(v[0], l[0], "PUNSUBSCRIBE"))
        return SUBSCRIBE;
    if (is(v[0], l[0], "WAIT"))
        return WAIT;
    int k = 1;
    if (is(v[0], l[0], "EVAL") || is(v[0], l[0], "EVALSHA"))
        k = n == 4 && !(l[2] == 1 && v[2][0] == '0') ? 3 : 0;
    else if (is(v[0], l[0], "PUBLISH") || is(v[0], l[0], "PING") || is(v[0], l[0], "TIME") ||
             is(v[0], l[0], "INFO") || is(v[0], l[0], "SCRIPT") || is(v[0], l[0], "CLUSTER"))
        k = 0;
    if (k == 0 || k >= n)
        return KEYLESS;
    *slot = tp_cluster_slot(v[k], l[k]);
    return KEYED;
}

/* ---- nodes and state ------------------------------------------------- */

static int node_index(const tp_cluster *cl, const char *host, int port) {
    for (int i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].port == port && strcmp(cl->nodes[i].host, host) == 0)
            return i;
    return -1;
}

static int node_of(const tp_cluster *cl, const tp_redis_conn *r) {
    for (int i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].r == r)
            return i;
    return -1;
}

/* The handle's state changes from state_ev, never inside our callbacks
 * (the owner's callback may free the handle). */
static void set_up(tp_cluster *cl, bool up, const char *why) {
    if (up == cl->up)
        return;
    cl->up = up;
    if (!up)
        snprintf(cl->why, sizeof cl->why, "%s", why);
    tp_log(cl->log, up ? TEMPEST_LOG_DEBUG : TEMPEST_LOG_WARN, "redis cluster: %s",
           up ? "every master is connected" : why);
    event_active(cl->state_ev, EV_TIMEOUT, 0);
}

/* Tells the handle (last: its owner may free it, and us). */
static void report(tp_cluster *cl, int state, const char *why) {
    cl->reported = state;
    cl->state_fn(NULL, state, why, cl->state_arg);
}

static void on_state_ev(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tp_cluster *cl = arg;
    int now = cl->reported;
    if (cl->cycle && now == TEMPEST_NODE_UP) {
        cl->cycle = false;
        if (cl->up) /* UP again on the next turn (unless the owner frees us) */
            event_active(cl->state_ev, EV_TIMEOUT, 0);
        report(cl, TEMPEST_NODE_DOWN, "the master of subscriptions changed");
        return;
    }
    cl->cycle = false;
    if (cl->up && now != TEMPEST_NODE_UP)
        report(cl, TEMPEST_NODE_UP, NULL);
    else if (!cl->up && now == TEMPEST_NODE_UP)
        report(cl, TEMPEST_NODE_DOWN, cl->why);
    else if (!cl->up && now == TEMPEST_NODE_CONNECTING && cl->why[0])
        report(cl, TEMPEST_NODE_DOWN, cl->why);
}

/* Not UP yet, and why: a handle still CONNECTING becomes DOWN with that
 * reason (what tempest_node_errstr() and the examples print). */
static void note_why(tp_cluster *cl, const char *why) {
    if (cl->up)
        return;
    snprintf(cl->why, sizeof cl->why, "%s", why);
    event_active(cl->state_ev, EV_TIMEOUT, 0);
}

/* UP when the map is known and every master's connection is up. */
static void update_state(tp_cluster *cl, const char *why) {
    bool up = cl->mapped && cl->nnodes > 0;
    for (int i = 0; up && i < cl->nnodes; i++)
        up = tp_redis_conn_state(cl->nodes[i].r) == TEMPEST_NODE_UP;
    set_up(cl, up, why ? why : "a master is not connected");
}

static void on_conn_state(tp_redis_conn *r, int state, const char *reason, void *arg) {
    tp_cluster *cl = arg;
    if (r == cl->seed) {
        if (state == TEMPEST_NODE_UP)
            refresh(cl);
        else if (state == TEMPEST_NODE_DOWN && !evtimer_pending(cl->seed_ev, NULL))
            arm(cl->seed_ev, 0);
        if (state == TEMPEST_NODE_DOWN) {
            char why[300];
            snprintf(why, sizeof why, "seed %s:%d: %s", cl->seed_host ? cl->seed_host : "?",
                     cl->seed_port, reason ? reason : "down");
            note_why(cl, why);
        }
        return;
    }
    int i = node_of(cl, r);
    char why[300];
    snprintf(why, sizeof why, "master %s:%d: %s", i >= 0 ? cl->nodes[i].host : "?",
             i >= 0 ? cl->nodes[i].port : 0, reason ? reason : "down");
    for (int k = 0; state == TEMPEST_NODE_UP && k < TP_SCRIPT_COUNT; k++)
        memcpy(cl->shas[k], tp_redis_conn_sha(r, k), sizeof cl->shas[k]);
    if (state == TEMPEST_NODE_DOWN && i >= 0)
        refresh(cl);
    if (i >= 0)
        update_state(cl, why);
}

/* A connection to host:port (cluster_node: no SELECT). */
static tp_redis_conn *connect_node(tp_cluster *cl, const char *host, int port) {
    tp_redis_url u = {.host = (char *)host,
                      .port = port,
                      .user = cl->url.user,
                      .password = cl->url.password,
                      .cluster_node = true};
    tp_redis_conn_options o = {.url = &u,
                               .timing = &cl->timing,
                               .log = cl->log,
                               .state_fn = on_conn_state,
                               .arg = cl,
                               .handle = cl->link.handle};
    tp_redis_conn *r = tp_redis_conn_new(cl->base, &o);
    if (r != NULL)
        tp_redis_conn_start(r);
    return r;
}

/* Connects to the next seed (after a full round, after a pause). */
static void on_seed(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tp_cluster *cl = arg;
    if (cl->seed != NULL) {
        tp_log(cl->log, TEMPEST_LOG_WARN, "redis cluster: seed %s:%d: %s", cl->seed_host,
               cl->seed_port, tp_redis_conn_errstr(cl->seed));
        tp_redis_conn_free(cl->seed);
        cl->seed = NULL;
        if (cl->seed_next == 0) { /* every seed failed: wait, then again */
            arm(cl->seed_ev, cl->timing.reconnect_min_ms);
            return;
        }
    }
    const tp_redis_sentinel *s = &cl->url.seeds[cl->seed_next];
    cl->seed_next = (cl->seed_next + 1) % cl->url.nseeds;
    free(cl->seed_host);
    cl->seed_host = tp_strdup(s->host);
    cl->seed_port = s->port;
    cl->seed = cl->seed_host ? connect_node(cl, s->host, s->port) : NULL;
    if (cl->seed == NULL) /* no memory: try again later */
        arm(cl->seed_ev, 1000);
}

/* ---- the slot map ---------------------------------------------------- */

/* [start, end, [host, port, ...], ...]: fills the master's address. */
static bool slot_range(const redisReply *e, long long *from, long long *to, const char **host,
                       int *port) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER ||
        e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2 ||
        e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
        e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    *from = e->element[0]->integer;
    *to = e->element[1]->integer;
    *host = e->element[2]->element[0]->str;
    *port = (int)e->element[2]->element[1]->integer;
    return *from >= 0 && *from <= *to && *to<TP_CLUSTER_SLOTS && * port> 0 && *port < 65536;
}

/* The index of host:port in `nodes` (the new list), reusing the connection
 * of `old` or the seed, or opening one; -1 when out of room or memory. */
static int adopt(tp_cluster *cl, cnode *nodes, int *n, cnode *old, int nold, const char *host,
                 int port) {
    for (int i = 0; i < *n; i++)
        if (nodes[i].port == port && strcmp(nodes[i].host, host) == 0)
            return i;
    if (*n == MAX_NODES)
        return -1;
    cnode c = {.host = tp_strdup(host), .port = port};
    for (int i = 0; i < nold && c.host; i++)
        if (old[i].r && old[i].port == port && strcmp(old[i].host, host) == 0) {
            c.r = old[i].r;
            old[i].r = NULL;
        }
    if (c.r == NULL && cl->seed && strcmp(cl->seed_host, host) == 0 && port == cl->seed_port) {
        c.r = cl->seed;
        cl->seed = NULL;
    }
    if (c.r == NULL && c.host)
        c.r = connect_node(cl, host, port);
    if (c.r == NULL) {
        free(c.host);
        return -1;
    }
    nodes[*n] = c;
    return (*n)++;
}

/* A connection of a former master: freed from reap_ev, since freeing it
 * ends its pending commands, whose callbacks may free the handle. */
static void bury(tp_cluster *cl, tp_redis_conn *r) {
    tp_redis_conn **dead = tp_realloc(cl->dead, (size_t)(cl->ndead + 1) * sizeof *dead);
    if (cl->last == r)
        cl->last = NULL;
    if (dead == NULL) { /* no memory: free it now rather than leak it */
        tp_redis_conn_free(r);
        return;
    }
    cl->dead = dead;
    cl->dead[cl->ndead++] = r;
    event_active(cl->reap_ev, EV_TIMEOUT, 0);
}

static void on_reap(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    tp_cluster *cl = arg;
    tp_redis_conn **dead = cl->dead;
    int n = cl->ndead;
    cl->dead = NULL;
    cl->ndead = 0;
    for (int i = 0; i < n; i++) /* may run callbacks that free `cl`: no use of it here */
        tp_redis_conn_free(dead[i]);
    free(dead);
}

/* Replaces the map with CLUSTER SLOTS' reply (asked of `from_host`). */
static bool apply_map(tp_cluster *cl, const redisReply *rep, const char *from_host) {
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0)
        return false;
    cnode nodes[MAX_NODES], old[MAX_NODES];
    int n = 0, nold = cl->nnodes;
    memcpy(old, cl->nodes, sizeof old);
    int16_t slots[TP_CLUSTER_SLOTS];
    memset(slots, 0xff, sizeof slots);
    for (size_t i = 0; i < rep->elements; i++) {
        long long a, b;
        const char *host;
        int port, k;
        if (!slot_range(rep->element[i], &a, &b, &host, &port))
            continue;
        if (*host == '\0' || strcmp(host, "?") == 0)
            host = from_host; /* the node asked does not know its own address */
        if ((k = adopt(cl, nodes, &n, old, nold, host, port)) < 0)
            continue;
        for (long long s = a; s <= b; s++)
            slots[s] = (int16_t)k;
    }
    if (n == 0)
        return false; /* (adopt took nothing from `old`) */
    bool home_kept = false;
    for (int i = 0; i < n; i++)
        home_kept |= nodes[i].r == cl->home;
    memcpy(cl->nodes, nodes, (size_t)n * sizeof *nodes);
    cl->nnodes = n;
    memcpy(cl->slots, slots, sizeof slots);
    cl->mapped = true;
    for (int i = 0; i < nold; i++) { /* masters no longer in the map */
        if (old[i].r)
            bury(cl, old[i].r);
        free(old[i].host);
    }
    if (!home_kept) { /* subscriptions were on it: the owner must make them again */
        cl->cycle = cl->home != NULL;
        cl->home = cl->nodes[0].r;
        if (cl->cycle)
            event_active(cl->state_ev, EV_TIMEOUT, 0);
    }
    return true;
}

static const char *host_of(const tp_cluster *cl, const tp_redis_conn *r) {
    int i = node_of(cl, r);
    return i >= 0 ? cl->nodes[i].host : cl->seed_host ? cl->seed_host : "";
}

static void on_slots(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    tp_redis_conn *r = tp_redis_conn_from(ac);
    const redisReply *rep = reply;
    if (r == NULL)
        return; /* the cluster is gone */
    tp_cluster *cl = tp_redis_conn_arg(r);
    cl->refreshing = false;
    char *from = tp_strdup(host_of(cl, r));
    bool ok = rep != NULL && from != NULL && apply_map(cl, rep, from);
    free(from);
    if (!ok) {
        char why[300];
        snprintf(why, sizeof why, "CLUSTER SLOTS failed: %s",
                 rep == NULL                      ? "connection lost"
                 : rep->type == REDIS_REPLY_ERROR ? rep->str
                                                  : "no slots");
        tp_log(cl->log, TEMPEST_LOG_WARN, "redis cluster: %s", why);
        note_why(cl, why);
        if (!evtimer_pending(cl->refresh_ev, NULL)) {
            arm(cl->refresh_ev, cl->timing.reconnect_min_ms);
        }
        return;
    }
    if (cl->seed != NULL) {
        bury(cl, cl->seed); /* not a master: the map's masters take over */
        cl->seed = NULL;
    }
    update_state(cl, NULL);
    if (cl->refresh_again) {
        cl->refresh_again = false;
        refresh(cl);
    }
}

/* Asks an UP master (else a seed) for the slot map; one request at a time. */
static void refresh(tp_cluster *cl) {
    /* A reply lost with its connection frees the turn after a while. */
    if (cl->refreshing && tp_now_ms() - cl->refresh_ms < cl->timing.connect_timeout_ms) {
        cl->refresh_again = true;
        return;
    }
    tp_redis_conn *r =
        cl->seed && tp_redis_conn_state(cl->seed) == TEMPEST_NODE_UP ? cl->seed : NULL;
    for (int i = 0; r == NULL && i < cl->nnodes; i++)
        if (tp_redis_conn_state(cl->nodes[i].r) == TEMPEST_NODE_UP)
            r = cl->nodes[i].r;
    cl->refreshing = false;
    static const char slots[] = "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";
    if (r != NULL && tp_redis_conn_send(r, on_slots, NULL, slots, sizeof slots - 1) == 0) {
        cl->refreshing = true;
        cl->refresh_ms = tp_now_ms();
        return;
    }
    if (cl->seed == NULL && !evtimer_pending(cl->seed_ev, NULL))
        arm(cl->seed_ev, 0);
}

static void on_refresh(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    refresh(arg);
}

/* ---- requests -------------------------------------------------------- */

static void req_free(creq *q) {
    if (q->cl != NULL) {
        if (q->prev)
            q->prev->next = q->next;
        else
            q->cl->reqs = q->next;
        if (q->next)
            q->next->prev = q->prev;
    }
    if (q->timer)
        event_free(q->timer);
    free(q->cmd);
    free(q);
}

/* The final reply: the caller's callback runs, after the request is gone
 * (the callback may free the handle). */
static void deliver(creq *q, redisReply *rep) {
    redisAsyncContext *ac = q->cl ? &q->cl->fake : &orphan;
    redisCallbackFn *fn = q->fn;
    void *privdata = q->privdata;
    req_free(q);
    if (fn)
        fn(ac, rep, privdata);
}

static void fail(creq *q, const char *what) {
    char text[200];
    int n = snprintf(text, sizeof text, "%s", what);
    redisReply e = {.type = REDIS_REPLY_ERROR, .str = text, .len = (size_t)n};
    deliver(q, &e);
}

static void on_wait_over(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    send_req(arg);
}

/* Sends `q` again after a pause that doubles with its tries. */
static void park(creq *q, const char *why) {
    if (++q->tries > MAX_TRIES) {
        char text[200];
        snprintf(text, sizeof text, "%.150s (after %d tries)", why, MAX_TRIES);
        fail(q, text);
        return;
    }
    if (q->timer == NULL && (q->timer = evtimer_new(q->cl->base, on_wait_over, q)) == NULL) {
        fail(q, "ERR out of memory");
        return;
    }
    int ms = WAIT_MIN_MS << (q->tries < 6 ? q->tries - 1 : 5);
    ms = ms > WAIT_MAX_MS ? WAIT_MAX_MS : ms;
    arm(q->timer, ms);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends `q` to `r`, after ASKING when `asking`. */
static bool send_to(creq *q, tp_redis_conn *r, bool asking) {
    if (r == NULL || tp_redis_conn_state(r) != TEMPEST_NODE_UP)
        return false;
    if (asking && tp_redis_conn_send(r, NULL, NULL, "*1\r\n$6\r\nASKING\r\n", 16) != 0)
        return false;
    if (tp_redis_conn_send(r, on_reply, q, q->cmd, q->len) != 0)
        return false;
    q->cl->last = r;
    return true;
}

static void send_req(creq *q) {
    tp_cluster *cl = q->cl;
    tp_redis_conn *r = q->wait                   ? (cl->last ? cl->last : cl->home)
                       : q->slot < 0             ? cl->home
                       : cl->slots[q->slot] >= 0 ? cl->nodes[cl->slots[q->slot]].r
                                                 : NULL;
    if (send_to(q, r, false))
        return;
    char why[80];
    snprintf(why, sizeof why, "CLUSTERDOWN no connection to the master of slot %d", q->slot);
    refresh(cl);
    park(q, why); /* last: it may end the request, and its callback free us */
}

/* "MOVED 3999 127.0.0.1:6381": the node's index, or -1 (unknown node). */
static int redirect_target(tp_cluster *cl, const char *msg, redisAsyncContext *ac) {
    const char *addr = strchr(msg, ' ');
    addr = addr ? strchr(addr + 1, ' ') : NULL;
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (colon == NULL)
        return -1;
    char host[256];
    int n = (int)(colon - addr - 1);
    if (n <= 0) /* ":port": the node that answered */
        snprintf(host, sizeof host, "%s", host_of(cl, tp_redis_conn_from(ac)));
    else
        snprintf(host, sizeof host, "%.*s", n < 255 ? n : 255, addr + 1);
    return node_index(cl, host, atoi(colon + 1));
}

static bool prefix(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

/* Follows a redirect or waits; false when the error is the caller's. */
static bool redirected(creq *q, redisAsyncContext *ac, const redisReply *rep) {
    tp_cluster *cl = q->cl;
    bool moved = prefix(rep->str, "MOVED "), ask = prefix(rep->str, "ASK ");
    tp_log(cl->log, TEMPEST_LOG_DEBUG, "redis cluster: %s", rep->str);
    if (moved || ask) {
        int i = redirect_target(cl, rep->str, ac);
        if (i < 0 || q->tries >= MAX_TRIES) {
            if (i >= 0)
                return false;
            refresh(cl); /* a node we do not know: learn the new map */
            park(q, rep->str);
            return true;
        }
        q->tries++;
        if (moved && q->slot >= 0)
            cl->slots[q->slot] = (int16_t)i;
        if (!send_to(q, cl->nodes[i].r, ask))
            park(q, rep->str);
        return true;
    }
    if (prefix(rep->str, "TRYAGAIN") || prefix(rep->str, "CLUSTERDOWN")) {
        if (q->tries >= MAX_TRIES)
            return false;
        if (prefix(rep->str, "CLUSTERDOWN"))
            refresh(cl);
        park(q, rep->str);
        return true;
    }
    return false;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    creq *q = privdata;
    redisReply *rep = reply;
    if (q->cl != NULL && rep != NULL && rep->type == REDIS_REPLY_ERROR && redirected(q, ac, rep))
        return;
    deliver(q, rep);
}

/* Messages and confirmations of subscriptions (on the home connection). */
static void on_sub(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)privdata;
    tp_redis_conn *r = tp_redis_conn_from(ac);
    tp_cluster *cl = r ? tp_redis_conn_arg(r) : NULL;
    if (cl && cl->sub_fn)
        cl->sub_fn(&cl->fake, reply, cl->sub_priv);
}

/* The request owns a copy of the command (NUL-terminated, as hiredis wants). */
static int cluster_send(void *impl, redisCallbackFn *fn, void *privdata, const char *cmd,
                        size_t len) {
    tp_cluster *cl = impl;
    int slot = -1, kind = classify(cmd, len, &slot);
    if (kind == SUBSCRIBE) {
        if (cl->home == NULL)
            return TEMPEST_EDOWN;
        if (fn) {
            cl->sub_fn = fn;
            cl->sub_priv = privdata;
        }
        return tp_redis_conn_send(cl->home, on_sub, NULL, cmd, len);
    }
    creq *q = tp_calloc(1, sizeof *q);
    char *copy = q ? tp_malloc(len + 1) : NULL;
    if (copy == NULL) {
        free(q);
        return TEMPEST_ENOMEM;
    }
    memcpy(copy, cmd, len + 1);
    *q = (creq){.cl = cl,
                .fn = fn,
                .privdata = privdata,
                .cmd = copy,
                .len = len,
                .slot = slot,
                .wait = kind == WAIT,
                .next = cl->reqs};
    if (cl->reqs)
        cl->reqs->prev = q;
    cl->reqs = q;
    send_req(q);
    return 0;
}

static void cluster_flush(void *impl) {
    tp_cluster *cl = impl;
    for (int i = 0; i < cl->nnodes; i++)
        tp_redis_conn_flush(cl->nodes[i].r);
}

/* ---- life cycle ------------------------------------------------------ */

static int copy_seeds(tp_cluster *cl, const tp_redis_url *url) {
    cl->url.user = tp_strdup(url->user);
    cl->url.password = tp_strdup(url->password);
    cl->url.seeds = tp_calloc((size_t)url->nseeds, sizeof *cl->url.seeds);
    if ((url->user && !cl->url.user) || (url->password && !cl->url.password) || !cl->url.seeds)
        return TEMPEST_ENOMEM;
    for (; cl->url.nseeds < url->nseeds; cl->url.nseeds++) {
        tp_redis_sentinel *s = &cl->url.seeds[cl->url.nseeds];
        s->port = url->seeds[cl->url.nseeds].port;
        if ((s->host = tp_strdup(url->seeds[cl->url.nseeds].host)) == NULL)
            return TEMPEST_ENOMEM;
    }
    return 0;
}

static const char *cluster_sha(const void *impl, int script) {
    return ((const tp_cluster *)impl)->shas[script];
}

static void cluster_close(void *impl) {
    tp_cluster *cl = impl;
    cl->fake.data = NULL;
    while (cl->reqs) { /* parked ones end now; the others when their connection goes */
        creq *q = cl->reqs;
        cl->reqs = q->next;
        q->prev = q->next = NULL;
        bool parked = q->timer && evtimer_pending(q->timer, NULL);
        q->cl = NULL;
        if (parked)
            deliver(q, NULL);
    }
    tp_redis_conn_free(cl->seed);
    for (int i = 0; i < cl->nnodes; i++) {
        tp_redis_conn_free(cl->nodes[i].r);
        free(cl->nodes[i].host);
    }
    for (int i = 0; i < cl->ndead; i++)
        tp_redis_conn_free(cl->dead[i]);
    free(cl->dead);
    struct event *evs[] = {cl->seed_ev, cl->refresh_ev, cl->reap_ev, cl->state_ev};
    for (int i = 0; i < 4; i++)
        if (evs[i])
            event_free(evs[i]);
    free(cl->seed_host);
    tp_redis_url_clear(&cl->url);
    free(cl);
}

static void *cluster_open(struct event_base *base, const tp_redis_conn_options *o) {
    const tp_redis_url *url = o->url;
    tp_cluster *cl = tp_calloc(1, sizeof *cl);
    if (cl == NULL)
        return NULL;
    cl->link.handle = o->handle;
    cl->state_fn = o->state_fn;
    cl->state_arg = o->arg;
    cl->reported = TEMPEST_NODE_CONNECTING;
    cl->base = base;
    cl->log = o->log;
    cl->timing = *o->timing;
    cl->fake.data = &cl->link;
    memset(cl->slots, 0xff, sizeof cl->slots);
    cl->seed_ev = evtimer_new(base, on_seed, cl);
    cl->refresh_ev = evtimer_new(base, on_refresh, cl);
    cl->reap_ev = event_new(base, -1, 0, on_reap, cl);
    cl->state_ev = event_new(base, -1, 0, on_state_ev, cl);
    if (cl->seed_ev == NULL || cl->refresh_ev == NULL || cl->reap_ev == NULL ||
        cl->state_ev == NULL || url->nseeds < 1 || copy_seeds(cl, url) != 0) {
        cluster_close(cl);
        return NULL;
    }
    arm(cl->seed_ev, 0); /* never inside tp_redis_new */
    return cl;
}

const tp_redis_ops tp_redis_cluster_ops = {
    .open = cluster_open,
    .close = cluster_close,
    .send = cluster_send,
    .flush = cluster_flush,
    .sha = cluster_sha,
};
