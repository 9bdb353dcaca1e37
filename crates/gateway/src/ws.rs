//! The socket driver: connects a [`Session`] to a real WebSocket.
//!
//! One task per connection owns the socket and the session and `select!`s over: frames from the
//! client, the hub's bounded outbound queue, the heartbeat timer, the session's ack deadline
//! (resend, or close with 4002; see [`crate::delivery`]), a kill switch (slow consumer) and node
//! shutdown. Writes are coalesced: everything already queued is fed to the sink and then
//! flushed once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chat_protocol::close;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tracing::Instrument;

use crate::hub::{ConnHandle, Outbound};
use crate::node::Node;
use crate::session::Session;

/// Most hub items written per flush, so one busy connection cannot monopolize its task forever.
const MAX_BATCH: usize = 256;

/// Why the driver loop ended.
enum Ending {
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
    /// The client closed or vanished; nothing to send.
    Gone,
}

/// Runs one protocol v1 connection to its end, then cleans up its session.
pub async fn drive(socket: WebSocket, node: Arc<Node>) {
    drive_as(socket, node, false).await;
}

/// Runs one connection to its end, then cleans up its session; `legacy`: it speaks the classic
/// tutorial client's dialect ([`crate::legacy`]).
pub async fn drive_as(socket: WebSocket, node: Arc<Node>, legacy: bool) {
    drive_with(socket, node, legacy, None).await;
}

/// [`drive_as`] for a connection whose token was verified at the upgrade (`auth.mode = "jwt"`).
pub async fn drive_with(
    socket: WebSocket,
    node: Arc<Node>,
    legacy: bool,
    grant: Option<crate::auth::Grant>,
) {
    let (tx, rx) = mpsc::channel(node.settings.limits.outbound_queue);
    let conn = ConnHandle::new(node.hub.next_conn_id(), tx);
    // Every log line of this connection (errors included) names the node, the connection and,
    // once logged in, the user; rooms are named by each line.
    let span = tracing::info_span!(
        "conn",
        node = %node.id,
        conn = conn.id,
        user = tracing::field::Empty
    );
    drive_conn(socket, node, legacy, grant, conn, rx)
        .instrument(span)
        .await;
}

async fn drive_conn(
    socket: WebSocket,
    node: Arc<Node>,
    legacy: bool,
    grant: Option<crate::auth::Grant>,
    conn: ConnHandle,
    mut rx: mpsc::Receiver<Outbound>,
) {
    let mut session = Session::new(node.clone(), conn.clone());
    if legacy {
        session = session.speaking_legacy();
    }
    if let Some(grant) = grant {
        session.set_grant(grant);
    }
    let registration = node.drain.register(&conn);
    if node.drain.is_draining() {
        // Upgraded just as the drain began, after its sweep: close it like the others.
        conn.kill(close::SERVICE_RESTART);
    }
    let opened = Instant::now();
    metrics::counter!(crate::metrics::CONNECTIONS_OPENED).increment(1);
    tracing::debug!(legacy, "connection open");
    let (mut sink, mut stream) = socket.split();
    let ending = run(&node, &conn, &mut session, &mut sink, &mut stream, &mut rx).await;
    drop(registration);
    let (code, reason) = match &ending {
        Ending::Close(code, reason) => (code.to_string(), *reason),
        Ending::Gone => ("gone".to_owned(), "client gone"),
    };
    tracing::debug!(
        code = %code,
        reason,
        secs = opened.elapsed().as_secs_f64(),
        "connection closed"
    );
    metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "code" => code).increment(1);

    if let Ending::Close(code, reason) = ending {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // The peer may be gone or stuck; do not let a close wait forever.
        let _ = timeout(
            Duration::from_secs(2),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
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
    session.finish().await;
}

async fn run(
    node: &Node,
    conn: &ConnHandle,
    session: &mut Session,
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    rx: &mut mpsc::Receiver<Outbound>,
) -> Ending {
    let idle_timeout = node.settings.idle_timeout();
    let write_timeout = Duration::from_secs(node.settings.limits.write_timeout_secs);
    let write_delay = Duration::from_millis(node.settings.websocket.write_delay_ms);
    let mut ping = tokio::time::interval_at(
        Instant::now() + node.settings.ping_interval(),
        node.settings.ping_interval(),
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    loop {
        if session.has_replies() {
            match timeout(write_timeout, write_batch(session, sink, rx, None)).await {
                Ok(Ok(())) => {}
                Ok(Err(())) => return Ending::Gone,
                Err(_) => return Ending::Close(close::SLOW_CONSUMER, "write timed out"),
            }
        }
        if let Some((code, reason)) = session.close_request() {
            return Ending::Close(code, reason);
        }
        let deadline = session.deadline();
        // Unbiased on purpose: a busy room must not starve reading the client (its pongs keep it
        // alive), and a chatty client must not starve its own deliveries.
        tokio::select! {
            code = conn.killed() => return Ending::Close(code, match code {
                close::SERVICE_RESTART => "server restarting",
                _ => "slow consumer",
            }),
            _ = node.shutdown.cancelled() => return Ending::Close(close::SERVICE_RESTART, "server restarting"),
            item = rx.recv() => {
                let Some(item) = item else { return Ending::Gone };
                if !write_delay.is_zero() {
                    // Let more frames queue up behind this one: one write for all of them.
                    tokio::time::sleep(write_delay).await;
                }
                match timeout(write_timeout, write_batch(session, sink, rx, Some(item))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(())) => return Ending::Gone,
                    Err(_) => return Ending::Close(close::SLOW_CONSUMER, "write timed out"),
                }
            }
            incoming = tokio::time::timeout_at(last_heard + idle_timeout, stream.next()) => {
                let message = match incoming {
                    Err(_) => return Ending::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
                    Ok(None) => return Ending::Gone,
                    Ok(Some(Err(e))) => return read_error(e),
                    Ok(Some(Ok(message))) => message,
                };
                last_heard = Instant::now();
                match message {
                    Message::Text(text) => {
                        crate::metrics::hot().frames_in.increment(1);
                        session.on_text(text.as_str()).await
                    }
                    Message::Binary(_) => session.on_binary(),
                    // tungstenite answers pings itself; pongs only prove the client is alive.
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => return Ending::Gone,
                }
            }
            _ = resend_deadline(session.next_resend()) => {
                if session.on_resend_due().is_err() {
                    return Ending::Close(close::ACK_TIMEOUT, "messages not acknowledged");
                }
            }
            _ = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((_, code)) = deadline {
                    session.on_deadline(code);
                }
            }
            _ = ping.tick() => {
                if timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    return Ending::Gone;
                }
                session.on_tick().await;
            }
        }
    }
}

/// Writes the session's replies, then `first` and whatever else the hub has queued, then flushes
/// once.
async fn write_batch(
    session: &mut Session,
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Outbound>,
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
        sink.feed(Message::Text(reply.text)).await.map_err(|_| ())?;
    }
    let mut next = first;
    let mut written = 0;
    while let Some(item) = next.take() {
        match item {
            Outbound::Frame { text, mark, legacy } => {
                // A frame a legacy client must not get still counts as delivered (its own post).
                // The shared v1 frame is what an acking (v1) session keeps for resending.
                if let Some(mark) = mark {
                    marks.push((mark, text.clone()));
                }
                if let Some(text) = session.outbound_text(text, legacy.as_ref()) {
                    sink.feed(Message::Text(text)).await.map_err(|_| ())?;
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

/// Resolves at the session's next ack deadline; never when it has none.
async fn resend_deadline(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// A read error: an oversized frame gets 1009, a protocol violation 1002, invalid UTF-8 1007
/// (RFC 6455 §7.4.1); anything else means the connection is broken.
fn read_error(error: axum::Error) -> Ending {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => {
            Ending::Close(close::MESSAGE_TOO_BIG, "frame too large")
        }
        Some(tungstenite::Error::Utf8(_)) => Ending::Close(close::INVALID_DATA, "invalid UTF-8"),
        Some(tungstenite::Error::Protocol(p)) => {
            tracing::debug!(error = %p, "websocket protocol violation");
            Ending::Close(close::PROTOCOL_ERROR, "protocol error")
        }
        _ => {
            tracing::debug!(error = %inner, "websocket read failed");
            Ending::Gone
        }
    }
}
