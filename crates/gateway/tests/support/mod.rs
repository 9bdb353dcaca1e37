//! Shared harness of the gateway's socket-less tests: a node on the in-memory backend, sessions
//! driven frame by frame, and the hub queue a socket driver would drain.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chat_backend::Broker;
use chat_backend::memory;
use chat_gateway::config::Settings;
use chat_gateway::hub::{ConnHandle, Outbound};
use chat_gateway::node::Node;
use chat_gateway::outbox;
use chat_gateway::session::Session;
use chat_protocol::ServerFrame;
use tokio_util::sync::CancellationToken;

/// A node on the in-memory backend with its pump running, and no socket.
pub struct Harness {
    /// The node.
    pub node: Arc<Node>,
    /// Cancel to stop the hub's pump: the node then lags the store, as a busy node does.
    pub pump: CancellationToken,
}

/// One simulated connection: its session and the hub queue a socket driver would drain.
pub struct Conn {
    /// The session under test.
    pub session: Session,
    /// What the hub queued for the connection.
    pub rx: outbox::Receiver,
}

impl Harness {
    /// A node on a fresh in-memory backend.
    pub fn new() -> Self {
        Self::with_broker(|broker| broker)
    }

    /// The same, with the broker wrapped by `wrap` (to hold a call at a chosen moment).
    pub fn with_broker(wrap: impl FnOnce(Arc<dyn Broker>) -> Arc<dyn Broker>) -> Self {
        Self::with(Settings::defaults().expect("defaults"), wrap)
    }

    /// A node with `settings` (defaults changed by the test).
    pub fn with_settings(settings: Settings) -> Self {
        Self::with(settings, |broker| broker)
    }

    fn with(settings: Settings, wrap: impl FnOnce(Arc<dyn Broker>) -> Arc<dyn Broker>) -> Self {
        let backend = memory::open(chat_gateway::memory_config(&settings));
        let broker = wrap(backend.broker);
        let shutdown = CancellationToken::new();
        let pump = shutdown.child_token();
        let node = Node::new(
            "test".into(),
            settings,
            backend.store,
            broker,
            "memory",
            shutdown.clone(),
        );
        tokio::spawn(node.hub.clone().run_pump(
            backend.events,
            Duration::from_secs(5),
            pump.clone(),
        ));
        Harness { node, pump }
    }

    /// A new connection with a queue of 64.
    pub fn connect(&self) -> Conn {
        let (tx, rx) = outbox::channel(64);
        let conn = ConnHandle::new(self.node.hub.next_conn_id(), tx);
        Conn {
            session: Session::new(self.node.clone(), conn),
            rx,
        }
    }
}

impl Conn {
    /// A text frame from the client.
    pub async fn send(&mut self, text: &str) {
        self.session.on_text(text).await;
    }

    /// The session's replies, as the driver writes them: every one reaches the socket, so its
    /// delivery marks are reported back.
    pub fn replies(&mut self) -> Vec<ServerFrame> {
        let replies: Vec<_> = self.session.take_replies().collect();
        let mut frames = Vec::new();
        for reply in replies {
            if let Some(mark) = &reply.mark {
                self.session.on_written(mark, &reply.text);
            }
            frames.push(ServerFrame::decode(reply.text.as_str()).expect("server frame"));
        }
        frames
    }

    /// Next frame the hub queued for this connection (as the driver would write it).
    pub async fn live(&mut self) -> ServerFrame {
        let item = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a live frame in time")
            .expect("queue open");
        match item {
            Outbound::Frame { text, mark, .. } => {
                if let Some(mark) = mark {
                    self.session.on_written(&mark, &text);
                }
                ServerFrame::decode(text.as_str()).expect("server frame")
            }
            Outbound::Left(room) => panic!("unexpected Left({room})"),
        }
    }
}

pub fn login(room: &str, user: &str) -> String {
    format!(r#"{{"event":"login","roomId":"{room}","userId":"{user}","userName":"{user}"}}"#)
}
