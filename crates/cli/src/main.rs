//! `chat-cli`: a terminal client for the chat cluster (the client itself is the crate's library,
//! shared with `chatctl chat`).

use clap::Parser;

#[tokio::main]
async fn main() {
    chat_cli::run(chat_cli::Args::parse()).await;
}
