/* SPDX-License-Identifier: MIT */
/*
 * Lua sources of the reliable queue. Conventions, for a queue q and a
 * worker id w:
 *
 *   q                      the compatible job list (RPUSH by producers)
 *   {q}:processing:<w>     jobs worker w has taken and not finished
 *   {q}:alive:<w>          w's presence, with a time-to-live
 *   {q}:workers            set of worker ids that may own a processing list
 *   {q}:attempts           hash: sha1(job) -> times the job was requeued
 *   {q}:dead               dead letters: {"job","reason","queue","at"} JSON
 *
 * A worker runs the heartbeat (on its own connection) before every take,
 * and its block timeout is shorter than the presence TTL, so a worker whose
 * presence key is missing has no take in flight: the reaper may requeue its
 * jobs and drop it from the registry without racing a move.
 */
#include "scripts.h"

/* KEYS: per queue (alive, workers) pairs. ARGV: ttl ms, info, worker id. */
#define HEARTBEAT_BODY                                                                             \
    "for i = 1, #KEYS, 2 do\n"                                                                     \
    "  redis.call('SET', KEYS[i], ARGV[2], 'PX', ARGV[1])\n"                                       \
    "  redis.call('SADD', KEYS[i + 1], ARGV[3])\n"                                                 \
    "end\n"

static const char heartbeat[] = "-- tempest:heartbeat\n" HEARTBEAT_BODY;

/* Acknowledges the finished jobs ARGV[first..last] (oldest first): removes
 * each from the processing list and forgets its attempt count. Jobs finish
 * mostly in the order they were taken, so they sit at the tail, the oldest
 * last: one LRANGE finds how many of the last elements are finished (first
 * in the order given, then in any order) and one LTRIM drops them; LREM
 * (from the tail) removes the others. Either way each job's last
 * occurrence goes, as LREM -1 would remove it. Attempt counts exist only
 * for requeued jobs: skip the hashing otherwise. */
#define ACK_FN                                                                                     \
    "local function ack(plist, attempts, first, last)\n"                                           \
    "  if last < first then return end\n"                                                          \
    "  local tail, k = redis.call('LRANGE', plist, first - last - 1, -1), 0\n"                     \
    "  local t, want = #tail, {}\n"                                                                \
    "  while first + k <= last and k < t and tail[t - k] == ARGV[first + k] do k = k + 1 end\n"    \
    "  for i = first + k, last do want[ARGV[i]] = (want[ARGV[i]] or 0) + 1 end\n"                  \
    "  for i = t - k, 1, -1 do\n"                                                                  \
    "    local c = want[tail[i]]\n"                                                                \
    "    if not c or c == 0 then break end\n"                                                      \
    "    want[tail[i]] = c - 1\n"                                                                  \
    "    k = k + 1\n"                                                                              \
    "  end\n"                                                                                      \
    "  if k > 0 then redis.call('LTRIM', plist, 0, -k - 1) end\n"                                  \
    "  for job, c in pairs(want) do\n"                                                             \
    "    for _ = 1, c do redis.call('LREM', plist, '-1', job) end\n"                               \
    "  end\n"                                                                                      \
    "  if redis.call('EXISTS', attempts) == 1 then\n"                                              \
    "    local h = {}\n"                                                                           \
    "    for i = first, last do h[#h + 1] = redis.sha1hex(ARGV[i]) end\n"                          \
    "    redis.call('HDEL', attempts, unpack(h))\n"                                                \
    "  end\n"                                                                                      \
    "end\n"

/* KEYS: per queue (queue, processing, alive, workers, attempts) = 5 each.
 * ARGV: ttl ms, info, worker id, max jobs, then for each queue a count n
 * and n finished jobs to acknowledge first (oldest first).
 * Returns one array of jobs per queue, in KEYS order. LRANGE, LPUSH and
 * LTRIM move a queue's jobs in three calls, the queue trimmed last so that
 * a failing push (a processing key of the wrong type) loses nothing; the
 * processing list ends as a loop of LMOVE LEFT LEFT leaves it (newest at
 * the head, oldest at the tail). The LPUSH goes by chunks, within Lua's
 * limit on unpack(). */
static const char take[] =
    "-- tempest:take\n" ACK_FN "local a = 5\n"
    "for i = 1, #KEYS, 5 do\n"
    "  local n = tonumber(ARGV[a])\n"
    "  ack(KEYS[i + 1], KEYS[i + 4], a + 1, a + n)\n"
    "  a = a + n + 1\n"
    "end\n"
    "for i = 1, #KEYS, 5 do\n"
    "  redis.call('SET', KEYS[i + 2], ARGV[2], 'PX', ARGV[1])\n"
    "  redis.call('SADD', KEYS[i + 3], ARGV[3])\n"
    "end\n"
    "local out, n = {}, tonumber(ARGV[4])\n"
    "for i = 1, #KEYS, 5 do\n"
    "  local jobs = n > 0 and redis.call('LRANGE', KEYS[i], 0, n - 1) or {}\n"
    "  for j = 1, #jobs, 1000 do\n"
    "    redis.call('LPUSH', KEYS[i + 1], unpack(jobs, j, math.min(j + 999, #jobs)))\n"
    "  end\n"
    "  if #jobs > 0 then redis.call('LTRIM', KEYS[i], #jobs, -1) end\n"
    "  n = n - #jobs\n"
    "  out[#out + 1] = jobs\n"
    "end\n"
    "return out\n";

/* KEYS: processing, attempts. ARGV: the finished jobs (a batch), oldest first. */
static const char ack[] = "-- tempest:ack\n" ACK_FN "ack(KEYS[1], KEYS[2], 1, #ARGV)\n"
                          "return #ARGV\n";

/* Appends a dead letter; used by retry, bury and reap. */
#define DEAD_LETTER_FN                                                                             \
    "local function bury(dead, job, reason, queue)\n"                                              \
    "  local t = redis.call('TIME')\n"                                                             \
    "  local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                     \
    "  redis.call('RPUSH', dead, cjson.encode({job = job, reason = reason, queue = queue,"         \
    " at = at}))\n"                                                                                \
    "end\n"

/* KEYS: processing, attempts, queue, dead. ARGV: job, max attempts, reason, queue name.
 * Returns 1 when requeued, 0 when dead-lettered, -1 when not in processing. */
static const char retry[] =
    "-- tempest:retry\n" DEAD_LETTER_FN
    "if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return -1 end\n"
    "local h = redis.sha1hex(ARGV[1])\n"
    "local n = redis.call('HINCRBY', KEYS[2], h, 1)\n"
    "if n >= tonumber(ARGV[2]) then\n"
    "  redis.call('HDEL', KEYS[2], h)\n"
    "  bury(KEYS[4], ARGV[1], ARGV[3] .. ' (after ' .. n .. ' attempts)', ARGV[4])\n"
    "  return 0\n"
    "end\n"
    "redis.call('RPUSH', KEYS[3], ARGV[1])\n"
    "return 1\n";

/* KEYS: processing, attempts, dead. ARGV: job, reason, queue name. */
static const char bury[] =
    "-- tempest:bury\n" DEAD_LETTER_FN "redis.call('LREM', KEYS[1], -1, ARGV[1])\n"
    "redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[1]))\n"
    "bury(KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"
    "return 1\n";

/* KEYS: processing, queue. ARGV: job. */
static const char requeue[] = "-- tempest:requeue\n"
                              "if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end\n"
                              "redis.call('LPUSH', KEYS[2], ARGV[1])\n"
                              "return 1\n";

/* KEYS: queue, workers, attempts, dead. ARGV: key prefix "{q}:", max attempts, queue name.
 * Returns {requeued, dead-lettered}. */
static const char reap[] =
    "-- tempest:reap\n" DEAD_LETTER_FN "local moved, buried = 0, 0\n"
    "for _, w in ipairs(redis.call('SMEMBERS', KEYS[2])) do\n"
    "  if redis.call('EXISTS', ARGV[1] .. 'alive:' .. w) == 0 then\n"
    "    local plist = ARGV[1] .. 'processing:' .. w\n"
    "    while true do\n"
    "      local job = redis.call('LPOP', plist)\n"
    "      if not job then break end\n"
    "      local h = redis.sha1hex(job)\n"
    "      local n = redis.call('HINCRBY', KEYS[3], h, 1)\n"
    "      if n >= tonumber(ARGV[2]) then\n"
    "        redis.call('HDEL', KEYS[3], h)\n"
    "        bury(KEYS[4], job, 'worker ' .. w .. ' died holding it (after ' .. n .."
    " ' attempts)', ARGV[3])\n"
    "        buried = buried + 1\n"
    "      else\n"
    "        redis.call('LPUSH', KEYS[1], job)\n"
    "        moved = moved + 1\n"
    "      end\n"
    "    end\n"
    "    redis.call('SREM', KEYS[2], w)\n"
    "  end\n"
    "end\n"
    "return {moved, buried}\n";

/* KEYS: per queue (alive, workers, processing). ARGV: worker id.
 * Removes presence; leaves the registry entry while jobs remain. */
static const char leave[] = "-- tempest:leave\n"
                            "for i = 1, #KEYS, 3 do\n"
                            "  redis.call('DEL', KEYS[i])\n"
                            "  if redis.call('LLEN', KEYS[i + 2]) == 0 then\n"
                            "    redis.call('SREM', KEYS[i + 1], ARGV[1])\n"
                            "  end\n"
                            "end\n"
                            "return 1\n";

/* KEYS: history stream. ARGV: channel, payload, max length.
 * The XADD comes first, so a subscriber woken by the PUBLISH finds the
 * message in the stream. Returns {receivers, id}. */
static const char publish[] = "-- tempest:publish\n"
                              "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',"
                              " 'm', ARGV[2])\n"
                              "return {redis.call('PUBLISH', ARGV[1], ARGV[2]), id}\n";

/* The time on Redis's clock, in ms: expiries never depend on node clocks. */
#define NOW_MS                                                                                     \
    "local t = redis.call('TIME')\n"                                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS: nodes (zset id -> expiry), records (hash id -> JSON). ARGV: node id,
 * ttl ms, record. Drops up to 100 expired nodes on the way; returns how many.
 * With only the nodes key (Redis Cluster: the two keys live in different
 * slots), it leaves the records hash alone and returns the expired ids,
 * for the caller to HDEL, then HSET its record, on the records' master. */
static const char presence[] =
    "-- tempest:presence\n" NOW_MS
    "local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 100)\n"
    "for _, id in ipairs(gone) do\n"
    "  redis.call('ZREM', KEYS[1], id)\n"
    "  if KEYS[2] then redis.call('HDEL', KEYS[2], id) end\n"
    "end\n"
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])\n"
    "if not KEYS[2] then return gone end\n"
    "redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n"
    "return #gone\n";

/* KEYS: nodes, records. Reads the live records, then the queues and
 * services they name (keys derived from the records: one Redis, not a
 * cluster). Returns {now, queues JSON, services JSON, record...}.
 * With only the nodes key (Redis Cluster), returns {now, live id...}: the
 * caller reads the records and each queue (TP_SCRIPT_QUEUE_STATS) and
 * service on their own masters. */
static const char status[] =
    "-- tempest:status\n" NOW_MS "if not KEYS[2] then\n"
    "  local out = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')\n"
    "  table.insert(out, 1, now)\n"
    "  return out\n"
    "end\n"
    "local out, queues, services, seen = {now, '', ''}, {}, {}, {}\n"
    "for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do\n"
    "  local raw = redis.call('HGET', KEYS[2], id)\n"
    "  local ok, rec = pcall(cjson.decode, raw or '')\n"
    "  if ok and type(rec) == 'table' then\n"
    "    out[#out + 1] = raw\n"
    "    for _, q in ipairs(type(rec.queues) == 'table' and rec.queues or {}) do\n"
    "      local name, dead = q.name, q.dead\n"
    "      if type(name) == 'string' and not seen['q' .. name] then\n"
    "        seen['q' .. name] = true\n"
    "        local p, busy, workers = '{' .. name .. '}:', 0, 0\n"
    "        for _, w in ipairs(redis.call('SMEMBERS', p .. 'workers')) do\n"
    "          busy = busy + redis.call('LLEN', p .. 'processing:' .. w)\n"
    "          workers = workers + redis.call('EXISTS', p .. 'alive:' .. w)\n"
    "        end\n"
    "        if type(dead) ~= 'string' then dead = p .. 'dead' end\n"
    "        queues[#queues + 1] = {name = name, ready = redis.call('LLEN', name),\n"
    "          processing = busy, dead = redis.call('LLEN', dead), workers = workers}\n"
    "      end\n"
    "    end\n"
    "    for _, s in ipairs(type(rec.services) == 'table' and rec.services or {}) do\n"
    "      local name, ns = s.service, s.namespace\n"
    "      if type(name) == 'string' and type(ns) == 'string'\n"
    "          and not seen['s' .. ns .. ' ' .. name] then\n"
    "        seen['s' .. ns .. ' ' .. name] = true\n"
    "        local key = 'tempest:' .. ns .. ':svc:' .. name\n"
    "        services[#services + 1] = {service = name, namespace = ns,\n"
    "          responders = redis.call('ZRANGEBYSCORE', key, now, '+inf')}\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "out[2] = cjson.encode(queues)\n"
    "out[3] = cjson.encode(services)\n"
    "return out\n";

/* KEYS: a queue's list, its dead-letter list (both in the queue's slot).
 * Returns {ready, processing, dead, live workers}, as the status script
 * counts them. */
static const char queue_stats[] =
    "-- tempest:queue-stats\n"
    "local p, busy, workers = '{' .. KEYS[1] .. '}:', 0, 0\n"
    "for _, w in ipairs(redis.call('SMEMBERS', p .. 'workers')) do\n"
    "  busy = busy + redis.call('LLEN', p .. 'processing:' .. w)\n"
    "  workers = workers + redis.call('EXISTS', p .. 'alive:' .. w)\n"
    "end\n"
    "return {redis.call('LLEN', KEYS[1]), busy, redis.call('LLEN', KEYS[2]), workers}\n";

const char *const tp_scripts[TP_SCRIPT_COUNT] = {
    [TP_SCRIPT_HEARTBEAT] = heartbeat,
    [TP_SCRIPT_TAKE] = take,
    [TP_SCRIPT_ACK] = ack,
    [TP_SCRIPT_RETRY] = retry,
    [TP_SCRIPT_BURY] = bury,
    [TP_SCRIPT_REQUEUE] = requeue,
    [TP_SCRIPT_REAP] = reap,
    [TP_SCRIPT_LEAVE] = leave,
    [TP_SCRIPT_PUBLISH] = publish,
    [TP_SCRIPT_PRESENCE] = presence,
    [TP_SCRIPT_STATUS] = status,
    [TP_SCRIPT_QUEUE_STATS] = queue_stats,
};
