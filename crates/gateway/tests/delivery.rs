//! Resend on missing acks and honest gaps, driven through a session without a socket. Time is the
//! subject of the resend tests, so they run on tokio's paused clock.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_gateway::config::Settings;
use chat_protocol::{ChatMessage, ServerFrame};
use support::{Conn, Harness, login};

async fn post(conn: &mut Conn, n: usize) {
    for i in 0..n {
        conn.send(&format!(
            r#"{{"event":"message","roomId":"r","content":"m{i}","clientMsgId":"c{i}"}}"#
        ))
        .await;
        assert!(matches!(conn.replies().as_slice(), [ServerFrame::Sent(_)]));
    }
}

/// Live frames until `n` messages arrived (presence notices skipped).
async fn messages(conn: &mut Conn, n: usize) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    while out.len() < n {
        if let ServerFrame::Message(m) = conn.live().await {
            out.push(m);
        }
    }
    out
}

fn resent(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) if m.resend => m.seq,
            other => panic!("not a resend: {other:?}"),
        })
        .collect()
}

async fn pair(h: &Harness) -> (Conn, Conn) {
    let mut ann = h.connect();
    ann.send(&login("r", "ann")).await;
    ann.replies();
    let mut bob = h.connect();
    bob.send(&login("r", "bob")).await;
    bob.replies();
    (ann, bob)
}

#[tokio::test(start_paused = true)]
async fn an_acking_connection_gets_its_unacked_tail_again_then_is_given_up() {
    let h = Harness::new();
    let (mut ann, mut bob) = pair(&h).await;
    post(&mut bob, 3).await;
    assert_eq!(
        messages(&mut ann, 3)
            .await
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    ann.send(r#"{"event":"ack","roomId":"r","seq":1}"#).await;
    assert!(ann.replies().is_empty());
    let deadline = ann.session.next_resend().expect("a deadline once acking");

    // Nothing before the timeout (10 s by default)...
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(ann.session.on_resend_due().is_ok());
    assert!(ann.replies().is_empty());
    // ...then the unacknowledged tail, in order, marked as a resend.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(tokio::time::Instant::now().into_std() >= deadline);
    assert!(ann.session.on_resend_due().is_ok());
    assert_eq!(resent(&ann.replies()), [2, 3]);

    // Progress resets the rounds; what it covers is never resent.
    ann.send(r#"{"event":"ack","roomId":"r","seq":2}"#).await;
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(ann.session.on_resend_due().is_ok());
        assert_eq!(resent(&ann.replies()), [3]);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let gave_up = ann.session.on_resend_due().expect_err("gives up");
    assert_eq!(gave_up.seq, 3);
    assert_eq!(ann.session.resent(), 5);
    assert_eq!(h.node.delivery.resent_frames.load(Ordering::Relaxed), 5);
    assert_eq!(h.node.delivery.given_up.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_acks_is_never_resent_to() {
    let h = Harness::new();
    let (mut ann, mut bob) = pair(&h).await;
    post(&mut bob, 3).await;
    messages(&mut ann, 3).await;
    assert_eq!(ann.session.next_resend(), None);
    tokio::time::advance(Duration::from_secs(600)).await;
    assert!(ann.session.on_resend_due().is_ok());
    assert!(ann.replies().is_empty());
}

#[tokio::test(start_paused = true)]
async fn acking_everything_in_time_means_no_resend() {
    let h = Harness::new();
    let (mut ann, mut bob) = pair(&h).await;
    post(&mut bob, 4).await;
    messages(&mut ann, 4).await;
    ann.send(r#"{"event":"ack","roomId":"r","seq":4}"#).await;
    assert_eq!(ann.session.next_resend(), None);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(ann.session.on_resend_due().is_ok());
    assert!(ann.replies().is_empty());
}

fn joined(frames: &[ServerFrame]) -> (chat_protocol::server::Joined, Vec<u64>) {
    let ServerFrame::Joined(j) = &frames[0] else {
        panic!("{frames:?}")
    };
    let seqs = frames[1..]
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    (j.clone(), seqs)
}

#[tokio::test]
async fn login_reports_an_honest_gap_and_clamps_a_since_from_the_future() {
    let mut settings = Settings::defaults().expect("defaults");
    settings.history.per_room = 5;
    let h = Harness::with_settings(settings);
    let mut bob = h.connect();
    bob.send(&login("r", "bob")).await;
    // A brand-new member: nothing to recover.
    let (j, _) = joined(&bob.replies());
    assert!(j.recovered && j.oldest_seq.is_none());
    post(&mut bob, 10).await;

    let login_since = |since: u64, epoch: Option<&str>| {
        let epoch = epoch.map_or(String::new(), |e| format!(r#","epoch":"{e}""#));
        format!(
            r#"{{"event":"login","roomId":"r","userId":"ann","userName":"ann","since":{since}{epoch}}}"#
        )
    };
    // Seqs 3..5 are gone: the replay starts at the oldest kept one, and says so.
    let mut ann = h.connect();
    ann.send(&login_since(2, None)).await;
    let (j, seqs) = joined(&ann.replies());
    assert_eq!(seqs, [6, 7, 8, 9, 10]);
    assert!(!j.recovered);
    assert_eq!(j.oldest_seq, Some(6));
    let epoch = j.epoch.clone();
    ann.session.finish().await;

    // Still held: recovered.
    let mut ann = h.connect();
    ann.send(&login_since(7, Some(&epoch))).await;
    let (j, seqs) = joined(&ann.replies());
    assert_eq!(seqs, [8, 9, 10]);
    assert!(j.recovered && j.oldest_seq.is_none());
    ann.session.finish().await;

    // Ahead of the head in the current epoch: clamped to the head, nothing replayed.
    let mut ann = h.connect();
    ann.send(&login_since(99, Some(&epoch))).await;
    let (j, seqs) = joined(&ann.replies());
    assert_eq!((j.seq, seqs.len()), (10, 0));
    assert!(j.recovered);
    // An ack cannot move the cursor past what exists either.
    ann.send(r#"{"event":"ack","roomId":"r","seq":99}"#).await;
    ann.session.finish().await;
    let cursor = h
        .node
        .store
        .cursor(
            &chat_protocol::UserId::new("ann").expect("id"),
            &chat_backend::StreamKey::Room(chat_protocol::RoomId::new("r").expect("id")),
        )
        .await
        .expect("cursor");
    assert!(cursor.as_ref().is_none_or(|c| c.seq <= 10), "{cursor:?}");

    // Ahead of the head without an epoch: from a log since reset, replayed from its start — and
    // the part history no longer holds is reported.
    let mut ann = h.connect();
    ann.send(&login_since(99, None)).await;
    let (j, seqs) = joined(&ann.replies());
    assert_eq!(seqs, [6, 7, 8, 9, 10]);
    assert!(!j.recovered);
    assert_eq!(j.oldest_seq, Some(6));
}
