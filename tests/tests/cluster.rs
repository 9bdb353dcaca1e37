//! Cluster mode: three gateway processes sharing one real `redis-server`.

use std::time::Duration;

use chat_tests::chat_protocol::{ChatMessage, ErrorCode, LogoutReason, ServerFrame};
use chat_tests::cluster::{Cluster, room_counts};
use chat_tests::serde_json::{Value, json};
use chat_tests::{Client, Gateway, RedisServer, assert_consecutive, seqs, wait_until};

fn contents(messages: &[ChatMessage]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

#[tokio::test]
async fn clients_on_three_nodes_share_a_room_in_one_order() {
    let cluster = Cluster::start(&[]).await;
    let mut clients = Vec::new();
    for (i, user) in ["ann", "bob", "cid"].iter().enumerate() {
        let mut c = cluster.client(i, user).await;
        c.login("hall", user, &user.to_uppercase()).await;
        clients.push(c);
    }
    // Everyone sees the last arrival come online with the same counts.
    for c in clients.iter_mut() {
        let notice = c.recv_login_of("hall", "cid").await;
        assert_eq!((notice.num, notice.total), (3, 3), "{}", c.label);
    }
    for node in &cluster.nodes {
        assert_eq!(
            room_counts(node, "hall").await,
            Some((3, 3)),
            "every node reports the same counts"
        );
    }

    // Posts from all three nodes at once, interleaved.
    for round in 0..10 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.post("hall", &format!("{round}-{i}")).await;
        }
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let got = c.recv_messages_in("hall", 30).await;
        assert_consecutive(&got, 1);
        orders.push(contents(&got));
        // The cluster's clients negotiate permessage-deflate: message frames came compressed.
        assert!(c.compressed > 0, "{}: nothing arrived compressed", c.label);
    }
    assert_eq!(
        orders[0], orders[1],
        "nodes 1 and 2 delivered different orders"
    );
    assert_eq!(
        orders[0], orders[2],
        "nodes 1 and 3 delivered different orders"
    );

    // Counts and notices after one leaves for good.
    clients[2]
        .send_json(json!({"event":"logout","roomId":"hall"}))
        .await;
    for c in clients.iter_mut().take(2) {
        let notice = c.recv_logout_of("hall", "cid").await;
        assert_eq!(
            (notice.num, notice.total, notice.reason),
            (2, 2, Some(LogoutReason::Left))
        );
    }
    for node in &cluster.nodes {
        assert_eq!(room_counts(node, "hall").await, Some((2, 2)));
    }
}

#[tokio::test]
async fn a_returning_user_gets_exactly_what_it_missed_on_another_node() {
    let cluster = Cluster::start(&[]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r", "bob", "Bob").await;
    ann.post_and_wait("r", "before").await;
    assert_eq!(bob.recv_message_in("r").await.content, "before");
    bob.close().await;
    let gone = ann.recv_logout_of("r", "bob").await;
    assert_eq!(
        (gone.num, gone.total, gone.reason),
        (1, 2, Some(LogoutReason::Offline))
    );

    for i in 1..=4 {
        ann.post_and_wait("r", &format!("missed {i}")).await;
    }
    // Back, through the third node.
    let mut bob = cluster.client(2, "bob again").await;
    let (joined, replayed) = bob
        .login_replay(json!({"event":"login","roomId":"r","userId":"bob","userName":"Bob"}))
        .await;
    assert_eq!((joined.seq, joined.replayed), (5, 4));
    assert_eq!(
        contents(&replayed),
        vec!["missed 1", "missed 2", "missed 3", "missed 4"]
    );
    assert!(replayed.iter().all(|m| m.replay));
    assert_eq!(seqs(&replayed), vec![2, 3, 4, 5]);

    ann.post_and_wait("r", "live").await;
    let live = bob.recv_message_in("r").await;
    assert_eq!(
        (live.seq, live.content.as_str(), live.replay),
        (6, "live", false)
    );

    // A direct message to an offline user waits for them on any node.
    bob.close().await;
    ann.send_json(json!({"event":"message","toUserId":"bob","content":"psst"}))
        .await;
    ann.recv_sent().await;
    let mut bob = cluster.client(0, "bob third").await;
    bob.send_json(json!({"event":"login","roomId":"r","userId":"bob","userName":"Bob"}))
        .await;
    let dm = bob.recv_direct().await;
    assert_eq!(
        (dm.content.as_str(), dm.replay, dm.user_id.as_str()),
        ("psst", true, "ann")
    );
}

#[tokio::test]
async fn a_killed_node_leaves_no_zombie_users() {
    let mut cluster = Cluster::start(&[]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r", "bob", "Bob").await;
    let mut cid = cluster.client(1, "cid").await;
    cid.login("r", "cid", "Cid").await;
    ann.recv_login_of("r", "cid").await;

    cluster.nodes[1].kill9();
    // Within presence.ttl_secs (4 s here) plus a refresh period; generous for slow machines.
    ann.set_timeout(Duration::from_secs(20));
    let mut gone = Vec::new();
    for _ in 0..2 {
        let notice = ann
            .recv_match("logout of a killed node's user", |f| match f {
                ServerFrame::Logout(n) if n.reason == Some(LogoutReason::Offline) => {
                    Some(n.clone())
                }
                _ => None,
            })
            .await;
        gone.push((notice.user_id.to_string(), notice.num, notice.total));
    }
    gone.sort();
    assert_eq!(gone[0].0, "bob");
    assert_eq!(gone[1].0, "cid");
    assert_eq!(
        gone.iter().map(|g| g.1).min(),
        Some(1),
        "after both left, one user is online"
    );
    assert!(gone.iter().all(|g| g.2 == 3), "they are still members");
    assert_eq!(room_counts(&cluster.nodes[0], "r").await, Some((1, 3)));
    assert_eq!(
        cluster.redis_cli(&["ZRANGE", "chat:room:{r}:online", "0", "-1"]),
        "ann"
    );
}

#[tokio::test]
async fn restarting_redis_under_connected_clients_recovers_without_gaps() {
    let mut cluster = Cluster::start(&[]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r", "bob", "Bob").await;
    ann.post_and_wait("r", "before").await;
    let first = bob.recv_message_in("r").await;
    let old_epoch = first.epoch.clone();

    cluster.redis.kill9();
    // Posts fail with a retriable error; connections stay open; readiness drops.
    ann.post_with_id("r", "during", "d1").await;
    let error = ann.recv_error().await;
    assert_eq!(
        (error.code, error.retriable, error.reference.as_deref()),
        (ErrorCode::Unavailable, true, Some("d1"))
    );
    let node = &cluster.nodes[0];
    assert!(
        wait_until(Duration::from_secs(10), || async {
            node.get("/readyz").await.status == 503
        })
        .await
    );
    ann.ping_pong().await;

    cluster.redis.restart().await;
    for node in &cluster.nodes {
        assert!(
            wait_until(Duration::from_secs(20), || async {
                node.get("/readyz").await.status == 200
            })
            .await,
            "node did not become ready again:\n{}",
            node.log_tail(40)
        );
    }
    // Same connections, a new log: seqs start over under a new epoch, with no holes.
    let mut posted = Vec::new();
    for i in 0..5 {
        let sent = ann.post_and_wait("r", &format!("after {i}")).await;
        posted.push(sent.seq);
    }
    assert_eq!(posted, vec![1, 2, 3, 4, 5]);
    let got = bob.recv_messages_in("r", 5).await;
    assert_consecutive(&got, 1);
    assert_ne!(got[0].epoch, old_epoch, "the recreated log has a new epoch");
    assert_eq!(contents(&got)[0], "after 0");

    // Presence and membership of the connected users come back by themselves, announced.
    let back = bob.recv_login_of("r", "ann").await;
    assert_eq!(
        back.user_name, "Ann",
        "the display name survives in the node's memory"
    );
    let node = &cluster.nodes[2];
    assert!(
        wait_until(Duration::from_secs(15), || async {
            room_counts(node, "r").await == Some((2, 2))
        })
        .await,
        "counts did not heal: {:?}",
        room_counts(node, "r").await
    );
}

#[tokio::test]
async fn a_dropped_subscription_is_restored_and_the_gap_filled_from_history() {
    let cluster = Cluster::start(&[]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r", "bob", "Bob").await;
    ann.post_and_wait("r", "m1").await;
    bob.recv_message_in("r").await;

    // Freeze bob's node, so that after its subscription is killed it cannot resubscribe before the
    // next posts are published: pub/sub loses them for that node for certain.
    let frozen = cluster.nodes[1].pid();
    chat_tests::send_signal(frozen, "STOP");
    let killed = cluster.redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.parse::<u32>().unwrap_or(0) >= 2,
        "killed pub/sub clients: {killed}"
    );
    for i in 2..=6 {
        ann.post_and_wait("r", &format!("m{i}")).await;
    }
    chat_tests::send_signal(frozen, "CONT");
    let got = bob.recv_messages_in("r", 5).await;
    assert_consecutive(&got, 2);
    assert_eq!(contents(&got), vec!["m2", "m3", "m4", "m5", "m6"]);
    let mine = ann.recv_messages_in("r", 6).await;
    assert_consecutive(&mine, 1);

    // Both nodes are subscribed again.
    let numsub = || cluster.redis_cli(&["PUBSUB", "NUMSUB", "chat:room:{r}"]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            numsub().ends_with('2')
        })
        .await,
        "PUBSUB NUMSUB: {}",
        numsub()
    );
    ann.post_and_wait("r", "m7").await;
    assert_eq!(bob.recv_message_in("r").await.seq, 7);
    let log = cluster.nodes[1].log_tail(400);
    assert!(
        log.contains("filled a gap from the log"),
        "bob's node recovered m2..m6 from history:\n{log}"
    );
}

#[tokio::test]
async fn the_last_message_lost_by_pubsub_arrives_without_a_later_one() {
    let cluster = Cluster::start(&[]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r", "bob", "Bob").await;
    // Kill the subscriptions while bob's node is frozen and post exactly one message, with
    // nothing after it: no later seq will ever reveal the gap on that node.
    let frozen = cluster.nodes[1].pid();
    chat_tests::send_signal(frozen, "STOP");
    cluster.redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    ann.post_and_wait("r", "only").await;
    chat_tests::send_signal(frozen, "CONT");
    let got = bob.recv_message_in("r").await;
    assert_eq!((got.seq, got.content.as_str()), (1, "only"));
}

/// A pattern row of docs/redis.md's key table: (regex-ish parts, type).
/// The key table of docs/redis.md: (pattern, type, whether the key itself has a TTL — its
/// expiry column names one: room TTL, inbox TTL or `cursor_ttl_secs`).
fn documented_keys() -> Vec<(String, String, bool)> {
    let doc = chat_tests::read_to_string(&chat_tests::workspace_root().join("docs/redis.md"));
    let mut rows = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let (key, kind) = (cells[1], cells[2]);
        if key.starts_with("`chat:")
            && key.ends_with('`')
            && kind.chars().all(|c| c.is_ascii_uppercase())
            && !kind.is_empty()
        {
            // The expiry column is the last (contents may hold escaped `\|`).
            let expiry = cells[cells.len() - 2];
            let expires = expiry.contains("TTL") || expiry.contains("ttl");
            rows.push((
                key.trim_matches('`').to_owned(),
                kind.to_lowercase(),
                expires,
            ));
        }
    }
    rows
}

/// Matches a key against a documented pattern where `{r}` and `{u}` stand for an id inside its
/// literal braces (the Redis Cluster hash tag): `chat:room:{r}:meta` matches
/// `chat:room:{lobby}:meta`.
fn matches_pattern(key: &str, pattern: &str) -> bool {
    let mut rest = key;
    for (i, part) in pattern.split(['{', '}']).enumerate() {
        if i % 2 == 0 {
            let Some(after) = rest.strip_prefix(part) else {
                return false;
            };
            rest = after;
        } else {
            // A tagged id: `{`, the id, `}`, then the next literal part.
            let Some(after_brace) = rest.strip_prefix('{') else {
                return false;
            };
            let Some(end) = after_brace.find('}') else {
                return false;
            };
            if end == 0 {
                return false;
            }
            rest = &after_brace[end + 1..];
        }
    }
    rest.is_empty()
}

#[tokio::test]
async fn the_keys_in_redis_are_the_documented_ones() {
    let cluster = Cluster::start(&[]).await;
    let documented = documented_keys();
    assert!(
        documented.len() >= 8,
        "docs/redis.md key table not found: {documented:?}"
    );

    let mut ann = cluster.client(0, "ann").await;
    ann.login("r1", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r1", "bob", "Bob").await;
    bob.login("r2", "bob", "Bob").await;
    ann.post_and_wait("r1", "hello").await;
    bob.post_and_wait("r2", "there").await;
    ann.send_json(json!({"event":"message","toUserId":"bob","content":"dm","clientMsgId":"dm-1"}))
        .await;
    ann.recv_sent().await;
    bob.send_json(json!({"event":"ack","roomId":"r1","seq":1}))
        .await;
    bob.ping_pong().await;
    bob.close().await;
    ann.recv_logout_of("r1", "bob").await;

    let keys = cluster.redis_cli(&["--scan", "--pattern", "*"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(
        keys.len() >= 10,
        "expected the scenario's keys, got {keys:?}"
    );
    for key in &keys {
        let Some((pattern, kind, expires)) =
            documented.iter().find(|(p, _, _)| matches_pattern(key, p))
        else {
            panic!("key {key} is not documented in docs/redis.md");
        };
        let actual = cluster.redis_cli(&["TYPE", key]);
        assert_eq!(&actual, kind, "{key} (documented as {pattern})");
        let ttl: i64 = cluster.redis_cli(&["TTL", key]).parse().unwrap_or(-3);
        if *expires {
            assert!(ttl > 0, "{key} must expire (offline.ttl_secs), TTL {ttl}");
        } else {
            assert_eq!(ttl, -1, "{key} is documented without expiry");
        }
    }
    // The documented redis-cli reads work.
    let members = cluster.redis_cli(&["SMEMBERS", "chat:room:{r1}:members"]);
    let mut members: Vec<&str> = members.lines().collect();
    members.sort();
    assert_eq!(members, vec!["ann", "bob"]);
    assert_eq!(
        cluster.redis_cli(&["ZRANGE", "chat:room:{r1}:online", "0", "-1"]),
        "ann"
    );
    let log = cluster.redis_cli(&["ZRANGE", "chat:room:{r1}:log", "0", "-1"]);
    let first: Value = chat_tests::serde_json::from_str(log.lines().next().unwrap_or("{}"))
        .expect("log entries are JSON");
    assert_eq!(first["content"], "hello");
    // A cursor is `seq:epoch`: a seq means nothing without the log it belongs to.
    let cursor = cluster.redis_cli(&["HGET", "chat:user:{bob}:cursors", "r1"]);
    let epoch = cluster.redis_cli(&["HGET", "chat:room:{r1}:meta", "epoch"]);
    assert_eq!(cursor, format!("1:{epoch}"));
}

#[tokio::test]
async fn a_custom_prefix_keeps_clusters_apart() {
    let cluster = Cluster::start(&[("CHAT__REDIS__PREFIX", "blue:")]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    ann.post_and_wait("r", "x").await;
    let keys = cluster.redis_cli(&["--scan", "--pattern", "*"]);
    assert!(!keys.is_empty());
    assert!(keys.lines().all(|k| k.starts_with("blue:")), "{keys}");
}

#[tokio::test]
async fn nodes_subscribe_to_a_room_only_while_they_have_members_there() {
    let cluster = Cluster::start(&[]).await;
    let numsub = |channel: &str| {
        let out = cluster.redis_cli(&["PUBSUB", "NUMSUB", channel]);
        out.lines()
            .nth(1)
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    let mut ann = cluster.client(0, "ann").await;
    ann.login("lounge", "ann", "Ann").await;
    assert_eq!(numsub("chat:room:{lounge}"), 1);
    assert_eq!(
        numsub("chat:user:{ann}"),
        1,
        "the inbox channel of a connected user"
    );
    let mut bob = cluster.client(1, "bob").await;
    bob.login("lounge", "bob", "Bob").await;
    let mut bob2 = cluster.client(1, "bob on the same node").await;
    bob2.login("lounge", "bob", "Bob").await;
    assert_eq!(
        numsub("chat:room:{lounge}"),
        2,
        "one subscription per node, not per connection"
    );
    assert_eq!(
        cluster.redis_cli(&["PUBSUB", "CHANNELS", "chat:room:*"]),
        "chat:room:{lounge}"
    );

    bob.close().await;
    bob2.close().await;
    let unsubscribed = wait_until(Duration::from_secs(10), || async {
        numsub("chat:room:{lounge}") == 1
    })
    .await;
    assert!(
        unsubscribed,
        "node 2 keeps its subscription after its last member left"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            numsub("chat:user:{bob}") == 0
        })
        .await
    );
    ann.send_json(json!({"event":"logout","roomId":"lounge"}))
        .await;
    let empty = wait_until(Duration::from_secs(10), || async {
        numsub("chat:room:{lounge}") == 0
    })
    .await;
    assert!(empty, "no node needs the room any more");
}

#[tokio::test]
async fn offline_replay_is_bounded_per_user_and_room() {
    let cluster = Cluster::start(&[("CHAT__OFFLINE__MAX_PER_ROOM", "3")]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r", "bob", "Bob").await;
    ann.post_and_wait("r", "seen").await;
    bob.recv_message_in("r").await;
    bob.close().await;
    ann.recv_logout_of("r", "bob").await;
    for i in 2..=7 {
        ann.post_and_wait("r", &format!("m{i}")).await;
    }
    let mut bob = cluster.client(2, "bob again").await;
    let (joined, replayed) = bob
        .login_replay(json!({"event":"login","roomId":"r","userId":"bob","userName":"Bob"}))
        .await;
    assert_eq!((joined.seq, joined.replayed), (7, 3));
    assert_eq!(
        seqs(&replayed),
        vec![5, 6, 7],
        "the newest of what was missed"
    );
    // The rest is still in history.
    bob.send_json(json!({"event":"history","roomId":"r","before":5}))
        .await;
    let page = bob
        .recv_match("history", |f| match f {
            ServerFrame::History(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(seqs(&page.messages), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_gateway_started_before_redis_serves_and_becomes_ready_when_redis_appears() {
    let port = chat_tests::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let gw = Gateway::start(&[
        ("CHAT__REDIS__URL", url.as_str()),
        ("CHAT__REDIS__COMMAND_TIMEOUT_MS", "500"),
    ])
    .await;
    assert_eq!(
        gw.get("/readyz").await.status,
        503,
        "not ready without Redis"
    );
    let mut ann = gw.client().await.named("ann");
    ann.send_json(json!({"event":"login","roomId":"r","userId":"ann","userName":"Ann"}))
        .await;
    let error = ann.recv_error().await;
    assert_eq!(
        (error.code, error.retriable),
        (ErrorCode::Unavailable, true)
    );

    let _redis = RedisServer::start_on_port(port).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            gw.get("/readyz").await.status == 200
        })
        .await,
        "{}",
        gw.log_tail(30)
    );
    // The same connection now works, live delivery included.
    ann.login("r", "ann", "Ann").await;
    ann.post_and_wait("r", "finally").await;
    assert_eq!(ann.recv_message_in("r").await.content, "finally");
}

#[tokio::test]
async fn a_post_retried_through_another_node_is_delivered_once() {
    let cluster = Cluster::start(&[]).await;
    let mut ann = cluster.client(0, "ann").await;
    ann.login("r", "ann", "Ann").await;
    let mut bob = cluster.client(1, "bob").await;
    bob.login("r", "bob", "Bob").await;
    ann.post_with_id("r", "only once", "retry-me").await;
    let first = ann.recv_sent().await;
    // The client lost its connection before it saw `sent` (say) and retries through node 3.
    let mut ann2 = cluster.client(2, "ann again").await;
    ann2.login("r", "ann", "Ann").await;
    ann2.post_with_id("r", "only once", "retry-me").await;
    let again = ann2.recv_sent().await;
    assert_eq!(
        (again.seq, &again.epoch, again.ts),
        (first.seq, &first.epoch, first.ts)
    );
    ann2.post_and_wait("r", "next").await;
    let got = bob.recv_messages_in("r", 2).await;
    assert_eq!(
        contents(&got),
        vec!["only once", "next"],
        "delivered once, no hole"
    );
    assert_consecutive(&got, 1);
}

/// Reads room messages until `last` arrives or the connection ends; returns them and whether the
/// connection is still open.
async fn read_room_until(client: &mut Client, room: &str, last: u64) -> (Vec<ChatMessage>, bool) {
    use chat_tests::Event;
    let mut got = Vec::new();
    loop {
        match client.next_event(Duration::from_secs(20)).await {
            Some(Event::Frame(ServerFrame::Message(m)))
                if m.room_id.as_ref().is_some_and(|r| r.as_str() == room) =>
            {
                let seq = m.seq;
                got.push(m);
                if seq >= last {
                    return (got, true);
                }
            }
            Some(Event::Frame(_)) => {}
            Some(Event::Closed(_)) | None => return (got, false),
        }
    }
}

#[tokio::test]
async fn no_gaps_for_anyone_when_a_node_dies_under_load() {
    let mut cluster = Cluster::start(&[]).await;
    const PER_POSTER: u64 = 40;
    const TOTAL: u64 = 2 * PER_POSTER;
    // Four watchers on each node; posters on the two nodes that survive.
    let mut watchers = Vec::new();
    for node in 0..3 {
        for i in 0..4 {
            let user = format!("w{node}{i}");
            let mut c = cluster.client(node, &user).await;
            c.login("busy", &user, &user).await;
            watchers.push((node, user, c));
        }
    }
    let posted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut posters = Vec::new();
    for node in [0, 2] {
        let user = format!("poster{node}");
        let mut c = cluster.client(node, &user).await;
        c.login("busy", &user, &user).await;
        let posted = posted.clone();
        posters.push(tokio::spawn(async move {
            for i in 0..PER_POSTER {
                c.post_and_wait("busy", &format!("{user} {i}")).await;
                posted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Paced, so the node dies mid-stream rather than after it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c
        }));
    }
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|(node, user, mut c)| {
            tokio::spawn(async move {
                let (got, open) = read_room_until(&mut c, "busy", TOTAL).await;
                (node, user, got, open)
            })
        })
        .collect();
    // Kill the middle node while the posts are flowing.
    let quarter = || posted.load(std::sync::atomic::Ordering::Relaxed) >= TOTAL / 4;
    assert!(wait_until(Duration::from_secs(20), || async { quarter() }).await);
    cluster.nodes[1].kill9();
    assert!(
        posted.load(std::sync::atomic::Ordering::Relaxed) < TOTAL,
        "killed mid-stream"
    );
    for poster in posters {
        poster.await.expect("poster");
    }

    let url = cluster.nodes[0].ws_url();
    for reader in readers {
        let (node, user, mut got, open) = reader.await.expect("reader");
        if node == 1 {
            assert!(!open, "{user}: its node died");
            // Reconnect elsewhere and continue from what it had.
            let since = got.last().map(|m| m.seq).unwrap_or(0);
            let mut c = Client::connect(&url).await.named(format!("{user} back"));
            let mut login = json!({"event":"login","roomId":"busy","userId":user,"userName":user,"since":since});
            if let Some(last) = got.last() {
                login["epoch"] = json!(last.epoch);
            }
            let (_, replayed) = c.login_replay(login).await;
            got.extend(replayed);
            if got.last().map(|m| m.seq) < Some(TOTAL) {
                let (rest, _) = read_room_until(&mut c, "busy", TOTAL).await;
                got.extend(rest);
            }
        } else {
            assert!(open, "{user} on a surviving node stays connected");
        }
        assert_consecutive(&got, 1);
        assert_eq!(
            got.len() as u64,
            TOTAL,
            "{user} (node {node}) got every message exactly once"
        );
    }
}

/// docs/redis.md's upgrade step: deploy/migrate-to-hash-tags renames keys of the untagged layout
/// so that a gateway of this version reads them.
#[tokio::test]
async fn the_migration_script_renames_untagged_keys() {
    let redis = RedisServer::start().await;
    let port = redis.port().to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    cli(&[
        "HSET",
        "chat:room:lobby:meta",
        "name",
        "Lobby",
        "epoch",
        "e1",
        "seq",
        "1",
    ]);
    cli(&[
        "ZADD",
        "chat:room:lobby:log",
        "1",
        r#"{"event":"message","seq":1,"epoch":"e1","ts":1,"roomId":"lobby","userId":"ann","userName":"Ann","content":"old"}"#,
    ]);
    cli(&["SADD", "chat:room:lobby:members", "ann"]);
    cli(&["HSET", "chat:user:ann:cursors", "lobby", "1:e1"]);
    cli(&[
        "HSET",
        "chat:user:ann:inbox:meta",
        "epoch",
        "e2",
        "seq",
        "0",
    ]);
    cli(&["SADD", "chat:rooms", "lobby"]);
    let script = chat_tests::workspace_root().join("deploy/migrate-to-hash-tags");
    let out = std::process::Command::new(&script)
        .args(["-p", &port])
        .output()
        .expect("the script runs");
    assert!(out.status.success(), "{out:?}");
    let mut keys: Vec<String> = cli(&["--scan", "--pattern", "chat:*"])
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "chat:room:{lobby}:log",
            "chat:room:{lobby}:members",
            "chat:room:{lobby}:meta",
            "chat:rooms",
            "chat:user:{ann}:cursors",
            "chat:user:{ann}:inbox:meta",
        ]
    );

    // A gateway of this version serves the migrated room: history and membership are there.
    let gw = Gateway::start(&[("CHAT__REDIS__URL", redis.url().as_str())]).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            gw.get("/readyz").await.status == 200
        })
        .await
    );
    let page = gw.get("/api/rooms/lobby/messages").await.json();
    assert_eq!(page["epoch"], "e1");
    assert_eq!(page["messages"][0]["content"], "old");
}
