//! `chat-loadgen`: drives a gateway (or nginx in front of a cluster) with real WebSocket clients.
//!
//! Modes:
//! - `fanout`: `--clients` connections spread over `--rooms` rooms; `--posters` of them post at a
//!   total of `--rate` messages/s for `--warmup` + `--secs`. Only the last `--secs` are counted:
//!   posts sent in that window and their deliveries, wherever they arrive. Every counted
//!   delivery's latency (post time is carried in the content) goes into an HDR histogram;
//!   per-room seq continuity is checked on every receiver, so a run also reports gaps and
//!   reorders. `--offline-members N` first gives every room N members who joined and went
//!   offline (what a post costs must not grow with them). `--json` prints one JSON object, the
//!   shape `bench/peers/loadclient.js` also prints, so `bench/compare.sh` can tabulate both.
//! - `idle`: opens `--clients` connections that log in and stay silent, and reports the gateway's
//!   resident memory per connection (`--pid`, read from /proc).
//!
//! `--deflate` offers permessage-deflate (as browsers do) and reads compressed frames; fan-out
//! runs report the bytes received per delivery (frame headers included) either way.
//! Connections are spread over source addresses 127.0.0.1.. (`--sources`): one address has some
//! 28k ephemeral ports towards one listener.
//!
//! Targets must be loopback addresses; runs are bounded by `--secs` and `--clients`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_protocol::{
    AckStream, ClientFrame, LoginRequest, PostRequest, RoomId, ServerFrame, Target, UserId,
};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Load generator for the chat cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "fanout")]
    mode: Mode,
    /// Comma-separated WebSocket URLs. Within each room, successive members go to successive
    /// URLs, so a room's poster and its subscribers land on different nodes.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", value_delimiter = ',')]
    url: Vec<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Rooms the clients are spread over.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Clients that post (fanout mode).
    #[arg(long, default_value_t = 10)]
    posters: usize,
    /// Total posts per second over all posters (fanout mode).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Measured duration in seconds (at most 600).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Gateway process ids (repeat for a cluster): idle mode reads their memory, fan-out mode their
    /// CPU time, from /proc.
    #[arg(long)]
    pid: Vec<u32>,
    /// Prefix of room ids, so runs do not share rooms.
    #[arg(long, default_value = "bench")]
    room_prefix: String,
    /// Receivers ack every K-th message they get (cumulative `ack`); 0 = never ack.
    #[arg(long, default_value_t = 0)]
    ack_every: u64,
    /// A local Redis server's process id: its CPU over the measured window is reported per post.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// That Redis's port on 127.0.0.1: its command statistics are reset when the window opens and
    /// reported per post when it closes.
    #[arg(long)]
    redis_port: Option<u16>,
    /// Offer permessage-deflate and inflate the compressed frames received.
    #[arg(long)]
    deflate: bool,
    /// Bytes of `content` per post (fan-out mode): the send time, then chat-like filler text.
    #[arg(long, default_value_t = 0)]
    content_bytes: usize,
    /// Source addresses to spread connections over: 127.0.0.1 to 127.0.0.N (127.0.0.0/8 targets
    /// only). 0: one per 20,000 connections.
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Seconds of traffic before the measured window opens (fanout mode): caches, pools and the
    /// kernel's buffers settle, and nothing sent before the window is counted.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Print one JSON object (counts, latency percentiles, CPU per delivery and per post, the
    /// load generator's own CPU) instead of text lines.
    #[arg(long)]
    json: bool,
    /// Before the run, log this many further users into every room and disconnect them, so each
    /// room also has that many offline members (fanout mode).
    #[arg(long, default_value_t = 0)]
    offline_members: usize,
    /// Seconds between progress lines on stderr (fanout mode); 0 = none.
    #[arg(long, default_value_t = 5)]
    progress: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Fanout,
    Idle,
}

/// Counters of the measured window (errors: over the whole run).
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    /// Deliveries the window's posts should make: each post counts its room's size (the poster
    /// gets its own post too).
    expected: AtomicU64,
    received: AtomicU64,
    /// Bytes of message frames received, headers included (compressed size when compressed).
    wire_bytes: AtomicU64,
    gaps: AtomicU64,
    errors: AtomicU64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn check_target(url: &str) -> Result<(), String> {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if host == "localhost" || host.starts_with("127.") || host == "[" || url.contains("[::1]") {
        Ok(())
    } else {
        Err(format!(
            "refusing to load {url}: only loopback targets (127.0.0.0/8, localhost, [::1])"
        ))
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    for url in &args.url {
        if let Err(e) = check_target(url) {
            eprintln!("chat-loadgen: {e}");
            std::process::exit(2);
        }
    }
    let secs = args.secs.min(600);
    match args.mode {
        Mode::Fanout => fanout(&args, secs).await,
        Mode::Idle => idle(&args, secs).await,
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Inflates a permessage-deflate payload (no context takeover, the gateway's only mode).
fn inflate(payload: &[u8]) -> Option<String> {
    let mut data = payload.to_vec();
    data.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    // Server frames are at most a history page; bounded all the same.
    let mut out = Vec::with_capacity(1 << 20);
    flate2::Decompress::new(false)
        .decompress_vec(&data, &mut out, flate2::FlushDecompress::Sync)
        .ok()?;
    String::from_utf8(out).ok()
}

/// A received text frame (inflated if it came compressed) and its size on the wire.
fn text_of(message: Message) -> Option<(String, usize)> {
    let (text, payload_len) = match message {
        Message::Text(t) => {
            let len = t.len();
            (t.as_str().to_owned(), len)
        }
        Message::Frame(f) if f.header().rsv1 => (inflate(f.payload())?, f.payload().len()),
        _ => return None,
    };
    // Server frames are unmasked: 2 header bytes, 4 more past 125 bytes, 10 past 64 KiB.
    let header = match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    Some((text, payload_len + header))
}

async fn connect(args: &Args, i: usize, url: &str) -> Result<Socket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let host_port = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("bad url {url}"))?;
    let target: std::net::SocketAddr = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| format!("resolve {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {url}: no address"))?;
    let sources = match args.sources {
        0 => args.clients.div_ceil(20_000).max(1),
        n => n.min(254),
    };
    let tcp = if sources > 1 && target.ip().to_string().starts_with("127.") {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        let last = u8::try_from(1 + i % sources).unwrap_or(1);
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
            .map_err(|e| format!("bind 127.0.0.{last}: {e}"))?;
        socket.connect(target).await
    } else {
        tokio::net::TcpStream::connect(target).await
    }
    .map_err(|e| format!("connect {url}: {e}"))?;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if args.deflate {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits"
                .parse()
                .map_err(|_| "header")?,
        );
    }
    let config = WebSocketConfig::default().accept_compressed_frames(args.deflate);
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake {url}: {e}"))?;
    if args.deflate && response.headers().get("sec-websocket-extensions").is_none() {
        return Err(format!("{url} did not accept permessage-deflate"));
    }
    Ok(ws)
}

/// The URL, room and size of client `i`'s room. Client i is member i / rooms of room i % rooms,
/// and successive members of a room go to successive URLs, so a room spans the nodes.
fn placement(args: &Args, i: usize) -> (&str, String, u64) {
    let rooms = args.rooms.max(1);
    let url = &args.url[(i / rooms) % args.url.len()];
    let room = format!("{}-{}", args.room_prefix, i % rooms);
    let size = args.clients / rooms + usize::from(i % rooms < args.clients % rooms);
    (url.as_str(), room, size as u64)
}

/// A generated room id (`--room-prefix` and a number), checked as the server will.
fn room_id(room: &str) -> Result<RoomId, String> {
    RoomId::new(room).map_err(|e| format!("room id `{room}` (--room-prefix): {e}"))
}

async fn connect_and_login(
    args: &Args,
    i: usize,
    url: &str,
    room: &RoomId,
    user: &str,
) -> Result<Socket, String> {
    let user_id = UserId::new(user).map_err(|e| format!("user id `{user}`: {e}"))?;
    let mut ws = connect(args, i, url).await?;
    let login = ClientFrame::Login(LoginRequest {
        room_id: room.clone(),
        user_id,
        user_name: format!("user {user}"),
        room_name: None,
        since: None,
        epoch: None,
    });
    ws.send(Message::text(login.encode()))
        .await
        .map_err(|e| e.to_string())?;
    // Wait for `joined` so every client is in its room before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .map_err(|_| "no joined in 30 s".to_owned())?;
        match next {
            Some(Ok(message)) => {
                let Some((text, _)) = text_of(message) else {
                    continue;
                };
                if let Ok(ServerFrame::Joined(_)) = ServerFrame::decode(&text) {
                    return Ok(ws);
                }
                if let Ok(ServerFrame::Error(e)) = ServerFrame::decode(&text) {
                    return Err(format!("login refused: {} {}", e.code, e.message));
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed before joined".into()),
        }
    }
}

/// A client of the run: its socket, room id and room size.
type Client = (Socket, RoomId, u64);

async fn open_all(args: &Args) -> Vec<Client> {
    let mut sockets = Vec::with_capacity(args.clients);
    // Open in small concurrent batches: fast, without a SYN flood on the listener.
    for start in (0..args.clients).step_by(100) {
        let end = (start + 100).min(args.clients);
        let batch = futures_util::future::join_all((start..end).map(|i| async move {
            let (url, room, size) = placement(args, i);
            let room = room_id(&room)?;
            let ws = connect_and_login(args, i, url, &room, &format!("u{i}")).await?;
            Ok::<_, String>((ws, room, size))
        }))
        .await;
        for result in batch {
            match result {
                Ok(s) => sockets.push(s),
                Err(e) => {
                    eprintln!("chat-loadgen: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    sockets
}

/// Gives every room `--offline-members` members who are offline: each logs in once (joining
/// for good) and disconnects. Their user ids (`off<j>`) never collide with the run's (`u<i>`).
async fn add_offline_members(args: &Args) {
    let rooms = args.rooms.max(1);
    let total = args.offline_members * rooms;
    let started = Instant::now();
    for start in (0..total).step_by(100) {
        let end = (start + 100).min(total);
        let batch = futures_util::future::join_all((start..end).map(|j| async move {
            let url = &args.url[j % args.url.len()];
            let room = room_id(&format!("{}-{}", args.room_prefix, j % rooms))?;
            let mut ws = connect_and_login(args, j, url, &room, &format!("off{j}")).await?;
            let _ = ws.close(None).await;
            Ok::<_, String>(())
        }))
        .await;
        if let Some(Err(e)) = batch.into_iter().find(Result::is_err) {
            eprintln!("chat-loadgen: offline member: {e}");
            std::process::exit(1);
        }
    }
    // Closes are processed after the socket goes; let the gateways finish the "offline" work
    // so it does not land in the measured window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "{total} offline members added to {rooms} rooms in {:.1?}",
        started.elapsed()
    );
}

/// CPU times (clock ticks) of the processes a run reports on, taken at one instant.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    servers: Option<u64>,
    redis: Option<u64>,
    own: Option<u64>,
    at: Instant,
}

fn cpu_snapshot(pids: &[u32], redis_pid: Option<u32>) -> CpuSnapshot {
    CpuSnapshot {
        servers: pids.iter().map(|p| cpu_ticks(&p.to_string())).sum(),
        redis: redis_pid.and_then(|p| cpu_ticks(&p.to_string())),
        own: cpu_ticks("self"),
        at: Instant::now(),
    }
}

/// Milliseconds of CPU between two tick readings (USER_HZ is 100 on Linux).
fn cpu_ms(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?) * 10)
}

async fn fanout(args: &Args, secs: u64) {
    if args.offline_members > 0 {
        add_offline_members(args).await;
    }
    let started = Instant::now();
    let sockets = open_all(args).await;
    eprintln!(
        "{} clients joined {} rooms in {:.1?}",
        sockets.len(),
        args.rooms,
        started.elapsed()
    );
    let totals = Arc::new(Totals::default());
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    // Traffic starts now; the window opens after the warm-up and is steady traffic only (joins
    // before it and disconnects after it are not counted). A delivery counts when its post was
    // sent inside the window, judged by the post time it carries.
    let warmup = Duration::from_secs(args.warmup.min(600));
    let traffic_start = Instant::now();
    let window_start = traffic_start + warmup;
    let window_start_micros = now_micros() + warmup.as_micros() as u64;
    let stop_at = window_start + Duration::from_secs(secs);
    let drain_until = stop_at + Duration::from_secs(3);
    let opened = {
        let pids = args.pid.clone();
        let (redis_pid, redis_port) = (args.redis_pid, args.redis_port);
        tokio::spawn(async move {
            tokio::time::sleep_until(window_start.into()).await;
            if let Some(port) = redis_port {
                let _ = redis_inline(port, "CONFIG RESETSTAT").await;
            }
            cpu_snapshot(&pids, redis_pid)
        })
    };
    // Closed just before the clients start closing: the window's posts have been delivered.
    let closed = {
        let pids = args.pid.clone();
        let (redis_pid, redis_port) = (args.redis_pid, args.redis_port);
        tokio::spawn(async move {
            tokio::time::sleep_until((drain_until - Duration::from_millis(200)).into()).await;
            let snapshot = cpu_snapshot(&pids, redis_pid);
            let stats = match redis_port {
                Some(port) => redis_inline(port, "INFO commandstats").await.ok(),
                None => None,
            };
            (snapshot, stats)
        })
    };
    // Long runs say how they are going, so a stalled target or generator shows before the end.
    let progress = (args.progress > 0).then(|| {
        let totals = totals.clone();
        let every = Duration::from_secs(args.progress);
        tokio::spawn(async move {
            let begun = Instant::now();
            let mut tick = tokio::time::interval_at((begun + every).into(), every);
            loop {
                tick.tick().await;
                let phase = if Instant::now() < window_start {
                    "warm-up"
                } else if Instant::now() < stop_at {
                    "window"
                } else {
                    "drain"
                };
                eprintln!(
                    "[{:5.1}s {phase}] sent={} received={}",
                    begun.elapsed().as_secs_f64(),
                    totals.sent.load(Ordering::Relaxed),
                    totals.received.load(Ordering::Relaxed)
                );
            }
        })
    });
    let posters = args.posters.min(sockets.len()).max(1);
    let ack_every = args.ack_every;
    let per_poster_interval = Duration::from_secs_f64(posters as f64 / args.rate.max(1) as f64);
    // Chat-like filler (words, spaces, some repetition) after the send time, to the asked size.
    let filler: Arc<str> = {
        let words = "hey did you see the game last night it was great we should meet up later ";
        let mut f = String::new();
        while f.len() < args.content_bytes {
            f.push_str(words);
        }
        f.truncate(args.content_bytes.saturating_sub(17));
        Arc::from(f)
    };

    let mut tasks = Vec::new();
    for (i, (ws, room, room_size)) in sockets.into_iter().enumerate() {
        let totals = totals.clone();
        let histogram = histogram.clone();
        let posts = i < posters;
        let filler = filler.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut last_seq: HashMap<String, u64> = HashMap::new();
            let mut unacked = 0u64;
            // Posters start staggered over one interval, so the total rate is spread evenly in
            // time. Started together, every poster fired at the same instant: bursts of
            // `--posters` posts once per interval, whose queueing then showed up as latency.
            let offset = per_poster_interval.mul_f64(i as f64 / posters as f64);
            let mut tick = tokio::time::interval_at((traffic_start + offset).into(), per_poster_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick(), if posts && Instant::now() < stop_at => {
                        // The guard above was checked when this select began, which may have
                        // been before the window closed: check again now that the tick fired.
                        if Instant::now() >= stop_at { continue; }
                        // Counted by the post time it carries, exactly as its deliveries are.
                        let at = now_micros();
                        let content = format!("{at} {filler}");
                        let frame = ClientFrame::Message(PostRequest {
                            target: Target::Room(room.clone()),
                            content: content.trim_end().to_owned(),
                            client_msg_id: None,
                        });
                        let counted = at >= window_start_micros;
                        if sink.send(Message::text(frame.encode())).await.is_err() { break; }
                        if counted {
                            totals.sent.fetch_add(1, Ordering::Relaxed);
                            totals.expected.fetch_add(room_size, Ordering::Relaxed);
                        }
                    }
                    _ = tokio::time::sleep_until(drain_until.into()) => break,
                    msg = stream.next() => match msg {
                        Some(Ok(message)) => match text_of(message).map(|(text, wire)| (ServerFrame::decode(&text), wire)) {
                            None => {}
                            Some((Ok(ServerFrame::Message(m)), wire)) => {
                                let sent_at = m.content.split(' ').next().and_then(|t| t.parse::<u64>().ok());
                                let counted = sent_at.is_some_and(|t| t >= window_start_micros);
                                if counted { totals.wire_bytes.fetch_add(wire as u64, Ordering::Relaxed); }
                                if let (Some(sent_at), true) = (sent_at, counted) {
                                    let _ = local.record(now_micros().saturating_sub(sent_at).max(1));
                                }
                                let room_id = m.room_id;
                                let room = room_id.as_ref().map(|r| r.to_string()).unwrap_or_default();
                                // Continuity is tracked through the warm-up too, so the window's
                                // first message is checked against the one before it.
                                let last = last_seq.entry(room.clone()).or_insert(m.seq.saturating_sub(1));
                                if m.seq != *last + 1 && counted { totals.gaps.fetch_add(1, Ordering::Relaxed); }
                                *last = m.seq;
                                if counted { totals.received.fetch_add(1, Ordering::Relaxed); }
                                unacked += 1;
                                if ack_every > 0 && unacked >= ack_every {
                                    unacked = 0;
                                    if let Some(room_id) = room_id {
                                        let ack = ClientFrame::Ack {
                                            stream: AckStream::Room(room_id),
                                            seq: m.seq,
                                            epoch: Some(m.epoch.clone()),
                                        };
                                        if sink.send(Message::text(ack.encode())).await.is_err() { break; }
                                    }
                                }
                            }
                            Some((Ok(ServerFrame::Error(_)), _)) => { totals.errors.fetch_add(1, Ordering::Relaxed); }
                            Some(_) => {}
                        },
                        _ => { totals.errors.fetch_add(1, Ordering::Relaxed); break; }
                    }
                }
            }
            let _ = sink.close().await;
            histogram.lock().await.add(&local).ok();
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let opened = opened.await.expect("window-open snapshot");
    let (closed, redis_stats) = closed.await.expect("window-close snapshot");
    let h = histogram.lock().await;
    let report = Report {
        sent: totals.sent.load(Ordering::Relaxed),
        expected: totals.expected.load(Ordering::Relaxed),
        received: totals.received.load(Ordering::Relaxed),
        wire_bytes: totals.wire_bytes.load(Ordering::Relaxed),
        gaps: totals.gaps.load(Ordering::Relaxed),
        errors: totals.errors.load(Ordering::Relaxed),
        window_secs: (closed.at - opened.at).as_secs_f64(),
        server_cpu_ms: cpu_ms(opened.servers, closed.servers),
        redis_cpu_ms: cpu_ms(opened.redis, closed.redis),
        own_cpu_ms: cpu_ms(opened.own, closed.own),
        redis_commands: redis_stats.as_deref().map(commandstats).unwrap_or_default(),
        latency_ms: [0.50, 0.90, 0.99, 0.999].map(|q| h.value_at_quantile(q) as f64 / 1000.0),
        max_ms: h.max() as f64 / 1000.0,
    };
    if args.json {
        println!("{}", report.json(args, posters, secs));
    } else {
        report.print(args, posters, secs);
    }
}

/// What a fan-out run measured over its window.
struct Report {
    sent: u64,
    expected: u64,
    received: u64,
    /// Bytes of the counted deliveries as they came off the wire (compressed or not).
    wire_bytes: u64,
    gaps: u64,
    errors: u64,
    /// From the window's opening snapshot to its closing one (counted seconds plus the drain).
    /// CPU is measured over all of it, so the last posts' deliveries are paid for; the load
    /// generator's CPU share is given per counted second, when nearly all of it is spent.
    window_secs: f64,
    server_cpu_ms: Option<u64>,
    redis_cpu_ms: Option<u64>,
    own_cpu_ms: Option<u64>,
    /// (command, calls, usec_per_call) from `INFO commandstats`.
    redis_commands: Vec<(String, f64, f64)>,
    /// p50, p90, p99, p99.9.
    latency_ms: [f64; 4],
    max_ms: f64,
}

impl Report {
    fn per_delivery_us(&self, cpu_ms: Option<u64>) -> Option<f64> {
        cpu_ms.map(|ms| ms as f64 * 1000.0 / self.received.max(1) as f64)
    }

    fn per_post_us(&self, cpu_ms: Option<u64>) -> Option<f64> {
        cpu_ms.map(|ms| ms as f64 * 1000.0 / self.sent.max(1) as f64)
    }

    /// The shape `bench/peers/loadclient.js` prints too; `bench/compare.sh` reads both.
    fn json(&self, args: &Args, posters: usize, secs: u64) -> serde_json::Value {
        let [p50, p90, p99, p999] = self.latency_ms;
        let commands: serde_json::Map<String, serde_json::Value> = self
            .redis_commands
            .iter()
            .map(|(name, calls, usec)| {
                let per_post = calls / self.sent.max(1) as f64;
                (
                    name.clone(),
                    json!({"per_post": per_post, "usec_per_call": usec}),
                )
            })
            .collect();
        json!({
            "tool": "chat-loadgen",
            "protocol": "chat-v1",
            "urls": args.url,
            "clients": args.clients,
            "rooms": args.rooms,
            "posters": posters,
            "rate": args.rate,
            "secs": secs,
            "warmup": args.warmup,
            "ack_every": args.ack_every,
            "offline_members": args.offline_members,
            "deflate": args.deflate,
            "content_bytes": args.content_bytes,
            "wire_bytes_per_delivery": self.wire_bytes as f64 / self.received.max(1) as f64,
            "sent": self.sent,
            "expected": self.expected,
            "received": self.received,
            "lost": self.expected.saturating_sub(self.received),
            "gaps": self.gaps,
            "errors": self.errors,
            "deliveries_per_sec": self.received as f64 / secs.max(1) as f64,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": self.max_ms},
            "window_secs": self.window_secs,
            "server_cpu_ms": self.server_cpu_ms,
            "server_cpu_us_per_delivery": self.per_delivery_us(self.server_cpu_ms),
            "redis_cpu_ms": self.redis_cpu_ms,
            "redis_cpu_us_per_post": self.per_post_us(self.redis_cpu_ms),
            "redis_commands": commands,
            "loadgen_cpu_ms": self.own_cpu_ms,
            "loadgen_cpu_pct": self.own_cpu_ms.map(|ms| ms as f64 / 10.0 / secs.max(1) as f64),
        })
    }

    fn print(&self, args: &Args, posters: usize, secs: u64) {
        println!(
            "mode=fanout clients={} rooms={} posters={} rate={}/s secs={} warmup={} ack_every={} offline_members={}",
            args.clients,
            args.rooms,
            posters,
            args.rate,
            secs,
            args.warmup,
            args.ack_every,
            args.offline_members
        );
        println!(
            "sent={} received={} expected={} gaps={} errors={}",
            self.sent, self.received, self.expected, self.gaps, self.errors
        );
        println!(
            "deliveries/s={:.0}",
            self.received as f64 / secs.max(1) as f64
        );
        println!(
            "deflate={} content_bytes={} wire_bytes_per_delivery={:.1}",
            args.deflate,
            args.content_bytes,
            self.wire_bytes as f64 / self.received.max(1) as f64
        );
        if let (Some(ms), Some(us)) = (self.server_cpu_ms, self.per_delivery_us(self.server_cpu_ms))
        {
            println!("gateway_cpu_ms={ms} cpu_us_per_delivery={us:.2}");
        }
        if let (Some(ms), Some(us)) = (self.redis_cpu_ms, self.per_post_us(self.redis_cpu_ms)) {
            println!("redis_cpu_ms={ms} redis_cpu_us_per_post={us:.1}");
        }
        for (name, calls, usec) in &self.redis_commands {
            println!(
                "  redis {name:<20} per_post={:6.2} usec_per_call={usec:6.2}",
                calls / self.sent.max(1) as f64
            );
        }
        if let Some(ms) = self.own_cpu_ms {
            println!(
                "loadgen_cpu_ms={ms} loadgen_cpu_pct={:.0}",
                ms as f64 / 10.0 / secs.max(1) as f64
            );
        }
        let [p50, p90, p99, p999] = self.latency_ms;
        println!(
            "latency_ms p50={p50:.2} p90={p90:.2} p99={p99:.2} p99.9={p999:.2} max={:.2}",
            self.max_ms
        );
    }
}

/// Parses `INFO commandstats` (`cmdstat_NAME:calls=N,usec=U,usec_per_call=X,...`) into
/// (name, calls, usec_per_call).
fn commandstats(stats: &str) -> Vec<(String, f64, f64)> {
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, fields) = line.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            Some((name.to_owned(), field("calls="), field("usec_per_call=")))
        })
        .collect()
}

/// Sends one inline command to a local Redis and returns its reply text (a status line or a bulk
/// string; enough for RESETSTAT and INFO, which is all the load generator asks).
async fn redis_inline(port: u16, command: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(format!("{command}\r\n").as_bytes()).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("redis did not answer"))??;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        // A status reply is one line; a bulk reply announces its length on the first line.
        if let Some((head, body)) = text.split_once("\r\n") {
            match head.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                Some(len) if body.len() >= len => return Ok(body[..len].to_owned()),
                Some(_) => continue,
                None => return Ok(head.to_owned()),
            }
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// utime + stime of a process (`pid` is a number or `self`), in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing parenthesis are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn idle(args: &Args, secs: u64) {
    let before: Option<u64> = args.pid.iter().map(|p| rss_kib(*p)).sum();
    let sockets = open_all(args).await;
    // Held for --secs (at most 600), so a caller can measure the servers while they are idle.
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after: Option<u64> = args.pid.iter().map(|p| rss_kib(*p)).sum();
    println!("mode=idle clients={} rooms={}", sockets.len(), args.rooms);
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "gateway_rss_kib before={b} after={a} per_connection_kib={:.2}",
            (a.saturating_sub(b)) as f64 / sockets.len().max(1) as f64
        ),
        _ => println!("gateway_rss_kib unknown (pass --pid of each local gateway)"),
    }
    drop(sockets);
}
