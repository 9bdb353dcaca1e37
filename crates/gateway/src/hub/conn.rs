//! A connection as the hub sees it: its id, the items the hub queues for it ([`Outbound`], with
//! the stream position a frame delivers, [`Mark`]), and its handle ([`ConnHandle`]): the
//! connection's bounded outbound queue plus a kill switch that asks its driver to close.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use chat_backend::StreamKey;
use chat_protocol::{RoomId, close};
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

/// Identifies a connection on this node.
pub type ConnId = u64;

/// What the hub hands to a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame to write. `mark` says which stream position it delivers, so the session can record
    /// what actually reached the socket.
    Frame {
        /// The encoded frame, shared with every other recipient.
        text: Utf8Bytes,
        /// The stream and seq of a message frame.
        mark: Option<Mark>,
        /// For a legacy-dialect connection: the broadcast's translation slot, shared by all of
        /// its legacy recipients on this node so it is translated once (see [`crate::legacy`]).
        legacy: Option<crate::legacy::Cache>,
        /// For a connection that negotiated permessage-deflate: the broadcast's compressed form,
        /// shared by all such recipients on this node so it is compressed once.
        deflated: Option<crate::deflate::Shared>,
    },
    /// The user left the room (a `logout` from any of their connections, on any node).
    Left(RoomId),
}

/// A delivered stream position: a seq always travels with its epoch.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The stream (shared, not cloned per recipient).
    pub stream: Arc<StreamKey>,
    /// The epoch the seq belongs to (shared, not cloned per recipient).
    pub epoch: Arc<str>,
    /// The seq delivered.
    pub seq: u64,
}

/// The hub's handle on one connection: its queue and a way to close it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// The connection's id on this node.
    pub id: ConnId,
    tx: crate::outbox::Sender,
    kill: Arc<KillSwitch>,
    /// The connection speaks the legacy dialect: its frames come with a shared translation slot.
    pub(super) legacy: bool,
    /// The connection negotiated permessage-deflate: its frames come with a shared compression
    /// slot.
    pub(super) deflate: bool,
}

#[derive(Debug)]
struct KillSwitch {
    token: CancellationToken,
    code: AtomicU16,
}

impl ConnHandle {
    /// A handle around a connection's bounded outbound queue.
    pub fn new(id: ConnId, tx: crate::outbox::Sender) -> Self {
        let kill = Arc::new(KillSwitch {
            token: CancellationToken::new(),
            code: AtomicU16::new(close::NORMAL),
        });
        Self {
            id,
            tx,
            kill,
            legacy: false,
            deflate: false,
        }
    }

    /// Marks the connection as having negotiated permessage-deflate ([`crate::deflate`]).
    pub fn compressing(mut self) -> Self {
        self.deflate = true;
        self
    }

    /// Marks the connection as speaking the legacy dialect ([`crate::legacy`]).
    pub fn speaking_legacy(mut self) -> Self {
        self.legacy = true;
        self
    }

    /// Asks the connection's driver to close with `code`. The first reason wins.
    pub fn kill(&self, code: u16) {
        if !self.kill.token.is_cancelled() {
            self.kill.code.store(code, Ordering::Relaxed);
            self.kill.token.cancel();
        }
    }

    /// True once [`ConnHandle::kill`] was called.
    #[cfg(test)]
    pub(super) fn is_killed(&self) -> bool {
        self.kill.token.is_cancelled()
    }

    /// Resolves when [`ConnHandle::kill`] was called.
    pub async fn killed(&self) -> u16 {
        self.kill.token.cancelled().await;
        self.kill.code.load(Ordering::Relaxed)
    }

    /// Queues without waiting; a full queue means the client cannot keep up, and it is closed.
    pub(super) fn offer(&self, item: Outbound) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(crate::outbox::TrySendError::Full) => {
                // Once, not per frame offered: until its driver ends, every broadcast of a busy
                // room finds the queue full again (weakness 10's thousands of lines).
                if !self.kill.token.is_cancelled() {
                    tracing::debug!(conn = self.id, "outbound queue full: closing slow consumer");
                }
                self.kill(close::SLOW_CONSUMER);
            }
            // The connection is already gone; its session detaches it.
            Err(crate::outbox::TrySendError::Closed) => {}
        }
    }
}
