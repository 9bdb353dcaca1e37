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

//!
//! Modules: [`conn`] (a connection's handle and what is queued for it), [`stream`] (one stream's
//! ordering and gate rules, pure), [`subscriptions`] (attach/detach and the broker subscription
//! they drive), [`pump`] (broker events to frames, gap filling, periodic sync).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_backend::{Broker, Store, StreamKey};
use chat_protocol::{RoomId, UserId};

use crate::membership::{JoinVerdict, Membership, Vouched};

pub mod conn;
mod pump;
mod stream;
mod subscriptions;

pub use conn::{ConnHandle, ConnId, Mark, Outbound};
use stream::LocalStream;

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
