/* SPDX-License-Identifier: MIT */
/*
 * The baseline of the front benchmark: a bare evhttp server answering
 * every request with "Hello world!" from the loop, nothing else.
 *
 *   evhttp_hello [PORT]     (default 1338, bound to 127.0.0.1)
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static void hello(struct evhttp_request *req, void *arg) {
    (void)arg;
    struct evbuffer *body = evbuffer_new();
    evbuffer_add(body, "Hello world!\n", 13);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, 200, "OK", body);
    evbuffer_free(body);
}

static void on_signal(evutil_socket_t sig, short what, void *base) {
    (void)sig;
    (void)what;
    event_base_loopbreak(base);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 1338;
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
        fprintf(stderr, "evhttp_hello: cannot bind 127.0.0.1:%d\n", port);
        return 1;
    }
    evhttp_set_gencb(http, hello, NULL);
    struct event *sig = evsignal_new(base, SIGTERM, on_signal, base);
    event_add(sig, NULL);
    printf("evhttp_hello listening on http://127.0.0.1:%d\n", port);
    fflush(stdout);
    event_base_dispatch(base);
    event_free(sig);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
