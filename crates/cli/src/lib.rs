//! The terminal chat client, as a library: the `chat-cli` binary and `chatctl chat` both run
//! [`run`] with [`Args`].
//!
//! Type a line to post it to the current room. Commands: `/join ROOM` and `/room ROOM` (make it
//! the current room, joining it first if needed), `/leave ROOM`, `/dm USER TEXT`, `/history [N]`
//! (pages back: the first shows the latest N, each next one the N before those), `/rooms`,
//! `/quit`. Incoming frames are printed one per line. The client acknowledges every message it prints, and when the
//! connection drops it reconnects with backoff and logs in again with `since`, so nothing posted
//! meanwhile is missed.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_protocol::{ServerFrame, close};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A terminal chat client.
#[derive(Debug, Parser)]
#[command(version, about)]
#[allow(missing_docs)]
pub struct Args {
    /// WebSocket URL of a gateway (or of nginx in front of a cluster).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Your user id (A-Z a-z 0-9 _ . : -).
    #[arg(long)]
    pub user: String,
    /// Your display name (defaults to the user id).
    #[arg(long)]
    pub name: Option<String>,
    /// Rooms to join at start; the first is the current room.
    #[arg(long = "room", default_value = "lobby")]
    pub rooms: Vec<String>,
    /// Print raw JSON frames instead of formatted lines.
    #[arg(long)]
    pub raw: bool,
}

/// Where the client is in each room, to log in again with `since` after a reconnect.
#[derive(Debug, Default, Clone)]
struct RoomPos {
    seq: u64,
    epoch: Option<String>,
}

/// Runs the client until `/quit` or the end of standard input.
pub async fn run(args: Args) {
    let name = args.name.clone().unwrap_or_else(|| args.user.clone());
    let mut rooms: BTreeMap<String, RoomPos> = args
        .rooms
        .iter()
        .map(|r| (r.clone(), RoomPos::default()))
        .collect();
    let mut current = args
        .rooms
        .first()
        .cloned()
        .unwrap_or_else(|| "lobby".to_owned());
    // Per room, the oldest seq `/history` has shown: the next `/history` asks for what is before.
    let mut paging: BTreeMap<String, u64> = BTreeMap::new();

    let (line_tx, mut lines) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if line_tx.send(line).await.is_err() {
                break;
            }
        }
    });

    let mut backoff = Duration::from_millis(250);
    loop {
        let socket =
            match tokio_tungstenite::connect_async_with_config(args.url.as_str(), None, true).await
            {
                Ok((socket, _)) => socket,
                Err(e) => {
                    eprintln!(
                        "* cannot connect to {}: {e}; retrying in {backoff:?}",
                        args.url
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
        backoff = Duration::from_millis(250);
        eprintln!(
            "* connected to {} as {} — current room: {current} (type /help)",
            args.url, args.user
        );
        let (mut sink, mut stream) = socket.split();
        let mut ok = true;
        for (room, pos) in &rooms {
            if sink
                .send(text(login(&args.user, &name, room, pos)))
                .await
                .is_err()
            {
                ok = false;
            }
        }
        while ok {
            tokio::select! {
                line = lines.recv() => {
                    let Some(line) = line else { return };
                    match command(&line, &mut current, &mut rooms, &paging, &args.user, &name) {
                        Action::Send(frames) => {
                            for frame in frames {
                                if sink.send(text(frame)).await.is_err() { ok = false; }
                            }
                        }
                        Action::Quit => {
                            let _ = sink.close().await;
                            return;
                        }
                        Action::Nothing => {}
                    }
                }
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(t))) => {
                        if args.raw { println!("{t}"); }
                        let Ok(frame) = ServerFrame::decode(t.as_str()) else { continue };
                        if let ServerFrame::History(h) = &frame {
                            // An empty page: the top was reached; the next /history starts over.
                            match h.messages.iter().map(|m| m.seq).min() {
                                Some(oldest) => paging.insert(h.room_id.to_string(), oldest),
                                None => paging.remove(h.room_id.as_str()),
                            };
                        }
                        // A resend of a message already shown (the server did not see our ack in
                        // time) is not shown twice.
                        let seen = matches!(&frame, ServerFrame::Message(m) if m.resend
                            && m.room_id.as_ref().and_then(|r| rooms.get(r.as_str())).is_some_and(|p| p.seq >= m.seq));
                        if !args.raw && !seen {
                            let line = show(&frame, &args.user);
                            if !line.is_empty() { println!("{line}"); }
                        }
                        if let Some(ack) = track(&frame, &mut rooms)
                            && sink.send(text(ack)).await.is_err()
                        {
                            ok = false;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(close::NORMAL);
                        eprintln!("* server closed the connection ({code}); reconnecting");
                        ok = false;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => { eprintln!("* connection lost: {e}; reconnecting"); ok = false; }
                    None => { eprintln!("* connection closed; reconnecting"); ok = false; }
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

fn text(v: Value) -> Message {
    Message::text(v.to_string())
}

fn login(user: &str, name: &str, room: &str, pos: &RoomPos) -> Value {
    let mut frame = json!({"event": "login", "roomId": room, "userId": user, "userName": name});
    if pos.seq > 0 {
        frame["since"] = json!(pos.seq);
        if let Some(epoch) = &pos.epoch {
            frame["epoch"] = json!(epoch);
        }
    }
    frame
}

enum Action {
    Send(Vec<Value>),
    Quit,
    Nothing,
}

fn command(
    line: &str,
    current: &mut String,
    rooms: &mut BTreeMap<String, RoomPos>,
    paging: &BTreeMap<String, u64>,
    user: &str,
    name: &str,
) -> Action {
    let line = line.trim();
    if line.is_empty() {
        return Action::Nothing;
    }
    let mut words = line.splitn(3, ' ');
    match words.next().unwrap_or_default() {
        "/quit" => Action::Quit,
        "/help" => {
            eprintln!(
                "* /join ROOM · /room ROOM · /leave ROOM · /dm USER TEXT · /history [N] · /rooms · /quit"
            );
            Action::Nothing
        }
        "/join" | "/room" => match words.next() {
            Some(room) => {
                *current = room.to_owned();
                if rooms.contains_key(room) {
                    eprintln!("* current room: {room}");
                    return Action::Nothing;
                }
                rooms.insert(room.to_owned(), RoomPos::default());
                Action::Send(vec![login(user, name, room, &RoomPos::default())])
            }
            None => Action::Nothing,
        },
        "/leave" => match words.next() {
            Some(room) => {
                rooms.remove(room);
                Action::Send(vec![json!({"event": "logout", "roomId": room})])
            }
            None => Action::Nothing,
        },
        "/dm" => match (words.next(), words.next()) {
            (Some(to), Some(content)) => Action::Send(vec![
                json!({"event": "message", "toUserId": to, "content": content}),
            ]),
            _ => Action::Nothing,
        },
        "/history" => {
            let limit: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(20);
            let mut frame = json!({"event": "history", "roomId": current.as_str(), "limit": limit});
            if let Some(oldest) = paging.get(current.as_str()) {
                frame["before"] = json!(oldest);
            }
            Action::Send(vec![frame])
        }
        "/rooms" => {
            eprintln!(
                "* joined: {} (current: {current})",
                rooms.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            Action::Nothing
        }
        _ => Action::Send(vec![
            json!({"event": "message", "roomId": current.as_str(), "content": line}),
        ]),
    }
}

/// Remembers positions and returns the ack for a message: a room message, or a direct message
/// (the server resends what an acking connection leaves unacknowledged, inbox included).
fn track(frame: &ServerFrame, rooms: &mut BTreeMap<String, RoomPos>) -> Option<Value> {
    match frame {
        ServerFrame::Joined(j) => {
            let pos = rooms.entry(j.room_id.to_string()).or_default();
            if pos.epoch.as_deref() != Some(j.epoch.as_str()) {
                // A new epoch: the room's log started over, our old seq means nothing there.
                pos.epoch = Some(j.epoch.clone());
                pos.seq = pos.seq.min(j.seq);
            }
            None
        }
        ServerFrame::Message(m) if m.room_id.is_none() => {
            Some(json!({"event": "ack", "direct": true, "seq": m.seq, "epoch": m.epoch}))
        }
        ServerFrame::Message(m) => {
            let room = m.room_id.as_ref()?;
            let pos = rooms.get_mut(room.as_str())?;
            pos.seq = pos.seq.max(m.seq);
            pos.epoch = Some(m.epoch.clone());
            Some(json!({"event": "ack", "roomId": room, "seq": m.seq}))
        }
        _ => None,
    }
}

fn show(frame: &ServerFrame, me: &str) -> String {
    match frame {
        ServerFrame::Joined(j) => {
            let mut line = format!(
                "* joined {} ({}) — {} online, {} members, {} missed messages follow",
                j.room_id, j.room_name, j.num, j.total, j.replayed
            );
            if !j.recovered {
                // An honest gap: some of what was missed is not replayed.
                line.push_str(&match j.oldest_seq {
                    Some(oldest) => format!(
                        "\n* [{}] ── gap: some missed messages are gone; history holds seq {oldest} and later ──",
                        j.room_id
                    ),
                    None => format!("\n* [{}] ── gap: some missed messages are gone ──", j.room_id),
                });
            }
            line
        }
        ServerFrame::Login(n) => format!(
            "* [{}] {} came online — {} online / {} members",
            n.room_id, n.user_name, n.num, n.total
        ),
        ServerFrame::Logout(n) => {
            let how = match n.reason {
                Some(chat_protocol::LogoutReason::Left) => "left the room",
                _ => "went offline",
            };
            format!(
                "* [{}] {} {how} — {} online / {} members",
                n.room_id, n.user_name, n.num, n.total
            )
        }
        ServerFrame::Message(m) => {
            let replay = if m.replay { " (missed)" } else { "" };
            match (&m.room_id, &m.to_user_id) {
                (Some(room), _) => {
                    format!("[{room} #{}] {}: {}{replay}", m.seq, m.user_name, m.content)
                }
                (None, Some(to)) if m.user_id.as_str() == me => {
                    format!("[dm → {to}] {}{replay}", m.content)
                }
                _ => format!("[dm ← {}] {}{replay}", m.user_name, m.content),
            }
        }
        ServerFrame::Sent(_) => String::new(),
        ServerFrame::History(h) => {
            let mut out = format!("* history of {} ({} messages)", h.room_id, h.messages.len());
            for m in &h.messages {
                out.push_str(&format!("\n  #{} {}: {}", m.seq, m.user_name, m.content));
            }
            out
        }
        ServerFrame::HeartBeat { .. } => String::new(),
        ServerFrame::Error(e) => format!("* error {}: {}", e.code, e.message),
        ServerFrame::NoAuth { message } => format!("* not authenticated: {message}"),
        ServerFrame::Authenticated {
            user_id, user_name, ..
        } => format!("* authenticated as {user_name} ({user_id})"),
    }
}
