//! The Redis broker against a real `redis-server`: delivery between two nodes, hostile payloads,
//! and recovery from a killed pub/sub connection and from a Redis restart.

mod redis_support;

use std::time::{Duration, Instant};

use chat_backend::{BackendError, BrokerEvent, Notice, StreamKey};
use chat_protocol::{LogoutReason, PresenceNotice, ServerFrame};
use redis_support::*;

/// "Quickly" while Redis is down: the configured command timeout plus generous slack for a
/// loaded machine; what matters is that no call hangs.
const FAIL_FAST: Duration = Duration::from_secs(5);

fn message_on(
    stream: &StreamKey,
) -> impl FnMut(BrokerEvent) -> Option<chat_protocol::ChatMessage> + '_ {
    move |e| match e {
        BrokerEvent::Message {
            stream: s, message, ..
        } if &s == stream => Some(message),
        _ => None,
    }
}

#[tokio::test]
async fn two_nodes_see_each_others_posts_notices_and_direct_messages() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut a = open(config(&server, "node-a")).await;
        let mut b = open(config(&server, "node-b")).await;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        a.broker.subscribe(&stream).await.expect("subscribe a");
        b.broker.subscribe(&stream).await.expect("subscribe b");

        let posted = a
            .store
            .post(&r, &draft("ann", "from a"))
            .await
            .expect("post");
        let got = expect_event(&mut b.events, "a's post on b", message_on(&stream)).await;
        assert_eq!((got.seq, got.content.as_str()), (posted.seq, "from a"));
        let posted = b
            .store
            .post(&r, &draft("bob", "from b"))
            .await
            .expect("post");
        // a also sees its own post first: every subscriber gets every message, in seq order.
        let own = expect_event(&mut a.events, "a's own post on a", message_on(&stream)).await;
        assert_eq!(own.content, "from a");
        let got = expect_event(&mut a.events, "b's post on a", message_on(&stream)).await;
        assert_eq!((got.seq, got.content.as_str()), (posted.seq, "from b"));

        let notice = PresenceNotice {
            room_id: r.clone(),
            user_id: user("ann"),
            user_name: "Ann".into(),
            num: 1,
            total: 2,
            reason: Some(LogoutReason::Offline),
            presence_seq: Some(3),
        };
        a.broker
            .publish_notice(&Notice::Logout(notice.clone()))
            .await
            .expect("notice");
        let (got, frame) = expect_event(&mut b.events, "notice", |e| match e {
            BrokerEvent::Notice { notice, frame } => Some((notice, frame)),
            _ => None,
        })
        .await;
        assert_eq!(got, Notice::Logout(notice.clone()));
        assert_eq!(
            ServerFrame::decode(&frame).ok(),
            Some(ServerFrame::Logout(notice))
        );

        let bob_inbox = StreamKey::Inbox(user("bob"));
        b.broker
            .subscribe(&bob_inbox)
            .await
            .expect("subscribe inbox");
        a.store
            .post_direct(&user("bob"), &draft("ann", "psst"))
            .await
            .expect("dm");
        let dm = expect_event(&mut b.events, "dm on b", message_on(&bob_inbox)).await;
        assert_eq!(dm.to_user_id, Some(user("bob")));

        // Garbage on a subscribed channel is skipped; the next good message still arrives, first.
        raw(&server, &["PUBLISH", "chat:room:{r}", "not json"]).await;
        raw(
            &server,
            &[
                "PUBLISH",
                "chat:room:{r}",
                r#"{"event":"heartBeat","content":"pong"}"#,
            ],
        )
        .await;
        let elsewhere =
            r#"{"event":"login","roomId":"other","userId":"x","userName":"X","num":1,"total":1}"#;
        raw(&server, &["PUBLISH", "chat:room:{r}", elsewhere]).await;
        raw(&server, &["PUBLISH", "chat:room:{r}", "\u{1F600}"]).await;
        let posted = a
            .store
            .post(&r, &draft("ann", "after garbage"))
            .await
            .expect("post");
        match next_event(&mut b.events, WAIT).await {
            Some(BrokerEvent::Message { message, .. }) => assert_eq!(message.seq, posted.seq),
            other => panic!("expected the post right after the garbage, got {other:?}"),
        }

        // After unsubscribing, b gets nothing more from the room: the next event is the DM that
        // was published after the room post (one connection delivers in publish order).
        b.broker.unsubscribe(&stream).await.expect("unsubscribe");
        a.store
            .post(&r, &draft("ann", "unseen"))
            .await
            .expect("post");
        a.store
            .post_direct(&user("bob"), &draft("ann", "seen"))
            .await
            .expect("dm");
        match next_event(&mut b.events, WAIT).await {
            Some(BrokerEvent::Message {
                stream, message, ..
            }) => {
                assert_eq!(stream, bob_inbox);
                assert_eq!(message.content, "seen");
            }
            other => panic!("expected the DM, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn killed_pubsub_connection_reconnects_resubscribes_and_announces_it() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut a = open(config(&server, "node-a")).await;
        let b = open(config(&server, "node-b")).await;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        let inbox = StreamKey::Inbox(user("ann"));
        a.broker.subscribe(&stream).await.expect("subscribe");
        a.broker.subscribe(&inbox).await.expect("subscribe");

        let killed = raw(&server, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        // Only a's connection is in pub/sub mode (b subscribed nothing).
        assert!(
            matches!(killed, redis::Value::Int(n) if n >= 1),
            "{killed:?}"
        );
        expect_event(&mut a.events, "Resubscribed", |e| {
            matches!(e, BrokerEvent::Resubscribed).then_some(())
        })
        .await;
        let channels = raw_strings(&server, &["PUBSUB", "CHANNELS", "chat:*"]).await;
        assert!(
            channels.contains(&"chat:room:{r}".to_owned())
                && channels.contains(&"chat:user:{ann}".to_owned()),
            "{channels:?}"
        );

        let posted = b
            .store
            .post(&r, &draft("bob", "after the kill"))
            .await
            .expect("post");
        let got = expect_event(&mut a.events, "post after resubscribe", message_on(&stream)).await;
        assert_eq!(got.seq, posted.seq);
        b.store
            .post_direct(&user("ann"), &draft("bob", "dm after the kill"))
            .await
            .expect("dm");
        let got = expect_event(&mut a.events, "dm after resubscribe", message_on(&inbox)).await;
        assert_eq!(got.content, "dm after the kill");

        // Twice in a row works too.
        raw(&server, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        expect_event(&mut a.events, "second Resubscribed", |e| {
            matches!(e, BrokerEvent::Resubscribed).then_some(())
        })
        .await;
        b.store
            .post(&r, &draft("bob", "again"))
            .await
            .expect("post");
        let got = expect_event(
            &mut a.events,
            "post after 2nd resubscribe",
            message_on(&stream),
        )
        .await;
        assert_eq!(got.content, "again");
    })
    .await;
}

#[tokio::test]
async fn redis_restart_fails_fast_then_recovers_with_a_new_epoch() {
    bounded(async {
        let mut server = RedisServer::start().await;
        let port = server.port();
        let mut cfg = config(&server, "node-a");
        cfg.command_timeout_ms = 500;
        let mut a = open(cfg).await;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        a.broker.subscribe(&stream).await.expect("subscribe");
        a.store.post(&r, &draft("ann", "one")).await.expect("post");
        let before = a.store.post(&r, &draft("ann", "two")).await.expect("post");
        assert_eq!(before.seq, 2);

        server.kill9();

        // Every kind of call fails fast with Unavailable while Redis is down.
        let unavailable = |what: &str, started: Instant, res: Result<(), BackendError>| {
            assert!(
                matches!(res, Err(BackendError::Unavailable(_))),
                "{what}: expected Unavailable, got {res:?}"
            );
            assert!(
                started.elapsed() < FAIL_FAST,
                "{what} took {:?}",
                started.elapsed()
            );
        };
        for _ in 0..3 {
            let t = Instant::now();
            unavailable(
                "post",
                t,
                a.store.post(&r, &draft("ann", "lost")).await.map(drop),
            );
            let t = Instant::now();
            unavailable("head", t, a.store.head(&stream).await.map(drop));
            let t = Instant::now();
            unavailable("ping", t, a.store.ping().await);
            let t = Instant::now();
            unavailable("rooms", t, a.store.rooms().await.map(drop));
            let t = Instant::now();
            unavailable(
                "subscribe",
                t,
                a.broker.subscribe(&StreamKey::Room(room("other"))).await,
            );
        }

        // Same port, empty data set (no persistence): the backend recovers by itself.
        let _server = RedisServer::start_on_port(port).await;
        eventually("the store to answer again", || async {
            a.store.ping().await.ok()
        })
        .await;
        expect_event(&mut a.events, "Resubscribed after the restart", |e| {
            matches!(e, BrokerEvent::Resubscribed).then_some(())
        })
        .await;

        // The room's data is gone: a new epoch, seqs start over, and live delivery works again.
        let after = a
            .store
            .post(&r, &draft("ann", "three"))
            .await
            .expect("post");
        assert_eq!(after.seq, 1);
        assert_ne!(after.epoch, before.epoch);
        let got = expect_event(&mut a.events, "post after the restart", message_on(&stream)).await;
        assert_eq!((got.seq, got.epoch.as_str()), (1, after.epoch.as_str()));
        assert_eq!(
            a.store.head(&stream).await.expect("head").epoch,
            after.epoch
        );
        // The channel that failed to subscribe while down was not silently kept.
        let channels = raw_strings(&_server, &["PUBSUB", "CHANNELS", "chat:*"]).await;
        assert_eq!(channels, vec!["chat:room:{r}".to_owned()]);
    })
    .await;
}

#[tokio::test]
async fn frozen_redis_times_out_instead_of_hanging_then_recovers() {
    bounded(async {
        let server = RedisServer::start().await;
        let mut cfg = config(&server, "node-a");
        cfg.command_timeout_ms = 500;
        let mut a = open(cfg).await;
        let r = room("r");
        let stream = StreamKey::Room(r.clone());
        a.broker.subscribe(&stream).await.expect("subscribe");
        let before = a.store.post(&r, &draft("ann", "one")).await.expect("post");

        // Sockets stay open but nothing answers: only the timeouts prevent a hang.
        server.signal("STOP");
        for _ in 0..3 {
            let t = Instant::now();
            let res = a.store.post(&r, &draft("ann", "maybe")).await;
            assert!(matches!(res, Err(BackendError::Unavailable(_))), "{res:?}");
            assert!(t.elapsed() < FAIL_FAST, "post took {:?}", t.elapsed());
            let t = Instant::now();
            let res = a.broker.subscribe(&StreamKey::Room(room("other"))).await;
            assert!(matches!(res, Err(BackendError::Unavailable(_))), "{res:?}");
            assert!(t.elapsed() < FAIL_FAST, "subscribe took {:?}", t.elapsed());
        }
        server.signal("CONT");

        eventually("the store to answer again", || async {
            a.store.ping().await.ok()
        })
        .await;
        // Same data set: same epoch, seqs continue.
        let after = eventually("a post to succeed", || async {
            a.store.post(&r, &draft("ann", "two")).await.ok()
        })
        .await;
        assert_eq!(after.epoch, before.epoch);
        assert!(after.seq > before.seq);
        let got = expect_event(&mut a.events, "post after the freeze", |e| match e {
            BrokerEvent::Message { message, .. } if message.content == "two" => Some(message),
            _ => None,
        })
        .await;
        assert_eq!(got.seq, after.seq);
    })
    .await;
}

#[tokio::test]
async fn opens_without_redis_and_connects_when_it_appears_but_rejects_bad_config() {
    bounded(async {
        // No Redis on this port yet: the backend opens anyway, fast, and reports Unavailable.
        let port = free_port();
        let mut cfg = chat_backend::redis_backend::RedisConfig {
            url: format!("redis://127.0.0.1:{port}/"),
            prefix: "chat:".to_owned(),
            node_id: "n1".to_owned(),
            presence_lease_ms: 7500,
            history_per_room: 1000,
            cursor_ttl_secs: 3600,
            pool_size: 4,
            tls_ca_file: String::new(),
            command_timeout_ms: 500,
        };
        let t = Instant::now();
        let mut backend = chat_backend::redis_backend::open(cfg.clone())
            .await
            .expect("open without Redis");
        assert!(t.elapsed() < FAIL_FAST, "open took {:?}", t.elapsed());
        let t = Instant::now();
        assert!(matches!(
            backend.store.ping().await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            backend.broker.subscribe(&StreamKey::Room(room("r"))).await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(t.elapsed() < FAIL_FAST, "calls took {:?}", t.elapsed());

        // Redis appears: commands work, and the pub/sub connection comes up by itself.
        let server = RedisServer::start_on_port(port).await;
        expect_event(&mut backend.events, "Resubscribed", |e| {
            matches!(e, BrokerEvent::Resubscribed).then_some(())
        })
        .await;
        eventually("ping", || async { backend.store.ping().await.ok() }).await;
        let stream = StreamKey::Room(room("r"));
        backend.broker.subscribe(&stream).await.expect("subscribe");
        let posted = backend
            .store
            .post(&room("r"), &draft("ann", "hi"))
            .await
            .expect("post");
        let seq = expect_event(&mut backend.events, "the post", |e| match e {
            BrokerEvent::Message { message, .. } => Some(message.seq),
            _ => None,
        })
        .await;
        assert_eq!(seq, posted.seq);

        // A wrong setting is a configuration error, not something to retry.
        cfg.url = server.url();
        cfg.node_id = "bad|node".into();
        assert!(matches!(
            chat_backend::redis_backend::open(cfg.clone()).await,
            Err(BackendError::Config(_))
        ));
        cfg.url = "notaurl".into();
        assert!(matches!(
            chat_backend::redis_backend::open(cfg).await,
            Err(BackendError::Config(_))
        ));
    })
    .await;
}
