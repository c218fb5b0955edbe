//! Retries, the delivery limit, dead letters and redrive through the public
//! API, across a failover:
//!
//! - a nack without a delay redelivers after the queue's retry backoff;
//! - messages whose second (last allowed) lease runs out while their leader is
//!   killed die, and the new leader moves them to the dead-letter queue with
//!   headers naming their source, delivery count and reason, each exactly
//!   once, and nothing acked among them;
//! - `Redrive` moves them back (part, then the rest), where they are consumed
//!   again; a redrive of the emptied dead-letter queue moves nothing, and
//!   messages it cannot place (no source header, a source queue that does
//!   not exist) stay where they are, reported as skipped with the reason.

use std::collections::BTreeSet;
use std::time::Duration;

use raftmq_cluster_tests::pb::{PeekRequest, ProduceMessage, QueueConfig, RedriveRequest};
use raftmq_cluster_tests::{
    CALL_TIMEOUT, Client, READY_TIMEOUT, TestCluster, body_text, poll_until, request_with_timeout, retry_unavailable,
};
use tokio::time::Instant;

const QUEUE: &str = "jobs";
const DLQ: &str = "jobs.dlq";
const MESSAGES: usize = 20;
const BACKOFF_MIN_MS: u64 = 300;
const LEASE_MS: u64 = 2_000;
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Every stored message of `queue`, as the answering node's leader sees it.
async fn peek_all(client: &Client, queue: &str) -> Vec<raftmq_cluster_tests::pb::PeekedMessage> {
    retry_unavailable(RETRY_FOR, async || {
        let request =
            PeekRequest { queue: queue.into(), from_offset: 0, max_messages: 1000, to_offset: 0, ..Default::default() };
        let response = client.messages.clone().peek(request_with_timeout(request, CALL_TIMEOUT)).await?;
        Ok(response.into_inner().messages)
    })
    .await
    .expect("peek")
}

async fn redrive(client: &Client, max: u64) -> raftmq_cluster_tests::pb::RedriveResponse {
    retry_unavailable(RETRY_FOR, async || {
        let request = RedriveRequest { queue: DLQ.into(), max_messages: max };
        Ok(client.queues.clone().redrive(request_with_timeout(request, CALL_TIMEOUT)).await?.into_inner())
    })
    .await
    .expect("redrive")
}

/// Consumes until `n` messages arrived, within 30 s.
async fn consume_n(client: &Client, queue: &str, n: usize) -> Vec<raftmq_cluster_tests::pb::Message> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < n {
        assert!(started.elapsed() < Duration::from_secs(30), "only {} of {n} messages arrived", got.len());
        let batch = retry_unavailable(RETRY_FOR, async || client.consume(queue, 100, 1000, LEASE_MS).await)
            .await
            .expect("consume");
        got.extend(batch);
    }
    assert_eq!(got.len(), n, "more messages than expected");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_survive_leader_kill() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.create_queue(DLQ, QueueConfig::default()).await;
    let config = QueueConfig {
        max_deliveries: 2,
        dead_letter_queue: DLQ.into(),
        retry_backoff_min_ms: Some(BACKOFF_MIN_MS),
        retry_backoff_max_ms: Some(BACKOFF_MIN_MS * 4),
        ..Default::default()
    };
    let leader = cluster.create_queue(QUEUE, config).await;
    let others: Vec<u64> = cluster.node_ids().into_iter().filter(|id| *id != leader).collect();
    let client = cluster.client(others[0]);

    let messages = (0..MESSAGES)
        .map(|i| ProduceMessage {
            body: format!("job-{i}").into(),
            headers: [("kind".to_string(), "test".to_string())].into(),
            ..Default::default()
        })
        .collect();
    client.produce_messages(QUEUE, messages).await.expect("produce");

    // First delivery, nacked without a delay: back after the backoff.
    let first = consume_n(&client, QUEUE, MESSAGES).await;
    assert!(first.iter().all(|m| m.delivery_attempt == 1));
    let receipts: Vec<String> = first.iter().map(|m| m.receipt.clone()).collect();
    let nack = raftmq_cluster_tests::pb::NackRequest { queue: QUEUE.into(), receipts, delay_ms: None };
    client.messages.clone().nack(request_with_timeout(nack, CALL_TIMEOUT)).await.expect("nack");
    let nacked_at = Instant::now();
    let early = client.consume(QUEUE, 100, 0, LEASE_MS).await.expect("consume at once");
    assert!(early.is_empty(), "{} messages redelivered before the backoff", early.len());

    // Second and last delivery.
    let second = consume_n(&client, QUEUE, MESSAGES).await;
    let waited = nacked_at.elapsed();
    assert!(second.iter().all(|m| m.delivery_attempt == 2));
    assert!(
        waited >= Duration::from_millis(BACKOFF_MIN_MS / 2),
        "redelivered {waited:?} after the nack; the backoff is at least {BACKOFF_MIN_MS} ms"
    );
    println!("redelivered {waited:?} after the nack");
    let (acked, abandoned) = second.split_at(5);
    let ack = client.ack(QUEUE, acked.iter().map(|m| m.receipt.clone()).collect()).await.expect("ack");
    assert_eq!(ack.succeeded, 5);
    let acked_bodies: BTreeSet<String> = acked.iter().map(body_text).collect();
    let abandoned_bodies: BTreeSet<String> = abandoned.iter().map(body_text).collect();

    // The leader dies with 15 messages on their last lease.
    let current = cluster.leader_of(QUEUE, Duration::from_secs(10)).await;
    cluster.kill(current);
    let new_leader = cluster.leader_of(QUEUE, Duration::from_secs(30)).await;
    println!("node {current} killed with {} messages on their last lease; node {new_leader} leads", abandoned.len());
    let observer = cluster.client(new_leader);

    let dead = poll_until(Duration::from_secs(60), "the abandoned messages reach the dead-letter queue", async || {
        let dead = peek_all(&observer, DLQ).await;
        (dead.len() >= abandoned.len()).then_some(dead)
    })
    .await;
    // Give a duplicate move the time to show up, then look again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dead_again = peek_all(&observer, DLQ).await;
    assert_eq!(dead_again.len(), dead.len(), "the dead-letter queue kept growing");
    let dead_bodies: Vec<String> = dead.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    assert_eq!(dead_bodies.len(), abandoned_bodies.len(), "each dead message is dead-lettered once: {dead_bodies:?}");
    assert_eq!(dead_bodies.iter().cloned().collect::<BTreeSet<_>>(), abandoned_bodies);
    assert!(dead_bodies.iter().all(|b| !acked_bodies.contains(b)), "an acked message was dead-lettered");
    for message in &dead {
        let h = &message.headers;
        assert_eq!(h.get("raftmq-dlq-source-queue").map(String::as_str), Some(QUEUE), "{h:?}");
        assert_eq!(h.get("raftmq-dlq-delivery-count").map(String::as_str), Some("2"), "{h:?}");
        assert_eq!(h.get("raftmq-dlq-reason").map(String::as_str), Some("max_deliveries"), "{h:?}");
        assert_eq!(h.get("kind").map(String::as_str), Some("test"), "the message's own headers stay: {h:?}");
        assert!(h.contains_key("raftmq-dlq-source-offset"), "{h:?}");
    }
    let source = peek_all(&observer, QUEUE).await;
    assert!(source.is_empty(), "dead messages left in the source queue: {source:?}");

    // Redrive part, then the rest, through a node that leads neither queue maybe.
    let redriver = cluster.client(others.iter().copied().find(|id| *id != current).unwrap_or(new_leader));
    let part = redrive(&redriver, 10).await;
    assert_eq!((part.moved, part.skipped), (10, 0));
    let rest = redrive(&redriver, 0).await;
    assert_eq!((rest.moved, rest.skipped), (5, 0));
    let empty = redrive(&redriver, 0).await;
    assert_eq!((empty.moved, empty.skipped), (0, 0), "redrive of an empty dead-letter queue");
    assert!(peek_all(&observer, DLQ).await.is_empty());

    // Messages redrive cannot move stay in the dead-letter queue, with a reason:
    // one without a source header, one whose source queue does not exist.
    let stray = vec![
        ProduceMessage { body: b"no source".to_vec().into(), ..Default::default() },
        ProduceMessage {
            body: b"gone source".to_vec().into(),
            headers: [("raftmq-dlq-source-queue".to_string(), "deleted-queue".to_string())].into(),
            ..Default::default()
        },
    ];
    redriver.produce_messages(DLQ, stray).await.expect("produce strays");
    let stuck = redrive(&redriver, 0).await;
    assert_eq!((stuck.moved, stuck.skipped), (0, 2), "{stuck:?}");
    let reasons = stuck.skipped_reasons.join("; ");
    assert!(reasons.contains("no raftmq-dlq-source-queue header"), "{reasons}");
    assert!(reasons.contains("deleted-queue"), "{reasons}");
    let left = peek_all(&observer, DLQ).await;
    assert_eq!(left.len(), 2, "skipped messages stay in the dead-letter queue: {left:?}");
    assert!(left.iter().all(|m| m.delivery_attempts == 1), "{left:?}");

    let back = consume_n(&redriver, QUEUE, abandoned.len()).await;
    let back_bodies: BTreeSet<String> = back.iter().map(body_text).collect();
    assert_eq!(back_bodies, abandoned_bodies, "redrive returned exactly the dead messages");
    for message in &back {
        assert_eq!(message.delivery_attempt, 1, "a redriven message starts over");
        assert!(!message.headers.keys().any(|k| k.starts_with("raftmq-dlq-")), "{:?}", message.headers);
        assert_eq!(message.headers.get("kind").map(String::as_str), Some("test"));
    }
    let ack = redriver.ack(QUEUE, back.iter().map(|m| m.receipt.clone()).collect()).await.expect("ack");
    assert_eq!(ack.succeeded as usize, back.len());

    cluster.restart(current);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.assert_running();
}
