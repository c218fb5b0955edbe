//! Consumers long-polling an empty queue, through every node, all wake when a
//! message is produced. Only one lease may be proposed for it: the others
//! would find nothing, yet each would be a Raft entry replicated and fsynced
//! on a majority. The queue's log grows by exactly three entries (produce,
//! lease, ack), the message goes to exactly one consumer, and the rest keep
//! waiting and end empty-handed.

use std::time::Duration;

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, body_text};

const QUEUE: &str = "trickle";
const CONSUMERS_PER_NODE: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_consumers_cost_one_lease_per_delivery() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let before = cluster.settled_log_index(leader, QUEUE).await;

    let mut consumers = Vec::new();
    for node in cluster.node_ids() {
        for _ in 0..CONSUMERS_PER_NODE {
            let client = cluster.client(node);
            consumers.push(tokio::spawn(async move { client.consume(QUEUE, 10, 4_000, 60_000).await }));
        }
    }
    // Give every consumer time to reach the leader and wait there.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = cluster.client(leader);
    client.produce(QUEUE, vec!["only"]).await.expect("produce");

    let mut delivered = Vec::new();
    for consumer in consumers {
        delivered.extend(consumer.await.expect("consumer task").expect("consume"));
    }
    assert_eq!(delivered.iter().map(body_text).collect::<Vec<_>>(), vec!["only"], "exactly one consumer gets it");
    assert_eq!(delivered[0].delivery_attempt, 1);
    client.ack(QUEUE, vec![delivered[0].receipt.clone()]).await.expect("ack");

    let after = cluster.settled_log_index(leader, QUEUE).await;
    assert_eq!(
        after - before,
        3,
        "{} consumers waited; the log should hold one produce, one lease and one ack",
        3 * CONSUMERS_PER_NODE
    );
}
