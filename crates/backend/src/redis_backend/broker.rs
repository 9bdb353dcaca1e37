//! [`Broker`] on Redis pub/sub: one dedicated connection per node that survives outages.
//!
//! A reader task owns the connection's message stream. Subscriptions go through the connection's
//! sink, which waits for Redis to confirm each SUBSCRIBE, so [`Broker::subscribe`] returns only
//! once the channel is live. The set of subscribed channels is tracked here, not in Redis: when
//! the connection drops (Redis restart, `CLIENT KILL`, network) or stops answering the periodic
//! PING, the task reconnects with capped exponential backoff (100 ms doubling to 2 s), subscribes
//! every tracked channel again, and only then queues [`BrokerEvent::Resubscribed`] — whatever was
//! published meanwhile is lost to pub/sub, and that event tells the hub to catch up from the logs.
//!
//! One lock serialises subscription changes with the resubscription, so a channel subscribed
//! during a reconnect is either part of the resubscribed set or refused as `Unavailable`, never
//! silently missing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_protocol::ServerFrame;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, Value};
use tokio::sync::{Mutex, mpsc};

use super::Redis;
use super::keys::Keys;
use crate::{BackendError, Broker, BrokerEvent, Channel, Notice, Result, StreamKey};

/// First reconnect delay; doubles per failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the idle pub/sub connection is checked with a PING. A killed Redis closes the socket
/// and is noticed at once; this catches a connection that silently stopped (network partition).
const HEALTH_CHECK: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE when resubscribing, so each command stays small.
const RESUBSCRIBE_CHUNK: usize = 500;

/// The Redis broker.
pub(crate) struct RedisBroker {
    redis: Redis,
    keys: Keys,
    shared: Arc<Shared>,
}

/// State shared by the broker handle and its reader task.
struct Shared {
    client: redis::Client,
    timeout: Duration,
    state: Mutex<SubState>,
}

struct SubState {
    /// Every channel the node wants; on the live connection all of them are subscribed.
    channels: BTreeSet<String>,
    /// The live connection's command side; `None` while reconnecting.
    sink: Option<PubSubSink>,
}

impl RedisBroker {
    /// Opens the pub/sub connection and starts its reader task.
    pub(crate) async fn start(
        client: redis::Client,
        redis: Redis,
        keys: Keys,
        events: mpsc::Sender<BrokerEvent>,
    ) -> Result<Self> {
        let timeout = redis.timeout;
        // Redis may be down at startup: then the reader task connects when it can.
        let connection = match connect(&client, timeout).await {
            Ok(connection) => Some(connection),
            Err(e) => {
                tracing::warn!(error = %e, "redis pub/sub not reachable yet; retrying in the background");
                None
            }
        };
        let shared = Arc::new(Shared {
            client,
            timeout,
            state: Mutex::new(SubState {
                channels: BTreeSet::new(),
                sink: connection.as_ref().map(|(sink, _)| sink.clone()),
            }),
        });
        tokio::spawn(run(shared.clone(), keys.clone(), events, connection));
        Ok(RedisBroker {
            redis,
            keys,
            shared,
        })
    }
}

async fn connect(client: &redis::Client, timeout: Duration) -> Result<(PubSubSink, PubSubStream)> {
    match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => Ok(pubsub.split()),
        Ok(Err(e)) => Err(BackendError::Unavailable(format!("pub/sub connect: {e}"))),
        Err(_) => Err(BackendError::Unavailable(format!(
            "pub/sub connect: no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// The reader task: delivers messages, and reconnects and resubscribes whenever the connection
/// is lost (or, with `connection` `None`, first connects). Ends when the event queue's receiver
/// is dropped (the node is shutting down).
async fn run(
    shared: Arc<Shared>,
    keys: Keys,
    events: mpsc::Sender<BrokerEvent>,
    mut connection: Option<(PubSubSink, PubSubStream)>,
) {
    loop {
        let (mut sink, mut stream) = match connection.take() {
            Some(connection) => connection,
            None => {
                let Some(connection) = reconnect(&shared, &events).await else {
                    return;
                };
                if events.send(BrokerEvent::Resubscribed).await.is_err() {
                    return;
                }
                connection
            }
        };
        let lost = read(&shared, &keys, &events, &mut sink, &mut stream).await;
        if !lost {
            return;
        }
        shared.state.lock().await.sink = None;
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

/// Reads the connection until it is lost (returns true) or the node shuts down (false).
async fn read(
    shared: &Shared,
    keys: &Keys,
    events: &mpsc::Sender<BrokerEvent>,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
) -> bool {
    let mut health =
        tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_CHECK, HEALTH_CHECK);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                None => return true,
                Some(msg) => {
                    if let Some(event) = decode(keys, &msg)
                        && events.send(event).await.is_err()
                    {
                        return false;
                    }
                }
            },
            _ = health.tick() => {
                match tokio::time::timeout(shared.timeout, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "redis pub/sub PING failed");
                        return true;
                    }
                    Err(_) => {
                        tracing::warn!("redis pub/sub PING timed out");
                        return true;
                    }
                }
            }
            () = events.closed() => return false,
        }
    }
}

/// Connects again with capped exponential backoff and subscribes every tracked channel. `None`
/// when the node shut down meanwhile.
async fn reconnect(
    shared: &Shared,
    events: &mpsc::Sender<BrokerEvent>,
) -> Option<(PubSubSink, PubSubStream)> {
    let mut delay = BACKOFF_MIN;
    let mut attempt: u32 = 0;
    loop {
        if events.is_closed() {
            return None;
        }
        attempt += 1;
        match connect(&shared.client, shared.timeout).await {
            Ok((mut sink, stream)) => {
                let mut state = shared.state.lock().await;
                match resubscribe(&mut sink, &state.channels, shared.timeout).await {
                    Ok(()) => {
                        state.sink = Some(sink.clone());
                        metrics::counter!("chat_redis_pubsub_reconnects_total").increment(1);
                        tracing::info!(
                            attempt,
                            channels = state.channels.len(),
                            "redis pub/sub reconnected and resubscribed"
                        );
                        return Some((sink, stream));
                    }
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "redis pub/sub resubscribe failed")
                    }
                }
            }
            Err(e) => tracing::debug!(attempt, error = %e, "redis pub/sub reconnect failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = events.closed() => return None,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

async fn resubscribe(
    sink: &mut PubSubSink,
    channels: &BTreeSet<String>,
    timeout: Duration,
) -> Result<()> {
    let channels: Vec<&String> = channels.iter().collect();
    for chunk in channels.chunks(RESUBSCRIBE_CHUNK) {
        match tokio::time::timeout(timeout, sink.subscribe(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BackendError::Unavailable(format!("resubscribe: {e}"))),
            Err(_) => {
                return Err(BackendError::Unavailable(
                    "resubscribe: timed out".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// Turns one pub/sub message into an event. Payloads are wire frames; anything else (a foreign
/// publisher, a damaged payload) is logged and skipped.
fn decode(keys: &Keys, msg: &Msg) -> Option<BrokerEvent> {
    let channel = msg.get_channel_name();
    let Some(stream) = keys.parse_channel(channel) else {
        tracing::warn!(channel, "message on an unexpected channel; skipped");
        return None;
    };
    let Ok(frame) = std::str::from_utf8(msg.get_payload_bytes()) else {
        tracing::warn!(channel, "non-UTF-8 payload; skipped");
        return None;
    };
    let skip = |why: &str| {
        tracing::warn!(
            channel,
            payload = %frame.chars().take(200).collect::<String>(),
            "{why}; skipped"
        );
        None
    };
    match ServerFrame::decode(frame) {
        Ok(ServerFrame::Message(message)) => Some(BrokerEvent::Message {
            stream,
            message,
            frame: frame.to_owned(),
        }),
        Ok(ServerFrame::Login(notice)) | Ok(ServerFrame::Logout(notice))
            if stream != StreamKey::Room(notice.room_id.clone()) =>
        {
            skip("notice for another room")
        }
        Ok(ServerFrame::Login(notice)) => Some(BrokerEvent::Notice {
            notice: Notice::Login(notice),
            frame: frame.to_owned(),
        }),
        Ok(ServerFrame::Logout(notice)) => Some(BrokerEvent::Notice {
            notice: Notice::Logout(notice),
            frame: frame.to_owned(),
        }),
        Ok(_) => skip("frame that is neither a message nor a notice"),
        Err(_) => skip("payload that is not a server frame"),
    }
}

impl RedisBroker {
    async fn bounded<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.shared.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Unavailable(format!(
                "{what}: no answer from Redis within {} ms",
                self.shared.timeout.as_millis()
            ))),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn subscribe(&self, channel: &Channel) -> Result<()> {
        let name = self.keys.channel(channel);
        self.bounded("subscribe", async {
            let mut state = self.shared.state.lock().await;
            let Some(sink) = state.sink.as_mut() else {
                return Err(BackendError::Unavailable(
                    "subscribe: the pub/sub connection is reconnecting".to_owned(),
                ));
            };
            sink.subscribe(&name)
                .await
                .map_err(|e| BackendError::Unavailable(format!("subscribe: {e}")))?;
            state.channels.insert(name);
            Ok(())
        })
        .await
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<()> {
        let name = self.keys.channel(channel);
        self.bounded("unsubscribe", async {
            let mut state = self.shared.state.lock().await;
            // Forgotten first: whatever happens below, a reconnect will not bring it back.
            state.channels.remove(&name);
            match state.sink.as_mut() {
                // Not connected: the next connection simply never subscribes it.
                None => Ok(()),
                Some(sink) => sink
                    .unsubscribe(&name)
                    .await
                    .map_err(|e| BackendError::Unavailable(format!("unsubscribe: {e}"))),
            }
        })
        .await
    }

    async fn publish_notice(&self, notice: &Notice) -> Result<()> {
        const W: &str = "publish_notice";
        let frame = match notice {
            Notice::Login(n) => ServerFrame::Login(n.clone()),
            Notice::Logout(n) => ServerFrame::Logout(n.clone()),
        }
        .encode();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(
            self.keys
                .channel(&StreamKey::Room(notice.room_id().clone())),
        )
        .arg(frame);
        super::reply::int(W, &self.redis.query(W, &cmd).await?)?;
        Ok(())
    }

    async fn ready(&self) -> Result<()> {
        if self.shared.state.lock().await.sink.is_some() {
            Ok(())
        } else {
            Err(BackendError::Unavailable(
                "the pub/sub connection is reconnecting".to_owned(),
            ))
        }
    }
}
