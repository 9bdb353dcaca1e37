//! WebSocket close codes the server uses, and what a client should do on each.
//!
//! Standard codes (RFC 6455 §7.4.1) are used where one fits; 4000-4999 are this protocol's own.

/// Normal closure: the server is done with the connection (or the client asked to close).
pub const NORMAL: u16 = 1000;
/// The client broke the WebSocket protocol (RFC 6455: bad framing, unmasked or fragmented control
/// frames, RSV bits, an invalid close code). Fix the client.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame was not valid UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// Policy violation: the connection kept flooding after `rate_limited` errors.
pub const POLICY_VIOLATION: u16 = 1008;
/// A frame was larger than `limits.max_frame_bytes`. Do not resend it.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// RFC 6455's internal error. This server does not send it (no server failure ends a session;
/// see docs/protocol.md); a client that gets it from another implementation reconnects with backoff.
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
/// No valid token (`auth.mode = "jwt"`) within `auth.timeout_secs`, or no `login` within
/// `limits.login_timeout_secs`. Authenticate (or log in) promptly after connecting.
pub const AUTH_TIMEOUT: u16 = 4003;
/// The connection's token expired and was not refreshed with an `auth` frame: get a new token,
/// then reconnect.
pub const TOKEN_EXPIRED: u16 = 4004;
