#!/bin/sh
# SPDX-License-Identifier: MIT
# Requester/responder figures next to redis-benchmark's PING, in one run,
# against a private redis-server on a free port (persistence off):
#   bench/rpc_run.sh BUILD_DIR [REQUESTS]
set -eu
build=${1:?usage: rpc_run.sh BUILD_DIR [REQUESTS]}
n=${2:-100000}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --daemonize no >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
echo "# $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for c in 1 50; do
    echo "# redis-benchmark -t ping -c $c -n $n (csv: test, rps, avg, min, p50, p95, p99, max ms)"
    redis-benchmark -p "$port" -t ping -c "$c" -n "$n" --csv | tail -n +2
done
for k in 1 50; do
    "$build/bench/rpc_bench" --redis "redis://127.0.0.1:$port" --requests "$n" --inflight "$k" \
        --responders 2
done
