//! History paging over WebSocket and HTTP, the REST API, and configuration files.

use std::time::Duration;

use chat_tests::chat_protocol::server::HistoryPage;
use chat_tests::chat_protocol::{ChatMessage, ErrorCode, ServerFrame};
use chat_tests::serde_json::{self, Value, json};
use chat_tests::{
    Client, Gateway, GatewayOptions, assert_consecutive, gateway_bin, seqs, wait_until,
};

async fn ws_history(client: &mut Client, request: Value) -> HistoryPage {
    client.send_json(request).await;
    client
        .recv_match("history", |f| match f {
            ServerFrame::History(h) => Some(h.clone()),
            _ => None,
        })
        .await
}

async fn http_history(gw: &Gateway, path: &str) -> HistoryPage {
    let response = gw.get(path).await;
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("GET {path}: not a history page ({e}): {}", response.text()))
}

fn contents(messages: &[ChatMessage]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

#[tokio::test]
async fn history_paging() {
    let gw = Gateway::start(&[("CHAT__HISTORY__MAX_PAGE", "20")]).await;
    let mut a = gw.client().await.named("A");
    a.send_json(json!({"event": "login", "roomId": "paged", "userId": "alice", "userName": "Alice", "roomName": "Paged Room"}))
        .await;
    let joined = a.expect_joined("paged").await;
    assert_eq!(joined.room_name, "Paged Room");
    for i in 1..=25 {
        a.post("paged", &format!("msg-{i}")).await;
    }
    let mut receipts = Vec::new();
    for _ in 0..25 {
        receipts.push(a.recv_sent().await.seq);
    }
    assert_eq!(receipts, (1..=25).collect::<Vec<_>>());
    let live = a.recv_messages_in("paged", 25).await;
    assert_consecutive(&live, 1);

    // Newest page first, then older pages with `before`; each page ascending.
    let newest = ws_history(
        &mut a,
        json!({"event": "history", "roomId": "paged", "limit": 10}),
    )
    .await;
    assert_eq!(newest.room_id.as_str(), "paged");
    assert_eq!(newest.epoch, live[0].epoch);
    assert_eq!(seqs(&newest.messages), (16..=25).collect::<Vec<_>>());
    assert_eq!(contents(&newest.messages)[0], "msg-16");
    assert!(newest.messages.iter().all(|m| !m.replay));
    assert_eq!(
        &newest.messages[..],
        &live[15..],
        "history holds the very messages delivered live"
    );
    let older = ws_history(
        &mut a,
        json!({"event": "history", "roomId": "paged", "before": 16, "limit": 10}),
    )
    .await;
    assert_eq!(seqs(&older.messages), (6..=15).collect::<Vec<_>>());
    let oldest = ws_history(
        &mut a,
        json!({"event": "history", "roomId": "paged", "before": 6, "limit": 10}),
    )
    .await;
    assert_eq!(seqs(&oldest.messages), [1, 2, 3, 4, 5]);
    let nothing = ws_history(
        &mut a,
        json!({"event": "history", "roomId": "paged", "before": 1}),
    )
    .await;
    assert!(nothing.messages.is_empty());
    // No limit: the default page (50), clamped to history.max_page (20 here); so is a huge limit.
    let default = ws_history(&mut a, json!({"event": "history", "roomId": "paged"})).await;
    assert_eq!(seqs(&default.messages), (6..=25).collect::<Vec<_>>());
    let clamped = ws_history(
        &mut a,
        json!({"event": "history", "roomId": "paged", "limit": 1000}),
    )
    .await;
    assert_eq!(clamped, default);
    // A room the connection has not joined: `forbidden` (history is for members; security.rs).
    a.send_json(json!({"event": "history", "roomId": "void"}))
        .await;
    a.recv_match("forbidden", |f| match f {
        ServerFrame::Error(e) if e.code == chat_tests::chat_protocol::ErrorCode::Forbidden => {
            Some(())
        }
        _ => None,
    })
    .await;

    // The same pages over HTTP.
    let base = "/api/rooms/paged/messages";
    assert_eq!(http_history(&gw, &format!("{base}?limit=10")).await, newest);
    assert_eq!(
        http_history(&gw, &format!("{base}?before=16&limit=10")).await,
        older
    );
    assert_eq!(
        http_history(&gw, &format!("{base}?limit=10&before=6")).await,
        oldest
    );
    assert_eq!(http_history(&gw, base).await, default);
    assert_eq!(
        http_history(&gw, &format!("{base}?limit=1000")).await,
        default
    );
    assert_eq!(
        http_history(&gw, &format!("{base}?limit=99999999999")).await,
        default,
        "a limit beyond u32 is clamped like any other, as the history event does"
    );
    assert!(
        http_history(&gw, "/api/rooms/void/messages")
            .await
            .messages
            .is_empty()
    );

    // The room list: counts and latest seq.
    let mut b = gw.client().await.named("B");
    b.login("other", "bob", "Bob").await;
    b.post_and_wait("other", "hello").await;
    b.login("paged", "bob", "Bob").await;
    let rooms = gw.get("/api/rooms").await;
    assert_eq!(rooms.status, 200);
    let rooms = rooms.json();
    let list = rooms["rooms"].as_array().expect("rooms array");
    let find = |id: &str| {
        list.iter()
            .find(|r| r["roomId"] == id)
            .unwrap_or_else(|| panic!("room {id} not listed: {rooms}"))
            .clone()
    };
    let paged = find("paged");
    assert_eq!(paged["roomName"], "Paged Room");
    assert_eq!(
        (&paged["num"], &paged["total"], &paged["seq"]),
        (&json!(2), &json!(2), &json!(25))
    );
    assert_eq!(paged["epoch"], json!(newest.epoch));
    let other = find("other");
    assert_eq!(
        (&other["num"], &other["total"], &other["seq"]),
        (&json!(1), &json!(1), &json!(1))
    );
    // Going offline changes `num`, not `total`.
    b.close().await;
    a.recv_logout_of("paged", "bob").await;
    let rooms = gw.get("/api/rooms").await.json();
    let paged = rooms["rooms"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["roomId"] == "paged").cloned())
        .expect("paged listed");
    assert_eq!((&paged["num"], &paged["total"]), (&json!(1), &json!(2)));
    // The node report counts live sessions: A's, once B's has finished.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let node = gw.get("/api/node").await.json();
            node["backend"] == "memory" && node["connections"] == 1
        })
        .await,
        "{}",
        gw.get("/api/node").await.text()
    );

    // Bad requests: 400 with a JSON error code.
    for (path, code) in [
        (format!("{base}?before=abc"), ErrorCode::BadField),
        (format!("{base}?before=-5"), ErrorCode::BadField),
        (format!("{base}?limit=0"), ErrorCode::BadField),
        (format!("{base}?limit=-1"), ErrorCode::BadField),
        (format!("{base}?limit=ten"), ErrorCode::BadField),
        (
            format!("{base}?limit=999999999999999999999"),
            ErrorCode::BadField,
        ),
        ("/api/rooms/a%20b/messages".to_owned(), ErrorCode::InvalidId),
        (
            "/api/rooms/%C3%A9/messages".to_owned(),
            ErrorCode::InvalidId,
        ),
        (
            format!("/api/rooms/{}/messages", "x".repeat(65)),
            ErrorCode::InvalidId,
        ),
    ] {
        let response = gw.get(&path).await;
        assert_eq!(response.status, 400, "GET {path}: {}", response.text());
        let body = response.json();
        assert_eq!(body["code"], json!(code), "GET {path}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    // Health, readiness, unknown paths.
    assert_eq!(gw.get("/healthz").await.status, 200);
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(ready.text().contains("memory"), "{}", ready.text());
    assert_eq!(gw.get("/nope").await.status, 404);
    assert_eq!(gw.get("/").await.status, 200);
}

#[tokio::test]
async fn config_file_flag() {
    let dir = chat_tests::TestDir::new("config");
    let file = dir.path().join("custom.toml");
    std::fs::write(
        &file,
        "# test overrides\n[history]\nper_room = 5\n\n[limits]\nmax_content_bytes = 50\n",
    )
    .expect("write config");
    // The file overrides the defaults; environment variables override the file.
    let gw = Gateway::start_with(
        GatewayOptions::env(&[("CHAT__LIMITS__MAX_CONTENT_BYTES", "60")])
            .args(["--config".to_owned(), file.display().to_string()]),
    )
    .await;
    let mut a = gw.client().await.named("A");
    a.login("small", "alice", "Alice").await;
    for i in 1..=8 {
        a.post_and_wait("small", &format!("m{i}")).await;
    }
    let page = ws_history(&mut a, json!({"event": "history", "roomId": "small"})).await;
    assert_eq!(
        seqs(&page.messages),
        [4, 5, 6, 7, 8],
        "history.per_room = 5 from the file"
    );
    let page = http_history(&gw, "/api/rooms/small/messages?limit=100").await;
    assert_eq!(seqs(&page.messages), [4, 5, 6, 7, 8]);

    a.post_and_wait("small", &"k".repeat(60)).await;
    a.post_with_id("small", &"k".repeat(61), "too-long").await;
    let error = a.expect_error(ErrorCode::ContentTooLong).await;
    assert_eq!(error.reference.as_deref(), Some("too-long"));
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let dir = chat_tests::TestDir::new("bad-config");
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "[history]\nper_rooom = 5\n").expect("write");
    let zero = dir.path().join("zero.toml");
    std::fs::write(&zero, "[history]\nper_room = 0\n").expect("write");
    type Run = (Vec<String>, Vec<(&'static str, &'static str)>);
    let runs: [Run; 4] = [
        (
            vec!["--config".into(), unknown_key.display().to_string()],
            vec![],
        ),
        (vec!["--config".into(), zero.display().to_string()], vec![]),
        (
            vec![
                "--config".into(),
                dir.path().join("missing.toml").display().to_string(),
            ],
            vec![],
        ),
        (
            vec![],
            vec![
                ("CHAT__HEARTBEAT__INTERVAL_SECS", "10"),
                ("CHAT__HEARTBEAT__TIMEOUT_SECS", "5"),
            ],
        ),
    ];
    let bin = tokio::task::spawn_blocking(gateway_bin)
        .await
        .expect("build");
    for (args, env) in runs {
        let mut command = tokio::process::Command::new(&bin);
        command
            .args(&args)
            .envs(env.iter().copied())
            // Never actually serve: if the configuration were accepted, this port is in use.
            .env("CHAT__SERVER__LISTEN", "127.0.0.1:1")
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .unwrap_or_else(|_| panic!("chat-gateway {args:?} {env:?} did not exit"))
            .expect("run chat-gateway");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} {env:?} must be refused as a configuration error: {stderr}"
        );
        assert!(stderr.contains("configuration"), "{stderr}");
    }
}
