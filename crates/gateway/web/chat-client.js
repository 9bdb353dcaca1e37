// chat-client.js — the JavaScript client of the chat gateway (wire protocol v1, docs/protocol.md).
//
// One ES module, no dependencies, served by every gateway at /chat-client.js. It runs in browsers
// and, with an injected WebSocket implementation (e.g. the `ws` package), in Node. Its API is
// documented in docs/client.md. In short:
//
//   import { ChatClient } from '/chat-client.js';
//   const chat = new ChatClient({ userId: 'ann', userName: 'Ann' });
//   chat.on('message', ({ message }) => console.log(message.userName, message.content));
//   chat.join('lobby');
//   chat.connect();
//   chat.send('lobby', 'hello');
//
// What it takes care of, so an application does not have to:
// - heartbeat: an application-level ping every `heartbeatIntervalMs`; a connection from which
//   nothing arrives for `heartbeatTimeoutMs` after a ping is treated as dead and replaced;
// - reconnect with exponential backoff and full jitter (a short one after a 1012 restart);
// - resume: the last seq and epoch per room are kept in storage (localStorage in a browser), and
//   every login carries `since` + `epoch`, so the server replays exactly what was missed;
// - dedup by (room, seq) within an epoch, and adopting a new epoch when a log was recreated;
// - cumulative acks, batched (one per room per `ackDelayMs`), sent at once when the server resends
//   (`"resend": true`: it has not seen an ack in time);
// - posts: every post has a `clientMsgId`; unanswered posts are resent with the same id (the
//   server makes that idempotent) after a timeout and after a reconnect;
// - typed events for the UI: status, joined, message, presence, pending, sent, failed, left, epoch,
//   error.

/** Protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** Room and user ids accepted by the server: `^[A-Za-z0-9_.:-]{1,64}$`. */
export const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

/** Close codes after which reconnecting is pointless (the same frame would be refused again). */
const NO_RECONNECT = new Set([1009]);

const DEFAULTS = {
  heartbeatIntervalMs: 15000,
  heartbeatTimeoutMs: 10000,
  connectTimeoutMs: 10000,
  backoffBaseMs: 500,
  backoffMaxMs: 15000,
  restartBackoffMs: 1000,
  ackDelayMs: 250,
  postTimeoutMs: 8000,
  maxPostAttempts: 4,
  storagePrefix: 'chat:v1',
};

/** A storage that forgets everything when the page goes (used when localStorage is absent). */
export class MemoryStorage {
  constructor() { this.map = new Map(); }
  getItem(key) { return this.map.has(key) ? this.map.get(key) : null; }
  setItem(key, value) { this.map.set(key, String(value)); }
  removeItem(key) { this.map.delete(key); }
}

function defaultStorage() {
  try {
    const s = globalThis.localStorage;
    if (s) {
      // Safari's private mode and disabled storage throw on use rather than on access.
      const probe = '__chat_probe__';
      s.setItem(probe, '1');
      s.removeItem(probe);
      return s;
    }
  } catch (_) {
    // fall through
  }
  return new MemoryStorage();
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc || !loc.host) throw new Error('ChatClient: `url` is required outside a browser page');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
}

let idCounter = 0;
/** A unique `clientMsgId` (1–64 characters, no control characters). */
export function newClientMsgId() {
  idCounter += 1;
  const rand = Math.floor(Math.random() * 0xffffffff).toString(36);
  return `c-${Date.now().toString(36)}-${rand}-${idCounter.toString(36)}`;
}

/**
 * The chat client. See docs/client.md for every option, method and event.
 */
export class ChatClient {
  /**
   * @param {object} options
   * @param {string} options.userId  the user's id (`ID_PATTERN`)
   * @param {string} options.userName  display name (1–64 characters)
   * @param {string|function(): (string|Promise<string>)} [options.url]  WebSocket URL, or a
   *   function returning it for each connection attempt (where a token can be added later);
   *   default: `/ws` on the page's own host
   * @param {function} [options.WebSocket]  WebSocket constructor (default: globalThis.WebSocket)
   * @param {{getItem, setItem, removeItem}} [options.storage]  where cursors are kept
   * @param {function(): object} [options.loginFields]  extra fields merged into every `login`
   */
  constructor(options) {
    if (!options || typeof options.userId !== 'string' || !ID_PATTERN.test(options.userId)) {
      throw new TypeError('ChatClient: `userId` must match ' + ID_PATTERN);
    }
    if (typeof options.userName !== 'string' || options.userName.length === 0) {
      throw new TypeError('ChatClient: `userName` is required');
    }
    this.options = { ...DEFAULTS, ...options };
    this.userId = options.userId;
    this.userName = options.userName;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('ChatClient: no WebSocket implementation; pass `WebSocket`');
    }
    this.storage = options.storage || defaultStorage();
    this.random = options.random || Math.random;
    this.listeners = new Map();
    /** @type {Map<string, object>} roomId → room state */
    this.rooms = new Map();
    /** clientMsgId → pending post */
    this.posts = new Map();
    this.direct = { epoch: null, seq: 0, dirty: false };
    this.status = 'idle';
    this.ws = null;
    this.wsId = 0;
    this.attempt = 0;
    this.timers = { reconnect: null, heartbeat: null, ack: null, retry: null, connect: null };
    this.lastFrameAt = 0;
    this.pingSentAt = 0;
    /** Rooms left while disconnected: the `logout` still has to reach the server. */
    this.leaving = new Set();
    this.historyWaiters = new Map();
    this.joinWaiters = new Map();
    this.started = false;
    this.loadCursors();
    this.loadOutbox();
    this.onOnline = () => { if (this.started && this.status !== 'connected') this.reconnectNow(); };
    this.onOffline = () => { if (this.started) this.dropConnection('browser offline'); };
  }

  // ---------------------------------------------------------------------------------------------
  // Events
  // ---------------------------------------------------------------------------------------------

  /** Subscribes `handler` to events of `type`; returns a function that unsubscribes it. */
  on(type, handler) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(handler);
    return () => this.off(type, handler);
  }

  /** Unsubscribes `handler`. */
  off(type, handler) {
    const set = this.listeners.get(type);
    if (set) set.delete(handler);
  }

  emit(type, detail) {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(detail);
      } catch (e) {
        // A throwing UI handler must not break the connection logic.
        if (globalThis.console) console.error('ChatClient listener for', type, 'threw', e);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Lifecycle
  // ---------------------------------------------------------------------------------------------

  /** Starts connecting (and keeps reconnecting until `close()`). */
  connect() {
    if (this.started) return;
    this.started = true;
    if (typeof globalThis.addEventListener === 'function') {
      globalThis.addEventListener('online', this.onOnline);
      globalThis.addEventListener('offline', this.onOffline);
    }
    this.timers.retry = setInterval(() => this.retryUnanswered(), 1000);
    // Posts restored from storage (typed before a reload, never confirmed): show them again; they
    // are resent after the login like any other pending post.
    for (const post of this.posts.values()) {
      if (post.restored) {
        delete post.restored;
        this.emit(post.state === 'failed' ? 'failed' : 'pending', { post: { ...post }, error: post.error });
      }
    }
    this.open();
  }

  /** Closes the connection for good (code 1000); pending posts stay pending. */
  close() {
    this.started = false;
    if (typeof globalThis.removeEventListener === 'function') {
      globalThis.removeEventListener('online', this.onOnline);
      globalThis.removeEventListener('offline', this.onOffline);
    }
    this.flushAcks();
    for (const key of Object.keys(this.timers)) {
      clearTimeout(this.timers[key]);
      clearInterval(this.timers[key]);
      this.timers[key] = null;
    }
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try { ws.close(1000, 'bye'); } catch (_) { /* already closed */ }
    }
    this.failWaiters('closed');
    this.setStatus('closed');
  }

  /** Drops the current connection (if any) and reconnects at once, skipping the backoff. */
  reconnectNow() {
    if (!this.started) return;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    this.attempt = 0;
    if (this.ws) this.dropConnection('reconnect requested', 0);
    else this.open();
  }

  setStatus(status, extra = {}) {
    this.status = status;
    this.emit('status', { status, attempt: this.attempt, ...extra });
  }

  async open() {
    if (!this.started) return;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    if (globalThis.navigator && globalThis.navigator.onLine === false) {
      // The 'online' event reconnects.
      this.setStatus('offline');
      return;
    }
    const id = ++this.wsId;
    this.setStatus(this.attempt === 0 ? 'connecting' : 'reconnecting', { retryAt: null });
    let url;
    try {
      url = typeof this.options.url === 'function' ? await this.options.url() : (this.options.url || defaultUrl());
    } catch (e) {
      this.scheduleReconnect({ reason: `url: ${e && e.message}` });
      return;
    }
    if (id !== this.wsId || !this.started) return;
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (e) {
      this.scheduleReconnect({ reason: String(e && e.message) });
      return;
    }
    this.ws = ws;
    this.timers.connect = setTimeout(() => {
      if (this.ws === ws && ws.readyState !== 1) this.dropConnection('connect timeout');
    }, this.options.connectTimeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      clearTimeout(this.timers.connect);
      this.lastFrameAt = Date.now();
      this.pingSentAt = 0;
      this.setStatus('connected');
      this.startHeartbeat();
      for (const room of this.rooms.values()) {
        room.joined = false;
        this.sendLogin(room);
      }
      // A logout is only accepted for a room the connection is in: log in, and log out on `joined`.
      for (const roomId of this.leaving) this.sendLogin({ roomId });
      if (this.rooms.size === 0) this.resendPending();
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = Date.now();
      this.pingSentAt = 0;
      const data = typeof event.data === 'string' ? event.data : String(event.data);
      let frame;
      try {
        frame = JSON.parse(data);
      } catch (_) {
        return;
      }
      if (frame && typeof frame === 'object') this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onDisconnected(event && event.code, event && event.reason);
    };
    ws.onerror = () => {
      // Always followed by close; nothing to do here.
    };
  }

  /** Closes the socket locally and treats it as a drop (reconnects). */
  dropConnection(reason, delayOverride) {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try { ws.close(4100, 'client reconnect'); } catch (_) { /* ignore */ }
    }
    this.onDisconnected(null, reason, delayOverride);
  }

  onDisconnected(code, reason, delayOverride) {
    clearInterval(this.timers.heartbeat);
    clearTimeout(this.timers.connect);
    this.timers.heartbeat = null;
    for (const room of this.rooms.values()) room.joined = false;
    this.failWaiters('disconnected');
    for (const post of this.posts.values()) {
      // Whatever was sent on the dead connection is resent after the next login.
      if (post.state === 'pending') post.sentOn = 0;
    }
    this.saveCursors();
    if (!this.started) return;
    if (code != null && NO_RECONNECT.has(code)) {
      this.setStatus('offline', { code, reason });
      return;
    }
    this.scheduleReconnect({ code, reason, delayOverride });
  }

  scheduleReconnect({ code = null, reason = '', delayOverride } = {}) {
    if (!this.started) return;
    let delay;
    if (delayOverride != null) {
      delay = delayOverride;
    } else if (code === 1012) {
      // The node is restarting: another one (or it, soon) will take us. A short jittered wait
      // spreads the reconnect storm without keeping users waiting.
      delay = this.random() * this.options.restartBackoffMs;
    } else {
      // Exponential backoff with full jitter: uniform in [0, min(max, base·2^attempt)].
      const cap = Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * 2 ** this.attempt);
      delay = this.random() * cap;
    }
    this.attempt += 1;
    delay = Math.round(delay);
    this.setStatus('reconnecting', { retryAt: Date.now() + delay, delayMs: delay, code, reason });
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this.open(), delay);
  }

  startHeartbeat() {
    clearInterval(this.timers.heartbeat);
    const tick = Math.max(250, Math.min(this.options.heartbeatIntervalMs, this.options.heartbeatTimeoutMs) / 2);
    this.timers.heartbeat = setInterval(() => {
      const now = Date.now();
      if (this.pingSentAt && now - this.pingSentAt > this.options.heartbeatTimeoutMs) {
        // Nothing, not even our pong, came back: the connection is dead even if the OS thinks not
        // (a laptop waking up, a NAT that dropped the flow).
        this.pingSentAt = 0;
        this.dropConnection('heartbeat timeout');
        return;
      }
      if (!this.pingSentAt && now - this.lastFrameAt >= this.options.heartbeatIntervalMs) {
        this.pingSentAt = now;
        this.sendFrame({ event: 'heartBeat', content: 'ping' });
      }
    }, tick);
  }

  sendFrame(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (_) {
      return false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Rooms
  // ---------------------------------------------------------------------------------------------

  /**
   * Joins `roomId` now (when connected) and after every reconnect, resuming from the stored seq.
   * Resolves with the `joined` event's detail.
   */
  join(roomId, { roomName } = {}) {
    roomId = String(roomId);
    if (!ID_PATTERN.test(roomId)) return Promise.reject(new TypeError(`invalid room id: ${roomId}`));
    this.leaving.delete(roomId);
    let room = this.rooms.get(roomId);
    if (!room) {
      const stored = this.storedCursor(roomId);
      room = {
        roomId,
        roomName: roomName || roomId,
        requestedName: roomName,
        joined: false,
        epoch: stored ? stored.epoch : null,
        seq: stored ? stored.seq : 0,
        storedSeq: stored ? stored.seq : null,
        num: 0,
        total: 0,
        head: 0,
        ackedSeq: stored ? stored.seq : 0,
        ackDirty: false,
      };
      this.rooms.set(roomId, room);
    }
    const promise = new Promise((resolve, reject) => {
      if (!this.joinWaiters.has(roomId)) this.joinWaiters.set(roomId, []);
      this.joinWaiters.get(roomId).push({ resolve, reject });
    });
    // Until the first `joined`, a rejection nobody awaits must not be reported as unhandled.
    promise.catch(() => {});
    if (room.joined) {
      this.resolveJoin(roomId, this.roomSnapshot(room));
    } else if (this.ws && this.ws.readyState === 1) {
      this.sendLogin(room);
    }
    return promise;
  }

  /** Leaves `roomId` for good (`logout`): no more messages, no replay, cursor forgotten. */
  leave(roomId) {
    roomId = String(roomId);
    const room = this.rooms.get(roomId);
    if (!room) return;
    this.flushAcks();
    if (!room.joined || !this.sendFrame({ event: 'logout', roomId })) this.leaving.add(roomId);
    this.rooms.delete(roomId);
    this.forgetCursor(roomId);
    for (const [id, post] of this.posts) {
      if (post.roomId === roomId) this.posts.delete(id);
    }
    this.saveOutbox();
    this.rejectJoin(roomId, new Error('left'));
    this.emit('left', { roomId });
  }

  /** The rooms this client is in (or joining), as plain objects. */
  roomList() {
    return [...this.rooms.values()].map((r) => this.roomSnapshot(r));
  }

  /** One room's state, or null. */
  room(roomId) {
    const room = this.rooms.get(String(roomId));
    return room ? this.roomSnapshot(room) : null;
  }

  roomSnapshot(room) {
    return {
      roomId: room.roomId,
      roomName: room.roomName,
      joined: room.joined,
      epoch: room.epoch,
      seq: room.seq,
      num: room.num,
      total: room.total,
      head: room.head,
      storedSeq: room.storedSeq,
    };
  }

  sendLogin(room) {
    const frame = {
      event: 'login',
      roomId: room.roomId,
      userId: this.userId,
      userName: this.userName,
    };
    if (room.requestedName) frame.roomName = room.requestedName;
    if (room.epoch && room.seq > 0) {
      frame.since = room.seq;
      frame.epoch = room.epoch;
    }
    const extra = typeof this.options.loginFields === 'function' ? this.options.loginFields() : null;
    this.sendFrame(extra ? { ...frame, ...extra } : frame);
  }

  // ---------------------------------------------------------------------------------------------
  // Posting
  // ---------------------------------------------------------------------------------------------

  /** Posts `content` to a room. Returns the pending post (its `clientMsgId` identifies it). */
  send(roomId, content) {
    return this.enqueue({ roomId: String(roomId) }, content);
  }

  /** Sends a direct message to a user. Returns the pending post. */
  sendDirect(toUserId, content) {
    return this.enqueue({ toUserId: String(toUserId) }, content);
  }

  enqueue(target, content) {
    if (typeof content !== 'string' || content.trim().length === 0) {
      throw new TypeError('empty message');
    }
    const post = {
      clientMsgId: newClientMsgId(),
      ...target,
      content,
      state: 'pending',
      createdAt: Date.now(),
      attempts: 0,
      sentAt: 0,
      sentOn: 0,
      error: null,
    };
    this.posts.set(post.clientMsgId, post);
    this.saveOutbox();
    this.emit('pending', { post: { ...post } });
    this.transmit(post);
    return { ...post };
  }

  /** Sends a failed (or still pending) post again, with the same `clientMsgId`. */
  retry(clientMsgId) {
    const post = this.posts.get(clientMsgId);
    if (!post) return false;
    post.state = 'pending';
    post.attempts = 0;
    post.error = null;
    this.saveOutbox();
    this.emit('pending', { post: { ...post } });
    this.transmit(post);
    return true;
  }

  /** Forgets a pending or failed post (the UI discarded it). */
  discard(clientMsgId) {
    const had = this.posts.delete(clientMsgId);
    this.saveOutbox();
    return had;
  }

  /** Posts not yet confirmed by `sent`, oldest first. */
  pendingPosts() {
    return [...this.posts.values()].map((p) => ({ ...p }));
  }

  canTransmit(post) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    if (post.roomId) {
      const room = this.rooms.get(post.roomId);
      return Boolean(room && room.joined);
    }
    // A direct message needs at least one login on this connection.
    return [...this.rooms.values()].some((r) => r.joined);
  }

  transmit(post) {
    if (post.state !== 'pending' || !this.canTransmit(post)) return;
    const frame = { event: 'message', content: post.content, clientMsgId: post.clientMsgId };
    if (post.roomId) frame.roomId = post.roomId;
    else frame.toUserId = post.toUserId;
    if (this.sendFrame(frame)) {
      post.attempts += 1;
      post.sentAt = Date.now();
      post.sentOn = this.wsId;
    }
  }

  resendPending(roomId) {
    for (const post of this.posts.values()) {
      if (post.state !== 'pending') continue;
      if (roomId && post.roomId !== roomId && !post.toUserId) continue;
      if (post.sentOn === this.wsId) continue;
      this.transmit(post);
    }
  }

  retryUnanswered() {
    const now = Date.now();
    for (const post of this.posts.values()) {
      if (post.state !== 'pending') continue;
      if (post.sentOn !== this.wsId || now - post.sentAt < this.options.postTimeoutMs) {
        if (post.sentOn !== this.wsId) this.transmit(post);
        continue;
      }
      if (post.attempts >= this.options.maxPostAttempts) {
        this.failPost(post, { code: 'timeout', message: 'no answer from the server', retriable: true });
      } else {
        this.transmit(post);
      }
    }
  }

  failPost(post, error) {
    post.state = 'failed';
    post.error = error;
    this.saveOutbox();
    this.emit('failed', { post: { ...post }, error });
  }

  // ---------------------------------------------------------------------------------------------
  // History
  // ---------------------------------------------------------------------------------------------

  /**
   * Asks for a page of a joined room's history: up to `limit` messages with seq below `before`.
   * Resolves with `{roomId, epoch, messages}` (oldest first); rejects if the connection drops.
   */
  history(roomId, { before, limit = 50 } = {}) {
    roomId = String(roomId);
    const frame = { event: 'history', roomId, limit };
    if (before != null) frame.before = before;
    if (!this.sendFrame(frame)) return Promise.reject(new Error('not connected'));
    return new Promise((resolve, reject) => {
      // Replies come in request order on one connection, so a FIFO per room matches them.
      if (!this.historyWaiters.has(roomId)) this.historyWaiters.set(roomId, []);
      this.historyWaiters.get(roomId).push({ resolve, reject, wsId: this.wsId });
    });
  }

  failWaiters(reason) {
    for (const waiters of this.historyWaiters.values()) {
      for (const w of waiters) w.reject(new Error(reason));
    }
    this.historyWaiters.clear();
    if (reason === 'closed') {
      for (const roomId of [...this.joinWaiters.keys()]) this.rejectJoin(roomId, new Error(reason));
    }
  }

  resolveJoin(roomId, detail) {
    const waiters = this.joinWaiters.get(roomId);
    if (!waiters) return;
    this.joinWaiters.delete(roomId);
    for (const w of waiters) w.resolve(detail);
  }

  rejectJoin(roomId, error) {
    const waiters = this.joinWaiters.get(roomId);
    if (!waiters) return;
    this.joinWaiters.delete(roomId);
    for (const w of waiters) w.reject(error);
  }

  // ---------------------------------------------------------------------------------------------
  // Incoming frames
  // ---------------------------------------------------------------------------------------------

  onFrame(frame) {
    switch (frame.event) {
      case 'joined': return this.onJoined(frame);
      case 'message': return this.onMessage(frame);
      case 'sent': return this.onSent(frame);
      case 'login': return this.onPresence(frame, 'online');
      case 'logout': return this.onPresence(frame, frame.reason === 'left' ? 'left' : 'offline');
      case 'history': return this.onHistory(frame);
      case 'error': return this.onError(frame);
      case 'heartBeat': return undefined;
      default: return undefined;
    }
  }

  onJoined(frame) {
    const roomId = String(frame.roomId);
    if (this.leaving.has(roomId) && !this.rooms.has(roomId)) {
      if (this.sendFrame({ event: 'logout', roomId })) this.leaving.delete(roomId);
      return;
    }
    const room = this.rooms.get(roomId);
    if (!room) return;
    const floor = Math.max(0, (frame.seq || 0) - (frame.replayed || 0));
    const epochChanged = room.epoch != null && room.epoch !== frame.epoch;
    const resumed = room.epoch === frame.epoch && room.seq > 0;
    if (room.epoch !== frame.epoch) {
      if (epochChanged) this.emit('epoch', { roomId: room.roomId, oldEpoch: room.epoch, epoch: frame.epoch });
      room.epoch = frame.epoch;
      room.seq = floor;
      room.ackedSeq = 0;
    } else {
      room.seq = Math.max(room.seq, floor);
    }
    room.joined = true;
    room.roomName = frame.roomName || room.roomName;
    room.num = frame.num;
    room.total = frame.total;
    room.head = frame.seq;
    this.saveCursors();
    // A successful login is a healthy connection: the next drop starts the backoff afresh.
    this.attempt = 0;
    const detail = {
      ...this.roomSnapshot(room),
      replayed: frame.replayed || 0,
      resumed,
      epochChanged,
      // False when the replay does not reach back to this client's position: messages in between
      // are no longer in the server's history (oldestSeq is the oldest one it still holds).
      recovered: frame.recovered !== false,
      oldestSeq: frame.oldestSeq ?? null,
    };
    this.emit('joined', detail);
    this.resolveJoin(room.roomId, detail);
    this.resendPending(room.roomId);
  }

  onMessage(frame) {
    if (frame.toUserId != null || frame.roomId == null) return this.onDirect(frame);
    const room = this.rooms.get(String(frame.roomId));
    if (!room) return undefined;
    if (room.epoch != null && frame.epoch !== room.epoch) {
      // The room's log was recreated (e.g. Redis lost its data): its seqs start again at 1.
      this.emit('epoch', { roomId: room.roomId, oldEpoch: room.epoch, epoch: frame.epoch });
      room.epoch = frame.epoch;
      room.seq = 0;
      room.ackedSeq = 0;
    } else if (room.epoch == null) {
      room.epoch = frame.epoch;
    }
    if (frame.seq <= room.seq) {
      // A duplicate (a replay overlapping what we had, or a resend). A resend means the server has
      // not seen an ack covering it (a background tab's timers can run a minute late, and the
      // server closes a connection that stops acking): send the pending acks now.
      if (frame.resend) this.flushAcks();
      return undefined;
    }
    room.seq = frame.seq;
    room.head = Math.max(room.head, frame.seq);
    this.saveCursor(room);
    this.scheduleAck(room);
    const own = frame.userId === this.userId;
    if (own && frame.clientMsgId) this.confirmPost(frame.clientMsgId, frame);
    this.emit('message', { message: { ...frame, roomId: String(frame.roomId) }, roomId: room.roomId, direct: false, own, replay: Boolean(frame.replay) });
    return undefined;
  }

  onDirect(frame) {
    const d = this.direct;
    if (d.epoch != null && frame.epoch !== d.epoch) {
      this.emit('epoch', { direct: true, oldEpoch: d.epoch, epoch: frame.epoch });
      d.seq = 0;
    }
    d.epoch = frame.epoch;
    if (frame.seq <= d.seq) {
      if (frame.resend) this.flushAcks(); // see onMessage
      return;
    }
    d.seq = frame.seq;
    d.dirty = true;
    this.saveDirectCursor();
    this.scheduleAckTimer();
    const own = frame.userId === this.userId;
    if (own && frame.clientMsgId) this.confirmPost(frame.clientMsgId, frame);
    // The conversation is named after the other user.
    const peer = own ? String(frame.toUserId) : String(frame.userId);
    this.emit('message', { message: { ...frame }, peer, direct: true, own, replay: Boolean(frame.replay) });
  }

  onSent(frame) {
    if (frame.clientMsgId) this.confirmPost(frame.clientMsgId, frame);
  }

  confirmPost(clientMsgId, frame) {
    const post = this.posts.get(clientMsgId);
    if (!post) return;
    this.posts.delete(clientMsgId);
    this.saveOutbox();
    this.emit('sent', { post: { ...post, state: 'sent' }, clientMsgId, seq: frame.seq, epoch: frame.epoch, ts: frame.ts });
  }

  onPresence(frame, kind) {
    const room = this.rooms.get(String(frame.roomId));
    if (!room) return;
    if (typeof frame.num === 'number') room.num = frame.num;
    if (typeof frame.total === 'number') room.total = frame.total;
    this.emit('presence', {
      roomId: room.roomId,
      userId: String(frame.userId),
      userName: frame.userName,
      kind,
      num: room.num,
      total: room.total,
      self: String(frame.userId) === this.userId,
    });
  }

  onHistory(frame) {
    const roomId = String(frame.roomId);
    const waiters = this.historyWaiters.get(roomId);
    const w = waiters && waiters.shift();
    if (w) w.resolve({ roomId, epoch: frame.epoch, messages: frame.messages || [] });
  }

  onError(frame) {
    const error = { code: frame.code, message: frame.message, ref: frame.ref, retriable: Boolean(frame.retriable) };
    if (frame.ref && this.posts.has(frame.ref)) {
      const post = this.posts.get(frame.ref);
      if (error.retriable && post.attempts < this.options.maxPostAttempts) {
        // `unavailable`: resend the same frame later; the retry timer does it.
        post.sentAt = Date.now() - this.options.postTimeoutMs + Math.min(2000, this.options.postTimeoutMs);
      } else {
        this.failPost(post, error);
      }
    }
    this.emit('error', error);
  }

  // ---------------------------------------------------------------------------------------------
  // Acks
  // ---------------------------------------------------------------------------------------------

  scheduleAck(room) {
    room.ackDirty = true;
    this.scheduleAckTimer();
  }

  scheduleAckTimer() {
    if (this.timers.ack) return;
    this.timers.ack = setTimeout(() => {
      this.timers.ack = null;
      this.flushAcks();
    }, this.options.ackDelayMs);
  }

  /** Sends the pending cumulative acks now (one per room, one for direct messages). */
  flushAcks() {
    clearTimeout(this.timers.ack);
    this.timers.ack = null;
    for (const room of this.rooms.values()) {
      if (!room.ackDirty || !room.joined || room.seq <= room.ackedSeq) continue;
      // The epoch tells the server which log `seq` belongs to, so an ack that crosses a log reset
      // cannot move the new log's cursor.
      if (this.sendFrame({ event: 'ack', roomId: room.roomId, seq: room.seq, epoch: room.epoch })) {
        room.ackedSeq = room.seq;
        room.ackDirty = false;
      }
    }
    if (this.direct.dirty && this.direct.seq > 0) {
      if (this.sendFrame({ event: 'ack', direct: true, seq: this.direct.seq, epoch: this.direct.epoch })) this.direct.dirty = false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Storage
  // ---------------------------------------------------------------------------------------------

  storageKey() {
    return `${this.options.storagePrefix}:${this.userId}:cursors`;
  }

  loadCursors() {
    this.cursors = {};
    try {
      const raw = this.storage.getItem(this.storageKey());
      const parsed = raw ? JSON.parse(raw) : null;
      if (parsed && typeof parsed === 'object') this.cursors = parsed;
    } catch (_) {
      this.cursors = {};
    }
    const d = this.cursors['@direct'];
    if (d && typeof d.seq === 'number' && typeof d.epoch === 'string') {
      this.direct.seq = d.seq;
      this.direct.epoch = d.epoch;
    }
  }

  storedCursor(roomId) {
    const c = this.cursors[`#${roomId}`];
    if (c && typeof c.seq === 'number' && typeof c.epoch === 'string' && c.seq >= 0) return c;
    return null;
  }

  /** The stored (seq, epoch) of a room, as of the last message processed. */
  cursor(roomId) {
    const c = this.storedCursor(String(roomId));
    return c ? { ...c } : null;
  }

  saveCursor(room) {
    if (room.epoch == null) return;
    this.cursors[`#${room.roomId}`] = { seq: room.seq, epoch: room.epoch };
    this.persist();
  }

  saveDirectCursor() {
    this.cursors['@direct'] = { seq: this.direct.seq, epoch: this.direct.epoch };
    this.persist();
  }

  saveCursors() {
    for (const room of this.rooms.values()) {
      if (room.epoch != null) this.cursors[`#${room.roomId}`] = { seq: room.seq, epoch: room.epoch };
    }
    this.persist();
  }

  forgetCursor(roomId) {
    delete this.cursors[`#${roomId}`];
    this.persist();
  }

  outboxKey() {
    return `${this.options.storagePrefix}:${this.userId}:outbox`;
  }

  /** Unconfirmed posts survive a reload: they are resent with the same `clientMsgId`. */
  loadOutbox() {
    let saved = [];
    try {
      const raw = this.storage.getItem(this.outboxKey());
      saved = raw ? JSON.parse(raw) : [];
    } catch (_) {
      saved = [];
    }
    if (!Array.isArray(saved)) return;
    for (const p of saved) {
      if (!p || typeof p.clientMsgId !== 'string' || typeof p.content !== 'string') continue;
      if (typeof p.roomId !== 'string' && typeof p.toUserId !== 'string') continue;
      const post = {
        clientMsgId: p.clientMsgId,
        content: p.content,
        state: p.state === 'failed' ? 'failed' : 'pending',
        createdAt: Number(p.createdAt) || Date.now(),
        attempts: 0,
        sentAt: 0,
        sentOn: 0,
        error: p.error || null,
        restored: true,
      };
      if (typeof p.roomId === 'string') post.roomId = p.roomId;
      else post.toUserId = p.toUserId;
      this.posts.set(post.clientMsgId, post);
    }
  }

  saveOutbox() {
    const posts = [...this.posts.values()].map((p) => ({
      clientMsgId: p.clientMsgId,
      roomId: p.roomId,
      toUserId: p.toUserId,
      content: p.content,
      state: p.state,
      createdAt: p.createdAt,
      error: p.error,
    }));
    try {
      if (posts.length) this.storage.setItem(this.outboxKey(), JSON.stringify(posts));
      else this.storage.removeItem(this.outboxKey());
    } catch (_) {
      // storage full or disabled: pending posts then live as long as the page
    }
  }

  persist() {
    try {
      this.storage.setItem(this.storageKey(), JSON.stringify(this.cursors));
    } catch (_) {
      // Full or disabled storage: resume then relies on the server's read cursor.
    }
  }
}
