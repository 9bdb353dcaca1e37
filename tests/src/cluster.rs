//! A cluster for tests: one real `redis-server` and three gateway processes on it.

use std::process::Command;
use std::time::Duration;

use crate::{Client, Gateway, GatewayOptions, RedisServer, wait_until};

/// A Redis and three gateways on it.
pub struct Cluster {
    /// The shared Redis.
    pub redis: RedisServer,
    /// The gateways, `n1`..`n3`.
    pub nodes: Vec<Gateway>,
}

impl Cluster {
    /// Starts Redis and three ready gateways (`extra` environment on top of short presence and
    /// sync intervals).
    pub async fn start(extra: &[(&str, &str)]) -> Cluster {
        Self::start_on(RedisServer::start().await, extra).await
    }

    /// The same, on a given Redis (e.g. one with AOF persistence).
    pub async fn start_on(redis: RedisServer, extra: &[(&str, &str)]) -> Cluster {
        let url = redis.url();
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let node_id = format!("n{i}");
            let mut env: Vec<(&str, &str)> = vec![
                ("CHAT__REDIS__URL", url.as_str()),
                ("CHAT__SERVER__NODE_ID", node_id.as_str()),
                ("CHAT__PRESENCE__TTL_SECS", "4"),
                ("CHAT__CLUSTER__SYNC_INTERVAL_SECS", "1"),
                ("CHAT__REDIS__COMMAND_TIMEOUT_MS", "1000"),
            ];
            env.extend_from_slice(extra);
            let mut options = GatewayOptions::env(&env);
            options.label = Some(format!("node{i}"));
            nodes.push(Gateway::start_with(options).await);
        }
        for node in &nodes {
            assert!(
                wait_until(Duration::from_secs(20), || async {
                    node.get("/readyz").await.status == 200
                })
                .await,
                "node not ready:\n{}",
                node.log_tail(40)
            );
        }
        Cluster { redis, nodes }
    }

    /// A client connected to node `node` (0-based).
    pub async fn client(&self, node: usize, label: &str) -> Client {
        self.nodes[node].client().await.named(label)
    }

    /// Runs `redis-cli` against the cluster's Redis; its trimmed output.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// `(num, total)` of a room as `GET /api/rooms` on `node` reports it.
pub async fn room_counts(node: &Gateway, room: &str) -> Option<(u64, u64)> {
    let body = node.get("/api/rooms").await.json();
    body["rooms"]
        .as_array()?
        .iter()
        .find(|r| r["roomId"] == room)
        .map(|r| {
            (
                r["num"].as_u64().unwrap_or(u64::MAX),
                r["total"].as_u64().unwrap_or(u64::MAX),
            )
        })
}
