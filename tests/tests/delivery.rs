//! Resend on missing acks through a real gateway process and real sockets: the socket driver's
//! ack deadline, `"resend": true` frames, and the 4002 close that sends a silent client elsewhere.

use std::time::Duration;

use chat_tests::chat_protocol::{ServerFrame, close};
use chat_tests::serde_json::json;
use chat_tests::{Gateway, seqs};

#[tokio::test]
async fn a_client_that_stops_acking_is_resent_to_then_closed_with_4002_and_resumes() {
    let gw = Gateway::start(&[
        ("CHAT__DELIVERY__ACK_TIMEOUT_SECS", "1"),
        ("CHAT__DELIVERY__MAX_RETRIES", "2"),
    ])
    .await;
    let mut bob = gw.client().await.named("bob");
    bob.login("r", "bob", "Bob").await;
    let mut ann = gw.client().await.named("ann");
    let joined = ann.login("r", "ann", "Ann").await;
    // Carl never acks: an old tutorial client, never resent to.
    let mut carl = gw.client().await.named("carl");
    carl.login("r", "carl", "Carl").await;

    for i in 1..=3 {
        bob.post_and_wait("r", &format!("m{i}")).await;
    }
    assert_eq!(seqs(&ann.recv_messages_in("r", 3).await), [1, 2, 3]);
    assert_eq!(seqs(&carl.recv_messages_in("r", 3).await), [1, 2, 3]);
    // Ann acks the first message, then goes silent (still reading, so not a heartbeat case).
    ann.send_json(json!({"event": "ack", "roomId": "r", "seq": 1, "epoch": joined.epoch}))
        .await;

    // Two rounds of the unacknowledged tail, in order, then 4002 — well before the heartbeat
    // timeout (60 s).
    let code = ann.expect_close_within(Duration::from_secs(30)).await;
    assert_eq!(code, Some(close::ACK_TIMEOUT));
    let resent: Vec<u64> = ann
        .take_pending()
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => {
                assert!(m.resend, "only resends after the ack: {m:?}");
                Some(m.seq)
            }
            _ => None,
        })
        .collect();
    assert_eq!(resent, [2, 3, 2, 3]);
    // Both are visible to operations.
    let metrics = gw.get("/metrics").await.text();
    for needle in [
        "chat_resends_total 4",
        r#"chat_connections_closed_total{code="4002"} 1"#,
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }

    // Carl, who never acked, got nothing again and is still connected.
    carl.stay_open_for(Duration::from_secs(2)).await;
    assert!(
        !carl
            .take_pending()
            .iter()
            .any(|f| matches!(f, ServerFrame::Message(_))),
        "a non-acking connection is never resent to"
    );

    // Ann reconnects and resumes from what she had: everything after it, nothing lost.
    let mut ann = gw.client().await.named("ann again");
    let (joined_again, replayed) = ann
        .login_replay(json!({
            "event": "login", "roomId": "r", "userId": "ann", "userName": "Ann",
            "since": 1, "epoch": joined.epoch
        }))
        .await;
    assert!(joined_again.recovered);
    assert_eq!(seqs(&replayed), [2, 3]);
}
