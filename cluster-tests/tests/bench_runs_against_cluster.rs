//! Proves `raftmq bench` drives a real cluster end to end: it produces and
//! consumes for its duration, drains, and prints a machine-readable summary
//! whose counts agree. (A smoke test: figures come from real runs, not tests.)

use std::time::Duration;

use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, raftmq_command, run_with_timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_against_cluster() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let endpoints = cluster.endpoints();
    let args = [
        "bench",
        "--endpoints",
        &endpoints,
        "--producers",
        "2",
        "--consumers",
        "2",
        "--batch",
        "16",
        "--message-size",
        "256",
        "--duration-secs",
        "2",
        "--drain-secs",
        "20",
    ];
    let output = run_with_timeout(raftmq_command(args), None, Duration::from_secs(60)).await;
    output.assert_success();
    let line = output
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .unwrap_or_else(|| panic!("no BENCH summary line: {output}"));
    let summary: serde_json::Value = serde_json::from_str(line).expect("BENCH line is JSON");
    let produced = summary["produced"].as_u64().expect("produced count");
    assert!(produced > 0, "nothing produced: {summary}");
    assert_eq!(summary["consumed"].as_u64(), Some(produced), "every produced message consumed: {summary}");
    assert!(summary["produce_call_ms"]["p99"].as_f64().is_some_and(|p| p > 0.0), "{summary}");
    assert!(summary["end_to_end_ms"]["p50"].as_f64().is_some(), "{summary}");
    // Every node's WAL counters were read before and after; a durable queue
    // fsyncs at least once per committed entry batch, and group commit keeps
    // it well below one fsync per message.
    assert_eq!(summary["wal_nodes"].as_u64(), Some(3), "{summary}");
    let fsyncs = summary["wal_fsyncs"].as_u64().expect("fsync count");
    assert!(fsyncs > 0 && fsyncs <= summary["wal_fsync_requests"].as_u64().unwrap(), "{summary}");
    assert!(fsyncs < produced, "one fsync or more per produced message: {summary}");
    println!("{line}");
}
