//! The Redis store against a real `redis-server`: seqs, history paging, cursors, membership,
//! presence across nodes, reaping, and hostile data.

mod redis_support;

use std::time::Duration;

use chat_backend::{
    BackendError, BrokerEvent, Counts, CursorUpdate, Draft, JoinRequest, Position, Refreshed,
    StreamKey,
};
use chat_protocol::{ServerFrame, UserId};
use redis_support::*;

#[tokio::test]
async fn post_assigns_contiguous_seqs_and_publishes_parsable_frames() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut backend = open(config(&server, "n1")).await;
        let lobby = room("lobby");
        let stream = StreamKey::Room(lobby.clone());
        backend.broker.subscribe(&stream).await.expect("subscribe");
        let head = backend.store.head(&stream).await.expect("head");
        assert_eq!(head.seq, 0);

        let mut posted = Vec::new();
        for i in 1..=5u64 {
            let mut d = draft("ann", &format!("m{i} \"quoted\" \u{e9}"));
            d.client_msg_id = Some(format!("c{i}"));
            let p = backend.store.post(&lobby, &d).await.expect("post");
            assert_eq!(p.seq, i);
            assert_eq!(
                p.epoch, head.epoch,
                "the epoch seen by head is the one posts use"
            );
            posted.push(p);
        }
        for p in &posted {
            let (message, frame) = expect_event(&mut backend.events, "message", |e| match e {
                BrokerEvent::Message {
                    stream: s,
                    message,
                    frame,
                } if s == stream => Some((message, frame)),
                _ => None,
            })
            .await;
            assert_eq!(message.seq, p.seq);
            assert_eq!(message.ts, p.ts);
            assert_eq!(message.room_id.as_ref(), Some(&lobby));
            assert_eq!(message.user_name, "ANN");
            assert_eq!(message.client_msg_id, Some(format!("c{}", p.seq)));
            // The frame is the wire encoding of exactly this message.
            assert_eq!(
                ServerFrame::decode(&frame).ok(),
                Some(ServerFrame::Message(message))
            );
        }
        let stored = backend
            .store
            .range(&stream, 0, u64::MAX, 100, 0)
            .await
            .expect("range");
        assert_eq!(
            stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        let head = backend.store.head(&stream).await.expect("head");
        assert_eq!(head.seq, 5);
        assert!(stored.windows(2).all(|w| w[0].ts <= w[1].ts));
    })
    .await;
}

#[tokio::test]
async fn direct_messages_land_in_both_inboxes_once_for_self() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut backend = open(config(&server, "n1")).await;
        let ann = StreamKey::Inbox(user("ann"));
        let bob = StreamKey::Inbox(user("bob"));
        backend.broker.subscribe(&ann).await.expect("subscribe");
        backend.broker.subscribe(&bob).await.expect("subscribe");

        let p = backend
            .store
            .post_direct(&user("bob"), &draft("ann", "psst"))
            .await
            .expect("dm");
        let recipient = p.recipient.clone().expect("stored for the recipient");
        assert_eq!((recipient.seq, p.sender.seq), (1, 1));
        assert_eq!(recipient.ts, p.sender.ts);
        assert_ne!(recipient.epoch, p.sender.epoch, "two inboxes, two epochs");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (s, m) = expect_event(&mut backend.events, "dm", |e| match e {
                BrokerEvent::Message {
                    stream, message, ..
                } => Some((stream, message)),
                _ => None,
            })
            .await;
            assert_eq!(m.to_user_id, Some(user("bob")));
            assert_eq!(m.room_id, None);
            seen.push(s);
        }
        seen.sort();
        assert_eq!(seen, vec![ann.clone(), bob.clone()]);

        // To oneself: one append, one publish.
        let p = backend
            .store
            .post_direct(&user("ann"), &draft("ann", "note to self"))
            .await
            .expect("self dm");
        assert_eq!(p.recipient.as_ref(), Some(&p.sender));
        assert_eq!(p.sender.seq, 2);
        let inbox = backend
            .store
            .range(&ann, 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(inbox.len(), 2);
        assert_eq!(
            backend.store.head(&bob).await.expect("head").seq,
            1,
            "bob's inbox untouched by ann's note"
        );
    })
    .await;
}

#[tokio::test]
async fn range_and_history_paging_bounds_and_min_ts() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg = config(&server, "n1");
        cfg.history_per_room = 5;
        let backend = open(cfg).await;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        let mut last_ts = 0;
        for i in 1..=10 {
            if i == 9 {
                // Make sure 9 and 10 are strictly newer than 1..8 on the Redis clock.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let p = backend
                .store
                .post(&r, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
            if i == 9 {
                last_ts = p.ts;
            }
        }
        let seqs = |v: &[chat_protocol::ChatMessage]| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        let store = &backend.store;

        // Trimmed to the newest 5.
        let all = store
            .range(&stream, 0, u64::MAX, 100, 0)
            .await
            .expect("range");
        assert_eq!(seqs(&all), vec![6, 7, 8, 9, 10]);
        // Window (6, 9], newest 2 of it.
        let some = store.range(&stream, 6, 9, 2, 0).await.expect("range");
        assert_eq!(seqs(&some), vec![8, 9]);
        assert!(
            store
                .range(&stream, 9, 9, 5, 0)
                .await
                .expect("range")
                .is_empty()
        );
        assert!(
            store
                .range(&stream, 0, 10, 0, 0)
                .await
                .expect("range")
                .is_empty()
        );
        assert!(
            store
                .range(&stream, 10, u64::MAX, 5, 0)
                .await
                .expect("range")
                .is_empty()
        );
        // min_ts leaves out older messages.
        let recent = store
            .range(&stream, 0, u64::MAX, 100, last_ts)
            .await
            .expect("range");
        assert_eq!(seqs(&recent), vec![9, 10]);
        assert!(
            store
                .range(&stream, 0, u64::MAX, 100, u64::MAX)
                .await
                .expect("range")
                .is_empty()
        );
        // Unknown stream: empty, not an error.
        assert!(
            store
                .range(&StreamKey::Room(room("nope")), 0, u64::MAX, 10, 0)
                .await
                .expect("range")
                .is_empty()
        );

        let head = store.head(&stream).await.expect("head");
        let (epoch, page) = store.history(&r, None, 3).await.expect("history");
        assert_eq!(epoch, head.epoch);
        assert_eq!(seqs(&page), vec![8, 9, 10]);
        let (_, page) = store.history(&r, Some(8), 2).await.expect("history");
        assert_eq!(seqs(&page), vec![6, 7]);
        let (_, page) = store.history(&r, Some(7), 10).await.expect("history");
        assert_eq!(seqs(&page), vec![6], "older ones were trimmed");
        let (_, page) = store.history(&r, Some(1), 10).await.expect("history");
        assert!(page.is_empty());
        let (_, page) = store.history(&r, Some(0), 10).await.expect("history");
        assert!(page.is_empty());
        let (epoch, page) = store.history(&r, None, 0).await.expect("history");
        assert_eq!(epoch, head.epoch);
        assert!(page.is_empty());
        let (epoch, page) = store
            .history(&room("nope"), None, 10)
            .await
            .expect("history");
        assert_eq!((epoch.as_str(), page.len()), ("", 0));
    })
    .await;
}

#[tokio::test]
async fn cursors_never_move_backwards_and_need_membership() {
    bounded(async {
        let server = RedisServer::start().await;
        let backend = open(config(&server, "n1")).await;
        let store = &backend.store;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        let ann = user("ann");
        let epoch = store.head(&stream).await.expect("head").epoch;
        let at = |seq| Position::new(epoch.clone(), seq);

        // Not a member: ignored, like the in-memory backend.
        assert!(
            !store
                .advance_cursor(&ann, &stream, &at(3))
                .await
                .expect("advance")
        );
        assert_eq!(store.cursor(&ann, &stream).await.expect("cursor"), None);

        let join = JoinRequest {
            room: &r,
            user: &ann,
            user_name: "Ann",
            room_name: None,
        };
        assert_eq!(store.join(&join).await.expect("join").cursor, None);
        for (seq, moves) in [(4, true), (2, false)] {
            let moved = store.advance_cursor(&ann, &stream, &at(seq)).await;
            assert_eq!(moved.expect("advance"), moves, "advance to {seq}");
        }
        assert_eq!(
            store.cursor(&ann, &stream).await.expect("cursor"),
            Some(at(4))
        );
        store
            .advance_cursor(&ann, &stream, &at(9))
            .await
            .expect("advance");
        assert_eq!(
            store.cursor(&ann, &stream).await.expect("cursor"),
            Some(at(9))
        );
        assert_eq!(store.join(&join).await.expect("join").cursor, Some(at(9)));

        // Inbox cursors need no membership and are separate from room cursors.
        let inbox = StreamKey::Inbox(ann.clone());
        let inbox_epoch = store.head(&inbox).await.expect("head").epoch;
        for seq in [7, 1] {
            let to = Position::new(inbox_epoch.clone(), seq);
            store
                .advance_cursor(&ann, &inbox, &to)
                .await
                .expect("advance");
        }
        assert_eq!(
            store.cursor(&ann, &inbox).await.expect("cursor"),
            Some(Position::new(inbox_epoch, 7))
        );

        // The cursors hash carries the offline-retention TTL.
        let ttl = raw(&server, &["TTL", "chat:user:{ann}:cursors"]).await;
        assert!(
            matches!(ttl, redis::Value::Int(t) if t > 0 && t <= 3600),
            "{ttl:?}"
        );
        let fields = raw_strings(&server, &["HKEYS", "chat:user:{ann}:cursors"]).await;
        assert!(fields.contains(&"r".to_owned()) && fields.contains(&"@ann".to_owned()));
    })
    .await;
}

#[tokio::test]
async fn join_names_rooms_and_leave_removes_membership_presence_and_cursor() {
    bounded(async {
        let server = RedisServer::start().await;
        let backend = open(config(&server, "n1")).await;
        let store = &backend.store;
        let r = room("r");
        let (ann, bob) = (user("ann"), user("bob"));

        let first = store
            .join(&JoinRequest {
                room: &r,
                user: &ann,
                user_name: "Ann",
                room_name: Some("Room R"),
            })
            .await
            .expect("join");
        assert!(first.came_online && first.new_member);
        assert_eq!(first.room_name, "Room R");
        assert_eq!(first.counts, Counts { num: 1, total: 1 });
        assert_eq!(first.head.seq, 0);
        let again = store
            .join(&JoinRequest {
                room: &r,
                user: &ann,
                user_name: "Ann",
                room_name: Some("Other name"),
            })
            .await
            .expect("join");
        assert!(!again.came_online && !again.new_member);
        assert_eq!(again.room_name, "Room R", "the first name sticks");
        assert_eq!(again.head, first.head);
        let b = store
            .join(&JoinRequest {
                room: &r,
                user: &bob,
                user_name: "Bob",
                room_name: None,
            })
            .await
            .expect("join");
        assert_eq!(b.counts, Counts { num: 2, total: 2 });

        let stream = StreamKey::Room(r.clone());
        let epoch = store.head(&stream).await.expect("head").epoch;
        assert!(
            store
                .advance_cursor(&ann, &stream, &Position::new(epoch.clone(), 3))
                .await
                .expect("advance")
        );
        let left = store.leave(&r, &ann).await.expect("leave");
        assert_eq!(left.counts, Counts { num: 1, total: 1 });
        assert!(left.went_offline);
        assert_eq!(store.members(&r).await.expect("members"), vec![bob.clone()]);
        assert_eq!(store.cursor(&ann, &stream).await.expect("cursor"), None);
        assert!(matches!(
            raw(&server, &["ZSCORE", "chat:room:{r}:online", "ann"]).await,
            redis::Value::Nil
        ));
        let conns = raw_strings(&server, &["ZRANGE", "chat:room:{r}:conns", "0", "-1"]).await;
        assert_eq!(conns, vec!["bob|n1".to_owned()]);
        assert!(matches!(
            raw(&server, &["HGET", "chat:room:{r}:names", "ann"]).await,
            redis::Value::Nil
        ));
        // A cursor for a non-member does not come back.
        store
            .advance_cursor(&ann, &stream, &Position::new(epoch, 5))
            .await
            .expect("advance");
        assert_eq!(store.cursor(&ann, &stream).await.expect("cursor"), None);

        // Listing: the room with its counts; head of a new room lists it too.
        store.post(&r, &draft("bob", "hi")).await.expect("post");
        store
            .head(&StreamKey::Room(room("empty")))
            .await
            .expect("head");
        let rooms = store.rooms().await.expect("rooms");
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms[0].room_id, room("empty"));
        assert_eq!(rooms[0].room_name, "empty");
        assert_eq!((rooms[0].num, rooms[0].total, rooms[0].seq), (0, 0, 0));
        assert_eq!(rooms[1].room_id, r);
        assert_eq!(rooms[1].room_name, "Room R");
        assert_eq!((rooms[1].num, rooms[1].total, rooms[1].seq), (1, 1, 1));
        assert_eq!(rooms[1].epoch, first.head.epoch);
        store.ping().await.expect("ping");
    })
    .await;
}

#[tokio::test]
async fn presence_across_two_nodes() {
    bounded(async {
        let server = RedisServer::start().await;
        let a = open(config(&server, "node-a")).await;
        let b = open(config(&server, "node-b")).await;
        let r = room("r");
        let ann = user("ann");
        let join = JoinRequest {
            room: &r,
            user: &ann,
            user_name: "Ann",
            room_name: None,
        };
        let on_a = a.store.join(&join).await.expect("join a");
        assert!(on_a.came_online && on_a.new_member);
        let on_b = b.store.join(&join).await.expect("join b");
        assert!(!on_b.came_online && !on_b.new_member);
        assert_eq!(on_b.counts, Counts { num: 1, total: 1 });

        // Offline on one node: still online through the other.
        let off_a = a.store.go_offline(&r, &ann).await.expect("offline a");
        assert!(!off_a.went_offline);
        assert_eq!(off_a.counts, Counts { num: 1, total: 1 });
        // Both: offline everywhere, still a member.
        let off_b = b.store.go_offline(&r, &ann).await.expect("offline b");
        assert!(off_b.went_offline);
        assert_eq!(off_b.counts, Counts { num: 0, total: 1 });
        // Going offline twice reports nothing new.
        assert!(
            !b.store
                .go_offline(&r, &ann)
                .await
                .expect("offline")
                .went_offline
        );
        // Back through b: came online again.
        assert!(b.store.join(&join).await.expect("join").came_online);

        // Refresh keeps presence alive and marks the node live.
        a.store
            .refresh_presence(&[entry(&r, &ann, "Ann")])
            .await
            .expect("refresh");
        let mut nodes = raw_strings(&server, &["ZRANGE", "chat:nodes", "0", "-1"]).await;
        nodes.sort();
        assert_eq!(nodes, vec!["node-a".to_owned(), "node-b".to_owned()]);
        let conns = raw_strings(&server, &["ZRANGE", "chat:room:{r}:conns", "0", "-1"]).await;
        assert_eq!(conns.len(), 2, "{conns:?}");
        a.store.refresh_presence(&[]).await.expect("empty refresh");
    })
    .await;
}

/// Posts `texts` to `r`, each with its text as `clientMsgId`.
async fn post_all(store: &dyn chat_backend::Store, r: &chat_protocol::RoomId, texts: &[&str]) {
    for text in texts {
        let d = Draft {
            client_msg_id: Some((*text).to_owned()),
            ..draft("ann", text)
        };
        store.post(r, &d).await.expect("post");
    }
}

/// `(seq, epoch, content)` of every message of a stream.
async fn log_of(store: &dyn chat_backend::Store, stream: &StreamKey) -> Vec<(u64, String, String)> {
    store
        .range(stream, 0, u64::MAX, 100, 0)
        .await
        .expect("range")
        .into_iter()
        .map(|m| (m.seq, m.epoch, m.content))
        .collect()
}

fn expected(epoch: &str, texts: &[(u64, &str)]) -> Vec<(u64, String, String)> {
    texts
        .iter()
        .map(|(seq, text)| (*seq, epoch.to_owned(), (*text).to_owned()))
        .collect()
}

#[tokio::test]
async fn a_lost_meta_key_starts_a_new_epoch_with_a_clean_log() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg = config(&server, "n1");
        cfg.history_per_room = 4;
        let backend = open(cfg).await;
        let store = backend.store.as_ref();

        // Through post: old messages 1..3, meta lost, new posts.
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        post_all(store, &r, &["o1", "o2", "o3"]).await;
        let old = store.head(&stream).await.expect("head").epoch;
        raw(&server, &["DEL", "chat:room:{r}:meta"]).await;
        // "o1" is an old clientMsgId: in the new epoch it is a new message, not a retry of seq 1.
        post_all(store, &r, &["n1", "o1", "n3"]).await;
        let new = store.head(&stream).await.expect("head");
        assert_ne!(new.epoch, old, "a lost meta key means a new epoch");
        assert_eq!(new.seq, 3);
        let want = expected(&new.epoch, &[(1, "n1"), (2, "o1"), (3, "n3")]);
        assert_eq!(
            log_of(store, &stream).await,
            want,
            "range: one epoch, in order"
        );
        let (epoch, page) = store.history(&r, None, 100).await.expect("history");
        assert_eq!(epoch, new.epoch);
        let page: Vec<_> = page
            .into_iter()
            .map(|m| (m.seq, m.epoch, m.content))
            .collect();
        assert_eq!(page, want, "history: one epoch, in order");
        // Trimming (to 4) keeps the newest of the new epoch.
        post_all(store, &r, &["n4", "n5", "n6"]).await;
        assert_eq!(
            log_of(store, &stream).await,
            expected(&new.epoch, &[(3, "n3"), (4, "n4"), (5, "n5"), (6, "n6")])
        );
        let ids = raw_strings(&server, &["ZRANGE", "chat:room:{r}:ids", "0", "-1"]).await;
        assert_eq!(ids, vec!["ann|n3", "ann|n4", "ann|n5", "ann|n6"]);
        // Reads also leave out any entry of another epoch (defence in depth).
        let stale = format!(
            r#"{{"event":"message","seq":7,"epoch":"{old}","ts":1,"roomId":"r","userId":"ann","userName":"ANN","content":"stale"}}"#
        );
        raw(&server, &["ZADD", "chat:room:{r}:log", "7", &stale]).await;
        let want = expected(&new.epoch, &[(3, "n3"), (4, "n4"), (5, "n5"), (6, "n6")]);
        assert_eq!(log_of(store, &stream).await, want);
        let (_, page) = store.history(&r, None, 100).await.expect("history");
        let page: Vec<_> = page.into_iter().map(|m| (m.seq, m.epoch, m.content)).collect();
        assert_eq!(page, want);

        // Through head and join, which create the epoch before any post.
        for (name, via_join) in [("h", false), ("j", true)] {
            let r = room(name);
            let stream = StreamKey::Room(r.clone());
            post_all(store, &r, &["o1", "o2"]).await;
            raw(&server, &["DEL", &format!("chat:room:{{{name}}}:meta")]).await;
            let epoch = if via_join {
                let joined = store
                    .join(&JoinRequest {
                        room: &r,
                        user: &user("ann"),
                        user_name: "ANN",
                        room_name: None,
                    })
                    .await
                    .expect("join");
                assert_eq!(joined.head.seq, 0, "{name}");
                joined.head.epoch
            } else {
                let head = store.head(&stream).await.expect("head");
                assert_eq!(head.seq, 0, "{name}");
                head.epoch
            };
            assert!(
                log_of(store, &stream).await.is_empty(),
                "{name}: old log gone"
            );
            post_all(store, &r, &["o2"]).await;
            assert_eq!(
                log_of(store, &stream).await,
                expected(&epoch, &[(1, "o2")]),
                "{name}"
            );
        }

        // An inbox: a lost meta key resets the owner's log and the ids of what the owner sent.
        let (ann, bob) = (user("ann"), user("bob"));
        let dm = |text: &str| Draft {
            client_msg_id: Some(text.to_owned()),
            ..draft("ann", text)
        };
        for text in ["o1", "o2", "o3"] {
            store.post_direct(&bob, &dm(text)).await.expect("dm");
        }
        raw(&server, &["DEL", "chat:user:{ann}:inbox:meta"]).await;
        raw(&server, &["DEL", "chat:user:{bob}:inbox:meta"]).await;
        let p = store.post_direct(&bob, &dm("o1")).await.expect("dm");
        let recipient = p.recipient.expect("a new message, not a retry");
        assert_eq!((recipient.seq, p.sender.seq), (1, 1));
        assert_eq!(
            log_of(store, &StreamKey::Inbox(bob.clone())).await,
            expected(&recipient.epoch, &[(1, "o1")])
        );
        assert_eq!(
            log_of(store, &StreamKey::Inbox(ann.clone())).await,
            expected(&p.sender.epoch, &[(1, "o1")])
        );
    })
    .await;
}

#[tokio::test]
async fn a_direct_message_from_an_inbox_with_a_damaged_seq_changes_and_publishes_nothing() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut backend = open(config(&server, "n1")).await;
        // Each of these passes a `^%d+$` check, but HINCRBY refuses it (leading zeros, overflow,
        // not a 64-bit integer) or the next seq is no longer exact as a Lua number or a score.
        let damaged = [
            "007",
            "9223372036854775807",
            "123456789012345678901234567890",
            "9007199254740992",
        ];
        for (i, seq) in damaged.into_iter().enumerate() {
            let sender = format!("mallory{i}");
            let to = user(&format!("bob{i}"));
            let inbox = StreamKey::Inbox(to.clone());
            backend.broker.subscribe(&inbox).await.expect("subscribe");
            let before = backend.store.head(&inbox).await.expect("head");
            let meta = format!("chat:user:{{{sender}}}:inbox:meta");
            raw(&server, &["HSET", &meta, "epoch", "e1", "seq", seq]).await;

            match backend.store.post_direct(&to, &draft(&sender, "hi")).await {
                Err(BackendError::Corrupt(_)) => {}
                other => panic!("seq {seq:?}: expected Corrupt, got {other:?}"),
            }
            let key = format!("chat:user:{{bob{i}}}:inbox");
            assert!(
                raw_strings(&server, &["ZRANGE", &key, "0", "-1"])
                    .await
                    .is_empty(),
                "seq {seq:?}: the recipient got a copy"
            );
            assert_eq!(
                backend.store.head(&inbox).await.expect("head"),
                before,
                "seq {seq:?}: the recipient's inbox moved"
            );
            assert_eq!(
                raw_strings(&server, &["HMGET", &meta, "epoch", "seq"]).await,
                vec!["e1".to_owned(), seq.to_owned()],
                "seq {seq:?}: the sender's meta changed"
            );
            assert!(
                raw_strings(
                    &server,
                    &[
                        "ZRANGE",
                        &format!("chat:user:{{{sender}}}:inbox"),
                        "0",
                        "-1"
                    ]
                )
                .await
                .is_empty()
            );
            // Nothing was published either: the first event on the recipient's channel is a
            // control message sent after the failed one.
            let control = backend
                .store
                .post_direct(&to, &draft("carol", "control"))
                .await
                .expect("control dm");
            assert_eq!(control.recipient.map(|p| p.seq), Some(1));
            match next_event(&mut backend.events, WAIT).await {
                Some(BrokerEvent::Message {
                    stream, message, ..
                }) => {
                    assert_eq!(stream, inbox, "seq {seq:?}");
                    assert_eq!(
                        (
                            message.user_id.as_str(),
                            message.content.as_str(),
                            message.seq
                        ),
                        ("carol", "control", 1),
                        "seq {seq:?}: the failed message was published first"
                    );
                }
                other => panic!("seq {seq:?}: expected the control message, got {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_reused_client_msg_id_with_other_content_is_flagged_and_stored_nowhere() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut backend = open(config(&server, "n1")).await;
        let r = room("r");
        let (ann, bob) = (user("ann"), user("bob"));
        for stream in [StreamKey::Room(r.clone()), StreamKey::Inbox(bob.clone())] {
            backend.broker.subscribe(&stream).await.expect("subscribe");
        }
        let with_id = |text: &str| Draft {
            client_msg_id: Some("c1".into()),
            ..draft("ann", text)
        };

        let first = backend.store.post(&r, &with_id("hi")).await.expect("post");
        assert!(!first.duplicate && !first.conflict);
        let reused = backend
            .store
            .post(&r, &with_id("something else"))
            .await
            .expect("post");
        assert_eq!(
            reused,
            chat_backend::Posted {
                duplicate: true,
                conflict: true,
                ..first.clone()
            },
            "the earlier receipt, flagged as a conflict"
        );
        let retry = backend.store.post(&r, &with_id("hi")).await.expect("retry");
        assert!(retry.duplicate && !retry.conflict, "{retry:?}");
        let log = backend
            .store
            .range(&StreamKey::Room(r.clone()), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(
            log.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            vec!["hi"]
        );

        let dm = backend
            .store
            .post_direct(&bob, &with_id("psst"))
            .await
            .expect("dm");
        assert!(!dm.sender.duplicate && !dm.sender.conflict);
        let reused = backend
            .store
            .post_direct(&bob, &with_id("other"))
            .await
            .expect("dm");
        assert_eq!(reused.recipient, None, "nothing stored for the recipient");
        assert_eq!(
            reused.sender,
            chat_backend::Posted {
                duplicate: true,
                conflict: true,
                ..dm.sender.clone()
            }
        );
        let retry = backend
            .store
            .post_direct(&bob, &with_id("psst"))
            .await
            .expect("retry");
        assert!(retry.sender.duplicate && !retry.sender.conflict);
        for inbox in [&ann, &bob] {
            assert_eq!(
                backend
                    .store
                    .range(&StreamKey::Inbox(inbox.clone()), 0, u64::MAX, 10, 0)
                    .await
                    .expect("range")
                    .len(),
                1,
                "{inbox}"
            );
        }

        // Nothing of the reused ids was published: after a control post, exactly the first
        // room post, bob's copy of the first DM and the control post have arrived, in order.
        backend
            .store
            .post(&r, &draft("ann", "control"))
            .await
            .expect("control");
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("control") {
            match next_event(&mut backend.events, WAIT).await {
                Some(BrokerEvent::Message { message, .. }) => seen.push(message.content),
                Some(_) => {}
                None => panic!("no control message; saw {seen:?}"),
            }
        }
        assert_eq!(seen, vec!["hi", "psst", "control"]);
    })
    .await;
}

#[tokio::test]
async fn expired_presence_is_reaped_exactly_once_when_a_node_stops_refreshing() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg_a = config(&server, "node-a");
        cfg_a.presence_lease_ms = 1000;
        let mut cfg_b = config(&server, "node-b");
        cfg_b.presence_lease_ms = 1000;
        let a = open(cfg_a).await;
        let b = open(cfg_b).await;
        let r = room("r");
        let (ann, bob) = (user("ann"), user("bob"));
        a.store
            .join(&JoinRequest {
                room: &r,
                user: &ann,
                user_name: "Ann",
                room_name: None,
            })
            .await
            .expect("join");
        b.store
            .join(&JoinRequest {
                room: &r,
                user: &bob,
                user_name: "Bob",
                room_name: None,
            })
            .await
            .expect("join");

        // Node b keeps refreshing bob; node a "dies" (never refreshes ann).
        let b_store = b.store.clone();
        let (r2, bob2) = (r.clone(), bob.clone());
        let refresher = tokio::spawn(async move {
            loop {
                let _ = b_store.refresh_presence(&[entry(&r2, &bob2, "Bob")]).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });

        // Well past ann's TTL (1 s) before anyone reaps.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (ra, rb) = tokio::join!(a.store.reap_presence(&r), b.store.reap_presence(&r));
        let mut reaped = ra.expect("reap a");
        reaped.extend(rb.expect("reap b"));
        assert_eq!(reaped.len(), 1, "exactly one caller reaps ann: {reaped:?}");
        assert_eq!(reaped[0].user, ann);
        assert_eq!(reaped[0].user_name, "Ann");
        assert_eq!(reaped[0].counts, Counts { num: 1, total: 2 });
        assert!(b.store.reap_presence(&r).await.expect("reap").is_empty());
        // Still a member, just offline.
        assert_eq!(
            b.store.members(&r).await.expect("members"),
            vec![ann.clone(), bob.clone()]
        );
        let conns = raw_strings(&server, &["ZRANGE", "chat:room:{r}:conns", "0", "-1"]).await;
        assert_eq!(conns, vec!["bob|node-b".to_owned()]);

        refresher.abort();
        // Without refreshes bob expires too, and is reaped once.
        let gone = eventually("bob to be reaped", || async {
            let reaped = b.store.reap_presence(&r).await.expect("reap");
            (!reaped.is_empty()).then_some(reaped)
        })
        .await;
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].user, bob);
        assert_eq!(gone[0].counts, Counts { num: 0, total: 2 });

        // Node a wakes up from its stall and refreshes ann: the refresh reports her back online
        // (the room saw her reaped), once.
        let back = a
            .store
            .refresh_presence(&[entry(&r, &ann, "Ann")])
            .await
            .expect("refresh");
        let back = back.revived;
        assert_eq!(back.len(), 1, "{back:?}");
        assert_eq!(
            (&back[0].room, &back[0].user, back[0].user_name.as_str()),
            (&r, &ann, "Ann")
        );
        assert_eq!(back[0].counts, Counts { num: 1, total: 2 });
        let again = a
            .store
            .refresh_presence(&[entry(&r, &ann, "Ann")])
            .await
            .expect("refresh");
        assert_eq!(again, Refreshed::default());
    })
    .await;
}

#[tokio::test]
async fn refresh_restores_what_a_flush_lost_for_connected_users() {
    bounded(async {
        let server = RedisServer::start().await;
        let a = open(config(&server, "node-a")).await;
        let r = room("r");
        let ann = user("ann");
        let joined = a
            .store
            .join(&JoinRequest {
                room: &r,
                user: &ann,
                user_name: "Ann",
                room_name: None,
            })
            .await
            .expect("join");
        raw(&server, &["FLUSHALL"]).await;
        let vouched = joined_entry(&r, &ann, "Ann", &joined.head.epoch, joined.presence_seq);
        let back = a
            .store
            .refresh_presence(&[vouched])
            .await
            .expect("refresh")
            .revived;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].counts, Counts { num: 1, total: 1 });
        assert_eq!(
            a.store.members(&r).await.expect("members"),
            vec![ann.clone()]
        );
        assert_eq!(
            raw_strings(&server, &["HGETALL", "chat:room:{r}:names"]).await,
            vec!["ann".to_owned(), "Ann".to_owned()]
        );
        assert_eq!(
            raw_strings(&server, &["SMEMBERS", "chat:rooms"]).await,
            vec!["r".to_owned()]
        );
    })
    .await;
}

#[tokio::test]
async fn hostile_data_is_corrupt_or_skipped_never_a_panic() {
    bounded(async {
        let server = RedisServer::start().await;
        let backend = open(config(&server, "n1")).await;
        let store = &backend.store;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        for i in 1..=3 {
            store
                .post(&r, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
        }
        // Foreign entries in the log: skipped, the rest still readable.
        raw(&server, &["ZADD", "chat:room:{r}:log", "2", "not json"]).await;
        raw(
            &server,
            &["ZADD", "chat:room:{r}:log", "2", r#"{"event":"login"}"#],
        )
        .await;
        raw(
            &server,
            &[
                "ZADD",
                "chat:room:{r}:log",
                "3",
                r#"{"event":"heartBeat","content":"pong"}"#,
            ],
        )
        .await;
        let all = store
            .range(&stream, 0, u64::MAX, 100, 0)
            .await
            .expect("range");
        assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let (_, page) = store.history(&r, None, 100).await.expect("history");
        assert_eq!(page.len(), 3);

        let corrupt = |res: Result<(), BackendError>, what: &str| match res {
            Err(BackendError::Corrupt(_)) => {}
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        };

        // A string where a hash is expected.
        raw(&server, &["SET", "chat:room:{s}:meta", "oops"]).await;
        let s = room("s");
        corrupt(store.post(&s, &draft("a", "x")).await.map(drop), "post");
        corrupt(
            store.head(&StreamKey::Room(s.clone())).await.map(drop),
            "head",
        );
        corrupt(store.history(&s, None, 10).await.map(drop), "history");
        corrupt(
            store
                .join(&JoinRequest {
                    room: &s,
                    user: &user("a"),
                    user_name: "A",
                    room_name: None,
                })
                .await
                .map(drop),
            "join",
        );
        // Scripts check before they write: the failed join left nothing behind.
        assert!(matches!(
            raw(&server, &["EXISTS", "chat:room:{s}:members"]).await,
            redis::Value::Int(0)
        ));
        // An epoch that would break out of the JSON string it is spliced into.
        raw(
            &server,
            &[
                "HSET",
                "chat:room:{t}:meta",
                "epoch",
                r#"x","content":"pwned"#,
            ],
        )
        .await;
        let t = room("t");
        corrupt(
            store.post(&t, &draft("a", "x")).await.map(drop),
            "post with a bad epoch",
        );
        assert!(
            raw_strings(&server, &["ZRANGE", "chat:room:{t}:log", "0", "-1"])
                .await
                .is_empty()
        );
        // A seq counter that is not a number.
        raw(
            &server,
            &["HSET", "chat:room:{u}:meta", "epoch", "e1", "seq", "abc"],
        )
        .await;
        corrupt(
            store.post(&room("u"), &draft("a", "x")).await.map(drop),
            "post with a bad seq",
        );
        corrupt(
            store.head(&StreamKey::Room(room("u"))).await.map(drop),
            "head with a bad seq",
        );
        // A damaged sender inbox fails the whole direct message: the recipient gets no copy.
        raw(
            &server,
            &["HSET", "chat:user:{mallory}:inbox:meta", "seq", "x"],
        )
        .await;
        corrupt(
            store
                .post_direct(&user("bob"), &draft("mallory", "hi"))
                .await
                .map(drop),
            "dm from a damaged inbox",
        );
        assert!(matches!(
            raw(&server, &["EXISTS", "chat:user:{bob}:inbox"]).await,
            redis::Value::Int(0)
        ));
        // A cursor that is not a number.
        raw(&server, &["HSET", "chat:user:{a}:cursors", "r", "zzz"]).await;
        corrupt(store.cursor(&user("a"), &stream).await.map(drop), "cursor");
        corrupt(
            store
                .join(&JoinRequest {
                    room: &r,
                    user: &user("a"),
                    user_name: "A",
                    room_name: None,
                })
                .await
                .map(drop),
            "join with a damaged cursor",
        );
        raw(&server, &["HSET", "chat:user:{a}:cursors", "@a", "zzz"]).await;
        corrupt(
            store
                .advance_cursor(
                    &user("a"),
                    &StreamKey::Inbox(user("a")),
                    &Position::new("e", 1),
                )
                .await
                .map(drop),
            "advance a damaged cursor",
        );
        // Members of the wrong type.
        raw(&server, &["SET", "chat:room:{v}:members", "oops"]).await;
        corrupt(store.members(&room("v")).await.map(drop), "members");
        // Invalid ids in sets are skipped.
        raw(&server, &["SADD", "chat:room:{r}:members", "bad id", "ok"]).await;
        assert_eq!(store.members(&r).await.expect("members"), vec![user("ok")]);
        raw(&server, &["SADD", "chat:rooms", "bad room", "s"]).await;
        let rooms = store.rooms().await.expect("rooms with damaged entries");
        let ids: Vec<String> = rooms.iter().map(|s| s.room_id.to_string()).collect();
        assert!(ids.contains(&"r".to_owned()), "{ids:?}");
        assert!(
            !ids.contains(&"s".to_owned()),
            "the damaged room is skipped: {ids:?}"
        );
        // The store still works for healthy rooms.
        assert_eq!(
            store.post(&r, &draft("a", "m4")).await.expect("post").seq,
            4
        );
    })
    .await;
}

#[tokio::test]
async fn a_retried_post_with_the_same_client_msg_id_is_stored_and_published_once() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg = config(&server, "n1");
        cfg.history_per_room = 3;
        let mut backend = open(cfg).await;
        let r = room("r");
        backend
            .broker
            .subscribe(&StreamKey::Room(r.clone()))
            .await
            .expect("subscribe");
        let with_id = |author: &str, cmid: &str| Draft {
            client_msg_id: Some(cmid.into()),
            ..draft(author, "hi")
        };

        let first = backend
            .store
            .post(&r, &with_id("a", "c1"))
            .await
            .expect("post");
        let retry = backend
            .store
            .post(&r, &with_id("a", "c1"))
            .await
            .expect("retry");
        assert!(!first.duplicate && !first.conflict);
        assert_eq!(
            retry,
            chat_backend::Posted {
                duplicate: true,
                ..first.clone()
            },
            "the same receipt: seq, epoch and ts, flagged as a duplicate"
        );
        let other = backend
            .store
            .post(&r, &with_id("b", "c1"))
            .await
            .expect("post");
        assert_eq!(other.seq, 2, "ids are per author");
        let head = backend
            .store
            .head(&StreamKey::Room(r.clone()))
            .await
            .expect("head");
        assert_eq!(head.seq, 2, "the retry appended nothing");
        // Give pub/sub a moment, then count what arrived.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut all = Vec::new();
        while let Ok(event) = backend.events.try_recv() {
            if let BrokerEvent::Message { message, .. } = event {
                all.push(message.seq);
            }
        }
        assert_eq!(all, vec![1, 2], "the retry was not published again");

        // The id lives as long as its message stays in the (3-message) log.
        for i in 0..3 {
            backend
                .store
                .post(&r, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
        }
        let ids = raw_strings(&server, &["ZRANGE", "chat:room:{r}:ids", "0", "-1"]).await;
        assert!(
            ids.is_empty(),
            "ids of trimmed messages are dropped: {ids:?}"
        );
        assert_eq!(
            backend
                .store
                .post(&r, &with_id("a", "c1"))
                .await
                .expect("post")
                .seq,
            6
        );
    })
    .await;
}

#[tokio::test]
async fn a_retried_direct_message_is_stored_and_published_once() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut backend = open(config(&server, "n1")).await;
        let (ann, bob) = (user("ann"), user("bob"));
        for who in [&ann, &bob] {
            backend
                .broker
                .subscribe(&StreamKey::Inbox(who.clone()))
                .await
                .expect("subscribe");
        }
        let dm = Draft {
            client_msg_id: Some("d1".into()),
            ..draft("ann", "psst")
        };
        let first = backend.store.post_direct(&bob, &dm).await.expect("dm");
        let retry = backend.store.post_direct(&bob, &dm).await.expect("retry");
        assert!(first.recipient.is_some());
        assert_eq!(
            (retry.sender, retry.recipient),
            (
                chat_backend::Posted {
                    duplicate: true,
                    ..first.sender.clone()
                },
                None
            )
        );
        // The same id to someone else is a different message.
        let to_cid = backend
            .store
            .post_direct(&user("cid"), &dm)
            .await
            .expect("dm");
        assert_eq!(to_cid.sender.seq, 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut published = 0;
        while let Ok(event) = backend.events.try_recv() {
            if matches!(event, BrokerEvent::Message { .. }) {
                published += 1;
            }
        }
        assert_eq!(
            published, 3,
            "ann's and bob's copies once, then ann's copy of the note to cid"
        );
        let head = backend
            .store
            .head(&StreamKey::Inbox(bob.clone()))
            .await
            .expect("head");
        assert_eq!(head.seq, 1);
    })
    .await;
}

/// A position is read and written with its epoch: after the log is reset, the old epoch's cursor
/// says nothing about the new log, and a stale writer cannot push the new epoch's cursor.
#[tokio::test]
async fn cursors_carry_their_epoch() {
    bounded(async {
        let server = RedisServer::start().await;
        let backend = open(config(&server, "n1")).await;
        let store = &backend.store;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        let ann = user("ann");
        let join = JoinRequest {
            room: &r,
            user: &ann,
            user_name: "Ann",
            room_name: None,
        };
        let old = store.join(&join).await.expect("join").head.epoch;
        store
            .advance_cursor(&ann, &stream, &Position::new(old.clone(), 50))
            .await
            .expect("advance");
        let stored = raw(&server, &["HGET", "chat:user:{ann}:cursors", "r"]).await;
        assert_eq!(
            stored,
            redis::Value::BulkString(format!("50:{old}").into_bytes())
        );

        // The log is reset (its meta lost): a new epoch, and the old cursor comes back tagged with
        // the old epoch so the caller can tell it is not a position in the new log.
        raw(&server, &["DEL", "chat:room:{r}:meta"]).await;
        let joined = store.join(&join).await.expect("join");
        let new = joined.head.epoch;
        assert_ne!(new, old);
        let cursor = joined.cursor.expect("cursor");
        assert_eq!(cursor.seq_in(&new), None, "{cursor:?}");

        // A writer still on the old epoch is ignored; one on the new epoch replaces the cursor
        // even though its seq is lower.
        let stale = store
            .advance_cursor(&ann, &stream, &Position::new(old.clone(), 60))
            .await;
        assert!(!stale.expect("advance"));
        let fresh = store
            .advance_cursor(&ann, &stream, &Position::new(new.clone(), 5))
            .await;
        assert!(fresh.expect("advance"));
        assert_eq!(
            store.cursor(&ann, &stream).await.expect("cursor"),
            Some(Position::new(new.clone(), 5))
        );

        // A cursor stored by an older version (a plain seq) counts as the current epoch's.
        raw(&server, &["HSET", "chat:user:{ann}:cursors", "r", "7"]).await;
        assert_eq!(
            store.cursor(&ann, &stream).await.expect("cursor"),
            Some(Position::new("", 7))
        );
        let behind = store
            .advance_cursor(&ann, &stream, &Position::new(new.clone(), 6))
            .await;
        assert!(!behind.expect("advance"));
        let ahead = store
            .advance_cursor(&ann, &stream, &Position::new(new.clone(), 8))
            .await;
        assert!(ahead.expect("advance"));
        assert_eq!(
            store.cursor(&ann, &stream).await.expect("cursor"),
            Some(Position::new(new, 8))
        );
    })
    .await;
}

/// Defect 2 at the store: a refresh built from a snapshot taken before a logout must not bring the
/// user back after it. The refresh names the join it vouches for; a user who is no longer a
/// member of a room whose epoch and presence seq show a later change is reported as departed.
#[tokio::test]
async fn a_refresh_does_not_restore_a_user_who_logged_out_after_the_vouched_join() {
    bounded(async {
        let server = RedisServer::start().await;
        let a = open(config(&server, "node-a")).await;
        let r = room("r");
        let (ann, bob) = (user("ann"), user("bob"));
        let join = |u| JoinRequest {
            room: &r,
            user: u,
            user_name: "X",
            room_name: None,
        };
        a.store.join(&join(&bob)).await.expect("join");
        let joined = a.store.join(&join(&ann)).await.expect("join");
        let snapshot = joined_entry(&r, &ann, "Ann", &joined.head.epoch, joined.presence_seq);
        let left = a.store.leave(&r, &ann).await.expect("leave");
        assert!(left.presence_seq > joined.presence_seq);

        let refreshed = a
            .store
            .refresh_presence(&[snapshot])
            .await
            .expect("refresh");
        assert!(refreshed.revived.is_empty(), "{refreshed:?}");
        assert_eq!(refreshed.departed.len(), 1, "{refreshed:?}");
        assert_eq!(refreshed.departed[0].user, ann);
        assert_eq!(refreshed.departed[0].counts, Counts { num: 1, total: 1 });
        assert_eq!(
            a.store.members(&r).await.expect("members"),
            vec![bob.clone()]
        );
        assert!(matches!(
            raw(&server, &["ZSCORE", "chat:room:{r}:online", "ann"]).await,
            redis::Value::Nil
        ));

        // A join after the logout is vouched for again.
        let again = a.store.join(&join(&ann)).await.expect("join");
        let vouched = joined_entry(&r, &ann, "Ann", &again.head.epoch, again.presence_seq);
        let refreshed = a.store.refresh_presence(&[vouched]).await.expect("refresh");
        assert_eq!(refreshed, Refreshed::default());
    })
    .await;
}

/// Every presence change takes the room's next presence seq, so notices can be ordered.
#[tokio::test]
async fn presence_changes_take_increasing_presence_seqs() {
    bounded(async {
        let server = RedisServer::start().await;
        let a = open(config(&server, "node-a")).await;
        let r = room("r");
        let ann = user("ann");
        let join = JoinRequest {
            room: &r,
            user: &ann,
            user_name: "Ann",
            room_name: None,
        };
        let s1 = a.store.join(&join).await.expect("join").presence_seq;
        let s2 = a
            .store
            .go_offline(&r, &ann)
            .await
            .expect("offline")
            .presence_seq;
        let s3 = a.store.join(&join).await.expect("join").presence_seq;
        let s4 = a.store.leave(&r, &ann).await.expect("leave").presence_seq;
        assert!(s1 < s2 && s2 < s3 && s3 < s4, "{s1} {s2} {s3} {s4}");
        // A damaged presence seq fails the change before anything is written.
        raw(&server, &["HSET", "chat:room:{r}:meta", "pseq", "007"]).await;
        let err = a.store.join(&join).await.map(drop);
        assert!(matches!(err, Err(BackendError::Corrupt(_))), "{err:?}");
        assert!(a.store.members(&r).await.expect("members").is_empty());
    })
    .await;
}

#[tokio::test]
async fn oldest_is_the_first_seq_history_still_holds() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg = config(&server, "n1");
        cfg.history_per_room = 3;
        let backend = open(cfg).await;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        assert_eq!(backend.store.oldest(&stream).await.expect("oldest"), None);
        for i in 1..=5 {
            backend
                .store
                .post(&r, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
        }
        // Trimmed to the newest 3.
        assert_eq!(
            backend.store.oldest(&stream).await.expect("oldest"),
            Some(3)
        );
    })
    .await;
}

/// Posts check key types on a room's first post through the node and trust them afterwards; a
/// key damaged later fails the next post (Corrupt), and every post after that checks again, so
/// damage is never silently written over.
#[tokio::test]
async fn key_types_are_checked_on_first_post_and_again_after_a_failure() {
    bounded(async {
        let server = RedisServer::start().await;
        let backend = open(config(&server, "n1")).await;
        let store = &backend.store;
        let r = room("r");
        store.post(&r, &draft("a", "first")).await.expect("post");
        // Listed by its first post through this node, though the per-post script leaves the
        // global room list alone.
        let rooms = raw_strings(&server, &["SMEMBERS", "chat:rooms"]).await;
        assert_eq!(rooms, vec!["r".to_owned()]);

        raw(&server, &["DEL", "chat:room:{r}:log"]).await;
        raw(&server, &["SET", "chat:room:{r}:log", "damaged"]).await;
        for attempt in 0..3 {
            let result = store.post(&r, &draft("a", "again")).await.map(drop);
            assert!(
                matches!(result, Err(BackendError::Corrupt(_))),
                "attempt {attempt}: {result:?}"
            );
        }
        let log = raw(&server, &["GET", "chat:room:{r}:log"]).await;
        assert_eq!(log, redis::Value::BulkString(b"damaged".to_vec()));
    })
    .await;
}

/// The batch a node writes its collected acks with: the same rules as one advance, per entry, and
/// one damaged entry does not stop the others.
#[tokio::test]
async fn cursors_advance_in_batches_with_the_same_rules() {
    bounded(async {
        let server = RedisServer::start().await;
        let backend = open(config(&server, "n1")).await;
        let store = &backend.store;
        let (r, s) = (room("r"), room("s"));
        let (ann, bob, eve) = (user("ann"), user("bob"), user("eve"));
        for (rm, u) in [(&r, &ann), (&r, &bob), (&s, &ann)] {
            store
                .join(&JoinRequest {
                    room: rm,
                    user: u,
                    user_name: "X",
                    room_name: None,
                })
                .await
                .expect("join");
        }
        let er = store
            .head(&StreamKey::Room(r.clone()))
            .await
            .expect("head")
            .epoch;
        let inbox = StreamKey::Inbox(ann.clone());
        let ei = store.head(&inbox).await.expect("head").epoch;
        raw(&server, &["HSET", "chat:user:{bob}:cursors", "r", "zzz"]).await;
        let update = |u: &UserId, stream: StreamKey, epoch: &str, seq| CursorUpdate {
            user: u.clone(),
            stream,
            to: Position::new(epoch, seq),
        };
        let batch = vec![
            update(&ann, StreamKey::Room(r.clone()), &er, 5),
            update(&ann, StreamKey::Room(s.clone()), "stale", 9),
            update(&ann, inbox.clone(), &ei, 3),
            update(&bob, StreamKey::Room(r.clone()), &er, 4),
            update(&eve, StreamKey::Room(r.clone()), &er, 2),
        ];
        store.advance_cursors(&batch).await.expect("batch");
        let cursor = |u: &UserId, st: StreamKey| {
            let store = store.clone();
            let u = u.clone();
            async move { store.cursor(&u, &st).await }
        };
        assert_eq!(
            cursor(&ann, StreamKey::Room(r.clone()))
                .await
                .expect("cursor"),
            Some(Position::new(er.clone(), 5))
        );
        assert_eq!(
            cursor(&ann, StreamKey::Room(s.clone()))
                .await
                .expect("cursor"),
            None
        );
        assert_eq!(
            cursor(&ann, inbox.clone()).await.expect("cursor"),
            Some(Position::new(ei, 3))
        );
        // Bob's damaged cursor is left as it is; eve is no member.
        let bobs = raw(&server, &["HGET", "chat:user:{bob}:cursors", "r"]).await;
        assert_eq!(bobs, redis::Value::BulkString(b"zzz".to_vec()));
        assert_eq!(
            cursor(&eve, StreamKey::Room(r.clone()))
                .await
                .expect("cursor"),
            None
        );
        // Forward only.
        store
            .advance_cursors(&[update(&ann, StreamKey::Room(r.clone()), &er, 2)])
            .await
            .expect("batch");
        assert_eq!(
            cursor(&ann, StreamKey::Room(r)).await.expect("cursor"),
            Some(Position::new(er, 5))
        );
    })
    .await;
}

/// A presence refresh renews everything a node vouches for; one room's damaged keys skip that
/// room's entry only, instead of failing the refresh (and letting every other user's presence
/// lapse).
#[tokio::test]
async fn a_refresh_skips_a_damaged_room_and_renews_the_others() {
    bounded(async {
        let server = RedisServer::start().await;
        let a = open(config(&server, "node-a")).await;
        let (good, bad) = (room("good"), room("bad"));
        let ann = user("ann");
        let mut entries = Vec::new();
        for r in [&good, &bad] {
            let joined = a
                .store
                .join(&JoinRequest {
                    room: r,
                    user: &ann,
                    user_name: "Ann",
                    room_name: None,
                })
                .await
                .expect("join");
            entries.push(joined_entry(
                r,
                &ann,
                "Ann",
                &joined.head.epoch,
                joined.presence_seq,
            ));
        }
        raw(&server, &["DEL", "chat:room:{bad}:members"]).await;
        raw(&server, &["SET", "chat:room:{bad}:members", "damaged"]).await;
        let before = raw(&server, &["ZSCORE", "chat:room:{good}:online", "ann"]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let refreshed = a.store.refresh_presence(&entries).await.expect("refresh");
        assert_eq!(refreshed, Refreshed::default());
        let after = raw(&server, &["ZSCORE", "chat:room:{good}:online", "ann"]).await;
        assert_ne!(before, after, "the good room's presence was renewed");
    })
    .await;
}

/// Who is online in a room now, by the Redis clock: expired entries are not online.
#[tokio::test]
async fn online_lists_users_whose_presence_has_not_expired() {
    bounded(async {
        let server = RedisServer::start().await;
        let a = open(config(&server, "node-a")).await;
        let r = room("r");
        for u in ["ann", "bob"] {
            a.store
                .join(&JoinRequest {
                    room: &r,
                    user: &user(u),
                    user_name: u,
                    room_name: None,
                })
                .await
                .expect("join");
        }
        assert_eq!(
            a.store.online(&r).await.expect("online"),
            vec![user("ann"), user("bob")]
        );
        raw(&server, &["ZADD", "chat:room:{r}:online", "1", "bob"]).await;
        assert_eq!(a.store.online(&r).await.expect("online"), vec![user("ann")]);
    })
    .await;
}
