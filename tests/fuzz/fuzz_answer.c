/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: answer decoding (tp_answer_decode), then validation as
 * a `url` answer (tp_http_answer_parse) both as the first answer of a
 * stream and as a later one. Checks: a decoded answer survives
 * tp_answer_encode and decoding again unchanged; whatever the first-answer
 * rules accept the later-answer rules accept too, with the same fields; an
 * accepted answer has a status in range, headers that are HTTP tokens with
 * values free of CR, LF and NUL, and a body that is the answer's string; a
 * refused one leaves the output zeroed and says why.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <tempest/tempest.h>

#include "codec.h"
#include "fuzz.h"

static void check_encode(json_t *v) {
    char err[256] = "";
    size_t len = 0;
    char *enc = tp_answer_encode(v, &len);
    json_t *again;

    CHECK(enc != NULL);
    CHECK(len == strlen(enc));
    again = tp_answer_decode(enc, len, err, sizeof err);
    CHECK(again != NULL);
    CHECK(json_equal(again, v));
    json_decref(again);
    free(enc);
}

static bool is_tchar(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_line_text(const json_t *v) {
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    if (s == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return false;
    }
    return true;
}

/* Every header would make a well-formed header line. */
static void check_headers(json_t *headers) {
    const char *name;
    json_t *value, *item;
    size_t i;

    json_object_foreach(headers, name, value) {
        size_t n = json_object_iter_key_len(json_object_key_to_iter(name));
        CHECK(n > 0);
        for (i = 0; i < n; i++)
            CHECK(is_tchar(name[i]));
        if (json_is_array(value)) {
            json_array_foreach(value, i, item) {
                CHECK(is_line_text(item));
            }
        } else {
            CHECK(json_is_number(value) || is_line_text(value));
        }
    }
}

static void check_accepted(json_t *answer, const tp_http_answer *out, bool first) {
    json_t *headers = json_array_get(answer, 1), *body = json_array_get(answer, 2);

    CHECK(json_is_array(answer) && json_array_size(answer) == 3);
    CHECK((out->status >= 100 && out->status <= 599) || (!first && out->status == 0));
    CHECK(out->headers == (json_is_object(headers) ? headers : NULL));
    CHECK(out->headers != NULL || json_is_null(headers));
    if (out->headers != NULL)
        check_headers(out->headers);
    CHECK(out->body == json_string_value(body));
    CHECK(out->body != NULL || (json_is_null(body) && out->body_len == 0));
    CHECK(out->body == NULL || out->body_len == json_string_length(body));
}

static int parse(json_t *answer, bool first, tp_http_answer *out) {
    char err[256] = "";
    int rc = tp_http_answer_parse(answer, first, out, err, sizeof err);

    if (rc == 0) {
        check_accepted(answer, out, first);
    } else {
        CHECK(rc == TEMPEST_EPROTO);
        CHECK(fuzz_all_zero(out, sizeof *out));
        CHECK(err[0] != '\0');
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tp_http_answer first, later;
    char err[256] = "";
    json_t *v = tp_answer_decode((const char *)data, size, err, sizeof err);

    if (v == NULL) {
        CHECK(err[0] != '\0');
        return 0;
    }
    check_encode(v);
    if (parse(v, true, &first) == 0) {
        CHECK(parse(v, false, &later) == 0);
        CHECK(first.status == later.status && first.headers == later.headers);
        CHECK(first.body == later.body && first.body_len == later.body_len);
    } else {
        (void)parse(v, false, &later);
    }
    json_decref(v);
    return 0;
}
