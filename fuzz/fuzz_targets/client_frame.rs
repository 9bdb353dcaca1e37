//! Client frame decoding: any bytes (as the text of a WebSocket message) give a frame or an error
//! code, never a panic; and what is accepted is written back and read again as the same frame.
#![no_main]

use chat_protocol::client::{Limits, parse_client_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(frame) = parse_client_frame(&text, &Limits::default()) {
        assert_eq!(
            parse_client_frame(&frame.encode(), &Limits::default()),
            Ok(frame)
        );
    }
});
