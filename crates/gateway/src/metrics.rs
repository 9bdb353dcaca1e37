//! Prometheus metrics: the `metrics` facade records them, the Prometheus exporter renders them as
//! text at `GET /metrics` (no listener of its own: one port per node is the deployment's contract).
//!
//! Counters are recorded where things happen (one line each); gauges that describe the node's
//! current state (connections, rooms, draining) are read at scrape time instead, so they cost
//! nothing between scrapes and cannot drift. No metric has a label per room or per user:
//! cardinality stays bounded by the protocol's error and close codes and the backend's fixed set of
//! Redis operation names.
//!
//! The recorder is process-wide (the facade has one global recorder): several in-process nodes
//! (tests, embedders) share it, and `/metrics` of each shows the sum of their counters.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::{
    Counter, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::Node;

/// Connections opened.
pub const CONNECTIONS_OPENED: &str = "chat_connections_opened_total";
/// Connections closed, by `code` (the close code sent, or `gone` when the client vanished).
pub const CONNECTIONS_CLOSED: &str = "chat_connections_closed_total";
/// WebSocket text frames read from clients.
pub const FRAMES_IN: &str = "chat_frames_in_total";
/// WebSocket text frames written to clients.
pub const FRAMES_OUT: &str = "chat_frames_out_total";
/// Text frames written compressed (permessage-deflate), a subset of [`FRAMES_OUT`].
pub const FRAMES_COMPRESSED: &str = "chat_frames_compressed_total";
/// Stream messages (room and direct) written to clients.
pub const DELIVERIES: &str = "chat_deliveries_total";
/// Posts accepted (answered with `sent`).
pub const POSTS: &str = "chat_posts_total";
/// Acks received.
pub const ACKS: &str = "chat_acks_total";
/// `error` frames sent, by `code`.
pub const ERRORS: &str = "chat_errors_total";
/// Stream gaps filled from the log.
pub const GAP_FILLS: &str = "chat_gap_fills_total";
/// Messages recovered per gap fill.
pub const GAP_FILL_MESSAGES: &str = "chat_gap_fill_messages";
/// Message frames written again to acking connections that did not ack them in time.
pub const RESENDS: &str = "chat_resends_total";
/// Streams whose log epoch changed (the log was reset).
pub const EPOCH_CHANGES: &str = "chat_epoch_changes_total";
/// Events waiting in the broker's queue to the hub.
pub const BROKER_QUEUE_DEPTH: &str = "chat_broker_queue_depth";

/// The most items ever seen waiting in one connection's outbound queue (since start).
static OUTBOUND_HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

/// Installs the process-wide recorder once and returns its handle (`None` if another recorder
/// was installed first by an embedder: `/metrics` then says so instead of rendering).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Redis round trips are sub-millisecond on a LAN and bounded by command_timeout_ms.
            let latency = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ];
            let sizes = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(GAP_FILL_MESSAGES.into()), &sizes));
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics is empty");
                    return None;
                }
            };
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_gauge!(
        "chat_build_info",
        "Build information (value 1), labelled by version"
    );
    describe_gauge!(
        "chat_connections",
        "Open WebSocket connections on this node"
    );
    describe_gauge!(
        "chat_draining",
        "1 while the node drains (not ready, closing sessions), else 0"
    );
    describe_gauge!(
        "chat_rooms_local",
        "Room streams with at least one session on this node"
    );
    describe_gauge!(
        "chat_room_sessions",
        "Session attachments to room and inbox streams on this node (sum over streams)"
    );
    describe_gauge!(
        "chat_room_sessions_avg",
        "Average sessions per locally subscribed stream"
    );
    describe_gauge!(
        "chat_outbound_queue_high_water",
        "Most frames ever waiting in one connection's outbound queue since start"
    );
    describe_gauge!(BROKER_QUEUE_DEPTH, "Broker events waiting for the hub");
    describe_counter!(CONNECTIONS_OPENED, "WebSocket connections opened");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "WebSocket connections closed, by close code (gone: the client vanished)"
    );
    describe_counter!(FRAMES_IN, "Text frames read from clients");
    describe_counter!(FRAMES_OUT, "Text frames written to clients");
    describe_counter!(
        FRAMES_COMPRESSED,
        "Text frames written compressed (permessage-deflate)"
    );
    describe_counter!(DELIVERIES, "Stream messages written to clients");
    describe_counter!(POSTS, "Posts accepted");
    describe_counter!(ACKS, "Acks received");
    describe_counter!(ERRORS, "error frames sent, by code");
    describe_counter!(GAP_FILLS, "Stream gaps filled from the log");
    describe_histogram!(GAP_FILL_MESSAGES, "Messages recovered per gap fill");
    describe_counter!(EPOCH_CHANGES, "Streams whose log epoch changed");
    describe_counter!(
        RESENDS,
        "Message frames resent to acking connections that did not ack them in time"
    );
    describe_counter!(
        "chat_redis_pubsub_reconnects_total",
        "Times the Redis pub/sub connection was re-established"
    );
    describe_histogram!(
        "chat_redis_command_seconds",
        Unit::Seconds,
        "Latency of Redis calls, by script or command (what)"
    );
    describe_counter!(
        "chat_redis_errors_total",
        "Redis calls that failed, by script or command (what)"
    );
    describe_counter!(
        "chat_jwks_fetches_total",
        "Fetches of the JWK set at auth.jwks_url (startup, periodic, unknown kid)"
    );
    describe_counter!(
        "chat_jwks_fetch_failures_total",
        "JWK set fetches that failed (the last good set stays in use)"
    );
}

/// Handles of the counters bumped per frame, registered once: the facade's `counter!` looks the
/// key up in the recorder's registry at every call, which the hot path should not pay.
pub struct Hot {
    /// [`FRAMES_IN`].
    pub frames_in: Counter,
    /// [`FRAMES_OUT`].
    pub frames_out: Counter,
    /// [`FRAMES_COMPRESSED`].
    pub frames_compressed: Counter,
    /// [`DELIVERIES`].
    pub deliveries: Counter,
    /// [`POSTS`].
    pub posts: Counter,
    /// [`ACKS`].
    pub acks: Counter,
}

/// The hot counters. Registered with the recorder installed at first use ([`handle`] is called
/// by `run` before any connection is accepted).
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| {
        handle();
        Hot {
            frames_in: counter!(FRAMES_IN),
            frames_out: counter!(FRAMES_OUT),
            frames_compressed: counter!(FRAMES_COMPRESSED),
            deliveries: counter!(DELIVERIES),
            posts: counter!(POSTS),
            acks: counter!(ACKS),
        }
    })
}

/// Records how many items one connection had queued; keeps the maximum.
pub fn outbound_depth(depth: usize) {
    OUTBOUND_HIGH_WATER.fetch_max(depth, Ordering::Relaxed);
}

/// The Prometheus text exposition of every metric, with the scrape-time gauges of `node`.
pub fn render(node: &Node) -> Option<String> {
    let handle = handle()?;
    gauge!("chat_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!("chat_connections").set(node.sessions.len() as f64);
    gauge!("chat_draining").set(if node.drain.is_draining() { 1.0 } else { 0.0 });
    let rooms = node.hub.local_rooms().len();
    let attachments = node.hub.attachment_count();
    gauge!("chat_rooms_local").set(rooms as f64);
    gauge!("chat_room_sessions").set(attachments as f64);
    gauge!("chat_room_sessions_avg").set(if rooms == 0 {
        0.0
    } else {
        attachments as f64 / rooms as f64
    });
    gauge!("chat_outbound_queue_high_water")
        .set(OUTBOUND_HIGH_WATER.load(Ordering::Relaxed) as f64);
    // Histograms are summarized lazily; rendering is the natural moment.
    handle.run_upkeep();
    Some(handle.render())
}
