//! The pump: turns broker events into frames on local connections. It applies messages and
//! presence notices as they come, fills a stream's gap from the store's log in a task of its own
//! (so other streams keep flowing), and periodically compares every stream with the store's head
//! so a lost *last* message is found without waiting for a later one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_backend::{BackendError, BrokerEvent, Head, Notice, StreamKey};
use chat_protocol::{ChatMessage, LogoutReason, ServerFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use super::conn::Outbound;
use super::{Hub, HubState};

/// Streams whose heads are read in one round trip by a sync.
const SYNC_BATCH: usize = 512;
/// Most messages fetched from the log by one sync (logs are bounded far below this anyway).
const SYNC_FETCH_MAX: usize = 100_000;

impl Hub {
    /// Runs until `shutdown`: applies broker events, fills gaps, and compares every stream with
    /// its head every `sync_interval` so a lost *last* message is found without waiting for a
    /// later one. That comparison runs in a task of its own and reads heads in batches, so
    /// delivery never waits for it; only a stream found behind is fetched.
    pub async fn run_pump(
        self: Arc<Self>,
        mut events: mpsc::Receiver<BrokerEvent>,
        sync_interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut full_sync = tokio::time::interval(sync_interval);
        full_sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event {
                    Some(event) => {
                        metrics::gauge!(crate::metrics::BROKER_QUEUE_DEPTH).set(events.len() as f64);
                        self.apply_without_waiting(event).await
                    }
                    None => return,
                },
                _ = retry.tick() => self.sync_streams(false).await,
                _ = full_sync.tick() => {
                    // Off the pump: delivery goes on while every stream's head is compared.
                    if !self.full_sync_running.swap(true, Ordering::AcqRel) {
                        let hub = Arc::clone(&self);
                        tokio::spawn(async move {
                            hub.sync_streams(true).await;
                            hub.full_sync_running.store(false, Ordering::Release);
                        });
                    }
                }
            }
        }
    }

    /// Applies one broker event.
    /// [`Hub::apply`] for the pump: a gap is filled in a task of its own (one per stream at a
    /// time), so the pump goes on delivering every other stream while one stream's missing
    /// messages are fetched. The stream's later messages wait in its pending buffer meanwhile.
    async fn apply_without_waiting(self: &Arc<Self>, event: BrokerEvent) {
        let BrokerEvent::Message {
            stream,
            message,
            frame,
        } = event
        else {
            return self.apply(event).await;
        };
        if !self.on_message(&stream, message, frame) {
            return;
        }
        if !self.lock().filling.insert(stream.clone()) {
            return; // a fill of this stream is running; it delivers what is pending after it
        }
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            // A failure leaves the stream marked; the retry tick tries again.
            let _ = hub.sync_stream(&stream).await;
            hub.lock().filling.remove(&stream);
        });
    }

    /// Applies one broker event, filling a gap before it returns.
    pub async fn apply(self: &Arc<Self>, event: BrokerEvent) {
        match event {
            BrokerEvent::Message {
                stream,
                message,
                frame,
            } => {
                if self.on_message(&stream, message, frame) {
                    // A failure leaves the stream marked; the retry tick tries again.
                    let _ = self.sync_stream(&stream).await;
                }
            }
            BrokerEvent::Notice { notice, frame } => {
                if self.on_notice(&notice, frame) {
                    self.schedule_unsubscribe(StreamKey::Room(notice.room_id().clone()));
                }
            }
            BrokerEvent::Resubscribed => {
                tracing::info!("broker resubscribed: checking every stream for lost messages");
                {
                    let mut state = self.lock();
                    for stream in state.streams.values_mut() {
                        stream.needs_sync = true;
                    }
                }
                self.sync_streams(false).await;
            }
        }
    }

    /// Returns true when the stream now has a gap to fill.
    fn on_message(&self, key: &StreamKey, message: ChatMessage, frame: String) -> bool {
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(key) else {
            return false;
        };
        stream.on_message(message, Utf8Bytes::from(frame))
    }

    /// Delivers a presence notice, unless it is older than one already seen for its user. A
    /// `left` notice then removes the user's local connections that joined before it. Returns
    /// true when that emptied the stream (its last local members left the room).
    fn on_notice(&self, notice: &Notice, frame: String) -> bool {
        let (Notice::Login(n) | Notice::Logout(n)) = notice;
        let key = StreamKey::Room(n.room_id.clone());
        let mut state = self.lock();
        let HubState {
            streams,
            membership,
            ..
        } = &mut *state;
        if let Some(at) = n.presence_seq
            && !membership.observe_notice(&n.room_id, &n.user_id, at)
        {
            tracing::debug!(room = %n.room_id, user = %n.user_id, at, "dropped a stale presence notice");
            return false;
        }
        let Some(stream) = streams.get_mut(&key) else {
            return false;
        };
        stream.broadcast(&Utf8Bytes::from(frame), None);
        if let Notice::Logout(n) = notice
            && n.reason == Some(LogoutReason::Left)
        {
            // Leaving is for all of the user's connections that joined before it, on every
            // node. A notice without a presence seq (an older node) covers all of them.
            let left_at = n.presence_seq.unwrap_or(u64::MAX);
            for id in membership.on_left(&n.room_id, &n.user_id, left_at) {
                if let Some(conn) = stream.conns.remove(&id) {
                    conn.handle.offer(Outbound::Left(n.room_id.clone()));
                }
            }
            return stream.conns.is_empty();
        }
        false
    }

    /// Syncs streams that need it (or all, when `all`). Their heads are read in batches, one
    /// round trip each ([`Store::heads`]); only a stream that is behind (or whose log changed
    /// epoch) is then fetched on its own.
    async fn sync_streams(&self, all: bool) {
        let positions: Vec<(StreamKey, Arc<str>, u64)> = {
            let state = self.lock();
            state
                .streams
                .iter()
                .filter(|(_, s)| s.ready && (all || s.needs_sync))
                .map(|(k, s)| (k.clone(), s.epoch.clone(), s.last))
                .collect()
        };
        for (done, chunk) in positions.chunks(SYNC_BATCH).enumerate() {
            let keys: Vec<StreamKey> = chunk.iter().map(|(k, _, _)| k.clone()).collect();
            let heads = match self.store.heads(&keys).await {
                Ok(heads) => heads,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read stream heads; retrying");
                    self.mark_for_sync(positions[done * SYNC_BATCH..].iter().map(|(k, _, _)| k));
                    return;
                }
            };
            for (i, ((key, epoch, last), head)) in chunk.iter().zip(heads).enumerate() {
                let behind = head
                    .as_ref()
                    .is_none_or(|h| *h.epoch != **epoch || h.seq > *last);
                if !behind {
                    if let Some(stream) = self.lock().streams.get_mut(key) {
                        stream.needs_sync = !stream.pending.is_empty();
                    }
                    continue;
                }
                if let Err(BackendError::Unavailable(_)) = self.sync_stream(key).await {
                    // The backend is down: every other stream would wait out its own timeout
                    // too, holding up the caller long after the backend is back. Next round.
                    let rest = positions[done * SYNC_BATCH + i + 1..].iter();
                    self.mark_for_sync(rest.map(|(k, _, _)| k));
                    return;
                }
            }
        }
    }

    fn mark_for_sync<'a>(&self, keys: impl Iterator<Item = &'a StreamKey>) {
        let mut state = self.lock();
        for key in keys {
            if let Some(stream) = state.streams.get_mut(key) {
                stream.needs_sync = true;
            }
        }
    }

    /// Brings a stream up to the store's head: fetches and delivers whatever this node missed.
    /// On failure the stream stays marked for the next round.
    async fn sync_stream(&self, key: &StreamKey) -> Result<(), BackendError> {
        let result = self.try_sync_stream(key).await;
        if let Err(e) = &result {
            tracing::warn!(stream = ?key, error = %e, "stream sync failed; retrying");
            if let Some(stream) = self.lock().streams.get_mut(key) {
                stream.needs_sync = true;
            }
        }
        result
    }

    async fn try_sync_stream(&self, key: &StreamKey) -> Result<(), BackendError> {
        let Some((epoch, last)) = self.position(key) else {
            return Ok(());
        };
        let head: Head = self.store.head(key).await?;
        let after = if head.epoch == epoch { last } else { 0 };
        let missed = if head.seq > after {
            self.store
                .range(key, after, head.seq, SYNC_FETCH_MAX, 0)
                .await?
        } else {
            Vec::new()
        };
        let mut state = self.lock();
        let Some(stream) = state.streams.get_mut(key) else {
            return Ok(());
        };
        if *stream.epoch != *head.epoch {
            stream.reset_epoch(&head.epoch);
        }
        let mut recovered = 0usize;
        for message in missed {
            if *message.epoch == *stream.epoch && message.seq > stream.last {
                let seq = message.seq;
                let text = Utf8Bytes::from(ServerFrame::Message(message).encode());
                stream.deliver(seq, &text);
                recovered += 1;
            }
        }
        if head.seq > stream.last {
            // The log no longer holds these (trimmed by retention): nothing left to deliver.
            stream.last = head.seq;
        }
        stream.drain_pending();
        stream.needs_sync = !stream.pending.is_empty();
        if recovered > 0 {
            metrics::counter!(crate::metrics::GAP_FILLS).increment(1);
            metrics::histogram!(crate::metrics::GAP_FILL_MESSAGES).record(recovered as f64);
            tracing::info!(stream = ?key, recovered, "filled a gap from the log");
        }
        Ok(())
    }
}
