//! `relay --impl ours|ours-plain|yawc|yawc-ctx|sockudo|sockudo-ctx --port N`: a WebSocket
//! fan-out relay on 127.0.0.1 at `ws://127.0.0.1:N/ws`. Every text message any client sends is
//! sent to every connected client (the sender included). Each variant is one WebSocket crate
//! behind the same axum server (TCP_NODELAY on every socket) and the same fan-out ([`hub`]);
//! which permessage-deflate options each uses is in its module. Runs until killed; every second
//! in which broadcasts were dropped (a connection's queue was full) is reported on stderr.
//!
//! A variant is available when the cargo feature of its crate was built in (`ours`, `yawc`,
//! `sockudo`; `run.sh` builds `ours,yawc` and `sockudo` apart, see Cargo.toml).

#[cfg_attr(
    not(any(feature = "ours", feature = "yawc", feature = "sockudo")),
    allow(dead_code)
)]
mod hub;
#[cfg(feature = "ours")]
mod ours;
#[cfg(feature = "sockudo")]
mod sockudo;
#[cfg(feature = "yawc")]
mod yawc;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;

fn usage() -> ExitCode {
    eprintln!("usage: relay --impl ours|ours-plain|yawc|yawc-ctx|sockudo|sockudo-ctx --port N");
    ExitCode::from(2)
}

/// The router for variant `name`, or why there is none.
fn router(name: &str) -> Result<Router, String> {
    match name {
        "ours" | "ours-plain" => ours_router(name == "ours"),
        "yawc" | "yawc-ctx" => yawc_router(name == "yawc-ctx"),
        "sockudo" | "sockudo-ctx" => sockudo_router(name == "sockudo-ctx"),
        _ => Err(format!("unknown impl {name}")),
    }
}

#[cfg(feature = "ours")]
fn ours_router(deflate: bool) -> Result<Router, String> {
    Ok(ours::router(deflate))
}

#[cfg(not(feature = "ours"))]
fn ours_router(_: bool) -> Result<Router, String> {
    Err(missing("ours"))
}

#[cfg(feature = "yawc")]
fn yawc_router(context_takeover: bool) -> Result<Router, String> {
    Ok(yawc::router(context_takeover))
}

#[cfg(not(feature = "yawc"))]
fn yawc_router(_: bool) -> Result<Router, String> {
    Err(missing("yawc"))
}

#[cfg(feature = "sockudo")]
fn sockudo_router(context_takeover: bool) -> Result<Router, String> {
    Ok(sockudo::router(context_takeover))
}

#[cfg(not(feature = "sockudo"))]
fn sockudo_router(_: bool) -> Result<Router, String> {
    Err(missing("sockudo"))
}

#[allow(dead_code)] // Used only when a feature is left out.
fn missing(feature: &str) -> String {
    format!("built without the `{feature}` feature")
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut name, mut port) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--impl" => name = it.next().cloned(),
            "--port" => port = it.next().and_then(|p| p.parse::<u16>().ok()),
            _ => return usage(),
        }
    }
    let (Some(name), Some(port)) = (name, port) else {
        return usage();
    };
    let app = match router(&name) {
        Ok(app) => app,
        Err(why) => {
            eprintln!("relay: {why}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("relay: bind 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async {
        let mut reported = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let dropped = hub::DROPPED.load(Ordering::Relaxed);
            if dropped != reported {
                eprintln!("relay: {dropped} broadcasts dropped (full queues) so far");
                reported = dropped;
            }
        }
    });
    eprintln!("relay: {name} on ws://127.0.0.1:{port}/ws");
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: {e}");
            ExitCode::FAILURE
        }
    }
}
