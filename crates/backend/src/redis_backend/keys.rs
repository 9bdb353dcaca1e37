//! Names of every Redis key and pub/sub channel the backend uses (documented in `docs/redis.md`).
//!
//! All names live under one configurable prefix (default `chat:`), so several clusters can share
//! one Redis and `redis-cli --scan --pattern 'chat:*'` finds everything. Room and user ids match
//! `^[A-Za-z0-9_.:-]{1,64}$`; each key kind ends in a distinct suffix, so no id can make two
//! kinds collide, and `|` / `@` stay free as separators inside values.
//!
//! The id in a room's or a user's keys and channel is wrapped in braces, `chat:room:{lobby}:log`:
//! a Redis Cluster hash tag, so all of one room's keys (and all of one user's) live in one slot,
//! and a script that touches only those can run on Redis Cluster. Ids cannot contain braces.

use chat_protocol::{RoomId, UserId};

use crate::{Position, StreamKey};

/// Builds key and channel names under the configured prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn room_key(&self, room: &RoomId, part: &str) -> String {
        format!("{}room:{{{}}}:{}", self.prefix, room, part)
    }

    fn user_key(&self, user: &UserId, part: &str) -> String {
        format!("{}user:{{{}}}:{}", self.prefix, user, part)
    }

    /// HASH `name`, `epoch`, `seq` of a room and its log.
    pub(crate) fn room_meta(&self, room: &RoomId) -> String {
        self.room_key(room, "meta")
    }

    /// ZSET of the room's message frames, scored by seq.
    pub(crate) fn room_log(&self, room: &RoomId) -> String {
        self.room_key(room, "log")
    }

    /// SET of member user ids.
    pub(crate) fn room_members(&self, room: &RoomId) -> String {
        self.room_key(room, "members")
    }

    /// HASH user id -> display name.
    pub(crate) fn room_names(&self, room: &RoomId) -> String {
        self.room_key(room, "names")
    }

    /// ZSET user id -> presence expiry (ms, Redis time).
    pub(crate) fn room_online(&self, room: &RoomId) -> String {
        self.room_key(room, "online")
    }

    /// ZSET `user|node` -> presence expiry through that node.
    pub(crate) fn room_conns(&self, room: &RoomId) -> String {
        self.room_key(room, "conns")
    }

    /// ZSET `user|clientMsgId` -> seq of the post: makes retried posts idempotent.
    pub(crate) fn room_ids(&self, room: &RoomId) -> String {
        self.room_key(room, "ids")
    }

    /// SET of every room id.
    pub(crate) fn rooms(&self) -> String {
        format!("{}rooms", self.prefix)
    }

    /// ZSET node id -> expiry of the node's liveness.
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// ZSET of a user's direct-message frames, scored by seq.
    pub(crate) fn inbox_log(&self, user: &UserId) -> String {
        self.user_key(user, "inbox")
    }

    /// HASH `epoch`, `seq` of a user's inbox.
    pub(crate) fn inbox_meta(&self, user: &UserId) -> String {
        self.user_key(user, "inbox:meta")
    }

    /// ZSET `to|clientMsgId` -> seq in the user's own inbox of the direct messages they sent:
    /// makes retried direct messages idempotent.
    pub(crate) fn inbox_ids(&self, user: &UserId) -> String {
        self.user_key(user, "inbox:ids")
    }

    /// HASH stream field -> read cursor, with the offline-retention TTL.
    pub(crate) fn cursors(&self, user: &UserId) -> String {
        self.user_key(user, "cursors")
    }

    /// The meta HASH of a stream.
    pub(crate) fn meta(&self, stream: &StreamKey) -> String {
        match stream {
            StreamKey::Room(room) => self.room_meta(room),
            StreamKey::Inbox(user) => self.inbox_meta(user),
        }
    }

    /// The log ZSET of a stream.
    pub(crate) fn log(&self, stream: &StreamKey) -> String {
        match stream {
            StreamKey::Room(room) => self.room_log(room),
            StreamKey::Inbox(user) => self.inbox_log(user),
        }
    }

    /// The post ids ZSET tied to a stream's seqs: a room's `ids`, or for an inbox the ids of the
    /// direct messages its owner sent (their seqs are in the owner's own inbox).
    pub(crate) fn ids(&self, stream: &StreamKey) -> String {
        match stream {
            StreamKey::Room(room) => self.room_ids(room),
            StreamKey::Inbox(user) => self.inbox_ids(user),
        }
    }

    /// The pub/sub channel of a stream: `{prefix}room:{<r>}` or `{prefix}user:{<u>}`, with the
    /// same hash tag as the stream's keys (sharded pub/sub publishes in the keys' slot).
    pub(crate) fn channel(&self, stream: &StreamKey) -> String {
        match stream {
            StreamKey::Room(room) => format!("{}room:{{{}}}", self.prefix, room),
            StreamKey::Inbox(user) => format!("{}user:{{{}}}", self.prefix, user),
        }
    }

    /// The stream a channel name belongs to, or `None` for a name this backend never subscribes.
    pub(crate) fn parse_channel(&self, channel: &str) -> Option<StreamKey> {
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        let tagged = |s: &str| s.strip_prefix('{')?.strip_suffix('}').map(str::to_owned);
        if let Some(room) = rest.strip_prefix("room:") {
            RoomId::new(tagged(room)?).ok().map(StreamKey::Room)
        } else if let Some(user) = rest.strip_prefix("user:") {
            UserId::new(tagged(user)?).ok().map(StreamKey::Inbox)
        } else {
            None
        }
    }

    /// Field of a stream in a user's cursors HASH: the room id, or `@{owner}` for an inbox (`@`
    /// cannot occur in ids, so the two kinds never clash).
    pub(crate) fn cursor_field(stream: &StreamKey) -> String {
        match stream {
            StreamKey::Room(room) => room.to_string(),
            StreamKey::Inbox(owner) => format!("@{owner}"),
        }
    }
}

impl Keys {
    /// A stored cursor: `seq:epoch`, or a plain `seq` written by versions that stored no epoch
    /// (taken to belong to the log's current epoch, hence the empty epoch).
    pub(crate) fn parse_cursor_value(text: &str) -> Option<Position> {
        let (seq, epoch) = text.split_once(':').unwrap_or((text, ""));
        let plain_id = epoch.len() <= 64
            && epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let digits = !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit());
        if !digits || !plain_id || (text.contains(':') && epoch.is_empty()) {
            return None;
        }
        Some(Position::new(epoch, seq.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip() {
        let keys = Keys::new("chat:");
        for stream in [
            StreamKey::Room(RoomId::new("lobby:1").expect("id")),
            StreamKey::Inbox(UserId::new("ann.b").expect("id")),
        ] {
            let channel = keys.channel(&stream);
            assert_eq!(keys.parse_channel(&channel), Some(stream));
        }
        assert_eq!(keys.parse_channel("other:room:x"), None);
        assert_eq!(keys.parse_channel("chat:room:{bad id}"), None);
        assert_eq!(
            keys.parse_channel("chat:room:lobby"),
            None,
            "untagged: an older layout"
        );
    }

    #[test]
    fn layout_matches_the_docs() {
        let keys = Keys::new("chat:");
        let room = RoomId::new("lobby").expect("id");
        let user = UserId::new("ann").expect("id");
        assert_eq!(keys.room_meta(&room), "chat:room:{lobby}:meta");
        assert_eq!(keys.room_online(&room), "chat:room:{lobby}:online");
        assert_eq!(keys.inbox_log(&user), "chat:user:{ann}:inbox");
        assert_eq!(keys.inbox_meta(&user), "chat:user:{ann}:inbox:meta");
        assert_eq!(keys.cursors(&user), "chat:user:{ann}:cursors");
        assert_eq!(
            keys.channel(&StreamKey::Room(room.clone())),
            "chat:room:{lobby}"
        );
        assert_eq!(Keys::cursor_field(&StreamKey::Inbox(user)), "@ann");
    }

    #[test]
    fn cursor_values_carry_their_epoch() {
        assert_eq!(
            Keys::parse_cursor_value("42:e-1_x"),
            Some(Position::new("e-1_x", 42))
        );
        assert_eq!(Keys::parse_cursor_value("42"), Some(Position::new("", 42)));
        for bad in [
            "",
            "x",
            "4 2",
            "42:",
            ":e",
            "42:e:f",
            "-1:e",
            "99999999999999999999999:e",
        ] {
            assert_eq!(Keys::parse_cursor_value(bad), None, "{bad:?}");
        }
    }
}
