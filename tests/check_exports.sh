#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Checks the dynamic symbol table of a shared library: every exported
# function or variable must be named tempest_*, and there must be at least
# one (an empty table means the export macro or visibility broke). Like
# jansson's check-exports. Usage: tests/check_exports.sh path/to/libtempest.so
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 LIB.so" >&2
    exit 2
fi
lib=$1
if [[ ! -f $lib ]]; then
    echo "check_exports: no such file: $lib" >&2
    exit 2
fi

# Lines look like "0000000000001234 T tempest_node_new". Keep defined code and
# data symbols (T D B R, weak W V, indirect i, unique u, small G S) and drop
# absolute symbols (A: version nodes). Symbols the linker itself may export
# on some toolchains are not ours and are ignored.
symbols=$(nm -D --defined-only "$lib" | awk '
    NF >= 3 && $2 ~ /^[TDBRWVGSiu]$/ { print $3 }' |
    sed 's/@.*//' |
    grep -vxE '_init|_fini|_edata|_end|__bss_start' || true)

offenders=$(printf '%s\n' "$symbols" | grep -v '^tempest_' | grep -v '^$' || true)
count=$(printf '%s\n' "$symbols" | grep -c '^tempest_' || true)

status=0
if [[ -n $offenders ]]; then
    echo "check_exports: $lib exports symbols outside the tempest_ namespace:" >&2
    while IFS= read -r name; do
        echo "  $name" >&2
    done <<<"$offenders"
    status=1
fi
if [[ $count -eq 0 ]]; then
    echo "check_exports: $lib exports no tempest_* symbol at all" >&2
    status=1
fi
if [[ $status -eq 0 ]]; then
    echo "check_exports: $lib exports $count symbols, all tempest_*"
fi
exit "$status"
