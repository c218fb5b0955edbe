//! Proves the data path works from any node: 10,000 messages produced through
//! a follower of the queue and consumed through the other follower are each
//! delivered exactly once, in offset order, with the body produced at that
//! offset, and the queue is empty afterwards.

use std::collections::HashMap;
use std::time::Duration;

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, body_text, poll_until};
use tokio::task::JoinSet;
use tokio::time::Instant;

const QUEUE: &str = "follower-path";
const N_MESSAGES: usize = 10_000;
const BATCH: usize = 100;
const N_PRODUCERS: usize = 4;
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(180);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(180);
/// Long enough that nothing is redelivered while the test runs.
const VISIBILITY_TIMEOUT_MS: u64 = 300_000;

fn body(i: usize) -> String {
    format!("message-{i:05}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_through_follower_consume_through_other_node() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let followers: Vec<u64> = cluster.node_ids().into_iter().filter(|id| *id != leader).collect();
    let (producer_node, consumer_node) = (followers[0], followers[1]);
    println!(
        "queue {QUEUE} is led by node {leader}; producing through node {producer_node}, consuming through node {consumer_node}"
    );

    // Producer p sends batches p, p + N_PRODUCERS, …; batch b holds bodies
    // b * BATCH .. (b + 1) * BATCH.
    let started = Instant::now();
    let mut producers = JoinSet::new();
    for p in 0..N_PRODUCERS {
        let client = cluster.client(producer_node);
        producers.spawn(async move {
            let mut produced = Vec::new();
            for batch in (p..N_MESSAGES / BATCH).step_by(N_PRODUCERS) {
                let bodies: Vec<String> = (batch * BATCH..(batch + 1) * BATCH).map(body).collect();
                let offsets = client
                    .produce(QUEUE, bodies.clone())
                    .await
                    .unwrap_or_else(|status| panic!("produce batch {batch} through node {producer_node}: {status:?}"));
                assert_eq!(offsets.len(), BATCH, "produce batch {batch}: one offset per message");
                produced.extend(offsets.into_iter().zip(bodies));
            }
            produced
        });
    }
    let mut body_at: HashMap<u64, String> = HashMap::new();
    let all_produced = tokio::time::timeout(PRODUCE_TIMEOUT, async {
        while let Some(result) = producers.join_next().await {
            for (offset, body) in result.expect("a producer task panicked") {
                if let Some(earlier) = body_at.insert(offset, body.clone()) {
                    panic!("offset {offset} was returned for both {earlier:?} and {body:?}");
                }
            }
        }
    })
    .await;
    assert!(all_produced.is_ok(), "producing {N_MESSAGES} messages took longer than {PRODUCE_TIMEOUT:?}");
    assert_eq!(body_at.len(), N_MESSAGES);
    println!("produced {N_MESSAGES} messages through node {producer_node} in {:?}", started.elapsed());

    let consumer = cluster.client(consumer_node);
    let started = Instant::now();
    let mut delivered: HashMap<u64, String> = HashMap::new();
    let mut last_offset: Option<u64> = None;
    while delivered.len() < N_MESSAGES {
        assert!(
            started.elapsed() < CONSUME_TIMEOUT,
            "only {} of {N_MESSAGES} messages delivered within {CONSUME_TIMEOUT:?}",
            delivered.len()
        );
        let messages = consumer
            .consume(QUEUE, 500, 1000, VISIBILITY_TIMEOUT_MS)
            .await
            .unwrap_or_else(|status| panic!("consume through node {consumer_node}: {status:?}"));
        let mut receipts = Vec::new();
        for message in &messages {
            let text = body_text(message);
            assert_eq!(message.delivery_attempt, 1, "offset {} was delivered more than once", message.offset);
            assert_eq!(
                body_at.get(&message.offset),
                Some(&text),
                "offset {} carries a body that was not produced at that offset",
                message.offset
            );
            // A single consumer without redeliveries sees offset order.
            assert!(
                last_offset.is_none_or(|last| message.offset > last),
                "offset {} delivered after offset {last_offset:?}",
                message.offset
            );
            last_offset = Some(message.offset);
            assert!(delivered.insert(message.offset, text).is_none(), "offset {} delivered twice", message.offset);
            receipts.push(message.receipt.clone());
        }
        if !receipts.is_empty() {
            let n = receipts.len();
            let settled = consumer.ack(QUEUE, receipts).await.expect("ack through the consuming node");
            assert!(settled.failed.is_empty(), "fresh receipts failed to ack: {:?}", settled.failed);
            assert_eq!(settled.succeeded as usize, n);
        }
    }
    assert_eq!(delivered, body_at, "the delivered messages differ from the produced ones");
    println!("consumed and acked {N_MESSAGES} messages through node {consumer_node} in {:?}", started.elapsed());

    poll_until(Duration::from_secs(15), "the queue's depth is 0", async || {
        let stats = consumer.get_queue(QUEUE).await.ok()?.stats?;
        (stats.depth == 0).then_some(())
    })
    .await;
    let leftover = consumer.consume(QUEUE, 10, 1000, 0).await.expect("consume from the drained queue");
    assert!(leftover.is_empty(), "a drained queue delivered {leftover:?}");
}
