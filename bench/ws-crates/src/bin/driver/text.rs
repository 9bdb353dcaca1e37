//! Chat-like JSON posts with varied text: words drawn from a fixed list by a seeded PRNG, so a
//! run is repeatable and deflate sees prose-like content instead of one repeated sentence (which
//! it would fold away).

/// xorshift64*: small, seeded, good enough for picking words and masks.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "the",
    "be",
    "to",
    "of",
    "and",
    "a",
    "in",
    "that",
    "have",
    "I",
    "it",
    "for",
    "not",
    "on",
    "with",
    "he",
    "as",
    "you",
    "do",
    "at",
    "this",
    "but",
    "his",
    "by",
    "from",
    "they",
    "we",
    "say",
    "her",
    "she",
    "or",
    "an",
    "will",
    "my",
    "one",
    "all",
    "would",
    "there",
    "their",
    "what",
    "so",
    "up",
    "out",
    "if",
    "about",
    "who",
    "get",
    "which",
    "go",
    "me",
    "when",
    "make",
    "can",
    "like",
    "time",
    "no",
    "just",
    "him",
    "know",
    "take",
    "people",
    "into",
    "year",
    "your",
    "good",
    "some",
    "could",
    "them",
    "see",
    "other",
    "than",
    "then",
    "now",
    "look",
    "only",
    "come",
    "its",
    "over",
    "think",
    "also",
    "back",
    "after",
    "use",
    "two",
    "how",
    "our",
    "work",
    "first",
    "well",
    "way",
    "even",
    "new",
    "want",
    "because",
    "any",
    "these",
    "give",
    "day",
    "most",
    "us",
    "deploy",
    "build",
    "merge",
    "review",
    "ticket",
    "meeting",
    "lunch",
    "coffee",
    "tomorrow",
    "tonight",
    "weekend",
    "server",
    "latency",
    "release",
    "branch",
    "tests",
    "green",
    "red",
    "flaky",
    "fixed",
    "broken",
    "sounds",
    "great",
    "thanks",
    "sorry",
    "maybe",
    "probably",
    "definitely",
    "anyone",
    "everyone",
    "here",
    "there",
    "ok",
    "sure",
    "yes",
    "nope",
    "haha",
    "lol",
    "brb",
    "afk",
    "wait",
    "really",
    "nice",
    "cool",
    "weird",
    "interesting",
    "dashboard",
    "alert",
    "pager",
    "incident",
    "database",
    "cache",
    "query",
    "index",
    "migration",
    "rollback",
    "customer",
    "invoice",
    "design",
    "mockup",
    "sprint",
    "backlog",
    "estimate",
    "Monday",
    "Friday",
    "morning",
    "afternoon",
    "link",
    "screenshot",
    "logs",
    "trace",
    "memory",
    "CPU",
    "disk",
    "network",
    "config",
    "feature",
    "flag",
    "rollout",
    "percent",
    "numbers",
    "graph",
    "spike",
    "drop",
    "again",
    "still",
    "already",
    "soon",
    "later",
    "before",
    "during",
    "meanwhile",
    "honestly",
    "basically",
    "actually",
    "quick",
    "question",
    "answer",
    "idea",
    "plan",
    "team",
    "project",
    "docs",
    "readme",
    "pull",
    "request",
    "comment",
    "approve",
    "ship",
    "it",
];

const PUNCT: &[&str] = &[".", ",", "?", "!", " :)", "..."];

const NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
];

/// About `bytes` bytes of text (ASCII, no characters JSON would escape), cut to exactly `bytes`.
pub fn content(rng: &mut Rng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 16);
    while out.len() < bytes {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
        if rng.below(8) == 0 {
            out.push_str(PUNCT[rng.below(PUNCT.len())]);
        }
    }
    out.truncate(bytes);
    out
}

/// One post: `{"type":"message","room":..,"seq":..,"from":..,"ts":..,"content":..}`, `ts` in
/// microseconds since the Unix epoch.
pub fn post(rng: &mut Rng, seq: u64, ts_us: u64, content_bytes: usize) -> String {
    let room = 1 + rng.below(5);
    let from = NAMES[rng.below(NAMES.len())];
    let content = content(rng, content_bytes);
    format!(
        r#"{{"type":"message","room":"r{room}","seq":{seq},"from":"{from}","ts":{ts_us},"content":"{content}"}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_are_valid_json_of_the_asked_size() {
        let mut rng = Rng::new(7);
        for size in [100, 1024] {
            let text = content(&mut rng, size);
            assert_eq!(text.len(), size);
            let json = post(&mut rng, 3, 42, size);
            let value: serde_json::Value = serde_json::from_str(&json).expect("json");
            assert_eq!(value["seq"], 3);
            assert_eq!(value["content"].as_str().map(str::len), Some(size));
        }
        assert_ne!(content(&mut rng, 100), content(&mut rng, 100));
    }
}
