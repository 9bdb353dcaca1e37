//! The per-user post bucket (`limits.user_posts_per_second` / `user_posts_burst`): a user who
//! opens many connections to one node cannot multiply the per-connection rate limit.

use chat_tests::chat_protocol::{ErrorCode, ServerFrame};
use chat_tests::{Client, Gateway};

/// Three connections of one user, each far under its own bucket, together exceed the user's:
/// each gets `rate_limited` (with a retry-after), nothing refused is stored, and another user in
/// the room keeps chatting.
#[tokio::test]
async fn a_user_with_many_connections_shares_one_post_bucket() {
    let gw = Gateway::start(&[
        // Each connection may burst 20: the 10 posts each sends below never touch it.
        ("CHAT__LIMITS__POSTS_PER_SECOND", "20"),
        ("CHAT__LIMITS__POSTS_BURST", "20"),
        // The user together: 3 at once, then 1 a second. 30 posts would take 27 s to be allowed,
        // far longer than sending them takes, however slow the machine.
        ("CHAT__LIMITS__USER_POSTS_PER_SECOND", "1"),
        ("CHAT__LIMITS__USER_POSTS_BURST", "3"),
    ])
    .await;
    let mut bob = gw.client().await.named("bob");
    bob.login("shared", "bob", "Bob").await;
    let mut ann = Vec::new();
    for i in 0..3 {
        let mut c = gw.client().await.named(format!("ann{i}"));
        c.login("shared", "ann", "Ann").await;
        ann.push(c);
    }
    for round in 0..10 {
        for (i, c) in ann.iter_mut().enumerate() {
            c.post_with_id(
                "shared",
                &format!("ann {i}.{round}"),
                &format!("a{i}-{round}"),
            )
            .await;
        }
    }
    // Every connection gets an answer to each of its 10 posts: a `sent` or a `rate_limited`.
    let mut accepted = 0;
    let mut refused = 0;
    for c in &mut ann {
        let mut answered = 0;
        while answered < 10 {
            match c.recv_frame().await {
                ServerFrame::Sent(_) => accepted += 1,
                ServerFrame::Error(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
                    assert!(e.message.contains("retryAfterMs="), "{}", e.message);
                    refused += 1;
                }
                _ => continue,
            }
            answered += 1;
        }
    }
    assert!(refused > 0, "no post refused: {accepted} accepted");
    assert!(
        accepted >= 3,
        "the user's burst was not granted: {accepted}"
    );
    assert!(accepted < 30, "the per-user bucket refused nothing");

    // Bob, another user in the room, is not affected, and ann's connections hear him.
    let sent = bob.post_and_wait("shared", "bob still here").await;
    for c in &mut ann {
        let m = c
            .recv_match("bob's message", |f| match f {
                ServerFrame::Message(m) if m.seq == sent.seq => Some(m.clone()),
                _ => None,
            })
            .await;
        assert_eq!(m.content, "bob still here");
    }
    // Only the accepted posts were stored: bob's message comes right after them.
    assert_eq!(sent.seq, accepted as u64 + 1, "refused posts were stored");
}

/// A user with a single connection never meets the per-user bucket at its defaults: it is larger
/// than the per-connection one (so the load generator, one user per connection, is unaffected).
#[tokio::test]
async fn the_default_user_bucket_is_above_one_connections() {
    let gw = Gateway::start(&[]).await;
    let mut c: Client = gw.client().await.named("solo");
    c.login("solo", "solo", "Solo").await;
    // The per-connection burst (500 by default) passes whole.
    for i in 0..500 {
        c.post_with_id("solo", &format!("m{i}"), &format!("m{i}"))
            .await;
    }
    let mut sent = 0;
    while sent < 500 {
        match c.recv_frame().await {
            ServerFrame::Sent(_) => sent += 1,
            ServerFrame::Error(e) => panic!("refused within the connection's burst: {e:?}"),
            _ => {}
        }
    }
}
