//! The deployment topology: `deploy/local-cluster` (Redis, three gateways, nginx with
//! `deploy/nginx.conf`) run for real, and `docker-compose.yml` kept identical to it.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_tests::chat_protocol::ServerFrame;
use chat_tests::serde_json::json;
use chat_tests::{
    Client, free_port, fresh_dir, gateway_bin, http_get, read_to_string, wait_until, workspace_root,
};

/// The script, stopped with SIGTERM (by PID) when dropped.
struct LocalCluster {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
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
        for _ in 0..100 {
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
fn free_port_block() -> u16 {
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

async fn start_local_cluster() -> LocalCluster {
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
        .env("CHAT__LOG__LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start deploy/local-cluster");
    let cluster = LocalCluster { child, port, log };
    let ready = wait_until(Duration::from_secs(60), || async {
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

async fn node_info(port: u16) -> Option<(String, u64)> {
    let response = http_get(([127, 0, 0, 1], port).into(), "/api/node")
        .await
        .ok()?;
    let body = response.json();
    Some((
        body["node"].as_str()?.to_owned(),
        body["connections"].as_u64()?,
    ))
}

fn gateway_pids(log: &Path) -> Vec<u32> {
    read_to_string(log)
        .lines()
        .filter(|l| l.contains(" (pid "))
        .filter_map(|l| l.rsplit("(pid ").next()?.trim_end_matches(')').parse().ok())
        .collect()
}

#[tokio::test]
async fn local_cluster_behind_nginx_is_one_chat_server() {
    let cluster = start_local_cluster().await;
    let url = format!("ws://127.0.0.1:{}/ws", cluster.port);

    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect(&url).await.named(format!("c{i}"));
        c.login("lobby", &format!("u{i}"), &format!("User {i}"))
            .await;
        clients.push(c);
    }
    // nginx spread the WebSockets over the gateways.
    let mut per_node = Vec::new();
    for i in 1..=3 {
        per_node.push(
            node_info(cluster.port + i)
                .await
                .expect("gateway answers /api/node"),
        );
    }
    let total: u64 = per_node.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 6, "{per_node:?}");
    assert!(
        per_node.iter().filter(|(_, n)| *n > 0).count() >= 2,
        "least_conn used several gateways: {per_node:?}"
    );
    assert_eq!(
        per_node
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        vec!["gateway1", "gateway2", "gateway3"]
    );

    clients[0].post_and_wait("lobby", "hello everyone").await;
    for c in clients.iter_mut() {
        let m = c.recv_message_in("lobby").await;
        assert_eq!(
            (m.seq, m.content.as_str()),
            (1, "hello everyone"),
            "{}",
            c.label
        );
    }
    let rooms = http_get(([127, 0, 0, 1], cluster.port).into(), "/api/rooms")
        .await
        .expect("rooms")
        .json();
    assert_eq!(rooms["rooms"][0]["num"], 6);

    // A gateway dies: nginx keeps accepting chat on the others, and the users it held return
    // with what they missed.
    let pids = gateway_pids(&cluster.log);
    assert_eq!(pids.len(), 3, "gateway pids in the script's output");
    chat_tests::send_signal(pids[1], "KILL");
    let mut poster = Client::connect(&url).await.named("poster");
    poster.login("lobby", "u9", "Poster").await;
    poster.post_and_wait("lobby", "after the crash").await;
    for i in 0..3 {
        let mut c = Client::connect(&url).await.named(format!("late{i}"));
        c.send_json(json!({"event":"login","roomId":"lobby","userId":format!("u{i}"),"userName":"again","since":1})).await;
        let m = c
            .recv_match("replayed message", |f| match f {
                ServerFrame::Message(m) if m.seq == 2 => Some(m.clone()),
                _ => None,
            })
            .await;
        assert_eq!(m.content, "after the crash");
    }

    // Stopping the script stops everything it started: sessions get 1012, ports are released.
    let mut cluster = cluster;
    chat_tests::send_signal(cluster.child.id(), "TERM");
    let code = poster.expect_close_within(Duration::from_secs(20)).await;
    assert!(matches!(code, Some(1012) | None), "close code {code:?}");
    let mut exited = None;
    for _ in 0..200 {
        exited = cluster.child.try_wait().expect("script status");
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = read_to_string(&cluster.log);
    assert!(
        exited.is_some(),
        "local-cluster did not exit on SIGTERM:\n{log}"
    );
    assert!(log.contains("local-cluster: stopped"), "{log}");
    for i in 0..4 {
        assert!(
            TcpListener::bind(("127.0.0.1", cluster.port + i)).is_ok(),
            "port {} still in use after the script stopped:\n{log}",
            cluster.port + i
        );
    }
}

/// The values `deploy/local-cluster` uses by default, as they appear in docker-compose.yml.
#[test]
fn docker_compose_matches_the_local_cluster_script() {
    let root = workspace_root();
    let compose = read_to_string(&root.join("docker-compose.yml"));
    let script = read_to_string(&root.join("deploy/local-cluster"));
    let nginx = read_to_string(&root.join("deploy/nginx.conf"));

    // Script defaults.
    assert!(script.contains("port=${CHAT_CLUSTER_PORT:-8080}"));
    assert!(script.contains("redis_url=${CHAT_REDIS_URL:-redis://127.0.0.1:6379}"));
    assert!(script.contains("CHAT__SERVER__NODE_ID=gateway$i"));
    assert!(script.contains(r#"--save "" --appendonly no"#));
    assert!(script.contains("nginx -p") && script.contains("deploy/nginx.conf"));

    // The same topology in compose: three gateways on 8081-8083 named gateway1-3, one Redis on
    // 6379 with the same persistence settings, nginx with the same config file, host network.
    for i in 1..=3 {
        assert!(
            compose.contains(&format!("gateway{i}:")),
            "service gateway{i}"
        );
        assert!(
            compose.contains(&format!("CHAT__SERVER__LISTEN: \"127.0.0.1:808{i}\"")),
            "gateway{i} listen"
        );
        assert!(
            compose.contains(&format!("CHAT__SERVER__NODE_ID: \"gateway{i}\"")),
            "gateway{i} node id"
        );
        assert!(
            nginx.contains(&format!("server 127.0.0.1:808{i} ")),
            "nginx upstream gateway{i}"
        );
    }
    assert_eq!(
        compose
            .matches("CHAT__REDIS__URL: \"redis://127.0.0.1:6379\"")
            .count(),
        3
    );
    assert!(compose.contains(r#""--port", "6379", "--save", "", "--appendonly", "no""#));
    assert!(compose.contains("./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"));
    assert!(nginx.contains("listen 127.0.0.1:8080;"));
    assert_eq!(
        compose.matches("network_mode: host").count(),
        3,
        "redis, the gateway anchor and nginx"
    );
    // No other CHAT__ settings in compose than the ones the script sets.
    let compose_keys: std::collections::BTreeSet<&str> = compose
        .split_whitespace()
        .filter(|w| w.starts_with("CHAT__"))
        .map(|w| w.trim_end_matches(':'))
        .collect();
    let script_keys: std::collections::BTreeSet<&str> = script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .filter(|w| w.starts_with("CHAT__") && w.contains('='))
        .map(|w| w.split('=').next().unwrap_or(w))
        .collect();
    assert_eq!(compose_keys, script_keys);
}
