//! The chaos suite: zero loss under faults, with real processes.
//!
//! Three gateways on one `redis-server` with AOF (`appendfsync everysec`). Six clients, each in
//! two of three rooms, post and receive at a steady rate and fail over between the gateways' URLs
//! like a real client: they retry unconfirmed posts with the same `clientMsgId` (after
//! `unavailable`, a timeout or a reconnect), resume with `since` + `epoch` on any node, and ack
//! (one of them lazily, every 2.5 s, so the server's resend on missing acks runs too). Meanwhile:
//! a gateway is killed with SIGKILL and restarted, Redis is stopped for 2 s and restarted
//! (gracefully: the AOF keeps everything), every gateway's pub/sub connection is dropped (`CLIENT
//! KILL TYPE pubsub`), writes are paused past the gateways' command timeout (`CLIENT PAUSE`: posts
//! answered `unavailable` are stored anyway, and their retries get the original receipt), and a
//! gateway is frozen with SIGSTOP for 4 s. Each client also drops its own connection right after
//! every 40th post (a network blip: the post is stored, its `sent` lost, the retry on the next node
//! must return the same seq).
//!
//! At the end: every client has every message of its rooms exactly once after dedup by (room,
//! epoch, seq), in seq order; every post that got a `sent` is in history (once); after another
//! Redis restart, a login that relies on the stored read cursor replays nothing the clients acked.
//! The numbers are printed (`cargo test -p chat-tests --test chaos -- --nocapture`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_tests::chat_protocol::{ChatMessage, ErrorCode, ServerFrame};
use chat_tests::cluster::{Cluster, room_counts};
use chat_tests::serde_json::{Value, json};
use chat_tests::{Gateway, RedisServer, send_signal, wait_until};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const ROOMS: [&str; 3] = ["chaos0", "chaos1", "chaos2"];
const CLIENTS: usize = 6;
/// Each client posts this often (to its two rooms in turn).
const POST_EVERY: Duration = Duration::from_millis(250);
/// How long the clients post; the faults happen within it.
const POSTING: Duration = Duration::from_secs(36);
/// An unconfirmed post is sent again (same `clientMsgId`) after this long.
const RETRY_AFTER: Duration = Duration::from_secs(3);
/// Silence (not even the server's 1 s pings) after which a client presumes its node dead or frozen.
const STALL: Duration = Duration::from_secs(3);
/// The lazy client acks this often: more than the servers' `ack_timeout_secs`, so it is resent to.
const LAZY_ACK_EVERY: Duration = Duration::from_millis(2500);
/// A resend or replay of something acked longer ago than this counts as acked-then-resent (a
/// shorter window is the ordinary race of an ack in flight with a resend).
const ACK_SETTLED: Duration = Duration::from_secs(5);
/// Every this many posts a client drops its connection right after sending one.
const BLIP_EVERY: u64 = 40;
/// After the posting stops: bound on waiting for every client to have everything.
const CONVERGE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct RoomState {
    epoch: Option<String>,
    /// Highest seq with everything before it received (the dedup and order position).
    contiguous: u64,
    /// Unique seqs in arrival order.
    received: Vec<u64>,
    /// Acks sent, oldest first, with when; `settled` is the highest acked at least ACK_SETTLED ago.
    acks: VecDeque<(Instant, u64)>,
    settled: u64,
    last_acked: u64,
}

#[derive(Default, Debug, Clone)]
struct Stats {
    /// Message frames received, duplicates included.
    frames: u64,
    duplicates: u64,
    resends: u64,
    /// Messages that arrived with a hole before them (never expected).
    out_of_order: u64,
    epoch_changes: u64,
    not_recovered: u64,
    acked_resent: u64,
    reconnects: u64,
    posted: u64,
    /// Posts sent again with the same clientMsgId (after `unavailable`, a timeout or a reconnect).
    retried: u64,
    /// `unavailable` errors for posts.
    unavailable: u64,
    /// `sent` receipts flagged `duplicate` (a retry of a post already stored).
    duplicate_receipts: u64,
    /// Connections the client dropped itself right after a post.
    blips: u64,
    longest_gap: Duration,
    unexpected_errors: Vec<String>,
}

struct Post {
    room: &'static str,
    content: String,
    last_sent: Option<Instant>,
}

struct ClientState {
    user: String,
    rooms: [&'static str; 2],
    lazy: bool,
    state: HashMap<&'static str, RoomState>,
    /// Posts without a `sent` yet, by `clientMsgId`.
    outbox: BTreeMap<String, Post>,
    /// (room, epoch, seq, clientMsgId) of every confirmed post.
    confirmed: Vec<(&'static str, String, u64, String)>,
    next_post: u64,
    stats: Stats,
    last_new: Option<Instant>,
}

struct Shared {
    urls: Vec<String>,
    posting: AtomicBool,
    stop: AtomicBool,
    joined: AtomicUsize,
}

enum End {
    Stop,
    Failed,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl ClientState {
    fn new(i: usize) -> Self {
        let rooms = [ROOMS[i % 3], ROOMS[(i + 1) % 3]];
        ClientState {
            user: format!("u{i}"),
            rooms,
            lazy: i == CLIENTS - 1,
            state: rooms.iter().map(|r| (*r, RoomState::default())).collect(),
            outbox: BTreeMap::new(),
            confirmed: Vec::new(),
            next_post: 0,
            stats: Stats::default(),
            last_new: None,
        }
    }

    fn login_frame(&self, room: &str) -> Value {
        let mut frame =
            json!({"event": "login", "roomId": room, "userId": self.user, "userName": self.user});
        if let Some(st) = self.state.get(room)
            && let Some(epoch) = &st.epoch
        {
            frame["since"] = json!(st.contiguous);
            frame["epoch"] = json!(epoch);
        }
        frame
    }

    fn ack_frame(&mut self, room: &'static str) -> Option<Value> {
        let st = self.state.get_mut(room)?;
        let epoch = st.epoch.clone()?;
        st.last_acked = st.contiguous;
        st.acks.push_back((Instant::now(), st.contiguous));
        Some(json!({"event": "ack", "roomId": room, "seq": st.contiguous, "epoch": epoch}))
    }

    fn room_of(&self, id: &str) -> Option<&'static str> {
        self.rooms.iter().copied().find(|r| *r == id)
    }

    /// Handles one frame; returns an ack to send, if any.
    fn on_frame(&mut self, frame: ServerFrame, posting: bool) -> Option<Value> {
        match frame {
            ServerFrame::Message(m) => self.on_message(m, posting),
            ServerFrame::Sent(sent) => {
                let id = sent.client_msg_id.unwrap_or_default();
                if sent.duplicate {
                    self.stats.duplicate_receipts += 1;
                }
                if let Some(post) = self.outbox.remove(&id) {
                    self.confirmed.push((post.room, sent.epoch, sent.seq, id));
                }
                None
            }
            ServerFrame::Error(e) => {
                match (e.code, e.reference) {
                    (ErrorCode::Unavailable, Some(id)) => {
                        self.stats.unavailable += 1;
                        // Retry soon, with the same clientMsgId.
                        if let Some(post) = self.outbox.get_mut(&id) {
                            post.last_sent = None;
                        }
                    }
                    (ErrorCode::Unavailable, None) => {}
                    (code, _) => self
                        .stats
                        .unexpected_errors
                        .push(format!("{code:?}: {}", e.message)),
                }
                None
            }
            _ => None,
        }
    }

    fn on_message(&mut self, m: ChatMessage, posting: bool) -> Option<Value> {
        let room = self.room_of(m.room_id.as_ref()?.as_str())?;
        self.stats.frames += 1;
        if m.resend {
            self.stats.resends += 1;
        }
        let now = Instant::now();
        let st = self.state.get_mut(room)?;
        if st.epoch.as_deref() != Some(m.epoch.as_str()) {
            self.stats.epoch_changes += 1;
            *st = RoomState {
                epoch: Some(m.epoch.clone()),
                ..RoomState::default()
            };
        }
        while st
            .acks
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= ACK_SETTLED)
        {
            if let Some((_, seq)) = st.acks.pop_front() {
                st.settled = st.settled.max(seq);
            }
        }
        if (m.resend || m.replay) && m.seq <= st.settled {
            self.stats.acked_resent += 1;
        }
        if m.seq <= st.contiguous {
            self.stats.duplicates += 1;
        } else if m.seq == st.contiguous + 1 {
            st.contiguous = m.seq;
            st.received.push(m.seq);
            if posting && let Some(last) = self.last_new {
                self.stats.longest_gap = self.stats.longest_gap.max(now.duration_since(last));
            }
            self.last_new = Some(now);
        } else {
            self.stats.out_of_order += 1;
        }
        if self.lazy {
            None
        } else {
            self.ack_frame(room)
        }
    }

    fn on_joined(&mut self, j: &chat_tests::chat_protocol::server::Joined) {
        let Some(room) = self.room_of(j.room_id.as_str()) else {
            return;
        };
        let Some(st) = self.state.get_mut(room) else {
            return;
        };
        if let Some(epoch) = &st.epoch
            && *epoch != j.epoch
        {
            self.stats.epoch_changes += 1;
            *st = RoomState::default();
        }
        st.epoch = Some(j.epoch.clone());
        if !j.recovered {
            self.stats.not_recovered += 1;
        }
    }

    fn new_post(&mut self) -> Value {
        let n = self.next_post;
        self.next_post += 1;
        let room = self.rooms[(n % 2) as usize];
        let id = format!("{}-{n:05}", self.user);
        let content = format!("{} says #{n}", self.user);
        self.stats.posted += 1;
        self.outbox.insert(
            id.clone(),
            Post {
                room,
                content: content.clone(),
                last_sent: Some(Instant::now()),
            },
        );
        json!({"event": "message", "roomId": room, "content": content, "clientMsgId": id})
    }

    /// Posts due for a retry (never sent on this connection, or unconfirmed for RETRY_AFTER).
    fn due_retries(&mut self, all: bool) -> Vec<Value> {
        let now = Instant::now();
        let retried = &mut self.stats.retried;
        self.outbox
            .iter_mut()
            .filter(|(_, p)| all || p.last_sent.is_none_or(|t| now.duration_since(t) >= RETRY_AFTER))
            .map(|(id, p)| {
                p.last_sent = Some(now);
                *retried += 1;
                json!({"event": "message", "roomId": p.room, "content": p.content, "clientMsgId": id})
            })
            .collect()
    }
}

async fn send(ws: &mut Ws, frame: Value) -> Result<(), ()> {
    match tokio::time::timeout(
        Duration::from_secs(2),
        ws.send(Message::text(frame.to_string())),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The next server frame; `Err` when the connection ended or stalled.
async fn next_frame(ws: &mut Ws, until: tokio::time::Instant) -> Result<Option<ServerFrame>, ()> {
    match tokio::time::timeout_at(until, ws.next()).await {
        Err(_) => Err(()),
        Ok(None) | Ok(Some(Err(_))) => Err(()),
        Ok(Some(Ok(Message::Text(text)))) => match ServerFrame::decode(text.as_str()) {
            Ok(frame) => Ok(Some(frame)),
            Err(e) => panic!("undecodable server frame ({e}): {text}"),
        },
        Ok(Some(Ok(Message::Close(_)))) => Err(()),
        Ok(Some(Ok(_))) => Ok(None),
    }
}

/// One connection's life: join every room (with `since`), resend the outbox, then post, receive
/// and ack until it fails or the test stops.
async fn session(
    ws: &mut Ws,
    shared: &Shared,
    client: &Mutex<ClientState>,
    first: &mut bool,
) -> End {
    let rooms = lock(client).rooms;
    for room in rooms {
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > 20 {
                return End::Failed;
            }
            let frame = lock(client).login_frame(room);
            if send(ws, frame).await.is_err() {
                return End::Failed;
            }
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            let joined = loop {
                let frame = match next_frame(ws, until).await {
                    Err(()) => return End::Failed,
                    Ok(None) => continue,
                    Ok(Some(frame)) => frame,
                };
                match frame {
                    ServerFrame::Joined(j) if j.room_id.as_str() == room => {
                        lock(client).on_joined(&j);
                        break true;
                    }
                    ServerFrame::Error(e)
                        if e.code == ErrorCode::Unavailable && e.reference.is_none() =>
                    {
                        break false;
                    }
                    other => {
                        let posting = shared.posting.load(Ordering::Relaxed);
                        let ack = lock(client).on_frame(other, posting);
                        if let Some(ack) = ack
                            && send(ws, ack).await.is_err()
                        {
                            return End::Failed;
                        }
                    }
                }
            };
            if joined {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    if *first {
        *first = false;
        shared.joined.fetch_add(1, Ordering::SeqCst);
    }
    let retries = lock(client).due_retries(true);
    for frame in retries {
        if send(ws, frame).await.is_err() {
            return End::Failed;
        }
    }

    let mut post_tick = tokio::time::interval(POST_EVERY);
    let mut retry_tick = tokio::time::interval(Duration::from_millis(500));
    let mut ack_tick = tokio::time::interval(LAZY_ACK_EVERY);
    let lazy = lock(client).lazy;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let mut out: Vec<Value> = Vec::new();
        tokio::select! {
            frame = next_frame(ws, last_heard + STALL) => {
                match frame {
                    Err(()) => return End::Failed,
                    Ok(frame) => {
                        last_heard = tokio::time::Instant::now();
                        if let Some(frame) = frame {
                            let posting = shared.posting.load(Ordering::Relaxed);
                            out.extend(lock(client).on_frame(frame, posting));
                        }
                    }
                }
            }
            _ = post_tick.tick() => {
                if shared.stop.load(Ordering::Relaxed) {
                    // Ack everything before leaving, so the stored cursors are final.
                    let acks = final_acks(client, &rooms);
                    for ack in acks {
                        if send(ws, ack).await.is_err() {
                            return End::Failed;
                        }
                    }
                    return End::Stop;
                }
                if shared.posting.load(Ordering::Relaxed) {
                    let (post, blip) = {
                        let mut c = lock(client);
                        let post = c.new_post();
                        let blip = c.next_post.is_multiple_of(BLIP_EVERY);
                        if blip {
                            c.stats.blips += 1;
                        }
                        (post, blip)
                    };
                    if blip {
                        // A network blip right after a post: the server stores it, the `sent`
                        // is lost, and the retry (on the next node) must get the same seq.
                        let _ = send(ws, post).await;
                        return End::Failed;
                    }
                    out.push(post);
                }
            }
            _ = retry_tick.tick() => out.extend(lock(client).due_retries(false)),
            _ = ack_tick.tick(), if lazy => out.extend(final_acks(client, &rooms)),
        }
        for frame in out {
            if send(ws, frame).await.is_err() {
                return End::Failed;
            }
        }
    }
}

/// An ack of every room, at what the client has.
fn final_acks(client: &Mutex<ClientState>, rooms: &[&'static str]) -> Vec<Value> {
    let mut c = lock(client);
    rooms.iter().filter_map(|r| c.ack_frame(r)).collect()
}

fn lock(client: &Mutex<ClientState>) -> std::sync::MutexGuard<'_, ClientState> {
    client.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client: connects to its node, and on any failure to the next one, until the test stops.
async fn run_client(shared: Arc<Shared>, client: Arc<Mutex<ClientState>>, start: usize) {
    let mut node = start;
    let mut first = true;
    loop {
        let url = &shared.urls[node % shared.urls.len()];
        let connected = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let mut ws = match connected {
            Ok(Ok((ws, _))) => ws,
            _ => {
                node += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match session(&mut ws, &shared, &client, &mut first).await {
            End::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                // Drain until the server's close, so its session has ended.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return;
            }
            End::Failed => {
                lock(&client).stats.reconnects += 1;
                node += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_ready(nodes: &[Gateway]) {
    for node in nodes {
        assert!(
            wait_until(Duration::from_secs(30), || async {
                node.get("/readyz").await.status == 200
            })
            .await,
            "node not ready:\n{}",
            node.log_tail(40)
        );
    }
}

/// The latest seq of every chaos room, as a node reports it.
async fn heads(node: &Gateway) -> HashMap<String, u64> {
    let body = node.get("/api/rooms").await.json();
    body["rooms"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(|r| Some((r["roomId"].as_str()?.to_owned(), r["seq"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The whole history of a room, oldest first, paging back with `before`.
async fn full_history(node: &Gateway, room: &str) -> (String, Vec<ChatMessage>) {
    let mut all: Vec<ChatMessage> = Vec::new();
    let mut before: Option<u64> = None;
    let mut epoch;
    loop {
        let path = match before {
            Some(b) => format!("/api/rooms/{room}/messages?before={b}&limit=200"),
            None => format!("/api/rooms/{room}/messages?limit=200"),
        };
        let body = node.get(&path).await.json();
        epoch = body["epoch"].as_str().unwrap_or_default().to_owned();
        let page: Vec<ChatMessage> = chat_tests::serde_json::from_value(body["messages"].clone())
            .unwrap_or_else(|e| panic!("history page of {room}: {e}: {body}"));
        let Some(oldest) = page.first().map(|m| m.seq) else {
            break;
        };
        all.splice(0..0, page);
        if oldest <= 1 {
            break;
        }
        before = Some(oldest);
    }
    (epoch, all)
}

/// A `login` without `since` (the stored cursor decides the replay), sent again after a retriable
/// `unavailable` as a client would (a node's first commands after a Redis restart may fail).
async fn login_retrying(
    client: &mut chat_tests::Client,
    room: &str,
    user: &str,
) -> (chat_tests::chat_protocol::server::Joined, Vec<ChatMessage>) {
    for _ in 0..40 {
        client
            .send_json(json!({"event": "login", "roomId": room, "userId": user, "userName": user}))
            .await;
        let joined = client
            .recv_match("joined or unavailable", |f| match f {
                ServerFrame::Joined(j) if j.room_id.as_str() == room => Some(Some(j.clone())),
                ServerFrame::Error(e) if e.code == ErrorCode::Unavailable => Some(None),
                _ => None,
            })
            .await;
        let Some(joined) = joined else {
            eprintln!("chaos: {user} login to {room}: unavailable, retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut replayed = Vec::new();
        while (replayed.len() as u64) < joined.replayed {
            match client.recv_frame().await {
                ServerFrame::Message(m) => replayed.push(m),
                other => panic!("expected replayed messages after joined, got {other:?}"),
            }
        }
        return (joined, replayed);
    }
    panic!("{user}: login to {room} stayed unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_is_lost_under_chaos() {
    let redis = RedisServer::start_with_aof().await;
    let mut cluster = Cluster::start_on(
        redis,
        &[
            ("CHAT__HEARTBEAT__INTERVAL_SECS", "1"),
            ("CHAT__HEARTBEAT__TIMEOUT_SECS", "6"),
            ("CHAT__DELIVERY__ACK_TIMEOUT_SECS", "2"),
            ("CHAT__HISTORY__PER_ROOM", "20000"),
            ("CHAT__OFFLINE__MAX_PER_ROOM", "20000"),
        ],
    )
    .await;
    let shared = Arc::new(Shared {
        urls: cluster.nodes.iter().map(Gateway::ws_url).collect(),
        posting: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        joined: AtomicUsize::new(0),
    });
    let clients: Vec<Arc<Mutex<ClientState>>> = (0..CLIENTS)
        .map(|i| Arc::new(Mutex::new(ClientState::new(i))))
        .collect();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(run_client(shared.clone(), c.clone(), i % 3)))
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            shared.joined.load(Ordering::SeqCst) == CLIENTS
        })
        .await,
        "clients did not join"
    );

    // The run: posting, with faults at fixed points in it.
    let t0 = Instant::now();
    let at = |secs: u64| tokio::time::sleep_until((t0 + Duration::from_secs(secs)).into());
    shared.posting.store(true, Ordering::SeqCst);

    at(4).await;
    eprintln!("chaos: kill -9 gateway n1");
    cluster.nodes[0].kill9();
    at(7).await;
    cluster.nodes[0].restart().await;
    wait_ready(&cluster.nodes[..1]).await;

    at(11).await;
    eprintln!("chaos: restart redis (AOF), down for 2 s");
    cluster.redis.restart_graceful(Duration::from_secs(2)).await;
    wait_ready(&cluster.nodes).await;

    at(18).await;
    eprintln!("chaos: CLIENT KILL TYPE pubsub");
    let killed = cluster.redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eprintln!("chaos: pub/sub connections dropped: {killed}");

    // Writes stall longer than the gateways' command timeout: posts answer `unavailable` yet are
    // stored when the pause ends, so the clients' retries get the original receipts.
    at(21).await;
    eprintln!("chaos: CLIENT PAUSE 2500 WRITE");
    cluster.redis_cli(&["CLIENT", "PAUSE", "2500", "WRITE"]);

    at(26).await;
    eprintln!("chaos: SIGSTOP gateway n2 for 4 s");
    let frozen = cluster.nodes[1].pid();
    send_signal(frozen, "STOP");
    at(30).await;
    send_signal(frozen, "CONT");

    at(POSTING.as_secs()).await;
    shared.posting.store(false, Ordering::SeqCst);
    eprintln!("chaos: posting stopped; waiting for every client to catch up");

    // Converged: every post confirmed, and every client has its rooms up to their heads.
    let node = &cluster.nodes[2];
    let converged = wait_until(CONVERGE, || async {
        let heads = heads(node).await;
        clients.iter().all(|c| {
            let c = lock(c);
            c.outbox.is_empty()
                && c.rooms.iter().all(|r| {
                    heads
                        .get(*r)
                        .is_some_and(|h| c.state.get(r).is_some_and(|s| s.contiguous == *h))
                })
        })
    })
    .await;
    shared.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    let run_secs = t0.elapsed().as_secs_f64();

    // The record: history per room.
    let mut history: HashMap<&str, (String, Vec<ChatMessage>)> = HashMap::new();
    for room in ROOMS {
        history.insert(room, full_history(node, room).await);
    }

    let mut lost = 0u64;
    let mut problems: Vec<String> = Vec::new();
    let mut total = Stats::default();
    let mut delivered = 0u64;
    let mut posted_confirmed = 0u64;
    let mut unconfirmed = 0u64;
    for c in &clients {
        let c = lock(c);
        for room in c.rooms {
            let (epoch, log) = &history[room];
            let st = &c.state[room];
            let expected: Vec<u64> = log.iter().map(|m| m.seq).collect();
            if st.epoch.as_deref() != Some(epoch.as_str()) {
                problems.push(format!(
                    "{} {room}: epoch {:?} != {epoch}",
                    c.user, st.epoch
                ));
            }
            let have: HashSet<u64> = st.received.iter().copied().collect();
            let missing = expected.iter().filter(|s| !have.contains(s)).count() as u64;
            lost += missing;
            if st.received != expected {
                problems.push(format!(
                    "{} {room}: received {} unique (missing {missing}), history holds {}",
                    c.user,
                    st.received.len(),
                    expected.len()
                ));
            }
            delivered += st.received.len() as u64;
        }
        for (room, epoch, seq, id) in &c.confirmed {
            let (log_epoch, log) = &history[room];
            let stored = log
                .iter()
                .find(|m| m.seq == *seq)
                .filter(|m| m.epoch == *epoch && *epoch == *log_epoch);
            if stored.is_none_or(|m| m.client_msg_id.as_deref() != Some(id.as_str())) {
                lost += 1;
                problems.push(format!("{id}: sent as {room} #{seq} but not in history"));
            }
        }
        posted_confirmed += c.confirmed.len() as u64;
        unconfirmed += c.outbox.len() as u64;
        let s = &c.stats;
        total.frames += s.frames;
        total.duplicates += s.duplicates;
        total.resends += s.resends;
        total.out_of_order += s.out_of_order;
        total.epoch_changes += s.epoch_changes;
        total.not_recovered += s.not_recovered;
        total.acked_resent += s.acked_resent;
        total.reconnects += s.reconnects;
        total.posted += s.posted;
        total.retried += s.retried;
        total.unavailable += s.unavailable;
        total.duplicate_receipts += s.duplicate_receipts;
        total.blips += s.blips;
        total.longest_gap = total.longest_gap.max(s.longest_gap);
        total
            .unexpected_errors
            .extend(s.unexpected_errors.iter().cloned());
    }
    // Every post stored once: a retried clientMsgId never became a second message.
    for room in ROOMS {
        let (_, log) = &history[room];
        let mut ids = HashSet::new();
        for m in log {
            if let Some(id) = &m.client_msg_id
                && !ids.insert(id.clone())
            {
                problems.push(format!("{id} stored twice in {room}"));
            }
        }
        let seqs: Vec<u64> = log.iter().map(|m| m.seq).collect();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            problems.push(format!("{room}: history is not 1..=n"));
        }
    }

    println!(
        "chaos: posted={} confirmed={posted_confirmed} unconfirmed={unconfirmed} delivered={delivered} \
         frames={} duplicates_before_dedup={} resends={} lost={lost} longest_gap_ms={} \
         reconnects={} blips={} post_retries={} unavailable={} duplicate_receipts={} out_of_order={} \
         epoch_changes={} not_recovered={} acked_then_resent={} run_secs={run_secs:.1}",
        total.posted,
        total.frames,
        total.duplicates,
        total.resends,
        total.longest_gap.as_millis(),
        total.reconnects,
        total.blips,
        total.retried,
        total.unavailable,
        total.duplicate_receipts,
        total.out_of_order,
        total.epoch_changes,
        total.not_recovered,
        total.acked_resent,
    );

    assert!(
        converged,
        "clients did not converge within {CONVERGE:?}: {problems:#?}"
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(lost, 0);
    assert_eq!(unconfirmed, 0, "posts never confirmed");
    assert!(posted_confirmed > 0 && posted_confirmed == total.posted);
    assert_eq!(
        total.out_of_order, 0,
        "a message arrived with a hole before it"
    );
    assert_eq!(
        total.epoch_changes, 0,
        "the AOF keeps the logs: no epoch may change"
    );
    assert_eq!(
        total.not_recovered, 0,
        "nothing was trimmed: every resume recovers"
    );
    assert_eq!(
        total.acked_resent, 0,
        "something acked was resent or replayed"
    );
    assert!(
        total.duplicate_receipts > 0,
        "no retry met a stored post: the blips did not exercise idempotency"
    );
    assert!(
        total.unexpected_errors.is_empty(),
        "{:#?}",
        total.unexpected_errors
    );

    // Nothing acked is resent after a restart the AOF survived: once every session has ended (the
    // rooms show nobody online, so the final cursors are stored), Redis restarts again, and a
    // login that relies on the stored cursor (no `since`) replays nothing.
    for room in ROOMS {
        assert!(
            wait_until(Duration::from_secs(30), || async {
                room_counts(node, room)
                    .await
                    .is_some_and(|(num, _)| num == 0)
            })
            .await,
            "sessions of {room} did not end: {:?}",
            room_counts(node, room).await
        );
    }
    cluster.redis.restart_graceful(Duration::ZERO).await;
    wait_ready(&cluster.nodes).await;
    for (i, c) in clients.iter().enumerate() {
        let (user, rooms) = {
            let c = lock(c);
            (c.user.clone(), c.rooms)
        };
        let mut back = cluster.client(i % 3, &format!("{user} back")).await;
        for room in rooms {
            let (joined, replayed) = login_retrying(&mut back, room, &user).await;
            assert_eq!(
                joined.seq,
                history[room].1.len() as u64,
                "the log survived the restart"
            );
            assert_eq!(
                joined.epoch, history[room].0,
                "same epoch after the restart"
            );
            assert!(
                replayed.is_empty(),
                "{user} acked everything in {room}, yet got {:?} again",
                chat_tests::seqs(&replayed)
            );
            assert!(joined.recovered);
        }
        back.close().await;
    }
}
