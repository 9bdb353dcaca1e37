// app.js — the web chat page. All connection logic (heartbeat, reconnect, resume, dedup, acks,
// retries) is in /chat-client.js; this file is the UI around it.
//
// Safety rule of this file: text from the network or the user goes into the DOM only through
// textContent / text nodes (see `el`). There is no innerHTML anywhere.

import { ChatClient, ID_PATTERN } from '/chat-client.js';
import { t, language, setLanguage } from '/i18n.js';

const $ = (id) => document.getElementById(id);
const STORE = 'chat:v1';
const HISTORY_PAGE = 30;
const GROUP_WINDOW_MS = 5 * 60 * 1000;
const DM_KEEP = 200;
const MAX_CONTENT_BYTES = 4096;

/** Builds an element. Strings among `children` become text nodes, never markup. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

// ------------------------------------------------------------------------------------------------
// Names, ids, colours
// ------------------------------------------------------------------------------------------------

function fnv32(text) {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(text)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/**
 * A protocol id (`^[A-Za-z0-9_.:-]{1,64}$`) for a name typed by a person: the name itself when it
 * is already one ("Alice" → "alice"), else a stable encoding of it ("小明" → "x-e5b08fe6988e"), so
 * the same name always means the same user or room.
 */
export function idFor(name) {
  const trimmed = name.trim();
  const slug = trimmed.toLowerCase().replace(/\s+/g, '-');
  // (Slugs that look like the encodings below are encoded too, so no name can pose as another.)
  if (/^[a-z0-9_.:-]{1,48}$/.test(slug) && !/^[xh]-/.test(slug)) return slug;
  const hex = [...new TextEncoder().encode(trimmed)].map((b) => b.toString(16).padStart(2, '0')).join('');
  // Up to 31 bytes (10 CJK characters) the id is the name itself, hex-encoded, so anyone can read
  // the name back from the id (see nameFromId); longer names are cut and get a hash (`h-`).
  if (hex.length <= 62) return `x-${hex}`;
  return `h-${hex.slice(0, 48)}${fnv32(trimmed).toString(16).padStart(8, '0')}`;
}

/** The display name an id stands for when nothing better is known: "x-e5b08f…" → "小…". */
function nameFromId(id) {
  const m = /^x-((?:[0-9a-f]{2})+)$/.exec(id);
  if (!m) return id;
  try {
    const bytes = new Uint8Array(m[1].match(/../g).map((h) => parseInt(h, 16)));
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (_) {
    return id;
  }
}

function nameOf(userId) {
  return state.names.get(userId) || nameFromId(userId);
}

function validName(name) {
  const n = name.trim();
  // eslint-disable-next-line no-control-regex
  return n.length >= 1 && [...n].length <= 32 && !/[\u0000-\u001f\u007f-\u009f]/.test(n);
}

function colorFor(id) {
  return `hsl(${fnv32(id) % 360} 55% 52%)`;
}

function initial(name) {
  const first = [...(name || '?').trim()][0] || '?';
  return first.toUpperCase();
}

function avatar(id, name, extraClass = '') {
  const a = el('span', { class: `avatar ${extraClass}`.trim(), 'aria-hidden': 'true' }, initial(name));
  a.style.background = colorFor(id);
  return a;
}

function displayRoomName(roomId) {
  const summary = state.serverRooms.get(roomId);
  if (summary && summary.roomName) return summary.roomName;
  return roomId.charAt(0).toUpperCase() + roomId.slice(1);
}

function formatTime(ts) {
  const d = new Date(ts);
  const now = new Date();
  const time = d.toLocaleTimeString(language() === 'zh' ? 'zh-CN' : undefined, { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === now.toDateString()) return time;
  const date = d.toLocaleDateString(language() === 'zh' ? 'zh-CN' : undefined, { month: 'short', day: 'numeric' });
  return `${date} ${time}`;
}

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

// ------------------------------------------------------------------------------------------------
// Storage helpers (everything is optional: without storage the page still works)
// ------------------------------------------------------------------------------------------------

function load(key, fallback) {
  try {
    const raw = localStorage.getItem(`${STORE}:${key}`);
    return raw == null ? fallback : JSON.parse(raw);
  } catch (_) {
    return fallback;
  }
}

function save(key, value) {
  try {
    if (value == null) localStorage.removeItem(`${STORE}:${key}`);
    else localStorage.setItem(`${STORE}:${key}`, JSON.stringify(value));
  } catch (_) {
    // storage full or disabled: the page just forgets more on reload
  }
}

// ------------------------------------------------------------------------------------------------
// State
// ------------------------------------------------------------------------------------------------

const state = {
  me: null,
  client: null,
  config: { defaultRooms: [] },
  serverRooms: new Map(),
  /** key ('r:ROOM' or 'd:USER') → conversation */
  convs: new Map(),
  active: null,
  names: new Map(),
  status: { status: 'connecting' },
  everDisconnected: false,
  statusTimer: null,
  roomsTimer: null,
};

function userKey(suffix) {
  return `${state.me.userId}:${suffix}`;
}

function newConv(kind, id, title) {
  const list = el('div', { class: 'msg-list' });
  const top = el('div', { class: 'top-note' });
  const pending = el('div', { class: 'pending-zone' });
  list.append(top, pending);
  return {
    key: `${kind === 'room' ? 'r' : 'd'}:${id}`,
    kind,
    id,
    title,
    list,
    top,
    pending,
    unread: 0,
    last: null,
    minSeq: null,
    loading: false,
    historyDone: kind === 'dm',
    historyAsked: false,
    expectDivider: false,
    welcomed: false,
    atBottom: true,
    scrollTop: null,
    newCount: 0,
    online: new Set(),
    members: [],
    num: 0,
    total: 0,
    joined: false,
  };
}

function roomConv(roomId) {
  return state.convs.get(`r:${roomId}`);
}

function dmConv(peer, name) {
  const key = `d:${peer}`;
  let conv = state.convs.get(key);
  if (!conv) {
    conv = newConv('dm', peer, name || nameOf(peer));
    state.convs.set(key, conv);
    const stored = load(userKey(`dm:${peer}`), []);
    for (const m of Array.isArray(stored) ? stored : []) renderMessage(conv, m, { restoring: true });
    saveDmList();
  } else if (name) {
    conv.title = name;
  }
  return conv;
}

function saveRooms() {
  const rooms = [...state.convs.values()].filter((c) => c.kind === 'room').map((c) => ({ id: c.id, name: c.title }));
  save(userKey('rooms'), rooms);
}

function saveDmList() {
  const dms = [...state.convs.values()].filter((c) => c.kind === 'dm').map((c) => ({ id: c.id, name: c.title }));
  save(userKey('dms'), dms);
}

function rememberDm(conv, message) {
  const key = userKey(`dm:${conv.id}`);
  const stored = load(key, []);
  const list = Array.isArray(stored) ? stored : [];
  if (list.some((m) => m.seq === message.seq && m.epoch === message.epoch)) return;
  list.push({ seq: message.seq, epoch: message.epoch, userId: message.userId, userName: message.userName, content: message.content, ts: message.ts, toUserId: message.toUserId });
  save(key, list.slice(-DM_KEEP));
}

// ------------------------------------------------------------------------------------------------
// Toasts
// ------------------------------------------------------------------------------------------------

function toast(text, kind = 'info', action = null) {
  const node = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  if (action) node.append(el('button', { type: 'button', onclick: () => { action.run(); node.remove(); } }, action.label));
  $('toasts').append(node);
  // At most three at once; a toast asking for a decision outlives the plain ones around it.
  const plain = [...$('toasts').children].filter((n) => !n.querySelector('button'));
  while (plain.length > 0 && $('toasts').children.length > 3) plain.shift().remove();
  setTimeout(() => node.remove(), action ? 10000 : 2800);
}

// ------------------------------------------------------------------------------------------------
// i18n of the static page
// ------------------------------------------------------------------------------------------------

function applyLanguage() {
  document.documentElement.lang = language() === 'zh' ? 'zh-CN' : 'en';
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll('[data-i18n-placeholder]')) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of document.querySelectorAll('[data-i18n-title]')) {
    node.title = t(node.dataset.i18nTitle);
    node.setAttribute('aria-label', t(node.dataset.i18nTitle));
  }
  if (window.matchMedia('(max-width: 719px)').matches) $('composer-input').placeholder = t('chat.placeholderShort');
  renderStatus();
  renderSidebar();
  renderHeader();
  for (const conv of state.convs.values()) renderTopNote(conv);
  updateTitle();
}

// ------------------------------------------------------------------------------------------------
// Login screen
// ------------------------------------------------------------------------------------------------

function showLogin() {
  $('app').hidden = true;
  $('login-screen').hidden = false;
  $('nickname').value = '';
  $('nickname').focus();
}

function onLoginSubmit(event) {
  event.preventDefault();
  const name = $('nickname').value.trim();
  const error = $('login-error');
  if (!name) {
    error.textContent = t('login.empty');
  } else if (!validName(name)) {
    error.textContent = t('login.invalid');
  } else {
    error.hidden = true;
    state.me = { userId: idFor(name), userName: name };
    save('me', state.me);
    startChat();
    return;
  }
  error.hidden = false;
  const card = $('login-form');
  card.classList.remove('shake');
  void card.offsetWidth; // restart the animation
  card.classList.add('shake');
  $('nickname').focus();
}

// ------------------------------------------------------------------------------------------------
// Chat
// ------------------------------------------------------------------------------------------------

function startChat() {
  $('login-screen').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = state.me.userName;
  const meAvatar = avatar(state.me.userId, state.me.userName, 'small');
  meAvatar.id = 'me-avatar';
  $('me-avatar').replaceWith(meAvatar);
  state.names.set(state.me.userId, state.me.userName);

  const client = new ChatClient({ userId: state.me.userId, userName: state.me.userName });
  state.client = client;
  window.chatApp = { client, state };
  client.on('status', onStatus);
  client.on('joined', onJoined);
  client.on('message', onMessage);
  client.on('presence', onPresence);
  client.on('pending', ({ post }) => renderPending(post));
  client.on('sent', onSent);
  client.on('failed', ({ post }) => renderPending(post));
  client.on('epoch', onEpoch);
  client.on('error', (e) => {
    if (!e.ref) toast(t('toast.error', { message: e.message || e.code }), 'error');
  });

  for (const dm of load(userKey('dms'), [])) if (dm && typeof dm.id === 'string') dmConv(dm.id, dm.name);
  const rooms = load(userKey('rooms'), []);
  for (const r of Array.isArray(rooms) ? rooms : []) {
    if (r && typeof r.id === 'string' && ID_PATTERN.test(r.id)) joinRoom(r.id, r.name, { open: false, quiet: true });
  }
  client.connect();
  refreshServerRooms();
  clearInterval(state.roomsTimer);
  state.roomsTimer = setInterval(refreshServerRooms, 15000);
  const last = load(userKey('active'), null);
  if (last && state.convs.has(last) && !window.matchMedia('(max-width: 719px)').matches) openConv(last);
  else renderSidebar();
  applyLanguage();
}

function signOut() {
  if (state.client) state.client.close();
  state.client = null;
  clearInterval(state.roomsTimer);
  state.convs.clear();
  state.active = null;
  save('me', null);
  $('messages').replaceChildren();
  $('chat-view').hidden = true;
  $('chat-empty').hidden = false;
  $('app').classList.remove('in-chat');
  showLogin();
}

async function refreshServerRooms() {
  try {
    const response = await fetch('/api/rooms', { cache: 'no-store' });
    if (!response.ok) return;
    const body = await response.json();
    state.serverRooms = new Map((body.rooms || []).map((r) => [String(r.roomId), r]));
    renderSidebar();
  } catch (_) {
    // offline: keep what we had
  }
}

function joinRoom(roomId, roomName, { open = true, quiet = false } = {}) {
  let conv = roomConv(roomId);
  if (!conv) {
    conv = newConv('room', roomId, roomName || displayRoomName(roomId));
    conv.quietJoin = quiet;
    state.convs.set(conv.key, conv);
    saveRooms();
    state.client.join(roomId, { roomName: conv.title }).catch(() => {});
  }
  if (open) openConv(conv.key);
  else renderSidebar();
  return conv;
}

function leaveRoom(conv) {
  state.client.leave(conv.id);
  state.convs.delete(conv.key);
  saveRooms();
  toast(t('toast.left', { room: conv.title }));
  if (state.active === conv.key) closeConv();
  refreshServerRooms();
  renderSidebar();
}

function openConv(key) {
  const conv = state.convs.get(key);
  if (!conv) return;
  const previous = state.convs.get(state.active);
  if (previous) previous.scrollTop = $('messages').scrollTop;
  state.active = key;
  save(userKey('active'), key);
  conv.unread = 0;
  conv.newCount = 0;
  $('chat-empty').hidden = true;
  $('chat-view').hidden = false;
  $('app').classList.add('in-chat');
  $('messages').replaceChildren(conv.list);
  renderTopNote(conv);
  renderHeader();
  renderSidebar();
  updatePill();
  if (conv.atBottom || conv.scrollTop == null) scrollToBottom();
  else $('messages').scrollTop = conv.scrollTop;
  if (conv.kind === 'room' && conv.joined && !conv.historyAsked) loadHistory(conv);
  // The member list belongs to a room; a direct conversation has none.
  if (conv.kind !== 'room') $('members').hidden = true;
  else if (!$('members').hidden) renderMembers();
  if (!window.matchMedia('(max-width: 719px)').matches) $('composer-input').focus();
  updateTitle();
}

function closeConv() {
  const conv = state.convs.get(state.active);
  if (conv) conv.scrollTop = $('messages').scrollTop;
  state.active = null;
  save(userKey('active'), null);
  $('app').classList.remove('in-chat');
  $('chat-view').hidden = true;
  $('chat-empty').hidden = false;
  $('members').hidden = true;
  renderSidebar();
}

function activeConv() {
  return state.convs.get(state.active) || null;
}

// ---- client events ------------------------------------------------------------------------------

function onStatus(s) {
  const wasDown = state.status.status !== 'connected';
  state.status = s;
  if (s.status !== 'connected' && s.status !== 'connecting') state.everDisconnected = true;
  if (s.status === 'connected' && wasDown && state.everDisconnected) toast(t('toast.reconnected'));
  renderStatus();
  clearInterval(state.statusTimer);
  if (s.status === 'reconnecting' && s.retryAt) state.statusTimer = setInterval(renderStatus, 250);
}

function renderStatus() {
  const s = state.status;
  const box = $('status');
  box.dataset.status = s.status;
  let text;
  if (s.status === 'reconnecting' && s.retryAt && s.retryAt > Date.now()) {
    text = t('status.reconnectingIn', { s: Math.max(1, Math.ceil((s.retryAt - Date.now()) / 1000)) });
  } else {
    text = t(`status.${s.status}`) || s.status;
  }
  $('status-text').textContent = text;
  $('status-retry').hidden = !(s.status === 'reconnecting' || s.status === 'offline');
}

function onJoined(j) {
  const conv = roomConv(j.roomId);
  if (!conv) return;
  const first = !conv.joined && !conv.everJoined;
  conv.joined = true;
  conv.everJoined = true;
  conv.title = j.roomName || conv.title;
  conv.num = j.num;
  conv.total = j.total;
  conv.online.add(state.me.userId);
  if (!j.recovered) markGap(conv);
  if (j.replayed > 0) {
    conv.expectDivider = true;
    const old = conv.list.querySelector('.divider-new');
    if (old) old.remove();
  }
  if (first && !conv.quietJoin) toast(t('toast.joined', { room: conv.title }));
  if (first && !conv.last && j.head > 0) loadPreview(conv);
  saveRooms();
  if (!conv.historyAsked) {
    // Everything from here on arrives as replay or live traffic; history pages back from here.
    conv.historyBefore = j.head - j.replayed + 1;
    if (state.active === conv.key) loadHistory(conv);
  }
  if (state.active === conv.key) renderHeader();
  renderSidebar();
  if (!$('members').hidden && state.active === conv.key) renderMembers();
}

/**
 * Marks where messages are missing for good: the server's history no longer reaches back to what
 * this page had (it was away longer than the room's history lasts). The replay that follows goes
 * below the mark.
 */
function markGap(conv) {
  const last = conv.pending.previousElementSibling;
  if (last && last.classList.contains('divider-gap')) return;
  const mark = el('div', { class: 'divider-gap', role: 'separator' }, t('chat.gap'));
  conv.list.insertBefore(mark, conv.pending);
}

function onMessage({ message, direct, own, peer }) {
  let conv;
  if (direct) {
    const name = own ? nameOf(peer) : message.userName;
    conv = dmConv(peer, own ? null : name);
    rememberDm(conv, message);
  } else {
    conv = roomConv(message.roomId);
  }
  if (!conv) return;
  state.names.set(String(message.userId), message.userName);
  // Whoever posts live is online right now (the protocol lists counts, not names).
  if (!direct && !message.replay) conv.online.add(String(message.userId));
  const node = renderMessage(conv, message, { live: true });
  if (!node) return;
  conv.last = message;
  const isActive = state.active === conv.key;
  if (!own && (!isActive || document.hidden)) conv.unread += 1;
  if (isActive) {
    if (conv.atBottom || own) scrollToBottom();
    else {
      conv.newCount += 1;
      updatePill();
    }
  }
  renderSidebar();
  updateTitle();
}

function onSent({ clientMsgId }) {
  // Normally the message itself (with its seq) has already replaced the pending bubble; if not
  // (e.g. a direct message to oneself), just mark it delivered.
  for (const conv of state.convs.values()) {
    const node = conv.pending.querySelector(`[data-cmid="${CSS.escape(clientMsgId)}"]`);
    if (node) {
      node.classList.remove('pending', 'failed');
      const stateNode = node.querySelector('.state');
      if (stateNode) stateNode.remove();
    }
  }
}

function onPresence(p) {
  const conv = roomConv(p.roomId);
  if (!conv) return;
  conv.num = p.num;
  conv.total = p.total;
  if (p.userName) state.names.set(p.userId, p.userName);
  const name = p.userName || p.userId;
  if (p.kind === 'online') {
    conv.online.add(p.userId);
    if (!(p.self && conv.welcomed)) addSystem(conv, t('sys.welcome', { name, room: conv.title }));
    if (p.self) conv.welcomed = true;
  } else {
    conv.online.delete(p.userId);
    if (!p.self) addSystem(conv, t(p.kind === 'left' ? 'sys.left' : 'sys.offline', { name }));
  }
  if (state.active === conv.key) renderHeader();
  renderSidebar();
  if (!$('members').hidden && state.active === conv.key) renderMembers();
}

function onEpoch({ roomId, direct }) {
  if (direct) return;
  const conv = roomConv(roomId);
  if (!conv) return;
  // Seqs of the new log start again at 1: the old messages stay on screen, but are no longer
  // ordered against the new ones.
  for (const node of conv.list.querySelectorAll('[data-seq]')) {
    node.dataset.oldSeq = node.dataset.seq;
    delete node.dataset.seq;
  }
  conv.minSeq = null;
  conv.historyDone = true;
  addSystem(conv, t('chat.historyReset'));
}

// ---- rendering messages -------------------------------------------------------------------------

function addSystem(conv, text) {
  const node = el('div', { class: 'sys' }, text);
  conv.list.insertBefore(node, conv.pending);
  if (state.active === conv.key && conv.atBottom) scrollToBottom();
}

function messageNode(conv, m) {
  const own = String(m.userId) === state.me.userId;
  const ts = m.ts || Date.now();
  const meta = el('span', { class: 'meta' }, el('time', { datetime: new Date(ts).toISOString(), title: new Date(ts).toLocaleString() }, formatTime(ts)));
  const node = el('div', {
    class: `msg${own ? ' own' : ''}`,
    dataset: { user: String(m.userId), ts: String(ts) },
  },
  avatar(String(m.userId), m.userName),
  el('div', { class: 'bubble-wrap' },
    el('div', { class: 'author' }, m.userName || String(m.userId)),
    el('div', { class: 'bubble' }, el('span', { class: 'text' }, m.content), meta)));
  if (m.seq != null) node.dataset.seq = String(m.seq);
  return node;
}

function regroup(node) {
  if (!node || !node.classList || !node.classList.contains('msg')) return;
  const prev = node.previousElementSibling;
  const same = prev && prev.classList.contains('msg') && prev.dataset.user === node.dataset.user
    && Math.abs(Number(node.dataset.ts) - Number(prev.dataset.ts)) < GROUP_WINDOW_MS;
  node.classList.toggle('cont', Boolean(same));
}

/** Inserts a confirmed message in seq order; returns its node, or null for a duplicate. */
function renderMessage(conv, m, { live = false, restoring = false } = {}) {
  if (m.seq != null && conv.list.querySelector(`[data-seq="${Number(m.seq)}"]`)) return null;
  // Our own post: the pending bubble becomes the real message.
  if (m.clientMsgId) {
    const pending = conv.pending.querySelector(`[data-cmid="${CSS.escape(m.clientMsgId)}"]`);
    if (pending) pending.remove();
  }
  const node = messageNode(conv, m);
  if (live && m.replay && conv.expectDivider) {
    conv.expectDivider = false;
    const divider = el('div', { class: 'divider-new', role: 'separator' }, t('chat.newSinceLeft'));
    conv.list.insertBefore(divider, conv.pending);
  }
  // Find the first message with a larger seq; live messages almost always go last. A history
  // page is older than everything shown, so with nothing larger it goes to the top (above system
  // lines that arrived while it loaded).
  let before = live || restoring ? conv.pending : (conv.top.nextSibling || conv.pending);
  if (m.seq != null && !restoring) {
    const seq = Number(m.seq);
    const nodes = conv.list.querySelectorAll('[data-seq]');
    for (let i = nodes.length - 1; i >= 0; i--) {
      if (Number(nodes[i].dataset.seq) < seq) break;
      before = nodes[i];
    }
    if (conv.minSeq == null || seq < conv.minSeq) conv.minSeq = seq;
    // Older than the first message under "new since you left": it belongs above the divider.
    const prev = before.previousElementSibling;
    if (before !== conv.pending && prev && prev.classList.contains('divider-new')) before = prev;
  }
  conv.list.insertBefore(node, before);
  regroup(node);
  regroup(node.nextElementSibling);
  return node;
}

function renderPending(post) {
  const conv = post.roomId ? roomConv(post.roomId) : dmConv(post.toUserId);
  if (!conv) return;
  let node = conv.pending.querySelector(`[data-cmid="${CSS.escape(post.clientMsgId)}"]`);
  if (!node) {
    node = messageNode(conv, { userId: state.me.userId, userName: state.me.userName, content: post.content, ts: post.createdAt });
    node.dataset.cmid = post.clientMsgId;
    conv.pending.append(node);
  }
  node.classList.toggle('pending', post.state === 'pending');
  node.classList.toggle('failed', post.state === 'failed');
  const meta = node.querySelector('.meta');
  for (const old of meta.querySelectorAll('.state, .retry')) old.remove();
  if (post.state === 'pending') {
    meta.append(el('span', { class: 'state' }, t('chat.pending')));
  } else if (post.state === 'failed') {
    meta.append(el('span', { class: 'state' }, t('chat.failed')));
    meta.append(el('button', { type: 'button', class: 'retry', onclick: () => state.client.retry(post.clientMsgId) }, t('chat.retry')));
  }
  if (state.active === conv.key) scrollToBottom();
}

function renderTopNote(conv) {
  if (conv.kind === 'dm') conv.top.textContent = t('dm.subtitle');
  else if (conv.loading) conv.top.textContent = t('chat.loadingEarlier');
  else if (conv.historyDone) conv.top.textContent = t('chat.beginning', { room: conv.title });
  else conv.top.textContent = '';
}

/** The latest message of a room not opened yet, for its card (read-only HTTP, no acks). */
async function loadPreview(conv) {
  try {
    const response = await fetch(`/api/rooms/${encodeURIComponent(conv.id)}/messages?limit=1`, { cache: 'no-store' });
    if (!response.ok) return;
    const body = await response.json();
    const m = Array.isArray(body.messages) ? body.messages[0] : null;
    if (m && !conv.last && typeof m.content === 'string') {
      conv.last = m;
      renderSidebar();
    }
  } catch (_) {
    // no preview; the card shows the online count
  }
}

async function loadHistory(conv, before) {
  if (conv.loading || conv.historyDone || conv.kind !== 'room' || !conv.joined) return;
  conv.historyAsked = true;
  const from = before ?? conv.minSeq ?? conv.historyBefore;
  if (from != null && from <= 1) {
    conv.historyDone = true;
    renderTopNote(conv);
    return;
  }
  conv.loading = true;
  renderTopNote(conv);
  const box = $('messages');
  try {
    const page = await state.client.history(conv.id, { before: from ?? undefined, limit: HISTORY_PAGE });
    const isActive = state.active === conv.key;
    const oldHeight = box.scrollHeight;
    const oldTop = box.scrollTop;
    for (const m of page.messages.slice().reverse()) {
      state.names.set(String(m.userId), m.userName);
      renderMessage(conv, m);
    }
    if (page.messages.length < HISTORY_PAGE || (page.messages[0] && page.messages[0].seq <= 1)) conv.historyDone = true;
    if (page.messages.length && !conv.last) conv.last = page.messages[page.messages.length - 1];
    if (isActive) {
      if (conv.atBottom && from === conv.historyBefore) scrollToBottom();
      else box.scrollTop = oldTop + (box.scrollHeight - oldHeight);
    }
  } catch (_) {
    conv.historyAsked = false; // try again after the reconnect
  } finally {
    conv.loading = false;
    renderTopNote(conv);
    renderSidebar();
  }
}

// ---- scrolling ----------------------------------------------------------------------------------

function scrollToBottom() {
  const box = $('messages');
  box.scrollTop = box.scrollHeight;
  const conv = activeConv();
  if (conv) {
    conv.atBottom = true;
    conv.newCount = 0;
  }
  updatePill();
}

function onScroll() {
  const conv = activeConv();
  if (!conv) return;
  const box = $('messages');
  conv.atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  if (conv.atBottom) conv.newCount = 0;
  updatePill();
  if (box.scrollTop < 80 && !conv.historyDone) loadHistory(conv);
}

function updatePill() {
  const conv = activeConv();
  $('new-pill').hidden = !conv || conv.atBottom || conv.newCount === 0;
}

// ---- header, sidebar, members -------------------------------------------------------------------

function renderHeader() {
  const conv = activeConv();
  if (!conv || !state.me) return;
  $('chat-you').textContent = t('chat.you', { name: state.me.userName });
  if (conv.kind === 'room') {
    $('chat-name').textContent = conv.title;
    $('online-count').textContent = `${t('rooms.online', { n: conv.num })} · ${t('rooms.members', { n: conv.total })}`;
    $('online-count').classList.remove('plain');
    $('leave').hidden = false;
    $('members-toggle').hidden = false;
  } else {
    $('chat-name').textContent = t('dm.with', { name: conv.title });
    $('online-count').textContent = t('dm.subtitle');
    $('online-count').classList.add('plain');
    $('leave').hidden = true;
    $('members-toggle').hidden = true;
  }
}

function lastLine(conv) {
  const m = conv.last;
  if (!m) return null;
  const who = String(m.userId) === state.me.userId ? state.me.userName : m.userName;
  return `${who}: ${m.content.replace(/\s+/g, ' ')}`;
}

function roomCard(conv) {
  const sub = lastLine(conv) || (conv.joined ? t('rooms.online', { n: conv.num }) : t('rooms.noMessages'));
  return el('li', {},
    el('button', {
      type: 'button',
      class: `card${state.active === conv.key ? ' active' : ''}`,
      dataset: { room: conv.id, key: conv.key },
      onclick: () => openConv(conv.key),
    },
    avatar(conv.id, conv.title, 'room'),
    el('span', { class: 'card-main' },
      el('span', { class: 'card-title' }, el('span', { class: 'name' }, conv.title)),
      el('span', { class: 'card-sub' }, sub)),
    conv.unread > 0 ? el('span', { class: 'badge', 'aria-label': `${conv.unread} unread` }, conv.unread > 99 ? '99+' : String(conv.unread)) : null));
}

function renderSidebar() {
  if (!state.me) return;
  const rooms = [...state.convs.values()].filter((c) => c.kind === 'room');
  $('room-list').replaceChildren(...rooms.map(roomCard));
  $('rooms-title').hidden = rooms.length === 0;
  const suggested = state.config.defaultRooms.filter((id) => !roomConv(id));
  $('suggested-title').hidden = suggested.length === 0;
  $('suggested-list').replaceChildren(...suggested.map((id) => {
    const s = state.serverRooms.get(id);
    const name = displayRoomName(id);
    const sub = s && s.total > 0 ? `${t('rooms.online', { n: s.num })} · ${t('rooms.members', { n: s.total })}` : t('rooms.fresh');
    return el('li', {},
      el('button', { type: 'button', class: 'card suggested', dataset: { room: id }, onclick: () => joinRoom(id, name) },
        avatar(id, name, 'room'),
        el('span', { class: 'card-main' },
          el('span', { class: 'card-title' }, el('span', { class: 'name' }, name)),
          el('span', { class: 'card-sub' }, sub)),
        el('span', { class: 'join-chip' }, t('rooms.join'))));
  }));
  const dms = [...state.convs.values()].filter((c) => c.kind === 'dm');
  $('dm-list').replaceChildren(...dms.map(roomCard));
  $('dm-none').hidden = dms.length > 0;
}

async function renderMembers() {
  const conv = activeConv();
  if (!conv || conv.kind !== 'room') return;
  let members = conv.members;
  try {
    const response = await fetch(`/api/rooms/${encodeURIComponent(conv.id)}/members`, { cache: 'no-store' });
    if (response.ok) {
      const body = await response.json();
      members = (body.members || []).map(String);
      conv.members = members;
      // Who is online right now, on any gateway; notices keep it current while the list is open.
      if (Array.isArray(body.online)) conv.online = new Set(body.online.map(String));
    }
  } catch (_) {
    // keep the last list
  }
  if (state.active !== conv.key) return;
  const online = [...conv.online];
  const others = members.filter((id) => !conv.online.has(id));
  const row = (id, isOnline) => {
    const name = nameOf(id);
    const self = id === state.me.userId;
    return el('li', { class: `member${isOnline ? ' online' : ' offline'}`, dataset: { user: id } },
      avatar(id, name, `small${isOnline ? ' online' : ''}`),
      el('span', { class: 'name' }, name, self ? ` ${t('members.you')}` : ''),
      self ? null : el('button', { type: 'button', class: 'dm', onclick: () => openDm(id, name) }, t('members.message')));
  };
  const items = [el('li', { class: 'group' }, `${t('members.online')} — ${conv.num}`), ...online.map((id) => row(id, true))];
  const unseen = conv.num - online.length;
  if (unseen > 0) items.push(el('li', { class: 'more' }, t('members.moreOnline', { n: unseen })));
  if (others.length) items.push(el('li', { class: 'group' }, t('members.others')), ...others.map((id) => row(id, false)));
  $('member-list').replaceChildren(...items);
}

function openDm(userId, name) {
  const conv = dmConv(userId, name);
  if (window.matchMedia('(max-width: 899px)').matches) $('members').hidden = true;
  openConv(conv.key);
}

function updateTitle() {
  const unread = [...state.convs.values()].reduce((n, c) => n + c.unread, 0);
  document.title = unread > 0 ? `(${unread}) ${t('app.title')}` : t('app.title');
}

// ---- composer -----------------------------------------------------------------------------------

function submitComposer(event) {
  if (event) event.preventDefault();
  const conv = activeConv();
  const input = $('composer-input');
  if (!conv) return;
  const text = input.value;
  if (text.trim().length === 0) {
    toast(t('chat.emptyMessage'), 'warn');
    input.classList.remove('shake');
    void input.offsetWidth;
    input.classList.add('shake');
    input.focus();
    return;
  }
  if (utf8Length(text) > MAX_CONTENT_BYTES) {
    toast(t('chat.tooLong'), 'warn');
    return;
  }
  if (conv.kind === 'room') state.client.send(conv.id, text);
  else state.client.sendDirect(conv.id, text);
  input.value = '';
  autosize();
  input.focus();
  scrollToBottom();
}

function autosize() {
  const input = $('composer-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight + 2, 140)}px`;
}

// ------------------------------------------------------------------------------------------------
// Wiring
// ------------------------------------------------------------------------------------------------

function wire() {
  $('login-form').addEventListener('submit', onLoginSubmit);
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('join-input').value.trim();
    if (!text) {
      toast(t('rooms.invalid'), 'warn');
      return;
    }
    if (!validName(text) && !ID_PATTERN.test(text)) {
      toast(t('rooms.invalid'), 'warn');
      return;
    }
    const id = idFor(text);
    const known = state.serverRooms.get(id);
    joinRoom(id, known ? known.roomName : text);
    $('join-input').value = '';
  });
  $('composer').addEventListener('submit', submitComposer);
  $('composer-input').addEventListener('keydown', (event) => {
    // While an input method (Chinese, Japanese…) is composing, Enter picks a candidate.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      submitComposer();
    }
  });
  $('composer-input').addEventListener('input', autosize);
  $('messages').addEventListener('scroll', onScroll, { passive: true });
  $('new-pill').addEventListener('click', scrollToBottom);
  $('back').addEventListener('click', closeConv);
  $('leave').addEventListener('click', () => {
    const conv = activeConv();
    if (conv && conv.kind === 'room') {
      toast(t('toast.leaveConfirm', { room: conv.title }), 'warn', { label: t('chat.leave'), run: () => leaveRoom(conv) });
    }
  });
  $('members-toggle').addEventListener('click', () => {
    $('members').hidden = !$('members').hidden;
    if (!$('members').hidden) renderMembers();
  });
  $('members-close').addEventListener('click', () => { $('members').hidden = true; });
  // On narrow screens the member list covers the chat: a tap on the chat beside it closes it.
  $('chat').addEventListener('click', (event) => {
    if (!$('members').hidden && window.matchMedia('(max-width: 899px)').matches && !event.target.closest('#members-toggle')) {
      $('members').hidden = true;
    }
  });
  $('status-retry').addEventListener('click', () => state.client && state.client.reconnectNow());
  $('sign-out').addEventListener('click', signOut);
  for (const button of document.querySelectorAll('.lang-toggle')) {
    button.addEventListener('click', () => {
      setLanguage(language() === 'zh' ? 'en' : 'zh');
      applyLanguage();
    });
  }
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !$('members').hidden) $('members').hidden = true;
  });
  document.addEventListener('visibilitychange', () => {
    const conv = activeConv();
    if (!document.hidden && conv) {
      conv.unread = 0;
      renderSidebar();
      updateTitle();
    }
  });
}

async function main() {
  wire();
  try {
    const response = await fetch('/api/web-config', { cache: 'no-store' });
    if (response.ok) {
      const body = await response.json();
      if (Array.isArray(body.defaultRooms)) state.config.defaultRooms = body.defaultRooms.map(String).filter((id) => ID_PATTERN.test(id));
    }
  } catch (_) {
    // the page still works without suggestions
  }
  const me = load('me', null);
  if (me && typeof me.userId === 'string' && ID_PATTERN.test(me.userId) && typeof me.userName === 'string' && validName(me.userName)) {
    state.me = me;
    startChat();
  } else {
    applyLanguage();
    showLogin();
  }
}

main();
