//! Cluster presence upkeep: refreshes the lease of this node's presence entries, and reaps
//! entries whose lease ran out because their node died, sending the `logout` notices that node
//! never could. With the embedded backend both are no-ops.
//!
//! The refresh also reconciles: the store reports users who logged out elsewhere after the join
//! this node vouches for (their `left` notice never arrived here), and this node applies that
//! logout to its connections as if the notice had arrived.
//!
//! Timing, with `ttl = presence.ttl_secs`: entries live `ttl/2` after a refresh, and this runs
//! every `ttl/4`. A live node therefore renews each lease twice before it runs out (one late
//! refresh is harmless), and a dead node's users are reaped at most `ttl/2 + ttl/4` after its last
//! refresh: within `ttl`, as promised.

use std::sync::Arc;
use std::time::Duration;

use chat_backend::{BrokerEvent, Notice, PresenceEntry};
use chat_protocol::{LogoutReason, PresenceNotice, ServerFrame};

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

async fn upkeep(node: &Arc<Node>) {
    let refreshed = {
        // No logout or last-connection removal runs while the snapshot is taken and refreshed:
        // otherwise a snapshot from before a removal could be written after it and bring the
        // user back.
        let _exclusive = node.presence_barrier.write().await;
        let entries: Vec<PresenceEntry> = node
            .hub
            .presence_snapshot()
            .into_iter()
            .map(|v| PresenceEntry {
                room: v.room,
                user: v.user,
                user_name: v.user_name,
                epoch: v.epoch,
                joined_at: v.joined_at,
            })
            .collect();
        node.store.refresh_presence(&entries).await
    };
    let refreshed = match refreshed {
        Ok(refreshed) => refreshed,
        Err(e) => {
            tracing::warn!(error = %e, "could not refresh presence");
            return;
        }
    };
    for back in refreshed.revived {
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
            presence_seq: Some(back.presence_seq),
        });
        if let Err(e) = node.broker.publish_notice(&notice).await {
            tracing::warn!(room = %back.room, error = %e, "could not publish a login notice");
        }
    }
    for gone in refreshed.departed {
        // The user logged out elsewhere and this node missed the notice (pub/sub dropped it):
        // everyone else saw it, so only this node's connections are told, exactly as if it had
        // arrived.
        tracing::info!(room = %gone.room, user = %gone.user, "applying a logout this node missed");
        let notice = PresenceNotice {
            room_id: gone.room,
            user_id: gone.user,
            user_name: gone.user_name,
            num: gone.counts.num,
            total: gone.counts.total,
            reason: Some(LogoutReason::Left),
            presence_seq: Some(gone.presence_seq),
        };
        let frame = ServerFrame::Logout(notice.clone()).encode();
        node.hub
            .apply(BrokerEvent::Notice {
                notice: Notice::Logout(notice),
                frame,
            })
            .await;
    }
    // Every room this node serves, in a few calls: a room with nothing expired costs Redis one
    // cheap read.
    let reaped = match node.store.reap_presence_many(&node.hub.local_rooms()).await {
        Ok(reaped) => reaped,
        Err(e) => {
            tracing::warn!(error = %e, "could not reap expired presence");
            return;
        }
    };
    for (room, gone) in reaped {
        for gone in gone {
            tracing::info!(%room, user = %gone.user, "reaped a user whose node stopped refreshing presence");
            let notice = Notice::Logout(PresenceNotice {
                room_id: room.clone(),
                user_id: gone.user,
                user_name: gone.user_name,
                num: gone.counts.num,
                total: gone.counts.total,
                reason: Some(LogoutReason::Offline),
                presence_seq: Some(gone.presence_seq),
            });
            if let Err(e) = node.broker.publish_notice(&notice).await {
                tracing::warn!(%room, error = %e, "could not publish a logout notice");
            }
        }
    }
}
