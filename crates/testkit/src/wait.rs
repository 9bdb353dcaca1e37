//! Ports and bounded waits.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Default bound of a single wait (a frame, a close, a process start). Generous: CI machines are
/// slow and busy. `CHAT_TESTS_TIMEOUT_SECS` overrides it.
pub fn default_timeout() -> Duration {
    static TIMEOUT: OnceLock<Duration> = OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        std::env::var("CHAT_TESTS_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(15))
    })
}

/// A loopback port that was free a moment ago (bound to port 0, then released). Another process
/// may take it before it is used, so fixtures that bind it retry with a new port.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `check` (every 50 ms) until it returns true or `timeout` passes; returns whether it did.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
