//! Test fixtures shared by every test suite that runs real processes: `crates/backend/tests`
//! (the Redis backend against a real `redis-server`) and `tests/` (real gateways).
//!
//! - [`RedisServer`] runs one throwaway `redis-server` on a free loopback port (never the default
//!   6379), optionally with an append-only file, and can restart or signal it by PID.
//! - [`Proc`] is a child process logging to a file, killed on drop; on a failing test its log tail
//!   is printed and its directory kept.
//! - [`fresh_dir`] / [`TestDir`] give each test its own directory under the target directory.
//! - [`free_port`], [`wait_until`], [`default_timeout`], [`send_signal`] and [`file_tail`] are the
//!   small pieces every fixture needs.
//!
//! No mocks: everything here starts or talks to real processes.

mod paths;
mod process;
mod redis;
mod wait;

pub use paths::{TestDir, fresh_dir, target_dir, workspace_root};
pub use process::{Proc, file_tail, send_signal};
pub use redis::{RedisServer, redis_ping};
pub use wait::{default_timeout, free_port, wait_until};
