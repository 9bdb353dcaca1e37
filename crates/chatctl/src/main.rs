//! `chatctl`: the operator's CLI for a chat cluster.
//!
//! - `chatctl rooms`, `chatctl room ROOM`: rooms; one room's members, who is online through which
//!   node, its latest seq and epoch, and the tail of its history.
//! - `chatctl user USER`: a user's rooms, read cursors, unread (offline) messages per room, inbox.
//! - `chatctl nodes`: live gateways, their connections and presence lease age.
//! - `chatctl chat ...`: the terminal chat client (`chat-cli`'s library, same options).
//! - `chatctl token USER [--name N] [--ttl-secs S] [--rooms a,b*] --secret S`: a development token
//!   (HS256) for a gateway with `auth.mode = "jwt"` (the secret also from `CHAT__AUTH__SECRET`).
//!
//! It reads through a gateway's HTTP API where one exists (`--url`, nginx or any gateway) and
//! otherwise straight from Redis (`--redis`), read-only, with the keys documented in
//! `docs/redis.md`. Output is a table; `--json` prints one JSON document for scripts.

mod http;
mod redis_view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

/// Operator CLI of the chat cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// HTTP address of a gateway, or of nginx in front of the cluster.
    #[arg(
        long,
        global = true,
        env = "CHATCTL_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// The cluster's Redis (read-only use), for what the HTTP API does not show.
    #[arg(
        long,
        global = true,
        env = "CHATCTL_REDIS",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// The gateways' `redis.prefix`.
    #[arg(long, global = true, default_value = "chat:")]
    prefix: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every room: online and member counts, latest seq and epoch.
    Rooms,
    /// One room: members, who is online on which node, latest seq and epoch, history tail.
    Room {
        /// Room id.
        room: String,
        /// Messages of history to show.
        #[arg(long, default_value_t = 10)]
        tail: u32,
    },
    /// One user: rooms, cursors, unread messages per room, inbox size.
    User {
        /// User id.
        user: String,
    },
    /// Live gateways: connections and presence lease age.
    Nodes {
        /// Gateways' HTTP addresses to ask for their connection counts (comma-separated).
        /// Default: `--url` only (behind nginx, that is one gateway per request).
        #[arg(long, value_delimiter = ',')]
        gateways: Vec<String>,
    },
    /// Prints a development token (HS256) for a gateway with `auth.mode = "jwt"`.
    Token {
        /// The user id (`sub`).
        user: String,
        /// The display name (`name`); default: the user id.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Rooms the token may join (ids or `prefix*`), comma-separated; none: any room.
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
        /// The gateway's `auth.secret`.
        #[arg(long, env = "CHAT__AUTH__SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// The terminal chat client (the same as `chat-cli`).
    Chat(chat_cli::Args),
}

/// A failure to report and exit with.
type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Chat(_) => {
            let Command::Chat(args) = cli.command else {
                return ExitCode::FAILURE;
            };
            let code = match chat_cli::run(args).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("chatctl chat: {e}");
                    1
                }
            };
            // As chat-cli's main: the runtime's shutdown would wait for tokio's blocking stdin
            // read, so `/quit` would end the program only at the next line.
            std::process::exit(code);
        }
        Command::Token {
            user,
            name,
            ttl_secs,
            rooms,
            secret,
        } => {
            let Some(secret) = secret.as_deref().filter(|s| !s.is_empty()) else {
                eprintln!(
                    "chatctl token: give the gateway's auth.secret (--secret or CHAT__AUTH__SECRET)"
                );
                return ExitCode::from(2);
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut claims = serde_json::json!({
                "sub": user,
                "name": name.as_deref().unwrap_or(user),
                "iat": now,
                "exp": now + ttl_secs,
            });
            if !rooms.is_empty() {
                claims["rooms"] = serde_json::json!(rooms);
            }
            return match jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            ) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chatctl token: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Rooms => rooms(&cli).await,
        Command::Room { room, tail } => room_view(&cli, room, *tail).await,
        Command::User { user } => user_view(&cli, user).await,
        Command::Nodes { gateways } => nodes(&cli, gateways).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints rows as an aligned table under `header`.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

async fn rooms(cli: &Cli) -> Result<(), Error> {
    let body = http::get_json(&cli.url, "/api/rooms").await?;
    if cli.json {
        print_json(&body);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = body["rooms"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            ["roomId", "roomName", "num", "total", "seq", "epoch"]
                .iter()
                .map(|k| text(&r[*k]))
                .collect()
        })
        .collect();
    table(
        &["ROOM", "NAME", "ONLINE", "MEMBERS", "SEQ", "EPOCH"],
        &rows,
    );
    Ok(())
}

async fn room_view(cli: &Cli, room: &str, tail: u32) -> Result<(), Error> {
    let rooms = http::get_json(&cli.url, "/api/rooms").await?;
    let summary = rooms["rooms"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["roomId"] == room))
        .cloned()
        .ok_or_else(|| format!("no room {room:?}"))?;
    let members = http::get_json(&cli.url, &format!("/api/rooms/{room}/members")).await?;
    let history = http::get_json(
        &cli.url,
        &format!("/api/rooms/{room}/messages?limit={}", tail.max(1)),
    )
    .await?;
    let mut redis = redis_view::View::connect(&cli.redis, &cli.prefix).await?;
    let presence = redis.room_presence(room).await?;
    let names = redis.room_names(room).await?;

    let members: Vec<String> = members["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let mut users: Vec<Value> = Vec::new();
    for user in &members {
        let nodes: Vec<&str> = presence
            .iter()
            .filter(|p| &p.user == user && p.expires_in_ms > 0)
            .map(|p| p.node.as_str())
            .collect();
        users.push(json!({
            "userId": user,
            "userName": names.get(user),
            "online": !nodes.is_empty(),
            "nodes": nodes,
        }));
    }
    // Users online through a node without being listed as members (a join in flight, or a
    // membership lost with Redis's data and not yet restored by a refresh).
    for p in presence.iter().filter(|p| p.expires_in_ms > 0) {
        if !members.contains(&p.user) {
            users.push(json!({"userId": p.user, "userName": names.get(&p.user), "online": true, "nodes": [p.node], "member": false}));
        }
    }
    let view = json!({
        "room": summary,
        "users": users,
        "history": history["messages"],
    });
    if cli.json {
        print_json(&view);
        return Ok(());
    }
    println!(
        "room {} ({}): {} online, {} members, latest seq {}, epoch {}",
        text(&summary["roomId"]),
        text(&summary["roomName"]),
        text(&summary["num"]),
        text(&summary["total"]),
        text(&summary["seq"]),
        text(&summary["epoch"]),
    );
    println!();
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                text(&u["userId"]),
                text(&u["userName"]),
                if u["online"] == true {
                    "online"
                } else {
                    "offline"
                }
                .to_owned(),
                u["nodes"]
                    .as_array()
                    .map(|n| n.iter().map(text).collect::<Vec<_>>().join(","))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(&["USER", "NAME", "STATUS", "NODES"], &rows);
    println!();
    let messages = history["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!("last {} messages:", messages.len());
    for m in messages {
        println!(
            "  #{} {}: {}",
            text(&m["seq"]),
            text(&m["userName"]),
            text(&m["content"])
        );
    }
    Ok(())
}

async fn user_view(cli: &Cli, user: &str) -> Result<(), Error> {
    let mut redis = redis_view::View::connect(&cli.redis, &cli.prefix).await?;
    let info = redis.user(user).await?;
    let rooms: Vec<Value> = info
        .rooms
        .iter()
        .map(|r| {
            json!({
                "roomId": r.room,
                "seq": r.seq,
                "epoch": r.epoch,
                "cursor": r.cursor,
                "cursorEpoch": r.cursor_epoch,
                "unread": r.unread(),
                "online": r.online,
            })
        })
        .collect();
    let view = json!({
        "userId": user,
        "rooms": rooms,
        "inbox": {
            "messages": info.inbox_len,
            "seq": info.inbox_seq,
            "cursor": info.inbox_cursor,
            "unread": info.inbox_seq.saturating_sub(info.inbox_cursor.unwrap_or(0)),
        },
    });
    if cli.json {
        print_json(&view);
        return Ok(());
    }
    println!("user {user}: member of {} rooms", rooms.len());
    println!();
    let rows: Vec<Vec<String>> = rooms
        .iter()
        .map(|r| {
            vec![
                text(&r["roomId"]),
                if r["online"] == true {
                    "online"
                } else {
                    "offline"
                }
                .to_owned(),
                text(&r["seq"]),
                text(&r["cursor"]),
                text(&r["unread"]),
            ]
        })
        .collect();
    table(&["ROOM", "STATUS", "SEQ", "CURSOR", "UNREAD"], &rows);
    println!();
    println!(
        "inbox: {} messages kept, latest seq {}, cursor {}, unread {}",
        info.inbox_len,
        info.inbox_seq,
        info.inbox_cursor
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        text(&view["inbox"]["unread"])
    );
    Ok(())
}

async fn nodes(cli: &Cli, gateways: &[String]) -> Result<(), Error> {
    let mut redis = redis_view::View::connect(&cli.redis, &cli.prefix).await?;
    let live = redis.nodes().await?;
    let gateways: Vec<String> = if gateways.is_empty() {
        vec![cli.url.clone()]
    } else {
        gateways.to_vec()
    };
    // What each reachable gateway says about itself, by node id.
    let mut reports = serde_json::Map::new();
    for url in &gateways {
        match http::get_json(url, "/api/node").await {
            Ok(report) => {
                if let Some(id) = report["node"].as_str() {
                    let mut report = report.clone();
                    report["url"] = json!(url);
                    reports.insert(id.to_owned(), report);
                }
            }
            Err(e) => eprintln!("chatctl: {url}: {e}"),
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for node in &live {
        let report = reports.get(&node.id);
        let lease = report.and_then(|r| r["presenceLeaseMs"].as_i64());
        let age = lease.map(|l| (l - node.expires_in_ms).max(0));
        out.push(json!({
            "node": node.id,
            "live": node.expires_in_ms > 0,
            "leaseExpiresInMs": node.expires_in_ms,
            "leaseAgeMs": age,
            "connections": report.map(|r| r["connections"].clone()),
            "draining": report.map(|r| r["draining"].clone()),
            "url": report.map(|r| r["url"].clone()),
        }));
        rows.push(vec![
            node.id.clone(),
            if node.expires_in_ms > 0 {
                "live"
            } else {
                "expired"
            }
            .to_owned(),
            age.map_or_else(|| "?".to_owned(), |a| format!("{:.1}s", a as f64 / 1000.0)),
            format!("{:.1}s", node.expires_in_ms as f64 / 1000.0),
            report.map_or_else(|| "?".to_owned(), |r| text(&r["connections"])),
            report.map_or_else(|| "-".to_owned(), |r| text(&r["url"])),
        ]);
    }
    if cli.json {
        print_json(&json!({ "nodes": out }));
        return Ok(());
    }
    table(
        &[
            "NODE",
            "STATE",
            "LEASE AGE",
            "EXPIRES IN",
            "CONNECTIONS",
            "URL",
        ],
        &rows,
    );
    if reports.len() < live.len() {
        println!(
            "(connections are known for the gateways asked: pass --gateways URL,URL,... to ask each)"
        );
    }
    Ok(())
}
