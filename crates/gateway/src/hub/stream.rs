//! One stream's delivery state on this node, and the rules that keep it ordered: seqs go out
//! strictly in order, each once, within an epoch; a message ahead of a gap is held until the gap
//! is filled; a newly attached connection is held behind a *gate* until its replay was queued.
//!
//! Pure: no I/O, no locks, no async. The hub calls it under its lock; the tests below drive it
//! directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chat_backend::StreamKey;
use chat_protocol::{ChatMessage, close};
use tungstenite::Utf8Bytes;

use super::conn::{ConnHandle, ConnId, Mark, Outbound};

/// Largest number of frames held for one connection while its replay is being sent.
const GATE_CAPACITY: usize = 4096;
/// Largest number of out-of-order messages held per stream while a gap is being filled.
const PENDING_CAPACITY: usize = 50_000;

pub(super) struct LocalStream {
    pub(super) key: Arc<StreamKey>,
    /// False until the subscription is confirmed and the head read.
    pub(super) ready: bool,
    pub(super) epoch: Arc<str>,
    /// Last seq delivered to this node's connections.
    pub(super) last: u64,
    pub(super) conns: HashMap<ConnId, AttachedConn>,
    /// Messages that arrived ahead of a gap, by seq.
    pub(super) pending: BTreeMap<u64, (ChatMessage, Utf8Bytes)>,
    /// The stream must be compared with the store's head (gap seen, resubscribed, or fetch failed).
    pub(super) needs_sync: bool,
}

pub(super) struct AttachedConn {
    pub(super) handle: ConnHandle,
    /// `Some` while the session sends its replay: live frames wait here.
    /// Boxed: it exists only while the session replays, and inline it would make every attached
    /// connection's entry (one per stream it is in) 16 bytes larger for its whole life.
    #[allow(clippy::box_collection)] // the box is the point: 8 bytes while absent, not 24
    pub(super) gate: Option<Box<Vec<Outbound>>>,
    /// Messages up to this seq reached the connection through its replay: skip them live (the
    /// replay can run ahead of this node's delivery when the node lags the store).
    pub(super) replayed_through: u64,
}

impl LocalStream {
    pub(super) fn new(key: StreamKey) -> Self {
        LocalStream {
            key: Arc::new(key),
            ready: false,
            epoch: Arc::from(""),
            last: 0,
            conns: HashMap::new(),
            pending: BTreeMap::new(),
            needs_sync: false,
        }
    }

    pub(super) fn add(&mut self, handle: &ConnHandle) {
        self.conns.entry(handle.id).or_insert_with(|| AttachedConn {
            handle: handle.clone(),
            gate: Some(Box::default()),
            replayed_through: 0,
        });
    }

    /// Hands one frame to every attached connection.
    pub(super) fn broadcast(&mut self, text: &Utf8Bytes, mark: Option<Mark>) {
        // Created for the first legacy recipient only, so v1-only streams pay nothing.
        let mut legacy: Option<crate::legacy::Cache> = None;
        // Likewise for the first v1 recipient that compresses: one compression per broadcast.
        let mut deflated: Option<crate::deflate::Shared> = None;
        for conn in self.conns.values_mut() {
            if mark
                .as_ref()
                .is_some_and(|m| m.seq <= conn.replayed_through)
            {
                continue;
            }
            let item = Outbound::Frame {
                text: text.clone(),
                mark: mark.clone(),
                legacy: conn
                    .handle
                    .legacy
                    .then(|| legacy.get_or_insert_with(Default::default).clone()),
                // A legacy connection's text is its own translation: compressed by its driver.
                deflated: (conn.handle.deflate && !conn.handle.legacy)
                    .then(|| deflated.get_or_insert_with(Default::default).clone()),
            };
            match &mut conn.gate {
                Some(held) if held.len() < GATE_CAPACITY => held.push(item),
                Some(_) => conn.handle.kill(close::SLOW_CONSUMER),
                None => conn.handle.offer(item),
            }
        }
    }

    pub(super) fn deliver(&mut self, seq: u64, text: &Utf8Bytes) {
        let mark = Mark {
            stream: self.key.clone(),
            epoch: self.epoch.clone(),
            seq,
        };
        self.broadcast(text, Some(mark));
        self.last = seq;
    }

    /// Delivers held messages that now follow `last` without a gap; drops ones already covered.
    pub(super) fn drain_pending(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= self.last {
                entry.remove();
            } else if seq == self.last + 1 {
                let (_, text) = entry.remove();
                self.deliver(seq, &text);
            } else {
                break;
            }
        }
    }

    /// Adopts a new epoch: the log was recreated, seqs start over.
    pub(super) fn reset_epoch(&mut self, epoch: &str) {
        metrics::counter!(crate::metrics::EPOCH_CHANGES).increment(1);
        tracing::warn!(stream = ?self.key, old = %self.epoch, new = %epoch, "stream epoch changed: its log was reset");
        self.epoch = Arc::from(epoch);
        self.last = 0;
        self.pending.retain(|_, (m, _)| m.epoch == epoch);
        for conn in self.conns.values_mut() {
            conn.replayed_through = 0;
        }
    }

    /// Releases the frames held for `conn` since it attached, in order, skipping those its
    /// replay covered (up to `replayed_through`), and delivers live from now on.
    pub(super) fn open_gate(&mut self, conn: ConnId, replayed_through: u64) {
        let Some(attached) = self.conns.get_mut(&conn) else {
            return;
        };
        attached.replayed_through = replayed_through;
        if let Some(held) = attached.gate.take() {
            for item in *held {
                let replayed = matches!(&item, Outbound::Frame { mark: Some(m), .. } if m.seq <= replayed_through);
                if !replayed {
                    attached.handle.offer(item);
                }
            }
        }
    }

    /// Takes one message from the broker: delivers it (and whatever it unblocks) in order, holds
    /// it when it is ahead of a gap. Returns true when the stream now has a gap to fill.
    pub(super) fn on_message(&mut self, message: ChatMessage, text: Utf8Bytes) -> bool {
        if !self.ready {
            self.pending.insert(message.seq, (message, text));
            return false;
        }
        if *message.epoch != *self.epoch {
            self.reset_epoch(&message.epoch);
        }
        if message.seq <= self.last {
            return false;
        }
        if self.pending.len() >= PENDING_CAPACITY {
            // Far behind: drop what is held and let the sync fetch everything from the log.
            self.pending.clear();
            self.needs_sync = true;
            return true;
        }
        self.pending.insert(message.seq, (message, text));
        self.drain_pending();
        if !self.pending.is_empty() {
            tracing::debug!(stream = ?self.key, last = self.last, "gap in stream: fetching from the log");
            self.needs_sync = true;
        }
        self.needs_sync
    }
}

#[cfg(test)]
mod tests {
    //! The ordering and gate rules, driven message by message without a runtime.

    use chat_protocol::{RoomId, UserId};

    use super::*;
    use crate::outbox;

    fn room() -> StreamKey {
        StreamKey::Room(RoomId::new("r").expect("id"))
    }

    fn message(epoch: &str, seq: u64) -> (ChatMessage, Utf8Bytes) {
        let message = ChatMessage {
            room_id: Some(RoomId::new("r").expect("id")),
            to_user_id: None,
            seq,
            epoch: epoch.into(),
            user_id: UserId::new("u").expect("id"),
            user_name: "U".into(),
            content: format!("m{seq}"),
            ts: 0,
            client_msg_id: None,
            replay: false,
            resend: false,
        };
        (message, Utf8Bytes::from(format!("frame {seq}")))
    }

    /// A ready stream at `epoch`/`last` with one attached connection whose gate is open.
    fn ready(epoch: &str, last: u64) -> (LocalStream, ConnHandle, outbox::Receiver) {
        let mut stream = LocalStream::new(room());
        stream.ready = true;
        stream.epoch = Arc::from(epoch);
        stream.last = last;
        let (tx, rx) = outbox::channel(64);
        let conn = ConnHandle::new(1, tx);
        stream.add(&conn);
        stream.open_gate(conn.id, 0);
        (stream, conn, rx)
    }

    fn seqs(rx: &mut outbox::Receiver) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Outbound::Frame { mark: Some(m), .. } = item {
                seqs.push(m.seq);
            }
        }
        seqs
    }

    fn offer(stream: &mut LocalStream, epoch: &str, seq: u64) -> bool {
        let (m, text) = message(epoch, seq);
        stream.on_message(m, text)
    }

    #[test]
    fn delivers_in_order_once() {
        let (mut stream, _conn, mut rx) = ready("e", 0);
        for seq in [1, 2, 2, 1, 3] {
            assert!(!offer(&mut stream, "e", seq));
        }
        assert_eq!(seqs(&mut rx), vec![1, 2, 3]);
        assert_eq!(stream.last, 3);
    }

    #[test]
    fn holds_a_message_ahead_of_a_gap_until_the_gap_is_filled() {
        let (mut stream, _conn, mut rx) = ready("e", 0);
        assert!(!offer(&mut stream, "e", 1));
        // 2 is missing: 3 and 4 wait, and the stream asks for a sync.
        assert!(offer(&mut stream, "e", 3));
        assert!(offer(&mut stream, "e", 4));
        assert_eq!(seqs(&mut rx), vec![1]);
        assert!(stream.needs_sync);
        // The missing one arrives: everything held follows it, in order.
        offer(&mut stream, "e", 2);
        assert_eq!(seqs(&mut rx), vec![2, 3, 4]);
        assert!(stream.pending.is_empty());
    }

    #[test]
    fn a_stream_not_yet_ready_holds_everything() {
        let mut stream = LocalStream::new(room());
        let (tx, mut rx) = outbox::channel(64);
        stream.add(&ConnHandle::new(1, tx));
        stream.open_gate(1, 0);
        assert!(!offer(&mut stream, "e", 5));
        assert_eq!(seqs(&mut rx), Vec::<u64>::new());
        assert_eq!(stream.pending.len(), 1);
    }

    #[test]
    fn the_gate_holds_live_frames_and_skips_what_the_replay_covered() {
        let (mut stream, _first, mut first_rx) = ready("e", 0);
        let (tx, mut rx) = outbox::channel(64);
        let late = ConnHandle::new(2, tx);
        stream.add(&late);
        for seq in 1..=4 {
            offer(&mut stream, "e", seq);
        }
        // Gated: nothing yet for the late one, everything for the open one.
        assert_eq!(seqs(&mut rx), Vec::<u64>::new());
        assert_eq!(seqs(&mut first_rx), vec![1, 2, 3, 4]);
        // Its replay covered up to 2: 3 and 4 are released, then live traffic flows.
        stream.open_gate(late.id, 2);
        offer(&mut stream, "e", 5);
        assert_eq!(seqs(&mut rx), vec![3, 4, 5]);
    }

    #[test]
    fn a_new_epoch_starts_seqs_over() {
        let (mut stream, _conn, mut rx) = ready("old", 7);
        offer(&mut stream, "old", 8);
        offer(&mut stream, "new", 1);
        offer(&mut stream, "new", 2);
        assert_eq!(seqs(&mut rx), vec![8, 1, 2]);
        assert_eq!(&*stream.epoch, "new");
    }

    #[test]
    fn a_full_gate_closes_the_connection_as_a_slow_consumer() {
        let (mut stream, _first, _first_rx) = ready("e", 0);
        let (tx, _rx) = outbox::channel(GATE_CAPACITY * 2);
        let late = ConnHandle::new(2, tx);
        stream.add(&late);
        for seq in 1..=(GATE_CAPACITY as u64 + 1) {
            offer(&mut stream, "e", seq);
        }
        assert!(late.is_killed());
    }
}
