/* SPDX-License-Identifier: MIT */
/*
 * What the codec's files share and their callers never see: the error
 * sentence, a bounded string copy, the UTF-8 check and two character
 * classes. lib/codec_text.c defines the functions; the other codec files
 * use them.
 */
#ifndef TEMPEST_CODEC_INTERNAL_H
#define TEMPEST_CODEC_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "internal.h"

/** Writes the error sentence to `err` (when given) and returns `code`. */
int tp_codec_seterr(char *err, size_t errlen, int code, const char *fmt, ...) TP_PRINTF(4, 5);

/** A malloc'd NUL-terminated copy of `n` bytes of `s`, or NULL. */
char *tp_codec_dupn(const char *s, size_t n);

/** The length of the valid UTF-8 sequence at `p` (`n` > 0 bytes left), or 0
 *  (RFC 3629, as jansson checks it). */
size_t tp_utf8_seq(const unsigned char *p, size_t n);

static inline bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

static inline bool is_alnum(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

#endif
