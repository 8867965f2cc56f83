/* SPDX-License-Identifier: MIT */
/*
 * Codec: pure functions that encode and decode what travels on the wire
 * (jobs, answers, `url` requests and answers in lib/codec.c; the JSON fast
 * path in lib/codec_fast.c; Redis URLs and host:port addresses in
 * lib/codec_addr.c), with strict validation and precise error text. No I/O,
 * no event loop; unit-tested without Redis.
 *
 * Error text: every function that can fail takes `char *err, size_t errlen`
 * (err may be NULL) and writes one short sentence there, such as
 * "job: element 4 (job_id) must be an integer".
 */
#ifndef TEMPEST_CODEC_H
#define TEMPEST_CODEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/** A decoded job; the borrowed fields point into `root`. */
typedef struct tp_job_parts {
    json_t *root;           /**< new reference to the decoded array */
    const char *action;     /**< borrowed from root; non-empty */
    json_t *args;           /**< borrowed from root; a JSON array */
    const char *respond_to; /**< borrowed from root, or NULL (JSON null) */
    long long id;           /**< job id, >= 0 */
} tp_job_parts;

/**
 * Decodes a job `[action, args, respond_to, job_id]` from `buf` (`len`
 * bytes, need not be NUL-terminated). Exactly four elements; action a
 * non-empty string; args an array; respond_to a non-empty string or null;
 * job_id an integer >= 0. Returns 0 and fills `out` (release it with
 * tp_job_parts_clear), or TEMPEST_EPROTO with `out` zeroed and `err` set.
 */
int tp_job_decode(const char *buf, size_t len, tp_job_parts *out, char *err, size_t errlen);

/**
 * Decodes the JSON array in `buf` (`len` bytes) when it holds only plain
 * values (no reals, no \u escapes, nesting at most 32 deep): a new
 * reference, equal to what json_loadb(buf, len, JSON_ALLOW_NUL) returns.
 * NULL otherwise (or out of memory): then ask json_loadb().
 */
json_t *tp_json_fast(const char *buf, size_t len);

/**
 * Decodes the JSON in `buf` (`len` bytes) as json_loadb(buf, len, flags,
 * jerr) does, trying tp_json_fast first: a new reference, or NULL with
 * `jerr` filled by json_loadb().
 */
json_t *tp_json_load(const char *buf, size_t len, size_t flags, json_error_t *jerr);

/** Releases what tp_job_decode put in `parts` and zeroes it. */
void tp_job_parts_clear(tp_job_parts *parts);

/**
 * Encodes a job as compact JSON. `args` is borrowed (must be an array);
 * `respond_to` may be NULL (JSON null). Returns a malloc'd NUL-terminated
 * string (free() it) with its length in `*len`, or NULL on a bad argument
 * or no memory.
 */
char *tp_job_encode(const char *action, json_t *args, const char *respond_to, long long id,
                    size_t *len);

/**
 * Decodes the JSON of an answer (any JSON value, NUL characters inside
 * strings allowed). Returns a new reference, or NULL with `err` set.
 */
json_t *tp_answer_decode(const char *buf, size_t len, char *err, size_t errlen);

/**
 * Encodes an answer (borrowed; any JSON value) compactly. Returns a malloc'd
 * string with its length in `*len`, or NULL on no memory.
 */
char *tp_answer_encode(json_t *answer, size_t *len);

/** One request header as given by the HTTP server (borrowed strings). */
typedef struct tp_http_header {
    const char *name;
    const char *value;
} tp_http_header;

/**
 * Builds the argument of a `url` job:
 * `{"method": ..., "url": ..., "headers": {...}, "body": ...}`. Header names
 * are lower-cased; a repeated header's values are joined with ", " in
 * order. `body` (`body_len` bytes, may hold NULs) is included only when
 * `body != NULL`, and must be valid UTF-8. Returns a new reference, or NULL
 * with `err` set (invalid UTF-8 in the body, the URL or a header; no memory).
 */
json_t *tp_url_request_new(const char *method, const char *url, const tp_http_header *headers,
                           size_t nheaders, const char *body, size_t body_len, char *err,
                           size_t errlen);

/** A validated `url` answer; pointers are borrowed from the answer. */
typedef struct tp_http_answer {
    int status;       /**< 100..599, or 0 when the answer carries none */
    json_t *headers;  /**< an object, or NULL */
    const char *body; /**< NULL when the answer carries none */
    size_t body_len;
} tp_http_answer;

/**
 * Validates an answer `[status, headers, body]` of the `url` action.
 * With `first`, status must be an integer 100..599 and headers an object
 * (or null); later answers of a stream may carry null status and headers.
 * Header values are strings, numbers, or arrays of strings (one header
 * line each); names must be HTTP tokens and values free of CR, LF and NUL.
 * body is a string or null. Returns 0, or TEMPEST_EPROTO with `err` set.
 */
int tp_http_answer_parse(json_t *answer, bool first, tp_http_answer *out, char *err, size_t errlen);

/** One Sentinel of a `redis+sentinel://` URL. */
typedef struct tp_redis_sentinel {
    char *host; /**< malloc'd */
    int port;   /**< default 26379 */
} tp_redis_sentinel;

/** Most sentinels one URL may name. */
#define TP_MAX_SENTINELS 16

/** A parsed Redis URL; strings are malloc'd (tp_redis_url_clear frees). */
typedef struct tp_redis_url {
    char *host;                   /**< TCP host, or NULL for a unix socket or sentinels */
    int port;                     /**< TCP port (default 6379) */
    char *path;                   /**< unix socket path, or NULL */
    char *user;                   /**< ACL user of the master, or NULL */
    char *password;               /**< password of the master, or NULL */
    int db;                       /**< database number (default 0) */
    tp_redis_sentinel *sentinels; /**< malloc'd array, or NULL */
    int nsentinels;               /**< 0 unless redis+sentinel:// */
    char *master;                 /**< master name for the sentinels, or NULL */
    char *sentinel_password;      /**< AUTH for the sentinels, or NULL */
    tp_redis_sentinel *seeds;     /**< redis+cluster:// seed nodes (malloc'd), or NULL */
    int nseeds;                   /**< 0 unless redis+cluster:// */
    bool cluster_node; /**< a master's connection in cluster mode (no SELECT); never parsed */
} tp_redis_url;

/**
 * Parses `redis://[[user]:password@]host[:port][/db]` (host may be an IPv6
 * literal in brackets; user and password are percent-decoded),
 * `unix:///path[?db=N]`, or
 * `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db][?sentinel_password=P]`
 * (sentinel port default 26379; user and password are the master's), or
 * `redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]` (seed
 * nodes of a Redis Cluster, tried in turn; port default 6379). Returns
 * 0, TEMPEST_EADDR with `err` set, or TEMPEST_ENOMEM. `out` is zeroed on
 * failure.
 */
int tp_redis_url_parse(const char *url, tp_redis_url *out, char *err, size_t errlen);

/** Frees the strings of `url` and zeroes it. */
void tp_redis_url_clear(tp_redis_url *url);

/**
 * Parses `host:port` (or `[v6]:port`) with a port 0..65535 into a malloc'd
 * host and the port. Returns 0, TEMPEST_EADDR with `err` set, or
 * TEMPEST_ENOMEM.
 */
int tp_addr_parse(const char *addr, char **host, int *port, char *err, size_t errlen);

#endif
