#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Checks that libtempest works as a meson subproject: a throwaway outside
# project gets this source tree under subprojects/tempest, finds it with
# dependency('tempest') (meson.override_dependency), builds a program that
# includes <tempest/tempest.h>, and runs it.
set -euo pipefail

src=${TEMPEST_SOURCE_ROOT:?set by tests/meson.build}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tempest-subproject-XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

mkdir -p "$tmp/subprojects/tempest"
# Copy the sources only (no build trees, no git metadata).
tar -C "$src" --exclude='./build*' --exclude=./.git --exclude=./node_modules -cf - . |
    tar -C "$tmp/subprojects/tempest" -xf -

cat >"$tmp/meson.build" <<'MESON'
project('outside', 'c', default_options: ['c_std=c11'])
tempest = dependency('tempest', default_options: ['tests=false', 'examples=false'])
executable('app', 'app.c', dependencies: tempest)
MESON
cat >"$tmp/app.c" <<'C'
#include <stdio.h>
#include <tempest/tempest.h>
int main(void) {
    tempest_node_options o = {.redis_url = "unix:///nonexistent/tempest.sock"};
    tempest_node *node = tempest_node_new(NULL, &o, NULL);
    printf("%s %s %d\n", TEMPEST_VERSION_STRING, tempest_strerror(TEMPEST_EDOWN), node != NULL);
    tempest_node_free(node);
    return 0;
}
C
meson setup "$tmp/b" "$tmp" >"$tmp/setup.log" 2>&1 || { cat "$tmp/setup.log"; exit 1; }
meson compile -C "$tmp/b" >"$tmp/compile.log" 2>&1 || { cat "$tmp/compile.log"; exit 1; }
out=$("$tmp/b/app")
expected="$(sed -n "s/^  version: '\(.*\)',$/\1/p" "$src/meson.build") not connected 1"
if [[ $out != "$expected" ]]; then
    echo "subproject program printed '$out', expected '$expected'" >&2
    exit 1
fi
echo "subproject build OK: $out"
