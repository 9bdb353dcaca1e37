//! The deployment topology: `deploy/local-cluster` (Redis, three gateways, nginx with
//! `deploy/nginx.conf`) run for real, and `docker-compose.yml` kept identical to it.

use std::net::TcpListener;
use std::time::Duration;

use chat_tests::chat_protocol::ServerFrame;
use chat_tests::local_cluster::{LocalCluster, node_info};
use chat_tests::serde_json::json;
use chat_tests::{Client, http_get, read_to_string, workspace_root};

#[tokio::test]
async fn local_cluster_behind_nginx_is_one_chat_server() {
    let cluster = LocalCluster::start(&[]).await;
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
    let pids = cluster.current_gateway_pids();
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
    assert!(script.contains(r#"--save "" --appendonly yes --appendfsync everysec"#));
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
    // The same persistence: AOF fsynced every second, on a named volume in compose (the script
    // keeps it in its run directory).
    assert!(compose.contains(
        r#""--port", "6379", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", "/data""#
    ));
    assert!(compose.contains("- redis-data:/data") && compose.contains("\n  redis-data:\n"));
    assert!(compose.contains("./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"));
    assert!(nginx.contains("listen 127.0.0.1:8080;"));
    assert_eq!(
        compose.matches("network_mode: host").count(),
        5,
        "redis, the gateway anchor, nginx, prometheus and grafana"
    );
    // Gateways that exit are started again by both.
    assert!(compose.contains("restart: unless-stopped"));
    assert!(script.contains("exited; starting it again"));
    // The image is built once (gateway2 and gateway3 reuse it), runs as a non-root user and has a
    // health check.
    assert_eq!(compose.matches("build:").count(), 1);
    assert_eq!(compose.matches("pull_policy: never").count(), 2);
    let dockerfile = read_to_string(&root.join("Dockerfile"));
    assert!(dockerfile.contains("\nUSER chat\n"), "non-root user");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/readyz"));
    assert!(
        dockerfile.contains("--mount=type=cache"),
        "dependency builds cached"
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

/// The monitoring profile of compose and the script's Prometheus scrape the same gateways with the
/// same file, and the Grafana dashboard only charts metrics the gateway exports.
#[test]
fn monitoring_profile_matches_the_local_cluster_script() {
    let root = workspace_root();
    let compose = read_to_string(&root.join("docker-compose.yml"));
    let script = read_to_string(&root.join("deploy/local-cluster"));
    let prometheus = read_to_string(&root.join("deploy/prometheus.yml"));

    assert_eq!(compose.matches(r#"profiles: ["monitoring"]"#).count(), 2);
    assert!(compose.contains("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    assert!(compose.contains("--web.listen-address=127.0.0.1:9090"));
    assert!(script.contains("prometheus_port=${CHAT_PROMETHEUS_PORT:-9090}"));
    assert!(script.contains(r#""$repo/deploy/prometheus.yml""#));
    assert!(script.contains("--web.listen-address=\"127.0.0.1:$prometheus_port\""));
    assert!(
        prometheus.contains(r#"targets: ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]"#)
    );
    assert!(prometheus.contains("metrics_path: /metrics"));
    // Grafana: the data source points at that Prometheus, the dashboard file is mounted.
    let datasource =
        read_to_string(&root.join("deploy/grafana/provisioning/datasources/prometheus.yml"));
    assert!(datasource.contains("url: http://127.0.0.1:9090"));
    assert!(compose.contains(
        "./deploy/grafana/chat-cluster.json:/var/lib/grafana/dashboards/chat-cluster.json:ro"
    ));

    let dashboard: chat_tests::serde_json::Value = chat_tests::serde_json::from_str(
        &read_to_string(&root.join("deploy/grafana/chat-cluster.json")),
    )
    .expect("the dashboard is JSON");
    let exported = [
        "crates/gateway/src/metrics.rs",
        "crates/backend/src/redis_backend/mod.rs",
        "crates/backend/src/redis_backend/broker.rs",
    ]
    .map(|p| read_to_string(&root.join(p)))
    .join("\n");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "a dashboard worth the name");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("chat_"));
            for name in names {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    exported.contains(&format!("\"{base}\"")),
                    "the dashboard charts {name}, which the gateway does not export"
                );
            }
        }
    }
}
