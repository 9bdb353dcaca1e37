//! Frames a client sends, and their validation.
//!
//! Parsing goes through a JSON object first and then reads each field by hand, so every problem
//! gets a precise [`ErrorCode`] and message ("`roomId` is required for `login`") instead of a serde
//! error string, and so fields of the wrong type never reach the server's logic.

use serde_json::{Map, Value};

use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{RoomId, UserId, id_from_json};

/// Longest `userName`, `roomName` or `clientMsgId`, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Limits that depend on the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest accepted `content`, in bytes of UTF-8.
    pub max_content_bytes: usize,
    /// Largest `limit` of a `history` request; larger values are clamped to it.
    pub max_history_page: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_bytes: 4096,
            max_history_page: 200,
        }
    }
}

/// A validated frame from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Join a room (or re-attach to one after a reconnect).
    Login(LoginRequest),
    /// Leave a room for good.
    Logout {
        /// The room to leave.
        room_id: RoomId,
    },
    /// Post to a room, or send a direct message.
    Message(PostRequest),
    /// Cumulative acknowledgement of a room's messages, or of the direct-message inbox.
    Ack {
        /// Which stream is acknowledged.
        stream: AckStream,
        /// Everything up to and including this seq has arrived.
        seq: u64,
        /// The epoch `seq` belongs to, if the client says: an ack for a log that has since been
        /// reset acknowledges nothing in the new one.
        epoch: Option<String>,
    },
    /// A page of a room's history.
    History(HistoryRequest),
    /// Application-level ping, answered with a pong.
    HeartBeat,
    /// A token (`auth.mode = "jwt"`): authenticates the connection, or extends it.
    Auth {
        /// The JWT.
        token: String,
    },
}

impl ClientFrame {
    /// The frame as protocol v1 JSON, the form [`parse_client_frame`] reads back to an equal
    /// frame (a `history` limit above the server's page is clamped there). Clients build their
    /// frames with this instead of by hand.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        let mut put = |key: &str, value: Value| {
            obj.insert(key.to_owned(), value);
        };
        match self {
            ClientFrame::Login(login) => {
                put("event", "login".into());
                put("roomId", login.room_id.as_str().into());
                put("userId", login.user_id.as_str().into());
                put("userName", login.user_name.as_str().into());
                if let Some(name) = &login.room_name {
                    put("roomName", name.as_str().into());
                }
                if let Some(since) = login.since {
                    put("since", since.into());
                }
                if let Some(epoch) = &login.epoch {
                    put("epoch", epoch.as_str().into());
                }
            }
            ClientFrame::Logout { room_id } => {
                put("event", "logout".into());
                put("roomId", room_id.as_str().into());
            }
            ClientFrame::Message(post) => {
                put("event", "message".into());
                match &post.target {
                    Target::Room(room) => put("roomId", room.as_str().into()),
                    Target::User(user) => put("toUserId", user.as_str().into()),
                }
                put("content", post.content.as_str().into());
                if let Some(id) = &post.client_msg_id {
                    put("clientMsgId", id.as_str().into());
                }
            }
            ClientFrame::Ack { stream, seq, epoch } => {
                put("event", "ack".into());
                match stream {
                    AckStream::Room(room) => put("roomId", room.as_str().into()),
                    AckStream::Direct => put("direct", true.into()),
                }
                put("seq", (*seq).into());
                if let Some(epoch) = epoch {
                    put("epoch", epoch.as_str().into());
                }
            }
            ClientFrame::History(request) => {
                put("event", "history".into());
                put("roomId", request.room_id.as_str().into());
                if let Some(before) = request.before {
                    put("before", before.into());
                }
                put("limit", request.limit.into());
            }
            ClientFrame::HeartBeat => put("event", "heartBeat".into()),
            ClientFrame::Auth { token } => {
                put("event", "auth".into());
                put("token", token.as_str().into());
            }
        }
        Value::Object(obj)
    }

    /// The frame as the text of one WebSocket message.
    pub fn encode(&self) -> String {
        self.to_json().to_string()
    }
}

impl serde::Serialize for ClientFrame {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// The fields of a `login` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// The room to join.
    pub room_id: RoomId,
    /// Who is joining. A connection is one user: its first `login` fixes it.
    pub user_id: UserId,
    /// Display name, shown to others in notices and messages.
    pub user_name: String,
    /// Display name of the room; stored when the room is first named.
    pub room_name: Option<String>,
    /// The last seq the client already has; messages after it are replayed.
    pub since: Option<u64>,
    /// The room epoch `since` belongs to; if the room's log has been reset since, `since` is ignored.
    pub epoch: Option<String>,
}

/// Where a post goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection in the room.
    Room(RoomId),
    /// Every connection of the user, and of the sender.
    User(UserId),
}

/// The fields of a `message` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostRequest {
    /// Room or user.
    pub target: Target,
    /// The text.
    pub content: String,
    /// The client's own id for the post, echoed in `sent` so it can match the receipt.
    pub client_msg_id: Option<String>,
}

/// What an `ack` acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckStream {
    /// A room's messages.
    Room(RoomId),
    /// The connection's user's direct-message inbox (`"direct": true`).
    Direct,
}

/// The fields of a `history` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The room.
    pub room_id: RoomId,
    /// Only messages with a seq below this; `None` means the newest.
    pub before: Option<u64>,
    /// At most this many messages (already clamped to the server's page limit).
    pub limit: u32,
}

/// Page size of a `history` request that names no `limit`.
pub const DEFAULT_HISTORY_PAGE: u32 = 50;

/// Parses and validates one text frame.
pub fn parse_client_frame(text: &str, limits: &Limits) -> Result<ClientFrame, ProtocolError> {
    parse_client_frame_as(text, limits, None)
}

/// Parses and validates one text frame of a connection whose identity comes from a token: a
/// `login` needs no `userId`/`userName` (any sent are replaced by `identity`).
pub fn parse_client_frame_as(
    text: &str,
    limits: &Limits,
    identity: Option<(&UserId, &str)>,
) -> Result<ClientFrame, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::new(
            ErrorCode::BadJson,
            "a frame must be a JSON object",
        ));
    };
    let fields = Fields { obj: &obj };
    let reference = fields.client_msg_id().ok().flatten();
    parse_object(&fields, limits, identity).map_err(|e| e.with_ref(reference))
}

fn parse_object(
    fields: &Fields<'_>,
    limits: &Limits,
    identity: Option<(&UserId, &str)>,
) -> Result<ClientFrame, ProtocolError> {
    let event = match fields.obj.get("event") {
        None | Some(Value::Null) => {
            // Old tutorial clients send `{"roomId":1,"content":"hi"}` with no event.
            if fields.obj.contains_key("content") {
                "message"
            } else {
                return Err(ProtocolError::new(
                    ErrorCode::MissingField,
                    "`event` is required",
                ));
            }
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                "`event` must be a string",
            ));
        }
    };
    match event {
        "login" => Ok(ClientFrame::Login(LoginRequest {
            room_id: fields.room_id("login")?,
            user_id: match identity {
                Some((id, _)) => id.clone(),
                None => fields.user_id("userId", "login")?,
            },
            user_name: match identity {
                Some((_, name)) => name.to_owned(),
                None => fields.name("userName", "login")?,
            },
            room_name: fields.optional_name("roomName")?,
            since: fields.optional_u64("since")?,
            epoch: fields.optional_name("epoch")?,
        })),
        "logout" => Ok(ClientFrame::Logout {
            room_id: fields.room_id("logout")?,
        }),
        "message" => parse_message(fields, limits),
        "ack" => {
            let stream = if fields.obj.contains_key("roomId") {
                AckStream::Room(fields.room_id("ack")?)
            } else if fields.obj.get("direct") == Some(&Value::Bool(true)) {
                AckStream::Direct
            } else {
                return Err(ProtocolError::new(
                    ErrorCode::MissingField,
                    "`roomId` (or `\"direct\": true`) is required for `ack`",
                ));
            };
            let seq = fields.optional_u64("seq")?.ok_or_else(|| {
                ProtocolError::new(ErrorCode::MissingField, "`seq` is required for `ack`")
            })?;
            let epoch = fields.optional_name("epoch")?;
            Ok(ClientFrame::Ack { stream, seq, epoch })
        }
        "history" => {
            let room_id = fields.room_id("history")?;
            let before = fields.optional_u64("before")?;
            let limit = match fields.optional_u64("limit")? {
                None => DEFAULT_HISTORY_PAGE.min(limits.max_history_page),
                Some(0) => {
                    return Err(ProtocolError::new(
                        ErrorCode::BadField,
                        "`limit` must be at least 1",
                    ));
                }
                Some(n) => u32::try_from(n)
                    .unwrap_or(u32::MAX)
                    .min(limits.max_history_page),
            };
            Ok(ClientFrame::History(HistoryRequest {
                room_id,
                before,
                limit,
            }))
        }
        "heartBeat" => Ok(ClientFrame::HeartBeat),
        "auth" => match fields.obj.get("token") {
            Some(Value::String(token)) if !token.is_empty() => Ok(ClientFrame::Auth {
                token: token.clone(),
            }),
            _ => Err(ProtocolError::new(
                ErrorCode::MissingField,
                "`token` (a non-empty string) is required for `auth`",
            )),
        },
        other => Err(ProtocolError::new(
            ErrorCode::UnknownEvent,
            format!("unknown event `{}`", truncate(other, 40)),
        )),
    }
}

fn parse_message(fields: &Fields<'_>, limits: &Limits) -> Result<ClientFrame, ProtocolError> {
    let has_room = fields.present("roomId");
    let has_user = fields.present("toUserId");
    let target = match (has_room, has_user) {
        (true, true) => {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                "a message goes to `roomId` or to `toUserId`, not both",
            ));
        }
        (true, false) => Target::Room(fields.room_id("message")?),
        (false, true) => Target::User(fields.user_id("toUserId", "message")?),
        (false, false) => {
            return Err(ProtocolError::new(
                ErrorCode::MissingField,
                "`roomId` or `toUserId` is required for `message`",
            ));
        }
    };
    let content = match fields.obj.get("content") {
        None | Some(Value::Null) => {
            return Err(ProtocolError::new(
                ErrorCode::MissingField,
                "`content` is required for `message`",
            ));
        }
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                "`content` must be a string",
            ));
        }
    };
    if content.trim().is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::BadField,
            "`content` must not be empty",
        ));
    }
    if content.len() > limits.max_content_bytes {
        return Err(ProtocolError::new(
            ErrorCode::ContentTooLong,
            format!(
                "`content` is {} bytes; the limit is {}",
                content.len(),
                limits.max_content_bytes
            ),
        ));
    }
    Ok(ClientFrame::Message(PostRequest {
        target,
        content: content.clone(),
        client_msg_id: fields.client_msg_id()?,
    }))
}

/// Typed reads of a frame's fields, each failing with the right error code.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn present(&self, key: &str) -> bool {
        !matches!(self.obj.get(key), None | Some(Value::Null))
    }

    fn room_id(&self, event: &str) -> Result<RoomId, ProtocolError> {
        let value = self.required("roomId", event)?;
        let s = id_from_json(value)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidId, format!("`roomId` {e}")))?;
        RoomId::new(s)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidId, format!("`roomId` {e}")))
    }

    fn user_id(&self, key: &str, event: &str) -> Result<UserId, ProtocolError> {
        let value = self.required(key, event)?;
        let s = id_from_json(value)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidId, format!("`{key}` {e}")))?;
        UserId::new(s).map_err(|e| ProtocolError::new(ErrorCode::InvalidId, format!("`{key}` {e}")))
    }

    fn required(&self, key: &str, event: &str) -> Result<&Value, ProtocolError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Err(ProtocolError::new(
                ErrorCode::MissingField,
                format!("`{key}` is required for `{event}`"),
            )),
            Some(v) => Ok(v),
        }
    }

    fn name(&self, key: &str, event: &str) -> Result<String, ProtocolError> {
        let value = self.required(key, event)?;
        check_name(key, value)
    }

    fn optional_name(&self, key: &str) -> Result<Option<String>, ProtocolError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => check_name(key, v).map(Some),
        }
    }

    fn optional_u64(&self, key: &str) -> Result<Option<u64>, ProtocolError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::BadField,
                    format!("`{key}` must be a non-negative integer"),
                )
            }),
            Some(_) => Err(ProtocolError::new(
                ErrorCode::BadField,
                format!("`{key}` must be a non-negative integer"),
            )),
        }
    }

    /// `clientMsgId` may be a string or a number (stringified), at most [`MAX_NAME_CHARS`] long.
    fn client_msg_id(&self) -> Result<Option<String>, ProtocolError> {
        match self.obj.get("clientMsgId") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => check_name("clientMsgId", v).map(Some),
        }
    }
}

/// A display name or client id: a non-empty string of at most [`MAX_NAME_CHARS`] characters with
/// no control characters (they would corrupt terminals and logs of other users).
fn check_name(key: &str, value: &Value) -> Result<String, ProtocolError> {
    let Value::String(s) = value else {
        return Err(ProtocolError::new(
            ErrorCode::BadField,
            format!("`{key}` must be a string"),
        ));
    };
    if s.trim().is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::BadField,
            format!("`{key}` must not be empty"),
        ));
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(ProtocolError::new(
            ErrorCode::BadField,
            format!("`{key}` must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    check_display_name(s)
        .map_err(|m| ProtocolError::new(ErrorCode::BadField, format!("`{key}` {m}")))?;
    Ok(s.clone())
}

/// Characters a name must not contain: control characters (they corrupt terminals and logs),
/// bidirectional overrides and isolates (they make a name display as another), and zero-width
/// characters (they make two names look identical).
fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{FEFF}' // zero-width no-break space
            | '\u{180E}' // Mongolian vowel separator
            | '\u{061C}' // Arabic letter mark
        )
}

/// Checks a display name (a `userName`, or a token's `name` claim): at most [`MAX_NAME_CHARS`]
/// characters, not blank, nothing from [`is_deceptive`]. The error says what is wrong.
pub fn check_display_name(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    if s.chars().any(is_deceptive) {
        return Err("must not contain bidirectional overrides or zero-width characters".to_owned());
    }
    Ok(())
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientFrame, ProtocolError> {
        parse_client_frame(text, &Limits::default())
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err(text).code
    }

    #[test]
    fn login_with_every_field() {
        let frame = parse(
            r#"{"event":"login","roomId":"lobby","userId":"u1","userName":"Ann","roomName":"Lobby","since":7,"epoch":"ab"}"#,
        )
        .expect("valid login");
        let ClientFrame::Login(login) = frame else {
            panic!("not a login: {frame:?}")
        };
        assert_eq!(login.room_id.as_str(), "lobby");
        assert_eq!(login.user_id.as_str(), "u1");
        assert_eq!(login.user_name, "Ann");
        assert_eq!(login.room_name.as_deref(), Some("Lobby"));
        assert_eq!(login.since, Some(7));
        assert_eq!(login.epoch.as_deref(), Some("ab"));
    }

    #[test]
    fn numeric_room_ids_from_old_clients() {
        let frame =
            parse(r#"{"event":"login","roomId":2,"userId":42,"userName":"Bob"}"#).expect("login");
        let ClientFrame::Login(login) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(login.room_id.as_str(), "2");
        assert_eq!(login.user_id.as_str(), "42");
    }

    #[test]
    fn a_frame_with_content_and_no_event_is_a_message() {
        let frame = parse(r#"{"roomId":1,"content":"hello"}"#).expect("legacy message");
        assert_eq!(
            frame,
            ClientFrame::Message(PostRequest {
                target: Target::Room(RoomId::new("1").expect("id")),
                content: "hello".into(),
                client_msg_id: None,
            })
        );
    }

    #[test]
    fn direct_message_and_client_msg_id() {
        let frame =
            parse(r#"{"event":"message","toUserId":"bob","content":"psst","clientMsgId":17}"#)
                .expect("dm");
        let ClientFrame::Message(post) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(post.target, Target::User(UserId::new("bob").expect("id")));
        assert_eq!(post.client_msg_id.as_deref(), Some("17"));
    }

    #[test]
    fn ack_history_heartbeat_logout() {
        assert_eq!(
            parse(r#"{"event":"ack","roomId":"r","seq":5}"#).expect("ack"),
            ClientFrame::Ack {
                stream: AckStream::Room(RoomId::new("r").expect("id")),
                seq: 5,
                epoch: None,
            }
        );
        assert_eq!(
            parse(r#"{"event":"ack","direct":true,"seq":2}"#).expect("dm ack"),
            ClientFrame::Ack {
                stream: AckStream::Direct,
                seq: 2,
                epoch: None,
            }
        );
        assert_eq!(
            parse(r#"{"event":"ack","roomId":"r","seq":3,"epoch":"e1"}"#).expect("ack with epoch"),
            ClientFrame::Ack {
                stream: AckStream::Room(RoomId::new("r").expect("id")),
                seq: 3,
                epoch: Some("e1".into()),
            }
        );
        assert_eq!(
            parse(r#"{"event":"history","roomId":"r","before":10,"limit":5000}"#).expect("history"),
            ClientFrame::History(HistoryRequest {
                room_id: RoomId::new("r").expect("id"),
                before: Some(10),
                limit: 200,
            })
        );
        assert_eq!(
            parse(r#"{"event":"history","roomId":"r"}"#).expect("history"),
            ClientFrame::History(HistoryRequest {
                room_id: RoomId::new("r").expect("id"),
                before: None,
                limit: DEFAULT_HISTORY_PAGE,
            })
        );
        assert_eq!(
            parse(r#"{"event":"heartBeat","content":"ping"}"#).expect("hb"),
            ClientFrame::HeartBeat
        );
        assert_eq!(
            parse(r#"{"event":"logout","roomId":"r"}"#).expect("logout"),
            ClientFrame::Logout {
                room_id: RoomId::new("r").expect("id")
            }
        );
    }

    #[test]
    fn invalid_json_and_non_objects() {
        for text in [
            "",
            "{",
            "not json",
            "[1,2]",
            "\"str\"",
            "42",
            "null",
            "{\"a\":1}}",
        ] {
            assert_eq!(code(text), ErrorCode::BadJson, "{text:?}");
        }
        // Deep nesting hits serde_json's recursion limit and is an error, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(&deep), ErrorCode::BadJson);
    }

    #[test]
    fn unknown_and_mistyped_events() {
        assert_eq!(code(r#"{"event":"dance"}"#), ErrorCode::UnknownEvent);
        assert_eq!(code(r#"{"event":7}"#), ErrorCode::BadField);
        assert_eq!(code(r#"{"roomId":"r"}"#), ErrorCode::MissingField);
        let long = format!(r#"{{"event":"{}"}}"#, "x".repeat(10_000));
        let err = parse(&long).expect_err("unknown");
        assert!(
            err.message.len() < 100,
            "error messages stay short: {}",
            err.message
        );
    }

    #[test]
    fn missing_and_wrongly_typed_fields() {
        assert_eq!(
            code(r#"{"event":"login","userId":"u","userName":"n"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"event":"login","roomId":"r","userName":"n"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"event":"login","roomId":"r","userId":"u"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"event":"login","roomId":"r","userId":"u","userName":5}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"login","roomId":"r","userId":"u","userName":"n","since":-1}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"login","roomId":"r","userId":"u","userName":"n","since":"3"}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"message","roomId":"r","content":5}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"message","roomId":"r"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"event":"message","content":"x"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"event":"message","roomId":"r","toUserId":"u","content":"x"}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"message","roomId":"r","content":"   "}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"ack","roomId":"r"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(code(r#"{"event":"ack","seq":1}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"event":"ack","roomId":"r","seq":1.5}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"history","roomId":"r","limit":0}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"event":"history","roomId":"r","before":"x"}"#),
            ErrorCode::BadField
        );
        assert_eq!(
            code(
                "{\"event\":\"login\",\"roomId\":\"r\",\"userId\":\"u\",\"userName\":\"a\\u0000b\"}"
            ),
            ErrorCode::BadField
        );
        let long_name = format!(
            r#"{{"event":"login","roomId":"r","userId":"u","userName":"{}"}}"#,
            "é".repeat(65)
        );
        assert_eq!(code(&long_name), ErrorCode::BadField);
    }

    #[test]
    fn invalid_ids() {
        for room in [
            r#""""#,
            r#""a b""#,
            r#""../etc""#,
            "1.5",
            "true",
            "{}",
            "[]",
            r#""*""#,
        ] {
            let text = format!(r#"{{"event":"logout","roomId":{room}}}"#);
            assert_eq!(code(&text), ErrorCode::InvalidId, "{text}");
        }
        let long = format!(r#"{{"event":"logout","roomId":"{}"}}"#, "a".repeat(65));
        assert_eq!(code(&long), ErrorCode::InvalidId);
        assert_eq!(
            code(r#"{"event":"message","toUserId":"a|b","content":"x"}"#),
            ErrorCode::InvalidId
        );
    }

    #[test]
    fn content_over_the_limit() {
        let limits = Limits {
            max_content_bytes: 10,
            max_history_page: 10,
        };
        let ok = r#"{"event":"message","roomId":"r","content":"0123456789"}"#;
        assert!(parse_client_frame(ok, &limits).is_ok());
        let over = r#"{"event":"message","roomId":"r","content":"0123456789a","clientMsgId":"c1"}"#;
        let err = parse_client_frame(over, &limits).expect_err("too long");
        assert_eq!(err.code, ErrorCode::ContentTooLong);
        assert_eq!(
            err.reference.as_deref(),
            Some("c1"),
            "the error refers to the offending post"
        );
        // Multi-byte characters count in bytes, not characters.
        let multi = format!(
            r#"{{"event":"message","roomId":"r","content":"{}"}}"#,
            "é".repeat(6)
        );
        assert_eq!(
            parse_client_frame(&multi, &limits).expect_err("bytes").code,
            ErrorCode::ContentTooLong
        );
    }
}

/// Hostile input at volume: mutated and random frames must parse to a frame or an error, never
/// panic, and whatever is accepted must satisfy the same invariants as hand-written input.
#[cfg(test)]
mod mutation_tests {
    use super::*;

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const SEEDS: &[&str] = &[
        r#"{"event":"login","roomId":"lobby","userId":"u1","userName":"Ann","roomName":"L","since":3,"epoch":"e"}"#,
        r#"{"event":"logout","roomId":7}"#,
        r#"{"event":"message","roomId":"r","content":"hello","clientMsgId":"c1"}"#,
        r#"{"event":"message","toUserId":"bob","content":"psst"}"#,
        r#"{"roomId":1,"content":"legacy"}"#,
        r#"{"event":"ack","roomId":"r","seq":9}"#,
        r#"{"event":"ack","direct":true,"seq":9}"#,
        r#"{"event":"history","roomId":"r","before":10,"limit":5}"#,
        r#"{"event":"heartBeat","content":"ping"}"#,
    ];

    const ALPHABET: &[u8] = b"{}[]\":,0123456789-.eE aZ_|\\u\x00\xff\xc3\xa9truefalsenull";

    fn mutate(rng: &mut Rng, seed: &str) -> Vec<u8> {
        let mut bytes = seed.as_bytes().to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(4) {
                0 if at < bytes.len() => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                2 if at < bytes.len() => bytes[at] = ALPHABET[rng.below(ALPHABET.len())],
                _ => bytes.truncate(at),
            }
        }
        bytes
    }

    fn check_invariants(frame: &ClientFrame, limits: &Limits) {
        match frame {
            ClientFrame::Login(login) => {
                assert!(crate::ids::validate_id(login.room_id.as_str()).is_ok());
                assert!(crate::ids::validate_id(login.user_id.as_str()).is_ok());
                assert!(!login.user_name.trim().is_empty());
                assert!(login.user_name.chars().count() <= MAX_NAME_CHARS);
            }
            ClientFrame::Message(post) => {
                assert!(!post.content.trim().is_empty());
                assert!(post.content.len() <= limits.max_content_bytes);
            }
            ClientFrame::History(request) => {
                assert!(request.limit >= 1 && request.limit <= limits.max_history_page);
            }
            _ => {}
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_accepted_ones_are_valid() {
        let limits = Limits {
            max_content_bytes: 16,
            max_history_page: 50,
        };
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..60_000 {
            let seed = SEEDS[i % SEEDS.len()];
            let bytes = mutate(&mut rng, seed);
            // The socket layer hands over only valid UTF-8 text frames.
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            match parse_client_frame(&text, &limits) {
                Ok(frame) => {
                    check_invariants(&frame, &limits);
                    accepted += 1;
                }
                Err(e) => {
                    assert!(!e.message.is_empty());
                    assert!(
                        e.message.len() < 300,
                        "error messages stay short: {}",
                        e.message
                    );
                    refused += 1;
                }
            }
        }
        // Both paths were exercised.
        assert!(
            accepted > 1_000 && refused > 1_000,
            "accepted {accepted}, refused {refused}"
        );
    }
}
