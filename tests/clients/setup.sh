#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Installs what the `clients` test suite (tests/test_clients.sh and
# tests/test_foreign.sh) needs: Node.js (18 or later; 20 or later for the
# npm redis and ioredis packages of test_foreign.sh) with npm, Debian's
# chromium, curl, ruby with ruby-redis and python3-redis (for /usr/bin/python3)
# from apt when missing (as root; else it prints the apt-get line and stops),
# then the npm packages of tests/clients/package-lock.json (eventsource,
# playwright-core, redis, ioredis) with `npm ci`. No browser is downloaded:
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
command -v curl >/dev/null 2>&1 || packages+=(curl)
# The foreign workers (tests/foreign): redis-rb and redis-py from Debian.
command -v ruby >/dev/null 2>&1 && ruby -e 'require "redis"' >/dev/null 2>&1 ||
    packages+=(ruby ruby-redis)
/usr/bin/python3 -c 'import redis' >/dev/null 2>&1 || packages+=(python3-redis)
if [[ ${#packages[@]} -gt 0 ]]; then
    tempest_ensure_packages "${packages[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [[ $node_major -lt 18 ]]; then
    echo "tests/clients/setup.sh: Node.js $(node --version) is too old: 18 or later is needed" >&2
    exit 1
fi

if [[ $node_major -lt 20 ]]; then
    echo "tests/clients/setup.sh: warning: Node.js $(node --version): the npm redis and ioredis" \
        "packages of tests/test_foreign.sh need 20 or later" >&2
fi

echo "==> npm ci in tests/clients (node $(node --version), npm $(npm --version))"
cd "$here"
npm ci --no-audit --no-fund
