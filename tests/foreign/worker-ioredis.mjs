// SPDX-License-Identifier: MIT
//
// A Tempest worker written the way the Node.js Tempest worker wrote its
// loop, with the npm `ioredis` package (the version pinned in
// tests/clients/package.json): one client does BLPOP <queue> 0, the job
// [action, args, respond_to, job_id] goes to the handler of its action, and
// every answer is sent with the client's generic command call,
// `redis.call("url", id, json)`, on a client connected to respond_to and
// kept per address. Nothing catches an error reply: the rejected promise
// ends the process, as an error reply killed the original worker.
// tests/test_foreign.sh runs it.
//
//   node worker-ioredis.mjs QUEUE REDIS_PORT   (or $TEMPEST_QUEUE, $TEMPEST_REDIS_PORT)
//
// The `url` handler answers [200, {"Content-Type": "text/plain"},
// "ioredis <pid> <path>"]; ?sleep=MS waits that long first
// (with a timer, as Node.js code waits: the event loop keeps running), ?twice=1 sends the final
// answer twice, ?unknown=1 first answers job 987654321, which never existed.
// Stderr: a ready line once the BLPOP client is connected, a line before
// each sleep, and the clients' `error` events (ioredis reconnects by
// itself); stdout: `answered <job_id>` once a job's answers are all sent.
// The modules come from tests/clients/node_modules ($TEMPEST_CLIENTS_DIR to
// look elsewhere).
import { clientRequire, handlers as makeHandlers, workerArgs } from './common.mjs';

const req = clientRequire();
const Redis = req('ioredis');
const version = req('ioredis/package.json').version;
const name = 'ioredis';
const { queue, port } = workerArgs('worker-ioredis.mjs');
const handlers = makeHandlers(name);

function connect(host, port) {
  const client = new Redis({ host, port });
  client.on('error', (err) => console.error(`${name} worker ${process.pid}: ${host}:${port}: error event: ${err}`));
  return client;
}

const peers = new Map(); // respond_to -> client (ioredis queues commands until it is connected)
function peer(address) {
  if (!peers.has(address)) {
    const colon = address.lastIndexOf(':');
    peers.set(address, connect(address.slice(0, colon), Number(address.slice(colon + 1))));
  }
  return peers.get(address);
}

const jobs = connect('127.0.0.1', port);
await jobs.ping();
console.error(`${name} worker ${process.pid}: ready, BLPOP ${queue} 0 on 127.0.0.1:${port} (ioredis ${version})`);

for (;;) {
  const [, raw] = await jobs.blpop(queue, 0);
  const [action, args, respondTo, jobId] = JSON.parse(raw);
  const answer = async (value, id = jobId) => {
    if (respondTo !== null) await peer(respondTo).call(action, String(id), JSON.stringify(value));
  };
  await handlers[action](answer, ...args);
  console.log(`answered ${jobId}`);
}
