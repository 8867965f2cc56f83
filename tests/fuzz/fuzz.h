/* SPDX-License-Identifier: MIT */
/*
 * What the libFuzzer targets share: CHECK(), an assertion that stays on
 * whatever NDEBUG says and reports the failed condition before it aborts,
 * so that libFuzzer records the input as a crash.
 */
#ifndef TEMPEST_FUZZ_H
#define TEMPEST_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

static inline void fuzz_fail(const char *cond, const char *file, int line) {
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, cond);
    abort();
}

/* A macro only to capture the condition's text and its line. */
#define CHECK(cond) ((cond) ? (void)0 : fuzz_fail(#cond, __FILE__, __LINE__))

/* True when all `n` bytes at `p` are zero (an output cleared on failure). */
static inline int fuzz_all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0)
            return 0;
    }
    return 1;
}

#endif
