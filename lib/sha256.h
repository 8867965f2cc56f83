/* SPDX-License-Identifier: MIT */
/*
 * SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), for the front's signed
 * session cookies and the cache's keys and ETags. Small and portable; no
 * dependency. Not hardened against side channels beyond what HMAC needs
 * (the verification compares in constant time, lib/session.c).
 */
#ifndef TEMPEST_SHA256_H
#define TEMPEST_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define TP_SHA256_LEN 32

typedef struct tp_sha256 {
    uint32_t h[8];
    uint64_t bytes; /* message length so far */
    unsigned char block[64];
    size_t fill; /* bytes in `block` */
} tp_sha256;

void tp_sha256_init(tp_sha256 *s);
void tp_sha256_update(tp_sha256 *s, const void *data, size_t len);
/** Writes the digest to `out` and leaves `s` unusable until init. */
void tp_sha256_final(tp_sha256 *s, unsigned char out[TP_SHA256_LEN]);

/** The digest of one buffer. */
void tp_sha256_buf(const void *data, size_t len, unsigned char out[TP_SHA256_LEN]);

/** HMAC-SHA256 of `msg` under `key` (any length). */
void tp_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                    unsigned char out[TP_SHA256_LEN]);

/** Writes the first `n` bytes of `in` as 2n lower-case hex digits and a NUL. */
void tp_hex(const unsigned char *in, size_t n, char *out);

#endif
