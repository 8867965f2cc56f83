/* SPDX-License-Identifier: MIT */
/*
 * Allocation failure on demand for the chaos tests: the library's
 * allocator (tp_set_allocator) and jansson's are replaced by one that fails
 * the Nth allocation from now, once, and counts the rest.
 */
#ifndef TEMPEST_TEST_CHAOS_H
#define TEMPEST_TEST_CHAOS_H

#include <stdbool.h>

/** Makes the `at`th allocation from now fail (1: the next one); clears the
 *  record of a failure. */
void tt_chaos_on(long at);

/** Gives the library and jansson malloc and realloc back; the record of a
 *  failure stays. */
void tt_chaos_off(void);

/** True when an allocation was failed since tt_chaos_on. */
bool tt_chaos_failed(void);

#endif
