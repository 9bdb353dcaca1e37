//! Session handling: the input is split into lines, each line a text frame from one of two
//! connections (the first byte picks which), through the socket-free session over the in-memory
//! backend, the way the socket driver feeds it. Nothing may panic, whatever the frames.
#![no_main]

#[path = "../../crates/gateway/tests/support/mod.rs"]
mod support;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    runtime.block_on(async {
        let harness = support::Harness::new();
        let mut conns = [harness.connect(), harness.connect()];
        for line in data.split(|b| *b == b'\n').take(64) {
            let Some((&which, frame)) = line.split_first() else {
                continue;
            };
            let conn = &mut conns[usize::from(which & 1)];
            conn.send(&String::from_utf8_lossy(frame)).await;
            conn.session.on_tick().await;
            let _ = conn.replies();
            while conn.rx.try_recv().is_ok() {}
        }
        for conn in &mut conns {
            conn.session.finish().await;
        }
    });
});
