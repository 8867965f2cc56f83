/* SPDX-License-Identifier: MIT */
/*
 * A small open-addressing hash map from positive integer keys (job ids) to
 * pointers, with linear probing and backward-shift deletion (no
 * tombstones), kept at most half full.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct tp_map_slot {
    long long key; /* 0: empty */
    void *val;
};

static size_t slot_of(const tp_map *m, long long key) {
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (m->cap - 1);
}

static void place(tp_map *m, long long key, void *val) {
    size_t i = slot_of(m, key);
    while (m->slots[i].key != 0 && m->slots[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (m->slots[i].key == 0)
        m->len++;
    m->slots[i].key = key;
    m->slots[i].val = val;
}

static int grow(tp_map *m) {
    size_t cap = m->cap ? m->cap * 2 : 16;
    struct tp_map_slot *old = m->slots;
    size_t oldcap = m->cap;
    struct tp_map_slot *slots = tp_calloc(cap, sizeof *slots);
    if (slots == NULL)
        return TEMPEST_ENOMEM;
    m->slots = slots;
    m->cap = cap;
    m->len = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].key != 0)
            place(m, old[i].key, old[i].val);
    free(old);
    return 0;
}

int tp_map_put(tp_map *m, long long key, void *val) {
    if (key <= 0)
        return TEMPEST_EINVAL;
    if ((m->len + 1) * 2 > m->cap && grow(m) != 0)
        return TEMPEST_ENOMEM;
    place(m, key, val);
    return 0;
}

static struct tp_map_slot *find(const tp_map *m, long long key) {
    if (m->cap == 0 || key <= 0)
        return NULL;
    for (size_t i = slot_of(m, key);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].key == key)
            return &m->slots[i];
        if (m->slots[i].key == 0)
            return NULL;
    }
}

void *tp_map_get(const tp_map *m, long long key) {
    struct tp_map_slot *s = find(m, key);
    return s ? s->val : NULL;
}

/* Empties slot `i` and shifts back the entries of the probe run after it. */
static void remove_at(tp_map *m, size_t i) {
    size_t mask = m->cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (m->slots[j].key == 0)
            break;
        size_t home = slot_of(m, m->slots[j].key);
        /* Move j back to i when its home is not within (i, j]. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].key = 0;
    m->slots[i].val = NULL;
    m->len--;
}

void *tp_map_del(tp_map *m, long long key) {
    struct tp_map_slot *s = find(m, key);
    if (s == NULL)
        return NULL;
    void *val = s->val;
    remove_at(m, (size_t)(s - m->slots));
    return val;
}

void *tp_map_pop(tp_map *m) {
    for (size_t i = 0; i < m->cap && m->len > 0; i++) {
        if (m->slots[i].key != 0) {
            void *val = m->slots[i].val;
            remove_at(m, i);
            return val;
        }
    }
    return NULL;
}

bool tp_map_next(const tp_map *m, size_t *pos, long long *key, void **val) {
    for (; *pos < m->cap; (*pos)++) {
        if (m->slots[*pos].key != 0) {
            *key = m->slots[*pos].key;
            *val = m->slots[*pos].val;
            (*pos)++;
            return true;
        }
    }
    return false;
}

void tp_map_clear(tp_map *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}
