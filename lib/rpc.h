/* SPDX-License-Identifier: MIT */
/*
 * The requester and responder's private header. lib/services.c only
 * attaches them to a node; the three files share the rest, and form a
 * stack: lib/rpc_requester.c (calls, peers, direct calls and the node's
 * share of RPC) uses neither of the others, lib/rpc_registry.c (the
 * service registry in Redis, discovery, tempest_requester_new) uses the
 * requester's peers, and lib/rpc_responder.c (requests and the `RPC`
 * command) uses the registry and the node's share.
 */
#ifndef TEMPEST_RPC_PRIV_H
#define TEMPEST_RPC_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include <tempest/rpc.h>

#include "node.h"

/* ---- attaching to a node (lib/services.c) ------------------------------ */

/** Attaches the node's share of RPC to a new node: its `stop` hook
 *  cancels the direct calls (TEMPEST_ECANCELED) and frees the share.
 *  Responders and requesters must be freed before (they are logged and
 *  left alone otherwise). Returns 0 or a negative TEMPEST_E code. */
int tp_rpc_attach(tempest_node *node);

/** Adds the `RPC <service> <type> <json>` command to a new node's listener
 *  commands: it replies at once with an error, or defers the reply to the
 *  responder's handler. `RPC <job_id> <json> [MORE|ERROR]` stays an answer
 *  to a job whose action is named RPC. Returns 0 or a negative TEMPEST_E
 *  code. */
int tp_responder_attach(tempest_node *node);

/* ---- the node's share (lib/rpc_requester.c) ---------------------------- */

typedef struct tp_rpc {
    tempest_responder *responders; /* creation order */
    tp_map requesters;             /* serial -> requester, for registry replies */
    long long next_serial;
    tempest_requester *direct; /* tempest_call's requesters, one per address */
    long long next_call;       /* ids of direct calls, shared by all addresses */
} tp_rpc;

/** The node's share, or NULL before its first use. */
tp_rpc *tp_rpc_get(const tempest_node *node);

/** The node's share, made on first use; NULL when out of memory. */
tp_rpc *tp_rpc_of(tempest_node *node);

/* ---- the responder (lib/rpc_responder.c) ------------------------------- */

typedef struct handler handler;

struct tempest_responder {
    tempest_node *node;
    tempest_responder *next; /* the node's list */
    char *service, *ns;
    char *key;     /* tempest:<ns>:svc:<service> */
    char *channel; /* <key>:events */
    char *join_msg, *leave_msg;
    int ttl_ms, heartbeat_ms;
    handler *handlers;
    size_t nhandlers;
    tempest_request *head, *tail;   /* not yet answered */
    tempest_request *qhead, *qtail; /* not yet handed to a handler */
    struct event *dispatch_ev;
    unsigned long long served, errors; /* errors: error replies of its handlers */
    int in_flight;                     /* requests not yet answered */
    bool joined;                       /* in the node's presence (its heartbeat) */
    int depth;
    bool freeing;
};

/* ---- the requester (lib/rpc_requester.c) ------------------------------- */

typedef struct peer {
    tempest_requester *owner;
    char *addr;
    redisAsyncContext *ac; /* NULL while down */
    bool up;               /* connected: takes calls unless gone */
    bool gone;             /* left the registry: no new calls; closed when idle */
    bool seen;             /* in the registry read being applied */
    int inflight;          /* reply callbacks hiredis still owes */
    unsigned long epoch;   /* the requester's epoch when last announced */
} peer;

typedef struct call call;

typedef struct call_list {
    call *head, *tail;
    int len;
} call_list;

struct tempest_requester {
    tempest_node *node;
    long long serial; /* key in the node's table; 0 for a direct requester */
    char *service, *key, *channel;
    int timeout_ms, max_queued, refresh_ms;
    const struct timeval *common_timeout; /* timeout_ms as a common timeout, or NULL */
    tempest_peer_fn *on_peer;
    void *peer_arg;
    bool direct;                    /* tempest_call: one fixed peer, no discovery */
    bool connect_failed;            /* direct: fail the waiting calls */
    tempest_requester *next_direct; /* the node's list of direct requesters */
    peer **peers;
    int npeers, rr;
    tp_map calls;      /* id -> call, every call not yet answered */
    long long next_id; /* unless direct: the node's counter */
    call_list queue;   /* waiting for a live responder */
    call_list failed;  /* connection lost: retry or fail, from `kick` */
    tempest_subscriber *sub;
    char *ns;
    unsigned long long answered, failures; /* counters for the presence record */
    bool joined;
    struct event *poll, *kick;
    bool polled, polling;
    long long poll_sent;      /* monotonic ms */
    unsigned long epoch;      /* announcements received */
    unsigned long poll_epoch; /* `epoch` when the registry read in flight was sent */
    int depth;
    bool freeing;
};

/** A requester without discovery: options, events, the kick; NULL when
 *  out of memory. */
tempest_requester *tp_requester_alloc(tempest_node *node, const tempest_requester_options *o);

/** Cancels the calls (TEMPEST_ECANCELED), closes the peers and frees `q`;
 *  NULL does nothing. */
void tp_requester_destroy(tempest_requester *q);

/** Around an application callback of `q`; leave returns true when the
 *  requester (or the node) was freed meanwhile. */
void tp_requester_enter(tempest_requester *q);
bool tp_requester_leave(tempest_requester *q);

/** The peer of `q` at `addr`, or NULL. */
peer *tp_peer_find(const tempest_requester *q, const char *addr);

/** Adds a peer and starts connecting to it; NULL when out of memory. */
peer *tp_peer_add(tempest_requester *q, const char *addr);

/** Connects `p` (the connection completes on the loop); 0 or
 *  TEMPEST_EDOWN when the address cannot be used. */
int tp_peer_connect(peer *p);

/** Closes and frees the peer at index `at` of `q`. */
void tp_peer_remove(tempest_requester *q, int at);

/* ---- the registry (lib/rpc_registry.c) ---------------------------------- */

/** `fmt` (two %s) filled with `a` and `b`, allocated; NULL when out of
 *  memory. */
char *tp_rpc_joinf(const char *fmt, const char *a, const char *b);

/** Writes (or refreshes) the responder's entry, announcing it when it was
 *  absent or expired; best effort. */
void tp_registry_advertise(tempest_responder *r);

/** Turns the responder's entry into a tombstone and announces its leave;
 *  best effort. */
void tp_registry_withdraw(tempest_responder *r);

/** `{"event": <event>, "address": <address>}`, allocated; NULL when out of
 *  memory. */
char *tp_registry_announcement(const char *event, const char *address);

#endif
