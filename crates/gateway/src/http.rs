//! HTTP routes: the WebSocket endpoint, the read-only REST API and health checks.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ws` | WebSocket upgrade (protocol v1) |
//! | `GET /api/rooms?after=&limit=` | `{"rooms":[{roomId, roomName, num, total, seq, epoch}],"next"}`: a page in id order |
//! | `GET /api/rooms/{id}/messages?before=&limit=` | `{"roomId","epoch","messages":[...]}` |
//! | `GET /api/rooms/{id}/members` | `{"roomId","members":[userId…],"online":[userId…]}`: who joined and has not logged out, and who of them is online now (any node) |
//! | `GET /api/node` | `{"node","backend","connections","presenceLeaseMs","draining","legacy":{"connections","rejected"}}`: which node answered, and its load |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the store and the broker answer and the node is not draining or shutting down, else 503 |
//! | `GET /metrics` | Prometheus text exposition ([`crate::metrics`]) |
//!
//! In `auth.mode = "jwt"` the `/api/rooms` routes need `Authorization: Bearer` (401), and a room's
//! messages and members are for its members or tokens whose `rooms` claim names it (403).
//!
//! The browser chat (`/`, `/chat-client.js`, its assets and `/api/web-config`) is in [`crate::web`];
//! a WebSocket upgrade of `/` (the legacy dialect, [`crate::legacy`]) is routed there too.

use futures_util::FutureExt;
use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chat_backend::{BackendError, Limit};
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

async fn upgrade(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    tls_peer: Option<axum::Extension<axum::extract::ConnectInfo<crate::tls::TlsPeer>>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: WsUpgrade,
) -> Response {
    let ip = peer
        .map(|axum::Extension(info)| info.0.ip())
        .or_else(|| tls_peer.map(|axum::Extension(info)| info.0.0.ip()));
    accept_checked(node, upgrade, false, &headers, &uri, ip).await
}

/// [`accept`] after the checks of hostile clients: the browser origin (403) and, in
/// `auth.mode = "jwt"`, a token sent with the upgrade (401 when invalid; none: the client must
/// send an `auth` frame within `auth.timeout_secs`).
pub(crate) async fn accept_checked(
    node: Arc<Node>,
    upgrade: WsUpgrade,
    legacy: bool,
    headers: &HeaderMap,
    uri: &Uri,
    ip: Option<std::net::IpAddr>,
) -> Response {
    if !crate::limits::origin_allowed(headers, &node.settings.server.allowed_origins) {
        return api_error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this Origin may not open a WebSocket here (server.allowed_origins)",
        );
    }
    let mut grant = None;
    if let Some(verifier) = &node.auth
        && let Some(token) = crate::auth::token_of(headers, uri.query())
    {
        match verifier.verify(&token).await {
            Ok(g) => grant = Some(g),
            Err(e) => return api_error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, &e.0),
        }
    }
    let limits = &node.settings.limits;
    let Some(slot) = node
        .gate
        .admit(ip, limits.max_connections, limits.max_connections_per_ip)
    else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "too many connections (limits.max_connections / max_connections_per_ip)",
        );
    };
    accept(node, upgrade, legacy, grant, slot)
}

/// Accepts a WebSocket upgrade with the configured limits; `legacy`: the connection speaks the
/// classic tutorial client's dialect (`GET /`, see [`crate::legacy`]) instead of v1.
/// `grant`: the token verified with the upgrade, if any.
pub(crate) fn accept(
    node: Arc<Node>,
    upgrade: WsUpgrade,
    legacy: bool,
    grant: Option<crate::auth::Grant>,
    slot: crate::limits::ConnectionSlot,
) -> Response {
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
        // Also the bound on a fragmented compressed message's fragments together; compressed
        // messages are limited again after inflating (`crate::deflate`).
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let deflate =
        node.settings.websocket.compression == Compression::On && upgrade.deflate_offered();
    // The upgraded connection runs detached; the tracker lets shutdown wait for it.
    upgrade.on_upgrade(config, deflate, move |socket| {
        // Built here, not inside an `async` block: the block would keep the socket and the
        // arguments (~0.5 KiB) for the connection's whole life (see ws::drive_with).
        let driver = ws::drive_with(socket, node, legacy, grant, deflate);
        // The place is freed when the connection's task ends.
        tracker.track_future(driver.map(move |()| drop(slot)))
    })
}

fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

/// The protocol's error code for a cap of the backend.
pub(crate) fn limit_code(limit: Limit) -> ErrorCode {
    match limit {
        Limit::Rooms => ErrorCode::RoomLimit,
        Limit::Inboxes => ErrorCode::InboxLimit,
    }
}

fn backend_error(e: BackendError) -> Response {
    match e {
        BackendError::Unavailable(_) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "backend unavailable; retry later",
        ),
        BackendError::Full(limit) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            limit_code(limit),
            "the node is at a configured limit; retry later",
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

/// Largest page of `GET /api/rooms` (`?limit=`), and the page size without one.
const MAX_ROOMS_PAGE: usize = 1000;
const DEFAULT_ROOMS_PAGE: usize = 100;

/// `auth.mode = "jwt"`: the request's `Authorization: Bearer` token, verified (401 without a
/// valid one). `Ok(None)` in `off` mode.
// The error is the finished response, built once per refused request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
async fn http_grant(
    node: &Node,
    headers: &HeaderMap,
) -> Result<Option<crate::auth::Grant>, Response> {
    let Some(verifier) = &node.auth else {
        return Ok(None);
    };
    let Some(token) = crate::auth::token_of(headers, None) else {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden,
            "send `Authorization: Bearer <token>`",
        ));
    };
    verifier
        .verify(&token)
        .await
        .map(Some)
        .map_err(|e| api_error(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, &e.0))
}

/// jwt mode: may `grant` read `room` (its history, its members)? When the `rooms` claim names it,
/// or when the user is a member.
async fn may_read(
    node: &Node,
    grant: Option<&crate::auth::Grant>,
    room: &RoomId,
) -> Result<(), Response> {
    let Some(grant) = grant else {
        return Ok(());
    };
    if grant.lists(room) {
        return Ok(());
    }
    match node.store.members(room).await {
        Ok(members) if members.contains(&grant.user_id) && grant.allows(room) => Ok(()),
        Ok(_) => Err(api_error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "only members of the room (or tokens whose `rooms` claim names it) may read it",
        )),
        Err(e) => Err(backend_error(e)),
    }
}

/// Rooms in id order, a page at a time: `?after=<roomId>&limit=` (default 100, at most 1000);
/// `next` is the `after` of the next page, `null` on the last.
async fn rooms(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = http_grant(&node, &headers).await {
        return response;
    }
    let limit = match query.get("limit").map(|s| s.parse::<usize>()) {
        None => DEFAULT_ROOMS_PAGE,
        Some(Ok(n)) if n > 0 => n.min(MAX_ROOMS_PAGE),
        Some(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadField,
                "`limit` must be a positive integer",
            );
        }
    };
    let after = query.get("after").map(String::as_str).unwrap_or("");
    match node.store.rooms().await {
        Ok(mut rooms) => {
            rooms.retain(|r| r.room_id.as_str() > after);
            rooms.sort_by(|a, b| a.room_id.as_str().cmp(b.room_id.as_str()));
            let next = (rooms.len() > limit).then(|| rooms[limit - 1].room_id.clone());
            rooms.truncate(limit);
            Json(json!({ "rooms": rooms, "next": next })).into_response()
        }
        Err(e) => backend_error(e),
    }
}

/// Query parameters arrive as strings so a bad value gets this API's JSON error, not axum's text.
async fn messages(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let grant = match http_grant(&node, &headers).await {
        Ok(grant) => grant,
        Err(response) => return response,
    };
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
    if let Err(response) = may_read(&node, grant.as_ref(), &room).await {
        return response;
    }
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
async fn members(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let grant = match http_grant(&node, &headers).await {
        Ok(grant) => grant,
        Err(response) => return response,
    };
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
    if let Err(response) = may_read(&node, grant.as_ref(), &room).await {
        return response;
    }
    let (members, online) = tokio::join!(node.store.members(&room), node.store.online(&room));
    match (members, online) {
        (Ok(members), Ok(online)) => {
            Json(json!({ "roomId": room, "members": members, "online": online })).into_response()
        }
        (Err(e), _) | (_, Err(e)) => backend_error(e),
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
