#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Foreign workers with real Redis client libraries against the example front:
# redis-rb (Ruby), redis-py (Python 3), the npm `redis` package (node-redis)
# and the npm `ioredis` package, each running tests/foreign/worker.* the way
# the original Tempest worker libraries wrote their loop: BLPOP, the handler,
# then the answer through the client's generic command call with no error
# handling around it, so that an error reply from the front kills the worker
# (docs/protocol.md, section 3: a listener must reply +OK to every answer
# from a foreign peer, late, unknown, cancelled or duplicate).
#
# For each client in turn, with a private redis-server, its own front
# (--timeout 2000) and its own queue:
#   (a) 500 requests with a 200 ms client timeout while no worker runs: every
#       one is abandoned, and the front cancels its job;
#   (b) two workers start and drain the 500 queued jobs, answering each late;
#   (c) requests with ?sleep=1000 and a 200 ms client timeout: late answers;
#   (d) ?twice=1 (a second final answer) and ?unknown=1 (an answer to a job
#       that never existed first): each request must get 200 and its body;
#   (e) the front is killed and started again on the same --http and
#       --listen addresses while a worker is in a ?sleep=1000 job, whose
#       answer then goes to the new front on the worker's old connection;
#   (f) both workers must still be alive, and each answers fresh requests.
# A worker that dies is reported with the exception in its log and the
# step, then both workers are started again on an empty queue, so that every
# step is judged on its own; the test fails if any step failed.
#
# Needs redis-server, curl, ruby with Debian's ruby-redis, /usr/bin/python3
# with Debian's python3-redis, Node.js >= 20 and the npm packages of
# tests/clients (`npm ci`). When something is missing it exits 77 (skip),
# except with CI=true, where it runs tests/clients/setup.sh to install it.
# Environment: TEMPEST_BUILD_ROOT (required), TEMPEST_SOURCE_ROOT,
# TEMPEST_FOREIGN_CLIENTS (the clients to run, out of: ruby python node-redis
# node-redis-resp2 ioredis; default all of them). node-redis runs with the
# library's defaults (RESP3: it opens each connection with HELLO 3);
# node-redis-resp2 is the same worker with the client option RESP: 2.
set -euo pipefail

src=${TEMPEST_SOURCE_ROOT:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)}
build=${TEMPEST_BUILD_ROOT:?TEMPEST_BUILD_ROOT must name the meson build directory}
# shellcheck disable=SC2034 # read by tests/lib_shell.sh
tt_name=test_foreign
# shellcheck source=tests/lib_shell.sh
source "$src/tests/lib_shell.sh"

front_bin=$build/examples/front
foreign=$src/tests/foreign
clients_dir=$src/tests/clients
python=/usr/bin/python3 # Debian's, with python3-redis (a pyenv python has no redis module)
timeout_ms=2000         # the front's --timeout
storm=500               # step (a)
read -r -a clients <<<"${TEMPEST_FOREIGN_CLIENTS:-ruby python node-redis node-redis-resp2 ioredis}"

# ---- prerequisites ------------------------------------------------------------

# What is missing for the chosen clients: sets missing (words for the
# message), apt (Debian packages) and npm (true when npm ci is needed).
find_missing() {
    local c need_ruby=false need_python=false need_node=false
    missing=() apt=() npm=false
    for c in "${clients[@]}"; do
        case $c in
        ruby) need_ruby=true ;;
        python) need_python=true ;;
        node-redis | node-redis-resp2 | ioredis) need_node=true ;;
        *) fail "unknown client '$c' in TEMPEST_FOREIGN_CLIENTS (ruby python node-redis node-redis-resp2 ioredis)" ;;
        esac
    done
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        missing+=(redis-server) apt+=(redis-server)
    fi
    command -v curl >/dev/null 2>&1 || { missing+=(curl) apt+=(curl); }
    if $need_ruby; then
        if ! command -v ruby >/dev/null 2>&1; then
            missing+=(ruby) apt+=(ruby ruby-redis)
        elif ! ruby -e 'require "redis"' >/dev/null 2>&1; then
            missing+=("ruby's redis library") apt+=(ruby-redis)
        fi
    fi
    if $need_python && ! "$python" -c 'import redis' >/dev/null 2>&1; then
        missing+=("$python with its redis module") apt+=(python3-redis)
    fi
    if $need_node; then
        if ! command -v node >/dev/null 2>&1; then
            missing+=(node) apt+=(nodejs npm)
        elif [[ $(node -p 'process.versions.node.split(".")[0]') -lt 20 ]]; then
            missing+=("node>=20 (this is $(node --version))")
        fi
        [[ -f $clients_dir/node_modules/redis/package.json &&
            -f $clients_dir/node_modules/ioredis/package.json ]] ||
            { missing+=(tests/clients/node_modules/{redis,ioredis}) npm=true; }
    fi
}

find_missing
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ ${CI:-} != true ]]; then
        say "SKIP: missing ${missing[*]}."
        install=()
        [[ ${#apt[@]} -eq 0 ]] || install+=("apt-get install -y ${apt[*]}")
        ! $npm || install+=("(cd tests/clients && npm ci)")
        [[ ${#install[@]} -eq 0 ]] || say "Install with: $(printf '%s && ' "${install[@]}" | sed 's/ && $//')"
        say "or, as root, everything the clients suites need: bash tests/clients/setup.sh"
        exit 77
    fi
    say "CI=true and missing ${missing[*]}: running tests/clients/setup.sh"
    bash "$clients_dir/setup.sh" >&2 || fail "tests/clients/setup.sh failed"
    find_missing
    [[ ${#missing[@]} -eq 0 ]] || fail "still missing after setup.sh: ${missing[*]}"
fi
[[ -x $front_bin ]] || fail "$front_bin was not built"

# One stream, so that a log keeps the order and ends with the summary.
exec 1>&2
tt_init
start_redis
rcli=(redis-cli -p "$redis_port")
say "redis on port $redis_port; clients: ${clients[*]}"

now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((t / 1000)); }

# ---- workers -----------------------------------------------------------------------

worker_cmd() { # CLIENT: the command line of its worker, before QUEUE and PORT
    case $1 in
    ruby) echo ruby "$foreign/worker.rb" ;;
    python) echo "$python" "$foreign/worker.py" ;;
    node-redis) echo node "$foreign/worker-node-redis.mjs" ;;
    node-redis-resp2) echo env TEMPEST_RESP=2 node "$foreign/worker-node-redis.mjs" ;;
    ioredis) echo node "$foreign/worker-ioredis.mjs" ;;
    esac
}

wpid=() wlog=() wout=() spawned=0

start_worker() { # I: worker slot 0 or 1; waits for its ready line
    local i=$1 cmd
    spawned=$((spawned + 1))
    wlog[i]=$tmp/$client.worker$i.$spawned.log
    wout[i]=$tmp/$client.worker$i.$spawned.out
    : >"${wlog[i]}"
    : >"${wout[i]}"
    read -r -a cmd <<<"$(worker_cmd "$client")"
    "${cmd[@]}" "$queue" "$redis_port" >"${wout[i]}" 2>"${wlog[i]}" </dev/null &
    wpid[i]=$!
    pids+=("${wpid[i]}")
    wait_line "${wlog[i]}" ': ready' "${wpid[i]}" 20 "$client worker $i (pid ${wpid[i]}; no ready line)"
}

start_workers() { start_worker 0 && start_worker 1; }

stop_workers() { stop "${wpid[@]}"; }

answered() { # how many jobs this client's workers finished, dead ones included
    awk '/^answered /{n++} END{print n+0}' "$tmp/$client".worker*.out
}

alive() { kill -0 "${wpid[$1]}" 2>/dev/null; }

# The exception that ended a worker: the last unindented line of its log
# that names an error, but for the `error event` lines (those do not kill).
exception() {
    grep -v '^[[:space:]]' "$1" | grep -v 'error event:' | grep -E 'Error|Exception' | tail -n 1 || true
}

failures=()
client_failed=false
last_logs=() # the logs of the workers that ran last, for a failure

step_fail() { # STEP MESSAGE...
    local step=$1
    shift
    failures+=("$client ($step): $*")
    client_failed=true
    say "FAIL: $client, step ($step): $*"
}

# check_workers STEP: records each dead worker (exit status, exception, log
# tail); with any dead, stops the others, empties the queue and starts two
# fresh workers, so that the next step starts clean. Returns 1 if any died.
check_workers() {
    local step=$1 i rc dead=false left exc why
    for i in 0 1; do
        alive "$i" && continue
        rc=0
        wait "${wpid[i]}" 2>/dev/null || rc=$?
        forget "${wpid[i]}"
        exc=$(exception "${wlog[i]}")
        case $exc in
        *CANCELED* | *"unknown job"* | *ResponseError* | *CommandError* | *ReplyError*)
            why="an error reply from the front" ;;
        *) why="not an error reply: the client library's own error" ;;
        esac
        step_fail "$step" "$client worker $i (pid ${wpid[i]}) died, exit $rc ($why): ${exc:-no exception in its log}"
        grep -v '^$' "${wlog[i]}" | tail -n 10 | sed 's/^/        /' >&2
        dead=true
    done
    $dead || return 0
    local live=()
    for i in 0 1; do alive "$i" && live+=("${wpid[i]}"); done
    stop "${live[@]}"
    left=$("${rcli[@]}" llen "$queue")
    "${rcli[@]}" del "$queue" >/dev/null
    say "  ($client: $left job(s) left in the queue dropped; two fresh workers started)"
    start_workers
    return 1
}

# wait_answers TARGET STEP IDLE_S: until the workers have finished TARGET jobs
# in all; returns 1 as soon as a worker is dead (check_workers tells), 2 if
# no job was finished for IDLE_S seconds (recorded as a failure).
wait_answers() {
    local target=$1 step=$2 idle=$3 n last=-1 since=$SECONDS
    while :; do
        n=$(answered)
        [[ $n -lt $target ]] || return 0
        alive 0 && alive 1 || return 1
        if [[ $n != "$last" ]]; then
            last=$n since=$SECONDS
        elif [[ $((SECONDS - since)) -ge $idle ]]; then
            step_fail "$step" "no job finished in $idle s ($n of $target), workers alive: they answer" \
                "nothing; last error event: $(cat "${wlog[@]}" | grep 'error event:' | tail -n 1 || true)"
            return 2
        fi
        sleep 0.02
    done
}

# ---- HTTP --------------------------------------------------------------------------

get() { # PATH: sets code and body
    local out
    out=$(curl -s -m 5 -w '\n%{http_code}' "$base$1") || true
    code=${out##*$'\n'}
    body=${out%$'\n'*}
    [[ $out == *$'\n'* ]] || body=""
}

# expect PATH STEP: the request must get 200 and the body
# "<client> <pid of a live worker> <path>"; records a failure otherwise.
expect() {
    local path=${1%%\?*} pid
    get "$1"
    pid=${body#"$client "}
    pid=${pid%% *}
    if [[ $code == 200 && $body == "$client $pid $path" &&
        ($pid == "${wpid[0]}" || $pid == "${wpid[1]}") ]]; then
        got_pid=$pid
        return 0
    fi
    step_fail "$2" "GET $1: HTTP $code, body '${body//$'\n'/\\n}' (expected 200 and '$client <pid> $path', workers ${wpid[*]})"
    return 1
}

# both_answer STEP NAME: up to 10 requests /NAME/<k> until each worker has
# answered one; returns 1 (recorded) otherwise. Sets asked (how many).
both_answer() {
    local k seen=" "
    for k in $(seq 10); do
        asked=$k
        expect "/$2/$k" "$1" || return 1
        seen+="$got_pid "
        [[ $seen != *" ${wpid[0]} "* || $seen != *" ${wpid[1]} "* ]] || return 0
    done
    step_fail "$1" "10 requests reached only worker(s)$seen(workers ${wpid[*]})"
    return 1
}

# ---- one client --------------------------------------------------------------------

run_client() {
    client=$1 queue=foreign-$client client_failed=false
    local listen_port t0 t1 n before k sub_pid curl_pid sleeper i
    # Both ports chosen here, outside the ephemeral range (lib_shell.sh), so
    # that the restart in (e) finds them free again; a free port may still
    # be taken before the front binds it: then another.
    for i in 1 2 3 4 5; do
        listen_port=$(random_port)
        front_args=(--redis "redis://127.0.0.1:$redis_port" --listen "127.0.0.1:$listen_port"
            --queue "$queue" --timeout "$timeout_ms")
        try_start_front "$client.front.1" "${front_args[@]}" --http "127.0.0.1:$(random_port)" && break
        say "the front did not start (attempt $i):"
        sed 's/^/    /' "$tmp/$client.front.1.log" >&2
        [[ $i -lt 5 ]] || fail "could not start the front"
    done
    base=http://127.0.0.1:$http_port
    say "== $client: front on $base, listener 127.0.0.1:$listen_port, queue $queue"

    # (a) The storm, no worker running. The front publishes the cancel of
    # each job whose client left (docs/protocol.md 3): wait until all are
    # cancelled, or at most the front's timeout, after which they are anyway.
    : >"$tmp/$client.cancels.out"
    "${rcli[@]}" subscribe "tempest:cancel:127.0.0.1:$listen_port" >"$tmp/$client.cancels.out" 2>&1 &
    sub_pid=$!
    pids+=("$sub_pid")
    wait_line "$tmp/$client.cancels.out" '^subscribe$' "$sub_pid" 10 "redis-cli subscribe"
    t0=$(now_ms)
    seq "$storm" | xargs -P 100 -I{} curl -s -o /dev/null -m 0.2 "$base/storm/{}" || true
    n=$("${rcli[@]}" llen "$queue")
    if [[ $n -lt $((storm * 9 / 10)) ]]; then
        show 40
        fail "$client (a): only $n of $storm requests reached the queue"
    fi
    until [[ $(grep -c '^\["' "$tmp/$client.cancels.out") -ge $n ||
        $(($(now_ms) - t0)) -gt $((timeout_ms + 500)) ]]; do sleep 0.05; done
    say "(a) $storm requests abandoned in $(($(now_ms) - t0)) ms: $n jobs queued," \
        "$(grep -c '^\["' "$tmp/$client.cancels.out") cancelled by the front"
    stop "$sub_pid"

    # (b) Two workers drain the queue, every answer late.
    t0=$(now_ms)
    start_workers
    if wait_answers "$n" b 5; then
        say "(b) workers ${wpid[*]} drained the $n jobs in $(($(now_ms) - t0)) ms"
    fi
    check_workers b || true
    if [[ $(answered) -lt $n ]] && alive 0 && alive 1 && [[ $("${rcli[@]}" llen "$queue") -gt 0 ]]; then
        say "skipping steps (c) to (f) of $client: its workers answer nothing"
        last_logs+=("${wlog[@]}")
        stop_workers
        stop "$front_pid"
        return
    fi

    # (c) Late answers to jobs whose clients left during a synchronous sleep.
    before=$(answered)
    printf '%s\n' 1 2 3 4 | xargs -P 4 -I{} curl -s -o /dev/null -m 0.2 "$base/sleep/{}?sleep=1000" || true
    if wait_answers $((before + 4)) c 4; then say "(c) 4 late answers after ?sleep=1000"; fi
    check_workers c || true

    # (d) A second final answer, and an answer to a job that never was.
    for k in 1 2 3 4; do
        before=$(answered)
        expect "/twice/$k?twice=1" d || { check_workers d || true; break; }
        wait_answers $((before + 1)) d 3 || true
        check_workers d || break
        [[ $k -lt 4 ]] || say "(d) 4 requests with ?twice=1 answered"
    done
    for k in 1 2 3 4; do
        before=$(answered)
        if ! expect "/unknown/$k?unknown=1" d; then
            check_workers d || true
            break
        fi
        wait_answers $((before + 1)) d 3 || true
        check_workers d || break
        [[ $k -lt 4 ]] || say "(d) 4 requests with ?unknown=1 answered"
    done

    # (e) The front restarts while a worker sleeps in a job; its answer goes
    # to the new front (for a job id that the new front never sent). First
    # each worker answers once, so that both hold a connection to the old
    # front (fresh workers, after a failure above, would have none).
    before=$(answered)
    if both_answer e warm && wait_answers $((before + asked)) e 3; then
        before=$((before + asked))
    else
        check_workers e || true
        before=$(answered)
    fi
    local sleeps=()
    for i in 0 1; do sleeps[i]=$(grep -c ': sleeping' "${wlog[i]}" || true); done
    curl -s -o /dev/null -m 8 "$base/restart/1?sleep=1000" &
    curl_pid=$!
    pids+=("$curl_pid")
    sleeper=""
    deadline=$((SECONDS + 5))
    while [[ -z $sleeper && $SECONDS -lt $deadline ]]; do
        for i in 0 1; do
            [[ $(grep -c ': sleeping' "${wlog[i]}" || true) -le ${sleeps[i]} ]] || sleeper=$i
        done
        sleep 0.01
    done
    [[ -n $sleeper ]] || { show 40; fail "$client (e): no worker took the ?sleep=1000 job in 5 s"; }
    t0=$(now_ms)
    stop "$front_pid"
    start_front "$client.front.2" "${front_args[@]}" --http "127.0.0.1:$http_port"
    t1=$(now_ms)
    say "(e) front restarted on the same addresses in $((t1 - t0)) ms while worker" \
        "${wpid[sleeper]} sleeps in a job"
    [[ $((t1 - t0)) -lt 800 ]] || say "  (slow restart: the worker may have answered while no front listened)"
    if wait_answers $((before + 1)) e 4; then say "(e) the late answer reached the new front"; fi
    stop "$curl_pid"
    check_workers e || true

    # (f) Both workers alive, and each answers fresh requests.
    check_workers f || true
    if both_answer f fresh; then say "(f) workers ${wpid[*]} alive, each answered fresh requests"; fi
    check_workers f || true

    last_logs+=("${wlog[@]}")
    stop_workers
    stop "$front_pid"
}

t_start=$SECONDS
passed=()
for c in "${clients[@]}"; do
    run_client "$c"
    $client_failed || passed+=("$c")
done

if [[ ${#failures[@]} -gt 0 ]]; then
    # A dead worker's log was shown with its failure; here the fronts' (if
    # they said anything) and those of the workers that ran last.
    for f in "$tmp"/*.front.*.log "${last_logs[@]}"; do
        [[ -s $f ]] || continue
        echo "---- ${f##*/}" >&2
        tail -n 20 -- "$f" | uniq -c | sed -e 's/^ *1 //' -e 's/^/    /' >&2
    done
    echo
    for f in "${failures[@]}"; do echo "FAIL $f"; done
fi
echo "clients passed: ${passed[*]:-none}, in $((SECONDS - t_start)) s"
echo "foreign: ${#passed[@]} passed, $((${#clients[@]} - ${#passed[@]})) failed"
[[ ${#failures[@]} -eq 0 ]] || exit 1
echo "ok: ${clients[*]}: late, cancelled, duplicate and unknown answers and a front restart, no worker died"
