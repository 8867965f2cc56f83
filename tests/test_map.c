/* SPDX-License-Identifier: MIT */
/* Unit tests of the id-to-pointer map, checked against a plain array model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "internal.h"

static void test_put_get_del(void **state) {
    (void)state;
    tp_map m = {0};
    int vals[3];
    assert_int_equal(tp_map_put(&m, 1, &vals[0]), 0);
    assert_int_equal(tp_map_put(&m, 2, &vals[1]), 0);
    assert_int_equal(tp_map_put(&m, 2, &vals[2]), 0);
    assert_int_equal(m.len, 2);
    assert_ptr_equal(tp_map_get(&m, 2), &vals[2]);
    assert_null(tp_map_get(&m, 3));
    assert_ptr_equal(tp_map_del(&m, 1), &vals[0]);
    assert_null(tp_map_del(&m, 1));
    assert_int_equal(tp_map_put(&m, 0, &vals[0]), TEMPEST_EINVAL);
    assert_int_equal(tp_map_put(&m, -4, &vals[0]), TEMPEST_EINVAL);
    tp_map_clear(&m);
    assert_null(tp_map_get(&m, 2));
}

/* Random operations against a model: catches probe-chain breakage. */
static void test_against_model(void **state) {
    (void)state;
    enum { N = 4096 };
    static char model[N];
    static char marks[N];
    tp_map m = {0};
    srand(7);
    for (int step = 0; step < 200000; step++) {
        long long k = 1 + rand() % (N - 1);
        if (rand() % 3) {
            assert_int_equal(tp_map_put(&m, k, &marks[k]), 0);
            model[k] = 1;
        } else {
            void *v = tp_map_del(&m, k);
            assert_ptr_equal(v, model[k] ? &marks[k] : NULL);
            model[k] = 0;
        }
    }
    size_t count = 0;
    for (long long k = 1; k < N; k++) {
        assert_ptr_equal(tp_map_get(&m, k), model[k] ? &marks[k] : NULL);
        count += (size_t)model[k];
    }
    assert_int_equal(m.len, count);
    size_t pos = 0, seen = 0;
    long long key;
    void *val;
    while (tp_map_next(&m, &pos, &key, &val)) {
        assert_true(model[key]);
        assert_ptr_equal(val, &marks[key]);
        seen++;
    }
    assert_int_equal(seen, count);
    while (tp_map_pop(&m) != NULL)
        count--;
    assert_int_equal(count, 0);
    tp_map_clear(&m);
}

static void test_strerror(void **state) {
    (void)state;
    assert_string_equal(tempest_strerror(TEMPEST_ETIMEDOUT), "timed out");
    assert_string_equal(tempest_strerror(12345), "unknown error");
    for (int c = 0; c >= TEMPEST_EAGAIN; c--)
        assert_string_not_equal(tempest_strerror(c), "unknown error");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_against_model),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests_name("map", tests, NULL, NULL);
}
