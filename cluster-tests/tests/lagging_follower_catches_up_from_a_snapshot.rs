//! A follower that was down while the leader snapshotted and purged its log
//! catches up from a snapshot: the leader reads the queue's state from
//! RocksDB (a built snapshot stores only its position), sends it, and the
//! follower's own replica then answers with exactly the leader's state.
//! Then the leader, which applied without the WAL and purged its log behind
//! its snapshot, is killed with SIGKILL and rebuilds the same state from
//! what it flushed and the log it kept.

use std::time::Duration;

use raftmq_cluster_tests::pb::{QueueConfig, QueueStats};
use raftmq_cluster_tests::{NodeId, READY_TIMEOUT, TestCluster, poll_until};

const QUEUE: &str = "far-behind";
/// Log entries written while the follower is down, one message of
/// `BODY_BYTES` each: about 33 MB, four times what a queue group appends
/// between snapshots (`SNAPSHOT_EVERY_BYTES`), so the log the follower needs
/// next is purged.
const ENTRIES: usize = 2_000;
const BODY_BYTES: usize = 16 * 1024;
const ACKED: usize = 500;
const WORKERS: usize = 32;

/// Starts `node` again, waits until it has applied up to `last_log_index`,
/// checks that its own replica answers with `expected`'s depth and next
/// offset, and returns its log.
async fn restart_and_compare(
    cluster: &mut TestCluster,
    node: NodeId,
    last_log_index: u64,
    expected: &QueueStats,
) -> String {
    cluster.restart(node);
    poll_until(Duration::from_secs(60), &format!("restarted node {node} has applied the log"), async || {
        let group = cluster.group_status(node, QUEUE).await?;
        (group.applied_index >= last_log_index).then_some(())
    })
    .await;
    // A follower answers from its own replica.
    let replica = cluster.client(node).get_queue(QUEUE).await.expect("get on the node").stats.expect("stats");
    assert_eq!((replica.depth, replica.next_offset), (expected.depth, expected.next_offset), "node {node}");
    std::fs::read_to_string(cluster.log_path(node)).expect("read the node's log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let follower = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let follower_last = poll_until(READY_TIMEOUT, "the follower hosts the queue", async || {
        cluster.group_status(follower, QUEUE).await.map(|group| group.last_log_index)
    })
    .await;
    cluster.kill(follower);

    // One message per produce call: one log entry each, from 32 callers.
    let client = cluster.client(leader);
    let mut producers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let client = client.clone();
        producers.spawn(async move {
            for i in (worker..ENTRIES).step_by(WORKERS) {
                let body = format!("m{i} {}", "x".repeat(BODY_BYTES));
                client.produce(QUEUE, [body]).await.expect("produce with a follower down");
            }
        });
    }
    while let Some(done) = producers.join_next().await {
        done.expect("producer task");
    }
    // Some deletions too, so the snapshot carries more than appends.
    let mut acked = 0;
    while acked < ACKED {
        let messages = client.consume(QUEUE, 100, 1000, 60_000).await.expect("consume");
        let receipts = messages.iter().map(|m| m.receipt.clone()).collect();
        client.ack(QUEUE, receipts).await.expect("ack");
        acked += messages.len();
    }
    let expected = client.get_queue(QUEUE).await.expect("get on the leader").stats.expect("stats");
    assert_eq!((expected.depth, expected.next_offset), ((ENTRIES - acked) as u64, ENTRIES as u64));
    // The leader snapshots as its log grows and purges behind the snapshot
    // once the live follower has the entries: past what the one that is
    // down holds.
    poll_until(Duration::from_secs(30), "the leader has purged the entries the follower needs next", async || {
        let group = cluster.group_status(leader, QUEUE).await?;
        (group.purged_index > follower_last).then_some(())
    })
    .await;
    let leader_status = cluster.group_status(leader, QUEUE).await.expect("leader's group");

    let log = restart_and_compare(&mut cluster, follower, leader_status.last_log_index, &expected).await;
    assert!(log.contains("install full snapshot"), "the follower caught up from the log, not a snapshot");

    // The leader applied without the WAL, snapshotted and purged its log
    // behind the snapshots, all of it written to the memtables only. Killed
    // with SIGKILL, it keeps only the state of its last memtable flush (if
    // any: these 33 MB may not fill the budget) and the purges written
    // before it, and must rebuild the rest from the log it kept: its own
    // replica, not one sent by the new leader.
    cluster.kill(leader);
    let log = restart_and_compare(&mut cluster, leader, leader_status.last_log_index, &expected).await;
    assert!(!log.contains("install full snapshot"), "the old leader was sent a snapshot instead of replaying its log");
    cluster.assert_running();
}
