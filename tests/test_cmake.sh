#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Installs the current build into a temporary DESTDIR and proves that a
# CMake project finds libtempest with find_package(tempest) alone: it links
# the imported target tempest::tempest, which must bring the include
# directory, the shared library and the libevent and jansson link needs
# (the program calls all three); the version file accepts 0.1 and refuses
# other versions. Run by `meson test` (suite "build"), which sets
# TEMPEST_BUILD_ROOT to the build directory. Needs Debian's cmake: skipped
# (77) without it, except under CI=true, where that is a failure.
set -euo pipefail

build=${TEMPEST_BUILD_ROOT:?TEMPEST_BUILD_ROOT must name the meson build directory}

fail() {
    echo "test_cmake: $*" >&2
    exit 1
}

if ! command -v cmake >/dev/null 2>&1; then
    [[ ${CI:-} != true ]] || fail "cmake is not installed (CI=true: not skipping)"
    echo "test_cmake: cmake is not installed; skipping. Install it with:" >&2
    echo "  sudo apt-get install -y cmake" >&2
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tempest-cmake-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/root

# 1. Install (no rebuild: meson test has just built everything).
meson install -C "$build" --destdir "$dest" --no-rebuild --quiet ||
    fail "meson install --destdir failed"
config=$(find "$dest" -name tempestConfig.cmake -path '*/cmake/tempest/*' -print -quit)
[[ -n $config ]] || fail "no cmake/tempest/tempestConfig.cmake under $dest"
[[ -f $(dirname "$config")/tempestConfigVersion.cmake ]] ||
    fail "tempestConfigVersion.cmake is not installed beside $config"
pc=$(find "$dest" -name tempest.pc -path '*/pkgconfig/*' -print -quit)
[[ -n $pc ]] || fail "no tempest.pc under $dest"
version=$(sed -n 's/^Version: //p' "$pc")
so=$(find "$dest" -name libtempest.so -print -quit)
[[ -n $so ]] || fail "libtempest.so is not installed"
libdir=$(dirname "$so")

# The staged prefix is what a user puts in CMAKE_PREFIX_PATH: the meson
# prefix under the DESTDIR.
prefix=$(meson introspect --buildoptions "$build" |
    python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')
[[ -d $dest$prefix ]] || fail "the prefix $prefix is not under $dest"

# 2. A small CMake project: the version rules first (nothing may be found
# for 1.0 or 0.2), then the real find_package.
mkdir "$tmp/app"
cat >"$tmp/app/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.13)
project(tempest_consumer C)

foreach(wrong 1.0 0.2)
    find_package(tempest ${wrong} QUIET)
    if(tempest_FOUND)
        message(FATAL_ERROR "find_package(tempest ${wrong}) accepted version ${tempest_VERSION}")
    endif()
    unset(tempest_DIR CACHE)
endforeach()

find_package(tempest 0.1 REQUIRED)
if(NOT TARGET tempest::tempest)
    message(FATAL_ERROR "find_package(tempest) made no tempest::tempest target")
endif()
message(STATUS "tempest version ${tempest_VERSION} from ${tempest_DIR}")

add_executable(app app.c)
set_property(TARGET app PROPERTY C_STANDARD 11)
target_link_libraries(app PRIVATE tempest::tempest)
CMAKE

cat >"$tmp/app/app.c" <<'C'
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <tempest/tempest.h>

int main(void) {
    const char *text = tempest_strerror(TEMPEST_ETIMEDOUT);
    if (text == NULL || *text == '\0' || strcmp(text, tempest_strerror(-9999)) == 0)
        return 1;
    struct event_base *base = event_base_new(); /* libevent, through the target */
    json_t *j = json_pack("{s:s}", "version", TEMPEST_VERSION_STRING); /* jansson */
    if (base == NULL || j == NULL)
        return 1;
    printf("version %s\n", json_string_value(json_object_get(j, "version")));
    printf("strerror %s\n", text);
    json_decref(j);
    event_base_free(base);
    return 0;
}
C

cflags="-Wall -Wextra -Werror"
# A sanitizer build (scripts/test --sanitize) installs a library that needs
# the sanitizer runtimes: a program using it must be built the same way.
undefined_syms=$(nm -D --undefined-only "$so")
if grep -q '__asan_' <<<"$undefined_syms"; then
    cflags+=" -fsanitize=address"
fi
if grep -q '__ubsan_' <<<"$undefined_syms"; then
    cflags+=" -fsanitize=undefined"
fi

generator=()
if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi
cmake -S "$tmp/app" -B "$tmp/app/build" "${generator[@]}" \
    -DCMAKE_PREFIX_PATH="$dest$prefix" -DCMAKE_C_FLAGS="$cflags" \
    >"$tmp/configure.log" 2>&1 || {
    cat "$tmp/configure.log" >&2
    fail "cmake could not configure the project against $dest$prefix"
}
grep "tempest version" "$tmp/configure.log"
grep -q "tempest version $version from $(dirname "$config")" "$tmp/configure.log" ||
    fail "find_package did not take tempest $version from the staged install"
cmake --build "$tmp/app/build" >"$tmp/build.log" 2>&1 || {
    cat "$tmp/build.log" >&2
    fail "cmake --build failed"
}

# 3. Run it: the target's library is the staged one (CMake's build RPATH
# points there, as it does for any imported library outside the system).
app=$tmp/app/build/app
ldd_out=$(ldd "$app")
grep -q "libtempest.so.* => $libdir/" <<<"$ldd_out" ||
    fail "app does not load libtempest from $libdir: $ldd_out"
out=$("$app") || fail "app exited with $?"
echo "$out"
[[ $(sed -n 1p <<<"$out") == "version $version" ]] ||
    fail "app printed the wrong version (tempest.pc says $version)"
[[ $(sed -n 2p <<<"$out") == "strerror "?* ]] || fail "app printed no error text"

echo "test_cmake: OK (installed, find_package(tempest) configured, built against tempest::tempest, ran)"
