//! [`Store`] on Redis: membership, presence, logs and cursors (layout in [`super::keys`]).
//!
//! Anything that touches more than one key, or must read and write without a race, is one Lua
//! script ([`super::scripts`]); plain reads are single commands or pipelines. Log entries are
//! stored as their exact wire frame (`{"event":"message",...}`), so a replay is the stored text
//! and live delivery is the published text: the two can never differ.

use async_trait::async_trait;
use chat_protocol::{ChatMessage, RoomId, ServerFrame, UserId};
use redis::Value;
use serde::Serialize;

use super::Redis;
use super::RedisConfig;
use super::keys::Keys;
use super::reply::{self, array, next};
use super::scripts::Scripts;
use crate::memory::new_epoch;
use crate::{
    BackendError, Counts, CursorUpdate, Departed, DirectPosted, Draft, Head, JoinOutcome,
    JoinRequest, LeaveOutcome, Position, Posted, PresenceEntry, Reaped, Refreshed, Result, Revived,
    RoomSummary, Store, StreamKey,
};

/// Entries per `refresh_presence` script call: keeps each script short, so one node's refresh
/// never blocks Redis (single-threaded) for long, however many connections the node holds.
const REFRESH_CHUNK: usize = 256;

/// Rooms per `reap_presence` script call.
const REAP_CHUNK: usize = 256;

/// Streams per pipelined `heads` read.
const HEADS_CHUNK: usize = 512;

/// Cursor updates per `advance_cursors` script call.
const CURSOR_CHUNK: usize = 256;

/// Seqs and scores are doubles inside Redis; above 2^53 they are not exact, so such bounds are
/// sent as `+inf` (no real log gets anywhere near).
const MAX_EXACT_SCORE: u64 = 1 << 53;

/// Streams whose keys held more than this many verified streams are forgotten at once (and checked
/// again on their next post): the set stays small however many rooms a node ever sees.
const TYPES_SEEN_CAPACITY: usize = 100_000;

/// Streams whose keys this node has seen with the right types, so their posts skip the `TYPE`
/// checks (see `read_log` in common.lua). A stream is checked on its first post through this node
/// and again after any failed post.
#[derive(Default)]
struct TypesSeen(std::sync::Mutex<std::collections::HashSet<StreamKey>>);

impl TypesSeen {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<StreamKey>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a post touching `streams` must check their key types.
    fn must_check(&self, streams: &[&StreamKey]) -> bool {
        let seen = self.lock();
        !streams.iter().all(|s| seen.contains(*s))
    }

    /// Records the outcome of a post that did (`checked`) or did not check.
    fn record(&self, streams: &[&StreamKey], checked: bool, succeeded: bool) {
        let mut seen = self.lock();
        if !succeeded {
            for stream in streams {
                seen.remove(*stream);
            }
        } else if checked {
            if seen.len() + streams.len() > TYPES_SEEN_CAPACITY {
                seen.clear();
            }
            seen.extend(streams.iter().map(|s| (*s).clone()));
        }
    }
}

/// The Redis store.
pub(crate) struct RedisStore {
    redis: Redis,
    keys: Keys,
    scripts: Scripts,
    node_id: String,
    presence_ttl_ms: u64,
    history_cap: usize,
    cursor_ttl_secs: u64,
    types_seen: TypesSeen,
}

impl RedisStore {
    pub(crate) fn new(redis: Redis, keys: Keys, scripts: Scripts, config: &RedisConfig) -> Self {
        RedisStore {
            redis,
            keys,
            scripts,
            node_id: config.node_id.clone(),
            presence_ttl_ms: config.presence_lease_ms,
            history_cap: config.history_per_room.max(1),
            cursor_ttl_secs: config.cursor_ttl_secs,
            types_seen: TypesSeen::default(),
        }
    }
}

/// The part of a message frame Rust builds: everything but `event`, `seq`, `epoch` and `ts`,
/// which only the post script knows. Same field names as [`ChatMessage`].
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a RoomId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_user_id: Option<&'a UserId>,
    user_id: &'a UserId,
    user_name: &'a str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
}

/// The body JSON object spliced into the stored frame by the post scripts.
pub(crate) fn body_json(
    draft: &Draft,
    room: Option<&RoomId>,
    to: Option<&UserId>,
) -> Result<String> {
    serde_json::to_string(&Body {
        room_id: room,
        to_user_id: to,
        user_id: &draft.user_id,
        user_name: &draft.user_name,
        content: &draft.content,
        client_msg_id: draft.client_msg_id.as_deref(),
    })
    .map_err(|e| BackendError::Corrupt(format!("cannot encode the message: {e}")))
}

/// Decodes stored frames of a log, skipping (with a warning) anything that is not a message
/// frame: one planted or damaged entry must not make a whole room's history unreadable.
fn decode_log(what: &str, members: Vec<Value>) -> Vec<ChatMessage> {
    members
        .into_iter()
        .filter_map(|member| {
            let text = match reply::string(what, member) {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable log entry");
                    return None;
                }
            };
            match ServerFrame::decode(&text) {
                Ok(ServerFrame::Message(message)) => Some(message),
                Ok(_) | Err(_) => {
                    tracing::warn!(
                        what,
                        entry = %text.chars().take(200).collect::<String>(),
                        "skipping a log entry that is not a message frame"
                    );
                    None
                }
            }
        })
        .collect()
}

fn counts(what: &str, num: &Value, total: &Value) -> Result<Counts> {
    Ok(Counts {
        num: reply::uint(what, num)?,
        total: reply::uint(what, total)?,
    })
}

fn flag(what: &str, value: &Value) -> Result<bool> {
    Ok(reply::int(what, value)? != 0)
}

fn parse_cursor(what: &str, value: Value) -> Result<Option<Position>> {
    let Some(text) = reply::opt_string(what, value)? else {
        return Ok(None);
    };
    if text.is_empty() {
        return Ok(None);
    }
    Keys::parse_cursor_value(&text)
        .map(Some)
        .ok_or_else(|| BackendError::Corrupt(format!("{what}: cursor {text:?} is not a position")))
}

/// A new post's receipt from script reply items (callers set the retry flags).
fn posted(what: &str, seq: &Value, epoch: Value, ts: &Value) -> Result<Posted> {
    Ok(Posted {
        seq: reply::uint(what, seq)?,
        epoch: reply::epoch(what, epoch)?,
        ts: reply::uint(what, ts)?,
        duplicate: false,
        conflict: false,
    })
}

/// A score bound for ZRANGEBYSCORE.
fn score(seq: u64) -> String {
    if seq >= MAX_EXACT_SCORE {
        "+inf".to_owned()
    } else {
        seq.to_string()
    }
}

/// Redis time in ms from a TIME reply.
fn time_ms(value: Value) -> Result<u64> {
    let parts = array("TIME", value)?;
    let [secs, micros] = parts.as_slice() else {
        return Err(BackendError::Corrupt("TIME: unexpected reply".to_owned()));
    };
    let secs = reply::uint("TIME", secs)?;
    let micros = reply::uint("TIME", micros)?;
    Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
}

#[async_trait]
impl Store for RedisStore {
    async fn join(&self, req: &JoinRequest<'_>) -> Result<JoinOutcome> {
        const W: &str = "join";
        let stream = StreamKey::Room(req.room.clone());
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(self.keys.room_meta(req.room))
            .key(self.keys.room_members(req.room))
            .key(self.keys.room_names(req.room))
            .key(self.keys.room_online(req.room))
            .key(self.keys.room_conns(req.room))
            .key(self.keys.rooms())
            .key(self.keys.cursors(req.user))
            .key(self.keys.nodes())
            .arg(req.user.as_str())
            .arg(req.user_name)
            .arg(req.room_name.unwrap_or(""))
            .arg(req.room.as_str())
            .arg(new_epoch())
            .arg(&self.node_id)
            .arg(self.presence_ttl_ms)
            .arg(Keys::cursor_field(&stream))
            .arg(self.cursor_ttl_secs)
            .arg(self.cursor_ttl_secs);
        // Last, whatever comes before: emptied if this join creates the log's epoch.
        inv.key(self.keys.room_log(req.room))
            .key(self.keys.room_ids(req.room));
        let mut it = array(W, self.redis.script(W, &inv).await?)?.into_iter();
        let room_name = reply::string(W, next(W, &mut it)?)?;
        let epoch = reply::epoch(W, next(W, &mut it)?)?;
        let seq = reply::seq_field(W, next(W, &mut it)?)?;
        let counts = counts(W, &next(W, &mut it)?, &next(W, &mut it)?)?;
        let came_online = flag(W, &next(W, &mut it)?)?;
        let new_member = flag(W, &next(W, &mut it)?)?;
        let cursor = parse_cursor(W, next(W, &mut it)?)?;
        let presence_seq = reply::uint(W, &next(W, &mut it)?)?;
        Ok(JoinOutcome {
            room_name,
            head: Head { epoch, seq },
            counts,
            came_online,
            new_member,
            cursor,
            presence_seq,
        })
    }

    async fn go_offline(&self, room: &RoomId, user: &UserId) -> Result<LeaveOutcome> {
        const W: &str = "go_offline";
        let mut inv = self.scripts.go_offline.prepare_invoke();
        inv.key(self.keys.room_online(room))
            .key(self.keys.room_conns(room))
            .key(self.keys.nodes())
            .key(self.keys.room_members(room))
            .key(self.keys.room_meta(room))
            .arg(user.as_str())
            .arg(&self.node_id)
            .arg(self.cursor_ttl_secs);
        let mut it = array(W, self.redis.script(W, &inv).await?)?.into_iter();
        let went_offline = flag(W, &next(W, &mut it)?)?;
        let counts = counts(W, &next(W, &mut it)?, &next(W, &mut it)?)?;
        let presence_seq = reply::uint(W, &next(W, &mut it)?)?;
        Ok(LeaveOutcome {
            went_offline,
            counts,
            presence_seq,
        })
    }

    async fn leave(&self, room: &RoomId, user: &UserId) -> Result<LeaveOutcome> {
        const W: &str = "leave";
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.key(self.keys.room_members(room))
            .key(self.keys.room_names(room))
            .key(self.keys.room_online(room))
            .key(self.keys.room_conns(room))
            .key(self.keys.cursors(user))
            .key(self.keys.nodes())
            .key(self.keys.room_meta(room))
            .key(self.keys.rooms())
            .key(self.keys.room_log(room))
            .key(self.keys.room_ids(room))
            .arg(user.as_str())
            .arg(Keys::cursor_field(&StreamKey::Room(room.clone())))
            .arg(self.cursor_ttl_secs)
            .arg(room.as_str());
        let mut it = array(W, self.redis.script(W, &inv).await?)?.into_iter();
        let counts = counts(W, &next(W, &mut it)?, &next(W, &mut it)?)?;
        let presence_seq = reply::uint(W, &next(W, &mut it)?)?;
        let went_offline = flag(W, &next(W, &mut it)?)?;
        Ok(LeaveOutcome {
            went_offline,
            counts,
            presence_seq,
        })
    }

    async fn refresh_presence(&self, entries: &[PresenceEntry]) -> Result<Refreshed> {
        const W: &str = "refresh_presence";
        // An empty refresh still marks the node alive.
        let chunks: Vec<&[PresenceEntry]> = if entries.is_empty() {
            vec![entries]
        } else {
            entries.chunks(REFRESH_CHUNK).collect()
        };
        let mut refreshed = Refreshed::default();
        for chunk in chunks {
            let mut inv = self.scripts.refresh.prepare_invoke();
            inv.key(self.keys.nodes())
                .key(self.keys.rooms())
                .arg(&self.node_id)
                .arg(self.presence_ttl_ms);
            for entry in chunk {
                inv.key(self.keys.room_conns(&entry.room))
                    .key(self.keys.room_online(&entry.room))
                    .key(self.keys.room_members(&entry.room))
                    .key(self.keys.room_names(&entry.room))
                    .key(self.keys.room_meta(&entry.room))
                    .arg(entry.user.as_str())
                    .arg(entry.room.as_str())
                    .arg(entry.user_name.as_str())
                    .arg(entry.epoch.as_str())
                    .arg(entry.joined_at);
            }
            // Last, after the entries: the TTL of the rooms' keys, renewed while someone is
            // connected so a quiet room does not expire under its members.
            inv.arg(self.cursor_ttl_secs);
            let mut it = array(W, self.redis.script(W, &inv).await?)?.into_iter();
            while let Some(kind) = it.next() {
                let kind = reply::int(W, &kind)?;
                let index = reply::int(W, &next(W, &mut it)?)?;
                let presence_seq = reply::uint(W, &next(W, &mut it)?)?;
                let counts = counts(W, &next(W, &mut it)?, &next(W, &mut it)?)?;
                let entry = usize::try_from(index)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| chunk.get(i))
                    .ok_or_else(|| {
                        BackendError::Corrupt(format!("{W}: entry index {index} out of range"))
                    })?;
                match kind {
                    1 => refreshed.revived.push(Revived {
                        room: entry.room.clone(),
                        user: entry.user.clone(),
                        user_name: entry.user_name.clone(),
                        counts,
                        presence_seq,
                    }),
                    2 => refreshed.departed.push(Departed {
                        room: entry.room.clone(),
                        user: entry.user.clone(),
                        user_name: entry.user_name.clone(),
                        presence_seq,
                        counts,
                    }),
                    other => {
                        return Err(BackendError::Corrupt(format!("{W}: unknown kind {other}")));
                    }
                }
            }
        }
        Ok(refreshed)
    }

    async fn reap_presence(&self, room: &RoomId) -> Result<Vec<Reaped>> {
        let mut all = self.reap_presence_many(std::slice::from_ref(room)).await?;
        Ok(all.pop().map(|(_, reaped)| reaped).unwrap_or_default())
    }

    async fn reap_presence_many(&self, rooms: &[RoomId]) -> Result<Vec<(RoomId, Vec<Reaped>)>> {
        const W: &str = "reap_presence";
        let mut out = Vec::new();
        for chunk in rooms.chunks(REAP_CHUNK) {
            let mut inv = self.scripts.reap.prepare_invoke();
            for room in chunk {
                inv.key(self.keys.room_online(room))
                    .key(self.keys.room_conns(room))
                    .key(self.keys.room_names(room))
                    .key(self.keys.room_members(room))
                    .key(self.keys.room_meta(room));
            }
            let mut it = array(W, self.redis.script(W, &inv).await?)?.into_iter();
            while let Some(index) = it.next() {
                let index = reply::int(W, &index)?;
                let room = usize::try_from(index)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| chunk.get(i))
                    .ok_or_else(|| {
                        BackendError::Corrupt(format!("{W}: room index {index} out of range"))
                    })?;
                let counts = counts(W, &next(W, &mut it)?, &next(W, &mut it)?)?;
                let n = reply::uint(W, &next(W, &mut it)?)?;
                let mut reaped = Vec::new();
                for _ in 0..n {
                    let user = reply::string(W, next(W, &mut it)?)?;
                    let user_name = reply::string(W, next(W, &mut it)?)?;
                    let presence_seq = reply::uint(W, &next(W, &mut it)?)?;
                    match UserId::new(user.as_str()) {
                        Ok(user) => reaped.push(Reaped {
                            user,
                            user_name,
                            counts,
                            presence_seq,
                        }),
                        Err(e) => {
                            tracing::warn!(%room, %user, error = %e, "reaped an invalid user id")
                        }
                    }
                }
                out.push((room.clone(), reaped));
            }
        }
        Ok(out)
    }

    async fn post(&self, room: &RoomId, draft: &Draft) -> Result<Posted> {
        const W: &str = "post";
        let body = body_json(draft, Some(room), None)?;
        let stream = StreamKey::Room(room.clone());
        let mut inv = self.scripts.post.prepare_invoke();
        let post_id = draft
            .client_msg_id
            .as_deref()
            .map(|id| format!("{}|{id}", draft.user_id))
            .unwrap_or_default();
        let check = self.types_seen.must_check(&[&stream]);
        inv.key(self.keys.room_meta(room))
            .key(self.keys.room_log(room))
            .key(self.keys.room_ids(room))
            .key(self.keys.room_members(room))
            .key(self.keys.room_names(room))
            .key(self.keys.room_online(room))
            .key(self.keys.room_conns(room))
            .arg(new_epoch())
            .arg(body)
            .arg(self.history_cap)
            .arg(self.keys.channel(&stream))
            .arg(post_id)
            .arg(if check { "1" } else { "0" })
            .arg(self.cursor_ttl_secs);
        let result = self.redis.script(W, &inv).await;
        self.types_seen.record(&[&stream], check, result.is_ok());
        let mut it = array(W, result?)?.into_iter();
        if check {
            // The room list is a global index: kept out of the per-post script (whose keys all
            // belong to the room) and written on a room's first post through this node. A room
            // is normally listed by the join that comes before any post already.
            let mut add = redis::cmd("SADD");
            add.arg(self.keys.rooms()).arg(room.as_str());
            self.redis.query(W, &add).await?;
        }
        let seq = next(W, &mut it)?;
        let epoch = next(W, &mut it)?;
        let ts = next(W, &mut it)?;
        Ok(Posted {
            duplicate: flag(W, &next(W, &mut it)?)?,
            conflict: flag(W, &next(W, &mut it)?)?,
            ..posted(W, &seq, epoch, &ts)?
        })
    }

    async fn post_direct(&self, to: &UserId, draft: &Draft) -> Result<DirectPosted> {
        const W: &str = "post_direct";
        let body = body_json(draft, None, Some(to))?;
        let from = &draft.user_id;
        let post_id = draft
            .client_msg_id
            .as_deref()
            .map(|id| format!("{to}|{id}"))
            .unwrap_or_default();
        let mut inv = self.scripts.post_direct.prepare_invoke();
        inv.key(self.keys.inbox_meta(to))
            .key(self.keys.inbox_log(to))
            .key(self.keys.inbox_meta(from))
            .key(self.keys.inbox_log(from))
            .key(self.keys.inbox_ids(from))
            .key(self.keys.inbox_ids(to))
            .arg(new_epoch())
            .arg(new_epoch())
            .arg(body)
            .arg(self.history_cap)
            .arg(self.keys.channel(&StreamKey::Inbox(to.clone())))
            .arg(self.keys.channel(&StreamKey::Inbox(from.clone())))
            .arg(post_id)
            .arg(if from == to { "1" } else { "0" });
        let streams = [StreamKey::Inbox(to.clone()), StreamKey::Inbox(from.clone())];
        let streams = [&streams[0], &streams[1]];
        let check = self.types_seen.must_check(&streams);
        inv.arg(if check { "1" } else { "0" })
            .arg(self.cursor_ttl_secs);
        let result = self.redis.script(W, &inv).await;
        self.types_seen.record(&streams, check, result.is_ok());
        let mut it = array(W, result?)?.into_iter();
        let (rseq, repoch) = (next(W, &mut it)?, next(W, &mut it)?);
        let (sseq, sepoch) = (next(W, &mut it)?, next(W, &mut it)?);
        let ts = next(W, &mut it)?;
        let conflict = flag(W, &next(W, &mut it)?)?;
        let retry = reply::int(W, &rseq)? == 0;
        Ok(DirectPosted {
            recipient: if retry {
                None
            } else {
                Some(posted(W, &rseq, repoch, &ts)?)
            },
            sender: Posted {
                duplicate: retry,
                conflict,
                ..posted(W, &sseq, sepoch, &ts)?
            },
        })
    }

    async fn head(&self, stream: &StreamKey) -> Result<Head> {
        const W: &str = "head";
        let mut inv = self.scripts.head.prepare_invoke();
        inv.key(self.keys.meta(stream))
            .key(self.keys.log(stream))
            .key(self.keys.ids(stream))
            .arg(new_epoch())
            .arg(self.cursor_ttl_secs);
        if let StreamKey::Room(room) = stream {
            // Like the in-memory backend, a room exists (and is listed) from its first use.
            inv.key(self.keys.rooms()).arg(room.as_str());
        }
        let mut it = array(W, self.redis.script(W, &inv).await?)?.into_iter();
        let epoch = reply::epoch(W, next(W, &mut it)?)?;
        let seq = reply::seq_field(W, next(W, &mut it)?)?;
        Ok(Head { epoch, seq })
    }

    async fn heads(&self, streams: &[StreamKey]) -> Result<Vec<Option<Head>>> {
        const W: &str = "heads";
        let mut heads = Vec::with_capacity(streams.len());
        // Plain reads, pipelined: no script, no write, so checking every stream a node serves
        // costs Redis one HMGET each.
        for chunk in streams.chunks(HEADS_CHUNK) {
            let mut pipe = redis::pipe();
            for stream in chunk {
                pipe.cmd("HMGET")
                    .arg(self.keys.meta(stream))
                    .arg("epoch")
                    .arg("seq");
            }
            for reply in self.redis.pipeline(W, &pipe).await? {
                let mut fields = array(W, reply)?.into_iter();
                let epoch = next(W, &mut fields)?;
                let seq = next(W, &mut fields)?;
                heads.push(match epoch {
                    Value::Nil => None,
                    epoch => Some(Head {
                        epoch: reply::epoch(W, epoch)?,
                        seq: reply::seq_field(W, seq)?,
                    }),
                });
            }
        }
        Ok(heads)
    }

    async fn range(
        &self,
        stream: &StreamKey,
        after: u64,
        through: u64,
        max: usize,
        min_ts: u64,
    ) -> Result<Vec<ChatMessage>> {
        const W: &str = "range";
        if max == 0 || through <= after {
            return Ok(Vec::new());
        }
        // Newest `max` of the window, read newest first and turned around, with the log's epoch
        // read in the same MULTI: a log holds one epoch, and anything else is left out.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hget(self.keys.meta(stream), "epoch")
            .cmd("ZREVRANGEBYSCORE")
            .arg(self.keys.log(stream))
            .arg(score(through))
            .arg(format!("({}", score(after)))
            .arg("LIMIT")
            .arg(0)
            .arg(i64::try_from(max).unwrap_or(i64::MAX));
        let mut it = self.redis.pipeline(W, &pipe).await?.into_iter();
        let epoch = match next(W, &mut it)? {
            // No epoch: the log is lost and starts again at its next use.
            Value::Nil => return Ok(Vec::new()),
            value => reply::epoch(W, value)?,
        };
        let mut members = array(W, next(W, &mut it)?)?;
        members.reverse();
        Ok(decode_log(W, members)
            .into_iter()
            .filter(|m| m.seq > after && m.seq <= through && m.ts >= min_ts && m.epoch == epoch)
            .collect())
    }

    async fn oldest(&self, stream: &StreamKey) -> Result<Option<u64>> {
        const W: &str = "oldest";
        // The lowest-scored entry is the oldest; the log holds one epoch.
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.keys.log(stream)).arg(0).arg(0);
        let members = array(W, self.redis.query(W, &cmd).await?)?;
        Ok(decode_log(W, members).first().map(|m| m.seq))
    }

    async fn history(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(String, Vec<ChatMessage>)> {
        const W: &str = "history";
        let through = before.map(|b| b.saturating_sub(1));
        let mut pipe = redis::pipe();
        pipe.atomic().hget(self.keys.room_meta(room), "epoch");
        let read_log = limit > 0 && through != Some(0);
        if read_log {
            pipe.cmd("ZREVRANGEBYSCORE")
                .arg(self.keys.room_log(room))
                .arg(through.map_or_else(|| "+inf".to_owned(), score))
                .arg("-inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let mut it = self.redis.pipeline(W, &pipe).await?.into_iter();
        let epoch = match next(W, &mut it)? {
            Value::Nil => String::new(),
            value => reply::epoch(W, value)?,
        };
        if !read_log {
            return Ok((epoch, Vec::new()));
        }
        let mut members = array(W, next(W, &mut it)?)?;
        members.reverse();
        let messages = decode_log(W, members)
            .into_iter()
            .filter(|m| through.is_none_or(|t| m.seq <= t) && m.epoch == epoch)
            .collect();
        Ok((epoch, messages))
    }

    async fn cursor(&self, user: &UserId, stream: &StreamKey) -> Result<Option<Position>> {
        const W: &str = "cursor";
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.keys.cursors(user))
            .arg(Keys::cursor_field(stream));
        parse_cursor(W, self.redis.query(W, &cmd).await?)
    }

    async fn advance_cursor(
        &self,
        user: &UserId,
        stream: &StreamKey,
        to: &Position,
    ) -> Result<bool> {
        const W: &str = "advance_cursor";
        let mut inv = self.scripts.advance_cursor.prepare_invoke();
        inv.key(self.keys.cursors(user)).key(self.keys.meta(stream));
        if let StreamKey::Room(room) = stream {
            inv.key(self.keys.room_members(room));
        }
        inv.arg(Keys::cursor_field(stream))
            .arg(to.seq)
            .arg(&to.epoch)
            .arg(self.cursor_ttl_secs)
            .arg(user.as_str());
        flag(W, &self.redis.script(W, &inv).await?)
    }

    async fn advance_cursors(&self, batch: &[CursorUpdate]) -> Result<()> {
        const W: &str = "advance_cursors";
        // Chunks keep each call short: Redis runs nothing else while a script runs.
        for chunk in batch.chunks(CURSOR_CHUNK) {
            let mut inv = self.scripts.advance_cursors.prepare_invoke();
            inv.arg(self.cursor_ttl_secs);
            for update in chunk {
                let cursors = self.keys.cursors(&update.user);
                let members = match &update.stream {
                    StreamKey::Room(room) => self.keys.room_members(room),
                    StreamKey::Inbox(_) => cursors.clone(),
                };
                inv.key(cursors)
                    .key(self.keys.meta(&update.stream))
                    .key(members)
                    .arg(Keys::cursor_field(&update.stream))
                    .arg(update.to.seq)
                    .arg(&update.to.epoch)
                    .arg(match &update.stream {
                        StreamKey::Room(_) => update.user.as_str(),
                        StreamKey::Inbox(_) => "",
                    });
            }
            reply::int(W, &self.redis.script(W, &inv).await?)?;
        }
        Ok(())
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>> {
        const W: &str = "rooms";
        let mut pipe = redis::pipe();
        pipe.smembers(self.keys.rooms()).cmd("TIME");
        let mut it = self.redis.pipeline(W, &pipe).await?.into_iter();
        let ids = array(W, next(W, &mut it)?)?;
        let now = time_ms(next(W, &mut it)?)?;
        let mut rooms: Vec<RoomId> = Vec::with_capacity(ids.len());
        for id in ids {
            let id = reply::string(W, id)?;
            match RoomId::new(id.as_str()) {
                Ok(room) => rooms.push(room),
                Err(e) => tracing::warn!(room = %id, error = %e, "skipping an invalid room id"),
            }
        }
        rooms.sort();
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for every room; a damaged room is skipped, not fatal to the list.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for room in &rooms {
            pipe.cmd("HMGET")
                .arg(self.keys.room_meta(room))
                .arg("name")
                .arg("epoch")
                .arg("seq")
                .cmd("ZCOUNT")
                .arg(self.keys.room_online(room))
                .arg(format!("({now}"))
                .arg("+inf")
                .scard(self.keys.room_members(room));
        }
        let mut it = self.redis.pipeline(W, &pipe).await?.into_iter();
        let mut out = Vec::with_capacity(rooms.len());
        let mut expired = Vec::new();
        for room in rooms {
            let (meta, num, total) = (next(W, &mut it)?, next(W, &mut it)?, next(W, &mut it)?);
            if let Value::Array(fields) = &meta
                && fields.iter().all(|f| *f == Value::Nil)
            {
                // Its keys expired (or it was never more than a name in the list).
                expired.push(room);
                continue;
            }
            let summary = (|| -> Result<RoomSummary> {
                let mut meta = array(W, meta)?.into_iter();
                let name = reply::opt_string(W, next(W, &mut meta)?)?;
                let epoch = match next(W, &mut meta)? {
                    Value::Nil => String::new(),
                    value => reply::epoch(W, value)?,
                };
                let seq = reply::seq_field(W, next(W, &mut meta)?)?;
                let counts = counts(W, &num, &total)?;
                Ok(RoomSummary {
                    room_name: name.unwrap_or_else(|| room.to_string()),
                    room_id: room.clone(),
                    num: counts.num,
                    total: counts.total,
                    seq,
                    epoch,
                })
            })();
            match summary {
                Ok(summary) => out.push(summary),
                Err(e) => tracing::warn!(%room, error = %e, "skipping an unreadable room"),
            }
        }
        if !expired.is_empty() {
            let mut inv = self.scripts.prune_rooms.prepare_invoke();
            inv.key(self.keys.rooms());
            for room in &expired {
                inv.key(self.keys.room_meta(room)).arg(room.as_str());
            }
            // The list is right without it; a failed prune is retried by the next listing.
            if let Err(e) = self.redis.script("prune_rooms", &inv).await {
                tracing::debug!(error = %e, "could not prune expired rooms from the room list");
            }
        }
        Ok(out)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<UserId>> {
        const W: &str = "members";
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.keys.room_members(room));
        let mut members = Vec::new();
        for member in array(W, self.redis.query(W, &cmd).await?)? {
            let member = reply::string(W, member)?;
            match UserId::new(member.as_str()) {
                Ok(user) => members.push(user),
                Err(e) => {
                    tracing::warn!(%room, user = %member, error = %e, "skipping an invalid member id")
                }
            }
        }
        members.sort();
        Ok(members)
    }

    async fn online(&self, room: &RoomId) -> Result<Vec<UserId>> {
        const W: &str = "online";
        // Presence expiries are Redis time: read the clock with the set, in one transaction.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(self.keys.room_online(room))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let mut it = self.redis.pipeline(W, &pipe).await?.into_iter();
        let now = time_ms(next(W, &mut it)?)?;
        let mut entries = array(W, next(W, &mut it)?)?.into_iter();
        let mut online = Vec::new();
        while let Some(user) = entries.next() {
            let user = reply::string(W, user)?;
            let expiry = reply::string(W, next(W, &mut entries)?)?;
            let live = expiry.parse::<f64>().is_ok_and(|e| e > now as f64);
            match UserId::new(user.as_str()) {
                Ok(user) if live => online.push(user),
                Ok(_) => {}
                Err(e) => tracing::warn!(%room, %user, error = %e, "skipping an invalid user id"),
            }
        }
        online.sort();
        Ok(online)
    }

    async fn ping(&self) -> Result<()> {
        const W: &str = "ping";
        // Through the shared connection every command uses (a stale one left by a Redis restart
        // fails here, is replaced, and the node is ready only once commands work again) and
        // through a fresh one (Redis accepts connections).
        let shared = reply::string(W, self.redis.query(W, &redis::cmd("PING")).await?)?;
        let fresh = reply::string(W, self.redis.ping_exclusive(W).await?)?;
        if shared == "PONG" && fresh == "PONG" {
            Ok(())
        } else {
            Err(BackendError::Corrupt(format!(
                "PING answered {shared:?}, {fresh:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored frame is `{"event":"message","seq":N,"epoch":"E","ts":T,` + body minus its `{`
    /// (what `append` in common.lua does); it must decode as the full message.
    #[test]
    fn spliced_frames_decode_as_messages() {
        let draft = Draft {
            user_id: UserId::new("u1").expect("id"),
            user_name: "Ann \"the\" \u{1F600}".into(),
            content: "hi,\n\"there\"}{".into(),
            client_msg_id: Some("c-1".into()),
        };
        let room = RoomId::new("lobby").expect("id");
        for (room, to) in [(Some(&room), None), (None, Some(&draft.user_id))] {
            let body = body_json(&draft, room, to).expect("body");
            let frame = format!(
                "{{\"event\":\"message\",\"seq\":7,\"epoch\":\"e1\",\"ts\":1700000000123,{}",
                &body[1..]
            );
            let Ok(ServerFrame::Message(m)) = ServerFrame::decode(&frame) else {
                panic!("not a message frame: {frame}");
            };
            assert_eq!(m.seq, 7);
            assert_eq!(m.epoch, "e1");
            assert_eq!(m.ts, 1_700_000_000_123);
            assert_eq!(m.room_id.as_ref(), room);
            assert_eq!(m.to_user_id.as_ref(), to);
            assert_eq!(m.content, draft.content);
            assert_eq!(m.user_name, draft.user_name);
            assert_eq!(m.client_msg_id, draft.client_msg_id);
            assert!(!m.replay);
        }
    }
}
