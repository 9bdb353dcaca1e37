//! The harness's own pieces that the other files do not exercise: the throwaway Redis server
//! (for cluster tests), SIGKILL and restarting a gateway on its port.

use chat_tests::{Gateway, RedisServer, http_get, wait_until};
use std::time::Duration;

#[tokio::test]
async fn redis_server_starts_dies_and_restarts() {
    let mut redis = RedisServer::start().await;
    assert!(redis.ping().await);
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    let port = redis.port();
    redis.kill9();
    assert!(!redis.ping().await, "killed");
    redis.restart().await;
    assert_eq!(redis.port(), port, "same address after a restart");
    assert!(redis.ping().await);
}

#[tokio::test]
async fn gateway_kill9_and_restart_on_the_same_port() {
    let mut gw = Gateway::start(&[]).await;
    let mut a = gw.client().await;
    a.login("room", "alice", "Alice").await;
    a.post_and_wait("room", "before the crash").await;
    let addr = gw.addr();
    gw.kill9();
    assert!(gw.try_exit().is_some());
    // The killed node's clients see their connection end without a close frame.
    assert_eq!(a.expect_close_code().await, None);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            http_get(addr, "/healthz").await.is_err()
        })
        .await
    );

    gw.restart().await;
    assert_eq!(gw.addr(), addr);
    // The embedded backend keeps nothing: the room starts over.
    let mut a = gw.client().await;
    let joined = a.login("room", "alice", "Alice").await;
    assert_eq!(joined.seq, 0);
}
