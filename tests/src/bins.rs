//! The binaries under test: built once per test process with cargo (a no-op when up to date, so
//! a stale binary is never tested) and located through cargo's own artifact report.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::{target_dir, workspace_root};

/// Path of the `chat-gateway` binary: `CHAT_GATEWAY_BIN` if set, else built once per test process
/// with `cargo build -p chat-gateway` (a no-op when it is up to date, so a stale binary is never
/// tested) and located through cargo's own artifact report.
pub fn gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CHAT_GATEWAY_BIN") {
            return PathBuf::from(bin);
        }
        build_gateway()
    })
    .clone()
}

fn build_gateway() -> PathBuf {
    build_bin("chat-gateway", "chat-gateway")
}

/// Path of the `chatctl` binary, built once per test process like [`gateway_bin`].
pub fn chatctl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("chatctl", "chatctl")).clone()
}

/// Path of the `chat-cli` binary, built once per test process like [`gateway_bin`].
pub fn chat_cli_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("chat-cli", "chat-cli"))
        .clone()
}

/// Builds `bin` of `package` (a no-op when it is up to date) and returns its path.
fn build_bin(package: &str, bin_name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin_name,
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    assert!(
        output.status.success(),
        "`cargo build -p {package}` failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executable = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin_name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from));
    let bin = executable.unwrap_or_else(|| target_dir().join("debug").join(bin_name));
    assert!(
        bin.exists(),
        "{bin_name} binary not found at {}",
        bin.display()
    );
    bin
}
