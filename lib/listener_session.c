/* SPDX-License-Identifier: MIT */
/*
 * The node listener's protocol core: a tp_session turns a client's bytes
 * into commands. Multibulk requests go through hiredis's redisReader with
 * object functions of our own that copy each argument into one arena per
 * request and enforce the limits; inline commands (a line that does not
 * start with '*') are split on blanks here. The session answers what an
 * ordinary Redis client sends on its own (the built-ins of
 * lib/listener_builtins.c) and hands every other command to the owner's
 * tp_command_fn, in request order; a command may defer its reply to a
 * slot, and the replies behind a pending slot are held so that they still
 * leave in request order. Any input that cannot be resynchronised gets one
 * -ERR and closes that connection only; the reader never buffers more than
 * max_request. With a shared secret, a session runs nothing but AUTH, QUIT
 * and HELLO until AUTH succeeds, under tighter limits (as Redis does for
 * clients that have not authenticated), and closes at the third wrong
 * secret.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <hiredis/hiredis.h>

#include "listener_session.h"

#if defined(__GNUC__)
#define LST_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define LST_PRINTF(f, a)
#endif

#if HIREDIS_MAJOR >= 1
typedef size_t array_count; /* hiredis 1.0 widened createArray's count */
#else
typedef int array_count;
#endif

#define DEFAULT_MAX_REQUEST ((size_t)64 << 20)
#define DEFAULT_MAX_BUFFERED ((size_t)1 << 20)
#define INLINE_MAX ((size_t)64 << 10)          /* longest inline command, as Redis */
#define FEED_SLICE ((size_t)16 << 10)          /* bytes handed to the reader at a time */
#define KEEP_BUFFER ((size_t)64 << 10)         /* larger per-request buffers are released */
#define PREAUTH_MAX_REQUEST ((size_t)16 << 10) /* a request before AUTH, as Redis */

enum {
    DEFAULT_MAX_ARGS = 1024,
    DEFAULT_MAX_CONNECTIONS = 1024,
    HEADER_MAX = 24,       /* "$", 20 digits, CRLF: a longer pending header is garbage */
    PREAUTH_MAX_ARGS = 10, /* arguments of a request before AUTH, as Redis */
};

static const char noauth_error[] = "NOAUTH Authentication required.";

/* ---- session state ---------------------------------------------------- */

/* A reply that may complete after later ones; `buf` holds it until then. */
struct tp_reply_slot {
    tp_reply_slot *next;
    tp_session *s; /* NULL once the session is gone: completing only frees */
    struct evbuffer *buf;
    bool done;
};

/* The session whose command fn is running on this thread (tp_listener_defer). */
static _Thread_local tp_session *dispatching;

void tp_limits_fill(tp_listener_limits *dst, const tp_listener_limits *src) {
    *dst = src != NULL ? *src : (tp_listener_limits){0};
    if (dst->max_request == 0)
        dst->max_request = DEFAULT_MAX_REQUEST;
    if (dst->max_buffered == 0)
        dst->max_buffered = DEFAULT_MAX_BUFFERED;
    if (dst->max_args <= 0)
        dst->max_args = DEFAULT_MAX_ARGS;
    if (dst->max_connections <= 0)
        dst->max_connections = DEFAULT_MAX_CONNECTIONS;
}

/* Sets the limits in force: the configured ones, capped before AUTH. */
static void session_limits(tp_session *s) {
    bool locked = tp_session_locked(s);
    s->max_request = s->lim.max_request;
    if (locked && s->max_request > PREAUTH_MAX_REQUEST)
        s->max_request = PREAUTH_MAX_REQUEST;
    s->max_args = s->lim.max_args;
    if (locked && s->max_args > PREAUTH_MAX_ARGS)
        s->max_args = PREAUTH_MAX_ARGS;
    s->inline_max = s->max_request < INLINE_MAX ? s->max_request : INLINE_MAX;
}

/* " before AUTH" while the tighter limits are in force, for error texts. */
static const char *limit_note(const tp_session *s) {
    return tp_session_locked(s) ? " before AUTH" : "";
}

/* Answers why the stream cannot go on; the session then refuses all input. */
static int session_fail(tp_session *s, struct evbuffer *out, const char *fmt, ...) LST_PRINTF(3, 4);

static struct evbuffer *reply_sink(tp_session *s, struct evbuffer *out);

static int session_fail(tp_session *s, struct evbuffer *out, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    out = reply_sink(s, out);
    if (out != NULL)
        tp_resp_error(out, msg);
    s->rc = -1;
    return -1;
}

static int grow(void **p, size_t n, size_t size) {
    if (n > SIZE_MAX / size)
        return -1;
    void *q = tp_realloc(*p, n * size);
    if (q == NULL)
        return -1;
    *p = q;
    return 0;
}

/* Makes room for `n` arguments. */
static int req_reserve(struct request *q, int n) {
    if (n <= q->cap)
        return 0;
    size_t cap = (size_t)n;
    if (grow((void **)&q->argv, cap, sizeof *q->argv) != 0 ||
        grow((void **)&q->lens, cap, sizeof *q->lens) != 0 ||
        grow((void **)&q->off, cap, sizeof *q->off) != 0)
        return -1;
    q->cap = n;
    return 0;
}

/* Copies one argument (and a NUL) to the arena; `len` is within max_request. */
static int arena_append(struct request *q, const char *buf, size_t len, size_t *off) {
    size_t need = q->arena_len + len + 1;
    if (need > q->arena_cap) {
        size_t cap = q->arena_cap * 2 > need ? q->arena_cap * 2 : need;
        if (cap < 256)
            cap = 256;
        if (grow((void **)&q->arena, cap, 1) != 0)
            return -1;
        q->arena_cap = cap;
    }
    *off = q->arena_len;
    memcpy(q->arena + q->arena_len, buf, len);
    q->arena[q->arena_len + len] = '\0';
    q->arena_len = need;
    return 0;
}

/* Forgets the last request; a large arena goes back to the allocator. */
static void req_done(struct request *q) {
    q->argc = q->got = 0;
    q->size = q->arena_len = 0;
    if (q->arena_cap > KEEP_BUFFER) {
        free(q->arena);
        q->arena = NULL;
        q->arena_cap = 0;
    }
}
/* ---- deferred replies ------------------------------------------------- */

static void slot_free(tp_reply_slot *slot) {
    evbuffer_free(slot->buf);
    free(slot);
}

/* Appends a slot: pending (a deferred reply) or done (replies held behind). */
static tp_reply_slot *slot_append(tp_session *s, bool done) {
    tp_reply_slot *slot = tp_calloc(1, sizeof *slot);
    if (slot == NULL || (slot->buf = evbuffer_new()) == NULL) {
        free(slot);
        return NULL;
    }
    slot->s = s;
    slot->done = done;
    if (s->tail != NULL)
        s->tail->next = slot;
    else
        s->head = slot;
    s->tail = slot;
    s->deferred += !done;
    return slot;
}

/* Where the next reply goes: `out` while nothing is pending, else held. */
static struct evbuffer *reply_sink(tp_session *s, struct evbuffer *out) {
    if (s->head == NULL)
        return out;
    if (s->tail->done)
        return s->tail->buf;
    tp_reply_slot *slot = slot_append(s, true);
    return slot != NULL ? slot->buf : NULL;
}

/* Writes out the completed replies at the head. */
static void session_flush(tp_session *s) {
    while (s->head != NULL && s->head->done) {
        tp_reply_slot *slot = s->head;
        s->head = slot->next;
        if (s->head == NULL)
            s->tail = NULL;
        if (s->out != NULL)
            evbuffer_add_buffer(s->out, slot->buf);
        slot_free(slot);
    }
}

/* Orphans the pending slots (their owners free them) and frees the rest. */
static void session_drop_slots(tp_session *s) {
    for (tp_reply_slot *slot = s->head, *next; slot != NULL; slot = next) {
        next = slot->next;
        slot->next = NULL;
        if (slot->done)
            slot_free(slot);
        else
            slot->s = NULL;
    }
    s->head = s->tail = NULL;
}

tp_reply_slot *tp_listener_defer(struct evbuffer *out) {
    tp_session *s = dispatching;
    if (s == NULL || out == NULL || out != s->dispatch_out || s->taken != NULL)
        return NULL;
    s->taken = slot_append(s, false);
    return s->taken;
}

bool tp_listener_peer(const struct evbuffer *out) {
    const tp_session *s = dispatching;
    return s == NULL || out != s->dispatch_out || s->peer;
}

/* The buffer a completion writes to: straight out at the head. */
static struct evbuffer *slot_target(tp_reply_slot *slot) {
    tp_session *s = slot->s;
    if (s == NULL)
        return NULL;
    return slot == s->head && s->out != NULL ? s->out : slot->buf;
}

/* A command fn running for the session holds the flush (it may be writing
 * into a held buffer); the dispatch flushes when it returns. */
static void slot_done(tp_reply_slot *slot) {
    tp_session *s = slot->s;
    if (s == NULL) {
        slot_free(slot);
        return;
    }
    slot->done = true;
    s->deferred--;
    if (s->dispatch_out == NULL)
        session_flush(s);
}

void tp_slot_reply_bulk(tp_reply_slot *slot, const char *buf, size_t len) {
    if (slot == NULL)
        return;
    struct evbuffer *out = slot_target(slot);
    if (out != NULL)
        tp_resp_bulk(out, buf, len);
    slot_done(slot);
}

void tp_slot_reply_error(tp_reply_slot *slot, const char *message) {
    if (slot == NULL)
        return;
    struct evbuffer *out = slot_target(slot);
    if (out != NULL)
        tp_resp_error(out, message);
    slot_done(slot);
}

void tp_slot_reply_status(tp_reply_slot *slot, const char *status) {
    if (slot == NULL)
        return;
    struct evbuffer *out = slot_target(slot);
    if (out != NULL)
        tp_resp_status(out, status);
    slot_done(slot);
}

bool tp_slot_alive(const tp_reply_slot *slot) {
    return slot != NULL && slot->s != NULL;
}

size_t tp_session_deferred(const tp_session *s) {
    return s != NULL ? s->deferred : 0;
}

/* ---- running a command ------------------------------------------------ */

/* What a session with a secret runs before AUTH succeeds. */
static bool allowed_locked(const char *name, size_t len) {
    return tp_word_is(name, len, "AUTH") || tp_word_is(name, len, "QUIT") ||
           tp_word_is(name, len, "HELLO");
}

static void unknown_command(struct evbuffer *out, const char *name, size_t len) {
    char shown[65];
    size_t n = len < sizeof shown - 1 ? len : sizeof shown - 1;
    for (size_t i = 0; i < n; i++)
        shown[i] = name[i] >= ' ' && name[i] < 127 ? name[i] : '?';
    shown[n] = '\0';
    tp_resp_errorf(out, "ERR unknown command '%s'", shown);
}

/* Calls the owner's command fn; it replies to `out` or takes a slot. */
static void call_command(tp_session *s, int argc, const char **argv, const size_t *lens,
                         struct evbuffer *out) {
    size_t before = evbuffer_get_length(out);
    tp_session *outer = dispatching;
    dispatching = s;
    s->dispatch_out = out;
    s->taken = NULL;
    s->fn(s->arg, argc, argv, lens, out);
    dispatching = outer;
    bool deferred = s->taken != NULL;
    s->taken = NULL;
    s->dispatch_out = NULL;
    if (!deferred && evbuffer_get_length(out) == before)
        tp_resp_error(out, "ERR the command gave no reply"); /* keeps the client in step */
    session_flush(s);
}

/* `<action> <job_id> <json> [FLAG]`: the shape of an answer to a job. */
static bool looks_like_answer(int argc, const char **argv, const size_t *lens) {
    if (argc != 3 && argc != 4)
        return false;
    if (lens[1] == 0 || lens[1] > 19)
        return false;
    for (size_t i = 0; i < lens[1]; i++)
        if (argv[1][i] < '0' || argv[1][i] > '9')
            return false;
    return argc == 3 || tp_word_is(argv[3], lens[3], "MORE") ||
           tp_word_is(argv[3], lens[3], "ERROR") || tp_word_is(argv[3], lens[3], "RAW") ||
           tp_word_is(argv[3], lens[3], "PROGRESS") || tp_word_is(argv[3], lens[3], "CHECK");
}

/* Runs one command; exactly one reply goes to `out` (or is held behind a
 * deferred one, or deferred itself). */
static void run_command(tp_session *s, int argc, const char **argv, const size_t *lens,
                        struct evbuffer *out) {
    out = reply_sink(s, out);
    if (out == NULL) {
        s->rc = -1; /* out of memory: the reply cannot be kept in order */
        return;
    }
    if (tp_session_locked(s) && !allowed_locked(argv[0], lens[0])) {
        tp_resp_error(out, noauth_error);
        return;
    }
    /* `<action> <job id> <json> [MORE|ERROR]` is an answer even when the
     * action is named like a built-in (a job called "echo" or "ping"):
     * no Redis client sends those commands with a number as second word.
     * AUTH keeps its meaning ("auth" is a reserved action name). */
    if (s->fn && looks_like_answer(argc, argv, lens) && !tp_word_is(argv[0], lens[0], "AUTH")) {
        call_command(s, argc, argv, lens, out);
        return;
    }
    tp_builtin_fn *builtin = tp_builtin_find(argv[0], lens[0]);
    if (builtin != NULL) {
        bool locked = tp_session_locked(s);
        int rc = builtin(s, argc, argv, lens, out);
        if (locked && !tp_session_locked(s))
            session_limits(s); /* authenticated: the configured limits now */
        if (rc != 0)
            s->rc = rc;
        return;
    }
    if (s->fn == NULL) {
        unknown_command(out, argv[0], lens[0]);
        return;
    }
    call_command(s, argc, argv, lens, out);
}

/* ---- multibulk requests through redisReader --------------------------- */

static void *refuse(tp_session *s, const char *fmt, ...) LST_PRINTF(2, 3);

/* Makes the reader stop with an error (it reports a NULL object as out of memory). */
static void *refuse(tp_session *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return NULL;
}

static char type_byte(int type) {
    switch (type) {
    case REDIS_REPLY_STRING:
        return '$';
    case REDIS_REPLY_ARRAY:
        return '*';
    case REDIS_REPLY_INTEGER:
        return ':';
    case REDIS_REPLY_STATUS:
        return '+';
    case REDIS_REPLY_ERROR:
        return '-';
    default:
        return '?';
    }
}

/*
 * hiredis 0.14 reads lengths with neither syntax nor overflow checks ("$1x"
 * reads as -1, a 20-digit length wraps around), so the header line whose CR
 * is at offset `cr` of the reader's buffer must spell `value` exactly, right
 * after its type byte or at the start of the buffer (the reader may have
 * discarded a type byte it had consumed).
 */
static bool header_is(const redisReader *r, size_t cr, long long value) {
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%lld", value);
    if (value < 0 || n <= 0 || (size_t)n > cr || cr + 2 > r->len)
        return false;
    size_t start = cr - (size_t)n;
    if (memcmp(r->buf + start, digits, (size_t)n) != 0 || memcmp(r->buf + cr, "\r\n", 2) != 0)
        return false;
    return start == 0 || r->buf[start - 1] == '$' || r->buf[start - 1] == '*';
}

/* A bulk string the reader found at `str`: "$<len>\r\n" before, CRLF after. */
static bool bulk_is_framed(const redisReader *r, const char *str, size_t len) {
    if (str < r->buf + 2 || str > r->buf + r->len || len > (size_t)(r->buf + r->len - str) ||
        (size_t)(r->buf + r->len - str) - len < 2)
        return false;
    if (str[len] != '\r' || str[len + 1] != '\n')
        return false;
    return len <= LLONG_MAX && header_is(r, (size_t)(str - r->buf) - 2, (long long)len);
}

static void *rd_array(const redisReadTask *task, array_count count) {
    tp_session *s = task->privdata;
    const redisReader *r = s->reader;
    struct request *q = &s->req;
    long long n = (long long)count;
    if (task->parent != NULL || task->type != REDIS_REPLY_ARRAY)
        return refuse(s, "ERR Protocol error: expected '$', got '%c'", type_byte(task->type));
    if (r->pos < 2 || !header_is(r, r->pos - 2, n))
        return refuse(s, "ERR Protocol error: invalid multibulk length");
    if (n < 1)
        return refuse(s, "ERR Protocol error: empty request");
    if (n > s->max_args)
        return refuse(s, "ERR Protocol error: %lld arguments, the limit is %d%s", n, s->max_args,
                      limit_note(s));
    if (req_reserve(q, (int)n) != 0)
        return refuse(s, "ERR out of memory");
    req_done(q);
    q->argc = (int)n;
    return s;
}

static void *rd_string(const redisReadTask *task, char *str, size_t len) {
    tp_session *s = task->privdata;
    struct request *q = &s->req;
    if (task->parent == NULL || task->type != REDIS_REPLY_STRING)
        return refuse(s, "ERR Protocol error: expected '$', got '%c'", type_byte(task->type));
    if (task->idx < 0 || task->idx >= q->argc || !bulk_is_framed(s->reader, str, len))
        return refuse(s, "ERR Protocol error: invalid bulk length");
    if (len > s->max_request - q->size)
        return refuse(s, "ERR Protocol error: request over the limit of %zu bytes%s",
                      s->max_request, limit_note(s));
    if (arena_append(q, str, len, &q->off[task->idx]) != 0)
        return refuse(s, "ERR out of memory");
    q->lens[task->idx] = len;
    q->size += len;
    q->got++;
    return s;
}

static void *rd_integer(const redisReadTask *task, long long value) {
    (void)value;
    return refuse(task->privdata, "ERR Protocol error: expected '$', got ':'");
}

static void *rd_nil(const redisReadTask *task) {
    if (task->parent == NULL)
        return refuse(task->privdata, "ERR Protocol error: expected an array of bulk strings");
    return refuse(task->privdata, "ERR Protocol error: invalid bulk length");
}

/* Every object is the session itself: the request lives in s->req. */
static void rd_free(void *obj) {
    (void)obj;
}

static int reader_failed(tp_session *s, struct evbuffer *out) {
    const char *why = s->reader->errstr;
    if (s->err[0] != '\0')
        return session_fail(s, out, "%s", s->err);
    if (s->reader->err == REDIS_ERR_OOM)
        return session_fail(s, out, "ERR out of memory");
    if (strncmp(why, "Protocol error, ", 16) == 0)
        why += 16;
    return session_fail(s, out, "ERR Protocol error: %s", why);
}

/*
 * The length announced by the header the reader waits on (a bulk whose data
 * is incomplete: complete header lines never stay pending otherwise); -1
 * while the header is incomplete, -2 when the bytes cannot be a length.
 */
static long long pending_length(const char *p, size_t n) {
    size_t i = n > 0 && (p[0] == '$' || p[0] == '*');
    size_t first = i;
    long long v = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        if (v > (LLONG_MAX - 9) / 10)
            return LLONG_MAX;
        v = v * 10 + (p[i] - '0');
    }
    if (i == n || (p[i] == '\r' && i + 1 == n))
        return n < HEADER_MAX ? -1 : -2;
    return p[i] == '\r' && p[i + 1] == '\n' && i > first ? v : -2;
}

/*
 * Refuses to buffer a request over max_request, as soon as its header says
 * so. The reader's unparsed bytes are one header and part of its data, so
 * they stay under max_request plus a header.
 */
static int check_pending(tp_session *s, struct evbuffer *out) {
    const redisReader *r = s->reader;
    size_t n = r->len - r->pos;
    size_t room = s->max_request - s->req.size;
    long long want = pending_length(r->buf + r->pos, n);
    if (want == -2)
        return session_fail(s, out, "ERR Protocol error: invalid length");
    if ((want >= 0 && (unsigned long long)want > room) || (n > HEADER_MAX && n - HEADER_MAX > room))
        return session_fail(s, out, "ERR Protocol error: request over the limit of %zu bytes%s",
                            s->max_request, limit_note(s));
    return 0;
}

static void run_request(tp_session *s, struct evbuffer *out) {
    struct request *q = &s->req;
    if (q->got != q->argc) { /* a reply type these object functions never see */
        session_fail(s, out, "ERR Protocol error: expected an array of bulk strings");
        return;
    }
    for (int i = 0; i < q->argc; i++)
        q->argv[i] = q->arena + q->off[i];
    run_command(s, q->argc, q->argv, q->lens, out);
    req_done(q);
}

/* ---- inline commands -------------------------------------------------- */

static bool is_blank(char c) {
    return c == ' ' || c == '\t';
}

/* Splits `line` (NUL-terminated, `len` bytes) on blanks in place; -1 over max_args. */
static int split_inline(tp_session *s, char *line, size_t len) {
    struct request *q = &s->req;
    char *p = line, *end = line + len;
    int argc = 0;
    while (p < end) {
        while (p < end && is_blank(*p))
            p++;
        if (p == end)
            break;
        if (argc == s->max_args || req_reserve(q, argc + 1) != 0)
            return -1;
        q->argv[argc] = p;
        while (p < end && !is_blank(*p))
            p++;
        q->lens[argc] = (size_t)(p - q->argv[argc]);
        argc++;
        *p++ = '\0'; /* a blank, or the NUL at end */
    }
    return argc;
}

static void run_inline(tp_session *s, struct evbuffer *out) {
    size_t len = s->line_len;
    if (len > 0 && s->line[len - 1] == '\r')
        len--;
    s->line[len] = '\0';
    int argc = len > s->inline_max ? -2 : split_inline(s, s->line, len);
    if (argc == -2)
        session_fail(s, out, "ERR Protocol error: too big inline request");
    else if (argc < 0)
        session_fail(s, out, "ERR Protocol error: too many arguments in inline request");
    else if (argc > 0) /* empty lines are ignored, as Redis does */
        run_command(s, argc, s->req.argv, s->req.lens, out);
    s->line_len = 0;
    if (s->line_cap > KEEP_BUFFER / 16) {
        free(s->line);
        s->line = NULL;
        s->line_cap = 0;
    }
}

static int line_append(tp_session *s, const char *p, size_t n) {
    size_t need = s->line_len + n + 1;
    if (need > s->line_cap) {
        size_t cap = s->line_cap * 2 > need ? s->line_cap * 2 : need;
        if (grow((void **)&s->line, cap < 128 ? 128 : cap, 1) != 0)
            return -1;
        s->line_cap = cap < 128 ? 128 : cap;
    }
    memcpy(s->line + s->line_len, p, n);
    s->line_len += n;
    return 0;
}

/*
 * Takes inline bytes up to and including the next '\n'; returns how many.
 * The line may hold inline_max bytes and its CR (run_inline checks the rest).
 */
static size_t inline_consume(tp_session *s, const char *p, size_t n, struct evbuffer *out) {
    const char *nl = memchr(p, '\n', n);
    size_t take = nl != NULL ? (size_t)(nl - p) : n;
    if (take > s->inline_max + 1 - s->line_len) {
        session_fail(s, out, "ERR Protocol error: too big inline request");
        return n;
    }
    if (line_append(s, p, take) != 0) {
        session_fail(s, out, "ERR out of memory");
        return n;
    }
    if (nl == NULL)
        return n;
    run_inline(s, out);
    s->mode = MODE_IDLE;
    return take + 1;
}

/* ---- feeding ---------------------------------------------------------- */

/*
 * The first byte of a request picks its kind: '*' a multibulk request, a
 * RESP type byte a bare value (a protocol error), anything else an inline
 * command. Returns false when the session failed.
 */
static bool start_request(tp_session *s, char first, struct evbuffer *out) {
    if (first == '*')
        s->mode = MODE_MULTI;
    else if (strchr("$:+-", first) != NULL && first != '\0')
        session_fail(s, out, "ERR Protocol error: expected '*', got '%c'", first);
    else
        s->mode = MODE_INLINE;
    return s->rc == 0;
}

/*
 * At a request boundary with bytes left in the reader (they followed a
 * multibulk request): runs the inline commands among them in place. True
 * when the next request is a multibulk one, for the reader.
 */
static bool take_leftover(tp_session *s, struct evbuffer *out) {
    redisReader *r = s->reader;
    while (s->rc == 0 && r->pos < r->len) {
        if (s->mode == MODE_IDLE && !start_request(s, r->buf[r->pos], out))
            return false;
        if (s->mode == MODE_MULTI)
            return true;
        r->pos += inline_consume(s, r->buf + r->pos, r->len - r->pos, out);
    }
    return false;
}

/* Runs every complete request in the reader, then checks what stays pending. */
static int drain_reader(tp_session *s, struct evbuffer *out) {
    while (s->rc == 0) {
        void *reply = NULL;
        if (s->mode != MODE_MULTI && !take_leftover(s, out))
            break;
        if (redisReaderGetReply(s->reader, &reply) != REDIS_OK)
            return reader_failed(s, out);
        if (reply == NULL)
            return check_pending(s, out);
        s->mode = MODE_IDLE;
        run_request(s, out);
    }
    return s->rc;
}

int tp_session_feed(tp_session *s, const char *buf, size_t len, struct evbuffer *out) {
    if (s == NULL || out == NULL)
        return -1;
    s->out = out;
    while (s->rc == 0 && len > 0) {
        if (s->mode == MODE_IDLE && !start_request(s, buf[0], out))
            break;
        size_t n = len < FEED_SLICE ? len : FEED_SLICE;
        if (s->mode == MODE_INLINE)
            n = inline_consume(s, buf, len, out);
        else if (redisReaderFeed(s->reader, buf, n) != REDIS_OK)
            return reader_failed(s, out);
        else
            drain_reader(s, out);
        buf += n;
        len -= n;
    }
    return s->rc;
}

tp_session *tp_session_new(const tp_listener_limits *limits, tp_command_fn *fn, void *arg) {
    tp_session *s = tp_calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    tp_limits_fill(&s->lim, limits);
    s->fns = (redisReplyObjectFunctions){.createString = rd_string,
                                         .createArray = rd_array,
                                         .createInteger = rd_integer,
                                         .createNil = rd_nil,
                                         .freeObject = rd_free};
    s->reader = redisReaderCreateWithFunctions(&s->fns);
    if (s->reader == NULL)
        goto fail;
    s->reader->privdata = s;
    s->fn = fn;
    s->arg = arg;
    s->id = 1;
    if (s->lim.secret != NULL && s->lim.secret[0] != '\0') {
        s->secret_len = strlen(s->lim.secret);
        if ((s->secret = tp_strdup(s->lim.secret)) == NULL)
            goto fail;
    }
    s->lim.secret = NULL; /* borrowed: only the copy is kept */
    session_limits(s);
    return s;
fail:
    if (s->reader != NULL)
        redisReaderFree(s->reader);
    free(s);
    return NULL;
}

void tp_secret_free(char *secret) {
    if (secret != NULL)
        explicit_bzero(secret, strlen(secret));
    free(secret);
}

void tp_session_free(tp_session *s) {
    if (s == NULL)
        return;
    session_drop_slots(s);
    redisReaderFree(s->reader);
    free(s->req.argv);
    free(s->req.lens);
    free(s->req.off);
    free(s->req.arena);
    free(s->line);
    free(s->name);
    tp_secret_free(s->secret);
    free(s);
}
