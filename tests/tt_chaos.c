/* SPDX-License-Identifier: MIT */
/* See tt_chaos.h. */
#include <jansson.h>
#include <stdlib.h>

#include "internal.h"
#include "tt_chaos.h"

static long counted, fail_at;
static bool failed;

static void *chaos_malloc(size_t n) {
    if (++counted == fail_at) {
        failed = true;
        return NULL;
    }
    return malloc(n);
}

static void *chaos_realloc(void *p, size_t n) {
    if (++counted == fail_at) {
        failed = true;
        return NULL;
    }
    return realloc(p, n);
}

void tt_chaos_on(long at) {
    counted = 0;
    fail_at = at;
    failed = false;
    tp_set_allocator(chaos_malloc, chaos_realloc);
    json_set_alloc_funcs(chaos_malloc, free);
}

void tt_chaos_off(void) {
    counted = 0;
    fail_at = 0;
    tp_set_allocator(NULL, NULL);
    json_set_alloc_funcs(malloc, free);
}

bool tt_chaos_failed(void) {
    return failed;
}
