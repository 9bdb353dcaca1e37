//! permessage-deflate (RFC 7692): negotiation, compressing outbound payloads and inflating inbound
//! ones with a bound.
//!
//! The server always runs with no context takeover in both directions
//! (`server_no_context_takeover; client_no_context_takeover`): each message is compressed on its
//! own, so a broadcast frame is compressed once per node and the same bytes go to every recipient
//! that negotiated the extension (see [`Shared`]), and no connection keeps a 32 KiB LZ77 window
//! (and its deflate state) between messages. The (de)compressors are per thread, reset per message.
//!
//! Inbound, a compressed message is inflated into a buffer that never grows past the frame limit:
//! a small frame that inflates past it is refused ([`Inflate::TooBig`], close 1009) without the
//! whole ever being allocated. A message compressed in fragments arrives here whole (still
//! compressed, at most `limits.max_frame_bytes`): the patched tungstenite assembles it
//! (`vendor/tungstenite/PATCHED.md`), so it is inflated once like any other.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// What the server answers to an offer it accepts.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The bytes a sync flush ends with; stripped when sending, appended when inflating (RFC 7692 7.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    // A deflate state is ~300 KiB and an inflate state ~40 KiB: one per worker thread, reset for
    // every message, instead of one per connection or an allocation per message.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// True when one of the `Sec-WebSocket-Extensions` offers is a permessage-deflate the server can
/// accept with [`RESPONSE`]. An offer asking for a smaller server window than 32 KiB, or with a
/// parameter this server does not know, is declined (the connection is then uncompressed).
pub fn accepts<'a>(header_values: impl IntoIterator<Item = &'a str>) -> bool {
    header_values
        .into_iter()
        .flat_map(|v| v.split(','))
        .any(acceptable_offer)
}

fn acceptable_offer(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next() != Some(NAME) {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return false; // RFC 7692 7: a repeated parameter makes the offer invalid.
        }
        seen.push(name);
        let ok = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // We inflate with a 32 KiB window, which reads any smaller one too.
            "client_max_window_bits" => value.is_none_or(valid_window_bits),
            // Our compressor always uses a 32 KiB window; a client that cannot hold one says so.
            "server_max_window_bits" => value == Some("15"),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn valid_window_bits(value: &str) -> bool {
    value.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
}

/// Compresses one message payload on its own (no context takeover), without the sync-flush tail.
/// `None` when compression does not make it smaller: it is then sent as it is.
pub fn compress(payload: &[u8]) -> Option<Bytes> {
    DEFLATE.with(|cell| {
        let mut deflate = cell.borrow_mut();
        deflate.reset();
        // Room for the payload itself plus the flush: anything that does not fit this is not
        // worth sending compressed, so the output is bounded by the input.
        let mut out = Vec::with_capacity(payload.len() + 16);
        deflate
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .ok()?;
        let complete = deflate.total_in() == payload.len() as u64 && out.ends_with(&TAIL);
        if !complete {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < payload.len()).then(|| Bytes::from(out))
    })
}

/// Why an inbound compressed message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflate {
    /// It inflates to more than the limit.
    TooBig,
    /// Not valid deflate data.
    Corrupt,
}

/// Inflates one message compressed with no context takeover into at most `limit` bytes.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, Inflate> {
    INFLATE.with(|cell| {
        let mut inflate = cell.borrow_mut();
        inflate.reset(false);
        // Start small and grow towards the limit: a chat frame stays in one small allocation,
        // and nothing past `limit + 1` bytes is ever allocated.
        let cap = limit.saturating_add(1);
        let first = payload.len().saturating_mul(4).max(256).min(cap);
        let mut out = Vec::with_capacity(first);
        for chunk in [payload, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.capacity() > limit {
                        return Err(Inflate::TooBig);
                    }
                    let grow = out.capacity().min(cap - out.capacity());
                    out.reserve_exact(grow);
                }
                let (in_before, out_before) = (inflate.total_in(), out.len());
                let status = inflate
                    .decompress_vec(&chunk[pos..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| Inflate::Corrupt)?;
                pos += usize::try_from(inflate.total_in() - in_before)
                    .map_err(|_| Inflate::Corrupt)?;
                if out.len() > limit {
                    return Err(Inflate::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block (allowed, if unusual): nothing after it is part of the message.
                    return Ok(out);
                }
                let stalled = pos == chunk.len() && out.len() < out.capacity();
                if stalled {
                    break;
                }
                if inflate.total_in() == in_before
                    && out.len() == out_before
                    && out.len() < out.capacity()
                {
                    return Err(Inflate::Corrupt);
                }
            }
        }
        Ok(out)
    })
}

/// A broadcast's compressed form, shared by all of its recipients on this node that negotiated
/// permessage-deflate: the first one to write it compresses it, the others reuse the bytes.
/// `None` inside: not worth compressing (sent as text).
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<OnceLock<Option<Bytes>>>);

impl Shared {
    /// The compressed payload of `text`, computed by the first caller.
    pub fn get(&self, text: &str) -> Option<Bytes> {
        self.0.get_or_init(|| compress(text.as_bytes())).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::Message;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn negotiation() {
        assert!(accepts(["permessage-deflate; client_max_window_bits"]));
        assert!(accepts(["permessage-deflate"]));
        assert!(accepts([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(accepts([
            "x-webkit-deflate-frame",
            "permessage-deflate; client_no_context_takeover"
        ]));
        assert!(!accepts(["permessage-deflate; server_max_window_bits=10"]));
        assert!(!accepts(["permessage-deflate; client_max_window_bits=99"]));
        assert!(!accepts(["permessage-deflate; foo"]));
        assert!(!accepts([
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(!accepts(["deflate-frame"]));
        assert!(!accepts(Vec::<&str>::new()));
    }

    #[test]
    fn round_trip_and_incompressible() {
        let text =
            r#"{"type":"message","roomId":"lobby","content":"hello hello hello hello hello"}"#;
        let packed = compress(text.as_bytes()).expect("compressible");
        assert!(packed.len() < text.len());
        assert_eq!(inflate(&packed, 1000).expect("inflates"), text.as_bytes());
        assert_eq!(compress(b"ab"), None);
        assert_eq!(inflate(&packed, 10), Err(Inflate::TooBig));
        assert_eq!(inflate(&[0xff, 0xff, 0xff], 1000), Err(Inflate::Corrupt));
    }

    /// A client's masked frame: `first` is FIN/RSV/opcode.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).expect("test frame").to_be_bytes());
            }
        }
        let mask = [7u8, 1, 9, 3];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// The server side of a connection (the patched tungstenite, configured as the gateway
    /// configures it) reading `bytes`; what it writes is discarded.
    fn server(
        bytes: Vec<u8>,
        limit: usize,
    ) -> tungstenite::WebSocket<ReadOnly<std::io::Cursor<Vec<u8>>>> {
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
            .accept_compressed_frames(true);
        tungstenite::WebSocket::from_raw_socket(
            ReadOnly(std::io::Cursor::new(bytes)),
            tungstenite::protocol::Role::Server,
            Some(config),
        )
    }

    struct ReadOnly<R>(R);
    impl<R: std::io::Read> std::io::Read for ReadOnly<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl<R> std::io::Write for ReadOnly<R> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// RFC 7692: a compressed message may come in fragments, RSV1 on the first only, with control
    /// frames in between. The server gets the whole compressed message as one RSV1 frame and
    /// inflates it once.
    #[test]
    fn fragmented_compressed_messages_are_assembled() {
        let text =
            r#"{"event":"message","roomId":"r","content":"fragments, fragments, fragments 🦀"}"#;
        let packed = compress(text.as_bytes()).expect("compressible");
        let (a, rest) = packed.split_at(packed.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut wire = masked(0x41, a); // text, RSV1, not final
        wire.extend(masked(0x89, b"p")); // a ping between fragments
        wire.extend(masked(0x00, b)); // continuation, RSV1 clear
        wire.extend(masked(0x80, c)); // last continuation
        wire.extend(masked(0xC2, &compress(&[b'x'; 300]).expect("compressible"))); // one frame
        wire.extend(masked(0x01, b"plain ")); // an uncompressed fragmented message still works
        wire.extend(masked(0x80, b"text"));
        let mut ws = server(wire, 65536);
        assert_eq!(
            ws.read().expect("ping"),
            Message::Ping(Bytes::from_static(b"p"))
        );
        let Message::Frame(frame) = ws.read().expect("the message") else {
            panic!("a compressed message comes as a raw frame")
        };
        let header = frame.header();
        assert!(header.rsv1 && header.is_final);
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        assert_eq!(frame.payload(), &packed[..]);
        assert_eq!(
            inflate(frame.payload(), 65536).expect("inflates"),
            text.as_bytes()
        );
        let Message::Frame(frame) = ws.read().expect("the binary one") else {
            panic!("a compressed message comes as a raw frame")
        };
        assert_eq!(frame.header().opcode, OpCode::Data(Data::Binary));
        assert_eq!(
            inflate(frame.payload(), 65536).expect("inflates"),
            [b'x'; 300]
        );
        assert_eq!(ws.read().expect("plain"), Message::text("plain text"));
    }

    #[test]
    fn rsv1_on_a_continuation_frame_is_a_protocol_error() {
        let packed = compress(&[b'y'; 200]).expect("compressible");
        let (a, b) = packed.split_at(2);
        let mut wire = masked(0x41, a);
        wire.extend(masked(0xC0, b)); // RSV1 on the continuation
        let mut ws = server(wire, 65536);
        assert!(matches!(
            ws.read(),
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::NonZeroReservedBits
            ))
        ));
        // Nor may a new compressed message start before the last one ended.
        let mut wire = masked(0x41, a);
        wire.extend(masked(0xC1, b));
        assert!(matches!(
            server(wire, 65536).read(),
            Err(tungstenite::Error::Protocol(_))
        ));
    }

    /// The compressed fragments together are held to the limit (1009 in the gateway), and so is
    /// the inflated whole: many small fragments of a bomb are refused at the limit.
    #[test]
    fn fragments_are_bounded_before_and_after_inflating() {
        // What the fragments carry is not looked at before they are all in: 4000 bytes of them
        // are over a 1024-byte limit whatever they inflate to.
        let packed = vec![0x55u8; 4000];
        let mut wire = Vec::new();
        let chunks: Vec<_> = packed.chunks(100).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let first = if i == 0 { 0x41 } else { 0x00 };
            let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
            wire.extend(masked(first | fin, chunk));
        }
        assert!(matches!(
            server(wire, 1024).read(),
            Err(tungstenite::Error::Capacity(_))
        ));

        let bomb = compress(&vec![b'a'; 4 << 20]).expect("compressible");
        let mut wire = Vec::new();
        let chunks: Vec<_> = bomb.chunks(64).collect();
        assert!(chunks.len() > 10, "{}", chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let first = if i == 0 { 0x41 } else { 0x00 };
            let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
            wire.extend(masked(first | fin, chunk));
        }
        let Message::Frame(frame) = server(wire, 65536).read().expect("assembled") else {
            panic!("a compressed message comes as a raw frame")
        };
        assert_eq!(inflate(frame.payload(), 65536), Err(Inflate::TooBig));
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(&zeros).expect("compressible");
        assert!(bomb.len() < 20 << 10, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 65536), Err(Inflate::TooBig));
        let fits = compress(&zeros[..65536]).expect("compressible");
        assert_eq!(inflate(&fits, 65536).map(|v| v.len()), Ok(65536));
    }
}
