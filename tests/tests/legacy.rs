//! The legacy dialect (`docs/protocol.md`, "Legacy dialect"): the classic tutorial client's exact
//! frames over a WebSocket upgrade of `GET /`, against real gateway processes — one node, and two
//! nodes on one Redis shared with protocol v1 clients — plus hostile input. The classic page itself
//! runs in headless Chromium in `tests/web/legacy.test.mjs`, started from here.

use std::time::{Duration, Instant};

use chat_tests::chat_protocol::ServerFrame;
use chat_tests::node::run_node_tests;
use chat_tests::serde_json::{self, Value, json};
use chat_tests::{Gateway, RedisServer, default_timeout, wait_until};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A classic tutorial client: raw JSON text frames on `ws://HOST:PORT/`, every frame it receives
/// kept as JSON.
struct Classic {
    label: &'static str,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every text frame received, in order.
    seen: Vec<Value>,
    /// Received frames not yet returned by `recv`/`recv_where`, in order.
    unread: std::collections::VecDeque<Value>,
    closed: Option<Option<u16>>,
}

impl Classic {
    async fn connect(gw: &Gateway, label: &'static str) -> Classic {
        let url = format!("ws://{}/", gw.addr());
        let (ws, _) = tokio::time::timeout(
            default_timeout(),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .unwrap_or_else(|_| panic!("{label}: connect to {url} timed out"))
        .unwrap_or_else(|e| panic!("{label}: connect to {url}: {e}"));
        Classic {
            label,
            ws,
            seen: Vec::new(),
            unread: std::collections::VecDeque::new(),
            closed: None,
        }
    }

    /// Connects and sends the classic login: `userName`, numeric `roomId`, `roomName`, no `userId`.
    async fn login(
        gw: &Gateway,
        label: &'static str,
        name: &str,
        room: u64,
        room_name: &str,
    ) -> Classic {
        let mut c = Classic::connect(gw, label).await;
        c.send(json!({"userName": name, "roomId": room, "roomName": room_name, "event": "login"}))
            .await;
        c
    }

    async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        tokio::time::timeout(default_timeout(), self.ws.send(Message::text(text)))
            .await
            .unwrap_or_else(|_| panic!("{}: send timed out", self.label))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// Posts as the classic client does: its own timestamp `userId`, no `event`.
    async fn post(&mut self, name: &str, room: u64, room_name: &str, content: &str) {
        self.send(json!({"userName": name, "userId": "1732950000000", "roomId": room, "roomName": room_name, "content": content}))
            .await;
    }

    /// Reads one more frame into `seen`; false when the connection closed.
    async fn read_one(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.ws.next()).await {
            Err(_) => panic!(
                "{}: nothing arrived in time; seen so far: {:#?}",
                self.label, self.seen
            ),
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                    panic!("{}: a frame is not JSON ({e}): {text}", self.label)
                });
                assert!(value.is_object(), "{}: not an object: {value}", self.label);
                self.seen.push(value.clone());
                self.unread.push_back(value);
                true
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                self.closed = Some(frame.map(|f: CloseFrame| u16::from(f.code)));
                false
            }
            Ok(Some(Ok(Message::Binary(_)))) => panic!("{}: a binary frame", self.label),
            Ok(Some(Ok(_))) => true,
            Ok(Some(Err(_))) | Ok(None) => {
                self.closed = Some(None);
                false
            }
        }
    }

    /// The first unread frame satisfying `pick`; the others before it stay unread.
    async fn recv_where(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + default_timeout();
        loop {
            if let Some(i) = self.unread.iter().position(&pick)
                && let Some(value) = self.unread.remove(i)
            {
                return value;
            }
            if !self.read_one(deadline).await {
                panic!(
                    "{}: closed ({:?}) before {what}; seen: {:#?}",
                    self.label, self.closed, self.seen
                );
            }
        }
    }

    /// The very next frame, whatever it is.
    async fn recv(&mut self) -> Value {
        self.recv_where("any frame", |_| true).await
    }

    async fn ping_pong(&mut self) {
        self.send(json!({"event": "heartBeat", "content": "ping"}))
            .await;
        let pong = self.recv_where("a pong", is_pong).await;
        assert_eq!(pong, json!({"event": "heartBeat", "content": "pong"}));
    }

    /// Reads until the server closes; the close code.
    async fn closed_with(&mut self) -> Option<u16> {
        let deadline = Instant::now() + default_timeout();
        while self.read_one(deadline).await {}
        self.closed.flatten()
    }

    /// What the classic page would render, checked frame by frame: nothing but the frames it
    /// understands, each with the fields it reads.
    fn assert_all_understood(&self) {
        for frame in &self.seen {
            if is_pong(frame) {
                continue;
            }
            assert!(
                frame["num"].as_u64().is_some(),
                "{}: every frame carries num: {frame}",
                self.label
            );
            match frame["event"].as_str() {
                Some("login") | Some("logout") => {
                    for key in ["userName", "roomName"] {
                        assert!(frame[key].is_string(), "{}: {key} in {frame}", self.label);
                    }
                    assert!(!frame["roomId"].is_null(), "{}: {frame}", self.label);
                }
                None => {
                    for key in ["userName", "userId", "content", "roomName"] {
                        assert!(frame[key].is_string(), "{}: {key} in {frame}", self.label);
                    }
                    assert!(!frame["roomId"].is_null(), "{}: {frame}", self.label);
                }
                Some(other) => panic!(
                    "{}: a `{other}` frame reached a classic client: {frame}",
                    self.label
                ),
            }
        }
    }
}

fn is_pong(v: &Value) -> bool {
    v["event"] == "heartBeat" && v["content"] == "pong"
}

fn is_event(v: &Value, event: &str, name: &str) -> bool {
    v["event"] == event && v["userName"] == name
}

fn is_line(v: &Value, name: &str, content: &str) -> bool {
    v.get("event").is_none() && v["userName"] == name && v["content"] == content
}

#[tokio::test]
async fn two_classic_clients_chat_in_room_1_with_names_counts_and_no_echo() {
    let gw = Gateway::start(&[]).await;

    // Without an upgrade, `/` is still the web chat's page.
    let page = gw.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<html"), "the page");

    let mut alice = Classic::login(&gw, "alice", "Alice", 1, "make friends").await;
    let welcome = alice.recv().await;
    assert_eq!(welcome["event"], "login", "{welcome}");
    assert_eq!(welcome["userName"], "Alice");
    assert_eq!(welcome["roomName"], "make friends");
    assert_eq!(
        welcome["roomId"], 1,
        "the classic client's numeric room id comes back as it sent it"
    );
    assert_eq!(welcome["num"], 1);

    let mut bob = Classic::login(&gw, "bob", "Bob", 1, "make friends").await;
    let welcome = bob.recv().await;
    assert!(is_event(&welcome, "login", "Bob"), "{welcome}");
    assert_eq!(welcome["roomName"], "make friends");
    assert_eq!(welcome["num"], 2);
    let came = alice.recv().await;
    assert!(
        is_event(&came, "login", "Bob"),
        "Alice is told Bob came: {came}"
    );
    assert_eq!(came["roomName"], "make friends");
    assert_eq!(came["num"], 2);

    alice.post("Alice", 1, "make friends", "hi bob").await;
    let line = bob.recv().await;
    assert!(is_line(&line, "Alice", "hi bob"), "{line}");
    assert_eq!(line["num"], 2);
    assert_eq!(line["roomName"], "make friends");
    assert_eq!(line["roomId"], 1);
    let alice_id = line["userId"].as_str().expect("userId").to_owned();
    assert!(
        alice_id.starts_with("guest-"),
        "the gateway's identity, not the client's timestamp: {alice_id}"
    );

    // Bob answers after seeing Alice's post, so his post has the later seq: had Alice's own post
    // come back to her, it would arrive before his.
    bob.post("Bob", 1, "make friends", "hi alice").await;
    let next = alice.recv().await;
    assert!(
        is_line(&next, "Bob", "hi alice"),
        "Alice's next frame is Bob's post, not her own: {next}"
    );
    assert_eq!(next["num"], 2);
    alice.post("Alice", 1, "make friends", "second").await;
    // Likewise Bob: his own post would have come before Alice's later one.
    let line = bob.recv().await;
    assert!(
        is_line(&line, "Alice", "second"),
        "Bob's next frame is Alice's post: {line}"
    );
    bob.ping_pong().await;
    alice.ping_pong().await;
    assert!(
        !bob.seen.iter().any(|v| v["content"] == "hi alice"),
        "Bob never got his own post back: {:#?}",
        bob.seen
    );

    let node = gw.get("/api/node").await.json();
    assert_eq!(node["legacy"]["connections"], 2, "{node}");
    assert_eq!(node["legacy"]["rejected"], 0, "{node}");

    // Bob closes: Alice is told he left, with the new count.
    bob.ws.close(None).await.expect("close");
    let left = alice
        .recv_where("Bob's logout", |v| v["event"] == "logout")
        .await;
    assert!(is_event(&left, "logout", "Bob"), "{left}");
    assert_eq!(left["num"], 1);
    assert_eq!(left["roomName"], "make friends");
    alice.ping_pong().await;
    alice.assert_all_understood();
    bob.assert_all_understood();
    assert_eq!(
        alice
            .seen
            .iter()
            .filter(|v| v.get("event").is_none())
            .count(),
        1,
        "Alice saw exactly one chat line (Bob's): {:#?}",
        alice.seen
    );

    // A guest leaves for good: members do not pile up with every connection.
    assert!(
        wait_until(default_timeout(), || async {
            gw.get("/api/rooms/1/members").await.json()["members"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
        })
        .await,
        "Bob's guest identity is no longer a member: {}",
        gw.get("/api/rooms/1/members").await.text()
    );
}

#[tokio::test]
async fn classic_and_v1_clients_share_a_room_on_two_gateways_over_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let env = |id: &'static str| {
        vec![
            ("CHAT__REDIS__URL", url.clone()),
            ("CHAT__SERVER__NODE_ID", id.to_owned()),
            ("CHAT__PRESENCE__TTL_SECS", "4".to_owned()),
            ("CHAT__CLUSTER__SYNC_INTERVAL_SECS", "1".to_owned()),
        ]
    };
    let start = |env: Vec<(&'static str, String)>| async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Gateway::start(&env).await
    };
    let gw1 = start(env("g1")).await;
    let gw2 = start(env("g2")).await;
    for gw in [&gw1, &gw2] {
        assert!(
            wait_until(Duration::from_secs(20), || async {
                gw.get("/readyz").await.status == 200
            })
            .await,
            "ready"
        );
    }

    // A v1 client names the room first (`"1"` is the classic client's room 1).
    let mut carol = gw2.client().await.named("carol");
    carol
        .send_json(json!({"event": "login", "roomId": "1", "userId": "carol", "userName": "Carol", "roomName": "make friends"}))
        .await;
    carol.expect_joined("1").await;

    let mut alice = Classic::login(&gw1, "alice", "Alice", 1, "another name").await;
    let welcome = alice.recv().await;
    assert!(is_event(&welcome, "login", "Alice"), "{welcome}");
    assert_eq!(
        welcome["roomName"], "make friends",
        "the first name given names the room"
    );
    assert_eq!(welcome["num"], 2, "the count is cluster-wide");

    let alice_notice = carol
        .recv_match("Alice's login notice", |f| match f {
            ServerFrame::Login(n) if n.user_name == "Alice" => Some(n.clone()),
            _ => None,
        })
        .await;
    assert_eq!(alice_notice.num, 2);
    assert!(alice_notice.user_id.as_str().starts_with("guest-"));

    // A second classic client, on the other gateway.
    let mut bob = Classic::login(&gw2, "bob", "Bob", 1, "make friends").await;
    assert_eq!(bob.recv().await["num"], 3);
    let came = alice.recv().await;
    assert!(is_event(&came, "login", "Bob"), "{came}");
    assert_eq!(came["num"], 3);
    carol
        .recv_login_of("1", came["userId"].as_str().expect("id"))
        .await;

    // Legacy → v1 (a normal message with a seq) and legacy → legacy across gateways.
    alice
        .post("Alice", 1, "make friends", "hello from the tutorial")
        .await;
    let message = carol.recv_message_in("1").await;
    assert_eq!(message.content, "hello from the tutorial");
    assert_eq!(message.user_name, "Alice");
    assert_eq!(message.user_id, alice_notice.user_id);
    assert_eq!(message.seq, 1, "a normal v1 message with the room's seq");
    let line = bob
        .recv_where("Alice's post", |v| {
            is_line(v, "Alice", "hello from the tutorial")
        })
        .await;
    assert_eq!(line["num"], 3);
    assert_eq!(line["userId"], alice_notice.user_id.as_str());

    // v1 → legacy, with the current cluster-wide count.
    carol.post_and_wait("1", "hello from v1").await;
    let line = alice
        .recv_where("Carol's post", |v| v.get("event").is_none())
        .await;
    assert!(is_line(&line, "Carol", "hello from v1"), "{line}");
    assert_eq!(line["num"], 3);
    assert_eq!(line["userId"], "carol");
    assert_eq!(line["roomName"], "make friends");

    // Shared history and counts: the legacy post is in the room's log, seen from either gateway.
    let history = gw1.get("/api/rooms/1/messages").await.json();
    let contents: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents, ["hello from the tutorial", "hello from v1"]);
    assert_eq!(
        chat_tests::cluster::room_counts(&gw2, "1")
            .await
            .map(|c| c.0),
        Some(3)
    );

    // Alice closes: v1 and legacy clients on the other gateway are told, with the count.
    alice.ws.close(None).await.expect("close");
    let gone = carol
        .recv_match("Alice's logout", |f| match f {
            ServerFrame::Logout(n) if n.user_name == "Alice" => Some(n.clone()),
            _ => None,
        })
        .await;
    assert_eq!(gone.num, 2);
    let left = bob
        .recv_where("Alice's logout", |v| v["event"] == "logout")
        .await;
    assert!(is_event(&left, "logout", "Alice"), "{left}");
    assert_eq!(left["num"], 2);
    bob.ping_pong().await;
    bob.assert_all_understood();
    alice.assert_all_understood();
}

#[tokio::test]
async fn hostile_classic_input_is_ignored_and_the_connection_stays_usable() {
    let gw = Gateway::start(&[]).await;
    let mut eve = Classic::connect(&gw, "eve").await;
    let mut hostile: Vec<String> = [
        "",
        "not json",
        "{",
        "[1,2,3]",
        "\"str\"",
        "null",
        "{}",
        r#"{"event":7}"#,
        r#"{"event":"dance"}"#,
        r#"{"event":"logout","roomId":1}"#,
        r#"{"event":"login"}"#,
        r#"{"event":"login","roomId":"../etc"}"#,
        r#"{"event":"login","roomId":1.5,"userName":"x"}"#,
        r#"{"content":"before any login"}"#,
        r#"{"roomId":1,"content":"not joined yet"}"#,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    hostile.push(format!("{}{}", "[".repeat(5000), "]".repeat(5000)));
    for text in &hostile {
        eve.send_text(text.clone()).await;
    }
    eve.ws
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .expect("binary");
    eve.ping_pong().await;
    assert_eq!(
        eve.seen.len(),
        1,
        "only the pong came back: {:#?}",
        eve.seen
    );

    // Now a login with odd but usable fields, and more hostile posts.
    eve.send(json!({"event": "login", "roomId": 2, "userName": "Ev\u{0}e\n", "userId": "not a valid id!"}))
        .await;
    let welcome = eve.recv().await;
    assert!(
        is_event(&welcome, "login", "Eve"),
        "control characters dropped: {welcome}"
    );
    let mut sam = Classic::login(&gw, "sam", "Sam", 2, "room two").await;
    sam.recv_where("welcome", |v| v["event"] == "login").await;
    eve.recv_where("Sam's login", |v| is_event(v, "login", "Sam"))
        .await;
    for bad in [
        json!({"roomId": 2, "content": 5}),
        json!({"roomId": 2, "content": "   "}),
        json!({"roomId": 2, "content": null}),
        json!({"roomId": 3, "content": "a room eve is not in"}),
        json!({"roomId": [2], "content": "x"}),
        json!({"roomId": 2, "content": "x".repeat(5000)}),
    ] {
        eve.send(bad).await;
    }
    eve.send(json!({"roomId": 2, "content": "still here"}))
        .await;
    let line = sam
        .recv_where("Eve's post", |v| v.get("event").is_none())
        .await;
    assert!(
        is_line(&line, "Eve", "still here"),
        "only the valid post went through: {line}"
    );
    eve.ping_pong().await;
    eve.assert_all_understood();
    sam.assert_all_understood();

    let node = gw.get("/api/node").await.json();
    let rejected = node["legacy"]["rejected"].as_u64().unwrap_or(0);
    assert!(
        rejected >= hostile.len() as u64 + 1 + 6,
        "every ignored frame was counted: {node}"
    );

    // A frame over limits.max_frame_bytes closes with 1009 (documented), and nothing else breaks.
    eve.send_text("x".repeat(70_000)).await;
    assert_eq!(eve.closed_with().await, Some(1009));
    sam.ping_pong().await;
    let left = sam
        .recv_where("Eve's logout", |v| v["event"] == "logout")
        .await;
    assert!(is_event(&left, "logout", "Eve"), "{left}");
    assert_eq!(left["num"], 1);
    assert_eq!(
        left["roomName"], "room two",
        "named by the first login that gave a name"
    );
    assert!(gw.healthy().await);
    let log = chat_tests::read_to_string(gw.log_path());
    assert!(!log.contains("panicked"), "no panic in the gateway");
}
/// A raw GET with extra headers; the status code and the body.
async fn raw_get(addr: std::net::SocketAddr, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(default_timeout(), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn slash_is_still_the_page_without_an_upgrade_and_ws_stays_v1() {
    let gw = Gateway::start(&[]).await;
    let (status, body) = raw_get(gw.addr(), "").await;
    assert_eq!(status, 200);
    assert!(body.contains("<html"), "{body}");
    // Some other upgrade (not WebSocket) is just a GET of the page.
    let (status, body) = raw_get(gw.addr(), "Upgrade: h2c\r\n").await;
    assert_eq!(status, 200);
    assert!(body.contains("<html"));
    // A broken WebSocket upgrade is refused, not answered with HTML.
    let (status, body) = raw_get(
        gw.addr(),
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // `/ws` is protocol v1, unchanged: the classic login there is refused with an error frame.
    let mut v1 = gw.client().await.named("v1");
    v1.send_json(
        json!({"userName": "Alice", "roomId": 1, "roomName": "make friends", "event": "login"}),
    )
    .await;
    v1.expect_error(chat_tests::chat_protocol::ErrorCode::MissingField)
        .await;
    v1.login("1", "ann", "Ann").await;
}

/// The classic tutorial page (`tests/legacy-page/index.html`, unchanged tutorial client code)
/// in headless Chromium against real gateways: `tests/web/legacy.test.mjs`. Needs Node 20+, npm
/// and Debian's `chromium`, like `tests/tests/web.rs`.
#[tokio::test]
async fn the_classic_page_chats_through_the_gateway_in_a_browser() {
    // A few browser scenarios take well under a minute; ten is a hang, not a slow machine.
    run_node_tests(
        &["legacy.test.mjs"],
        "legacy-node-test.log",
        Duration::from_secs(10 * 60),
    )
    .await;
}
