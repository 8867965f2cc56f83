// SPDX-License-Identifier: MIT
//
// What the two Node.js workers of tests/foreign share (worker-node-redis.mjs
// and worker-ioredis.mjs): where their client modules come from, their
// arguments, and the `url` handler, so that they differ only in the Redis
// client they drive. The handler answers [200, {"Content-Type":
// "text/plain"}, "<name> <pid> <path>"]; ?sleep=MS waits that long first
// (with a timer, as Node.js code waits: the event loop keeps running),
// ?twice=1 sends the final answer twice, ?unknown=1 first answers job
// 987654321, which never existed.
import { createRequire } from 'node:module';

// require() for the modules of tests/clients/node_modules
// ($TEMPEST_CLIENTS_DIR to look elsewhere).
export function clientRequire() {
  const dir = process.env.TEMPEST_CLIENTS_DIR || new URL('../clients/', import.meta.url).pathname;
  return createRequire(`${dir.replace(/\/?$/, '/')}package.json`);
}

// QUEUE REDIS_PORT from argv, or $TEMPEST_QUEUE and $TEMPEST_REDIS_PORT.
export function workerArgs(script) {
  const queue = process.argv[2] || process.env.TEMPEST_QUEUE;
  const port = Number(process.argv[3] || process.env.TEMPEST_REDIS_PORT);
  if (!queue || !port) {
    console.error(`usage: node ${script} QUEUE REDIS_PORT`);
    process.exit(2);
  }
  return { queue, port };
}

const UNKNOWN_JOB = 987654321;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// The handlers by action; each gets answer(value[, id]) and the job's args.
export function handlers(name) {
  return {
    async url(answer, request) {
      const url = new URL(request.url, 'http://front');
      const query = url.searchParams;
      if (query.has('sleep')) {
        console.error(`${name} worker ${process.pid}: sleeping ${query.get('sleep')} ms`);
        await sleep(Number(query.get('sleep')));
      }
      const response = [200, { 'Content-Type': 'text/plain' }, `${name} ${process.pid} ${url.pathname}`];
      if (query.get('unknown') === '1') await answer(response, UNKNOWN_JOB);
      await answer(response);
      if (query.get('twice') === '1') await answer(response);
    },
  };
}
