//! The embedded backend: one node, everything in process memory, nothing survives a restart.
//!
//! It implements the same contract as the Redis backend, so the gateway's session and hub code is
//! exercised identically in both modes. One `tokio::sync::Mutex` guards all state; a post assigns
//! its seq and queues its broker event while holding it, so events leave in seq order exactly as
//! Redis pub/sub delivers them in publish order.
//!
//! Everything a client can make it hold is bounded (docs/security.md, "Memory"): the number of
//! rooms and inboxes (`limits.max_rooms`, `limits.max_inboxes`; creating one more fails with
//! [`BackendError::Full`]), the bytes of each log and of all logs together
//! (`history.max_bytes_per_room`, `history.max_bytes_total`: the oldest messages go first), and
//! how long unused state lives. A room nobody is in with an empty log is dropped at once; a room
//! nobody is online in, and an inbox whose owner is not connected, are dropped after
//! `retention` (`offline.ttl_secs`) without activity, the same rule as the Redis keys' TTLs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chat_protocol::{ChatMessage, RoomId, ServerFrame, UserId};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::{
    Backend, BackendError, Broker, BrokerEvent, Channel, Counts, Departed, DirectPosted, Draft,
    EVENT_QUEUE, Head, JoinOutcome, JoinRequest, LeaveOutcome, Limit, Notice, Position, Posted,
    PresenceEntry, Reaped, Refreshed, Result, RoomSummary, Store, StreamKey,
};

/// Settings of the embedded backend. The gateway fills them from its settings, whose defaults
/// live only in `config/default.toml`.
#[derive(Debug, Clone, Copy)]
pub struct MemoryConfig {
    /// Messages kept per room log and per inbox (`history.per_room`).
    pub history_per_room: usize,
    /// Bytes kept per room log and per inbox (`history.max_bytes_per_room`), counted as
    /// [`message_bytes`]. The oldest messages go first.
    pub history_bytes_per_room: usize,
    /// Bytes kept in all logs together (`history.max_bytes_total`); over it the oldest messages
    /// of any log go first.
    pub history_bytes_total: usize,
    /// Rooms held at once (`limits.max_rooms`): creating one more fails with
    /// [`BackendError::Full`] after unused rooms have been dropped.
    pub max_rooms: usize,
    /// Direct-message inboxes held at once (`limits.max_inboxes`), likewise.
    pub max_inboxes: usize,
    /// A room nobody is online in, or an inbox whose owner is not connected, is dropped after
    /// this long without activity (`offline.ttl_secs`: by then nothing would be replayed anyway).
    pub retention: Duration,
}

impl MemoryConfig {
    /// `history_per_room` messages per log, every other bound out of the way: for tests that are
    /// about something else.
    pub fn unbounded(history_per_room: usize) -> Self {
        MemoryConfig {
            history_per_room,
            history_bytes_per_room: usize::MAX,
            history_bytes_total: usize::MAX,
            max_rooms: usize::MAX,
            max_inboxes: usize::MAX,
            retention: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// What a message counts for against the byte caps: its text (content, names, ids, epoch) plus a
/// fixed overhead for its bookkeeping (the log slot, its retry id and its place in the eviction
/// order). An estimate of the heap it holds, cheap to compute and the same on every call.
pub fn message_bytes(message: &ChatMessage) -> usize {
    const OVERHEAD: usize = 192;
    OVERHEAD
        + message.content.len()
        + message.user_name.len()
        + message.user_id.as_str().len()
        + message.epoch.len()
        + message.client_msg_id.as_ref().map_or(0, |c| 2 * c.len())
        + message.room_id.as_ref().map_or(0, |r| r.as_str().len())
        + message.to_user_id.as_ref().map_or(0, |u| u.as_str().len())
}

/// What the embedded backend holds right now, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Rooms held.
    pub rooms: usize,
    /// Direct-message inboxes held.
    pub inboxes: usize,
    /// Read cursors held.
    pub cursors: usize,
    /// Messages in all logs.
    pub messages: usize,
    /// Their bytes, counted as [`message_bytes`].
    pub bytes: usize,
}

/// Opens an empty in-memory backend. Inside a tokio runtime it also starts the sweep that drops
/// unused rooms and inboxes (it stops when the backend is dropped).
pub fn open(config: MemoryConfig) -> Backend {
    open_with_usage(config).0
}

/// [`open`], with a handle that reports what the backend holds ([`UsageProbe::usage`]).
pub fn open_with_usage(config: MemoryConfig) -> (Backend, UsageProbe) {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(State::default()),
        events: tx,
    });
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(sweep_loop(Arc::downgrade(&shared)));
    }
    let probe = UsageProbe {
        shared: Arc::downgrade(&shared),
    };
    let backend = Backend {
        store: shared.clone(),
        broker: shared,
        events: rx,
        kind: "memory",
    };
    (backend, probe)
}

/// Reads what an embedded backend holds ([`open_with_usage`]).
#[derive(Clone)]
pub struct UsageProbe {
    shared: Weak<Shared>,
}

impl UsageProbe {
    /// The current usage (all zero once the backend is gone).
    pub async fn usage(&self) -> Usage {
        match self.shared.upgrade() {
            Some(shared) => shared.state.lock().await.usage(),
            None => Usage::default(),
        }
    }

    /// Drops unused rooms and inboxes now, as the periodic sweep does.
    pub async fn sweep(&self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut state = shared.state.lock().await;
            state.sweep(shared.config.retention);
        }
    }
}

/// How often the sweep runs: a quarter of the retention, between 1 s and 60 s, so idle state lives
/// at most a little longer than the retention.
fn sweep_interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

async fn sweep_loop(shared: Weak<Shared>) {
    let Some(retention) = shared.upgrade().map(|s| s.config.retention) else {
        return;
    };
    let mut tick = tokio::time::interval(sweep_interval(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.state.lock().await;
        state.sweep(retention);
    }
}

struct Shared {
    config: MemoryConfig,
    state: Mutex<State>,
    events: mpsc::Sender<BrokerEvent>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomId, Room>,
    inboxes: HashMap<UserId, Log>,
    cursors: HashMap<(UserId, StreamKey), Position>,
    subscribed: HashSet<Channel>,
    /// The highest presence seq of any dropped room: a room created (again) starts above it, so a
    /// room id never hands out a presence seq lower than one it already reported.
    presence_floor: u64,
    /// Every stored message in append order, as (log, epoch, seq): the oldest one goes first when
    /// all logs together exceed `history_bytes_total`. Entries of messages already gone (trimmed
    /// by their own log's caps, or their log dropped) are skipped, and compacted away when they
    /// outnumber the live ones.
    order: VecDeque<(StreamKey, String, u64)>,
    /// Messages in all logs, and their bytes ([`message_bytes`]).
    messages: usize,
    bytes: usize,
}

/// Messages and bytes that left a log.
#[derive(Default)]
struct Freed {
    messages: usize,
    bytes: usize,
}

impl State {
    fn usage(&self) -> Usage {
        Usage {
            rooms: self.rooms.len(),
            inboxes: self.inboxes.len(),
            cursors: self.cursors.len(),
            messages: self.messages,
            bytes: self.bytes,
        }
    }

    fn log_mut(&mut self, stream: &StreamKey) -> Option<&mut Log> {
        match stream {
            StreamKey::Room(id) => self.rooms.get_mut(id).map(|r| &mut r.log),
            StreamKey::Inbox(owner) => self.inboxes.get_mut(owner),
        }
    }

    fn forget(&mut self, freed: Freed) {
        self.messages = self.messages.saturating_sub(freed.messages);
        self.bytes = self.bytes.saturating_sub(freed.bytes);
    }

    /// The room, created if it does not exist and `limits.max_rooms` allows one more (after
    /// dropping unused rooms, if it would not).
    fn room_entry(&mut self, id: &RoomId, config: &MemoryConfig) -> Result<&mut Room> {
        if !self.rooms.contains_key(id) {
            if self.rooms.len() >= config.max_rooms {
                self.sweep(config.retention);
            }
            if self.rooms.len() >= config.max_rooms {
                return Err(BackendError::Full(Limit::Rooms));
            }
            let room = Room::new(id, self.presence_floor);
            self.rooms.insert(id.clone(), room);
        }
        self.rooms
            .get_mut(id)
            .ok_or_else(|| BackendError::Corrupt("a room vanished under the lock".into()))
    }

    /// Appends to an existing log, trims it to its own caps and then all logs to the total.
    fn append(
        &mut self,
        stream: &StreamKey,
        message: ChatMessage,
        config: &MemoryConfig,
    ) -> Result<ChatMessage> {
        let log = self
            .log_mut(stream)
            .ok_or_else(|| BackendError::Corrupt("append to a log that does not exist".into()))?;
        let (stored, freed) = log.append(
            message,
            config.history_per_room,
            config.history_bytes_per_room,
        );
        self.messages += 1;
        self.bytes += message_bytes(&stored);
        self.forget(freed);
        self.order
            .push_back((stream.clone(), stored.epoch.clone(), stored.seq));
        self.evict_over(config.history_bytes_total);
        Ok(stored)
    }

    /// Drops the oldest messages of any log while all logs together hold more than `budget`.
    fn evict_over(&mut self, budget: usize) {
        while self.bytes > budget {
            let Some((stream, epoch, seq)) = self.order.pop_front() else {
                break;
            };
            let freed = match self.log_mut(&stream) {
                // The order entry of a live message is always its log's oldest: logs only ever
                // lose messages from the front, in seq order, which is also append order.
                Some(log)
                    if log.epoch == epoch && log.entries.front().is_some_and(|m| m.seq == seq) =>
                {
                    log.pop_oldest()
                }
                _ => Freed::default(),
            };
            self.forget(freed);
        }
        if self.order.len() > 2 * self.messages + 1024 {
            let order = std::mem::take(&mut self.order);
            let live: VecDeque<_> = order
                .into_iter()
                .filter(|(stream, epoch, seq)| self.holds(stream, epoch, *seq))
                .collect();
            self.order = live;
        }
    }

    fn holds(&self, stream: &StreamKey, epoch: &str, seq: u64) -> bool {
        let log = match stream {
            StreamKey::Room(id) => self.rooms.get(id).map(|r| &r.log),
            StreamKey::Inbox(owner) => self.inboxes.get(owner),
        };
        log.is_some_and(|l| l.epoch == epoch && l.entries.front().is_some_and(|m| m.seq <= seq))
    }

    /// Drops a room (its log, members and their cursors for it).
    fn drop_room(&mut self, id: &RoomId) {
        let Some(room) = self.rooms.remove(id) else {
            return;
        };
        self.presence_floor = self.presence_floor.max(room.presence_seq);
        let stream = StreamKey::Room(id.clone());
        for member in room.members.keys() {
            self.cursors.remove(&(member.clone(), stream.clone()));
        }
        self.forget(room.log.freed());
    }

    fn drop_inbox(&mut self, owner: &UserId) {
        let Some(log) = self.inboxes.remove(owner) else {
            return;
        };
        self.cursors
            .remove(&(owner.clone(), StreamKey::Inbox(owner.clone())));
        self.forget(log.freed());
    }

    /// Drops the room at once if it holds nothing: no member, nobody online, no node subscribed,
    /// an empty log. (Such a room is what a `login` + `logout` leaves behind.)
    fn drop_room_if_empty(&mut self, id: &RoomId) {
        let empty = self.rooms.get(id).is_some_and(|room| {
            room.members.is_empty() && room.online.is_empty() && room.log.entries.is_empty()
        });
        if empty && !self.subscribed.contains(&StreamKey::Room(id.clone())) {
            self.drop_room(id);
        }
    }

    /// Drops every room nobody is online in (and no node subscribes to) that is empty or has had
    /// no activity for `retention`, and every inbox whose owner is not connected that is empty or
    /// idle as long.
    fn sweep(&mut self, retention: Duration) {
        let now = Instant::now();
        let idle =
            |log: &Log| log.entries.is_empty() || now.duration_since(log.touched) >= retention;
        let rooms: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(id, room)| {
                room.online.is_empty()
                    && !self.subscribed.contains(&StreamKey::Room((*id).clone()))
                    && ((room.members.is_empty() && room.log.entries.is_empty())
                        || now.duration_since(room.log.touched) >= retention)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &rooms {
            self.drop_room(id);
        }
        let inboxes: Vec<UserId> = self
            .inboxes
            .iter()
            .filter(|(owner, log)| {
                !self
                    .subscribed
                    .contains(&StreamKey::Inbox((*owner).clone()))
                    && idle(log)
            })
            .map(|(owner, _)| owner.clone())
            .collect();
        for owner in &inboxes {
            self.drop_inbox(owner);
        }
        if !rooms.is_empty() || !inboxes.is_empty() {
            tracing::debug!(
                rooms = rooms.len(),
                inboxes = inboxes.len(),
                "dropped unused rooms and inboxes"
            );
        }
    }
}

struct Room {
    name: String,
    /// Member id to display name.
    members: BTreeMap<UserId, String>,
    /// Users with a live connection (on this, the only, node).
    online: HashSet<UserId>,
    /// The log; its `touched` is the room's last activity (a join or a post).
    log: Log,
    /// The room's presence seq: taken by every presence change.
    presence_seq: u64,
}

impl Room {
    fn new(id: &RoomId, presence_floor: u64) -> Self {
        Room {
            name: id.to_string(),
            members: BTreeMap::new(),
            online: HashSet::new(),
            log: Log::new(),
            presence_seq: presence_floor,
        }
    }

    fn next_presence_seq(&mut self) -> u64 {
        self.presence_seq += 1;
        self.presence_seq
    }

    fn counts(&self) -> Counts {
        Counts {
            num: self.online.len() as u64,
            total: self.members.len() as u64,
        }
    }
}

struct Log {
    epoch: String,
    seq: u64,
    entries: VecDeque<ChatMessage>,
    /// Seq of every message in the log that carries a `clientMsgId`, by (author, addressee,
    /// clientMsgId): a retried post finds its original here instead of being stored twice.
    post_ids: HashMap<PostId, u64>,
    /// Bytes of `entries` ([`message_bytes`]).
    bytes: usize,
    /// Last activity: an append, a join (rooms), a head read by a connecting owner (inboxes).
    touched: Instant,
}

/// What makes a post unique for retries: its author, its addressee (for direct messages) and the
/// author's `clientMsgId`.
type PostId = (UserId, Option<UserId>, String);

fn post_id(message: &ChatMessage) -> Option<PostId> {
    let id = message.client_msg_id.clone()?;
    Some((message.user_id.clone(), message.to_user_id.clone(), id))
}

impl Log {
    fn new() -> Self {
        Log {
            epoch: new_epoch(),
            seq: 0,
            entries: VecDeque::new(),
            post_ids: HashMap::new(),
            bytes: 0,
            touched: Instant::now(),
        }
    }

    /// What dropping the whole log frees.
    fn freed(&self) -> Freed {
        Freed {
            messages: self.entries.len(),
            bytes: self.bytes,
        }
    }

    fn pop_oldest(&mut self) -> Freed {
        let Some(evicted) = self.entries.pop_front() else {
            return Freed::default();
        };
        if let Some(id) = post_id(&evicted) {
            self.post_ids.remove(&id);
        }
        let bytes = message_bytes(&evicted);
        self.bytes = self.bytes.saturating_sub(bytes);
        Freed { messages: 1, bytes }
    }

    fn head(&self) -> Head {
        Head {
            epoch: self.epoch.clone(),
            seq: self.seq,
        }
    }

    /// Appends under the next seq and trims the log to `cap` messages and `cap_bytes` bytes (never
    /// below the new message itself). Returns the stored message and what the trim freed.
    fn append(
        &mut self,
        mut message: ChatMessage,
        cap: usize,
        cap_bytes: usize,
    ) -> (ChatMessage, Freed) {
        self.seq += 1;
        self.touched = Instant::now();
        message.seq = self.seq;
        message.epoch = self.epoch.clone();
        if let Some(id) = post_id(&message) {
            self.post_ids.insert(id, message.seq);
        }
        self.bytes += message_bytes(&message);
        self.entries.push_back(message.clone());
        let mut freed = Freed::default();
        while self.entries.len() > cap.max(1) || (self.bytes > cap_bytes && self.entries.len() > 1)
        {
            let one = self.pop_oldest();
            freed.messages += one.messages;
            freed.bytes += one.bytes;
        }
        (message, freed)
    }

    /// The receipt of the earlier post `draft` (to `to`) repeats, by its `clientMsgId`, while that
    /// post is still in the log: flagged `duplicate`, and `conflict` when its content differs.
    fn earlier(&self, draft: &Draft, to: Option<&UserId>) -> Option<Posted> {
        let id = (
            draft.user_id.clone(),
            to.cloned(),
            draft.client_msg_id.clone()?,
        );
        let seq = *self.post_ids.get(&id)?;
        let first = self.entries.front()?.seq;
        let earlier = self
            .entries
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)?;
        Some(Posted {
            epoch: earlier.epoch.clone(),
            seq: earlier.seq,
            ts: earlier.ts,
            duplicate: true,
            conflict: earlier.content != draft.content,
        })
    }

    fn range(&self, after: u64, through: u64, max: usize, min_ts: u64) -> Vec<ChatMessage> {
        let picked: Vec<&ChatMessage> = self
            .entries
            .iter()
            .filter(|m| m.seq > after && m.seq <= through && m.ts >= min_ts)
            .collect();
        let skip = picked.len().saturating_sub(max);
        picked.into_iter().skip(skip).cloned().collect()
    }
}

/// A fresh random log identity.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn message_from(draft: &Draft, room: Option<&RoomId>, to: Option<&UserId>, ts: u64) -> ChatMessage {
    ChatMessage {
        room_id: room.cloned(),
        to_user_id: to.cloned(),
        seq: 0,
        epoch: String::new(),
        user_id: draft.user_id.clone(),
        user_name: draft.user_name.clone(),
        content: draft.content.clone(),
        ts,
        client_msg_id: draft.client_msg_id.clone(),
        replay: false,
        resend: false,
    }
}

impl Shared {
    /// Queues a broker event if its channel is subscribed. Called with the state lock held so events
    /// leave in the order their seqs were assigned. It never waits for queue space: the consumer
    /// (the hub) takes the same lock to read logs, so waiting here could deadlock. An event that
    /// does not fit is dropped, exactly like a message Redis pub/sub loses, and recovered the same
    /// way: the hub sees the gap (or the periodic head check does) and reads the log.
    fn emit(&self, state: &State, channel: &Channel, event: BrokerEvent) {
        if state.subscribed.contains(channel)
            && let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event)
        {
            tracing::warn!(
                ?channel,
                "broker event queue full: the hub will recover the message from the log"
            );
        }
    }
}

#[async_trait]
impl Store for Shared {
    async fn join(&self, req: &JoinRequest<'_>) -> Result<JoinOutcome> {
        let mut state = self.state.lock().await;
        let cursor = state
            .cursors
            .get(&(req.user.clone(), StreamKey::Room(req.room.clone())))
            .cloned();
        let room = state.room_entry(req.room, &self.config)?;
        room.log.touched = Instant::now();
        if let Some(name) = req.room_name
            && room.name == req.room.as_str()
        {
            room.name = name.to_owned();
        }
        let new_member = room
            .members
            .insert(req.user.clone(), req.user_name.to_owned())
            .is_none();
        let came_online = room.online.insert(req.user.clone());
        Ok(JoinOutcome {
            room_name: room.name.clone(),
            head: room.log.head(),
            counts: room.counts(),
            came_online,
            new_member,
            cursor,
            presence_seq: room.next_presence_seq(),
        })
    }

    async fn go_offline(&self, room_id: &RoomId, user: &UserId) -> Result<LeaveOutcome> {
        let mut state = self.state.lock().await;
        let Some(room) = state.rooms.get_mut(room_id) else {
            return Ok(LeaveOutcome {
                went_offline: false,
                counts: Counts::default(),
                presence_seq: 0,
            });
        };
        let went_offline = room.online.remove(user);
        let outcome = LeaveOutcome {
            went_offline,
            counts: room.counts(),
            presence_seq: room.next_presence_seq(),
        };
        state.drop_room_if_empty(room_id);
        Ok(outcome)
    }

    async fn leave(&self, room_id: &RoomId, user: &UserId) -> Result<LeaveOutcome> {
        let mut state = self.state.lock().await;
        state
            .cursors
            .remove(&(user.clone(), StreamKey::Room(room_id.clone())));
        let Some(room) = state.rooms.get_mut(room_id) else {
            // Nothing to leave: the presence seq still moves past anything this room id reported.
            state.presence_floor += 1;
            return Ok(LeaveOutcome {
                went_offline: false,
                counts: Counts::default(),
                presence_seq: state.presence_floor,
            });
        };
        let went_offline = room.online.remove(user);
        room.members.remove(user);
        let outcome = LeaveOutcome {
            went_offline,
            counts: room.counts(),
            presence_seq: room.next_presence_seq(),
        };
        state.drop_room_if_empty(room_id);
        Ok(outcome)
    }

    async fn refresh_presence(&self, entries: &[PresenceEntry]) -> Result<Refreshed> {
        // One node, no TTLs: presence lives exactly as long as the process, so nothing is ever
        // revived. A logout whose notice the node missed is still reported, as the contract says.
        let state = self.state.lock().await;
        let mut refreshed = Refreshed::default();
        for entry in entries {
            let Some(room) = state.rooms.get(&entry.room) else {
                continue;
            };
            if !room.members.contains_key(&entry.user)
                && room.log.epoch == entry.epoch
                && room.presence_seq >= entry.joined_at
            {
                refreshed.departed.push(Departed {
                    room: entry.room.clone(),
                    user: entry.user.clone(),
                    user_name: entry.user_name.clone(),
                    presence_seq: room.presence_seq,
                    counts: room.counts(),
                });
            }
        }
        Ok(refreshed)
    }

    async fn reap_presence(&self, _room: &RoomId) -> Result<Vec<Reaped>> {
        Ok(Vec::new())
    }

    async fn post(&self, room_id: &RoomId, draft: &Draft) -> Result<Posted> {
        let mut state = self.state.lock().await;
        let room = state.room_entry(room_id, &self.config)?;
        if let Some(earlier) = room.log.earlier(draft, None) {
            // A retry of a post that already landed (or a reuse of its id, flagged `conflict`):
            // its receipt, nothing stored or sent again.
            return Ok(earlier);
        }
        let message = message_from(draft, Some(room_id), None, now_ms());
        let stream = StreamKey::Room(room_id.clone());
        let stored = state.append(&stream, message, &self.config)?;
        let posted = Posted {
            epoch: stored.epoch.clone(),
            seq: stored.seq,
            ts: stored.ts,
            duplicate: false,
            conflict: false,
        };
        let frame = ServerFrame::Message(stored.clone()).encode();
        self.emit(
            &state,
            &stream,
            BrokerEvent::Message {
                stream: stream.clone(),
                message: stored,
                frame,
            },
        );
        Ok(posted)
    }

    async fn post_direct(&self, to: &UserId, draft: &Draft) -> Result<DirectPosted> {
        let mut state = self.state.lock().await;
        if let Some(sender) = state
            .inboxes
            .get(&draft.user_id)
            .and_then(|inbox| inbox.earlier(draft, Some(to)))
        {
            // A retry (or a reuse of the id, flagged `conflict`): the sender's receipt again,
            // nothing stored or sent.
            return Ok(DirectPosted {
                sender,
                recipient: None,
            });
        }
        let ts = now_ms();
        let mut posted = Vec::with_capacity(2);
        let owners: Vec<&UserId> = if *to == draft.user_id {
            vec![to]
        } else {
            vec![to, &draft.user_id]
        };
        // Both inboxes are made to exist (within `max_inboxes`) before either is written, so a
        // refused message is stored nowhere.
        let missing = |state: &State| {
            owners
                .iter()
                .filter(|o| !state.inboxes.contains_key(**o))
                .count()
        };
        if state.inboxes.len() + missing(&state) > self.config.max_inboxes {
            state.sweep(self.config.retention);
            if state.inboxes.len() + missing(&state) > self.config.max_inboxes {
                return Err(BackendError::Full(Limit::Inboxes));
            }
        }
        for owner in &owners {
            if !state.inboxes.contains_key(*owner) {
                state.inboxes.insert((*owner).clone(), Log::new());
            }
        }
        for owner in owners {
            let stream = StreamKey::Inbox(owner.clone());
            let stored = state.append(
                &stream,
                message_from(draft, None, Some(to), ts),
                &self.config,
            )?;
            posted.push(Posted {
                epoch: stored.epoch.clone(),
                seq: stored.seq,
                ts,
                duplicate: false,
                conflict: false,
            });
            let frame = ServerFrame::Message(stored.clone()).encode();
            self.emit(
                &state,
                &stream,
                BrokerEvent::Message {
                    stream: stream.clone(),
                    message: stored,
                    frame,
                },
            );
        }
        let Some(recipient) = posted.first().cloned() else {
            return Err(crate::BackendError::Corrupt("no inbox was written".into()));
        };
        let sender = posted.get(1).cloned().unwrap_or_else(|| recipient.clone());
        Ok(DirectPosted {
            sender,
            recipient: Some(recipient),
        })
    }

    async fn head(&self, stream: &StreamKey) -> Result<Head> {
        let mut state = self.state.lock().await;
        Ok(match stream {
            StreamKey::Room(id) => state.room_entry(id, &self.config)?.log.head(),
            // A connecting owner's inbox: not counted against `max_inboxes` (it is bounded by the
            // connections), and dropped when they leave it empty or idle.
            StreamKey::Inbox(user) => {
                let inbox = state.inboxes.entry(user.clone()).or_insert_with(Log::new);
                inbox.touched = Instant::now();
                inbox.head()
            }
        })
    }

    /// Unlike [`Store::head`], creates nothing: the pump reads these for streams it may have
    /// unsubscribed from meanwhile, and a room created here would outlive its last member.
    async fn heads(&self, streams: &[StreamKey]) -> Result<Vec<Option<Head>>> {
        let state = self.state.lock().await;
        Ok(streams
            .iter()
            .map(|stream| match stream {
                StreamKey::Room(id) => state.rooms.get(id).map(|room| room.log.head()),
                StreamKey::Inbox(user) => state.inboxes.get(user).map(Log::head),
            })
            .collect())
    }

    async fn range(
        &self,
        stream: &StreamKey,
        after: u64,
        through: u64,
        max: usize,
        min_ts: u64,
    ) -> Result<Vec<ChatMessage>> {
        let state = self.state.lock().await;
        let log = match stream {
            StreamKey::Room(id) => state.rooms.get(id).map(|r| &r.log),
            StreamKey::Inbox(user) => state.inboxes.get(user),
        };
        Ok(log
            .map(|l| l.range(after, through, max, min_ts))
            .unwrap_or_default())
    }

    async fn oldest(&self, stream: &StreamKey) -> Result<Option<u64>> {
        let state = self.state.lock().await;
        let log = match stream {
            StreamKey::Room(id) => state.rooms.get(id).map(|r| &r.log),
            StreamKey::Inbox(user) => state.inboxes.get(user),
        };
        Ok(log.and_then(|l| l.entries.front()).map(|m| m.seq))
    }

    async fn history(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(String, Vec<ChatMessage>)> {
        let state = self.state.lock().await;
        let Some(room) = state.rooms.get(room) else {
            return Ok((String::new(), Vec::new()));
        };
        let through = before.map(|b| b.saturating_sub(1)).unwrap_or(u64::MAX);
        Ok((
            room.log.epoch.clone(),
            room.log.range(0, through, limit as usize, 0),
        ))
    }

    async fn cursor(&self, user: &UserId, stream: &StreamKey) -> Result<Option<Position>> {
        let state = self.state.lock().await;
        Ok(state.cursors.get(&(user.clone(), stream.clone())).cloned())
    }

    async fn advance_cursor(
        &self,
        user: &UserId,
        stream: &StreamKey,
        to: &Position,
    ) -> Result<bool> {
        let mut state = self.state.lock().await;
        let current_epoch = match stream {
            StreamKey::Room(room) => match state.rooms.get(room) {
                // A cursor only means something for a member; `logout` dropped it on purpose.
                Some(r) if r.members.contains_key(user) => r.log.epoch.clone(),
                _ => return Ok(false),
            },
            StreamKey::Inbox(owner) => match state.inboxes.get(owner) {
                Some(log) => log.epoch.clone(),
                None => return Ok(false),
            },
        };
        if to.epoch != current_epoch {
            // A position in a log that no longer exists says nothing about the current one.
            return Ok(false);
        }
        let cursor = state.cursors.entry((user.clone(), stream.clone()));
        let moved = match cursor {
            std::collections::hash_map::Entry::Occupied(mut stored) => {
                let stored = stored.get_mut();
                let behind = stored.seq_in(&current_epoch).is_none_or(|s| s < to.seq);
                if behind {
                    *stored = to.clone();
                }
                behind
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(to.clone());
                true
            }
        };
        Ok(moved)
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>> {
        let state = self.state.lock().await;
        let mut rooms: Vec<RoomSummary> = state
            .rooms
            .iter()
            .map(|(id, room)| {
                let counts = room.counts();
                RoomSummary {
                    room_id: id.clone(),
                    room_name: room.name.clone(),
                    num: counts.num,
                    total: counts.total,
                    seq: room.log.seq,
                    epoch: room.log.epoch.clone(),
                }
            })
            .collect();
        rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        Ok(rooms)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<UserId>> {
        let state = self.state.lock().await;
        Ok(state
            .rooms
            .get(room)
            .map(|r| r.members.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn online(&self, room: &RoomId) -> Result<Vec<UserId>> {
        let state = self.state.lock().await;
        let mut online: Vec<UserId> = state
            .rooms
            .get(room)
            .map(|r| r.online.iter().cloned().collect())
            .unwrap_or_default();
        online.sort();
        Ok(online)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Broker for Shared {
    async fn subscribe(&self, channel: &Channel) -> Result<()> {
        self.state.lock().await.subscribed.insert(channel.clone());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<()> {
        let mut state = self.state.lock().await;
        state.subscribed.remove(channel);
        // The last local connection of the stream went away: what it leaves empty goes now.
        match channel {
            StreamKey::Room(id) => state.drop_room_if_empty(id),
            StreamKey::Inbox(owner) => {
                if state
                    .inboxes
                    .get(owner)
                    .is_some_and(|l| l.entries.is_empty())
                {
                    state.drop_inbox(owner);
                }
            }
        }
        Ok(())
    }

    async fn publish_notice(&self, notice: &Notice) -> Result<()> {
        let state = self.state.lock().await;
        let frame = match notice {
            Notice::Login(n) => ServerFrame::Login(n.clone()),
            Notice::Logout(n) => ServerFrame::Logout(n.clone()),
        }
        .encode();
        let channel = StreamKey::Room(notice.room_id().clone());
        self.emit(
            &state,
            &channel,
            BrokerEvent::Notice {
                notice: notice.clone(),
                frame,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RoomId {
        RoomId::new(s).expect("room id")
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("user id")
    }

    fn draft(u: &str, text: &str) -> Draft {
        Draft {
            user_id: user(u),
            user_name: u.to_uppercase(),
            content: text.into(),
            client_msg_id: None,
        }
    }

    #[tokio::test]
    async fn seqs_are_contiguous_and_history_is_bounded() {
        let backend = open(MemoryConfig::unbounded(3));
        let room = id("r");
        for i in 1..=5 {
            let posted = backend
                .store
                .post(&room, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
            assert_eq!(posted.seq, i);
        }
        let (_, page) = backend
            .store
            .history(&room, None, 10)
            .await
            .expect("history");
        assert_eq!(
            page.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let (_, page) = backend
            .store
            .history(&room, Some(5), 1)
            .await
            .expect("history");
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4]);
        let stream = StreamKey::Room(room.clone());
        assert_eq!(
            backend.store.oldest(&stream).await.expect("oldest"),
            Some(3)
        );
        let empty = StreamKey::Room(id("empty"));
        assert_eq!(backend.store.oldest(&empty).await.expect("oldest"), None);
    }

    #[tokio::test]
    async fn events_flow_only_for_subscribed_channels_in_seq_order() {
        let mut backend = open(MemoryConfig::unbounded(10));
        let room = id("r");
        backend
            .store
            .post(&room, &draft("a", "before"))
            .await
            .expect("post");
        backend
            .broker
            .subscribe(&StreamKey::Room(room.clone()))
            .await
            .expect("sub");
        backend
            .store
            .post(&room, &draft("a", "after"))
            .await
            .expect("post");
        let Some(BrokerEvent::Message { message, frame, .. }) = backend.events.recv().await else {
            panic!("expected a message event");
        };
        assert_eq!(message.seq, 2);
        assert!(frame.contains("\"after\""));
        assert!(backend.events.try_recv().is_err());
    }

    #[tokio::test]
    async fn presence_membership_and_cursors() {
        let backend = open(MemoryConfig::unbounded(10));
        let room = id("r");
        let req = JoinRequest {
            room: &room,
            user: &user("a"),
            user_name: "A",
            room_name: Some("Room R"),
        };
        let first = backend.store.join(&req).await.expect("join");
        assert!(first.came_online && first.new_member);
        assert_eq!(first.room_name, "Room R");
        assert_eq!(first.counts, Counts { num: 1, total: 1 });
        let again = backend.store.join(&req).await.expect("join");
        assert!(!again.came_online && !again.new_member);

        let stream = StreamKey::Room(room.clone());
        let epoch = first.head.epoch.clone();
        for (seq, moves) in [(4, true), (2, false)] {
            let moved = backend
                .store
                .advance_cursor(&user("a"), &stream, &Position::new(epoch.clone(), seq))
                .await
                .expect("cursor");
            assert_eq!(moved, moves, "advance to {seq}");
        }
        // A position from another epoch is stale: it neither moves nor replaces the cursor.
        let stale = backend
            .store
            .advance_cursor(&user("a"), &stream, &Position::new("gone", 9))
            .await
            .expect("cursor");
        assert!(!stale);
        assert_eq!(
            backend
                .store
                .cursor(&user("a"), &stream)
                .await
                .expect("cursor"),
            Some(Position::new(epoch, 4))
        );

        let off = backend
            .store
            .go_offline(&room, &user("a"))
            .await
            .expect("offline");
        assert!(off.went_offline);
        assert_eq!(off.counts, Counts { num: 0, total: 1 });
        let left = backend.store.leave(&room, &user("a")).await.expect("leave");
        assert_eq!(left.counts, Counts { num: 0, total: 0 });
        assert!(left.presence_seq > off.presence_seq);
        assert_eq!(
            backend
                .store
                .cursor(&user("a"), &stream)
                .await
                .expect("cursor"),
            None
        );
    }

    #[tokio::test]
    async fn a_retried_post_is_stored_once() {
        let mut backend = open(MemoryConfig::unbounded(3));
        let room = id("r");
        backend
            .broker
            .subscribe(&StreamKey::Room(room.clone()))
            .await
            .expect("sub");
        let with_id = |text: &str, cmid: &str| Draft {
            client_msg_id: Some(cmid.into()),
            ..draft("a", text)
        };
        let first = backend
            .store
            .post(&room, &with_id("hi", "c1"))
            .await
            .expect("post");
        let retry = backend
            .store
            .post(&room, &with_id("hi", "c1"))
            .await
            .expect("retry");
        assert!(!first.duplicate && !first.conflict);
        assert_eq!(
            retry,
            Posted {
                duplicate: true,
                ..first.clone()
            },
            "the same receipt, flagged as a duplicate"
        );
        let other_author = Draft {
            client_msg_id: Some("c1".into()),
            ..draft("b", "hi")
        };
        assert_eq!(
            backend
                .store
                .post(&room, &other_author)
                .await
                .expect("post")
                .seq,
            2,
            "ids are per author"
        );
        assert!(matches!(
            backend.events.try_recv(),
            Ok(BrokerEvent::Message { .. })
        ));
        assert!(matches!(
            backend.events.try_recv(),
            Ok(BrokerEvent::Message { .. })
        ));
        assert!(
            backend.events.try_recv().is_err(),
            "the retry was not published again"
        );
        // Once the original has left the (3-message) log, the id is forgotten.
        for i in 0..3 {
            backend
                .store
                .post(&room, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
        }
        assert_eq!(
            backend
                .store
                .post(&room, &with_id("hi", "c1"))
                .await
                .expect("post")
                .seq,
            6
        );
    }

    #[tokio::test]
    async fn a_retried_direct_message_is_stored_once() {
        let backend = open(MemoryConfig::unbounded(10));
        let dm = Draft {
            client_msg_id: Some("d1".into()),
            ..draft("a", "psst")
        };
        let first = backend
            .store
            .post_direct(&user("b"), &dm)
            .await
            .expect("dm");
        let retry = backend
            .store
            .post_direct(&user("b"), &dm)
            .await
            .expect("retry");
        assert_eq!(
            (retry.sender, retry.recipient),
            (
                Posted {
                    duplicate: true,
                    ..first.sender
                },
                None
            )
        );
        let inbox = backend
            .store
            .range(&StreamKey::Inbox(user("b")), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(inbox.len(), 1);
        assert!(
            backend
                .store
                .post_direct(&user("c"), &dm)
                .await
                .expect("dm")
                .recipient
                .is_some(),
            "another addressee"
        );
    }

    #[tokio::test]
    async fn direct_messages_land_in_both_inboxes() {
        let backend = open(MemoryConfig::unbounded(10));
        let posted = backend
            .store
            .post_direct(&user("b"), &draft("a", "psst"))
            .await
            .expect("dm");
        assert_eq!(posted.recipient.map(|p| p.seq), Some(1));
        assert_eq!(posted.sender.seq, 1);
        let inbox = backend
            .store
            .range(&StreamKey::Inbox(user("b")), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].to_user_id, Some(user("b")));
    }

    #[tokio::test]
    async fn a_reused_client_msg_id_with_other_content_is_flagged_and_stored_nowhere() {
        let mut backend = open(MemoryConfig::unbounded(10));
        let room = id("r");
        let (ann, bob) = (user("a"), user("b"));
        for stream in [StreamKey::Room(room.clone()), StreamKey::Inbox(ann.clone())] {
            backend.broker.subscribe(&stream).await.expect("sub");
        }
        let with_id = |text: &str| Draft {
            client_msg_id: Some("c1".into()),
            ..draft("a", text)
        };

        let first = backend
            .store
            .post(&room, &with_id("hi"))
            .await
            .expect("post");
        let reused = backend
            .store
            .post(&room, &with_id("something else"))
            .await
            .expect("post");
        assert_eq!(
            reused,
            Posted {
                duplicate: true,
                conflict: true,
                ..first.clone()
            },
            "the earlier receipt, flagged as a conflict"
        );
        let retry = backend
            .store
            .post(&room, &with_id("hi"))
            .await
            .expect("retry");
        assert!(retry.duplicate && !retry.conflict, "{retry:?}");
        let log = backend
            .store
            .range(&StreamKey::Room(room.clone()), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(
            log.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            vec!["hi"]
        );

        let dm = backend
            .store
            .post_direct(&bob, &with_id("psst"))
            .await
            .expect("dm");
        let reused = backend
            .store
            .post_direct(&bob, &with_id("other"))
            .await
            .expect("dm");
        assert_eq!(reused.recipient, None, "nothing stored for the recipient");
        assert_eq!(
            reused.sender,
            Posted {
                duplicate: true,
                conflict: true,
                ..dm.sender.clone()
            }
        );
        let inbox = backend
            .store
            .range(&StreamKey::Inbox(bob.clone()), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(inbox.len(), 1);

        // Only the two first posts were published.
        let mut published = Vec::new();
        while let Ok(event) = backend.events.try_recv() {
            if let BrokerEvent::Message { message, .. } = event {
                published.push(message.content);
            }
        }
        assert_eq!(published, vec!["hi", "psst"]);
    }

    fn join_req<'a>(room: &'a RoomId, who: &'a UserId) -> JoinRequest<'a> {
        JoinRequest {
            room,
            user: who,
            user_name: "X",
            room_name: None,
        }
    }

    /// The hostile pattern of measured weakness 2: `login` + `logout` over many room ids. Each
    /// room is dropped by its `logout`, its presence seqs still only grow.
    #[tokio::test]
    async fn login_then_logout_leaves_nothing_behind() {
        let (backend, probe) = open_with_usage(MemoryConfig::unbounded(10));
        let ann = user("ann");
        for i in 0..2000 {
            let room = id(&format!("r{i}"));
            backend
                .store
                .join(&join_req(&room, &ann))
                .await
                .expect("join");
            backend.store.leave(&room, &ann).await.expect("leave");
        }
        let usage = probe.usage().await;
        assert_eq!((usage.rooms, usage.cursors), (0, 0), "{usage:?}");
        assert!(backend.store.rooms().await.expect("rooms").is_empty());

        // A room that comes back after being dropped continues its presence seqs.
        let room = id("again");
        let first = backend
            .store
            .join(&join_req(&room, &ann))
            .await
            .expect("join");
        let left = backend.store.leave(&room, &ann).await.expect("leave");
        let second = backend
            .store
            .join(&join_req(&room, &ann))
            .await
            .expect("join");
        assert!(first.presence_seq < left.presence_seq);
        assert!(
            left.presence_seq < second.presence_seq,
            "{left:?} {second:?}"
        );
    }

    #[tokio::test]
    async fn the_room_cap_refuses_new_rooms_only() {
        let backend = open(MemoryConfig {
            max_rooms: 2,
            ..MemoryConfig::unbounded(10)
        });
        let (ann, bob) = (user("ann"), user("bob"));
        let (r1, r2, r3) = (id("r1"), id("r2"), id("r3"));
        backend
            .store
            .join(&join_req(&r1, &ann))
            .await
            .expect("join");
        backend
            .store
            .join(&join_req(&r2, &bob))
            .await
            .expect("join");
        let refused = backend.store.join(&join_req(&r3, &ann)).await;
        assert!(
            matches!(refused, Err(BackendError::Full(Limit::Rooms))),
            "{refused:?}"
        );
        assert!(backend.store.rooms().await.expect("rooms").len() == 2);
        // Existing rooms keep working: joins and posts.
        backend
            .store
            .join(&join_req(&r1, &bob))
            .await
            .expect("join an existing room");
        backend
            .store
            .post(&r1, &draft("ann", "still here"))
            .await
            .expect("post");
        // Once a room is freed (everyone logged out, nothing posted), a new one fits.
        backend.store.leave(&r2, &bob).await.expect("leave");
        backend
            .store
            .join(&join_req(&r3, &ann))
            .await
            .expect("join after a room was freed");
    }

    #[tokio::test]
    async fn byte_caps_bound_history_per_room_and_in_total() {
        let big = "x".repeat(4096);
        let per_message = message_bytes(&ChatMessage {
            room_id: Some(id("r0")),
            to_user_id: None,
            seq: 0,
            epoch: new_epoch(),
            user_id: user("a"),
            user_name: "A".into(),
            content: big.clone(),
            ts: 0,
            client_msg_id: None,
            replay: false,
            resend: false,
        });
        let (backend, probe) = open_with_usage(MemoryConfig {
            history_bytes_per_room: 10 * per_message,
            history_bytes_total: 25 * per_message,
            ..MemoryConfig::unbounded(1000)
        });
        let r0 = id("r0");
        for _ in 0..50 {
            backend
                .store
                .post(&r0, &draft("a", &big))
                .await
                .expect("post");
        }
        let (_, page) = backend
            .store
            .history(&r0, None, 1000)
            .await
            .expect("history");
        assert_eq!(page.len(), 10, "the per-room byte cap keeps the newest 10");
        assert_eq!(page.last().map(|m| m.seq), Some(50));
        for r in 1..=4 {
            let room = id(&format!("r{r}"));
            for _ in 0..20 {
                backend
                    .store
                    .post(&room, &draft("a", &big))
                    .await
                    .expect("post");
            }
        }
        let usage = probe.usage().await;
        assert!(usage.bytes <= 25 * per_message, "{usage:?}");
        assert_eq!(usage.messages, 25, "{usage:?}");
        // The oldest went first: r0 (posted first) lost everything, the last room kept its newest.
        let (_, r0_page) = backend
            .store
            .history(&r0, None, 1000)
            .await
            .expect("history");
        assert!(r0_page.is_empty(), "{} left in r0", r0_page.len());
        let (_, r4_page) = backend
            .store
            .history(&id("r4"), None, 1000)
            .await
            .expect("history");
        assert_eq!(r4_page.len(), 10);
        // The accounting matches the logs exactly.
        let mut counted = 0;
        for r in 0..=4 {
            let (_, page) = backend
                .store
                .history(&id(&format!("r{r}")), None, 1000)
                .await
                .expect("history");
            counted += page.iter().map(message_bytes).sum::<usize>();
        }
        assert_eq!(counted, usage.bytes);
    }

    /// Rooms nobody is online in and inboxes whose owner is not connected go after the retention
    /// without activity, not before.
    #[tokio::test(start_paused = true)]
    async fn idle_rooms_and_inboxes_expire_after_the_retention() {
        let retention = Duration::from_secs(600);
        let (backend, probe) = open_with_usage(MemoryConfig {
            retention,
            ..MemoryConfig::unbounded(10)
        });
        let (ann, ghost) = (user("ann"), user("ghost"));
        let room = id("quiet");
        backend
            .store
            .join(&join_req(&room, &ann))
            .await
            .expect("join");
        backend
            .store
            .post(&room, &draft("ann", "anyone?"))
            .await
            .expect("post");
        backend
            .store
            .go_offline(&room, &ann)
            .await
            .expect("offline");
        backend
            .store
            .post_direct(&ghost, &draft("ann", "hello?"))
            .await
            .expect("dm");
        // A room someone is online in stays however long it is quiet.
        let busy = id("busy");
        backend
            .store
            .join(&join_req(&busy, &ann))
            .await
            .expect("join");

        tokio::time::advance(retention / 2).await;
        probe.sweep().await;
        let usage = probe.usage().await;
        assert_eq!(
            (usage.rooms, usage.inboxes),
            (2, 2),
            "kept within the retention: {usage:?}"
        );
        assert_eq!(
            backend
                .store
                .range(&StreamKey::Inbox(ghost.clone()), 0, u64::MAX, 10, 0)
                .await
                .expect("range")
                .len(),
            1
        );

        tokio::time::advance(retention).await;
        probe.sweep().await;
        let usage = probe.usage().await;
        assert_eq!(
            (usage.rooms, usage.inboxes, usage.messages, usage.bytes),
            (1, 0, 0, 0),
            "{usage:?}"
        );
        let listed: Vec<String> = backend
            .store
            .rooms()
            .await
            .expect("rooms")
            .into_iter()
            .map(|r| r.room_id.to_string())
            .collect();
        assert_eq!(listed, vec!["busy"]);
    }

    /// Direct messages to users who never connected are allowed (they wait for them), but only
    /// up to `max_inboxes` inboxes; existing inboxes keep receiving.
    #[tokio::test]
    async fn the_inbox_cap_refuses_only_new_inboxes() {
        let (backend, probe) = open_with_usage(MemoryConfig {
            max_inboxes: 3,
            ..MemoryConfig::unbounded(10)
        });
        for to in ["b", "c"] {
            backend
                .store
                .post_direct(&user(to), &draft("a", "hi"))
                .await
                .expect("dm");
        }
        assert_eq!(probe.usage().await.inboxes, 3);
        let refused = backend
            .store
            .post_direct(&user("d"), &draft("a", "hi"))
            .await;
        assert!(
            matches!(refused, Err(BackendError::Full(Limit::Inboxes))),
            "{refused:?}"
        );
        let refused = backend
            .store
            .post_direct(&user("e"), &draft("d", "hi"))
            .await;
        assert!(
            matches!(refused, Err(BackendError::Full(Limit::Inboxes))),
            "two new inboxes: {refused:?}"
        );
        let usage = probe.usage().await;
        assert_eq!(
            (usage.inboxes, usage.messages),
            (3, 4),
            "nothing stored by a refused DM: {usage:?}"
        );
        backend
            .store
            .post_direct(&user("b"), &draft("c", "still works"))
            .await
            .expect("dm");
        // A connecting owner always gets an inbox; it goes again when they leave it empty.
        let owner = StreamKey::Inbox(user("owner"));
        backend.broker.subscribe(&owner).await.expect("sub");
        backend.store.head(&owner).await.expect("head");
        assert_eq!(probe.usage().await.inboxes, 4);
        backend.broker.unsubscribe(&owner).await.expect("unsub");
        assert_eq!(probe.usage().await.inboxes, 3);
    }
}
