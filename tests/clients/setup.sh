#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Installs what the `clients` test suite (tests/test_clients.sh) needs: Node.js
# (18 or later) with npm and Debian's chromium from apt when missing (as
# root; else it prints the apt-get line and stops), then the npm packages of
# tests/clients/package-lock.json with `npm ci`. No browser is downloaded:
# playwright-core drives /usr/bin/chromium. Runs from any directory.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=scripts/lib.sh
source "$here/../../scripts/lib.sh"

# Commands, not package names: Node.js from NodeSource brings its own npm
# and conflicts with Debian's npm package, so install only what is absent.
packages=()
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
[[ -x ${TEMPEST_CHROMIUM:-/usr/bin/chromium} ]] || packages+=(chromium)
if [[ ${#packages[@]} -gt 0 ]]; then
    tempest_ensure_packages "${packages[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [[ $node_major -lt 18 ]]; then
    echo "tests/clients/setup.sh: Node.js $(node --version) is too old: 18 or later is needed" >&2
    exit 1
fi

echo "==> npm ci in tests/clients (node $(node --version), npm $(npm --version))"
cd "$here"
npm ci --no-audit --no-fund
