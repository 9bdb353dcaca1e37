//! Resend on missing acks: the pure state machine behind `delivery.*` (no I/O, no clock).
//!
//! A connection becomes *acking* with its first `ack` (of any stream); a connection that never acks
//! (an old tutorial client) is never resent to and has no deadline. Until its first ack a
//! connection keeps only the last [`PRE_ACK_WINDOW`] frames per stream (a client's first ack lags
//! what it was already sent; keeping everything for clients that may never ack would cost memory
//! for nothing). For an acking connection the [`Tracker`] keeps, per stream (room log or direct-message inbox), the frames
//! written to the socket that the client has not acknowledged yet — the very frames the hub shared
//! (`F` is `Utf8Bytes` in the gateway: a reference count, not a copy) — with **one deadline per
//! stream**, not a timer per message:
//!
//! - the deadline is `ack_timeout` after the oldest unacknowledged frame was written (or after the
//!   last resend round, whichever is later);
//! - when it passes, the whole unacknowledged tail is sent again, in order, and a retry is counted;
//!   any progress of the stream's ack resets the count;
//! - after `max_retries` rounds without progress the connection is given up: the driver closes it
//!   with [`chat_protocol::close::ACK_TIMEOUT`] and the client resumes with `since` elsewhere.
//!
//! The tail is bounded by `max_unacked` frames per stream. Frames that could not be kept (the bound
//! overflowed, or they fell out of the window before the connection started acking) make the tail
//! incomplete; a resend then could only be partial, so a due deadline gives up instead and the
//! replay at the next `login` (which reads the log) fills the gap. Nothing is ever resent out of
//! order or with a hole.
//!
//! Time is passed in (`now`), so the logic is unit-tested without a runtime; the socket driver
//! sleeps until [`Tracker::next_deadline`] and calls [`Tracker::poll`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chat_backend::StreamKey;

/// The `[delivery]` settings the tracker applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a written frame may stay unacknowledged before the tail is sent again.
    pub ack_timeout: Duration,
    /// Resend rounds without progress before the connection is given up.
    pub max_retries: u32,
    /// Most unacknowledged frames kept per stream.
    pub max_unacked: usize,
}

/// Frames kept per stream for a connection that has not acked yet.
pub const PRE_ACK_WINDOW: usize = 64;

/// Node-wide delivery counters (for the operations endpoint to export).
#[derive(Debug, Default)]
pub struct Counters {
    /// Message frames written again because they were not acknowledged in time.
    pub resent_frames: AtomicU64,
    /// Connections closed with `ACK_TIMEOUT`.
    pub given_up: AtomicU64,
}

/// What [`Tracker::poll`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Due<F> {
    /// Nothing to do yet.
    Nothing,
    /// Write these frames again, in this order (already acknowledged ones are never included).
    Resend(Vec<F>),
    /// The connection stopped acknowledging (or its tail cannot be resent whole): close it.
    GiveUp {
        /// The stream that timed out.
        stream: StreamKey,
        /// Its oldest unacknowledged seq.
        seq: u64,
    },
}

/// One written, unacknowledged frame.
#[derive(Debug)]
struct Held<F> {
    seq: u64,
    frame: F,
    written: Instant,
}

/// Per-stream state. Every seq belongs to `epoch`.
#[derive(Debug)]
struct Tail<F> {
    epoch: Arc<str>,
    /// Highest seq the client acknowledged in `epoch`.
    acked: u64,
    /// Highest seq recorded (kept or not).
    last: u64,
    /// Highest seq written but not kept; the tail is complete only once `acked` reaches it.
    missing_through: u64,
    frames: VecDeque<Held<F>>,
    retries: u32,
    /// When the last resend round was queued.
    last_round: Option<Instant>,
}

impl<F> Tail<F> {
    fn new(epoch: &Arc<str>) -> Self {
        Tail {
            epoch: epoch.clone(),
            acked: 0,
            last: 0,
            missing_through: 0,
            frames: VecDeque::new(),
            retries: 0,
            last_round: None,
        }
    }

    fn complete(&self) -> bool {
        self.acked >= self.missing_through
    }

    /// The first seq not acknowledged, if any was written.
    fn first_unacked(&self) -> Option<u64> {
        if !self.complete() {
            return Some(self.acked + 1);
        }
        self.frames.front().map(|h| h.seq)
    }

    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let since = match (self.frames.front(), self.last_round) {
            (Some(h), Some(round)) => h.written.max(round),
            (Some(h), None) => h.written,
            // Only unkept frames are unacknowledged: due as soon as a round would be.
            (None, round) if !self.complete() => round?,
            (None, _) => return None,
        };
        Some(since + timeout)
    }
}

/// See the module docs. `F` is the stored frame (cheap to clone).
#[derive(Debug)]
pub struct Tracker<F> {
    policy: Policy,
    acking: bool,
    tails: HashMap<StreamKey, Tail<F>>,
    /// When the connection started acking: unkept tails are timed from here.
    acking_since: Option<Instant>,
    resent: u64,
}

impl<F: Clone> Tracker<F> {
    /// A tracker for a connection that has not acked yet.
    pub fn new(policy: Policy) -> Self {
        Tracker {
            policy,
            acking: false,
            tails: HashMap::new(),
            acking_since: None,
            resent: 0,
        }
    }

    /// True once the connection has sent an `ack`.
    pub fn is_acking(&self) -> bool {
        self.acking
    }

    /// Frames resent so far on this connection.
    pub fn resent(&self) -> u64 {
        self.resent
    }

    /// Unacknowledged frames held for `stream` (for tests and metrics).
    pub fn held(&self, stream: &StreamKey) -> usize {
        self.tails.get(stream).map_or(0, |t| t.frames.len())
    }

    /// A frame delivering `seq` of `stream` in `epoch` was written to the socket at `now`.
    pub fn on_written(
        &mut self,
        stream: &StreamKey,
        epoch: &Arc<str>,
        seq: u64,
        frame: &F,
        now: Instant,
    ) {
        let max = if self.acking {
            self.policy.max_unacked
        } else {
            self.policy.max_unacked.min(PRE_ACK_WINDOW)
        };
        let Some(tail) = self.tail(stream, epoch) else {
            return;
        };
        if seq <= tail.last || seq <= tail.acked {
            // Written again (a login's replay of what it already had): the first write stands.
            return;
        }
        tail.last = seq;
        if tail.frames.len() >= max {
            // Over the bound: the oldest unacknowledged frame cannot be resent any more.
            if let Some(dropped) = tail.frames.pop_front() {
                tail.missing_through = tail.missing_through.max(dropped.seq);
            }
        }
        if max == 0 {
            tail.missing_through = tail.missing_through.max(seq);
            return;
        }
        tail.frames.push_back(Held {
            seq,
            frame: frame.clone(),
            written: now,
        });
    }

    /// The client acknowledged `stream` through `acked` (cumulative, in `epoch`; already clamped to
    /// what was written) at `now`. `delivered` is the highest seq written on the stream so far: when
    /// this is the connection's first ack, what was written before it was not kept.
    pub fn on_ack(
        &mut self,
        stream: &StreamKey,
        epoch: &Arc<str>,
        acked: u64,
        delivered: u64,
        now: Instant,
    ) {
        if !self.acking {
            self.acking = true;
            self.acking_since = Some(now);
        }
        let Some(tail) = self.tail(stream, epoch) else {
            return;
        };
        if tail.last < delivered {
            // Written before tracking began (before the first ack, or before this stream's epoch
            // was seen here): not kept, so it must be acknowledged before a resend can be whole.
            tail.missing_through = tail.missing_through.max(delivered);
            tail.last = delivered;
            if tail.last_round.is_none() && tail.frames.is_empty() {
                tail.last_round = Some(now);
            }
        }
        if acked <= tail.acked {
            return;
        }
        tail.acked = acked;
        // Progress: the client is alive. The last round (if any) still dates the resent frames.
        tail.retries = 0;
        while tail.frames.front().is_some_and(|h| h.seq <= acked) {
            tail.frames.pop_front();
        }
        if !tail.complete() && tail.frames.is_empty() {
            // Still waiting for acks of unkept frames: time them from this progress.
            tail.last_round = Some(now);
        }
    }

    /// The stream is gone from this connection (left the room).
    pub fn forget(&mut self, stream: &StreamKey) {
        self.tails.remove(stream);
    }

    /// The earliest deadline over all streams: when [`Tracker::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.acking {
            return None;
        }
        self.tails
            .values()
            .filter_map(|t| t.deadline(self.policy.ack_timeout))
            .min()
    }

    /// Resends (or gives up on) every stream whose deadline passed by `now`.
    pub fn poll(&mut self, now: Instant) -> Due<F> {
        if !self.acking {
            return Due::Nothing;
        }
        let timeout = self.policy.ack_timeout;
        let mut resend = Vec::new();
        for (key, tail) in &mut self.tails {
            if tail.deadline(timeout).is_none_or(|d| d > now) {
                continue;
            }
            if tail.retries >= self.policy.max_retries || !tail.complete() {
                return Due::GiveUp {
                    stream: key.clone(),
                    seq: tail.first_unacked().unwrap_or(tail.acked + 1),
                };
            }
            tail.retries += 1;
            tail.last_round = Some(now);
            resend.extend(tail.frames.iter().map(|h| h.frame.clone()));
        }
        if resend.is_empty() {
            return Due::Nothing;
        }
        self.resent += resend.len() as u64;
        Due::Resend(resend)
    }

    /// The stream's state, started over if the log's epoch changed (old seqs mean nothing now).
    /// Called for every frame written: the key is cloned only when the stream is new, and the
    /// epoch (shared by the hub for a whole epoch) is compared by pointer first.
    fn tail(&mut self, stream: &StreamKey, epoch: &Arc<str>) -> Option<&mut Tail<F>> {
        if !self.tails.contains_key(stream) {
            self.tails.insert(stream.clone(), Tail::new(epoch));
        }
        let tail = self.tails.get_mut(stream)?;
        if !Arc::ptr_eq(&tail.epoch, epoch) && tail.epoch != *epoch {
            *tail = Tail::new(epoch);
        }
        Some(tail)
    }
}

/// Marks a stored message frame as a resend without re-encoding it: `{"resend":true,` is put in
/// front of the stored object's fields (JSON field order does not matter; the `event` tag is found
/// wherever it is). A frame that is not a JSON object is returned unchanged.
pub fn mark_resend(frame: &str) -> String {
    match frame.strip_prefix('{') {
        Some(rest) => {
            let mut out = String::with_capacity(frame.len() + 15);
            out.push_str("{\"resend\":true,");
            out.push_str(rest);
            out
        }
        None => frame.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::RoomId;

    const T: Duration = Duration::from_secs(10);

    fn policy(max_unacked: usize) -> Policy {
        Policy {
            ack_timeout: T,
            max_retries: 3,
            max_unacked,
        }
    }

    fn room(id: &str) -> StreamKey {
        StreamKey::Room(RoomId::new(id).expect("id"))
    }

    fn epoch(e: &str) -> Arc<str> {
        Arc::from(e)
    }

    /// A tracker that acked nothing yet but counts as acking (ack 0 of room `r`).
    fn acking(max_unacked: usize, t0: Instant) -> Tracker<u64> {
        let mut t = Tracker::new(policy(max_unacked));
        t.on_ack(&room("r"), &epoch("e"), 0, 0, t0);
        t
    }

    fn write(t: &mut Tracker<u64>, seqs: std::ops::RangeInclusive<u64>, at: Instant) {
        for seq in seqs {
            t.on_written(&room("r"), &epoch("e"), seq, &seq, at);
        }
    }

    #[test]
    fn a_connection_that_never_acks_keeps_a_small_window_and_is_never_resent_to() {
        let t0 = Instant::now();
        let mut t: Tracker<u64> = Tracker::new(policy(1000));
        write(&mut t, 1..=500, t0);
        assert!(!t.is_acking());
        assert_eq!(t.held(&room("r")), PRE_ACK_WINDOW);
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.poll(t0 + T * 100), Due::Nothing);
    }

    #[test]
    fn the_unacked_tail_is_resent_in_order_after_the_timeout() {
        let t0 = Instant::now();
        let mut t = acking(16, t0);
        write(&mut t, 1..=5, t0);
        t.on_ack(&room("r"), &epoch("e"), 2, 5, t0 + Duration::from_secs(1));
        assert_eq!(t.held(&room("r")), 3);
        // One deadline for the stream: from the oldest unacked frame's write.
        assert_eq!(t.next_deadline(), Some(t0 + T));
        assert_eq!(t.poll(t0 + T - Duration::from_millis(1)), Due::Nothing);
        assert_eq!(t.poll(t0 + T), Due::Resend(vec![3, 4, 5]));
        assert_eq!(t.resent(), 3);
        // The next round is a full timeout after the resend.
        assert_eq!(t.next_deadline(), Some(t0 + T * 2));
        assert_eq!(t.poll(t0 + T + Duration::from_secs(1)), Due::Nothing);
    }

    #[test]
    fn acking_everything_clears_the_deadline() {
        let t0 = Instant::now();
        let mut t = acking(16, t0);
        write(&mut t, 1..=3, t0);
        t.on_ack(&room("r"), &epoch("e"), 3, 3, t0);
        assert_eq!(t.held(&room("r")), 0);
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.poll(t0 + T * 10), Due::Nothing);
    }

    #[test]
    fn gives_up_after_max_retries_rounds_without_progress() {
        let t0 = Instant::now();
        let mut t = acking(16, t0);
        write(&mut t, 1..=2, t0);
        for round in 1..=3u32 {
            assert_eq!(
                t.poll(t0 + T * round),
                Due::Resend(vec![1, 2]),
                "round {round}"
            );
        }
        assert_eq!(
            t.poll(t0 + T * 4),
            Due::GiveUp {
                stream: room("r"),
                seq: 1
            }
        );
    }

    #[test]
    fn progress_resets_the_retry_count() {
        let t0 = Instant::now();
        let mut t = acking(16, t0);
        write(&mut t, 1..=4, t0);
        assert_eq!(t.poll(t0 + T), Due::Resend(vec![1, 2, 3, 4]));
        assert_eq!(t.poll(t0 + T * 2), Due::Resend(vec![1, 2, 3, 4]));
        let t1 = t0 + T * 2 + Duration::from_secs(1);
        t.on_ack(&room("r"), &epoch("e"), 2, 4, t1);
        // Three fresh rounds before giving up.
        for round in 1..=3u32 {
            assert_eq!(t.poll(t1 + T * round), Due::Resend(vec![3, 4]));
        }
        assert!(matches!(t.poll(t1 + T * 4), Due::GiveUp { seq: 3, .. }));
    }

    #[test]
    fn frames_written_again_are_kept_once() {
        let t0 = Instant::now();
        let mut t = acking(16, t0);
        write(&mut t, 1..=3, t0);
        write(&mut t, 2..=3, t0 + Duration::from_secs(5));
        assert_eq!(t.poll(t0 + T), Due::Resend(vec![1, 2, 3]));
    }

    #[test]
    fn an_overflowed_tail_gives_up_instead_of_resending_with_a_hole() {
        let t0 = Instant::now();
        let mut t = acking(3, t0);
        write(&mut t, 1..=5, t0);
        assert_eq!(t.held(&room("r")), 3, "bounded");
        assert!(matches!(t.poll(t0 + T), Due::GiveUp { seq: 1, .. }));
        // Once the unkept ones are acked, the kept rest can be resent whole.
        let mut t = acking(3, t0);
        write(&mut t, 1..=5, t0);
        t.on_ack(&room("r"), &epoch("e"), 2, 5, t0 + Duration::from_secs(1));
        assert_eq!(t.poll(t0 + T), Due::Resend(vec![3, 4, 5]));
    }

    #[test]
    fn frames_written_before_the_first_ack_are_resent_from_the_window() {
        let t0 = Instant::now();
        let mut t: Tracker<u64> = Tracker::new(policy(1000));
        write(&mut t, 1..=5, t0);
        // The first ack lags what was written: the window still holds the rest.
        t.on_ack(&room("r"), &epoch("e"), 3, 5, t0);
        write(&mut t, 6..=6, t0);
        assert_eq!(t.poll(t0 + T), Due::Resend(vec![4, 5, 6]));
    }

    #[test]
    fn frames_that_fell_out_of_the_window_must_be_acked_before_a_resend() {
        let t0 = Instant::now();
        let window = PRE_ACK_WINDOW as u64;
        let mut t: Tracker<u64> = Tracker::new(policy(1000));
        write(&mut t, 1..=window + 10, t0);
        t.on_ack(&room("r"), &epoch("e"), 3, window + 10, t0);
        assert!(matches!(t.poll(t0 + T), Due::GiveUp { seq: 4, .. }));
        let mut t: Tracker<u64> = Tracker::new(policy(1000));
        write(&mut t, 1..=window + 10, t0);
        t.on_ack(&room("r"), &epoch("e"), 3, window + 10, t0);
        t.on_ack(
            &room("r"),
            &epoch("e"),
            11,
            window + 10,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            t.poll(t0 + T),
            Due::Resend((12..=window + 10).collect::<Vec<_>>())
        );
    }

    #[test]
    fn an_epoch_change_starts_the_stream_over() {
        let t0 = Instant::now();
        let mut t = acking(16, t0);
        write(&mut t, 1..=3, t0);
        // The log was reset: seq 1 of the new epoch is a different message.
        t.on_written(&room("r"), &epoch("f"), 1, &100, t0);
        assert_eq!(t.held(&room("r")), 1);
        t.on_ack(&room("r"), &epoch("f"), 1, 1, t0);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn streams_are_independent_and_share_one_poll() {
        let t0 = Instant::now();
        let mut t = acking(16, t0);
        write(&mut t, 1..=2, t0);
        let s = room("s");
        t.on_written(&s, &epoch("x"), 7, &7, t0 + Duration::from_secs(3));
        assert_eq!(t.next_deadline(), Some(t0 + T));
        assert_eq!(t.poll(t0 + T), Due::Resend(vec![1, 2]));
        assert_eq!(
            t.next_deadline(),
            Some(t0 + Duration::from_secs(3) + T),
            "the other stream's deadline is its own"
        );
        assert_eq!(
            t.poll(t0 + Duration::from_secs(3) + T),
            Due::Resend(vec![7])
        );
        t.forget(&s);
        assert_eq!(t.held(&s), 0);
    }

    #[test]
    fn mark_resend_prefixes_without_reencoding() {
        let frame = r#"{"event":"message","seq":3}"#;
        assert_eq!(
            mark_resend(frame),
            r#"{"resend":true,"event":"message","seq":3}"#
        );
        assert_eq!(mark_resend("x"), "x");
    }
}
