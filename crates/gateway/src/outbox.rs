//! A connection's bounded outbound queue: what the hub hands to its socket driver.
//!
//! Not a tokio `mpsc` channel, for memory: a bounded `mpsc` allocates its first block of 32 slots
//! (with the channel state, ~3 KiB here) when created and keeps up to a few blocks after a burst,
//! whether or not the connection ever gets traffic again. At tens of thousands of idle
//! connections that was the largest per-connection cost (docs/benchmarks.md). This queue is a
//! `VecDeque` behind a mutex that holds no allocation while empty: it grows with a burst and is
//! released when the driver has drained it. One waiter (the driver) is woken through a
//! [`Notify`], whose stored permit covers a push that lands between the driver's check and its
//! wait.
//!
//! The queue is bounded twice: in items (`limits.outbound_queue`) and in the bytes of the frames it
//! holds (`limits.outbound_queue_bytes`), so a reader that falls behind a room of large messages is
//! cut off at a memory bound, not only at a frame count. Either bound reached: [`TrySendError::Full`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::hub::Outbound;

/// Why [`Sender::try_send`] did not queue the item.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds its capacity: the connection cannot keep up.
    Full,
    /// The connection's driver is gone.
    Closed,
}

/// The queue is empty (for [`Receiver::try_recv`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Outbound>>,
    notify: Notify,
    capacity: usize,
    /// Most frame bytes queued at once; one item is always accepted into an empty queue, whatever
    /// its size (a frame is at most `limits.max_frame_bytes` anyway).
    max_bytes: usize,
    /// Frame bytes queued now; changed only under the queue's lock.
    bytes: AtomicUsize,
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Outbound>> {
        // Nothing panics while holding it; a poisoned queue is still a consistent queue.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The hub's end; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender(Arc<Shared>);

/// The driver's end. Dropping it closes the queue: later sends fail with
/// [`TrySendError::Closed`] and what was queued is dropped.
#[derive(Debug)]
pub struct Receiver(Arc<Shared>);

/// A queue holding at most `capacity` items (no bound in bytes).
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    bounded(capacity, usize::MAX)
}

/// A queue holding at most `capacity` items and at most `max_bytes` bytes of frames.
pub fn bounded(capacity: usize, max_bytes: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        capacity: capacity.max(1),
        max_bytes,
        bytes: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues without waiting.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError> {
        if self.0.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed);
        }
        {
            let size = weight(&item);
            let mut queue = self.0.lock();
            let bytes = self.0.bytes.load(Ordering::Relaxed);
            if queue.len() >= self.0.capacity
                || (!queue.is_empty() && bytes.saturating_add(size) > self.0.max_bytes)
            {
                return Err(TrySendError::Full);
            }
            self.0.bytes.store(bytes + size, Ordering::Relaxed);
            queue.push_back(item);
        }
        self.0.notify.notify_one();
        Ok(())
    }
}

impl Receiver {
    /// The next item, waiting for one. Cancel-safe: an item is only taken when returned. Never
    /// `None` while this end exists (the `Option` keeps the shape of a channel's `recv`).
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            if let Ok(item) = self.try_recv() {
                return Some(item);
            }
            self.0.notify.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Outbound, Empty> {
        let mut queue = self.0.lock();
        let item = queue.pop_front().ok_or(Empty)?;
        let bytes = self.0.bytes.load(Ordering::Relaxed);
        self.0
            .bytes
            .store(bytes.saturating_sub(weight(&item)), Ordering::Relaxed);
        if queue.is_empty() && queue.capacity() > 0 {
            // Drained: give the burst's memory back, an idle connection holds none.
            *queue = VecDeque::new();
        }
        Ok(item)
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an item counts against the byte bound: a frame's text (shared between recipients, but each
/// queue that holds it keeps it alive and will write all of it).
fn weight(item: &Outbound) -> usize {
    match item {
        Outbound::Frame { text, .. } => text.len(),
        Outbound::Left(_) => 0,
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        // Whatever is still queued (frames, shared buffers) is released now, not with the last
        // hub handle.
        self.0.lock().clear();
        self.0.bytes.store(0, Ordering::Relaxed);
    }
}
