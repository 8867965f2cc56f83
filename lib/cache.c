/* SPDX-License-Identifier: MIT */
/*
 * Cached answers (cache.h). A lookup is one GET, or two when the entry
 * names Vary headers; it is a small struct owned by its command in flight
 * (hiredis calls every callback once, with NULL when the connection
 * goes), which the front detaches from when its request goes away. Stores
 * are fire and forget: SET ... PX on the node's connection.
 */
#include <ctype.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache.h"
#include "node.h"
#include "sha256.h"

#define HASH_HEX 32 /* hex digits of a key's hash: 128 bits */
#define MAX_VARY 16 /* Vary names one entry may have */
#define ETAG_LEN 34 /* `"` 32 hex `"` */

struct tp_cache {
    tempest_node *node;
    char *queue;
    char *prefix; /* tempest:<ns>:cache: */
    size_t max_entry;
};

struct tp_cache_lookup {
    tp_cache *c;
    struct evhttp_request *req;
    tp_cache_fn *fn; /* NULL once cancelled */
    void *arg;
    bool vary; /* reading the entry of one set of Vary values */
    char key[300];
};

int tp_cache_new(tempest_node *node, const tempest_front_options *o, const char *queue,
                 tp_cache **out, tempest_error *err) {
    *out = NULL;
    if (!o->cache)
        return 0;
    tp_cache *c = tp_calloc(1, sizeof *c);
    size_t n = strlen("tempest::cache:") + strlen(node->ns) + 1;
    if (c == NULL || (c->queue = tp_strdup(queue)) == NULL || (c->prefix = tp_malloc(n)) == NULL) {
        tp_cache_free(c);
        tp_error_set(err, TEMPEST_ENOMEM, "out of memory");
        return TEMPEST_ENOMEM;
    }
    snprintf(c->prefix, n, "tempest:%s:cache:", node->ns);
    c->node = node;
    c->max_entry = o->cache_max_entry ? o->cache_max_entry : 256 << 10;
    *out = c;
    return 0;
}

void tp_cache_free(tp_cache *c) {
    if (c == NULL)
        return;
    free(c->queue);
    free(c->prefix);
    free(c);
}

bool tp_cache_is_marker(const char *name) {
    return strcasecmp(name, TP_CACHE_MARKER) == 0;
}

/* ---- keys ------------------------------------------------------------ */

static void hash_part(tp_sha256 *s, const char *text) {
    tp_sha256_update(s, text, strlen(text) + 1); /* with the NUL: unambiguous */
}

/* The primary key of `req`: prefix + hash(queue, Host, URI). */
static void primary_key(const tp_cache *c, struct evhttp_request *req, char *key, size_t len) {
    const char *host = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
    unsigned char d[TP_SHA256_LEN];
    char hex[2 * TP_SHA256_LEN + 1];
    tp_sha256 s;
    tp_sha256_init(&s);
    hash_part(&s, c->queue);
    hash_part(&s, host ? host : "");
    hash_part(&s, evhttp_request_get_uri(req));
    tp_sha256_final(&s, d);
    tp_hex(d, HASH_HEX / 2, hex);
    snprintf(key, len, "%s%s", c->prefix, hex);
}

/* Appends to `key` ":" + hash of the request's values of the `vary` names
 * (a JSON array of lower-case names); a header sent several times counts
 * with all its values, in order, and an absent one differs from an empty. */
static void vary_key(struct evhttp_request *req, json_t *vary, char *key, size_t len) {
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    unsigned char d[TP_SHA256_LEN];
    char hex[2 * TP_SHA256_LEN + 1];
    tp_sha256 s;
    tp_sha256_init(&s);
    size_t i;
    json_t *name;
    json_array_foreach(vary, i, name) {
        const char *n = json_string_value(name);
        hash_part(&s, n ? n : "");
        for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
            if (n && strcasecmp(kv->key, n) == 0) {
                tp_sha256_update(&s, "+", 1);
                hash_part(&s, kv->value);
            }
        tp_sha256_update(&s, "\n", 1);
    }
    tp_sha256_final(&s, d);
    tp_hex(d, HASH_HEX / 2, hex);
    size_t used = strlen(key);
    snprintf(key + used, len - used, ":%s", hex);
}

/* ---- lookups --------------------------------------------------------- */

static void on_lookup(redisAsyncContext *ac, void *reply, void *privdata);

static int lookup_send(tp_cache_lookup *l) {
    return tp_redis_cmd(l->c->node->redis, on_lookup, l, "GET %s", l->key);
}

/* The entry read: an answer (a hit), a Vary record (read again), or a miss. */
static json_t *lookup_entry(tp_cache_lookup *l, const redisReply *rep, bool *again) {
    json_t *e = rep && rep->type == REDIS_REPLY_STRING
                    ? json_loadb(rep->str, rep->len, JSON_ALLOW_NUL, NULL)
                    : NULL;
    json_t *vary = json_object_get(e, "vary");
    if (json_is_array(vary) && !l->vary) {
        l->vary = true;
        vary_key(l->req, vary, l->key, sizeof l->key);
        *again = lookup_send(l) == 0;
    }
    if (json_is_array(e))
        return e;
    json_decref(e);
    return NULL;
}

static void on_lookup(redisAsyncContext *ac, void *reply, void *privdata) {
    tp_cache_lookup *l = privdata;
    bool again = false;
    if (l->fn == NULL || tp_redis_from(ac) == NULL) {
        free(l);
        return;
    }
    json_t *answer = lookup_entry(l, reply, &again);
    if (again)
        return;
    tp_cache_fn *fn = l->fn;
    void *arg = l->arg;
    free(l);
    fn(answer, arg);
    json_decref(answer);
}

tp_cache_lookup *tp_cache_lookup_start(tp_cache *c, struct evhttp_request *req, tp_cache_fn *fn,
                                       void *arg) {
    if (c == NULL || evhttp_request_get_command(req) != EVHTTP_REQ_GET)
        return NULL;
    tp_cache_lookup *l = tp_malloc(sizeof *l);
    if (l == NULL)
        return NULL;
    *l = (tp_cache_lookup){.c = c, .req = req, .fn = fn, .arg = arg};
    primary_key(c, req, l->key, sizeof l->key);
    if (lookup_send(l) != 0) {
        free(l);
        return NULL;
    }
    return l;
}

void tp_cache_lookup_cancel(tp_cache_lookup *l) {
    if (l != NULL)
        l->fn = NULL; /* freed by its reply */
}

/* ---- answers --------------------------------------------------------- */

/* The value of answer header `name` (any case) as a string, or NULL. */
static const char *answer_header(json_t *headers, const char *name) {
    const char *k;
    json_t *v;
    json_object_foreach(headers, k, v) {
        if (strcasecmp(k, name) == 0)
            return json_is_string(v) ? json_string_value(v) : json_is_array(v) ? "" : NULL;
    }
    return NULL;
}

/* The marker's time-to-live in ms (an integer or a string of digits),
 * or 0 when absent or invalid. */
static long long marker_ms(json_t *headers) {
    const char *k;
    json_t *v;
    json_object_foreach(headers, k, v) {
        if (!tp_cache_is_marker(k))
            continue;
        if (json_is_integer(v))
            return json_integer_value(v) > 0 && json_integer_value(v) <= 0x7fffffff
                       ? json_integer_value(v)
                       : 0;
        const char *s = json_string_value(v);
        char *end;
        long long ms = s && isdigit((unsigned char)*s) ? strtoll(s, &end, 10) : 0;
        return s && ms > 0 && ms <= 0x7fffffff && *end == '\0' ? ms : 0;
    }
    return 0;
}

/* The answer's Vary names, lower-cased, as a JSON array (new reference);
 * NULL when one is `*` or there are too many: not cacheable. */
static json_t *vary_names(json_t *headers) {
    json_t *names = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(headers, k, v) {
        if (strcasecmp(k, "vary") != 0)
            continue;
        const char *s = json_string_value(v);
        while (names && s && *s) {
            size_t n = strcspn(s, ",");
            char name[128];
            size_t o = 0;
            for (size_t i = 0; i < n && o + 1 < sizeof name; i++)
                if (!isspace((unsigned char)s[i]))
                    name[o++] = (char)tolower((unsigned char)s[i]);
            name[o] = '\0';
            if (strcmp(name, "*") == 0 || json_array_size(names) >= MAX_VARY) {
                json_decref(names);
                return NULL;
            }
            if (o > 0)
                json_array_append_new(names, json_string(name));
            s += n + (s[n] == ',');
        }
    }
    return names;
}

/* The answer to store: the headers without the marker, with `etag`. */
static char *entry_text(const tp_http_answer *a, const char *etag) {
    json_t *h = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(a->headers, k, v) {
        if (!tp_cache_is_marker(k))
            json_object_set(h, k, v);
    }
    if (etag)
        json_object_set_new(h, "ETag", json_string(etag));
    json_t *e = json_pack("[i,o,s#]", a->status, h, a->body ? a->body : "", a->body_len);
    char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    return text;
}

static void store(tp_cache *c, struct evhttp_request *req, const tp_http_answer *a,
                  const char *etag, long long ms) {
    json_t *vary = vary_names(a->headers);
    char *text = vary ? entry_text(a, etag) : NULL;
    char key[300];
    tp_redis *r = c->node->redis;
    if (text != NULL && tp_redis_state(r) == TEMPEST_NODE_UP) {
        primary_key(c, req, key, sizeof key);
        if (json_array_size(vary) > 0) {
            json_t *record = json_pack("{s:O}", "vary", vary);
            char *rec = record ? json_dumps(record, JSON_COMPACT) : NULL;
            json_decref(record);
            if (rec)
                tp_redis_cmd(r, tp_node_log_reply, "cache store", "SET %s %s PX %lld", key, rec,
                             ms);
            free(rec);
            vary_key(req, vary, key, sizeof key);
        }
        tp_redis_cmd(r, tp_node_log_reply, "cache store", "SET %s %s PX %lld", key, text, ms);
    }
    free(text);
    json_decref(vary);
}

/* Does If-None-Match (a list of entity tags, or `*`) match `etag`? Weak
 * comparison: a `W/` prefix is ignored on both sides. */
static bool none_match(const char *inm, const char *etag) {
    if (strncmp(etag, "W/", 2) == 0)
        etag += 2;
    size_t elen = strlen(etag);
    while (inm && *inm) {
        inm += strspn(inm, " \t,");
        size_t n = strcspn(inm, ",");
        size_t t = n;
        while (t > 0 && (inm[t - 1] == ' ' || inm[t - 1] == '\t'))
            t--;
        const char *tag = inm;
        if (t >= 2 && strncmp(tag, "W/", 2) == 0) {
            tag += 2;
            t -= 2;
        }
        if ((t == 1 && *tag == '*') || (t == elen && t > 0 && memcmp(tag, etag, t) == 0))
            return true;
        inm += n;
    }
    return false;
}

/* Stores a marked answer when it may be cached; returns the ETag to add
 * (in `buf`), or NULL when the worker gave one or nothing was stored. */
static const char *maybe_store(tp_cache *c, struct evhttp_request *req, const tp_http_answer *a,
                               char buf[ETAG_LEN + 1]) {
    long long ms = marker_ms(a->headers);
    if (ms == 0 || evhttp_request_get_command(req) != EVHTTP_REQ_GET ||
        a->body_len > c->max_entry || answer_header(a->headers, "set-cookie") != NULL)
        return NULL;
    const char *etag = NULL;
    if (answer_header(a->headers, "etag") == NULL) {
        unsigned char d[TP_SHA256_LEN];
        tp_sha256_buf(a->body ? a->body : "", a->body_len, d);
        buf[0] = '"';
        tp_hex(d, 16, buf + 1);
        buf[ETAG_LEN - 1] = '"';
        buf[ETAG_LEN] = '\0';
        etag = buf;
    }
    store(c, req, a, etag, ms);
    return etag;
}

bool tp_cache_final(tp_cache *c, struct evhttp_request *req, const tp_http_answer *a) {
    if (c == NULL)
        return false;
    char buf[ETAG_LEN + 1];
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    const char *etag = maybe_store(c, req, a, buf);
    if (etag)
        evhttp_add_header(out, "ETag", etag);
    else
        etag = answer_header(a->headers, "etag");
    const char *inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (etag == NULL || inm == NULL || a->status != 200 ||
        (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) || !none_match(inm, etag))
        return false;
    evhttp_send_reply(req, 304, "Not Modified", NULL);
    return true;
}
