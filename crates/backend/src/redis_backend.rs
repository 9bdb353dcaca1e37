//! The Redis backend (cluster mode). Placeholder until the implementation lands.

use crate::{Backend, BackendError, Result};

/// Settings of the Redis backend.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub node_id: String,
    pub presence_ttl_secs: u64,
    pub history_per_room: usize,
    pub cursor_ttl_secs: u64,
    pub pool_size: usize,
    pub command_timeout_ms: u64,
}

/// Not implemented yet.
pub async fn open(_config: RedisConfig) -> Result<Backend> {
    Err(BackendError::Unavailable(
        "the redis backend is not built yet".into(),
    ))
}
