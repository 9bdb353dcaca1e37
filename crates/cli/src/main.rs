//! `chat-cli`: a terminal client for the chat cluster (the client itself is the crate's library,
//! shared with `chatctl chat`).

use clap::Parser;

#[tokio::main]
async fn main() {
    let code = match chat_cli::run(chat_cli::Args::parse()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chat-cli: {e}");
            1
        }
    };
    // Exits here rather than by returning: tokio reads stdin with a blocking read on a thread of
    // its own that cannot be cancelled, and the runtime's shutdown would wait for it, so `/quit`
    // would end the program only at the user's next line (or end of input).
    std::process::exit(code);
}
