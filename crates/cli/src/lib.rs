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

use chat_protocol::{
    AckStream, ClientFrame, HistoryRequest, LoginRequest, PostRequest, RoomId, ServerFrame, Target,
    UserId, close,
};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
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

/// Runs the client until `/quit` or the end of standard input. Fails at once, before connecting,
/// when `--user` or a `--room` is not a valid id.
pub async fn run(args: Args) -> Result<(), String> {
    let user = UserId::new(&args.user)
        .map_err(|e| format!("--user `{}` is not a valid user id: {e}", args.user))?;
    let mut rooms: BTreeMap<RoomId, RoomPos> = BTreeMap::new();
    for room in &args.rooms {
        let room = RoomId::new(room)
            .map_err(|e| format!("--room `{room}` is not a valid room id: {e}"))?;
        rooms.insert(room, RoomPos::default());
    }
    let name = args.name.clone().unwrap_or_else(|| args.user.clone());
    let mut current = match args.rooms.first() {
        Some(first) => RoomId::new(first).map_err(|e| format!("--room `{first}`: {e}"))?,
        None => RoomId::new("lobby").map_err(|e| format!("lobby: {e}"))?,
    };
    // Per room, the oldest seq `/history` has shown: the next `/history` asks for what is before.
    let mut paging: BTreeMap<RoomId, u64> = BTreeMap::new();

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
                .send(text(&login(&user, &name, room, pos)))
                .await
                .is_err()
            {
                ok = false;
            }
        }
        while ok {
            tokio::select! {
                line = lines.recv() => {
                    let Some(line) = line else { return Ok(()) };
                    match command(&line, &mut current, &mut rooms, &paging, &user, &name) {
                        Action::Send(frames) => {
                            for frame in frames {
                                if sink.send(text(&frame)).await.is_err() { ok = false; }
                            }
                        }
                        Action::Quit => {
                            let _ = sink.close().await;
                            return Ok(());
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
                                Some(oldest) => paging.insert(h.room_id.clone(), oldest),
                                None => paging.remove(&h.room_id),
                            };
                        }
                        // A resend of a message already shown (the server did not see our ack in
                        // time) is not shown twice.
                        let seen = matches!(&frame, ServerFrame::Message(m) if m.resend
                            && m.room_id.as_ref().and_then(|r| rooms.get(r)).is_some_and(|p| p.seq >= m.seq));
                        if !args.raw && !seen {
                            let line = show(&frame, &args.user);
                            if !line.is_empty() { println!("{line}"); }
                        }
                        if let Some(ack) = track(&frame, &mut rooms)
                            && sink.send(text(&ack)).await.is_err()
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

fn text(frame: &ClientFrame) -> Message {
    Message::text(frame.encode())
}

/// A room id typed at the prompt, or `None` (and a line saying why) when the server would refuse
/// it.
fn typed_room(room: &str) -> Option<RoomId> {
    RoomId::new(room)
        .map_err(|e| eprintln!("* `{room}` is not a valid room id: {e}"))
        .ok()
}

/// `room` was checked when it entered `rooms` (or by `run`, for `--room`).
fn login(user: &UserId, name: &str, room: &RoomId, pos: &RoomPos) -> ClientFrame {
    let resume = pos.seq > 0;
    ClientFrame::Login(LoginRequest {
        room_id: room.clone(),
        user_id: user.clone(),
        user_name: name.to_owned(),
        room_name: None,
        since: resume.then_some(pos.seq),
        epoch: pos.epoch.clone().filter(|_| resume),
    })
}

enum Action {
    Send(Vec<ClientFrame>),
    Quit,
    Nothing,
}

fn command(
    line: &str,
    current: &mut RoomId,
    rooms: &mut BTreeMap<RoomId, RoomPos>,
    paging: &BTreeMap<RoomId, u64>,
    user: &UserId,
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
        "/join" | "/room" => match words.next().and_then(typed_room) {
            Some(room) => {
                *current = room.clone();
                if rooms.contains_key(&room) {
                    eprintln!("* current room: {room}");
                    return Action::Nothing;
                }
                let frame = login(user, name, &room, &RoomPos::default());
                rooms.insert(room, RoomPos::default());
                Action::Send(vec![frame])
            }
            None => Action::Nothing,
        },
        "/leave" => match words.next().and_then(typed_room) {
            Some(room) => {
                rooms.remove(&room);
                Action::Send(vec![ClientFrame::Logout { room_id: room }])
            }
            None => Action::Nothing,
        },
        "/dm" => match (words.next(), words.next()) {
            (Some(to), Some(content)) => match UserId::new(to) {
                Ok(to) => Action::Send(vec![ClientFrame::Message(PostRequest {
                    target: Target::User(to),
                    content: content.to_owned(),
                    client_msg_id: None,
                })]),
                Err(e) => {
                    eprintln!("* `{to}` is not a valid user id: {e}");
                    Action::Nothing
                }
            },
            _ => Action::Nothing,
        },
        "/history" => {
            let limit: u32 = words.next().and_then(|n| n.parse().ok()).unwrap_or(20);
            Action::Send(vec![ClientFrame::History(HistoryRequest {
                room_id: current.clone(),
                before: paging.get(current).copied(),
                limit,
            })])
        }
        "/rooms" => {
            let joined: Vec<&str> = rooms.keys().map(RoomId::as_str).collect();
            eprintln!("* joined: {} (current: {current})", joined.join(", "));
            Action::Nothing
        }
        _ => Action::Send(vec![ClientFrame::Message(PostRequest {
            target: Target::Room(current.clone()),
            content: line.to_owned(),
            client_msg_id: None,
        })]),
    }
}

/// Remembers positions and returns the ack for a message: a room message, or a direct message
/// (the server resends what an acking connection leaves unacknowledged, inbox included).
fn track(frame: &ServerFrame, rooms: &mut BTreeMap<RoomId, RoomPos>) -> Option<ClientFrame> {
    match frame {
        ServerFrame::Joined(j) => {
            let pos = rooms.entry(j.room_id.clone()).or_default();
            if pos.epoch.as_deref() != Some(j.epoch.as_str()) {
                // A new epoch: the room's log started over, our old seq means nothing there.
                pos.epoch = Some(j.epoch.clone());
                pos.seq = pos.seq.min(j.seq);
            }
            None
        }
        ServerFrame::Message(m) if m.room_id.is_none() => Some(ClientFrame::Ack {
            stream: AckStream::Direct,
            seq: m.seq,
            epoch: Some(m.epoch.clone()),
        }),
        ServerFrame::Message(m) => {
            let room = m.room_id.as_ref()?;
            let pos = rooms.get_mut(room)?;
            pos.seq = pos.seq.max(m.seq);
            pos.epoch = Some(m.epoch.clone());
            // With its epoch: an ack for a log that was reset since acknowledges nothing there.
            Some(ClientFrame::Ack {
                stream: AckStream::Room(room.clone()),
                seq: m.seq,
                epoch: Some(m.epoch.clone()),
            })
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
