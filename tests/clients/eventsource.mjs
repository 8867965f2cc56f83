// SPDX-License-Identifier: MIT
//
// Subscribes the npm `eventsource` package (the client the original Tempest
// README used) to a front's Server-Sent Events endpoint and prints one line
// per event on stdout, `<type>: <data>` (type `message` for unnamed events).
// Exits 0 after the `end` event (what a front sends for ["$unsubscribe"]),
// 1 on a connection error or when no `end` came within the timeout, 2 on bad
// usage. Progress and errors go to stderr.
//
//   node eventsource.mjs [--timeout SECONDS] [--event NAME]... URL
//   node eventsource.mjs [--timeout SECONDS] [--event NAME]... PORT [CHANNEL]
//
// With PORT the URL is http://127.0.0.1:PORT/sub/CHANNEL (CHANNEL: test).
// EventSource only dispatches named events that have a listener: `greet`
// and `end` always do, --event adds more. The timeout defaults to 20 s.
import { EventSource } from 'eventsource';

function usage(message) {
  if (message) console.error(`eventsource.mjs: ${message}`);
  console.error(
    'usage: node eventsource.mjs [--timeout SECONDS] [--event NAME]... URL | PORT [CHANNEL]');
  process.exit(2);
}

let timeoutSeconds = 20;
const names = new Set(['greet']);
const positional = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i];
  if (arg === '--timeout' || arg === '--event') {
    if (i + 1 >= argv.length) usage(`${arg} needs a value`);
    const value = argv[++i];
    if (arg === '--timeout') {
      timeoutSeconds = Number(value);
      if (!(timeoutSeconds > 0)) usage('--timeout needs a positive number');
    } else {
      names.add(value);
    }
  } else if (arg === '-h' || arg === '--help') {
    usage();
  } else if (arg.startsWith('--')) {
    usage(`unknown option ${arg}`);
  } else {
    positional.push(arg);
  }
}
if (positional.length < 1 || positional.length > 2) usage();
names.delete('message'); // listened to below, as is 'end'
names.delete('end');

let url;
if (/^\d+$/.test(positional[0])) {
  const channel = positional[1] ?? 'test';
  url = `http://127.0.0.1:${positional[0]}/sub/${encodeURIComponent(channel)}`;
} else {
  if (positional.length !== 1) usage();
  url = positional[0];
}

const es = new EventSource(url);
let finished = false;

function finish(code, message) {
  if (finished) return;
  finished = true;
  es.close();
  clearTimeout(timer);
  if (message) console.error(`eventsource.mjs: ${message}`);
  // Let stdout drain before exiting (it may be a pipe).
  process.exitCode = code;
  setImmediate(() => process.exit(code));
}

const timer = setTimeout(
  () => finish(1, `no 'end' event within ${timeoutSeconds} s`), timeoutSeconds * 1000);

function print(event) {
  process.stdout.write(`${event.type}: ${event.data}\n`);
}

es.addEventListener('open', () => console.error(`eventsource.mjs: connected to ${url}`));
es.addEventListener('message', print);
for (const name of names) es.addEventListener(name, print);
es.addEventListener('end', (event) => {
  print(event);
  finish(0);
});
es.addEventListener('error', (event) => {
  // The eventsource package puts the HTTP status (if any) in `code`.
  const detail = [event.code, event.message].filter((x) => x !== undefined && x !== '').join(' ');
  finish(1, `error on ${url}${detail ? `: ${detail}` : ''}`);
});
