# shellcheck shell=bash
# SPDX-License-Identifier: MIT
#
# Helpers shared by scripts/test and scripts/demo (sourced, not run): find
# the repository root, install missing Debian packages, configure and build a
# meson build directory. Everything here is non-interactive.

# The repository root, whatever the caller's working directory.
# shellcheck disable=SC2034 # used by the scripts that source this file
TEMPEST_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)

# What building libtempest with its tests needs on Debian 12. gcc and
# libc6-dev are the part of build-essential we use; the sanitizer runtimes
# (libasan8, libubsan1) come with gcc. redis-server brings redis-tools
# (redis-cli) as a dependency.
# shellcheck disable=SC2034
TEMPEST_BUILD_PACKAGES=(gcc libc6-dev meson ninja-build pkg-config
    libhiredis-dev libevent-dev libjansson-dev libcmocka-dev redis-server)

# What CI checks beyond the build and the tests, installed by .ci/run:
# clang-format for the formatting check and cmake for tests/test_cmake.sh
# (the CMake consumer test, which fails under CI=true without it).
# shellcheck disable=SC2034
TEMPEST_CI_PACKAGES=(clang-format cmake)

# What scripts/check-docs needs: Doxygen, for the API reference of the
# public headers (the `docs` target of meson.build also uses it when found).
# shellcheck disable=SC2034
TEMPEST_DOCS_PACKAGES=(doxygen)

tempest_die() {
    echo "scripts/$(basename -- "$0"): $*" >&2
    exit 1
}

# True when the Debian package is installed (any architecture).
tempest_pkg_installed() {
    local status
    # shellcheck disable=SC2016 # ${Status} is dpkg-query's field, not ours
    status=$(dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null || true)
    [[ $status == *"install ok installed"* ]]
}

# tempest_ensure_packages PKG...: installs the missing ones with apt-get when
# root; otherwise prints the exact command and exits 1. Off Debian (no
# dpkg-query) it only warns: the build will say what is missing.
tempest_ensure_packages() {
    local pkg missing=()
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "note: no dpkg-query (not Debian?); not checking for: $*" >&2
        return 0
    fi
    for pkg in "$@"; do
        tempest_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "Missing Debian packages: ${missing[*]}" >&2
        echo "Install them with:" >&2
        echo "  sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "Installing missing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || tempest_die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        tempest_die "apt-get install ${missing[*]} failed"
}

# tempest_build DIR [MESON_OPTION...]: configures DIR (a fresh `meson setup`,
# or `meson configure` with the given options when DIR already exists, so
# that options from an earlier run never linger unseen) and compiles it.
tempest_build() {
    local dir=$1
    shift
    if [[ -f $dir/meson-private/coredata.dat ]]; then
        if [[ $# -gt 0 ]] && ! meson configure "$dir" "$@"; then
            echo "meson configure failed; setting $dir up again" >&2
            meson setup --wipe "$dir" "$@" || tempest_die "meson setup --wipe $dir failed"
        fi
    else
        meson setup "$dir" "$@" || tempest_die "meson setup $dir failed"
    fi
    meson compile -C "$dir" || tempest_die "build failed in $dir"
}
