//! Hostile clients: JWT identity, room and history access, rate limits, protocol violations,
//! origins, timeouts and paging. Each test reproduces an attack and checks that the attacker gets
//! a clear error or close code while other users keep chatting.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use chat_tests::chat_protocol::{ErrorCode, ServerFrame};
use chat_tests::serde_json::{Value, json};
use chat_tests::{Client, Gateway, RawClient, TestDir, default_timeout, gateway_bin};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn jwt_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CHAT__AUTH__MODE", "jwt"),
        ("CHAT__AUTH__SECRET", SECRET),
        ("CHAT__AUTH__LEEWAY_SECS", "0"),
    ]
}

/// Mints a token with the gateway's own dev subcommand (so that is tested too).
fn token(sub: &str, extra: &[&str]) -> String {
    let out = Command::new(gateway_bin())
        .args(["token", "--sub", sub, "--name", &sub.to_uppercase()])
        .args(extra)
        .env("CHAT__AUTH__SECRET", SECRET)
        .output()
        .expect("chat-gateway token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn connect_as(gw: &Gateway, sub: &str) -> Client {
    Client::connect(&format!("{}?token={}", gw.ws_url(), token(sub, &[])))
        .await
        .named(sub)
}

/// A GET with extra headers; returns the status and the body.
async fn http(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, text) = chat_tests::http::get_with_headers(addr, path, headers).await;
    assert_ne!(status, 0, "no status: {text}");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn expect_error(client: &mut Client, code: ErrorCode) -> String {
    client
        .recv_match(&format!("error {code}"), |f| match f {
            ServerFrame::Error(e) if e.code == code => Some(e.message.clone()),
            _ => None,
        })
        .await
}

async fn expect_noauth(client: &mut Client) -> String {
    client
        .recv_match("noauth", |f| match f {
            ServerFrame::NoAuth { message } => Some(message.clone()),
            _ => None,
        })
        .await
}

/// Measured weakness 1: logging in as `bob` gave bob's replay, erased his offline queue with a
/// huge ack, and let DMs be sent as him. In jwt mode the frame's userId is ignored.
#[tokio::test]
async fn jwt_identity_comes_from_the_token_not_the_frame() {
    let gw = Gateway::start(&jwt_env()).await;
    let mut bob = connect_as(&gw, "bob").await;
    bob.send_json(json!({"event": "login", "roomId": "r"}))
        .await;
    bob.expect_joined("r").await;
    bob.close().await;

    let mut carol = connect_as(&gw, "carol").await;
    carol.login("r", "carol", "ignored").await;
    carol.post_and_wait("r", "for bob while away").await;
    carol
        .send_json(json!({"event": "message", "toUserId": "bob", "content": "secret dm"}))
        .await;

    // Mallory claims to be bob: she is mallory, gets no replay of bob's and cannot ack his inbox.
    let mut mallory = connect_as(&gw, "mallory").await;
    let (joined, replay) = mallory
        .login_replay(json!({"event": "login", "roomId": "r", "userId": "bob", "userName": "Bob"}))
        .await;
    assert!(replay.is_empty(), "mallory got {replay:?} ({joined:?})");
    mallory
        .send_json(json!({"event": "ack", "direct": true, "seq": 1_000_000_000_000u64}))
        .await;
    mallory
        .send_json(json!({"event": "message", "toUserId": "carol", "content": "from bob?"}))
        .await;
    let dm = carol
        .recv_match("dm", |f| match f {
            ServerFrame::Message(m) if m.content == "from bob?" => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        dm.user_id.as_str(),
        "mallory",
        "a DM carries the token's identity"
    );
    mallory
        .send_json(json!({"event": "logout", "roomId": "r"}))
        .await;
    mallory.recv_logout_of("r", "mallory").await;
    mallory.close().await;

    // The real bob still gets his replay, DM included.
    let mut bob = connect_as(&gw, "bob").await;
    let (_, replay) = bob
        .login_replay(json!({"event": "login", "roomId": "r", "userId": "x", "userName": "x"}))
        .await;
    assert_eq!(replay.len(), 1, "{replay:?}");
    assert_eq!(replay[0].content, "for bob while away");
    let dm = bob
        .recv_match("dm replay", |f| match f {
            ServerFrame::Message(m) if m.content == "secret dm" => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(dm.user_id.as_str(), "carol");
    // And everyone keeps chatting.
    bob.post_and_wait("r", "back").await;
    carol.recv_message_in("r").await;
}

#[tokio::test]
async fn jwt_without_a_token_gets_noauth_then_auth_frame_works_then_timeout() {
    let gw = Gateway::start(&[
        ("CHAT__AUTH__MODE", "jwt"),
        ("CHAT__AUTH__SECRET", SECRET),
        ("CHAT__AUTH__TIMEOUT_SECS", "2"),
    ])
    .await;
    // A frame before auth is dropped with `noauth`.
    let mut c = Client::connect(&gw.ws_url()).await;
    c.send_json(json!({"event": "login", "roomId": "r", "userId": "u", "userName": "U"}))
        .await;
    expect_noauth(&mut c).await;
    // A bad token is refused, a good one accepted.
    c.send_json(json!({"event": "auth", "token": "not.a.token"}))
        .await;
    expect_noauth(&mut c).await;
    c.send_json(json!({"event": "auth", "token": token("ann", &[])}))
        .await;
    let who = c
        .recv_match("auth", |f| match f {
            ServerFrame::Authenticated { user_id, .. } => Some(user_id.to_string()),
            _ => None,
        })
        .await;
    assert_eq!(who, "ann");
    c.send_json(json!({"event": "login", "roomId": "r"})).await;
    c.expect_joined("r").await;
    // A refresh for another user is refused.
    c.send_json(json!({"event": "auth", "token": token("eve", &[])}))
        .await;
    expect_error(&mut c, ErrorCode::UserMismatch).await;

    // A connection that never authenticates is closed with 4003.
    let mut idle = Client::connect(&gw.ws_url()).await;
    assert_eq!(idle.expect_close_code().await, Some(4003));
    // A token refused at the upgrade: 401.
    let refused = tokio_tungstenite::connect_async(format!("{}?token=garbage", gw.ws_url())).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    c.post_and_wait("r", "still here").await;
}

#[tokio::test]
async fn an_expired_token_gets_noauth_and_4004() {
    let gw = Gateway::start(&jwt_env()).await;
    let mut short = Client::connect(&format!(
        "{}?token={}",
        gw.ws_url(),
        token("brief", &["--ttl-secs", "2"])
    ))
    .await;
    short
        .send_json(json!({"event": "login", "roomId": "r"}))
        .await;
    short.expect_joined("r").await;
    let message = expect_noauth(&mut short).await;
    assert!(message.contains("expired"), "{message}");
    assert_eq!(short.expect_close_code().await, Some(4004));
}

#[tokio::test]
async fn the_rooms_claim_limits_joins_and_http_reads() {
    let gw = Gateway::start(&jwt_env()).await;
    let limited = token("lim", &["--rooms", "team-*,lobby"]);
    let mut c = Client::connect(&format!("{}?token={limited}", gw.ws_url())).await;
    c.send_json(json!({"event": "login", "roomId": "secret"}))
        .await;
    expect_error(&mut c, ErrorCode::Forbidden).await;
    c.send_json(json!({"event": "login", "roomId": "team-a"}))
        .await;
    c.expect_joined("team-a").await;

    let mut owner = connect_as(&gw, "owner").await;
    owner
        .send_json(json!({"event": "login", "roomId": "secret"}))
        .await;
    owner.expect_joined("secret").await;
    owner.post_and_wait("secret", "classified").await;

    // HTTP: no token 401; not a member 403; a member or a listed room 200.
    let (status, _) = http(gw.addr(), "/api/rooms", &[]).await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {limited}");
    let (status, _) = http(
        gw.addr(),
        "/api/rooms/secret/messages",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http(
        gw.addr(),
        "/api/rooms/team-a/messages",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200);
    let owner_bearer = format!("Bearer {}", token("owner", &[]));
    let (status, body) = http(
        gw.addr(),
        "/api/rooms/secret/messages",
        &[("Authorization", &owner_bearer)],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("classified"), "{body}");
}

/// Measured weakness 7: anyone could read any room's history over the WS `history` event.
#[tokio::test]
async fn ws_history_needs_membership() {
    let gw = Gateway::start(&[]).await;
    let mut member = gw.client().await.named("member");
    member.login("private", "m", "M").await;
    member.post_and_wait("private", "members only").await;
    let mut snoop = gw.client().await.named("snoop");
    snoop
        .send_json(json!({"event": "history", "roomId": "private"}))
        .await;
    expect_error(&mut snoop, ErrorCode::Forbidden).await;
    member
        .send_json(json!({"event": "history", "roomId": "private"}))
        .await;
    member
        .recv_match("history", |f| {
            matches!(f, ServerFrame::History(_)).then_some(())
        })
        .await;
}

/// Measured weakness 3: a `history` page over ~135 KB killed the requester (1006).
#[tokio::test]
async fn a_history_page_of_big_messages_fits_the_connection() {
    let gw = Gateway::start(&[("CHAT__LIMITS__POSTS_BURST", "100")]).await;
    let mut writer = gw.client().await.named("writer");
    writer.login("big", "w", "W").await;
    let big = "x".repeat(4000);
    for i in 0..50 {
        writer.post_and_wait("big", &format!("{i}{big}")).await;
    }
    let mut reader = gw.client().await.named("reader");
    reader.login("big", "r", "R").await;
    reader
        .send_json(json!({"event": "history", "roomId": "big", "limit": 200}))
        .await;
    let page = reader
        .recv_match("history", |f| match f {
            ServerFrame::History(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert!(!page.messages.is_empty());
    assert_eq!(
        page.messages.last().map(|m| m.seq),
        Some(50),
        "newest first kept"
    );
    // Paging on with `before` reaches the oldest.
    let mut before = page.messages[0].seq;
    let mut seen = page.messages.len();
    while before > 1 {
        reader
            .send_json(json!({"event": "history", "roomId": "big", "before": before}))
            .await;
        let page = reader
            .recv_match("history", |f| match f {
                ServerFrame::History(p) => Some(p.clone()),
                _ => None,
            })
            .await;
        before = page.messages[0].seq;
        seen += page.messages.len();
    }
    assert_eq!(seen, 50);
    reader.post_and_wait("big", "still connected").await;
}

/// Measured weakness 4: no rate limit. Posts past the bucket get `rate_limited`; a flooder that
/// does not stop is closed with 1008; a reader is unaffected.
#[tokio::test]
async fn flooding_is_rate_limited_then_closed_with_1008() {
    let gw = Gateway::start(&[
        ("CHAT__LIMITS__POSTS_PER_SECOND", "2"),
        ("CHAT__LIMITS__POSTS_BURST", "5"),
        ("CHAT__LIMITS__FLOOD_CLOSE_AFTER", "30"),
    ])
    .await;
    let mut reader = gw.client().await.named("reader");
    reader.login("flood", "reader", "Reader").await;
    let mut flooder = gw.client().await.named("flooder");
    flooder.login("flood", "f", "F").await;
    for i in 0..10 {
        flooder.post("flood", &format!("spam {i}")).await;
    }
    let message = expect_error(&mut flooder, ErrorCode::RateLimited).await;
    assert!(message.contains("retryAfterMs="), "{message}");

    // A flooder that does not stop: its own socket, whose sends may fail once it is closed.
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url())
        .await
        .expect("connect");
    let login = json!({"event": "login", "roomId": "flood", "userId": "g", "userName": "G"});
    let _ = ws.send(Message::text(login.to_string())).await;
    for i in 0..200 {
        let post = json!({"event": "message", "roomId": "flood", "content": format!("x{i}")});
        if ws.send(Message::text(post.to_string())).await.is_err() {
            break;
        }
    }
    let code = tokio::time::timeout(default_timeout(), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(1008));
    let mut other = gw.client().await.named("other");
    other.login("flood", "o", "O").await;
    other.post_and_wait("flood", "calm").await;
    reader
        .recv_match("calm", |f| match f {
            ServerFrame::Message(m) if m.content == "calm" => Some(()),
            _ => None,
        })
        .await;
}

/// Measured weakness 5: `/api/rooms` was unpaginated.
#[tokio::test]
async fn api_rooms_is_paged() {
    let gw = Gateway::start(&[]).await;
    let mut c = gw.client().await;
    for room in ["a", "b", "c", "d", "e"] {
        c.login(room, "u", "U").await;
    }
    let mut after = String::new();
    let mut seen = Vec::new();
    loop {
        let page = gw
            .get(&format!("/api/rooms?limit=2&after={after}"))
            .await
            .json();
        let rooms = page["rooms"].as_array().expect("rooms").clone();
        assert!(rooms.len() <= 2);
        seen.extend(
            rooms
                .iter()
                .map(|r| r["roomId"].as_str().unwrap_or("").to_owned()),
        );
        match &page["next"] {
            Value::String(next) => after = next.clone(),
            _ => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
}

/// Measured weakness 6 (in part): a client that answers pings but never logs in was kept forever.
#[tokio::test]
async fn a_connection_that_never_logs_in_is_closed_with_4003() {
    let gw = Gateway::start(&[("CHAT__LIMITS__LOGIN_TIMEOUT_SECS", "1")]).await;
    let mut idle = Client::connect(&gw.ws_url()).await;
    idle.send_json(json!({"event": "heartBeat"})).await;
    assert_eq!(idle.expect_close_code().await, Some(4003));
    let mut ok = gw.client().await;
    ok.login("r", "u", "U").await;
    ok.stay_open_for(Duration::from_secs(2)).await;
    ok.post_and_wait("r", "fine").await;
}

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first, 0x80 | payload.len() as u8];
    let mask = [1u8, 2, 3, 4];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Measured weakness 8: protocol violations ended with 1006 instead of the RFC's codes, and a
/// client's Close got no Close reply.
#[tokio::test]
async fn protocol_violations_get_the_rfc_close_codes() {
    let gw = Gateway::start(&[]).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("invalid UTF-8", masked(0x81, &[0xff, 0xfe, 0x41]), 1007),
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("RSV bits", masked(0xC1, b"hi"), 1002),
        ("orphan continuation", masked(0x80, b"hi"), 1002),
        ("fragmented ping", masked(0x09, b"hi"), 1002),
        ("close code 999", masked(0x88, &999u16.to_be_bytes()), 1002),
    ];
    for (label, bytes, want) in cases {
        let mut raw = RawClient::connect(gw.addr()).await;
        raw.send_raw_bytes(&bytes).await;
        let frames = raw.read_until_closed(default_timeout()).await;
        let code = frames.last().and_then(|f| f.close_code());
        assert_eq!(code, Some(want), "{label}: {frames:?}");
    }
    // A normal Close gets a Close reply with the same code.
    let mut raw = RawClient::connect(gw.addr()).await;
    raw.send_raw_bytes(&masked(0x88, &1000u16.to_be_bytes()))
        .await;
    let frames = raw.read_until_closed(default_timeout()).await;
    assert_eq!(
        frames.last().and_then(|f| f.close_code()),
        Some(1000),
        "{frames:?}"
    );
    // Others are unaffected.
    let mut ok = gw.client().await;
    ok.login("r", "u", "U").await;
    ok.post_and_wait("r", "fine").await;
}

/// Measured weakness 9: names with bidi overrides and zero-width characters were accepted.
#[tokio::test]
async fn deceptive_names_are_refused() {
    let gw = Gateway::start(&[]).await;
    let mut c = gw.client().await;
    for name in ["evil\u{202E}gnp", "a\u{200B}b", "\u{2066}x"] {
        c.send_json(json!({"event": "login", "roomId": "r", "userId": "u", "userName": name}))
            .await;
        expect_error(&mut c, ErrorCode::BadField).await;
    }
    c.login("r", "u", "Plain").await;
}

/// Origin checks: a foreign browser page gets 403 at the upgrade; same host, an allowed origin
/// and no Origin at all are accepted.
#[tokio::test]
async fn foreign_origins_get_403() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let gw = Gateway::start(&[("CHAT__SERVER__ALLOWED_ORIGINS", "https://chat.example")]).await;
    let attempt = |origin: &'static str| {
        let url = gw.ws_url();
        async move {
            let mut request = url.into_client_request().expect("request");
            request
                .headers_mut()
                .insert("Origin", origin.parse().expect("origin"));
            tokio_tungstenite::connect_async(request).await
        }
    };
    match attempt("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(attempt("https://chat.example").await.is_ok());
    let mut plain = gw.client().await;
    plain.login("r", "u", "U").await;

    // Default: the request's own host only.
    let same = Gateway::start(&[]).await;
    let host = format!("http://{}", same.addr());
    let mut request = same.ws_url().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Origin", host.parse().expect("origin"));
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

/// RS256/ES256/EdDSA tokens verified with a PEM public key (generated here with openssl).
#[tokio::test]
async fn pem_public_keys_verify_es256_and_eddsa_tokens() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = TestDir::new("pem");
    for (kind, args, alg) in [
        (
            "ec",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::ES256,
        ),
        ("ed", vec!["-algorithm", "ED25519"], Algorithm::EdDSA),
        (
            "rsa",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::RS256,
        ),
    ] {
        let private = dir.path().join(format!("{kind}.pem"));
        let public = dir.path().join(format!("{kind}.pub.pem"));
        let ok = Command::new("openssl")
            .arg("genpkey")
            .args(&args)
            .arg("-out")
            .arg(&private)
            .status()
            .expect("openssl")
            .success();
        assert!(ok);
        let ok = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .expect("openssl")
            .success();
        assert!(ok);
        let pem = std::fs::read(&private).expect("pem");
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("key");
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 600;
        let token = jsonwebtoken::encode(
            &Header::new(alg),
            &json!({"sub": format!("{kind}-user"), "exp": exp}),
            &key,
        )
        .expect("sign");
        let public = public.to_string_lossy().into_owned();
        let gw = Gateway::start(&[
            ("CHAT__AUTH__MODE", "jwt"),
            ("CHAT__AUTH__PUBLIC_KEY_FILE", public.as_str()),
        ])
        .await;
        let mut c = Client::connect(&format!("{}?token={token}", gw.ws_url())).await;
        c.send_json(json!({"event": "login", "roomId": "r"})).await;
        c.expect_joined("r").await;
        let sent = c.post_and_wait("r", "signed").await;
        assert!(sent.seq >= 1);
        // An HS256 token (algorithm confusion) is refused.
        let hs = token_hs_for_confusion(&public);
        let refused = tokio_tungstenite::connect_async(format!("{}?token={hs}", gw.ws_url())).await;
        assert!(refused.is_err(), "{kind}: an HS256 token must not pass");
    }
}

fn token_hs_for_confusion(public_pem_path: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header};
    let pem = std::fs::read(public_pem_path).expect("pem");
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "eve", "exp": 9_999_999_999u64}),
        &EncodingKey::from_secret(&pem),
    )
    .expect("sign")
}

/// Writes a certificate for `localhost` / 127.0.0.1 signed by a fresh throwaway CA (openssl) to
/// `cert` and `key`; returns the CA's certificate, which clients trust. (rustls refuses a
/// self-signed CA certificate used as the server's own.)
fn issue_cert(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    cn: &str,
) -> std::path::PathBuf {
    let ca = dir.join(format!("{cn}-ca.pem"));
    let ca_key = dir.join(format!("{cn}-ca.key"));
    let csr = dir.join(format!("{cn}.csr"));
    let ext = dir.join(format!("{cn}.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .expect("ext");
    let run = |args: Vec<std::ffi::OsString>| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl failed");
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let p = |p: &std::path::Path| p.as_os_str().to_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args: Vec<_> = ["req", "-x509"].iter().chain(&ec).map(|s| os(s)).collect();
    args.extend([
        os("-days"),
        os("1"),
        os("-subj"),
        os(&format!("/CN={cn} test CA")),
    ]);
    args.extend([os("-keyout"), p(&ca_key), os("-out"), p(&ca)]);
    run(args);
    let mut args: Vec<_> = ["req"].iter().chain(&ec).map(|s| os(s)).collect();
    args.extend([
        os("-subj"),
        os("/CN=localhost"),
        os("-keyout"),
        p(key),
        os("-out"),
        p(&csr),
    ]);
    run(args);
    run(vec![
        os("x509"),
        os("-req"),
        os("-in"),
        p(&csr),
        os("-CA"),
        p(&ca),
        os("-CAkey"),
        p(&ca_key),
        os("-CAcreateserial"),
        os("-days"),
        os("1"),
        os("-extfile"),
        p(&ext),
        os("-out"),
        p(cert),
    ]);
    ca
}

/// Kills the child process it holds when dropped (a failing test leaves nothing running).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl_ok(ca: &std::path::Path, url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// wss:// with a self-signed certificate: curl (a standard client) gets https, a rustls
/// WebSocket client chats, and the certificate reloads on SIGHUP.
#[tokio::test]
async fn tls_serves_https_and_wss_and_reloads_on_sighup() {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let dir = TestDir::new("tls");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ca = issue_cert(dir.path(), &cert, &key, "first");
    let port = chat_tests::free_port();
    let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
    let child = Command::new(gateway_bin())
        .env("CHAT__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("CHAT__TLS__CERT", &cert)
        .env("CHAT__TLS__KEY", &key)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    let _gateway = Killed(child);
    let url = format!("https://localhost:{port}/healthz");
    let up = chat_tests::wait_until(Duration::from_secs(20), || {
        let (ca, url) = (ca.clone(), url.clone());
        async move {
            tokio::task::spawn_blocking(move || curl_ok(&ca, &url))
                .await
                .unwrap_or(false)
        }
    })
    .await;
    assert!(up, "https /healthz with the self-signed CA");

    // wss:// through rustls, trusting only that certificate.
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).expect("pem") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), tls)
        .await
        .expect("wss upgrade");
    let login = json!({"event": "login", "roomId": "tls", "userId": "t", "userName": "T"});
    ws.send(Message::text(login.to_string()))
        .await
        .expect("send");
    let joined = tokio::time::timeout(default_timeout(), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message
                && text.contains("\"joined\"")
            {
                return true;
            }
        }
        false
    })
    .await
    .expect("joined in time");
    assert!(joined);

    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        http_get_fails(port).await,
        "plain HTTP must not be served on the TLS port"
    );

    // A new certificate, then SIGHUP: new connections get it.
    let second_ca = issue_cert(dir.path(), &cert, &key, "second");
    assert!(!curl_ok(&second_ca, &url), "not reloaded before SIGHUP");
    chat_tests::send_signal(_gateway.0.id(), "HUP");
    let reloaded = chat_tests::wait_until(Duration::from_secs(10), || {
        let (ca, url) = (second_ca.clone(), url.clone());
        async move {
            tokio::task::spawn_blocking(move || curl_ok(&ca, &url))
                .await
                .unwrap_or(false)
        }
    })
    .await;
    assert!(reloaded, "the reloaded certificate is served");
}

async fn http_get_fails(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    !matches!(
        tokio::time::timeout(Duration::from_secs(5), chat_tests::http_get(addr, "/healthz")).await,
        Ok(Ok(r)) if r.status == 200
    )
}

/// Measured weakness 6 (connections): one host could open connections until the node ran out of
/// file descriptors. Past `limits.max_connections_per_ip` the upgrade gets 503, and a closed
/// connection frees its place.
#[tokio::test]
async fn connections_per_ip_are_capped_with_503() {
    let gw = Gateway::start(&[("CHAT__LIMITS__MAX_CONNECTIONS_PER_IP", "2")]).await;
    let mut a = gw.client().await.named("a");
    a.login("r", "a", "A").await;
    let b = gw.client().await.named("b");
    match tokio_tungstenite::connect_async(gw.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    // Plain HTTP (health checks) is not a WebSocket connection: still answered.
    assert_eq!(gw.get("/healthz").await.status, 200);
    b.close().await;
    let freed = chat_tests::wait_until(default_timeout(), || async {
        tokio_tungstenite::connect_async(gw.ws_url()).await.is_ok()
    })
    .await;
    assert!(freed, "a closed connection frees its place");
    a.post_and_wait("r", "unaffected").await;
}
