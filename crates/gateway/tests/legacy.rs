//! The legacy dialect's broadcast path without a socket: one translation per broadcast per node,
//! shared by every legacy recipient, none for v1 recipients, and no echo to the author.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chat_gateway::hub::{ConnHandle, Outbound};
use chat_gateway::legacy::Cache;
use chat_gateway::outbox;
use chat_gateway::session::Session;
use chat_protocol::ServerFrame;
use support::{Conn, Harness};
use tungstenite::Utf8Bytes;

fn legacy_conn(h: &Harness) -> Conn {
    let (tx, rx) = outbox::channel(64);
    let conn = ConnHandle::new(h.node.hub.next_conn_id(), tx);
    Conn {
        session: Session::new(h.node.clone(), conn).speaking_legacy(),
        rx,
    }
}

/// The next hub item carrying a v1 `message` frame, with its translation slot. Items before it
/// (notices) are written as the socket driver writes them: through the session's translation.
async fn next_message(conn: &mut Conn) -> (Utf8Bytes, Option<Cache>) {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), conn.rx.recv())
            .await
            .expect("a frame in time")
            .expect("queue open");
        if let Outbound::Frame { text, legacy, .. } = item {
            if matches!(
                ServerFrame::decode(text.as_str()),
                Ok(ServerFrame::Message(_))
            ) {
                return (text, legacy);
            }
            let _ = conn.session.outbound_text(text, legacy.as_ref());
        }
    }
}

const LOGIN: &str = r#"{"userName":"NAME","roomId":1,"roomName":"make friends","event":"login"}"#;

#[tokio::test]
async fn a_broadcast_is_translated_once_for_all_legacy_recipients_and_never_echoed() {
    let h = Harness::new();
    let mut ann = legacy_conn(&h);
    let mut bob = legacy_conn(&h);
    let mut carol = h.connect();
    ann.send(&LOGIN.replace("NAME", "Ann")).await;
    bob.send(&LOGIN.replace("NAME", "Bob")).await;
    carol.send(&support::login("1", "carol")).await;
    let _ = carol.replies();
    let _ = ann.session.take_replies().count();
    let _ = bob.session.take_replies().count();

    carol
        .send(r#"{"event":"message","roomId":"1","content":"hello"}"#)
        .await;
    let (a_text, a_slot) = next_message(&mut ann).await;
    let (b_text, b_slot) = next_message(&mut bob).await;
    let (_, c_slot) = next_message(&mut carol).await;
    assert!(c_slot.is_none(), "v1 recipients get no slot");
    let (a_slot, b_slot) = (a_slot.expect("slot"), b_slot.expect("slot"));
    assert!(
        Arc::ptr_eq(&a_slot, &b_slot),
        "one slot per broadcast, shared"
    );

    let a_out = ann
        .session
        .outbound_text(a_text, Some(&a_slot))
        .expect("for Ann");
    let b_out = bob
        .session
        .outbound_text(b_text, Some(&b_slot))
        .expect("for Bob");
    assert_eq!(
        a_out.as_str().as_ptr(),
        b_out.as_str().as_ptr(),
        "Bob's copy is Ann's translation, not a second one"
    );
    let v: serde_json::Value = serde_json::from_str(a_out.as_str()).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"userName":"carol","userId":"carol","content":"hello","roomId":1,"roomName":"make friends","num":3})
    );

    // Ann's own post reaches Bob, not Ann.
    ann.send(r#"{"userName":"Ann","userId":"1732950000000","roomId":1,"roomName":"make friends","content":"hi"}"#)
        .await;
    assert_eq!(
        ann.session.take_replies().count(),
        0,
        "no `sent` for a legacy client"
    );
    let (a_text, a_slot) = next_message(&mut ann).await;
    let (b_text, b_slot) = next_message(&mut bob).await;
    assert!(ann.session.outbound_text(a_text, a_slot.as_ref()).is_none());
    let line = bob
        .session
        .outbound_text(b_text, b_slot.as_ref())
        .expect("for Bob");
    assert!(
        line.as_str().contains(r#""content":"hi""#),
        "{}",
        line.as_str()
    );
}
