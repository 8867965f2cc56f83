/* SPDX-License-Identifier: MIT */
/*
 * The handler of the Mongrel2 peer of the front benchmark: answers every
 * request with "Hello world!", like bench/evhttp_hello.c, over ZeroMQ.
 *
 *   m2_handler REQUESTS REPLIES
 *
 * REQUESTS is the handler's send_spec in Mongrel2's configuration (Mongrel2
 * binds it and pushes requests; this PULL socket connects to it), REPLIES
 * its recv_spec (Mongrel2 binds a SUB socket; this PUB socket connects).
 * A request is "SENDER CONN_ID PATH LEN:HEADERS,LEN:BODY,"; the answer is
 * "SENDER LEN:CONN_ID, " followed by the raw HTTP response. Mongrel2's own
 * messages (method "JSON", such as a disconnect notice) get no answer.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static const char response[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 13\r\n"
                               "\r\n"
                               "Hello world!\n";

static volatile sig_atomic_t stopping;

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

/* The next space-terminated field of [*p, end): its start and length. */
static int field(const char **p, const char *end, const char **start, size_t *len) {
    const char *sp = memchr(*p, ' ', (size_t)(end - *p));
    if (sp == NULL || sp == *p)
        return -1;
    *start = *p;
    *len = (size_t)(sp - *p);
    *p = sp + 1;
    return 0;
}

/* A netstring "LEN:DATA," at *p: its data and length; *p moves past it. */
static int netstring(const char **p, const char *end, const char **data, size_t *len) {
    size_t n = 0;
    const char *q = *p;
    while (q < end && *q >= '0' && *q <= '9' && n < ((size_t)1 << 40))
        n = n * 10 + (size_t)(*q++ - '0');
    if (q == *p || q >= end || *q != ':' || (size_t)(end - q - 1) < n + 1 || q[1 + n] != ',')
        return -1;
    *data = q + 1;
    *len = n;
    *p = q + 2 + n;
    return 0;
}

/* Whether Mongrel2's JSON headers say METHOD is "JSON" (its own messages). */
static int is_control(const char *headers, size_t len) {
    static const char key[] = "\"METHOD\":\"JSON\"";
    size_t k = sizeof key - 1;
    for (size_t i = 0; i + k <= len; i++)
        if (memcmp(headers + i, key, k) == 0)
            return 1;
    return 0;
}

/* Answers one request; 0 when answered or deliberately not, -1 when malformed. */
static int handle(void *replies, const char *msg, size_t size) {
    const char *p = msg, *end = msg + size, *sender, *conn, *path, *headers, *body;
    size_t sender_len, conn_len, path_len, headers_len, body_len;
    if (field(&p, end, &sender, &sender_len) != 0 || field(&p, end, &conn, &conn_len) != 0 ||
        field(&p, end, &path, &path_len) != 0 || netstring(&p, end, &headers, &headers_len) != 0 ||
        netstring(&p, end, &body, &body_len) != 0)
        return -1;
    if (is_control(headers, headers_len))
        return 0;
    char head[256];
    int n = snprintf(head, sizeof head, "%.*s %zu:%.*s, ", (int)sender_len, sender, conn_len,
                     (int)conn_len, conn);
    if (n < 0 || (size_t)n + sizeof response > sizeof head + 1 || sender_len > 100 || conn_len > 32)
        return -1;
    char out[sizeof head + sizeof response];
    memcpy(out, head, (size_t)n);
    memcpy(out + n, response, sizeof response - 1);
    if (zmq_send(replies, out, (size_t)n + sizeof response - 1, 0) < 0)
        return errno == EINTR ? 0 : -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: m2_handler REQUESTS REPLIES (ZeroMQ endpoints)\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_msg_recv returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    void *ctx = zmq_ctx_new();
    void *requests = zmq_socket(ctx, ZMQ_PULL);
    void *replies = zmq_socket(ctx, ZMQ_PUB);
    int linger = 0;
    zmq_setsockopt(requests, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(replies, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(requests, argv[1]) != 0 || zmq_connect(replies, argv[2]) != 0) {
        fprintf(stderr, "m2_handler: cannot connect: %s\n", zmq_strerror(errno));
        return 1;
    }
    printf("m2_handler ready: requests from %s, replies to %s\n", argv[1], argv[2]);
    fflush(stdout);

    unsigned long malformed = 0;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (!stopping) {
        if (zmq_msg_recv(&msg, requests, 0) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "m2_handler: receive: %s\n", zmq_strerror(errno));
            break;
        }
        if (handle(replies, zmq_msg_data(&msg), zmq_msg_size(&msg)) != 0 && malformed++ < 5)
            fprintf(stderr, "m2_handler: malformed request of %zu bytes\n", zmq_msg_size(&msg));
    }
    zmq_msg_close(&msg);
    zmq_close(requests);
    zmq_close(replies);
    zmq_ctx_term(ctx);
    return 0;
}
