//! Shared helpers of the Redis integration tests: a private `redis-server` per test (never the
//! default port 6379; the fixture is `chat-testkit`'s, shared with the integration tests), ids,
//! drafts, and bounded waits.
//!
//! Every wait has a deadline of several seconds and polls instead of asserting on tight timings,
//! so the tests stay reliable on a slow, busy machine.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use chat_backend::redis_backend::{self, RedisConfig};
use chat_backend::{Backend, BrokerEvent, Draft, PresenceEntry};
use chat_protocol::{RoomId, UserId};
use tokio::sync::mpsc;

/// Upper bound of a whole test.
pub const TEST_DEADLINE: Duration = Duration::from_secs(90);
/// Upper bound of one wait inside a test.
pub const WAIT: Duration = Duration::from_secs(15);

#[allow(unused_imports)] // not every suite needs every helper
pub use chat_testkit::{RedisServer, free_port};

/// Test settings: short timeouts, given node id.
pub fn config(server: &RedisServer, node: &str) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        prefix: "chat:".to_owned(),
        node_id: node.to_owned(),
        presence_lease_ms: 15_000,
        history_per_room: 1000,
        cursor_ttl_secs: 3600,
        pool_size: 4,
        tls_ca_file: String::new(),
        command_timeout_ms: 1000,
    }
}

/// Opens a backend, failing the test if Redis does not answer.
pub async fn open(config: RedisConfig) -> Backend {
    redis_backend::open(config)
        .await
        .expect("open the redis backend")
}

/// Runs one raw command on the test's Redis (to plant data, inspect keys, kill clients).
pub async fn raw(server: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(server.url()).expect("client");
    let fut = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async::<redis::Value>(&mut conn)
            .await
            .expect("raw command")
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("raw command in time")
}

/// Raw command reply as a list of strings (for SMEMBERS, ZRANGE, ...).
pub async fn raw_strings(server: &RedisServer, args: &[&str]) -> Vec<String> {
    match raw(server, args).await {
        redis::Value::Array(items) | redis::Value::Set(items) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            })
            .collect(),
        redis::Value::Nil => Vec::new(),
        other => panic!("expected a list, got {other:?}"),
    }
}

pub fn room(id: &str) -> RoomId {
    RoomId::new(id).expect("room id")
}

pub fn user(id: &str) -> UserId {
    UserId::new(id).expect("user id")
}

/// A presence entry of `user` in `room`, vouching for no particular join (no epoch: the store
/// always restores it).
pub fn entry(room: &RoomId, user: &UserId, name: &str) -> PresenceEntry {
    joined_entry(room, user, name, "", 0)
}

/// A presence entry of `user` in `room` vouching for the join at `joined_at` in log `epoch`.
pub fn joined_entry(
    room: &RoomId,
    user: &UserId,
    name: &str,
    epoch: &str,
    joined_at: u64,
) -> PresenceEntry {
    PresenceEntry {
        room: room.clone(),
        user: user.clone(),
        user_name: name.to_owned(),
        epoch: epoch.to_owned(),
        joined_at,
    }
}

/// A draft message by `author`.
pub fn draft(author: &str, text: &str) -> Draft {
    Draft {
        user_id: user(author),
        user_name: author.to_uppercase(),
        content: text.to_owned(),
        client_msg_id: None,
    }
}

/// The next broker event, or `None` after `within`.
pub async fn next_event(
    events: &mut mpsc::Receiver<BrokerEvent>,
    within: Duration,
) -> Option<BrokerEvent> {
    tokio::time::timeout(within, events.recv())
        .await
        .ok()
        .flatten()
}

/// Skips events until one matches, failing the test after [`WAIT`].
pub async fn expect_event<T>(
    events: &mut mpsc::Receiver<BrokerEvent>,
    what: &str,
    mut pick: impl FnMut(BrokerEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = next_event(events, left).await else {
            panic!("no {what} within {WAIT:?}");
        };
        if let Some(found) = pick(event) {
            return found;
        }
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a test body with an overall deadline.
pub async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_DEADLINE, body)
        .await
        .expect("test exceeded its deadline");
}
