# shellcheck shell=bash
# SPDX-License-Identifier: MIT
#
# Helpers shared by the shell tests (sourced, not run): messages, a temporary
# directory and every started process stopped by PID on exit, a private
# redis-server on a random free loopback port (never 6379), and the example
# front started on port 0 with its port read from its ready line.
#
# The caller sets `tt_name` (the prefix of its messages) before sourcing,
# then calls tt_init once; afterwards `$tmp` is its directory, and every
# background process whose PID goes into the `pids` array is stopped, last
# started first, when the script exits.

tt_name=${tt_name:-test}

say() { echo "$tt_name: $*" >&2; }
fail() {
    say "FAIL: $*"
    exit 1
}

# tt_init: the temporary directory and the cleanup on exit.
tt_init() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/tempest-$tt_name-XXXXXX")
    pids=() # everything we started, stopped in reverse order on exit
    trap tt_cleanup EXIT
    trap 'exit 1' INT TERM
}

# forget PID...: takes them out of pids (a reaped PID may be reused by
# another process: it must never be signalled again).
forget() {
    local pid keep=() p
    for p in "${pids[@]}"; do
        for pid in "$@"; do [[ $p == "$pid" ]] && continue 2; done
        keep+=("$p")
    done
    pids=("${keep[@]}")
}

stop() { # SIGTERM, up to 5 s, then SIGKILL; reaps and forgets each PID
    local pid deadline=$((SECONDS + 5))
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    forget "$@"
}

tt_cleanup() {
    local i
    trap - EXIT INT TERM
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[$i]}"; done
    [[ -z ${tmp:-} ]] || rm -rf -- "$tmp"
}

show() { # [N]: the logs of everything (their last N lines), for a failure
    local f
    for f in "$tmp"/*.log "$tmp"/*.out; do
        [[ -f $f ]] || continue
        echo "---- ${f##*/}" >&2
        if [[ $# -gt 0 ]]; then tail -n "$1" -- "$f"; else cat -- "$f"; fi | sed 's/^/    /' >&2
    done
}

# wait_line FILE PATTERN PID SECONDS WHAT: waits until FILE has a line
# matching the grep pattern; fails (with the logs) when PID exits first or
# SECONDS pass: "WHAT did not start".
wait_line() {
    local deadline=$((SECONDS + $4))
    until grep -q -- "$2" "$1"; do
        if ! kill -0 "$3" 2>/dev/null || [[ $SECONDS -ge $deadline ]]; then
            show 40
            fail "$5 did not start"
        fi
        sleep 0.05
    done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# random_port: a loopback port that nothing listens on now (never 6379),
# below the kernel's range of ephemeral ports when there is room, so that no
# outgoing connection holds it either (a bind would fail).
random_port() {
    local port low=32768 span=40000
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    [[ $low -le 21000 ]] || span=$((low - 20000))
    while :; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % span))
        [[ $port != 6379 ]] && ! port_in_use "$port" && break
    done
    echo "$port"
}

# start_redis: a private redis-server; sets redis_port and adds its PID to pids.
start_redis() {
    local attempt port pid
    redis_port=""
    for attempt in 1 2 3 4 5; do
        port=$(random_port)
        : >"$tmp/redis.log"
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$tmp" --daemonize no --logfile "" >"$tmp/redis.log" 2>&1 </dev/null &
        pid=$!
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            if [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]]; then
                redis_port=$port
                break
            fi
            sleep 0.1
        done
        if [[ -n $redis_port ]]; then
            pids+=("$pid")
            return 0
        fi
        say "redis-server did not start on port $port (attempt $attempt):"
        sed 's/^/    /' "$tmp/redis.log" >&2
        stop "$pid"
    done
    show 40
    fail "could not start redis-server"
}

# start_front LOGNAME FRONT_ARGS...: starts $front_bin with the arguments
# (give it `--http 127.0.0.1:0` or a fixed port), waits up to 15 s for its
# ready line and sets front_pid and http_port; the PID goes into pids. The
# log is $tmp/LOGNAME.log, created here: a background job opens its
# redirections only once it runs, so a read of the log right after `&` could
# find no file (a CI failure).
start_front() {
    try_start_front "$@" && return 0
    show 40
    fail "the front (${*:2}) exited early"
}

# try_start_front LOGNAME FRONT_ARGS...: start_front, but returns 1 when the
# front exits before its ready line (a port taken meanwhile: try another).
try_start_front() {
    local log=$tmp/$1.log
    shift
    : >"$log"
    "${front_bin:?front_bin must name the front}" "$@" >"$log" 2>&1 </dev/null &
    front_pid=$!
    pids+=("$front_pid")
    http_port=""
    for _ in $(seq 300); do
        http_port=$(sed -n 's|^front listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$log")
        [[ -z $http_port ]] || return 0
        if ! kill -0 "$front_pid" 2>/dev/null; then
            stop "$front_pid"
            return 1
        fi
        sleep 0.05
    done
    show 40
    fail "the front ($*) printed no ready line in 15 s"
}
