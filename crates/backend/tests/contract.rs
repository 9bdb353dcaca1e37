//! The backend contract, once, run against both backends: the embedded in-memory one and Redis
//! (a real `redis-server` per test). Whatever the gateway relies on from a [`Store`] must hold
//! for both, so a behaviour one backend has and the other lacks shows up here.

mod redis_support;

use chat_backend::memory::{self, MemoryConfig};
use chat_backend::{Backend, BrokerEvent, Counts, CursorUpdate, JoinRequest, Position, StreamKey};
use chat_protocol::{RoomId, UserId};
use redis_support::*;
use tokio::sync::mpsc;

/// History kept per log in these tests (small, so trimming is exercised).
const CAP: usize = 5;

/// Runs `check` against a fresh backend of each kind.
async fn both<F, Fut>(check: F)
where
    F: Fn(Backend) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    check(memory::open(MemoryConfig::unbounded(CAP))).await;
    let server = RedisServer::start().await;
    let mut cfg = config(&server, "n1");
    cfg.history_per_room = CAP;
    bounded(check(open(cfg).await)).await;
}

fn join<'a>(room: &'a RoomId, user: &'a UserId) -> JoinRequest<'a> {
    JoinRequest {
        room,
        user,
        user_name: "X",
        room_name: None,
    }
}

/// Drains the broker events queued so far (without waiting for more than a moment).
async fn drain(events: &mut mpsc::Receiver<BrokerEvent>) -> Vec<BrokerEvent> {
    let mut out = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), events.recv()).await
    {
        out.push(event);
    }
    out
}

#[tokio::test]
async fn posts_take_consecutive_seqs_and_history_keeps_the_newest() {
    both(|backend| async move {
        let store = &backend.store;
        let r = room("r");
        store.join(&join(&r, &user("a"))).await.expect("join");
        for i in 1..=7u64 {
            let posted = store
                .post(&r, &draft("a", &format!("m{i}")))
                .await
                .expect("post");
            assert_eq!(posted.seq, i);
            assert!(!posted.duplicate && !posted.conflict);
        }
        let (epoch, page) = store.history(&r, None, 100).await.expect("history");
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5, 6, 7], "trimmed to the newest {CAP}");
        assert!(page.iter().all(|m| m.epoch == epoch));
        let range = store
            .range(&StreamKey::Room(r.clone()), 4, 6, 10, 0)
            .await
            .expect("range");
        assert_eq!(range.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![5, 6]);
        let head = store.head(&StreamKey::Room(r.clone())).await.expect("head");
        assert_eq!((head.epoch, head.seq), (epoch, 7));
    })
    .await;
}

#[tokio::test]
async fn a_retried_post_is_a_duplicate_and_a_reused_id_a_conflict() {
    both(|backend| async move {
        let store = &backend.store;
        let r = room("r");
        store.join(&join(&r, &user("a"))).await.expect("join");
        let mut first = draft("a", "hello");
        first.client_msg_id = Some("c1".into());
        let original = store.post(&r, &first).await.expect("post");
        let retry = store.post(&r, &first).await.expect("retry");
        assert_eq!(retry.seq, original.seq);
        assert!(retry.duplicate && !retry.conflict);
        let mut other = draft("a", "something else");
        other.client_msg_id = Some("c1".into());
        let reused = store.post(&r, &other).await.expect("reuse");
        assert!(reused.duplicate && reused.conflict);
        let (_, page) = store.history(&r, None, 10).await.expect("history");
        assert_eq!(page.len(), 1, "stored once");
    })
    .await;
}

#[tokio::test]
async fn presence_changes_are_counted_and_take_increasing_presence_seqs() {
    both(|backend| async move {
        let store = &backend.store;
        let r = room("r");
        let (a, b) = (user("a"), user("b"));
        let ja = store.join(&join(&r, &a)).await.expect("join");
        assert!(ja.came_online && ja.new_member);
        let jb = store.join(&join(&r, &b)).await.expect("join");
        assert_eq!(jb.counts, Counts { num: 2, total: 2 });
        let off = store.go_offline(&r, &a).await.expect("offline");
        assert!(off.went_offline);
        assert_eq!(off.counts, Counts { num: 1, total: 2 });
        let left = store.leave(&r, &b).await.expect("leave");
        assert_eq!(left.counts, Counts { num: 0, total: 1 });
        let seqs = [
            ja.presence_seq,
            jb.presence_seq,
            off.presence_seq,
            left.presence_seq,
        ];
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(store.members(&r).await.expect("members"), vec![a.clone()]);
        assert!(store.online(&r).await.expect("online").is_empty());
        store.join(&join(&r, &a)).await.expect("join");
        assert_eq!(store.online(&r).await.expect("online"), vec![a]);
    })
    .await;
}

#[tokio::test]
async fn cursors_move_forward_within_their_epoch_only() {
    both(|backend| async move {
        let store = &backend.store;
        let r = room("r");
        let a = user("a");
        let stream = StreamKey::Room(r.clone());
        let epoch = store.join(&join(&r, &a)).await.expect("join").head.epoch;
        let at = |seq| Position::new(epoch.clone(), seq);
        assert!(
            store
                .advance_cursor(&a, &stream, &at(4))
                .await
                .expect("advance")
        );
        assert!(
            !store
                .advance_cursor(&a, &stream, &at(2))
                .await
                .expect("advance")
        );
        assert!(
            !store
                .advance_cursor(&a, &stream, &Position::new("another", 9))
                .await
                .expect("advance")
        );
        assert_eq!(
            store.cursor(&a, &stream).await.expect("cursor"),
            Some(at(4))
        );
        // Batched, the same rules; a non-member's cursor is not kept.
        let batch = [
            CursorUpdate {
                user: a.clone(),
                stream: stream.clone(),
                to: at(6),
            },
            CursorUpdate {
                user: user("stranger"),
                stream: stream.clone(),
                to: at(6),
            },
        ];
        store.advance_cursors(&batch).await.expect("batch");
        assert_eq!(
            store.cursor(&a, &stream).await.expect("cursor"),
            Some(at(6))
        );
        assert_eq!(
            store
                .cursor(&user("stranger"), &stream)
                .await
                .expect("cursor"),
            None
        );
        // Logging out drops the room's cursor.
        store.leave(&r, &a).await.expect("leave");
        assert_eq!(store.cursor(&a, &stream).await.expect("cursor"), None);
    })
    .await;
}

#[tokio::test]
async fn a_direct_message_lands_in_both_inboxes_and_is_published_on_both() {
    both(|backend| async move {
        let Backend {
            store,
            broker,
            mut events,
            ..
        } = backend;
        let (a, b) = (user("a"), user("b"));
        let (ia, ib) = (StreamKey::Inbox(a.clone()), StreamKey::Inbox(b.clone()));
        broker.subscribe(&ia).await.expect("subscribe");
        broker.subscribe(&ib).await.expect("subscribe");
        let posted = store
            .post_direct(&b, &draft("a", "psst"))
            .await
            .expect("dm");
        let recipient = posted.recipient.expect("a new message");
        assert_eq!((recipient.seq, posted.sender.seq), (1, 1));
        let heads = store.heads(&[ia.clone(), ib.clone()]).await.expect("heads");
        let seqs: Vec<u64> = heads
            .iter()
            .map(|h| h.as_ref().map_or(0, |h| h.seq))
            .collect();
        assert_eq!(seqs, vec![1, 1]);
        let mut streams: Vec<StreamKey> = drain(&mut events)
            .await
            .into_iter()
            .filter_map(|e| match e {
                BrokerEvent::Message { stream, .. } => Some(stream),
                _ => None,
            })
            .collect();
        streams.sort();
        assert_eq!(streams, vec![ia, ib]);
    })
    .await;
}

#[tokio::test]
async fn a_post_is_published_only_to_subscribed_rooms() {
    both(|backend| async move {
        let Backend {
            store,
            broker,
            mut events,
            ..
        } = backend;
        let (r, s) = (room("r"), room("s"));
        let a = user("a");
        store.join(&join(&r, &a)).await.expect("join");
        store.join(&join(&s, &a)).await.expect("join");
        broker
            .subscribe(&StreamKey::Room(r.clone()))
            .await
            .expect("subscribe");
        store.post(&r, &draft("a", "here")).await.expect("post");
        store.post(&s, &draft("a", "not here")).await.expect("post");
        let messages: Vec<_> = drain(&mut events)
            .await
            .into_iter()
            .filter_map(|e| match e {
                BrokerEvent::Message { message, .. } => Some(message.content),
                _ => None,
            })
            .collect();
        assert_eq!(messages, vec!["here".to_owned()]);
    })
    .await;
}

/// `login` + `logout` leaves nothing listed behind (measured weakness 2: room ids must not be
/// usable to fill memory); a room whose members left but that has history stays, and keeps its
/// epoch and seqs.
#[tokio::test]
async fn a_room_left_by_everyone_is_listed_only_while_it_holds_messages() {
    both(|backend| async move {
        let store = &backend.store;
        let a = user("a");
        for i in 0..20 {
            let r = room(&format!("empty{i}"));
            store.join(&join(&r, &a)).await.expect("join");
            store.leave(&r, &a).await.expect("leave");
        }
        let kept = room("kept");
        let joined = store.join(&join(&kept, &a)).await.expect("join");
        store.post(&kept, &draft("a", "stay")).await.expect("post");
        store.leave(&kept, &a).await.expect("leave");
        let listed: Vec<String> = store
            .rooms()
            .await
            .expect("rooms")
            .into_iter()
            .map(|r| r.room_id.to_string())
            .collect();
        assert_eq!(listed, vec!["kept"]);
        let again = store.join(&join(&kept, &a)).await.expect("join");
        assert_eq!(again.head.epoch, joined.head.epoch);
        assert_eq!(again.head.seq, 1);
    })
    .await;
}

/// A node's periodic sync reads the heads of every stream it delivers, outside its lock; a room
/// dropped meanwhile (its last member logged out) must stay dropped. `heads` reports a stream
/// with no log as absent and creates nothing (the embedded backend used to create the room, which
/// then stayed listed: `memory_bounds.rs` saw a stray `junk-N` room now and then).
#[tokio::test]
async fn reading_heads_creates_no_room_or_inbox() {
    both(|backend| async move {
        let store = &backend.store;
        let a = user("a");
        let gone = room("gone");
        store.join(&join(&gone, &a)).await.expect("join");
        store.leave(&gone, &a).await.expect("leave");
        let never = [
            StreamKey::Room(room("never")),
            StreamKey::Inbox(user("nobody")),
        ];
        let heads = store.heads(&never).await.expect("heads");
        assert!(heads.iter().all(Option::is_none), "{heads:?}");
        store
            .heads(&[StreamKey::Room(gone.clone())])
            .await
            .expect("heads");
        let listed = store.rooms().await.expect("rooms");
        assert!(listed.is_empty(), "{listed:?}");
    })
    .await;
}
