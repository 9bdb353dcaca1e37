//! Chatting on one node (embedded backend): presence, fan-out, room isolation, old clients,
//! direct messages and offline replay.

use std::collections::BTreeMap;

use chat_tests::chat_protocol::{ErrorCode, LogoutReason, ServerFrame};
use chat_tests::serde_json::json;
use chat_tests::{Client, Gateway, assert_consecutive, seqs};

#[tokio::test]
async fn two_clients_chat() {
    let gw = Gateway::start(&[]).await;

    let mut a = gw.client().await.named("A");
    let joined = a.login("lobby", "alice", "Alice").await;
    assert_eq!((joined.num, joined.total), (1, 1), "{joined:?}");
    assert_eq!((joined.seq, joined.replayed), (0, 0), "{joined:?}");
    assert_eq!(
        joined.room_name, "lobby",
        "an unnamed room is called by its id"
    );
    // The joiner hears its own login notice through the broker.
    let own = a.recv_login_of("lobby", "alice").await;
    assert_eq!((own.num, own.total, own.reason), (1, 1, None));

    let mut b = gw.client().await.named("B");
    let joined = b.login("lobby", "bob", "Bob").await;
    assert_eq!((joined.num, joined.total), (2, 2), "{joined:?}");
    let notice = a.recv_login_of("lobby", "bob").await;
    assert_eq!(notice.user_name, "Bob");
    assert_eq!((notice.num, notice.total, notice.reason), (2, 2, None));
    b.recv_login_of("lobby", "bob").await;

    // A posts with a clientMsgId: both get the same message with seq 1, A gets its receipt.
    a.post_with_id("lobby", "hello, Bob", "c-1").await;
    let at_a = a.recv_message_in("lobby").await;
    let at_b = b.recv_message_in("lobby").await;
    assert_eq!(at_a, at_b, "everyone gets the identical message");
    assert_eq!(at_a.seq, 1);
    assert_eq!(at_a.content, "hello, Bob");
    assert_eq!(
        (at_a.user_id.as_str(), at_a.user_name.as_str()),
        ("alice", "Alice")
    );
    assert_eq!(at_a.client_msg_id.as_deref(), Some("c-1"));
    assert!(!at_a.replay && at_a.to_user_id.is_none());
    assert!(
        at_a.ts > 1_600_000_000_000,
        "ts is in milliseconds: {}",
        at_a.ts
    );
    let sent = a.recv_sent().await;
    assert_eq!(sent.client_msg_id.as_deref(), Some("c-1"));
    assert_eq!(sent.room_id.as_ref().map(|r| r.as_str()), Some("lobby"));
    assert_eq!((sent.seq, &sent.epoch, sent.ts), (1, &at_a.epoch, at_a.ts));

    // B posts: seq 2 for both.
    b.post("lobby", "hi Alice").await;
    let at_b = b.recv_message_in("lobby").await;
    let at_a = a.recv_message_in("lobby").await;
    assert_eq!(at_a, at_b);
    assert_eq!((at_a.seq, at_a.user_id.as_str()), (2, "bob"));
    assert_eq!(at_a.content, "hi Alice");
    let sent = b.recv_sent().await;
    assert_eq!((sent.seq, sent.client_msg_id), (2, None));

    // B's socket closes: A is told B went offline; B stays a member.
    b.close().await;
    let gone = a.recv_logout_of("lobby", "bob").await;
    assert_eq!(gone.reason, Some(LogoutReason::Offline));
    assert_eq!((gone.num, gone.total), (1, 2), "{gone:?}");

    // B comes back: online again, nothing missed.
    let mut b = gw.client().await.named("B2");
    let joined = b.login("lobby", "bob", "Bob").await;
    assert_eq!(
        (joined.num, joined.total, joined.seq),
        (2, 2, 2),
        "{joined:?}"
    );
    assert_eq!(joined.replayed, 0, "B saw everything before it left");
    let back = a.recv_login_of("lobby", "bob").await;
    assert_eq!((back.num, back.total), (2, 2));

    // B leaves for good: A is told, and B gets the same frame as confirmation.
    b.send_json(json!({"event": "logout", "roomId": "lobby"}))
        .await;
    let left = a.recv_logout_of("lobby", "bob").await;
    assert_eq!(left.reason, Some(LogoutReason::Left));
    assert_eq!((left.num, left.total), (1, 1), "{left:?}");
    let confirmation = b.recv_logout_of("lobby", "bob").await;
    assert_eq!(confirmation, left);

    // B is no longer in the room: posting there is refused, and nothing reaches it.
    b.post_with_id("lobby", "still here?", "c-2").await;
    let error = b.expect_error(ErrorCode::NotJoined).await;
    assert_eq!(error.reference.as_deref(), Some("c-2"));
    assert!(!error.retriable);
    a.post_and_wait("lobby", "bye").await;
    assert_eq!(a.recv_message_in("lobby").await.seq, 3);
    b.ping_pong().await;
    assert!(
        !b.pending
            .iter()
            .any(|f| matches!(f, ServerFrame::Message(_))),
        "a user who left gets no messages: {:?}",
        b.pending
    );
}

#[tokio::test]
async fn rooms_are_isolated() {
    let gw = Gateway::start(&[]).await;
    let mut c1 = gw.client().await.named("c1");
    let mut c2 = gw.client().await.named("c2");
    let mut c3 = gw.client().await.named("c3");
    let mut multi = gw.client().await.named("multi");
    c1.login("r1", "u1", "U1").await;
    c2.login("r2", "u2", "U2").await;
    c3.login("r3", "u3", "U3").await;
    let j1 = multi.login("r1", "um", "UM").await;
    let j2 = multi.login("r2", "um", "UM").await;
    assert_eq!((j1.num, j1.total, j2.num, j2.total), (2, 2, 2, 2));

    // Interleaved posts, each confirmed before the next, so their global order is fixed.
    let posts = [
        (0, "r1", "r1-a"),
        (1, "r2", "r2-a"),
        (2, "r3", "r3-a"),
        (0, "r1", "r1-b"),
        (1, "r2", "r2-b"),
    ];
    let mut room_seq = BTreeMap::new();
    for (i, room, content) in posts {
        let client = [&mut c1, &mut c2, &mut c3]
            .into_iter()
            .nth(i)
            .expect("client");
        let sent = client.post_and_wait(room, content).await;
        let expected = room_seq.entry(room).and_modify(|s| *s += 1).or_insert(1);
        assert_eq!(sent.seq, *expected, "seqs are per room: {content}");
    }
    let sent = multi.post_and_wait("r2", "r2-c from multi").await;
    assert_eq!(sent.seq, 3);
    let sent = multi.post_and_wait("r1", "r1-c from multi").await;
    assert_eq!(sent.seq, 3);

    let contents = |ms: &[chat_tests::chat_protocol::ChatMessage]| {
        ms.iter().map(|m| m.content.clone()).collect::<Vec<_>>()
    };
    let r1 = c1.recv_messages_in("r1", 3).await;
    assert_consecutive(&r1, 1);
    assert_eq!(contents(&r1), ["r1-a", "r1-b", "r1-c from multi"]);
    let r2 = c2.recv_messages_in("r2", 3).await;
    assert_consecutive(&r2, 1);
    assert_eq!(contents(&r2), ["r2-a", "r2-b", "r2-c from multi"]);
    let r3 = c3.recv_messages_in("r3", 1).await;
    assert_eq!((r3[0].seq, r3[0].content.as_str()), (1, "r3-a"));
    // The connection in two rooms gets both, each in order.
    assert_eq!(multi.recv_messages_in("r1", 3).await, r1);
    assert_eq!(multi.recv_messages_in("r2", 3).await, r2);

    // Fence: one more message per room, posted after everything above. On one node every
    // connection's frames arrive in broker order, so anything leaked from another room would
    // arrive before the fence.
    for (client, room) in [(&mut c1, "r1"), (&mut c2, "r2"), (&mut c3, "r3")] {
        client.post_and_wait(room, "fence").await;
    }
    for (client, room, n) in [(&mut c1, "r1", 4), (&mut c2, "r2", 4), (&mut c3, "r3", 2)] {
        let fence = client.recv_message_in(room).await;
        assert_eq!((fence.content.as_str(), fence.seq), ("fence", n));
        for frame in client.take_pending() {
            let room_of = match &frame {
                ServerFrame::Message(m) => m.room_id.as_ref().map(|r| r.as_str().to_owned()),
                ServerFrame::Login(n) | ServerFrame::Logout(n) => Some(n.room_id.to_string()),
                ServerFrame::Sent(s) => s.room_id.as_ref().map(|r| r.to_string()),
                ServerFrame::Joined(j) => Some(j.room_id.to_string()),
                _ => None,
            };
            assert_eq!(
                room_of.as_deref(),
                Some(room),
                "{}: frame from another room: {frame:?}",
                client.label
            );
        }
    }
    for room in ["r1", "r2"] {
        assert_eq!(multi.recv_message_in(room).await.content, "fence");
    }
    assert!(
        multi.take_pending().iter().all(|f| match f {
            ServerFrame::Message(m) => m.room_id.as_ref().is_some_and(|r| r.as_str() != "r3"),
            ServerFrame::Login(n) | ServerFrame::Logout(n) => n.room_id.as_str() != "r3",
            _ => true,
        }),
        "nothing of r3 reaches a connection outside it"
    );
}

#[tokio::test]
async fn legacy_frames() {
    let gw = Gateway::start(&[]).await;
    // An old tutorial client: numeric room and user ids.
    let mut old = gw.client().await.named("old");
    old.send_json(json!({"event": "login", "roomId": 1, "userId": 42, "userName": "Old"}))
        .await;
    let joined = old.expect_joined("1").await;
    assert_eq!((joined.room_id.as_str(), joined.num), ("1", 1));
    let own = old.recv_login_of("1", "42").await;
    assert_eq!(own.user_id.as_str(), "42");

    // A new client naming the room "1" is in the same room.
    let mut new = gw.client().await.named("new");
    let joined = new.login("1", "newbie", "New").await;
    assert_eq!(
        (joined.num, joined.total),
        (2, 2),
        "1 and \"1\" are the same room"
    );
    old.recv_login_of("1", "newbie").await;

    // A frame without `event` is a message.
    old.send_json(json!({"roomId": 1, "content": "legacy hello"}))
        .await;
    let at_new = new.recv_message_in("1").await;
    let at_old = old.recv_message_in("1").await;
    assert_eq!(at_new, at_old);
    assert_eq!((at_new.seq, at_new.content.as_str()), (1, "legacy hello"));
    assert_eq!(at_new.user_id.as_str(), "42");
    let sent = old.recv_sent().await;
    assert_eq!(
        (sent.room_id.as_ref().map(|r| r.as_str()), sent.seq),
        (Some("1"), 1)
    );

    // Numeric room id with an event, a numeric clientMsgId, and a string id from the old client.
    new.send_json(json!({"event": "message", "roomId": 1, "content": "numeric", "clientMsgId": 7}))
        .await;
    let sent = new.recv_sent().await;
    assert_eq!((sent.seq, sent.client_msg_id.as_deref()), (2, Some("7")));
    old.send_json(json!({"roomId": "1", "content": "string id, no event"}))
        .await;
    for client in [&mut old, &mut new] {
        let ms = client.recv_messages_in("1", 2).await;
        assert_eq!(seqs(&ms), [2, 3]);
        assert_eq!(ms[0].content, "numeric");
        assert_eq!(ms[1].content, "string id, no event");
    }

    // History with a numeric room id.
    new.send_json(json!({"event": "history", "roomId": 1}))
        .await;
    let page = new
        .recv_match("history", |f| match f {
            ServerFrame::History(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(page.room_id.as_str(), "1");
    assert_eq!(seqs(&page.messages), [1, 2, 3]);

    // Logout with a numeric room id.
    old.send_json(json!({"event": "logout", "roomId": 1})).await;
    let left = new.recv_logout_of("1", "42").await;
    assert_eq!(
        (left.reason, left.num, left.total),
        (Some(LogoutReason::Left), 1, 1)
    );
}

#[tokio::test]
async fn direct_messages() {
    let gw = Gateway::start(&[]).await;
    let mut a = gw.client().await.named("alice");
    let mut b = gw.client().await.named("bob");
    let mut b2 = gw.client().await.named("bob-2");
    a.login("ra", "alice", "Alice").await;
    b.login("rb", "bob", "Bob").await; // another room than Alice's
    b2.login("ra", "bob", "Bob").await; // a second connection of Bob

    // Carol was online once, then went away.
    let mut c = gw.client().await.named("carol");
    c.login("ra", "carol", "Carol").await;
    a.recv_login_of("ra", "carol").await;
    c.close().await;
    let off = a.recv_logout_of("ra", "carol").await;
    assert_eq!(off.reason, Some(LogoutReason::Offline));

    a.send_json(
        json!({"event": "message", "toUserId": "bob", "content": "psst", "clientMsgId": "dm-1"}),
    )
    .await;
    let at_b = b.recv_direct().await;
    assert_eq!(at_b.to_user_id.as_ref().map(|u| u.as_str()), Some("bob"));
    assert!(
        at_b.room_id.is_none(),
        "a direct message names no room: {at_b:?}"
    );
    assert_eq!(
        (at_b.user_id.as_str(), at_b.user_name.as_str()),
        ("alice", "Alice")
    );
    assert_eq!(
        (at_b.content.as_str(), at_b.seq, at_b.replay),
        ("psst", 1, false)
    );
    let at_b2 = b2.recv_direct().await;
    assert_eq!(at_b2, at_b, "every connection of the addressee gets it");
    let own_copy = a.recv_direct().await;
    assert_eq!(
        own_copy.to_user_id.as_ref().map(|u| u.as_str()),
        Some("bob")
    );
    assert_eq!(
        (own_copy.content.as_str(), own_copy.user_id.as_str()),
        ("psst", "alice")
    );
    let sent = a.recv_sent().await;
    assert_eq!(sent.to_user_id.as_ref().map(|u| u.as_str()), Some("bob"));
    assert!(sent.room_id.is_none());
    assert_eq!(sent.client_msg_id.as_deref(), Some("dm-1"));
    assert_eq!(
        (sent.seq, &sent.epoch),
        (own_copy.seq, &own_copy.epoch),
        "the receipt names the sender's inbox copy"
    );

    // Bob answers from his second connection: Alice gets it, and both of Bob's connections get
    // Bob's own copy.
    b2.send_json(json!({"event": "message", "toUserId": "alice", "content": "what?"}))
        .await;
    let at_a = a.recv_direct().await;
    assert_eq!(
        (at_a.content.as_str(), at_a.user_id.as_str()),
        ("what?", "bob")
    );
    assert_eq!(at_a.to_user_id.as_ref().map(|u| u.as_str()), Some("alice"));
    assert_eq!(
        at_a.seq,
        own_copy.seq + 1,
        "Alice's inbox: her own copy, then Bob's answer"
    );
    for client in [&mut b, &mut b2] {
        let copy = client.recv_direct().await;
        assert_eq!((copy.content.as_str(), copy.seq), ("what?", 2));
    }
    b2.recv_sent().await;

    // A direct message to Carol, who is offline, is replayed when she logs in again.
    a.send_json(json!({"event": "message", "toUserId": "carol", "content": "call me", "clientMsgId": "dm-2"}))
        .await;
    let sent = a.recv_sent().await;
    assert_eq!(sent.client_msg_id.as_deref(), Some("dm-2"));
    let mut c = gw.client().await.named("carol-again");
    c.login("rc", "carol", "Carol").await;
    let missed = c.recv_direct().await;
    assert_eq!(
        (missed.content.as_str(), missed.user_id.as_str()),
        ("call me", "alice")
    );
    assert!(
        missed.replay,
        "missed direct messages come as replays: {missed:?}"
    );

    // None of this leaked into rooms.
    for client in [&mut a, &mut b, &mut b2, &mut c] {
        client.ping_pong().await;
        assert!(
            !client
                .pending
                .iter()
                .any(|f| matches!(f, ServerFrame::Message(m) if m.room_id.is_some())),
            "{}: {:?}",
            client.label,
            client.pending
        );
    }
}

/// A direct message to a user who has never connected should wait for them, like one to a user
/// who is offline.
#[tokio::test]
async fn direct_message_to_a_user_never_seen() {
    let gw = Gateway::start(&[]).await;
    let mut a = gw.client().await.named("alice");
    a.login("ra", "alice", "Alice").await;
    a.send_json(json!({"event": "message", "toUserId": "dave", "content": "welcome, Dave"}))
        .await;
    a.recv_sent().await;
    let mut d = gw.client().await.named("dave");
    d.login("rd", "dave", "Dave").await;
    let missed = d.recv_direct().await;
    assert_eq!(
        (missed.content.as_str(), missed.replay),
        ("welcome, Dave", true)
    );
}

#[tokio::test]
async fn offline_replay() {
    let gw = Gateway::start(&[]).await;
    let mut a = gw.client().await.named("A");
    let mut b = gw.client().await.named("B");
    a.login("room", "alice", "Alice").await;
    b.login("room", "bob", "Bob").await;
    a.post_and_wait("room", "m1").await;
    assert_eq!(b.recv_message_in("room").await.seq, 1);

    // B goes away (without ever acking: its cursor is what reached its socket, seq 1).
    b.close().await;
    a.recv_logout_of("room", "bob").await;
    for content in ["m2", "m3", "m4"] {
        a.post_and_wait("room", content).await;
    }

    // B comes back on a new connection: `joined` announces 3, then exactly those, then live.
    let mut b = gw.client().await.named("B-again");
    let (joined, replayed) = b
        .login_replay(
            json!({"event": "login", "roomId": "room", "userId": "bob", "userName": "Bob"}),
        )
        .await;
    assert_eq!(
        (joined.replayed, joined.seq, joined.num, joined.total),
        (3, 4, 2, 2),
        "{joined:?}"
    );
    assert_eq!(seqs(&replayed), [2, 3, 4]);
    assert!(replayed.iter().all(|m| m.replay), "{replayed:?}");
    let contents: Vec<_> = replayed.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["m2", "m3", "m4"]);
    a.post_and_wait("room", "m5").await;
    let live = b.recv_message_in("room").await;
    assert_eq!(
        (live.seq, live.content.as_str(), live.replay),
        (5, "m5", false)
    );

    // B acknowledges only up to 3, then drops: what it did not ack comes again, nothing more.
    b.send_json(json!({"event": "ack", "roomId": "room", "seq": 3}))
        .await;
    b.ping_pong().await; // the ack is processed before the pong is written
    b.close().await;
    a.recv_logout_of("room", "bob").await;
    a.post_and_wait("room", "m6").await;
    let mut b = gw.client().await.named("B-third");
    let (joined, replayed) = b
        .login_replay(
            json!({"event": "login", "roomId": "room", "userId": "bob", "userName": "Bob"}),
        )
        .await;
    assert_eq!(joined.replayed, 3, "{joined:?}");
    assert_eq!(
        seqs(&replayed),
        [4, 5, 6],
        "replay starts after the acked seq"
    );

    // This time B acks everything, then reconnects: nothing is replayed.
    b.send_json(json!({"event": "ack", "roomId": "room", "seq": 6}))
        .await;
    b.ping_pong().await;
    b.close().await;
    a.recv_logout_of("room", "bob").await;
    let mut b = gw.client().await.named("B-fourth");
    let (joined, replayed) = b
        .login_replay(
            json!({"event": "login", "roomId": "room", "userId": "bob", "userName": "Bob"}),
        )
        .await;
    assert_eq!((joined.replayed, replayed.len()), (0, 0), "{joined:?}");

    // `since` asks for everything after a seq, whatever the stored cursor says.
    let mut b2 = gw.client().await.named("B-since");
    let (joined, replayed) = b2
        .login_replay(json!({"event": "login", "roomId": "room", "userId": "bob", "userName": "Bob", "since": 2}))
        .await;
    assert_eq!(joined.replayed, 4);
    assert_eq!(seqs(&replayed), [3, 4, 5, 6]);
    assert!(replayed.iter().all(|m| m.replay));

    // A `since` from another epoch (the log was reset) means everything is new.
    let mut b3 = gw.client().await.named("B-epoch");
    let (joined, replayed) = b3
        .login_replay(json!({
            "event": "login", "roomId": "room", "userId": "bob", "userName": "Bob",
            "since": 5, "epoch": "some-older-epoch"
        }))
        .await;
    assert_eq!(joined.replayed, 6);
    assert_eq!(seqs(&replayed), [1, 2, 3, 4, 5, 6]);

    // Live traffic continues after the replay on every connection, without duplicates.
    a.post_and_wait("room", "m7").await;
    for client in [&mut b, &mut b2, &mut b3] {
        let m = client.recv_message_in("room").await;
        assert_eq!((m.seq, m.replay), (7, false), "{}", client.label);
        client.ping_pong().await;
        assert!(
            !client
                .pending
                .iter()
                .any(|f| matches!(f, ServerFrame::Message(_))),
            "{}: duplicates {:?}",
            client.label,
            client.pending
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_fanout() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 20;
    let gw = Gateway::start(&[]).await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut c = gw.client().await.named(format!("c{i}"));
        let joined = c
            .login("crowd", &format!("user{i}"), &format!("User {i}"))
            .await;
        assert_eq!(joined.num, i as u64 + 1);
        clients.push(c);
    }
    // Five senders post concurrently, without waiting for receipts.
    for i in 0..MESSAGES {
        let sender = &mut clients[i % 5];
        sender.post("crowd", &format!("message {i}")).await;
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let ms = c.recv_messages_in("crowd", MESSAGES).await;
                (c.label.clone(), ms)
            })
        })
        .collect();
    let mut reference: Option<Vec<(u64, String)>> = None;
    for reader in readers {
        let (label, ms) = reader.await.expect("reader task");
        assert_consecutive(&ms, 1);
        let got: Vec<(u64, String)> = ms.iter().map(|m| (m.seq, m.content.clone())).collect();
        match &reference {
            None => reference = Some(got),
            Some(r) => assert_eq!(&got, r, "{label} saw another order"),
        }
    }
    let mut contents: Vec<String> = reference
        .expect("50 readers")
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    contents.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!("message {i}")).collect();
    expected.sort();
    assert_eq!(contents, expected);
}

#[tokio::test]
async fn reconnect_after_client_abort() {
    // A client that vanishes without a close handshake counts as offline too.
    let gw = Gateway::start(&[]).await;
    let mut a = gw.client().await.named("A");
    a.login("room", "alice", "Alice").await;
    let mut b = Client::connect(&gw.ws_url()).await.named("B");
    b.login("room", "bob", "Bob").await;
    a.recv_login_of("room", "bob").await;
    drop(b);
    let gone = a.recv_logout_of("room", "bob").await;
    assert_eq!(
        (gone.reason, gone.num, gone.total),
        (Some(LogoutReason::Offline), 1, 2)
    );
}

/// An `ack` for a seq the connection never received (a buggy or hostile client) must not corrupt
/// the user's cursor: reconnecting afterwards replays nothing it already had.
#[tokio::test]
async fn ack_beyond_delivered_does_not_poison_the_cursor() {
    let gw = Gateway::start(&[]).await;
    let mut a = gw.client().await.named("A");
    a.login("r", "alice", "Alice").await;
    let mut b = gw.client().await.named("B");
    b.login("r", "bob", "Bob").await;
    for i in 1..=3 {
        a.post_and_wait("r", &format!("m{i}")).await;
    }
    assert_eq!(seqs(&b.recv_messages_in("r", 3).await), [1, 2, 3]);
    // The gateway may refuse this ack with an error or clamp it; either way it must not store it.
    b.send_json(json!({"event": "ack", "roomId": "r", "seq": 1000}))
        .await;
    b.ping_pong().await;
    b.close().await;
    a.recv_logout_of("r", "bob").await;
    let mut b = gw.client().await.named("B-again");
    let (joined, replayed) = b
        .login_replay(json!({"event": "login", "roomId": "r", "userId": "bob", "userName": "Bob"}))
        .await;
    assert_eq!(
        (joined.replayed, seqs(&replayed)),
        (0, vec![]),
        "bob had everything"
    );
}

#[tokio::test]
async fn presence_counts_users_not_connections() {
    let gw = Gateway::start(&[]).await;
    let mut b = gw.client().await.named("B");
    b.login("room", "bob", "Bob").await;
    let mut a1 = gw.client().await.named("A1");
    let mut a2 = gw.client().await.named("A2");
    let joined = a1.login("room", "alice", "Alice").await;
    assert_eq!((joined.num, joined.total), (2, 2));
    let joined = a2.login("room", "alice", "Alice").await;
    assert_eq!(
        (joined.num, joined.total),
        (2, 2),
        "a second connection is not a second user"
    );
    // Logging in again on the same connection is harmless.
    let again = a2.login("room", "alice", "Alice").await;
    assert_eq!((again.num, again.total, again.replayed), (2, 2, 0));

    // Closing one of Alice's two connections: she is still online, nobody is told anything.
    a1.close().await;
    let sent = b.post_and_wait("room", "fence 1").await;
    assert_eq!(a2.recv_message_in("room").await.seq, sent.seq);
    b.recv_message_in("room").await;
    let logins: Vec<_> = b
        .take_pending()
        .into_iter()
        .filter(|f| matches!(f, ServerFrame::Login(_) | ServerFrame::Logout(_)))
        .collect();
    assert!(
        logins
            .iter()
            .all(|f| matches!(f, ServerFrame::Login(n) if n.num <= 2)),
        "one login notice per user coming online, no logout while a connection remains: {logins:?}"
    );
    let alice_logins = logins
        .iter()
        .filter(|f| matches!(f, ServerFrame::Login(n) if n.user_id.as_str() == "alice"))
        .count();
    assert_eq!(alice_logins, 1, "{logins:?}");
    let rooms = gw.get("/api/rooms").await.json();
    assert_eq!(rooms["rooms"][0]["num"], 2, "{rooms}");

    // Her last connection goes: now she is offline.
    a2.close().await;
    let gone = b.recv_logout_of("room", "alice").await;
    assert_eq!(
        (gone.reason, gone.num, gone.total),
        (Some(LogoutReason::Offline), 1, 2)
    );

    // `logout` from one connection takes every connection of the user out of the room.
    let mut a3 = gw.client().await.named("A3");
    let mut a4 = gw.client().await.named("A4");
    a3.login("room", "alice", "Alice").await;
    a4.login("room", "alice", "Alice").await;
    a3.send_json(json!({"event": "logout", "roomId": "room"}))
        .await;
    let left = b.recv_logout_of("room", "alice").await;
    assert_eq!(
        (left.reason, left.num, left.total),
        (Some(LogoutReason::Left), 1, 1)
    );
    assert_eq!(a3.recv_logout_of("room", "alice").await, left);
    assert_eq!(a4.recv_logout_of("room", "alice").await, left);
    b.post_and_wait("room", "after alice left").await;
    a4.ping_pong().await;
    a4.post_with_id("room", "am I in?", "q").await;
    let error = a4.expect_error(ErrorCode::NotJoined).await;
    assert_eq!(error.reference.as_deref(), Some("q"));
    assert!(
        !a4.pending
            .iter()
            .any(|f| matches!(f, ServerFrame::Message(m) if m.content == "after alice left")),
        "{:?}",
        a4.pending
    );
}

/// `websocket.write_delay_ms` gathers frames into fewer writes; everything still arrives, once,
/// in order.
#[tokio::test]
async fn a_write_delay_still_delivers_everything_in_order() {
    let gw = Gateway::start(&[("CHAT__WEBSOCKET__WRITE_DELAY_MS", "20")]).await;
    let mut ann = gw.client().await.named("ann");
    ann.login("r", "ann", "Ann").await;
    let mut bob = gw.client().await.named("bob");
    bob.login("r", "bob", "Bob").await;
    for i in 0..30 {
        ann.post("r", &format!("m{i}")).await;
    }
    let got = bob.recv_messages_in("r", 30).await;
    assert_consecutive(&got, 1);
    let contents: Vec<String> = got.iter().map(|m| m.content.clone()).collect();
    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(contents, want);
}
