//! TLS termination in the gateway itself (`tls.cert` and `tls.key` set): `https://` and `wss://`
//! on the one port, with rustls.
//!
//! Handshakes run in their own tasks, each bounded by [`HANDSHAKE_TIMEOUT`], and finished
//! connections are handed to the server through a channel: a client that opens TCP and never
//! completes its handshake holds a task for a few seconds, never the accept loop. The certificate
//! and key are read again on SIGHUP; a file that does not load keeps the previous pair in service.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads a certificate chain and private key (PEM files) into a server configuration that offers
/// HTTP/1.1 (the WebSocket upgrade needs it).
pub fn load(cert: &str, key: &str) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert `{cert}`: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert `{cert}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!("tls.cert `{cert}`: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key `{key}`: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client address of a TLS connection (axum's `ConnectInfo` for [`TlsListener`]), for the
/// per-IP connection cap.
#[derive(Debug, Clone, Copy)]
pub struct TlsPeer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        TlsPeer(*stream.remote_addr())
    }
}

/// A listener of finished TLS connections, for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Starts accepting TLS on `listener` with the files `cert` and `key` (already loaded once into
/// `config`), reloading them on SIGHUP, until `shutdown`.
pub fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    cert: String,
    key: String,
    shutdown: CancellationToken,
) -> io::Result<TlsListener> {
    let local = listener.local_addr()?;
    let current = Arc::new(RwLock::new(config));
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(
        current.clone(),
        cert,
        key,
        shutdown.clone(),
    ));
    #[cfg(not(unix))]
    let _ = (cert, key);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let config = match current.read() {
                Ok(config) => config.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener { rx, local })
}

#[cfg(unix)]
async fn reload_on_sighup(
    current: Arc<RwLock<Arc<ServerConfig>>>,
    cert: String,
    key: String,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: the certificate will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {}
        }
        match load(&cert, &key) {
            Ok(config) => {
                match current.write() {
                    Ok(mut slot) => *slot = config,
                    Err(poisoned) => *poisoned.into_inner() = config,
                }
                tracing::info!(cert = %cert, "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; keeping the old one")
            }
        }
    }
}
