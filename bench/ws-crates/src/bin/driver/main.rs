//! The load side of `bench/ws-crates`: connects to a relay (`relay --impl ..`) on 127.0.0.1 and
//! measures the relay process from `/proc/<pid>`.
//!
//! - `--mode idle --clients N [--secs S]`: N connections offering permessage-deflate; the relay's
//!   VmRSS before, once they are all open, and again after one 1 KiB post reached every one of
//!   them (so a crate that sets deflate state up on first use shows it) and S more seconds.
//! - `--mode fanout --clients K --rate R --secs S --content-bytes B`: K receivers and one sender
//!   (also a recipient: K+1 per post) posting R chat-like JSON posts a second for S seconds, with
//!   B bytes of varied text each; relay CPU (utime+stime from `/proc/<pid>/stat`) per delivery
//!   and bytes read off the sockets (frame headers included) per delivery, over the window from
//!   the first post until all deliveries arrived (or `--drain-secs` after the last post).
//!
//! Prints one `RESULT key=value ...` line for run.sh. Every connection offers
//! `permessage-deflate; client_max_window_bits`; the relay decides (`ours-plain` declines).

mod client;
mod text;

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, sleep, timeout};

use client::{Checker, Counters, Upgraded, connect, receive};
use text::Rng;

struct Args {
    mode: String,
    port: u16,
    pid: u32,
    label: String,
    clients: usize,
    rate: u64,
    secs: u64,
    content_bytes: usize,
    drain_secs: u64,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: String::new(),
        port: 0,
        pid: 0,
        label: "?".into(),
        clients: 100,
        rate: 200,
        secs: 10,
        content_bytes: 100,
        drain_secs: 5,
        concurrency: 200,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--mode" => args.mode = value.clone(),
            "--port" => args.port = u16::try_from(num()?).map_err(|_| "--port: too big")?,
            "--pid" => args.pid = u32::try_from(num()?).map_err(|_| "--pid: too big")?,
            "--label" => args.label = value.clone(),
            "--clients" => args.clients = num()? as usize,
            "--rate" => args.rate = num()?.max(1),
            "--secs" => args.secs = num()?,
            "--content-bytes" => args.content_bytes = num()? as usize,
            "--drain-secs" => args.drain_secs = num()?,
            "--concurrency" => args.concurrency = (num()? as usize).max(1),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.port == 0 || args.pid == 0 || !["idle", "fanout"].contains(&args.mode.as_str()) {
        return Err(
            "usage: driver --mode idle|fanout --port P --pid RELAY_PID [--label L] \
                    [--clients N] [--rate R] [--secs S] [--content-bytes B] [--drain-secs D] \
                    [--concurrency C]"
                .into(),
        );
    }
    Ok(args)
}

/// The relay's resident set, in KiB.
fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// The relay's CPU time (user + system, all threads), in seconds.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("bad stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other("bad stat field"))
    };
    // utime is field 14 and stime field 15 of the whole line.
    Ok((field(11)? + field(12)?) / ticks_per_sec)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Opens `n` connections, at most `concurrency` handshakes at a time.
async fn connect_many(addr: SocketAddr, n: usize, concurrency: usize) -> Vec<io::Result<Upgraded>> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        set.spawn(async move {
            let upgraded = timeout(Duration::from_secs(20), connect(addr))
                .await
                .unwrap_or_else(|_| Err(io::Error::other("upgrade timed out")));
            drop(permit);
            upgraded
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        out.push(joined.unwrap_or_else(|e| Err(io::Error::other(e))));
    }
    out
}

/// Starts counting what `up` receives; returns its write half.
fn spawn_receiver(
    up: Upgraded,
    counters: &Arc<Counters>,
    answer_pings: bool,
    checker: Option<Arc<Mutex<Checker>>>,
) -> Option<OwnedWriteHalf> {
    let (read, write): (OwnedReadHalf, OwnedWriteHalf) = up.stream.into_split();
    let counters = counters.clone();
    let (pongs, keep) = if answer_pings {
        (Some(write), None)
    } else {
        (None, Some(write))
    };
    tokio::spawn(receive(read, pongs, up.leftover, counters, checker));
    keep
}

/// `; ` and spaces out of an extensions header, so it stays one `key=value` token.
fn token(extensions: &Option<String>) -> String {
    match extensions {
        Some(e) => e.replace("; ", ";").replace(' ', "_"),
        None => "none".into(),
    }
}

/// Connects `n` receivers (the first one checked) and one sender, which also receives.
async fn open(
    args: &Args,
    addr: SocketAddr,
    n: usize,
    counters: &Arc<Counters>,
) -> Result<(OwnedWriteHalf, Arc<Mutex<Checker>>, Option<String>, usize), String> {
    let first = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let extensions = first.extensions.clone();
    let checker = Arc::new(Mutex::new(Checker::new(extensions.as_deref())));
    spawn_receiver(first, counters, true, Some(checker.clone()));
    let mut failed = 0;
    for up in connect_many(addr, n.saturating_sub(1), args.concurrency).await {
        match up {
            Ok(up) => {
                spawn_receiver(up, counters, true, None);
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("driver: a connection failed: {e}");
                }
                failed += 1;
            }
        }
    }
    let sender = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let write = spawn_receiver(sender, counters, false, None).ok_or("no sender half")?;
    Ok((write, checker, extensions, failed))
}

async fn idle(args: &Args, addr: SocketAddr) -> Result<(), String> {
    let counters = Arc::new(Counters::default());
    let rss0 = rss_kib(args.pid).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (mut sender, checker, extensions, failed) =
        open(args, addr, args.clients, &counters).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    sleep(Duration::from_secs(1)).await;
    let rss1 = rss_kib(args.pid).map_err(|e| e.to_string())?;
    let open_now = args.clients - failed + 1;
    let mut rng = Rng::new(1);
    let post = text::post(&mut rng, 1, client::now_us(), 1024);
    sender
        .write_all(&client::frame(0x1, post.as_bytes(), &mut rng))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters.deliveries.load(Ordering::Relaxed) < open_now as u64 && Instant::now() < deadline
    {
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_secs(args.secs)).await;
    let rss2 = rss_kib(args.pid).map_err(|e| e.to_string())?;
    let delivered = counters.deliveries.load(Ordering::Relaxed);
    let per = |rss: u64| (rss.saturating_sub(rss0) * 1024) as f64 / open_now as f64;
    let checked = checker.lock().map(|c| c.ok).unwrap_or(0);
    println!(
        "RESULT mode=idle impl={} clients={} failed={} connect_s={:.1} rss0_kib={} rss_open_kib={} \
         rss_after_post_kib={} per_conn_open_b={:.0} per_conn_after_post_b={:.0} delivered={} \
         checked_ok={} ext={}",
        args.label,
        args.clients,
        failed,
        connect_secs,
        rss0,
        rss1,
        rss2,
        per(rss1),
        per(rss2),
        delivered,
        checked,
        token(&extensions),
    );
    Ok(())
}

async fn fanout(args: &Args, addr: SocketAddr) -> Result<(), String> {
    let ticks = clock_ticks();
    let counters = Arc::new(Counters::default());
    let (mut sender, checker, extensions, failed) =
        open(args, addr, args.clients, &counters).await?;
    let recipients = (args.clients - failed + 1) as u64;
    sleep(Duration::from_secs(1)).await;

    let mut rng = Rng::new(42);
    let posts = args.rate * args.secs;
    let cpu0 = cpu_secs(args.pid, ticks).map_err(|e| e.to_string())?;
    let (d0, b0) = (
        counters.deliveries.load(Ordering::Relaxed),
        counters.bytes.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut json_bytes = 0u64;
    for seq in 0..posts {
        tick.tick().await;
        let post = text::post(&mut rng, seq, client::now_us(), args.content_bytes);
        json_bytes += post.len() as u64;
        sender
            .write_all(&client::frame(0x1, post.as_bytes(), &mut rng))
            .await
            .map_err(|e| format!("sending: {e}"))?;
    }
    let sent_secs = t0.elapsed().as_secs_f64();
    let expected = posts * recipients;
    let deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while counters.deliveries.load(Ordering::Relaxed) - d0 < expected && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(args.pid, ticks).map_err(|e| e.to_string())? - cpu0;
    let delivered = counters.deliveries.load(Ordering::Relaxed) - d0;
    let bytes = counters.bytes.load(Ordering::Relaxed) - b0;
    let (ok, bad, mut lat) = match checker.lock() {
        Ok(c) => (c.ok, c.bad, c.latencies_us.clone()),
        Err(_) => (0, 0, Vec::new()),
    };
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |&us| us as f64 / 1000.0)
    };
    let per_delivery = |x: f64| {
        if delivered == 0 {
            f64::NAN
        } else {
            x / delivered as f64
        }
    };
    println!(
        "RESULT mode=fanout impl={} content={} recipients={} failed={} posts={} json_bytes={:.0} \
         expected={} delivered={} delivered_pct={:.2} cpu_us_per_delivery={:.3} \
         wire_bytes_per_delivery={:.1} relay_cpu_s={:.2} window_s={:.2} send_s={:.2} \
         checked_ok={} checked_bad={} p50_ms={:.1} p99_ms={:.1} ext={}",
        args.label,
        args.content_bytes,
        recipients,
        failed,
        posts,
        json_bytes as f64 / posts.max(1) as f64,
        expected,
        delivered,
        100.0 * delivered as f64 / expected.max(1) as f64,
        per_delivery(cpu * 1e6),
        per_delivery(bytes as f64),
        cpu,
        window,
        sent_secs,
        ok,
        bad,
        pct(0.5),
        pct(0.99),
        token(&extensions),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("driver: {why}");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let run = match args.mode.as_str() {
        "idle" => idle(&args, addr).await,
        _ => fanout(&args, addr).await,
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("driver: {why}");
            ExitCode::FAILURE
        }
    }
}
