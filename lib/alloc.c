/* SPDX-License-Identifier: MIT */
/*
 * The library's own allocations go through these wrappers so that a test
 * can fail the Nth one (tp_set_allocator). Memory they return is always
 * released with free(): a replacement allocator must be malloc-compatible.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void *(*malloc_fn)(size_t) = malloc;
static void *(*realloc_fn)(void *, size_t) = realloc;

void tp_set_allocator(void *(*m)(size_t), void *(*r)(void *, size_t)) {
    malloc_fn = m ? m : malloc;
    realloc_fn = r ? r : realloc;
}

void *tp_malloc(size_t size) {
    return malloc_fn(size);
}

void *tp_calloc(size_t n, size_t size) {
    if (size != 0 && n > (size_t)-1 / size)
        return NULL;
    void *p = malloc_fn(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *tp_realloc(void *ptr, size_t size) {
    return realloc_fn(ptr, size);
}

char *tp_strdup(const char *s) {
    if (s == NULL)
        return NULL;
    size_t len = strlen(s) + 1;
    char *copy = malloc_fn(len);
    if (copy)
        memcpy(copy, s, len);
    return copy;
}
