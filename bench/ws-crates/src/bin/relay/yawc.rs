//! `yawc` and `yawc-ctx`: yawc 0.5's axum extractor (`IncomingUpgrade`) and its own
//! permessage-deflate, every recipient's copy compressed by its own connection.
//!
//! - `yawc`: yawc's documented setup for many connections (`DeflatePool` docs, src/compression/
//!   pool.rs): no context takeover both ways, deflate state borrowed from a shared
//!   `DeflatePool::new(64)` per message, compression threshold 64 bytes, 1 KiB read and write
//!   buffers; but compression level 6 (`CompressionLevel::default()`, the gateway's) where the
//!   recipe uses `with_low_latency_compression()` (level 1), so both compress alike.
//! - `yawc-ctx`: `Options::default().with_balanced_compression()`, yawc's "good default for most
//!   applications": level 6, context takeover (a compressor per connection, kept between messages).
//!
//! Window bits stay at 15 either way (yawc controls them only with its `zlib` feature).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use yawc::{CompressionLevel, DeflatePool, Frame, IncomingUpgrade, OpCode, Options};

use crate::hub::{Hub, Inbound, drive};

#[derive(Clone)]
struct App {
    hub: Arc<Hub<Bytes>>,
    options: Options,
}

pub fn router(context_takeover: bool) -> Router {
    let options = if context_takeover {
        Options::default().with_balanced_compression()
    } else {
        Options::default()
            .with_compression_level(CompressionLevel::default())
            .server_no_context_takeover()
            .client_no_context_takeover()
            .with_deflate_pool(DeflatePool::new(64))
            .with_compression_threshold(64)
            .with_read_buffer_capacity(1024)
            .with_write_buffer_capacity(1024)
    };
    let app = App {
        hub: Hub::new(),
        options,
    };
    Router::new().route("/ws", get(upgrade)).with_state(app)
}

async fn upgrade(State(app): State<App>, ws: IncomingUpgrade) -> Response {
    let Ok((response, upgraded)) = ws.upgrade(app.options.clone()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    tokio::spawn(async move {
        if let Ok(ws) = upgraded.await {
            drive(
                ws,
                app.hub,
                |text: &Bytes| Frame::text(text.clone()),
                decode,
            )
            .await;
        }
    });
    response.map(Body::new)
}

fn decode(frame: Frame) -> Inbound<Bytes> {
    match frame.opcode() {
        OpCode::Text => Inbound::Broadcast(frame.into_payload()),
        OpCode::Close => Inbound::End,
        _ => Inbound::Ignore,
    }
}
