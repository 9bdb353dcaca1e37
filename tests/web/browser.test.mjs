// End-to-end tests of the web chat in headless Chromium (Debian's `chromium`, driven by
// playwright-core), against real gateway processes — one node, and a Redis cluster behind nginx.
// Screenshots (phone and desktop) are written to ARTIFACTS (target/web-artifacts by default).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { ARTIFACTS, RUN_DIR, TIMEOUT_MS, startGateway, startNginx, startRedis, stopAll, waitFor } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

let browser;
let lib;

before(async () => {
  // Playwright starts Chromium with --headless and a fresh temporary --user-data-dir of its own
  // (it refuses one passed in args), removed when the browser closes.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check'],
    timeout: 60000,
  });
});

after(async () => {
  if (browser) await browser.close();
  stopAll();
});

async function clientLib(gateway) {
  if (!lib) {
    const response = await fetch(`${gateway.url}/chat-client.js`);
    const file = path.join(RUN_DIR, 'chat-client.mjs');
    fs.writeFileSync(file, await response.text());
    lib = await import(file);
  }
  return lib;
}

/** A Node-side chat user (the library over `ws`), for posting while pages watch. */
async function nodeUser(gateway, userId, { url } = {}) {
  const { ChatClient, MemoryStorage } = await clientLib(gateway);
  const client = new ChatClient({ url: url || gateway.wsUrl, userId, userName: userId[0].toUpperCase() + userId.slice(1), WebSocket, storage: new MemoryStorage(), ackDelayMs: 50 });
  client.got = [];
  client.on('message', (e) => client.got.push(e.message));
  return client;
}

let contextCount = 0;
async function newContext(viewport = DESKTOP, extra = {}) {
  contextCount += 1;
  const context = await browser.newContext({ viewport, locale: 'en-US', ...extra });
  context.setDefaultTimeout(TIMEOUT_MS);
  return context;
}

/** Opens the page, and signs in as `name` unless the context already remembers someone. */
async function openChat(context, baseUrl, name) {
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('dialog', (d) => { page.errors.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });
  await page.goto(baseUrl + '/');
  if (name) {
    await page.locator('#nickname').fill(name);
    await page.locator('#nickname').press('Enter');
  }
  await page.locator('#app').waitFor({ state: 'visible' });
  return page;
}

async function enterRoom(page, roomId) {
  await page.locator(`#suggested-list .card[data-room="${roomId}"], #room-list .card[data-room="${roomId}"]`).first().click();
  await page.locator('#chat-view').waitFor({ state: 'visible' });
  await page.waitForFunction((id) => window.chatApp && window.chatApp.client.room(id) && window.chatApp.client.room(id).joined, roomId);
}

async function send(page, text) {
  await page.locator('#composer-input').fill(text);
  await page.locator('#composer-input').press('Enter');
}

/** The texts of confirmed messages (with a seq) in the open conversation, in order. */
function bubbles(page) {
  return page.locator('#messages .msg[data-seq] .bubble .text').allTextContents();
}

async function waitText(page, selector, text) {
  await page.waitForFunction(([sel, txt]) => [...document.querySelectorAll(sel)].some((n) => n.textContent.includes(txt)), [selector, text], { timeout: TIMEOUT_MS });
}

async function waitStatus(page, status) {
  await page.waitForFunction((s) => document.querySelector('#status').dataset.status === s, status, { timeout: TIMEOUT_MS });
}

function noErrors(page) {
  assert.deepEqual(page.errors, [], 'no page errors or dialogs');
}

test('two people chat in a room and see the counts change; HTML stays text', async () => {
  const gateway = await startGateway({ label: 'e2e-chat' });
  const alice = await newContext();
  const bob = await newContext();
  const pa = await openChat(alice, gateway.url, 'Alice');
  await enterRoom(pa, 'lobby');
  await waitText(pa, '#online-count', '1 online');
  await waitText(pa, '#messages .sys', 'Welcome Alice to Lobby');

  const pb = await openChat(bob, gateway.url, 'Bob');
  await enterRoom(pb, 'lobby');
  await waitText(pa, '#online-count', '2 online');
  await waitText(pa, '#messages .sys', 'Welcome Bob to Lobby');
  await waitText(pb, '#online-count', '2 online');

  await send(pa, 'Hi Bob!');
  await waitText(pb, '#messages .msg[data-seq] .bubble .text', 'Hi Bob!');
  await send(pb, 'Hello Alice 你好');
  await waitText(pa, '#messages .msg[data-seq] .bubble .text', 'Hello Alice 你好');
  // Chromium offers permessage-deflate and the gateway (compression on by default) accepts it:
  // frames over the threshold travel compressed both ways, and read the same.
  const extensions = await pa.evaluate(async (url) => {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    const negotiated = ws.extensions;
    ws.close();
    return negotiated;
  }, gateway.wsUrl);
  assert.match(extensions, /permessage-deflate/);
  const long = `${'a long line that compresses well, '.repeat(12)}end`;
  await send(pa, long);
  await waitText(pb, '#messages .msg[data-seq] .bubble .text', long);
  // Own messages on the right, others with their names.
  assert.equal(await pa.locator('#messages .msg.own[data-seq] .bubble .text').first().textContent(), 'Hi Bob!');
  const bobsInA = pa.locator('#messages .msg:not(.own)[data-seq]').first();
  assert.equal(await bobsInA.locator('.author').textContent(), 'Bob');
  assert.match(await bobsInA.locator('time').textContent(), /\d/);

  // A message made of markup is shown as the characters typed.
  const evil = '<img src=x onerror=alert(1)>';
  await send(pb, evil);
  await waitText(pa, '#messages .msg[data-seq] .bubble .text', evil);
  assert.equal(await pa.locator('#messages img').count(), 0, 'no element was created from the message');
  const last = await pa.locator('#messages .msg[data-seq] .bubble .text').last().textContent();
  assert.equal(last, evil);

  // An empty message is refused with a warning, and nothing is sent.
  const before = (await bubbles(pb)).length;
  await send(pb, '   ');
  await waitText(pb, '#toasts .toast', 'cannot be empty');
  assert.equal((await bubbles(pb)).length, before);

  // Bob goes: Alice sees the count drop and the notice.
  await pb.close();
  await waitText(pa, '#messages .sys', 'Bob went offline');
  await waitText(pa, '#online-count', '1 online');

  // The member list knows Bob (offline now) and offers a direct message.
  await pa.locator('#members-toggle').click();
  await waitText(pa, '#member-list .member', 'Bob');
  await pa.locator('#member-list .member[data-user="bob"] .dm').click();
  await waitText(pa, '#chat-name', 'Direct · Bob');
  await send(pa, 'psst, Bob');
  await pa.waitForFunction(() => document.querySelector('#messages .msg.own[data-seq]') !== null);
  await pa.screenshot({ path: path.join(ARTIFACTS, 'desktop-dm.png') });

  const pb2 = await openChat(bob, gateway.url, null);
  await waitText(pb2, '#dm-list .card', 'Alice');
  await waitText(pb2, '#dm-list .badge', '1');
  await waitText(pb2, '#room-list .card[data-room="lobby"]', 'Lobby');

  // Leaving for good (Leave, then confirm in the toast): Bob sees it, and the room is gone.
  await pb2.locator('#room-list .card[data-room="lobby"]').click();
  await pa.locator('#room-list .card[data-room="lobby"]').click();
  await waitText(pa, '#online-count', '2 online');
  await pa.locator('#leave').click();
  await pa.locator('#toasts .toast button').click();
  await waitText(pb2, '#messages .sys', 'Alice left');
  await waitText(pb2, '#online-count', '1 online · 1 member');
  await pa.locator('#room-list .card[data-room="lobby"]').waitFor({ state: 'detached' });
  await pa.locator('#suggested-list .card[data-room="lobby"]').waitFor();
  noErrors(pa);
  noErrors(pb2);
  await alice.close();
  await bob.close();
});

test('someone closes the page, messages arrive, they come back and see them under the divider once', async () => {
  const gateway = await startGateway({ label: 'e2e-divider' });
  const carol = await newContext();
  const dave = await newContext();
  const pc = await openChat(carol, gateway.url, 'Carol');
  await enterRoom(pc, 'games');
  const pd = await openChat(dave, gateway.url, 'Dave');
  await enterRoom(pd, 'games');
  await send(pd, 'seen before leaving');
  await waitText(pc, '#messages .msg[data-seq] .bubble .text', 'seen before leaving');
  await pc.close();
  await waitText(pd, '#messages .sys', 'Carol went offline');

  const missed = ['while you were away 1', 'while you were away 2', 'while you were away 3'];
  for (const text of missed) await send(pd, text);
  await waitText(pd, '#messages .msg.own[data-seq] .bubble .text', missed[2]);
  assert.deepEqual(await bubbles(pd), ['seen before leaving', ...missed]);

  const pc2 = await openChat(carol, gateway.url, null); // same browser profile: remembered name and cursors
  await pc2.locator('#room-list .card[data-room="games"]').click();
  await waitText(pc2, '#messages .divider-new', 'New since you left');
  await pc2.waitForFunction((n) => document.querySelectorAll('#messages .msg[data-seq]').length >= n, missed.length + 1);
  const order = await pc2.evaluate(() => [...document.querySelectorAll('#messages .msg[data-seq] .bubble .text, #messages .divider-new')].map((n) => (n.classList.contains('divider-new') ? '--divider--' : n.textContent)));
  assert.deepEqual(order, ['seen before leaving', '--divider--', ...missed], 'history above the divider, missed messages below it, each once');
  await pc2.screenshot({ path: path.join(ARTIFACTS, 'desktop-divider.png') });
  noErrors(pc2);
  await carol.close();
  await dave.close();
});

test('away longer than the history lasts: the page marks the messages that are gone, then shows the rest once', async () => {
  // The room keeps 3 messages: 6 posted while Carol is away leave a hole the replay cannot fill.
  const gateway = await startGateway({ label: 'e2e-gap', env: { CHAT__HISTORY__PER_ROOM: '3' } });
  const carol = await newContext();
  const dave = await newContext();
  const pc = await openChat(carol, gateway.url, 'Carol');
  await enterRoom(pc, 'music');
  const pd = await openChat(dave, gateway.url, 'Dave');
  await enterRoom(pd, 'music');
  await send(pd, 'before the hole');
  await waitText(pc, '#messages .msg[data-seq] .bubble .text', 'before the hole');
  await pc.close();
  await waitText(pd, '#messages .sys', 'Carol went offline');
  const missed = ['away 1', 'away 2', 'away 3', 'away 4', 'away 5', 'away 6'];
  for (const text of missed) await send(pd, text);
  await waitText(pd, '#messages .msg.own[data-seq] .bubble .text', missed[5]);

  const pc2 = await openChat(carol, gateway.url, null);
  await pc2.locator('#room-list .card[data-room="music"]').click();
  await waitText(pc2, '#messages .divider-gap', 'Some messages you missed are no longer kept');
  await pc2.waitForFunction(() => [...document.querySelectorAll('#messages .msg[data-seq] .bubble .text')].some((n) => n.textContent === 'away 6'));
  const order = await pc2.evaluate(() => [...document.querySelectorAll('#messages .msg[data-seq] .bubble .text, #messages .divider-gap')].map((n) => (n.classList.contains('divider-gap') ? '--gap--' : n.textContent)));
  const gapAt = order.indexOf('--gap--');
  assert.ok(gapAt >= 0, `a gap mark: ${order}`);
  assert.deepEqual(order.slice(gapAt + 1), missed.slice(3), 'the messages history still holds come after the mark, each once');
  assert.equal(order.filter((x) => x === '--gap--').length, 1, 'one mark');
  assert.ok(!order.slice(gapAt + 1).includes('away 3'), 'nothing from inside the hole');
  noErrors(pc2);
  await carol.close();
  await dave.close();
});

test('the gateway restarts: the page reconnects by itself and resumes with no gap', async () => {
  const redis = await startRedis();
  const env = { CHAT__REDIS__URL: redis.url, CHAT__PRESENCE__TTL_SECS: '4' };
  const gw1 = await startGateway({ env, label: 'e2e-restart-1' });
  const gw2 = await startGateway({ env, label: 'e2e-restart-2' });
  const context = await newContext();
  const page = await openChat(context, gw1.url, 'Erin');
  await enterRoom(page, 'music');
  const frank = await nodeUser(gw2, 'frank');
  frank.join('music');
  frank.connect();
  await frank.join('music');
  frank.send('music', 'before the restart');
  await waitText(page, '#messages .msg[data-seq] .bubble .text', 'before the restart');
  await waitStatus(page, 'connected');

  gw1.kill9();
  await page.waitForFunction(() => ['reconnecting', 'offline', 'connecting'].includes(document.querySelector('#status').dataset.status));
  await waitText(page, '#status-text', 'Reconnecting');
  // Typed while disconnected: pending until the server confirms it.
  await send(page, 'typed during the outage');
  await page.locator('#messages .msg.pending').waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, 'desktop-reconnecting.png') });
  for (const text of ['during the outage 1', 'during the outage 2']) frank.send('music', text);
  await waitFor(() => frank.got.filter((m) => m.content.startsWith('during')).length === 2, { what: 'frank posted' });
  await gw1.restart();

  await waitStatus(page, 'connected');
  await waitText(page, '#messages .msg[data-seq] .bubble .text', 'during the outage 2');
  await waitText(page, '#messages .msg.own[data-seq] .bubble .text', 'typed during the outage');
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg.pending').length === 0);
  const seqs = await page.evaluate(() => [...document.querySelectorAll('#messages .msg[data-seq]')].map((n) => Number(n.dataset.seq)));
  assert.deepEqual(seqs, [1, 2, 3, 4], 'every message once, in order, no gap');
  await waitFor(() => frank.got.some((m) => m.content === 'typed during the outage'), { what: 'frank got the queued post' });
  noErrors(page);
  frank.close();
  await context.close();
});

test('a single in-memory gateway restarts empty: the page adopts the new log instead of taking it for duplicates', async () => {
  const gateway = await startGateway({ label: 'e2e-epoch' });
  const context = await newContext();
  const page = await openChat(context, gateway.url, 'Paul');
  await enterRoom(page, 'games');
  await send(page, 'old log, seq 1');
  await waitText(page, '#messages .msg.own[data-seq] .bubble .text', 'old log, seq 1');
  const oldEpoch = await page.evaluate(() => window.chatApp.client.room('games').epoch);

  await gateway.restart(); // the embedded backend keeps nothing: the room's log starts again at 1
  await waitStatus(page, 'connected');
  await page.waitForFunction((old) => window.chatApp.client.room('games').epoch !== old, oldEpoch);
  await waitText(page, '#messages .sys', 'history was reset');
  const quinn = await nodeUser(gateway, 'quinn');
  quinn.join('games');
  quinn.connect();
  await quinn.join('games');
  quinn.send('games', 'new log, seq 1');
  await waitText(page, '#messages .msg[data-seq] .bubble .text', 'new log, seq 1');
  await send(page, 'new log, seq 2');
  await waitFor(() => quinn.got.some((m) => m.content === 'new log, seq 2' && m.seq === 2), { what: 'quinn got seq 2' });
  const texts = await page.locator('#messages .msg .bubble .text').allTextContents();
  assert.deepEqual(texts, ['old log, seq 1', 'new log, seq 1', 'new log, seq 2']);
  noErrors(page);
  quinn.close();
  await context.close();
});

test('a cluster behind nginx: a gateway is killed and the page carries on through the other', async () => {
  const redis = await startRedis();
  const env = { CHAT__REDIS__URL: redis.url, CHAT__PRESENCE__TTL_SECS: '4' };
  const gw1 = await startGateway({ env, label: 'e2e-cluster-1' });
  const gw2 = await startGateway({ env, label: 'e2e-cluster-2' });
  const nginx = await startNginx([gw1.port, gw2.port]);
  const context = await newContext();
  const page = await openChat(context, nginx.url, 'Gina');
  await enterRoom(page, 'tech');
  await waitStatus(page, 'connected');

  // Which gateway holds the page's WebSocket? Kill that one (by its PID).
  const counts = await waitFor(async () => {
    const c = [await gw1.connections(), await gw2.connections()];
    return c[0] + c[1] === 1 ? c : null;
  }, { what: 'the page connected to one gateway' });
  const [victim, survivor] = counts[0] === 1 ? [gw1, gw2] : [gw2, gw1];
  const henry = await nodeUser(survivor, 'henry');
  henry.join('tech');
  henry.connect();
  await henry.join('tech');
  henry.send('tech', 'hello from the other node');
  await waitText(page, '#messages .msg[data-seq] .bubble .text', 'hello from the other node');

  victim.kill9();
  await page.waitForFunction(() => document.querySelector('#status').dataset.status !== 'connected');
  for (const text of ['after the crash 1', 'after the crash 2']) henry.send('tech', text);
  await waitStatus(page, 'connected');
  await waitFor(async () => (await survivor.connections()) === 2, { what: 'the page on the surviving gateway' });
  await waitText(page, '#messages .msg[data-seq] .bubble .text', 'after the crash 2');
  await send(page, 'still here');
  await waitFor(() => henry.got.some((m) => m.content === 'still here'), { what: 'henry got the reply' });
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg.pending').length === 0);
  const texts = await bubbles(page);
  assert.deepEqual(texts, ['hello from the other node', 'after the crash 1', 'after the crash 2', 'still here']);
  noErrors(page);
  henry.close();
  await context.close();
});

test('history loads while scrolling up; a "new messages" pill appears when scrolled up', async () => {
  const gateway = await startGateway({ label: 'e2e-scroll' });
  const mia = await nodeUser(gateway, 'mia');
  mia.join('tech');
  mia.connect();
  await mia.join('tech');
  const total = 75;
  for (let i = 1; i <= total; i++) mia.send('tech', `line ${i}`);
  await waitFor(() => mia.got.length === total, { what: 'seeded history' });

  const context = await newContext();
  const page = await openChat(context, gateway.url, 'Nick');
  await enterRoom(page, 'tech');
  await waitText(page, '#messages .msg[data-seq] .bubble .text', `line ${total}`);
  const seqs = () => page.evaluate(() => [...document.querySelectorAll('#messages .msg[data-seq]')].map((n) => Number(n.dataset.seq)));
  const first = await seqs();
  assert.ok(first.length < total, `one page first (${first.length})`);
  // Scrolling to the top loads earlier pages until the beginning of the room.
  await waitFor(async () => {
    await page.evaluate(() => { document.querySelector('#messages').scrollTop = 0; document.querySelector('#messages').dispatchEvent(new Event('scroll')); });
    return (await seqs()).length === total;
  }, { what: 'all history loaded by scrolling', interval: 300 });
  assert.deepEqual(await seqs(), Array.from({ length: total }, (_, i) => i + 1));
  await waitText(page, '#messages .top-note', 'beginning of');

  // Scrolled up: a new message does not move the view; a pill offers to jump down.
  const top = await page.evaluate(() => document.querySelector('#messages').scrollTop);
  assert.equal(await page.locator('#new-pill').isVisible(), false);
  mia.send('tech', 'fresh one');
  await waitText(page, '#messages .msg[data-seq] .bubble .text', 'fresh one');
  await page.locator('#new-pill').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => document.querySelector('#messages').scrollTop), top, 'the view stayed where the reader is');
  await page.locator('#new-pill').click();
  await page.locator('#new-pill').waitFor({ state: 'hidden' });
  await page.waitForFunction(() => { const b = document.querySelector('#messages'); return b.scrollHeight - b.scrollTop - b.clientHeight < 48; });
  // At the bottom, new messages scroll into view by themselves.
  mia.send('tech', 'and another');
  await waitText(page, '#messages .msg[data-seq] .bubble .text', 'and another');
  await page.waitForFunction(() => { const b = document.querySelector('#messages'); return b.scrollHeight - b.scrollTop - b.clientHeight < 48; });
  assert.equal(await page.locator('#new-pill').isVisible(), false);
  noErrors(page);
  mia.close();
  await context.close();
});

test('a room created by a Chinese name; the browser going offline shows Offline, then recovers', async () => {
  const gateway = await startGateway({ label: 'e2e-offline' });
  const context = await newContext(DESKTOP, { locale: 'zh-CN' });
  const page = await openChat(context, gateway.url, '小红');
  await waitText(page, 'nav h2', '推荐房间');
  await page.locator('#join-input').fill('读书会');
  await page.locator('#join-input').press('Enter');
  await waitText(page, '#chat-name', '读书会');
  await waitText(page, '#messages .sys', '欢迎 小红 加入 读书会');
  await send(page, '大家好');
  await waitText(page, '#messages .msg.own[data-seq] .bubble .text', '大家好');
  const rooms = await (await fetch(`${gateway.url}/api/rooms`)).json();
  const created = rooms.rooms.find((r) => r.roomName === '读书会');
  assert.ok(created && /^x-[0-9a-f]+$/.test(created.roomId), JSON.stringify(rooms));

  await context.setOffline(true);
  await waitStatus(page, 'offline');
  await waitText(page, '#status-text', '离线');
  await send(page, '离线时写的');
  await page.locator('#messages .msg.pending').waitFor();
  await context.setOffline(false);
  await waitStatus(page, 'connected');
  await waitText(page, '#messages .msg.own[data-seq] .bubble .text', '离线时写的');
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg.pending').length === 0);
  noErrors(page);
  await context.close();
});

test('screenshots: phone and desktop, English and Chinese', async () => {
  const gateway = await startGateway({ label: 'e2e-shots' });
  const ivan = await nodeUser(gateway, 'ivan');
  ivan.join('lobby', { roomName: 'Lobby' });
  ivan.connect();
  await ivan.join('lobby');
  const lines = [
    'Morning! Anyone tried the new build?',
    'Yes — reconnects are instant now 🎉',
    'The cluster test killed a node and nobody noticed.',
  ];
  for (const text of lines) ivan.send('lobby', text);
  await waitFor(() => ivan.got.length === lines.length, { what: 'seed messages' });

  const desk = await newContext(DESKTOP);
  const pd = await openChat(desk, gateway.url, 'Judy');
  await waitText(pd, '#suggested-list .card[data-room="lobby"]', '1 online');
  await pd.screenshot({ path: path.join(ARTIFACTS, 'desktop-start.png') });
  await enterRoom(pd, 'lobby');
  await waitText(pd, '#messages .msg[data-seq] .bubble .text', lines[2]);
  await send(pd, 'Nice. Loading history on scroll works too.');
  await pd.waitForFunction(() => document.querySelectorAll('#messages .msg.pending').length === 0);
  ivan.send('lobby', 'See you at standup');
  await waitText(pd, '#messages .msg[data-seq] .bubble .text', 'See you at standup');
  // A second room with unread messages, for the badge.
  const games = await nodeUser(gateway, 'kate');
  games.join('games', { roomName: 'Games' });
  games.connect();
  await games.join('games');
  await pd.locator('#suggested-list .card[data-room="games"]').click();
  await pd.waitForFunction(() => window.chatApp.client.room('games') && window.chatApp.client.room('games').joined);
  await pd.locator('#room-list .card[data-room="lobby"]').click();
  games.send('games', 'gg everyone');
  await waitText(pd, '#room-list .card[data-room="games"] .badge', '1');
  await pd.locator('#members-toggle').click();
  await waitText(pd, '#member-list', 'Ivan');
  await pd.screenshot({ path: path.join(ARTIFACTS, 'desktop.png') });

  const phone = await newContext(PHONE, { isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const pp = await openChat(phone, gateway.url, 'Leo');
  await pp.screenshot({ path: path.join(ARTIFACTS, 'phone-rooms.png') });
  await enterRoom(pp, 'lobby');
  await waitText(pp, '#messages .msg[data-seq] .bubble .text', 'See you at standup');
  await send(pp, 'On my phone 📱');
  await pp.waitForFunction(() => document.querySelectorAll('#messages .msg.pending').length === 0);
  await pp.screenshot({ path: path.join(ARTIFACTS, 'phone-chat.png') });
  await pp.locator('#back').click();
  await pp.locator('#room-list').waitFor({ state: 'visible' });

  const zh = await newContext(PHONE, { isMobile: true, hasTouch: true, deviceScaleFactor: 2, locale: 'zh-CN' });
  const pz = await zh.newPage();
  await pz.goto(gateway.url + '/');
  await waitText(pz, '#enter', '开始聊天');
  await pz.locator('#enter').click();
  await waitText(pz, '#login-error', '请输入昵称');
  await pz.screenshot({ path: path.join(ARTIFACTS, 'phone-login-zh.png') });
  await pz.locator('#nickname').fill('小明');
  await pz.locator('#nickname').press('Enter');
  await enterRoom(pz, 'lobby');
  await waitText(pz, '#online-count', '人在线');
  await pz.screenshot({ path: path.join(ARTIFACTS, 'phone-chat-zh.png') });
  // Switchable: the same page in English.
  await pz.locator('#back').click();
  await pz.locator('.topbar .lang-toggle').click();
  await waitText(pz, '#room-list .card', 'Lobby');
  await waitText(pz, 'nav h2', 'Rooms');

  for (const file of ['desktop.png', 'phone-rooms.png', 'phone-chat.png', 'phone-login-zh.png', 'phone-chat-zh.png']) {
    assert.ok(fs.statSync(path.join(ARTIFACTS, file)).size > 5000, `${file} written`);
  }
  noErrors(pd);
  noErrors(pp);
  ivan.close();
  games.close();
  await desk.close();
  await phone.close();
  await zh.close();
});
