//! chat-cli with hostile input: ids the server would refuse are refused by the client itself, with
//! a clear line, before anything is sent; the frames it does send (built with
//! `ClientFrame::encode`, acks with their epoch) are accepted by a real gateway.

use std::process::Stdio;

use chat_tests::{Gateway, default_timeout};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// An invalid `--user` or `--room` ends chat-cli at once with a non-zero status and says which
/// flag is wrong. (Nothing listens on the URL: a client that tried to connect would retry forever
/// instead of exiting.)
#[tokio::test]
async fn invalid_ids_on_the_command_line_fail_before_connecting() {
    let bin = tokio::task::spawn_blocking(chat_tests::chat_cli_bin)
        .await
        .expect("chat-cli build");
    let url = format!("ws://127.0.0.1:{}/ws", chat_tests::free_port());
    for (args, flag) in [
        (vec!["--user", "no spaces"], "--user"),
        (vec!["--user", ""], "--user"),
        (
            vec!["--user", "ann", "--room", "lobby", "--room", "bad/room"],
            "--room",
        ),
        (vec!["--user", &"x".repeat(65)], "--user"),
    ] {
        let output = tokio::time::timeout(
            default_timeout(),
            Command::new(&bin)
                .arg("--url")
                .arg(&url)
                .args(&args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("chat-cli {args:?} did not exit"))
        .expect("run chat-cli");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "chat-cli {args:?} succeeded");
        assert!(
            stderr.contains(flag) && stderr.contains("not a valid"),
            "chat-cli {args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("connect"),
            "chat-cli {args:?} tried to connect: {stderr}"
        );
    }
}

/// Typed commands with ids the server would refuse print a line and send nothing; what follows
/// still works, and the gateway never answers with an error (the posts and acks chat-cli builds
/// are valid frames).
#[tokio::test]
async fn invalid_typed_ids_are_refused_locally_and_the_session_goes_on() {
    let bin = tokio::task::spawn_blocking(chat_tests::chat_cli_bin)
        .await
        .expect("chat-cli build");
    let gw = Gateway::start(&[]).await;
    let mut ann = gw.client().await.named("ann");
    ann.login("lobby", "ann", "Ann").await;

    let mut child = Command::new(bin)
        .args(["--url", &gw.ws_url(), "--user", "typist", "--room", "lobby"])
        .arg("--raw")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-cli");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let mut printed = Vec::new();
    // Joined first, so every later line goes to a joined room.
    loop {
        let line = tokio::time::timeout(default_timeout(), stdout.next_line())
            .await
            .expect("no joined in time")
            .expect("read")
            .expect("chat-cli exited");
        let joined = line.contains("\"joined\"");
        printed.push(line);
        if joined {
            break;
        }
    }
    ann.recv_login_of("lobby", "typist").await;

    stdin
        .write_all(b"/join bad!room\n/leave no/such\n/dm bad!user hello\n/dm ann direct hi\nhello everyone\n")
        .await
        .expect("write");
    let posted = ann.recv_message_in("lobby").await;
    assert_eq!(
        (posted.user_id.as_str(), posted.content.as_str()),
        ("typist", "hello everyone")
    );
    let direct = ann.recv_direct().await;
    assert_eq!(direct.content, "direct hi");
    // ann's post reaches chat-cli, which acks it (room, seq and epoch).
    ann.post_and_wait("lobby", "welcome").await;
    loop {
        let line = tokio::time::timeout(default_timeout(), stdout.next_line())
            .await
            .expect("the post did not reach chat-cli")
            .expect("read")
            .expect("chat-cli exited");
        let done = line.contains("welcome");
        printed.push(line);
        if done {
            break;
        }
    }
    // `/quit` ends the program at once, with stdin still open (tokio's stdin reader must not
    // hold it until the next line).
    stdin.write_all(b"/quit\n").await.expect("write");
    let status = tokio::time::timeout(default_timeout(), child.wait())
        .await
        .expect("chat-cli did not exit after /quit")
        .expect("wait");
    assert!(status.success(), "{status}");
    while let Ok(Some(line)) = stdout.next_line().await {
        printed.push(line);
    }
    let mut notes = String::new();
    stderr.read_to_string(&mut notes).await.expect("stderr");

    for (typed, kind) in [
        ("bad!room", "room id"),
        ("no/such", "room id"),
        ("bad!user", "user id"),
    ] {
        assert!(
            notes.contains(&format!("`{typed}` is not a valid {kind}")),
            "no local refusal of {typed}: {notes}"
        );
    }
    let errors: Vec<&String> = printed
        .iter()
        .filter(|l| l.contains("\"event\":\"error\""))
        .collect();
    assert!(errors.is_empty(), "the gateway refused a frame: {errors:?}");
}
