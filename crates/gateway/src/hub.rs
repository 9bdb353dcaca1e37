//! The node-local hub: which local connections are attached to which stream (room log or DM
//! inbox), and the pump that turns broker events into frames on those connections.
//!
//! Invariants the hub keeps, per stream:
//! - It delivers seqs strictly in order, each once, within an epoch. A message that arrives ahead of
//!   its predecessor (pub/sub lost one: a dropped subscription, a Redis restart) is held back while
//!   the gap is fetched from the store's log, then delivered after it.
//! - A broadcast is encoded once ([`Utf8Bytes`] is reference-counted) and cloned into each
//!   recipient's bounded queue; a recipient whose queue is full is closed as a slow consumer instead
//!   of stalling everyone else.
//! - A connection attaches behind a *gate*: live frames are held for it while its session sends the
//!   `joined` reply and the replay of what it missed, then released in order. Attaching reads the
//!   stream's delivery position under the same lock as delivery, so the replay ends exactly where
//!   live delivery starts: no gap, no duplicate.
//! - The node is subscribed to a stream's channel exactly while it has local connections attached;
//!   subscribe/unsubscribe transitions are serialized so they cannot overtake each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_backend::{BackendError, Broker, BrokerEvent, Head, Notice, Store, StreamKey};
use chat_protocol::{ChatMessage, LogoutReason, RoomId, ServerFrame, UserId, close};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::membership::{JoinVerdict, Membership, Vouched};

/// Identifies a connection on this node.
pub type ConnId = u64;

/// Largest number of frames held for one connection while its replay is being sent.
const GATE_CAPACITY: usize = 4096;
/// Largest number of out-of-order messages held per stream while a gap is being filled.
const PENDING_CAPACITY: usize = 50_000;
/// Streams whose heads are read in one round trip by a sync.
const SYNC_BATCH: usize = 512;
/// Most messages fetched from the log by one sync (logs are bounded far below this anyway).
const SYNC_FETCH_MAX: usize = 100_000;

/// What the hub hands to a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame to write. `mark` says which stream position it delivers, so the session can record
    /// what actually reached the socket.
    Frame {
        /// The encoded frame, shared with every other recipient.
        text: Utf8Bytes,
        /// The stream and seq of a message frame.
        mark: Option<Mark>,
        /// For a legacy-dialect connection: the broadcast's translation slot, shared by all of
        /// its legacy recipients on this node so it is translated once (see [`crate::legacy`]).
        legacy: Option<crate::legacy::Cache>,
        /// For a connection that negotiated permessage-deflate: the broadcast's compressed form,
        /// shared by all such recipients on this node so it is compressed once.
        deflated: Option<crate::deflate::Shared>,
    },
    /// The user left the room (a `logout` from any of their connections, on any node).
    Left(RoomId),
}

/// A delivered stream position: a seq always travels with its epoch.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The stream (shared, not cloned per recipient).
    pub stream: Arc<StreamKey>,
    /// The epoch the seq belongs to (shared, not cloned per recipient).
    pub epoch: Arc<str>,
    /// The seq delivered.
    pub seq: u64,
}

/// The hub's handle on one connection: its queue and a way to close it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// The connection's id on this node.
    pub id: ConnId,
    tx: crate::outbox::Sender,
    kill: Arc<KillSwitch>,
    /// The connection speaks the legacy dialect: its frames come with a shared translation slot.
    legacy: bool,
    /// The connection negotiated permessage-deflate: its frames come with a shared compression
    /// slot.
    deflate: bool,
}

#[derive(Debug)]
struct KillSwitch {
    token: CancellationToken,
    code: AtomicU16,
}

impl ConnHandle {
    /// A handle around a connection's bounded outbound queue.
    pub fn new(id: ConnId, tx: crate::outbox::Sender) -> Self {
        let kill = Arc::new(KillSwitch {
            token: CancellationToken::new(),
            code: AtomicU16::new(close::NORMAL),
        });
        Self {
            id,
            tx,
            kill,
            legacy: false,
            deflate: false,
        }
    }

    /// Marks the connection as having negotiated permessage-deflate ([`crate::deflate`]).
    pub fn compressing(mut self) -> Self {
        self.deflate = true;
        self
    }

    /// Marks the connection as speaking the legacy dialect ([`crate::legacy`]).
    pub fn speaking_legacy(mut self) -> Self {
        self.legacy = true;
        self
    }

    /// Asks the connection's driver to close with `code`. The first reason wins.
    pub fn kill(&self, code: u16) {
        if !self.kill.token.is_cancelled() {
            self.kill.code.store(code, Ordering::Relaxed);
            self.kill.token.cancel();
        }
    }

    /// Resolves when [`ConnHandle::kill`] was called.
    pub async fn killed(&self) -> u16 {
        self.kill.token.cancelled().await;
        self.kill.code.load(Ordering::Relaxed)
    }

    /// Queues without waiting; a full queue means the client cannot keep up, and it is closed.
    fn offer(&self, item: Outbound) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(crate::outbox::TrySendError::Full) => {
                // Once, not per frame offered: until its driver ends, every broadcast of a busy
                // room finds the queue full again (weakness 10's thousands of lines).
                if !self.kill.token.is_cancelled() {
                    tracing::debug!(conn = self.id, "outbound queue full: closing slow consumer");
                }
                self.kill(close::SLOW_CONSUMER);
            }
            // The connection is already gone; its session detaches it.
            Err(crate::outbox::TrySendError::Closed) => {}
        }
    }
}

/// Where a newly attached connection's live traffic starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The stream's epoch.
    pub epoch: String,
    /// The last seq delivered on this node before the connection attached; everything after it
    /// reaches the connection live once its gate opens.
    pub last: u64,
}

/// See the module docs.
pub struct Hub {
    state: Mutex<HubState>,
    /// Per stream: serializes its subscribe/unsubscribe so an unsubscribe of an emptied stream
    /// cannot overtake the subscribe of a new first member (see [`Hub::transition_lock`]).
    sub_locks: std::sync::Mutex<HashMap<StreamKey, Arc<tokio::sync::Mutex<()>>>>,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    next_conn: AtomicU64,
    /// A periodic full sync is running in the background (at most one at a time).
    full_sync_running: AtomicBool,
}

#[derive(Default)]
struct HubState {
    streams: HashMap<StreamKey, LocalStream>,
    /// Which users are in which room through this node; the only place that decides it.
    membership: Membership,
    /// Streams whose gap is being filled by a task of the pump's.
    filling: std::collections::HashSet<StreamKey>,
}

struct LocalStream {
    key: Arc<StreamKey>,
    /// False until the subscription is confirmed and the head read.
    ready: bool,
    epoch: Arc<str>,
    /// Last seq delivered to this node's connections.
    last: u64,
    conns: HashMap<ConnId, AttachedConn>,
    /// Messages that arrived ahead of a gap, by seq.
    pending: BTreeMap<u64, (ChatMessage, Utf8Bytes)>,
    /// The stream must be compared with the store's head (gap seen, resubscribed, or fetch failed).
    needs_sync: bool,
}

struct AttachedConn {
    handle: ConnHandle,
    /// `Some` while the session sends its replay: live frames wait here.
    gate: Option<Vec<Outbound>>,
    /// Messages up to this seq reached the connection through its replay: skip them live (the
    /// replay can run ahead of this node's delivery when the node lags the store).
    replayed_through: u64,
}

impl LocalStream {
    fn new(key: StreamKey) -> Self {
        LocalStream {
            key: Arc::new(key),
            ready: false,
            epoch: Arc::from(""),
            last: 0,
            conns: HashMap::new(),
            pending: BTreeMap::new(),
            needs_sync: false,
        }
    }

    fn add(&mut self, handle: &ConnHandle) {
        self.conns.entry(handle.id).or_insert_with(|| AttachedConn {
            handle: handle.clone(),
            gate: Some(Vec::new()),
            replayed_through: 0,
        });
    }

    /// Hands one frame to every attached connection.
    fn broadcast(&mut self, text: &Utf8Bytes, mark: Option<Mark>) {
        // Created for the first legacy recipient only, so v1-only streams pay nothing.
        let mut legacy: Option<crate::legacy::Cache> = None;
        // Likewise for the first v1 recipient that compresses: one compression per broadcast.
        let mut deflated: Option<crate::deflate::Shared> = None;
        for conn in self.conns.values_mut() {
            if mark
                .as_ref()
                .is_some_and(|m| m.seq <= conn.replayed_through)
            {
                continue;
            }
            let item = Outbound::Frame {
                text: text.clone(),
                mark: mark.clone(),
                legacy: conn
                    .handle
                    .legacy
                    .then(|| legacy.get_or_insert_with(Default::default).clone()),
                // A legacy connection's text is its own translation: compressed by its driver.
                deflated: (conn.handle.deflate && !conn.handle.legacy)
                    .then(|| deflated.get_or_insert_with(Default::default).clone()),
            };
            match &mut conn.gate {
                Some(held) if held.len() < GATE_CAPACITY => held.push(item),
                Some(_) => conn.handle.kill(close::SLOW_CONSUMER),
                None => conn.handle.offer(item),
            }
        }
    }

    fn deliver(&mut self, seq: u64, text: &Utf8Bytes) {
        let mark = Mark {
            stream: self.key.clone(),
            epoch: self.epoch.clone(),
            seq,
        };
        self.broadcast(text, Some(mark));
        self.last = seq;
    }

    /// Delivers held messages that now follow `last` without a gap; drops ones already covered.
    fn drain_pending(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= self.last {
                entry.remove();
            } else if seq == self.last + 1 {
                let (_, text) = entry.remove();
                self.deliver(seq, &text);
            } else {
                break;
            }
        }
    }

    /// Adopts a new epoch: the log was recreated, seqs start over.
    fn reset_epoch(&mut self, epoch: &str) {
        metrics::counter!(crate::metrics::EPOCH_CHANGES).increment(1);
        tracing::warn!(stream = ?self.key, old = %self.epoch, new = %epoch, "stream epoch changed: its log was reset");
        self.epoch = Arc::from(epoch);
        self.last = 0;
        self.pending.retain(|_, (m, _)| m.epoch == epoch);
        for conn in self.conns.values_mut() {
            conn.replayed_through = 0;
        }
    }
}

impl Hub {
    /// A hub over a backend.
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Broker>) -> Arc<Self> {
        Arc::new(Hub {
            state: Mutex::new(HubState::default()),
            sub_locks: std::sync::Mutex::new(HashMap::new()),
            store,
            broker,
            next_conn: AtomicU64::new(1),
            full_sync_running: AtomicBool::new(false),
        })
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock would be a bug in this module; the state itself stays
        // consistent enough to keep serving, so recover rather than poison every connection.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches a connection to a stream behind a gate, subscribing the node first if it is the
    /// stream's first local connection. See [`Hub::open_gate`]. For a room, the connection must
    /// be joining it ([`Hub::begin_join`]).
    pub async fn attach(
        &self,
        key: &StreamKey,
        conn: &ConnHandle,
    ) -> Result<Attached, BackendError> {
        if let Some(attached) = self.attach_if_ready(key, conn) {
            return Ok(attached);
        }
        let transition = self.transition_lock(key);
        let _transition = transition.lock().await;
        if let Some(attached) = self.attach_if_ready(key, conn) {
            return Ok(attached);
        }
        {
            let mut state = self.lock();
            state
                .streams
                .entry(key.clone())
                .or_insert_with(|| LocalStream::new(key.clone()))
                .add(conn);
        }
        let subscribed = async {
            self.broker.subscribe(key).await?;
            self.store.head(key).await
        }
        .await;
        let failure = match subscribed {
            Ok(head) => {
                let mut state = self.lock();
                let stream = state
                    .streams
                    .entry(key.clone())
                    .or_insert_with(|| LocalStream::new(key.clone()));
                stream.ready = true;
                stream.epoch = Arc::from(head.epoch.as_str());
                stream.last = head.seq;
                stream.pending.retain(|_, (m, _)| m.epoch == head.epoch);
                stream.drain_pending();
                // Anything still held is ahead of a gap: let the pump fetch it.
                stream.needs_sync = !stream.pending.is_empty();
                // The connection stays out if it was removed meanwhile (a logout that the store
                // ordered after its join): membership decides, not this path.
                return Ok(Attached {
                    epoch: stream.epoch.to_string(),
                    last: stream.last,
                });
            }
            Err(e) => e,
        };
        {
            let mut state = self.lock();
            if let Some(stream) = state.streams.get_mut(key) {
                stream.conns.remove(&conn.id);
                if stream.conns.is_empty() {
                    state.streams.remove(key);
                }
            }
        }
        // Best effort: the broker forgets the channel even if Redis is unreachable.
        let _ = self.broker.unsubscribe(key).await;
        Err(failure)
    }

    fn attach_if_ready(&self, key: &StreamKey, conn: &ConnHandle) -> Option<Attached> {
        let mut state = self.lock();
        let stream = state.streams.get_mut(key).filter(|s| s.ready)?;
        stream.add(conn);
        Some(Attached {
            epoch: stream.epoch.to_string(),
            last: stream.last,
        })
    }

    /// Releases the frames held for a connection since [`Hub::attach`], in order, and delivers live
    /// from now on. The session calls it after queueing its `joined` reply and replay.
    /// `replayed_through` is the last seq the session's replay covered: held and future live
    /// frames up to it are skipped, so nothing arrives twice.
    pub fn open_gate(&self, key: &StreamKey, conn: ConnId, replayed_through: u64) {
        let mut state = self.lock();
        let Some(attached) = state
            .streams
            .get_mut(key)
            .and_then(|s| s.conns.get_mut(&conn))
        else {
            return;
        };
        attached.replayed_through = replayed_through;
        if let Some(held) = attached.gate.take() {
            for item in held {
                let replayed = matches!(&item, Outbound::Frame { mark: Some(m), .. } if m.seq <= replayed_through);
                if !replayed {
                    attached.handle.offer(item);
                }
            }
        }
    }

    /// Detaches a connection from a stream (for a room, use [`Hub::leave_room`]), unsubscribing
    /// the node when no local connection is left.
    pub fn detach(self: &Arc<Self>, key: &StreamKey, conn: ConnId) {
        let now_empty = {
            let mut state = self.lock();
            let Some(stream) = state.streams.get_mut(key) else {
                return;
            };
            stream.conns.remove(&conn);
            stream.conns.is_empty()
        };
        if now_empty {
            self.schedule_unsubscribe(key.clone());
        }
    }

    /// A connection starts joining a room: from now on a `left` notice of its user is ordered
    /// against its join. Call before the store records the join.
    pub fn begin_join(&self, room: &RoomId, user: &UserId, user_name: &str, conn: ConnId) {
        self.lock()
            .membership
            .begin_join(room, user, user_name, conn);
    }

    /// The store recorded the join at `presence_seq`, in log epoch `epoch`. When a logout the
    /// store ordered after it has already been applied here, the join is void: the connection is
    /// detached from the room and [`JoinVerdict::Overtaken`] returned.
    pub fn complete_join(
        self: &Arc<Self>,
        room: &RoomId,
        user: &UserId,
        conn: ConnId,
        epoch: &str,
        presence_seq: u64,
    ) -> JoinVerdict {
        let verdict = self
            .lock()
            .membership
            .complete_join(room, user, conn, epoch, presence_seq);
        if verdict == JoinVerdict::Overtaken {
            self.detach(&StreamKey::Room(room.clone()), conn);
        }
        verdict
    }

    /// The connection is no longer in the room (its join failed or was undone, it logged out, or
    /// it closed). Returns true when it was its user's last local connection there: the user is
    /// no longer online through this node.
    pub fn leave_room(self: &Arc<Self>, room: &RoomId, user: &UserId, conn: ConnId) -> bool {
        let last = self.lock().membership.remove(room, user, conn);
        self.detach(&StreamKey::Room(room.clone()), conn);
        last
    }

    /// The lock that orders one stream's subscribe and unsubscribe transitions. Per stream, so a
    /// slow subscription of one room never holds up a first join of another.
    fn transition_lock(&self, key: &StreamKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .sub_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget locks nobody holds or waits for, so the map stays as small as the transitions
        // in flight.
        locks.retain(|k, lock| k == key || Arc::strong_count(lock) > 1);
        locks.entry(key.clone()).or_default().clone()
    }

    fn schedule_unsubscribe(self: &Arc<Self>, key: StreamKey) {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let transition = hub.transition_lock(&key);
            let _transition = transition.lock().await;
            let emptied = {
                let mut state = hub.lock();
                let empty = state.streams.get(&key).is_some_and(|s| s.conns.is_empty());
                if empty {
                    state.streams.remove(&key);
                }
                empty
            };
            if emptied && let Err(e) = hub.broker.unsubscribe(&key).await {
                tracing::warn!(stream = ?key, error = %e, "unsubscribe failed");
            }
        });
    }

    /// The (room, user) pairs this node vouches for, with the join it vouches for: the presence
    /// the upkeep refreshes. Joins still in flight are not included.
    pub fn presence_snapshot(&self) -> Vec<Vouched> {
        self.lock().membership.snapshot()
    }

    /// Rooms this node is subscribed to.
    pub fn local_rooms(&self) -> Vec<RoomId> {
        let state = self.lock();
        state
            .streams
            .keys()
            .filter_map(|k| match k {
                StreamKey::Room(r) => Some(r.clone()),
                StreamKey::Inbox(_) => None,
            })
            .collect()
    }

    /// Number of connections attached to at least one stream, counted per stream.
    pub fn attachment_count(&self) -> usize {
        self.lock().streams.values().map(|s| s.conns.len()).sum()
    }

    /// Runs until `shutdown`: applies broker events, fills gaps, and compares every stream with
    /// its head every `sync_interval` so a lost *last* message is found without waiting for a
    /// later one. That comparison runs in a task of its own and reads heads in batches, so
    /// delivery never waits for it; only a stream found behind is fetched.
    pub async fn run_pump(
        self: Arc<Self>,
        mut events: mpsc::Receiver<BrokerEvent>,
        sync_interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut full_sync = tokio::time::interval(sync_interval);
        full_sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event {
                    Some(event) => {
                        metrics::gauge!(crate::metrics::BROKER_QUEUE_DEPTH).set(events.len() as f64);
                        self.apply_without_waiting(event).await
                    }
                    None => return,
                },
                _ = retry.tick() => self.sync_streams(false).await,
                _ = full_sync.tick() => {
                    // Off the pump: delivery goes on while every stream's head is compared.
                    if !self.full_sync_running.swap(true, Ordering::AcqRel) {
                        let hub = Arc::clone(&self);
                        tokio::spawn(async move {
                            hub.sync_streams(true).await;
                            hub.full_sync_running.store(false, Ordering::Release);
                        });
                    }
                }
            }
        }
    }

    /// Applies one broker event.
    /// [`Hub::apply`] for the pump: a gap is filled in a task of its own (one per stream at a
    /// time), so the pump goes on delivering every other stream while one stream's missing
    /// messages are fetched. The stream's later messages wait in its pending buffer meanwhile.
    async fn apply_without_waiting(self: &Arc<Self>, event: BrokerEvent) {
        let BrokerEvent::Message {
            stream,
            message,
            frame,
        } = event
        else {
            return self.apply(event).await;
        };
        if !self.on_message(&stream, message, frame) {
            return;
        }
        if !self.lock().filling.insert(stream.clone()) {
            return; // a fill of this stream is running; it delivers what is pending after it
        }
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            // A failure leaves the stream marked; the retry tick tries again.
            let _ = hub.sync_stream(&stream).await;
            hub.lock().filling.remove(&stream);
        });
    }

    /// Applies one broker event, filling a gap before it returns.
    pub async fn apply(self: &Arc<Self>, event: BrokerEvent) {
        match event {
            BrokerEvent::Message {
                stream,
                message,
                frame,
            } => {
                if self.on_message(&stream, message, frame) {
                    // A failure leaves the stream marked; the retry tick tries again.
                    let _ = self.sync_stream(&stream).await;
                }
            }
            BrokerEvent::Notice { notice, frame } => {
                if self.on_notice(&notice, frame) {
                    self.schedule_unsubscribe(StreamKey::Room(notice.room_id().clone()));
                }
            }
            BrokerEvent::Resubscribed => {
                tracing::info!("broker resubscribed: checking every stream for lost messages");
                {
                    let mut state = self.lock();
                    for stream in state.streams.values_mut() {
                        stream.needs_sync = true;
                    }
                }
                self.sync_streams(false).await;
            }
        }
    }

    /// Returns true when the stream now has a gap to fill.
    fn on_message(&self, key: &StreamKey, message: ChatMessage, frame: String) -> bool {
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(key) else {
            return false;
        };
        let text = Utf8Bytes::from(frame);
        if !stream.ready {
            stream.pending.insert(message.seq, (message, text));
            return false;
        }
        if *message.epoch != *stream.epoch {
            stream.reset_epoch(&message.epoch);
        }
        if message.seq <= stream.last {
            return false;
        }
        if stream.pending.len() >= PENDING_CAPACITY {
            // Far behind: drop what is held and let the sync fetch everything from the log.
            stream.pending.clear();
            stream.needs_sync = true;
            return true;
        }
        stream.pending.insert(message.seq, (message, text));
        stream.drain_pending();
        if !stream.pending.is_empty() {
            tracing::debug!(stream = ?key, last = stream.last, "gap in stream: fetching from the log");
            stream.needs_sync = true;
        }
        stream.needs_sync
    }

    /// Delivers a presence notice, unless it is older than one already seen for its user. A
    /// `left` notice then removes the user's local connections that joined before it. Returns
    /// true when that emptied the stream (its last local members left the room).
    fn on_notice(&self, notice: &Notice, frame: String) -> bool {
        let (Notice::Login(n) | Notice::Logout(n)) = notice;
        let key = StreamKey::Room(n.room_id.clone());
        let mut state = self.lock();
        let HubState {
            streams,
            membership,
            ..
        } = &mut *state;
        if let Some(at) = n.presence_seq
            && !membership.observe_notice(&n.room_id, &n.user_id, at)
        {
            tracing::debug!(room = %n.room_id, user = %n.user_id, at, "dropped a stale presence notice");
            return false;
        }
        let Some(stream) = streams.get_mut(&key) else {
            return false;
        };
        stream.broadcast(&Utf8Bytes::from(frame), None);
        if let Notice::Logout(n) = notice
            && n.reason == Some(LogoutReason::Left)
        {
            // Leaving is for all of the user's connections that joined before it, on every
            // node. A notice without a presence seq (an older node) covers all of them.
            let left_at = n.presence_seq.unwrap_or(u64::MAX);
            for id in membership.on_left(&n.room_id, &n.user_id, left_at) {
                if let Some(conn) = stream.conns.remove(&id) {
                    conn.handle.offer(Outbound::Left(n.room_id.clone()));
                }
            }
            return stream.conns.is_empty();
        }
        false
    }

    /// Syncs streams that need it (or all, when `all`). Their heads are read in batches, one
    /// round trip each ([`Store::heads`]); only a stream that is behind (or whose log changed
    /// epoch) is then fetched on its own.
    async fn sync_streams(&self, all: bool) {
        let positions: Vec<(StreamKey, Arc<str>, u64)> = {
            let state = self.lock();
            state
                .streams
                .iter()
                .filter(|(_, s)| s.ready && (all || s.needs_sync))
                .map(|(k, s)| (k.clone(), s.epoch.clone(), s.last))
                .collect()
        };
        for (done, chunk) in positions.chunks(SYNC_BATCH).enumerate() {
            let keys: Vec<StreamKey> = chunk.iter().map(|(k, _, _)| k.clone()).collect();
            let heads = match self.store.heads(&keys).await {
                Ok(heads) => heads,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read stream heads; retrying");
                    self.mark_for_sync(positions[done * SYNC_BATCH..].iter().map(|(k, _, _)| k));
                    return;
                }
            };
            for (i, ((key, epoch, last), head)) in chunk.iter().zip(heads).enumerate() {
                let behind = head
                    .as_ref()
                    .is_none_or(|h| *h.epoch != **epoch || h.seq > *last);
                if !behind {
                    if let Some(stream) = self.lock().streams.get_mut(key) {
                        stream.needs_sync = !stream.pending.is_empty();
                    }
                    continue;
                }
                if let Err(BackendError::Unavailable(_)) = self.sync_stream(key).await {
                    // The backend is down: every other stream would wait out its own timeout
                    // too, holding up the caller long after the backend is back. Next round.
                    let rest = positions[done * SYNC_BATCH + i + 1..].iter();
                    self.mark_for_sync(rest.map(|(k, _, _)| k));
                    return;
                }
            }
        }
    }

    fn mark_for_sync<'a>(&self, keys: impl Iterator<Item = &'a StreamKey>) {
        let mut state = self.lock();
        for key in keys {
            if let Some(stream) = state.streams.get_mut(key) {
                stream.needs_sync = true;
            }
        }
    }

    /// Brings a stream up to the store's head: fetches and delivers whatever this node missed.
    /// On failure the stream stays marked for the next round.
    async fn sync_stream(&self, key: &StreamKey) -> Result<(), BackendError> {
        let result = self.try_sync_stream(key).await;
        if let Err(e) = &result {
            tracing::warn!(stream = ?key, error = %e, "stream sync failed; retrying");
            if let Some(stream) = self.lock().streams.get_mut(key) {
                stream.needs_sync = true;
            }
        }
        result
    }

    async fn try_sync_stream(&self, key: &StreamKey) -> Result<(), BackendError> {
        let Some((epoch, last)) = self.position(key) else {
            return Ok(());
        };
        let head: Head = self.store.head(key).await?;
        let after = if head.epoch == epoch { last } else { 0 };
        let missed = if head.seq > after {
            self.store
                .range(key, after, head.seq, SYNC_FETCH_MAX, 0)
                .await?
        } else {
            Vec::new()
        };
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(key) else {
            return Ok(());
        };
        if *stream.epoch != *head.epoch {
            stream.reset_epoch(&head.epoch);
        }
        let mut recovered = 0usize;
        for message in missed {
            if *message.epoch == *stream.epoch && message.seq > stream.last {
                let seq = message.seq;
                let text = Utf8Bytes::from(ServerFrame::Message(message).encode());
                stream.deliver(seq, &text);
                recovered += 1;
            }
        }
        if head.seq > stream.last {
            // The log no longer holds these (trimmed by retention): nothing left to deliver.
            stream.last = head.seq;
        }
        stream.drain_pending();
        stream.needs_sync = !stream.pending.is_empty();
        if recovered > 0 {
            metrics::counter!(crate::metrics::GAP_FILLS).increment(1);
            metrics::histogram!(crate::metrics::GAP_FILL_MESSAGES).record(recovered as f64);
            tracing::info!(stream = ?key, recovered, "filled a gap from the log");
        }
        Ok(())
    }

    /// The epoch and last delivered seq of a subscribed stream.
    pub fn position(&self, key: &StreamKey) -> Option<(String, u64)> {
        let state = self.lock();
        state
            .streams
            .get(key)
            .filter(|s| s.ready)
            .map(|s| (s.epoch.to_string(), s.last))
    }
}
