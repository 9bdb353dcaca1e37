//! A protocol v1 WebSocket client ([`Client`]) that decodes every frame with
//! [`ServerFrame::decode`] and bounds every wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chat_protocol::server::{ErrorFrame, Joined, Sent};
use chat_protocol::{ChatMessage, ErrorCode, PresenceNotice, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::default_timeout;

/// What [`Client::next_event`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decoded server frame.
    Frame(ServerFrame),
    /// The server closed the connection: the close code, if a close frame carried one.
    Closed(Option<u16>),
}

/// A protocol v1 WebSocket client. Every wait is bounded by the client's timeout
/// ([`default_timeout`] unless set).
///
/// Receiving works like a mailbox: the `recv_*` helpers return the *earliest* unconsumed frame
/// that matches, and frames they pass over stay in [`Client::pending`] for later helpers (so a
/// test can wait for `sent` and `message` in either order) or for inspection.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// A name for failure messages.
    pub label: String,
    /// Frames received but not consumed yet, oldest first.
    pub pending: VecDeque<ServerFrame>,
    closed: Option<Option<u16>>,
    timeout: Duration,
    /// Frames that arrived compressed (permessage-deflate, see [`Client::connect_deflate`]).
    pub compressed: u64,
}

/// Inflates a permessage-deflate payload (no context takeover) into the text it carries.
fn inflate_text(payload: &[u8]) -> String {
    let mut data = payload.to_vec();
    data.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    // Server frames are at most a history page: a few hundred KiB is far more than any.
    let mut out = Vec::with_capacity(4 << 20);
    flate2::Decompress::new(false)
        .decompress_vec(&data, &mut out, flate2::FlushDecompress::Sync)
        .expect("a compressed server frame inflates");
    String::from_utf8(out).expect("a compressed server frame is UTF-8 text")
}

impl Client {
    /// Like [`Client::connect`], but offers permessage-deflate (as browsers do) and reads the
    /// server's compressed frames; panics if the server does not accept the offer. The client
    /// itself sends plain frames (compressing is optional per message).
    pub async fn connect_deflate(url: &str) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
        let mut request = url
            .into_client_request()
            .unwrap_or_else(|e| panic!("bad url {url}: {e}"));
        request.headers_mut().insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
        );
        let config = WebSocketConfig::default().accept_compressed_frames(true);
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let (ws, response) = tokio::time::timeout(default_timeout(), connecting)
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let accepted = response
            .headers()
            .get("sec-websocket-extensions")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            accepted.starts_with("permessage-deflate"),
            "the server did not accept permessage-deflate: {accepted:?}"
        );
        Client {
            ws,
            label: "client".into(),
            pending: VecDeque::new(),
            closed: None,
            timeout: default_timeout(),
            compressed: 0,
        }
    }

    /// Connects to `url` (a `ws://` URL), within [`default_timeout`].
    pub async fn connect(url: &str) -> Client {
        let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
        let (ws, _) = tokio::time::timeout(default_timeout(), connecting)
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Client {
            ws,
            label: "client".into(),
            pending: VecDeque::new(),
            closed: None,
            timeout: default_timeout(),
            compressed: 0,
        }
    }

    /// Names the client in failure messages.
    pub fn named(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The bound of each wait of this client.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_raw_text(value.to_string()).await;
    }

    /// Sends a text frame as is.
    pub async fn send_raw_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.send(Message::text(text)).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await;
    }

    /// Sends a raw WebSocket message; panics if it cannot be sent.
    pub async fn send(&mut self, message: Message) {
        let label = self.label.clone();
        tokio::time::timeout(self.timeout, self.ws.send(message))
            .await
            .unwrap_or_else(|_| panic!("{label}: send timed out"))
            .unwrap_or_else(|e| panic!("{label}: send failed: {e}"));
    }

    /// Reads the socket for the next frame or close within `timeout`, ignoring [`Client::pending`];
    /// `None` when nothing came. Pings and pongs are consumed silently (reading answers pings).
    /// Panics on an undecodable or binary frame: the server must never send one.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(code) = self.closed {
            return Some(Event::Closed(code));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            let message = match next {
                None => return Some(self.mark_closed(None)),
                Some(Err(e)) => {
                    eprintln!("{}: connection error: {e}", self.label);
                    return Some(self.mark_closed(None));
                }
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    let frame = ServerFrame::decode(text.as_str()).unwrap_or_else(|e| {
                        panic!("{}: undecodable server frame ({e}): {text}", self.label)
                    });
                    return Some(Event::Frame(frame));
                }
                Message::Close(frame) => {
                    let code = frame.map(|f| u16::from(f.code));
                    return Some(self.mark_closed(code));
                }
                // Only a compressed data frame arrives raw (permessage-deflate was negotiated).
                Message::Frame(frame) if frame.header().rsv1 => {
                    self.compressed += 1;
                    let text = inflate_text(frame.payload());
                    let frame = ServerFrame::decode(&text).unwrap_or_else(|e| {
                        panic!("{}: undecodable server frame ({e}): {text}", self.label)
                    });
                    return Some(Event::Frame(frame));
                }
                Message::Binary(b) => panic!("{}: server sent a binary frame: {b:?}", self.label),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn mark_closed(&mut self, code: Option<u16>) -> Event {
        self.closed = Some(code);
        Event::Closed(code)
    }

    /// True once the server closed the connection (as far as this client has read).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The earliest unconsumed frame; panics on close or timeout.
    pub async fn recv_frame(&mut self) -> ServerFrame {
        self.recv_match("any frame", |f| Some(f.clone())).await
    }

    /// The earliest unconsumed frame for which `pick` returns `Some`, reading the socket as long as
    /// needed; the frames passed over stay in [`Client::pending`]. Panics (naming `what`) on close
    /// or when nothing matched within the client's timeout.
    pub async fn recv_match<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> T {
        for i in 0..self.pending.len() {
            if let Some(found) = pick(&self.pending[i]) {
                self.pending.remove(i);
                return found;
            }
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(frame)) => match pick(&frame) {
                    Some(found) => return found,
                    None => self.pending.push_back(frame),
                },
                Some(Event::Closed(code)) => panic!(
                    "{}: connection closed ({code:?}) while waiting for {what}; unconsumed: {:#?}",
                    self.label, self.pending
                ),
                None => panic!(
                    "{}: no {what} within {:?}; unconsumed: {:#?}",
                    self.label, self.timeout, self.pending
                ),
            }
        }
    }

    /// The earliest unconsumed frame satisfying `pred` (see [`Client::recv_match`]).
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> ServerFrame {
        self.recv_match(what, |f| pred(f).then(|| f.clone())).await
    }

    /// Takes the unconsumed frames.
    pub fn take_pending(&mut self) -> Vec<ServerFrame> {
        self.pending.drain(..).collect()
    }

    /// Reads until the server closes the connection and returns the close code (`None` when the
    /// connection ended without a close frame). Frames before it go to [`Client::pending`].
    /// Panics when it is still open after the client's timeout.
    pub async fn expect_close_code(&mut self) -> Option<u16> {
        let timeout = self.timeout;
        self.expect_close_within(timeout).await
    }

    /// [`Client::expect_close_code`] with an explicit bound.
    pub async fn expect_close_within(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(frame)) => self.pending.push_back(frame),
                Some(Event::Closed(code)) => return code,
                None => panic!("{}: still open after {timeout:?}", self.label),
            }
        }
    }

    /// Keeps reading (and so answering pings) for `duration`, asserting the connection stays open.
    /// Frames received meanwhile go to [`Client::pending`].
    pub async fn stay_open_for(&mut self, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_event(left).await {
                Some(Event::Frame(frame)) => self.pending.push_back(frame),
                Some(Event::Closed(code)) => panic!(
                    "{}: closed ({code:?}) while it should have stayed open; unconsumed: {:#?}",
                    self.label, self.pending
                ),
                None => return,
            }
        }
    }

    /// Closes the connection from the client side (a normal close handshake, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
        // Drain until the server's close arrives or the socket ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    // -- protocol helpers ----------------------------------------------------------------------

    /// Sends `login` and waits for `joined` (other frames stay pending); returns it.
    pub async fn login(&mut self, room: &str, user: &str, name: &str) -> Joined {
        self.send_json(json!({"event": "login", "roomId": room, "userId": user, "userName": name}))
            .await;
        self.expect_joined(room).await
    }

    /// Waits for the `joined` reply of `room`.
    pub async fn expect_joined(&mut self, room: &str) -> Joined {
        self.recv_match(&format!("joined {room}"), |f| match f {
            ServerFrame::Joined(j) if j.room_id.as_str() == room => Some(j.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a `login` frame (any fields), waits for `joined`, then reads the replayed messages it
    /// announces, which must follow it immediately. Returns both.
    pub async fn login_replay(&mut self, frame: Value) -> (Joined, Vec<ChatMessage>) {
        let room = match &frame["roomId"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.send_json(frame).await;
        let joined = self.expect_joined(&room).await;
        let mut replayed = Vec::new();
        while (replayed.len() as u64) < joined.replayed {
            match self.recv_frame().await {
                ServerFrame::Message(m) => replayed.push(m),
                other => panic!(
                    "{}: expected {} replayed messages right after `joined`, got {other:?} after {}",
                    self.label,
                    joined.replayed,
                    replayed.len()
                ),
            }
        }
        (joined, replayed)
    }

    /// Posts to a room.
    pub async fn post(&mut self, room: &str, content: &str) {
        self.send_json(json!({"event": "message", "roomId": room, "content": content}))
            .await;
    }

    /// Posts to a room with a `clientMsgId`.
    pub async fn post_with_id(&mut self, room: &str, content: &str, client_msg_id: &str) {
        self.send_json(json!({
            "event": "message", "roomId": room, "content": content, "clientMsgId": client_msg_id
        }))
        .await;
    }

    /// Posts to a room and waits for its `sent` receipt.
    pub async fn post_and_wait(&mut self, room: &str, content: &str) -> Sent {
        let id = format!("auto-{}", NEXT_MSG_ID.fetch_add(1, Ordering::Relaxed));
        self.post_with_id(room, content, &id).await;
        self.recv_match(&format!("sent {id}"), |f| match f {
            ServerFrame::Sent(s) if s.client_msg_id.as_deref() == Some(id.as_str()) => {
                Some(s.clone())
            }
            ServerFrame::Error(e) if e.reference.as_deref() == Some(id.as_str()) => {
                panic!("posting {content:?} to {room} failed: {e:?}")
            }
            _ => None,
        })
        .await
    }

    /// Waits for the next chat message of `room` (other frames stay pending).
    pub async fn recv_message_in(&mut self, room: &str) -> ChatMessage {
        self.recv_match(&format!("message in {room}"), |f| match f {
            ServerFrame::Message(m) if m.room_id.as_ref().is_some_and(|r| r.as_str() == room) => {
                Some(m.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for the next chat message of any stream.
    pub async fn recv_message(&mut self) -> ChatMessage {
        self.recv_match("message", |f| match f {
            ServerFrame::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the next direct message (a message with `toUserId`).
    pub async fn recv_direct(&mut self) -> ChatMessage {
        self.recv_match("direct message", |f| match f {
            ServerFrame::Message(m) if m.to_user_id.is_some() => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for `n` chat messages of `room`.
    pub async fn recv_messages_in(&mut self, room: &str, n: usize) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.recv_message_in(room).await);
        }
        out
    }

    /// Waits for a `sent` receipt.
    pub async fn recv_sent(&mut self) -> Sent {
        self.recv_match("sent", |f| match f {
            ServerFrame::Sent(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a `login` notice about `user` in `room`.
    pub async fn recv_login_of(&mut self, room: &str, user: &str) -> PresenceNotice {
        self.recv_match(&format!("login notice of {user} in {room}"), |f| match f {
            ServerFrame::Login(n) if n.room_id.as_str() == room && n.user_id.as_str() == user => {
                Some(n.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for a `logout` notice about `user` in `room`.
    pub async fn recv_logout_of(&mut self, room: &str, user: &str) -> PresenceNotice {
        self.recv_match(&format!("logout notice of {user} in {room}"), |f| match f {
            ServerFrame::Logout(n) if n.room_id.as_str() == room && n.user_id.as_str() == user => {
                Some(n.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for the next `error` frame.
    pub async fn recv_error(&mut self) -> ErrorFrame {
        self.recv_match("error", |f| match f {
            ServerFrame::Error(e) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the next `error` frame and checks its code.
    pub async fn expect_error(&mut self, code: ErrorCode) -> ErrorFrame {
        let error = self.recv_error().await;
        assert_eq!(
            error.code, code,
            "{}: expected error {code}, got {error:?}",
            self.label
        );
        error
    }

    /// Sends an application-level `heartBeat` and waits for the pong.
    pub async fn ping_pong(&mut self) {
        self.send_json(json!({"event": "heartBeat", "content": "ping"}))
            .await;
        self.recv_match("heartBeat pong", |f| match f {
            ServerFrame::HeartBeat { content } if content == "pong" => Some(()),
            _ => None,
        })
        .await;
    }
}

static NEXT_MSG_ID: AtomicU64 = AtomicU64::new(1);
