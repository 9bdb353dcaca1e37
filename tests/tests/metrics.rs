//! Observability: `/metrics` in the Prometheus text format, scraped by a real Prometheus (Debian's
//! `prometheus`, started here on a free port with a generated config; `.ci/run` installs it), and
//! the health routes.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_tests::{
    Gateway, RedisServer, free_port, fresh_dir, http_get, read_to_string, wait_until,
};

/// A Prometheus process, killed by PID when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[u16]) -> Prometheus {
        let dir = fresh_dir("prometheus");
        let port = free_port();
        let targets = targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: chat-gateway\n    \
                 metrics_path: /metrics\n    static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let out = File::create(&log).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("prometheus is required (apt-get install -y prometheus); .ci/run installs it");
        Prometheus { child, port, log }
    }

    /// The result vector of an instant query (a bare metric name: no URL encoding needed).
    async fn query(&self, metric: &str) -> Vec<chat_tests::serde_json::Value> {
        let Ok(response) = http_get(
            ([127, 0, 0, 1], self.port).into(),
            &format!("/api/v1/query?query={metric}"),
        )
        .await
        else {
            return Vec::new();
        };
        if response.status != 200 {
            return Vec::new();
        }
        response.json()["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let gw = Gateway::start(&[
        ("CHAT__REDIS__URL", url.as_str()),
        ("CHAT__SERVER__NODE_ID", "metrics1"),
    ])
    .await;
    // Some traffic, so counters and the Redis latency histogram have samples.
    let mut a = gw.client().await.named("a");
    a.login("lobby", "alice", "Alice").await;
    a.post_and_wait("lobby", "hello").await;
    a.recv_message_in("lobby").await;

    let text = gw.get("/metrics").await;
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        text.header("content-type")
    );
    let body = text.text();
    for needle in [
        "chat_build_info{version=",
        "chat_connections 1",
        "chat_draining 0",
        "chat_posts_total",
        "chat_frames_in_total",
        "chat_frames_out_total",
        "chat_deliveries_total",
        "chat_connections_opened_total",
        "chat_redis_command_seconds_bucket{what=",
        "# TYPE chat_redis_command_seconds histogram",
    ] {
        assert!(body.contains(needle), "/metrics lacks {needle}:\n{body}");
    }
    // Bounded cardinality: no label carries a room or user id.
    assert!(
        !body.contains("lobby") && !body.contains("alice"),
        "a room or user leaked into a label:\n{body}"
    );

    let prometheus = Prometheus::start(&[gw.port()]);
    let scraped = wait_until(Duration::from_secs(60), || async {
        prometheus
            .query("chat_build_info")
            .await
            .iter()
            .any(|r| r["value"][1] == "1")
    })
    .await;
    assert!(
        scraped,
        "Prometheus never scraped chat_build_info:\n{}",
        read_to_string(&prometheus.log)
    );
    let posts = prometheus.query("chat_posts_total").await;
    assert!(
        posts
            .iter()
            .any(|r| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)),
        "{posts:?}"
    );
    let up = prometheus.query("up").await;
    assert!(up.iter().all(|r| r["value"][1] == "1"), "{up:?}");
}

#[tokio::test]
async fn health_routes() {
    let gw = Gateway::start(&[]).await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}
