/* SPDX-License-Identifier: MIT */
/*
 * The node listener's sockets: a RESP server on an evconnlistener and one
 * bufferevent per connection, whose bytes feed a protocol session
 * (lib/listener_session.c). A connection stops reading while its replies
 * pile up over max_buffered or its pending reply slots reach 1024, a
 * closing one stays until its replies are written, and connections past
 * max_connections are refused at once.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "listener_session.h"

#define CONN_SLICE ((size_t)4 << 10) /* socket input per feed: the backpressure grain */
#define DEFER_MAX ((size_t)1024)     /* pending reply slots before reads pause */

enum {
    CLOSE_TIMEOUT_SEC = 5, /* how long a closing connection may take to flush */
    ACCEPT_RETRY_USEC = 100000,
};

struct conn {
    tp_listener *l;
    struct bufferevent *bev;
    tp_session *s;
    struct conn *prev, *next;
    bool paused;  /* reading stopped while replies are over max_buffered */
    bool closing; /* reading stopped for good; freed once the replies are out */
};

struct tp_listener {
    struct event_base *base;
    struct evconnlistener *evl;
    struct event *retry;    /* re-enables accepting after an accept error */
    tp_listener_limits lim; /* lim.secret points to `secret` */
    char *secret;           /* the listener's copy, or NULL */
    tp_command_fn *fn;
    void *arg;
    struct conn *conns;
    int nconns;
    int port;
    long long next_id;
    int busy;     /* depth of session feeds on the stack (the callback may free us) */
    bool freeing; /* tp_listener_free was called while busy */
};

static void conn_free(struct conn *c) {
    tp_listener *l = c->l;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    l->nconns--;
    bufferevent_free(c->bev);
    tp_session_free(c->s);
    free(c);
}

static void listener_destroy(tp_listener *l) {
    if (l->evl != NULL)
        evconnlistener_free(l->evl);
    while (l->conns != NULL)
        conn_free(l->conns);
    if (l->retry != NULL)
        event_free(l->retry);
    tp_secret_free(l->secret);
    free(l);
}

/* Stops reading for good; frees the connection once its replies are written. */
static void conn_finish(struct conn *c) {
    struct timeval tv = {.tv_sec = CLOSE_TIMEOUT_SEC};
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 &&
        tp_session_deferred(c->s) == 0) {
        conn_free(c);
        return;
    }
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    bufferevent_set_timeouts(c->bev, NULL, &tv);
}

/* Feeds one chunk of buffered input to the session. */
static int conn_feed_chunk(struct conn *c) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
        return 0;
    size_t n = v.iov_len < CONN_SLICE ? v.iov_len : CONN_SLICE;
    int rc = tp_session_feed(c->s, v.iov_base, n, bufferevent_get_output(c->bev));
    evbuffer_drain(in, n);
    return rc;
}

/*
 * Feeds the buffered input until it is empty or the replies pile up over
 * max_buffered. May free `c`, and the listener when the command callback
 * freed it: callers must not touch either afterwards.
 */
static void conn_process(struct conn *c) {
    tp_listener *l = c->l;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    int rc = 0;
    l->busy++;
    while (rc == 0 && !c->paused && !l->freeing && evbuffer_get_length(in) > 0) {
        rc = conn_feed_chunk(c);
        if (rc == 0 && (evbuffer_get_length(out) > l->lim.max_buffered ||
                        tp_session_deferred(c->s) >= DEFER_MAX)) {
            c->paused = true;
            bufferevent_disable(c->bev, EV_READ);
        }
    }
    l->busy--;
    if (l->freeing) {
        if (l->busy == 0)
            listener_destroy(l);
        return;
    }
    if (rc != 0)
        conn_finish(c);
}

static void on_read(struct bufferevent *bev, void *arg) {
    (void)bev;
    conn_process(arg);
}

static void on_write(struct bufferevent *bev, void *arg) {
    struct conn *c = arg;
    size_t pending = evbuffer_get_length(bufferevent_get_output(bev));
    if (c->closing) {
        if (pending == 0 && tp_session_deferred(c->s) == 0)
            conn_free(c);
        return;
    }
    if (c->paused && pending <= c->l->lim.max_buffered / 2 &&
        tp_session_deferred(c->s) <= DEFER_MAX / 2) {
        c->paused = false;
        bufferevent_enable(bev, EV_READ);
        conn_process(c); /* what was read before the pause */
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
    struct conn *c = arg;
    (void)bev;
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !c->closing)
        conn_finish(c); /* a half-closed client still gets its replies */
    else
        conn_free(c);
}

static void set_nodelay(evutil_socket_t fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Takes over `fd` (closes it on failure). */
static void conn_new(tp_listener *l, evutil_socket_t fd) {
    struct conn *c = tp_calloc(1, sizeof *c);
    if (c == NULL || (c->s = tp_session_new(&l->lim, l->fn, l->arg)) == NULL)
        goto fail;
    c->bev = bufferevent_socket_new(l->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL)
        goto fail;
    fd = -1;
    c->l = l;
    c->s->id = ++l->next_id;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, l->lim.max_buffered / 2, 0);
    if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) != 0)
        goto fail;
    set_nodelay(bufferevent_getfd(c->bev));
    c->next = l->conns;
    if (l->conns != NULL)
        l->conns->prev = c;
    l->conns = c;
    l->nconns++;
    return;
fail:
    if (c != NULL && c->bev != NULL)
        bufferevent_free(c->bev);
    if (fd >= 0)
        evutil_closesocket(fd);
    if (c != NULL)
        tp_session_free(c->s);
    free(c);
}

static void refuse_connection(evutil_socket_t fd) {
    static const char msg[] = "-ERR max number of clients reached\r\n";
#ifdef MSG_NOSIGNAL
    (void)send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
#else
    (void)send(fd, msg, sizeof msg - 1, MSG_DONTWAIT);
#endif
    evutil_closesocket(fd);
}

static void on_accept(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg) {
    tp_listener *l = arg;
    (void)evl, (void)sa, (void)salen;
    if (l->nconns >= l->lim.max_connections)
        refuse_connection(fd);
    else
        conn_new(l, fd);
}

/* Out of descriptors, most likely: pause accepting instead of spinning. */
static void on_accept_error(struct evconnlistener *evl, void *arg) {
    tp_listener *l = arg;
    struct timeval tv = {.tv_usec = ACCEPT_RETRY_USEC};
    evconnlistener_disable(evl);
    evtimer_add(l->retry, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
    tp_listener *l = arg;
    (void)fd, (void)what;
    evconnlistener_enable(l->evl);
}

static int bound_port(struct evconnlistener *evl) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(evconnlistener_get_fd(evl), (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* Binds the first address `host` resolves to that accepts a bind. */
static int listener_bind(tp_listener *l, const char *host, int port, char *err, size_t errlen) {
    const unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host ? host : "*", gai_strerror(rc));
        return -1;
    }
    int saved = 0;
    for (struct addrinfo *ai = res; ai != NULL && l->evl == NULL; ai = ai->ai_next) {
        l->evl = evconnlistener_new_bind(l->base, on_accept, l, flags, -1, ai->ai_addr,
                                         (int)ai->ai_addrlen);
        saved = EVUTIL_SOCKET_ERROR();
    }
    freeaddrinfo(res);
    if (l->evl == NULL)
        snprintf(err, errlen, "cannot bind %s:%d: %s", host ? host : "*", port,
                 evutil_socket_error_to_string(saved));
    return l->evl != NULL ? 0 : -1;
}

tp_listener *tp_listener_new(struct event_base *base, const char *host, int port,
                             const tp_listener_limits *limits, tp_command_fn *fn, void *arg,
                             char *err, size_t errlen) {
    char scratch[8];
    if (err == NULL || errlen == 0)
        err = scratch, errlen = sizeof scratch;
    if (base == NULL || port < 0 || port > 65535) {
        snprintf(err, errlen, "invalid listener address (port %d)", port);
        return NULL;
    }
    tp_listener *l = tp_calloc(1, sizeof *l);
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    l->base = base;
    l->fn = fn;
    l->arg = arg;
    tp_limits_fill(&l->lim, limits);
    bool secret = l->lim.secret != NULL && l->lim.secret[0] != '\0';
    l->secret = secret ? tp_strdup(l->lim.secret) : NULL;
    l->lim.secret = l->secret;
    l->retry = evtimer_new(base, on_retry, l);
    if (l->retry == NULL || (secret && l->secret == NULL)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (listener_bind(l, host, port, err, errlen) != 0)
        goto fail;
    evconnlistener_set_error_cb(l->evl, on_accept_error);
    l->port = bound_port(l->evl);
    return l;
fail:
    listener_destroy(l);
    return NULL;
}

bool tp_host_is_loopback(const char *host) {
    char buf[INET6_ADDRSTRLEN];
    unsigned char a[16];
    size_t n = host != NULL ? strlen(host) : 0;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof buf) {
        memcpy(buf, host + 1, n - 2); /* [::1] */
        buf[n - 2] = '\0';
        host = buf;
    }
    if (host == NULL)
        return false;
    if (strcasecmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) != 1)
        return false;
    static const unsigned char v4mapped[12] = {[10] = 0xff, [11] = 0xff};
    static const unsigned char loop6[16] = {[15] = 1};
    return memcmp(a, loop6, 16) == 0 || (memcmp(a, v4mapped, 12) == 0 && a[12] == 127);
}

int tp_listener_port(const tp_listener *l) {
    return l != NULL ? l->port : -1;
}

int tp_listener_connections(const tp_listener *l) {
    return l != NULL ? l->nconns : 0;
}

void tp_listener_free(tp_listener *l) {
    if (l == NULL)
        return;
    if (l->busy == 0) {
        listener_destroy(l);
        return;
    }
    /* Called from the command callback: no further command runs; the feed
     * that is on the stack finishes the job (conn_process). */
    l->freeing = true;
    for (struct conn *c = l->conns; c != NULL; c = c->next)
        c->s->rc = -1;
}
