//! Queue configuration after creation, through the public API and the CLI:
//! UpdateQueue changes only the settings it names, every node shows the new
//! config, produces follow it at once (a new max_messages refuses, 0 lifts
//! it), and bad updates get INVALID_ARGUMENT naming the setting, or
//! NOT_FOUND, and change nothing.

use std::time::Duration;

use raftmq_cluster_tests::pb::{QueueConfig, QueueConfigUpdate, UpdateQueueRequest};
use raftmq_cluster_tests::{
    CALL_TIMEOUT, READY_TIMEOUT, TestCluster, poll_until, raftmq_command, request_with_timeout, run_with_timeout,
};
use tonic::Code;

const QUEUE: &str = "tunable";

fn update(name: &str, update: QueueConfigUpdate) -> tonic::Request<UpdateQueueRequest> {
    request_with_timeout(UpdateQueueRequest { name: name.into(), update: Some(update) }, CALL_TIMEOUT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_queue_config() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.create_queue(QUEUE, QueueConfig { visibility_timeout_ms: 45_000, ..Default::default() }).await;
    let client = cluster.client(2);
    client.produce(QUEUE, ["a", "b", "c"]).await.expect("produce without a limit");

    let limit = QueueConfigUpdate { max_messages: Some(3), ..Default::default() };
    let updated = client.queues.clone().update_queue(update(QUEUE, limit)).await.expect("update").into_inner();
    let config = updated.queue.expect("queue").config.expect("config");
    assert_eq!((config.max_messages, config.visibility_timeout_ms), (3, 45_000), "only max_messages changed");
    // Every node's catalog follows the meta group.
    for node in cluster.node_ids() {
        let client = cluster.client(node);
        poll_until(Duration::from_secs(10), &format!("node {node} shows the new limit"), async || {
            let info = client.get_queue(QUEUE).await.ok()?;
            (info.config?.max_messages == 3).then_some(())
        })
        .await;
    }
    let full = client.produce(QUEUE, ["d"]).await.expect_err("the queue holds 3 of 3");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");

    // Bad updates change nothing.
    let mut queues = client.queues.clone();
    let bad = QueueConfigUpdate { dedup_window_ms: Some(25 * 3_600_000), ..Default::default() };
    let status = queues.update_queue(update(QUEUE, bad)).await.expect_err("25 hours");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("dedup_window_ms"), "{}", status.message());
    let status = queues.update_queue(update(QUEUE, QueueConfigUpdate::default())).await.expect_err("empty update");
    assert_eq!(status.code(), Code::InvalidArgument);
    let some = QueueConfigUpdate { max_bytes: Some(1), ..Default::default() };
    let status = queues.update_queue(update("no-such-queue", some)).await.expect_err("unknown queue");
    assert_eq!(status.code(), Code::NotFound);
    let config = client.get_queue(QUEUE).await.expect("get").config.expect("config");
    assert_eq!((config.max_bytes, config.dedup_window_ms), (0, Some(300_000)));

    // The CLI lifts the limit (0 = none) through another node.
    let output = run_with_timeout(
        raftmq_command([
            "queue",
            "update",
            QUEUE,
            "--max-messages",
            "0",
            "--json",
            "--endpoints",
            &cluster.endpoint(3),
        ]),
        None,
        Duration::from_secs(30),
    )
    .await;
    output.assert_success();
    let shown: serde_json::Value = serde_json::from_str(output.stdout.trim()).expect("JSON");
    assert_eq!(shown["config"]["max_messages"].as_u64(), Some(0), "{output}");
    poll_until(Duration::from_secs(10), "the queue's leader applies the lifted limit", async || {
        client.produce(QUEUE, ["d"]).await.ok()
    })
    .await;
    cluster.assert_running();
}
