// SPDX-License-Identifier: MIT
//
// Opens examples/sub.html in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is ever downloaded) subscribed to a
// front's /sub/<channel> endpoint, waits until the page has received the
// `end` event, and prints what the page lists, one `<type>: <data>` line per
// event, on stdout. Exits 0 when the page ended normally, 1 on a page error
// or a timeout (after printing what it got), 2 on bad usage. Progress goes to
// stderr; `browser.mjs: page open` there means the EventSource is connected.
//
//   node browser.mjs [--serve] [--timeout SECONDS] [--events NAMES] URL
//
//   URL             the front's endpoint, e.g. http://127.0.0.1:1337/sub/test
//   --serve         serve sub.html from a private HTTP server on 127.0.0.1
//                   instead of opening it as a file:// URL
//   --events NAMES  comma-separated named events the page listens to
//                   (sub.html's `events` parameter; default: greet)
//   --timeout S     give up after S seconds (default 20)
//
// Either way the page is of another origin than the front (file:// pages
// have the opaque origin "null"), so the front must send CORS headers:
// start it with `--cors '*'`. file:// is the default because it is how the
// README opens the page; --serve covers pages served over HTTP.
//
// Environment: TEMPEST_SCREENSHOT=PATH saves a PNG of the page at the end;
// TEMPEST_CHROMIUM overrides /usr/bin/chromium.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

const pagePath = fileURLToPath(new URL('../../examples/sub.html', import.meta.url));
const executablePath = process.env.TEMPEST_CHROMIUM || '/usr/bin/chromium';
const screenshot = process.env.TEMPEST_SCREENSHOT || '';

function usage(message) {
  if (message) console.error(`browser.mjs: ${message}`);
  console.error('usage: node browser.mjs [--serve] [--timeout SECONDS] [--events NAMES] URL');
  process.exit(2);
}

let serve = false;
let timeoutSeconds = 20;
let events = '';
const positional = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i];
  if (arg === '--serve') {
    serve = true;
  } else if (arg === '--timeout' || arg === '--events') {
    if (i + 1 >= argv.length) usage(`${arg} needs a value`);
    const value = argv[++i];
    if (arg === '--events') {
      events = value;
    } else if (!((timeoutSeconds = Number(value)) > 0)) {
      usage('--timeout needs a positive number');
    }
  } else if (arg === '-h' || arg === '--help') {
    usage();
  } else if (arg.startsWith('--')) {
    usage(`unknown option ${arg}`);
  } else {
    positional.push(arg);
  }
}
if (positional.length !== 1) usage();
const endpoint = positional[0];
if (!/^https?:\/\//.test(endpoint)) usage(`not an http URL: ${endpoint}`);
if (!fs.existsSync(executablePath)) {
  console.error(`browser.mjs: no ${executablePath}: apt-get install chromium`);
  process.exit(1);
}

const log = (message) => console.error(`browser.mjs: ${message}`);

// ---- everything to undo on exit ---------------------------------------------

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tempest-chromium-'));
let context = null;
let server = null;
let cleaning = null;

function cleanup() {
  cleaning ??= (async () => {
    if (context) {
      // Bounded: a wedged browser must not keep us (playwright kills its
      // process group when node exits anyway).
      await Promise.race([context.close().catch(() => {}),
        new Promise((resolve) => setTimeout(resolve, 5000))]);
    }
    if (server) server.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  })();
  return cleaning;
}

async function exit(code) {
  await cleanup();
  process.exit(code);
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    log(`${signal}: closing the browser`);
    exit(1);
  });
}

// ---- the page ----------------------------------------------------------------

// A static server for sub.html alone (anything else is 404), on a free port.
async function servePage() {
  const body = fs.readFileSync(pagePath);
  server = http.createServer((req, res) => {
    if (req.method === 'GET' && new URL(req.url, 'http://x').pathname === '/sub.html') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(body);
    } else {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found\n');
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return `http://127.0.0.1:${server.address().port}/sub.html`;
}

async function main() {
  const query = new URLSearchParams({ url: endpoint });
  if (events) query.set('events', events);
  const base = serve ? await servePage() : pathToFileURL(pagePath).href;
  const pageUrl = `${base}?${query}`;

  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    handleSIGINT: false, // our handlers close the browser and remove its profile
    handleSIGTERM: false,
    handleSIGHUP: false,
    viewport: { width: 760, height: 420 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (msg) => log(`console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (error) => log(`page error: ${error.message}`));
  page.on('requestfailed', (req) => {
    const why = req.failure()?.errorText ?? '';
    if (why !== 'net::ERR_ABORTED') log(`request failed: ${req.url()} ${why}`); // aborted: closed by the page
  });

  log(`opening ${pageUrl}`);
  await page.goto(pageUrl);

  const deadline = Date.now() + timeoutSeconds * 1000;
  const remaining = () => Math.max(1, deadline - Date.now());
  let ok = false;
  try {
    // Connected (or failed for good).
    await page.waitForFunction(
      () => ['open', 'ended', 'error'].includes(document.body.dataset.state),
      null, { timeout: remaining() });
    const state = await page.evaluate(() => document.body.dataset.state);
    if (state === 'open' || state === 'ended') log('page open');
    // The end event closes the EventSource and sets the state to "ended".
    await page.waitForFunction(
      () => ['ended', 'error'].includes(document.body.dataset.state),
      null, { timeout: remaining() });
    ok = (await page.evaluate(() => document.body.dataset.state)) === 'ended';
    if (!ok) log(`the page failed: ${await page.textContent('#hint')}`);
  } catch (error) {
    if (error.name !== 'TimeoutError') throw error;
    const state = await page.evaluate(() => document.body.dataset.state).catch(() => '?');
    log(`no 'end' event within ${timeoutSeconds} s (page state: ${state})`);
  }

  const lines = await page.$$eval('#events li .line', (items) => items.map((li) => li.textContent));
  for (const line of lines) process.stdout.write(`${line}\n`);
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: true });
    log(`screenshot: ${screenshot}`);
  }
  return ok;
}

main().then(
  (ok) => exit(ok ? 0 : 1),
  (error) => {
    log(`${error.stack || error}`);
    exit(1);
  });
