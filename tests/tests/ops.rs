//! Operating the gateway: log formats and log volume.

use chat_tests::Gateway;
use chat_tests::serde_json::{self, Value};

#[tokio::test]
async fn json_logs_by_config_and_no_line_per_chat_message_at_info() {
    let gw = Gateway::start(&[("CHAT__LOG__FORMAT", "json"), ("CHAT__LOG__LEVEL", "info")]).await;
    let mut a = gw.client().await.named("a");
    a.login("r", "a", "A").await;
    let before = gw.log_tail(10_000).lines().count();
    for i in 0..30 {
        a.post_and_wait("r", &format!("message {i}")).await;
    }
    a.recv_messages_in("r", 30).await;
    let log = gw.log_tail(10_000);
    let after = log.lines().count();
    assert!(
        after - before < 5,
        "30 chat messages wrote {} log lines at info",
        after - before
    );
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            entry.get("level").is_some() && entry.get("fields").is_some(),
            "{line}"
        );
    }
}
