//! The web chat: the page and its assets over HTTP (here), and the JavaScript tests in `tests/web/`
//! — Node unit tests of `/chat-client.js` and end-to-end tests in headless Chromium against real
//! gateways, a Redis cluster and nginx — run as a child process so `cargo test --workspace` covers
//! them. They need Node 20+ with npm and Debian's `chromium`; `.ci/run` installs both.

use std::time::Duration;

use chat_tests::Gateway;
use chat_tests::node::run_node_tests;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A GET with extra request headers; returns the status line's code and the raw head.
async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

#[tokio::test]
async fn the_page_its_assets_and_its_routes_are_served() {
    let gw = Gateway::start(&[("CHAT__WEB__DEFAULT_ROOMS", "general,random")]).await;

    let page = gw.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text();
    assert!(
        html.contains(r#"<script type="module" src="/app.js"></script>"#),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN: {html}"
    );

    for (path, kind, marker) in [
        (
            "/chat-client.js",
            "text/javascript",
            "export class ChatClient",
        ),
        ("/app.js", "text/javascript", "from '/chat-client.js'"),
        ("/i18n.js", "text/javascript", "export function t("),
        ("/style.css", "text/css", ".messages"),
        ("/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let asset = gw.get(path).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset
                .header("content-type")
                .unwrap_or_default()
                .starts_with(kind),
            "{path}: {:?}",
            asset.header("content-type")
        );
        assert!(asset.text().contains(marker), "{path} contains {marker}");
        // Revalidation is cheap: the compile-time ETag answers 304.
        let etag = asset.header("etag").expect("etag").to_owned();
        let (status, _) = get_with(gw.addr(), path, &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!(status, 304, "{path}");
        let (status, _) = get_with(gw.addr(), path, "If-None-Match: \"other\"\r\n").await;
        assert_eq!(status, 200, "{path}");
    }

    let config = gw.get("/api/web-config").await.json();
    assert_eq!(
        config["defaultRooms"],
        serde_json_array(&["general", "random"])
    );

    // The members route lists who joined (for the page's member list).
    let mut ann = gw.client().await;
    ann.login("general", "ann", "Ann").await;
    let mut bob = gw.client().await;
    bob.login("general", "bob", "Bob").await;
    let members = gw.get("/api/rooms/general/members").await;
    assert_eq!(members.status, 200);
    let mut ids: Vec<String> = members.json()["members"]
        .as_array()
        .expect("members array")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    ids.sort();
    assert_eq!(ids, ["ann", "bob"]);
    // ... and who of them is online now: bob goes, ann stays.
    bob.close().await;
    let online = || async {
        gw.get("/api/rooms/general/members").await.json()["online"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
    };
    assert!(
        chat_tests::wait_until(std::time::Duration::from_secs(20), || async {
            online().await == Some(vec!["ann".to_owned()])
        })
        .await,
        "online: {:?}",
        online().await
    );
    let bad = gw.get("/api/rooms/no%20spaces/members").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "invalid_id");
}

fn serde_json_array(items: &[&str]) -> chat_tests::serde_json::Value {
    chat_tests::serde_json::Value::Array(
        items
            .iter()
            .map(|s| chat_tests::serde_json::Value::String((*s).to_owned()))
            .collect(),
    )
}

#[tokio::test]
async fn javascript_client_and_browser_tests_pass() {
    // The whole JavaScript suite takes a minute or two; twenty is a hang, not a slow machine.
    run_node_tests(
        &["client.test.mjs", "deflate.test.mjs", "browser.test.mjs"],
        "node-test.log",
        Duration::from_secs(20 * 60),
    )
    .await;
}
