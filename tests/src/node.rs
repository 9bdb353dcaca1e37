//! Runs the JavaScript suites in `tests/web/` (Node's test runner, playwright-core driving Debian's
//! headless Chromium) as a child process, so `cargo test --workspace` covers them. Used by
//! `tests/tests/web.rs` and `tests/tests/legacy.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{gateway_bin, target_dir, wait_until, workspace_root};

/// Fails the test with `hint` unless `program --version` runs.
pub fn require_program(program: &str, hint: &str) {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{program}` is required for the JavaScript tests: {hint}"
    );
}

/// `npm ci` in `dir` when its node_modules is missing or older than the lock file.
pub fn npm_ci(dir: &Path) {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(installed), Some(lock)) = (modified(&installed), modified(&lock))
        && installed >= lock
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .status()
        .expect("run npm ci");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// Runs `node --test` on `files` in `tests/web/` against the gateway binary under test, with
/// screenshots and logs in `<target>/web-artifacts/` (the output in `log_name` there). Fails the
/// test, with the output's tail, if the suite fails or runs past `limit` (a hang, not a slow
/// machine: the limit is far above a normal run).
pub async fn run_node_tests(files: &[&str], log_name: &str, limit: Duration) {
    let dir = workspace_root().join("tests").join("web");
    require_program(
        "node",
        "install Node.js 20+ (apt-get install -y nodejs npm)",
    );
    require_program("npm", "install npm (apt-get install -y npm)");
    require_program(
        "chromium",
        "install Debian's chromium (apt-get install -y chromium); .ci/run does",
    );
    npm_ci(&dir);
    let bin = tokio::task::spawn_blocking(gateway_bin)
        .await
        .expect("gateway build");
    let artifacts = target_dir().join("web-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let log = artifacts.join(log_name);
    let out = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-timeout=600000"])
        .args(files)
        .current_dir(&dir)
        .env("CHAT_GATEWAY_BIN", &bin)
        .env("CHAT_WEB_ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start node --test");
    let started = Instant::now();
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().ok().flatten();
        std::future::ready(status.is_some())
    })
    .await;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(120).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        status.is_some_and(|s| s.success()),
        "node --test {files:?} failed ({status:?}) after {:?}; screenshots and logs in {}; output ({}):\n{tail}",
        started.elapsed(),
        artifacts.display(),
        log.display()
    );
    println!("{tail}");
}
