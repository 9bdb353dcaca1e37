//! Test harness: real `chat-gateway` processes, real `redis-server` processes and real WebSocket
//! clients, every wait bounded by a deadline so a hanging server fails a test instead of hanging CI.
//!
//! - [`gateway_bin`] builds the gateway binary once per test process (`cargo build -p
//!   chat-gateway`, a no-op when it is up to date) and returns its path; `CHAT_GATEWAY_BIN`
//!   overrides it ([`bins`]).
//! - [`Gateway`] runs one gateway process on its own port, logging to a file; on a failing test
//!   its log tail is printed ([`gateway`]).
//! - [`RedisServer`] runs one throwaway `redis-server`, shared with the backend's tests through
//!   the `chat-testkit` crate, as are [`Proc`], [`fresh_dir`], [`free_port`] and [`wait_until`].
//! - [`Client`] is a WebSocket client speaking protocol v1, decoding every frame with
//!   [`ServerFrame::decode`](chat_protocol::ServerFrame::decode) ([`client`]); [`RawClient`]
//!   writes nothing unless told to ([`raw`]).
//! - [`http_get`] is a minimal HTTP/1.1 GET ([`http`]).
//! - [`cluster::Cluster`] runs several gateways on one Redis; [`local_cluster`] drives
//!   `deploy/local-cluster`; [`node`] runs the JavaScript suites in `tests/web/`.

pub mod bins;
pub mod client;
pub mod cluster;
pub mod gateway;
pub mod http;
pub mod local_cluster;
pub mod messages;
pub mod node;
pub mod raw;

pub use bins::{chat_cli_bin, chatctl_bin, gateway_bin};
pub use chat_testkit::{
    Proc, RedisServer, TestDir, default_timeout, file_tail, free_port, fresh_dir, send_signal,
    target_dir, wait_until, workspace_root,
};
pub use client::{Client, Event};
pub use gateway::{Gateway, GatewayOptions};
pub use http::{HttpResponse, http_get};
pub use messages::{assert_consecutive, read_to_string, seqs};
pub use raw::{RawClient, RawFrame};

pub use chat_protocol;
pub use serde_json;
