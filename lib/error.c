/* SPDX-License-Identifier: MIT */
/*
 * Error codes to text, and the small helpers that fill a tempest_error and
 * format log lines, and the rule for names. Every string tempest_strerror returns is a literal.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

TEMPEST_API const char *tempest_strerror(int code) {
    switch (code) {
    case TEMPEST_OK:
        return "success";
    case TEMPEST_EINVAL:
        return "invalid argument";
    case TEMPEST_ENOMEM:
        return "out of memory";
    case TEMPEST_EDOWN:
        return "not connected";
    case TEMPEST_ETIMEDOUT:
        return "timed out";
    case TEMPEST_ECANCELED:
        return "cancelled";
    case TEMPEST_EPROTO:
        return "protocol error";
    case TEMPEST_EREDIS:
        return "redis error";
    case TEMPEST_ENOHANDLER:
        return "no handler for action";
    case TEMPEST_EIO:
        return "input/output error";
    case TEMPEST_ESTATE:
        return "invalid state";
    case TEMPEST_ELIMIT:
        return "limit exceeded";
    case TEMPEST_EADDR:
        return "bad address";
    case TEMPEST_EREMOTE:
        return "remote error";
    case TEMPEST_EAGAIN:
        return "try again later";
    default:
        return "unknown error";
    }
}

void tp_error_set(tempest_error *err, int code, const char *fmt, ...) {
    if (err == NULL)
        return;
    va_list ap;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

void tp_log(const tp_logger *lg, int level, const char *fmt, ...) {
    if (lg == NULL || lg->fn == NULL || level < lg->level)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    lg->fn(level, line, lg->arg);
}

bool tp_name_valid(const char *s) {
    size_t n = s != NULL ? strlen(s) : 0;
    if (n == 0 || n > 200 || strcmp(s, "*") == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 127)
            return false;
    return true;
}

long long tp_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
