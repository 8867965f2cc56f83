/* SPDX-License-Identifier: MIT */
/*
 * The node listener's built-in commands: what an ordinary Redis client
 * sends on its own (PING, ECHO, INFO, SELECT, CLIENT ..., QUIT, COMMAND,
 * HELLO, READONLY, READWRITE), AUTH, and TEMPEST PEER (a libtempest worker
 * saying who it is). A built-in changes only its session's own fields and
 * calls nothing of the protocol core (lib/listener_session.c), which finds
 * it by name, applies what it returns (go on, quit, close) and lifts the
 * session's limits once a built-in authenticated the client.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include <tempest/version.h>

#include "listener_session.h"

enum {
    AUTH_MAX_FAILURES = 3, /* wrong secrets before the connection is closed */
};

static const char wrongpass_error[] =
    "WRONGPASS invalid username-password pair or user is disabled.";
static const char nopass_error[] =
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?";

bool tp_word_is(const char *arg, size_t len, const char *word) {
    return strlen(word) == len && strncasecmp(arg, word, len) == 0;
}

static int arity_error(struct evbuffer *out, const char *command) {
    tp_resp_errorf(out, "ERR wrong number of arguments for '%s' command", command);
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
        if (tp_word_is(argv[i], lens[i], name) || tp_word_is(argv[i], lens[i], "all") ||
            tp_word_is(argv[i], lens[i], "everything") || tp_word_is(argv[i], lens[i], "default"))
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
    if (tp_word_is(sub, n, "SETNAME"))
        return client_setname(s, argc, argv, lens, out);
    if (tp_word_is(sub, n, "GETNAME") && s->name != NULL)
        tp_resp_bulk(out, s->name, s->name_len);
    else if (tp_word_is(sub, n, "GETNAME") && s->resp3)
        evbuffer_add(out, "_\r\n", 3); /* RESP3's null */
    else if (tp_word_is(sub, n, "GETNAME"))
        tp_resp_nil(out);
    else if (tp_word_is(sub, n, "ID"))
        tp_resp_integer(out, s->id);
    else if (tp_word_is(sub, n, "INFO") || tp_word_is(sub, n, "LIST"))
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
    if (argc != 3 || !tp_word_is(argv[1], lens[1], "PEER") || !is_integer(argv[2], lens[2]) ||
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
 * buffer) against the secret; a wrong one is counted. Once it matched, the
 * session lifts its limits. */
static bool auth_try(tp_session *s, char *pass, size_t len) {
    bool ok = s->secret != NULL && secret_equal(s->secret, s->secret_len, pass, len);
    explicit_bzero(pass, len);
    if (ok)
        s->authed = true;
    else if (s->secret != NULL)
        s->auth_failures++;
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
        if (tp_word_is(argv[i], lens[i], "AUTH") && i + 2 < argc) {
            i += 2;
            if (!auth_try(s, (char *)argv[i], lens[i]) && s->secret != NULL)
                return auth_refused(s, out) - 1;
        } else if (tp_word_is(argv[i], lens[i], "SETNAME") && i + 1 < argc) {
            name = ++i;
        } else {
            tp_resp_errorf(out, "ERR Syntax error in HELLO option '%.40s'", argv[i]);
            return -1;
        }
    }
    if (tp_session_locked(s)) {
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
    tp_builtin_fn *run;
} builtins[] = {
    {.name = "PING", .run = cmd_ping},       {.name = "ECHO", .run = cmd_echo},
    {.name = "INFO", .run = cmd_info},       {.name = "SELECT", .run = cmd_select},
    {.name = "CLIENT", .run = cmd_client},   {.name = "QUIT", .run = cmd_quit},
    {.name = "COMMAND", .run = cmd_command}, {.name = "HELLO", .run = cmd_hello},
    {.name = "READONLY", .run = cmd_ok},     {.name = "READWRITE", .run = cmd_ok},
    {.name = "AUTH", .run = cmd_auth},       {.name = "TEMPEST", .run = cmd_tempest},
};

tp_builtin_fn *tp_builtin_find(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof builtins / sizeof *builtins; i++)
        if (tp_word_is(name, len, builtins[i].name))
            return builtins[i].run;
    return NULL;
}
