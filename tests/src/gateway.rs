//! One `chat-gateway` process per [`Gateway`], on its own loopback port, logging to a file whose
//! tail is printed when a test fails.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::{
    Client, HttpResponse, Proc, file_tail, free_port, fresh_dir, gateway_bin, http_get, send_signal,
};

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
                    proc.keep_dir();
                    last_log = file_tail(proc.log(), 30);
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
                        proc.log().display(),
                        file_tail(proc.log(), 60)
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
        self.proc.pid()
    }

    /// The options it was started with.
    pub fn options(&self) -> &GatewayOptions {
        &self.options
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log()
    }

    /// The directory holding its log (a good place for its config files).
    pub fn dir(&self) -> &Path {
        self.proc.dir()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(self.proc.log(), lines)
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Sends SIGTERM (by PID).
    pub fn terminate(&self) {
        send_signal(self.proc.pid(), "TERM");
    }

    /// Sends SIGINT (by PID).
    pub fn interrupt(&self) {
        send_signal(self.proc.pid(), "INT");
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
