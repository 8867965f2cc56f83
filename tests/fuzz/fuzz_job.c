/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: job decoding (tp_job_decode). An input that decodes
 * must re-encode (tp_job_encode) into a job that decodes again to the same
 * action, args, respond_to and id, and encoding that must give the same
 * bytes again. An input that does not decode must leave the parts zeroed,
 * return TEMPEST_EPROTO and say why in the error text. The fast path
 * (tp_json_fast) either declines or builds what json_loadb() builds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <tempest/tempest.h>

#include "codec.h"
#include "fuzz.h"

static int same_text(const char *a, const char *b) {
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void check_decoded(const tp_job_parts *job) {
    CHECK(job->root != NULL && json_is_array(job->root));
    CHECK(job->action != NULL && job->action[0] != '\0');
    CHECK(json_is_array(job->args));
    CHECK(job->respond_to == NULL || job->respond_to[0] != '\0');
    CHECK(job->id >= 0);
}

/* Encodes `job`, decodes the result and compares; returns the encoding. */
static char *round_trip(const tp_job_parts *job, size_t *len) {
    tp_job_parts again;
    char err[256] = "";
    char *enc = tp_job_encode(job->action, job->args, job->respond_to, job->id, len);

    CHECK(enc != NULL);
    CHECK(*len == strlen(enc));
    CHECK(tp_job_decode(enc, *len, &again, err, sizeof err) == 0);
    check_decoded(&again);
    CHECK(strcmp(again.action, job->action) == 0);
    CHECK(same_text(again.respond_to, job->respond_to));
    CHECK(again.id == job->id);
    CHECK(json_equal(again.args, job->args));
    tp_job_parts_clear(&again);
    CHECK(fuzz_all_zero(&again, sizeof again));
    return enc;
}

static void check_fast(const char *buf, size_t size) {
    json_t *fast = tp_json_fast(buf, size), *slow;
    char *a, *b;

    if (fast == NULL)
        return;
    slow = json_loadb(buf, size, JSON_ALLOW_NUL, NULL);
    CHECK(slow != NULL && json_equal(fast, slow));
    a = json_dumps(fast, JSON_COMPACT);
    b = json_dumps(slow, JSON_COMPACT);
    CHECK(a != NULL && b != NULL && strcmp(a, b) == 0); /* members in the same order */
    free(a);
    free(b);
    json_decref(fast);
    json_decref(slow);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tp_job_parts job, again;
    char err[256] = "";
    size_t len1 = 0, len2 = 0;
    char *enc1, *enc2;
    int rc;

    check_fast((const char *)data, size);
    rc = tp_job_decode((const char *)data, size, &job, err, sizeof err);
    if (rc != 0) {
        CHECK(rc == TEMPEST_EPROTO);
        CHECK(fuzz_all_zero(&job, sizeof job));
        CHECK(err[0] != '\0');
        return 0;
    }
    check_decoded(&job);
    enc1 = round_trip(&job, &len1);
    /* The encoding of a decoded encoding is a fixed point. */
    CHECK(tp_job_decode(enc1, len1, &again, err, sizeof err) == 0);
    enc2 = round_trip(&again, &len2);
    CHECK(len1 == len2 && memcmp(enc1, enc2, len1) == 0);
    free(enc1);
    free(enc2);
    tp_job_parts_clear(&again);
    tp_job_parts_clear(&job);
    return 0;
}
