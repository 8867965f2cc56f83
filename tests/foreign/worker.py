#!/usr/bin/python3
# SPDX-License-Identifier: MIT
#
# A Tempest worker written the way the Python Tempest worker wrote its loop,
# with redis-py (Debian's python3-redis, 4.3): one client does BLPOP <queue> 0,
# the job [action, args, respond_to, job_id] goes to the handler of its
# action, and every answer is sent with the client's generic command call,
# `r.execute_command("url", id, json)`, on a client connected to respond_to
# and kept per address. Nothing catches an error reply: the worker dies of
# it, as the original one did. tests/test_foreign.sh runs it.
#
#   /usr/bin/python3 worker.py QUEUE REDIS_PORT   (or $TEMPEST_QUEUE, $TEMPEST_REDIS_PORT)
#
# The `url` handler answers [200, {"Content-Type": "text/plain"},
# "python <pid> <path>"]; ?sleep=MS sleeps first, ?twice=1 sends the final
# answer twice, ?unknown=1 first answers job 987654321, which never existed.
# Stderr: a ready line once the BLPOP client is connected, and a line before
# each sleep; stdout: `answered <job_id>` once a job's answers are all sent.
import json
import os
import sys
import time
from urllib.parse import parse_qs, urlsplit

import redis

UNKNOWN_JOB = 987654321


def url(answer, request):
    parts = urlsplit(request["url"])
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if "sleep" in query:
        print(f"python worker {os.getpid()}: sleeping {query['sleep']} ms", file=sys.stderr, flush=True)
        time.sleep(int(query["sleep"]) / 1000)
    response = [200, {"Content-Type": "text/plain"}, f"python {os.getpid()} {parts.path}"]
    if query.get("unknown") == "1":
        answer(response, UNKNOWN_JOB)
    answer(response)
    if query.get("twice") == "1":
        answer(response)


HANDLERS = {"url": url}


def main():
    args = sys.argv[1:]
    queue = args[0] if args else os.environ.get("TEMPEST_QUEUE")
    port = args[1] if len(args) > 1 else os.environ.get("TEMPEST_REDIS_PORT")
    if not queue or not port:
        sys.exit("usage: worker.py QUEUE REDIS_PORT")

    peers = {}

    def peer(address):
        if address not in peers:
            host, _, peer_port = address.rpartition(":")
            peers[address] = redis.Redis(host=host, port=int(peer_port))
        return peers[address]

    jobs = redis.Redis(host="127.0.0.1", port=int(port))
    jobs.ping()
    print(f"python worker {os.getpid()}: ready, BLPOP {queue} 0 on 127.0.0.1:{port}"
          f" (redis-py {redis.__version__})", file=sys.stderr, flush=True)

    while True:
        _key, raw = jobs.blpop([queue], 0)
        action, args, respond_to, job_id = json.loads(raw)

        def answer(value, id=job_id, action=action, respond_to=respond_to):
            if respond_to is not None:
                peer(respond_to).execute_command(action, id, json.dumps(value))

        HANDLERS[action](answer, *args)
        print(f"answered {job_id}", flush=True)


main()
