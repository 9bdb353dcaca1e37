//! Settings, loaded with the `config` crate.
//!
//! `config/default.toml` is compiled into the binary and is the only place defaults live, so the
//! documented file and the running defaults cannot disagree. A `--config FILE` and then environment
//! variables `CHAT__SECTION__KEY` override it.

use std::path::Path;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// The documented defaults, built in.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// All settings of a gateway node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Settings {
    pub server: ServerSettings,
    pub heartbeat: HeartbeatSettings,
    pub limits: LimitSettings,
    pub history: HistorySettings,
    pub offline: OfflineSettings,
    pub presence: PresenceSettings,
    pub cluster: ClusterSettings,
    pub delivery: DeliverySettings,
    pub redis: RedisSettings,
    pub log: LogSettings,
    pub web: WebSettings,
    pub websocket: WebSocketSettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ServerSettings {
    pub listen: String,
    pub node_id: String,
    pub shutdown_grace_secs: u64,
    pub drain_secs: u64,
    pub handshake_timeout_secs: u64,
    /// Origins (`scheme://host[:port]`) allowed to open a WebSocket from a browser; empty: the
    /// request's own host only. Requests without an `Origin` header are not from a browser page
    /// and are allowed.
    pub allowed_origins: Vec<String>,
}

/// `[heartbeat]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct HeartbeatSettings {
    pub interval_secs: u64,
    pub timeout_secs: u64,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitSettings {
    pub max_content_bytes: usize,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    pub outbound_queue_bytes: usize,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub max_rooms_per_connection: usize,
    pub write_timeout_secs: u64,
    pub posts_per_second: u32,
    pub posts_burst: u32,
    pub user_posts_per_second: u32,
    pub user_posts_burst: u32,
    pub flood_close_after: u32,
    pub joins_per_second: u32,
    pub login_timeout_secs: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_rooms: usize,
    pub max_inboxes: usize,
}

/// `[history]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct HistorySettings {
    pub per_room: usize,
    pub max_page: u32,
    pub max_bytes_per_room: usize,
    pub max_bytes_total: usize,
}

/// `[offline]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OfflineSettings {
    pub max_per_room: usize,
    pub ttl_secs: u64,
}

/// `[presence]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PresenceSettings {
    pub ttl_secs: u64,
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ClusterSettings {
    pub sync_interval_secs: u64,
    pub cursor_flush_ms: u64,
}

/// `[delivery]`: resend on missing acks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DeliverySettings {
    pub ack_timeout_secs: u64,
    pub max_retries: u32,
    pub max_unacked: usize,
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub pool_size: usize,
    pub command_timeout_ms: u64,
    pub tls_ca_file: String,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LogSettings {
    pub level: String,
    pub format: String,
}

/// `[websocket]`: the socket driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct WebSocketSettings {
    pub write_delay_ms: u64,
    pub compression: Compression,
    pub compression_threshold_bytes: usize,
}

/// `websocket.compression`: whether permessage-deflate is offered to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Never negotiated: every frame goes out as it is.
    Off,
    /// Negotiated with clients that offer it (no context takeover).
    On,
}

/// `[web]`: the browser chat served at `/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct WebSettings {
    /// Room ids offered to every visitor (the room cards shown before joining anything).
    pub default_rooms: Vec<String>,
}

/// `[auth]`: who a client is (see [`crate::auth`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct AuthSettings {
    pub mode: String,
    pub secret: String,
    pub public_key_file: String,
    pub audience: String,
    pub issuer: String,
    pub leeway_secs: u64,
    pub timeout_secs: u64,
    pub jwks_url: String,
    pub jwks_refresh_secs: u64,
    pub jwks_refresh_min_secs: u64,
}

/// `[tls]`: serve https:// and wss:// with these PEM files (see [`crate::tls`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TlsSettings {
    pub cert: String,
    pub key: String,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A file or variable could not be read or has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// Values that do not make sense together.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads defaults, then `file` (if any), then `CHAT__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_with_env(file, Environment::with_prefix("CHAT"))
    }

    /// The built-in defaults alone (for tests and in-process servers).
    pub fn defaults() -> Result<Self, SettingsError> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn load_with_env(file: Option<&Path>, env: Environment) -> Result<Self, SettingsError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).required(true));
        }
        // Only `web.default_rooms` is a list: every other variable stays a plain string, so a
        // comma in e.g. `log.level` ("chat_gateway=debug,info") is not split.
        let env = env
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("web.default_rooms")
            .with_list_parse_key("server.allowed_origins");
        let mut settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        // From the environment, "a, b" means ["a", "b"] and an empty value means no rooms.
        settings.web.default_rooms = settings
            .web
            .default_rooms
            .iter()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
            .collect();
        settings.server.allowed_origins = settings
            .server
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects combinations that would make the server misbehave rather than fail loudly.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_owned()));
        if self.heartbeat.interval_secs == 0 {
            return invalid("heartbeat.interval_secs must be at least 1");
        }
        if self.heartbeat.timeout_secs <= self.heartbeat.interval_secs {
            return invalid("heartbeat.timeout_secs must be greater than heartbeat.interval_secs");
        }
        if self.limits.max_content_bytes == 0
            || self.limits.max_frame_bytes < self.limits.max_content_bytes
        {
            return invalid(
                "limits.max_frame_bytes must be at least limits.max_content_bytes (> 0)",
            );
        }
        if self.limits.outbound_queue == 0 || self.limits.max_rooms_per_connection == 0 {
            return invalid(
                "limits.outbound_queue and limits.max_rooms_per_connection must be positive",
            );
        }
        if self.limits.outbound_queue_bytes == 0 {
            return invalid("limits.outbound_queue_bytes must be positive");
        }
        if self.server.handshake_timeout_secs == 0 {
            return invalid("server.handshake_timeout_secs must be at least 1");
        }
        if self.history.per_room == 0 || self.history.max_page == 0 {
            return invalid("history.per_room and history.max_page must be positive");
        }
        if self.limits.max_rooms == 0 || self.limits.max_inboxes == 0 {
            return invalid("limits.max_rooms and limits.max_inboxes must be positive");
        }
        if self.presence.ttl_secs < 2 {
            return invalid(
                "presence.ttl_secs must be at least 2 (leases of ttl/2 are renewed every ttl/4)",
            );
        }
        if self.cluster.sync_interval_secs == 0 {
            return invalid("cluster.sync_interval_secs must be at least 1");
        }
        if self.delivery.ack_timeout_secs == 0 || self.delivery.max_unacked == 0 {
            return invalid("delivery.ack_timeout_secs and delivery.max_unacked must be positive");
        }
        if !(10..=60_000).contains(&self.cluster.cursor_flush_ms) {
            return invalid("cluster.cursor_flush_ms must be between 10 and 60000");
        }
        if self.websocket.write_delay_ms > 1000 {
            return invalid("websocket.write_delay_ms must be at most 1000");
        }
        if let Err(e) = crate::auth::Verifier::from_settings(&self.auth) {
            return Err(SettingsError::Invalid(e));
        }
        if self.auth.timeout_secs == 0 || self.limits.login_timeout_secs == 0 {
            return invalid("auth.timeout_secs and limits.login_timeout_secs must be at least 1");
        }
        if self.limits.posts_per_second == 0
            || self.limits.posts_burst == 0
            || self.limits.user_posts_per_second == 0
            || self.limits.user_posts_burst == 0
            || self.limits.joins_per_second == 0
        {
            return invalid(
                "limits.posts_per_second, limits.posts_burst, limits.user_posts_per_second, limits.user_posts_burst and limits.joins_per_second must be positive",
            );
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return invalid("tls.cert and tls.key must be set together");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid("log.format must be \"text\" or \"json\"");
        }
        if let Some(bad) = self
            .web
            .default_rooms
            .iter()
            .find(|id| chat_protocol::RoomId::new(id.as_str()).is_err())
        {
            return Err(SettingsError::Invalid(format!(
                "web.default_rooms: `{bad}` is not a room id (^[A-Za-z0-9_.:-]{{1,64}}$)"
            )));
        }
        Ok(())
    }

    /// Heartbeat ping period.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat.interval_secs)
    }

    /// The resend policy of acking connections.
    pub fn delivery_policy(&self) -> crate::delivery::Policy {
        crate::delivery::Policy {
            ack_timeout: Duration::from_secs(self.delivery.ack_timeout_secs),
            max_retries: self.delivery.max_retries,
            max_unacked: self.delivery.max_unacked,
        }
    }

    /// Silence after which a connection is reaped.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Environment::with_prefix("CHAT").source(Some(map))
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let s = Settings::defaults().expect("defaults");
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.heartbeat.interval_secs, 25);
        assert_eq!(s.heartbeat.timeout_secs, 60);
        assert_eq!(s.limits.max_content_bytes, 4096);
        assert_eq!(s.limits.max_frame_bytes, 65536);
        assert_eq!(s.history.per_room, 1000);
        assert_eq!(s.presence.ttl_secs, 15);
        assert_eq!(s.server.drain_secs, 5);
        assert_eq!(s.redis.prefix, "chat:");
        assert!(s.redis.url.is_empty());
        assert_eq!(s.web.default_rooms, ["lobby", "games", "music", "tech"]);
        assert_eq!(s.delivery.ack_timeout_secs, 10);
        assert_eq!(s.delivery.max_retries, 3);
        assert_eq!(s.delivery.max_unacked, 1024);
    }

    #[test]
    fn default_rooms_come_from_a_comma_separated_variable() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("CHAT__WEB__DEFAULT_ROOMS", "general,random"),
                ("CHAT__LOG__LEVEL", "chat_gateway=debug,info"),
            ]),
        )
        .expect("load");
        assert_eq!(s.web.default_rooms, ["general", "random"]);
        assert_eq!(
            s.log.level, "chat_gateway=debug,info",
            "other keys are not lists"
        );

        let spaced = Settings::load_with_env(None, env(&[("CHAT__WEB__DEFAULT_ROOMS", "a, b")]))
            .expect("spaces");
        assert_eq!(spaced.web.default_rooms, ["a", "b"]);
        let empty =
            Settings::load_with_env(None, env(&[("CHAT__WEB__DEFAULT_ROOMS", "")])).expect("empty");
        assert!(empty.web.default_rooms.is_empty());
        let err = Settings::load_with_env(None, env(&[("CHAT__WEB__DEFAULT_ROOMS", "ok,not ok")]))
            .expect_err("bad room id");
        assert!(err.to_string().contains("default_rooms"), "{err}");
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("CHAT__SERVER__LISTEN", "0.0.0.0:9000"),
                ("CHAT__HEARTBEAT__INTERVAL_SECS", "2"),
                ("CHAT__REDIS__URL", "redis://127.0.0.1:6390"),
                ("CHAT__SERVER__NODE_ID", "n1"),
            ]),
        )
        .expect("load");
        assert_eq!(s.server.listen, "0.0.0.0:9000");
        assert_eq!(s.heartbeat.interval_secs, 2);
        assert_eq!(s.redis.url, "redis://127.0.0.1:6390");
        assert_eq!(s.server.node_id, "n1");
    }

    #[test]
    fn a_config_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("chat-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "[history]\nper_room = 7\n").expect("write");
        let s = Settings::load_with_env(Some(&path), env(&[])).expect("load");
        assert_eq!(s.history.per_room, 7);
        assert_eq!(
            s.heartbeat.timeout_secs, 60,
            "untouched keys keep their defaults"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_values_are_reported() {
        let err = Settings::load_with_env(None, env(&[("CHAT__HEARTBEAT__TIMEOUT_SECS", "1")]))
            .expect_err("timeout below interval");
        assert!(err.to_string().contains("timeout_secs"), "{err}");
        let err = Settings::load_with_env(None, env(&[("CHAT__LIMITS__MAX_FRAME_BYTES", "lots")]))
            .expect_err("not a number");
        assert!(err.to_string().contains("max_frame_bytes"), "{err}");
        let err =
            Settings::load_with_env(None, env(&[("CHAT__SERVER__LISTN", "x")])).expect_err("typo");
        assert!(err.to_string().contains("listn"), "{err}");
        assert!(Settings::load(Some(Path::new("/nonexistent/chat.toml"))).is_err());
        for (key, value) in [
            ("CHAT__WEBSOCKET__WRITE_DELAY_MS", "1001"),
            ("CHAT__CLUSTER__CURSOR_FLUSH_MS", "0"),
        ] {
            let err = Settings::load_with_env(None, env(&[(key, value)])).expect_err(key);
            let name = key.rsplit("__").next().unwrap_or(key).to_lowercase();
            assert!(err.to_string().contains(&name), "{key}: {err}");
        }
        let ok = Settings::load_with_env(None, env(&[("CHAT__WEBSOCKET__WRITE_DELAY_MS", "5")]))
            .expect("a write delay");
        assert_eq!(ok.websocket.write_delay_ms, 5);
        assert_eq!(
            Settings::defaults()
                .expect("defaults")
                .websocket
                .write_delay_ms,
            0
        );
    }
}
