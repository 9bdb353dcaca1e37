//! Frames the server sends.
//!
//! They derive both `Serialize` (the gateway) and `Deserialize` (clients, tests, the load
//! generator), so the two sides cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{RoomId, UserId};

/// Every frame the server sends, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum ServerFrame {
    /// Reply to the connection's own `login`.
    #[serde(rename = "joined")]
    Joined(Joined),
    /// A user came online in a room.
    #[serde(rename = "login")]
    Login(PresenceNotice),
    /// A user went offline in a room (`reason: offline`) or left it for good (`reason: left`).
    #[serde(rename = "logout")]
    Logout(PresenceNotice),
    /// A chat message, live or replayed.
    #[serde(rename = "message")]
    Message(ChatMessage),
    /// The sender's receipt for a post.
    #[serde(rename = "sent")]
    Sent(Sent),
    /// Reply to `history`.
    #[serde(rename = "history")]
    History(HistoryPage),
    /// Reply to an application-level ping.
    #[serde(rename = "heartBeat")]
    HeartBeat {
        /// Always `"pong"`.
        content: String,
    },
    /// A frame could not be accepted; the connection stays usable.
    #[serde(rename = "error")]
    Error(ErrorFrame),
    /// `auth.mode = "jwt"`: the connection has no valid token (yet, or any more). The frame that
    /// caused it was dropped; send `{"event":"auth","token":"…"}`.
    #[serde(rename = "noauth")]
    NoAuth {
        /// What is missing or wrong.
        message: String,
    },
    /// Reply to `auth`: the token was accepted; the connection is this user until `expiresAt`.
    #[serde(rename = "auth")]
    Authenticated {
        /// From the token's `sub`.
        #[serde(rename = "userId")]
        user_id: crate::UserId,
        /// From the token's `name`.
        #[serde(rename = "userName")]
        user_name: String,
        /// The token's `exp` (seconds since the epoch): send a fresh `auth` before it.
        #[serde(rename = "expiresAt")]
        expires_at: u64,
    },
}

/// Reply to `login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    /// The room joined.
    pub room_id: RoomId,
    /// Its display name (the id when it was never named).
    pub room_name: String,
    /// The latest seq in the room when the join took effect; live messages continue after it
    /// (after any replayed ones).
    pub seq: u64,
    /// The identity of the room's log; a new epoch means seqs started over.
    pub epoch: String,
    /// Distinct users online in the room.
    pub num: u64,
    /// Members of the room (joined and not logged out).
    pub total: u64,
    /// How many missed messages are replayed right after this frame.
    #[serde(default)]
    pub replayed: u64,
    /// False when the replay does not reach back to the client's position (its `since`, or its
    /// stored read cursor): messages after that position were dropped by history retention, are
    /// older than the replay bounds, or exceed `offline.max_per_room`. True when the replay
    /// closes the gap, and when there was no position to recover from (a new member, or a `login`
    /// without `since` and without a stored cursor). Absent from older servers: read as true.
    #[serde(default = "yes")]
    pub recovered: bool,
    /// With `recovered: false`: the oldest seq the room's history still holds (`history` pages back
    /// to it; anything older is gone). Omitted otherwise, and when the history is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_seq: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Why a user left a room's online list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogoutReason {
    /// Sent `logout`: no longer a member.
    Left,
    /// Lost their last connection (closed, reaped by the heartbeat, or their node died); still a member.
    Offline,
}

/// A `login` or `logout` notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceNotice {
    /// The room.
    pub room_id: RoomId,
    /// Who came or went.
    pub user_id: UserId,
    /// Their display name.
    pub user_name: String,
    /// Distinct users online in the room after the change.
    pub num: u64,
    /// Members of the room after the change.
    pub total: u64,
    /// Set on `logout` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LogoutReason>,
    /// The room's presence seq of this change: it grows with every presence change of the room,
    /// so of two notices about one user the one with the higher value is the newer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_seq: Option<u64>,
}

/// A chat message. Room messages carry `roomId`; direct messages carry `toUserId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// The room, for room messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
    /// The addressee, for direct messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user_id: Option<UserId>,
    /// Position in the room's log (for direct messages: in the receiving user's inbox). Starts at 1
    /// and grows by exactly 1 within one epoch.
    pub seq: u64,
    /// The log's identity; see [`Joined::epoch`].
    pub epoch: String,
    /// The author.
    pub user_id: UserId,
    /// The author's display name at posting time.
    pub user_name: String,
    /// The text.
    pub content: String,
    /// Server time of posting, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The author's `clientMsgId`, if the post had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// True when this is a replay of a message missed while offline (or asked for with `since`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub replay: bool,
    /// True when the server sends this message again because the connection did not acknowledge
    /// it within `delivery.ack_timeout_secs` (see `docs/delivery.md`). The client already may have
    /// it: deduplicate by (`roomId` or inbox, `epoch`, `seq`). Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resend: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The sender's receipt for a post: it is stored and has its seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    /// The room posted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
    /// The addressee of a direct message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user_id: Option<UserId>,
    /// The post's `clientMsgId`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The seq assigned (for direct messages: in the sender's own inbox).
    pub seq: u64,
    /// The epoch of the log the seq belongs to.
    pub epoch: String,
    /// Server time of posting.
    pub ts: u64,
    /// True when the post repeated an earlier one with the same `clientMsgId` (a retry): this is
    /// the earlier post's receipt and nothing new was stored or delivered. Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

/// Reply to `history`: messages in ascending seq order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    /// The room.
    pub room_id: RoomId,
    /// The epoch of the room's log.
    pub epoch: String,
    /// Up to `limit` messages, oldest first.
    pub messages: Vec<ChatMessage>,
}

/// An `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The offending frame's `clientMsgId`, if any.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// True when the same frame may succeed if sent again later.
    #[serde(default)]
    pub retriable: bool,
}

impl From<ProtocolError> for ServerFrame {
    fn from(e: ProtocolError) -> Self {
        ServerFrame::Error(ErrorFrame {
            retriable: e.code.is_retriable(),
            code: e.code,
            message: e.message,
            reference: e.reference,
        })
    }
}

impl ServerFrame {
    /// The pong answering an application-level `heartBeat`.
    pub fn pong() -> Self {
        ServerFrame::HeartBeat {
            content: "pong".to_owned(),
        }
    }

    /// Encodes the frame as the JSON text sent on the wire.
    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys, no custom
        // serializers that error); the fallback keeps that a non-panicking certainty.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"event":"error","code":"internal","message":"encoding failed","retriable":true}"#.to_owned()
        })
    }

    /// Decodes a frame received from a server (used by clients).
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> ChatMessage {
        ChatMessage {
            room_id: Some(RoomId::new("r1").expect("id")),
            to_user_id: None,
            seq: 3,
            epoch: "e1".into(),
            user_id: UserId::new("u1").expect("id"),
            user_name: "Ann".into(),
            content: "hi \"there\"\n".into(),
            ts: 1_700_000_000_000,
            client_msg_id: None,
            replay: false,
            resend: false,
        }
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            ServerFrame::Joined(Joined {
                room_id: RoomId::new("r1").expect("id"),
                room_name: "Room".into(),
                seq: 9,
                epoch: "e".into(),
                num: 2,
                total: 3,
                replayed: 1,
                recovered: false,
                oldest_seq: Some(4),
            }),
            ServerFrame::Login(PresenceNotice {
                room_id: RoomId::new("r1").expect("id"),
                user_id: UserId::new("u").expect("id"),
                user_name: "U".into(),
                num: 1,
                total: 1,
                reason: None,
                presence_seq: None,
            }),
            ServerFrame::Logout(PresenceNotice {
                room_id: RoomId::new("r1").expect("id"),
                user_id: UserId::new("u").expect("id"),
                user_name: "U".into(),
                num: 0,
                total: 1,
                reason: Some(LogoutReason::Offline),
                presence_seq: Some(4),
            }),
            ServerFrame::Message(message()),
            ServerFrame::Message(ChatMessage {
                replay: true,
                ..message()
            }),
            ServerFrame::Sent(Sent {
                room_id: None,
                to_user_id: Some(UserId::new("b").expect("id")),
                client_msg_id: Some("c".into()),
                seq: 1,
                epoch: "e".into(),
                ts: 5,
                duplicate: true,
            }),
            ServerFrame::History(HistoryPage {
                room_id: RoomId::new("r1").expect("id"),
                epoch: "e".into(),
                messages: vec![message()],
            }),
            ServerFrame::pong(),
            ServerFrame::from(
                ProtocolError::new(ErrorCode::BadJson, "nope").with_ref(Some("x".into())),
            ),
        ];
        for frame in frames {
            let text = frame.encode();
            assert_eq!(ServerFrame::decode(&text).expect(&text), frame, "{text}");
        }
    }

    #[test]
    fn wire_spelling_matches_the_documented_protocol() {
        let text = ServerFrame::Message(message()).encode();
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["event"], "message");
        assert_eq!(v["roomId"], "r1");
        assert_eq!(v["userId"], "u1");
        assert_eq!(v["userName"], "Ann");
        assert!(v.get("replay").is_none(), "live messages omit `replay`");
        assert!(v.get("toUserId").is_none());

        let pong = ServerFrame::pong().encode();
        assert_eq!(pong, r#"{"event":"heartBeat","content":"pong"}"#);

        let err =
            ServerFrame::from(ProtocolError::new(ErrorCode::Unavailable, "redis down")).encode();
        let v: serde_json::Value = serde_json::from_str(&err).expect("json");
        assert_eq!(v["code"], "unavailable");
        assert_eq!(v["retriable"], true);
        assert!(v.get("ref").is_none());

        let conflict = ServerFrame::from(
            ProtocolError::new(ErrorCode::IdConflict, "reused").with_ref(Some("c1".into())),
        )
        .encode();
        let v: serde_json::Value = serde_json::from_str(&conflict).expect("json");
        assert_eq!(v["code"], "id_conflict");
        assert_eq!(ErrorCode::IdConflict.as_str(), "id_conflict");
        assert_eq!(v["retriable"], false);
        assert_eq!(v["ref"], "c1");

        let sent = |duplicate| {
            ServerFrame::Sent(Sent {
                room_id: Some(RoomId::new("r1").expect("id")),
                to_user_id: None,
                client_msg_id: Some("c1".into()),
                seq: 4,
                epoch: "e".into(),
                ts: 5,
                duplicate,
            })
            .encode()
        };
        let v: serde_json::Value = serde_json::from_str(&sent(true)).expect("json");
        assert_eq!(v["duplicate"], true);
        let fresh = sent(false);
        assert!(!fresh.contains("duplicate"), "omitted when false: {fresh}");
        assert!(
            matches!(ServerFrame::decode(&fresh), Ok(ServerFrame::Sent(s)) if !s.duplicate),
            "absent reads as false"
        );

        let logout = ServerFrame::Logout(PresenceNotice {
            room_id: RoomId::new("1").expect("id"),
            user_id: UserId::new("u").expect("id"),
            user_name: "U".into(),
            num: 0,
            total: 0,
            reason: Some(LogoutReason::Left),
            presence_seq: Some(12),
        })
        .encode();
        assert!(logout.contains(r#""reason":"left""#), "{logout}");
        assert!(logout.contains(r#""presenceSeq":12"#), "{logout}");
    }

    #[test]
    fn delivery_fields_are_additive() {
        // A `joined` from a server without the field reads as recovered, with no oldest seq.
        let old = r#"{"event":"joined","roomId":"r","roomName":"r","seq":3,"epoch":"e","num":1,"total":1,"replayed":0}"#;
        match ServerFrame::decode(old) {
            Ok(ServerFrame::Joined(j)) => assert!(j.recovered && j.oldest_seq.is_none()),
            other => panic!("{other:?}"),
        }
        let gap = ServerFrame::Joined(Joined {
            room_id: RoomId::new("r").expect("id"),
            room_name: "r".into(),
            seq: 9,
            epoch: "e".into(),
            num: 1,
            total: 1,
            replayed: 2,
            recovered: false,
            oldest_seq: Some(8),
        })
        .encode();
        assert!(gap.contains(r#""recovered":false"#), "{gap}");
        assert!(gap.contains(r#""oldestSeq":8"#), "{gap}");

        let live = ServerFrame::Message(message()).encode();
        assert!(!live.contains("resend"), "omitted when false: {live}");
        // The gateway marks a resend by prefixing the stored frame; it must still decode.
        let resent = format!(r#"{{"resend":true,{}"#, &live[1..]);
        match ServerFrame::decode(&resent) {
            Ok(ServerFrame::Message(m)) => assert!(m.resend && m.seq == 3),
            other => panic!("{other:?}"),
        }
    }
}
