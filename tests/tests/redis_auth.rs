//! Redis with credentials and TLS: a real `redis-server` with `--requirepass`, an ACL user, and a
//! TLS port with a certificate from a throwaway CA. Two gateway nodes chat through it (a message
//! crosses nodes by pub/sub, so the dedicated pub/sub connection authenticated too), a node with
//! wrong credentials or an untrusted certificate stays not ready, and no log shows the password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_tests::{Gateway, TestDir, free_port, wait_until};

/// A `redis-server` with extra arguments, killed on drop.
struct AuthRedis {
    child: Child,
    port: u16,
    _dir: TestDir,
}

impl AuthRedis {
    /// Starts it on a fresh port (`tls`: the port is the TLS port, plain TCP is off) and waits until
    /// the port accepts connections.
    fn start(extra: &[&str], tls: bool) -> AuthRedis {
        let dir = TestDir::new("redis-auth");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("redis.log")).expect("log");
        let mut command = Command::new(
            std::env::var_os("REDIS_SERVER_BIN").unwrap_or_else(|| "redis-server".into()),
        );
        command.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]);
        command.arg("--dir").arg(dir.path());
        if tls {
            command.args(["--port", "0", "--tls-port", &port.to_string()]);
        } else {
            command.args(["--port", &port.to_string()]);
        }
        command.args(extra);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start redis-server");
        let mut redis = AuthRedis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                redis.child.try_wait().ok().flatten().is_none(),
                "redis-server exited"
            );
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(25));
        }
        redis
    }

    /// Runs a command with `redis-cli` (plain TCP, no password).
    fn cli(&self, args: &[&str]) {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim() == "OK",
            "redis-cli {args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for AuthRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ready(gw: &Gateway) -> bool {
    gw.get("/readyz").await.status == 200
}

/// Starts a cluster node on `url` (pub/sub is the only way messages cross nodes: the periodic
/// sync that would also fetch them from history is pushed out of the test's reach).
async fn node(url: &str, extra: &[(&str, &str)]) -> Gateway {
    let mut env = vec![
        ("CHAT__REDIS__URL", url),
        ("CHAT__CLUSTER__SYNC_INTERVAL_SECS", "3600"),
    ];
    env.extend_from_slice(extra);
    Gateway::start(&env).await
}

/// Two nodes on `url` become ready and a message posted on one reaches a member on the other.
async fn chat_across(url: &str, extra: &[(&str, &str)], room: &str) -> (Gateway, Gateway) {
    let a = node(url, extra).await;
    let b = node(url, extra).await;
    for gw in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(30), || ready(gw)).await,
            "not ready:\n{}",
            gw.log_tail(30)
        );
    }
    let mut ann = a.client().await.named("ann");
    ann.login(room, "ann", "Ann").await;
    let mut bob = b.client().await.named("bob");
    bob.login(room, "bob", "Bob").await;
    ann.recv_login_of(room, "bob").await;
    let sent = ann.post_and_wait(room, "across nodes").await;
    let got = bob.recv_message_in(room).await;
    assert_eq!((got.seq, got.content.as_str()), (sent.seq, "across nodes"));
    (a, b)
}

/// A node whose Redis connections all fail stays not ready and says why in its log.
async fn stays_unready(gw: &Gateway, log_says: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || async {
            std::fs::read_to_string(gw.log_path()).is_ok_and(|l| l.contains(log_says))
        })
        .await,
        "no `{log_says}` in the log:\n{}",
        gw.log_tail(30)
    );
    assert!(!ready(gw).await, "ready without a usable Redis");
}

fn assert_log_hides(gw: &Gateway, secret: &str) {
    let log = std::fs::read_to_string(gw.log_path()).expect("log");
    assert!(!log.contains(secret), "the log shows the password:\n{log}");
}

#[tokio::test]
async fn a_password_in_the_url_works_and_a_wrong_one_is_not_ready() {
    let redis = AuthRedis::start(&["--requirepass", "s3cret-pw"], false);
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", redis.port);
    let (a, b) = chat_across(&url, &[], "pw").await;
    assert_log_hides(&a, "s3cret-pw");
    assert_log_hides(&b, "s3cret-pw");

    let bad = node(&format!("redis://:wr0ng-pw@127.0.0.1:{}", redis.port), &[]).await;
    stays_unready(&bad, "redis refused the credentials of redis.url").await;
    assert_log_hides(&bad, "wr0ng-pw");
    // No password at all: also refused, also said.
    let none = node(&format!("redis://127.0.0.1:{}", redis.port), &[]).await;
    stays_unready(&none, "redis refused the credentials of redis.url").await;
}

#[tokio::test]
async fn an_acl_user_in_the_url_works() {
    let redis = AuthRedis::start(&[], false);
    redis.cli(&[
        "ACL", "SETUSER", "chat", "on", ">acl-pw", "~*", "&*", "+@all",
    ]);
    // The default user is switched off: only the URL's user can get in.
    redis.cli(&["ACL", "SETUSER", "default", "off"]);
    let url = format!("redis://chat:acl-pw@127.0.0.1:{}", redis.port);
    let (a, _b) = chat_across(&url, &[], "acl").await;
    assert_log_hides(&a, "acl-pw");

    let wrong_user = node(
        &format!("redis://nobody:acl-pw@127.0.0.1:{}", redis.port),
        &[],
    )
    .await;
    stays_unready(&wrong_user, "redis refused the credentials of redis.url").await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it (openssl); returns (ca, cert, key).
fn issue_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, csr, ext) = (
        dir.join("redis.pem"),
        dir.join("redis.key"),
        dir.join("redis.csr"),
        dir.join("redis.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n",
    )
    .expect("ext");
    let run = |args: &[&std::ffi::OsStr]| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?} failed");
    };
    let s = |s: &'static str| std::ffi::OsStr::new(s);
    let ec = [
        s("-newkey"),
        s("ec"),
        s("-pkeyopt"),
        s("ec_paramgen_curve:P-256"),
        s("-nodes"),
    ];
    let mut args = vec![s("req"), s("-x509")];
    args.extend(ec);
    args.extend([s("-days"), s("1"), s("-subj"), s("/CN=redis test CA")]);
    args.extend([s("-keyout"), ca_key.as_os_str(), s("-out"), ca.as_os_str()]);
    run(&args);
    let mut args = vec![s("req")];
    args.extend(ec);
    args.extend([s("-subj"), s("/CN=127.0.0.1")]);
    args.extend([s("-keyout"), key.as_os_str(), s("-out"), csr.as_os_str()]);
    run(&args);
    run(&[
        s("x509"),
        s("-req"),
        s("-in"),
        csr.as_os_str(),
        s("-CA"),
        ca.as_os_str(),
        s("-CAkey"),
        ca_key.as_os_str(),
        s("-CAcreateserial"),
        s("-days"),
        s("1"),
        s("-extfile"),
        ext.as_os_str(),
        s("-out"),
        cert.as_os_str(),
    ]);
    (ca, cert, key)
}

#[tokio::test]
async fn rediss_with_a_private_ca_works_and_an_untrusted_certificate_does_not() {
    let dir = TestDir::new("redis-tls");
    let (ca, cert, key) = issue_cert(dir.path());
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (ca_s, cert_s, key_s) = (path(&ca), path(&cert), path(&key));
    let redis = AuthRedis::start(
        &[
            "--tls-cert-file",
            &cert_s,
            "--tls-key-file",
            &key_s,
            "--tls-ca-cert-file",
            &ca_s,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-pw",
        ],
        true,
    );
    let url = format!("rediss://:tls-pw@127.0.0.1:{}", redis.port);
    let (a, _b) = chat_across(&url, &[("CHAT__REDIS__TLS_CA_FILE", &ca_s)], "tls").await;
    assert_log_hides(&a, "tls-pw");

    // Without the CA the certificate is not trusted: the node stays not ready.
    let untrusted = node(&url, &[]).await;
    stays_unready(&untrusted, "redis is not reachable yet").await;
    // And plain redis:// to a TLS port gets nowhere either.
    let plain = node(&format!("redis://:tls-pw@127.0.0.1:{}", redis.port), &[]).await;
    assert!(
        !wait_until(Duration::from_secs(3), || ready(&plain)).await,
        "plain TCP to a TLS port became ready"
    );
}
