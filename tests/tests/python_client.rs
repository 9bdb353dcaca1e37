//! permessage-deflate with Python's `websockets` (tests/python/deflate_client.py), a standard
//! client that offers the extension by default and compresses what it sends: it negotiates it
//! with a real gateway, chats with a plain (uncompressed) client in the same room and gets correct
//! frames both ways — non-ASCII text, emoji and a frame well above
//! `websocket.compression_threshold_bytes` — and pages history. Needs `python3` with `websockets`
//! 13+ (`.ci/run` installs it); without it the test fails and says so.

use std::process::Stdio;

use chat_tests::{Client, Gateway, default_timeout, workspace_root};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The gateway's `chat_frames_compressed_total`.
async fn frames_compressed(gw: &Gateway) -> u64 {
    let text = gw.get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("chat_frames_compressed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn require_python_websockets() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import websockets.asyncio.client"])
        .output();
    match check {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs Python's `websockets` 13+: `python3 -m pip install websockets` \
             (.ci/run does it). python3 said: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("this test needs python3 on the PATH with `websockets` installed: {e}"),
    }
}

fn contents(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["content"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn python_websockets_negotiates_deflate_and_chats_with_a_plain_client() {
    require_python_websockets();
    let gw = Gateway::start(&[]).await;
    let room = "py-room";
    let mut plain = Client::connect(&gw.ws_url()).await.named("plain");
    plain.login(room, "plain-user", "Plain Ünïcode").await;

    // A 1.5 KiB chat text (compressible, as chat is) with multi-byte characters all through it.
    let long = "the quick brown fox — ünïcödé 你好 🦀 jumps over the lazy dog; ".repeat(24);
    assert!(long.len() > 1024);
    let posts = vec![
        "héllo wörld — ¿qué tal? 你好，世界".to_owned(),
        "🦀🎉👍🏽 emoji only, and a ZWJ family 👨‍👩‍👧".to_owned(),
        long.clone(),
    ];
    let compressed_before = frames_compressed(&gw).await;

    let script = workspace_root().join("tests/python/deflate_client.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([gw.ws_url().as_str(), room, "py-user"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let mut stdin = child.stdin.take().expect("stdin piped");
    let line = serde_json::to_string(&posts).expect("json") + "\n";
    stdin.write_all(line.as_bytes()).await.expect("write posts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let wait = default_timeout() * 4;

    // The script's own posts came back to it; the plain client got them too, decoded right.
    let ready = tokio::time::timeout(wait, stdout.next_line())
        .await
        .expect("the script got ready in time")
        .expect("read stdout");
    if ready.as_deref() != Some("READY") {
        let out = child.wait_with_output().await.expect("python output");
        panic!(
            "the script did not get ready: {ready:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for want in &posts {
        let got = plain.recv_message_in(room).await;
        assert_eq!(&got.content, want);
        assert_eq!(got.user_id.as_str(), "py-user");
    }
    let reply = "from the plain side: ça va? 👋 ".repeat(10);
    plain.post_and_wait(room, &reply).await;

    let result = tokio::time::timeout(wait, async {
        while let Some(line) = stdout.next_line().await.expect("read stdout") {
            if let Some(json) = line.strip_prefix("RESULT ") {
                return Some(json.to_owned());
            }
        }
        None
    })
    .await
    .expect("the script finished in time");
    let out = child.wait_with_output().await.expect("python exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed: {stderr}");
    let result: Value =
        serde_json::from_str(&result.unwrap_or_else(|| panic!("no RESULT line; stderr: {stderr}")))
            .expect("RESULT is JSON");

    assert_eq!(
        result["extensions"],
        serde_json::json!(["permessage-deflate"])
    );
    let accepted = result["responseExtensions"].as_str().unwrap_or_default();
    assert!(accepted.starts_with("permessage-deflate"), "{accepted}");
    assert_eq!(result["joined"]["roomId"], room);
    let own = &result["own"];
    assert_eq!(contents(own), posts, "{own}");
    for m in own.as_array().into_iter().flatten() {
        assert_eq!(m["userName"], "Pÿthon 🐍", "{m}");
    }
    assert_eq!(result["other"]["content"], reply.as_str());
    assert_eq!(result["other"]["userId"], "plain-user");
    assert_eq!(result["other"]["userName"], "Plain Ünïcode");
    let history = &result["history"];
    assert_eq!(history["roomId"], room);
    let mut all = posts.clone();
    all.push(reply);
    assert_eq!(contents(&history["messages"]), all, "{history}");

    // Frames above the threshold went out compressed: the long post (to both clients, but
    // compressed once per broadcast), the reply, the history page.
    let compressed = frames_compressed(&gw).await - compressed_before;
    assert!(compressed >= 3, "only {compressed} frames compressed");
}
