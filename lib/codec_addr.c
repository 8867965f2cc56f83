/* SPDX-License-Identifier: MIT */
/*
 * Addresses: Redis URLs and host:port pairs, parsed strictly into what the
 * connections need. redis://, unix://, redis+sentinel:// and
 * redis+cluster:// URLs (tp_redis_url_parse) and the `host:port` of a
 * listener (tp_addr_parse) share one host and port parser. Pure functions,
 * like the rest of the codec: on every error path the outputs are zeroed,
 * nothing leaks, and `err` receives one sentence that names the problem,
 * never quoting a password.
 */
#include "codec.h"
#include "codec_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <tempest/tempest.h>

#define REDIS_DEFAULT_PORT 6379
#define SENTINEL_DEFAULT_PORT 26379

/* ---- Small helpers ---- */

static bool has_prefix_ci(const char *s, const char *prefix) {
    for (; *prefix != '\0'; s++, prefix++) {
        unsigned char a = (unsigned char)*s, b = (unsigned char)*prefix;
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a - 'A' + 'a');
        if (a != b)
            return false;
    }
    return true;
}

static int hexval(char c) {
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Parses the decimal digits [s, end) into *value <= max. No sign, no
 * blanks, at least one digit.
 */
static bool parse_uint(const char *s, const char *end, long max, long *value) {
    long v = 0;

    if (s == end)
        return false;
    for (; s < end; s++) {
        if (!is_digit(*s))
            return false;
        v = v * 10 + (*s - '0');
        if (v > max)
            return false;
    }
    *value = v;
    return true;
}

/* ---- host:port (shared by Redis URLs and addresses) ---- */

/* RFC 3986 unreserved: letters, digits, "-._~". */
static bool is_host_char(char c) {
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool valid_host(const char *s, const char *end) {
    for (; s < end; s++) {
        if (!is_host_char(*s))
            return false;
    }
    return true;
}

/* Hex digits, ':' and '.', then an optional zone "%eth0"; at least one ':'. */
static bool valid_ipv6(const char *s, const char *end) {
    const char *zone = memchr(s, '%', (size_t)(end - s));
    bool colon = false;

    for (const char *p = s; p < (zone ? zone : end); p++) {
        if (*p == ':')
            colon = true;
        else if (*p != '.' && hexval(*p) < 0)
            return false;
    }
    if (zone != NULL && (zone + 1 == end || !valid_host(zone + 1, end)))
        return false;
    return colon;
}

/* Where host:port parsing reports and what it accepts. */
typedef struct hostport_rules {
    const char *ctx; /* "Redis URL" or "address" */
    bool need_port;  /* a missing port is an error (else default_port) */
    int default_port;
    long min_port; /* 0 or 1; the maximum is 65535 */
} hostport_rules;

/* Finds the host in [s, end): sets [*hs, *he) and *rest (just after it). */
static int split_host(const char *s, const char *end, const hostport_rules *r, const char **hs,
                      const char **he, const char **rest, char *err, size_t errlen) {
    const char *close;

    if (s < end && *s == '[') {
        close = memchr(s, ']', (size_t)(end - s));
        if (close == NULL)
            return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                                   "%s: missing ']' after the IPv6 address", r->ctx);
        *hs = s + 1;
        *he = close;
        *rest = close + 1;
        if (*hs < *he && !valid_ipv6(*hs, *he))
            return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "%s: invalid IPv6 address", r->ctx);
    } else {
        *hs = s;
        for (*he = s; *he < end && **he != ':'; (*he)++)
            ;
        *rest = *he;
        if (*he < end && memchr(*he + 1, ':', (size_t)(end - *he - 1)) != NULL)
            return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                                   "%s: an IPv6 address must be in brackets, as in [::1]:6379",
                                   r->ctx);
        if (!valid_host(*hs, *he))
            return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "%s: invalid character in the host",
                                   r->ctx);
    }
    if (*hs == *he)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "%s: empty host", r->ctx);
    return 0;
}

static int parse_port(const char *s, const char *end, const hostport_rules *r, int *port, char *err,
                      size_t errlen) {
    long v;

    if (s == end) {
        if (r->need_port)
            return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "%s: missing port (host:port)",
                                   r->ctx);
        *port = r->default_port;
        return 0;
    }
    if (*s != ':')
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "%s: unexpected characters after the host", r->ctx);
    if (!parse_uint(s + 1, end, 65535, &v) || v < r->min_port)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "%s: port must be a number from %ld to 65535", r->ctx, r->min_port);
    *port = (int)v;
    return 0;
}

/* Parses host[:port] or [v6][:port] in [s, end) into a malloc'd host. */
static int parse_host_port(const char *s, const char *end, const hostport_rules *r, char **host,
                           int *port, char *err, size_t errlen) {
    const char *hs = NULL, *he = NULL, *rest = NULL;
    int rc;

    rc = split_host(s, end, r, &hs, &he, &rest, err, errlen);
    if (rc == 0)
        rc = parse_port(rest, end, r, port, err, errlen);
    if (rc != 0)
        return rc;
    *host = tp_codec_dupn(hs, (size_t)(he - hs));
    if (*host == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "%s: out of memory", r->ctx);
    return 0;
}

int tp_addr_parse(const char *addr, char **host, int *port, char *err, size_t errlen) {
    static const hostport_rules rules = {.ctx = "address", .need_port = true, .min_port = 0};

    if (host == NULL || port == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_EINVAL, "address: no output given");
    *host = NULL;
    *port = 0;
    if (addr == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "address: missing");
    return parse_host_port(addr, addr + strlen(addr), &rules, host, port, err, errlen);
}

/* ---- Redis URLs ---- */

/* Percent-decodes [s, end) into a malloc'd string; %00 is refused. */
static int pct_decode(const char *s, const char *end, const char *what, char **out, char *err,
                      size_t errlen) {
    char *p = tp_malloc((size_t)(end - s) + 1), *d = p;

    if (p == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    for (; s < end; s++) {
        if (*s != '%') {
            *d++ = *s;
            continue;
        }
        if (end - s < 3 || hexval(s[1]) < 0 || hexval(s[2]) < 0 || (s[1] == '0' && s[2] == '0')) {
            free(p);
            return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                                   "Redis URL: invalid %%-escape in the %s", what);
        }
        *d++ = (char)(hexval(s[1]) * 16 + hexval(s[2]));
        s += 2;
    }
    *d = '\0';
    *out = p;
    return 0;
}

/* `[user]:password` in [s, end); an empty user means password only. */
static int parse_userinfo(const char *s, const char *end, tp_redis_url *out, char *err,
                          size_t errlen) {
    const char *colon = memchr(s, ':', (size_t)(end - s));
    int rc;

    if (colon == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: expected [user]:password before '@'");
    if (colon + 1 == end)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty password");
    if (colon > s) {
        rc = pct_decode(s, colon, "user", &out->user, err, errlen);
        if (rc != 0)
            return rc;
    }
    return pct_decode(colon + 1, end, "password", &out->password, err, errlen);
}

/*
 * The database in [s, end), all that follows the host or socket path: "",
 * or `prefix` and a number ("/" alone also means 0). `after` names what `s`
 * follows, for the error text.
 */
static int parse_db(const char *s, const char *end, const char *prefix, const char *after,
                    tp_redis_url *out, char *err, size_t errlen) {
    size_t plen = strlen(prefix);
    long v;

    if (s == end || (end - s == 1 && *s == '/'))
        return 0;
    if ((size_t)(end - s) < plen || memcmp(s, prefix, plen) != 0)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: unexpected '%c' after the %s", *s, after);
    s += plen;
    if (!parse_uint(s, end, INT_MAX, &v))
        return tp_codec_seterr(
            err, errlen, TEMPEST_EADDR,
            "Redis URL: the database must be a number from 0 to %d, got \"%.*s\"", INT_MAX,
            end - s < 20 ? (int)(end - s) : 20, s);
    out->db = (int)v;
    return 0;
}

static int parse_tcp(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    static const hostport_rules rules = {
        .ctx = "Redis URL", .default_port = REDIS_DEFAULT_PORT, .min_port = 1};
    const char *end = s + strcspn(s, "/?#"), *host = s;
    int rc;

    for (const char *p = s; p < end; p++) {
        if (*p == '@')
            host = p + 1;
    }
    if (host > s) {
        rc = parse_userinfo(s, host - 1, out, err, errlen);
        if (rc != 0)
            return rc;
    }
    rc = parse_host_port(host, end, &rules, &out->host, &out->port, err, errlen);
    if (rc != 0)
        return rc;
    return parse_db(end, end + strlen(end), "/", "host", out, err, errlen);
}

static int parse_unix(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *end = s + strcspn(s, "?#");

    if (*s != '/')
        return tp_codec_seterr(
            err, errlen, TEMPEST_EADDR,
            "Redis URL: expected an absolute socket path, as in unix:///run/redis.sock");
    if (end - s < 2)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty socket path");
    out->path = tp_codec_dupn(s, (size_t)(end - s));
    if (out->path == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    return parse_db(end, end + strlen(end), "?db=", "socket path (only ?db=N is allowed)", out, err,
                    errlen);
}

/* The comma-separated `host[:port]` list in [s, end) into *list (sentinels
 * or cluster seeds, `what` in the error text). */
static int parse_hosts(const char *s, const char *end, int default_port, const char *what,
                       tp_redis_sentinel **list, int *count, char *err, size_t errlen) {
    const hostport_rules rules = {.ctx = "Redis URL", .default_port = default_port, .min_port = 1};
    size_t n = 1;
    int rc;

    for (const char *p = s; p < end; p++)
        n += *p == ',';
    if (n > TP_MAX_SENTINELS)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "Redis URL: more than %d %s",
                               TP_MAX_SENTINELS, what);
    *list = tp_calloc(n, sizeof **list);
    if (*list == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    for (;;) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        tp_redis_sentinel *sn = &(*list)[*count];
        rc = parse_host_port(s, comma ? comma : end, &rules, &sn->host, &sn->port, err, errlen);
        if (rc != 0)
            return rc;
        (*count)++;
        if (comma == NULL)
            return 0;
        s = comma + 1;
    }
}

static int parse_sentinels(const char *s, const char *end, tp_redis_url *out, char *err,
                           size_t errlen) {
    return parse_hosts(s, end, SENTINEL_DEFAULT_PORT, "sentinels", &out->sentinels,
                       &out->nsentinels, err, errlen);
}

/* `[[user]:password@]` before a host list at `s`: parses the user info (the
 * last `@` ends it) and sets *hosts and *end to the list and its end (the
 * first of `/?#`). */
static int parse_host_list_userinfo(const char *s, const char **hosts, const char **end,
                                    tp_redis_url *out, char *err, size_t errlen) {
    *end = s + strcspn(s, "/?#");
    *hosts = s;
    for (const char *p = s; p < *end; p++) {
        if (*p == '@')
            *hosts = p + 1;
    }
    return *hosts > s ? parse_userinfo(s, *hosts - 1, out, err, errlen) : 0;
}

/* `[[user]:password@]host[:port][,host[:port]...][/0]`: seeds of a cluster. */
static int parse_cluster(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *hosts, *end;
    int rc = parse_host_list_userinfo(s, &hosts, &end, out, err, errlen);

    if (rc != 0)
        return rc;
    rc = parse_hosts(hosts, end, REDIS_DEFAULT_PORT, "cluster seeds", &out->seeds, &out->nseeds,
                     err, errlen);
    if (rc != 0)
        return rc;
    rc = parse_db(end, end + strlen(end), "/", "cluster seeds", out, err, errlen);
    if (rc == 0 && out->db != 0)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: a cluster has only database 0");
    return rc;
}

/* The optional `?sentinel_password=P` at `s` (the end of the URL). */
static int parse_sentinel_query(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    static const char key[] = "?sentinel_password=";
    const char *v, *end;

    if (*s == '\0')
        return 0;
    if (strncmp(s, key, strlen(key)) != 0)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: only ?sentinel_password=P may follow the master name");
    v = s + strlen(key);
    end = v + strlen(v);
    if (strcspn(v, "&#") != (size_t)(end - v))
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: only ?sentinel_password=P may follow the master name");
    if (v == end)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty sentinel password");
    return pct_decode(v, end, "sentinel password", &out->sentinel_password, err, errlen);
}

/* `/master[/db][?sentinel_password=P]` at `s`. */
static int parse_master(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *name, *end, *query;
    int rc;

    if (*s != '/')
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: expected /mastername after the sentinels");
    name = s + 1;
    end = name + strcspn(name, "/?#");
    if (end == name)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "Redis URL: empty master name");
    if (!valid_host(name, end))
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: invalid character in the master name");
    out->master = tp_codec_dupn(name, (size_t)(end - name));
    if (out->master == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_ENOMEM, "Redis URL: out of memory");
    query = end + strcspn(end, "?#");
    rc = parse_db(end, query, "/", "master name", out, err, errlen);
    if (rc != 0)
        return rc;
    return parse_sentinel_query(query, out, err, errlen);
}

static int parse_sentinel(const char *s, tp_redis_url *out, char *err, size_t errlen) {
    const char *hosts, *end;
    int rc = parse_host_list_userinfo(s, &hosts, &end, out, err, errlen);

    if (rc != 0)
        return rc;
    rc = parse_sentinels(hosts, end, out, err, errlen);
    if (rc != 0)
        return rc;
    return parse_master(end, out, err, errlen);
}

/* Names the scheme of `url` in the error, never the rest (it may hold a password). */
static int unknown_scheme(const char *url, char *err, size_t errlen) {
    size_t n = 0;

    while (n < 16 && (is_alnum(url[n]) || url[n] == '+' || url[n] == '-' || url[n] == '.'))
        n++;
    if (n > 0 && n < 16 && strncmp(url + n, "://", 3) == 0)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                               "Redis URL: unknown scheme \"%.*s\" (expected redis://, unix://, "
                               "redis+sentinel:// or redis+cluster://)",
                               (int)n, url);
    return tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                           "Redis URL: expected redis://[[user]:password@]host[:port][/db], "
                           "unix:///path[?db=N], redis+sentinel://host[:port][,...]/master[/db] or "
                           "redis+cluster://host[:port][,...]");
}

int tp_redis_url_parse(const char *url, tp_redis_url *out, char *err, size_t errlen) {
    int rc;

    if (out == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_EINVAL, "Redis URL: no output given");
    memset(out, 0, sizeof *out);
    if (url == NULL)
        return tp_codec_seterr(err, errlen, TEMPEST_EADDR, "Redis URL: missing");
    if (has_prefix_ci(url, "redis://"))
        rc = parse_tcp(url + strlen("redis://"), out, err, errlen);
    else if (has_prefix_ci(url, "redis+sentinel://"))
        rc = parse_sentinel(url + strlen("redis+sentinel://"), out, err, errlen);
    else if (has_prefix_ci(url, "redis+cluster://"))
        rc = parse_cluster(url + strlen("redis+cluster://"), out, err, errlen);
    else if (has_prefix_ci(url, "unix://"))
        rc = parse_unix(url + strlen("unix://"), out, err, errlen);
    else if (has_prefix_ci(url, "rediss://"))
        rc = tp_codec_seterr(err, errlen, TEMPEST_EADDR,
                             "TLS (rediss://) is not supported by this build");
    else
        rc = unknown_scheme(url, err, errlen);
    if (rc != 0)
        tp_redis_url_clear(out);
    return rc;
}

void tp_redis_url_clear(tp_redis_url *url) {
    if (url == NULL)
        return;
    free(url->host);
    free(url->path);
    free(url->user);
    free(url->password);
    for (int i = 0; i < url->nsentinels; i++)
        free(url->sentinels[i].host);
    free(url->sentinels);
    for (int i = 0; i < url->nseeds; i++)
        free(url->seeds[i].host);
    free(url->seeds);
    free(url->master);
    free(url->sentinel_password);
    memset(url, 0, sizeof *url);
}
