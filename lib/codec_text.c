/* SPDX-License-Identifier: MIT */
/*
 * The text helpers at the bottom of the codec: the error sentence, a
 * bounded string copy and the UTF-8 check (lib/codec_internal.h). The
 * formats (lib/codec.c), the JSON fast path (lib/codec_fast.c) and the
 * addresses (lib/codec_addr.c) use them; they use nothing of the codec.
 */
#include "codec_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tp_codec_seterr(char *err, size_t errlen, int code, const char *fmt, ...) {
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

char *tp_codec_dupn(const char *s, size_t n) {
    char *p = tp_malloc(n + 1);

    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* RFC 3629, as jansson checks it. */
size_t tp_utf8_seq(const unsigned char *p, size_t n) {
    static const unsigned min[5] = {0, 0, 0x80, 0x800, 0x10000}; /* shortest form */
    unsigned cp;
    size_t k;

    if (p[0] < 0x80)
        return 1;
    if (p[0] < 0xC2 || p[0] > 0xF4) /* continuation, overlong lead, > U+10FFFF */
        return 0;
    k = p[0] < 0xE0 ? 2 : p[0] < 0xF0 ? 3 : 4;
    if (n < k)
        return 0;
    cp = p[0] & (0x7Fu >> k);
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3Fu);
    }
    if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k;
}
