//! The WebSocket upgrade (RFC 6455 over HTTP/1.1), done here instead of by axum's
//! `WebSocketUpgrade` so that the socket driver gets tokio-tungstenite's stream itself: it must
//! send frames with RSV1 set (permessage-deflate, [`crate::deflate`]) and see compressed inbound
//! ones, which axum's `Message` type cannot carry.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

/// The upgraded connection the socket driver runs.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A valid WebSocket upgrade request, not yet answered.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The client offered a permessage-deflate the server can accept.
    deflate_offered: bool,
}

/// Why a request is not a valid WebSocket upgrade; answered with 400 (405 for a method other
/// than GET), as axum's extractor did.
#[derive(Debug)]
pub struct WsRejection(StatusCode, &'static str);

impl IntoResponse for WsRejection {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = WsRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let bad = |why| Err(WsRejection(StatusCode::BAD_REQUEST, why));
        if parts.version != Version::HTTP_11 {
            return bad("WebSocket upgrades need HTTP/1.1");
        }
        if parts.method != Method::GET {
            return Err(WsRejection(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET",
            ));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return bad("`Connection` header did not include `upgrade`");
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return bad("`Upgrade` header did not include `websocket`");
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return bad("`Sec-WebSocket-Version` header did not include `13`");
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return bad("`Sec-WebSocket-Key` header missing");
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return bad("connection not upgradable");
        };
        let offers = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let deflate_offered = crate::deflate::accepts(offers);
        Ok(WsUpgrade {
            key,
            on_upgrade,
            deflate_offered,
        })
    }
}

impl WsUpgrade {
    /// True when the client offered permessage-deflate in a form the server accepts.
    pub fn deflate_offered(&self) -> bool {
        self.deflate_offered
    }

    /// Answers 101 (with the permessage-deflate response when `deflate`, which must only be set
    /// if [`WsUpgrade::deflate_offered`]) and runs `callback` on the socket once upgraded.
    pub fn on_upgrade<C, Fut>(self, config: WebSocketConfig, deflate: bool, callback: C) -> Response
    where
        C: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let deflate = deflate && self.deflate_offered;
        let config = config.accept_compressed_frames(deflate);
        let on_upgrade = self.on_upgrade;
        // The upgrade's state (the pending upgrade, the config, the stream being built) and the
        // callback are boxed and gone once the socket is ready; the task then holds only the
        // callback's future. An `async` block awaiting both would be sized for the sum and keep
        // that size for the connection's whole life (~1 KiB of an idle connection).
        let upgrading = Box::pin(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return None;
                }
            };
            let socket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            Some(callback(socket))
        });
        tokio::spawn(upgrading.map(OptionFuture::from).flatten());
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if deflate {
            headers.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(crate::deflate::RESPONSE),
            );
        }
        response
    }
}
