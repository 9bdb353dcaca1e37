//! Limits on what one client can make the server do: token buckets for posts and joins (per
//! connection, and for posts also per user on this node), and the browser origin check of the
//! WebSocket upgrade.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// Open WebSocket connections, in total and per client IP, so one host cannot take every file
/// descriptor of the node. A [`ConnectionSlot`] is held for the connection's life.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; frees its place when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: Arc<ConnectionGate>,
    ip: Option<IpAddr>,
}

impl ConnectionGate {
    /// Admits a connection from `ip` (unknown: counted in the total only) if neither `total` nor
    /// `per_ip` is reached.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        total: usize,
        per_ip: usize,
    ) -> Option<ConnectionSlot> {
        let mut counts = match self.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        };
        if counts.0 >= total {
            return None;
        }
        if let Some(ip) = ip {
            let n = counts.1.entry(ip).or_insert(0);
            if *n >= per_ip {
                return None;
            }
            *n += 1;
        }
        counts.0 += 1;
        Some(ConnectionSlot {
            gate: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = match self.gate.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        };
        counts.0 = counts.0.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = counts.1.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                // Freed, so addresses that come and go leave nothing behind.
                counts.1.remove(&ip);
            }
        }
    }
}

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

/// Post buckets shared by all connections of one user on this node. An entry lives exactly as
/// long as some connection of its user holds a [`UserBucket`], so memory is bounded by the open
/// connections (themselves capped by `limits.max_connections`).
#[derive(Debug, Default)]
pub struct UserBuckets {
    /// User id → (connections holding it, the bucket).
    buckets: Mutex<HashMap<String, SharedBucket>>,
}

/// How many connections share a user's bucket, and the bucket.
type SharedBucket = (usize, Arc<Mutex<TokenBucket>>);

/// One connection's share of its user's bucket; the entry is freed with the last share.
#[derive(Debug)]
pub struct UserBucket {
    owner: Arc<UserBuckets>,
    user: String,
    bucket: Arc<Mutex<TokenBucket>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl UserBuckets {
    /// A share of `user`'s bucket, created full (`rate` per second, `burst`) if the user has no
    /// other connection here.
    pub fn join(self: &Arc<Self>, user: &str, rate: u32, burst: u32) -> UserBucket {
        let mut buckets = lock(&self.buckets);
        let entry = buckets
            .entry(user.to_owned())
            .or_insert_with(|| (0, Arc::new(Mutex::new(TokenBucket::new(rate, burst)))));
        entry.0 += 1;
        UserBucket {
            owner: self.clone(),
            user: user.to_owned(),
            bucket: entry.1.clone(),
        }
    }

    /// Users with a bucket (for tests).
    pub fn len(&self) -> usize {
        lock(&self.buckets).len()
    }

    /// No user has a bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl UserBucket {
    /// Takes a token from the user's bucket; see [`TokenBucket::take`].
    pub fn take(&self) -> Result<(), Duration> {
        lock(&self.bucket).take()
    }
}

impl Drop for UserBucket {
    fn drop(&mut self) {
        let mut buckets = lock(&self.owner.buckets);
        if let Some(entry) = buckets.get_mut(&self.user) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                buckets.remove(&self.user);
            }
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
    // Host names are compared without ports: a proxy in front (nginx's `Host $host`) drops the
    // port the browser used, and a page on another port of the same host is the same site.
    !origin_host.is_empty() && hostname(origin_host).eq_ignore_ascii_case(hostname(host))
}

/// `host[:port]` or `[v6]:port` without the port.
fn hostname(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
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
    fn connections_of_a_user_share_one_bucket_freed_with_the_last() {
        let buckets = Arc::new(UserBuckets::default());
        let a = buckets.join("ann", 1, 2);
        let b = buckets.join("ann", 1, 2);
        let other = buckets.join("bob", 1, 2);
        assert!(a.take().is_ok());
        assert!(b.take().is_ok());
        assert!(a.take().is_err(), "the burst is shared");
        assert!(other.take().is_ok(), "another user has their own");
        assert_eq!(buckets.len(), 2);
        drop(a);
        assert_eq!(buckets.len(), 2, "b still holds ann's bucket");
        drop(b);
        drop(other);
        assert!(buckets.is_empty(), "freed with the last connection");
    }

    #[test]
    fn the_gate_counts_per_ip_and_frees() {
        let gate = Arc::new(ConnectionGate::default());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = gate.admit(Some(ip), 3, 2).expect("first");
        let _b = gate.admit(Some(ip), 3, 2).expect("second");
        assert!(gate.admit(Some(ip), 3, 2).is_none(), "per-IP cap");
        let _c = gate
            .admit(Some([10, 0, 0, 2].into()), 3, 2)
            .expect("other ip");
        assert!(gate.admit(None, 3, 2).is_none(), "total cap");
        drop(a);
        assert!(gate.admit(Some(ip), 3, 2).is_some());
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &[]), "no Origin: not a browser");
        h.insert("host", "chat.example:8080".parse().expect("h"));
        h.insert("origin", "http://chat.example:8080".parse().expect("h"));
        assert!(origin_allowed(&h, &[]));
        h.insert("host", "chat.example".parse().expect("h"));
        assert!(origin_allowed(&h, &[]), "a proxy dropped the port");
        h.insert("origin", "https://evil.example".parse().expect("h"));
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["https://evil.example".to_owned()]));
    }
}
