//! An in-process node on port 0 (no child process): the embedding API, a chat round trip over a
//! real WebSocket, and graceful shutdown closing the session with 1012.

use std::time::Duration;

use chat_gateway::config::Settings;
use chat_protocol::{ServerFrame, close};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(ws: &mut Socket) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
}

async fn next_server_frame(ws: &mut Socket) -> ServerFrame {
    loop {
        match next_frame(ws).await {
            Some(Message::Text(text)) => {
                return ServerFrame::decode(text.as_str()).expect("server frame");
            }
            Some(_) => {}
            None => panic!("connection ended"),
        }
    }
}

#[tokio::test]
async fn an_in_process_node_chats_and_shuts_down_gracefully() {
    let settings = Settings::defaults().expect("defaults");
    let node = chat_gateway::spawn(settings).await.expect("spawn");
    let url = format!("ws://{}/ws", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");

    let login = r#"{"event":"login","roomId":"r","userId":"u","userName":"U"}"#;
    ws.send(Message::text(login)).await.expect("send");
    assert!(matches!(next_server_frame(&mut ws).await, ServerFrame::Joined(j) if j.num == 1));
    ws.send(Message::text(
        r#"{"event":"message","roomId":"r","content":"hi"}"#,
    ))
    .await
    .expect("send");
    let mut got_message = false;
    while !got_message {
        got_message = matches!(next_server_frame(&mut ws).await, ServerFrame::Message(m) if m.content == "hi");
    }

    node.shutdown.cancel();
    let code = loop {
        match next_frame(&mut ws).await {
            Some(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(code, Some(close::SERVICE_RESTART));
    let finished = tokio::time::timeout(Duration::from_secs(15), node.task).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "the node stops cleanly: {finished:?}"
    );
}
