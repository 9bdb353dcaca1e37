// Test harness for the web tests: real gateway processes, real redis-server, real nginx, all on
// free loopback ports, every wait bounded by a generous deadline (CI machines are slow and shared),
// and every process stopped by its own PID when the test file ends.
//
// The gateway binary comes from CHAT_GATEWAY_BIN (tests/tests/web.rs builds it and sets this);
// without it, target/debug/chat-gateway is used.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const GATEWAY_BIN = process.env.CHAT_GATEWAY_BIN || path.join(ROOT, 'target', 'debug', 'chat-gateway');
/** Where screenshots and logs go (gitignored). */
export const ARTIFACTS = process.env.CHAT_WEB_ARTIFACTS || path.join(ROOT, 'target', 'web-artifacts');
/** Bound of one wait: generous, since a passing wait costs only its condition's time. */
export const TIMEOUT_MS = Number(process.env.CHAT_WEB_TIMEOUT_MS || 60000);

fs.mkdirSync(ARTIFACTS, { recursive: true });
/** This test file's logs and scratch files: kept when it fails, removed when it passes. */
export const RUN_DIR = fs.mkdtempSync(path.join(ARTIFACTS, `run-${process.pid}-`));

const processes = new Set();

/** Stops every process this file started, each by its own PID. */
export function stopAll() {
  for (const p of [...processes]) p.stop();
  processes.clear();
}
process.on('exit', (code) => {
  stopAll();
  if (code === 0 && !process.exitCode) fs.rmSync(RUN_DIR, { recursive: true, force: true });
  else console.error(`gateway, redis and nginx logs kept in ${RUN_DIR}`);
});

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a truthy value (returned) or `timeout` passes (throws). */
export async function waitFor(check, { timeout = TIMEOUT_MS, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${lastError ? `: ${lastError.message}` : ''}`);
    }
    await sleep(interval);
  }
}

/** A loopback port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

let counter = 0;

class Proc {
  /**
   * `stopSignal`: how `stop` ends it. SIGKILL for single-process servers; nginx needs SIGTERM, as
   * its worker processes outlive a killed master.
   */
  constructor(name, command, args, env, stopSignal = 'SIGKILL') {
    this.stopSignal = stopSignal;
    counter += 1;
    this.name = name;
    this.log = path.join(RUN_DIR, `${name}-${counter}.log`);
    const out = fs.openSync(this.log, 'a');
    this.child = spawn(command, args, { env, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    this.pid = this.child.pid;
    this.exited = false;
    // `exited` is also set when a stop is asked for; `gone` resolves only once the process is
    // really gone (its port is free again).
    this.gone = new Promise((resolve) => {
      this.child.on('exit', () => { this.exited = true; resolve(); });
    });
    processes.add(this);
  }

  /** SIGKILL, by this process's own PID. */
  kill9() {
    this.stop('SIGKILL');
  }

  /** Sends `signal` (default: its stop signal) by its own PID and forgets it. */
  stop(signal = this.stopSignal) {
    if (this.exited) return;
    try { process.kill(this.pid, signal); } catch (_) { /* already gone */ }
    this.exited = true;
    processes.delete(this);
  }

  logTail(lines = 40) {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').slice(-lines).join('\n');
    } catch (_) {
      return '';
    }
  }
}

async function httpOk(url) {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(3000) });
    await response.arrayBuffer();
    return response.ok;
  } catch (_) {
    return false;
  }
}

/**
 * Starts a gateway on `port` (or a free one). `env` adds CHAT__* settings, e.g.
 * `{ CHAT__REDIS__URL: redis.url }`.
 */
export async function startGateway({ env = {}, port, label = 'gateway' } = {}) {
  const gateway = { env, label };
  gateway.port = port || await freePort();
  gateway.url = `http://127.0.0.1:${gateway.port}`;
  gateway.wsUrl = `ws://127.0.0.1:${gateway.port}/ws`;
  gateway.start = async () => {
    const childEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CHAT__') && k !== 'RUST_LOG') childEnv[k] = v;
    Object.assign(childEnv, {
      CHAT__SERVER__LISTEN: `127.0.0.1:${gateway.port}`,
      CHAT__LOG__LEVEL: 'info',
      ...env,
    });
    gateway.proc = new Proc(label, GATEWAY_BIN, [], childEnv);
    await waitFor(async () => {
      if (gateway.proc.exited) throw new Error(`${label} exited at start:\n${gateway.proc.logTail()}`);
      return httpOk(`${gateway.url}/readyz`);
    }, { what: `${label} on port ${gateway.port} to be ready`, timeout: 60000, interval: 100 });
    gateway.pid = gateway.proc.pid;
    return gateway;
  };
  /** SIGKILL (by PID): sessions drop without a close frame, like a crashed node. */
  gateway.kill9 = () => gateway.proc.kill9();
  /** SIGTERM (by PID): a graceful shutdown that closes sessions with 1012. */
  gateway.terminate = () => { try { process.kill(gateway.proc.pid, 'SIGTERM'); } catch (_) { /* gone */ } };
  gateway.restart = async () => {
    const old = gateway.proc;
    old.kill9();
    // Until the old process is really gone it holds the port, and would even answer /readyz in
    // the new one's place.
    await Promise.race([old.gone, new Promise((resolve) => setTimeout(resolve, 30000))]);
    await waitFor(async () => {
      try {
        await gateway.start();
        return true;
      } catch (e) {
        if (/exited at start/.test(e.message)) return false;
        throw e;
      }
    }, { what: `${label} to restart on port ${gateway.port}`, timeout: 60000, interval: 200 });
  };
  gateway.connections = async () => {
    const response = await fetch(`${gateway.url}/api/node`);
    return (await response.json()).connections;
  };
  await gateway.start();
  return gateway;
}

/** Starts a throwaway redis-server (no persistence) on a free port. */
export async function startRedis() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(RUN_DIR, 'redis-'));
  const proc = new Proc('redis', 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], process.env);
  await waitFor(() => new Promise((resolve) => {
    if (proc.exited) { resolve(false); return; }
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => resolve(false));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (data) => { socket.destroy(); resolve(String(data).startsWith('+PONG')); });
  }), { what: `redis-server on port ${port}`, timeout: 30000, interval: 100 });
  return { port, url: `redis://127.0.0.1:${port}`, proc };
}

/**
 * Starts nginx with deploy/nginx.conf (the file users deploy), its ports rewritten: it listens on a
 * free port and balances over `gatewayPorts` only.
 */
export async function startNginx(gatewayPorts) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(RUN_DIR, 'nginx-'));
  const original = fs.readFileSync(path.join(ROOT, 'deploy', 'nginx.conf'), 'utf8');
  const upstreamLine = /^\s*server 127\.0\.0\.1:808[1-3] .*$/m;
  const template = original.match(upstreamLine);
  if (!template) throw new Error('deploy/nginx.conf: no upstream server line found');
  const servers = gatewayPorts.map((p) => template[0].replace(/127\.0\.0\.1:808[1-3]/, `127.0.0.1:${p}`)).join('\n');
  const conf = original
    .replace(/^\s*server 127\.0\.0\.1:808[1-3] .*\n/gm, '')
    .replace(/least_conn;\n/, `least_conn;\n${servers}\n`)
    .replace('listen 127.0.0.1:8080;', `listen 127.0.0.1:${port};`);
  const confPath = path.join(dir, 'nginx.conf');
  fs.writeFileSync(confPath, conf);
  const proc = new Proc('nginx', 'nginx', ['-p', dir, '-c', confPath, '-g', 'daemon off;'], process.env, 'SIGTERM');
  const url = `http://127.0.0.1:${port}`;
  await waitFor(async () => {
    if (proc.exited) throw new Error(`nginx exited:\n${proc.logTail()}`);
    return httpOk(`${url}/healthz`);
  }, { what: 'nginx', timeout: 30000, interval: 100 });
  return { port, url, wsUrl: `ws://127.0.0.1:${port}/ws`, proc };
}

/** Whether a program is on the PATH. */
export function have(program) {
  return (process.env.PATH || '').split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir, program), fs.constants.X_OK);
      return true;
    } catch (_) {
      return false;
    }
  });
}
