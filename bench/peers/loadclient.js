// The Node load client of bench/compare.sh: chat-loadgen's fan-out measurement for servers that
// speak Socket.IO (`--proto sio`, sio-server.js), the plain-ws relay (`--proto ws`, ws-server.js)
// or our own protocol v1 (`--proto chat`, to cross-check chat-loadgen against the same client).
//
// Same logic as chat-loadgen --mode fanout --json: client i is member floor(i / rooms) of room
// i % rooms and goes to URL member % urls (a room's poster and subscribers land on different
// nodes); the first --posters clients post at a total of --rate/s for --warmup + --secs; only
// posts sent in the last --secs and their deliveries are counted. Each post carries its send time
// (microseconds) as its content, so every delivery's latency is measured; the peers do not
// number messages, so each post also carries its poster's counter `n` and receivers check
// continuity per (room, poster) (`gaps`); `lost` = expected - received. Server and Redis CPU come
// from /proc over the window, the client's own from process.cpuUsage(). Prints one JSON object.
//
//   node loadclient.js --proto sio --url ws://127.0.0.1:3001,ws://127.0.0.1:3002 \
//     --clients 1100 --rooms 100 --posters 100 --rate 2000 --secs 10 --warmup 3 \
//     --pid 123 --pid 124 --redis-pid 122 --redis-port 6390
//
// Loopback targets only; the run is bounded by --secs (at most 600) and --clients.
'use strict';

const fs = require('node:fs');
const net = require('node:net');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

function parseArgs(argv) {
  const a = {
    proto: 'ws', url: [], clients: 100, rooms: 1, posters: 10, rate: 100, secs: 10, warmup: 0,
    pid: [], redisPid: null, redisPort: null, roomPrefix: 'bench', progress: 5,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key} needs a value`);
    switch (key) {
      case '--proto': a.proto = value; break;
      case '--url': a.url.push(...value.split(',')); break;
      case '--clients': a.clients = Number(value); break;
      case '--rooms': a.rooms = Number(value); break;
      case '--posters': a.posters = Number(value); break;
      case '--rate': a.rate = Number(value); break;
      case '--secs': a.secs = Math.min(Number(value), 600); break;
      case '--warmup': a.warmup = Math.min(Number(value), 600); break;
      case '--pid': a.pid.push(...value.split(',').map(Number)); break;
      case '--redis-pid': a.redisPid = Number(value); break;
      case '--redis-port': a.redisPort = Number(value); break;
      case '--room-prefix': a.roomPrefix = value; break;
      case '--progress': a.progress = Number(value); break;
      default: throw new Error(`unknown option ${key}`);
    }
  }
  if (!['sio', 'ws', 'chat'].includes(a.proto)) throw new Error(`--proto: sio, ws or chat`);
  if (a.url.length === 0) throw new Error('--url is required');
  for (const url of a.url) {
    const host = new URL(url).hostname;
    if (!(host === 'localhost' || host.startsWith('127.') || host === '[::1]')) {
      throw new Error(`refusing to load ${url}: only loopback targets`);
    }
  }
  return a;
}

// Wall-clock microseconds with sub-millisecond resolution (Date.now() has only milliseconds).
const nowMicros = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** utime + stime of a process in clock ticks (USER_HZ = 100), or null. */
function cpuTicks(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces; the fields after its closing parenthesis are plain.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return null;
  }
}

function snapshot(args) {
  const servers = args.pid.map(cpuTicks);
  const own = process.cpuUsage();
  return {
    servers: servers.length && servers.every((t) => t !== null)
      ? servers.reduce((x, y) => x + y, 0) : null,
    redis: args.redisPid ? cpuTicks(args.redisPid) : null,
    ownMicros: own.user + own.system,
    at: performance.now(),
  };
}

/** One inline command to a local Redis; resolves to the reply's text (status line or bulk). */
function redisInline(port, command) {
  return new Promise((resolve, reject) => {
    const conn = net.connect(port, '127.0.0.1', () => conn.write(`${command}\r\n`));
    let reply = '';
    const timer = setTimeout(() => { conn.destroy(); reject(new Error('redis did not answer')); }, 5000);
    conn.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      const nl = reply.indexOf('\r\n');
      if (nl < 0) return;
      const head = reply.slice(0, nl);
      const body = reply.slice(nl + 2);
      const len = head.startsWith('$') ? Number(head.slice(1)) : null;
      if (len === null || Buffer.byteLength(body) >= len) {
        clearTimeout(timer);
        conn.end();
        resolve(len === null ? head : body);
      }
    });
    conn.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

function commandstats(text, sent) {
  const out = {};
  for (const line of text.split('\r\n')) {
    if (!line.startsWith('cmdstat_')) continue;
    const [name, fields] = line.slice(8).split(':');
    const get = (k) => Number((fields.split(',').find((f) => f.startsWith(`${k}=`)) || '=0').split('=')[1]);
    out[name] = { per_post: get('calls') / Math.max(sent, 1), usec_per_call: get('usec_per_call') };
  }
  return out;
}

/**
 * Connects one client, joins its room and resolves once it is in; `onMessage(key, content, n)`
 * gets every chat message (key: what continuity is checked per).
 */
function connect(proto, url, room, user, onMessage, onError) {
  return new Promise((resolve, reject) => {
    const fail = (e) => reject(new Error(`${url}: ${e && e.message ? e.message : e}`));
    const timer = setTimeout(() => fail('not joined in 30 s'), 30000);
    if (proto === 'sio') {
      // forceNew: one connection per client, as a browser tab has (no multiplexing).
      const s = io(url.replace(/^ws/, 'http'), { transports: ['websocket'], reconnection: false, forceNew: true });
      s.on('connect_error', fail);
      s.on('message', (m) => onMessage(`${m.room}|${m.user}`, m.content, m.n));
      s.on('connect', () => s.emit('join', { room, user }, () => {
        clearTimeout(timer);
        s.on('disconnect', (reason) => { if (reason !== 'io client disconnect') onError(); });
        resolve({
          post: (content, n) => s.emit('post', { room, content, n }),
          close: () => s.disconnect(),
        });
      }));
      return;
    }
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let joined = false;
    let settled = false;
    ws.on('error', (e) => (joined ? onError() : fail(e)));
    ws.on('close', () => { if (joined && !ws.closing) onError(); });
    ws.on('open', () => ws.send(JSON.stringify(proto === 'ws'
      ? { t: 'join', room, user }
      : { event: 'login', roomId: room, userId: user, userName: `user ${user}` })));
    ws.on('message', (data) => {
      const m = JSON.parse(data);
      if (proto === 'ws') {
        if (m.t === 'msg') onMessage(`${m.room}|${m.user}`, m.content, m.n);
        else if (m.t === 'joined') joined = true;
      } else if (m.event === 'message') {
        onMessage(m.roomId, m.content, m.seq);
      } else if (m.event === 'joined') {
        joined = true;
      } else if (m.event === 'error') {
        onError();
      }
      if (joined && !settled) {
        settled = true;
        clearTimeout(timer);
        resolve({
          post: (content, n) => ws.send(JSON.stringify(proto === 'ws'
            ? { t: 'post', room, content, n }
            : { event: 'message', roomId: room, content })),
          close: () => { ws.closing = true; ws.close(); },
        });
      }
    });
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const rooms = Math.max(args.rooms, 1);
  const totals = { sent: 0, expected: 0, received: 0, gaps: 0, errors: 0 };
  const latencies = [];
  let windowStartMicros = Infinity;
  // One per client: each receiver checks the continuity of what it got, as chat-loadgen's do.
  const receiver = () => {
    const last = new Map();
    return (key, content, n) => {
      const sentAt = Number(content);
      const counted = sentAt >= windowStartMicros;
      if (counted) {
        latencies.push(Math.max(nowMicros() - sentAt, 1));
        totals.received += 1;
      }
      // Continuity is tracked through the warm-up too, so the window's first message is checked.
      const prev = last.get(key);
      if (prev !== undefined && n !== prev + 1 && counted) totals.gaps += 1;
      last.set(key, n);
    };
  };
  const onError = () => { totals.errors += 1; };

  const started = performance.now();
  const clients = [];
  // Small concurrent batches: fast, without a SYN flood on the listener.
  for (let start = 0; start < args.clients; start += 100) {
    const batch = [];
    for (let i = start; i < Math.min(start + 100, args.clients); i++) {
      const member = Math.floor(i / rooms);
      const room = `${args.roomPrefix}-${i % rooms}`;
      const size = Math.floor(args.clients / rooms) + (i % rooms < args.clients % rooms ? 1 : 0);
      batch.push(connect(args.proto, args.url[member % args.url.length], room, `u${i}`, receiver(), onError)
        .then((c) => Object.assign(c, { size, n: 0 })));
    }
    clients.push(...(await Promise.all(batch)));
  }
  console.error(`${clients.length} clients joined ${rooms} rooms in ${((performance.now() - started) / 1000).toFixed(1)}s`);

  const t0 = performance.now();
  const windowStart = t0 + args.warmup * 1000;
  windowStartMicros = nowMicros() + args.warmup * 1e6;
  const stopAt = windowStart + args.secs * 1000;
  const drainUntil = stopAt + 3000;
  const posters = clients.slice(0, Math.max(1, Math.min(args.posters, clients.length)));

  let opened = null;
  setTimeout(async () => {
    if (args.redisPort) await redisInline(args.redisPort, 'CONFIG RESETSTAT').catch(() => {});
    opened = snapshot(args);
  }, windowStart - performance.now());
  const closing = new Promise((resolve) => setTimeout(async () => {
    const snap = snapshot(args);
    const stats = args.redisPort
      ? await redisInline(args.redisPort, 'INFO commandstats').catch(() => null) : null;
    resolve({ snap, stats });
  }, drainUntil - 200 - performance.now()));
  const progress = args.progress > 0 && setInterval(() => {
    const now = performance.now();
    const phase = now < windowStart ? 'warm-up' : now < stopAt ? 'window' : 'drain';
    console.error(`[${((now - t0) / 1000).toFixed(1).padStart(5)}s ${phase}] sent=${totals.sent} received=${totals.received}`);
  }, args.progress * 1000);

  // One pacer for all posters, round-robin: the total rate is exact. Posts the event loop was
  // too busy to make in time are skipped, not bunched (chat-loadgen's ticks skip the same way).
  let issued = 0;
  let next = 0;
  await new Promise((resolve) => {
    const pump = () => {
      const now = performance.now();
      if (now >= stopAt) return resolve();
      const due = Math.floor(((now - t0) * args.rate) / 1000) + 1;
      if (due - issued > Math.max(1, args.rate / 50)) issued = due - 1;
      while (issued < due) {
        const c = posters[next++ % posters.length];
        c.n += 1;
        // Counted by the post time it carries, exactly as its deliveries are.
        const at = nowMicros();
        c.post(String(at), c.n);
        issued += 1;
        if (at >= windowStartMicros) {
          totals.sent += 1;
          totals.expected += c.size;
        }
      }
      setTimeout(pump, 1);
    };
    pump();
  });
  const { snap: closed, stats } = await closing;
  if (progress) clearInterval(progress);
  for (const c of clients) c.close();

  const sorted = Float64Array.from(latencies).sort();
  const q = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] / 1000 : 0);
  const windowSecs = (closed.at - opened.at) / 1000;
  const serverMs = opened.servers !== null && closed.servers !== null ? (closed.servers - opened.servers) * 10 : null;
  const redisMs = opened.redis !== null && closed.redis !== null ? (closed.redis - opened.redis) * 10 : null;
  const ownMs = (closed.ownMicros - opened.ownMicros) / 1000;
  const report = {
    tool: 'loadclient.js',
    protocol: { sio: 'socket.io', ws: 'ws', chat: 'chat-v1' }[args.proto],
    urls: args.url,
    clients: args.clients,
    rooms,
    posters: posters.length,
    rate: args.rate,
    secs: args.secs,
    warmup: args.warmup,
    ack_every: 0,
    offline_members: 0,
    sent: totals.sent,
    expected: totals.expected,
    received: totals.received,
    lost: Math.max(totals.expected - totals.received, 0),
    gaps: totals.gaps,
    errors: totals.errors,
    deliveries_per_sec: totals.received / Math.max(args.secs, 1),
    latency_ms: { p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: q(1) },
    window_secs: windowSecs,
    server_cpu_ms: serverMs,
    server_cpu_us_per_delivery: serverMs === null ? null : (serverMs * 1000) / Math.max(totals.received, 1),
    redis_cpu_ms: redisMs,
    redis_cpu_us_per_post: redisMs === null ? null : (redisMs * 1000) / Math.max(totals.sent, 1),
    redis_commands: stats ? commandstats(stats, totals.sent) : {},
    loadgen_cpu_ms: Math.round(ownMs),
    // Per counted second, as chat-loadgen gives it (nearly all of it is spent while posting).
    loadgen_cpu_pct: ownMs / 10 / Math.max(args.secs, 1),
  };
  console.log(JSON.stringify(report));
  // Socket.IO clients may hold timers; the report is out, so leave now.
  setTimeout(() => process.exit(0), 200);
}

main().catch((e) => {
  console.error(`loadclient: ${e.stack || e}`);
  process.exit(1);
});
