//! One client connection's protocol logic, without the socket.
//!
//! A [`Session`] takes decoded input (`on_text`, `on_binary`, hub [`Outbound`] control items,
//! delivery marks, timer ticks) and produces frames: its own replies go to an ordered reply queue
//! ([`Session::take_replies`]) that the socket driver writes before anything the hub queued, and
//! live traffic reaches the connection through the hub. Tests drive it directly with the in-memory
//! backend and read both queues; `ws.rs` connects it to a real WebSocket.
//!
//! Read cursors (the offline queue): for each room the session remembers, within the log's current
//! epoch, the highest seq that reached the socket and the highest seq the client acknowledged.
//! When the connection ends, the user's cursor moves to the acknowledged seq if the client ever
//! sent `ack` for that room (so nothing unacknowledged is lost), else to the delivered seq (old
//! clients never ack). Acks while connected are recorded in the node's [`crate::cursors`] batch,
//! written every `cluster.cursor_flush_ms`, so a node that dies loses little and an ack never
//! waits on the store. A seq is never read or written without its epoch: when the log
//! is reset, positions in the old epoch stop counting instead of shadowing the new log's seqs.
//!
//! A frame counts as delivered only once the driver has flushed it to the socket: replies carry
//! the same delivery [`Mark`]s as live frames, so a replay that never reached the client does
//! not move its cursor.
//!
//! Resend on missing acks: every written message frame is also handed, with its mark, to a
//! [`Tracker`] (see [`crate::delivery`]); once the connection acks, the tracker's deadline makes
//! the driver call [`Session::on_resend_due`], which queues the unacknowledged tail again or gives
//! the connection up (the driver closes it with 4002).
//! Hostile clients ([`crate::auth`], [`crate::limits`]): in `auth.mode = "jwt"` a session without
//! a valid token answers every frame but `auth` with `noauth` and drops it, and identity comes
//! from the token only; posts and joins pass token buckets; `history` needs membership of the
//! room; the driver closes a session that never authenticates or logs in, or whose token expired
//! ([`Session::deadline`]), or that keeps flooding ([`Session::close_request`]).
//!
//! A session may speak the legacy dialect ([`crate::legacy`]) instead of v1: its [`Edge`] then
//! translates frames in ([`Session::on_text`]) and out ([`Session::reply`],
//! [`Session::outbound_text`]); the protocol logic in between is the same.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

use chat_backend::{BackendError, Draft, JoinRequest, Notice, Position, StreamKey};
use chat_protocol::client::{AckStream, parse_client_frame_as};
use chat_protocol::close;
use chat_protocol::server::{HistoryPage, Joined, Sent};
use chat_protocol::{
    ChatMessage, ClientFrame, ErrorCode, HistoryRequest, LoginRequest, LogoutReason, PostRequest,
    PresenceNotice, ProtocolError, RoomId, ServerFrame, Target, UserId,
};
use tungstenite::Utf8Bytes;

use crate::auth::Grant;
use crate::delivery::{self, Due, Tracker};
use crate::hub::{Attached, ConnHandle, Mark};
use crate::legacy::{self, Edge};
use crate::limits::{TokenBucket, UserBucket};
use crate::membership::JoinVerdict;
use crate::node::Node;

/// Who the connection is; fixed by its first `login`.
#[derive(Debug, Clone)]
struct Identity {
    id: UserId,
    name: String,
}

/// What the session knows about its position in one stream. Every seq here belongs to `epoch`.
#[derive(Debug)]
struct Progress {
    /// The log's epoch these positions are in.
    epoch: Arc<str>,
    /// Highest seq written to the socket.
    delivered: u64,
    /// Highest seq the client acknowledged, if it ever did.
    acked: Option<u64>,
}

impl Progress {
    fn new(epoch: &str) -> Self {
        Progress {
            epoch: Arc::from(epoch),
            delivered: 0,
            acked: None,
        }
    }

    /// Moves to `epoch` if the log was reset: positions in the old epoch mean nothing in the new
    /// one, so they start over (a client that acks keeps being treated as one).
    fn follow(&mut self, epoch: &Arc<str>) {
        if self.epoch != *epoch {
            self.epoch = epoch.clone();
            self.delivered = 0;
            self.acked = self.acked.map(|_| 0);
        }
    }

    fn at(&self, seq: u64) -> Position {
        Position::new(self.epoch.to_string(), seq)
    }

    /// The cursor to store when the connection ends, if it moved.
    fn final_cursor(&self) -> Option<Position> {
        match self.acked {
            // Written directly at the end even if a batch has it already: a user who reconnects
            // elsewhere at once must not be replayed what they acked here.
            Some(acked) => (acked > 0).then(|| self.at(acked)),
            None => (self.delivered > 0).then(|| self.at(self.delivered)),
        }
    }
}

/// A reply waiting for the socket. `mark` is set on replayed messages: like a live frame's, it
/// counts as delivered only once the driver has flushed it.
#[derive(Debug)]
pub struct Reply {
    /// The encoded frame.
    pub text: Utf8Bytes,
    /// The stream position it delivers, for message frames.
    pub mark: Option<Mark>,
}

/// See the module docs.
pub struct Session {
    node: Arc<Node>,
    conn: ConnHandle,
    /// `Some` when the connection speaks the legacy dialect. Boxed, like `grant`: most
    /// connections have neither, and every idle connection would pay their size inline.
    legacy: Option<Box<Edge>>,
    user: Option<Identity>,
    rooms: HashMap<RoomId, Progress>,
    inbox: Option<Progress>,
    /// The inbox could not be attached or replayed; retried at the next login and every tick.
    inbox_failed: bool,
    replies: VecDeque<Reply>,
    /// Unacknowledged frames of an acking connection, for resending (see [`crate::delivery`]).
    tracker: Tracker<Utf8Bytes>,
    /// The verified token, in `auth.mode = "jwt"`.
    grant: Option<Box<Grant>>,
    /// When the connection opened (the auth and login timeouts count from here).
    opened: Instant,
    /// True once a `login` succeeded: the login timeout no longer applies.
    ever_joined: bool,
    posts: TokenBucket,
    /// The post bucket this connection shares with its user's other connections on this node;
    /// taken at the first login (when the user is known), released when the session ends.
    user_posts: Option<UserBucket>,
    joins: TokenBucket,
    /// Posts refused by the rate limit in a row; past `limits.flood_close_after` the driver closes.
    refused_in_a_row: u32,
    /// Set when the session wants the driver to close the connection (after writing its replies).
    close_request: Option<(u16, &'static str)>,
}

/// The connection stopped acknowledging what it was sent; the driver closes it with
/// [`chat_protocol::close::ACK_TIMEOUT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    /// The stream that timed out.
    pub stream: StreamKey,
    /// Its oldest unacknowledged seq.
    pub seq: u64,
}

/// Now, on tokio's clock (so tests with a paused clock control resend deadlines).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn node_limits_posts(node: &Node) -> (u32, u32) {
    (
        node.settings.limits.posts_per_second,
        node.settings.limits.posts_burst,
    )
}

fn rate_limited(what: &str, wait: std::time::Duration) -> ProtocolError {
    let ms = wait.as_millis().max(1);
    ProtocolError::new(
        ErrorCode::RateLimited,
        format!("too many {what} per second; retryAfterMs={ms}"),
    )
}

fn unavailable(e: BackendError) -> ProtocolError {
    tracing::debug!(error = %e, "backend call failed");
    match e {
        BackendError::Unavailable(_) => ProtocolError::new(
            ErrorCode::Unavailable,
            "the chat backend is unavailable; send it again later",
        ),
        BackendError::Full(limit) => ProtocolError::new(
            crate::http::limit_code(limit),
            match limit {
                chat_backend::Limit::Rooms => {
                    "this node holds as many rooms as limits.max_rooms allows; join an existing room or try again later"
                }
                chat_backend::Limit::Inboxes => {
                    "this node holds as many direct-message inboxes as limits.max_inboxes allows; try again later"
                }
            },
        ),
        BackendError::Corrupt(detail) | BackendError::Config(detail) => {
            tracing::error!(%detail, "backend failed");
            ProtocolError::new(ErrorCode::Internal, "internal error; nothing was stored")
        }
    }
}

impl Session {
    /// A session for a connection whose hub handle is `conn`.
    pub fn new(node: Arc<Node>, conn: ConnHandle) -> Self {
        Session {
            conn,
            legacy: None,
            user: None,
            rooms: HashMap::new(),
            inbox: None,
            inbox_failed: false,
            replies: VecDeque::new(),
            tracker: Tracker::new(node.settings.delivery_policy()),
            grant: None,
            opened: Instant::now(),
            ever_joined: false,
            posts: TokenBucket::new(node_limits_posts(&node).0, node_limits_posts(&node).1),
            user_posts: None,
            joins: TokenBucket::new(
                node.settings.limits.joins_per_second,
                node.settings.limits.joins_per_second.max(
                    u32::try_from(node.settings.limits.max_rooms_per_connection)
                        .unwrap_or(u32::MAX),
                ),
            ),
            refused_in_a_row: 0,
            close_request: None,
            node,
        }
    }

    /// Authenticates the connection with a token verified at the upgrade.
    pub fn set_grant(&mut self, grant: Grant) {
        tracing::Span::current().record("user", grant.user_id.as_str());
        self.grant = Some(Box::new(grant));
    }

    /// When the driver must act if nothing changes before, and the close code it will use: the
    /// auth timeout (jwt mode, no token yet), the token's expiry, or the login timeout.
    pub fn deadline(&self) -> Option<(Instant, u16)> {
        let limits = &self.node.settings;
        let login = (!self.ever_joined).then(|| {
            (
                self.opened + std::time::Duration::from_secs(limits.limits.login_timeout_secs),
                close::AUTH_TIMEOUT,
            )
        });
        let auth = match (&self.node.auth, &self.grant) {
            (None, _) => None,
            (Some(_), None) => Some((
                self.opened + std::time::Duration::from_secs(limits.auth.timeout_secs),
                close::AUTH_TIMEOUT,
            )),
            (Some(verifier), Some(grant)) => Some((
                Instant::now() + grant.remaining(verifier.leeway()),
                close::TOKEN_EXPIRED,
            )),
        };
        match (login, auth) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The deadline of [`Session::deadline`] passed: tells the client why and asks the driver to
    /// close with `code`.
    pub fn on_deadline(&mut self, code: u16) {
        let (message, reason) = match code {
            close::TOKEN_EXPIRED => (
                "the token expired: get a new token, then reconnect",
                "token expired",
            ),
            _ if self.node.auth.is_some() && self.grant.is_none() => (
                "no valid token within auth.timeout_secs",
                "authentication timeout",
            ),
            _ => ("no login within limits.login_timeout_secs", "login timeout"),
        };
        self.reply(&ServerFrame::NoAuth {
            message: message.to_owned(),
        });
        self.close_request = Some((code, reason));
    }

    /// A close the session asked for (flooding, an expired token): the driver writes the
    /// session's replies, then closes with this code.
    pub fn close_request(&self) -> Option<(u16, &'static str)> {
        self.close_request
    }

    /// An `auth` frame: authenticate, or extend the connection with a fresh token of the same
    /// user.
    async fn authenticate(&mut self, token: &str) -> Result<(), ProtocolError> {
        let Some(verifier) = self.node.auth.clone() else {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                "this server does not use tokens (auth.mode = off)",
            ));
        };
        match verifier.verify(token).await {
            Ok(grant) => {
                if let Some(current) = &self.grant
                    && current.user_id != grant.user_id
                {
                    return Err(ProtocolError::new(
                        ErrorCode::UserMismatch,
                        format!(
                            "this connection is user `{}`; a token for `{}` needs its own connection",
                            current.user_id, grant.user_id
                        ),
                    ));
                }
                self.reply(&ServerFrame::Authenticated {
                    user_id: grant.user_id.clone(),
                    user_name: grant.user_name.clone(),
                    expires_at: grant.expires_at,
                });
                self.set_grant(grant);
                Ok(())
            }
            Err(e) => {
                // A failed refresh leaves the current token in force until it expires.
                self.reply(&ServerFrame::NoAuth { message: e.0 });
                Ok(())
            }
        }
    }

    /// Applies the post rate limit; past `limits.flood_close_after` refusals in a row, asks the
    /// driver to close with 1008.
    fn rate_limit_post(&mut self) -> Result<(), ProtocolError> {
        // The user's bucket is asked only when the connection's own has a token, so a refused
        // post does not also drain what the user's other connections share.
        let taken = self.posts.take().and_then(|()| match &self.user_posts {
            Some(user) => user.take(),
            None => Ok(()),
        });
        match taken {
            Ok(()) => {
                self.refused_in_a_row = 0;
                Ok(())
            }
            Err(wait) => {
                self.refused_in_a_row += 1;
                if self.refused_in_a_row >= self.node.settings.limits.flood_close_after {
                    self.close_request = Some((close::POLICY_VIOLATION, "flooding"));
                }
                Err(rate_limited("posts", wait))
            }
        }
    }

    /// Makes the session speak the legacy dialect (`GET /`). Its hub handle (the one the hub
    /// attaches) is marked too, so the hub hands it a translation slot with each broadcast.
    pub fn speaking_legacy(mut self) -> Self {
        self.conn = self.conn.clone().speaking_legacy();
        self.legacy = Some(Box::new(Edge::new(self.node.legacy.clone())));
        self
    }

    /// The text to write for a frame the hub queued: the shared v1 text itself, or for a legacy
    /// connection its translation (`None`: not for this client).
    pub fn outbound_text(
        &self,
        text: Utf8Bytes,
        cache: Option<&legacy::Cache>,
    ) -> Option<Utf8Bytes> {
        match &self.legacy {
            None => Some(text),
            Some(edge) => edge.relay(&text, cache),
        }
    }

    /// Direct-message inboxes are for v1 clients: the classic client has no direct messages.
    fn wants_inbox(&self) -> bool {
        self.inbox.is_none() && self.legacy.is_none()
    }

    /// The connection's id.
    pub fn conn_id(&self) -> u64 {
        self.conn.id
    }

    /// Replies produced since the last call, in order. The driver writes them before anything
    /// from the hub queue, and reports their marks to [`Session::on_delivered`] once flushed.
    pub fn take_replies(&mut self) -> impl Iterator<Item = Reply> + '_ {
        // Taken with its buffer, not drained: an idle connection keeps no room for its login's
        // burst of replies (docs/benchmarks.md, idle memory).
        std::mem::take(&mut self.replies).into_iter()
    }

    /// True when replies are waiting.
    pub fn has_replies(&self) -> bool {
        !self.replies.is_empty()
    }

    fn reply(&mut self, frame: &ServerFrame) {
        let text = match &mut self.legacy {
            None => frame.encode(),
            Some(edge) => match edge.reply(frame) {
                Some(text) => text,
                None => return,
            },
        };
        self.replies.push_back(Reply {
            text: Utf8Bytes::from(text),
            mark: None,
        });
    }

    /// Queues replayed messages of `key`; each counts as delivered once written.
    fn reply_replay(&mut self, key: &StreamKey, messages: Vec<ChatMessage>) {
        let stream = Arc::new(key.clone());
        let mut epoch: Arc<str> = Arc::from("");
        for mut message in messages {
            message.replay = true;
            if *epoch != *message.epoch {
                epoch = Arc::from(message.epoch.as_str());
            }
            let mark = Mark {
                stream: stream.clone(),
                epoch: epoch.clone(),
                seq: message.seq,
            };
            let frame = ServerFrame::Message(message);
            let text = match &mut self.legacy {
                None => frame.encode(),
                Some(edge) => match edge.reply(&frame) {
                    Some(text) => text,
                    None => continue,
                },
            };
            self.replies.push_back(Reply {
                text: Utf8Bytes::from(text),
                mark: Some(mark),
            });
        }
    }

    fn reply_error(&mut self, error: ProtocolError) {
        metrics::counter!(crate::metrics::ERRORS, "code" => error.code.as_str()).increment(1);
        self.reply(&ServerFrame::from(error));
    }

    /// A text frame from the client.
    pub async fn on_text(&mut self, text: &str) {
        if self.close_request.is_some() {
            // Closing: whatever else arrives is not acted on.
            return;
        }
        let identity = self
            .grant
            .as_ref()
            .map(|g| (g.user_id.clone(), g.user_name.clone()));
        let parsed = match &mut self.legacy {
            None => parse_client_frame_as(
                text,
                &self.node.limits,
                identity.as_ref().map(|(id, name)| (id, name.as_str())),
            ),
            Some(edge) => match edge.parse(text, &self.node.limits) {
                Some(frame) => Ok(frame),
                None => return,
            },
        };
        if self.node.auth.is_some() && self.grant.is_none() {
            // Nothing but a token is acted on before the connection is authenticated.
            if let Ok(ClientFrame::Auth { token }) = &parsed {
                let token = token.clone();
                if let Err(e) = self.authenticate(&token).await {
                    self.reply_error(e);
                }
            } else {
                self.reply(&ServerFrame::NoAuth {
                    message: "authenticate first: send {\"event\":\"auth\",\"token\":\"…\"}"
                        .to_owned(),
                });
            }
            return;
        }
        let frame = match parsed {
            Ok(frame) => frame,
            Err(e) => return self.reply_error(e),
        };
        let result = match frame {
            ClientFrame::Auth { token } => self.authenticate(&token).await,
            ClientFrame::Login(login) => self.login(login).await,
            ClientFrame::Logout { room_id } => self.logout(room_id).await,
            ClientFrame::Message(post) => {
                let reference = post.client_msg_id.clone();
                let posted = match self.rate_limit_post() {
                    Ok(()) => self.post(post).await,
                    Err(e) => Err(e),
                };
                if posted.is_ok() {
                    crate::metrics::hot().posts.increment(1);
                }
                posted.map_err(|e| e.with_ref(reference))
            }
            ClientFrame::Ack { stream, seq, epoch } => {
                crate::metrics::hot().acks.increment(1);
                self.ack(stream, seq, epoch).await
            }
            ClientFrame::History(request) => self.history(request).await,
            ClientFrame::HeartBeat => {
                self.reply(&ServerFrame::pong());
                Ok(())
            }
        };
        if let Err(e) = result {
            self.reply_error(e);
        }
    }

    /// A binary frame from the client: not part of the protocol.
    pub fn on_binary(&mut self) {
        self.reply_error(ProtocolError::new(
            ErrorCode::BinaryFrame,
            "binary frames are not supported; send JSON text",
        ));
    }

    /// A frame carrying `mark` reached the socket.
    pub fn on_delivered(&mut self, mark: &Mark) {
        self.delivered(mark);
    }

    /// Records a delivered position; false when the stream is no longer this connection's.
    fn delivered(&mut self, mark: &Mark) -> bool {
        let progress = match mark.stream.as_ref() {
            StreamKey::Room(room) => self.rooms.get_mut(room),
            StreamKey::Inbox(_) => self.inbox.as_mut(),
        };
        match progress {
            Some(p) => {
                p.follow(&mark.epoch);
                p.delivered = p.delivered.max(mark.seq);
                true
            }
            None => false,
        }
    }

    /// A frame carrying `mark` reached the socket; `text` is the frame itself, kept (shared, not
    /// copied) for resending while an acking client has not acknowledged it.
    pub fn on_written(&mut self, mark: &Mark, text: &Utf8Bytes) {
        // The legacy dialect has no `ack`: nothing is kept for it.
        if self.delivered(mark) && self.legacy.is_none() {
            self.tracker
                .on_written(&mark.stream, &mark.epoch, mark.seq, text, now());
        }
    }

    /// When [`Session::on_resend_due`] next has work: the earliest ack deadline of this connection.
    pub fn next_resend(&self) -> Option<std::time::Instant> {
        self.tracker.next_deadline()
    }

    /// Frames resent on this connection so far.
    pub fn resent(&self) -> u64 {
        self.tracker.resent()
    }

    /// An ack deadline passed: queues the unacknowledged tails again (marked `"resend": true`,
    /// copied from the stored frames, not re-encoded), or reports that the connection gave up.
    pub fn on_resend_due(&mut self) -> Result<(), GaveUp> {
        match self.tracker.poll(now()) {
            Due::Nothing => Ok(()),
            Due::Resend(frames) => {
                self.node
                    .delivery
                    .resent_frames
                    .fetch_add(frames.len() as u64, std::sync::atomic::Ordering::Relaxed);
                // Rare (a round per ack timeout), so the registry lookup is fine here.
                metrics::counter!(crate::metrics::RESENDS).increment(frames.len() as u64);
                tracing::debug!(
                    conn = self.conn.id,
                    frames = frames.len(),
                    "resending unacknowledged messages"
                );
                for frame in frames {
                    // No mark: these positions were recorded when first written.
                    self.replies.push_back(Reply {
                        text: Utf8Bytes::from(delivery::mark_resend(frame.as_str())),
                        mark: None,
                    });
                }
                Ok(())
            }
            Due::GiveUp { stream, seq } => {
                self.node
                    .delivery
                    .given_up
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    conn = self.conn.id,
                    ?stream,
                    seq,
                    "no acks: closing the connection"
                );
                Err(GaveUp { stream, seq })
            }
        }
    }

    /// The user left `room` through another connection: this one is no longer in it.
    pub fn on_left(&mut self, room: &RoomId) {
        self.rooms.remove(room);
        self.tracker.forget(&StreamKey::Room(room.clone()));
    }

    /// Periodic work (driven by the heartbeat timer): retries attaching a direct-message inbox
    /// that failed. (Acks need no timer: the node writes them in batches.)
    pub async fn on_tick(&mut self) {
        if self.user.is_some() && self.wants_inbox() {
            self.attach_inbox().await;
        }
    }

    async fn login(&mut self, mut req: LoginRequest) -> Result<(), ProtocolError> {
        if let Some(grant) = &self.grant {
            // jwt mode: the token says who this is, whatever the frame (or legacy dialect) says.
            req.user_id = grant.user_id.clone();
            req.user_name = grant.user_name.clone();
            if !grant.allows(&req.room_id) {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!("the token does not allow room `{}`", req.room_id),
                ));
            }
        }
        if let Err(wait) = self.joins.take() {
            return Err(rate_limited("logins", wait));
        }
        let result = self.login_checked(req).await;
        if result.is_ok() {
            self.ever_joined = true;
        }
        result
    }

    async fn login_checked(&mut self, req: LoginRequest) -> Result<(), ProtocolError> {
        if let Some(user) = &self.user
            && user.id != req.user_id
        {
            return Err(ProtocolError::new(
                ErrorCode::UserMismatch,
                format!(
                    "this connection is user `{}`; open another connection for `{}`",
                    user.id, req.user_id
                ),
            ));
        }
        if self.rooms.contains_key(&req.room_id) {
            return self.login_again(req).await;
        }
        if self.rooms.len() >= self.node.settings.limits.max_rooms_per_connection {
            return Err(ProtocolError::new(
                ErrorCode::TooManyRooms,
                format!(
                    "a connection may be in at most {} rooms",
                    self.node.settings.limits.max_rooms_per_connection
                ),
            ));
        }
        let node = self.node.clone();
        let key = StreamKey::Room(req.room_id.clone());
        let join = JoinRequest {
            room: &req.room_id,
            user: &req.user_id,
            user_name: &req.user_name,
            room_name: req.room_name.as_deref(),
        };

        let conn = self.conn.id;
        let guard = node.presence_guard(&req.room_id, &req.user_id).await;
        node.hub
            .begin_join(&req.room_id, &req.user_id, &req.user_name, conn);
        let outcome = match node.store.join(&join).await {
            Ok(outcome) => outcome,
            Err(e) => {
                node.hub.leave_room(&req.room_id, &req.user_id, conn);
                return Err(unavailable(e));
            }
        };
        let attached = match node.hub.attach(&key, &self.conn).await {
            Ok(attached) => attached,
            Err(e) => {
                // Undo the presence the join just recorded, unless another local connection of the
                // user holds it.
                if node.hub.leave_room(&req.room_id, &req.user_id, conn) {
                    let _ = node.store.go_offline(&req.room_id, &req.user_id).await;
                }
                return Err(unavailable(e));
            }
        };
        let verdict = node.hub.complete_join(
            &req.room_id,
            &req.user_id,
            conn,
            &outcome.head.epoch,
            outcome.presence_seq,
        );
        drop(guard);
        if verdict == JoinVerdict::Overtaken {
            // The store ordered a logout of this user (from another connection) after this join,
            // and its notice arrived first: the logout covers this connection too.
            return Err(ProtocolError::new(
                ErrorCode::NotJoined,
                format!(
                    "`{}` logged out of `{}` from another connection while this login was in flight; send login again to rejoin",
                    req.user_id, req.room_id
                ),
            ));
        }

        // The replay runs to the end of the log as the join saw it, or to this node's delivery
        // position if that is further; live frames up to there are skipped (`open_gate`), so a
        // node that lags the store neither delays nor duplicates anything.
        let head = if outcome.head.epoch == attached.epoch {
            outcome.head.seq
        } else {
            0
        };
        let through = attached.last.max(head);
        // Where the client's knowledge ends: what it says (`since`), else its stored cursor. A
        // position from another epoch means the log was reset: everything in the new one is new.
        // A position ahead of the head never becomes a cursor past what exists: with the current
        // epoch named it is clamped to the head (the client cannot hold more than the log); without
        // an epoch it is taken to be from a log that has since been reset, like an old epoch.
        let known = match (req.since, &req.epoch) {
            (Some(_), Some(epoch)) if *epoch != attached.epoch => Some(0),
            (Some(since), Some(_)) => Some(since.min(through)),
            (Some(since), None) => Some(if since > through { 0 } else { since }),
            (None, _) => outcome
                .cursor
                .as_ref()
                .map(|c| c.seq_in(&attached.epoch).unwrap_or(0).min(through)),
        };
        let replay = match known {
            Some(after) if after < through => {
                let max = node.settings.offline.max_per_room;
                let min_ts = if req.since.is_some() {
                    0
                } else {
                    node.replay_min_ts()
                };
                match node.store.range(&key, after, through, max, min_ts).await {
                    Ok(messages) => messages,
                    Err(e) => {
                        // Joining without the replay would let live traffic move the cursor past
                        // what the client never got: undo the join instead, so a retry starts
                        // from the same cursor.
                        tracing::warn!(room = %req.room_id, error = %e, "could not load missed messages");
                        self.undo_join(&req.room_id, &req.user_id).await;
                        return Err(ProtocolError::new(
                            ErrorCode::Unavailable,
                            "missed messages could not be loaded, so the room was not joined; send login again",
                        ));
                    }
                }
            }
            _ => Vec::new(),
        };

        let (recovered, oldest_seq) = self.gap(&key, known, through, &replay).await;
        let first_login = self.user.is_none();
        if first_login {
            // The connection's span (ws.rs) names the user in every later log line of it.
            tracing::Span::current().record("user", req.user_id.as_str());
            self.user = Some(Identity {
                id: req.user_id.clone(),
                name: req.user_name.clone(),
            });
            let limits = &self.node.settings.limits;
            self.user_posts = Some(self.node.user_posts.join(
                req.user_id.as_str(),
                limits.user_posts_per_second,
                limits.user_posts_burst,
            ));
        }
        if let Some(edge) = &mut self.legacy {
            edge.joined(&req.room_id, &outcome);
        }
        self.reply(&ServerFrame::Joined(Joined {
            room_id: req.room_id.clone(),
            room_name: outcome.room_name,
            seq: through,
            epoch: attached.epoch.clone(),
            num: outcome.counts.num,
            total: outcome.counts.total,
            replayed: replay.len() as u64,
            recovered,
            oldest_seq,
        }));
        self.reply_replay(&key, replay);
        self.rooms
            .insert(req.room_id.clone(), Progress::new(&attached.epoch));
        node.hub.open_gate(&key, self.conn.id, through);

        if known.is_none() {
            // A new member starts reading at the current end of the log.
            let start = Position::new(attached.epoch.clone(), through);
            if let Err(e) = node.store.advance_cursor(&req.user_id, &key, &start).await {
                tracing::debug!(error = %e, "could not store the initial cursor");
            }
        }
        if outcome.came_online {
            let notice = Notice::Login(PresenceNotice {
                room_id: req.room_id.clone(),
                user_id: req.user_id.clone(),
                user_name: req.user_name.clone(),
                num: outcome.counts.num,
                total: outcome.counts.total,
                reason: None,
                presence_seq: Some(outcome.presence_seq),
            });
            if let Err(e) = node.broker.publish_notice(&notice).await {
                tracing::warn!(room = %req.room_id, error = %e, "could not publish a login notice");
            }
        }
        if self.wants_inbox() {
            self.attach_inbox().await;
        }
        tracing::debug!(conn = self.conn.id, room = %req.room_id, user = %req.user_id, "joined");
        Ok(())
    }

    /// Takes back a join whose replay failed: detaches the connection and, if it was the user's
    /// last local one, their presence through this node. No `login` notice went out yet.
    async fn undo_join(&mut self, room: &RoomId, user: &UserId) {
        let node = self.node.clone();
        let _removal = node.presence_barrier.read().await;
        let _guard = node.presence_guard(room, user).await;
        if node.hub.leave_room(room, user, self.conn.id)
            && let Err(e) = node.store.go_offline(room, user).await
        {
            tracing::warn!(%room, error = %e, "could not undo presence; it expires with its lease");
        }
    }

    /// `login` for a room this connection is already in: refreshes presence and answers `joined`
    /// again. With `since`, what this connection was given after it is sent again, so a client
    /// that lost frames (or whose earlier replay failed) can catch up without reconnecting.
    async fn login_again(&mut self, req: LoginRequest) -> Result<(), ProtocolError> {
        let node = self.node.clone();
        let key = StreamKey::Room(req.room_id.clone());
        let join = JoinRequest {
            room: &req.room_id,
            user: &req.user_id,
            user_name: &req.user_name,
            room_name: req.room_name.as_deref(),
        };
        let outcome = {
            let _guard = node.presence_guard(&req.room_id, &req.user_id).await;
            node.store.join(&join).await.map_err(unavailable)?
        };
        let (epoch, last) = node
            .hub
            .position(&key)
            .unwrap_or((outcome.head.epoch.clone(), outcome.head.seq));
        let (progress_epoch, delivered) = match self.rooms.get(&req.room_id) {
            Some(p) => (p.epoch.to_string(), p.delivered),
            None => (epoch.clone(), 0),
        };
        let after = match (req.since, &req.epoch) {
            (Some(_), Some(e)) if *e != progress_epoch => Some(0),
            (since, _) => since,
        };
        // Frames this connection has not been written yet follow from its queue: the resend
        // stops at what reached the socket, so nothing arrives out of order.
        let replay = match after {
            Some(after) if after < delivered => node
                .store
                .range(
                    &key,
                    after,
                    delivered,
                    node.settings.offline.max_per_room,
                    0,
                )
                .await
                .map_err(unavailable)?,
            _ => Vec::new(),
        };
        let (recovered, oldest_seq) = self
            .gap(&key, after.map(|a| a.min(delivered)), delivered, &replay)
            .await;
        self.reply(&ServerFrame::Joined(Joined {
            room_id: req.room_id,
            room_name: outcome.room_name,
            seq: last,
            epoch,
            num: outcome.counts.num,
            total: outcome.counts.total,
            replayed: replay.len() as u64,
            recovered,
            oldest_seq,
        }));
        self.reply_replay(&key, replay);
        Ok(())
    }

    /// `recovered` and `oldestSeq` of a `joined`: whether `replay` (of `after < seq <= through`)
    /// reaches back to the client's position `after`. No position means nothing to recover. When
    /// it does not, the oldest seq history still holds tells the client where its gap ends.
    async fn gap(
        &self,
        key: &StreamKey,
        after: Option<u64>,
        through: u64,
        replay: &[ChatMessage],
    ) -> (bool, Option<u64>) {
        let Some(after) = after.filter(|a| *a < through) else {
            return (true, None);
        };
        if replay.first().is_some_and(|m| m.seq == after + 1) {
            return (true, None);
        }
        match self.node.store.oldest(key).await {
            Ok(oldest) => (false, oldest),
            Err(e) => {
                // The gap is still reported; only where it ends is unknown.
                tracing::debug!(error = %e, "could not read the oldest seq");
                (false, None)
            }
        }
    }

    /// Attaches the connection to its user's direct-message inbox and replays what they missed.
    /// On failure the inbox stays detached (its cursor untouched) and is retried at the next
    /// login and every tick.
    async fn attach_inbox(&mut self) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let node = self.node.clone();
        let key = StreamKey::Inbox(user.id.clone());
        let attached = match node.hub.attach(&key, &self.conn).await {
            Ok(attached) => attached,
            Err(e) => return self.inbox_unavailable(e),
        };
        match self.missed_direct_messages(&user.id, &key, &attached).await {
            Ok((through, missed)) => {
                self.inbox_failed = false;
                self.inbox = Some(Progress::new(&attached.epoch));
                self.reply_replay(&key, missed);
                node.hub.open_gate(&key, self.conn.id, through);
            }
            Err(e) => {
                node.hub.detach(&key, self.conn.id);
                self.inbox_unavailable(e);
            }
        }
    }

    /// The inbox replay window: everything after the user's cursor up to the later of this node's
    /// delivery position and the store's head (a node whose delivery lags must not mistake a
    /// cursor moved elsewhere for one from the future).
    async fn missed_direct_messages(
        &self,
        user: &UserId,
        key: &StreamKey,
        attached: &Attached,
    ) -> Result<(u64, Vec<ChatMessage>), BackendError> {
        let node = &self.node;
        let head = node.store.head(key).await?;
        let cursor = node.store.cursor(user, key).await?;
        let head = if head.epoch == attached.epoch {
            head.seq
        } else {
            0
        };
        let through = attached.last.max(head);
        // Everything in an inbox is addressed to its owner, so without a cursor in this epoch
        // (never connected, away longer than the cursor TTL, or the inbox was reset) it all
        // counts as missed, within the replay bounds.
        let after = cursor
            .and_then(|c| c.seq_in(&attached.epoch))
            .filter(|c| *c <= through)
            .unwrap_or(0);
        let missed = if after < through {
            let max = node.settings.offline.max_per_room;
            node.store
                .range(key, after, through, max, node.replay_min_ts())
                .await?
        } else {
            Vec::new()
        };
        Ok((through, missed))
    }

    fn inbox_unavailable(&mut self, e: BackendError) {
        tracing::warn!(conn = self.conn.id, error = %e, "could not attach the direct-message inbox");
        if !self.inbox_failed {
            self.inbox_failed = true;
            self.reply_error(ProtocolError::new(
                ErrorCode::Unavailable,
                "direct messages could not be loaded; the server keeps trying",
            ));
        }
    }

    async fn logout(&mut self, room: RoomId) -> Result<(), ProtocolError> {
        let user = self.joined_user(&room)?;
        let node = self.node.clone();
        let outcome = {
            let _removal = node.presence_barrier.read().await;
            let _guard = node.presence_guard(&room, &user.id).await;
            let outcome = node
                .store
                .leave(&room, &user.id)
                .await
                .map_err(unavailable)?;
            // The user's other connections (here and elsewhere) leave when the notice arrives,
            // after they are shown it.
            node.hub.leave_room(&room, &user.id, self.conn.id);
            outcome
        };
        self.rooms.remove(&room);
        self.tracker.forget(&StreamKey::Room(room.clone()));
        let notice = PresenceNotice {
            room_id: room.clone(),
            user_id: user.id.clone(),
            user_name: user.name.clone(),
            num: outcome.counts.num,
            total: outcome.counts.total,
            reason: Some(LogoutReason::Left),
            presence_seq: Some(outcome.presence_seq),
        };
        // This connection is detached already, so it gets its confirmation directly; the
        // published notice tells everyone else and detaches the user's other connections.
        self.reply(&ServerFrame::Logout(notice.clone()));
        if let Err(e) = node.broker.publish_notice(&Notice::Logout(notice)).await {
            tracing::warn!(%room, error = %e, "could not publish a logout notice");
        }
        Ok(())
    }

    fn joined_user(&self, room: &RoomId) -> Result<Identity, ProtocolError> {
        match &self.user {
            Some(user) if self.rooms.contains_key(room) => Ok(user.clone()),
            _ => Err(ProtocolError::new(
                ErrorCode::NotJoined,
                format!("not in room `{room}`; send login first"),
            )),
        }
    }

    async fn post(&mut self, post: PostRequest) -> Result<(), ProtocolError> {
        /// The store answered with the receipt of an earlier post with this `clientMsgId` but
        /// other content: the id was reused, and nothing was stored. (`on_text` adds the ref.)
        fn id_conflict(client_msg_id: Option<&str>) -> ProtocolError {
            ProtocolError::new(
                ErrorCode::IdConflict,
                format!(
                    "clientMsgId `{}` was already used for a different message; use a new id",
                    client_msg_id.unwrap_or_default()
                ),
            )
        }
        let node = self.node.clone();
        match post.target {
            Target::Room(room) => {
                let user = self.joined_user(&room)?;
                let draft = Draft {
                    user_id: user.id,
                    user_name: user.name,
                    content: post.content,
                    client_msg_id: post.client_msg_id.clone(),
                };
                let posted = node.store.post(&room, &draft).await.map_err(unavailable)?;
                if posted.conflict {
                    return Err(id_conflict(post.client_msg_id.as_deref()));
                }
                tracing::debug!(%room, seq = posted.seq, "posted");
                self.reply(&ServerFrame::Sent(Sent {
                    room_id: Some(room),
                    to_user_id: None,
                    client_msg_id: post.client_msg_id,
                    seq: posted.seq,
                    epoch: posted.epoch,
                    ts: posted.ts,
                    duplicate: posted.duplicate,
                }));
            }
            Target::User(to) => {
                let Some(user) = self.user.clone() else {
                    return Err(ProtocolError::new(
                        ErrorCode::NotJoined,
                        "send login first: a connection takes its user from its first login",
                    ));
                };
                let draft = Draft {
                    user_id: user.id,
                    user_name: user.name,
                    content: post.content,
                    client_msg_id: post.client_msg_id.clone(),
                };
                let posted = node
                    .store
                    .post_direct(&to, &draft)
                    .await
                    .map_err(unavailable)?;
                if posted.sender.conflict {
                    return Err(id_conflict(post.client_msg_id.as_deref()));
                }
                self.reply(&ServerFrame::Sent(Sent {
                    room_id: None,
                    to_user_id: Some(to),
                    client_msg_id: post.client_msg_id,
                    seq: posted.sender.seq,
                    epoch: posted.sender.epoch,
                    ts: posted.sender.ts,
                    duplicate: posted.sender.duplicate,
                }));
            }
        }
        Ok(())
    }

    async fn ack(
        &mut self,
        stream: AckStream,
        seq: u64,
        epoch: Option<String>,
    ) -> Result<(), ProtocolError> {
        let (user, key) = match stream {
            AckStream::Room(room) => {
                let user = self.joined_user(&room)?;
                (user, StreamKey::Room(room))
            }
            AckStream::Direct => match (&self.user, &self.inbox) {
                (Some(user), Some(_)) => (user.clone(), StreamKey::Inbox(user.id.clone())),
                _ => return Err(ProtocolError::new(ErrorCode::NotJoined, "send login first")),
            },
        };
        let progress = match &key {
            StreamKey::Room(room) => self.rooms.get_mut(room),
            StreamKey::Inbox(_) => self.inbox.as_mut(),
        };
        let Some(progress) = progress else {
            return Ok(());
        };
        if epoch.is_some_and(|e| *e != *progress.epoch) {
            // An ack for a log that has been reset says nothing about the current one.
            return Ok(());
        }
        // An ack can only vouch for what this connection was given: a larger one (a buggy or
        // hostile client) would move the cursor past messages the user never saw.
        let seq = seq.min(progress.delivered);
        let acked = progress.acked.unwrap_or(0).max(seq);
        progress.acked = Some(acked);
        self.tracker
            .on_ack(&key, &progress.epoch, acked, progress.delivered, now());
        // Written with the node's next batch: the socket path never waits on the store.
        if acked > 0 {
            self.node.cursors.record(&user.id, &key, progress.at(acked));
        }
        Ok(())
    }

    async fn history(&mut self, request: HistoryRequest) -> Result<(), ProtocolError> {
        if !self.rooms.contains_key(&request.room_id) {
            // A room's history is for its members: over WebSocket, the connections that joined
            // it (see docs/security.md for HTTP).
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "join `{}` (login) before reading its history",
                    request.room_id
                ),
            ));
        }
        let (epoch, mut messages) = self
            .node
            .store
            .history(&request.room_id, request.before, request.limit)
            .await
            .map_err(unavailable)?;
        // One frame must fit what the connection can write (its write buffer holds a few
        // `limits.max_frame_bytes`): a page that would be larger keeps its newest messages, and
        // the client pages on with `before` as usual.
        let budget = self.node.settings.limits.max_frame_bytes;
        let mut page = HistoryPage {
            room_id: request.room_id,
            epoch,
            messages: Vec::new(),
        };
        let mut size = ServerFrame::History(page.clone()).encode().len();
        let mut kept = Vec::new();
        for message in messages.drain(..).rev() {
            let bytes = serde_json::to_string(&message).map_or(0, |t| t.len()) + 1;
            if size + bytes > budget && !kept.is_empty() {
                break;
            }
            size += bytes;
            kept.push(message);
        }
        kept.reverse();
        page.messages = kept;
        self.reply(&ServerFrame::History(page));
        Ok(())
    }

    /// The connection is gone (closed, reaped, killed, or the node is shutting down): detach it,
    /// store cursors, and tell the rooms the user went offline where this was their last
    /// connection.
    pub async fn finish(&mut self) {
        if self.legacy.as_deref().is_some_and(Edge::is_guest) {
            // A guest identity cannot come back, so its memberships and cursors would only pile
            // up: it leaves its rooms for good (the rooms see a `logout`, reason `left`).
            let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
            for room in rooms {
                if let Err(e) = self.logout(room.clone()).await {
                    // Still in `rooms`: the offline path below records it as gone instead.
                    tracing::debug!(%room, error = %e.message, "a guest could not leave");
                }
            }
        }
        let Some(user) = self.user.clone() else {
            return;
        };
        let node = self.node.clone();
        for (room, progress) in std::mem::take(&mut self.rooms) {
            let key = StreamKey::Room(room.clone());
            if let Some(cursor) = progress.final_cursor()
                && let Err(e) = node.store.advance_cursor(&user.id, &key, &cursor).await
            {
                tracing::warn!(%room, error = %e, "could not store the read cursor");
            }
            let removal = node.presence_barrier.read().await;
            let guard = node.presence_guard(&room, &user.id).await;
            if !node.hub.leave_room(&room, &user.id, self.conn.id) {
                continue;
            }
            // Draining: the user is probably back on another node in a moment (see drain.rs).
            if node.drain.defer_offline(&room, &user.id, &user.name) {
                continue;
            }
            match node.store.go_offline(&room, &user.id).await {
                Ok(outcome) => {
                    drop(guard);
                    drop(removal);
                    if outcome.went_offline {
                        let notice = Notice::Logout(PresenceNotice {
                            room_id: room.clone(),
                            user_id: user.id.clone(),
                            user_name: user.name.clone(),
                            num: outcome.counts.num,
                            total: outcome.counts.total,
                            reason: Some(LogoutReason::Offline),
                            presence_seq: Some(outcome.presence_seq),
                        });
                        if let Err(e) = node.broker.publish_notice(&notice).await {
                            tracing::warn!(%room, error = %e, "could not publish a logout notice");
                        }
                    }
                }
                // The presence entry expires after presence.ttl_secs and a live node reaps it,
                // sending the notice then.
                Err(e) => tracing::warn!(%room, error = %e, "could not record going offline"),
            }
        }
        if let Some(progress) = self.inbox.take() {
            let key = StreamKey::Inbox(user.id.clone());
            node.hub.detach(&key, self.conn.id);
            if let Some(cursor) = progress.final_cursor()
                && let Err(e) = node.store.advance_cursor(&user.id, &key, &cursor).await
            {
                tracing::warn!(error = %e, "could not store the inbox cursor");
            }
        }
    }
}
