/* SPDX-License-Identifier: MIT */
/*
 * SSE events: Redis stream ids, the messages of a channel and the
 * text/event-stream format they are written in. A message is decoded from
 * its pub/sub payload or its history entry by the same rules, so that the
 * two compare equal; each is written as `id:`, `event:` and `data:` lines,
 * with no raw CR reaching the stream. No I/O: the callers own the buffers.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse_internal.h"

static const char end_event[] = "event: end\ndata: \n\n";

bool tp_sse_id_parse(const char *s, size_t len, sse_id *id) {
    char buf[48], *end;
    if (len == 0 || len >= sizeof buf || s[0] < '0' || s[0] > '9')
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    unsigned long long ms = strtoull(buf, &end, 10), seq = 0;
    if (*end == '-') {
        if (end[1] < '0' || end[1] > '9')
            return false;
        seq = strtoull(end + 1, &end, 10);
    }
    if (*end != '\0' || errno == ERANGE)
        return false;
    *id = (sse_id){ms, seq};
    return true;
}

int tp_sse_id_cmp(sse_id a, sse_id b) {
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    return a.seq == b.seq ? 0 : a.seq < b.seq ? -1 : 1;
}

void tp_sse_id_format(sse_id id, char *buf, size_t len) {
    snprintf(buf, len, "%" PRIu64 "-%" PRIu64, id.ms, id.seq);
}

void tp_sse_msg_clear(sse_msg *m) {
    free((void *)m->event);
    free((void *)m->data);
    *m = (sse_msg){0};
}

int tp_sse_msg_copy(sse_msg *dst, const sse_msg *src) {
    char *event = src->event ? tp_strdup(src->event) : NULL;
    char *data = tp_malloc(src->len + 1);
    if ((src->event && event == NULL) || data == NULL) {
        free(event);
        free(data);
        return TEMPEST_ENOMEM;
    }
    if (src->len)
        memcpy(data, src->data, src->len);
    data[src->len] = '\0';
    *dst = (sse_msg){src->kind, event, data, src->len};
    return 0;
}

/* Decodes a payload by the rules of lib/pubsub.c, so that a history entry
 * and the notification of the same message compare equal. */
static int msg_decode(sse_msg *m, const char *payload, size_t len) {
    json_t *j = json_loadb(payload, len, JSON_ALLOW_NUL, NULL);
    size_t n = json_is_array(j) ? json_array_size(j) : 0;
    json_t *a = json_array_get(j, 0), *b = json_array_get(j, 1);
    bool strings = n >= 1 && n <= 2 && json_is_string(a) && (n == 1 || json_is_string(b));
    sse_msg view = {TEMPEST_SUB_RAW, NULL, payload, len};
    if (strings && n == 1 && strcmp(json_string_value(a), "$unsubscribe") == 0)
        view = (sse_msg){TEMPEST_SUB_END, NULL, NULL, 0};
    else if (strings && n == 1)
        view = (sse_msg){TEMPEST_SUB_MESSAGE, NULL, json_string_value(a), json_string_length(a)};
    else if (strings)
        view = (sse_msg){TEMPEST_SUB_MESSAGE, json_string_value(a), json_string_value(b),
                         json_string_length(b)};
    int rc = tp_sse_msg_copy(m, &view);
    json_decref(j);
    return rc;
}

bool tp_sse_msg_equal(const sse_msg *a, const sse_msg *b) {
    if (a->kind != b->kind || a->len != b->len || (a->event == NULL) != (b->event == NULL))
        return false;
    if (a->event && strcmp(a->event, b->event) != 0)
        return false;
    return a->len == 0 || memcmp(a->data, b->data, a->len) == 0;
}

/* One `data:` line per line of `s`; LF, CRLF and CR all end a line, so no
 * raw CR reaches the stream. */
static void put_data(struct evbuffer *out, const char *s, size_t len) {
    const char *end = s + len;
    for (;;) {
        const char *q = s;
        while (q < end && *q != '\n' && *q != '\r')
            q++;
        evbuffer_add(out, "data: ", 6);
        if (q > s)
            evbuffer_add(out, s, (size_t)(q - s));
        evbuffer_add(out, "\n", 1);
        if (q == end)
            return;
        s = q + (*q == '\r' && q + 1 < end && q[1] == '\n' ? 2 : 1);
    }
}

/* An event name on one line: CR and LF become spaces. */
static void put_name(struct evbuffer *out, const char *name) {
    evbuffer_add(out, "event: ", 7);
    for (const char *p = name; *p; p++)
        evbuffer_add(out, *p == '\r' || *p == '\n' ? " " : p, 1);
    evbuffer_add(out, "\n", 1);
}

void tp_sse_put_event(struct evbuffer *out, const sse_id *id, const sse_msg *m) {
    if (id) {
        char buf[48];
        tp_sse_id_format(*id, buf, sizeof buf);
        evbuffer_add_printf(out, "id: %s\n", buf);
    }
    if (m->kind == TEMPEST_SUB_END) {
        evbuffer_add(out, end_event, sizeof end_event - 1);
        return;
    }
    if (m->event)
        put_name(out, m->event);
    put_data(out, m->data, m->len);
    evbuffer_add(out, "\n", 1);
}

/* ---- history entries ------------------------------------------------ */

bool tp_sse_entry_id(const redisReply *e, sse_id *id) {
    return e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
           e->element[0]->type == REDIS_REPLY_STRING &&
           tp_sse_id_parse(e->element[0]->str, e->element[0]->len, id);
}

int tp_sse_entry_msg(const redisReply *e, sse_msg *m) {
    const redisReply *f = e->element[1];
    for (size_t i = 0; f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && k->len == 1 && k->str[0] == 'm' &&
            v->type == REDIS_REPLY_STRING)
            return msg_decode(m, v->str, v->len);
    }
    return -1;
}
