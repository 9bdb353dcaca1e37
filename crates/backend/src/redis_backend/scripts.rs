//! The Lua scripts that make multi-key updates atomic.
//!
//! Each script is `lua/common.lua` (shared helpers) followed by its own file, compiled into the
//! binary with `include_str!` and run with EVALSHA through [`redis::Script`], which falls back to
//! loading the script when Redis answers NOSCRIPT (a restarted or flushed Redis has an empty
//! script cache). Every script reads the clock with `TIME`, so all presence expiries and message
//! timestamps come from the Redis clock, whatever the skew between nodes.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            "\n",
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// All scripts, hashed once at startup.
pub(crate) struct Scripts {
    pub(crate) post: Script,
    pub(crate) post_direct: Script,
    pub(crate) head: Script,
    pub(crate) join: Script,
    pub(crate) go_offline: Script,
    pub(crate) leave: Script,
    pub(crate) refresh: Script,
    pub(crate) reap: Script,
    pub(crate) advance_cursor: Script,
    pub(crate) advance_cursors: Script,
    pub(crate) prune_rooms: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            post: script!("post.lua"),
            post_direct: script!("post_direct.lua"),
            head: script!("head.lua"),
            join: script!("join.lua"),
            go_offline: script!("go_offline.lua"),
            leave: script!("leave.lua"),
            refresh: script!("refresh.lua"),
            reap: script!("reap.lua"),
            advance_cursor: script!("advance_cursor.lua"),
            advance_cursors: script!("advance_cursors.lua"),
            prune_rooms: script!("prune_rooms.lua"),
        }
    }

    /// Every script, for loading them all up front.
    pub(crate) fn all(&self) -> [&Script; 11] {
        [
            &self.post,
            &self.post_direct,
            &self.head,
            &self.join,
            &self.go_offline,
            &self.leave,
            &self.refresh,
            &self.reap,
            &self.advance_cursor,
            &self.advance_cursors,
            &self.prune_rooms,
        ]
    }
}
