//! Read-only views of the cluster's Redis keys (`docs/redis.md`): presence per node, names,
//! a user's rooms, cursors and inbox, and the live nodes. Only reading commands are sent.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::Error;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Rooms whose membership is checked per pipeline in `user`.
const CHUNK: usize = 500;

/// A connection and the key prefix.
pub struct View {
    conn: MultiplexedConnection,
    prefix: String,
}

/// One `user|node` presence entry of a room.
pub struct Presence {
    pub user: String,
    pub node: String,
    /// Until the lease runs out (negative: expired, not reaped yet).
    pub expires_in_ms: i64,
}

/// A node in `chat:nodes`.
pub struct Node {
    pub id: String,
    pub expires_in_ms: i64,
}

/// A user's position in one room.
pub struct UserRoom {
    pub room: String,
    pub seq: u64,
    pub epoch: Option<String>,
    pub cursor: Option<u64>,
    pub cursor_epoch: Option<String>,
    pub online: bool,
}

impl UserRoom {
    /// Messages after the cursor in the current epoch (all of them when the cursor belongs to an
    /// older epoch). The gateway replays at most `offline.max_per_room` of them on return.
    pub fn unread(&self) -> u64 {
        match (&self.cursor, &self.cursor_epoch) {
            (Some(c), Some(e)) if Some(e) == self.epoch.as_ref() => self.seq.saturating_sub(*c),
            (Some(c), None) => self.seq.saturating_sub(*c),
            _ => self.seq,
        }
    }
}

/// What `chatctl user` shows.
pub struct UserInfo {
    pub rooms: Vec<UserRoom>,
    pub inbox_len: u64,
    pub inbox_seq: u64,
    pub inbox_cursor: Option<u64>,
}

async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    Ok(tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| format!("Redis did not answer within {TIMEOUT:?}"))??)
}

/// `{seq}:{epoch}` (or a plain `{seq}` from an older version).
fn parse_cursor(raw: &str) -> (Option<u64>, Option<String>) {
    match raw.split_once(':') {
        Some((seq, epoch)) => (seq.parse().ok(), Some(epoch.to_owned())),
        None => (raw.parse().ok(), None),
    }
}

impl View {
    /// Connects to `url`.
    pub async fn connect(url: &str, prefix: &str) -> Result<View, Error> {
        let client = redis::Client::open(url).map_err(|e| format!("Redis URL {url}: {e}"))?;
        let conn = timed(client.get_multiplexed_async_connection())
            .await
            .map_err(|e| format!("Redis at {url}: {e}"))?;
        Ok(View {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn room_key(&self, room: &str, part: &str) -> String {
        format!("{}room:{{{room}}}:{part}", self.prefix)
    }

    fn user_key(&self, user: &str, part: &str) -> String {
        format!("{}user:{{{user}}}:{part}", self.prefix)
    }

    /// Redis's clock in ms: presence scores are in it.
    async fn now_ms(&mut self) -> Result<i64, Error> {
        let (secs, micros): (i64, i64) =
            timed(redis::cmd("TIME").query_async(&mut self.conn)).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Every `user|node` presence entry of `room`.
    pub async fn room_presence(&mut self, room: &str) -> Result<Vec<Presence>, Error> {
        let now = self.now_ms().await?;
        let key = self.room_key(room, "conns");
        let entries: Vec<(String, f64)> = timed(
            redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut self.conn),
        )
        .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(member, expiry)| {
                let (user, node) = member.split_once('|')?;
                Some(Presence {
                    user: user.to_owned(),
                    node: node.to_owned(),
                    expires_in_ms: expiry as i64 - now,
                })
            })
            .collect())
    }

    /// Display names of the room's users.
    pub async fn room_names(&mut self, room: &str) -> Result<HashMap<String, String>, Error> {
        let key = self.room_key(room, "names");
        timed(redis::cmd("HGETALL").arg(&key).query_async(&mut self.conn)).await
    }

    /// Nodes in `chat:nodes` with their liveness expiry.
    pub async fn nodes(&mut self) -> Result<Vec<Node>, Error> {
        let now = self.now_ms().await?;
        let key = format!("{}nodes", self.prefix);
        let entries: Vec<(String, f64)> = timed(
            redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut self.conn),
        )
        .await?;
        Ok(entries
            .into_iter()
            .map(|(id, expiry)| Node {
                id,
                expires_in_ms: expiry as i64 - now,
            })
            .collect())
    }

    /// The rooms `user` is a member of, with cursors and heads, and the inbox.
    pub async fn user(&mut self, user: &str) -> Result<UserInfo, Error> {
        let now = self.now_ms().await?;
        let all: Vec<String> = timed(
            redis::cmd("SMEMBERS")
                .arg(format!("{}rooms", self.prefix))
                .query_async(&mut self.conn),
        )
        .await?;
        let mut member_of = Vec::new();
        for chunk in all.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.cmd("SISMEMBER")
                    .arg(self.room_key(room, "members"))
                    .arg(user);
            }
            let flags: Vec<bool> = timed(pipe.query_async(&mut self.conn)).await?;
            member_of.extend(
                chunk
                    .iter()
                    .zip(flags)
                    .filter(|(_, m)| *m)
                    .map(|(r, _)| r.clone()),
            );
        }
        member_of.sort();
        let cursors: HashMap<String, String> = timed(
            redis::cmd("HGETALL")
                .arg(self.user_key(user, "cursors"))
                .query_async(&mut self.conn),
        )
        .await?;
        let mut rooms = Vec::new();
        for chunk in member_of.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.cmd("HMGET")
                    .arg(self.room_key(room, "meta"))
                    .arg("seq")
                    .arg("epoch");
                pipe.cmd("ZSCORE")
                    .arg(self.room_key(room, "online"))
                    .arg(user);
            }
            let replies: Vec<redis::Value> = timed(pipe.query_async(&mut self.conn)).await?;
            for (i, room) in chunk.iter().enumerate() {
                let (seq, epoch): (Option<u64>, Option<String>) = redis::from_redis_value(
                    replies.get(2 * i).cloned().unwrap_or(redis::Value::Nil),
                )
                .unwrap_or((None, None));
                let online: Option<f64> = redis::from_redis_value(
                    replies.get(2 * i + 1).cloned().unwrap_or(redis::Value::Nil),
                )
                .unwrap_or(None);
                let (cursor, cursor_epoch) = cursors
                    .get(room)
                    .map_or((None, None), |raw| parse_cursor(raw));
                rooms.push(UserRoom {
                    room: room.clone(),
                    seq: seq.unwrap_or(0),
                    epoch,
                    cursor,
                    cursor_epoch,
                    online: online.is_some_and(|expiry| expiry as i64 > now),
                });
            }
        }
        let inbox_len: u64 = timed(
            redis::cmd("ZCARD")
                .arg(self.user_key(user, "inbox"))
                .query_async(&mut self.conn),
        )
        .await?;
        let inbox_seq: Option<u64> = timed(
            redis::cmd("HGET")
                .arg(self.user_key(user, "inbox:meta"))
                .arg("seq")
                .query_async(&mut self.conn),
        )
        .await?;
        let inbox_cursor = cursors
            .get(&format!("@{user}"))
            .and_then(|raw| parse_cursor(raw).0);
        Ok(UserInfo {
            rooms,
            inbox_len,
            inbox_seq: inbox_seq.unwrap_or(0),
            inbox_cursor,
        })
    }
}
