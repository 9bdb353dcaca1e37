//! Everything one gateway node shares between its sessions: settings, backend, hub, shutdown.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_backend::{Broker, Store};
use chat_protocol::{Limits, RoomId, UserId};
use tokio::sync::{Mutex, MutexGuard, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::cursors::CursorBatch;
use crate::hub::Hub;

/// Number of presence lock stripes; see [`Node::presence_guard`].
const PRESENCE_STRIPES: usize = 64;

/// Shared state of a node. Sessions hold an `Arc<Node>`.
pub struct Node {
    /// This node's id (presence entries name it).
    pub id: String,
    /// The settings it started with.
    pub settings: Settings,
    /// Protocol limits derived from the settings.
    pub limits: Limits,
    /// Local fan-out.
    pub hub: Arc<Hub>,
    /// Shared state.
    pub store: Arc<dyn Store>,
    /// Live traffic between nodes.
    pub broker: Arc<dyn Broker>,
    /// `memory` or `redis`.
    pub backend_kind: &'static str,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// The legacy dialect's node-wide state (room names and counts for its frames, counters).
    pub legacy: Arc<crate::legacy::Shared>,
    /// Every session task, so shutdown can wait for them (axum's `on_upgrade` spawns them
    /// detached).
    pub sessions: TaskTracker,
    presence_locks: Vec<Mutex<()>>,
    /// Acknowledged read positions waiting to be written in one batch.
    pub cursors: CursorBatch,
    /// Draining state: not ready, live connections to close, deferred presence removals.
    pub drain: crate::drain::Drain,
    /// Held shared by every presence removal (logout, a user's last connection gone) across its
    /// store call, and exclusively by the presence upkeep across its snapshot and refresh: a
    /// refresh built before a removal can then never be applied after it and bring the user back.
    pub presence_barrier: RwLock<()>,
    /// Resend counters of every session on this node.
    pub delivery: crate::delivery::Counters,
    /// The token verifier in `auth.mode = "jwt"`; `None` in `off` mode.
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// Open WebSocket connections per client IP and in total.
    pub gate: Arc<crate::limits::ConnectionGate>,
    /// Post buckets per user on this node (`limits.user_posts_per_second`).
    pub user_posts: Arc<crate::limits::UserBuckets>,
}

impl Node {
    /// Assembles a node.
    pub fn new(
        id: String,
        settings: Settings,
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        backend_kind: &'static str,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let limits = Limits {
            max_content_bytes: settings.limits.max_content_bytes,
            max_history_page: settings.history.max_page,
        };
        // Settings are validated before a node is built, so a bad auth config never gets here; if
        // one did, failing closed (a verifier that cannot be built) would be wrong, so it logs.
        let auth = match crate::auth::Verifier::from_settings(&settings.auth) {
            Ok(verifier) => verifier.map(Arc::new),
            Err(e) => {
                tracing::error!(error = %e, "auth settings unusable");
                None
            }
        };
        Arc::new(Node {
            auth,
            gate: Arc::default(),
            user_posts: Arc::default(),
            id,
            limits,
            hub: Hub::new(store.clone(), broker.clone()),
            store,
            broker,
            backend_kind,
            shutdown,
            sessions: TaskTracker::new(),
            legacy: Arc::default(),
            presence_locks: (0..PRESENCE_STRIPES).map(|_| Mutex::new(())).collect(),
            presence_barrier: RwLock::new(()),
            delivery: crate::delivery::Counters::default(),
            cursors: CursorBatch::new(),
            drain: Default::default(),
            settings,
        })
    }

    /// Serializes presence changes of one (room, user) on this node: a join and a leave of the
    /// same user racing through the store must not leave them offline while a connection is live.
    pub async fn presence_guard(&self, room: &RoomId, user: &UserId) -> MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        (room, user).hash(&mut hasher);
        let stripe = (hasher.finish() % PRESENCE_STRIPES as u64) as usize;
        self.presence_locks[stripe].lock().await
    }

    /// Oldest message timestamp (ms) that offline replay still delivers.
    pub fn replay_min_ts(&self) -> u64 {
        let ttl = Duration::from_secs(self.settings.offline.ttl_secs);
        SystemTime::now()
            .checked_sub(ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
