//! The socket driver: connects a [`Session`] to a real WebSocket.
//!
//! One task per connection owns the socket and the session and `select!`s over: frames from the
//! client, the hub's bounded outbound queue, the heartbeat timer, the session's ack deadline
//! (resend, or close with 4002; see [`crate::delivery`]), a kill switch (slow consumer) and node
//! shutdown. Writes are coalesced: everything already queued is fed to the sink and then
//! flushed once.
//!
//! The kill switch is watched during writes too. A client that stops reading fills its TCP window,
//! so the driver sits in a write while the hub fills its queue and flips the switch; waiting for
//! `limits.write_timeout_secs` would hold the queue (and the user's presence) that much longer.
//! The switch flips only when the queue overflowed its bounds (or the node drains), so a reader
//! that is merely behind is judged by the queue's size, the same whether or not a write is
//! pending. A connection cut mid-write gets its close frame if the socket takes it within
//! [`CUT_GRACE`], else TCP is dropped; either way it counts as closed with its code.
//!
//! With permessage-deflate negotiated ([`crate::deflate`]), frames of at least
//! `websocket.compression_threshold_bytes` go out compressed (RSV1 set): a broadcast's bytes are
//! compressed once per node and shared by its recipients, a reply is compressed for its own
//! connection. Compressed inbound messages are inflated up to `limits.max_frame_bytes` (1009 past
//! it); a fragmented one reaches the driver as one frame (the patched tungstenite assembles its
//! compressed fragments, at most `limits.max_frame_bytes` of them) and is inflated once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::close;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, timeout};
use tracing::Instrument;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::{Message, Utf8Bytes};

use crate::deflate::{self, Inflate};
use crate::hub::{ConnHandle, Outbound};
use crate::node::Node;
use crate::session::Session;
use crate::upgrade::Socket;

/// Close code for a compressed frame that does not inflate (or is not UTF-8 text): RFC 6455's
/// "invalid frame payload data".
const INVALID_PAYLOAD: u16 = 1007;

type Sink = SplitSink<Socket, Message>;
type Stream = SplitStream<Socket>;

/// How this connection's frames are written: plain, or compressed past a size.
#[derive(Clone, Copy)]
struct Encoder {
    /// permessage-deflate was negotiated.
    deflate: bool,
    /// Smaller payloads go out uncompressed.
    threshold: usize,
}

impl Encoder {
    /// The message for `text`; `shared` is the broadcast's compression slot, if it has one.
    fn message(self, text: Utf8Bytes, shared: Option<&deflate::Shared>) -> Message {
        if !self.deflate || text.len() < self.threshold {
            return Message::Text(text);
        }
        let packed = match shared {
            Some(shared) => shared.get(text.as_str()),
            None => deflate::compress(text.as_bytes()),
        };
        match packed {
            Some(bytes) => {
                crate::metrics::hot().frames_compressed.increment(1);
                let mut frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
                frame.header_mut().rsv1 = true;
                Message::Frame(frame)
            }
            None => Message::Text(text),
        }
    }
}

/// Most hub items written per flush, so one busy connection cannot monopolize its task forever.
const MAX_BATCH: usize = 256;

/// How long a connection killed while a write to it was stuck gets for its close frame.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Why the driver loop ended.
enum Ending {
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
    /// Killed (slow consumer, drain) while a write to the client did not progress: the close frame
    /// gets [`CUT_GRACE`], then the connection is dropped.
    Cut(u16, &'static str),
    /// The client closed or vanished; nothing to send.
    Gone,
}

/// What woke an idle connection (the driver's `select!`, handled after it).
enum Event {
    Killed(u16),
    Shutdown,
    Queued(Option<Outbound>),
    Incoming(Option<Result<Message, tungstenite::Error>>),
    Timer,
}

/// Runs one protocol v1 connection (without compression) to its end, then cleans up its session.
pub async fn drive(socket: Socket, node: Arc<Node>) {
    drive_as(socket, node, false, false).await;
}

/// Runs one connection to its end, then cleans up its session; `legacy`: it speaks the classic
/// tutorial client's dialect ([`crate::legacy`]); `deflate`: it negotiated permessage-deflate.
pub async fn drive_as(socket: Socket, node: Arc<Node>, legacy: bool, deflate: bool) {
    drive_with(socket, node, legacy, None, deflate).await;
}

/// [`drive_as`] for a connection whose token was verified at the upgrade (`auth.mode = "jwt"`).
///
/// Not an `async fn`: everything the connection keeps is built here and moved into one boxed
/// future that holds each piece once. An `async fn` keeps its arguments twice for its whole life
/// (as received, and moved into its body), and the caller's future would hold them a third time;
/// for an idle connection that was ~1 KiB of its ~8 KiB (docs/benchmarks.md).
pub fn drive_with(
    socket: Socket,
    node: Arc<Node>,
    legacy: bool,
    grant: Option<crate::auth::Grant>,
    deflate: bool,
) -> impl Future<Output = ()> + Send + 'static {
    let limits = &node.settings.limits;
    let (tx, mut rx) = crate::outbox::bounded(limits.outbound_queue, limits.outbound_queue_bytes);
    let mut conn = ConnHandle::new(node.hub.next_conn_id(), tx);
    if deflate {
        conn = conn.compressing();
    }
    let encoder = Encoder {
        deflate,
        threshold: node.settings.websocket.compression_threshold_bytes,
    };
    // Every log line of this connection (errors included) names the node, the connection and,
    // once logged in, the user; rooms are named by each line.
    let span = tracing::info_span!(
        "conn",
        node = %node.id,
        conn = conn.id,
        user = tracing::field::Empty
    );
    let mut session = Session::new(node.clone(), conn.clone());
    if legacy {
        session = session.speaking_legacy();
    }
    if let Some(grant) = grant {
        // Inside the span: it records the token's user on it.
        span.in_scope(|| session.set_grant(grant));
    }
    span.in_scope(|| tracing::debug!(legacy, deflate, "connection open"));
    let (mut sink, mut stream) = socket.split();
    // An `async move` block, not an `async fn`: it captures each of these once.
    let driver = async move {
        let registration = node.drain.register(&conn);
        if node.drain.is_draining() {
            // Upgraded just as the drain began, after its sweep: close it like the others.
            conn.kill(close::SERVICE_RESTART);
        }
        let opened = Instant::now();
        metrics::counter!(crate::metrics::CONNECTIONS_OPENED).increment(1);
        let ending = run(
            &node,
            &conn,
            encoder,
            &mut session,
            &mut sink,
            &mut stream,
            &mut rx,
        )
        .await;
        drop(registration);
        let (code, reason) = match &ending {
            Ending::Close(code, reason) | Ending::Cut(code, reason) => (code.to_string(), *reason),
            Ending::Gone => ("gone".to_owned(), "client gone"),
        };
        tracing::debug!(
            code = %code,
            reason,
            secs = opened.elapsed().as_secs_f64(),
            "connection closed"
        );
        metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "code" => code).increment(1);

        if let Ending::Close(code, reason) | Ending::Cut(code, reason) = ending {
            let frame = CloseFrame {
                code: code.into(),
                reason: Utf8Bytes::from_static(reason),
            };
            // The peer may be gone or stuck; do not let a close wait forever. One whose writes already
            // stalled gets less: its close frame waits behind everything it did not read.
            let grace = match ending {
                Ending::Cut(..) => CUT_GRACE,
                _ => Duration::from_secs(2),
            };
            let _ = timeout(grace, sink.send(Message::Close(Some(frame)))).await;
        } else {
            // The client closed: tungstenite has queued the RFC's Close reply; flushing sends it, so
            // the client sees a clean close rather than a dropped connection (1006).
            let _ = timeout(Duration::from_secs(2), sink.flush()).await;
        }
        // Closing the TCP connection while the client's frames are still arriving would make the
        // kernel reset it, and a reset can discard the close frame before the client reads it (it
        // then sees 1006). So the socket lingers, reading and discarding, until the client's Close
        // or a short bound; the session's cleanup does not wait for it.
        tokio::spawn(async move {
            let _ = timeout(Duration::from_secs(2), async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
            drop(sink);
        });
        // Boxed, like the session's other handlers: the connection's task stays small (see `run`).
        Box::pin(session.finish()).await;
    };
    Box::pin(driver).instrument(span)
}

async fn run(
    node: &Node,
    conn: &ConnHandle,
    encoder: Encoder,
    session: &mut Session,
    sink: &mut Sink,
    stream: &mut Stream,
    rx: &mut crate::outbox::Receiver,
) -> Ending {
    let max_frame = node.settings.limits.max_frame_bytes;
    let idle_timeout = node.settings.idle_timeout();
    let write_timeout = Duration::from_secs(node.settings.limits.write_timeout_secs);
    let write_delay = Duration::from_millis(node.settings.websocket.write_delay_ms);
    let ping_interval = node.settings.ping_interval();
    let mut next_ping = Instant::now() + ping_interval;
    let mut last_heard = Instant::now();
    // One timer for everything this connection waits on (heartbeat, idle timeout, ack deadline,
    // auth/login deadline), re-armed for the earliest of them: one timer entry and one `Sleep` in
    // the task instead of four, which an idle connection pays for all its life.
    let timer = tokio::time::sleep_until(next_ping);
    tokio::pin!(timer);

    loop {
        if session.has_replies() {
            let write = write_batch(encoder, session, sink, rx, None);
            // Boxed: a write's state (the batch, the sink's send futures, the timer) exists only
            // while it runs, not in every idle connection's task for its whole life.
            if let Some(ending) = Box::pin(watched(conn, write_timeout, write)).await {
                return ending;
            }
        }
        if let Some((code, reason)) = session.close_request() {
            return Ending::Close(code, reason);
        }
        let deadline = session.deadline();
        let resend = session.next_resend().map(Instant::from_std);
        let idle_at = last_heard + idle_timeout;
        let wake = [
            Some(idle_at),
            Some(next_ping),
            resend,
            deadline.map(|(at, _)| at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_ping);
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        // Unbiased on purpose: a busy room must not starve reading the client (its pongs keep it
        // alive), and a chatty client must not starve its own deliveries. The select only picks
        // what happened; it is handled below, once the branches' futures are gone, so the task
        // is not sized for those futures and a handler's state at once (docs/benchmarks.md).
        let event = tokio::select! {
            code = conn.killed() => Event::Killed(code),
            _ = node.shutdown.cancelled() => Event::Shutdown,
            item = rx.recv() => Event::Queued(item),
            incoming = stream.next() => Event::Incoming(incoming),
            () = &mut timer => Event::Timer,
        };
        match event {
            Event::Killed(code) => return Ending::Close(code, kill_reason(code)),
            Event::Shutdown => return Ending::Close(close::SERVICE_RESTART, "server restarting"),
            Event::Queued(item) => {
                let Some(item) = item else {
                    return Ending::Gone;
                };
                // Boxed like every write: the frame, the optional delay and the write's state exist
                // only while it runs, not in every idle connection's task.
                let written = Box::pin(async {
                    if !write_delay.is_zero() {
                        // Let more frames queue up behind this one: one write for all of them.
                        tokio::select! {
                            _ = tokio::time::sleep(write_delay) => {}
                            code = conn.killed() => return Some(Ending::Close(code, kill_reason(code))),
                        }
                    }
                    let write = write_batch(encoder, session, sink, rx, Some(item));
                    watched(conn, write_timeout, write).await
                })
                .await;
                if let Some(ending) = written {
                    return ending;
                }
            }
            Event::Incoming(incoming) => {
                let message = match incoming {
                    None => return Ending::Gone,
                    Some(Err(e)) => return read_error(e),
                    Some(Ok(message)) => message,
                };
                last_heard = Instant::now();
                // Boxed: a frame's state (the message, its inflated text, the session's handler)
                // exists only while it is handled, not in every idle connection's task.
                if let Some(ending) = Box::pin(on_message(session, message, max_frame)).await {
                    return ending;
                }
            }
            Event::Timer => {
                let now = Instant::now();
                if now >= idle_at {
                    return Ending::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                }
                if resend.is_some_and(|at| now >= at) && session.on_resend_due().is_err() {
                    return Ending::Close(close::ACK_TIMEOUT, "messages not acknowledged");
                }
                if let Some((at, code)) = deadline
                    && now >= at
                {
                    session.on_deadline(code);
                }
                if now >= next_ping {
                    // A late tick delays the next one rather than bunching them up.
                    next_ping = now + ping_interval;
                    // Boxed like every write: its state exists only while it runs.
                    let write =
                        async { sink.send(Message::Ping(Bytes::new())).await.map_err(|_| ()) };
                    if let Some(ending) = Box::pin(watched(conn, write_timeout, write)).await {
                        return ending;
                    }
                    Box::pin(session.on_tick()).await;
                }
            }
        }
    }
}

/// The close reason for a kill switch's code.
fn kill_reason(code: u16) -> &'static str {
    match code {
        close::SERVICE_RESTART => "server restarting",
        _ => "slow consumer",
    }
}

/// Runs a write bounded by `write_timeout` while watching the kill switch; `None` when it finished,
/// else how the connection ends. The write is polled first, so a write that completes just as the
/// switch flips still counts; the switch is then seen by the driver's next `select!`.
async fn watched(
    conn: &ConnHandle,
    write_timeout: Duration,
    write: impl std::future::Future<Output = Result<(), ()>>,
) -> Option<Ending> {
    tokio::select! {
        biased;
        written = timeout(write_timeout, write) => match written {
            Ok(Ok(())) => None,
            Ok(Err(())) => Some(Ending::Gone),
            Err(_) => Some(Ending::Close(close::SLOW_CONSUMER, "write timed out")),
        },
        // The queue overflowed (or the node drains) while this write was stuck: cut it now, not
        // when the write times out.
        code = conn.killed() => Some(Ending::Cut(code, kill_reason(code))),
    }
}

/// Handles one frame from the client; `Some` when the connection must end. Called boxed: the
/// session's handlers (backend round trips, replays) are large state machines, and inlined they
/// would make every connection's task as large as the largest of them for its whole life, idle or
/// not. One allocation per inbound frame instead.
async fn on_message(session: &mut Session, message: Message, max_frame: usize) -> Option<Ending> {
    match message {
        Message::Text(text) => {
            crate::metrics::hot().frames_in.increment(1);
            session.on_text(text.as_str()).await
        }
        Message::Binary(_) => session.on_binary(),
        // Only a compressed (RSV1) data frame comes as a raw frame (permessage-deflate).
        Message::Frame(frame) => {
            let text = frame.header().opcode == OpCode::Data(Data::Text);
            match deflate::inflate(frame.payload(), max_frame) {
                Err(Inflate::TooBig) => {
                    return Some(Ending::Close(close::MESSAGE_TOO_BIG, "frame too large"));
                }
                Err(Inflate::Corrupt) => {
                    return Some(Ending::Close(INVALID_PAYLOAD, "bad compressed frame"));
                }
                Ok(bytes) if text => match String::from_utf8(bytes) {
                    Ok(text) => {
                        crate::metrics::hot().frames_in.increment(1);
                        session.on_text(&text).await
                    }
                    Err(_) => {
                        return Some(Ending::Close(INVALID_PAYLOAD, "frame is not UTF-8"));
                    }
                },
                Ok(_) => session.on_binary(),
            }
        }
        // tungstenite answers pings itself; pongs only prove the client is alive.
        Message::Ping(_) | Message::Pong(_) => {}
        Message::Close(_) => return Some(Ending::Gone),
    }
    None
}

/// Writes the session's replies, then `first` and whatever else the hub has queued, then flushes
/// once.
async fn write_batch(
    encoder: Encoder,
    session: &mut Session,
    sink: &mut Sink,
    rx: &mut crate::outbox::Receiver,
    first: Option<Outbound>,
) -> Result<(), ()> {
    // Everything queued behind the first item: the connection's backlog at its deepest point.
    crate::metrics::outbound_depth(rx.len() + usize::from(first.is_some()));
    let replies: Vec<_> = session.take_replies().collect();
    let mut frames = replies.len() as u64;
    // Each mark with its frame: an acking client's session keeps the (shared) frame for resending.
    let mut marks = Vec::new();
    for reply in replies {
        if let Some(mark) = reply.mark {
            marks.push((mark, reply.text.clone()));
        }
        sink.feed(encoder.message(reply.text, None))
            .await
            .map_err(|_| ())?;
    }
    let mut next = first;
    let mut written = 0;
    while let Some(item) = next.take() {
        match item {
            Outbound::Frame {
                text,
                mark,
                legacy,
                deflated,
            } => {
                // A frame a legacy client must not get still counts as delivered (its own post).
                // The shared v1 frame is what an acking (v1) session keeps for resending.
                if let Some(mark) = mark {
                    marks.push((mark, text.clone()));
                }
                if let Some(text) = session.outbound_text(text, legacy.as_ref()) {
                    sink.feed(encoder.message(text, deflated.as_ref()))
                        .await
                        .map_err(|_| ())?;
                    frames += 1;
                }
            }
            Outbound::Left(room) => session.on_left(&room),
        }
        written += 1;
        if written < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    sink.flush().await.map_err(|_| ())?;
    let hot = crate::metrics::hot();
    hot.frames_out.increment(frames);
    hot.deliveries.increment(marks.len() as u64);
    for (mark, text) in &marks {
        session.on_written(mark, text);
    }
    Ok(())
}

/// A read error: an oversized frame gets 1009, a protocol violation 1002, invalid UTF-8 1007
/// (RFC 6455 §7.4.1); anything else means the connection is broken.
fn read_error(error: tungstenite::Error) -> Ending {
    match &error {
        tungstenite::Error::Capacity(_) => Ending::Close(close::MESSAGE_TOO_BIG, "frame too large"),
        tungstenite::Error::Utf8(_) => Ending::Close(close::INVALID_DATA, "invalid UTF-8"),
        tungstenite::Error::Protocol(p) => {
            tracing::debug!(error = %p, "websocket protocol violation");
            Ending::Close(close::PROTOCOL_ERROR, "protocol error")
        }
        _ => {
            tracing::debug!(%error, "websocket read failed");
            Ending::Gone
        }
    }
}
