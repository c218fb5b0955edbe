//! A backlog deeper than a replica keeps in memory (`MESSAGES_IN_MEMORY`,
//! 20,000 messages per queue) through the real binary: every replica keeps
//! the head indexed in memory and the never-delivered rest on disk only; a
//! node killed with -9 restarts the same way; and after the leader dies the
//! new leader delivers the whole backlog, in order, reading the evicted part
//! back as consumers reach it.

use std::time::Duration;

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, body_text, poll_until};

const QUEUE: &str = "deep";
const MESSAGES: u64 = 50_000;
const BATCH: u64 = 500;
/// The server's `MESSAGES_IN_MEMORY`.
const IN_MEMORY: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_backlog_is_evicted_and_read_back() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let client = cluster.client(leader);
    for first in (0..MESSAGES).step_by(BATCH as usize) {
        let offsets = client.produce(QUEUE, (first..first + BATCH).map(|i| format!("m{i}"))).await.expect("produce");
        assert_eq!(offsets.first(), Some(&first));
    }

    for node in cluster.node_ids() {
        let (in_memory, evicted) = resident(&cluster, node, "every replica has applied the backlog").await;
        println!("node {node}: {in_memory} messages in memory, {evicted} on disk only");
        assert!(in_memory <= IN_MEMORY, "node {node} indexes {in_memory} messages in memory");
    }

    // A follower killed and restarted rebuilds the head only.
    let follower = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.kill(follower);
    cluster.restart(follower);
    cluster.wait_ready(READY_TIMEOUT).await;
    let (in_memory, evicted) = resident(&cluster, follower, "the restarted follower has the backlog").await;
    println!("restarted node {follower}: {in_memory} in memory, {evicted} on disk only");
    assert!(in_memory <= IN_MEMORY);

    // The leader dies; the new one reads the evicted tail back in order.
    cluster.kill(leader);
    let second = cluster.leader_of(QUEUE, Duration::from_secs(30)).await;
    println!("node {leader} killed; node {second} leads {QUEUE}");
    let client = cluster.client(second);
    client
        .drain_in_order(QUEUE, MESSAGES, |message| assert_eq!(body_text(message), format!("m{}", message.offset)))
        .await;
    cluster.restart(leader);
    cluster.assert_running();
}

/// The node's (in memory, evicted) counts once they add up to the backlog.
async fn resident(cluster: &TestCluster, node: u64, what: &str) -> (u64, u64) {
    poll_until(Duration::from_secs(60), what, async || {
        let status = cluster.group_status(node, QUEUE).await?;
        let counts = (status.messages_in_memory, status.messages_evicted);
        (counts.0 + counts.1 == MESSAGES).then_some(counts)
    })
    .await
}
