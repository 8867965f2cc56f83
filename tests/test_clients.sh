#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Real Server-Sent Events clients against the example front: the npm
# `eventsource` package (tests/clients/eventsource.mjs) and headless Chromium
# running examples/sub.html, once opened from disk (file://) and once served
# over HTTP (tests/clients/browser.mjs). It starts a private redis-server and
# `examples/front --cors '*'`, waits until every client is connected, then
# publishes with redis-cli a data-only event, a named event and the end of
# the stream, and checks what each client printed, line for line.
#
# Needs redis-server, Node.js >= 18, Debian's chromium and the npm packages of
# tests/clients (`npm ci`). When something is missing it exits 77 (skip),
# except with CI=true, where it runs tests/clients/setup.sh to install it.
# Environment: TEMPEST_BUILD_ROOT (required), TEMPEST_SOURCE_ROOT,
# TEMPEST_SCREENSHOT=PATH (a PNG of the file:// page at the end).
set -euo pipefail

src=${TEMPEST_SOURCE_ROOT:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)}
build=${TEMPEST_BUILD_ROOT:?TEMPEST_BUILD_ROOT must name the meson build directory}
# shellcheck disable=SC2034 # read by tests/lib_shell.sh
tt_name=test_clients
# shellcheck source=tests/lib_shell.sh
source "$src/tests/lib_shell.sh"
clients=$src/tests/clients
front_bin=$build/examples/front
chromium_bin=${TEMPEST_CHROMIUM:-/usr/bin/chromium}

# ---- prerequisites ------------------------------------------------------------

# What is missing, as a list of words for the message.
missing_tools() {
    local m=()
    command -v node >/dev/null 2>&1 || m+=(node)
    command -v npm >/dev/null 2>&1 || m+=(npm)
    if command -v node >/dev/null 2>&1 &&
        [[ $(node -p 'process.versions.node.split(".")[0]') -lt 18 ]]; then
        m+=("node>=18")
    fi
    [[ -x $chromium_bin ]] || m+=(chromium)
    [[ -f $clients/node_modules/eventsource/package.json &&
        -f $clients/node_modules/playwright-core/package.json ]] || m+=(tests/clients/node_modules)
    echo "${m[*]}"
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    [[ ${CI:-} == true ]] && fail "redis-server or redis-cli is not in PATH"
    say "SKIP: redis-server and redis-cli are needed (apt-get install redis-server)"
    exit 77
fi
missing=$(missing_tools)
if [[ -n $missing ]]; then
    if [[ ${CI:-} != true ]]; then
        say "SKIP: missing $missing."
        say "Install them with: bash tests/clients/setup.sh   (as root: apt-get install -y" \
            "chromium nodejs npm, then npm ci in tests/clients)"
        exit 77
    fi
    say "CI=true and missing $missing: running tests/clients/setup.sh"
    bash "$clients/setup.sh" >&2 || fail "tests/clients/setup.sh failed"
    missing=$(missing_tools)
    [[ -z $missing ]] || fail "still missing after setup.sh: $missing"
fi
[[ -x $front_bin ]] || fail "$front_bin was not built"

# ---- redis and the front ---------------------------------------------------------

tt_init
start_redis
rcli=(redis-cli -p "$redis_port")
start_front front --redis "redis://127.0.0.1:$redis_port" --http 127.0.0.1:0 --cors '*'
url=http://127.0.0.1:$http_port/sub/test
say "redis on port $redis_port, front on port $http_port; subscribing to $url"

# ---- the clients --------------------------------------------------------------------

names=(eventsource browser-file browser-http)
ready=("connected to" "page open" "page open") # what each prints on stderr once connected
client_pids=()
cd "$clients"
for name in "${names[@]}"; do : >"$tmp/$name.log"; done
node eventsource.mjs --timeout 30 "$url" >"$tmp/eventsource.out" 2>"$tmp/eventsource.log" &
client_pids+=("$!")
node browser.mjs --timeout 30 "$url" >"$tmp/browser-file.out" 2>"$tmp/browser-file.log" &
client_pids+=("$!")
TEMPEST_SCREENSHOT='' node browser.mjs --serve --timeout 30 "$url" \
    >"$tmp/browser-http.out" 2>"$tmp/browser-http.log" &
client_pids+=("$!")
pids+=("${client_pids[@]}")

# Publishing before a client is connected would lose the message (Redis
# pub/sub does not replay), so wait for every client's connected line, then
# for the front's subscription in Redis.
deadline=$((SECONDS + 25))
for i in "${!names[@]}"; do
    until grep -qF -- "${ready[$i]}" "$tmp/${names[$i]}.log"; do
        kill -0 "${client_pids[$i]}" 2>/dev/null || { show; fail "${names[$i]} exited before connecting"; }
        [[ $SECONDS -lt $deadline ]] || { show; fail "${names[$i]} did not connect in 25 s"; }
        sleep 0.1
    done
done
until [[ $("${rcli[@]}" pubsub numsub test | sed -n 2p) -gt 0 ]]; do
    [[ $SECONDS -lt $deadline ]] || { show; fail "the front never subscribed to 'test' in Redis"; }
    sleep 0.1
done
say "all clients connected; publishing"

# shellcheck disable=SC2016 # $unsubscribe is part of the message
for message in '["Bob"]' '["greet","hello"]' '["$unsubscribe"]'; do
    receivers=$("${rcli[@]}" publish test "$message")
    say "publish test '$message' -> $receivers receiver(s)"
    [[ $receivers -ge 1 ]] || { show; fail "no receiver for $message"; }
done

# ---- the checks ---------------------------------------------------------------------

expected=$'message: Bob\ngreet: hello\nend: '
status=0
for i in "${!names[@]}"; do
    rc=0
    wait "${client_pids[$i]}" || rc=$?
    forget "${client_pids[$i]}"
    got=$(cat "$tmp/${names[$i]}.out")
    echo "== ${names[$i]} (exit $rc):"
    sed 's/^/    /' "$tmp/${names[$i]}.out"
    if [[ $rc -ne 0 || $got != "$expected" ]]; then
        say "FAIL: ${names[$i]} exited $rc; expected:"
        printf '%s\n' "$expected" | sed 's/^/    /' >&2
        status=1
    fi
done
if [[ $status -ne 0 ]]; then
    show
    exit 1
fi
echo "ok: eventsource, Chromium (file://) and Chromium (http://) each received message: Bob, greet: hello, end"
