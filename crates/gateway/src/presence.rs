//! Cluster presence upkeep: refreshes the lease of this node's presence entries, and reaps
//! entries whose lease ran out because their node died, sending the `logout` notices that node
//! never could. With the embedded backend both are no-ops.
//!
//! Timing, with `ttl = presence.ttl_secs`: entries live `ttl/2` after a refresh, and this runs
//! every `ttl/4`. A live node therefore renews each lease twice before it runs out (one late
//! refresh is harmless), and a dead node's users are reaped at most `ttl/2 + ttl/4` after its last
//! refresh: within `ttl`, as promised.

use std::sync::Arc;
use std::time::Duration;

use chat_backend::Notice;
use chat_protocol::{LogoutReason, PresenceNotice};

use crate::node::Node;

/// Runs until the node shuts down.
pub async fn run(node: Arc<Node>) {
    let period = Duration::from_millis(node.settings.presence.ttl_secs * 1000 / 4);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => upkeep(&node).await,
        }
    }
}

async fn upkeep(node: &Node) {
    let entries = node.hub.local_presence();
    let revived = match node.store.refresh_presence(&entries).await {
        Ok(revived) => revived,
        Err(e) => {
            tracing::warn!(error = %e, "could not refresh presence");
            return;
        }
    };
    for back in revived {
        // The room saw this user go (reaped after a stall, or lost with Redis's data): tell it
        // they are here after all.
        tracing::info!(room = %back.room, user = %back.user, "presence restored by refresh");
        let notice = Notice::Login(PresenceNotice {
            room_id: back.room.clone(),
            user_id: back.user,
            user_name: back.user_name,
            num: back.counts.num,
            total: back.counts.total,
            reason: None,
        });
        if let Err(e) = node.broker.publish_notice(&notice).await {
            tracing::warn!(room = %back.room, error = %e, "could not publish a login notice");
        }
    }
    for room in node.hub.local_rooms() {
        let reaped = match node.store.reap_presence(&room).await {
            Ok(reaped) => reaped,
            Err(e) => {
                tracing::warn!(%room, error = %e, "could not reap expired presence");
                continue;
            }
        };
        for gone in reaped {
            tracing::info!(%room, user = %gone.user, "reaped a user whose node stopped refreshing presence");
            let notice = Notice::Logout(PresenceNotice {
                room_id: room.clone(),
                user_id: gone.user,
                user_name: gone.user_name,
                num: gone.counts.num,
                total: gone.counts.total,
                reason: Some(LogoutReason::Offline),
            });
            if let Err(e) = node.broker.publish_notice(&notice).await {
                tracing::warn!(%room, error = %e, "could not publish a logout notice");
            }
        }
    }
}
