//! Claims of the documentation that can be checked mechanically.

use std::collections::BTreeSet;

use chat_tests::chat_protocol::ServerFrame;
use chat_tests::serde_json::json;
use chat_tests::{Gateway, RedisServer, read_to_string, workspace_root};

/// `value` of `key` in `[section]` of config/default.toml, as written.
fn default_of(toml: &str, section: &str, key: &str) -> String {
    let mut current = "";
    for line in toml.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name;
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return v.trim().trim_matches('"').to_owned();
        }
    }
    panic!("{section}.{key} not in config/default.toml");
}

#[test]
fn redis_md_settings_are_the_gateways_defaults() {
    let root = workspace_root();
    let toml = read_to_string(&root.join("config/default.toml"));
    let doc = read_to_string(&root.join("docs/redis.md"));
    let row = |field: &str| -> String {
        doc.lines()
            .find(|l| l.starts_with(&format!("| `{field}` |")))
            .unwrap_or_else(|| panic!("docs/redis.md has no row for {field}"))
            .to_owned()
    };
    assert!(default_of(&toml, "redis", "url").is_empty());
    assert!(row("url").contains("| empty"), "{}", row("url"));
    for (field, section, key) in [
        ("prefix", "redis", "prefix"),
        ("history_per_room", "history", "per_room"),
        ("cursor_ttl_secs", "offline", "ttl_secs"),
        ("pool_size", "redis", "pool_size"),
        ("command_timeout_ms", "redis", "command_timeout_ms"),
    ] {
        let value = default_of(&toml, section, key);
        let row = row(field);
        assert!(
            row.contains(&format!("`{section}.{key}`")) && row.contains(&value),
            "docs/redis.md says {row:?}; config/default.toml has {section}.{key} = {value}"
        );
    }
    let ttl: u64 = default_of(&toml, "presence", "ttl_secs")
        .parse()
        .expect("number");
    assert!(row("presence_lease_ms").contains(&(ttl * 1000 / 2).to_string()));
}

#[test]
fn architecture_md_lists_every_route() {
    let root = workspace_root();
    let http = read_to_string(&root.join("crates/gateway/src/http.rs"));
    let doc = read_to_string(&root.join("docs/architecture.md"));
    let routes: BTreeSet<&str> = http
        .split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(routes.len() >= 8, "{routes:?}");
    for route in routes {
        assert!(
            doc.contains(&format!("`{route}`")),
            "docs/architecture.md does not list {route}"
        );
    }
}

#[test]
fn every_local_cluster_variable_is_documented() {
    let root = workspace_root();
    let script = read_to_string(&root.join("deploy/local-cluster"));
    let readme = read_to_string(&root.join("deploy/README.md"));
    let vars: BTreeSet<&str> = script
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split(":-").next())
        .filter(|v| v.starts_with("CHAT_") && !v.contains('}'))
        .collect();
    assert!(vars.contains("CHAT_CLUSTER_PORT") && vars.contains("CHAT_REDIS_URL"));
    for var in vars {
        assert!(
            readme.contains(&format!("`{var}`")),
            "deploy/README.md does not document {var}"
        );
    }
}

/// docs/protocol.md: the sender's `sent` arrives before its own copy of the message, for room
/// posts and direct messages, on one node and in cluster mode.
#[tokio::test]
async fn sent_arrives_before_the_senders_copy() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    for gw in [
        Gateway::start(&[]).await,
        Gateway::start(&[("CHAT__REDIS__URL", url.as_str())]).await,
    ] {
        let mut ann = gw.client().await.named("ann");
        ann.login("lobby", "ann", "Ann").await;
        for i in 0..5 {
            for post in [
                json!({"event":"message","roomId":"lobby","content":format!("hi {i}"),"clientMsgId":format!("r{i}")}),
                json!({"event":"message","toUserId":"bob","content":format!("psst {i}"),"clientMsgId":format!("d{i}")}),
            ] {
                ann.send_json(post).await;
                let first = ann
                    .recv_match("sent or message", |f| match f {
                        ServerFrame::Sent(_) | ServerFrame::Message(_) => Some(f.clone()),
                        _ => None,
                    })
                    .await;
                assert!(matches!(first, ServerFrame::Sent(_)), "{first:?}");
                ann.recv_match("the copy", |f| {
                    matches!(f, ServerFrame::Message(_)).then_some(())
                })
                .await;
            }
        }
    }
}

/// README: chat-cli's `/history [N]` pages back — the latest N first, then the N before those.
#[tokio::test]
async fn chat_cli_history_pages_back() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let bin = tokio::task::spawn_blocking(chat_tests::chat_cli_bin)
        .await
        .expect("chat-cli build");
    let gw = Gateway::start(&[]).await;
    let mut ann = gw.client().await.named("ann");
    ann.login("lobby", "ann", "Ann").await;
    for i in 1..=5 {
        ann.post_and_wait("lobby", &format!("m{i}")).await;
    }
    let mut child = tokio::process::Command::new(bin)
        .args([
            "--url",
            &gw.ws_url(),
            "--user",
            "pager",
            "--room",
            "lobby",
            "--raw",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-cli");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The next `history` frame chat-cli prints, as its seqs.
    async fn next_page(
        lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) -> Vec<u64> {
        loop {
            let line = tokio::time::timeout(chat_tests::default_timeout(), lines.next_line())
                .await
                .expect("chat-cli printed nothing in time")
                .expect("read")
                .expect("chat-cli exited");
            if let Ok(ServerFrame::History(page)) = ServerFrame::decode(&line) {
                return page.messages.iter().map(|m| m.seq).collect();
            }
        }
    }
    // Wait until it has joined (its `joined` frame), so /history goes to a joined room.
    loop {
        let line = tokio::time::timeout(chat_tests::default_timeout(), lines.next_line())
            .await
            .expect("no joined in time")
            .expect("read")
            .expect("chat-cli exited");
        if line.contains("\"joined\"") {
            break;
        }
    }
    let mut pages = Vec::new();
    for _ in 0..3 {
        stdin.write_all(b"/history 2\n").await.expect("write");
        pages.push(next_page(&mut lines).await);
    }
    assert_eq!(pages, vec![vec![4, 5], vec![2, 3], vec![1]]);
    stdin.write_all(b"/quit\n").await.expect("write");
    let _ = tokio::time::timeout(chat_tests::default_timeout(), child.wait()).await;
}
