//! Draining: how a node leaves the cluster on SIGTERM without losing a message or telling rooms
//! that users went offline when they only moved to another node.
//!
//! 1. [`Drain::start`] turns `/readyz` to 503 and refuses new WebSocket upgrades with 503 (nginx's
//!    `proxy_next_upstream http_503` retries them on another gateway; orchestrators stop routing).
//! 2. [`run`] closes the node's sessions with 1012, spread evenly over `server.drain_secs`, so
//!    clients do not all reconnect to the rest of the cluster in the same instant.
//! 3. A closed session finishes what it was doing first: the socket driver handles a close only
//!    between frames, so a post being stored completes and its `sent` is written before the 1012.
//! 4. While draining, a session's last connection leaving a room does not remove the user's
//!    presence at once ([`Drain::defer_offline`]): the client is expected back on another node
//!    within moments. Once every session is closed and clients had [`SETTLE`] to come back, the
//!    deferred removals run; users online elsewhere by then are not announced (the store reports
//!    `went_offline` only when no node has them), the others get their `logout` as usual.
//!
//! The rest (cursors flushed, background tasks stopped) is `lib.rs`'s `run` after the drain.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_backend::Notice;
use chat_protocol::{LogoutReason, PresenceNotice, RoomId, UserId, close};
use futures_util::StreamExt;

use crate::hub::{ConnHandle, ConnId};
use crate::node::Node;

/// How long after the last session was closed the drain waits before removing deferred presence:
/// clients reconnect after a short jittered backoff and log in again elsewhere.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Deferred presence removals in flight at once.
const REMOVAL_CONCURRENCY: usize = 16;

/// The node's drain state: whether it is draining, its live connections, and presence removals
/// deferred until the end of the drain.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    defer_presence: AtomicBool,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    /// Bounded by connections × `limits.max_rooms_per_connection`: one entry per room a closing
    /// session left.
    deferred: Mutex<Vec<(RoomId, UserId, String)>>,
}

/// Keeps a connection in the drain's list while alive.
pub struct Registration<'a> {
    drain: &'a Drain,
    id: ConnId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.drain.conns).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drain {
    /// True once the node started draining: not ready, not accepting WebSockets.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining (idempotent). `defer_presence`: other nodes share the presence (cluster
    /// mode), so users may come back through them before their removal is announced.
    pub fn start(&self, defer_presence: bool) {
        self.defer_presence.store(defer_presence, Ordering::Release);
        self.draining.store(true, Ordering::Release);
    }

    /// Lists a live connection so the drain can close it.
    pub fn register(&self, conn: &ConnHandle) -> Registration<'_> {
        lock(&self.conns).insert(conn.id, conn.clone());
        Registration {
            drain: self,
            id: conn.id,
        }
    }

    /// While draining, records that `user` left `room` through this node's last connection and
    /// returns true: the caller skips the store's presence removal, which [`run`] performs at the
    /// end. Otherwise returns false.
    pub fn defer_offline(&self, room: &RoomId, user: &UserId, user_name: &str) -> bool {
        if !self.is_draining() || !self.defer_presence.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.deferred).push((room.clone(), user.clone(), user_name.to_owned()));
        true
    }
}

/// Drains `node`: closes every session with 1012 spread over `server.drain_secs`, waits for them
/// (up to `server.shutdown_grace_secs`), lets clients settle elsewhere, then removes the presence
/// that was deferred. The caller has already called [`Drain::start`].
pub async fn run(node: &Arc<Node>) {
    let spread = Duration::from_secs(node.settings.server.drain_secs);
    let conns: Vec<ConnHandle> = lock(&node.drain.conns).values().cloned().collect();
    tracing::info!(node = %node.id, sessions = conns.len(), secs = spread.as_secs(), "draining");
    let started = tokio::time::Instant::now();
    let n = conns.len().max(1) as u32;
    for (i, conn) in conns.iter().enumerate() {
        // Evenly spaced: connection i closes at i/n of the drain period.
        tokio::time::sleep_until(started + spread * i as u32 / n).await;
        conn.kill(close::SERVICE_RESTART);
    }
    // Connections that raced the start of the drain (upgraded just before it) are closed too.
    let late: Vec<ConnHandle> = lock(&node.drain.conns).values().cloned().collect();
    for conn in late {
        conn.kill(close::SERVICE_RESTART);
    }
    node.sessions.close();
    let grace = Duration::from_secs(node.settings.server.shutdown_grace_secs);
    if tokio::time::timeout(grace, node.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = node.sessions.len(),
            "sessions still running after the shutdown grace period"
        );
    }
    let deferred = std::mem::take(&mut *lock(&node.drain.deferred));
    if deferred.is_empty() {
        return;
    }
    tokio::time::sleep(SETTLE).await;
    // A few at a time, and bounded as a whole: with Redis down each call would wait out its
    // timeout, and the node must still exit. What is left expires with its lease and is reaped
    // (and announced) by a live node.
    let total = deferred.len();
    // Owned futures: a stream of futures borrowing from its items trips Send inference.
    let removals: Vec<_> = deferred
        .into_iter()
        .map(|(room, user, user_name)| {
            let node = Arc::clone(node);
            async move { remove_presence(&node, &room, &user, &user_name).await }
        })
        .collect();
    let removals = futures_util::stream::iter(removals)
        .buffer_unordered(REMOVAL_CONCURRENCY)
        .filter(|announced| std::future::ready(*announced))
        .count();
    match tokio::time::timeout(grace, removals).await {
        Ok(announced) => tracing::info!(
            node = %node.id,
            removed = total,
            announced,
            "drain removed its presence; users online elsewhere were not announced"
        ),
        Err(_) => tracing::warn!(
            node = %node.id,
            deferred = total,
            "presence removal did not finish within the shutdown grace; leases will expire"
        ),
    }
}

/// The store removal and `logout` notice a session's end would have made; true when announced.
async fn remove_presence(node: &Node, room: &RoomId, user: &UserId, user_name: &str) -> bool {
    let removal = node.presence_barrier.read().await;
    let guard = node.presence_guard(room, user).await;
    let outcome = match node.store.go_offline(room, user).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // The entry's lease runs out and a live node reaps it, sending the notice then.
            tracing::warn!(node = %node.id, %room, %user, error = %e, "could not record going offline");
            return false;
        }
    };
    drop(guard);
    drop(removal);
    if !outcome.went_offline {
        return false;
    }
    let notice = Notice::Logout(PresenceNotice {
        room_id: room.clone(),
        user_id: user.clone(),
        user_name: user_name.to_owned(),
        num: outcome.counts.num,
        total: outcome.counts.total,
        reason: Some(LogoutReason::Offline),
        presence_seq: Some(outcome.presence_seq),
    });
    if let Err(e) = node.broker.publish_notice(&notice).await {
        tracing::warn!(node = %node.id, %room, %user, error = %e, "could not publish a logout notice");
    }
    true
}
