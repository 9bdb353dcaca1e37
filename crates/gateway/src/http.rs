//! HTTP routes: the WebSocket endpoint, the read-only REST API and health checks.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ws` | WebSocket upgrade (protocol v1) |
//! | `GET /api/rooms` | `{"rooms":[{roomId, roomName, num, total, seq, epoch}]}` |
//! | `GET /api/rooms/{id}/messages?before=&limit=` | `{"roomId","epoch","messages":[...]}` |
//! | `GET /api/rooms/{id}/members` | `{"roomId","members":[userId…]}`: who joined and has not logged out |
//! | `GET /api/node` | `{"node","backend","connections","presenceLeaseMs","draining","legacy":{"connections","rejected"}}`: which node answered, and its load |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the store and the broker answer and the node is not draining or shutting down, else 503 |
//! | `GET /metrics` | Prometheus text exposition ([`crate::metrics`]) |
//!
//! The browser chat (`/`, `/chat-client.js`, its assets and `/api/web-config`) is in [`crate::web`];
//! a WebSocket upgrade of `/` (the legacy dialect, [`crate::legacy`]) is routed there too.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chat_backend::BackendError;
use chat_protocol::client::DEFAULT_HISTORY_PAGE;
use chat_protocol::server::HistoryPage;
use chat_protocol::{ErrorCode, RoomId};
use serde_json::json;

use crate::config::Compression;
use crate::node::Node;
use crate::upgrade::WsUpgrade;
use crate::{web, ws};

/// The node's routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/api/rooms", get(rooms))
        .route("/api/rooms/{id}/messages", get(messages))
        .route("/api/rooms/{id}/members", get(members))
        .route("/api/node", get(node_info))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(prometheus))
        .merge(web::routes())
        .with_state(node)
}

async fn upgrade(State(node): State<Arc<Node>>, upgrade: WsUpgrade) -> Response {
    accept(node, upgrade, false)
}

/// Accepts a WebSocket upgrade with the configured limits; `legacy`: the connection speaks the
/// classic tutorial client's dialect (`GET /`, see [`crate::legacy`]) instead of v1.
pub(crate) fn accept(node: Arc<Node>, upgrade: WsUpgrade, legacy: bool) -> Response {
    if node.shutdown.is_cancelled() || node.drain.is_draining() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "shutting down",
        );
    }
    let limits = &node.settings.limits;
    let tracker = node.sessions.clone();
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.write_buffer_bytes)
        .max_write_buffer_size(limits.write_buffer_bytes + limits.max_frame_bytes * 2)
        // Compressed inbound frames are limited again after inflating (`crate::deflate`).
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let deflate =
        node.settings.websocket.compression == Compression::On && upgrade.deflate_offered();
    // The upgraded connection runs detached; the tracker lets shutdown wait for it.
    upgrade.on_upgrade(config, deflate, move |socket| {
        tracker.track_future(ws::drive_as(socket, node, legacy, deflate))
    })
}

fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

fn backend_error(e: BackendError) -> Response {
    match e {
        BackendError::Unavailable(_) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "backend unavailable; retry later",
        ),
        BackendError::Corrupt(detail) | BackendError::Config(detail) => {
            tracing::error!(%detail, "backend failed");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            )
        }
    }
}

async fn rooms(State(node): State<Arc<Node>>) -> Response {
    match node.store.rooms().await {
        Ok(rooms) => Json(json!({ "rooms": rooms })).into_response(),
        Err(e) => backend_error(e),
    }
}

/// Query parameters arrive as strings so a bad value gets this API's JSON error, not axum's text.
async fn messages(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let room = match RoomId::new(id) {
        Ok(room) => room,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidId,
                &format!("room id {e}"),
            );
        }
    };
    let before = match query.get("before").map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadField,
                "`before` must be a non-negative integer",
            );
        }
    };
    let max = node.settings.history.max_page;
    // Like the `history` event: a large limit is clamped to the page size, not refused.
    let limit = match query.get("limit").map(|s| s.parse::<u64>()) {
        None => DEFAULT_HISTORY_PAGE.min(max),
        Some(Ok(n)) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX).min(max),
        Some(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadField,
                "`limit` must be a positive integer",
            );
        }
    };
    match node.store.history(&room, before, limit).await {
        Ok((epoch, messages)) => Json(HistoryPage {
            room_id: room,
            epoch,
            messages,
        })
        .into_response(),
        Err(e) => backend_error(e),
    }
}

/// The room's members, for the web chat's user list (the protocol has counts, not names).
async fn members(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    let room = match RoomId::new(id) {
        Ok(room) => room,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidId,
                &format!("room id {e}"),
            );
        }
    };
    match node.store.members(&room).await {
        Ok(members) => Json(json!({ "roomId": room, "members": members })).into_response(),
        Err(e) => backend_error(e),
    }
}

async fn node_info(State(node): State<Arc<Node>>) -> Response {
    Json(json!({
        "node": node.id,
        "backend": node.backend_kind,
        "connections": node.sessions.len(),
        // How long this node's presence entries live after a refresh (chatctl's lease age).
        "presenceLeaseMs": node.settings.presence.ttl_secs * 1000 / 2,
        "draining": node.drain.is_draining(),
        "legacy": {
            "connections": node.legacy.connections(),
            "rejected": node.legacy.rejected(),
        },
    }))
    .into_response()
}

async fn prometheus(State(node): State<Arc<Node>>) -> Response {
    match crate::metrics::render(&node) {
        Some(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response(),
    }
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.drain.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let ready = match node.store.ping().await {
        Ok(()) => node.broker.ready().await,
        Err(e) => Err(e),
    };
    match ready {
        Ok(()) => (
            StatusCode::OK,
            format!("ready ({} backend)\n", node.backend_kind),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}
