//! The browser chat: static assets compiled into the binary, and the small read-only routes the
//! page needs beyond protocol v1.
//!
//! The assets are plain HTML, CSS and JavaScript modules in `crates/gateway/web/`, embedded with
//! `include_bytes!` so the binary is the whole product (no CDN, no files next to it, no npm at
//! build time). Each is served with an `ETag` computed at compile time and `Cache-Control:
//! no-cache`, so a browser revalidates cheaply (304) and never runs a stale page after an upgrade.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the chat page (`index.html`); with a WebSocket upgrade, the legacy dialect ([`crate::legacy`]) |
//! | `GET /chat-client.js` | the client library (`docs/client.md`), usable by any web app |
//! | `GET /app.js`, `/i18n.js`, `/style.css`, `/favicon.svg` | the page's own code and style |
//! | `GET /api/web-config` | `{"defaultRooms":[…]}` from `web.default_rooms` |

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::node::Node;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: &'static str,
}

/// FNV-1a, evaluated at compile time: a content hash for `ETag` without a build script.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Formats a hash as a quoted `ETag` value at compile time.
const fn etag_of(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("../web/", $file));
        const ETAG: [u8; 18] = etag_of(BODY);
        Asset {
            path: $path,
            content_type: $type,
            body: BODY,
            // The bytes are ASCII hex between quotes, so this cannot fail; a const context
            // cannot unwrap, hence the match.
            etag: match std::str::from_utf8(&ETAG) {
                Ok(s) => s,
                Err(_) => "\"0\"",
            },
        }
    }};
}

static INDEX: Asset = asset!("/", "index.html", "text/html; charset=utf-8");

/// Everything but the page itself.
static ASSETS: [Asset; 5] = [
    asset!(
        "/chat-client.js",
        "chat-client.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("/i18n.js", "i18n.js", "text/javascript; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// The page runs only its own scripts and styles and talks only to its own origin, so even a bug
/// that rendered user text as HTML could not run injected script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Routes for the page, its assets and its configuration.
pub fn routes() -> Router<Arc<Node>> {
    let mut router = Router::new()
        .route("/api/web-config", get(web_config))
        .route("/", get(root));
    for asset in &ASSETS {
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        );
    }
    router
}

/// `GET /`: a WebSocket upgrade speaks the classic tutorial client's dialect (it connects to `/`);
/// anything else gets the page. A request that asks for an upgrade but gets it wrong (a bad
/// version, no key) is refused as on `/ws`, not answered with HTML.
async fn root(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    tls_peer: Option<axum::Extension<axum::extract::ConnectInfo<crate::tls::TlsPeer>>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    upgrade: Result<crate::upgrade::WsUpgrade, crate::upgrade::WsRejection>,
) -> Response {
    let ip = peer
        .map(|axum::Extension(info)| info.0.ip())
        .or_else(|| tls_peer.map(|axum::Extension(info)| info.0.0.ip()));
    match upgrade {
        Ok(upgrade) => crate::http::accept_checked(node, upgrade, true, &headers, &uri, ip).await,
        Err(rejection) if wants_websocket(&headers) => rejection.into_response(),
        Err(_) => page(headers).await,
    }
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The chat page.
pub async fn page(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = HeaderValue::from_static(asset.etag);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == asset.etag));
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if asset.content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    (headers, asset.body).into_response()
}

async fn web_config(State(node): State<Arc<Node>>) -> Response {
    Json(json!({ "defaultRooms": node.settings.web.default_rooms })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_differ_with_content_and_are_quoted() {
        let a = etag_of(b"a");
        let b = etag_of(b"b");
        assert_ne!(a, b);
        assert_eq!(a[0], b'"');
        assert_eq!(a[17], b'"');
        assert!(
            ASSETS
                .iter()
                .all(|a| a.etag.len() == 18 && !a.body.is_empty())
        );
        assert!(INDEX.etag.len() == 18);
    }
}
