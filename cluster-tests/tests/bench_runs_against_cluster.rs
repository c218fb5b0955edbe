//! Proves `raftmq bench` drives a real cluster end to end: it produces and
//! consumes for its duration, drains, and prints a machine-readable summary
//! whose counts agree; and that `--count`, `--rate`, `--queues`,
//! `--consumers 0` (fill a backlog) and `--random-bodies` shape the load as
//! they say. (Smoke
//! tests: figures come from real runs, not tests.)

use std::time::Duration;

use raftmq_cluster_tests::{
    CommandOutput, READY_TIMEOUT, TestCluster, poll_until, raftmq_command, retry_unavailable, run_with_timeout,
};
use tonic::Code;

/// `raftmq bench --endpoints <endpoints> <args>` (`args` as on a command
/// line, split at spaces), within a minute: its output, once it succeeded.
async fn bench(endpoints: &str, args: &str) -> CommandOutput {
    let command = raftmq_command(["bench", "--endpoints", endpoints].into_iter().chain(args.split_whitespace()));
    let output = run_with_timeout(command, None, Duration::from_secs(60)).await;
    output.assert_success();
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_against_cluster() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let endpoints = cluster.endpoints();
    let output = bench(
        &endpoints,
        "--producers 2 --consumers 2 --batch 16 --message-size 1024 --duration-secs 2 --drain-secs 20",
    )
    .await;
    let summary = output.bench_summary();
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
    // Each node's stage latencies over the run: the leader answered every
    // produce call (16 messages each) after it was committed, and every node
    // flushed its log, fsynced and applied.
    let stages = summary["stages_ms"].as_array().expect("stages_ms");
    let nodes_with = |stage: &str| stages.iter().filter(|s| s["stage"] == stage).collect::<Vec<_>>();
    let commits = nodes_with("produce_commit");
    assert_eq!(commits.len(), 1, "one leader: {summary}");
    assert_eq!(commits[0]["count"].as_u64(), Some(produced / 16), "one commit per produce call: {summary}");
    // The bench calls the leader, so the leader's handler timed every call,
    // once (a forwarded call would be timed where the client called only).
    let calls = nodes_with("produce_call");
    assert_eq!(calls.len(), 1, "only the node called: {summary}");
    assert_eq!(
        (calls[0]["node"].clone(), calls[0]["count"].as_u64()),
        (commits[0]["node"].clone(), Some(produced / 16)),
        "the leader times each call once: {summary}"
    );
    // Every node applies every produce entry, reading it back from memory
    // (it was appended there and not yet applied); only replication of an
    // entry the leader already applied reads RocksDB.
    let from_memory = summary["log_reads_from_memory"].as_u64().expect("log reads from memory");
    let from_disk = summary["log_reads_from_disk"].as_u64().expect("log reads from disk");
    assert!(from_memory >= 3 * (produced / 16), "apply read entries from RocksDB: {summary}");
    assert!(from_disk < from_memory, "{summary}");
    // The leader delivers the newest bodies from memory: consumers that keep
    // up read nothing back from RocksDB but what was produced before their
    // first Consume, or while the leader's memory for bodies was full.
    let consumed = summary["consumed"].as_u64().expect("consumed");
    let bodies_from_memory = summary["body_reads_from_memory"].as_u64().expect("body reads from memory");
    let bodies_from_disk = summary["body_reads_from_disk"].as_u64().expect("body reads from disk");
    assert!(bodies_from_memory + bodies_from_disk >= consumed, "{summary}");
    assert!(bodies_from_memory > 4 * bodies_from_disk, "bodies were read back from RocksDB: {summary}");
    // Every node applies every body (1 KiB, over `BODY_IN_LOG_MIN_BYTES`) and
    // leaves it in its log entry, which it deletes only after consumers that
    // keep up have acknowledged most messages: few bodies are copied out.
    let left_in_log = summary["bodies_left_in_log"].as_u64().expect("bodies left in the log");
    let copied = summary["bodies_copied_out_of_log"].as_u64().expect("bodies copied out of the log");
    assert!(10 * left_in_log >= 27 * produced, "bodies written at apply too: {summary}");
    assert!(2 * copied < left_in_log, "most bodies were copied out of the log: {summary}");
    // Replication to the followers is timed on the queue's leader.
    let replicate = nodes_with("replicate");
    assert!(replicate.iter().any(|s| s["node"] == commits[0]["node"]), "{summary}");
    for stage in ["log_flush", "fsync", "apply"] {
        assert_eq!(nodes_with(stage).len(), 3, "{stage} on every node: {summary}");
    }
    for s in stages {
        let (p50, p99, max) = (s["p50"].as_f64().unwrap(), s["p99"].as_f64().unwrap(), s["max"].as_f64().unwrap());
        assert!(s["count"].as_u64().unwrap() > 0 && 0.0 < p50 && p50 <= p99 && p99 <= max * 1.01, "{s}");
    }
    assert!(output.stdout.contains("write-path stages over the run"), "{output}");
    // Without the new options: one queue under its own name, closed loop.
    assert_eq!(
        (summary["queues"].as_u64(), summary["rate"].is_null(), summary["count"].is_null()),
        (Some(1), true, true),
        "{summary}"
    );
    assert!(output.stdout.contains("offered rate unlimited over 1 queue(s)"), "{output}");

    // Large bodies fill a log fast: 640 of 64 KiB are 40 MiB, five times the
    // 8 MiB of log after which a queue group snapshots and purges its log
    // (`raftmq_storage::SNAPSHOT_EVERY_BYTES`), on every node. Each purge
    // holds its queue up while it runs, so each is timed on every node.
    let output = bench(
        &endpoints,
        "--queue large --producers 2 --consumers 2 --batch 16 --message-size 65536 --count 640 --drain-secs 20",
    )
    .await;
    let summary = output.bench_summary();
    assert_eq!((summary["produced"].as_u64(), summary["consumed"].as_u64()), (Some(640), Some(640)), "{summary}");
    let stages = summary["stages_ms"].as_array().expect("stages_ms");
    let purges: Vec<_> = stages.iter().filter(|s| s["stage"] == "log_purge").collect();
    assert_eq!(purges.len(), 3, "every node purged its log and timed it: {summary}");
    for purge in purges {
        // Each node's log passed five multiples of 8 MiB (four purges seen
        // per node); the last purges may come after the run, as a purge
        // waits for its snapshot and for the followers' acknowledgements.
        assert!(purge["count"].as_u64().is_some_and(|n| n >= 3), "{purge}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_paces_a_counted_run_over_two_queues() {
    const RATE: f64 = 2000.0;
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let endpoints = cluster.endpoints();
    // 3000 messages at 2000 msg/s take 1.5 s, well before --duration-secs.
    // Unpaced, two producers of 50 messages per call go several times faster.
    let output = bench(&endpoints, "--queues 2 --producers 2 --consumers 2 --batch 50 --message-size 256 --rate 2000 --count 3000 --duration-secs 10 --drain-secs 20").await;
    let summary = output.bench_summary();
    assert_eq!(
        (summary["queues"].as_u64(), summary["rate"].as_u64(), summary["count"].as_u64()),
        (Some(2), Some(2000), Some(3000)),
        "{summary}"
    );
    assert!(output.stdout.contains("offered rate 2000 msg/s over 2 queue(s)"), "{output}");
    assert_eq!(summary["produced"].as_u64(), Some(3000), "--count ends producing: {summary}");
    assert_eq!(summary["consumed"].as_u64(), Some(3000), "every produced message consumed: {summary}");
    let produce_rate = summary["produce_msgs_per_sec"].as_f64().expect("produce rate");
    assert!(produce_rate <= RATE * 1.2, "producers outran --rate: {summary}");
    // Far below the rate would mean the pacing holds producers back (this
    // cluster takes 2000 msg/s with ease).
    assert!(produce_rate >= RATE * 0.5, "producers were held far below --rate: {summary}");
    // Paced calls report how late they went out (the bench's own share).
    let send_delay_p50 = summary["send_delay_ms"]["p50"].as_f64().expect("send delay under --rate");
    assert!(send_delay_p50 < 1000.0, "calls went out a second late at the median: {summary}");

    // Both queues got messages, all of them between the two; the base name
    // was not used.
    let client = cluster.client(cluster.node_ids()[0]);
    let next_offsets = poll_until(Duration::from_secs(10), "bench-0 and bench-1 hold 3000 messages", async || {
        let mut next_offsets = Vec::new();
        for queue in ["bench-0", "bench-1"] {
            let info = retry_unavailable(Duration::from_secs(10), async || client.get_queue(queue).await).await;
            next_offsets.push(info.expect("the bench created the queue").stats?.next_offset);
        }
        (next_offsets.iter().sum::<u64>() == 3000).then_some(next_offsets)
    })
    .await;
    assert!(next_offsets.iter().all(|&n| n > 0), "a queue got no messages: {next_offsets:?}");
    let base = client.get_queue("bench").await.expect_err("no queue under the base name");
    assert_eq!(base.code(), Code::NotFound, "{base:?}");

    // --consumers 0 fills a backlog: it produces the count, consumes nothing
    // and does not wait for a drain.
    let output = bench(&endpoints, "--queue backlog --producers 1 --consumers 0 --batch 50 --count 500").await;
    let summary = output.bench_summary();
    assert_eq!((summary["produced"].as_u64(), summary["consumed"].as_u64()), (Some(500), Some(0)), "{summary}");
    let depth = poll_until(Duration::from_secs(10), "the backlog holds 500 messages", async || {
        let info = client.get_queue("backlog").await.ok()?;
        info.stats.filter(|s| s.depth == 500).map(|s| s.depth)
    })
    .await;
    assert_eq!(depth, 500);
    let default_bodies = client.consume("backlog", 50, 5_000, 0).await.expect("consume the backlog");
    assert!(!default_bodies.is_empty(), "the backlog's messages can be consumed");
    assert!(default_bodies.iter().all(|m| m.body.iter().all(|&b| b == b'x')), "by default every body is x repeated");

    // A run on a queue with a backlog from before consumes more than it
    // produces, and stops with a batch received: it acks that batch too, and
    // counts every message it acked.
    bench(&endpoints, "--queue drain --producers 1 --consumers 0 --batch 50 --count 500").await;
    let output = bench(&endpoints, "--queue drain --producers 1 --consumers 1 --batch 50 --count 500").await;
    let consumed = output.bench_summary()["consumed"].as_u64().expect("consumed");
    let depth = client.get_queue("drain").await.expect("the drain queue").stats.expect("stats").depth;
    assert!(consumed >= 500, "{output}");
    assert_eq!(consumed + depth, 1000, "consumed counts every message acked (left: {depth}): {output}");

    // --random-bodies: random bytes, a different body for each message of a call.
    let output =
        bench(&endpoints, "--queue random --producers 1 --consumers 0 --batch 32 --count 32 --random-bodies").await;
    assert_eq!(output.bench_summary()["random_bodies"].as_bool(), Some(true));
    let messages = client.consume("random", 32, 5_000, 0).await.expect("consume the random bodies");
    assert_eq!(messages.len(), 32, "one call of 32 messages");
    let bodies: std::collections::HashSet<&[u8]> = messages.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies.len(), 32, "every message of the call has its own body");
    for body in bodies {
        let values: std::collections::HashSet<u8> = body.iter().copied().collect();
        assert_eq!(body.len(), 1024, "the default --message-size");
        assert!(values.len() > 200, "random bytes use most byte values, this body {}", values.len());
    }
}
