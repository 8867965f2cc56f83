/* SPDX-License-Identifier: MIT */
/*
 * Node listener: a RESP server on an evconnlistener and one bufferevent per
 * connection. A tp_session turns a client's bytes into commands: multibulk
 * requests go through hiredis's redisReader with object functions of our own
 * that copy each argument into one arena per request and enforce the limits;
 * inline commands (a line that does not start with '*') are split on blanks
 * here. The session answers what an ordinary Redis client sends on its own
 * and hands every other command to the owner's tp_command_fn, in request
 * order; a command may defer its reply to a slot, and the replies behind a
 * pending slot are held so that they still leave in request order. Any
 * input that cannot be resynchronised gets one -ERR and closes that
 * connection only; the reader never buffers more than max_request.
 * With a shared secret, a session runs nothing but AUTH, QUIT and HELLO
 * until AUTH succeeds, under tighter limits (as Redis does for clients that
 * have not authenticated), and closes at the third wrong secret.
 */
#include "internal.h"
#include "listener.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
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
#include <hiredis/hiredis.h>

#include <tempest/version.h>

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
#define CONN_SLICE ((size_t)4 << 10)           /* socket input per feed: the backpressure grain */
#define KEEP_BUFFER ((size_t)64 << 10)         /* larger per-request buffers are released */
#define PREAUTH_MAX_REQUEST ((size_t)16 << 10) /* a request before AUTH, as Redis */
#define DEFER_MAX ((size_t)1024)               /* pending reply slots before reads pause */

enum {
    DEFAULT_MAX_ARGS = 1024,
    DEFAULT_MAX_CONNECTIONS = 1024,
    HEADER_MAX = 24,       /* "$", 20 digits, CRLF: a longer pending header is garbage */
    CLOSE_TIMEOUT_SEC = 5, /* how long a closing connection may take to flush */
    ACCEPT_RETRY_USEC = 100000,
    PREAUTH_MAX_ARGS = 10, /* arguments of a request before AUTH, as Redis */
    AUTH_MAX_FAILURES = 3, /* wrong secrets before the connection is closed */
};

static const char noauth_error[] = "NOAUTH Authentication required.";
static const char wrongpass_error[] =
    "WRONGPASS invalid username-password pair or user is disabled.";
static const char nopass_error[] =
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?";

/* ---- RESP replies ----------------------------------------------------- */

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

static void resp_errorf(struct evbuffer *out, const char *fmt, ...) LST_PRINTF(2, 3);

static void resp_errorf(struct evbuffer *out, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tp_resp_error(out, msg);
}

/* ---- session state ---------------------------------------------------- */

enum session_mode {
    MODE_IDLE,   /* between requests; nothing of the next one seen */
    MODE_INLINE, /* part of an inline command is in `line` */
    MODE_MULTI,  /* the reader holds part of a multibulk request */
};

/* The command being built: argv/lens/off have room for `cap` arguments. */
struct request {
    int argc; /* elements announced (multibulk) or found (inline) */
    int got;  /* multibulk elements received */
    int cap;
    size_t size;       /* argument bytes received, <= max_request */
    const char **argv; /* filled just before dispatch */
    size_t *lens;
    size_t *off; /* multibulk: offset of each argument in `arena` */
    char *arena; /* multibulk arguments, each NUL-terminated */
    size_t arena_len;
    size_t arena_cap;
};

struct tp_session {
    tp_listener_limits lim; /* as configured; lim.secret is NULL (see secret) */
    size_t max_request;     /* the limits in force: tighter until AUTH succeeds */
    int max_args;
    size_t inline_max;
    char *secret; /* NULL: no AUTH needed */
    size_t secret_len;
    bool authed;
    bool peer;  /* the client said `TEMPEST PEER`: a libtempest worker */
    bool resp3; /* the client said `HELLO 3` */
    int auth_failures;
    tp_command_fn *fn;
    void *arg;
    redisReader *reader;
    redisReplyObjectFunctions fns; /* the reader keeps a pointer to it */
    enum session_mode mode;
    int rc;        /* 0, or 1 / -1 once the client quit / the stream broke: sticky */
    long long id;  /* CLIENT ID */
    char err[200]; /* why an object function refused (the reader says "Out of memory") */
    struct request req;
    char *line; /* the inline command being read, without its '\n' */
    size_t line_len;
    size_t line_cap;
    char *name; /* CLIENT SETNAME */
    size_t name_len;
    /* deferred replies in request order; the head, if any, is pending */
    tp_reply_slot *head, *tail;
    size_t deferred;               /* slots taken and not yet completed */
    struct evbuffer *out;          /* where held replies go: the latest feed's */
    struct evbuffer *dispatch_out; /* the `out` of the command fn running, or NULL */
    tp_reply_slot *taken;          /* the slot that command deferred to */
};

/* A reply that may complete after later ones; `buf` holds it until then. */
struct tp_reply_slot {
    tp_reply_slot *next;
    tp_session *s; /* NULL once the session is gone: completing only frees */
    struct evbuffer *buf;
    bool done;
};

/* The session whose command fn is running on this thread (tp_listener_defer). */
static _Thread_local tp_session *dispatching;

static void limits_fill(tp_listener_limits *dst, const tp_listener_limits *src) {
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

static bool session_locked(const tp_session *s) {
    return s->secret != NULL && !s->authed;
}

/* Sets the limits in force: the configured ones, capped before AUTH. */
static void session_limits(tp_session *s) {
    bool locked = session_locked(s);
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
    return session_locked(s) ? " before AUTH" : "";
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

/* ---- built-in commands ------------------------------------------------ */

typedef int builtin_fn(tp_session *s, int argc, const char **argv, const size_t *lens,
                       struct evbuffer *out);

static bool word_is(const char *arg, size_t len, const char *word) {
    return strlen(word) == len && strncasecmp(arg, word, len) == 0;
}

static int arity_error(struct evbuffer *out, const char *command) {
    resp_errorf(out, "ERR wrong number of arguments for '%s' command", command);
    return 0;
}

static bool is_integer(const char *arg, size_t len) {
    size_t i = len > 0 && arg[0] == '-';
    if (i == len || len > 20)
        return false;
    for (; i < len; i++)
        if (arg[i] < '0' || arg[i] > '9')
            return false;
    return true;
}

static int cmd_ping(tp_session *s, int argc, const char **argv, const size_t *lens,
                    struct evbuffer *out) {
    (void)s;
    if (argc > 2)
        return arity_error(out, "ping");
    if (argc == 2)
        tp_resp_bulk(out, argv[1], lens[1]);
    else
        tp_resp_status(out, "PONG");
    return 0;
}

static int cmd_echo(tp_session *s, int argc, const char **argv, const size_t *lens,
                    struct evbuffer *out) {
    (void)s;
    if (argc != 2)
        return arity_error(out, "echo");
    tp_resp_bulk(out, argv[1], lens[1]);
    return 0;
}

static const struct info_section {
    const char *name;
    const char *text;
} info_sections[] = {
    {.name = "Server",
     .text = "redis_version:7.0.0\r\n"
             "tempest_version:" TEMPEST_VERSION_STRING "\r\n"
             "tempest_features:raw,progress,cancel,check\r\n"
             "redis_mode:standalone\r\n"},
    {.name = "Persistence", .text = "loading:0\r\n"},
    {.name = "Replication", .text = "role:master\r\nconnected_slaves:0\r\n"},
};

static bool info_wanted(int argc, const char **argv, const size_t *lens, const char *name) {
    if (argc < 2)
        return true;
    for (int i = 1; i < argc; i++)
        if (word_is(argv[i], lens[i], name) || word_is(argv[i], lens[i], "all") ||
            word_is(argv[i], lens[i], "everything") || word_is(argv[i], lens[i], "default"))
            return true;
    return false;
}

static int cmd_info(tp_session *s, int argc, const char **argv, const size_t *lens,
                    struct evbuffer *out) {
    char text[1024];
    size_t len = 0;
    (void)s;
    for (size_t i = 0; i < sizeof info_sections / sizeof *info_sections; i++) {
        const struct info_section *sec = &info_sections[i];
        if (!info_wanted(argc, argv, lens, sec->name))
            continue;
        int n = snprintf(text + len, sizeof text - len, "%s# %s\r\n%s", len > 0 ? "\r\n" : "",
                         sec->name, sec->text);
        if (n < 0 || (size_t)n >= sizeof text - len)
            break;
        len += (size_t)n;
    }
    tp_resp_bulk(out, text, len);
    return 0;
}

static int cmd_select(tp_session *s, int argc, const char **argv, const size_t *lens,
                      struct evbuffer *out) {
    (void)s;
    if (argc != 2)
        return arity_error(out, "select");
    if (is_integer(argv[1], lens[1]))
        tp_resp_status(out, "OK");
    else
        tp_resp_error(out, "ERR invalid DB index");
    return 0;
}

/* Keeps a copy of the connection's name; -1 when out of memory. */
static int set_name(tp_session *s, const char *arg, size_t len) {
    char *name = NULL;
    if (len > 0 && (name = tp_malloc(len + 1)) == NULL)
        return -1;
    if (name != NULL)
        memcpy(name, arg, len + 1);
    free(s->name);
    s->name = name; /* an empty name clears it, as in Redis */
    s->name_len = len;
    return 0;
}

static int client_setname(tp_session *s, int argc, const char **argv, const size_t *lens,
                          struct evbuffer *out) {
    if (argc != 3)
        return arity_error(out, "client|setname");
    if (set_name(s, argv[2], lens[2]) != 0)
        tp_resp_error(out, "ERR out of memory");
    else
        tp_resp_status(out, "OK");
    return 0;
}

static void client_info(const tp_session *s, struct evbuffer *out) {
    char text[160];
    int n = snprintf(text, sizeof text, "id=%lld name=%.*s db=0 cmd=client\n", s->id,
                     s->name != NULL ? (int)(s->name_len < 64 ? s->name_len : 64) : 0,
                     s->name != NULL ? s->name : "");
    tp_resp_bulk(out, text, n > 0 && (size_t)n < sizeof text ? (size_t)n : 0);
}

static int cmd_client(tp_session *s, int argc, const char **argv, const size_t *lens,
                      struct evbuffer *out) {
    if (argc < 2)
        return arity_error(out, "client");
    const char *sub = argv[1];
    size_t n = lens[1];
    if (word_is(sub, n, "SETNAME"))
        return client_setname(s, argc, argv, lens, out);
    if (word_is(sub, n, "GETNAME") && s->name != NULL)
        tp_resp_bulk(out, s->name, s->name_len);
    else if (word_is(sub, n, "GETNAME") && s->resp3)
        evbuffer_add(out, "_\r\n", 3); /* RESP3's null */
    else if (word_is(sub, n, "GETNAME"))
        tp_resp_nil(out);
    else if (word_is(sub, n, "ID"))
        tp_resp_integer(out, s->id);
    else if (word_is(sub, n, "INFO") || word_is(sub, n, "LIST"))
        client_info(s, out);
    else
        tp_resp_status(out, "OK"); /* SETINFO, NO-EVICT, NO-TOUCH, TRACKING... */
    return 0;
}

static int cmd_quit(tp_session *s, int argc, const char **argv, const size_t *lens,
                    struct evbuffer *out) {
    (void)s, (void)argc, (void)argv, (void)lens;
    tp_resp_status(out, "OK");
    return 1;
}

static int cmd_command(tp_session *s, int argc, const char **argv, const size_t *lens,
                       struct evbuffer *out) {
    (void)s, (void)argc, (void)argv, (void)lens;
    evbuffer_add(out, "*0\r\n", 4);
    return 0;
}

/*
 * `TEMPEST PEER <version>`: the client is a libtempest peer and wants the
 * precise replies to its answers (docs/protocol.md, "Who is answering").
 * No Redis client sends TEMPEST on its own.
 */
static int cmd_tempest(tp_session *s, int argc, const char **argv, const size_t *lens,
                       struct evbuffer *out) {
    if (argc != 3 || !word_is(argv[1], lens[1], "PEER") || !is_integer(argv[2], lens[2]) ||
        argv[2][0] == '-' || (lens[2] == 1 && argv[2][0] == '0')) {
        tp_resp_error(out, "ERR usage: TEMPEST PEER <protocol version>");
        return 0;
    }
    s->peer = true;
    tp_resp_status(out, "OK");
    return 0;
}

static int cmd_ok(tp_session *s, int argc, const char **argv, const size_t *lens,
                  struct evbuffer *out) {
    (void)s, (void)argc, (void)argv, (void)lens;
    tp_resp_status(out, "OK");
    return 0;
}

/*
 * Compares in time that depends on the lengths only: every byte of the
 * longer string is visited, and a length difference is folded into the
 * result instead of returning early.
 */
static bool secret_equal(const char *want, size_t want_len, const char *got, size_t got_len) {
    size_t n = want_len > got_len ? want_len : got_len;
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = i < want_len ? (unsigned char)want[i] : 0;
        unsigned char b = i < got_len ? (unsigned char)got[i] : 0;
        diff |= (unsigned char)(a ^ b);
    }
    return (diff | (size_t)(want_len ^ got_len)) == 0;
}

/* Checks `pass` (zeroed once checked: it lives in the session's request
 * buffer) against the secret; a wrong one is counted. */
static bool auth_try(tp_session *s, char *pass, size_t len) {
    bool ok = s->secret != NULL && secret_equal(s->secret, s->secret_len, pass, len);
    explicit_bzero(pass, len);
    if (ok) {
        s->authed = true;
        session_limits(s);
    } else if (s->secret != NULL) {
        s->auth_failures++;
    }
    return ok;
}

/* After a wrong secret: the error, and -1 to close at the last one allowed. */
static int auth_refused(tp_session *s, struct evbuffer *out) {
    tp_resp_error(out, wrongpass_error);
    return s->auth_failures >= AUTH_MAX_FAILURES ? -1 : 0;
}

/* AUTH <secret> or AUTH <user> <secret> (the user is ignored). Returns -1
 * to close after the last allowed failure. */
static int cmd_auth(tp_session *s, int argc, const char **argv, const size_t *lens,
                    struct evbuffer *out) {
    if (argc != 2 && argc != 3)
        return arity_error(out, "auth");
    bool ok = auth_try(s, (char *)argv[argc - 1], lens[argc - 1]);
    if (s->secret == NULL) {
        tp_resp_error(out, nopass_error);
        return 0;
    }
    if (!ok)
        return auth_refused(s, out);
    tp_resp_status(out, "OK");
    return 0;
}

/* The server's map that HELLO replies, as a RESP3 map or a RESP2 array. */
static void hello_reply(const tp_session *s, struct evbuffer *out) {
    static const char *const text[][2] = {
        {"server", "redis"}, {"version", "7.0.0"}, {"mode", "standalone"}, {"role", "master"}};
    evbuffer_add(out, s->resp3 ? "%7\r\n" : "*14\r\n", s->resp3 ? 4 : 5);
    for (size_t i = 0; i < 2; i++) {
        tp_resp_bulk(out, text[i][0], strlen(text[i][0]));
        tp_resp_bulk(out, text[i][1], strlen(text[i][1]));
    }
    tp_resp_bulk(out, "proto", 5);
    tp_resp_integer(out, s->resp3 ? 3 : 2);
    tp_resp_bulk(out, "id", 2);
    tp_resp_integer(out, s->id);
    for (size_t i = 2; i < 4; i++) {
        tp_resp_bulk(out, text[i][0], strlen(text[i][0]));
        tp_resp_bulk(out, text[i][1], strlen(text[i][1]));
    }
    tp_resp_bulk(out, "modules", 7);
    evbuffer_add(out, "*0\r\n", 4);
}

/* The HELLO options after the version: AUTH <user> <pass>, SETNAME <name>.
 * Returns the index of SETNAME's name (0: none), or -1 after an error reply
 * (-2: close, the last wrong secret). */
static int hello_options(tp_session *s, int argc, const char **argv, const size_t *lens,
                         struct evbuffer *out) {
    int name = 0;
    for (int i = 2; i < argc; i++) {
        if (word_is(argv[i], lens[i], "AUTH") && i + 2 < argc) {
            i += 2;
            if (!auth_try(s, (char *)argv[i], lens[i]) && s->secret != NULL)
                return auth_refused(s, out) - 1;
        } else if (word_is(argv[i], lens[i], "SETNAME") && i + 1 < argc) {
            name = ++i;
        } else {
            resp_errorf(out, "ERR Syntax error in HELLO option '%.40s'", argv[i]);
            return -1;
        }
    }
    if (session_locked(s)) {
        tp_resp_error(out, "NOAUTH HELLO must be called with the client already authenticated, "
                           "otherwise the HELLO <proto> AUTH <user> <pass> option can be used");
        return -1;
    }
    return name;
}

/*
 * HELLO [protover [AUTH user pass] [SETNAME name]], as Redis 6+: the
 * connection speaks RESP2 or RESP3 from then on, and the reply is the
 * server's map. Clients that open with HELLO 3 (node-redis 5 and later do
 * by default, and do not fall back) stay on RESP3; every reply of ours is
 * the same in both protocols but the null of CLIENT GETNAME.
 */
static int cmd_hello(tp_session *s, int argc, const char **argv, const size_t *lens,
                     struct evbuffer *out) {
    long proto = s->resp3 ? 3 : 2;
    if (argc >= 2 && !is_integer(argv[1], lens[1])) {
        tp_resp_error(out, "ERR Protocol version is not an integer or out of range");
        return 0;
    }
    if (argc >= 2)
        proto = strtol(argv[1], NULL, 10);
    if (proto != 2 && proto != 3) {
        tp_resp_error(out, "NOPROTO unsupported protocol version");
        return 0;
    }
    int name = hello_options(s, argc, argv, lens, out);
    if (name < 0)
        return name == -2 ? -1 : 0;
    if (name > 0 && set_name(s, argv[name], lens[name]) != 0) {
        tp_resp_error(out, "ERR out of memory");
        return 0;
    }
    s->resp3 = proto == 3;
    hello_reply(s, out);
    return 0;
}

static const struct builtin {
    const char *name;
    builtin_fn *run;
} builtins[] = {
    {.name = "PING", .run = cmd_ping},       {.name = "ECHO", .run = cmd_echo},
    {.name = "INFO", .run = cmd_info},       {.name = "SELECT", .run = cmd_select},
    {.name = "CLIENT", .run = cmd_client},   {.name = "QUIT", .run = cmd_quit},
    {.name = "COMMAND", .run = cmd_command}, {.name = "HELLO", .run = cmd_hello},
    {.name = "READONLY", .run = cmd_ok},     {.name = "READWRITE", .run = cmd_ok},
    {.name = "AUTH", .run = cmd_auth},       {.name = "TEMPEST", .run = cmd_tempest},
};

/* What a session with a secret runs before AUTH succeeds. */
static bool allowed_locked(const char *name, size_t len) {
    return word_is(name, len, "AUTH") || word_is(name, len, "QUIT") || word_is(name, len, "HELLO");
}

static void unknown_command(struct evbuffer *out, const char *name, size_t len) {
    char shown[65];
    size_t n = len < sizeof shown - 1 ? len : sizeof shown - 1;
    for (size_t i = 0; i < n; i++)
        shown[i] = name[i] >= ' ' && name[i] < 127 ? name[i] : '?';
    shown[n] = '\0';
    resp_errorf(out, "ERR unknown command '%s'", shown);
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

/* Runs one command; exactly one reply goes to `out` (or is held behind a
 * deferred one, or deferred itself). */
static bool looks_like_answer(int argc, const char **argv, const size_t *lens) {
    if (argc != 3 && argc != 4)
        return false;
    if (lens[1] == 0 || lens[1] > 19)
        return false;
    for (size_t i = 0; i < lens[1]; i++)
        if (argv[1][i] < '0' || argv[1][i] > '9')
            return false;
    return argc == 3 || word_is(argv[3], lens[3], "MORE") || word_is(argv[3], lens[3], "ERROR") ||
           word_is(argv[3], lens[3], "RAW") || word_is(argv[3], lens[3], "PROGRESS") ||
           word_is(argv[3], lens[3], "CHECK");
}

static void run_command(tp_session *s, int argc, const char **argv, const size_t *lens,
                        struct evbuffer *out) {
    out = reply_sink(s, out);
    if (out == NULL) {
        s->rc = -1; /* out of memory: the reply cannot be kept in order */
        return;
    }
    if (session_locked(s) && !allowed_locked(argv[0], lens[0])) {
        tp_resp_error(out, noauth_error);
        return;
    }
    /* `<action> <job id> <json> [MORE|ERROR]` is an answer even when the
     * action is named like a built-in (a job called "echo" or "ping"):
     * no Redis client sends those commands with a number as second word.
     * AUTH keeps its meaning ("auth" is a reserved action name). */
    if (s->fn && looks_like_answer(argc, argv, lens) && !word_is(argv[0], lens[0], "AUTH")) {
        call_command(s, argc, argv, lens, out);
        return;
    }
    for (size_t i = 0; i < sizeof builtins / sizeof *builtins; i++) {
        if (word_is(argv[0], lens[0], builtins[i].name)) {
            int rc = builtins[i].run(s, argc, argv, lens, out);
            if (rc != 0)
                s->rc = rc;
            return;
        }
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
    limits_fill(&s->lim, limits);
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

static void secret_free(char *secret) {
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
    secret_free(s->secret);
    free(s);
}

/* ---- sockets ---------------------------------------------------------- */

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
    secret_free(l->secret);
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
    limits_fill(&l->lim, limits);
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
