//! Transport-level defences (docs/security.md): a client that stops reading is cut when its queue
//! overflows, not when a stuck write finally times out, and its log lines stay bounded; HTTP
//! requests that never finish their headers, and idle keep-alive connections, are closed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_tests::chat_protocol::{ServerFrame, close};
use chat_tests::serde_json::json;
use chat_tests::{Gateway, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `chat_connections_closed_total{code="…"}` on the gateway's `/metrics`.
async fn closed_with(gw: &Gateway, code: u16) -> u64 {
    let text = gw.get("/metrics").await.text();
    let label = format!("code=\"{code}\"");
    text.lines()
        .filter(|l| l.starts_with("chat_connections_closed_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Lines of the gateway's log that contain `needle`.
fn log_lines(gw: &Gateway, needle: &str) -> usize {
    chat_tests::read_to_string(gw.log_path())
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Weakness 10: a client that stops reading in a busy room fills its TCP window, so its writer is
/// stuck in a write while the hub fills its queue. It must be cut when the queue overflows, with
/// the write timeout far away (120 s); a reading client keeps chatting; the overflow is logged
/// once, not once per frame offered; what the stuck one never read is replayed on reconnect.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_long_before_the_write_timeout() {
    let gw = Gateway::start(&[
        ("CHAT__LOG__LEVEL", "debug"),
        ("CHAT__LIMITS__MAX_CONTENT_BYTES", "60000"),
        // A reading client rides out a scheduling stall with this; the stuck one cannot.
        ("CHAT__LIMITS__OUTBOUND_QUEUE", "32"),
        ("CHAT__LIMITS__WRITE_TIMEOUT_SECS", "120"),
        // The stuck client sends no pongs: keep the heartbeat from closing it first.
        ("CHAT__HEARTBEAT__TIMEOUT_SECS", "600"),
        ("CHAT__OFFLINE__MAX_PER_ROOM", "1000"),
        ("CHAT__HISTORY__PER_ROOM", "1000"),
        // Every 60 KB post must stay in history for the replay at the end (the default byte cap
        // of a room's log, 1 MiB, would keep the last 17).
        ("CHAT__HISTORY__MAX_BYTES_PER_ROOM", "67108864"),
    ])
    .await;
    let mut stuck = RawClient::connect(gw.addr()).await;
    stuck
        .send_text(
            &json!({"event":"login","roomId":"r","userId":"stuck","userName":"Stuck"}).to_string(),
        )
        .await;
    let mut poster = gw.client().await.named("poster");
    poster.set_timeout(Duration::from_secs(60));
    poster.login("r", "poster", "Poster").await;

    // 60 KB a post; loopback socket buffers hold a few MB, so a few hundred posts stall the stuck
    // client's writes and then fill its queue.
    let content = "x".repeat(60_000);
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut cut_after = None;
    for _ in 0..800 {
        poster.post_and_wait("r", &content).await;
        for frame in poster.take_pending() {
            match frame {
                ServerFrame::Message(m) => seen.push(m.seq),
                ServerFrame::Logout(n) if n.user_id.as_str() == "stuck" => {
                    cut_after = Some(started.elapsed());
                }
                _ => {}
            }
        }
        if cut_after.is_some() {
            break;
        }
    }
    let cut_after = match cut_after {
        Some(at) => at,
        None => {
            poster.set_timeout(Duration::from_secs(180));
            poster.recv_logout_of("r", "stuck").await;
            started.elapsed()
        }
    };
    assert!(
        cut_after < Duration::from_secs(60),
        "the stuck client was cut {cut_after:?} after the room got busy: that is the write \
         timeout's doing (120 s), not the queue's"
    );
    // The reader kept chatting, and got everything so far in order.
    let sent = poster.post_and_wait("r", "still here").await;
    let rest = poster
        .recv_messages_in("r", (sent.seq as usize).saturating_sub(seen.len()))
        .await;
    seen.extend(rest.iter().map(|m| m.seq));
    assert_eq!(seen, (1..=sent.seq).collect::<Vec<_>>());

    assert_eq!(closed_with(&gw, close::SLOW_CONSUMER).await, 1);
    assert_eq!(
        log_lines(&gw, "outbound queue full"),
        1,
        "the overflow is logged once, not for every frame offered after it"
    );

    // Back with `since`: it read nothing, so everything is replayed.
    drop(stuck);
    let mut back = gw.client().await.named("back");
    back.set_timeout(Duration::from_secs(60));
    let (joined, replayed) = back
        .login_replay(json!({
            "event":"login","roomId":"r","userId":"stuck","userName":"Stuck","since":0
        }))
        .await;
    assert_eq!(joined.replayed, sent.seq);
    chat_tests::assert_consecutive(&replayed, 1);
    assert!(gw.healthy().await);
}

/// Close code 4000 on the wire: a reading connection whose queue overflows while its writer is
/// waiting (`websocket.write_delay_ms`) gets the close frame, and the close is counted.
#[tokio::test]
async fn a_queue_overflow_closes_with_4000() {
    let gw = Gateway::start(&[
        ("CHAT__WEBSOCKET__WRITE_DELAY_MS", "1000"),
        ("CHAT__LIMITS__OUTBOUND_QUEUE", "2"),
    ])
    .await;
    let mut reader = gw.client().await.named("reader");
    reader.login("r", "reader", "Reader").await;
    // Connected first, then all logging in at once: their login notices reach the reader's queue
    // while its writer waits out the write delay.
    let mut others = Vec::new();
    for i in 0..20 {
        others.push(gw.client().await.named(format!("other{i}")));
    }
    for (i, other) in others.iter_mut().enumerate() {
        other
            .send_json(
                json!({"event":"login","roomId":"r","userId":format!("u{i}"),"userName":"U"}),
            )
            .await;
    }
    assert_eq!(
        reader.expect_close_within(Duration::from_secs(30)).await,
        Some(close::SLOW_CONSUMER)
    );
    assert!(closed_with(&gw, close::SLOW_CONSUMER).await >= 1);
}

/// Reads from `tcp` until the server closes it (EOF or reset) or `within` passes; the bytes read
/// and whether it closed.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Weakness 6: TCP connections that send nothing, or headers a byte at a time, or sit idle after a
/// request, are closed after `server.handshake_timeout_secs`; others are served meanwhile.
#[tokio::test]
async fn idle_and_half_sent_http_requests_are_closed() {
    let gw = Gateway::start(&[("CHAT__SERVER__HANDSHAKE_TIMEOUT_SECS", "2")]).await;
    let addr = gw.addr();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut keep_alive = TcpStream::connect(addr).await.expect("connect");
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // Half a request, a byte every 300 ms: never finished in time.
    let trickle = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if tcp.write_all(&[*byte]).await.is_err() {
                // Closed under us: the server gave up on the request.
                return (started.elapsed(), true);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (_, closed) = closed_within(&mut tcp, Duration::from_secs(15)).await;
        (started.elapsed(), closed)
    });

    // Served meanwhile: plain HTTP and a WebSocket.
    assert!(gw.healthy().await);
    let mut client = gw.client().await;
    client.login("r", "ann", "Ann").await;

    let (_, closed) = closed_within(&mut silent, Duration::from_secs(15)).await;
    assert!(closed, "a connection that sent nothing is closed");
    let (answer, closed) = closed_within(&mut keep_alive, Duration::from_secs(15)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "the complete request was answered"
    );
    assert!(closed, "an idle keep-alive connection is closed");
    let (took, closed) = trickle.await.expect("trickle task");
    assert!(closed, "a request trickling its headers is closed");
    assert!(
        took < Duration::from_secs(20),
        "closed after the header timeout, not after the whole trickle: {took:?}"
    );
    // The WebSocket is not subject to the HTTP timeout once upgraded.
    client.stay_open_for(Duration::from_secs(3)).await;
    client.ping_pong().await;
}

/// Many idle pre-upgrade connections from one address do not stop the node answering health
/// checks, and they are all gone after the timeout.
#[tokio::test]
async fn healthz_answers_while_hundreds_of_idle_connections_are_open() {
    let gw = Gateway::start(&[("CHAT__SERVER__HANDSHAKE_TIMEOUT_SECS", "5")]).await;
    let addr: SocketAddr = gw.addr();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    assert!(
        gw.healthy().await,
        "/healthz answers with 500 idle connections open"
    );
    let mut closed = 0;
    for tcp in &mut idle {
        if closed_within(tcp, Duration::from_secs(30)).await.1 {
            closed += 1;
        }
    }
    assert_eq!(closed, 500, "every idle connection was closed");
    assert!(gw.healthy().await);
}

/// A client flooding frames the server ignores (the legacy dialect on `/` answers garbage with
/// silence) gets a handful of debug lines, each with the running count, not one line per frame.
#[tokio::test]
async fn ignored_frames_do_not_flood_the_log() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let gw = Gateway::start(&[("CHAT__LOG__LEVEL", "debug")]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", gw.addr()))
        .await
        .expect("legacy connect");
    let frames = 2000;
    for _ in 0..frames {
        ws.feed(Message::text("not json")).await.expect("send");
    }
    ws.send(Message::Ping(b"sync".to_vec().into()))
        .await
        .expect("send ping");
    // The pong comes after every frame before the ping was read (and ignored).
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Pong(_)) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "the flood was read");
    let node = gw.get("/api/node").await.json();
    assert!(node["legacy"]["rejected"].as_u64() >= Some(frames));
    let lines = log_lines(&gw, "legacy frame ignored");
    assert!(
        (1..=12).contains(&lines),
        "{lines} log lines for {frames} ignored frames"
    );
}
