#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Installs the current build into a temporary DESTDIR and proves that an
# outside program finds libtempest through pkg-config alone: it includes
# <tempest/tempest.h>, links against the shared library, runs, and links
# again against libtempest.a with `pkg-config --static` (libevent's
# test-export). Run by `meson test` (suite "build"), which sets
# TEMPEST_BUILD_ROOT to the build directory.
set -euo pipefail

build=${TEMPEST_BUILD_ROOT:?TEMPEST_BUILD_ROOT must name the meson build directory}
cc=${CC:-cc}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tempest-install-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/root

fail() {
    echo "test_install: $*" >&2
    exit 1
}

# 1. Install (no rebuild: meson test has just built everything).
meson install -C "$build" --destdir "$dest" --no-rebuild --quiet ||
    fail "meson install --destdir failed"

# The libdir depends on the configuration (lib, lib64, lib/x86_64-linux-gnu):
# find the .pc file instead of guessing.
pc=$(find "$dest" -name tempest.pc -path '*/pkgconfig/*' -print -quit)
[[ -n $pc ]] || fail "no tempest.pc under $dest"
headers=$(find "$dest" -path '*/include/tempest/tempest.h' -print -quit)
[[ -n $headers ]] || fail "no include/tempest/tempest.h under $dest"
[[ -f $(dirname "$headers")/version.h ]] || fail "the generated tempest/version.h is not installed"

# 2. pkg-config sees the staged tree: PKG_CONFIG_PATH finds our .pc first
# (system .pc files of libevent, jansson and hiredis still resolve), and the
# sysroot maps the .pc's prefix (/usr/local) into the DESTDIR.
PKG_CONFIG_PATH=$(dirname "$pc")
PKG_CONFIG_SYSROOT_DIR=$dest
export PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
cflags=$(pkg-config --cflags tempest) || fail "pkg-config --cflags tempest failed"
libs=$(pkg-config --libs tempest) || fail "pkg-config --libs tempest failed"
static_libs=$(pkg-config --static --libs tempest) || fail "pkg-config --static --libs tempest failed"
version=$(pkg-config --modversion tempest)
[[ $cflags == *"$dest"* ]] || fail "cflags '$cflags' do not point into the staged install"
[[ $libs == *"$dest"* ]] || fail "libs '$libs' do not point into the staged install"
so=$(find "$dest" -name libtempest.so -print -quit)
[[ -n $so ]] || fail "libtempest.so is not installed"
libdir=$(dirname "$so")
[[ -f $libdir/libtempest.a ]] || fail "libtempest.a is not installed in $libdir"

# 3. An outside program, compiled strictly: the public headers must be clean.
cat >"$tmp/app.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <tempest/tempest.h>

int main(void) {
    const char *text = tempest_strerror(TEMPEST_ETIMEDOUT);
    if (text == NULL || *text == '\0' || strcmp(text, tempest_strerror(-9999)) == 0)
        return 1;
    printf("version %s\n", TEMPEST_VERSION_STRING);
    printf("strerror %s\n", text);
    return 0;
}
C
cflags_strict=(-std=c11 -Wall -Wextra -Werror)
# A sanitizer build (scripts/test --sanitize) installs a library that needs
# the sanitizer runtimes: a program using it must be built the same way.
undefined_syms=$(nm -D --undefined-only "$so")
if grep -q '__asan_' <<<"$undefined_syms"; then
    cflags_strict+=(-fsanitize=address)
fi
if grep -q '__ubsan_' <<<"$undefined_syms"; then
    cflags_strict+=(-fsanitize=undefined)
fi

check_output() { # $1: program, then its environment as VAR=value
    local prog=$1 out
    shift
    out=$(env "$@" "$prog") || fail "$prog exited with $?"
    echo "$out"
    [[ $(sed -n 1p <<<"$out") == "version $version" ]] ||
        fail "$prog printed the wrong version (pkg-config says $version)"
    [[ $(sed -n 2p <<<"$out") == "strerror "?* ]] || fail "$prog printed no error text"
}

# Shared: exactly the README's command line.
# shellcheck disable=SC2086 # pkg-config output is meant to be split
"$cc" "${cflags_strict[@]}" "$tmp/app.c" -o "$tmp/app" $cflags $libs ||
    fail "cc app.c \$(pkg-config --cflags --libs tempest) failed"
ldd_out=$(LD_LIBRARY_PATH=$libdir ldd "$tmp/app")
grep -q "libtempest.so.* => $libdir/" <<<"$ldd_out" ||
    fail "app does not load libtempest from $libdir: $ldd_out"
check_output "$tmp/app" "LD_LIBRARY_PATH=$libdir"

# Static: libtempest.a in place of -ltempest, its dependencies from
# `pkg-config --static --libs` (hiredis comes from Requires.private).
read -ra words <<<"$static_libs"
static_args=()
for w in "${words[@]}"; do
    if [[ $w == -ltempest ]]; then
        static_args+=("$libdir/libtempest.a")
    else
        static_args+=("$w")
    fi
done
# shellcheck disable=SC2086
"$cc" "${cflags_strict[@]}" "$tmp/app.c" -o "$tmp/app-static" $cflags "${static_args[@]}" ||
    fail "linking against libtempest.a with pkg-config --static --libs failed"
if ldd "$tmp/app-static" | grep -q libtempest; then
    fail "app-static still loads a shared libtempest"
fi
check_output "$tmp/app-static"

echo "test_install: OK (installed, compiled, linked shared and static, ran)"
