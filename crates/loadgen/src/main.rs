//! `chat-loadgen`: drives a gateway (or nginx in front of a cluster) with real WebSocket clients.
//!
//! Modes:
//! - `fanout`: `--clients` connections spread over `--rooms` rooms; `--posters` of them post at a
//!   total of `--rate` messages/s for `--secs`. Every received message's latency (post time is
//!   carried in the content) goes into an HDR histogram; per-room seq continuity is checked on
//!   every receiver, so a run also reports gaps and reorders.
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

use chat_protocol::ServerFrame;
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Fanout,
    Idle,
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
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

async fn connect_and_login(args: &Args, i: usize) -> Result<(Socket, String), String> {
    // Client i is member i / rooms of room i % rooms: alternate nodes within each room.
    let url = &args.url[(i / args.rooms.max(1)) % args.url.len()];
    let mut ws = connect(args, i, url).await?;
    let room = format!("{}-{}", args.room_prefix, i % args.rooms.max(1));
    let login = json!({"event":"login","roomId":room,"userId":format!("u{i}"),"userName":format!("user {i}")});
    ws.send(Message::text(login.to_string()))
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
                    return Ok((ws, room));
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

async fn open_all(args: &Args) -> Vec<(Socket, String)> {
    let mut sockets = Vec::with_capacity(args.clients);
    // Open in small concurrent batches: fast, without a SYN flood on the listener.
    for start in (0..args.clients).step_by(100) {
        let end = (start + 100).min(args.clients);
        let batch =
            futures_util::future::join_all((start..end).map(|i| connect_and_login(args, i))).await;
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

async fn fanout(args: &Args, secs: u64) {
    let started = Instant::now();
    let sockets = open_all(args).await;
    // The window is steady traffic only: joins before it, disconnects after it are not counted.
    let cpu_before: Option<u64> = args.pid.iter().map(|p| cpu_ticks(*p)).sum();
    let redis_before = args.redis_pid.and_then(cpu_ticks);
    if let Some(port) = args.redis_port {
        let _ = redis_inline(port, "CONFIG RESETSTAT").await;
    }
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
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let drain_until = stop_at + Duration::from_secs(3);
    // Snapshot the processes just before the clients start closing.
    let snapshot = {
        let pids = args.pid.clone();
        let (redis_pid, redis_port) = (args.redis_pid, args.redis_port);
        tokio::spawn(async move {
            tokio::time::sleep_until((drain_until - Duration::from_millis(200)).into()).await;
            let gateways: Option<u64> = pids.iter().map(|p| cpu_ticks(*p)).sum();
            let redis = redis_pid.and_then(cpu_ticks);
            let stats = match redis_port {
                Some(port) => redis_inline(port, "INFO commandstats").await.ok(),
                None => None,
            };
            (gateways, redis, stats)
        })
    };
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
    for (i, (ws, room)) in sockets.into_iter().enumerate() {
        let totals = totals.clone();
        let histogram = histogram.clone();
        let posts = i < posters;
        let filler = filler.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut last_seq: HashMap<String, u64> = HashMap::new();
            let mut unacked = 0u64;
            let mut tick = tokio::time::interval(per_poster_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick(), if posts && Instant::now() < stop_at => {
                        let content = format!("{} {filler}", now_micros());
                        let frame = json!({"event":"message","roomId":room,"content":content.trim_end()});
                        if sink.send(Message::text(frame.to_string())).await.is_err() { break; }
                        totals.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = tokio::time::sleep_until(drain_until.into()) => break,
                    msg = stream.next() => match msg {
                        Some(Ok(message)) => match text_of(message).map(|(text, wire)| (ServerFrame::decode(&text), wire)) {
                            None => {}
                            Some((Ok(ServerFrame::Message(m)), wire)) => {
                                totals.wire_bytes.fetch_add(wire as u64, Ordering::Relaxed);
                                let sent_at = m.content.split(' ').next().unwrap_or_default();
                                if let Ok(sent_at) = sent_at.parse::<u64>() {
                                    let _ = local.record(now_micros().saturating_sub(sent_at).max(1));
                                }
                                let room = m.room_id.map(|r| r.to_string()).unwrap_or_default();
                                let last = last_seq.entry(room.clone()).or_insert(m.seq.saturating_sub(1));
                                if m.seq != *last + 1 { totals.gaps.fetch_add(1, Ordering::Relaxed); }
                                *last = m.seq;
                                totals.received.fetch_add(1, Ordering::Relaxed);
                                unacked += 1;
                                if ack_every > 0 && unacked >= ack_every {
                                    unacked = 0;
                                    let ack = json!({"event":"ack","roomId":room,"seq":m.seq,"epoch":m.epoch});
                                    if sink.send(Message::text(ack.to_string())).await.is_err() { break; }
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
    let (cpu_after, redis_after, redis_stats) = snapshot.await.unwrap_or((None, None, None));
    let h = histogram.lock().await;
    let sent = totals.sent.load(Ordering::Relaxed);
    let received = totals.received.load(Ordering::Relaxed);
    let per_room = args.clients as f64 / args.rooms.max(1) as f64;
    println!(
        "mode=fanout clients={} rooms={} posters={} rate={}/s secs={} ack_every={}",
        args.clients, args.rooms, posters, args.rate, secs, args.ack_every
    );
    println!(
        "sent={sent} received={received} expected~={:.0} gaps={} errors={}",
        sent as f64 * per_room,
        totals.gaps.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed)
    );
    println!("deliveries/s={:.0}", received as f64 / secs as f64);
    println!(
        "deflate={} content_bytes={} wire_bytes_per_delivery={:.1}",
        args.deflate,
        args.content_bytes,
        totals.wire_bytes.load(Ordering::Relaxed) as f64 / received.max(1) as f64
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        // /proc reports clock ticks; USER_HZ is 100 on Linux.
        let cpu_ms = after.saturating_sub(before) * 10;
        println!(
            "gateway_cpu_ms={cpu_ms} cpu_us_per_delivery={:.2}",
            cpu_ms as f64 * 1000.0 / received.max(1) as f64
        );
    }
    if let (Some(before), Some(after)) = (redis_before, redis_after) {
        let cpu_ms = after.saturating_sub(before) * 10;
        println!(
            "redis_cpu_ms={cpu_ms} redis_cpu_us_per_post={:.1}",
            cpu_ms as f64 * 1000.0 / sent.max(1) as f64
        );
    }
    if let Some(stats) = redis_stats {
        // `cmdstat_NAME:calls=N,usec=U,usec_per_call=X,...`
        for line in stats.lines().filter_map(|l| l.strip_prefix("cmdstat_")) {
            let Some((name, fields)) = line.split_once(':') else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            println!(
                "  redis {name:<20} per_post={:6.2} usec_per_call={:6.2}",
                field("calls=") / sent.max(1) as f64,
                field("usec_per_call=")
            );
        }
    }
    println!(
        "latency_ms p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2}",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.90) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
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

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
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
