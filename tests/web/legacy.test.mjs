// The classic tutorial page (tests/legacy-page/index.html, the tutorial's client code unchanged)
// in headless Chromium, chatting through real gateways' legacy dialect on `/`. Run by
// tests/tests/legacy.rs.
//
// The page connects to ws:// + location.host + "/", so it is served from a test-only static server
// that also forwards WebSocket upgrades, byte for byte, to a gateway (or to nginx in front of two
// gateways): the setup of someone who put the tutorial's page on a host whose `/` is our gateway.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { ARTIFACTS, ROOT, TIMEOUT_MS, have, startGateway, startNginx, startRedis, stopAll, waitFor } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const PAGE = fs.readFileSync(path.join(ROOT, 'tests', 'legacy-page', 'index.html'));

let browser;
const servers = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check'],
    timeout: 60000,
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const server of servers) server.close();
  stopAll();
});

/** Serves the classic page at `/` and forwards WebSocket upgrades to `upstreamPort`. */
async function pageServer(upstreamPort) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  });
  server.on('upgrade', (req, socket, head) => {
    const upstream = net.connect(upstreamPort, '127.0.0.1', () => {
      let request = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) request += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${request}\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  servers.push(server);
  return `http://127.0.0.1:${server.address().port}/`;
}

/** Opens the page in a fresh context and enters `room` (1-4) as `name`. */
async function enter(url, name, room = '1') {
  const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
  context.setDefaultTimeout(TIMEOUT_MS);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(url);
  await page.locator('#name').fill(name);
  await page.locator('#room').selectOption(room);
  await page.locator('#enter').click();
  return page;
}

async function say(page, text) {
  await page.locator('#msg').fill(text);
  await page.locator('#send').click();
}

function lines(page) {
  return page.locator('#list li').allTextContents();
}

async function waitLine(page, text) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#list li')].some((li) => li.textContent === t), text, { timeout: TIMEOUT_MS });
}

async function waitNum(page, num) {
  await page.waitForFunction((n) => document.querySelector('#num').textContent === n, String(num), { timeout: TIMEOUT_MS });
}

/** Every rendered line is one the tutorial meant: no blank lines, no "undefined". */
async function assertCleanRendering(page) {
  for (const line of await lines(page)) {
    assert.ok(line.trim() !== '' && line.trim() !== ':', `blank line rendered: ${JSON.stringify(line)}`);
    assert.ok(!line.includes('undefined'), `"undefined" rendered: ${line}`);
  }
  const num = await page.locator('#num').textContent();
  assert.match(num, /^\d+$/, `online count shown: ${num}`);
  assert.deepEqual(page.errors, [], 'no page errors');
}

function count(list, text) {
  return list.filter((l) => l === text).length;
}

test('two classic pages chat through one gateway: names, counts, welcome and leave lines, no echo', async () => {
  const gateway = await startGateway({ label: 'legacy-page' });
  const url = await pageServer(gateway.port);

  const alice = await enter(url, 'Alice');
  await waitLine(alice, 'welcome Alice into room make friends');
  await waitNum(alice, 1);

  const bob = await enter(url, 'Bob');
  await waitLine(bob, 'welcome Bob into room make friends');
  await waitNum(bob, 2);
  await waitLine(alice, 'welcome Bob into room make friends');
  await waitNum(alice, 2);

  await say(alice, 'hello bob');
  await waitLine(bob, 'Alice: hello bob');
  // Bob answers after seeing Alice's post: had hers come back to her, it would arrive first.
  await say(bob, 'hi alice');
  await waitLine(alice, 'Bob: hi alice');
  await say(alice, 'how are you?');
  await waitLine(bob, 'Alice: how are you?');

  const aliceLines = await lines(alice);
  const bobLines = await lines(bob);
  assert.equal(count(aliceLines, 'Alice: hello bob'), 1, `Alice sees her post once: ${aliceLines}`);
  assert.equal(count(bobLines, 'Bob: hi alice'), 1, `Bob sees his post once: ${bobLines}`);
  assert.deepEqual(aliceLines, [
    'welcome Alice into room make friends',
    'welcome Bob into room make friends',
    'Alice: hello bob',
    'Bob: hi alice',
    'Alice: how are you?',
  ]);
  await assertCleanRendering(alice);
  await assertCleanRendering(bob);
  await alice.screenshot({ path: path.join(ARTIFACTS, 'legacy-page-chat.png') });

  // Bob closes his tab: Alice sees him leave and the count drop.
  await bob.context().close();
  await waitLine(alice, 'Bob leave the room');
  await waitNum(alice, 1);
  await assertCleanRendering(alice);
  await alice.context().close();
});

test('classic pages behind nginx and a v1 client share room 1 across two gateways over Redis', async (t) => {
  if (!have('nginx') || !have('redis-server')) {
    t.skip('needs nginx and redis-server');
    return;
  }
  const redis = await startRedis();
  const env = (id) => ({ CHAT__REDIS__URL: redis.url, CHAT__SERVER__NODE_ID: id, CHAT__PRESENCE__TTL_SECS: '4', CHAT__CLUSTER__SYNC_INTERVAL_SECS: '1' });
  const g1 = await startGateway({ label: 'legacy-g1', env: env('g1') });
  const g2 = await startGateway({ label: 'legacy-g2', env: env('g2') });
  const nginx = await startNginx([g1.port, g2.port]);
  const url = await pageServer(nginx.port);

  // A protocol v1 client on gateway 2, speaking /ws directly.
  const carol = new WebSocket(g2.wsUrl);
  const got = [];
  carol.on('message', (data) => got.push(JSON.parse(String(data))));
  await new Promise((resolve, reject) => { carol.once('open', resolve); carol.once('error', reject); });
  carol.send(JSON.stringify({ event: 'login', roomId: '1', userId: 'carol', userName: 'Carol', roomName: 'make friends' }));
  await waitFor(() => got.some((f) => f.event === 'joined'), { what: 'carol joined' });

  const alice = await enter(url, 'Alice');
  await waitLine(alice, 'welcome Alice into room make friends');
  await waitNum(alice, 2);
  const bob = await enter(url, 'Bob');
  await waitLine(bob, 'welcome Bob into room make friends');
  await waitNum(bob, 3);
  await waitNum(alice, 3);
  // nginx balances by open connections: Alice went to gateway 1 (Carol held gateway 2), so the
  // room spans both gateways whichever one Bob reached.
  assert.equal(await g1.connections() + await g2.connections(), 3);
  assert.ok(await g1.connections() >= 1, 'gateway 1 holds a page');

  carol.send(JSON.stringify({ event: 'message', roomId: '1', content: 'hello from v1', clientMsgId: 'c1' }));
  await waitLine(alice, 'Carol: hello from v1');
  await waitLine(bob, 'Carol: hello from v1');

  await say(alice, 'hello from the tutorial');
  await waitLine(bob, 'Alice: hello from the tutorial');
  const seen = await waitFor(() => got.find((f) => f.event === 'message' && f.content === 'hello from the tutorial'), { what: 'carol gets the page post' });
  assert.equal(seen.userName, 'Alice');
  assert.equal(seen.roomId, '1');
  assert.ok(Number.isInteger(seen.seq) && seen.seq === 2, `a v1 message with the room's seq: ${JSON.stringify(seen)}`);

  await bob.context().close();
  await waitLine(alice, 'Bob leave the room');
  await waitNum(alice, 2);
  const gone = await waitFor(() => got.find((f) => f.event === 'logout' && f.userName === 'Bob'), { what: 'carol sees Bob leave' });
  assert.equal(gone.num, 2);
  await assertCleanRendering(alice);
  assert.ok(!got.some((f) => f.event === 'error'), `no errors for the v1 client: ${JSON.stringify(got)}`);
  await alice.screenshot({ path: path.join(ARTIFACTS, 'legacy-page-cluster.png') });
  await alice.context().close();
  carol.close();
});
