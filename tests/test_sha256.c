/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of lib/sha256.c: the SHA-256 examples of FIPS 180-4 (and the
 * NIST one-million-'a' message), the same digests fed in pieces of every
 * size, and the seven HMAC-SHA256 test cases of RFC 4231.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "sha256.h"

static void check_hex(const unsigned char *digest, size_t n, const char *want) {
    char hex[2 * TP_SHA256_LEN + 1];
    tp_hex(digest, n, hex);
    assert_string_equal(hex, want);
}

static const struct {
    const char *msg;
    const char *digest;
} vectors[] = {
    {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnop"
     "q"
     "rsmnopqrstnopqrstu",
     "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
};

static void test_fips_examples(void **state) {
    (void)state;
    unsigned char d[TP_SHA256_LEN];
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++) {
        tp_sha256_buf(vectors[i].msg, strlen(vectors[i].msg), d);
        check_hex(d, sizeof d, vectors[i].digest);
    }
}

/* The same digests when the message arrives in pieces of every size. */
static void test_pieces(void **state) {
    (void)state;
    unsigned char d[TP_SHA256_LEN];
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++) {
        size_t len = strlen(vectors[i].msg);
        for (size_t step = 1; step <= len; step++) {
            tp_sha256 s;
            tp_sha256_init(&s);
            for (size_t at = 0; at < len; at += step)
                tp_sha256_update(&s, vectors[i].msg + at, len - at < step ? len - at : step);
            tp_sha256_final(&s, d);
            check_hex(d, sizeof d, vectors[i].digest);
        }
    }
}

static void test_million_a(void **state) {
    (void)state;
    char *a = malloc(1000000);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    unsigned char d[TP_SHA256_LEN];
    tp_sha256_buf(a, 1000000, d);
    free(a);
    check_hex(d, sizeof d, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Every length around the padding boundaries (55, 56, 63, 64 bytes...):
 * one update and byte-by-byte updates agree. */
static void test_padding_lengths(void **state) {
    (void)state;
    unsigned char msg[200], d1[TP_SHA256_LEN], d2[TP_SHA256_LEN];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (unsigned char)(i * 7 + 1);
    for (size_t len = 0; len <= sizeof msg; len++) {
        tp_sha256_buf(msg, len, d1);
        tp_sha256 s;
        tp_sha256_init(&s);
        for (size_t i = 0; i < len; i++)
            tp_sha256_update(&s, msg + i, 1);
        tp_sha256_final(&s, d2);
        assert_memory_equal(d1, d2, sizeof d1);
    }
}

static void test_rfc4231(void **state) {
    (void)state;
    unsigned char k20_0b[20], k20_aa[20], d50_dd[50], k25[25], d50_cd[50], k20_0c[20], k131[131];
    memset(k20_0b, 0x0b, sizeof k20_0b);
    memset(k20_aa, 0xaa, sizeof k20_aa);
    memset(d50_dd, 0xdd, sizeof d50_dd);
    for (int i = 0; i < 25; i++)
        k25[i] = (unsigned char)(i + 1);
    memset(d50_cd, 0xcd, sizeof d50_cd);
    memset(k20_0c, 0x0c, sizeof k20_0c);
    memset(k131, 0xaa, sizeof k131);
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    const char *m7 = "This is a test using a larger than block-size key and a larger than "
                     "block-size data. The key needs to be hashed before being used by the HMAC "
                     "algorithm.";
    const struct {
        const void *key;
        size_t keylen;
        const void *msg;
        size_t msglen;
        size_t outlen;
        const char *mac;
    } cases[] = {
        {k20_0b, 20, "Hi There", 8, 32,
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"Jefe", 4, "what do ya want for nothing?", 28, 32,
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {k20_aa, 20, d50_dd, 50, 32,
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        {k25, 25, d50_cd, 50, 32,
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {k20_0c, 20, "Test With Truncation", 20, 16, "a3b6167473100ee06e0c796c2955552b"},
        {k131, 131, m6, strlen(m6), 32,
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {k131, 131, m7, strlen(m7), 32,
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        unsigned char mac[TP_SHA256_LEN];
        tp_hmac_sha256(cases[i].key, cases[i].keylen, cases[i].msg, cases[i].msglen, mac);
        check_hex(mac, cases[i].outlen, cases[i].mac);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fips_examples), cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_million_a),     cmocka_unit_test(test_padding_lengths),
        cmocka_unit_test(test_rfc4231),
    };
    return cmocka_run_group_tests_name("sha256", tests, NULL, NULL);
}
