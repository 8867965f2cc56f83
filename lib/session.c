/* SPDX-License-Identifier: MIT */
/*
 * Sessions, front side: the signed session cookie. Its value is
 * `<id>.<signature>`, the id 32 lower-case hex digits (128 bits from
 * getrandom) and the signature the unpadded base64url HMAC-SHA256 of the
 * id under the front's secret (43 characters), compared in constant time.
 * A valid cookie refreshes the TTL of the session's hash; the id goes to
 * the worker in the `url` job, whose session calls are lib/session_job.c.
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
