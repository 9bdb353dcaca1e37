//! Presence ownership on one node, driven without a socket: the interleavings of joins, logouts
//! and notices that used to leave a connection in a room it was logged out of (defect 3) or a
//! user vouched for after leaving.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_backend::{Broker, Channel, JoinRequest, Notice, Result};
use chat_protocol::{ErrorCode, LogoutReason, PresenceNotice, RoomId, ServerFrame, UserId};
use support::{Harness, login};
use tokio::sync::Notify;

/// A broker that, once armed, holds the next `subscribe` after it took effect, until released:
/// the subscribing node then receives traffic while its attach is still in flight.
struct HeldBroker {
    inner: Arc<dyn Broker>,
    armed: std::sync::atomic::AtomicBool,
    entered: Notify,
    release: Notify,
}

#[async_trait]
impl Broker for HeldBroker {
    async fn subscribe(&self, channel: &Channel) -> Result<()> {
        self.inner.subscribe(channel).await?;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<()> {
        self.inner.unsubscribe(channel).await
    }

    async fn publish_notice(&self, notice: &Notice) -> Result<()> {
        self.inner.publish_notice(notice).await
    }
}

fn id(s: &str) -> UserId {
    UserId::new(s).expect("id")
}

/// Defect 3: connection B of user u joins a room that is new on this node while u logs out from
/// another node. The store ordered B's join before the logout, and the logout's notice arrives
/// while B's attach is in flight. B used to be added back afterwards: it got `not_joined` on post
/// yet stayed attached, and the node kept vouching for u with no connection in the room.
#[tokio::test]
async fn a_join_overtaken_by_a_logout_leaves_nothing_behind() {
    let mut held = None;
    let h = Harness::with_broker(|inner| {
        let broker = Arc::new(HeldBroker {
            inner,
            armed: std::sync::atomic::AtomicBool::new(false),
            entered: Notify::new(),
            release: Notify::new(),
        });
        held = Some(broker.clone());
        broker
    });
    let held = held.expect("broker");
    let room = RoomId::new("r").expect("id");

    let mut marker = h.connect();
    marker.send(&login("z", "m")).await;
    marker.replies();
    let baseline = h.node.hub.attachment_count();
    held.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut b = h.connect();
    let login_b = tokio::spawn(async move {
        b.send(&login("r", "u")).await;
        b
    });
    tokio::time::timeout(Duration::from_secs(5), held.entered.notified())
        .await
        .expect("B's attach reached the subscription");

    // Meanwhile u logs out on another node: the store orders it after B's join, and its notice
    // reaches this node, already subscribed, before B's attach completes.
    let store = h.node.store.clone();
    let left = store.leave(&room, &id("u")).await.expect("leave");
    let notice = PresenceNotice {
        room_id: room.clone(),
        user_id: id("u"),
        user_name: "u".into(),
        num: left.counts.num,
        total: left.counts.total,
        reason: Some(LogoutReason::Left),
        presence_seq: Some(left.presence_seq),
    };
    h.node
        .broker
        .publish_notice(&Notice::Logout(notice))
        .await
        .expect("publish");
    // The pump applies events in order: once a message posted after the notice (in another room)
    // is delivered, the notice has been applied, and the attach may go on.
    marker
        .send(r#"{"event":"message","roomId":"z","content":"marker"}"#)
        .await;
    while !matches!(marker.live().await, ServerFrame::Message(_)) {}
    held.release.notify_one();
    let mut b = tokio::time::timeout(Duration::from_secs(5), login_b)
        .await
        .expect("login finished")
        .expect("login task");

    let replies = b.replies();
    assert!(
        replies
            .iter()
            .any(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::NotJoined)),
        "the join is void: {replies:?}"
    );
    assert!(
        !replies.iter().any(|f| matches!(f, ServerFrame::Joined(_))),
        "{replies:?}"
    );
    assert_eq!(h.node.hub.attachment_count(), baseline, "B is not attached");
    assert!(
        h.node
            .hub
            .presence_snapshot()
            .iter()
            .all(|v| v.user.as_str() != "u"),
        "the node does not vouch for u"
    );
    b.send(r#"{"event":"message","roomId":"r","content":"x"}"#)
        .await;
    assert!(matches!(
        b.replies().as_slice(),
        [ServerFrame::Error(e)] if e.code == ErrorCode::NotJoined
    ));
}

/// Two suspected defects. A `left` notice removed every local connection of the user, including
/// one that joined after the logout (the notice was merely late); and notices about one user could
/// be shown out of order (`logout` after the `login` that superseded it). Now only connections that
/// joined before the logout leave, and a notice older than one already seen for its user is not
/// shown.
#[tokio::test]
async fn a_late_logout_notice_spares_a_connection_that_joined_after_it() {
    let h = Harness::new();
    let room = RoomId::new("r").expect("id");
    let mut watcher = h.connect();
    watcher.send(&login("r", "w")).await;
    watcher.replies();

    // u logs out on another node (the store orders it first) ...
    let store = h.node.store.clone();
    store
        .join(&JoinRequest {
            room: &room,
            user: &id("u"),
            user_name: "u",
            room_name: None,
        })
        .await
        .expect("join elsewhere");
    let left = store.leave(&room, &id("u")).await.expect("leave");
    // ... then joins again here, before that logout's notice arrives.
    let mut b = h.connect();
    b.send(&login("r", "u")).await;
    assert!(matches!(b.replies().first(), Some(ServerFrame::Joined(_))));
    let notice = PresenceNotice {
        room_id: room.clone(),
        user_id: id("u"),
        user_name: "u".into(),
        num: left.counts.num,
        total: left.counts.total,
        reason: Some(LogoutReason::Left),
        presence_seq: Some(left.presence_seq),
    };
    h.node
        .broker
        .publish_notice(&Notice::Logout(notice))
        .await
        .expect("publish");

    // A message posted after it is a marker: the pump applies events in order.
    watcher
        .send(r#"{"event":"message","roomId":"r","content":"marker"}"#)
        .await;
    let mut shown = Vec::new();
    loop {
        match watcher.live().await {
            ServerFrame::Message(m) if m.content == "marker" => break,
            frame => shown.push(frame),
        }
    }
    // The watcher saw u come back; the late logout is older than that, so it is not shown.
    assert!(
        shown
            .iter()
            .any(|f| matches!(f, ServerFrame::Login(n) if n.user_id.as_str() == "u")),
        "{shown:?}"
    );
    assert!(
        !shown.iter().any(|f| matches!(f, ServerFrame::Logout(_))),
        "a stale logout was shown: {shown:?}"
    );
    // And B stays in the room.
    b.replies();
    b.send(r#"{"event":"message","roomId":"r","content":"still here","clientMsgId":"k"}"#)
        .await;
    assert!(
        matches!(b.replies().as_slice(), [ServerFrame::Sent(_)]),
        "B joined after the logout and is still a member"
    );
    assert_eq!(h.node.hub.presence_snapshot().len(), 2);
}
