/* SPDX-License-Identifier: MIT */
/*
 * The header deadline (see guard.h). Every connection's bufferevent is
 * made here and kept alive by an extra reference, so a periodic sweep can
 * look at it safely: evhttp frees a connection with bufferevent_free(),
 * which clears the bufferevent's callbacks; the sweep recognises that
 * before dropping its reference. A connection past its deadline is shut down at
 * the socket; evhttp then sees the end of file and frees it itself.
 */
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "guard.h"
#include "internal.h"

typedef struct guarded {
    struct tp_guard *guard;
    struct bufferevent *bev;
    long long deadline_ms;
    bool busy; /* a request is being answered */
} guarded;

struct tp_guard {
    struct event_base *base;
    int timeout_ms;
    tp_map conns; /* key: the bufferevent's address */
    struct event *sweep;
    size_t cut;
};

/* evhttp keeps its event callback on a connection's bufferevent in every
 * phase (it clears only the read callback while writing a reply), and
 * bufferevent_free() clears them all: so no event callback means freed. */
static bool gone(struct bufferevent *bev) {
    bufferevent_event_cb eventcb = NULL;
    bufferevent_getcb(bev, NULL, NULL, &eventcb, NULL);
    return eventcb == NULL;
}

/* Looks at every guarded connection: forgets the freed ones, cuts the
 * late ones. */
static void on_sweep(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    tp_guard *g = arg;
    long long now = tp_now_ms();
    size_t pos = 0;
    long long key;
    void *val;
    long long drop[64];
    int ndrop = 0;
    while (ndrop < 64 && tp_map_next(&g->conns, &pos, &key, &val)) {
        guarded *c = val;
        if (gone(c->bev)) {
            drop[ndrop++] = key;
        } else if (!c->busy && now > c->deadline_ms) {
            shutdown(bufferevent_getfd(c->bev), SHUT_RDWR);
            c->busy = true; /* cut once; evhttp frees it on its next read */
            g->cut++;
        }
    }
    for (int i = 0; i < ndrop; i++) {
        guarded *c = tp_map_del(&g->conns, drop[i]);
        bufferevent_decref(c->bev);
        free(c);
    }
}

static struct bufferevent *make_bev(struct event_base *base, void *arg) {
    tp_guard *g = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    guarded *c = bev ? tp_calloc(1, sizeof *c) : NULL;
    if (c == NULL || tp_map_put(&g->conns, (long long)(intptr_t)bev, c) != 0) {
        free(c); /* no memory: this connection goes unguarded */
        return bev;
    }
    bufferevent_incref(bev);
    c->guard = g;
    c->bev = bev;
    c->deadline_ms = tp_now_ms() + g->timeout_ms;
    return bev;
}

static guarded *find(tp_guard *g, struct evhttp_request *req) {
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    return bev ? tp_map_get(&g->conns, (long long)(intptr_t)bev) : NULL;
}

/* The reply was sent: the next request's deadline starts now. */
static void on_complete(struct evhttp_request *req, void *arg) {
    (void)req;
    guarded *c = arg;
    c->busy = false;
    c->deadline_ms = tp_now_ms() + c->guard->timeout_ms;
}

void tp_guard_request(tp_guard *g, struct evhttp_request *req) {
    guarded *c = g ? find(g, req) : NULL;
    if (c == NULL)
        return;
    c->busy = true;
    evhttp_request_set_on_complete_cb(req, on_complete, c);
}

bool tp_client_gone(int fd, struct event *watcher) {
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) {
        event_del(watcher);
        return false;
    }
    return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

size_t tp_guard_cut(const tp_guard *g) {
    return g ? g->cut : 0;
}

tp_guard *tp_guard_new(struct event_base *base, struct evhttp *http, int timeout_ms) {
    tp_guard *g = tp_calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->base = base;
    g->timeout_ms = timeout_ms;
    int step = timeout_ms / 4 > 50 ? timeout_ms / 4 : 50;
    struct timeval tv = {step / 1000, (step % 1000) * 1000};
    g->sweep = event_new(base, -1, EV_PERSIST, on_sweep, g);
    if (g->sweep == NULL || event_add(g->sweep, &tv) != 0) {
        tp_guard_free(g);
        return NULL;
    }
    evhttp_set_bevcb(http, make_bev, g);
    return g;
}

void tp_guard_free(tp_guard *g) {
    if (g == NULL)
        return;
    void *val;
    while ((val = tp_map_pop(&g->conns)) != NULL) {
        guarded *c = val;
        bufferevent_decref(c->bev);
        free(c);
    }
    tp_map_clear(&g->conns);
    if (g->sweep)
        event_free(g->sweep);
    free(g);
}
