//! The backend of the chat cluster: everything a gateway node shares with the other nodes.
//!
//! Two traits split it the way Centrifugo splits broker and presence/history:
//! - [`Store`] keeps membership, presence, per-room sequence numbers, history, per-user read
//!   cursors and direct-message inboxes. Appending a message assigns its seq *and* publishes it in
//!   one atomic step, so every node sees one order per room.
//! - [`Broker`] moves live traffic between nodes: a node subscribes to a room's channel while it
//!   has local members there and receives [`BrokerEvent`]s on one bounded queue.
//!
//! [`memory`] implements both in-process for a single node (the default: `cargo run` needs no
//! Redis); [`redis_backend`] implements them on Redis for a cluster. Nothing outside this crate
//! talks to Redis.

pub mod memory;
pub mod redis_backend;
mod types;

use std::sync::Arc;

use async_trait::async_trait;
use chat_protocol::{ChatMessage, PresenceNotice, RoomId, UserId};
use tokio::sync::mpsc;

pub use types::*;

/// What a backend call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached right now (Redis down, timeout, pool exhausted). Retriable.
    /// A refused call stored nothing; a call that timed out may still have taken effect.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with data this version cannot read (a corrupted or foreign key).
    #[error("backend returned unreadable data: {0}")]
    Corrupt(String),
    /// The backend's settings are wrong (a malformed URL, an impossible value). Retrying cannot
    /// help; only raised when opening a backend.
    #[error("invalid backend configuration: {0}")]
    Config(String),
    /// The call would create state beyond a configured cap (a new room, a new inbox). Nothing was
    /// stored; what already exists keeps working. Retrying succeeds once unused state is freed.
    #[error("backend limit reached: {0}")]
    Full(Limit),
}

/// Which cap refused a call ([`BackendError::Full`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_rooms`: no new room.
    Rooms,
    /// `limits.max_inboxes`: no new direct-message inbox.
    Inboxes,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::Rooms => "too many rooms",
            Limit::Inboxes => "too many inboxes",
        })
    }
}

/// Result of backend calls.
pub type Result<T> = std::result::Result<T, BackendError>;

/// Membership, presence, logs and cursors. See the crate docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds `user` to the room's members and marks them online through this node. Returns the room's
    /// state after the join, whether the user just came online (had no live connection in the room
    /// on any node), and the user's read cursor.
    ///
    /// Every presence change of a room (join, going offline, leaving, reaping, revival) takes the
    /// next *presence seq* of the room and reports it, so nodes can order notices about one user
    /// and tell a join from before a logout from one after it.
    async fn join(&self, req: &JoinRequest<'_>) -> Result<JoinOutcome>;

    /// The user's last local connection in the room on this node went away. They stay a member.
    /// Reports whether they are now offline on every node, with the counts after the change.
    async fn go_offline(&self, room: &RoomId, user: &UserId) -> Result<LeaveOutcome>;

    /// `logout`: the user stops being a member, and is no longer online in the room on any node.
    /// Their cursor for the room is dropped.
    async fn leave(&self, room: &RoomId, user: &UserId) -> Result<LeaveOutcome>;

    /// Keeps this node's presence entries alive (they expire after the presence lease otherwise,
    /// which is how a killed node's users disappear). `entries` are all (room, user) pairs that
    /// have a live connection on this node. Restores what a live connection implies when the
    /// room's data was lost (same epoch check as below), and reports the users this put back
    /// online so the caller can announce them. An entry whose user is no longer a member although
    /// the room's epoch is the one they joined in and its presence seq is past their join logged
    /// out elsewhere: it is reported as departed, not restored.
    async fn refresh_presence(&self, entries: &[PresenceEntry]) -> Result<Refreshed>;

    /// Removes users of `room` whose presence expired (their node died) and reports each one with
    /// the counts after its removal, so the caller can send `logout` notices. Safe to run on many
    /// nodes at once: each expired user is reported to exactly one caller.
    async fn reap_presence(&self, room: &RoomId) -> Result<Vec<Reaped>>;

    /// [`Store::reap_presence`] for many rooms in one call: how a node's upkeep reaps every room it
    /// serves each tick. Returns only rooms that lost someone.
    async fn reap_presence_many(&self, rooms: &[RoomId]) -> Result<Vec<(RoomId, Vec<Reaped>)>> {
        let mut out = Vec::new();
        for room in rooms {
            let reaped = self.reap_presence(room).await?;
            if !reaped.is_empty() {
                out.push((room.clone(), reaped));
            }
        }
        Ok(out)
    }

    /// Appends a message to the room's log under the next seq and publishes it on the room's
    /// channel, atomically.
    async fn post(&self, room: &RoomId, draft: &Draft) -> Result<Posted>;

    /// Appends a direct message to the recipient's and the sender's inboxes and publishes it on both
    /// users' channels, atomically.
    async fn post_direct(&self, to: &UserId, draft: &Draft) -> Result<DirectPosted>;

    /// The epoch and latest seq of a room log or inbox.
    async fn head(&self, stream: &StreamKey) -> Result<Head>;

    /// The heads of many streams in one round trip, for a node comparing everything it delivers
    /// with the store. `None` for a stream whose log has no epoch yet (never used, or its data was
    /// lost): [`Store::head`] creates one.
    async fn heads(&self, streams: &[StreamKey]) -> Result<Vec<Option<Head>>> {
        let mut heads = Vec::with_capacity(streams.len());
        for stream in streams {
            heads.push(Some(self.head(stream).await?));
        }
        Ok(heads)
    }

    /// Messages of a stream with `after < seq <= through`, oldest first; when there are more than
    /// `max`, the newest `max`. Messages older than `min_ts` (ms) are left out.
    async fn range(
        &self,
        stream: &StreamKey,
        after: u64,
        through: u64,
        max: usize,
        min_ts: u64,
    ) -> Result<Vec<ChatMessage>>;

    /// The oldest seq a stream's log still holds in its current epoch (`None` when it holds
    /// nothing): what history retention has not dropped yet.
    async fn oldest(&self, stream: &StreamKey) -> Result<Option<u64>>;

    /// A page of a room's history: up to `limit` messages with seq below `before` (or the newest),
    /// oldest first, with the log's epoch.
    async fn history(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(String, Vec<ChatMessage>)>;

    /// The user's read cursor on a stream: the position up to which they have everything.
    async fn cursor(&self, user: &UserId, stream: &StreamKey) -> Result<Option<Position>>;

    /// Moves the user's cursor forward to `to` (never backward within an epoch). A position in
    /// another epoch than the log's current one is stale and ignored; a stored cursor of an older
    /// epoch is replaced. Returns whether the cursor moved.
    async fn advance_cursor(
        &self,
        user: &UserId,
        stream: &StreamKey,
        to: &Position,
    ) -> Result<bool>;

    /// [`Store::advance_cursor`] for many (user, stream) pairs at once: how a node writes the acks
    /// it batched. Backends that can should make this one round trip.
    async fn advance_cursors(&self, batch: &[CursorUpdate]) -> Result<()> {
        for update in batch {
            self.advance_cursor(&update.user, &update.stream, &update.to)
                .await?;
        }
        Ok(())
    }

    /// Every room with its counts and latest seq.
    async fn rooms(&self) -> Result<Vec<RoomSummary>>;

    /// Members of a room (ids), sorted.
    async fn members(&self, room: &RoomId) -> Result<Vec<UserId>>;

    /// Users online in a room now, on any node (ids), sorted.
    async fn online(&self, room: &RoomId) -> Result<Vec<UserId>>;

    /// Checks the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;
}

/// Moves live traffic between nodes.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts delivering the channel's traffic as [`BrokerEvent`]s. Returns once the subscription is
    /// in effect, so a head read after it cannot miss a message.
    async fn subscribe(&self, channel: &Channel) -> Result<()>;

    /// Stops delivering the channel's traffic.
    async fn unsubscribe(&self, channel: &Channel) -> Result<()>;

    /// Publishes a `login`/`logout` notice to every node subscribed to the room.
    async fn publish_notice(&self, notice: &Notice) -> Result<()>;

    /// Checks live traffic can flow: the broker is connected and subscriptions work (for
    /// `/readyz`). A reconnecting broker is not ready even when the store answers.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}

/// A backend ready to use: the two halves and the queue of incoming events.
pub struct Backend {
    /// Membership, presence, logs, cursors.
    pub store: Arc<dyn Store>,
    /// Live traffic between nodes.
    pub broker: Arc<dyn Broker>,
    /// Events of the subscribed channels, in the order the broker received them.
    pub events: mpsc::Receiver<BrokerEvent>,
    /// Short name for logs and `/readyz` (`memory` or `redis`).
    pub kind: &'static str,
}

/// A presence notice as published between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The user came online in the room.
    Login(PresenceNotice),
    /// The user went offline or left.
    Logout(PresenceNotice),
}

impl Notice {
    /// The room the notice is about.
    pub fn room_id(&self) -> &RoomId {
        match self {
            Notice::Login(n) | Notice::Logout(n) => &n.room_id,
        }
    }
}

/// Something that arrived on a subscribed channel.
#[derive(Debug, Clone)]
pub enum BrokerEvent {
    /// A message appended to a room log or an inbox. `frame` is its wire encoding, built once.
    Message {
        /// Which log it belongs to.
        stream: StreamKey,
        /// The message.
        message: ChatMessage,
        /// `message` encoded as the `{"event":"message",...}` frame.
        frame: String,
    },
    /// A presence notice for a room. `frame` is its wire encoding.
    Notice {
        /// The notice.
        notice: Notice,
        /// The encoded `login`/`logout` frame.
        frame: String,
    },
    /// The broker lost its connection and subscribed again: messages may have been lost meanwhile,
    /// so every subscribed stream must be checked against its head.
    Resubscribed,
}

/// Capacity of the broker event queue between the backend and the node's hub.
pub const EVENT_QUEUE: usize = 4096;
