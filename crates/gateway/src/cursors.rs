//! Batched read-cursor writes: acks never wait on the store in the socket path.
//!
//! A session records an acknowledged position here (no I/O, no await); the node writes everything
//! recorded since the last flush in one [`Store::advance_cursors`] call every
//! `cluster.cursor_flush_ms`, and once more at shutdown. Between flushes, many acks of one
//! (user, stream) collapse into the last one, so the store's work follows users and streams, not
//! acks. A position is never past what the connection was given (the session clamps acks), and
//! the store only moves cursors forward within an epoch, so a late or repeated write is harmless.
//!
//! What a node crash costs: the positions recorded since the last flush, i.e. at most
//! `cluster.cursor_flush_ms` of cursor progress. Those messages are replayed again on the next
//! login (duplicates, which clients drop by `(epoch, seq)`), never lost. A connection's final
//! position at disconnect is written directly by its session, so a user who reconnects elsewhere
//! right away is not replayed what they acked.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chat_backend::{CursorUpdate, Position, Store, StreamKey};
use chat_protocol::UserId;

/// See the module docs.
#[derive(Debug, Default)]
pub struct CursorBatch {
    pending: Mutex<HashMap<(UserId, StreamKey), Position>>,
}

impl CursorBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(UserId, StreamKey), Position>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `user` has everything on `stream` up to `to`. A later position of the same
    /// epoch replaces an earlier one; a position of another epoch replaces it too (the log was
    /// reset, and the store ignores whichever of the two is stale).
    pub fn record(&self, user: &UserId, stream: &StreamKey, to: Position) {
        let mut pending = self.lock();
        match pending.get_mut(&(user.clone(), stream.clone())) {
            Some(current) if current.epoch == to.epoch && current.seq >= to.seq => {}
            Some(current) => *current = to,
            None => {
                pending.insert((user.clone(), stream.clone()), to);
            }
        }
    }

    /// Positions recorded and not yet written.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Writes everything recorded so far in one store call. On failure the positions are kept
    /// (unless newer ones were recorded meanwhile) for the next flush.
    pub async fn flush(&self, store: &dyn Store) {
        let batch: Vec<CursorUpdate> = self
            .lock()
            .drain()
            .map(|((user, stream), to)| CursorUpdate { user, stream, to })
            .collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.advance_cursors(&batch).await {
            tracing::warn!(error = %e, entries = batch.len(), "could not write read cursors; retrying");
            let mut pending = self.lock();
            for update in batch {
                pending
                    .entry((update.user, update.stream))
                    .or_insert(update.to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::RoomId;

    fn room(id: &str) -> StreamKey {
        StreamKey::Room(RoomId::new(id).expect("id"))
    }

    #[test]
    fn acks_of_one_stream_collapse_into_the_furthest() {
        let batch = CursorBatch::new();
        let ann = UserId::new("ann").expect("id");
        batch.record(&ann, &room("r"), Position::new("e", 3));
        batch.record(&ann, &room("r"), Position::new("e", 7));
        batch.record(&ann, &room("r"), Position::new("e", 5));
        batch.record(&ann, &room("s"), Position::new("e", 1));
        assert_eq!(batch.len(), 2);
        let pending = batch.lock();
        assert_eq!(
            pending.get(&(ann.clone(), room("r"))),
            Some(&Position::new("e", 7))
        );
    }

    #[test]
    fn a_new_epoch_replaces_the_old_position() {
        let batch = CursorBatch::new();
        let ann = UserId::new("ann").expect("id");
        batch.record(&ann, &room("r"), Position::new("old", 50));
        batch.record(&ann, &room("r"), Position::new("new", 2));
        assert_eq!(
            batch.lock().get(&(ann, room("r"))),
            Some(&Position::new("new", 2))
        );
    }
}
