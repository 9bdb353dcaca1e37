//! WebSocket close codes the server uses, and what a client should do on each.
//!
//! Standard codes (RFC 6455 §7.4.1) are used where one fits; 4000-4999 are this protocol's own.

/// Normal closure: the server is done with the connection (or the client asked to close).
pub const NORMAL: u16 = 1000;
/// A frame was larger than `limits.max_frame_bytes`. Do not resend it.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server hit an unexpected internal error. Reconnect with backoff.
pub const INTERNAL_ERROR: u16 = 1011;
/// The node is shutting down or restarting. Reconnect (to any node) with a short jittered backoff;
/// `login` with `since` to get what was missed.
pub const SERVICE_RESTART: u16 = 1012;
/// The connection could not keep up with its room traffic: its bounded outbound queue filled.
/// Reconnect and `login` with `since`; history fills the gap.
pub const SLOW_CONSUMER: u16 = 4000;
/// Nothing arrived from the client for `heartbeat.timeout_secs`. The client was presumably gone.
pub const HEARTBEAT_TIMEOUT: u16 = 4001;
/// The client stopped acknowledging: an acking connection (one that has sent `ack`) left delivered
/// messages unacknowledged through `delivery.max_retries` resends, `delivery.ack_timeout_secs`
/// apart, or more than the server could keep for resending. The connection is presumed half-open.
/// Reconnect (to any node) and `login` with `since` (and `epoch`): the replay fills the gap.
pub const ACK_TIMEOUT: u16 = 4002;
