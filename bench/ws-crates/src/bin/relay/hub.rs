//! The fan-out every relay variant shares: one bounded channel per connection, a text message
//! from any connection offered to every channel (the sender's own included), and one connection
//! loop ([`drive`]) that writes whatever its channel holds and reads what its client sends. Only
//! the WebSocket crate (and how it encodes an item) differs between variants, so the comparison
//! is of the transport.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

/// Items a connection's channel holds before further broadcasts to it are dropped (counted).
pub const QUEUE: usize = 1024;
/// Most items written per flush.
const MAX_BATCH: usize = 256;

/// Broadcasts not queued because a connection's channel was full (all hubs together).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Every open connection's channel.
pub struct Hub<T> {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, mpsc::Sender<T>>>,
}

impl<T: Clone> Hub<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        })
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<T>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(&self) -> (u64, mpsc::Receiver<T>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        self.conns().insert(id, tx);
        (id, rx)
    }

    fn leave(&self, id: u64) {
        self.conns().remove(&id);
    }

    /// Offers `item` to every connection; a full channel drops it for that connection.
    fn broadcast(&self, item: T) {
        let conns = self.conns();
        for tx in conns.values() {
            if tx.try_send(item.clone()).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What the relay does with one inbound message.
pub enum Inbound<T> {
    /// Send it to everyone.
    Broadcast(T),
    /// A control frame or anything else: nothing.
    Ignore,
    /// Close, error or end of stream: the connection ends.
    End,
}

/// Runs one connection until it ends: items from the hub are written (as many as are queued, up
/// to [`MAX_BATCH`], then one flush), inbound messages go through `decode`. Any write error ends
/// the connection.
pub async fn drive<W, X, M, T>(
    mut ws: W,
    hub: Arc<Hub<T>>,
    encode: impl Fn(&T) -> M,
    decode: impl Fn(X) -> Inbound<T>,
) where
    W: Stream<Item = X> + Sink<M> + Unpin,
    T: Clone,
{
    let (id, mut rx) = hub.join();
    'conn: loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { break };
                if ws.feed(encode(&item)).await.is_err() {
                    break;
                }
                for _ in 1..MAX_BATCH {
                    let Ok(item) = rx.try_recv() else { break };
                    if ws.feed(encode(&item)).await.is_err() {
                        break 'conn;
                    }
                }
                if ws.flush().await.is_err() {
                    break;
                }
            }
            inbound = ws.next() => match inbound.map(&decode) {
                Some(Inbound::Broadcast(item)) => hub.broadcast(item),
                Some(Inbound::Ignore) => {}
                Some(Inbound::End) | None => break,
            },
        }
    }
    hub.leave(id);
}
