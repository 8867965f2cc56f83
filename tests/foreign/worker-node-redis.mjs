// SPDX-License-Identifier: MIT
//
// A Tempest worker written the way the Node.js Tempest worker wrote its
// loop, with the npm `redis` package (node-redis, the version pinned in
// tests/clients/package.json): one client does BLPOP <queue> 0, the job
// [action, args, respond_to, job_id] goes to the handler of its action, and
// every answer is sent with the client's generic command call,
// `client.sendCommand(["url", id, json])`, on a client connected to
// respond_to and kept per address. Nothing catches an error reply: the
// rejected promise ends the process, as an error reply killed the original
// worker. tests/test_foreign.sh runs it.
//
//   node worker-node-redis.mjs QUEUE REDIS_PORT   (or $TEMPEST_QUEUE, $TEMPEST_REDIS_PORT)
//
// The `url` handler answers [200, {"Content-Type": "text/plain"},
// "node-redis <pid> <path>"]; ?sleep=MS waits that long first
// (with a timer, as Node.js code waits: the event loop keeps running), ?twice=1 sends the final
// answer twice, ?unknown=1 first answers job 987654321, which never existed.
// Stderr: a ready line once the BLPOP client is connected, a line before
// each sleep, and the clients' `error` events (node-redis requires a
// listener; it reconnects by itself); stdout: `answered <job_id>` once a
// job's answers are all sent. The modules come from tests/clients/node_modules
// ($TEMPEST_CLIENTS_DIR to look elsewhere).
import { clientRequire, handlers as makeHandlers, workerArgs } from './common.mjs';

const req = clientRequire();
const { createClient } = req('redis');
const version = req('redis/package.json').version;
// $TEMPEST_RESP=2 or 3 sets the client's RESP option; without it the
// library's default applies (RESP3 in node-redis 6.4: it opens with HELLO 3).
const resp = process.env.TEMPEST_RESP ? Number(process.env.TEMPEST_RESP) : undefined;
const name = resp === undefined ? 'node-redis' : `node-redis-resp${resp}`;
const { queue, port } = workerArgs('worker-node-redis.mjs');
const handlers = makeHandlers(name);

function connect(host, port) {
  const client = createClient({ socket: { host, port }, ...(resp === undefined ? {} : { RESP: resp }) });
  client.on('error', (err) => console.error(`${name} worker ${process.pid}: ${host}:${port}: error event: ${err}`));
  return client.connect();
}

const peers = new Map(); // respond_to -> Promise of a connected client
function peer(address) {
  if (!peers.has(address)) {
    const colon = address.lastIndexOf(':');
    peers.set(address, connect(address.slice(0, colon), Number(address.slice(colon + 1))));
  }
  return peers.get(address);
}

const jobs = await connect('127.0.0.1', port);
console.error(`${name} worker ${process.pid}: ready, BLPOP ${queue} 0 on 127.0.0.1:${port} (redis ${version})`);

for (;;) {
  const popped = await jobs.blPop(queue, 0);
  const [action, args, respondTo, jobId] = JSON.parse(popped.element);
  const answer = async (value, id = jobId) => {
    if (respondTo !== null) await (await peer(respondTo)).sendCommand([action, String(id), JSON.stringify(value)]);
  };
  await handlers[action](answer, ...args);
  console.log(`answered ${jobId}`);
}
