/* SPDX-License-Identifier: MIT */
/*
 * RESP replies: the tp_resp_* helpers (listener.h) with which every command
 * of the node listener, built in or not, appends its one reply. An error or
 * status reply stays on one line whatever its text holds.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "listener_session.h"

/* One line reply; CR and LF in `text` become spaces so the reply stays one line. */
static void resp_line(struct evbuffer *out, char type, const char *text) {
    evbuffer_add(out, &type, 1);
    while (*text != '\0') {
        size_t n = strcspn(text, "\r\n");
        evbuffer_add(out, text, n);
        text += n;
        if (*text != '\0') {
            evbuffer_add(out, " ", 1);
            text++;
        }
    }
    evbuffer_add(out, "\r\n", 2);
}

void tp_resp_status(struct evbuffer *out, const char *status) {
    resp_line(out, '+', status != NULL ? status : "");
}

void tp_resp_error(struct evbuffer *out, const char *message) {
    resp_line(out, '-', message != NULL ? message : "ERR");
}

void tp_resp_integer(struct evbuffer *out, long long value) {
    evbuffer_add_printf(out, ":%lld\r\n", value);
}

void tp_resp_bulk(struct evbuffer *out, const char *buf, size_t len) {
    evbuffer_add_printf(out, "$%zu\r\n", len);
    if (len > 0)
        evbuffer_add(out, buf, len);
    evbuffer_add(out, "\r\n", 2);
}

void tp_resp_nil(struct evbuffer *out) {
    evbuffer_add(out, "$-1\r\n", 5);
}

void tp_resp_errorf(struct evbuffer *out, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tp_resp_error(out, msg);
}
