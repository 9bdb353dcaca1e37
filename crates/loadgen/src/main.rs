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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_and_login(args: &Args, i: usize) -> Result<(Socket, String), String> {
    // Client i is member i / rooms of room i % rooms: alternate nodes within each room.
    let url = &args.url[(i / args.rooms.max(1)) % args.url.len()];
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
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
            Some(Ok(Message::Text(t))) => {
                if let Ok(ServerFrame::Joined(_)) = ServerFrame::decode(t.as_str()) {
                    return Ok((ws, room));
                }
                if let Ok(ServerFrame::Error(e)) = ServerFrame::decode(t.as_str()) {
                    return Err(format!("login refused: {} {}", e.code, e.message));
                }
            }
            Some(Ok(_)) => {}
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
    let cpu_before: Option<u64> = args.pid.iter().map(|p| cpu_ticks(*p)).sum();
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
    let posters = args.posters.min(sockets.len()).max(1);
    let ack_every = args.ack_every;
    let per_poster_interval = Duration::from_secs_f64(posters as f64 / args.rate.max(1) as f64);

    let mut tasks = Vec::new();
    for (i, (ws, room)) in sockets.into_iter().enumerate() {
        let totals = totals.clone();
        let histogram = histogram.clone();
        let posts = i < posters;
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
                        let frame = json!({"event":"message","roomId":room,"content":now_micros().to_string()});
                        if sink.send(Message::text(frame.to_string())).await.is_err() { break; }
                        totals.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = tokio::time::sleep_until(drain_until.into()) => break,
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Text(t))) => match ServerFrame::decode(t.as_str()) {
                            Ok(ServerFrame::Message(m)) => {
                                if let Ok(sent_at) = m.content.parse::<u64>() {
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
                            Ok(ServerFrame::Error(_)) => { totals.errors.fetch_add(1, Ordering::Relaxed); }
                            _ => {}
                        },
                        Some(Ok(_)) => {}
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
    let cpu_after: Option<u64> = args.pid.iter().map(|p| cpu_ticks(*p)).sum();
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
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        // /proc reports clock ticks; USER_HZ is 100 on Linux.
        let cpu_ms = after.saturating_sub(before) * 10;
        println!(
            "gateway_cpu_ms={cpu_ms} cpu_us_per_delivery={:.2}",
            cpu_ms as f64 * 1000.0 / received.max(1) as f64
        );
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
    tokio::time::sleep(Duration::from_secs(secs.min(5))).await;
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
