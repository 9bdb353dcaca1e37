//! JWKS (`auth.jwks_url`): a real HTTP(S) server in the test serves the key set (Ed25519 keys made
//! with openssl); it can rotate keys, answer 500 or go away, and counts the fetches it gets. Real
//! gateway processes verify tokens signed with those keys, on WebSocket upgrades and the HTTP API.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_tests::serde_json::{Value, json};
use chat_tests::{Client, Gateway, TestDir, default_timeout, wait_until};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What the key server answers, and how often it was asked.
#[derive(Default)]
struct Served {
    body: String,
    status: u16,
    requests: usize,
}

/// A small HTTP/1.1 server on 127.0.0.1 (port 0) serving a JWK set at `/keys`.
struct KeyServer {
    port: u16,
    served: Arc<Mutex<Served>>,
    task: JoinHandle<()>,
    scheme: &'static str,
}

impl KeyServer {
    async fn start(keys: &[&Key], tls: Option<TlsAcceptor>) -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(Mutex::new(Served {
            body: String::new(),
            status: 200,
            requests: 0,
        }));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = {
            let served = served.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (served, tls) = (served.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => answer(stream, &served).await,
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    answer(stream, &served).await;
                                }
                            }
                        }
                    });
                }
            })
        };
        let server = KeyServer {
            port,
            served,
            task,
            scheme,
        };
        server.set_keys(keys);
        server
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/keys", self.scheme, self.port)
    }

    fn set_keys(&self, keys: &[&Key]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        self.served.lock().expect("lock").body = set.to_string();
    }

    fn set_status(&self, status: u16) {
        self.served.lock().expect("lock").status = status;
    }

    fn requests(&self) -> usize {
        self.served.lock().expect("lock").requests
    }

    /// Stops listening: fetches now get "connection refused".
    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request and answers it with the current status and body.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, served: &Mutex<Served>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let (status, body) = {
        let mut served = served.lock().expect("lock");
        served.requests += 1;
        if served.status == 200 {
            (200, served.body.clone())
        } else {
            (served.status, "oops".to_owned())
        }
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// An Ed25519 signing key (openssl) and its JWK.
struct Key {
    kid: String,
    pem: Vec<u8>,
    x: String,
}

fn openssl(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

impl Key {
    fn new(dir: &Path, kid: &str) -> Key {
        let path = dir.join(format!("{kid}.pem"));
        openssl(&[
            os("genpkey"),
            os("-algorithm"),
            os("ED25519"),
            os("-out"),
            path.as_os_str(),
        ]);
        let der = openssl(&[
            os("pkey"),
            os("-in"),
            path.as_os_str(),
            os("-pubout"),
            os("-outform"),
            os("DER"),
        ]);
        // SubjectPublicKeyInfo of Ed25519: a 12-byte header, then the 32-byte key.
        assert_eq!(der.len(), 44, "unexpected Ed25519 SPKI");
        Key {
            kid: kid.to_owned(),
            pem: std::fs::read(&path).expect("pem"),
            x: base64url(&der[12..]),
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": self.x, "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }

    fn token(&self, sub: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        sign(
            &header,
            sub,
            &EncodingKey::from_ed_pem(&self.pem).expect("key"),
        )
    }
}

fn sign(header: &Header, sub: &str, key: &EncodingKey) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(header, &json!({"sub": sub, "exp": exp}), key).expect("sign")
}

/// Base64url without padding (RFC 7515), for the JWK's `x`.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `GET /api/rooms` with the token: the status and body (200 accepted, 401 refused).
async fn api_status(gw: &Gateway, token: &str) -> (u16, String) {
    let bearer = format!("Bearer {token}");
    chat_tests::http::get_with_headers(gw.addr(), "/api/rooms", &[("Authorization", &bearer)]).await
}

async fn start_gateway(
    url: &str,
    refresh: &str,
    refresh_min: &str,
    extra: &[(&str, &str)],
) -> Gateway {
    let mut env = vec![
        ("CHAT__AUTH__MODE", "jwt"),
        ("CHAT__AUTH__JWKS_URL", url),
        ("CHAT__AUTH__JWKS_REFRESH_SECS", refresh),
        ("CHAT__AUTH__JWKS_REFRESH_MIN_SECS", refresh_min),
    ];
    env.extend_from_slice(extra);
    Gateway::start(&env).await
}

fn log_count(gw: &Gateway, needle: &str) -> usize {
    std::fs::read_to_string(gw.log_path())
        .unwrap_or_default()
        .matches(needle)
        .count()
}

/// Waits for the gateway's first successful fetch (so the test's own tokens do not use up the
/// on-demand refresh).
async fn wait_fetched(gw: &Gateway) {
    assert!(
        wait_until(default_timeout(), || async {
            log_count(gw, "JWKS fetched") > 0
        })
        .await,
        "no JWKS fetch:\n{}",
        gw.log_tail(30)
    );
}

async fn chat_with(gw: &Gateway, token: &str, room: &str) {
    let mut c = Client::connect(&format!("{}?token={token}", gw.ws_url())).await;
    c.send_json(json!({"event": "login", "roomId": room})).await;
    c.expect_joined(room).await;
    c.post_and_wait(room, "signed by a JWKS key").await;
}

#[tokio::test]
async fn tokens_are_checked_with_the_key_of_their_kid_and_rotation_refreshes_once() {
    let dir = TestDir::new("jwks");
    let (k1, k2, k3) = (
        Key::new(dir.path(), "k1"),
        Key::new(dir.path(), "k2"),
        Key::new(dir.path(), "k3"),
    );
    let server = KeyServer::start(&[&k1], None).await;
    // No periodic refresh during the test; one on-demand refresh per hour.
    let gw = start_gateway(&server.url(), "3600", "3600", &[]).await;
    wait_fetched(&gw).await;
    assert_eq!(server.requests(), 1, "one fetch at startup");

    // A token signed by a key of the set, over a real WebSocket.
    chat_with(&gw, &k1.token("ann"), "jwks").await;

    // The provider rotates: k2 appears. Its first token makes the gateway fetch once, and passes.
    server.set_keys(&[&k1, &k2]);
    chat_with(&gw, &k2.token("bob"), "jwks").await;
    assert_eq!(server.requests(), 2, "an unknown kid fetches the set again");

    // k3 is in no set. Refused; and refreshes are rate limited: no further fetch, however many
    // tokens with unknown kids arrive.
    for _ in 0..5 {
        let (status, text) = api_status(&gw, &k3.token("eve")).await;
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("unknown key id"), "{text}");
    }
    let refused =
        tokio_tungstenite::connect_async(format!("{}?token={}", gw.ws_url(), k3.token("eve")))
            .await;
    assert!(
        refused.is_err(),
        "a token of an unknown kid opened a WebSocket"
    );
    assert_eq!(server.requests(), 2, "refreshes must be rate limited");

    // A token whose alg does not fit the key its kid names is refused: ES256 claiming k1
    // (Ed25519), and HS256 "signed" with k1's public x as a secret.
    let ec = dir.path().join("ec.pem");
    openssl(&[
        os("genpkey"),
        os("-algorithm"),
        os("EC"),
        os("-pkeyopt"),
        os("ec_paramgen_curve:P-256"),
        os("-out"),
        ec.as_os_str(),
    ]);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".to_owned());
    let es = sign(
        &header,
        "eve",
        &EncodingKey::from_ec_pem(&std::fs::read(&ec).expect("pem")).expect("key"),
    );
    let (status, text) = api_status(&gw, &es).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("does not sign"), "{text}");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".to_owned());
    let hs = sign(&header, "eve", &EncodingKey::from_secret(k1.x.as_bytes()));
    assert_eq!(api_status(&gw, &hs).await.0, 401);
    // Still good: k1 and k2.
    assert_eq!(api_status(&gw, &k1.token("ann")).await.0, 200);
    assert_eq!(api_status(&gw, &k2.token("bob")).await.0, 200);
}

#[tokio::test]
async fn failed_refreshes_keep_the_last_good_keys() {
    let dir = TestDir::new("jwks-stale");
    let (k1, k9) = (Key::new(dir.path(), "k1"), Key::new(dir.path(), "k9"));
    let server = KeyServer::start(&[&k1], None).await;
    // Refreshed every second; on-demand refreshes not limited.
    let gw = start_gateway(&server.url(), "1", "0", &[]).await;
    wait_fetched(&gw).await;
    assert_eq!(api_status(&gw, &k1.token("ann")).await.0, 200);

    // A kid still unknown after the refresh it triggers is refused.
    let before = server.requests();
    let (status, text) = api_status(&gw, &k9.token("eve")).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("unknown key id"), "{text}");
    assert!(
        server.requests() > before,
        "an unknown kid did not trigger a fetch"
    );

    // The provider answers 500: fetches fail, the keys fetched before stay in use.
    server.set_status(500);
    let failures = log_count(&gw, "JWKS fetch failed; keeping");
    assert!(
        wait_until(default_timeout(), || async {
            log_count(&gw, "JWKS fetch failed; keeping") >= failures + 2
        })
        .await,
        "no failing refreshes:\n{}",
        gw.log_tail(30)
    );
    assert_eq!(api_status(&gw, &k1.token("ann")).await.0, 200);
    chat_with(&gw, &k1.token("ann"), "stale").await;

    // The provider is gone altogether (connection refused): still the same.
    server.stop();
    let failures = log_count(&gw, "JWKS fetch failed; keeping");
    assert!(
        wait_until(default_timeout(), || async {
            log_count(&gw, "JWKS fetch failed; keeping") >= failures + 2
        })
        .await,
        "no failing refreshes:\n{}",
        gw.log_tail(30)
    );
    assert_eq!(api_status(&gw, &k1.token("ann")).await.0, 200);
    assert_eq!(api_status(&gw, &k9.token("eve")).await.0, 401);
}

#[tokio::test]
async fn a_gateway_starts_while_the_jwks_endpoint_fails_and_catches_up() {
    let dir = TestDir::new("jwks-down");
    let k1 = Key::new(dir.path(), "k1");
    let server = KeyServer::start(&[&k1], None).await;
    server.set_status(500);
    let gw = start_gateway(&server.url(), "3600", "3600", &[]).await;
    // It serves, but cannot check tokens yet: they are refused with a reason.
    let (status, text) = api_status(&gw, &k1.token("ann")).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("not loaded yet"), "{text}");
    // The provider recovers: the gateway's retries (not the rate-limited on-demand refresh)
    // pick the keys up.
    server.set_status(200);
    assert!(
        wait_until(Duration::from_secs(60), || async {
            api_status(&gw, &k1.token("ann")).await.0 == 200
        })
        .await,
        "the keys were never fetched:\n{}",
        gw.log_tail(30)
    );
    chat_with(&gw, &k1.token("ann"), "late").await;
}

/// An https:// JWKS URL, its certificate from a private CA the gateway trusts through
/// `SSL_CERT_FILE`.
#[tokio::test]
async fn an_https_jwks_url_works() {
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = TestDir::new("jwks-https");
    let k1 = Key::new(dir.path(), "k1");
    let p = |name: &str| dir.path().join(name);
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("cert.pem"),
        p("key.pem"),
        p("cert.csr"),
        p("cert.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .expect("ext");
    let ec = [
        os("-newkey"),
        os("ec"),
        os("-pkeyopt"),
        os("ec_paramgen_curve:P-256"),
        os("-nodes"),
    ];
    let mut args = vec![os("req"), os("-x509")];
    args.extend(ec);
    args.extend([os("-days"), os("1"), os("-subj"), os("/CN=jwks test CA")]);
    args.extend([
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    openssl(&args);
    let mut args = vec![os("req")];
    args.extend(ec);
    args.extend([os("-subj"), os("/CN=127.0.0.1")]);
    args.extend([os("-keyout"), key.as_os_str(), os("-out"), csr.as_os_str()]);
    openssl(&args);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("1"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
    let certs = CertificateDer::pem_file_iter(&cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let private = PrivateKeyDer::from_pem_file(&key).expect("key");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .expect("server config");
    let server = KeyServer::start(&[&k1], Some(TlsAcceptor::from(Arc::new(config)))).await;
    let ca = ca.to_string_lossy().into_owned();
    let gw = start_gateway(&server.url(), "3600", "3600", &[("SSL_CERT_FILE", &ca)]).await;
    wait_fetched(&gw).await;
    chat_with(&gw, &k1.token("ann"), "https").await;

    // Without trusting that CA, the certificate is refused and so are the tokens.
    let untrusted = start_gateway(&server.url(), "3600", "3600", &[]).await;
    assert!(
        wait_until(default_timeout(), || async {
            log_count(&untrusted, "JWKS fetch failed and no keys are loaded") > 0
        })
        .await,
        "{}",
        untrusted.log_tail(30)
    );
    assert_eq!(api_status(&untrusted, &k1.token("ann")).await.0, 401);
}
