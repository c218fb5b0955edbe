//! Proves the `raftmq` binary works as documented in the README: queue
//! create, produce from stdin lines, consume --json, queue get showing the
//! depth, queue delete, cluster status; and that `raftmq server` refuses a bad
//! config with exit code 2 and a message naming the setting.

use std::time::Duration;

use raftmq_cluster_tests::{CommandOutput, READY_TIMEOUT, TestCluster, raftmq_cli, raftmq_command, run_with_timeout};
use tokio::time::Instant;

const QUEUE: &str = "cli-queue";
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

async fn raftmq(args: &[&str], stdin: Option<&[u8]>) -> CommandOutput {
    run_with_timeout(raftmq_command(args), stdin, CLI_TIMEOUT).await
}

/// Polls `raftmq queue get` until it shows `depth` (15 s at most).
async fn assert_depth_reaches(endpoints: &str, depth: u64) {
    let started = Instant::now();
    loop {
        let get = raftmq_cli(endpoints, &["queue", "get", QUEUE], None).await;
        if depth_in(&get.assert_success().stdout) == Some(depth) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "queue get should show depth {depth}: {get}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first number after the word "depth" in `output` (text or JSON).
fn depth_in(output: &str) -> Option<u64> {
    let lower = output.to_lowercase();
    let after = &lower[lower.find("depth")? + "depth".len()..];
    let digits: String = after.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Every `body` string in the JSON the consume command printed: one JSON
/// document (an object or an array) or one JSON object per line.
fn bodies_in(json_output: &str) -> Vec<String> {
    fn collect(value: &serde_json::Value, bodies: &mut Vec<String>) {
        match value {
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, bodies)),
            serde_json::Value::Object(fields) => {
                for (key, v) in fields {
                    match (key.as_str(), v) {
                        ("body", serde_json::Value::String(body)) => bodies.push(body.clone()),
                        _ => collect(v, bodies),
                    }
                }
            }
            _ => {}
        }
    }
    let mut bodies = Vec::new();
    match serde_json::from_str::<serde_json::Value>(json_output) {
        Ok(document) => collect(&document, &mut bodies),
        Err(_) => {
            for line in json_output.lines().filter(|l| !l.trim().is_empty()) {
                let value: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("consume --json printed a line that is not JSON ({e}): {line:?}"));
                collect(&value, &mut bodies);
            }
        }
    }
    bodies
}

/// `raftmq queue list | head -0`: a reader that is gone ends the CLI with
/// success and no panic message (println! would panic on EPIPE).
async fn stdout_closed_ends_quietly(endpoints: &str) {
    let (reader, writer) = std::io::pipe().expect("make a pipe");
    drop(reader);
    let mut command = tokio::process::Command::from(raftmq_command(["queue", "list", "--endpoints", endpoints]));
    command.stdout(writer).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    // Not `output()`: tokio's replaces the configured stdout with a pipe of its own.
    let child = command.spawn().expect("run raftmq queue list");
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("raftmq queue list into a closed pipe did not exit within 60 s")
        .expect("wait for raftmq queue list");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "queue list into a closed pipe: {:?}, stderr: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "queue list into a closed pipe panicked: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let endpoints = cluster.endpoints();
    let run = async |args: &[&str], stdin: Option<&[u8]>| raftmq_cli(&endpoints, args, stdin).await;

    run(&["queue", "create", QUEUE], None).await.assert_success();
    let list = run(&["queue", "list"], None).await;
    assert!(list.assert_success().stdout.contains(QUEUE), "queue list does not show {QUEUE}: {list}");
    stdout_closed_ends_quietly(&endpoints).await;

    // The queue's group elects a leader shortly after the create; the CLI
    // retries UNAVAILABLE, so one produce is enough.
    let produced = run(&["produce", QUEUE], Some(b"alpha\nbeta\ngamma\n")).await;
    produced.assert_success();

    // Statistics come from the answering node's replica and may trail by a moment.
    assert_depth_reaches(&endpoints, 3).await;

    let mut bodies = Vec::new();
    let started = Instant::now();
    while bodies.len() < 3 && started.elapsed() < Duration::from_secs(30) {
        let consumed = run(&["consume", QUEUE, "--max", "10", "--wait-ms", "5000", "--json"], None).await;
        bodies.extend(bodies_in(&consumed.assert_success().stdout));
    }
    bodies.sort();
    assert_eq!(bodies, ["alpha", "beta", "gamma"], "consume --json bodies");

    // consume acks by default, so the queue drains.
    assert_depth_reaches(&endpoints, 0).await;

    run(&["cluster", "status"], None).await.assert_success();

    run(&["queue", "delete", QUEUE], None).await.assert_success();
    let gone = run(&["queue", "get", QUEUE], None).await;
    assert!(!gone.status.success(), "queue get succeeded after delete: {gone}");
    assert!(gone.stderr.contains(QUEUE), "the error for a deleted queue does not name it: {gone}");

    // A server with a bad setting refuses to start, names it, exits 2.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "listen_addr = \"not-an-address\"\n").expect("write the config file");
    let data_dir = dir.path().join("data");
    let args = [
        "server",
        "--config",
        config.to_str().expect("utf-8 temp path"),
        "--node-id",
        "1",
        "--data-dir",
        data_dir.to_str().expect("utf-8 temp path"),
        "--peers",
        "1=127.0.0.1:1",
    ];
    let refused = raftmq(&args, None).await;
    assert_eq!(refused.status.code(), Some(2), "a bad config must exit 2: {refused}");
    let said = format!("{}{}", refused.stderr, refused.stdout);
    assert!(
        said.contains("listen_addr") || said.contains("listen-addr"),
        "the error does not name listen_addr: {refused}"
    );
}
