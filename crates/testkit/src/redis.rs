//! A throwaway `redis-server` per test, on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::paths::fresh_dir;
use crate::process::{Proc, file_tail, send_signal};
use crate::wait::free_port;

/// One throwaway `redis-server` on a loopback port, killed on drop: without persistence, or (with
/// [`RedisServer::start_with_aof`]) with an append-only file in its own data directory.
/// `REDIS_SERVER_BIN` names another binary.
pub struct RedisServer {
    proc: Proc,
    port: u16,
    aof: bool,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` on a fresh port and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        Self::start_fresh(false, &[]).await
    }

    /// Like [`RedisServer::start`], with persistence: `appendonly yes`, `appendfsync everysec`, the
    /// AOF in the server's own data directory, which [`RedisServer::restart_graceful`] keeps.
    pub async fn start_with_aof() -> RedisServer {
        Self::start_fresh(true, &[]).await
    }

    /// Like [`RedisServer::start`], with more command-line options (e.g. `--requirepass`).
    /// Readiness is still checked with an unauthenticated `PING`, which Redis answers with
    /// `+PONG` or a `-NOAUTH` error: either proves it is up.
    pub async fn start_with_args(extra: &[&str]) -> RedisServer {
        Self::start_fresh(false, extra).await
    }

    async fn start_fresh(aof: bool, extra: &[&str]) -> RedisServer {
        let dir = fresh_dir("redis");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::start_on(&dir, port, aof, &extra).await {
                return server;
            }
        }
        panic!("redis-server could not start; see {}", dir.display());
    }

    /// Starts `redis-server` on `port` (a node under test may already be trying to reach it).
    pub async fn start_on_port(port: u16) -> RedisServer {
        let dir = fresh_dir("redis");
        match Self::start_on(&dir, port, false, &[]).await {
            Some(server) => server,
            None => panic!("redis-server could not start on port {port}"),
        }
    }

    async fn start_on(dir: &Path, port: u16, aof: bool, extra: &[String]) -> Option<RedisServer> {
        assert_ne!(port, 6379, "tests never touch the default Redis port");
        let bin = std::env::var_os("REDIS_SERVER_BIN").unwrap_or_else(|| "redis-server".into());
        let mut command = Command::new(bin);
        command
            .current_dir(dir)
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                if aof { "yes" } else { "no" },
                "--appendfsync",
                "everysec",
                "--dir",
                &dir.to_string_lossy(),
                "--bind",
                "127.0.0.1",
            ])
            .args(extra);
        let mut proc = Proc::spawn("redis-server", command, dir, "redis.log");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if proc.try_exit().is_some() {
                // Most often the port was taken meanwhile: the caller tries another.
                eprintln!(
                    "redis-server on port {port} exited at start; log:\n{}",
                    file_tail(proc.log(), 20)
                );
                proc.keep_dir();
                return None;
            }
            if redis_answers(port).await {
                return Some(RedisServer {
                    proc,
                    port,
                    aof,
                    extra: extra.to_vec(),
                });
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {port} did not answer PING within 20 s; log:\n{}",
                    file_tail(proc.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its data and log directory.
    pub fn dir(&self) -> PathBuf {
        self.proc.dir().to_path_buf()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...) to the server process, by its PID.
    pub fn signal(&self, signal: &str) {
        send_signal(self.proc.pid(), signal);
    }

    /// Kills it with SIGKILL (without AOF all data is lost; with it, up to the last second).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Kills it (SIGKILL) if it runs and starts it again on the same port, with the same options:
    /// empty without persistence; with AOF, from its append-only file (which may miss the last
    /// second of writes).
    pub async fn restart(&mut self) {
        self.proc.kill9();
        // The new process logs to the same directory: the old handle must not delete it.
        self.proc.keep_dir();
        let dir = self.proc.dir().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(server) = Self::start_on(&dir, self.port, self.aof, &self.extra).await {
                *self = server;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server could not restart on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops it cleanly (SIGTERM: Redis writes and fsyncs its AOF before exiting), leaves it down
    /// for `down`, and starts it again on the same port and data directory. With AOF, everything
    /// written survives.
    pub async fn restart_graceful(&mut self, down: Duration) {
        send_signal(self.proc.pid(), "TERM");
        if self.proc.wait_exit(Duration::from_secs(20)).await.is_none() {
            panic!(
                "redis-server did not exit within 20 s of SIGTERM; log:\n{}",
                file_tail(self.proc.log(), 40)
            );
        }
        tokio::time::sleep(down).await;
        self.restart().await;
    }

    /// Whether it answers `PING` (without credentials).
    pub async fn ping(&self) -> bool {
        redis_ping(self.port).await
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG` within 2 s.
pub async fn redis_ping(port: u16) -> bool {
    matches!(ping_reply(port).await, Some(reply) if reply.starts_with(b"+PONG"))
}

/// Whether a Redis on `port` is up: `+PONG`, or an authentication error from a server that
/// requires a password.
async fn redis_answers(port: u16) -> bool {
    matches!(ping_reply(port).await, Some(reply) if reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"))
}

async fn ping_reply(port: u16) -> Option<Vec<u8>> {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        Ok::<Vec<u8>, std::io::Error>(buf[..n].to_vec())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(reply)) => Some(reply),
        _ => None,
    }
}
