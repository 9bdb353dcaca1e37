//! Bounded queues: a client that stops reading is cut off; nobody else waits for it.

use std::time::Duration;

use chat_tests::chat_protocol::{LogoutReason, close};
use chat_tests::serde_json::json;
use chat_tests::{Gateway, RawClient};

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let gw = Gateway::start(&[
        ("CHAT__LIMITS__MAX_CONTENT_BYTES", "60000"),
        // Enough that a reading client rides out a scheduling stall, far too little for the stuck
        // one: 32 frames of 60 KB against the ~24 MB posted.
        ("CHAT__LIMITS__OUTBOUND_QUEUE", "32"),
        // The stuck client is cut when its queue fills; the write timeout only has to stay longer
        // than any stall of the (reading) poster on a busy machine.
        ("CHAT__LIMITS__WRITE_TIMEOUT_SECS", "8"),
    ])
    .await;
    // Logs in, then never reads again: the kernel buffers fill, then its queue.
    let mut stuck = RawClient::connect(gw.addr()).await;
    stuck
        .send_text(
            &json!({"event":"login","roomId":"r","userId":"stuck","userName":"Stuck"}).to_string(),
        )
        .await;
    let mut poster = gw.client().await.named("poster");
    poster.set_timeout(Duration::from_secs(30));
    poster.login("r", "poster", "Poster").await;

    // ~24 MB of room traffic, more than loopback socket buffers hold.
    let content = "x".repeat(60_000);
    let posts = 400;
    for _ in 0..posts {
        poster.post_and_wait("r", &content).await;
    }
    let gone = poster.recv_logout_of("r", "stuck").await;
    assert_eq!((gone.reason, gone.num), (Some(LogoutReason::Offline), 1));
    // The poster itself got every message, in order: the stuck client held nobody up.
    let mine = poster.recv_messages_in("r", posts).await;
    chat_tests::assert_consecutive(&mine, 1);

    let frames = stuck.read_until_closed(Duration::from_secs(20)).await;
    let code = frames.iter().rev().find_map(|f| f.close_code());
    assert!(
        matches!(code, None | Some(close::SLOW_CONSUMER)),
        "closed as a slow consumer (or dropped when even the close frame could not be written): {code:?}"
    );
    assert!(gw.healthy().await);
}
