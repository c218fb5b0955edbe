//! The `raftmq` CLI forms of the queue settings and message options: queue
//! create with a delivery limit, dead-letter queue, backoff, dedup window and
//! limits; produce with --dedup-id, --delay-ms and --ttl-ms; consume
//! --no-ack, nack without a delay (the message dies), peek of the dead-letter
//! queue, queue redrive, queue update clearing the dead-letter queue, and the
//! refusal to delete a dead-letter queue in use.

use std::time::Duration;

use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, raftmq_cli};
use tokio::time::Instant;

fn json_lines(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dead_letters_and_settings() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let endpoints = cluster.endpoints();
    let run = async |args: &[&str]| raftmq_cli(&endpoints, args, None).await;

    run(&["queue", "create", "jobs.dlq"]).await.assert_success();
    let create = [
        "queue",
        "create",
        "jobs",
        "--max-deliveries",
        "1",
        "--dead-letter-queue",
        "jobs.dlq",
        "--retry-backoff-min-ms",
        "0",
        "--retry-backoff-max-ms",
        "0",
        "--dedup-window-ms",
        "60000",
        "--max-messages",
        "100",
        "--max-bytes",
        "100000",
        "--message-ttl-ms",
        "3600000",
        "--expiry-action",
        "dead-letter",
        "--json",
    ];
    let created = run(&create).await;
    let info: serde_json::Value = serde_json::from_str(created.assert_success().stdout.trim()).expect("queue JSON");
    let config = &info["config"];
    assert_eq!(config["max_deliveries"], 1, "{info}");
    assert_eq!(config["dead_letter_queue"], "jobs.dlq", "{info}");
    assert_eq!((config["retry_backoff_min_ms"].as_u64(), config["retry_backoff_max_ms"].as_u64()), (Some(0), Some(0)));
    assert_eq!((config["max_messages"].as_u64(), config["max_bytes"].as_u64()), (Some(100), Some(100_000)));
    assert_eq!(
        (config["dedup_window_ms"].as_u64(), config["message_ttl_ms"].as_u64()),
        (Some(60_000), Some(3_600_000))
    );
    assert_eq!(config["expiry_action"], "dead-letter");

    // --dedup-id: the second produce answers with the first offset.
    let first = run(&["produce", "jobs", "task-1", "--dedup-id", "t1", "--header", "kind=cli"]).await;
    let again = run(&["produce", "jobs", "task-1", "--dedup-id", "t1"]).await;
    assert_eq!(first.assert_success().stdout.trim(), again.assert_success().stdout.trim(), "dedup via the CLI");
    // --delay-ms and --ttl-ms are accepted and show in peek as delayed.
    run(&["produce", "jobs", "later", "--delay-ms", "600000", "--ttl-ms", "900000"]).await.assert_success();
    let peeked = run(&["peek", "jobs", "--json"]).await;
    let states: Vec<String> = json_lines(&peeked.assert_success().stdout)
        .iter()
        .map(|m| format!("{}:{}", m["body"].as_str().unwrap_or("?"), m["state"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(states, vec!["task-1:available", "later:delayed"], "{peeked}");

    // The one allowed delivery, nacked: the message dies and moves.
    let consumed = run(&["consume", "jobs", "--no-ack", "--json", "--max", "1", "--wait-ms", "5000"]).await;
    let leased = json_lines(&consumed.assert_success().stdout);
    assert_eq!(leased.len(), 1, "{consumed}");
    let receipt = leased[0]["receipt"].as_str().expect("a receipt").to_string();
    run(&["nack", "jobs", &receipt]).await.assert_success();

    let started = Instant::now();
    let dead = loop {
        let peeked = run(&["peek", "jobs.dlq", "--json"]).await;
        let dead = json_lines(&peeked.assert_success().stdout);
        if !dead.is_empty() {
            break dead;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "nothing reached jobs.dlq");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["body"], "task-1");
    assert_eq!(dead[0]["headers"]["raftmq-dlq-reason"], "max_deliveries", "{dead:?}");
    assert_eq!(dead[0]["headers"]["kind"], "cli", "{dead:?}");

    let refused = run(&["queue", "delete", "jobs.dlq"]).await;
    assert!(!refused.status.success(), "deleted a dead-letter queue in use: {refused}");
    assert!(refused.stderr.contains("dead-letter queue of jobs"), "{refused}");

    let redriven = run(&["queue", "redrive", "jobs.dlq"]).await;
    assert!(redriven.assert_success().stdout.contains("moved 1 messages"), "{redriven}");
    let back = run(&["consume", "jobs", "--json", "--max", "10", "--wait-ms", "5000"]).await;
    let back = json_lines(&back.assert_success().stdout);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!((back[0]["body"].as_str(), back[0]["delivery_attempt"].as_u64()), (Some("task-1"), Some(1)));

    let updated = run(&["queue", "update", "jobs", "--dead-letter-queue", "", "--max-deliveries", "0", "--json"]).await;
    let info: serde_json::Value = serde_json::from_str(updated.assert_success().stdout.trim()).expect("queue JSON");
    assert_eq!(
        (info["config"]["dead_letter_queue"].as_str(), info["config"]["max_deliveries"].as_u64()),
        (Some(""), Some(0))
    );
    run(&["queue", "delete", "jobs.dlq"]).await.assert_success();
    cluster.assert_running();
}

/// `raftmq subscription create|list|seek|delete`, `consume` and `peek` with
/// `--subscription`, queue retention settings, and `nack --delay-ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subscriptions_and_seek() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let endpoints = cluster.endpoints();
    let run = async |args: &[&str]| raftmq_cli(&endpoints, args, None).await;

    let created =
        run(&["queue", "create", "news", "--retention-ms", "600000", "--retention-bytes", "1000000", "--json"]).await;
    let info: serde_json::Value = serde_json::from_str(created.assert_success().stdout.trim()).expect("queue JSON");
    assert_eq!(
        (info["config"]["retention_ms"].as_u64(), info["config"]["retention_bytes"].as_u64()),
        (Some(600_000), Some(1_000_000)),
        "{info}"
    );
    let sub = run(&["subscription", "create", "news", "audit"]).await;
    assert!(sub.assert_success().stdout.contains("created subscription audit of news"), "{sub}");
    run(&["produce", "news", "a", "b", "c"]).await.assert_success();
    for subscription in ["audit", "default"] {
        let consumed = run(&["consume", "news", "--subscription", subscription, "--count", "3", "--json"]).await;
        let bodies: Vec<String> = json_lines(&consumed.assert_success().stdout)
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(bodies, vec!["a", "b", "c"], "{subscription}: {consumed}");
    }
    let listed = run(&["subscription", "list", "news", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(listed.assert_success().stdout.trim()).expect("JSON");
    let depths: Vec<(String, u64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(depths, vec![("default".to_string(), 0), ("audit".to_string(), 0)]);
    let got = run(&["queue", "get", "news", "--json"]).await;
    let info: serde_json::Value = serde_json::from_str(got.assert_success().stdout.trim()).expect("queue JSON");
    assert_eq!(info["stats"]["retained"].as_u64(), Some(3), "acked everywhere, kept by retention: {info}");
    let peeked = run(&["peek", "news", "--subscription", "audit", "--json"]).await;
    let states: Vec<String> =
        json_lines(&peeked.assert_success().stdout).iter().map(|m| m["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, vec!["settled"; 3], "{peeked}");

    // Replay from offset 1, and hold the replayed messages.
    let sought = run(&["subscription", "seek", "news", "--subscription", "audit", "--offset", "1"]).await;
    assert!(sought.assert_success().stdout.contains("now holds 2 messages"), "{sought}");
    let replay = run(&["consume", "news", "--subscription", "audit", "--no-ack", "--json"]).await;
    let replay = json_lines(&replay.assert_success().stdout);
    let offsets: Vec<u64> = replay.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![1, 2]);
    let receipt = replay[0]["receipt"].as_str().unwrap().to_string();
    assert!(receipt.starts_with("r2-"), "a named subscription's receipt: {receipt}");
    // An explicit nack delay keeps it back.
    run(&["nack", "news", &receipt, "--delay-ms", "60000"]).await.assert_success();
    let peeked = run(&["peek", "news", "--subscription", "audit", "--from", "1", "--max", "1", "--json"]).await;
    let peeked = json_lines(&peeked.assert_success().stdout);
    assert_eq!(peeked[0]["state"], "delayed", "{peeked:?}");
    let soon = run(&["consume", "news", "--subscription", "audit", "--wait-ms", "0", "--json"]).await;
    assert!(json_lines(&soon.assert_success().stdout).is_empty(), "the nacked message came back early: {soon}");

    // Seek by a relative time: everything from the last hour.
    let sought = run(&["subscription", "seek", "news", "--subscription", "audit", "--since", "1h"]).await;
    assert!(sought.assert_success().stdout.contains("now holds 3 messages"), "{sought}");

    run(&["subscription", "delete", "news", "audit"]).await.assert_success();
    let listed = run(&["subscription", "list", "news"]).await;
    assert!(!listed.assert_success().stdout.contains("audit"), "{listed}");
    let refused = run(&["subscription", "delete", "news", "default"]).await;
    assert!(!refused.status.success(), "{refused}");
    assert!(refused.stderr.contains("cannot be deleted"), "{refused}");
    let missing = run(&["consume", "news", "--subscription", "audit"]).await;
    assert!(!missing.status.success() && missing.stderr.contains("no subscription \"audit\""), "{missing}");
}
