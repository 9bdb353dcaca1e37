//! Session logic driven without a socket: real hub and in-memory backend, frames in, frames out.

mod support;

use chat_protocol::{ErrorCode, LogoutReason, ServerFrame};
use support::{Harness, login};

#[tokio::test]
async fn login_post_and_notices_without_a_socket() {
    let h = Harness::new();
    let mut a = h.connect();
    let mut b = h.connect();

    a.send(&login("r", "ann")).await;
    let replies = a.replies();
    let ServerFrame::Joined(joined) = &replies[0] else {
        panic!("{replies:?}")
    };
    assert_eq!((joined.num, joined.total, joined.seq), (1, 1, 0));
    assert!(matches!(a.live().await, ServerFrame::Login(n) if n.user_id.as_str() == "ann"));

    b.send(&login("r", "bob")).await;
    let ServerFrame::Login(notice) = a.live().await else {
        panic!("login notice")
    };
    assert_eq!(
        (notice.user_id.as_str(), notice.num, notice.total),
        ("bob", 2, 2)
    );
    assert!(matches!(b.live().await, ServerFrame::Login(_)));

    a.send(r#"{"event":"message","roomId":"r","content":"hello","clientMsgId":"c1"}"#)
        .await;
    let replies = a.replies();
    let ServerFrame::Sent(sent) = &replies[0] else {
        panic!("{replies:?}")
    };
    assert_eq!((sent.seq, sent.client_msg_id.as_deref()), (1, Some("c1")));
    for conn in [&mut a, &mut b] {
        let ServerFrame::Message(m) = conn.live().await else {
            panic!("message")
        };
        assert_eq!(
            (m.seq, m.content.as_str(), m.user_id.as_str()),
            (1, "hello", "ann")
        );
    }

    b.session.finish().await;
    let ServerFrame::Logout(gone) = a.live().await else {
        panic!("logout notice")
    };
    assert_eq!(
        (gone.user_id.as_str(), gone.num, gone.total, gone.reason),
        ("bob", 1, 2, Some(LogoutReason::Offline))
    );
}

#[tokio::test]
async fn a_client_msg_id_reused_for_other_content_gets_id_conflict_and_is_stored_once() {
    let h = Harness::new();
    let mut a = h.connect();
    a.send(&login("r", "ann")).await;
    assert!(matches!(a.replies().as_slice(), [ServerFrame::Joined(_)]));
    assert!(matches!(a.live().await, ServerFrame::Login(_)));

    let post = |content: &str, id: &str| {
        format!(r#"{{"event":"message","roomId":"r","content":"{content}","clientMsgId":"{id}"}}"#)
    };
    a.send(&post("hello", "c1")).await;
    let replies = a.replies();
    let [ServerFrame::Sent(first)] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert_eq!((first.seq, first.duplicate), (1, false));

    // A pure retry: the same receipt, flagged as a duplicate.
    a.send(&post("hello", "c1")).await;
    let replies = a.replies();
    let [ServerFrame::Sent(retry)] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert_eq!(
        (retry.seq, &retry.epoch, retry.ts, retry.duplicate),
        (1, &first.epoch, first.ts, true)
    );

    // The same id for other content: refused, not answered with the first post's receipt.
    a.send(&post("something else", "c1")).await;
    let replies = a.replies();
    let [ServerFrame::Error(e)] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert_eq!(e.code, ErrorCode::IdConflict);
    assert_eq!(e.reference.as_deref(), Some("c1"));
    assert!(!e.retriable);
    assert!(e.message.contains("`c1`"), "{}", e.message);

    // Stored and delivered once: the next live message after seq 1 is the control post.
    a.send(&post("after", "c2")).await;
    assert!(matches!(a.replies().as_slice(), [ServerFrame::Sent(s)] if s.seq == 2 && !s.duplicate));
    for (seq, content) in [(1, "hello"), (2, "after")] {
        let ServerFrame::Message(m) = a.live().await else {
            panic!("message {seq}")
        };
        assert_eq!((m.seq, m.content.as_str()), (seq, content));
    }
    let stream = chat_backend::StreamKey::Room(chat_protocol::RoomId::new("r").expect("id"));
    let log = h
        .node
        .store
        .range(&stream, 0, u64::MAX, 10, 0)
        .await
        .expect("range");
    assert_eq!(
        log.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        vec!["hello", "after"]
    );

    // Direct messages: the same rule, per addressee.
    let dm = |content: &str| {
        format!(
            r#"{{"event":"message","toUserId":"bob","content":"{content}","clientMsgId":"d1"}}"#
        )
    };
    a.send(&dm("psst")).await;
    assert!(matches!(a.replies().as_slice(), [ServerFrame::Sent(s)] if s.seq == 1 && !s.duplicate));
    a.send(&dm("psst")).await;
    assert!(matches!(a.replies().as_slice(), [ServerFrame::Sent(s)] if s.seq == 1 && s.duplicate));
    a.send(&dm("other")).await;
    let replies = a.replies();
    assert!(
        matches!(replies.as_slice(), [ServerFrame::Error(e)]
            if e.code == ErrorCode::IdConflict && e.reference.as_deref() == Some("d1")),
        "{replies:?}"
    );
    let bob = chat_backend::StreamKey::Inbox(chat_protocol::UserId::new("bob").expect("id"));
    let inbox = h
        .node
        .store
        .range(&bob, 0, u64::MAX, 10, 0)
        .await
        .expect("range");
    assert_eq!(
        inbox.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        vec!["psst"]
    );
}

#[tokio::test]
async fn a_returning_member_gets_what_it_missed_then_live_traffic() {
    let h = Harness::new();
    let mut a = h.connect();
    let mut b = h.connect();
    a.send(&login("r", "ann")).await;
    b.send(&login("r", "bob")).await;
    a.replies();
    b.replies();
    a.send(r#"{"event":"message","roomId":"r","content":"seen"}"#)
        .await;
    // Bob's driver writes seq 1, so his cursor moves there when he disconnects.
    while !matches!(b.live().await, ServerFrame::Message(_)) {}
    b.session.finish().await;

    for text in ["m2", "m3"] {
        a.send(&format!(
            r#"{{"event":"message","roomId":"r","content":"{text}"}}"#
        ))
        .await;
    }
    // Let the hub deliver them here first, so they are in the past when Bob comes back.
    loop {
        if let ServerFrame::Message(m) = a.live().await
            && m.seq == 3
        {
            break;
        }
    }
    let mut b2 = h.connect();
    b2.send(&login("r", "bob")).await;
    let replies = b2.replies();
    let ServerFrame::Joined(joined) = &replies[0] else {
        panic!("{replies:?}")
    };
    assert_eq!((joined.seq, joined.replayed), (3, 2));
    let replayed: Vec<(u64, String, bool)> = replies[1..]
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) => (m.seq, m.content.clone(), m.replay),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        replayed,
        vec![(2, "m2".to_owned(), true), (3, "m3".to_owned(), true)]
    );

    a.send(r#"{"event":"message","roomId":"r","content":"live"}"#)
        .await;
    loop {
        if let ServerFrame::Message(m) = b2.live().await {
            assert_eq!(
                (m.seq, m.replay),
                (4, false),
                "live traffic continues right after the replay"
            );
            break;
        }
    }
}

#[tokio::test]
async fn bad_frames_get_errors_and_change_nothing() {
    let h = Harness::new();
    let mut a = h.connect();
    for (text, code) in [
        ("{", ErrorCode::BadJson),
        (r#"{"event":"fly"}"#, ErrorCode::UnknownEvent),
        (
            r#"{"event":"message","roomId":"r","content":"x","clientMsgId":"k"}"#,
            ErrorCode::NotJoined,
        ),
        (
            r#"{"event":"message","toUserId":"bob","content":"x"}"#,
            ErrorCode::NotJoined,
        ),
        (
            r#"{"event":"ack","roomId":"r","seq":1}"#,
            ErrorCode::NotJoined,
        ),
        (r#"{"event":"logout","roomId":"r"}"#, ErrorCode::NotJoined),
    ] {
        a.send(text).await;
        let replies = a.replies();
        let [ServerFrame::Error(e)] = replies.as_slice() else {
            panic!("{text}: {replies:?}")
        };
        assert_eq!(e.code, code, "{text}");
    }
    a.session.on_binary();
    assert!(
        matches!(a.replies().as_slice(), [ServerFrame::Error(e)] if e.code == ErrorCode::BinaryFrame)
    );

    a.send(&login("r", "ann")).await;
    a.replies();
    a.send(&login("r2", "mallory")).await;
    assert!(
        matches!(a.replies().as_slice(), [ServerFrame::Error(e)] if e.code == ErrorCode::UserMismatch)
    );
    let rooms = h.node.store.rooms().await.expect("rooms");
    assert_eq!(rooms.len(), 1, "the refused login created nothing");
}

fn post(room: &str, text: &str) -> String {
    format!(r#"{{"event":"message","roomId":"{room}","content":"{text}"}}"#)
}

fn direct(to: &str, text: &str) -> String {
    format!(r#"{{"event":"message","toUserId":"{to}","content":"{text}"}}"#)
}

/// Defect 6: a replayed message counts as delivered when the driver has written it, not when it
/// was queued. A connection that fails before writing its replay leaves the cursor where it was.
#[tokio::test]
async fn a_replay_that_never_reached_the_socket_does_not_move_the_cursor() {
    let h = Harness::new();
    let mut ann = h.connect();
    ann.send(&login("r", "ann")).await;
    ann.replies();
    let mut bob = h.connect();
    bob.send(&login("r", "bob")).await;
    bob.replies();
    bob.session.finish().await;
    for i in 1..=20 {
        ann.send(&post("r", &format!("m{i}"))).await;
    }

    // Bob comes back; his replay is queued, then the socket fails before any of it is written.
    let mut lost = h.connect();
    lost.send(&login("r", "bob")).await;
    let queued = lost.session.take_replies().count();
    assert_eq!(queued, 21, "joined and the 20 missed messages");
    lost.session.finish().await;

    let mut back = h.connect();
    back.send(&login("r", "bob")).await;
    let replies = back.replies();
    let ServerFrame::Joined(joined) = &replies[0] else {
        panic!("{replies:?}")
    };
    assert_eq!(
        joined.replayed, 20,
        "the unwritten replay is still owed: {replies:?}"
    );
}

/// Suspected defect: the inbox replay compared the stored cursor with this node's delivery
/// position. On a node whose delivery lags, a cursor moved by an ack elsewhere looked like one
/// from the future, was reset to 0 and the whole inbox replayed. The window now ends at the
/// later of the node's position and the store's head.
#[tokio::test]
async fn a_lagging_node_does_not_replay_direct_messages_acked_elsewhere() {
    let h = Harness::new();
    let mut ann = h.connect();
    ann.send(&login("a", "ann")).await;
    ann.replies();
    let mut sender = h.connect();
    sender.send(&login("b", "sam")).await;
    sender.replies();
    for i in 1..=3 {
        sender.send(&direct("ann", &format!("dm{i}"))).await;
    }
    let mut live = 0;
    while live < 3 {
        if let ServerFrame::Message(m) = ann.live().await
            && m.to_user_id.is_some()
        {
            live += 1;
        }
    }
    // The node stops keeping up: dm4 and dm5 are stored, but not yet delivered here.
    h.pump.cancel();
    for i in 4..=5 {
        sender.send(&direct("ann", &format!("dm{i}"))).await;
    }
    // Ann reads all five through another node, which acks them.
    let inbox = chat_backend::StreamKey::Inbox(chat_protocol::UserId::new("ann").expect("id"));
    let head = h.node.store.head(&inbox).await.expect("head");
    assert_eq!(head.seq, 5);
    let acked = chat_backend::Position::new(head.epoch, 5);
    let ann_id = chat_protocol::UserId::new("ann").expect("id");
    assert!(
        h.node
            .store
            .advance_cursor(&ann_id, &inbox, &acked)
            .await
            .expect("cursor")
    );

    let mut again = h.connect();
    again.send(&login("c", "ann")).await;
    let replayed: Vec<u64> = again
        .replies()
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) if m.to_user_id.is_some() => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, Vec::<u64>::new(), "everything was acked already");
}
