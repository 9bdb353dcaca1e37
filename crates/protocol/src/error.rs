//! Error codes carried by `{"event":"error"}` frames.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Machine-readable reason of an `error` frame. The connection stays usable after every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not a JSON object.
    BadJson,
    /// A binary frame arrived; the protocol is JSON text only.
    BinaryFrame,
    /// The `event` names nothing this protocol knows.
    UnknownEvent,
    /// A required field is missing.
    MissingField,
    /// A field has the wrong type or an unusable value.
    BadField,
    /// A room or user id does not match `^[A-Za-z0-9_.:-]{1,64}$`.
    InvalidId,
    /// `content` is longer than `limits.max_content_bytes`.
    ContentTooLong,
    /// The connection has not joined the room it addressed.
    NotJoined,
    /// A connection is one user: a `login` with a different `userId` than its first is refused.
    UserMismatch,
    /// The connection joined too many rooms (`limits.max_rooms_per_connection`).
    TooManyRooms,
    /// The post's `clientMsgId` was already used by this user (to this room or addressee) for a
    /// message with different content, still in the history. Nothing was stored; sending the same
    /// frame again cannot succeed, the post needs a new `clientMsgId`.
    IdConflict,
    /// The backend (Redis) did not confirm the operation. Retry the same frame later, with the
    /// same `clientMsgId`: a post that timed out (rather than being refused) may still have
    /// been stored, and then shows up in the room with that `clientMsgId`.
    Unavailable,
    /// An unexpected server error. Nothing was stored.
    Internal,
    /// The connection's token does not allow this (a room outside its `rooms` claim), or a
    /// connection may not do it (`history` of a room it has not joined).
    Forbidden,
    /// Too many posts or joins per second (`limits.posts_per_second`, `limits.joins_per_second`).
    /// Nothing was stored; send it again after `retryAfterMs` (carried in the message).
    RateLimited,
    /// The node (embedded backend) holds as many rooms as `limits.max_rooms` allows: a `login`
    /// that would create a new room is refused. Rooms that already exist keep working; one frees
    /// up when an unused room is dropped (see docs/security.md). Retriable later.
    RoomLimit,
    /// The node (embedded backend) holds as many direct-message inboxes as `limits.max_inboxes`
    /// allows: a direct message to a user who has no inbox yet is refused. Retriable later.
    InboxLimit,
}

impl ErrorCode {
    /// True when resending the same frame later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable
                | ErrorCode::Internal
                | ErrorCode::RateLimited
                | ErrorCode::RoomLimit
                | ErrorCode::InboxLimit
        )
    }

    /// The wire spelling, e.g. `"bad_json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::BadField => "bad_field",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::ContentTooLong => "content_too_long",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::UserMismatch => "user_mismatch",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::IdConflict => "id_conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::InboxLimit => "inbox_limit",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client frame that could not be accepted: the code, a human-readable message, and the
/// `clientMsgId` of the offending frame when it carried one (echoed as `ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The offending frame's `clientMsgId`, if any.
    pub reference: Option<String>,
}

impl ProtocolError {
    /// Builds an error without a reference.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
        }
    }

    /// Attaches the offending frame's `clientMsgId`.
    pub fn with_ref(mut self, reference: Option<String>) -> Self {
        self.reference = reference;
        self
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtocolError {}
