//! `chatctl` against a live local cluster (`deploy/local-cluster`): a room's state, a user's
//! cursors and unread counts, the nodes, JSON output, and `token`.

use std::process::{Command, Output};

use chat_tests::local_cluster::LocalCluster;
use chat_tests::serde_json::{self, Value};
use chat_tests::{Client, chatctl_bin, wait_until};

fn chatctl(cluster: &LocalCluster, args: &[&str]) -> Output {
    Command::new(chatctl_bin())
        .arg("--url")
        .arg(format!("http://127.0.0.1:{}", cluster.port))
        .arg("--redis")
        .arg(format!("redis://127.0.0.1:{}", cluster.redis_port))
        .args(args)
        .output()
        .expect("run chatctl")
}

fn stdout_of(cluster: &LocalCluster, args: &[&str]) -> String {
    let out = chatctl(cluster, args);
    assert!(
        out.status.success(),
        "chatctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(cluster: &LocalCluster, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = stdout_of(cluster, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn chatctl_shows_a_live_rooms_state() {
    // Built first: a build while the clients below sit unread would outlast their heartbeats.
    tokio::task::spawn_blocking(chatctl_bin)
        .await
        .expect("chatctl build");
    let cluster = LocalCluster::start(&[]).await;
    let port = |i: u16| cluster.gateway_port(i);
    // alice on gateway1, bob on gateway2; carol joins and leaves for the offline view.
    let mut alice = Client::connect(&format!("ws://127.0.0.1:{}/ws", port(1)))
        .await
        .named("alice");
    alice.login("lobby", "alice", "Alice").await;
    let mut bob = Client::connect(&format!("ws://127.0.0.1:{}/ws", port(2)))
        .await
        .named("bob");
    bob.login("lobby", "bob", "Bob").await;
    let mut carol = Client::connect(&format!("ws://127.0.0.1:{}/ws", port(3)))
        .await
        .named("carol");
    carol.login("lobby", "carol", "Carol").await;
    alice.post_and_wait("lobby", "first words").await;
    carol.recv_message_in("lobby").await;
    carol.close().await;
    alice.post_and_wait("lobby", "after carol left").await;
    bob.post_and_wait("lobby", "bob was here").await;

    // The table: header line, members with their nodes, the history tail.
    let ok = wait_until(std::time::Duration::from_secs(20), || async {
        let text = stdout_of(&cluster, &["room", "lobby"]);
        text.contains("latest seq 3") && text.contains("carol") && text.contains("offline")
    })
    .await;
    let text = stdout_of(&cluster, &["room", "lobby"]);
    assert!(ok, "{text}");
    assert!(text.contains("room lobby"), "{text}");
    assert!(text.contains("2 online, 3 members"), "{text}");
    for needle in [
        "gateway1",
        "gateway2",
        "Alice",
        "Bob",
        "#3 Bob: bob was here",
        "#1 Alice: first words",
    ] {
        assert!(text.contains(needle), "room view lacks {needle}:\n{text}");
    }

    let room = json_of(&cluster, &["room", "lobby", "--tail", "2"]);
    assert_eq!(room["room"]["seq"], 3);
    assert_eq!(room["history"].as_array().map(Vec::len), Some(2));
    let users = room["users"].as_array().expect("users");
    let alice_row = users
        .iter()
        .find(|u| u["userId"] == "alice")
        .expect("alice");
    assert_eq!(alice_row["nodes"], serde_json::json!(["gateway1"]));
    let carol_row = users
        .iter()
        .find(|u| u["userId"] == "carol")
        .expect("carol");
    assert_eq!(carol_row["online"], false);

    let rooms = stdout_of(&cluster, &["rooms"]);
    assert!(rooms.contains("ROOM") && rooms.contains("lobby"), "{rooms}");

    // Carol read seq 1 and left: two unread, which her next login replays.
    let ok = wait_until(std::time::Duration::from_secs(20), || async {
        json_of(&cluster, &["user", "carol"])["rooms"][0]["unread"] == 2
    })
    .await;
    let carol = json_of(&cluster, &["user", "carol"]);
    assert!(ok, "{carol}");
    assert_eq!(carol["rooms"][0]["roomId"], "lobby");
    assert_eq!(carol["rooms"][0]["online"], false);
    assert!(stdout_of(&cluster, &["user", "carol"]).contains("UNREAD"));

    let gateways = (1..=3)
        .map(|i| format!("http://127.0.0.1:{}", port(i)))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = json_of(&cluster, &["nodes", "--gateways", &gateways]);
    let nodes = nodes["nodes"].as_array().expect("nodes").clone();
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["node"].as_str()).collect();
    for id in ["gateway1", "gateway2", "gateway3"] {
        assert!(ids.contains(&id), "{nodes:?}");
    }
    let g1 = nodes
        .iter()
        .find(|n| n["node"] == "gateway1")
        .expect("gateway1");
    assert_eq!(g1["live"], true);
    assert_eq!(g1["connections"], 1);
    assert!(
        g1["leaseAgeMs"]
            .as_i64()
            .is_some_and(|a| (0..=7500).contains(&a)),
        "{g1}"
    );
    let table = stdout_of(&cluster, &["nodes", "--gateways", &gateways]);
    assert!(
        table.contains("LEASE AGE") && table.contains("gateway3"),
        "{table}"
    );

    // Without the secret: a clear refusal; with it, a token (three base64url parts).
    let token = chatctl(&cluster, &["token", "alice"]);
    assert_eq!(token.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&token.stderr).contains("auth.secret"));
    let token = chatctl(&cluster, &["token", "alice", "--secret", "s3cret"]);
    assert!(token.status.success());
    assert_eq!(
        String::from_utf8_lossy(&token.stdout)
            .trim()
            .split('.')
            .count(),
        3
    );
}
