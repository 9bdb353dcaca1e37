//! `ours` and `ours-plain`: the gateway's transport. The upgrade is the gateway's
//! (`chat_gateway::upgrade::WsUpgrade`, which negotiates permessage-deflate with
//! `chat_gateway::deflate::accepts` and answers `deflate::RESPONSE`: no context takeover either
//! way), on the patched tungstenite 0.29 with the gateway's default buffer settings. A broadcast
//! carries a `deflate::Shared` slot: the first recipient's connection compresses it, every other
//! one that negotiated the extension writes the same bytes as a `Message::Frame` with RSV1 set,
//! as `crates/gateway/src/ws.rs` does. `ours-plain` declines the extension.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use chat_gateway::deflate::{self, Shared};
use chat_gateway::upgrade::{Socket, WsUpgrade};
use tungstenite::Message;
use tungstenite::Utf8Bytes;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::hub::{Hub, Inbound, drive};

/// The gateway's `limits.max_frame_bytes` default.
const MAX_FRAME: usize = 65536;
/// The gateway's `limits.read_buffer_bytes` and `write_buffer_bytes` defaults.
const BUFFER: usize = 4096;
/// The gateway's `websocket.compression_threshold_bytes` default.
const THRESHOLD: usize = 128;

/// One broadcast: its text and its compressed form, computed once for all recipients.
#[derive(Clone)]
struct Item {
    text: Utf8Bytes,
    shared: Shared,
}

#[derive(Clone)]
struct App {
    hub: Arc<Hub<Item>>,
    deflate: bool,
}

pub fn router(deflate: bool) -> Router {
    let app = App {
        hub: Hub::new(),
        deflate,
    };
    Router::new().route("/ws", get(upgrade)).with_state(app)
}

async fn upgrade(State(app): State<App>, upgrade: WsUpgrade) -> Response {
    let config = WebSocketConfig::default()
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .max_write_buffer_size(BUFFER + MAX_FRAME * 2)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let deflate = app.deflate && upgrade.deflate_offered();
    upgrade.on_upgrade(config, deflate, move |socket: Socket| async move {
        drive(socket, app.hub, |item: &Item| encode(item, deflate), decode).await;
    })
}

fn encode(item: &Item, deflate: bool) -> Message {
    if !deflate || item.text.len() < THRESHOLD {
        return Message::Text(item.text.clone());
    }
    match item.shared.get(item.text.as_str()) {
        Some(bytes) => {
            let mut frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
            frame.header_mut().rsv1 = true;
            Message::Frame(frame)
        }
        None => Message::Text(item.text.clone()),
    }
}

fn decode(inbound: Result<Message, tungstenite::Error>) -> Inbound<Item> {
    let text = match inbound {
        Ok(Message::Text(text)) => text,
        // Only a compressed (RSV1) message comes as a raw frame.
        Ok(Message::Frame(frame)) => {
            let Ok(raw) = deflate::inflate(frame.payload(), MAX_FRAME) else {
                return Inbound::End;
            };
            let Ok(text) = String::from_utf8(raw) else {
                return Inbound::End;
            };
            Utf8Bytes::from(text)
        }
        Ok(Message::Close(_)) | Err(_) => return Inbound::End,
        Ok(_) => return Inbound::Ignore,
    };
    Inbound::Broadcast(Item {
        text,
        shared: Shared::default(),
    })
}
