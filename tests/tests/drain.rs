//! Draining and rolling restarts: `deploy/local-cluster` (Redis, three gateways, nginx), steady
//! traffic through nginx, and every gateway restarted with SIGTERM one after another. Nothing is
//! lost: every client ends with every posted message exactly once after dedup, and nobody is
//! announced as gone for having moved to another node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_tests::chat_protocol::{LogoutReason, ServerFrame};
use chat_tests::local_cluster::{LocalCluster, status_of};
use chat_tests::serde_json::json;
use chat_tests::{http_get, send_signal, wait_until};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "roll";
const CLIENTS: usize = 6;
/// Each client posts this often.
const POST_EVERY: Duration = Duration::from_millis(250);

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Distinct seqs received in the room.
    received: BTreeSet<u64>,
    /// Messages received again (already had that seq): replays after reconnecting.
    duplicates: u64,
    /// Seqs of this client's own posts, from their `sent` receipts.
    posted: Vec<u64>,
    /// Longest time between two consecutive new messages.
    longest_gap: Duration,
    /// Reconnections.
    reconnects: u32,
    /// Longest time from losing a connection to being joined again.
    slowest_rejoin: Duration,
    /// Close codes received.
    closes: Vec<Option<u16>>,
    /// `logout` notices (reason `offline`) about the test's own users.
    spurious_logouts: Vec<String>,
}

impl Seen {
    /// The highest seq n such that 1..=n all arrived: where a reconnect resumes.
    fn contiguous(&self) -> u64 {
        let mut n = 0;
        for &seq in &self.received {
            if seq != n + 1 {
                break;
            }
            n = seq;
        }
        n
    }
}

/// One client: connects through nginx, posts every [`POST_EVERY`] until `stop`, reconnects with
/// `since` whenever it is closed, retries an unconfirmed post with the same `clientMsgId`, and
/// returns once it has every seq of `expected` (sent by the test after everyone stopped posting).
async fn client(
    url: String,
    index: usize,
    stop: Arc<AtomicBool>,
    done_posting: Arc<AtomicUsize>,
    mut expected: watch::Receiver<Option<BTreeSet<u64>>>,
    deadline: Instant,
) -> Seen {
    let user = format!("u{index}");
    let mut seen = Seen::default();
    let mut pending: Option<(String, String)> = None;
    let mut next_post = 0u32;
    let mut last_new = Instant::now();
    let mut reported_done = false;
    let mut lost_at: Option<Instant> = None;
    'connections: loop {
        assert!(
            Instant::now() < deadline,
            "{user}: out of time; seen {} messages",
            seen.received.len()
        );
        let ws = match tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            other => {
                // nginx answers 502 only if no gateway took the upgrade: retry shortly.
                eprintln!(
                    "{user}: connect failed: {}",
                    match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    }
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (mut tx, mut rx) = ws.split();
        let since = seen.contiguous();
        let mut login = json!({"event":"login","roomId":ROOM,"userId":user,"userName":user});
        if since > 0 {
            login["since"] = json!(since);
        }
        if tx.send(Message::text(login.to_string())).await.is_err() {
            continue;
        }
        let mut joined = false;
        let mut tick = tokio::time::interval(POST_EVERY);
        loop {
            // Done: every expected message is here and nothing of ours is unconfirmed.
            if !reported_done && pending.is_none() && stop.load(Ordering::Acquire) {
                reported_done = true;
                done_posting.fetch_add(1, Ordering::AcqRel);
            }
            let complete = expected
                .borrow()
                .as_ref()
                .is_some_and(|all| pending.is_none() && all.is_subset(&seen.received));
            if complete {
                let _ = tx.send(Message::Close(None)).await;
                return seen;
            }
            tokio::select! {
                _ = tick.tick() => {
                    if !joined {
                        continue;
                    }
                    if pending.is_none() && !stop.load(Ordering::Acquire) {
                        next_post += 1;
                        pending = Some((format!("{user}-{next_post}"), format!("{user} says {next_post}")));
                    }
                    let mut out = Vec::new();
                    if let Some((id, content)) = &pending {
                        // A retry after a reconnect repeats the clientMsgId: the server dedups.
                        out.push(json!({"event":"message","roomId":ROOM,"content":content,"clientMsgId":id}));
                    }
                    let contiguous = seen.contiguous();
                    if contiguous > 0 {
                        out.push(json!({"event":"ack","roomId":ROOM,"seq":contiguous}));
                    }
                    for frame in out {
                        if tx.send(Message::text(frame.to_string())).await.is_err() {
                            seen.reconnects += 1;
                            lost_at.get_or_insert_with(Instant::now);
                            continue 'connections;
                        }
                    }
                }
                _ = expected.changed() => {}
                incoming = rx.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            seen.closes.push(frame.map(|f| u16::from(f.code)));
                            seen.reconnects += 1;
                            lost_at.get_or_insert_with(Instant::now);
                            continue 'connections;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => {
                            seen.closes.push(None);
                            seen.reconnects += 1;
                            lost_at.get_or_insert_with(Instant::now);
                            continue 'connections;
                        }
                    };
                    let frame = ServerFrame::decode(text.as_str())
                        .unwrap_or_else(|e| panic!("{user}: undecodable frame ({e}): {text}"));
                    match frame {
                        ServerFrame::Joined(_) => {
                            joined = true;
                            if let Some(at) = lost_at.take() {
                                seen.slowest_rejoin = seen.slowest_rejoin.max(at.elapsed());
                            }
                            // Post (or retry) at once rather than a tick later.
                            tick.reset_immediately();
                        }
                        ServerFrame::Message(m) if m.room_id.as_ref().is_some_and(|r| r.as_str() == ROOM) => {
                            if seen.received.insert(m.seq) {
                                let now = Instant::now();
                                seen.longest_gap = seen.longest_gap.max(now - last_new);
                                last_new = now;
                            } else {
                                seen.duplicates += 1;
                            }
                        }
                        ServerFrame::Sent(s)
                            if pending.as_ref().is_some_and(|(id, _)| {
                                s.client_msg_id.as_deref() == Some(id.as_str())
                            }) =>
                        {
                            seen.posted.push(s.seq);
                            pending = None;
                        }
                        ServerFrame::Logout(n)
                            if n.reason == Some(LogoutReason::Offline)
                                && n.user_id.as_str().starts_with('u') =>
                        {
                            seen.spurious_logouts.push(n.user_id.as_str().to_owned());
                        }
                        ServerFrame::Error(e) if e.code.is_retriable() => {
                            // `unavailable` while Redis or a node hiccups: the post is retried.
                        }
                        ServerFrame::Error(e) => panic!("{user}: error frame {e:?}"),
                        _ => {}
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn rolling_restart_behind_nginx_loses_nothing() {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(110);
    let cluster = LocalCluster::start(&[("CHAT__SERVER__DRAIN_SECS", "2")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done_posting = Arc::new(AtomicUsize::new(0));
    let (expected_tx, expected_rx) = watch::channel(None);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        tasks.push(tokio::spawn(client(
            cluster.ws_url(),
            i,
            stop.clone(),
            done_posting.clone(),
            expected_rx.clone(),
            deadline,
        )));
    }
    // Steady traffic first, then each gateway in turn: SIGTERM, wait for the script to start it
    // again and for it to be ready, then the next one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 1..=3u16 {
        let pids = cluster.gateway_pids(i);
        let pid = *pids.last().expect("gateway pid");
        send_signal(pid, "TERM");
        // Draining: not ready at once, while still answering.
        let not_ready = wait_until(Duration::from_secs(10), || async {
            status_of(cluster.gateway_port(i), "/readyz").await != Some(200)
        })
        .await;
        assert!(not_ready, "gateway{i} still ready after SIGTERM");
        let restarted = wait_until(Duration::from_secs(40), || async {
            cluster.gateway_pids(i).len() > pids.len()
                && status_of(cluster.gateway_port(i), "/readyz").await == Some(200)
        })
        .await;
        assert!(
            restarted,
            "gateway{i} was not restarted:\n{}\n{}",
            cluster.log_text(),
            cluster.gateway_log_tail(i, 30)
        );
        let log = cluster.gateway_log_tail(i, 200);
        assert!(log.contains("draining"), "gateway{i} drained:\n{log}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);

    // Everyone stops posting once their last post is confirmed; then everything stored must
    // reach everyone.
    let quiet = wait_until(Duration::from_secs(30), || async {
        done_posting.load(Ordering::Acquire) == CLIENTS
    })
    .await;
    assert!(quiet, "clients still have unconfirmed posts");
    let rooms = http_get(([127, 0, 0, 1], cluster.port).into(), "/api/rooms")
        .await
        .expect("GET /api/rooms")
        .json();
    let head = rooms["rooms"]
        .as_array()
        .and_then(|rooms| rooms.iter().find(|r| r["roomId"] == ROOM))
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or_else(|| panic!("room head in {rooms}"));
    // Every post that was stored, confirmed or not.
    let all: BTreeSet<u64> = (1..=head).collect();
    expected_tx.send_replace(Some(all.clone()));
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.expect("client task"));
    }

    let posted: Vec<u64> = seen.iter().flat_map(|s| s.posted.iter().copied()).collect();
    let posted_set: BTreeSet<u64> = posted.iter().copied().collect();
    let delivered: usize = seen.iter().map(|s| s.received.len()).sum();
    let duplicates: u64 = seen.iter().map(|s| s.duplicates).sum();
    let longest_gap = seen.iter().map(|s| s.longest_gap).max().unwrap_or_default();
    let reconnects: u32 = seen.iter().map(|s| s.reconnects).sum();
    println!(
        "rolling restart: posted {} (room head {}), delivered {delivered} to {CLIENTS} clients, \
         duplicates before dedup {duplicates}, longest gap a client saw {:.2} s, reconnects \
         {reconnects}, took {:.1} s",
        posted.len(),
        all.len(),
        longest_gap.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(posted.len(), posted_set.len(), "a post stored twice");
    assert_eq!(
        posted_set, all,
        "every stored message was confirmed to its poster, once"
    );
    assert!(posted.len() > 30, "steady traffic: {} posts", posted.len());
    for (i, s) in seen.iter().enumerate() {
        println!(
            "  u{i}: posted {}, reconnects {}, slowest rejoin {:.2} s, longest gap {:.2} s, closes {:?}",
            s.posted.len(),
            s.reconnects,
            s.slowest_rejoin.as_secs_f64(),
            s.longest_gap.as_secs_f64(),
            s.closes
        );
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s.received, all,
            "client u{i} has every message exactly once"
        );
        assert!(
            s.closes.iter().all(|c| matches!(c, Some(1012) | None)),
            "u{i} closed only by restarts: {:?}",
            s.closes
        );
        assert!(
            s.spurious_logouts.is_empty(),
            "u{i} saw users announced offline who only moved node: {:?}",
            s.spurious_logouts
        );
    }
    assert!(
        reconnects >= CLIENTS as u32,
        "every client was moved at least once"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

/// A user who does not come back after a drain is announced gone (once the drain settled), and
/// `/readyz` turns 503 while the node still answers; `/metrics` counts the 1012 close.
#[tokio::test]
async fn a_drained_user_who_does_not_return_is_announced_offline() {
    let cluster = chat_tests::cluster::Cluster::start(&[("CHAT__SERVER__DRAIN_SECS", "1")]).await;
    let mut stay = cluster.client(0, "stay").await;
    stay.login("room", "stay", "Stay").await;
    let mut leaver = cluster.client(1, "leaver").await;
    leaver.login("room", "leaver", "Leaver").await;
    stay.recv_login_of("room", "leaver").await;

    cluster.nodes[1].terminate();
    let not_ready = wait_until(Duration::from_secs(10), || async {
        cluster.nodes[1].get("/readyz").await.status == 503
    })
    .await;
    assert!(not_ready, "draining node still ready");
    let metrics = cluster.nodes[1].get("/metrics").await.text();
    assert!(metrics.contains("chat_draining 1"), "{metrics}");
    assert_eq!(leaver.expect_close_code().await, Some(1012));
    // Not reconnecting: after the settle period the room hears it.
    let gone = stay.recv_logout_of("room", "leaver").await;
    assert_eq!(gone.reason, Some(LogoutReason::Offline));
}
