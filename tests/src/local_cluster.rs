//! `deploy/local-cluster` run for real: Redis on a free port, three gateways and nginx on a block
//! of four free ports, Prometheus not started (tests that want it start their own). Stopped with
//! SIGTERM (by PID) when dropped.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{
    free_port, fresh_dir, gateway_bin, http_get, read_to_string, wait_until, workspace_root,
};

/// The running script.
pub struct LocalCluster {
    /// The script's process.
    pub child: Child,
    /// nginx's port; gateways are on the next three.
    pub port: u16,
    /// The script's output (gateway pids are announced there).
    pub log: PathBuf,
    /// Its run directory (CHAT_CLUSTER_DIR).
    pub dir: PathBuf,
    /// The Redis it started.
    pub redis_port: u16,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Not `send_signal`: a panic in drop during a failing test would abort the process.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..300 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Four consecutive free loopback ports (nginx and three gateways).
pub fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base > 65000 {
            continue;
        }
        let all_free = (0..4).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no block of four free ports");
}

fn nginx_available() -> bool {
    Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl LocalCluster {
    /// Starts the script with `env` added (e.g. `CHAT__SERVER__DRAIN_SECS`) and waits until it
    /// reports ready.
    pub async fn start(env: &[(&str, &str)]) -> LocalCluster {
        assert!(
            nginx_available(),
            "nginx is required (apt-get install -y nginx); .ci/run installs it"
        );
        let bin = tokio::task::spawn_blocking(gateway_bin)
            .await
            .expect("gateway build");
        let dir = fresh_dir("local-cluster");
        let log = dir.join("local-cluster.log");
        let out = File::create(&log).expect("log file");
        let port = free_port_block();
        let redis_port = free_port();
        let child = Command::new("bash")
            .arg(workspace_root().join("deploy/local-cluster"))
            .env("CHAT_CLUSTER_PORT", port.to_string())
            .env("CHAT_REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("CHAT_GATEWAY_BIN", &bin)
            .env("CHAT_CLUSTER_DIR", &dir)
            .env("CHAT_PROMETHEUS_PORT", "0")
            .env("CHAT__LOG__LEVEL", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start deploy/local-cluster");
        let cluster = LocalCluster {
            child,
            port,
            log,
            dir,
            redis_port,
        };
        let ready = wait_until(Duration::from_secs(90), || async {
            read_to_string(&cluster.log).contains("local-cluster: ready")
        })
        .await;
        assert!(
            ready,
            "local-cluster did not become ready:\n{}",
            read_to_string(&cluster.log)
        );
        cluster
    }

    /// nginx's WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The port of gateway `i` (1-3).
    pub fn gateway_port(&self, i: u16) -> u16 {
        self.port + i
    }

    /// The pids the script announced for gateway `i` (1-3), oldest first (it starts a gateway
    /// again when one exits).
    pub fn gateway_pids(&self, i: u16) -> Vec<u32> {
        gateway_pids_in(&self.log, &format!("gateway{i} on "))
    }

    /// The latest pid of each gateway.
    pub fn current_gateway_pids(&self) -> Vec<u32> {
        (1..=3)
            .filter_map(|i| self.gateway_pids(i).last().copied())
            .collect()
    }

    /// The script's output so far.
    pub fn log_text(&self) -> String {
        read_to_string(&self.log)
    }

    /// The last `lines` lines of gateway `i`'s log.
    pub fn gateway_log_tail(&self, i: u16, lines: usize) -> String {
        crate::file_tail(&self.dir.join(format!("gateway{i}.log")), lines)
    }
}

fn gateway_pids_in(log: &Path, marker: &str) -> Vec<u32> {
    read_to_string(log)
        .lines()
        .filter(|l| l.contains(marker) && l.contains(" (pid "))
        .filter_map(|l| l.rsplit("(pid ").next()?.trim_end_matches(')').parse().ok())
        .collect()
}

/// `(node id, connections)` as `GET /api/node` on `port` reports them.
pub async fn node_info(port: u16) -> Option<(String, u64)> {
    let response = http_get(([127, 0, 0, 1], port).into(), "/api/node")
        .await
        .ok()?;
    let body = response.json();
    Some((
        body["node"].as_str()?.to_owned(),
        body["connections"].as_u64()?,
    ))
}

/// HTTP status of `GET path` on a local port (`None`: nothing answered).
pub async fn status_of(port: u16, path: &str) -> Option<u16> {
    http_get(([127, 0, 0, 1], port).into(), path)
        .await
        .ok()
        .map(|r| r.status)
}
