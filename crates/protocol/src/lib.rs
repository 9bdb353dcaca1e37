//! Wire protocol v1 of the chat cluster.
//!
//! This crate is the single definition of what travels over the WebSocket at `/ws`: the frames a
//! client sends ([`ClientFrame`], parsed and validated by [`parse_client_frame`]), the frames the
//! server sends ([`ServerFrame`]), the error codes and the close codes. It does no I/O and pulls in
//! no runtime, so the gateway, the terminal client, the load generator and the tests all speak the
//! exact same protocol. `docs/protocol.md` is the prose version of this crate.

pub mod client;
pub mod close;
pub mod error;
pub mod ids;
pub mod server;

pub use client::{
    AckStream, ClientFrame, HistoryRequest, Limits, LoginRequest, PostRequest, Target,
    parse_client_frame,
};
pub use error::{ErrorCode, ProtocolError};
pub use ids::{RoomId, UserId};
pub use server::{ChatMessage, LogoutReason, PresenceNotice, ServerFrame};
