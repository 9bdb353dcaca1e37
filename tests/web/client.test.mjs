// Unit tests of /chat-client.js in Node: the module the gateway serves (fetched from a real
// gateway process), driven over real WebSockets (the `ws` package), plus a few tests with a
// scripted fake socket for timing logic (heartbeat, backoff, retries, ack batching) that a real
// server cannot be made to misbehave for.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';

import { RUN_DIR, startGateway, startRedis, stopAll, waitFor } from './harness.mjs';

let gateway;
let lib;

before(async () => {
  gateway = await startGateway({ label: 'client-gw' });
  // Test exactly what browsers get: the module as served, not the source file.
  const response = await fetch(`${gateway.url}/chat-client.js`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /javascript/);
  const file = path.join(RUN_DIR, 'chat-client.mjs');
  fs.writeFileSync(file, await response.text());
  lib = await import(file);
});

after(() => stopAll());

let n = 0;
function uid(prefix) {
  n += 1;
  return `${prefix}${n}${Math.floor(Math.random() * 1e6)}`;
}

/** A client against `url`, recording every event. */
function makeClient(userId, { url = gateway.wsUrl, storage, ...options } = {}) {
  const client = new lib.ChatClient({
    url,
    userId,
    userName: userId.toUpperCase(),
    WebSocket,
    storage: storage || new lib.MemoryStorage(),
    ackDelayMs: 50,
    ...options,
  });
  client.log = [];
  for (const type of ['status', 'joined', 'message', 'presence', 'pending', 'sent', 'failed', 'epoch', 'error', 'left']) {
    client.on(type, (detail) => client.log.push({ type, ...detail }));
  }
  client.messages = (roomId) => client.log.filter((e) => e.type === 'message' && e.roomId === roomId).map((e) => e.message);
  return client;
}

function contents(messages) {
  return messages.map((m) => m.content);
}

async function joined(client, roomId) {
  return waitFor(() => client.log.find((e) => e.type === 'joined' && e.roomId === roomId), { what: `${client.userId} joined ${roomId}` });
}

describe('against a real gateway', () => {
  test('join, post, receive; pending then sent; presence of another user', async () => {
    const room = uid('room');
    const ann = makeClient(uid('ann'));
    ann.join(room, { roomName: 'Room One' });
    ann.connect();
    const j = await joined(ann, room);
    assert.equal(j.roomName, 'Room One');
    assert.equal(j.num, 1);
    assert.ok(ann.log.some((e) => e.type === 'status' && e.status === 'connected'));

    const bob = makeClient(uid('bob'));
    await Promise.all([bob.join(room), bob.connect()]);
    await waitFor(() => ann.log.find((e) => e.type === 'presence' && e.userId === bob.userId && e.kind === 'online'), { what: 'bob online' });
    assert.equal(ann.room(room).num, 2);

    const post = ann.send(room, 'hello bob');
    assert.equal(post.state, 'pending');
    assert.ok(post.clientMsgId);
    assert.ok(ann.log.some((e) => e.type === 'pending' && e.post.clientMsgId === post.clientMsgId));
    const sent = await waitFor(() => ann.log.find((e) => e.type === 'sent' && e.clientMsgId === post.clientMsgId), { what: 'sent' });
    assert.equal(sent.seq, 1);
    await waitFor(() => bob.messages(room).length === 1, { what: 'bob got it' });
    const got = bob.messages(room)[0];
    assert.equal(got.content, 'hello bob');
    assert.equal(got.userId, ann.userId);
    assert.equal(ann.messages(room)[0].clientMsgId, post.clientMsgId);
    assert.equal(ann.pendingPosts().length, 0);

    bob.close();
    await waitFor(() => ann.log.find((e) => e.type === 'presence' && e.userId === bob.userId && e.kind === 'offline'), { what: 'bob offline' });
    assert.equal(ann.room(room).num, 1);
    ann.close();
  });

  test('resume: a client that comes back with the same storage gets exactly what it missed', async () => {
    const room = uid('room');
    const storage = new lib.MemoryStorage();
    const userId = uid('cat');
    const cat = makeClient(userId, { storage });
    const dan = makeClient(uid('dan'));
    cat.join(room);
    dan.join(room);
    cat.connect();
    dan.connect();
    await joined(cat, room);
    await joined(dan, room);
    for (const text of ['one', 'two']) dan.send(room, text);
    await waitFor(() => cat.messages(room).length === 2, { what: 'cat has two' });
    cat.close();
    assert.deepEqual(cat.cursor(room).seq, 2, 'the cursor is stored');
    assert.ok(cat.cursor(room).epoch);

    for (const text of ['three', 'four', 'five']) dan.send(room, text);
    await waitFor(() => dan.messages(room).length === 5, { what: 'dan sees five' });

    const back = makeClient(userId, { storage });
    back.join(room);
    back.connect();
    const j = await joined(back, room);
    assert.equal(j.replayed, 3);
    assert.equal(j.resumed, true);
    await waitFor(() => back.messages(room).length === 3, { what: 'three replayed' });
    assert.deepEqual(contents(back.messages(room)), ['three', 'four', 'five']);
    assert.ok(back.messages(room).every((m) => m.replay));
    dan.send(room, 'six');
    await waitFor(() => back.messages(room).length === 4, { what: 'live after replay' });
    assert.deepEqual(back.messages(room).map((m) => m.seq), [3, 4, 5, 6], 'no gap, no duplicate');
    back.close();
    dan.close();
  });

  test('acks reach the server: a fresh device (no storage) replays only after the acked seq', async () => {
    const room = uid('room');
    const userId = uid('eve');
    const eve = makeClient(userId);
    const fay = makeClient(uid('fay'));
    eve.join(room);
    fay.join(room);
    eve.connect();
    fay.connect();
    await joined(eve, room);
    await joined(fay, room);
    for (let i = 1; i <= 4; i++) fay.send(room, `m${i}`);
    await waitFor(() => eve.messages(room).length === 4, { what: 'eve has four' });
    // Batched acks go out within ackDelayMs; close() flushes them too.
    eve.close();
    await waitFor(async () => {
      // The server processed the ack and the disconnect once eve is offline for fay.
      return fay.log.find((e) => e.type === 'presence' && e.userId === userId && e.kind === 'offline');
    }, { what: 'eve offline' });
    fay.send(room, 'm5');
    fay.send(room, 'm6');
    await waitFor(() => fay.messages(room).length === 6, { what: 'fay sees six' });
    const phone = makeClient(userId); // new storage: no `since`, the server's read cursor decides
    phone.join(room);
    phone.connect();
    const j = await joined(phone, room);
    assert.equal(j.replayed, 2);
    await waitFor(() => phone.messages(room).length === 2, { what: 'two replayed' });
    assert.deepEqual(contents(phone.messages(room)), ['m5', 'm6']);
    phone.close();
    fay.close();
  });

  test('history pages back; direct messages reach both sides once', async () => {
    const room = uid('room');
    const gus = makeClient(uid('gus'));
    const hal = makeClient(uid('hal'));
    gus.join(room);
    hal.join(room);
    gus.connect();
    hal.connect();
    await joined(gus, room);
    await joined(hal, room);
    for (let i = 1; i <= 5; i++) gus.send(room, `h${i}`);
    await waitFor(() => hal.messages(room).length === 5, { what: 'five' });
    const page = await hal.history(room, { before: 5, limit: 3 });
    assert.deepEqual(page.messages.map((m) => m.seq), [2, 3, 4]);

    const dm = gus.sendDirect(hal.userId, 'psst');
    const got = await waitFor(() => hal.log.find((e) => e.type === 'message' && e.direct), { what: 'dm' });
    assert.equal(got.peer, gus.userId);
    assert.equal(got.message.content, 'psst');
    const mine = await waitFor(() => gus.log.find((e) => e.type === 'message' && e.direct), { what: 'own dm copy' });
    assert.equal(mine.peer, hal.userId);
    assert.ok(mine.own);
    await waitFor(() => gus.log.find((e) => e.type === 'sent' && e.clientMsgId === dm.clientMsgId), { what: 'dm sent' });
    assert.equal(hal.log.filter((e) => e.type === 'message' && e.direct).length, 1);
    gus.close();
    hal.close();
  });

  test('a gateway restart: the client reconnects by itself, resumes, and sends what was typed meanwhile', async () => {
    const redis = await startRedis();
    const env = { CHAT__REDIS__URL: redis.url, CHAT__PRESENCE__TTL_SECS: '4' };
    const gw1 = await startGateway({ env, label: 'restart-gw1' });
    const gw2 = await startGateway({ env, label: 'restart-gw2' });
    const room = uid('room');
    const ivy = makeClient(uid('ivy'), { url: gw1.wsUrl, backoffBaseMs: 200, backoffMaxMs: 1000 });
    const jon = makeClient(uid('jon'), { url: gw2.wsUrl });
    ivy.join(room);
    jon.join(room);
    ivy.connect();
    jon.connect();
    await joined(ivy, room);
    await joined(jon, room);
    jon.send(room, 'before');
    await waitFor(() => ivy.messages(room).length === 1, { what: 'before' });

    gw1.kill9();
    await waitFor(() => ivy.status === 'reconnecting', { what: 'ivy notices' });
    const queued = ivy.send(room, 'typed while down');
    for (const text of ['while down 1', 'while down 2']) jon.send(room, text);
    await waitFor(() => jon.messages(room).length === 3, { what: 'jon posted while ivy is down' });
    await gw1.restart();
    await waitFor(() => ivy.log.filter((e) => e.type === 'joined' && e.roomId === room).length === 2, { what: 'ivy rejoined' });
    await waitFor(() => ivy.log.find((e) => e.type === 'sent' && e.clientMsgId === queued.clientMsgId), { what: 'queued post sent' });
    await waitFor(() => jon.messages(room).some((m) => m.content === 'typed while down'), { what: 'jon got it' });
    await waitFor(() => ivy.messages(room).length === 4, { what: 'ivy has all four' });
    assert.deepEqual(ivy.messages(room).map((m) => m.seq), [1, 2, 3, 4]);
    assert.deepEqual(contents(ivy.messages(room)).slice(0, 3), ['before', 'while down 1', 'while down 2']);
    assert.equal(jon.messages(room).filter((m) => m.content === 'typed while down').length, 1, 'posted once');
    ivy.close();
    jon.close();
  });
});

// ------------------------------------------------------------------------------------------------
// A scripted socket, for timing behaviour
// ------------------------------------------------------------------------------------------------

function fakeSocketClass() {
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      FakeSocket.instances.push(this);
      if (FakeSocket.onCreate) FakeSocket.onCreate(this);
    }
    send(data) { this.sent.push(JSON.parse(data)); if (FakeSocket.onSend) FakeSocket.onSend(this, JSON.parse(data)); }
    close(code) { if (this.readyState === 3) return; this.readyState = 3; setTimeout(() => this.onclose && this.onclose({ code: code || 1005 }), 0); }
    open() { this.readyState = 1; this.onopen && this.onopen(); }
    deliver(frame) { this.onmessage && this.onmessage({ data: JSON.stringify(frame) }); }
    drop(code = 1006) { this.readyState = 3; this.onclose && this.onclose({ code }); }
  }
  FakeSocket.instances = [];
  return FakeSocket;
}

function fakeClient(FakeSocket, options = {}) {
  const client = new lib.ChatClient({ url: 'ws://fake/ws', userId: 'u1', userName: 'U1', WebSocket: FakeSocket, storage: new lib.MemoryStorage(), ...options });
  client.log = [];
  for (const type of ['status', 'joined', 'message', 'sent', 'failed', 'epoch']) client.on(type, (d) => client.log.push({ type, ...d }));
  return client;
}

const joinedFrame = (seq = 0, epoch = 'e1') => ({ event: 'joined', roomId: 'r', roomName: 'r', seq, epoch, num: 1, total: 1, replayed: 0 });
const msg = (seq, epoch = 'e1', extra = {}) => ({ event: 'message', roomId: 'r', seq, epoch, userId: 'u2', userName: 'U2', content: `m${seq}`, ts: 1, ...extra });

describe('with a scripted socket', () => {
  test('dedup by (room, seq); a new epoch is adopted, not mistaken for duplicates', async () => {
    const S = fakeSocketClass();
    const c = fakeClient(S);
    c.join('r');
    c.connect();
    await waitFor(() => S.instances.length === 1 && S.instances[0].onopen);
    const s = S.instances[0];
    s.open();
    s.deliver(joinedFrame(0));
    for (const seq of [1, 2, 2, 3, 1, 3]) s.deliver(msg(seq));
    assert.deepEqual(c.log.filter((e) => e.type === 'message').map((e) => e.message.seq), [1, 2, 3]);
    s.deliver(msg(1, 'e2'));
    s.deliver(msg(2, 'e2'));
    s.deliver(msg(2, 'e2'));
    assert.deepEqual(c.log.filter((e) => e.type === 'message').map((e) => `${e.message.epoch}:${e.message.seq}`), ['e1:1', 'e1:2', 'e1:3', 'e2:1', 'e2:2']);
    assert.equal(c.log.filter((e) => e.type === 'epoch').length, 1);
    assert.deepEqual(c.cursor('r'), { seq: 2, epoch: 'e2' });
    c.close();
  });

  test('resume sends since + epoch; acks are cumulative and batched', async () => {
    const S = fakeSocketClass();
    const c = fakeClient(S, { ackDelayMs: 100 });
    c.join('r');
    c.connect();
    await waitFor(() => S.instances[0] && S.instances[0].onopen);
    let s = S.instances[0];
    s.open();
    assert.deepEqual(s.sent[0], { event: 'login', roomId: 'r', userId: 'u1', userName: 'U1' });
    s.deliver(joinedFrame(0));
    for (let seq = 1; seq <= 20; seq++) s.deliver(msg(seq));
    await waitFor(() => s.sent.some((f) => f.event === 'ack'), { what: 'an ack' });
    const acks = s.sent.filter((f) => f.event === 'ack');
    assert.deepEqual(acks, [{ event: 'ack', roomId: 'r', seq: 20, epoch: 'e1' }], 'one cumulative ack for the burst');
    s.drop(1012);
    await waitFor(() => S.instances.length === 2 && S.instances[1].onopen, { what: 'reconnect' });
    s = S.instances[1];
    s.open();
    assert.deepEqual(s.sent[0], { event: 'login', roomId: 'r', userId: 'u1', userName: 'U1', since: 20, epoch: 'e1' });
    c.close();
  });

  test('a resend from the server (ack not seen in time) flushes the pending acks at once', async () => {
    // A background tab's timers may run a minute late: the batched ack must not wait for them.
    const S = fakeSocketClass();
    const c = fakeClient(S, { ackDelayMs: 60000 });
    c.join('r');
    c.connect();
    await waitFor(() => S.instances[0] && S.instances[0].onopen);
    const s = S.instances[0];
    s.open();
    s.deliver(joinedFrame(0));
    for (let seq = 1; seq <= 3; seq++) s.deliver(msg(seq));
    assert.equal(s.sent.filter((f) => f.event === 'ack').length, 0, 'batched, not yet sent');
    s.deliver(msg(2, 'e1', { resend: true }));
    assert.deepEqual(s.sent.filter((f) => f.event === 'ack'), [{ event: 'ack', roomId: 'r', seq: 3, epoch: 'e1' }]);
    assert.deepEqual(c.log.filter((e) => e.type === 'message').map((e) => e.message.seq), [1, 2, 3], 'the resend is not shown twice');
    c.close();
  });

  test('unanswered posts are resent with the same clientMsgId, then reported failed; retry() resends', async () => {
    const S = fakeSocketClass();
    const c = fakeClient(S, { postTimeoutMs: 300, maxPostAttempts: 3 });
    c.join('r');
    c.connect();
    await waitFor(() => S.instances[0] && S.instances[0].onopen);
    const s = S.instances[0];
    s.open();
    s.deliver(joinedFrame(0));
    const post = c.send('r', 'hello');
    const posts = () => s.sent.filter((f) => f.event === 'message');
    await waitFor(() => posts().length === 3, { what: 'three attempts', timeout: 15000 });
    assert.ok(posts().every((f) => f.clientMsgId === post.clientMsgId && f.content === 'hello'));
    const failed = await waitFor(() => c.log.find((e) => e.type === 'failed'), { what: 'failed', timeout: 15000 });
    assert.equal(failed.post.clientMsgId, post.clientMsgId);
    assert.equal(posts().length, 3);
    assert.ok(c.retry(post.clientMsgId));
    assert.equal(posts().length, 4);
    s.deliver({ event: 'sent', roomId: 'r', clientMsgId: post.clientMsgId, seq: 1, epoch: 'e1', ts: 1 });
    assert.ok(c.log.find((e) => e.type === 'sent' && e.clientMsgId === post.clientMsgId));
    assert.equal(c.pendingPosts().length, 0);
    c.close();
  });

  test('leaving while disconnected still reaches the server after the reconnect', async () => {
    const S = fakeSocketClass();
    const c = fakeClient(S, { backoffBaseMs: 10, backoffMaxMs: 20 });
    c.join('r');
    c.connect();
    await waitFor(() => S.instances[0] && S.instances[0].onopen);
    S.instances[0].open();
    S.instances[0].deliver(joinedFrame(0));
    S.instances[0].drop(1006);
    c.leave('r');
    assert.equal(c.room('r'), null);
    await waitFor(() => S.instances.length === 2 && S.instances[1].onopen, { what: 'reconnect' });
    const s = S.instances[1];
    s.open();
    assert.deepEqual(s.sent.map((f) => f.event), ['login'], 'a login first: logout needs a joined room');
    s.deliver(joinedFrame(0));
    assert.deepEqual(s.sent.map((f) => f.event), ['login', 'logout']);
    assert.equal(c.log.filter((e) => e.type === 'joined').length, 1, 'that join is not reported');
    c.close();
  });

  test('posts not yet confirmed survive a reload and are resent with the same clientMsgId', async () => {
    const storage = new lib.MemoryStorage();
    const S = fakeSocketClass();
    const first = fakeClient(S, { storage });
    first.join('r');
    first.connect(); // the socket never opens: everything stays pending
    const post = first.send('r', 'typed before the reload');
    first.close();

    const S2 = fakeSocketClass();
    const second = fakeClient(S2, { storage });
    const restored = [];
    second.on('pending', ({ post: p }) => restored.push(p));
    second.join('r');
    second.connect();
    assert.deepEqual(restored.map((p) => [p.clientMsgId, p.content]), [[post.clientMsgId, 'typed before the reload']]);
    await waitFor(() => S2.instances[0] && S2.instances[0].onopen);
    const s = S2.instances[0];
    s.open();
    s.deliver(joinedFrame(0));
    const resent = s.sent.filter((f) => f.event === 'message');
    assert.deepEqual(resent, [{ event: 'message', roomId: 'r', content: 'typed before the reload', clientMsgId: post.clientMsgId }]);
    s.deliver({ event: 'sent', roomId: 'r', clientMsgId: post.clientMsgId, seq: 1, epoch: 'e1', ts: 1 });
    assert.equal(storage.getItem('chat:v1:u1:outbox'), null, 'the outbox is empty once confirmed');
    second.close();
  });

  test('heartbeat: a connection that stops answering is replaced', async () => {
    const S = fakeSocketClass();
    const c = fakeClient(S, { heartbeatIntervalMs: 300, heartbeatTimeoutMs: 300, backoffBaseMs: 10, backoffMaxMs: 20 });
    c.connect();
    await waitFor(() => S.instances[0] && S.instances[0].onopen);
    const s = S.instances[0];
    s.open();
    await waitFor(() => s.sent.some((f) => f.event === 'heartBeat' && f.content === 'ping'), { what: 'ping', timeout: 10000 });
    // No pong: within the timeout the client gives up on this socket and opens a new one.
    await waitFor(() => S.instances.length === 2, { what: 'a new socket', timeout: 10000 });
    assert.equal(s.readyState, 3);
    c.close();
  });

  test('reconnect backoff is exponential with full jitter', async () => {
    const S = fakeSocketClass();
    S.onCreate = (s) => setTimeout(() => s.drop(1006), 0); // every attempt fails at once
    const c = fakeClient(S, { backoffBaseMs: 8, backoffMaxMs: 64, random: () => 0.999 });
    c.connect();
    await waitFor(() => c.log.filter((e) => e.type === 'status' && e.status === 'reconnecting' && e.delayMs != null).length >= 7, { what: 'seven retries', timeout: 15000 });
    const delays = c.log.filter((e) => e.type === 'status' && e.delayMs != null).map((e) => e.delayMs).slice(0, 7);
    assert.deepEqual(delays, [8, 16, 32, 64, 64, 64, 64].map((d) => Math.round(d * 0.999)));
    c.close();

    const S2 = fakeSocketClass();
    const jitter = [0.5, 0.25];
    const c2 = fakeClient(S2, { backoffBaseMs: 1000, backoffMaxMs: 60000, random: () => jitter.shift() ?? 0 });
    c2.connect();
    await waitFor(() => S2.instances[0] && S2.instances[0].onopen);
    S2.instances[0].drop(1006);
    const first = c2.log.find((e) => e.delayMs != null);
    assert.equal(first.delayMs, 500, 'uniform in [0, base]: 0.5 of 1000');
    c2.close();
  });
});
