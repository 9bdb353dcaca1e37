//! Test harness: real `chat-gateway` processes, real `redis-server` processes and real WebSocket
//! clients, every wait bounded by a deadline so a hanging server fails a test instead of hanging CI.
//!
//! - [`gateway_bin`] builds the gateway binary once per test process (`cargo build -p
//!   chat-gateway`, a no-op when it is up to date) and returns its path; `CHAT_GATEWAY_BIN`
//!   overrides it.
//! - [`Gateway`] runs one gateway process on its own port, logging to a file; on a failing test
//!   its log tail is printed.
//! - [`RedisServer`] runs one throwaway `redis-server` (for cluster tests).
//! - [`Client`] is a WebSocket client speaking protocol v1, decoding every frame with
//!   [`ServerFrame::decode`].
//! - [`http_get`] is a minimal HTTP/1.1 GET (no client library needed for a few GETs).
//! - [`wait_until`] polls a condition until a deadline.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_protocol::server::{ErrorFrame, Joined, Sent};
use chat_protocol::{ChatMessage, ErrorCode, PresenceNotice, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod cluster;
pub mod local_cluster;

pub use chat_protocol;
pub use serde_json;

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

// ---------------------------------------------------------------------------------------------
// Paths, ports, polling
// ---------------------------------------------------------------------------------------------

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root when relative),
/// else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// A fresh, empty directory for one test's files (logs, config files), under
/// `<target>/tmp/chat-tests/`.
pub fn fresh_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = target_dir()
        .join("tmp")
        .join("chat-tests")
        .join(format!("{label}-{}-{n}-{nanos:08x}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A [`fresh_dir`] that is removed when dropped, unless the test is failing (then it is kept for
/// inspection and its path printed).
pub struct TestDir(PathBuf);

impl TestDir {
    /// A fresh, empty directory.
    pub fn new(label: &str) -> TestDir {
        TestDir(fresh_dir(label))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released). Another process
/// may take it before it is used; [`Gateway::start`] retries with a new port when the bind fails.
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

/// Sends `signal` (e.g. `"TERM"`, `"KILL"`) to one process by its PID, with the system's `kill`
/// command (the workspace forbids `unsafe`, so no `libc::kill`).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run `kill -{signal} {pid}`: {e}"));
    assert!(status.success(), "`kill -{signal} {pid}` failed: {status}");
}

/// The last `lines` lines of a text file (for failure reports).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("<cannot open {}>", path.display());
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Path of the `chat-gateway` binary: `CHAT_GATEWAY_BIN` if set, else built once per test process
/// with `cargo build -p chat-gateway` (a no-op when it is up to date, so a stale binary is never
/// tested) and located through cargo's own artifact report.
pub fn gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CHAT_GATEWAY_BIN") {
            return PathBuf::from(bin);
        }
        build_gateway()
    })
    .clone()
}

fn build_gateway() -> PathBuf {
    build_bin("chat-gateway", "chat-gateway")
}

/// Path of the `chatctl` binary, built once per test process like [`gateway_bin`].
pub fn chatctl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("chatctl", "chatctl")).clone()
}

/// Path of the `chat-cli` binary, built once per test process like [`gateway_bin`].
pub fn chat_cli_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("chat-cli", "chat-cli"))
        .clone()
}

/// Builds `bin` of `package` (a no-op when it is up to date) and returns its path.
fn build_bin(package: &str, bin_name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin_name,
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    assert!(
        output.status.success(),
        "`cargo build -p {package}` failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executable = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin_name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from));
    let bin = executable.unwrap_or_else(|| target_dir().join("debug").join(bin_name));
    assert!(
        bin.exists(),
        "{bin_name} binary not found at {}",
        bin.display()
    );
    bin
}

/// A child process with its output in a log file; killed (SIGKILL) on drop. On a panicking test
/// the log's tail is printed and the directory kept.
struct Proc {
    name: &'static str,
    child: Option<Child>,
    pid: u32,
    dir: PathBuf,
    log: PathBuf,
    exit: Option<ExitStatus>,
    /// Remove `dir` on drop when the test passed.
    owns_dir: bool,
}

impl Proc {
    fn spawn(name: &'static str, mut command: Command, dir: &Path, log_name: &str) -> Proc {
        let log = dir.join(log_name);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log file handle");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Proc {
            name,
            pid: child.id(),
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
            exit: None,
            owns_dir: true,
        }
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    fn kill9(&mut self) {
        if self.try_exit().is_none()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log {} (last 60 lines) ----\n{}\n---- end of {} log ----",
                self.name,
                self.pid,
                self.log.display(),
                file_tail(&self.log, 60),
                self.name
            );
        } else if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// How to start a gateway: extra arguments and environment variables.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// Arguments after the binary name, e.g. `["--config", "/tmp/x.toml"]`.
    pub args: Vec<String>,
    /// `CHAT__...` (or other) variables; `CHAT__SERVER__LISTEN` is set by the harness.
    pub env: Vec<(String, String)>,
    /// Listen on this port instead of a fresh one (restarting a node on its old address).
    pub port: Option<u16>,
    /// Log file label (defaults to `gateway`).
    pub label: Option<String>,
}

impl GatewayOptions {
    /// Options with these environment variables.
    pub fn env(env: &[(&str, &str)]) -> Self {
        GatewayOptions {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    /// Adds command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// One running `chat-gateway` process.
pub struct Gateway {
    proc: Proc,
    addr: SocketAddr,
    options: GatewayOptions,
}

impl Gateway {
    /// Starts a gateway (embedded backend unless `env` sets `CHAT__REDIS__URL`) on a fresh loopback
    /// port and waits until `/healthz` answers. Panics (with the log tail) if it does not within
    /// 20 s.
    pub async fn start(env: &[(&str, &str)]) -> Gateway {
        Self::start_with(GatewayOptions::env(env)).await
    }

    /// Like [`Gateway::start`], with arguments too.
    pub async fn start_with(options: GatewayOptions) -> Gateway {
        let bin = tokio::task::spawn_blocking(gateway_bin)
            .await
            .expect("building chat-gateway panicked");
        let label = options.label.clone().unwrap_or_else(|| "gateway".into());
        let dir = fresh_dir(&label);
        let attempts = if options.port.is_some() { 1 } else { 5 };
        let mut last_log = String::new();
        for _ in 0..attempts {
            let port = options.port.unwrap_or_else(free_port);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut command = Command::new(&bin);
            command.args(&options.args);
            // Variables of the surrounding environment must not leak into the node under test.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("CHAT__") {
                    command.env_remove(&key);
                }
            }
            command
                .env_remove("RUST_LOG")
                .env("CHAT__LOG__LEVEL", "info,chat_gateway=debug")
                .env("CHAT__SERVER__LISTEN", addr.to_string());
            for (key, value) in &options.env {
                command.env(key, value);
            }
            let mut proc = Proc::spawn("chat-gateway", command, &dir, "gateway.log");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = proc.try_exit() {
                    // The next attempt logs to the same directory.
                    proc.owns_dir = false;
                    last_log = file_tail(&proc.log, 30);
                    eprintln!(
                        "chat-gateway on {addr} exited at start ({status}); log:\n{last_log}"
                    );
                    break;
                }
                if let Ok(response) = http_get(addr, "/healthz").await
                    && response.status == 200
                {
                    return Gateway {
                        proc,
                        addr,
                        options,
                    };
                }
                if Instant::now() >= deadline {
                    panic!(
                        "chat-gateway on {addr} did not answer /healthz within 20 s; log {}:\n{}",
                        proc.log.display(),
                        file_tail(&proc.log, 60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("chat-gateway could not start; last log:\n{last_log}");
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// The options it was started with.
    pub fn options(&self) -> &GatewayOptions {
        &self.options
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }

    /// The directory holding its log (a good place for its config files).
    pub fn dir(&self) -> &Path {
        &self.proc.dir
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.proc.log, lines)
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Sends SIGTERM (by PID).
    pub fn terminate(&self) {
        send_signal(self.proc.pid, "TERM");
    }

    /// Sends SIGINT (by PID).
    pub fn interrupt(&self) {
        send_signal(self.proc.pid, "INT");
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.proc.try_exit()
    }

    /// Waits for it to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// Starts a new process with the same options on the same port (after [`Gateway::kill9`] or a
    /// clean exit).
    pub async fn restart(&mut self) {
        self.proc.kill9();
        let mut options = self.options.clone();
        options.port = Some(self.addr.port());
        let fresh = Gateway::start_with(options).await;
        *self = fresh;
    }

    /// `GET path` on it.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.addr))
    }

    /// Whether `/healthz` answers 200.
    pub async fn healthy(&self) -> bool {
        matches!(http_get(self.addr, "/healthz").await, Ok(r) if r.status == 200)
    }

    /// A new WebSocket client connected to it.
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }
}

/// One throwaway `redis-server` on a loopback port, killed on drop: without persistence, or (with
/// [`RedisServer::start_with_aof`]) with an append-only file in its own data directory.
pub struct RedisServer {
    proc: Proc,
    port: u16,
    aof: bool,
}

impl RedisServer {
    /// Starts `redis-server` (or `REDIS_SERVER_BIN`) on a fresh port and waits until it answers
    /// `PING`.
    pub async fn start() -> RedisServer {
        Self::start_fresh(false).await
    }

    /// Like [`RedisServer::start`], with persistence: `appendonly yes`, `appendfsync everysec`, the
    /// AOF in the server's own data directory, which [`RedisServer::restart_graceful`] keeps.
    pub async fn start_with_aof() -> RedisServer {
        Self::start_fresh(true).await
    }

    async fn start_fresh(aof: bool) -> RedisServer {
        let dir = fresh_dir("redis");
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::start_on(&dir, port, aof).await {
                return server;
            }
        }
        panic!("redis-server could not start; see {}", dir.display());
    }

    /// Starts `redis-server` on `port` (a node under test may already be trying to reach it).
    pub async fn start_on_port(port: u16) -> RedisServer {
        let dir = fresh_dir("redis");
        match Self::start_on(&dir, port, false).await {
            Some(server) => server,
            None => panic!("redis-server could not start on port {port}"),
        }
    }

    async fn start_on(dir: &Path, port: u16, aof: bool) -> Option<RedisServer> {
        let bin = std::env::var_os("REDIS_SERVER_BIN").unwrap_or_else(|| "redis-server".into());
        let mut command = Command::new(bin);
        command.current_dir(dir).args([
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
        ]);
        let mut proc = Proc::spawn("redis-server", command, dir, "redis.log");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if proc.try_exit().is_some() {
                eprintln!(
                    "redis-server on port {port} exited at start; log:\n{}",
                    file_tail(&proc.log, 20)
                );
                return None;
            }
            if redis_ping(port).await {
                return Some(RedisServer { proc, port, aof });
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {port} did not answer PING within 20 s; log:\n{}",
                    file_tail(&proc.log, 40)
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
        self.proc.pid
    }

    /// Kills it with SIGKILL (without AOF all data is lost; with it, up to the last second).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Kills it (SIGKILL) if it runs and starts it again on the same port: empty without
    /// persistence; with AOF, from its append-only file (which may miss the last second of writes).
    pub async fn restart(&mut self) {
        self.proc.kill9();
        // The new process logs to the same directory: the old handle must not delete it.
        self.proc.owns_dir = false;
        let dir = self.proc.dir.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(server) = Self::start_on(&dir, self.port, self.aof).await {
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
        send_signal(self.proc.pid, "TERM");
        if self.proc.wait_exit(Duration::from_secs(20)).await.is_none() {
            panic!(
                "redis-server did not exit within 20 s of SIGTERM; log:\n{}",
                file_tail(&self.proc.log, 40)
            );
        }
        tokio::time::sleep(down).await;
        self.restart().await;
    }

    /// Whether it answers `PING`.
    pub async fn ping(&self) -> bool {
        redis_ping(self.port).await
    }
}

async fn redis_ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh HTTP/1.1 connection (`Connection: close`), bounded by
/// [`default_timeout`]. `path` is sent as is (percent-encode it yourself).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    match tokio::time::timeout(default_timeout(), exchange).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("GET {path} timed out"),
        )),
    }
}

fn parse_http_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// What [`Client::next_event`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decoded server frame.
    Frame(ServerFrame),
    /// The server closed the connection: the close code, if a close frame carried one.
    Closed(Option<u16>),
}

/// A protocol v1 WebSocket client. Every wait is bounded by the client's timeout
/// ([`default_timeout`] unless set).
///
/// Receiving works like a mailbox: the `recv_*` helpers return the *earliest* unconsumed frame
/// that matches, and frames they pass over stay in [`Client::pending`] for later helpers (so a
/// test can wait for `sent` and `message` in either order) or for inspection.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// A name for failure messages.
    pub label: String,
    /// Frames received but not consumed yet, oldest first.
    pub pending: VecDeque<ServerFrame>,
    closed: Option<Option<u16>>,
    timeout: Duration,
}

impl Client {
    /// Connects to `url` (a `ws://` URL), within [`default_timeout`].
    pub async fn connect(url: &str) -> Client {
        let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
        let (ws, _) = tokio::time::timeout(default_timeout(), connecting)
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Client {
            ws,
            label: "client".into(),
            pending: VecDeque::new(),
            closed: None,
            timeout: default_timeout(),
        }
    }

    /// Names the client in failure messages.
    pub fn named(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The bound of each wait of this client.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_raw_text(value.to_string()).await;
    }

    /// Sends a text frame as is.
    pub async fn send_raw_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.send(Message::text(text)).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await;
    }

    /// Sends a raw WebSocket message; panics if it cannot be sent.
    pub async fn send(&mut self, message: Message) {
        let label = self.label.clone();
        tokio::time::timeout(self.timeout, self.ws.send(message))
            .await
            .unwrap_or_else(|_| panic!("{label}: send timed out"))
            .unwrap_or_else(|e| panic!("{label}: send failed: {e}"));
    }

    /// Reads the socket for the next frame or close within `timeout`, ignoring [`Client::pending`];
    /// `None` when nothing came. Pings and pongs are consumed silently (reading answers pings).
    /// Panics on an undecodable or binary frame: the server must never send one.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(code) = self.closed {
            return Some(Event::Closed(code));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            let message = match next {
                None => return Some(self.mark_closed(None)),
                Some(Err(e)) => {
                    eprintln!("{}: connection error: {e}", self.label);
                    return Some(self.mark_closed(None));
                }
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    let frame = ServerFrame::decode(text.as_str()).unwrap_or_else(|e| {
                        panic!("{}: undecodable server frame ({e}): {text}", self.label)
                    });
                    return Some(Event::Frame(frame));
                }
                Message::Close(frame) => {
                    let code = frame.map(|f| u16::from(f.code));
                    return Some(self.mark_closed(code));
                }
                Message::Binary(b) => panic!("{}: server sent a binary frame: {b:?}", self.label),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    fn mark_closed(&mut self, code: Option<u16>) -> Event {
        self.closed = Some(code);
        Event::Closed(code)
    }

    /// True once the server closed the connection (as far as this client has read).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The earliest unconsumed frame; panics on close or timeout.
    pub async fn recv_frame(&mut self) -> ServerFrame {
        self.recv_match("any frame", |f| Some(f.clone())).await
    }

    /// The earliest unconsumed frame for which `pick` returns `Some`, reading the socket as long as
    /// needed; the frames passed over stay in [`Client::pending`]. Panics (naming `what`) on close
    /// or when nothing matched within the client's timeout.
    pub async fn recv_match<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> T {
        for i in 0..self.pending.len() {
            if let Some(found) = pick(&self.pending[i]) {
                self.pending.remove(i);
                return found;
            }
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(frame)) => match pick(&frame) {
                    Some(found) => return found,
                    None => self.pending.push_back(frame),
                },
                Some(Event::Closed(code)) => panic!(
                    "{}: connection closed ({code:?}) while waiting for {what}; unconsumed: {:#?}",
                    self.label, self.pending
                ),
                None => panic!(
                    "{}: no {what} within {:?}; unconsumed: {:#?}",
                    self.label, self.timeout, self.pending
                ),
            }
        }
    }

    /// The earliest unconsumed frame satisfying `pred` (see [`Client::recv_match`]).
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> ServerFrame {
        self.recv_match(what, |f| pred(f).then(|| f.clone())).await
    }

    /// Takes the unconsumed frames.
    pub fn take_pending(&mut self) -> Vec<ServerFrame> {
        self.pending.drain(..).collect()
    }

    /// Reads until the server closes the connection and returns the close code (`None` when the
    /// connection ended without a close frame). Frames before it go to [`Client::pending`].
    /// Panics when it is still open after the client's timeout.
    pub async fn expect_close_code(&mut self) -> Option<u16> {
        let timeout = self.timeout;
        self.expect_close_within(timeout).await
    }

    /// [`Client::expect_close_code`] with an explicit bound.
    pub async fn expect_close_within(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(frame)) => self.pending.push_back(frame),
                Some(Event::Closed(code)) => return code,
                None => panic!("{}: still open after {timeout:?}", self.label),
            }
        }
    }

    /// Keeps reading (and so answering pings) for `duration`, asserting the connection stays open.
    /// Frames received meanwhile go to [`Client::pending`].
    pub async fn stay_open_for(&mut self, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_event(left).await {
                Some(Event::Frame(frame)) => self.pending.push_back(frame),
                Some(Event::Closed(code)) => panic!(
                    "{}: closed ({code:?}) while it should have stayed open; unconsumed: {:#?}",
                    self.label, self.pending
                ),
                None => return,
            }
        }
    }

    /// Closes the connection from the client side (a normal close handshake, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
        // Drain until the server's close arrives or the socket ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    // -- protocol helpers ----------------------------------------------------------------------

    /// Sends `login` and waits for `joined` (other frames stay pending); returns it.
    pub async fn login(&mut self, room: &str, user: &str, name: &str) -> Joined {
        self.send_json(json!({"event": "login", "roomId": room, "userId": user, "userName": name}))
            .await;
        self.expect_joined(room).await
    }

    /// Waits for the `joined` reply of `room`.
    pub async fn expect_joined(&mut self, room: &str) -> Joined {
        self.recv_match(&format!("joined {room}"), |f| match f {
            ServerFrame::Joined(j) if j.room_id.as_str() == room => Some(j.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a `login` frame (any fields), waits for `joined`, then reads the replayed messages it
    /// announces, which must follow it immediately. Returns both.
    pub async fn login_replay(&mut self, frame: Value) -> (Joined, Vec<ChatMessage>) {
        let room = match &frame["roomId"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.send_json(frame).await;
        let joined = self.expect_joined(&room).await;
        let mut replayed = Vec::new();
        while (replayed.len() as u64) < joined.replayed {
            match self.recv_frame().await {
                ServerFrame::Message(m) => replayed.push(m),
                other => panic!(
                    "{}: expected {} replayed messages right after `joined`, got {other:?} after {}",
                    self.label,
                    joined.replayed,
                    replayed.len()
                ),
            }
        }
        (joined, replayed)
    }

    /// Posts to a room.
    pub async fn post(&mut self, room: &str, content: &str) {
        self.send_json(json!({"event": "message", "roomId": room, "content": content}))
            .await;
    }

    /// Posts to a room with a `clientMsgId`.
    pub async fn post_with_id(&mut self, room: &str, content: &str, client_msg_id: &str) {
        self.send_json(json!({
            "event": "message", "roomId": room, "content": content, "clientMsgId": client_msg_id
        }))
        .await;
    }

    /// Posts to a room and waits for its `sent` receipt.
    pub async fn post_and_wait(&mut self, room: &str, content: &str) -> Sent {
        let id = format!("auto-{}", NEXT_MSG_ID.fetch_add(1, Ordering::Relaxed));
        self.post_with_id(room, content, &id).await;
        self.recv_match(&format!("sent {id}"), |f| match f {
            ServerFrame::Sent(s) if s.client_msg_id.as_deref() == Some(id.as_str()) => {
                Some(s.clone())
            }
            ServerFrame::Error(e) if e.reference.as_deref() == Some(id.as_str()) => {
                panic!("posting {content:?} to {room} failed: {e:?}")
            }
            _ => None,
        })
        .await
    }

    /// Waits for the next chat message of `room` (other frames stay pending).
    pub async fn recv_message_in(&mut self, room: &str) -> ChatMessage {
        self.recv_match(&format!("message in {room}"), |f| match f {
            ServerFrame::Message(m) if m.room_id.as_ref().is_some_and(|r| r.as_str() == room) => {
                Some(m.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for the next chat message of any stream.
    pub async fn recv_message(&mut self) -> ChatMessage {
        self.recv_match("message", |f| match f {
            ServerFrame::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the next direct message (a message with `toUserId`).
    pub async fn recv_direct(&mut self) -> ChatMessage {
        self.recv_match("direct message", |f| match f {
            ServerFrame::Message(m) if m.to_user_id.is_some() => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for `n` chat messages of `room`.
    pub async fn recv_messages_in(&mut self, room: &str, n: usize) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.recv_message_in(room).await);
        }
        out
    }

    /// Waits for a `sent` receipt.
    pub async fn recv_sent(&mut self) -> Sent {
        self.recv_match("sent", |f| match f {
            ServerFrame::Sent(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a `login` notice about `user` in `room`.
    pub async fn recv_login_of(&mut self, room: &str, user: &str) -> PresenceNotice {
        self.recv_match(&format!("login notice of {user} in {room}"), |f| match f {
            ServerFrame::Login(n) if n.room_id.as_str() == room && n.user_id.as_str() == user => {
                Some(n.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for a `logout` notice about `user` in `room`.
    pub async fn recv_logout_of(&mut self, room: &str, user: &str) -> PresenceNotice {
        self.recv_match(&format!("logout notice of {user} in {room}"), |f| match f {
            ServerFrame::Logout(n) if n.room_id.as_str() == room && n.user_id.as_str() == user => {
                Some(n.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for the next `error` frame.
    pub async fn recv_error(&mut self) -> ErrorFrame {
        self.recv_match("error", |f| match f {
            ServerFrame::Error(e) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the next `error` frame and checks its code.
    pub async fn expect_error(&mut self, code: ErrorCode) -> ErrorFrame {
        let error = self.recv_error().await;
        assert_eq!(
            error.code, code,
            "{}: expected error {code}, got {error:?}",
            self.label
        );
        error
    }

    /// Sends an application-level `heartBeat` and waits for the pong.
    pub async fn ping_pong(&mut self) {
        self.send_json(json!({"event": "heartBeat", "content": "ping"}))
            .await;
        self.recv_match("heartBeat pong", |f| match f {
            ServerFrame::HeartBeat { content } if content == "pong" => Some(()),
            _ => None,
        })
        .await;
    }
}

static NEXT_MSG_ID: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client
// ---------------------------------------------------------------------------------------------

/// A frame as read by [`RawClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The (unmasked) payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A hand-rolled WebSocket client over a plain TCP stream that never writes anything unless told
/// to: it does not answer pings, so it plays a client that went silent (a frozen process, a dead
/// network) while its socket stays open. Reading it later does not write either, so the server's
/// close frame can always be observed.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and completes the WebSocket handshake on `/ws`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let connecting = async {
            let mut stream = TcpStream::connect(addr).await?;
            let request = format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let end = loop {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed during the handshake"));
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                return Err(std::io::Error::other(format!("handshake refused: {head}")));
            }
            Ok(RawClient {
                stream,
                buf: buf[end..].to_vec(),
            })
        };
        tokio::time::timeout(default_timeout(), connecting)
            .await
            .unwrap_or_else(|_| panic!("raw WebSocket connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("raw WebSocket connect to {addr}: {e}"))
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x5Au8, 0xA5, 0x3C, 0xC3];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        tokio::time::timeout(default_timeout(), self.stream.write_all(&frame))
            .await
            .expect("raw send timed out")
            .expect("raw send failed");
    }

    /// Sends bytes as they are (hand-made frames that break the protocol).
    pub async fn send_raw_bytes(&mut self, bytes: &[u8]) {
        tokio::time::timeout(default_timeout(), self.stream.write_all(bytes))
            .await
            .expect("raw send timed out")
            .expect("raw send failed");
    }

    /// Reads frames until the server closes (a close frame, or the end of the stream) or `timeout`
    /// passes. Never writes. Returns every frame read.
    pub async fn read_until_closed(&mut self, timeout: Duration) -> Vec<RawFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.parse_frame() {
                let close = frame.opcode == 8;
                frames.push(frame);
                if close {
                    return frames;
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return frames,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse_frame(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        let mask = if masked {
            let m = b.get(at..at + 4)?.to_vec();
            at += 4;
            Some(m)
        } else {
            None
        };
        let mut payload = b.get(at..at + len)?.to_vec();
        if let Some(m) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= m[i % 4];
            }
        }
        self.buf.drain(..at + len);
        Some(RawFrame { opcode, payload })
    }
}

/// Checks that `messages` are consecutive seqs `first, first+1, ...` of one epoch.
pub fn assert_consecutive(messages: &[ChatMessage], first: u64) {
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(
            m.seq,
            first + i as u64,
            "message {i} has seq {} (expected {}); all seqs: {:?}",
            m.seq,
            first + i as u64,
            messages.iter().map(|m| m.seq).collect::<Vec<_>>()
        );
        assert_eq!(m.epoch, messages[0].epoch, "epoch changed within a run");
    }
}

/// The seqs of `messages`.
pub fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Reads a whole file to a string (test convenience).
pub fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    s
}
