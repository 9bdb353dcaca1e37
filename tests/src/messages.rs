//! Assertions over received messages, and small file helpers.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use chat_protocol::ChatMessage;

/// Checks that `messages` are consecutive seqs `first, first+1, ...` of one epoch.
pub fn assert_consecutive(messages: &[ChatMessage], first: u64) {
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(
            m.seq,
            first + i as u64,
            "message {i} has seq {} (expected {}); all seqs: {:?}",
            m.seq,
            first + i as u64,
            messages.iter().map(|m| m.seq).collect::<Vec<_>>()
        );
        assert_eq!(m.epoch, messages[0].epoch, "epoch changed within a run");
    }
}

/// The seqs of `messages`.
pub fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Reads a whole file to a string (test convenience).
pub fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    s
}
