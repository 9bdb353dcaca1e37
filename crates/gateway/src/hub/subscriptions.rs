//! The node's subscriptions: a stream is subscribed on the broker exactly while this node has a
//! local connection attached to it. Attaching the first connection subscribes (and reads the
//! head under the hub's lock, so the new connection's replay ends where live delivery starts);
//! detaching the last one unsubscribes. One stream's transitions are serialized by a lock of its
//! own, so an unsubscribe of an emptied stream cannot overtake the subscribe of a new member.

use std::sync::Arc;

use chat_backend::{BackendError, StreamKey};

use super::conn::{ConnHandle, ConnId};
use super::stream::LocalStream;
use super::{Attached, Hub};

impl Hub {
    /// Attaches a connection to a stream behind a gate, subscribing the node first if it is the
    /// stream's first local connection. See [`Hub::open_gate`]. For a room, the connection must
    /// be joining it ([`Hub::begin_join`]).
    pub async fn attach(
        &self,
        key: &StreamKey,
        conn: &ConnHandle,
    ) -> Result<Attached, BackendError> {
        if let Some(attached) = self.attach_if_ready(key, conn) {
            return Ok(attached);
        }
        let transition = self.transition_lock(key);
        let _transition = transition.lock().await;
        if let Some(attached) = self.attach_if_ready(key, conn) {
            return Ok(attached);
        }
        {
            let mut state = self.lock();
            state
                .streams
                .entry(key.clone())
                .or_insert_with(|| LocalStream::new(key.clone()))
                .add(conn);
        }
        let subscribed = async {
            self.broker.subscribe(key).await?;
            self.store.head(key).await
        }
        .await;
        let failure = match subscribed {
            Ok(head) => {
                let mut state = self.lock();
                let stream = state
                    .streams
                    .entry(key.clone())
                    .or_insert_with(|| LocalStream::new(key.clone()));
                stream.ready = true;
                stream.epoch = Arc::from(head.epoch.as_str());
                stream.last = head.seq;
                stream.pending.retain(|_, (m, _)| m.epoch == head.epoch);
                stream.drain_pending();
                // Anything still held is ahead of a gap: let the pump fetch it.
                stream.needs_sync = !stream.pending.is_empty();
                // The connection stays out if it was removed meanwhile (a logout that the store
                // ordered after its join): membership decides, not this path.
                return Ok(Attached {
                    epoch: stream.epoch.to_string(),
                    last: stream.last,
                });
            }
            Err(e) => e,
        };
        {
            let mut state = self.lock();
            if let Some(stream) = state.streams.get_mut(key) {
                stream.conns.remove(&conn.id);
                if stream.conns.is_empty() {
                    state.streams.remove(key);
                }
            }
        }
        // Best effort: the broker forgets the channel even if Redis is unreachable.
        let _ = self.broker.unsubscribe(key).await;
        Err(failure)
    }

    fn attach_if_ready(&self, key: &StreamKey, conn: &ConnHandle) -> Option<Attached> {
        let mut state = self.lock();
        let stream = state.streams.get_mut(key).filter(|s| s.ready)?;
        stream.add(conn);
        Some(Attached {
            epoch: stream.epoch.to_string(),
            last: stream.last,
        })
    }

    /// Releases the frames held for a connection since [`Hub::attach`], in order, and delivers live
    /// from now on. The session calls it after queueing its `joined` reply and replay.
    /// `replayed_through` is the last seq the session's replay covered: held and future live
    /// frames up to it are skipped, so nothing arrives twice.
    pub fn open_gate(&self, key: &StreamKey, conn: ConnId, replayed_through: u64) {
        if let Some(stream) = self.lock().streams.get_mut(key) {
            stream.open_gate(conn, replayed_through);
        }
    }

    /// Detaches a connection from a stream (for a room, use [`Hub::leave_room`]), unsubscribing
    /// the node when no local connection is left.
    pub fn detach(self: &Arc<Self>, key: &StreamKey, conn: ConnId) {
        let now_empty = {
            let mut state = self.lock();
            let Some(stream) = state.streams.get_mut(key) else {
                return;
            };
            stream.conns.remove(&conn);
            stream.conns.is_empty()
        };
        if now_empty {
            self.schedule_unsubscribe(key.clone());
        }
    }

    /// The lock that orders one stream's subscribe and unsubscribe transitions. Per stream, so a
    /// slow subscription of one room never holds up a first join of another.
    fn transition_lock(&self, key: &StreamKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .sub_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget locks nobody holds or waits for, so the map stays as small as the transitions
        // in flight.
        locks.retain(|k, lock| k == key || Arc::strong_count(lock) > 1);
        locks.entry(key.clone()).or_default().clone()
    }

    pub(super) fn schedule_unsubscribe(self: &Arc<Self>, key: StreamKey) {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let transition = hub.transition_lock(&key);
            let _transition = transition.lock().await;
            let emptied = {
                let mut state = hub.lock();
                let empty = state.streams.get(&key).is_some_and(|s| s.conns.is_empty());
                if empty {
                    state.streams.remove(&key);
                }
                empty
            };
            if emptied && let Err(e) = hub.broker.unsubscribe(&key).await {
                tracing::warn!(stream = ?key, error = %e, "unsubscribe failed");
            }
        });
    }
}
