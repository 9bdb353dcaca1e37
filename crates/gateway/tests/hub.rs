//! The hub's ordering guarantees, driven event by event: whatever order, duplication or loss the
//! broker produces, an attached connection sees each seq once, in order.

use std::sync::Arc;

use chat_backend::memory::{self, MemoryConfig};
use chat_backend::{Backend, BrokerEvent, Draft, StreamKey};
use chat_gateway::hub::{ConnHandle, Hub, Outbound};
use chat_gateway::outbox;
use chat_protocol::{RoomId, ServerFrame, UserId};

struct Setup {
    backend: Backend,
    hub: Arc<Hub>,
    rx: outbox::Receiver,
    key: StreamKey,
    room: RoomId,
}

async fn setup() -> Setup {
    let backend = memory::open(MemoryConfig::unbounded(100));
    let hub = Hub::new(backend.store.clone(), backend.broker.clone());
    let (tx, rx) = outbox::channel(64);
    let conn = ConnHandle::new(hub.next_conn_id(), tx);
    let room = RoomId::new("r").expect("id");
    let key = StreamKey::Room(room.clone());
    let attached = hub.attach(&key, &conn).await.expect("attach");
    assert_eq!(attached.last, 0);
    hub.open_gate(&key, conn.id, 0);
    Setup {
        backend,
        hub,
        rx,
        key,
        room,
    }
}

/// Posts `n` messages and returns their broker events, in seq order, without applying them.
async fn post(s: &mut Setup, n: usize) -> Vec<BrokerEvent> {
    let draft = Draft {
        user_id: UserId::new("author").expect("id"),
        user_name: "Author".into(),
        content: "x".into(),
        client_msg_id: None,
    };
    let mut events = Vec::new();
    for _ in 0..n {
        s.backend.store.post(&s.room, &draft).await.expect("post");
        events.push(s.backend.events.recv().await.expect("event"));
    }
    events
}

fn delivered(rx: &mut outbox::Receiver) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(item) = rx.try_recv() {
        if let Outbound::Frame { text, mark, .. } = item {
            let ServerFrame::Message(m) = ServerFrame::decode(text.as_str()).expect("frame") else {
                continue;
            };
            assert_eq!(
                mark.map(|m| m.seq),
                Some(m.seq),
                "the mark names the frame's seq"
            );
            seqs.push(m.seq);
        }
    }
    seqs
}

#[tokio::test]
async fn reordered_and_duplicated_events_are_delivered_once_in_order() {
    let mut s = setup().await;
    let events = post(&mut s, 5).await;
    for i in [0, 2, 4, 2, 1, 0, 3, 4] {
        s.hub.apply(events[i].clone()).await;
    }
    assert_eq!(delivered(&mut s.rx), vec![1, 2, 3, 4, 5]);
    assert_eq!(s.hub.position(&s.key).map(|p| p.1), Some(5));
}

#[tokio::test]
async fn a_gap_is_filled_from_the_log_before_later_messages() {
    let mut s = setup().await;
    let events = post(&mut s, 4).await;
    // Seq 2 and 3 never arrive through the broker.
    s.hub.apply(events[0].clone()).await;
    s.hub.apply(events[3].clone()).await;
    assert_eq!(
        delivered(&mut s.rx),
        vec![1, 2, 3, 4],
        "2 and 3 fetched from the log, then 4"
    );
    // Their late arrival changes nothing.
    s.hub.apply(events[1].clone()).await;
    s.hub.apply(events[2].clone()).await;
    assert!(delivered(&mut s.rx).is_empty());
}

#[tokio::test]
async fn a_lost_last_message_is_found_after_a_resubscribe() {
    let mut s = setup().await;
    let events = post(&mut s, 2).await;
    s.hub.apply(events[0].clone()).await;
    // Seq 2 is lost and nothing follows it; the broker reconnects.
    assert_eq!(delivered(&mut s.rx), vec![1]);
    s.hub.apply(BrokerEvent::Resubscribed).await;
    assert_eq!(delivered(&mut s.rx), vec![2]);
}

#[tokio::test]
async fn a_gated_connection_gets_held_frames_after_its_replay_in_order() {
    let mut s = setup().await;
    let (tx, mut late_rx) = outbox::channel(64);
    let late = ConnHandle::new(s.hub.next_conn_id(), tx);
    let events = post(&mut s, 3).await;
    s.hub.apply(events[0].clone()).await;
    let attached = s.hub.attach(&s.key, &late).await.expect("attach");
    assert_eq!(
        attached.last, 1,
        "live delivery for the newcomer starts after seq 1"
    );
    s.hub.apply(events[1].clone()).await;
    s.hub.apply(events[2].clone()).await;
    assert!(
        delivered(&mut late_rx).is_empty(),
        "held behind the gate while the replay is sent"
    );
    s.hub.open_gate(&s.key, late.id, attached.last);
    assert_eq!(delivered(&mut late_rx), vec![2, 3]);
    assert_eq!(delivered(&mut s.rx), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_replay_ahead_of_a_lagging_node_is_not_delivered_again_live() {
    let mut s = setup().await;
    let (tx, mut late_rx) = outbox::channel(64);
    let late = ConnHandle::new(s.hub.next_conn_id(), tx);
    // The store has 3 messages; this node has delivered none of them yet (its pump lags).
    let events = post(&mut s, 3).await;
    let attached = s.hub.attach(&s.key, &late).await.expect("attach");
    assert_eq!(attached.last, 0);
    // The session replayed 1..=3 from the log (the head it saw at join), then opens the gate.
    s.hub.open_gate(&s.key, late.id, 3);
    for event in &events {
        s.hub.apply(event.clone()).await;
    }
    assert!(
        delivered(&mut late_rx).is_empty(),
        "1..=3 came through the replay"
    );
    let more = post(&mut s, 1).await;
    s.hub.apply(more[0].clone()).await;
    assert_eq!(delivered(&mut late_rx), vec![4]);
    assert_eq!(
        delivered(&mut s.rx),
        vec![1, 2, 3, 4],
        "others are unaffected"
    );
}
