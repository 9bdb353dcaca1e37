//! permessage-deflate with fragmented messages (RFC 7692 §6.1): a compressed message may come in
//! several frames, RSV1 set on the first only, with control frames between them. The gateway
//! takes the whole compressed message (at most `limits.max_frame_bytes` of it), then inflates it
//! once, bounded as a single frame is: 1009 past the limit, with the gateway's memory flat. RSV1
//! on a continuation frame is a protocol error (1002). The client is tokio-tungstenite offering
//! permessage-deflate, writing the compressed fragments itself.

use chat_tests::chat_protocol::ServerFrame;
use chat_tests::{Client, Gateway};
use flate2::{Compress, Compression, FlushCompress};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// `payload` compressed as one permessage-deflate message (no context takeover, no sync tail).
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    Compress::new(Compression::default(), false)
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "one sync flush");
    out.truncate(out.len() - 4);
    out
}

/// The frames of one compressed text message cut into `size`-byte fragments: RSV1 on the first,
/// continuations after it, FIN on the last.
fn fragments(packed: &[u8], size: usize) -> Vec<Message> {
    let chunks: Vec<&[u8]> = packed.chunks(size).collect();
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let opcode = if i == 0 { Data::Text } else { Data::Continue };
            let mut frame = Frame::message(chunk.to_vec(), OpCode::Data(opcode), i == last);
            frame.header_mut().rsv1 = i == 0;
            Message::Frame(frame)
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_fragmented_compressed_message_is_posted_with_pings_between_its_fragments() {
    let gw = Gateway::start(&[]).await;
    let mut ann = Client::connect_deflate(&gw.ws_url()).await.named("ann");
    let mut bob = Client::connect(&gw.ws_url()).await.named("bob");
    ann.login("frag", "ann", "Ann").await;
    bob.login("frag", "bob", "Bob").await;

    let content = "fragmented, compressed: ünïcödé 你好 🦀🎉 — ".repeat(40);
    let frame =
        json!({"event": "message", "roomId": "frag", "content": content, "clientMsgId": "f1"});
    let packed = deflate(frame.to_string().as_bytes());
    let parts = fragments(&packed, 40);
    assert!(parts.len() >= 3, "{} fragments", parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        ann.send(part).await;
        if i == 0 {
            ann.send(Message::Ping(b"between".to_vec().into())).await;
        }
    }
    let sent = ann
        .recv_match("sent f1", |f| match f {
            ServerFrame::Sent(s) if s.client_msg_id.as_deref() == Some("f1") => Some(s.clone()),
            ServerFrame::Error(e) => panic!("the post was refused: {e:?}"),
            _ => None,
        })
        .await;
    for client in [&mut ann, &mut bob] {
        let got = client.recv_message_in("frag").await;
        assert_eq!(got.content, content);
        assert_eq!(got.seq, sent.seq);
    }
    // The connection goes on: an unfragmented compressed post after it.
    let packed = deflate(
        json!({"event": "message", "roomId": "frag", "content": "after"})
            .to_string()
            .as_bytes(),
    );
    let mut one = Frame::message(packed, OpCode::Data(Data::Text), true);
    one.header_mut().rsv1 = true;
    ann.send(Message::Frame(one)).await;
    assert_eq!(bob.recv_message_in("frag").await.content, "after");
}

#[tokio::test]
async fn rsv1_on_a_continuation_frame_closes_with_1002() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect_deflate(&gw.ws_url()).await;
    let packed = deflate(
        json!({"event": "heartBeat", "content": "ping"})
            .to_string()
            .as_bytes(),
    );
    let mut parts = fragments(&packed, 8);
    if let Some(Message::Frame(second)) = parts.get_mut(1) {
        second.header_mut().rsv1 = true;
    }
    for part in parts.into_iter().take(2) {
        c.send(part).await;
    }
    assert_eq!(c.expect_close_code().await, Some(1002));
    let mut ok = gw.client().await;
    ok.login("r", "u", "U").await;
}

#[tokio::test]
async fn fragmented_bombs_close_with_1009_and_the_gateway_stays_flat() {
    let gw = Gateway::start(&[]).await; // limits.max_frame_bytes: 64 KiB
    let mut warm = Client::connect_deflate(&gw.ws_url()).await.named("warm");
    warm.login("bombs", "warm", "Warm").await;
    // ~8 MiB of inflated text in ~8 KiB of compressed fragments of 128 bytes.
    let bomb = json!({"event": "message", "roomId": "bombs", "content": "a".repeat(8 << 20)});
    let packed = deflate(bomb.to_string().as_bytes());
    assert!(packed.len() < 64 << 10, "{}", packed.len());
    let parts = fragments(&packed, 128);
    let once = |label: &str| {
        let parts = parts.clone();
        let url = gw.ws_url();
        let label = label.to_owned();
        async move {
            let mut c = Client::connect_deflate(&url).await.named(label);
            for part in parts {
                c.send(part).await;
            }
            assert_eq!(c.expect_close_code().await, Some(1009));
        }
    };
    // The first allocates what the process keeps anyway (thread-local inflate state, buffers).
    once("first").await;
    let start = rss_kib(gw.pid());
    for i in 0..20 {
        once(&format!("bomb {i}")).await;
    }
    let grown = rss_kib(gw.pid()).saturating_sub(start);
    // Inflating any one of them whole would show here as 8 MiB or more.
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");

    // Compressed fragments past the limit themselves (incompressible bytes): 1009 as well, once
    // the fragments reach 64 KiB, before anything is inflated.
    let mut c = Client::connect_deflate(&gw.ws_url()).await.named("big");
    let mut noise = Vec::with_capacity(80 << 10);
    let mut x: u32 = 0x9e37_79b9;
    while noise.len() < 80 << 10 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    for (i, chunk) in noise.chunks(16 << 10).enumerate() {
        let opcode = if i == 0 { Data::Text } else { Data::Continue };
        let mut frame = Frame::message(chunk.to_vec(), OpCode::Data(opcode), false);
        frame.header_mut().rsv1 = i == 0;
        c.send(Message::Frame(frame)).await;
    }
    assert_eq!(c.expect_close_code().await, Some(1009));

    warm.post_and_wait("bombs", "still here").await;
}
