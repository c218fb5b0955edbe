//! Producer dedup through the public API, across failovers: a batch sent
//! again with the same `dedup_id`s, through other nodes, after kill -9 of the
//! queue's leader and again after the new leader is killed too (so that the
//! first, restarted node may lead with state rebuilt from its disk), is
//! answered with the original offsets, marked duplicates, and stores nothing.

use std::time::Duration;

use raftmq_cluster_tests::pb::{ProduceMessage, ProduceRequest, QueueConfig};
use raftmq_cluster_tests::{CALL_TIMEOUT, Client, READY_TIMEOUT, TestCluster, request_with_timeout, retry_unavailable};

const QUEUE: &str = "dedup";
const RETRY_FOR: Duration = Duration::from_secs(60);

fn batch(ids: &[&str]) -> ProduceRequest {
    ProduceRequest {
        queue: QUEUE.to_string(),
        messages: ids
            .iter()
            .map(|id| ProduceMessage {
                body: format!("body of {id}").into(),
                dedup_id: id.to_string(),
                ..Default::default()
            })
            .collect(),
    }
}

/// Produces through `client`, retrying while no leader answers; returns
/// (offsets, duplicates).
async fn produce(client: &Client, ids: &[&str]) -> (Vec<u64>, Vec<bool>) {
    let response = retry_unavailable(RETRY_FOR, async || {
        let request = request_with_timeout(batch(ids), CALL_TIMEOUT);
        client.messages.clone().produce(request).await.map(tonic::Response::into_inner)
    })
    .await
    .unwrap_or_else(|status| panic!("produce {ids:?} via {}: {status:?}", client.endpoint));
    (response.offsets, response.duplicates)
}

async fn depth(client: &Client) -> (u64, u64) {
    let info = retry_unavailable(RETRY_FOR, async || client.get_queue(QUEUE).await).await.expect("get queue");
    let stats = info.stats.expect("stats from a replica");
    (stats.depth, stats.dedup_ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_survives_leader_kill() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let first_leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let others: Vec<u64> = cluster.node_ids().into_iter().filter(|id| *id != first_leader).collect();

    let (offsets, duplicates) = produce(&cluster.client(others[0]), &["a", "b", "c"]).await;
    assert_eq!(offsets, vec![0, 1, 2]);
    assert_eq!(duplicates, vec![false, false, false]);
    // Within one call, and across calls, before any fault.
    let (offsets, duplicates) = produce(&cluster.client(first_leader), &["c", "d", "d"]).await;
    assert_eq!((offsets, duplicates), (vec![2, 3, 3], vec![true, false, true]));

    cluster.kill(first_leader);
    let second_leader = cluster.leader_of(QUEUE, Duration::from_secs(30)).await;
    println!("node {first_leader} killed; node {second_leader} leads {QUEUE}");
    let (offsets, duplicates) = produce(&cluster.client(others[1]), &["a", "b", "c", "d", "e"]).await;
    assert_eq!(offsets, vec![0, 1, 2, 3, 4], "the new leader answers with the original offsets");
    assert_eq!(duplicates, vec![true, true, true, true, false]);

    // The first leader comes back from its disk; then the second one dies.
    cluster.restart(first_leader);
    cluster.wait_ready(READY_TIMEOUT).await;
    let target = cluster.group_status(second_leader, QUEUE).await.expect("leader's view").applied_index;
    raftmq_cluster_tests::poll_until(Duration::from_secs(60), "the restarted node catches up", async || {
        let status = cluster.group_status(first_leader, QUEUE).await?;
        (status.applied_index >= target).then_some(())
    })
    .await;
    cluster.kill(second_leader);
    let third_leader = cluster.leader_of(QUEUE, Duration::from_secs(30)).await;
    println!("node {second_leader} killed; node {third_leader} leads {QUEUE}");
    let client = cluster.client(third_leader);
    let (offsets, duplicates) = produce(&client, &["e", "a", "f"]).await;
    assert_eq!((offsets, duplicates), (vec![4, 0, 5], vec![true, true, false]));
    assert_eq!(depth(&client).await, (6, 6), "six messages stored, six ids remembered");
    cluster.assert_running();
}
