//! A hand-rolled WebSocket client ([`RawClient`]) that writes nothing unless told to: a silent or
//! misbehaving peer, and a way to see exactly which frames and close codes the server sends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::default_timeout;

/// A frame as read by [`RawClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The (unmasked) payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A hand-rolled WebSocket client over a plain TCP stream that never writes anything unless told
/// to: it does not answer pings, so it plays a client that went silent (a frozen process, a dead
/// network) while its socket stays open. Reading it later does not write either, so the server's
/// close frame can always be observed.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and completes the WebSocket handshake on `/ws`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let connecting = async {
            let mut stream = TcpStream::connect(addr).await?;
            let request = format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let end = loop {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed during the handshake"));
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                return Err(std::io::Error::other(format!("handshake refused: {head}")));
            }
            Ok(RawClient {
                stream,
                buf: buf[end..].to_vec(),
            })
        };
        tokio::time::timeout(default_timeout(), connecting)
            .await
            .unwrap_or_else(|_| panic!("raw WebSocket connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("raw WebSocket connect to {addr}: {e}"))
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x5Au8, 0xA5, 0x3C, 0xC3];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        tokio::time::timeout(default_timeout(), self.stream.write_all(&frame))
            .await
            .expect("raw send timed out")
            .expect("raw send failed");
    }

    /// Sends bytes as they are (hand-made frames that break the protocol).
    pub async fn send_raw_bytes(&mut self, bytes: &[u8]) {
        tokio::time::timeout(default_timeout(), self.stream.write_all(bytes))
            .await
            .expect("raw send timed out")
            .expect("raw send failed");
    }

    /// Reads frames until the server closes (a close frame, or the end of the stream) or `timeout`
    /// passes. Never writes. Returns every frame read.
    pub async fn read_until_closed(&mut self, timeout: Duration) -> Vec<RawFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.parse_frame() {
                let close = frame.opcode == 8;
                frames.push(frame);
                if close {
                    return frames;
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return frames,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse_frame(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        let mask = if masked {
            let m = b.get(at..at + 4)?.to_vec();
            at += 4;
            Some(m)
        } else {
            None
        };
        let mut payload = b.get(at..at + len)?.to_vec();
        if let Some(m) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= m[i % 4];
            }
        }
        self.buf.drain(..at + len);
        Some(RawFrame { opcode, payload })
    }
}
