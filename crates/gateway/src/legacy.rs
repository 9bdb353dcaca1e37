//! The legacy dialect: the classic "multi-room chat room" tutorial's own client, spoken on a
//! WebSocket upgrade of `GET /` (protocol v1 stays on `/ws`).
//!
//! The classic page sends `login` without a `userId`, posts without an `event`, pings with
//! `heartBeat`, and renders *every* frame it receives: anything that is not a pong, `login` or
//! `logout` becomes a chat line `{userName}: {content}`, and every frame sets its online count from
//! `num`. So this dialect is a translation at the edge of one connection, on both sides of an
//! unchanged v1 [`crate::session::Session`]:
//!
//! - **In** ([`Edge::parse`]): a legacy frame becomes a v1 [`ClientFrame`]. The connection's
//!   identity is fixed at its first `login` ([`identify`]): a valid `userId` in that frame, else a
//!   guest id unique to the connection. A post's own `userId` is ignored: posts are the
//!   connection's. Input the session would answer with an `error` is counted and logged at debug
//!   instead ([`Shared::rejected`]), because the classic page would print an error frame as a blank
//!   chat line.
//! - **Out, replies** ([`Edge::reply`]): `joined` becomes the joiner's own welcome (`login` with
//!   `num`), `sent` and `error` are dropped, `heartBeat` passes, replayed messages are translated.
//! - **Out, broadcasts** ([`Edge::relay`]): the hub encodes a broadcast once, in v1, and shares it
//!   with every local recipient. For a legacy recipient the hub also hands over a [`Cache`] slot
//!   created once per broadcast, shared by all legacy recipients of that broadcast on the node:
//!   the first one to write the frame translates it, the others clone the result. A broadcast is
//!   therefore encoded at most once per dialect per node, never once per recipient. What differs
//!   per recipient is only a comparison: a legacy client is not sent its own posts (it showed them
//!   already) nor its own `login` notice (its welcome came from `joined`).
//!
//! `num` on every frame is the room's online count as this node last heard it: from the join
//! outcomes of its legacy connections and from the `login`/`logout` notices it relays, which carry
//! the cluster-wide count. Both are ordered by the room's presence seq, so a late notice cannot
//! roll the count back ([`Shared`]). Relaying a message costs no backend call.
//!
//! Guests are ephemeral: when a guest's connection ends it *leaves* its rooms (membership and
//! cursor dropped, `logout` notice with reason `left`) instead of only going offline, so guest
//! identities do not pile up as members. Legacy connections have no direct messages (the classic
//! client has none), so no inbox is attached for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use chat_backend::JoinOutcome;
use chat_protocol::client::MAX_NAME_CHARS;
use chat_protocol::{
    ClientFrame, Limits, LoginRequest, PostRequest, PresenceNotice, RoomId, ServerFrame, Target,
    UserId,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tungstenite::Utf8Bytes;

/// A broadcast's legacy translation, computed by the first legacy recipient on this node that
/// writes it and shared by the others. The hub creates one per broadcast (only when the stream has
/// a legacy recipient) and clones it into each legacy recipient's queue item.
pub type Cache = Arc<OnceLock<Translated>>;

/// A v1 frame in the legacy dialect.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The legacy frame, or `None` when the classic client has no use for it.
    text: Option<Utf8Bytes>,
    /// A recipient who is this user does not get it: the author of a message (the classic client
    /// shows its own posts at once) or the subject of a `login` notice (its welcome came from its
    /// own `joined`).
    hide_from: Option<UserId>,
}

impl Translated {
    fn nothing() -> Self {
        Translated {
            text: None,
            hide_from: None,
        }
    }
}

/// What the node knows about a room with legacy connections: its display name and its online
/// count. Alive while at least one local legacy connection is in the room.
#[derive(Debug)]
struct RoomView {
    name: Arc<str>,
    num: u64,
    /// The presence seq `num` belongs to: an older report never replaces it.
    at: u64,
    /// Local legacy connections in the room.
    conns: usize,
}

/// The node-wide side of the dialect: room names and counts for legacy frames, and counters.
/// Entries exist only for rooms with local legacy connections, so the table is bounded by
/// connections × `limits.max_rooms_per_connection`.
#[derive(Debug, Default)]
pub struct Shared {
    rooms: Mutex<HashMap<RoomId, RoomView>>,
    connections: AtomicU64,
    rejected: AtomicU64,
}

impl Shared {
    /// Open legacy connections on this node.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Legacy frames ignored on this node since it started (bad JSON, missing or invalid fields,
    /// binary frames, posts to rooms not joined, …).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, RoomView>> {
        // The map stays consistent across a panic elsewhere (every update is one statement).
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enter(&self, room: &RoomId, name: &str, num: u64, at: u64) {
        let mut rooms = self.lock();
        let view = rooms.entry(room.clone()).or_insert_with(|| RoomView {
            name: Arc::from(name),
            num,
            at,
            conns: 0,
        });
        view.conns += 1;
        // A room without a name is named by the first join that gives one (possibly this one).
        if *view.name != *name {
            view.name = Arc::from(name);
        }
        if at >= view.at {
            view.num = num;
            view.at = at;
        }
    }

    fn exit(&self, room: &RoomId) {
        let mut rooms = self.lock();
        if let Some(view) = rooms.get_mut(room) {
            view.conns = view.conns.saturating_sub(1);
            if view.conns == 0 {
                rooms.remove(room);
            }
        }
    }

    /// A presence notice of the room was relayed: its count is the newest unless a later change
    /// was already seen. A notice without a presence seq (an older node) is taken as the newest.
    fn observe(&self, notice: &PresenceNotice) {
        if let Some(view) = self.lock().get_mut(&notice.room_id) {
            let at = notice.presence_seq.unwrap_or(view.at);
            if at >= view.at {
                view.num = notice.num;
                view.at = at;
            }
        }
    }

    /// The room's name and online count. A room without legacy connections here (not expected:
    /// a legacy connection enters before anything of the room is written to it) is named by its id.
    fn view(&self, room: &RoomId) -> (Arc<str>, u64) {
        match self.lock().get(room) {
            Some(view) => (view.name.clone(), view.num),
            None => (Arc::from(room.as_str()), 0),
        }
    }
}

/// The connection's identity, fixed at its first `login`.
#[derive(Debug, Clone)]
struct Who {
    id: UserId,
    guest: bool,
}

/// One legacy connection's side of the dialect. Held by its session; leaving its rooms in
/// [`Shared`] when dropped.
#[derive(Debug)]
pub struct Edge {
    shared: Arc<Shared>,
    who: Option<Who>,
    /// Rooms entered in [`Shared`], oldest first; the last is where a post without `roomId` goes.
    rooms: Vec<RoomId>,
    /// Frames of this connection ignored so far.
    rejected: u64,
    /// `userName` of the latest `login`: `joined` does not carry it, and the welcome line names it.
    login_name: String,
}

impl Edge {
    /// The edge of a new legacy connection.
    pub fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        Edge {
            shared,
            who: None,
            rooms: Vec::new(),
            rejected: 0,
            login_name: String::new(),
        }
    }

    /// True when the connection's identity is a guest id the gateway made up: it cannot come
    /// back, so its memberships end with the connection.
    pub fn is_guest(&self) -> bool {
        self.who.as_ref().is_some_and(|w| w.guest)
    }

    fn me(&self) -> Option<&UserId> {
        self.who.as_ref().map(|w| &w.id)
    }

    /// Counts and logs an ignored frame. The classic client has no use for an error frame (it
    /// would print it as an empty chat line), so this is the whole answer.
    pub fn reject(&mut self, reason: &str) {
        self.rejected += 1;
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
        // The 1st, 2nd, 4th, 8th… only: a client sending garbage in a loop gets a handful of lines,
        // each with the running count, not one per frame.
        if self.rejected.is_power_of_two() {
            tracing::debug!(rejected = self.rejected, reason, "legacy frame ignored");
        }
    }

    /// Parses a legacy text frame into the v1 frame the session runs; `None` (counted) when it
    /// means nothing.
    pub fn parse(&mut self, text: &str, limits: &Limits) -> Option<ClientFrame> {
        match self.try_parse(text, limits) {
            Ok(frame) => Some(frame),
            Err(reason) => {
                self.reject(reason);
                None
            }
        }
    }

    fn try_parse(&mut self, text: &str, limits: &Limits) -> Result<ClientFrame, &'static str> {
        // serde_json bounds nesting depth, and the socket bounds the frame size.
        let value: Value = serde_json::from_str(text).map_err(|_| "not JSON")?;
        let Value::Object(obj) = value else {
            return Err("not a JSON object");
        };
        match obj.get("event") {
            Some(Value::String(event)) if event == "heartBeat" => Ok(ClientFrame::HeartBeat),
            Some(Value::String(event)) if event == "login" => self.login(&obj),
            Some(Value::String(event)) if event == "message" => self.post(&obj, limits),
            // The classic client posts with no `event` at all.
            None | Some(Value::Null) if obj.contains_key("content") => self.post(&obj, limits),
            None | Some(Value::Null) => Err("no event and no content"),
            Some(_) => Err("unknown event"),
        }
    }

    fn login(&mut self, obj: &Map<String, Value>) -> Result<ClientFrame, &'static str> {
        let room_id = room_of(obj.get("roomId")).ok_or("login without a valid roomId")?;
        let who = match &self.who {
            Some(who) => who.clone(),
            None => {
                let who = match identify(obj) {
                    Some(id) => Who { id, guest: false },
                    None => Who {
                        id: guest_id().ok_or("no guest id")?,
                        guest: true,
                    },
                };
                self.who = Some(who.clone());
                who
            }
        };
        let user_name = clean_name(obj.get("userName")).unwrap_or_else(|| who.id.to_string());
        self.login_name = user_name.clone();
        Ok(ClientFrame::Login(LoginRequest {
            room_id,
            user_id: who.id,
            user_name,
            room_name: clean_name(obj.get("roomName")),
            since: None,
            epoch: None,
        }))
    }

    fn post(
        &mut self,
        obj: &Map<String, Value>,
        limits: &Limits,
    ) -> Result<ClientFrame, &'static str> {
        let room = match obj.get("roomId") {
            None | Some(Value::Null) => self.rooms.last().cloned().ok_or("post before login")?,
            value => room_of(value).ok_or("post with an invalid roomId")?,
        };
        let Some(Value::String(content)) = obj.get("content") else {
            return Err("post whose content is not a string");
        };
        if content.trim().is_empty() {
            return Err("empty post");
        }
        if content.len() > limits.max_content_bytes {
            return Err("post over limits.max_content_bytes");
        }
        Ok(ClientFrame::Message(PostRequest {
            target: Target::Room(room),
            content: content.clone(),
            client_msg_id: None,
        }))
    }

    /// The session joined `room` (called before its `joined` reply is queued): the room's name
    /// and count are known from here on.
    pub fn joined(&mut self, room: &RoomId, outcome: &JoinOutcome) {
        if self.rooms.contains(room) {
            return;
        }
        self.shared.enter(
            room,
            &outcome.room_name,
            outcome.counts.num,
            outcome.presence_seq,
        );
        self.rooms.push(room.clone());
    }

    /// A reply of the session in the legacy dialect; `None` when the classic client would
    /// misread it. Replies are this connection's alone, so they are translated here, uncached.
    pub fn reply(&mut self, frame: &ServerFrame) -> Option<String> {
        match frame {
            ServerFrame::Joined(joined) => {
                let who = self.who.as_ref()?;
                // The classic server echoes the login to its sender: that is the welcome line.
                let welcome = Notice {
                    event: "login",
                    user_name: &self.login_name,
                    user_id: who.id.as_str(),
                    room_id: LegacyRoomId::of(&joined.room_id),
                    room_name: &joined.room_name,
                    num: joined.num,
                };
                encode(&welcome)
            }
            ServerFrame::Message(message) => {
                if message.user_id == *self.me()? {
                    return None;
                }
                translate_message(&self.shared, message)
            }
            ServerFrame::Login(notice) | ServerFrame::Logout(notice) => {
                translate_notice(&self.shared, frame, notice)
            }
            ServerFrame::HeartBeat { .. } => Some(frame.encode()),
            ServerFrame::Error(error) => {
                // Logged (sparsely) by `reject`, with the code as its reason.
                self.reject(error.code.as_str());
                None
            }
            // The classic client knows no tokens: it authenticates with the upgrade (`?token=`).
            ServerFrame::Sent(_)
            | ServerFrame::History(_)
            | ServerFrame::NoAuth { .. }
            | ServerFrame::Authenticated { .. } => None,
        }
    }

    /// A broadcast frame from the hub (v1 `text`) for this connection, translated through the
    /// broadcast's shared `cache`; `None` when this client must not get it.
    pub fn relay(&self, text: &Utf8Bytes, cache: Option<&Cache>) -> Option<Utf8Bytes> {
        let uncached;
        let translated = match cache {
            Some(cache) => cache.get_or_init(|| translate(&self.shared, text)),
            // Not expected: the hub gives every legacy recipient a slot.
            None => {
                uncached = translate(&self.shared, text);
                &uncached
            }
        };
        if translated.hide_from.is_some() && translated.hide_from.as_ref() == self.me() {
            return None;
        }
        translated.text.clone()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        for room in &self.rooms {
            self.shared.exit(room);
        }
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who a legacy `login` is. Today a valid `userId` in the frame is taken at its word, exactly as
/// protocol v1 takes it (there is no authentication yet); without one the connection is a guest.
///
/// Hook for JWT mode: verify the frame's token here and return the user it names (or refuse the
/// login by returning an error to [`Edge::login`]), instead of trusting `userId`.
fn identify(obj: &Map<String, Value>) -> Option<UserId> {
    serde_json::from_value::<UserId>(obj.get("userId")?.clone()).ok()
}

/// A fresh guest id, unique per connection across the cluster (64 random bits). `guest-` and hex
/// digits are valid id characters, so this is always `Some`.
fn guest_id() -> Option<UserId> {
    UserId::new(format!("guest-{}", chat_backend::memory::new_epoch())).ok()
}

/// A room id as old clients send it: a number (`1`) or a string (`"1"`), the same room.
fn room_of(value: Option<&Value>) -> Option<RoomId> {
    serde_json::from_value::<RoomId>(value?.clone()).ok()
}

/// A display name from a legacy frame, made acceptable instead of refused: control characters
/// dropped, at most [`MAX_NAME_CHARS`] characters, trimmed; `None` when nothing is left.
fn clean_name(value: Option<&Value>) -> Option<String> {
    let Some(Value::String(s)) = value else {
        return None;
    };
    let cleaned: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// Room ids go out the way the classic client sent them: a canonical decimal id as a JSON number
/// (`1`), anything else as a string.
#[derive(Serialize)]
#[serde(untagged)]
enum LegacyRoomId<'a> {
    Number(u64),
    Text(&'a str),
}

impl<'a> LegacyRoomId<'a> {
    fn of(room: &'a RoomId) -> Self {
        /// Largest integer a JavaScript number holds exactly.
        const MAX_SAFE: u64 = (1 << 53) - 1;
        let s = room.as_str();
        let canonical = s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        match s.parse::<u64>() {
            Ok(n) if canonical && n <= MAX_SAFE => LegacyRoomId::Number(n),
            _ => LegacyRoomId::Text(s),
        }
    }
}

/// A chat line, shaped as the classic server relays a post: no `event`, `num` added.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    user_name: &'a str,
    user_id: &'a str,
    content: &'a str,
    room_id: LegacyRoomId<'a>,
    room_name: &'a str,
    num: u64,
}

/// A `login` or `logout` line.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Notice<'a> {
    event: &'static str,
    user_name: &'a str,
    user_id: &'a str,
    room_id: LegacyRoomId<'a>,
    room_name: &'a str,
    num: u64,
}

/// Plain structs of strings and numbers always serialize; were one not to, the frame is dropped
/// rather than replaced by something the classic client would render as a blank line.
fn encode<T: Serialize>(frame: &T) -> Option<String> {
    serde_json::to_string(frame).ok()
}

fn translate_message(shared: &Shared, message: &chat_protocol::ChatMessage) -> Option<String> {
    // Direct messages have no place in the classic client (and no inbox is attached for it).
    let room = message.room_id.as_ref()?;
    let (room_name, num) = shared.view(room);
    encode(&Message {
        user_name: &message.user_name,
        user_id: message.user_id.as_str(),
        content: &message.content,
        room_id: LegacyRoomId::of(room),
        room_name: &room_name,
        num,
    })
}

fn translate_notice(
    shared: &Shared,
    frame: &ServerFrame,
    notice: &PresenceNotice,
) -> Option<String> {
    shared.observe(notice);
    let (room_name, num) = shared.view(&notice.room_id);
    let event = match frame {
        ServerFrame::Login(_) => "login",
        _ => "logout",
    };
    encode(&Notice {
        event,
        user_name: &notice.user_name,
        user_id: notice.user_id.as_str(),
        room_id: LegacyRoomId::of(&notice.room_id),
        room_name: &room_name,
        num,
    })
}

/// Translates one broadcast (a v1 `message`, `login` or `logout` frame, as the hub shares it).
fn translate(shared: &Shared, text: &Utf8Bytes) -> Translated {
    let frame = match ServerFrame::decode(text.as_str()) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, "legacy: a broadcast frame did not decode");
            return Translated::nothing();
        }
    };
    let (text, hide_from) = match &frame {
        ServerFrame::Message(message) => (
            translate_message(shared, message),
            Some(message.user_id.clone()),
        ),
        ServerFrame::Login(notice) => (
            translate_notice(shared, &frame, notice),
            Some(notice.user_id.clone()),
        ),
        ServerFrame::Logout(notice) => (translate_notice(shared, &frame, notice), None),
        _ => (None, None),
    };
    Translated {
        text: text.map(Utf8Bytes::from),
        hide_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge() -> Edge {
        Edge::new(Arc::default())
    }

    fn limits() -> Limits {
        Limits {
            max_content_bytes: 16,
            max_history_page: 10,
        }
    }

    #[test]
    fn the_classic_login_gets_a_guest_identity_fixed_for_the_connection() {
        let mut e = edge();
        let login = r#"{"userName":"Alice","roomId":1,"roomName":"make friends","event":"login"}"#;
        let Some(ClientFrame::Login(first)) = e.parse(login, &limits()) else {
            panic!("not a login")
        };
        assert_eq!(first.room_id.as_str(), "1");
        assert!(first.user_id.as_str().starts_with("guest-"));
        assert_eq!(first.user_name, "Alice");
        assert_eq!(first.room_name.as_deref(), Some("make friends"));
        assert!(e.is_guest());
        // Another login (even one naming a user) keeps the connection's identity.
        let again = r#"{"event":"login","roomId":"2","userId":"mallory","userName":"M"}"#;
        let Some(ClientFrame::Login(second)) = e.parse(again, &limits()) else {
            panic!("not a login")
        };
        assert_eq!(second.user_id, first.user_id);
        assert_ne!(edge_guest(), first.user_id, "guests are unique");
    }

    fn edge_guest() -> UserId {
        let mut e = edge();
        match e.parse(r#"{"event":"login","roomId":1}"#, &limits()) {
            Some(ClientFrame::Login(login)) => login.user_id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_user_id_at_login_is_the_identity_and_a_posts_user_id_is_ignored() {
        let mut e = edge();
        let login = r#"{"event":"login","roomId":1,"userId":"ann","userName":"Ann"}"#;
        assert!(
            matches!(e.parse(login, &limits()), Some(ClientFrame::Login(l)) if l.user_id.as_str() == "ann")
        );
        assert!(!e.is_guest());
        let post = r#"{"userName":"Alice","userId":"1732950000000","roomId":1,"roomName":"make friends","content":"hi"}"#;
        assert_eq!(
            e.parse(post, &limits()),
            Some(ClientFrame::Message(PostRequest {
                target: Target::Room(RoomId::new("1").expect("id")),
                content: "hi".into(),
                client_msg_id: None,
            }))
        );
    }

    #[test]
    fn bad_input_is_counted_not_answered() {
        let mut e = edge();
        let bad = [
            "",
            "not json",
            "[1]",
            "42",
            r#"{"event":7}"#,
            r#"{"event":"dance"}"#,
            r#"{"event":"logout","roomId":1}"#,
            r#"{"userName":"x"}"#,
            r#"{"event":"login"}"#,
            r#"{"event":"login","roomId":"a b"}"#,
            r#"{"roomId":1,"content":5}"#,
            r#"{"roomId":1,"content":"   "}"#,
            r#"{"roomId":1,"content":"01234567890123456"}"#,
            r#"{"content":"no room, no login"}"#,
            r#"{"roomId":{},"content":"x"}"#,
        ];
        for text in bad {
            assert_eq!(e.parse(text, &limits()), None, "{text}");
        }
        assert_eq!(e.rejected, bad.len() as u64);
        assert_eq!(e.shared.rejected(), bad.len() as u64);
        assert_eq!(
            e.parse(r#"{"event":"heartBeat","content":"ping"}"#, &limits()),
            Some(ClientFrame::HeartBeat)
        );
    }

    #[test]
    fn names_are_cleaned_not_refused() {
        let v = |s: &str| Value::String(s.to_owned());
        assert_eq!(
            clean_name(Some(&v(" A\u{0}li\nce "))).as_deref(),
            Some("Alice")
        );
        assert_eq!(clean_name(Some(&v("\u{7}"))), None);
        assert_eq!(clean_name(Some(&Value::from(5))), None);
        let long = clean_name(Some(&v(&"é".repeat(100)))).expect("name");
        assert_eq!(long.chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn decimal_room_ids_go_out_as_numbers() {
        let out =
            |id: &str| encode(&LegacyRoomId::of(&RoomId::new(id).expect("id"))).expect("encodes");
        assert_eq!(out("1"), "1");
        assert_eq!(out("0"), "0");
        assert_eq!(out("01"), "\"01\"");
        assert_eq!(out("lobby"), "\"lobby\"");
        assert_eq!(out("9007199254740992"), "\"9007199254740992\"");
    }

    #[test]
    fn counts_follow_the_newest_presence_change_and_entries_end_with_their_connections() {
        let shared = Arc::new(Shared::default());
        let room = RoomId::new("1").expect("id");
        shared.enter(&room, "make friends", 2, 10);
        let notice = |num, at| PresenceNotice {
            room_id: room.clone(),
            user_id: UserId::new("u").expect("id"),
            user_name: "U".into(),
            num,
            total: 9,
            reason: None,
            presence_seq: Some(at),
        };
        shared.observe(&notice(3, 12));
        shared.observe(&notice(1, 11));
        assert_eq!(shared.view(&room), (Arc::from("make friends"), 3));
        shared.enter(&room, "make friends", 2, 11);
        assert_eq!(
            shared.view(&room).1,
            3,
            "an older join does not roll the count back"
        );
        shared.exit(&room);
        assert_eq!(shared.view(&room).1, 3);
        shared.exit(&room);
        assert!(shared.lock().is_empty());
    }

    #[test]
    fn a_broadcast_is_translated_once_and_hidden_from_its_author() {
        let shared = Arc::new(Shared::default());
        let room = RoomId::new("1").expect("id");
        shared.enter(&room, "make friends", 2, 1);
        let mut bob = Edge::new(shared.clone());
        bob.parse(r#"{"event":"login","roomId":1,"userId":"bob"}"#, &limits());
        let mut ann = Edge::new(shared.clone());
        ann.parse(r#"{"event":"login","roomId":1,"userId":"ann"}"#, &limits());
        let v1 = ServerFrame::Message(chat_protocol::ChatMessage {
            room_id: Some(room.clone()),
            to_user_id: None,
            seq: 1,
            epoch: "e".into(),
            user_id: UserId::new("ann").expect("id"),
            user_name: "Ann".into(),
            content: "hi".into(),
            ts: 1,
            client_msg_id: None,
            replay: false,
            resend: false,
        })
        .encode();
        let text = Utf8Bytes::from(v1);
        let cache = Cache::default();
        let got = bob.relay(&text, Some(&cache)).expect("bob gets it");
        let v: Value = serde_json::from_str(got.as_str()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"userName":"Ann","userId":"ann","content":"hi","roomId":1,"roomName":"make friends","num":2})
        );
        assert!(
            cache.get().is_some(),
            "cached for the next legacy recipient"
        );
        assert_eq!(
            ann.relay(&text, Some(&cache)),
            None,
            "no echo to the author"
        );
        drop(bob);
        drop(ann);
        assert_eq!(shared.connections(), 0);
    }
}
