// i18n.js — the page's UI text in English and Chinese. The language follows the browser
// (navigator.languages) until the user picks one; the choice is kept in localStorage.
//
// Only UI strings live here. Nothing a user typed ever goes through these templates' HTML: the page
// puts every string into the DOM with textContent.

const STRINGS = {
  en: {
    'app.title': 'Chat',
    'app.tagline': 'Rooms, direct messages, and your history — right here in the browser.',
    'login.label': 'Your nickname',
    'login.placeholder': 'e.g. Alice',
    'login.enter': 'Start chatting',
    'login.empty': 'Please enter a nickname.',
    'login.invalid': 'Nicknames are 1–32 characters, without control characters.',
    'login.hint': 'No sign-up: the same nickname brings back your rooms and missed messages.',
    'status.connecting': 'Connecting…',
    'status.connected': 'Connected',
    'status.reconnecting': 'Reconnecting…',
    'status.reconnectingIn': 'Reconnecting in {s} s',
    'status.offline': 'Offline',
    'status.closed': 'Disconnected',
    'status.retryNow': 'Retry now',
    'rooms.title': 'Rooms',
    'rooms.suggested': 'Suggested',
    'rooms.online': '{n} online',
    'rooms.members': '{n} members',
    'rooms.members.one': '{n} member',
    'rooms.join': 'Join',
    'rooms.joinPlaceholder': 'Room name',
    'rooms.joinButton': 'Join or create',
    'rooms.invalid': 'Room names: letters, digits, _ . : - (up to 64).',
    'rooms.noMessages': 'No messages yet',
    'rooms.fresh': 'Nobody here yet — be the first',
    'dm.title': 'Direct messages',
    'dm.none': 'Pick someone in a room’s member list to write to them.',
    'dm.with': 'Direct · {name}',
    'dm.subtitle': 'Only you two see this conversation',
    'chat.empty': 'Pick a room on the left, or create one.',
    'chat.you': 'you: {name}',
    'chat.back': 'Back',
    'chat.leave': 'Leave',
    'chat.members': 'Members',
    'chat.placeholder': 'Write a message…  (Enter to send, Shift+Enter for a new line)',
    'chat.placeholderShort': 'Message',
    'chat.send': 'Send',
    'chat.emptyMessage': 'A message cannot be empty.',
    'chat.tooLong': 'That message is too long.',
    'chat.newSinceLeft': 'New since you left',
    'chat.gap': 'Some messages you missed are no longer kept',
    'chat.newMessages': 'New messages',
    'chat.loadingEarlier': 'Loading earlier messages…',
    'chat.beginning': 'This is the beginning of {room}.',
    'chat.pending': 'sending…',
    'chat.failed': 'not sent',
    'chat.retry': 'Retry',
    'chat.historyReset': 'The room’s history was reset on the server.',
    'sys.welcome': 'Welcome {name} to {room}',
    'sys.offline': '{name} went offline',
    'sys.left': '{name} left',
    'members.online': 'Online',
    'members.others': 'Members',
    'members.moreOnline': '+{n} more online',
    'members.you': '(you)',
    'members.message': 'Message',
    'toast.joined': 'Joined {room}',
    'toast.left': 'Left {room}',
    'toast.leaveConfirm': 'Leave {room}? You will stop receiving its messages.',
    'toast.error': 'Server: {message}',
    'toast.reconnected': 'Back online',
    'menu.signOut': 'Change nickname',
    'menu.language': '中文',
  },
  zh: {
    'app.title': '聊天室',
    'app.tagline': '多房间、私信和历史消息——就在浏览器里。',
    'login.label': '你的昵称',
    'login.placeholder': '例如：小明',
    'login.enter': '开始聊天',
    'login.empty': '请输入昵称。',
    'login.invalid': '昵称为 1–32 个字符，不能包含控制字符。',
    'login.hint': '无需注册：使用同一个昵称即可找回你的房间和未读消息。',
    'status.connecting': '正在连接…',
    'status.connected': '已连接',
    'status.reconnecting': '正在重连…',
    'status.reconnectingIn': '{s} 秒后重连',
    'status.offline': '离线',
    'status.closed': '已断开',
    'status.retryNow': '立即重试',
    'rooms.title': '房间',
    'rooms.suggested': '推荐房间',
    'rooms.online': '{n} 人在线',
    'rooms.members': '{n} 位成员',
    'rooms.join': '加入',
    'rooms.joinPlaceholder': '房间名',
    'rooms.joinButton': '加入或创建',
    'rooms.invalid': '房间名只能包含字母、数字和 _ . : -（最多 64 个）。',
    'rooms.noMessages': '还没有消息',
    'rooms.fresh': '还没有人，来做第一个吧',
    'dm.title': '私信',
    'dm.none': '在房间成员列表中选择一个人即可发私信。',
    'dm.with': '私信 · {name}',
    'dm.subtitle': '只有你们两人能看到这段对话',
    'chat.empty': '在左侧选择一个房间，或创建一个新房间。',
    'chat.you': '我：{name}',
    'chat.back': '返回',
    'chat.leave': '退出房间',
    'chat.members': '成员',
    'chat.placeholder': '输入消息…（回车发送，Shift+回车换行）',
    'chat.placeholderShort': '输入消息',
    'chat.send': '发送',
    'chat.emptyMessage': '消息不能为空。',
    'chat.tooLong': '消息太长了。',
    'chat.newSinceLeft': '以下是你离开后的新消息',
    'chat.gap': '部分错过的消息已不再保存',
    'chat.newMessages': '有新消息',
    'chat.loadingEarlier': '正在加载更早的消息…',
    'chat.beginning': '这是 {room} 的开始。',
    'chat.pending': '发送中…',
    'chat.failed': '未发送',
    'chat.retry': '重试',
    'chat.historyReset': '服务器上的房间历史已被重置。',
    'sys.welcome': '欢迎 {name} 加入 {room}',
    'sys.offline': '{name} 已离线',
    'sys.left': '{name} 离开了房间',
    'members.online': '在线',
    'members.others': '成员',
    'members.moreOnline': '另有 {n} 人在线',
    'members.you': '（我）',
    'members.message': '私信',
    'toast.joined': '已加入 {room}',
    'toast.left': '已退出 {room}',
    'toast.leaveConfirm': '确定退出 {room}？退出后将不再收到它的消息。',
    'toast.error': '服务器：{message}',
    'toast.reconnected': '已重新连接',
    'menu.signOut': '更换昵称',
    'menu.language': 'English',
  },
};

const KEY = 'chat:v1:lang';

/** The languages the UI has. */
export const LANGUAGES = Object.keys(STRINGS);

function detect() {
  try {
    const stored = globalThis.localStorage && localStorage.getItem(KEY);
    if (stored && STRINGS[stored]) return stored;
  } catch (_) {
    // no storage: follow the browser
  }
  const prefs = (globalThis.navigator && (navigator.languages || [navigator.language])) || [];
  for (const tag of prefs) {
    const base = String(tag || '').toLowerCase().split('-')[0];
    if (STRINGS[base]) return base;
  }
  return 'en';
}

let current = detect();

/** The current language code ("en" or "zh"). */
export function language() {
  return current;
}

/** Switches the language and remembers the choice. */
export function setLanguage(lang) {
  if (!STRINGS[lang]) return;
  current = lang;
  try {
    localStorage.setItem(KEY, lang);
  } catch (_) {
    // not remembered; fine
  }
}

/** The text for `key`, with `{name}` placeholders filled from `params` (as plain text). */
export function t(key, params = {}) {
  // English needs a singular form for counts of one; Chinese does not, so it has no `.one` keys.
  const singular = params.n === 1 && STRINGS[current][`${key}.one`];
  const template = singular || (STRINGS[current][key] ?? STRINGS.en[key] ?? key);
  return template.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}
