//! The embedded backend: one node, everything in process memory, nothing survives a restart.
//!
//! It implements the same contract as the Redis backend, so the gateway's session and hub code is
//! exercised identically in both modes. One `tokio::sync::Mutex` guards all state; a post assigns
//! its seq and queues its broker event while holding it, so events leave in seq order exactly as
//! Redis pub/sub delivers them in publish order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chat_protocol::{ChatMessage, RoomId, ServerFrame, UserId};
use tokio::sync::{Mutex, mpsc};

use crate::{
    Backend, Broker, BrokerEvent, Channel, Counts, Departed, DirectPosted, Draft, EVENT_QUEUE,
    Head, JoinOutcome, JoinRequest, LeaveOutcome, Notice, Position, Posted, PresenceEntry, Reaped,
    Refreshed, Result, RoomSummary, Store, StreamKey,
};

/// Settings of the embedded backend.
#[derive(Debug, Clone, Copy)]
pub struct MemoryConfig {
    /// Messages kept per room log and per inbox.
    pub history_per_room: usize,
}

/// Opens an empty in-memory backend.
pub fn open(config: MemoryConfig) -> Backend {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(State::default()),
        events: tx,
    });
    Backend {
        store: shared.clone(),
        broker: shared,
        events: rx,
        kind: "memory",
    }
}

struct Shared {
    config: MemoryConfig,
    state: Mutex<State>,
    events: mpsc::Sender<BrokerEvent>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomId, Room>,
    inboxes: HashMap<UserId, Log>,
    cursors: HashMap<(UserId, StreamKey), Position>,
    subscribed: HashSet<Channel>,
}

struct Room {
    name: String,
    /// Member id to display name.
    members: BTreeMap<UserId, String>,
    /// Users with a live connection (on this, the only, node).
    online: HashSet<UserId>,
    log: Log,
    /// The room's presence seq: taken by every presence change.
    presence_seq: u64,
}

impl Room {
    fn new(id: &RoomId) -> Self {
        Room {
            name: id.to_string(),
            members: BTreeMap::new(),
            online: HashSet::new(),
            log: Log::new(),
            presence_seq: 0,
        }
    }

    fn next_presence_seq(&mut self) -> u64 {
        self.presence_seq += 1;
        self.presence_seq
    }

    fn counts(&self) -> Counts {
        Counts {
            num: self.online.len() as u64,
            total: self.members.len() as u64,
        }
    }
}

struct Log {
    epoch: String,
    seq: u64,
    entries: VecDeque<ChatMessage>,
    /// Seq of every message in the log that carries a `clientMsgId`, by (author, addressee,
    /// clientMsgId): a retried post finds its original here instead of being stored twice.
    post_ids: HashMap<PostId, u64>,
}

/// What makes a post unique for retries: its author, its addressee (for direct messages) and the
/// author's `clientMsgId`.
type PostId = (UserId, Option<UserId>, String);

fn post_id(message: &ChatMessage) -> Option<PostId> {
    let id = message.client_msg_id.clone()?;
    Some((message.user_id.clone(), message.to_user_id.clone(), id))
}

impl Log {
    fn new() -> Self {
        Log {
            epoch: new_epoch(),
            seq: 0,
            entries: VecDeque::new(),
            post_ids: HashMap::new(),
        }
    }

    fn head(&self) -> Head {
        Head {
            epoch: self.epoch.clone(),
            seq: self.seq,
        }
    }

    fn append(&mut self, mut message: ChatMessage, cap: usize) -> ChatMessage {
        self.seq += 1;
        message.seq = self.seq;
        message.epoch = self.epoch.clone();
        if let Some(id) = post_id(&message) {
            self.post_ids.insert(id, message.seq);
        }
        self.entries.push_back(message.clone());
        while self.entries.len() > cap.max(1) {
            if let Some(evicted) = self.entries.pop_front()
                && let Some(id) = post_id(&evicted)
            {
                self.post_ids.remove(&id);
            }
        }
        message
    }

    /// The receipt of the earlier post `draft` (to `to`) repeats, by its `clientMsgId`, while that
    /// post is still in the log: flagged `duplicate`, and `conflict` when its content differs.
    fn earlier(&self, draft: &Draft, to: Option<&UserId>) -> Option<Posted> {
        let id = (
            draft.user_id.clone(),
            to.cloned(),
            draft.client_msg_id.clone()?,
        );
        let seq = *self.post_ids.get(&id)?;
        let first = self.entries.front()?.seq;
        let earlier = self
            .entries
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)?;
        Some(Posted {
            epoch: earlier.epoch.clone(),
            seq: earlier.seq,
            ts: earlier.ts,
            duplicate: true,
            conflict: earlier.content != draft.content,
        })
    }

    fn range(&self, after: u64, through: u64, max: usize, min_ts: u64) -> Vec<ChatMessage> {
        let picked: Vec<&ChatMessage> = self
            .entries
            .iter()
            .filter(|m| m.seq > after && m.seq <= through && m.ts >= min_ts)
            .collect();
        let skip = picked.len().saturating_sub(max);
        picked.into_iter().skip(skip).cloned().collect()
    }
}

/// A fresh random log identity.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn message_from(draft: &Draft, room: Option<&RoomId>, to: Option<&UserId>, ts: u64) -> ChatMessage {
    ChatMessage {
        room_id: room.cloned(),
        to_user_id: to.cloned(),
        seq: 0,
        epoch: String::new(),
        user_id: draft.user_id.clone(),
        user_name: draft.user_name.clone(),
        content: draft.content.clone(),
        ts,
        client_msg_id: draft.client_msg_id.clone(),
        replay: false,
        resend: false,
    }
}

impl Shared {
    /// Queues a broker event if its channel is subscribed. Called with the state lock held so events
    /// leave in the order their seqs were assigned. It never waits for queue space: the consumer
    /// (the hub) takes the same lock to read logs, so waiting here could deadlock. An event that
    /// does not fit is dropped, exactly like a message Redis pub/sub loses, and recovered the same
    /// way: the hub sees the gap (or the periodic head check does) and reads the log.
    fn emit(&self, state: &State, channel: &Channel, event: BrokerEvent) {
        if state.subscribed.contains(channel)
            && let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event)
        {
            tracing::warn!(
                ?channel,
                "broker event queue full: the hub will recover the message from the log"
            );
        }
    }
}

#[async_trait]
impl Store for Shared {
    async fn join(&self, req: &JoinRequest<'_>) -> Result<JoinOutcome> {
        let mut state = self.state.lock().await;
        let cursor = state
            .cursors
            .get(&(req.user.clone(), StreamKey::Room(req.room.clone())))
            .cloned();
        let room = state
            .rooms
            .entry(req.room.clone())
            .or_insert_with(|| Room::new(req.room));
        if let Some(name) = req.room_name
            && room.name == req.room.as_str()
        {
            room.name = name.to_owned();
        }
        let new_member = room
            .members
            .insert(req.user.clone(), req.user_name.to_owned())
            .is_none();
        let came_online = room.online.insert(req.user.clone());
        Ok(JoinOutcome {
            room_name: room.name.clone(),
            head: room.log.head(),
            counts: room.counts(),
            came_online,
            new_member,
            cursor,
            presence_seq: room.next_presence_seq(),
        })
    }

    async fn go_offline(&self, room: &RoomId, user: &UserId) -> Result<LeaveOutcome> {
        let mut state = self.state.lock().await;
        let Some(room) = state.rooms.get_mut(room) else {
            return Ok(LeaveOutcome {
                went_offline: false,
                counts: Counts::default(),
                presence_seq: 0,
            });
        };
        let went_offline = room.online.remove(user);
        Ok(LeaveOutcome {
            went_offline,
            counts: room.counts(),
            presence_seq: room.next_presence_seq(),
        })
    }

    async fn leave(&self, room_id: &RoomId, user: &UserId) -> Result<LeaveOutcome> {
        let mut state = self.state.lock().await;
        state
            .cursors
            .remove(&(user.clone(), StreamKey::Room(room_id.clone())));
        let room = state
            .rooms
            .entry(room_id.clone())
            .or_insert_with(|| Room::new(room_id));
        let went_offline = room.online.remove(user);
        room.members.remove(user);
        Ok(LeaveOutcome {
            went_offline,
            counts: room.counts(),
            presence_seq: room.next_presence_seq(),
        })
    }

    async fn refresh_presence(&self, entries: &[PresenceEntry]) -> Result<Refreshed> {
        // One node, no TTLs: presence lives exactly as long as the process, so nothing is ever
        // revived. A logout whose notice the node missed is still reported, as the contract says.
        let state = self.state.lock().await;
        let mut refreshed = Refreshed::default();
        for entry in entries {
            let Some(room) = state.rooms.get(&entry.room) else {
                continue;
            };
            if !room.members.contains_key(&entry.user)
                && room.log.epoch == entry.epoch
                && room.presence_seq >= entry.joined_at
            {
                refreshed.departed.push(Departed {
                    room: entry.room.clone(),
                    user: entry.user.clone(),
                    user_name: entry.user_name.clone(),
                    presence_seq: room.presence_seq,
                    counts: room.counts(),
                });
            }
        }
        Ok(refreshed)
    }

    async fn reap_presence(&self, _room: &RoomId) -> Result<Vec<Reaped>> {
        Ok(Vec::new())
    }

    async fn post(&self, room_id: &RoomId, draft: &Draft) -> Result<Posted> {
        let mut state = self.state.lock().await;
        let room = state
            .rooms
            .entry(room_id.clone())
            .or_insert_with(|| Room::new(room_id));
        if let Some(earlier) = room.log.earlier(draft, None) {
            // A retry of a post that already landed (or a reuse of its id, flagged `conflict`):
            // its receipt, nothing stored or sent again.
            return Ok(earlier);
        }
        let message = message_from(draft, Some(room_id), None, now_ms());
        let stored = room.log.append(message, self.config.history_per_room);
        let posted = Posted {
            epoch: stored.epoch.clone(),
            seq: stored.seq,
            ts: stored.ts,
            duplicate: false,
            conflict: false,
        };
        let frame = ServerFrame::Message(stored.clone()).encode();
        let stream = StreamKey::Room(room_id.clone());
        self.emit(
            &state,
            &stream,
            BrokerEvent::Message {
                stream: stream.clone(),
                message: stored,
                frame,
            },
        );
        Ok(posted)
    }

    async fn post_direct(&self, to: &UserId, draft: &Draft) -> Result<DirectPosted> {
        let mut state = self.state.lock().await;
        if let Some(sender) = state
            .inboxes
            .get(&draft.user_id)
            .and_then(|inbox| inbox.earlier(draft, Some(to)))
        {
            // A retry (or a reuse of the id, flagged `conflict`): the sender's receipt again,
            // nothing stored or sent.
            return Ok(DirectPosted {
                sender,
                recipient: None,
            });
        }
        let ts = now_ms();
        let cap = self.config.history_per_room;
        let mut posted = Vec::with_capacity(2);
        let owners: Vec<&UserId> = if *to == draft.user_id {
            vec![to]
        } else {
            vec![to, &draft.user_id]
        };
        for owner in owners {
            let inbox = state.inboxes.entry(owner.clone()).or_insert_with(Log::new);
            let stored = inbox.append(message_from(draft, None, Some(to), ts), cap);
            posted.push(Posted {
                epoch: stored.epoch.clone(),
                seq: stored.seq,
                ts,
                duplicate: false,
                conflict: false,
            });
            let frame = ServerFrame::Message(stored.clone()).encode();
            let stream = StreamKey::Inbox(owner.clone());
            self.emit(
                &state,
                &stream,
                BrokerEvent::Message {
                    stream: stream.clone(),
                    message: stored,
                    frame,
                },
            );
        }
        let Some(recipient) = posted.first().cloned() else {
            return Err(crate::BackendError::Corrupt("no inbox was written".into()));
        };
        let sender = posted.get(1).cloned().unwrap_or_else(|| recipient.clone());
        Ok(DirectPosted {
            sender,
            recipient: Some(recipient),
        })
    }

    async fn head(&self, stream: &StreamKey) -> Result<Head> {
        let mut state = self.state.lock().await;
        Ok(match stream {
            StreamKey::Room(id) => state
                .rooms
                .entry(id.clone())
                .or_insert_with(|| Room::new(id))
                .log
                .head(),
            StreamKey::Inbox(user) => state
                .inboxes
                .entry(user.clone())
                .or_insert_with(Log::new)
                .head(),
        })
    }

    async fn range(
        &self,
        stream: &StreamKey,
        after: u64,
        through: u64,
        max: usize,
        min_ts: u64,
    ) -> Result<Vec<ChatMessage>> {
        let state = self.state.lock().await;
        let log = match stream {
            StreamKey::Room(id) => state.rooms.get(id).map(|r| &r.log),
            StreamKey::Inbox(user) => state.inboxes.get(user),
        };
        Ok(log
            .map(|l| l.range(after, through, max, min_ts))
            .unwrap_or_default())
    }

    async fn oldest(&self, stream: &StreamKey) -> Result<Option<u64>> {
        let state = self.state.lock().await;
        let log = match stream {
            StreamKey::Room(id) => state.rooms.get(id).map(|r| &r.log),
            StreamKey::Inbox(user) => state.inboxes.get(user),
        };
        Ok(log.and_then(|l| l.entries.front()).map(|m| m.seq))
    }

    async fn history(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(String, Vec<ChatMessage>)> {
        let state = self.state.lock().await;
        let Some(room) = state.rooms.get(room) else {
            return Ok((String::new(), Vec::new()));
        };
        let through = before.map(|b| b.saturating_sub(1)).unwrap_or(u64::MAX);
        Ok((
            room.log.epoch.clone(),
            room.log.range(0, through, limit as usize, 0),
        ))
    }

    async fn cursor(&self, user: &UserId, stream: &StreamKey) -> Result<Option<Position>> {
        let state = self.state.lock().await;
        Ok(state.cursors.get(&(user.clone(), stream.clone())).cloned())
    }

    async fn advance_cursor(
        &self,
        user: &UserId,
        stream: &StreamKey,
        to: &Position,
    ) -> Result<bool> {
        let mut state = self.state.lock().await;
        let current_epoch = match stream {
            StreamKey::Room(room) => match state.rooms.get(room) {
                // A cursor only means something for a member; `logout` dropped it on purpose.
                Some(r) if r.members.contains_key(user) => r.log.epoch.clone(),
                _ => return Ok(false),
            },
            StreamKey::Inbox(owner) => match state.inboxes.get(owner) {
                Some(log) => log.epoch.clone(),
                None => return Ok(false),
            },
        };
        if to.epoch != current_epoch {
            // A position in a log that no longer exists says nothing about the current one.
            return Ok(false);
        }
        let cursor = state.cursors.entry((user.clone(), stream.clone()));
        let moved = match cursor {
            std::collections::hash_map::Entry::Occupied(mut stored) => {
                let stored = stored.get_mut();
                let behind = stored.seq_in(&current_epoch).is_none_or(|s| s < to.seq);
                if behind {
                    *stored = to.clone();
                }
                behind
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(to.clone());
                true
            }
        };
        Ok(moved)
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>> {
        let state = self.state.lock().await;
        let mut rooms: Vec<RoomSummary> = state
            .rooms
            .iter()
            .map(|(id, room)| {
                let counts = room.counts();
                RoomSummary {
                    room_id: id.clone(),
                    room_name: room.name.clone(),
                    num: counts.num,
                    total: counts.total,
                    seq: room.log.seq,
                    epoch: room.log.epoch.clone(),
                }
            })
            .collect();
        rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        Ok(rooms)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<UserId>> {
        let state = self.state.lock().await;
        Ok(state
            .rooms
            .get(room)
            .map(|r| r.members.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn online(&self, room: &RoomId) -> Result<Vec<UserId>> {
        let state = self.state.lock().await;
        let mut online: Vec<UserId> = state
            .rooms
            .get(room)
            .map(|r| r.online.iter().cloned().collect())
            .unwrap_or_default();
        online.sort();
        Ok(online)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Broker for Shared {
    async fn subscribe(&self, channel: &Channel) -> Result<()> {
        self.state.lock().await.subscribed.insert(channel.clone());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<()> {
        self.state.lock().await.subscribed.remove(channel);
        Ok(())
    }

    async fn publish_notice(&self, notice: &Notice) -> Result<()> {
        let state = self.state.lock().await;
        let frame = match notice {
            Notice::Login(n) => ServerFrame::Login(n.clone()),
            Notice::Logout(n) => ServerFrame::Logout(n.clone()),
        }
        .encode();
        let channel = StreamKey::Room(notice.room_id().clone());
        self.emit(
            &state,
            &channel,
            BrokerEvent::Notice {
                notice: notice.clone(),
                frame,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RoomId {
        RoomId::new(s).expect("room id")
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("user id")
    }

    fn draft(u: &str, text: &str) -> Draft {
        Draft {
            user_id: user(u),
            user_name: u.to_uppercase(),
            content: text.into(),
            client_msg_id: None,
        }
    }

    #[tokio::test]
    async fn seqs_are_contiguous_and_history_is_bounded() {
        let backend = open(MemoryConfig {
            history_per_room: 3,
        });
        let room = id("r");
        for i in 1..=5 {
            let posted = backend
                .store
                .post(&room, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
            assert_eq!(posted.seq, i);
        }
        let (_, page) = backend
            .store
            .history(&room, None, 10)
            .await
            .expect("history");
        assert_eq!(
            page.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let (_, page) = backend
            .store
            .history(&room, Some(5), 1)
            .await
            .expect("history");
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4]);
        let stream = StreamKey::Room(room.clone());
        assert_eq!(
            backend.store.oldest(&stream).await.expect("oldest"),
            Some(3)
        );
        let empty = StreamKey::Room(id("empty"));
        assert_eq!(backend.store.oldest(&empty).await.expect("oldest"), None);
    }

    #[tokio::test]
    async fn events_flow_only_for_subscribed_channels_in_seq_order() {
        let mut backend = open(MemoryConfig {
            history_per_room: 10,
        });
        let room = id("r");
        backend
            .store
            .post(&room, &draft("a", "before"))
            .await
            .expect("post");
        backend
            .broker
            .subscribe(&StreamKey::Room(room.clone()))
            .await
            .expect("sub");
        backend
            .store
            .post(&room, &draft("a", "after"))
            .await
            .expect("post");
        let Some(BrokerEvent::Message { message, frame, .. }) = backend.events.recv().await else {
            panic!("expected a message event");
        };
        assert_eq!(message.seq, 2);
        assert!(frame.contains("\"after\""));
        assert!(backend.events.try_recv().is_err());
    }

    #[tokio::test]
    async fn presence_membership_and_cursors() {
        let backend = open(MemoryConfig {
            history_per_room: 10,
        });
        let room = id("r");
        let req = JoinRequest {
            room: &room,
            user: &user("a"),
            user_name: "A",
            room_name: Some("Room R"),
        };
        let first = backend.store.join(&req).await.expect("join");
        assert!(first.came_online && first.new_member);
        assert_eq!(first.room_name, "Room R");
        assert_eq!(first.counts, Counts { num: 1, total: 1 });
        let again = backend.store.join(&req).await.expect("join");
        assert!(!again.came_online && !again.new_member);

        let stream = StreamKey::Room(room.clone());
        let epoch = first.head.epoch.clone();
        for (seq, moves) in [(4, true), (2, false)] {
            let moved = backend
                .store
                .advance_cursor(&user("a"), &stream, &Position::new(epoch.clone(), seq))
                .await
                .expect("cursor");
            assert_eq!(moved, moves, "advance to {seq}");
        }
        // A position from another epoch is stale: it neither moves nor replaces the cursor.
        let stale = backend
            .store
            .advance_cursor(&user("a"), &stream, &Position::new("gone", 9))
            .await
            .expect("cursor");
        assert!(!stale);
        assert_eq!(
            backend
                .store
                .cursor(&user("a"), &stream)
                .await
                .expect("cursor"),
            Some(Position::new(epoch, 4))
        );

        let off = backend
            .store
            .go_offline(&room, &user("a"))
            .await
            .expect("offline");
        assert!(off.went_offline);
        assert_eq!(off.counts, Counts { num: 0, total: 1 });
        let left = backend.store.leave(&room, &user("a")).await.expect("leave");
        assert_eq!(left.counts, Counts { num: 0, total: 0 });
        assert!(left.presence_seq > off.presence_seq);
        assert_eq!(
            backend
                .store
                .cursor(&user("a"), &stream)
                .await
                .expect("cursor"),
            None
        );
    }

    #[tokio::test]
    async fn a_retried_post_is_stored_once() {
        let mut backend = open(MemoryConfig {
            history_per_room: 3,
        });
        let room = id("r");
        backend
            .broker
            .subscribe(&StreamKey::Room(room.clone()))
            .await
            .expect("sub");
        let with_id = |text: &str, cmid: &str| Draft {
            client_msg_id: Some(cmid.into()),
            ..draft("a", text)
        };
        let first = backend
            .store
            .post(&room, &with_id("hi", "c1"))
            .await
            .expect("post");
        let retry = backend
            .store
            .post(&room, &with_id("hi", "c1"))
            .await
            .expect("retry");
        assert!(!first.duplicate && !first.conflict);
        assert_eq!(
            retry,
            Posted {
                duplicate: true,
                ..first.clone()
            },
            "the same receipt, flagged as a duplicate"
        );
        let other_author = Draft {
            client_msg_id: Some("c1".into()),
            ..draft("b", "hi")
        };
        assert_eq!(
            backend
                .store
                .post(&room, &other_author)
                .await
                .expect("post")
                .seq,
            2,
            "ids are per author"
        );
        assert!(matches!(
            backend.events.try_recv(),
            Ok(BrokerEvent::Message { .. })
        ));
        assert!(matches!(
            backend.events.try_recv(),
            Ok(BrokerEvent::Message { .. })
        ));
        assert!(
            backend.events.try_recv().is_err(),
            "the retry was not published again"
        );
        // Once the original has left the (3-message) log, the id is forgotten.
        for i in 0..3 {
            backend
                .store
                .post(&room, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
        }
        assert_eq!(
            backend
                .store
                .post(&room, &with_id("hi", "c1"))
                .await
                .expect("post")
                .seq,
            6
        );
    }

    #[tokio::test]
    async fn a_retried_direct_message_is_stored_once() {
        let backend = open(MemoryConfig {
            history_per_room: 10,
        });
        let dm = Draft {
            client_msg_id: Some("d1".into()),
            ..draft("a", "psst")
        };
        let first = backend
            .store
            .post_direct(&user("b"), &dm)
            .await
            .expect("dm");
        let retry = backend
            .store
            .post_direct(&user("b"), &dm)
            .await
            .expect("retry");
        assert_eq!(
            (retry.sender, retry.recipient),
            (
                Posted {
                    duplicate: true,
                    ..first.sender
                },
                None
            )
        );
        let inbox = backend
            .store
            .range(&StreamKey::Inbox(user("b")), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(inbox.len(), 1);
        assert!(
            backend
                .store
                .post_direct(&user("c"), &dm)
                .await
                .expect("dm")
                .recipient
                .is_some(),
            "another addressee"
        );
    }

    #[tokio::test]
    async fn direct_messages_land_in_both_inboxes() {
        let backend = open(MemoryConfig {
            history_per_room: 10,
        });
        let posted = backend
            .store
            .post_direct(&user("b"), &draft("a", "psst"))
            .await
            .expect("dm");
        assert_eq!(posted.recipient.map(|p| p.seq), Some(1));
        assert_eq!(posted.sender.seq, 1);
        let inbox = backend
            .store
            .range(&StreamKey::Inbox(user("b")), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].to_user_id, Some(user("b")));
    }

    #[tokio::test]
    async fn a_reused_client_msg_id_with_other_content_is_flagged_and_stored_nowhere() {
        let mut backend = open(MemoryConfig {
            history_per_room: 10,
        });
        let room = id("r");
        let (ann, bob) = (user("a"), user("b"));
        for stream in [StreamKey::Room(room.clone()), StreamKey::Inbox(ann.clone())] {
            backend.broker.subscribe(&stream).await.expect("sub");
        }
        let with_id = |text: &str| Draft {
            client_msg_id: Some("c1".into()),
            ..draft("a", text)
        };

        let first = backend
            .store
            .post(&room, &with_id("hi"))
            .await
            .expect("post");
        let reused = backend
            .store
            .post(&room, &with_id("something else"))
            .await
            .expect("post");
        assert_eq!(
            reused,
            Posted {
                duplicate: true,
                conflict: true,
                ..first.clone()
            },
            "the earlier receipt, flagged as a conflict"
        );
        let retry = backend
            .store
            .post(&room, &with_id("hi"))
            .await
            .expect("retry");
        assert!(retry.duplicate && !retry.conflict, "{retry:?}");
        let log = backend
            .store
            .range(&StreamKey::Room(room.clone()), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(
            log.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            vec!["hi"]
        );

        let dm = backend
            .store
            .post_direct(&bob, &with_id("psst"))
            .await
            .expect("dm");
        let reused = backend
            .store
            .post_direct(&bob, &with_id("other"))
            .await
            .expect("dm");
        assert_eq!(reused.recipient, None, "nothing stored for the recipient");
        assert_eq!(
            reused.sender,
            Posted {
                duplicate: true,
                conflict: true,
                ..dm.sender.clone()
            }
        );
        let inbox = backend
            .store
            .range(&StreamKey::Inbox(bob.clone()), 0, u64::MAX, 10, 0)
            .await
            .expect("range");
        assert_eq!(inbox.len(), 1);

        // Only the two first posts were published.
        let mut published = Vec::new();
        while let Ok(event) = backend.events.try_recv() {
            if let BrokerEvent::Message { message, .. } = event {
                published.push(message.content);
            }
        }
        assert_eq!(published, vec!["hi", "psst"]);
    }
}
