//! Shared helpers of the Redis integration tests: a private `redis-server` per test (never the
//! default port 6379), ids, drafts, and bounded waits.
//!
//! Every wait has a deadline of several seconds and polls instead of asserting on tight timings,
//! so the tests stay reliable on a slow, busy machine.

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_backend::redis_backend::{self, RedisConfig};
use chat_backend::{Backend, BrokerEvent, Draft, PresenceEntry};
use chat_protocol::{RoomId, UserId};
use tokio::sync::mpsc;

/// Upper bound of a whole test.
pub const TEST_DEADLINE: Duration = Duration::from_secs(90);
/// Upper bound of one wait inside a test.
pub const WAIT: Duration = Duration::from_secs(15);

/// A `redis-server` child process on a free port, killed (and reaped) on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl RedisServer {
    /// Starts a server on a free port with persistence disabled.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` and waits until it answers PING.
    pub fn start_on(port: u16) -> Self {
        assert_ne!(port, 6379, "tests never touch the default Redis port");
        let deadline = Instant::now() + WAIT;
        loop {
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be on PATH");
            loop {
                if ping(port) {
                    return RedisServer {
                        child: Some(child),
                        port,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    // Exited, e.g. the port was still held: try again until the deadline.
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server on port {port} did not answer PING in time");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} kept exiting"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the server process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// SIGKILLs the server (`kill -9`) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped process ignores nothing but SIGKILL, which is what kill() sends.
        self.kill();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// True when a Redis on `port` answers PING.
fn ping(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let ok = matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"));
    let _ = stream.shutdown(Shutdown::Both);
    ok
}

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
