//! Child processes under test: output in a log file, killed by PID on drop, the log's tail printed
//! when the test fails.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process with its output in a log file; killed (SIGKILL) on drop. On a panicking test
/// the log's tail is printed and the directory kept.
pub struct Proc {
    name: &'static str,
    child: Option<Child>,
    pid: u32,
    dir: PathBuf,
    log: PathBuf,
    exit: Option<ExitStatus>,
    /// Remove `dir` on drop when the test passed.
    owns_dir: bool,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `dir/log_name`. The directory is
    /// removed on drop unless the test failed or [`Proc::keep_dir`] was called.
    pub fn spawn(name: &'static str, mut command: Command, dir: &Path, log_name: &str) -> Proc {
        let log = dir.join(log_name);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log file handle");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Proc {
            name,
            pid: child.id(),
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
            exit: None,
            owns_dir: true,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the directory on drop (a restarted process goes on logging there, or a failure
    /// report points at it).
    pub fn keep_dir(&mut self) {
        self.owns_dir = false;
    }

    /// Its exit status, if it has exited (reaped on the first call that sees it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// SIGKILLs it (by its PID, through the child handle) and reaps it.
    pub fn kill9(&mut self) {
        if self.try_exit().is_none()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    /// Waits up to `timeout` for it to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log {} (last 60 lines) ----\n{}\n---- end of {} log ----",
                self.name,
                self.pid,
                self.log.display(),
                file_tail(&self.log, 60),
                self.name
            );
        } else if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends `signal` (e.g. `"TERM"`, `"KILL"`, `"STOP"`) to one process by its PID, with the
/// system's `kill` command (the workspace forbids `unsafe`, so no `libc::kill`).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run `kill -{signal} {pid}`: {e}"));
    assert!(status.success(), "`kill -{signal} {pid}` failed: {status}");
}

/// The last `lines` lines of a text file (for failure reports).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("<cannot open {}>", path.display());
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
