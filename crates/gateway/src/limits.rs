//! Limits on what one client can make the server do: token buckets for posts and joins, and the
//! browser origin check of the WebSocket upgrade.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token; `Err(wait)`: none left, the next one comes after `wait`.
    pub fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// May a browser page from the request's `Origin` open a WebSocket? No `Origin`: not a browser
/// page, allowed. Else it must be in `allowed`, or (when `allowed` is empty) name the same host
/// as the request's `Host` header: that stops another site's page from using a visitor's
/// network position (cross-site WebSocket hijacking).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin));
    }
    let Some(host) = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refuses_past_its_burst() {
        let mut bucket = TokenBucket::new(1, 3);
        for _ in 0..3 {
            assert!(bucket.take().is_ok());
        }
        let wait = bucket.take().expect_err("empty");
        assert!(wait <= Duration::from_secs(1));
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &[]), "no Origin: not a browser");
        h.insert("host", "chat.example:8080".parse().expect("h"));
        h.insert("origin", "http://chat.example:8080".parse().expect("h"));
        assert!(origin_allowed(&h, &[]));
        h.insert("origin", "https://evil.example".parse().expect("h"));
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["https://evil.example".to_owned()]));
    }
}
