// permessage-deflate with a standard client: Node's `ws` negotiates it (as browsers do), chats
// through it and receives correct frames; a client without it still gets plain frames; a small
// compressed frame that inflates past limits.max_frame_bytes closes with 1009 and the gateway's
// memory stays flat. Nothing here depends on machine speed: sizes are compared, not times.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { startGateway, stopAll, waitFor } from './harness.mjs';

let gw;
before(async () => {
  // Compression is on by default (config/default.toml); nothing to set.
  gw = await startGateway({ label: 'deflate' });
});
after(() => stopAll());

let n = 0;
const uid = (p) => `${p}-${process.pid}-${++n}`;

/** A v1 client; `deflate`: offer permessage-deflate (and compress our own sends too). */
async function connect(deflate) {
  const ws = new WebSocket(gw.wsUrl, {
    perMessageDeflate: deflate ? { threshold: 0 } : false,
  });
  const got = [];
  ws.on('message', (data, isBinary) => got.push(isBinary ? { binary: true } : JSON.parse(String(data))));
  const closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  return { ws, got, closed, send: (f) => ws.send(JSON.stringify(f)) };
}

function rssKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

test('a deflate client and a plain one chat in one room; only the first gets compressed bytes', async () => {
  const room = uid('room');
  const ann = await connect(true);
  const bob = await connect(false);
  assert.match(ann.ws.extensions, /permessage-deflate/, 'the server accepted the offer');
  assert.equal(bob.ws.extensions, '', 'no extension for a client that did not offer it');
  ann.send({ event: 'login', roomId: room, userId: uid('ann'), userName: 'Ann' });
  bob.send({ event: 'login', roomId: room, userId: uid('bob'), userName: 'Bob' });
  await waitFor(() => ann.got.some((f) => f.event === 'joined'), { what: 'ann joined' });
  await waitFor(() => bob.got.some((f) => f.event === 'joined'), { what: 'bob joined' });

  const before = { ann: ann.ws._socket.bytesRead, bob: bob.ws._socket.bytesRead };
  // Chat-like text, well over the threshold, posted compressed by ann and plain by bob.
  const long = 'the quick brown fox jumps over the lazy dog; '.repeat(20);
  ann.send({ event: 'message', roomId: room, content: `${long}1`, clientMsgId: 'a1' });
  bob.send({ event: 'message', roomId: room, content: `${long}2`, clientMsgId: 'b1' });
  ann.send({ event: 'message', roomId: room, content: 'hi', clientMsgId: 'a2' });
  for (const c of [ann, bob]) {
    await waitFor(() => c.got.filter((f) => f.event === 'message').length === 3, { what: 'three messages each' });
  }
  for (const c of [ann, bob]) {
    const contents = c.got.filter((f) => f.event === 'message').map((f) => f.content).sort();
    assert.deepEqual(contents, [`${long}1`, `${long}2`, 'hi'].sort());
    assert.ok(!c.got.some((f) => f.binary || f.event === 'error'), JSON.stringify(c.got));
  }
  await waitFor(() => ann.got.filter((f) => f.event === 'sent').length === 2, { what: 'ann sent twice' });
  const annBytes = ann.ws._socket.bytesRead - before.ann;
  const bobBytes = bob.ws._socket.bytesRead - before.bob;
  // The same frames (plus ann's two receipts): compressed they take well under half.
  assert.ok(annBytes * 2 < bobBytes, `compressed ${annBytes} B vs plain ${bobBytes} B`);

  const metrics = await (await fetch(`${gw.url}/metrics`)).text();
  const compressed = Number(/chat_frames_compressed_total (\d+)/.exec(metrics)?.[1] ?? 0);
  assert.ok(compressed >= 2, metrics);
  ann.ws.close();
  bob.ws.close();
});

test('a compression bomb closes with 1009 and the gateway stays flat', async () => {
  const room = uid('room');
  // Warm up: the first connections and frames allocate what the process keeps anyway.
  const warm = await connect(true);
  warm.send({ event: 'login', roomId: room, userId: uid('w'), userName: 'W' });
  await waitFor(() => warm.got.some((f) => f.event === 'joined'), { what: 'warm joined' });
  const start = rssKiB(gw.pid);
  // ~8 MiB of inflated text in a frame of a few KiB: 64 KiB is the limit.
  const bomb = JSON.stringify({ event: 'message', roomId: room, content: 'a'.repeat(8 << 20) });
  for (let i = 0; i < 20; i++) {
    const c = await connect(true);
    c.ws.send(bomb);
    assert.equal(await c.closed, 1009);
  }
  const grown = rssKiB(gw.pid) - start;
  // 20 bombs of 8 MiB each: inflating any of them whole would show here as 8 MiB or more.
  assert.ok(grown < 8 * 1024, `RSS grew by ${grown} KiB`);
  // The gateway still serves the warm connection.
  warm.send({ event: 'message', roomId: room, content: 'still here', clientMsgId: 'w1' });
  await waitFor(() => warm.got.some((f) => f.event === 'message' && f.content === 'still here'), { what: 'warm still served' });
  warm.ws.close();
});

test('a message sent in compressed fragments, with a ping between them, is posted whole', async () => {
  const room = uid('room');
  const ann = await connect(true);
  const bob = await connect(false);
  ann.send({ event: 'login', roomId: room, userId: uid('ann'), userName: 'Ann' });
  bob.send({ event: 'login', roomId: room, userId: uid('bob'), userName: 'Bob' });
  await waitFor(() => ann.got.some((f) => f.event === 'joined'), { what: 'ann joined' });
  await waitFor(() => bob.got.some((f) => f.event === 'joined'), { what: 'bob joined' });

  const content = 'fragments of one compressed message: ünïcödé 你好 🦀🎉 '.repeat(30);
  const bytes = Buffer.from(JSON.stringify({ event: 'message', roomId: room, content, clientMsgId: 'frag1' }));
  const third = Math.floor(bytes.length / 3);
  const before = ann.ws._socket.bytesWritten;
  // `ws` sets RSV1 on the first fragment only and compresses each with a sync flush (RFC 7692).
  ann.ws.send(bytes.subarray(0, third), { binary: false, fin: false, compress: true });
  ann.ws.ping();
  ann.ws.send(bytes.subarray(third, 2 * third), { binary: false, fin: false, compress: true });
  ann.ws.send(bytes.subarray(2 * third), { binary: false, fin: true, compress: true });
  for (const c of [ann, bob]) {
    await waitFor(() => c.got.some((f) => f.event === 'message' && f.clientMsgId === 'frag1'), { what: 'the message' });
    assert.equal(c.got.find((f) => f.event === 'message').content, content);
  }
  assert.ok(!ann.got.some((f) => f.event === 'error'), JSON.stringify(ann.got));
  const written = ann.ws._socket.bytesWritten - before;
  assert.ok(written * 2 < bytes.length, `the fragments went compressed: ${written} B for ${bytes.length} B`);
  ann.ws.close();
  bob.ws.close();
});
