//! Server frame decoding, as every client (chat-cli, chat-loadgen, the tests) does it: any text
//! gives a frame or an error, never a panic.
#![no_main]

use chat_protocol::ServerFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ServerFrame::decode(&String::from_utf8_lossy(data));
});
