#!/usr/bin/env ruby
# SPDX-License-Identifier: MIT
#
# A Tempest worker written the way ruby-tempest wrote its loop, with redis-rb
# (Debian's ruby-redis, 4.8): one client does BLPOP <queue> 0, the job
# [action, args, respond_to, job_id] goes to the handler of its action, and
# every answer is sent with the client's generic command call,
# `redis.send(:url, id.to_s, json)` (redis-rb's method_missing), on a client
# connected to respond_to and kept per address. Nothing rescues an error
# reply: the worker dies of it, as the original ones did. tests/test_foreign.sh
# runs it.
#
#   ruby worker.rb QUEUE REDIS_PORT     (or $TEMPEST_QUEUE, $TEMPEST_REDIS_PORT)
#
# The `url` handler answers [200, {"Content-Type": "text/plain"},
# "ruby <pid> <path>"]; ?sleep=MS sleeps first, ?twice=1 sends the final
# answer twice, ?unknown=1 first answers job 987654321, which never existed.
# Stderr: a ready line once the BLPOP client is connected, and a line before
# each sleep; stdout: `answered <job_id>` once a job's answers are all sent.
require "json"
require "redis"
require "uri"

queue = ARGV[0] || ENV["TEMPEST_QUEUE"] or abort("usage: worker.rb QUEUE REDIS_PORT")
port = Integer(ARGV[1] || ENV["TEMPEST_REDIS_PORT"] || abort("usage: worker.rb QUEUE REDIS_PORT"))
$stdout.sync = true
$stderr.sync = true

UNKNOWN_JOB = 987_654_321

handlers = {
  "url" => lambda do |answer, request|
    uri = URI.parse(request["url"])
    query = URI.decode_www_form(uri.query || "").to_h
    if query["sleep"]
      warn "ruby worker #{Process.pid}: sleeping #{query['sleep']} ms"
      sleep(Integer(query["sleep"]) / 1000.0)
    end
    response = [200, { "Content-Type" => "text/plain" }, "ruby #{Process.pid} #{uri.path}"]
    answer.call(response, UNKNOWN_JOB) if query["unknown"] == "1"
    answer.call(response)
    answer.call(response) if query["twice"] == "1"
  end
}

peers = Hash.new do |cache, address|
  host, _, peer_port = address.rpartition(":")
  cache[address] = Redis.new(host: host, port: Integer(peer_port))
end

jobs = Redis.new(host: "127.0.0.1", port: port)
jobs.ping
warn "ruby worker #{Process.pid}: ready, BLPOP #{queue} 0 on 127.0.0.1:#{port} (redis-rb #{Redis::VERSION})"

loop do
  _key, raw = jobs.blpop(queue, timeout: 0)
  action, args, respond_to, job_id = JSON.parse(raw)
  answer = lambda do |value, id = job_id|
    peers[respond_to].send(action, id.to_s, value.to_json) if respond_to
  end
  handlers.fetch(action).call(answer, *args)
  puts "answered #{job_id}"
end
