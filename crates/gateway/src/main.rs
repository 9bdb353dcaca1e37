//! `chat-gateway`: the server binary.

use std::path::PathBuf;

use chat_gateway::config::Settings;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// The allocator decides much of what an idle connection costs: many small long-lived objects per
// connection, and bursts (logins, heartbeats, presence snapshots) freed in between. Measured per
// connection in docs/benchmarks.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A real-time multi-room chat server: one node, or a cluster over Redis.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file overriding config/default.toml; CHAT__SECTION__KEY variables override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Prints a development token (HS256, signed with auth.secret) and exits.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// The display name (`name`).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Rooms the token may join (ids or `prefix*`), comma-separated; none: any room.
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
        /// `aud` (default: auth.audience).
        #[arg(long)]
        aud: Option<String>,
        /// `iss` (default: auth.issuer).
        #[arg(long)]
        iss: Option<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("chat-gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Token {
        sub,
        name,
        ttl_secs,
        rooms,
        aud,
        iss,
    }) = args.command
    {
        return mint(&settings, sub, name, ttl_secs, rooms, aud, iss);
    }
    init_logging(&settings);
    let listener = match TcpListener::bind(&settings.server.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(listen = %settings.server.listen, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match chat_gateway::run(settings, listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}

fn mint(
    settings: &Settings,
    sub: String,
    name: Option<String>,
    ttl_secs: u64,
    rooms: Vec<String>,
    aud: Option<String>,
    iss: Option<String>,
) -> std::process::ExitCode {
    if settings.auth.secret.is_empty() {
        eprintln!("chat-gateway token: auth.secret is empty (set CHAT__AUTH__SECRET)");
        return std::process::ExitCode::from(2);
    }
    let now = chat_gateway::auth::now_secs();
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let claims = chat_gateway::auth::Claims {
        sub,
        name,
        exp: now + ttl_secs,
        nbf: None,
        iat: Some(now),
        aud: aud.or_else(|| non_empty(&settings.auth.audience)),
        iss: iss.or_else(|| non_empty(&settings.auth.issuer)),
        rooms: (!rooms.is_empty()).then_some(rooms),
    };
    match chat_gateway::auth::mint_hs256(&settings.auth.secret, &claims) {
        Ok(token) => {
            println!("{token}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-gateway token: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if settings.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested: draining (not ready; sessions closed with 1012)");
    shutdown.cancel();
}
