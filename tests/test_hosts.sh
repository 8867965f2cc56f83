#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# A cluster of "hosts" on one machine: network namespaces made by this test,
# joined by veth pairs to a bridge in a switch namespace of their own.
#
#   redis    127.77.N.1    redis-server
#   front1   127.77.N.11   examples/front, listener bound to 127.77.N.11
#   front2   127.77.N.12   examples/front, listener bound to 0.0.0.0 and
#                          advertised as 127.77.N.12 (bound != advertised)
#   work1    127.77.N.21   two examples/worker, one also a responder
#   work2    127.77.N.22   two examples/worker, one also a responder
#   client   127.77.N.31   curl, es_client, call, monitor
#
# Every address is in 127.0.0.0/8 (route_localnet=1 in each namespace lets
# the kernel carry them over the veths), so nothing here is reachable from
# outside the machine, and the root namespace gets no interface or route.
# It shows the triangle (HTTP -> Redis -> worker -> front), pub/sub to an
# EventSource client, and requester/responder calls, all across namespaces,
# plus the presence records naming each node's advertised address.
#
# Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` (iproute2), curl and
# redis-server; without them it exits 77 (skip) and says why.
# Environment: TEMPEST_BUILD_ROOT (required).
set -euo pipefail

build=${TEMPEST_BUILD_ROOT:?TEMPEST_BUILD_ROOT must name the meson build directory}
ex=$build/examples
say() { echo "test_hosts: $*" >&2; }
skip() {
    say "SKIP: $*"
    exit 77
}
fail() {
    say "FAIL: $*"
    show
    exit 1
}

for tool in ip curl redis-server redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (apt-get install iproute2 curl redis-server)"
done
[[ $(id -u) == 0 ]] || skip "network namespaces need root"

tag=tp$$ # namespaces and links of this run only
net=$((($$ % 200) + 20)) # 127.77.<net>.0/24
hosts=(redis front1 front2 work1 work2 client)
declare -A addr=([redis]=1 [front1]=11 [front2]=12 [work1]=21 [work2]=22 [client]=31)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tempest-hosts-XXXXXX")
pids=()

show() {
    local f
    for f in "$tmp"/*.log; do
        [[ -f $f ]] || continue
        echo "---- ${f##*/}" >&2
        sed 's/^/    /' "$f" >&2
    done
}

cleanup() {
    local p h
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    for h in "${hosts[@]}" sw; do ip netns del "$tag-$h" 2>/dev/null || true; done
    rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip4() { echo "127.77.$net.${addr[$1]}"; }
in_ns() {
    local h=$1
    shift
    ip netns exec "$tag-$h" "$@"
}

# ---- the network ------------------------------------------------------------------

ip netns add "$tag-sw" 2>"$tmp/netns.log" || skip "cannot create a network namespace: $(cat "$tmp/netns.log")"
in_ns sw ip link add br0 type bridge
in_ns sw ip link set br0 up
for h in "${hosts[@]}"; do
    ip netns add "$tag-$h"
    # Both ends are made inside the switch namespace, then one moves: the
    # root namespace never holds them.
    in_ns sw ip link add "v-$h" type veth peer name eth0
    in_ns sw ip link set eth0 netns "$tag-$h"
    in_ns sw ip link set "v-$h" master br0 up
    in_ns "$h" sysctl -qw net.ipv4.conf.all.route_localnet=1
    in_ns "$h" sysctl -qw net.ipv4.conf.eth0.route_localnet=1
    in_ns "$h" ip link set lo up
    in_ns "$h" ip addr add "$(ip4 "$h")/24" dev eth0
    in_ns "$h" ip link set eth0 up
done
say "namespaces $tag-{${hosts[*]},sw}, network 127.77.$net.0/24"

# ---- processes -------------------------------------------------------------------------

# start HOST NAME CMD...: runs CMD in HOST's namespace, logging to NAME.log.
start() {
    local h=$1 name=$2
    shift 2
    : >"$tmp/$name.log"
    ip netns exec "$tag-$h" "$@" >"$tmp/$name.log" 2>&1 </dev/null &
    pids+=("$!")
}

# wait_line NAME PATTERN: until NAME.log has PATTERN (extended regex), 15 s.
wait_line() {
    local deadline=$((SECONDS + 15))
    until grep -qE -- "$2" "$tmp/$1.log"; do
        [[ $SECONDS -lt $deadline ]] || fail "$1 did not print /$2/ in 15 s"
        sleep 0.1
    done
}

redis_ip=$(ip4 redis)
start redis redis redis-server --port 6400 --bind "$redis_ip" --save "" --appendonly no \
    --dir "$tmp" --protected-mode no
wait_line redis "Ready to accept"
url=redis://$redis_ip:6400

# A shared secret guards the node listeners (front2's is bound off-loopback
# in the library's sense: 0.0.0.0).
export TEMPEST_SECRET=hosts-test-secret
start front1 front1 "$ex/front" --redis "$url" --http "$(ip4 front1):8080" \
    --listen "$(ip4 front1):7000"
start front2 front2 "$ex/front" --redis "$url" --http "$(ip4 front2):8080" \
    --listen "0.0.0.0:7000" --advertise "$(ip4 front2):7000"
start work1 work1a "$ex/worker" --redis "$url" --service greeter --listen "$(ip4 work1):7100"
start work1 work1b "$ex/worker" --redis "$url"
start work2 work2a "$ex/worker" --redis "$url" --service greeter --listen "$(ip4 work2):7100"
start work2 work2b "$ex/worker" --redis "$url"
for n in front1 front2; do wait_line "$n" "front listening"; done
for n in work1a work1b work2a work2b; do wait_line "$n" "worker ready"; done

# ---- the triangle ------------------------------------------------------------------------

served=0
for i in $(seq 20); do
    for f in front1 front2; do
        body=$(in_ns client curl -sS --max-time 5 "http://$(ip4 $f):8080/hello/$i") ||
            fail "curl to $f failed"
        [[ $body == "Hello world! #"* ]] || fail "$f answered '$body'"
        served=$((served + 1))
    done
done
say "triangle: $served requests through front1 and front2 answered by workers in work1/work2"

# ---- presence: every node, with its advertised address -------------------------------

in_ns client "$ex/monitor" --redis "$url" --once --json >"$tmp/monitor.log" 2>&1 ||
    fail "monitor failed"
nodes=$(grep -o '"address":"[^"]*"' "$tmp/monitor.log" | sort | uniq -c)
say "presence records by address:"
echo "$nodes" | sed 's/^/    /' >&2
grep -qF "\"address\":\"$(ip4 front2):7000\"" "$tmp/monitor.log" ||
    fail "front2 is not advertised as $(ip4 front2):7000"
grep -qF '"address":"0.0.0.0' "$tmp/monitor.log" && fail "a node advertised 0.0.0.0"
for h in work1 work2; do
    grep -qF "\"address\":\"$(ip4 $h):7100\"" "$tmp/monitor.log" ||
        fail "the responder of $h is not in the presence records"
done
jobs_done=$(grep -o '"jobs":[0-9]*' "$tmp/monitor.log" | awk -F: '{ s += $2 } END { print s + 0 }')
# Counters reach Redis with each node's heartbeat (1 s): wait for them.
deadline=$((SECONDS + 5))
while [[ $jobs_done -lt $served && $SECONDS -lt $deadline ]]; do
    sleep 0.5
    in_ns client "$ex/monitor" --redis "$url" --once --json >"$tmp/monitor.log" 2>&1 || true
    jobs_done=$(grep -o '"jobs":[0-9]*' "$tmp/monitor.log" | awk -F: '{ s += $2 } END { print s + 0 }')
done
[[ $jobs_done -ge $served ]] || fail "the workers' records count $jobs_done jobs, $served were served"

# ---- pub/sub to an EventSource client ------------------------------------------------

start client es "$ex/es_client" --max-events 2 "http://$(ip4 front2):8080/sub/news"
es_pid=${pids[-1]}
deadline=$((SECONDS + 15))
until [[ $(in_ns redis redis-cli -h "$redis_ip" -p 6400 pubsub numsub news | sed -n 2p) -gt 0 ]]; do
    [[ $SECONDS -lt $deadline ]] || fail "front2 never subscribed to 'news'"
    sleep 0.1
done
in_ns redis redis-cli -h "$redis_ip" -p 6400 publish news '["first"]' >/dev/null
in_ns redis redis-cli -h "$redis_ip" -p 6400 publish news '["weather","sunny"]' >/dev/null
for _ in $(seq 100); do kill -0 "$es_pid" 2>/dev/null || break; sleep 0.1; done
got=$(grep -E '^(message|weather):' "$tmp/es.log" || true)
[[ $got == $'message: first\nweather: sunny' ]] || fail "es_client printed: $got"
say "pub/sub: redis-cli publish in 'redis' reached es_client in 'client' through front2"

# ---- requester/responder -----------------------------------------------------------------

in_ns client "$ex/call" --redis "$url" --service greeter --responders 2 --count 10 hello '"hosts"' \
    >"$tmp/call.log" 2>&1 || fail "call failed"
from=$(grep -o '"from":"[^"]*"' "$tmp/call.log" | sort | uniq -c)
say "requester/responder: replies by responder:"
echo "$from" | sed 's/^/    /' >&2
[[ $(grep -c '"hello":"hosts"' "$tmp/call.log") == 10 ]] || fail "not 10 replies"
for h in work1 work2; do
    grep -qF "\"from\":\"$(ip4 $h):7100\"" "$tmp/call.log" || fail "no reply from the responder in $h"
done
in_ns client "$ex/call" --redis "$url" --address "$(ip4 work2):7100" hello 1 >"$tmp/direct.log" 2>&1 ||
    fail "a direct call to work2 failed"
grep -qF "\"from\":\"$(ip4 work2):7100\"" "$tmp/direct.log" || fail "direct call: $(cat "$tmp/direct.log")"
say "ok: triangle, presence, pub/sub and requester/responder across 6 namespaces"
