/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: Redis URLs (tp_redis_url_parse) and host:port addresses
 * (tp_addr_parse), each given the input as a NUL-terminated string. A
 * parsed URL names either a TCP host with a port from 1 to 65535 or a unix
 * socket path, a database >= 0, and a user only with a password; a parsed
 * address has a non-empty host and a port from 0 to 65535, and the same
 * text after "redis://" must parse to the same host and port when the port
 * is not 0. A refusal leaves the outputs zeroed and says why. The node's
 * loopback test (tp_host_is_loopback) gets the input and every host parsed
 * from it, bare and in brackets, and must say the same of both.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tempest/tempest.h>

#include "codec.h"
#include "fuzz.h"
#include "listener.h"

/* `host` and "[host]" are the same host to the loopback test. */
static void check_loopback(const char *host) {
    size_t n = strlen(host) + 3;
    char *bracketed = malloc(n);

    CHECK(bracketed != NULL);
    snprintf(bracketed, n, "[%s]", host);
    CHECK(tp_host_is_loopback(host) == tp_host_is_loopback(bracketed));
    free(bracketed);
}

static void check_url(const char *text) {
    tp_redis_url url;
    char err[256] = "";
    int rc = tp_redis_url_parse(text, &url, err, sizeof err);

    if (rc != 0) {
        CHECK(rc == TEMPEST_EADDR || rc == TEMPEST_ENOMEM);
        CHECK(fuzz_all_zero(&url, sizeof url));
        CHECK(err[0] != '\0');
        return;
    }
    CHECK((url.host == NULL) != (url.path == NULL));
    if (url.host != NULL) {
        CHECK(url.host[0] != '\0' && url.port >= 1 && url.port <= 65535);
        check_loopback(url.host);
    } else
        CHECK(url.path[0] == '/' && url.path[1] != '\0');
    CHECK(url.db >= 0);
    CHECK(url.user == NULL || url.password != NULL);
    CHECK(url.password == NULL || url.password[0] != '\0');
    tp_redis_url_clear(&url);
    CHECK(fuzz_all_zero(&url, sizeof url));
}

/* "redis://" + an address that parsed must give the same host and port. */
static void check_as_url(const char *addr, const char *host, int port) {
    size_t n = strlen(addr) + sizeof "redis://";
    char *text = malloc(n);
    tp_redis_url url;

    CHECK(text != NULL);
    snprintf(text, n, "redis://%s", addr);
    CHECK(tp_redis_url_parse(text, &url, NULL, 0) == 0);
    CHECK(url.host != NULL && strcmp(url.host, host) == 0 && url.port == port);
    tp_redis_url_clear(&url);
    free(text);
}

static void check_addr(const char *text) {
    char err[256] = "", *host = NULL;
    int port = -1;
    int rc = tp_addr_parse(text, &host, &port, err, sizeof err);

    if (rc != 0) {
        CHECK(rc == TEMPEST_EADDR || rc == TEMPEST_ENOMEM);
        CHECK(host == NULL && port == 0);
        CHECK(err[0] != '\0');
        return;
    }
    CHECK(host != NULL && host[0] != '\0');
    CHECK(port >= 0 && port <= 65535);
    check_loopback(host);
    if (port > 0)
        check_as_url(text, host, port);
    free(host);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);

    CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    check_url(text);
    check_addr(text);
    (void)tp_host_is_loopback(text);
    free(text);
    return 0;
}
