/* SPDX-License-Identifier: MIT */
/*
 * Sessions. The front side issues and checks the session cookie: its
 * value is `<id>.<signature>`, the id 32 lower-case hex digits (128 bits
 * from getrandom) and the signature the unpadded base64url HMAC-SHA256 of
 * the id under the front's secret (43 characters), compared in constant
 * time. The worker side runs the calls of include/tempest/session.h on the
 * node's connection: each call is one small struct, owned by its commands
 * in flight (hiredis calls every callback exactly once, with NULL when the
 * connection goes), and linked in its worker's list so that a worker that
 * is freed can cancel it, and a job that is finished can detach from it.
 */
#include <errno.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "node.h"
#include "session.h"
#include "sha256.h"

#define SIG_LEN 43 /* base64url of 32 bytes, unpadded */
#define COOKIE_VALUE_LEN (TP_SID_LEN + 1 + SIG_LEN)
#define MIN_SECRET 16

struct tp_sessions {
    char *secret;
    size_t secret_len;
    char *cookie; /* the cookie's name */
    size_t cookie_len;
    int ttl_ms;
    bool secure;
};

/* ---- front: settings -------------------------------------------------- */

static bool token_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c > 32 && c < 127 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool token_valid(const char *s) {
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!token_char((unsigned char)*s))
            return false;
    return true;
}

int tp_sessions_new(const tempest_front_options *o, tp_sessions **out, tempest_error *err) {
    *out = NULL;
    if (!o->sessions)
        return 0;
    const char *secret = o->session_secret ? o->session_secret : getenv("TEMPEST_SESSION_SECRET");
    const char *cookie = o->session_cookie ? o->session_cookie : "tempest_sid";
    if (secret == NULL || strlen(secret) < MIN_SECRET || !token_valid(cookie) ||
        o->session_ttl_ms < 0) {
        tp_error_set(err, TEMPEST_EINVAL,
                     "front: sessions need a secret of at least %d bytes (session_secret or "
                     "$TEMPEST_SESSION_SECRET), a cookie name that is an HTTP token and a "
                     "session_ttl_ms >= 0",
                     MIN_SECRET);
        return TEMPEST_EINVAL;
    }
    tp_sessions *s = tp_calloc(1, sizeof *s);
    if (s == NULL || (s->secret = tp_strdup(secret)) == NULL ||
        (s->cookie = tp_strdup(cookie)) == NULL) {
        tp_sessions_free(s);
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        return TEMPEST_ENOMEM;
    }
    s->secret_len = strlen(secret);
    s->cookie_len = strlen(cookie);
    s->ttl_ms = o->session_ttl_ms ? o->session_ttl_ms : 86400000;
    s->secure = o->session_secure;
    *out = s;
    return 0;
}

void tp_sessions_free(tp_sessions *s) {
    if (s == NULL)
        return;
    if (s->secret)
        memset(s->secret, 0, s->secret_len);
    free(s->secret);
    free(s->cookie);
    free(s);
}

/* ---- front: cookies --------------------------------------------------- */

/* The signature of `id` (TP_SID_LEN hex digits): SIG_LEN characters and a NUL. */
static void sign(const tp_sessions *s, const char *id, char out[SIG_LEN + 1]) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char mac[TP_SHA256_LEN + 1] = {0};
    tp_hmac_sha256(s->secret, s->secret_len, id, TP_SID_LEN, mac);
    size_t o = 0;
    for (size_t i = 0; i < TP_SHA256_LEN; i += 3) {
        unsigned v = (unsigned)mac[i] << 16 | (unsigned)mac[i + 1] << 8 |
                     (i + 2 < TP_SHA256_LEN ? mac[i + 2] : 0);
        for (int k = 0; k < 4 && o < SIG_LEN; k++)
            out[o++] = b64[(v >> (18 - 6 * k)) & 63];
    }
    out[SIG_LEN] = '\0';
}

static bool hex_id(const char *p) {
    for (int i = 0; i < TP_SID_LEN; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    return true;
}

/* A cookie value `<id>.<sig>` (`len` bytes) signed by us: copies the id. */
static bool cookie_valid(const tp_sessions *s, const char *v, size_t len, char *sid) {
    if (len != COOKIE_VALUE_LEN || v[TP_SID_LEN] != '.' || !hex_id(v))
        return false;
    char want[SIG_LEN + 1];
    sign(s, v, want);
    unsigned char diff = 0; /* constant time: no early exit */
    for (int i = 0; i < SIG_LEN; i++)
        diff |= (unsigned char)(want[i] ^ v[TP_SID_LEN + 1 + i]);
    if (diff != 0)
        return false;
    memcpy(sid, v, TP_SID_LEN);
    sid[TP_SID_LEN] = '\0';
    return true;
}

/* Looks for our cookie in one `Cookie:` header value ("a=b; c=d"). */
static bool find_in_header(const tp_sessions *s, const char *h, char *sid) {
    while (*h) {
        while (*h == ' ' || *h == '\t' || *h == ';')
            h++;
        const char *end = strchr(h, ';');
        size_t len = end ? (size_t)(end - h) : strlen(h);
        const char *eq = memchr(h, '=', len);
        if (eq && (size_t)(eq - h) == s->cookie_len && memcmp(h, s->cookie, s->cookie_len) == 0) {
            size_t vlen = len - s->cookie_len - 1;
            while (vlen > 0 && (eq[vlen] == ' ' || eq[vlen] == '\t'))
                vlen--;
            if (cookie_valid(s, eq + 1, vlen, sid))
                return true;
        }
        h += len;
    }
    return false;
}

static bool random_bytes(unsigned char *b, size_t n) {
    ssize_t got;
    do
        got = getrandom(b, n, 0);
    while (got < 0 && errno == EINTR);
    if (got == (ssize_t)n)
        return true;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    got = read(fd, b, n);
    close(fd);
    return got == (ssize_t)n;
}

static void issue(const tp_sessions *s, struct tempest_node *node, struct evhttp_request *req,
                  char *sid) {
    unsigned char b[TP_SID_LEN / 2];
    if (!random_bytes(b, sizeof b)) {
        tp_log(&node->log, TEMPEST_LOG_ERROR, "front: no random bytes for a session id");
        sid[0] = '\0';
        return;
    }
    tp_hex(b, sizeof b, sid);
    char sig[SIG_LEN + 1], header[COOKIE_VALUE_LEN + 300];
    sign(s, sid, sig);
    snprintf(header, sizeof header, "%s=%s.%s; Path=/; HttpOnly; SameSite=Lax%s", s->cookie, sid,
             sig, s->secure ? "; Secure" : "");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Set-Cookie", header);
}

void tp_sessions_begin(tp_sessions *s, struct tempest_node *node, struct evhttp_request *req,
                       char sid[TP_SID_LEN + 1]) {
    sid[0] = '\0';
    if (s == NULL)
        return;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Cookie") == 0 && find_in_header(s, kv->value, sid)) {
            if (tp_redis_state(node->redis) == TEMPEST_NODE_UP)
                tp_redis_cmd(node->redis, tp_node_log_reply, "session refresh",
                             "PEXPIRE session:%s %d", sid, s->ttl_ms);
            return;
        }
    }
    issue(s, node, req, sid);
}

int tp_sessions_annotate(const tp_sessions *s, json_t *request, const char *sid) {
    if (s == NULL || sid[0] == '\0')
        return 0;
    if (json_object_set_new(request, "session", json_string(sid)) != 0 ||
        json_object_set_new(request, "session_ttl", json_integer(s->ttl_ms)) != 0)
        return TEMPEST_ENOMEM;
    return 0;
}

/* ---- worker: calls ---------------------------------------------------- */

typedef struct tp_session_op {
    struct tp_session_op *prev, *next;
    struct tp_session_op **head; /* the worker's list; NULL once unlinked */
    tempest_node *node;
    tempest_job *job; /* NULL once the job is finished */
    tempest_session_fn *fn;
    void *arg;
    bool get;
    int replies; /* commands in flight */
    int status;
    json_t *value;
} op;

static void op_unlink(op *o) {
    if (o->head == NULL)
        return;
    if (o->prev)
        o->prev->next = o->next;
    else
        *o->head = o->next;
    if (o->next)
        o->next->prev = o->prev;
    o->head = NULL;
}

static void op_value(op *o, const redisReply *rep) {
    if (rep->type == REDIS_REPLY_NIL)
        return;
    json_t *a = rep->type == REDIS_REPLY_STRING
                    ? json_loadb(rep->str, rep->len, JSON_ALLOW_NUL, NULL)
                    : NULL;
    if (json_is_array(a) && json_array_size(a) == 1)
        o->value = json_incref(json_array_get(a, 0));
    else
        o->status = TEMPEST_EPROTO;
    json_decref(a);
}

static void op_reply(op *o, tp_redis *r, const redisReply *rep) {
    if (o->status != 0)
        return; /* the first failure is the one told */
    if (r == NULL)
        o->status = TEMPEST_ECANCELED;
    else if (rep == NULL)
        o->status = TEMPEST_EDOWN;
    else if (rep->type == REDIS_REPLY_ERROR) {
        o->status = TEMPEST_EREDIS;
        tp_log(&o->node->log, TEMPEST_LOG_WARN, "session: %s", rep->str);
    } else if (o->get)
        op_value(o, rep);
}

static void on_op_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    op *o = privdata;
    tp_redis *r = tp_redis_from(ac);
    op_reply(o, r, reply);
    if (--o->replies > 0)
        return;
    op_unlink(o);
    if (o->fn) {
        if (r)
            tp_node_enter(o->node);
        o->fn(o->job, o->status, o->status == 0 ? o->value : NULL, o->arg);
        if (r)
            tp_node_leave(o->node);
    }
    json_decref(o->value);
    free(o);
}

TEMPEST_API const char *tempest_job_session(const tempest_job *job) {
    json_t *req = json_array_get(tempest_job_args(job), 0);
    const char *sid = json_string_value(json_object_get(req, "session"));
    return sid && *sid ? sid : NULL;
}

/* Sends `cmd key [field [value]]` for the call `o`; 0 or a code. */
static int op_send(op *o, const char *cmd, const char *key, const char *field, const char *value,
                   size_t value_len) {
    const char *argv[] = {cmd, key, field, value};
    size_t lens[] = {strlen(cmd), strlen(key), field ? strlen(field) : 0, value_len};
    int argc = field == NULL ? 2 : value == NULL ? 3 : 4;
    int rc = tp_redis_argv(o->node->redis, on_op_reply, o, argc, argv, lens);
    if (rc == 0)
        o->replies++;
    return rc;
}

/* Starts a call: `field` may be NULL (DEL), `value` (encoded) only for HSET. */
static int session_call(tempest_job *job, const char *cmd, const char *field, const char *value,
                        size_t value_len, tempest_session_fn *cb, void *arg) {
    const char *sid = tempest_job_session(job);
    if (sid == NULL)
        return TEMPEST_EINVAL;
    char *key = tp_malloc(strlen(sid) + sizeof "session:");
    op *o = tp_calloc(1, sizeof *o);
    if (key == NULL || o == NULL) {
        free(key);
        free(o);
        return TEMPEST_ENOMEM;
    }
    sprintf(key, "session:%s", sid);
    bool get = strcmp(cmd, "HGET") == 0;
    *o = (op){.node = tp_job_node(job), .job = job, .fn = cb, .arg = arg, .get = get};
    int rc = op_send(o, cmd, key, field, value, value_len);
    json_t *ttl = json_object_get(json_array_get(tempest_job_args(job), 0), "session_ttl");
    if (rc == 0 && value != NULL && json_is_integer(ttl) && json_integer_value(ttl) > 0) {
        char ms[24];
        snprintf(ms, sizeof ms, "%" JSON_INTEGER_FORMAT, json_integer_value(ttl));
        op_send(o, "PEXPIRE", key, ms, NULL, 0); /* when it cannot go, the HSET still counts */
    }
    free(key);
    if (rc != 0) {
        free(o);
        return rc;
    }
    op **head = tp_job_session_ops(job);
    o->head = head;
    o->next = *head;
    if (*head)
        (*head)->prev = o;
    *head = o;
    return 0;
}

TEMPEST_API int tempest_session_get(tempest_job *job, const char *key, tempest_session_fn *cb,
                                    void *arg) {
    if (job == NULL || key == NULL || cb == NULL)
        return TEMPEST_EINVAL;
    return session_call(job, "HGET", key, NULL, 0, cb, arg);
}

TEMPEST_API int tempest_session_set(tempest_job *job, const char *key, json_t *value,
                                    tempest_session_fn *cb, void *arg) {
    if (job == NULL || key == NULL || value == NULL)
        return TEMPEST_EINVAL;
    json_t *wrap = json_array();
    if (wrap == NULL || json_array_append(wrap, value) != 0) {
        json_decref(wrap);
        return TEMPEST_ENOMEM;
    }
    char *text = json_dumps(wrap, JSON_COMPACT);
    json_decref(wrap);
    if (text == NULL)
        return TEMPEST_EINVAL; /* a string that is not UTF-8, or no memory */
    int rc = session_call(job, "HSET", key, text, strlen(text), cb, arg);
    free(text);
    return rc;
}

TEMPEST_API int tempest_session_del(tempest_job *job, const char *key, tempest_session_fn *cb,
                                    void *arg) {
    if (job == NULL || key == NULL)
        return TEMPEST_EINVAL;
    return session_call(job, "HDEL", key, NULL, 0, cb, arg);
}

TEMPEST_API int tempest_session_clear(tempest_job *job, tempest_session_fn *cb, void *arg) {
    if (job == NULL)
        return TEMPEST_EINVAL;
    return session_call(job, "DEL", NULL, NULL, 0, cb, arg);
}

void tp_session_job_gone(op **ops, const tempest_job *job) {
    for (op *o = *ops; o; o = o->next)
        if (o->job == job)
            o->job = NULL;
}

void tp_session_cancel_all(op **ops) {
    while (*ops) {
        op *o = *ops;
        op_unlink(o);
        tempest_session_fn *fn = o->fn;
        o->fn = NULL; /* its replies only free it now */
        o->job = NULL;
        if (fn)
            fn(NULL, TEMPEST_ECANCELED, NULL, o->arg);
    }
}
