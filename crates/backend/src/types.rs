//! Plain data passed across the backend traits.

use chat_protocol::{RoomId, UserId};

/// A log the store keeps: a room's messages, or a user's direct-message inbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKey {
    /// A room's log.
    Room(RoomId),
    /// A user's direct-message inbox.
    Inbox(UserId),
}

/// Also the name of the broker channel that carries a stream's live traffic.
pub type Channel = StreamKey;

/// Identity and position of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Random id chosen when the log was created; changes when the log is lost and recreated.
    pub epoch: String,
    /// Latest seq (0 for an empty log).
    pub seq: u64,
}

/// A position in a log: a seq is only meaningful together with the epoch it was assigned in, so
/// the two always travel together (read cursors, delivery marks).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The log's epoch. Empty for a cursor written by a version that stored no epoch: such a
    /// cursor is taken to belong to the log's current epoch.
    pub epoch: String,
    /// The seq within that epoch.
    pub seq: u64,
}

impl Position {
    /// A position in `epoch`.
    pub fn new(epoch: impl Into<String>, seq: u64) -> Self {
        Position {
            epoch: epoch.into(),
            seq,
        }
    }

    /// The seq, if this position belongs to a log whose epoch is `epoch` (a legacy cursor without
    /// an epoch counts as belonging to it).
    pub fn seq_in(&self, epoch: &str) -> Option<u64> {
        (self.epoch.is_empty() || self.epoch == epoch).then_some(self.seq)
    }
}

/// One entry of [`crate::Store::advance_cursors`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorUpdate {
    /// Whose cursor.
    pub user: UserId,
    /// On which stream.
    pub stream: StreamKey,
    /// Where to move it (forward only, within the log's current epoch).
    pub to: Position,
}

/// Online users and members of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Distinct users online in the room, over all nodes.
    pub num: u64,
    /// Members (joined and not logged out).
    pub total: u64,
}

/// Arguments of [`crate::Store::join`].
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// The room.
    pub room: &'a RoomId,
    /// Who joins.
    pub user: &'a UserId,
    /// Their display name.
    pub user_name: &'a str,
    /// A display name for the room, kept if the room has none yet.
    pub room_name: Option<&'a str>,
}

/// Result of [`crate::Store::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The room's display name.
    pub room_name: String,
    /// The room log's head at the join.
    pub head: Head,
    /// Counts after the join.
    pub counts: Counts,
    /// True when the user had no live connection in the room on any node before.
    pub came_online: bool,
    /// True when the user was not a member before.
    pub new_member: bool,
    /// The user's read cursor on the room, if they have one.
    pub cursor: Option<Position>,
    /// The room's presence seq taken by this join (see [`crate::Store::join`]).
    pub presence_seq: u64,
}

/// Result of [`crate::Store::go_offline`] and [`crate::Store::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// True when the user has no live connection in the room on any node anymore (for `leave`:
    /// was online before it).
    pub went_offline: bool,
    /// Counts after the change.
    pub counts: Counts,
    /// The room's presence seq taken by the change.
    pub presence_seq: u64,
}

/// A (room, user) pair a node vouches for: the user has a live connection in the room there,
/// joined at `joined_at` in the room's presence seqs while its log had epoch `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The room.
    pub room: RoomId,
    /// The user.
    pub user: UserId,
    /// Their display name (restored in the store if it was lost).
    pub user_name: String,
    /// The room's log epoch at the join: a different one now means the room's data was lost.
    pub epoch: String,
    /// The presence seq of the newest join the node vouches for.
    pub joined_at: u64,
}

/// Result of [`crate::Store::refresh_presence`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Users put back online.
    pub revived: Vec<Revived>,
    /// Users who logged out of the room after the join the node vouched for (their `left` notice
    /// never reached it): the node must drop their connections from the room.
    pub departed: Vec<Departed>,
}

/// See [`Refreshed::departed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    /// The room.
    pub room: RoomId,
    /// The user.
    pub user: UserId,
    /// Their display name.
    pub user_name: String,
    /// The room's presence seq now (at or after the logout).
    pub presence_seq: u64,
    /// Counts now.
    pub counts: Counts,
}

/// A user a presence refresh put back online: their entry had been reaped (their node stalled
/// past the lease) or lost (Redis lost its data), so the room saw them go and must see them return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revived {
    /// The room.
    pub room: RoomId,
    /// The user.
    pub user: UserId,
    /// Their display name.
    pub user_name: String,
    /// Counts after the refresh.
    pub counts: Counts,
    /// The room's presence seq taken by the revival.
    pub presence_seq: u64,
}

/// A user removed from a room's presence because their node stopped refreshing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The user.
    pub user: UserId,
    /// Their display name, as last stored.
    pub user_name: String,
    /// Counts after the removal.
    pub counts: Counts,
    /// The room's presence seq taken by the removal.
    pub presence_seq: u64,
}

/// A message before it has a seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The author.
    pub user_id: UserId,
    /// The author's display name.
    pub user_name: String,
    /// The text.
    pub content: String,
    /// The author's id for the post.
    pub client_msg_id: Option<String>,
}

/// Where a post landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The epoch of the log.
    pub epoch: String,
    /// The seq assigned.
    pub seq: u64,
    /// Server time of posting (ms since the Unix epoch).
    pub ts: u64,
    /// True when this is the receipt of an earlier post by the same author with the same
    /// `clientMsgId` (to the same addressee, for direct messages), still in the log: nothing new
    /// was stored or published. A plain retry.
    pub duplicate: bool,
    /// True when `duplicate` and the earlier post's content differs from this draft's: the
    /// `clientMsgId` was reused for a different message, which was not stored.
    pub conflict: bool,
}

/// Where a direct message landed: once in each inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectPosted {
    /// Position in the sender's inbox (the receipt the sender gets).
    pub sender: Posted,
    /// Position in the recipient's inbox; `None` when the post was a retry of an earlier one with
    /// the same `clientMsgId`, so nothing new was stored or sent.
    pub recipient: Option<Posted>,
}

/// One row of `GET /api/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    /// The room.
    pub room_id: RoomId,
    /// Its display name.
    pub room_name: String,
    /// Distinct users online.
    pub num: u64,
    /// Members.
    pub total: u64,
    /// Latest seq.
    pub seq: u64,
    /// The log's epoch.
    pub epoch: String,
}
