//! The HTTP/1.1 accept loop: what `axum::serve` did, plus a bound on how long a client may take
//! to send a request's headers (`server.handshake_timeout_secs`).
//!
//! `axum::serve` builds its hyper connections itself and sets no timer, so hyper's header read
//! timeout never runs there: a client that opened TCP and sent nothing, or half a request line,
//! held its socket (and a file descriptor) for as long as it liked. Here each connection is served
//! by hyper's HTTP/1.1 builder with a Tokio timer and `header_read_timeout`, which hyper starts
//! whenever it waits for a request head: on a fresh connection and between requests of an idle
//! keep-alive one. Past it hyper answers 408 and closes. After a WebSocket upgrade the
//! connection is no longer hyper's; the session's own timers apply (login, heartbeat).
//!
//! Shutdown is axum's: when `shutdown` fires, no more connections are accepted, every open one is
//! asked to finish its request in flight and close, and the call returns once they have.

use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `router` on `listener` until `shutdown`, then waits for open HTTP connections to finish.
/// Each request carries `ConnectInfo(peer(addr))` in its extensions (the per-IP connection cap
/// reads it). A client gets `header_timeout` for each request's headers.
pub async fn serve<L, P>(
    mut listener: L,
    router: Router,
    peer: fn(L::Addr) -> P,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    L: Listener,
    P: Clone + Send + Sync + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (io, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            // Accept errors (out of file descriptors, say) are handled, with a back-off, by the
            // listener itself.
            accepted = listener.accept() => accepted,
        };
        let info = ConnectInfo(peer(addr));
        let service = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            hyper::service::Service::call(&service, request)
        });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let mut connection = pin!(
                builder
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades()
            );
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        // Timed-out headers, a reset, garbage instead of HTTP: the client's doing.
                        tracing::trace!(error = %e, "http connection ended");
                    }
                    return;
                }
                _ = shutdown.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    connections.close();
    connections.wait().await;
}
