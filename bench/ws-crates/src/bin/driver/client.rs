//! A minimal WebSocket client for the driver, written out so that it measures what the relay
//! sends and costs the shared CPU as little as possible: the HTTP/1.1 upgrade (always offering
//! `permessage-deflate; client_max_window_bits`, as browsers do, and recording what the server
//! answered), then frames read off the socket with every byte counted (frame headers
//! included) and every complete data message counted as a delivery, without inflating or
//! parsing them. Pings are answered. One connection per run can be a [`Checker`]: it inflates
//! (keeping the window when the server kept its context) and parses each message, so a relay
//! that garbles its frames shows up, and it measures latency from the post's `ts`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::{Decompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::text::Rng;

/// What all receiving connections have seen.
#[derive(Default)]
pub struct Counters {
    /// Complete data messages.
    pub deliveries: AtomicU64,
    /// Bytes read after the upgrade response.
    pub bytes: AtomicU64,
    /// Connections that ended (closed, reset, protocol error).
    pub ended: AtomicU64,
}

/// An upgraded connection: the socket, bytes already read past the response, and the
/// `Sec-WebSocket-Extensions` the server answered (`None`: no extension).
pub struct Upgraded {
    pub stream: TcpStream,
    pub leftover: Vec<u8>,
    pub extensions: Option<String>,
}

/// Connects to `ws://addr/ws`, offering permessage-deflate.
pub async fn connect(addr: SocketAddr) -> io::Result<Upgraded> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("response headers too long"));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::other("closed during the upgrade"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(io::Error::other(format!("upgrade refused: {status}")));
    }
    let extensions = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    });
    Ok(Upgraded {
        stream,
        leftover: buf[end..].to_vec(),
        extensions,
    })
}

/// A client frame: FIN, `opcode`, masked with a key from `rng`.
pub fn frame(opcode: u8, payload: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = (rng.next_u64() as u32).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Inflates and parses every message of one connection.
pub struct Checker {
    inflate: Decompress,
    /// The server keeps its LZ77 window between messages (no `server_no_context_takeover`).
    context_takeover: bool,
    /// Messages that inflated and parsed, with a `seq` above the last one.
    pub ok: u64,
    /// Messages that did not.
    pub bad: u64,
    last_seq: Option<u64>,
    /// Microseconds from each post's `ts` to its arrival here.
    pub latencies_us: Vec<u64>,
}

impl Checker {
    pub fn new(extensions: Option<&str>) -> Self {
        let context_takeover =
            extensions.is_some_and(|e| !e.contains("server_no_context_takeover"));
        Self {
            inflate: Decompress::new(false),
            context_takeover,
            ok: 0,
            bad: 0,
            last_seq: None,
            latencies_us: Vec::new(),
        }
    }

    fn check(&mut self, compressed: bool, payload: &[u8]) {
        let text = if compressed {
            match self.inflate(payload) {
                Some(text) => text,
                None => {
                    self.bad += 1;
                    return;
                }
            }
        } else {
            payload.to_vec()
        };
        let value: serde_json::Value = match serde_json::from_slice(&text) {
            Ok(value) => value,
            Err(_) => {
                self.bad += 1;
                return;
            }
        };
        let (Some(seq), Some(ts)) = (value["seq"].as_u64(), value["ts"].as_u64()) else {
            self.bad += 1;
            return;
        };
        if self.last_seq.is_some_and(|last| seq <= last) {
            self.bad += 1;
        } else {
            self.ok += 1;
        }
        self.last_seq = Some(seq);
        self.latencies_us.push(now_us().saturating_sub(ts));
    }

    fn inflate(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        if !self.context_takeover {
            self.inflate.reset(false);
        }
        let mut input = payload.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(payload.len() * 4 + 64);
        let mut pos = 0;
        loop {
            let (before, produced) = (self.inflate.total_in(), out.len());
            self.inflate
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                .ok()?;
            let consumed = usize::try_from(self.inflate.total_in() - before).ok()?;
            pos += consumed;
            if out.len() < out.capacity() {
                if pos == input.len() {
                    return Some(out);
                }
                if consumed == 0 && out.len() == produced {
                    return None; // No progress with room to spare: not deflate data.
                }
            }
            if out.len() > 1 << 20 {
                return None;
            }
            out.reserve(out.capacity());
        }
    }
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Reads frames until the connection ends, counting bytes and deliveries into `counters`;
/// answers pings through `write` when there is one.
pub async fn receive<R, W>(
    mut read: R,
    mut write: Option<W>,
    leftover: Vec<u8>,
    counters: Arc<Counters>,
    checker: Option<Arc<Mutex<Checker>>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rng = Rng::new(now_us());
    counters
        .bytes
        .fetch_add(leftover.len() as u64, Ordering::Relaxed);
    let mut buf = leftover;
    // A fragmented message being collected for the checker: (compressed, payload so far).
    let mut partial: Option<(bool, Vec<u8>)> = None;
    let mut chunk = vec![0u8; 16 * 1024];
    'conn: loop {
        let mut at = 0;
        while let Some((header, len)) = parse_header(&buf[at..]) {
            if buf.len() - at < header + len {
                break;
            }
            let (b0, payload) = (buf[at], &buf[at + header..at + header + len]);
            let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
            match opcode {
                0x0..=0x2 => {
                    if fin {
                        counters.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(checker) = &checker {
                        let (compressed, mut whole) = match partial.take() {
                            Some(started) if opcode == 0 => started,
                            _ => (rsv1, Vec::new()),
                        };
                        whole.extend_from_slice(payload);
                        if fin {
                            let mut checker = checker.lock().unwrap_or_else(|e| e.into_inner());
                            checker.check(compressed, &whole);
                        } else {
                            partial = Some((compressed, whole));
                        }
                    }
                }
                0x8 => break 'conn,
                0x9 => {
                    if let Some(write) = write.as_mut() {
                        let pong = frame(0xA, payload, &mut rng);
                        if write.write_all(&pong).await.is_err() {
                            break 'conn;
                        }
                    }
                }
                _ => {}
            }
            at += header + len;
        }
        buf.drain(..at);
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    counters.ended.fetch_add(1, Ordering::Relaxed);
}

/// The header length and payload length of the frame `buf` starts with, once its header is in.
fn parse_header(buf: &[u8]) -> Option<(usize, usize)> {
    let b1 = *buf.get(1)?;
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (header, len) = match b1 & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, n as usize),
    };
    (buf.len() >= header + mask).then_some((header + mask, len))
}
