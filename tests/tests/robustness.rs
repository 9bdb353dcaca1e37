//! Hostile input, limits, dead clients and shutdown on one node (embedded backend).

use std::time::{Duration, Instant};

use chat_tests::chat_protocol::{ErrorCode, LogoutReason, ServerFrame};
use chat_tests::serde_json::{Value, json};
use chat_tests::{Client, Gateway, RawClient, default_timeout};

#[tokio::test]
async fn heartbeat_reaps_silent_clients() {
    let gw = Gateway::start(&[
        ("CHAT__HEARTBEAT__INTERVAL_SECS", "1"),
        ("CHAT__HEARTBEAT__TIMEOUT_SECS", "2"),
    ])
    .await;
    let started = Instant::now();
    let mut live = gw.client().await.named("live");
    live.login("hb", "alive", "Alive").await;

    // The silent client does the handshake and logs in, then never writes again (no pongs).
    let mut silent = RawClient::connect(gw.addr()).await;
    silent
        .send_text(
            &json!({"event": "login", "roomId": "hb", "userId": "sleepy", "userName": "Sleepy"})
                .to_string(),
        )
        .await;
    let came = live.recv_login_of("hb", "sleepy").await;
    assert_eq!((came.num, came.total), (2, 2));

    // It is reaped: the live client (which keeps reading, so its pongs flow) hears it went offline.
    let gone = live.recv_logout_of("hb", "sleepy").await;
    assert_eq!(gone.reason, Some(LogoutReason::Offline));
    assert_eq!((gone.num, gone.total), (1, 2), "{gone:?}");
    let frames = silent.read_until_closed(default_timeout()).await;
    let close = frames.last().expect("frames from the server");
    assert_eq!(
        close.close_code(),
        Some(4001),
        "the silent client is closed with 4001; frames: {frames:?}"
    );
    assert!(
        frames.iter().any(|f| f.opcode == 9),
        "the server pinged before giving up"
    );

    // The live client stays connected well past several timeouts.
    let alive_until = started + Duration::from_secs(7);
    live.stay_open_for(alive_until.saturating_duration_since(Instant::now()))
        .await;
    // Application-level ping too.
    live.send_json(json!({"event": "heartBeat", "content": "ping"}))
        .await;
    let pong = live
        .recv_until("pong", |f| matches!(f, ServerFrame::HeartBeat { .. }))
        .await;
    assert_eq!(
        pong,
        ServerFrame::HeartBeat {
            content: "pong".into()
        }
    );
    let sent = live.post_and_wait("hb", "still here").await;
    assert_eq!(sent.seq, 1);
}

/// One hostile frame and the error it must produce.
struct Case {
    frame: String,
    code: ErrorCode,
    reference: Option<&'static str>,
}

fn case(frame: impl Into<String>, code: ErrorCode) -> Case {
    Case {
        frame: frame.into(),
        code,
        reference: None,
    }
}

fn case_ref(frame: Value, code: ErrorCode, reference: &'static str) -> Case {
    Case {
        frame: frame.to_string(),
        code,
        reference: Some(reference),
    }
}

async fn check_cases(client: &mut Client, cases: Vec<Case>) {
    for Case {
        frame,
        code,
        reference,
    } in cases
    {
        client.send_raw_text(frame.clone()).await;
        let shown: String = frame.chars().take(120).collect();
        let error = client
            .recv_match(&format!("error for {shown}"), |f| match f {
                ServerFrame::Error(e) => Some(e.clone()),
                _ => None,
            })
            .await;
        assert_eq!(error.code, code, "frame {shown}: {error:?}");
        assert_eq!(
            error.reference.as_deref(),
            reference,
            "frame {shown}: {error:?}"
        );
        assert!(!error.retriable, "frame {shown}: {error:?}");
        assert!(!error.message.is_empty());
    }
}

#[tokio::test]
async fn bad_input_keeps_connection_usable() {
    use ErrorCode::*;
    let gw = Gateway::start(&[("CHAT__LIMITS__MAX_CONTENT_BYTES", "100")]).await;
    let mut x = gw.client().await.named("hostile");
    let long = "x".repeat(65);
    let deep_array = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_object = format!(
        r#"{{"event":"login","roomId":"r","userId":"u","userName":"U","x":{}1{}}}"#,
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    );

    // Before any login.
    check_cases(
        &mut x,
        vec![
            case("not json", BadJson),
            case("{\"event\":\"login\"", BadJson),
            case("", BadJson),
            case("[1,2,3]", BadJson),
            case("\"just a string\"", BadJson),
            case("42", BadJson),
            case("null", BadJson),
            case("\u{feff}{\"event\":\"heartBeat\"}", BadJson),
            case(deep_array, BadJson),
            case(deep_object, BadJson),
            case(r#"{"event":"history","roomId":"r","limit":1e400}"#, BadJson),
            case(
                r#"{"event":"message","roomId":"r","content":"\ud800"}"#,
                BadJson,
            ),
            case(r#"{"event":"dance"}"#, UnknownEvent),
            case(r#"{"event":"lögïn ✨"}"#, UnknownEvent),
            case(r#"{"event":""}"#, UnknownEvent),
            case("{}", MissingField),
            case(r#"{"hello":"world"}"#, MissingField),
            case(r#"{"event":5}"#, BadField),
            case(r#"{"event":["login"]}"#, BadField),
            case_ref(
                json!({"event": "message", "roomId": "r", "content": "hi", "clientMsgId": "m-1"}),
                NotJoined,
                "m-1",
            ),
            case(
                json!({"event": "message", "toUserId": "bob", "content": "hi"}).to_string(),
                NotJoined,
            ),
            case(
                json!({"event": "logout", "roomId": "r"}).to_string(),
                NotJoined,
            ),
            case(
                json!({"event": "ack", "roomId": "r", "seq": 1}).to_string(),
                NotJoined,
            ),
            case(
                json!({"event": "ack", "direct": true, "seq": 1}).to_string(),
                NotJoined,
            ),
            case(r#"{"event":"login"}"#, MissingField),
            case(
                r#"{"event":"login","roomId":"r","userId":"u"}"#,
                MissingField,
            ),
            case(
                r#"{"event":"login","roomId":"r","userName":"U"}"#,
                MissingField,
            ),
            case(
                r#"{"event":"login","roomId":null,"userId":"u","userName":"U"}"#,
                MissingField,
            ),
        ],
    )
    .await;

    // Invalid ids and bad fields in `login`.
    let login = |room: Value, user: Value, name: Value| {
        json!({"event": "login", "roomId": room, "userId": user, "userName": name}).to_string()
    };
    check_cases(
        &mut x,
        vec![
            case(login(json!("a b"), json!("u"), json!("U")), InvalidId),
            case(login(json!(""), json!("u"), json!("U")), InvalidId),
            case(login(json!(long), json!("u"), json!("U")), InvalidId),
            case(login(json!(1.5), json!("u"), json!("U")), InvalidId),
            case(login(json!(true), json!("u"), json!("U")), InvalidId),
            case(login(json!({}), json!("u"), json!("U")), InvalidId),
            case(login(json!(["r"]), json!("u"), json!("U")), InvalidId),
            case(login(json!("é"), json!("u"), json!("U")), InvalidId),
            case(login(json!("r\n"), json!("u"), json!("U")), InvalidId),
            case(login(json!("r/../x"), json!("u"), json!("U")), InvalidId),
            case(
                r#"{"event":"login","roomId":123456789012345678901234567890,"userId":"u","userName":"U"}"#,
                InvalidId,
            ),
            case(login(json!("r"), json!("a|b"), json!("U")), InvalidId),
            case(login(json!("r"), json!("u"), json!(5)), BadField),
            case(login(json!("r"), json!("u"), json!("")), BadField),
            case(login(json!("r"), json!("u"), json!("   ")), BadField),
            case(login(json!("r"), json!("u"), json!("bell\u{7}")), BadField),
            case(login(json!("r"), json!("u"), json!("n".repeat(65))), BadField),
            case(
                json!({"event": "login", "roomId": "r", "userId": "u", "userName": "U", "since": -1}).to_string(),
                BadField,
            ),
            case(
                json!({"event": "login", "roomId": "r", "userId": "u", "userName": "U", "since": "5"}).to_string(),
                BadField,
            ),
            case(
                r#"{"event":"login","roomId":"r","userId":"u","userName":"U","since":18446744073709551616}"#,
                BadField,
            ),
            case(
                json!({"event": "login", "roomId": "r", "userId": "u", "userName": "U", "roomName": 3}).to_string(),
                BadField,
            ),
        ],
    )
    .await;

    // A valid login, with a name full of unusual (but printable) characters. (Bidi overrides and
    // zero-width characters are refused: see security.rs.)
    let name = "Zoë 🦀 ʇxǝʇ 漢字";
    x.send_json(json!({"event": "login", "roomId": "r", "userId": "tester", "userName": name}))
        .await;
    let joined = x.expect_joined("r").await;
    assert_eq!(joined.num, 1);
    assert_eq!(x.recv_login_of("r", "tester").await.user_name, name);

    let msg = |extra: Value| {
        let mut frame = json!({"event": "message", "roomId": "r"});
        if let (Some(f), Value::Object(extra)) = (frame.as_object_mut(), extra) {
            f.extend(extra);
        }
        frame
    };
    check_cases(
        &mut x,
        vec![
            // One connection is one user.
            case(login(json!("r"), json!("other"), json!("O")), UserMismatch),
            case(login(json!("r2"), json!("other"), json!("O")), UserMismatch),
            // Messages.
            case_ref(msg(json!({"content": 5, "clientMsgId": "m-2"})), BadField, "m-2"),
            case_ref(msg(json!({"content": "", "clientMsgId": "m-3"})), BadField, "m-3"),
            case_ref(msg(json!({"content": " \n\t ", "clientMsgId": "m-4"})), BadField, "m-4"),
            case_ref(msg(json!({"content": ["a"], "clientMsgId": "m-5"})), BadField, "m-5"),
            case_ref(msg(json!({"clientMsgId": "m-6"})), MissingField, "m-6"),
            case_ref(
                json!({"event": "message", "content": "x", "clientMsgId": "m-7"}),
                MissingField,
                "m-7",
            ),
            case_ref(
                msg(json!({"toUserId": "bob", "content": "x", "clientMsgId": "m-8"})),
                BadField,
                "m-8",
            ),
            case_ref(msg(json!({"content": "a".repeat(101), "clientMsgId": "m-9"})), ContentTooLong, "m-9"),
            // 51 two-byte characters: 102 bytes although only 51 characters.
            case_ref(msg(json!({"content": "é".repeat(51), "clientMsgId": "m-10"})), ContentTooLong, "m-10"),
            case_ref(msg(json!({"content": "a".repeat(5000), "clientMsgId": 77})), ContentTooLong, "77"),
            case_ref(
                json!({"event": "message", "roomId": "elsewhere", "content": "x", "clientMsgId": "m-11"}),
                NotJoined,
                "m-11",
            ),
            case_ref(
                json!({"event": "message", "roomId": "a b", "content": "x", "clientMsgId": "m-12"}),
                InvalidId,
                "m-12",
            ),
            case_ref(
                json!({"event": "message", "toUserId": "", "content": "x", "clientMsgId": "m-13"}),
                InvalidId,
                "m-13",
            ),
            case(msg(json!({"content": "x", "clientMsgId": long})).to_string(), BadField),
            case(msg(json!({"content": "x", "clientMsgId": true})).to_string(), BadField),
            // Acks, logouts, history.
            case(r#"{"event":"ack","roomId":"r"}"#, MissingField),
            case(r#"{"event":"ack","seq":1}"#, MissingField),
            case(r#"{"event":"ack","roomId":"r","seq":"1"}"#, BadField),
            case(r#"{"event":"ack","roomId":"r","seq":-3}"#, BadField),
            case(r#"{"event":"ack","roomId":"nope","seq":1}"#, NotJoined),
            case(r#"{"event":"logout"}"#, MissingField),
            case(r#"{"event":"logout","roomId":"nope"}"#, NotJoined),
            case(r#"{"event":"history"}"#, MissingField),
            case(r#"{"event":"history","roomId":"r","limit":0}"#, BadField),
            case(r#"{"event":"history","roomId":"r","limit":1.5}"#, BadField),
            case(r#"{"event":"history","roomId":"r","before":-1}"#, BadField),
            case(r#"{"event":"history","roomId":"r","before":99999999999999999999}"#, BadField),
            case(r#"{"event":"history","roomId":"r","limit":"10"}"#, BadField),
        ],
    )
    .await;

    // A binary frame.
    x.send_binary(vec![0, 159, 146, 150, 255]).await;
    x.expect_error(BinaryFrame).await;

    // Things that are odd but valid still work.
    x.send_json(json!({"event": "history", "roomId": "r", "limit": 4_294_967_296_000u64}))
        .await;
    let page = x
        .recv_match("history", |f| match f {
            ServerFrame::History(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert!(page.messages.is_empty());
    x.send_json(json!({"event": "heartBeat"})).await; // no content: still a ping
    x.recv_until("pong", |f| matches!(f, ServerFrame::HeartBeat { .. }))
        .await;

    // After all of it, the connection chats normally, with any Unicode in content.
    let mut peer = gw.client().await.named("peer");
    peer.login("r", "peer", "Peer").await;
    let content = "exactly 100 bytes? no: ünïcödé, emoji 🦀🔥, RTL \u{202e}abc, NUL \u{0} end";
    assert!(content.len() <= 100, "{}", content.len());
    let sent = x.post_and_wait("r", content).await;
    assert_eq!(sent.seq, 1);
    let boundary = "b".repeat(100);
    x.post_and_wait("r", &boundary).await;
    for client in [&mut x, &mut peer] {
        let ms = client.recv_messages_in("r", 2).await;
        assert_eq!(ms[0].content, content, "content round-trips byte for byte");
        assert_eq!((ms[1].seq, ms[1].content.as_str()), (2, boundary.as_str()));
        assert_eq!(ms[0].user_name, name);
    }
    x.ping_pong().await;
    assert!(
        !x.pending.iter().any(|f| matches!(f, ServerFrame::Error(_))),
        "no stray errors: {:?}",
        x.pending
    );
    assert!(gw.healthy().await, "the server survived");
}

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let gw = Gateway::start(&[("CHAT__LIMITS__MAX_FRAME_BYTES", "8192")]).await;
    let mut bystander = gw.client().await.named("bystander");
    bystander.login("big", "calm", "Calm").await;
    let mut offender = gw.client().await.named("offender");
    offender.login("big", "loud", "Loud").await;
    bystander.recv_login_of("big", "loud").await;

    // Just under the frame limit, but over the content limit: an error, not a close.
    let content = "y".repeat(8000);
    offender
        .send_json(
            json!({"event": "message", "roomId": "big", "content": content, "clientMsgId": "c"}),
        )
        .await;
    let error = offender.expect_error(ErrorCode::ContentTooLong).await;
    assert_eq!(error.reference.as_deref(), Some("c"));

    // Over the frame limit: closed with 1009.
    let content = "z".repeat(20 * 1024);
    offender
        .send_json(json!({"event": "message", "roomId": "big", "content": content}))
        .await;
    assert_eq!(offender.expect_close_code().await, Some(1009));
    let gone = bystander.recv_logout_of("big", "loud").await;
    assert_eq!((gone.reason, gone.num), (Some(LogoutReason::Offline), 1));

    // The server and everyone else are fine; nothing of the big frame was stored.
    assert!(gw.healthy().await);
    let sent = bystander.post_and_wait("big", "small talk").await;
    assert_eq!(sent.seq, 1);
    let mut newcomer = gw.client().await.named("newcomer");
    let joined = newcomer.login("big", "new", "New").await;
    assert_eq!((joined.seq, joined.num), (1, 2));
}

#[tokio::test]
async fn shutdown_closes_1012() {
    let mut gw = Gateway::start(&[("CHAT__SERVER__SHUTDOWN_GRACE_SECS", "5")]).await;
    let mut a = gw.client().await.named("A");
    let mut b = gw.client().await.named("B");
    a.login("room", "alice", "Alice").await;
    b.login("room", "bob", "Bob").await;
    a.recv_login_of("room", "bob").await;
    // A third connection that never logged in is closed the same way.
    let mut idle = gw.client().await.named("idle");

    gw.terminate();
    for client in [&mut a, &mut b, &mut idle] {
        assert_eq!(
            client.expect_close_code().await,
            Some(1012),
            "{}: service restart",
            client.label
        );
    }
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 15 s after SIGTERM; log:\n{}",
                gw.log_tail(40)
            )
        });
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        gw.log_tail(40)
    );
}

#[tokio::test]
async fn sigint_shuts_down_like_sigterm() {
    let mut gw = Gateway::start(&[]).await;
    let mut a = gw.client().await.named("A");
    a.login("room", "alice", "Alice").await;
    gw.interrupt();
    assert_eq!(a.expect_close_code().await, Some(1012));
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits after SIGINT");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn too_many_rooms() {
    let gw = Gateway::start(&[("CHAT__LIMITS__MAX_ROOMS_PER_CONNECTION", "2")]).await;
    let mut c = gw.client().await.named("roamer");
    c.login("one", "roamer", "R").await;
    c.login("two", "roamer", "R").await;
    c.send_json(json!({"event": "login", "roomId": "three", "userId": "roamer", "userName": "R"}))
        .await;
    c.expect_error(ErrorCode::TooManyRooms).await;
    // Logging in again to a room it is in is fine, and leaving one makes room for another.
    let again = c.login("one", "roamer", "R").await;
    assert_eq!((again.num, again.total, again.replayed), (1, 1, 0));
    c.send_json(json!({"event": "logout", "roomId": "two"}))
        .await;
    c.recv_logout_of("two", "roamer").await;
    c.login("three", "roamer", "R").await;
}
