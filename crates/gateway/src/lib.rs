//! The chat gateway node.
//!
//! - [`auth`]: JWT verification (`auth.mode = "jwt"`): who a client is and which rooms it may join.
//! - [`jwks`]: the identity provider's signing keys from `auth.jwks_url`, cached and refreshed.
//! - [`limits`]: token buckets for posts (per connection and per user) and joins, origin checks.
//! - [`config`]: settings (`config/default.toml`, `--config FILE`, `CHAT__SECTION__KEY`).
//! - [`node`]: what all sessions of a node share.
//! - [`cursors`]: acknowledged read positions, written to the store in batches.
//! - [`hub`]: local fan-out, ordering and gap filling per stream.
//! - [`membership`]: which users are in which room through this node; orders joins, logouts and
//!   notices.
//! - [`session`]: one connection's protocol logic, testable without a socket.
//! - [`ws`]: the socket driver around a session.
//! - [`delivery`]: resend on missing acks (pure state machine the session drives).
//! - [`http`]: the routes.
//! - [`serve`]: the HTTP/1.1 accept loop, with a bound on slow request headers.
//! - [`web`]: the browser chat's embedded page and client library.
//! - [`legacy`]: the classic tutorial client's dialect on `GET /`, translated at the edge.
//! - [`presence`]: keeps this node's presence alive in the cluster and reaps dead nodes' users.
//! - [`drain`]: leaving the cluster on SIGTERM: not ready, sessions closed with 1012 over
//!   `server.drain_secs`, presence removed without spurious `logout` notices.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`tls`]: https:// and wss:// with rustls when `tls.cert` and `tls.key` are set.
//!
//! [`run`] serves on a listener until a shutdown token fires, then drains (see [`drain`]) and
//! stops.

pub mod auth;
pub mod config;
pub mod cursors;
pub mod deflate;
pub mod delivery;
pub mod drain;
pub mod http;
pub mod hub;
pub mod jwks;
pub mod legacy;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod serve;
pub mod session;
pub mod tls;
pub mod upgrade;
pub mod web;
pub mod ws;

use std::time::Duration;

use axum::serve::ListenerExt;
use chat_backend::Backend;
use chat_backend::memory::{self, MemoryConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::node::Node;

/// Errors that stop a node from starting.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The embedded backend's settings, from the node's.
pub fn memory_config(settings: &Settings) -> MemoryConfig {
    MemoryConfig {
        history_per_room: settings.history.per_room,
        history_bytes_per_room: settings.history.max_bytes_per_room,
        history_bytes_total: settings.history.max_bytes_total,
        max_rooms: settings.limits.max_rooms,
        max_inboxes: settings.limits.max_inboxes,
        retention: Duration::from_secs(settings.offline.ttl_secs),
    }
}

/// Opens the backend the settings ask for: the embedded one when `redis.url` is empty, else Redis.
/// Redis need not be up yet (the node serves and reports not ready until it is); a configuration
/// error fails at once.
pub async fn open_backend(settings: &Settings, node_id: &str) -> Result<Backend, BoxError> {
    if settings.redis.url.is_empty() {
        return Ok(memory::open(memory_config(settings)));
    }
    let config = chat_backend::redis_backend::RedisConfig {
        url: settings.redis.url.clone(),
        tls_ca_file: settings.redis.tls_ca_file.clone(),
        prefix: settings.redis.prefix.clone(),
        node_id: node_id.to_owned(),
        presence_lease_ms: settings.presence.ttl_secs * 1000 / 2,
        history_per_room: settings.history.per_room,
        cursor_ttl_secs: settings.offline.ttl_secs,
        pool_size: settings.redis.pool_size,
        command_timeout_ms: settings.redis.command_timeout_ms,
    };
    Ok(chat_backend::redis_backend::open(config).await?)
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` is cancelled, then drains: `/readyz`
/// turns 503, new WebSockets are refused, sessions are closed with 1012 spread over
/// `server.drain_secs` (waiting up to `server.shutdown_grace_secs` for them to finish), presence is
/// removed, and only then does the listener close and cursors get their last flush.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let node_id = if settings.server.node_id.is_empty() {
        format!("node-{}", &memory::new_epoch()[..8])
    } else {
        settings.server.node_id.clone()
    };
    let backend = open_backend(&settings, &node_id).await?;
    let Backend {
        store,
        broker,
        events,
        kind,
    } = backend;
    // The node's own stop signal fires only after the drain: until then its routes answer (503 on
    // /readyz), its pump delivers and its presence upkeep runs.
    let stop = CancellationToken::new();
    let node = Node::new(node_id, settings, store, broker, kind, stop.clone());
    metrics::handle();
    let sync_interval = Duration::from_secs(node.settings.cluster.sync_interval_secs);

    let background = tokio_util::task::TaskTracker::new();
    background.spawn(
        node.hub
            .clone()
            .run_pump(events, sync_interval, node.shutdown.clone()),
    );
    background.spawn(presence::run(node.clone()));
    background.spawn(flush_cursors(node.clone()));
    if let Some(jwks) = node.auth.as_ref().and_then(|auth| auth.jwks()) {
        background.spawn(jwks.run(node.shutdown.clone()));
    }
    background.close();
    let draining = {
        let node = node.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            node.drain.start(node.backend_kind != "memory");
            drain::run(&node).await;
            stop.cancel();
        })
    };

    tracing::info!(
        node = %node.id,
        backend = kind,
        addr = %listener.local_addr()?,
        "chat gateway listening"
    );
    let header_timeout = Duration::from_secs(node.settings.server.handshake_timeout_secs);
    if !node.settings.tls.cert.is_empty() {
        let (cert, key) = (
            node.settings.tls.cert.clone(),
            node.settings.tls.key.clone(),
        );
        let config = tls::load(&cert, &key)?;
        let listener = tls::serve(listener, config, cert, key, node.shutdown.clone())?;
        serve::serve(
            listener,
            http::router(node.clone()),
            tls::TlsPeer,
            header_timeout,
            node.shutdown.clone(),
        )
        .await;
        return finish(node, draining, background).await;
    }
    // Chat frames are small and latency-bound: never let Nagle hold one back waiting for an ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    // The peer address feeds the per-IP connection cap (`limits.max_connections_per_ip`).
    serve::serve(
        listener,
        http::router(node.clone()),
        |addr: std::net::SocketAddr| addr,
        header_timeout,
        node.shutdown.clone(),
    )
    .await;
    finish(node, draining, background).await
}

/// After the server stopped: waits for the drain, the sessions and the background tasks, and
/// writes the last cursors.
async fn finish(
    node: std::sync::Arc<Node>,
    draining: tokio::task::JoinHandle<()>,
    background: tokio_util::task::TaskTracker,
) -> Result<(), BoxError> {
    // The server stops only once the drain is over (or failed and the node stops anyway).
    let _ = draining.await;
    node.sessions.close();
    let grace = Duration::from_secs(node.settings.server.shutdown_grace_secs);
    // Give the broker a moment to deliver the last offline notices before the pump stops.
    let _ = tokio::time::timeout(Duration::from_secs(1), background.wait()).await;
    // Acks collected since the last flush.
    let _ = tokio::time::timeout(grace, node.cursors.flush(node.store.as_ref())).await;
    tracing::info!(node = %node.id, "chat gateway stopped");
    Ok(())
}

/// Writes the acks sessions collected, every `cluster.cursor_flush_ms`, until shutdown (the last
/// flush is `run`'s, after the sessions are gone).
async fn flush_cursors(node: std::sync::Arc<Node>) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(node.settings.cluster.cursor_flush_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => node.cursors.flush(node.store.as_ref()).await,
        }
    }
}

/// Convenience for tests and embedders: a node on `127.0.0.1:0` in the background.
pub struct Spawned {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Cancel to shut it down.
    pub shutdown: CancellationToken,
    /// Resolves when it has shut down.
    pub task: tokio::task::JoinHandle<Result<(), BoxError>>,
}

/// Starts a node with `settings` on an ephemeral loopback port.
pub async fn spawn(settings: Settings) -> Result<Spawned, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(settings, listener, shutdown.clone()));
    Ok(Spawned {
        addr,
        shutdown,
        task,
    })
}
