//! Who is in which room through this node: the one owner of each (room, user) pair's local state.
//!
//! A user's presence in a room is changed from several places: their sessions (join, logout, a
//! closed connection), the broker (`login`/`logout` notices from other nodes) and the presence
//! upkeep (lease refresh, reconciliation). This module keeps that state for the whole node and
//! decides every transition, so no interleaving of those callers can leave a connection in a room
//! it was logged out of, or vouch for a user who is gone. It is pure: no I/O, no async, no clock,
//! driven by [`crate::hub::Hub`] under its lock and unit-tested directly.
//!
//! Ordering comes from the store. Every presence change of a room (join, going offline, logout,
//! reaping, revival) takes the next value of the room's *presence seq*, and notices carry it. So:
//! - a `logout` with reason `left` at presence seq `L` removes exactly the user's connections whose
//!   join took a presence seq below `L`. A join still in flight when the notice arrives is checked
//!   when it completes ([`Membership::complete_join`]); a connection that joined after the logout
//!   stays;
//! - a notice about a user older than one already seen for that user is stale and dropped
//!   ([`Membership::observe_notice`]), so `login` and `logout` of one user cannot be shown out of
//!   order;
//! - the upkeep vouches only for users with a completed join ([`Membership::snapshot`]), and tells
//!   the store which join it vouches for, so the store can tell a user who logged out elsewhere
//!   (reported back, applied with [`Membership::on_left`]) from one whose data Redis lost.

use std::collections::{HashMap, VecDeque};

use chat_protocol::{RoomId, UserId};

use crate::hub::ConnId;

/// Most (room, user) pairs whose last notice seq is remembered to drop stale notices. Out-of-order
/// notices are a publish race of milliseconds, so a bounded window of recent users is enough.
const SEEN_CAPACITY: usize = 8192;

/// The join a node vouches for: the log epoch and presence seq its newest completed join saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// The room.
    pub room: RoomId,
    /// The user.
    pub user: UserId,
    /// Their display name.
    pub user_name: String,
    /// The room's log epoch at that join.
    pub epoch: String,
    /// The presence seq of that join.
    pub joined_at: u64,
}

/// What [`Membership::complete_join`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinVerdict {
    /// The connection is in the room.
    Joined,
    /// A logout of the user that the store ordered after this join arrived first: the join is
    /// void, and the connection is not in the room.
    Overtaken,
}

/// Where a connection's join landed: the log's epoch and the room's presence seq.
type JoinedAt = (Box<str>, u64);

#[derive(Debug)]
struct Entry {
    user_name: String,
    /// Local connections: `None` while the join is in flight, else its epoch and presence seq.
    /// A vector, not a map: a user has one or a few connections per room, and an empty `BTreeMap`
    /// node for one entry costs ~450 bytes per (room, user) at idle (docs/benchmarks.md).
    conns: Vec<(ConnId, Option<JoinedAt>)>,
    /// Highest presence seq of a `left` applied to this user here: joins at or below it are void.
    left_at: u64,
}

impl Entry {
    fn get(&self, conn: ConnId) -> Option<&Option<(Box<str>, u64)>> {
        self.conns.iter().find(|(c, _)| *c == conn).map(|(_, j)| j)
    }

    /// Inserts or replaces `conn`'s join.
    fn put(&mut self, conn: ConnId, joined: Option<(Box<str>, u64)>) {
        match self.conns.iter_mut().find(|(c, _)| *c == conn) {
            Some((_, slot)) => *slot = joined,
            None => self.conns.push((conn, joined)),
        }
    }

    /// Removes `conn`; false when it was not there.
    fn take(&mut self, conn: ConnId) -> bool {
        let before = self.conns.len();
        self.conns.retain(|(c, _)| *c != conn);
        self.conns.len() != before
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Membership {
    entries: HashMap<(RoomId, UserId), Entry>,
    /// Highest notice presence seq seen per (room, user), for the most recent pairs.
    seen: HashMap<(RoomId, UserId), u64>,
    seen_order: VecDeque<(RoomId, UserId)>,
}

impl Membership {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection starts joining (before the store records it).
    pub fn begin_join(&mut self, room: &RoomId, user: &UserId, user_name: &str, conn: ConnId) {
        self.entries
            .entry((room.clone(), user.clone()))
            .or_insert_with(|| Entry {
                user_name: user_name.to_owned(),
                // Most users have one connection per room: no room reserved for more.
                conns: Vec::with_capacity(1),
                left_at: 0,
            })
            .put(conn, None);
    }

    /// The store recorded the join at presence seq `joined_at` in log epoch `epoch`.
    pub fn complete_join(
        &mut self,
        room: &RoomId,
        user: &UserId,
        conn: ConnId,
        epoch: &str,
        joined_at: u64,
    ) -> JoinVerdict {
        let key = (room.clone(), user.clone());
        let Some(entry) = self.entries.get_mut(&key) else {
            return JoinVerdict::Overtaken;
        };
        if joined_at <= entry.left_at || entry.get(conn).is_none() {
            self.remove(room, user, conn);
            return JoinVerdict::Overtaken;
        }
        entry.put(conn, Some((Box::from(epoch), joined_at)));
        JoinVerdict::Joined
    }

    /// The connection is no longer in the room (join failed, connection closed, logout). Returns
    /// true when it was the user's last local connection there.
    pub fn remove(&mut self, room: &RoomId, user: &UserId, conn: ConnId) -> bool {
        let key = (room.clone(), user.clone());
        let Some(entry) = self.entries.get_mut(&key) else {
            return false;
        };
        if !entry.take(conn) {
            return false;
        }
        if entry.conns.is_empty() {
            self.entries.remove(&key);
            true
        } else {
            false
        }
    }

    /// The user logged out of the room at presence seq `left_at` (on any node). Returns the local
    /// connections that joined before it, now removed; joins still in flight are decided when
    /// they complete.
    pub fn on_left(&mut self, room: &RoomId, user: &UserId, left_at: u64) -> Vec<ConnId> {
        let key = (room.clone(), user.clone());
        let Some(entry) = self.entries.get_mut(&key) else {
            return Vec::new();
        };
        entry.left_at = entry.left_at.max(left_at);
        let mut gone: Vec<ConnId> = entry
            .conns
            .iter()
            .filter(|(_, joined)| joined.as_ref().is_some_and(|(_, at)| *at < left_at))
            .map(|(conn, _)| *conn)
            .collect();
        gone.sort_unstable();
        entry.conns.retain(|(conn, _)| !gone.contains(conn));
        if entry.conns.is_empty() {
            self.entries.remove(&key);
        }
        gone
    }

    /// A notice about `user` in `room` at presence seq `at` arrived. Returns false when it is
    /// stale: a later change of the same user was already seen, so showing it would undo that.
    pub fn observe_notice(&mut self, room: &RoomId, user: &UserId, at: u64) -> bool {
        let key = (room.clone(), user.clone());
        match self.seen.get_mut(&key) {
            Some(seen) if *seen > at => false,
            Some(seen) => {
                *seen = at;
                true
            }
            None => {
                if self.seen_order.len() >= SEEN_CAPACITY
                    && let Some(oldest) = self.seen_order.pop_front()
                {
                    self.seen.remove(&oldest);
                }
                self.seen_order.push_back(key.clone());
                self.seen.insert(key, at);
                true
            }
        }
    }

    /// Users this node vouches for: at least one completed join, with the newest one.
    pub fn snapshot(&self) -> Vec<Vouched> {
        self.entries
            .iter()
            .filter_map(|((room, user), entry)| {
                let (epoch, joined_at) = entry
                    .conns
                    .iter()
                    .filter_map(|(_, j)| j.as_ref())
                    .max_by_key(|(_, at)| *at)?;
                Some(Vouched {
                    room: room.clone(),
                    user: user.clone(),
                    user_name: entry.user_name.clone(),
                    epoch: epoch.to_string(),
                    joined_at: *joined_at,
                })
            })
            .collect()
    }

    /// Rooms with at least one local connection (joined or joining).
    pub fn rooms(&self) -> Vec<RoomId> {
        let mut rooms: Vec<RoomId> = self.entries.keys().map(|(r, _)| r.clone()).collect();
        rooms.sort();
        rooms.dedup();
        rooms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId::new("r").expect("id")
    }

    fn user() -> UserId {
        UserId::new("u").expect("id")
    }

    #[test]
    fn a_logout_removes_connections_that_joined_before_it_only() {
        let mut m = Membership::new();
        m.begin_join(&room(), &user(), "U", 1);
        assert_eq!(
            m.complete_join(&room(), &user(), 1, "e", 3),
            JoinVerdict::Joined
        );
        m.begin_join(&room(), &user(), "U", 2);
        assert_eq!(
            m.complete_join(&room(), &user(), 2, "e", 7),
            JoinVerdict::Joined
        );
        // The logout took presence seq 5: connection 1 joined before it, connection 2 after.
        assert_eq!(m.on_left(&room(), &user(), 5), vec![1]);
        assert_eq!(m.snapshot().len(), 1);
        assert_eq!(m.snapshot()[0].joined_at, 7);
    }

    /// Defect 3: the notice of a logout ordered after a join arrives while the join is in flight.
    #[test]
    fn a_join_overtaken_by_a_logout_is_void() {
        let mut m = Membership::new();
        m.begin_join(&room(), &user(), "U", 1);
        assert!(m.on_left(&room(), &user(), 9).is_empty(), "still joining");
        assert!(
            m.snapshot().is_empty(),
            "a join in flight is not vouched for"
        );
        assert_eq!(
            m.complete_join(&room(), &user(), 1, "e", 8),
            JoinVerdict::Overtaken
        );
        assert!(m.snapshot().is_empty());
        assert!(m.rooms().is_empty(), "nothing left behind");
    }

    #[test]
    fn a_join_after_the_logout_survives_its_late_notice() {
        let mut m = Membership::new();
        m.begin_join(&room(), &user(), "U", 1);
        assert_eq!(
            m.complete_join(&room(), &user(), 1, "e", 10),
            JoinVerdict::Joined
        );
        assert!(m.on_left(&room(), &user(), 9).is_empty());
        assert_eq!(m.snapshot().len(), 1);
    }

    #[test]
    fn the_last_connection_gone_is_reported_once() {
        let mut m = Membership::new();
        for conn in [1, 2] {
            m.begin_join(&room(), &user(), "U", conn);
            m.complete_join(&room(), &user(), conn, "e", conn);
        }
        assert!(!m.remove(&room(), &user(), 1));
        assert!(m.remove(&room(), &user(), 2));
        assert!(!m.remove(&room(), &user(), 2));
        assert!(m.snapshot().is_empty());
    }

    #[test]
    fn stale_notices_are_dropped() {
        let mut m = Membership::new();
        assert!(m.observe_notice(&room(), &user(), 4));
        assert!(
            !m.observe_notice(&room(), &user(), 3),
            "older than one seen"
        );
        assert!(
            m.observe_notice(&room(), &user(), 4),
            "the same notice again"
        );
        assert!(m.observe_notice(&room(), &UserId::new("v").expect("id"), 1));
    }

    #[test]
    fn the_window_of_seen_notices_is_bounded() {
        let mut m = Membership::new();
        for i in 0..(SEEN_CAPACITY as u64 + 10) {
            let user = UserId::new(format!("u{i}")).expect("id");
            m.observe_notice(&room(), &user, i);
        }
        assert_eq!(m.seen.len(), SEEN_CAPACITY);
        assert_eq!(m.seen_order.len(), SEEN_CAPACITY);
    }
}
