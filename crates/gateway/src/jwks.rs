//! Token signing keys from an identity provider's JWKS URL (`auth.jwks_url`), cached.
//!
//! jsonwebtoken parses single JWKs and builds verification keys from them but does not fetch key
//! sets, so this module does: an HTTP(S) GET with hyper (plain TCP, or rustls with the system's
//! roots; `SSL_CERT_FILE` adds others), bounded in time ([`FETCH_TIMEOUT`]) and size
//! ([`MAX_DOCUMENT_BYTES`], [`MAX_KEYS`]).
//!
//! - The set is fetched at startup. While no set has ever been fetched, tokens that need one are
//!   refused (`noauth` / 401, "signing keys not loaded yet") and the fetch is retried with backoff
//!   (1 s doubling, at most `auth.jwks_refresh_secs`): the gateway starts and serves regardless.
//! - It is fetched again every `auth.jwks_refresh_secs`, and when a token names a `kid` the set
//!   does not have — the provider rotated its keys — but such on-demand fetches happen at most once
//!   per `auth.jwks_refresh_min_secs`, so tokens with made-up `kid`s cannot make the gateway hammer
//!   the provider.
//! - A failed fetch (unreachable, not 200, too large, not a key set) keeps the last good set in use
//!   (stale keys beat refusing every user while the provider is down), and is logged.
//! - A key is picked by the token's `kid`; the token's `alg` must fit the key's type (RSA: RS*/PS*,
//!   EC P-256: ES256, P-384: ES384, Ed25519: EdDSA) and equal the JWK's `alg` when it has one.
//!   Symmetric (`oct`) keys and keys marked `"use": "enc"` are ignored: a public key set must not
//!   be able to make the gateway accept HMAC tokens.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::Uri;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

/// Largest key set document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Keys kept from one document (the rest are ignored, with a warning).
pub const MAX_KEYS: usize = 64;
/// A fetch (connect, TLS, request, whole body) that takes longer fails.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay while no key set has been fetched yet.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// One usable verification key.
struct Key {
    key: DecodingKey,
    /// The algorithms a token signed with this key may name.
    algorithms: Vec<Algorithm>,
}

/// Keys by `kid`; `None` until the first successful fetch.
type KeySet = Option<HashMap<String, Arc<Key>>>;

/// The cached key set of `auth.jwks_url`.
pub struct Jwks {
    url: Uri,
    tls: Option<TlsConnector>,
    refresh: Duration,
    refresh_min: Duration,
    keys: RwLock<KeySet>,
    /// When the last fetch asked for by an unknown `kid` started; one such fetch at a time.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
}

/// Why a key could not be had. The message is safe to show the client.
#[derive(Debug)]
pub struct KeyError(pub String);

impl Jwks {
    /// Checks `url` (http:// or https://) and prepares the client; fetches nothing yet.
    pub fn new(url: &str, refresh_secs: u64, refresh_min_secs: u64) -> Result<Jwks, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("auth.jwks_url `{url}`: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(tls_connector()?),
            _ => return Err(format!("auth.jwks_url `{url}` must be http:// or https://")),
        };
        if uri.host().is_none() {
            return Err(format!("auth.jwks_url `{url}` has no host"));
        }
        if refresh_secs == 0 {
            return Err("auth.jwks_refresh_secs must be at least 1".to_owned());
        }
        Ok(Jwks {
            url: uri,
            tls,
            refresh: Duration::from_secs(refresh_secs),
            refresh_min: Duration::from_secs(refresh_min_secs),
            keys: RwLock::new(None),
            on_demand: tokio::sync::Mutex::new(None),
        })
    }

    /// Fetches the set now, then keeps it fresh until `shutdown`: retries with backoff until a
    /// first set is had, then refreshes every `auth.jwks_refresh_secs`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match self.fetch_and_store("startup or periodic").await {
                Ok(()) => self.refresh,
                Err(()) if !self.loaded() => {
                    let wait = retry;
                    retry = (retry * 2).min(self.refresh);
                    wait
                }
                Err(()) => self.refresh,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Whether a key set has been fetched.
    fn loaded(&self) -> bool {
        self.read().is_some()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, kid: &str) -> Option<Arc<Key>> {
        self.read().as_ref().and_then(|keys| keys.get(kid).cloned())
    }

    /// The key for a token with header `kid` and `alg`: from the cache, else after a refresh (if
    /// one is allowed now). Refuses a key whose type or `alg` does not fit `alg`.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        let key = match self.lookup(kid) {
            Some(key) => key,
            None => {
                self.refresh_for_unknown_kid(kid).await;
                match self.lookup(kid) {
                    Some(key) => key,
                    None if !self.loaded() => {
                        return Err(KeyError(
                            "the identity provider's signing keys are not loaded yet; try again later"
                                .to_owned(),
                        ));
                    }
                    None => return Err(KeyError(format!("unknown key id (kid) `{kid}`"))),
                }
            }
        };
        if !key.algorithms.contains(&alg) {
            return Err(KeyError(format!(
                "key `{kid}` does not sign {alg:?} tokens"
            )));
        }
        Ok(key.key.clone())
    }

    /// Fetches the set again for an unknown `kid`, unless one such fetch happened within
    /// `auth.jwks_refresh_min_secs`. Callers arriving during a fetch wait for it, then look again.
    async fn refresh_for_unknown_kid(&self, kid: &str) {
        let mut last = self.on_demand.lock().await;
        if self.lookup(kid).is_some() {
            // Another caller's fetch brought it.
            return;
        }
        if last.is_some_and(|at| at.elapsed() < self.refresh_min) {
            tracing::debug!(
                kid,
                "unknown kid; the key set was refreshed recently, not again"
            );
            return;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_and_store("unknown kid").await;
    }

    /// Fetches and, when it is a usable set, replaces the cache; on failure keeps the old set.
    async fn fetch_and_store(&self, why: &'static str) -> Result<(), ()> {
        metrics::counter!("chat_jwks_fetches_total").increment(1);
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no complete answer within {FETCH_TIMEOUT:?}")),
        }
        .and_then(|body| parse(&body));
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), why, "JWKS fetched");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("chat_jwks_fetch_failures_total").increment(1);
                let kept = self.read().as_ref().map(HashMap::len);
                match kept {
                    Some(n) => tracing::warn!(
                        url = %self.url, error = %e, why,
                        "JWKS fetch failed; keeping the {n} keys fetched before"
                    ),
                    None => tracing::error!(
                        url = %self.url, error = %e, why,
                        "JWKS fetch failed and no keys are loaded: tokens needing them are refused; retrying"
                    ),
                }
                Err(())
            }
        }
    }

    /// One GET of the URL; the body if the answer is 200.
    async fn fetch(&self) -> Result<Bytes, String> {
        let host = self.url.host().unwrap_or_default();
        // `[::1]` in a URI; a socket address and a TLS name want it bare.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let https = self.tls.is_some();
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &self.tls {
            None => self.get(tcp).await,
            Some(connector) => {
                let name = ServerName::try_from(bare_host.to_owned())
                    .map_err(|e| format!("server name: {e}"))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                self.get(tls).await
            }
        }
    }

    async fn get<S>(&self, io: S) -> Result<Bytes, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        // Drives the connection; ends with it (the request below is the only one).
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = self
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self
            .url
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "chat-gateway")
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body (at most {MAX_DOCUMENT_BYTES} bytes): {e}"))?;
        Ok(body.to_bytes())
    }
}

/// A TLS client with the system's trusted roots (rustls-native-certs, which also reads
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn tls_connector() -> Result<TlsConnector, String> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the system lists but rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        // Every fetch will fail (and say so); SSL_CERT_FILE can name a CA file.
        tracing::warn!(
            errors = ?found.errors,
            "auth.jwks_url is https:// but no trusted root certificates were found"
        );
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The usable keys of a JWKS document. Keys that cannot be used (no `kid`, symmetric, for
/// encryption, an unsupported type or curve) are skipped one by one; a document that is not a key
/// set at all is an error.
fn parse(body: &[u8]) -> Result<HashMap<String, Arc<Key>>, String> {
    let document: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = document.get("keys").and_then(|k| k.as_array()) else {
        return Err("not a JWK set (no `keys` array)".to_owned());
    };
    let mut keys = HashMap::new();
    for entry in entries {
        if keys.len() == MAX_KEYS {
            tracing::warn!(
                total = entries.len(),
                "the JWK set has more than {MAX_KEYS} keys; the rest are ignored"
            );
            break;
        }
        let jwk: Jwk = match serde_json::from_value(entry.clone()) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!(error = %e, "skipping a JWK this server cannot read");
                continue;
            }
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let Some(algorithms) = algorithms_of(&jwk) else {
            tracing::debug!(kid, "skipping a JWK of a type or curve not used for tokens");
            continue;
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => {
                keys.insert(kid, Arc::new(Key { key, algorithms }));
            }
            Err(e) => tracing::debug!(kid, error = %e, "skipping an unusable JWK"),
        }
    }
    Ok(keys)
}

/// The token algorithms a JWK may verify: by its type and curve, narrowed to its `alg` if it
/// names one. `None`: not a signature key this server uses (symmetric, P-521, X25519, a JWK `alg`
/// that contradicts its type).
fn algorithms_of(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    use Algorithm::*;
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    match &jwk.common.key_algorithm {
        None => Some(by_type),
        Some(named) => {
            let named: Algorithm = named.to_string().parse().ok()?;
            by_type.contains(&named).then(|| vec![named])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_parsed_key_by_key() {
        let doc = serde_json::json!({"keys": [
            // Usable: EC P-256 with a kid.
            {"kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            // Symmetric: never accepted from a key set.
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            // No kid.
            {"kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            // For encryption.
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            // An `alg` that contradicts the key type.
            {"kty": "EC", "crv": "P-256", "kid": "liar", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            // Not a JWK at all.
            {"kty": "nonsense"}
        ]});
        let keys = parse(doc.to_string().as_bytes()).expect("a key set");
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ec1"]);
        assert_eq!(keys["ec1"].algorithms, vec![Algorithm::ES256]);
        assert!(parse(b"{\"no\":1}").is_err());
        assert!(parse(b"<html>").is_err());
    }

    #[test]
    fn the_number_of_keys_is_bounded() {
        let one = |i: usize| {
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": format!("k{i}"),
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
        };
        let doc = serde_json::json!({"keys": (0..MAX_KEYS + 10).map(one).collect::<Vec<_>>()});
        assert_eq!(
            parse(doc.to_string().as_bytes()).expect("set").len(),
            MAX_KEYS
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(Jwks::new("ftp://x/keys", 300, 30).is_err());
        assert!(Jwks::new("not a url", 300, 30).is_err());
        assert!(Jwks::new("http://127.0.0.1:1/keys", 0, 30).is_err());
        assert!(Jwks::new("http://127.0.0.1:1/keys", 300, 30).is_ok());
    }
}
