//! The Redis backend: the [`Store`](crate::Store) and [`Broker`](crate::Broker) contracts of the
//! in-memory backend, shared by every gateway node through one Redis.
//!
//! - Multi-key updates (post, join, presence changes, cursor moves) are Lua scripts
//!   (`scripts.rs`, `lua/*.lua`), so each is atomic, and a post's seq assignment and its PUBLISH
//!   happen in one step: every subscriber sees one order per room.
//! - Commands share one multiplexed connection per node: concurrent calls are pipelined on it by
//!   the client, so a busy node sends many commands per write and Redis answers many per read,
//!   and no call pays a connection checkout (deadpool's per-checkout `PING` and `UNWATCH` doubled
//!   the commands Redis ran). It is replaced when it breaks. The [`deadpool_redis`] pool remains
//!   for exclusive connections: loading scripts and the readiness check, which must prove that
//!   Redis accepts new connections. The broker has one dedicated pub/sub connection
//!   (`broker.rs`) that reconnects and resubscribes on its own.
//! - Every call is bounded by `command_timeout_ms`: while Redis is down calls fail fast with
//!   [`BackendError::Unavailable`] and recover by themselves when it is back, without reopening
//!   the backend.
//!
//! The key layout is in `keys.rs` and, with `redis-cli` examples, in `docs/redis.md`.

mod broker;
mod keys;
mod reply;
mod scripts;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};
use tokio::sync::mpsc;

use crate::{Backend, BackendError, EVENT_QUEUE, Result};

use self::keys::Keys;
use self::reply::map_error;
use self::scripts::Scripts;

/// Settings of the Redis backend. It has no defaults of its own: the gateway fills every field
/// from its settings, whose defaults live only in `config/default.toml`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host:port[/db]`, or `rediss://…` for TLS. The credentials are
    /// used by every connection (commands, the pool and pub/sub) and never logged: see
    /// [`redacted_url`].
    pub url: String,
    /// PEM file of the CA certificate(s) a `rediss://` server's certificate must chain to. Empty:
    /// the system's trusted roots.
    pub tls_ca_file: String,
    /// Prefix of every key and channel (`redis.prefix`); lets several clusters share one Redis.
    pub prefix: String,
    /// This node's id, unique in the cluster (it tags this node's presence entries). Must not
    /// contain `|`.
    pub node_id: String,
    /// How long a presence entry lives after its node's last refresh (the lease), in ms; a dead
    /// node's users are reaped once it has run out. The node must refresh well within it: the
    /// gateway uses half of `presence.ttl_secs` and refreshes every quarter.
    pub presence_lease_ms: u64,
    /// Messages kept per room log and per direct-message inbox (`history.per_room`).
    pub history_per_room: usize,
    /// How long a user's read cursors (their offline position in each room) survive without any
    /// activity (`offline.ttl_secs`). Also the TTL of every key of a room and of an inbox, renewed
    /// by their activity (docs/redis.md): state nobody uses is freed after it.
    pub cursor_ttl_secs: u64,
    /// Connections in the command pool (`redis.pool_size`).
    pub pool_size: usize,
    /// Upper bound of every backend call, in milliseconds (`redis.command_timeout_ms`).
    pub command_timeout_ms: u64,
}

/// `url` with its password (and user name) replaced by `***`, for log lines and errors.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL we can take apart: say nothing of it rather than risk printing a password.
        return "<unparsable redis URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// The redis client for `config`: the URL's credentials and TLS, and for `rediss://` the CA of
/// `tls_ca_file` when set.
fn client(config: &RedisConfig) -> Result<redis::Client> {
    // The redis crate's URL errors do not quote the URL, but ours never do either.
    let invalid = |e: RedisError| {
        BackendError::Config(format!(
            "invalid Redis URL {}: {e}",
            redacted_url(&config.url)
        ))
    };
    if config.tls_ca_file.is_empty() {
        return redis::Client::open(config.url.as_str()).map_err(invalid);
    }
    if !config.url.starts_with("rediss://") {
        return Err(BackendError::Config(
            "redis.tls_ca_file is set but redis.url is not rediss://".to_owned(),
        ));
    }
    let root_cert = std::fs::read(&config.tls_ca_file).map_err(|e| {
        BackendError::Config(format!(
            "cannot read redis.tls_ca_file {}: {e}",
            config.tls_ca_file
        ))
    })?;
    redis::Client::build_with_tls(
        config.url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
    .map_err(invalid)
}

impl RedisConfig {
    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(BackendError::Config(format!("redis: {why}")));
        if self.node_id.is_empty()
            || self.node_id.len() > 128
            || self.node_id.contains('|')
            || self
                .node_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad(
                "node_id must be 1-128 characters without `|`, spaces or control characters",
            );
        }
        if self.prefix.chars().any(char::is_control) {
            return bad("prefix must not contain control characters");
        }
        if self.presence_lease_ms < 100 {
            return bad("presence_lease_ms must be at least 100");
        }
        if self.cursor_ttl_secs == 0 {
            return bad("cursor_ttl_secs must be at least 1");
        }
        if self.command_timeout_ms == 0 {
            return bad("command_timeout_ms must be at least 1");
        }
        Ok(())
    }
}

/// Opens the Redis backend: builds the command pool, loads the scripts and opens the pub/sub
/// connection.
///
/// Fails only with [`BackendError::Config`] (a malformed URL or setting). Redis itself may be
/// down: calls then fail with [`BackendError::Unavailable`] until it answers, the pub/sub
/// connection keeps trying in the background, and the backend recovers on its own — at startup
/// as after any later outage.
pub async fn open(config: RedisConfig) -> Result<Backend> {
    config.validate()?;
    let timeout = Duration::from_millis(config.command_timeout_ms);
    let client = client(&config)?;
    let connection_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    // The pool connects with the same connection info (credentials, TLS and its CA) as the
    // multiplexed and pub/sub connections.
    let manager = Manager::new_with_config(
        client.get_connection_info().clone(),
        connection_config.clone(),
    )
    .map_err(|e| BackendError::Config(format!("cannot build the Redis pool: {e}")))?;
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| BackendError::Config(format!("cannot build the Redis pool: {e}")))?;
    let redis = Redis {
        pool,
        shared: Arc::new(Shared {
            client: client.clone(),
            config: connection_config,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }),
        timeout,
    };
    let scripts = Scripts::new();
    // Preloading only saves the first calls a NOSCRIPT round trip (scripts load themselves on
    // demand), so a Redis that is down at startup is not a reason to refuse to start.
    let preloaded = redis
        .timed("load scripts", async {
            let mut conn = redis.exclusive().await?;
            for script in scripts.all() {
                script
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| map_error("load scripts", &e))?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = preloaded {
        if is_auth_failure(&e) {
            // Not going to fix itself like an outage: say which setting is wrong (never its value).
            tracing::error!(
                url = %redacted_url(&config.url),
                error = %e,
                "redis refused the credentials of redis.url (user/password); retrying, not ready meanwhile"
            );
        } else {
            tracing::warn!(error = %e, "redis is not reachable yet; the backend will connect when it is");
        }
    }

    let keys = Keys::new(&config.prefix);
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let broker = broker::RedisBroker::start(client, redis.clone(), keys.clone(), tx).await?;
    let store = store::RedisStore::new(redis, keys, scripts, &config);
    tracing::info!(
        node = %config.node_id,
        prefix = %config.prefix,
        url = %redacted_url(&config.url),
        "redis backend open"
    );
    Ok(Backend {
        store: Arc::new(store),
        broker: Arc::new(broker),
        events: rx,
        kind: "redis",
    })
}

/// Whether `e` says Redis refused the URL's credentials (rather than being unreachable).
pub(crate) fn is_auth_failure(e: &BackendError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    ["wrongpass", "noauth", "authentication failed"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// The node's connections to Redis, with the per-call time bound.
#[derive(Clone)]
pub(crate) struct Redis {
    pool: Pool,
    shared: Arc<Shared>,
    timeout: Duration,
}

/// The multiplexed connection every command goes through, tagged with a generation so that a
/// call that saw it break replaces that one, not a newer one another call already made.
struct Shared {
    client: redis::Client,
    config: AsyncConnectionConfig,
    current: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    /// One reconnect at a time: callers arriving meanwhile wait for its connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Shared {
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn get(&self) -> Result<(u64, MultiplexedConnection)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _one = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| BackendError::Unavailable(format!("no Redis connection: {e}")))?;
        let mut slot = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = slot.as_ref().map_or(1, |(g, _)| g + 1);
        *slot = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops connection `generation` after an error that means it is broken.
    fn discard(&self, generation: u64, error: &RedisError) {
        let broken = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error()
            || error.is_connection_refusal();
        if !broken {
            return;
        }
        let mut slot = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::debug!(error = %error, "redis connection broken; reconnecting on next use");
            *slot = None;
        }
    }
}

impl Redis {
    /// Runs `fut` (which may send several commands) within the command timeout; past it the call
    /// is `Unavailable`. A command that timed out may still have run on the server: the caller
    /// cannot know, which is why posts carry `clientMsgId`.
    pub(crate) async fn timed<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Unavailable(format!(
                "{what}: no answer from Redis within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// A connection of its own from the pool (checked with a PING, replaced if broken).
    pub(crate) async fn exclusive(&self) -> Result<deadpool_redis::Connection> {
        self.pool
            .get()
            .await
            .map_err(|e| BackendError::Unavailable(format!("no Redis connection: {e}")))
    }

    /// Runs `op` on the shared connection, replacing it if the error says it broke.
    async fn shared<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = std::result::Result<T, RedisError>>,
    {
        let started = std::time::Instant::now();
        let result = self
            .timed(what, async {
                let (generation, conn) = self.shared.get().await?;
                op(conn).await.map_err(|e| {
                    self.shared.discard(generation, &e);
                    map_error(what, &e)
                })
            })
            .await;
        // Every command, script and pipeline goes through here: one histogram per `what` (a fixed
        // set of operation names, so bounded cardinality).
        metrics::histogram!("chat_redis_command_seconds", "what" => what.to_owned())
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("chat_redis_errors_total", "what" => what.to_owned()).increment(1);
        }
        result
    }

    /// One command.
    pub(crate) async fn query(&self, what: &str, cmd: &redis::Cmd) -> Result<Value> {
        self.shared(what, |mut conn| async move {
            cmd.query_async::<Value>(&mut conn).await
        })
        .await
    }

    /// A pipeline (or MULTI/EXEC block, sent as one unit); one reply per command not ignored.
    pub(crate) async fn pipeline(&self, what: &str, pipe: &redis::Pipeline) -> Result<Vec<Value>> {
        self.shared(what, |mut conn| async move {
            pipe.query_async::<Vec<Value>>(&mut conn).await
        })
        .await
    }

    /// A script (EVALSHA, loading it on NOSCRIPT).
    pub(crate) async fn script(
        &self,
        what: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value> {
        self.shared(what, |mut conn| async move {
            invocation.invoke_async::<Value>(&mut conn).await
        })
        .await
    }

    /// Checks Redis accepts a new connection and answers on it (readiness).
    pub(crate) async fn ping_exclusive(&self, what: &str) -> Result<Value> {
        self.timed(what, async {
            let mut conn = self.exclusive().await?;
            redis::cmd("PING")
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| map_error(what, &e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redacted_url("redis://:secret@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("rediss://chat:p@ss@redis.example:6380"),
            "rediss://***@redis.example:6380"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redacted_url("secret"), "<unparsable redis URL>");
    }
}
