/* SPDX-License-Identifier: MIT */
/*
 * An EventSource client in C, on libevent's HTTP client: it subscribes to a
 * Server-Sent Events URL (a Tempest front serves them at /sub/<channel>) and
 * prints one line per event, `<event>: <data>` (`message` when unnamed), as
 * the events arrive. Like a browser's EventSource it reconnects after the
 * server's `retry:` delay (3 s by default) with the last `Last-Event-ID`, and
 * gives up (exit 1) on a response that is not a 200 `text/event-stream`. It
 * exits 0 on the `end` event, after --max-events events, or on SIGINT/SIGTERM.
 *
 *   es_client [--max-events N] http://HOST[:PORT]/PATH
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "sse_parser.h"

#define DEFAULT_RETRY_MS 3000
#define IDLE_TIMEOUT_S 60 /* silence this long means a dead stream: reconnect */

typedef struct client {
    struct event_base *base;
    struct evhttp_connection *conn;
    sse_parser *parser;
    struct event *retry_timer, *sigint, *sigterm;
    char host[256];    /* the Host header */
    char target[2048]; /* path and query */
    long events, max_events;
    bool stopping;
    int status; /* exit status */
} client;

static void stop(client *c, int status) {
    c->stopping = true;
    c->status = status;
    event_base_loopbreak(c->base);
}

/* ---- events ------------------------------------------------------------- */

static void on_event(const sse_event *ev, void *arg) {
    client *c = arg;
    if (c->stopping)
        return;
    fwrite(ev->type, 1, ev->type_len, stdout);
    fputs(": ", stdout);
    fwrite(ev->data, 1, ev->data_len, stdout);
    putchar('\n');
    fflush(stdout);
    if (strcmp(ev->type, "end") == 0 || ++c->events == c->max_events)
        stop(c, 0);
}

/* ---- the HTTP response -------------------------------------------------- */

/* The MIME type's essence is text/event-stream (parameters may follow). */
static bool is_event_stream(const char *type) {
    static const char want[] = "text/event-stream";
    size_t n = sizeof want - 1;
    if (type == NULL)
        return false;
    type += strspn(type, " \t");
    return strncasecmp(type, want, n) == 0 &&
           (type[n] == '\0' || type[n] == ';' || type[n] == ' ' || type[n] == '\t');
}

/* As the standard says: anything but a 200 event stream fails the
 * connection for good. Returning -1 makes libevent close it. */
static int on_headers(struct evhttp_request *req, void *arg) {
    client *c = arg;
    int code = evhttp_request_get_response_code(req);
    const char *type = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    if (code != HTTP_OK)
        fprintf(stderr, "es_client: HTTP %d %s: giving up\n", code,
                evhttp_request_get_response_code_line(req));
    else if (!is_event_stream(type))
        fprintf(stderr, "es_client: Content-Type %s is not text/event-stream: giving up\n",
                type != NULL ? type : "(none)");
    else
        return 0;
    stop(c, 1);
    return -1;
}

static void on_chunk(struct evhttp_request *req, void *arg) {
    client *c = arg;
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    char buf[4096];
    int n;
    while (!c->stopping && (n = evbuffer_remove(body, buf, sizeof buf)) > 0) {
        if (sse_parser_feed(c->parser, buf, (size_t)n) != 0) {
            fprintf(stderr, "es_client: event stream: %s\n", strerror(errno));
            stop(c, 1);
        }
    }
}

/* The response ended (req), or the connection failed or closed (NULL, or a
 * request without a response code when the connect failed): try again. */
static void on_done(struct evhttp_request *req, void *arg) {
    client *c = arg;
    if (c->stopping)
        return;
    long ms = sse_parser_retry_ms(c->parser);
    if (ms < 0)
        ms = DEFAULT_RETRY_MS;
    const char *why = req == NULL                                  ? "connection lost"
                      : evhttp_request_get_response_code(req) == 0 ? "cannot connect"
                                                                   : "stream ended";
    fprintf(stderr, "es_client: %s; reconnecting in %ld ms\n", why, ms);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->retry_timer, &tv);
}

/* ---- the HTTP request --------------------------------------------------- */

static int request(client *c) {
    struct evhttp_request *req = evhttp_request_new(on_done, c);
    if (req == NULL)
        return -1;
    evhttp_request_set_header_cb(req, on_headers);
    evhttp_request_set_chunked_cb(req, on_chunk);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", c->host);
    evhttp_add_header(h, "Accept", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    const char *id = sse_parser_last_id(c->parser);
    if (*id != '\0')
        evhttp_add_header(h, "Last-Event-ID", id);
    sse_parser_reset(c->parser); /* a new stream */
    return evhttp_make_request(c->conn, req, EVHTTP_REQ_GET, c->target);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    client *c = arg;
    if (request(c) != 0) {
        fprintf(stderr, "es_client: cannot send the request\n");
        stop(c, 1);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)sig;
    (void)what;
    stop(arg, 0);
}

/* ---- setup -------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr, "usage: es_client [--max-events N] http://HOST[:PORT]/PATH\n");
    exit(2);
}

static const char *parse_args(int argc, char **argv, client *c) {
    static const struct option longopts[] = {
        {"max-events", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    for (int opt; (opt = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
        if (opt != 'm' || (c->max_events = atol(optarg)) <= 0)
            usage();
    }
    if (optind != argc - 1)
        usage();
    return argv[optind];
}

/* Connects the client to `url`'s host; fills the Host header and target. */
static int open_url(client *c, const char *url) {
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *scheme = uri != NULL ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri != NULL ? evhttp_uri_get_host(uri) : NULL;
    if (scheme == NULL || strcasecmp(scheme, "http") != 0 || host == NULL || *host == '\0') {
        fprintf(stderr, "es_client: %s: not an http:// URL\n", url);
        evhttp_uri_free(uri);
        return -1;
    }
    int port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
    const char *path = evhttp_uri_get_path(uri);
    const char *query = evhttp_uri_get_query(uri);
    snprintf(c->host, sizeof c->host, port == 80 ? "%s" : "%s:%d", host, port);
    snprintf(c->target, sizeof c->target, "%s%s%s", path != NULL && *path ? path : "/",
             query != NULL ? "?" : "", query != NULL ? query : "");
    /* An IPv6 literal comes bracketed; the connection wants it bare. */
    char bare[256];
    snprintf(bare, sizeof bare, "%.*s", (int)strlen(host) - (*host == '[' ? 2 : 0),
             host + (*host == '['));
    c->conn = evhttp_connection_base_new(c->base, NULL, bare, (unsigned short)port);
    evhttp_uri_free(uri);
    if (c->conn == NULL) {
        fprintf(stderr, "es_client: out of memory\n");
        return -1;
    }
    evhttp_connection_set_timeout(c->conn, IDLE_TIMEOUT_S);
    return 0;
}

/* Creates the loop, the parser, the retry timer, the signal events and the
 * connection; teardown() frees whatever was made. */
static int setup(client *c, const char *url) {
    if ((c->base = event_base_new()) == NULL ||
        (c->parser = sse_parser_new(&(sse_parser_callbacks){.on_event = on_event}, c, 0)) == NULL ||
        (c->retry_timer = evtimer_new(c->base, on_retry, c)) == NULL ||
        (c->sigint = evsignal_new(c->base, SIGINT, on_signal, c)) == NULL ||
        (c->sigterm = evsignal_new(c->base, SIGTERM, on_signal, c)) == NULL ||
        evsignal_add(c->sigint, NULL) != 0 || evsignal_add(c->sigterm, NULL) != 0) {
        fprintf(stderr, "es_client: out of memory\n");
        return -1;
    }
    return open_url(c, url);
}

static void free_event(struct event *ev) {
    if (ev != NULL)
        event_free(ev);
}

static void teardown(client *c) {
    if (c->conn != NULL)
        evhttp_connection_free(c->conn);
    free_event(c->sigint);
    free_event(c->sigterm);
    free_event(c->retry_timer);
    sse_parser_free(c->parser);
    if (c->base != NULL)
        event_base_free(c->base);
}

int main(int argc, char **argv) {
    client c = {.status = 1};
    const char *url = parse_args(argc, argv, &c);
    signal(SIGPIPE, SIG_IGN); /* a server that resets must not kill us */
    if (setup(&c, url) == 0) {
        if (request(&c) == 0)
            event_base_dispatch(c.base);
        else
            fprintf(stderr, "es_client: cannot send the request\n");
    }
    teardown(&c);
    return c.status;
}
