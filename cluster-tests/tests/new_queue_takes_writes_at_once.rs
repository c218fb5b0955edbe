//! A new queue takes writes at once, not after an election timeout.
//!
//! The nodes run with a long election timeout (6-10 s) so that the two cases
//! cannot be confused: a queue that took a write within 4 s was not waiting
//! for a timer.
//!
//! Every replica campaigns as soon as it initialises the group, and the
//! highest node id wins: openraft's first log id names the node that wrote
//! it, so the others' logs compare lower and their campaigns are refused. With
//! that node stopped, new queues must still take writes at once, from the
//! next highest.

use std::time::Duration;

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::{Client, READY_TIMEOUT, TestCluster, retry_unavailable};
use tokio::time::Instant;

const ELECTION_TIMEOUT_MIN: Duration = Duration::from_secs(6);
/// Well under the minimum election timeout: creation, initialisation, one
/// vote round and the first commit, each with its fsyncs, on a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(4);
/// Room for two full election rounds of the meta group, which node 3 may
/// have led.
const WITH_A_REPLICA_DOWN: Duration = Duration::from_secs(40);

/// Creates `queue` through `client` (retrying while the meta group has no
/// leader: a stopped node may have led it), then produces to it until a produce is
/// acknowledged. Returns the time from the queue's creation to that ack.
async fn create_then_produce(client: &Client, queue: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut attempts = 0;
    let created = retry_unavailable(timeout, async || {
        attempts += 1;
        match client.create_queue(queue, QueueConfig::default()).await {
            // An earlier attempt took effect but its answer was lost.
            Err(status) if status.code() == tonic::Code::AlreadyExists && attempts > 1 => Ok(()),
            other => other.map(|_| ()),
        }
    })
    .await;
    created.unwrap_or_else(|e| panic!("create {queue}: {e:?}"));
    let created_after = started.elapsed();
    let started = Instant::now();
    let acked = retry_unavailable(timeout, async || client.produce(queue, [queue.as_bytes()]).await).await;
    let elapsed = started.elapsed();
    acked.unwrap_or_else(|e| panic!("produce to new queue {queue} after {elapsed:?}: {e:?}"));
    println!("{queue}: created in {created_after:?}, first produce acknowledged {elapsed:?} after that");
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_queue_takes_writes_at_once() {
    let min = ELECTION_TIMEOUT_MIN.as_millis().to_string();
    let max = (ELECTION_TIMEOUT_MIN.as_millis() + 4000).to_string();
    let mut cluster = TestCluster::start_with_env(
        3,
        &[("RAFTMQ_RAFT__ELECTION_TIMEOUT_MIN_MS", &min), ("RAFTMQ_RAFT__ELECTION_TIMEOUT_MAX_MS", &max)],
    );
    cluster.wait_ready(READY_TIMEOUT).await;
    let client = cluster.client(1);

    for i in 0..3 {
        let queue = format!("fresh-{i}");
        let elapsed = create_then_produce(&client, &queue, WITH_A_REPLICA_DOWN).await;
        assert!(
            elapsed < AT_ONCE,
            "{queue} took its first write {elapsed:?} after creation, not within {AT_ONCE:?}: \
             its replicas waited for an election timeout ({ELECTION_TIMEOUT_MIN:?} or more)"
        );
    }

    cluster.stop(3).await;
    for i in 0..3 {
        let queue = format!("degraded-{i}");
        let elapsed = create_then_produce(&client, &queue, WITH_A_REPLICA_DOWN).await;
        assert!(
            elapsed < AT_ONCE,
            "{queue}, created with node 3 down, took its first write {elapsed:?} after creation"
        );
    }
    for i in 0..3 {
        let queue = format!("degraded-{i}");
        let consumed = client.consume(&queue, 10, 1000, 30_000).await.expect("consume");
        assert!(!consumed.is_empty(), "{queue} holds its first message");
    }
}
