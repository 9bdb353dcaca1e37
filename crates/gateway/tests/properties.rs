//! Property tests of the socket-free session: arbitrary sequences of frames — valid ones built with
//! [`ClientFrame::encode`], hostile ones (garbage, huge numbers, acks far past anything delivered,
//! wrong epochs), reconnects — from several connections of two users, through the parser and
//! `Session` over the in-memory backend. Whatever the sequence:
//!
//! - nothing panics (proptest reports a panic as a failure, with the shrunk sequence);
//! - per connection and room, message seqs only go up within an epoch (a `joined` starts a new
//!   replay, and frames marked `resend` repeat on purpose): no duplicate, no reordering;
//! - counts are sane: `num <= total` on every `joined` and presence notice;
//! - a stored read cursor never passes what the user was given: the highest seq delivered to any of
//!   their connections, or the head a `joined` reported.

mod support;

use std::collections::HashMap;

use chat_backend::StreamKey;
use chat_gateway::hub::Outbound;
use chat_protocol::client::{AckStream, HistoryRequest, LoginRequest, PostRequest, Target};
use chat_protocol::{ClientFrame, RoomId, ServerFrame, UserId};
use proptest::prelude::*;
use support::{Conn, Harness};

const ROOMS: [&str; 3] = ["r0", "r1", "r2"];
/// Connection `i` belongs to `USERS[OWNER[i]]`: two connections of one user, one of another.
const USERS: [&str; 2] = ["u0", "u1"];
const OWNER: [usize; 3] = [0, 0, 1];

#[derive(Debug, Clone)]
enum Op {
    Login {
        conn: usize,
        room: usize,
        since: Option<u64>,
        epoch: Option<String>,
    },
    Logout {
        conn: usize,
        room: usize,
    },
    Post {
        conn: usize,
        room: usize,
        text: String,
        id: Option<String>,
    },
    Direct {
        conn: usize,
        to: usize,
        text: String,
    },
    Ack {
        conn: usize,
        room: Option<usize>,
        seq: u64,
        epoch: Option<String>,
    },
    History {
        conn: usize,
        room: usize,
        before: Option<u64>,
        limit: u32,
    },
    HeartBeat {
        conn: usize,
    },
    /// Any text at all: JSON or not, valid or not.
    Raw {
        conn: usize,
        text: String,
    },
    /// A valid frame with one byte changed.
    Mutated {
        conn: usize,
        frame: String,
        at: usize,
        byte: u8,
    },
    /// The connection closes and a new one takes its place (same user).
    Reconnect {
        conn: usize,
    },
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..40,
        Just(u64::MAX),
        Just(1_000_000_000_000u64),
        any::<u64>()
    ]
}

fn epoch() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("e".to_owned())),
        "[0-9a-f]{1,16}".prop_map(Some)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0usize..3;
    let room = 0usize..ROOMS.len();
    prop_oneof![
        4 => (conn.clone(), room.clone(), prop::option::of(seq()), epoch())
            .prop_map(|(conn, room, since, epoch)| Op::Login { conn, room, since, epoch }),
        1 => (conn.clone(), room.clone()).prop_map(|(conn, room)| Op::Logout { conn, room }),
        6 => (conn.clone(), room.clone(), "\\PC{1,40}", prop::option::of("[a-z0-9]{1,4}"))
            .prop_map(|(conn, room, text, id)| Op::Post { conn, room, text, id }),
        2 => (conn.clone(), 0usize..USERS.len(), "\\PC{1,20}")
            .prop_map(|(conn, to, text)| Op::Direct { conn, to, text }),
        4 => (conn.clone(), prop::option::of(room.clone()), seq(), epoch())
            .prop_map(|(conn, room, seq, epoch)| Op::Ack { conn, room, seq, epoch }),
        1 => (conn.clone(), room.clone(), prop::option::of(seq()), 1u32..300)
            .prop_map(|(conn, room, before, limit)| Op::History { conn, room, before, limit }),
        1 => conn.clone().prop_map(|conn| Op::HeartBeat { conn }),
        1 => (conn.clone(), ".{0,80}").prop_map(|(conn, text)| Op::Raw { conn, text }),
        1 => (conn.clone(), room.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |(conn, room, at, byte)| {
                let frame = login(conn, room, None, None).encode();
                let at = at.index(frame.len());
                Op::Mutated { conn, frame, at, byte }
            }
        ),
        1 => conn.prop_map(|conn| Op::Reconnect { conn }),
    ]
}

fn room_id(room: usize) -> RoomId {
    RoomId::new(ROOMS[room]).expect("room id")
}

fn user_id(user: usize) -> UserId {
    UserId::new(USERS[user]).expect("user id")
}

fn login(conn: usize, room: usize, since: Option<u64>, epoch: Option<String>) -> ClientFrame {
    ClientFrame::Login(LoginRequest {
        room_id: room_id(room),
        user_id: user_id(OWNER[conn]),
        user_name: USERS[OWNER[conn]].to_uppercase(),
        room_name: None,
        since,
        epoch,
    })
}

fn frame_of(op: &Op) -> Option<(usize, String)> {
    Some(match op.clone() {
        Op::Login {
            conn,
            room,
            since,
            epoch,
        } => (conn, login(conn, room, since, epoch).encode()),
        Op::Logout { conn, room } => (
            conn,
            ClientFrame::Logout {
                room_id: room_id(room),
            }
            .encode(),
        ),
        Op::Post {
            conn,
            room,
            text,
            id,
        } => (
            conn,
            ClientFrame::Message(PostRequest {
                target: Target::Room(room_id(room)),
                content: text,
                client_msg_id: id,
            })
            .encode(),
        ),
        Op::Direct { conn, to, text } => (
            conn,
            ClientFrame::Message(PostRequest {
                target: Target::User(user_id(to)),
                content: text,
                client_msg_id: None,
            })
            .encode(),
        ),
        Op::Ack {
            conn,
            room,
            seq,
            epoch,
        } => (
            conn,
            ClientFrame::Ack {
                stream: room.map_or(AckStream::Direct, |r| AckStream::Room(room_id(r))),
                seq,
                epoch,
            }
            .encode(),
        ),
        Op::History {
            conn,
            room,
            before,
            limit,
        } => (
            conn,
            ClientFrame::History(HistoryRequest {
                room_id: room_id(room),
                before,
                limit,
            })
            .encode(),
        ),
        Op::HeartBeat { conn } => (conn, ClientFrame::HeartBeat.encode()),
        Op::Raw { conn, text } => (conn, text),
        Op::Mutated {
            conn,
            frame,
            at,
            byte,
        } => {
            let mut bytes = frame.into_bytes();
            bytes[at] = byte;
            (conn, String::from_utf8_lossy(&bytes).into_owned())
        }
        Op::Reconnect { .. } => return None,
    })
}

/// What the model has seen, to check the invariants against.
#[derive(Default)]
struct Seen {
    /// (connection slot, room) → (epoch, last seq) of room messages, reset by a `joined`.
    last: HashMap<(usize, String), (String, u64)>,
    /// (user, room) → epoch → the highest seq the user was given (message or `joined` head).
    given: HashMap<(String, String), HashMap<String, u64>>,
}

impl Seen {
    fn observe(&mut self, slot: usize, frame: &ServerFrame) -> Result<(), String> {
        let user = USERS[OWNER[slot]].to_owned();
        match frame {
            ServerFrame::Joined(j) => {
                if j.num > j.total {
                    return Err(format!(
                        "joined with num {} > total {}: {j:?}",
                        j.num, j.total
                    ));
                }
                let room = j.room_id.as_str().to_owned();
                self.last.remove(&(slot, room.clone()));
                let top = self
                    .given
                    .entry((user, room))
                    .or_default()
                    .entry(j.epoch.clone())
                    .or_default();
                *top = (*top).max(j.seq);
            }
            ServerFrame::Login(n) | ServerFrame::Logout(n) if n.num > n.total => {
                return Err(format!(
                    "presence notice with num {} > total {}: {n:?}",
                    n.num, n.total
                ));
            }
            ServerFrame::Message(m) => {
                let Some(room) = &m.room_id else {
                    return Ok(());
                };
                let room = room.as_str().to_owned();
                let top = self
                    .given
                    .entry((user, room.clone()))
                    .or_default()
                    .entry(m.epoch.clone())
                    .or_default();
                *top = (*top).max(m.seq);
                if m.resend {
                    return Ok(());
                }
                let key = (slot, room);
                if let Some((epoch, last)) = self.last.get(&key)
                    && *epoch == m.epoch
                    && m.seq <= *last
                {
                    return Err(format!(
                        "connection {slot}: seq {} after {last} in {}: {m:?}",
                        m.seq, key.1
                    ));
                }
                self.last.insert(key, (m.epoch.clone(), m.seq));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Everything the connection in `slot` was sent so far, replies first (as the driver writes a
/// reply before it looks at the queue again), then what the hub queued.
fn drain(conn: &mut Conn, slot: usize, seen: &mut Seen) -> Result<(), String> {
    for frame in conn.replies() {
        seen.observe(slot, &frame)?;
    }
    while let Ok(item) = conn.rx.try_recv() {
        if let Outbound::Frame { text, mark, .. } = item {
            if let Some(mark) = mark {
                conn.session.on_written(&mark, &text);
            }
            let frame = ServerFrame::decode(text.as_str())
                .map_err(|e| format!("the server sent an undecodable frame {text}: {e}"))?;
            seen.observe(slot, &frame)?;
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), String> {
    let harness = Harness::new();
    let mut conns: Vec<Conn> = (0..OWNER.len()).map(|_| harness.connect()).collect();
    let mut seen = Seen::default();
    // Everyone starts in the first two rooms, so most generated posts and acks land somewhere.
    let start = (0..OWNER.len()).flat_map(|conn| {
        (0..2).map(move |room| Op::Login {
            conn,
            room,
            since: None,
            epoch: None,
        })
    });
    let ops: Vec<Op> = start.chain(ops).collect();
    for op in &ops {
        match frame_of(op) {
            Some((slot, text)) => {
                conns[slot].send(&text).await;
                conns[slot].session.on_tick().await;
            }
            None => {
                let Op::Reconnect { conn: slot } = op else {
                    unreachable!()
                };
                drain(&mut conns[*slot], *slot, &mut seen)?;
                conns[*slot].session.finish().await;
                conns[*slot] = harness.connect();
                seen.last.retain(|(s, _), _| s != slot);
            }
        }
        // Let the pump deliver what the op published, then read every connection, as a client
        // that keeps up would.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        for (slot, conn) in conns.iter_mut().enumerate() {
            drain(conn, slot, &mut seen)?;
        }
    }
    for (slot, conn) in conns.iter_mut().enumerate() {
        drain(conn, slot, &mut seen)?;
        conn.session.finish().await;
    }
    // Acks never pass what was delivered: every stored cursor is within what its user was given.
    for (user_index, user) in USERS.iter().enumerate() {
        for room in ROOMS {
            let key = StreamKey::Room(RoomId::new(room).expect("room"));
            let cursor = harness
                .node
                .store
                .cursor(&user_id(user_index), &key)
                .await
                .map_err(|e| format!("cursor read: {e}"))?;
            if let Some(cursor) = cursor {
                let given = seen
                    .given
                    .get(&((*user).to_owned(), room.to_owned()))
                    .and_then(|by_epoch| by_epoch.get(&cursor.epoch))
                    .copied()
                    .unwrap_or(0);
                if cursor.seq > given {
                    return Err(format!(
                        "{user}'s cursor in {room} is {} (epoch {}), past the {given} they were given",
                        cursor.seq, cursor.epoch
                    ));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // A failure is shrunk, but not forever: the suite must stay quick in CI.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_frame_sequence_keeps_the_invariants(ops in prop::collection::vec(op(), 1..80)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = runtime.block_on(run(ops));
        prop_assert!(outcome.is_ok(), "{}", outcome.err().unwrap_or_default());
    }
}
