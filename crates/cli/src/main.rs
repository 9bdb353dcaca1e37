//! Terminal client.
fn main() {}
