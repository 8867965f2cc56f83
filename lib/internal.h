/* SPDX-License-Identifier: MIT */
/*
 * What several private files share: logging, error filling, and the small
 * id-to-pointer map. Nothing here is exported.
 */
#ifndef TEMPEST_INTERNAL_H
#define TEMPEST_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <tempest/tempest.h>

#if defined(__GNUC__)
#define TP_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define TP_PRINTF(f, a)
#endif

/** Where log lines go: a copy of the node's log options. */
typedef struct tp_logger {
    tempest_log_fn *fn;
    void *arg;
    int level;
} tp_logger;

/** Formats and passes one line to `lg` when its level is enabled. */
void tp_log(const tp_logger *lg, int level, const char *fmt, ...) TP_PRINTF(3, 4);

/** Fills `err` (may be NULL) with `code` and a formatted message. */
void tp_error_set(tempest_error *err, int code, const char *fmt, ...) TP_PRINTF(3, 4);

/** Open-addressing map from a positive integer key to a pointer. */
typedef struct tp_map {
    struct tp_map_slot *slots;
    size_t cap; /* power of two, or 0 */
    size_t len;
} tp_map;

/** Inserts or replaces; returns 0 or TEMPEST_ENOMEM (map unchanged). */
int tp_map_put(tp_map *m, long long key, void *val);
/** The value of `key`, or NULL. */
void *tp_map_get(const tp_map *m, long long key);
/** Removes `key`; returns its value, or NULL when absent. */
void *tp_map_del(tp_map *m, long long key);
/** Removes and returns any one value (NULL when empty), for teardown. */
void *tp_map_pop(tp_map *m);
/** Iterates: starts with *pos = 0; returns false at the end. The map must
 *  not change during the iteration. */
bool tp_map_next(const tp_map *m, size_t *pos, long long *key, void **val);
/** Frees the slots; the values are the caller's. */
void tp_map_clear(tp_map *m);

/** A service or namespace name: 1 to 200 bytes, no blank or control
 *  character, not "*" (lib/error.c). */
bool tp_name_valid(const char *s);

/** Milliseconds of CLOCK_MONOTONIC (lib/error.c). */
long long tp_now_ms(void);

/* Allocation wrappers (lib/alloc.c); release with free(). */
void *tp_malloc(size_t size);
void *tp_calloc(size_t n, size_t size);
void *tp_realloc(void *ptr, size_t size);
/** Duplicates a string or returns NULL for NULL (and on no memory). */
char *tp_strdup(const char *s);
/** Tests only: replaces the allocator (NULL restores malloc/realloc). */
void tp_set_allocator(void *(*malloc_fn)(size_t), void *(*realloc_fn)(void *, size_t));

#endif
