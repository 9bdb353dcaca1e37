//! `sockudo` and `sockudo-ctx`: sockudo-ws 3.1's axum integration (`axum_integration::
//! WebSocketUpgrade`, which is where it negotiates permessage-deflate) and its own compression,
//! every recipient's copy compressed by its own connection. Otherwise `Config::default()`.
//!
//! - `sockudo`: `Compression::Shared`, "good for many connections": level 6, window 15 bits, no
//!   context takeover both ways, threshold 16 bytes. Despite the name, the stream types build a
//!   `DeflateEncoder` per connection for it too (`CompressedWebSocketStream::server` →
//!   `CompressedProtocol::server` → `DeflateContext::server`, src/protocol.rs); the shared pool
//!   (`compression::SharedCompressorPool`) is exported but no stream uses it.
//! - `sockudo-ctx`: `Compression::Dedicated`: the same with context takeover.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use sockudo_ws::axum_integration::WebSocketUpgrade;
use sockudo_ws::{Compression, Config, Message};

use crate::hub::{Hub, Inbound, drive};

#[derive(Clone)]
struct App {
    hub: Arc<Hub<Bytes>>,
    config: Config,
}

pub fn router(context_takeover: bool) -> Router {
    let compression = if context_takeover {
        Compression::Dedicated
    } else {
        Compression::Shared
    };
    let app = App {
        hub: Hub::new(),
        config: Config::builder().compression(compression).build(),
    };
    Router::new().route("/ws", get(upgrade)).with_state(app)
}

async fn upgrade(State(app): State<App>, ws: WebSocketUpgrade) -> impl IntoResponse {
    ws.config(app.config.clone())
        .on_upgrade(move |socket| async move {
            drive(
                socket,
                app.hub,
                |text: &Bytes| Message::Text(text.clone()),
                decode,
            )
            .await;
        })
}

fn decode(inbound: sockudo_ws::Result<Message>) -> Inbound<Bytes> {
    match inbound {
        Ok(Message::Text(text)) => Inbound::Broadcast(text),
        Ok(Message::Close(_)) | Err(_) => Inbound::End,
        Ok(_) => Inbound::Ignore,
    }
}
