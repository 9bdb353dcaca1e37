//! Measured weakness 2 of the security issue, Redis side: no key of a room or an inbox lives
//! forever. Every such key has a TTL (`offline.ttl_secs`, here `cursor_ttl_secs`) renewed by the
//! room's or inbox's activity; a room left by everyone with nothing posted goes at once; the room
//! list forgets rooms whose keys expired. Real `redis-server` per test.

mod redis_support;

use std::time::Duration;

use chat_backend::{JoinRequest, StreamKey};
use redis_support::*;

fn join<'a>(room: &'a chat_protocol::RoomId, user: &'a chat_protocol::UserId) -> JoinRequest<'a> {
    JoinRequest {
        room,
        user,
        user_name: "X",
        room_name: None,
    }
}

fn int(value: redis::Value) -> i64 {
    match value {
        redis::Value::Int(n) => n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// Every key but the two global ones, with its TTL in seconds (-1: none).
async fn ttls(server: &RedisServer) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for key in raw_strings(server, &["KEYS", "chat:*"]).await {
        if key == "chat:rooms" || key == "chat:nodes" {
            continue;
        }
        let ttl = int(raw(server, &["TTL", &key]).await);
        out.push((key, ttl));
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_key_of_a_room_and_an_inbox_has_a_ttl() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg = config(&server, "n1");
        cfg.cursor_ttl_secs = 100;
        let backend = open(cfg).await;
        let store = &backend.store;
        let (r, a, b) = (room("r"), user("a"), user("b"));
        store.join(&join(&r, &a)).await.expect("join");
        store.join(&join(&r, &b)).await.expect("join");
        store.head(&StreamKey::Room(r.clone())).await.expect("head");
        store.post(&r, &draft("a", "hi")).await.expect("post");
        let mut with_id = draft("a", "again");
        with_id.client_msg_id = Some("c1".into());
        store.post(&r, &with_id).await.expect("post");
        store
            .refresh_presence(&[entry(&r, &a, "A")])
            .await
            .expect("refresh");
        store.go_offline(&r, &b).await.expect("offline");
        // A direct message to a user who never connected, and an inbox opened by its owner.
        let mut dm = draft("a", "psst");
        dm.client_msg_id = Some("d1".into());
        store.post_direct(&user("ghost"), &dm).await.expect("dm");
        store
            .head(&StreamKey::Inbox(user("c")))
            .await
            .expect("head");
        store
            .advance_cursor(
                &a,
                &StreamKey::Room(r.clone()),
                &chat_backend::Position::new(
                    store
                        .head(&StreamKey::Room(r.clone()))
                        .await
                        .expect("head")
                        .epoch,
                    1,
                ),
            )
            .await
            .expect("cursor");

        let keys = ttls(&server).await;
        for suffix in [
            "room:{r}:meta",
            "room:{r}:log",
            "room:{r}:ids",
            "room:{r}:members",
            "room:{r}:names",
            "room:{r}:online",
            "room:{r}:conns",
            "user:{ghost}:inbox",
            "user:{ghost}:inbox:meta",
            "user:{a}:inbox",
            "user:{a}:inbox:ids",
            "user:{c}:inbox:meta",
        ] {
            assert!(
                keys.iter().any(|(k, _)| *k == format!("chat:{suffix}")),
                "expected chat:{suffix} among {keys:?}"
            );
        }
        for (key, ttl) in &keys {
            assert!(
                (1..=100).contains(ttl),
                "{key} has TTL {ttl}, expected 1..=100 (all keys: {keys:?})"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_room_left_by_everyone_with_nothing_posted_goes_at_once() {
    bounded(async {
        let server = RedisServer::start().await;
        let backend = open(config(&server, "n1")).await;
        let store = &backend.store;
        let a = user("a");
        for i in 0..50 {
            let r = room(&format!("r{i}"));
            store.join(&join(&r, &a)).await.expect("join");
            store.leave(&r, &a).await.expect("leave");
        }
        assert!(store.rooms().await.expect("rooms").is_empty());
        assert!(
            raw_strings(&server, &["SMEMBERS", "chat:rooms"])
                .await
                .is_empty()
        );
        // Only each room's meta (epoch, presence seq) remains, and it expires.
        let keys = ttls(&server).await;
        assert_eq!(keys.len(), 50, "{keys:?}");
        assert!(
            keys.iter().all(|(k, t)| k.ends_with(":meta") && *t > 0),
            "{keys:?}"
        );
        // A room that comes back continues its presence seqs.
        let r = room("r0");
        let first = store.join(&join(&r, &a)).await.expect("join");
        let left = store.leave(&r, &a).await.expect("leave");
        let again = store.join(&join(&r, &a)).await.expect("join");
        assert!(first.presence_seq < left.presence_seq && left.presence_seq < again.presence_seq);
    })
    .await;
}

#[tokio::test]
async fn expired_rooms_leave_the_room_list() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg = config(&server, "n1");
        cfg.cursor_ttl_secs = 1;
        let backend = open(cfg).await;
        let store = &backend.store;
        let (r, a) = (room("brief"), user("a"));
        store.join(&join(&r, &a)).await.expect("join");
        store
            .post(&r, &draft("a", "soon gone"))
            .await
            .expect("post");
        store.go_offline(&r, &a).await.expect("offline");
        assert_eq!(store.rooms().await.expect("rooms").len(), 1);
        // Wait (bounded) for Redis to expire the keys: nothing of the room is left.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !ttls(&server).await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "keys never expired: {:?}",
                ttls(&server).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(store.rooms().await.expect("rooms").is_empty());
        assert!(
            raw_strings(&server, &["SMEMBERS", "chat:rooms"])
                .await
                .is_empty(),
            "the listing pruned the expired room from the list"
        );
    })
    .await;
}
