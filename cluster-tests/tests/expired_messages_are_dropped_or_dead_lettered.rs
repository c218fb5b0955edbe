//! Time to live through the public API: per queue and per message (the
//! shorter wins), for waiting and for leased messages, with the queue's
//! expiry action: dead-lettered with reason "expired", or dropped. Nobody
//! consumes the queues while the messages expire: the leader sweeps by itself.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_cluster_tests::pb::{ExpiryAction, NackRequest, PeekRequest, ProduceMessage, QueueConfig};
use raftmq_cluster_tests::{
    CALL_TIMEOUT, Client, READY_TIMEOUT, TestCluster, poll_until, request_with_timeout, retry_unavailable,
};
use tokio::time::Instant;

const QUEUE_TTL_MS: u64 = 4_000;
const MESSAGE_TTL_MS: u64 = 1_500;

/// Bodies of the stored messages of `queue`, with their headers.
async fn stored(client: &Client, queue: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    retry_unavailable(Duration::from_secs(30), async || {
        let request =
            PeekRequest { queue: queue.into(), from_offset: 0, max_messages: 1000, to_offset: 0, ..Default::default() };
        let response = client.messages.clone().peek(request_with_timeout(request, CALL_TIMEOUT)).await?;
        Ok(response
            .into_inner()
            .messages
            .into_iter()
            .map(|m| (String::from_utf8_lossy(&m.body).into_owned(), m.headers.into_iter().collect()))
            .collect())
    })
    .await
    .expect("peek")
}

fn message(body: &str, ttl_ms: u64) -> ProduceMessage {
    ProduceMessage { body: body.as_bytes().to_vec().into(), ttl_ms, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dropped_or_dead_lettered() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.create_queue("expired", QueueConfig::default()).await;
    let dead_lettering = QueueConfig {
        message_ttl_ms: QUEUE_TTL_MS,
        dead_letter_queue: "expired".into(),
        expiry_action: ExpiryAction::DeadLetter as i32,
        ..Default::default()
    };
    let leader = cluster.create_queue("ttl-dlq", dead_lettering).await;
    let dropping = QueueConfig { message_ttl_ms: QUEUE_TTL_MS, ..Default::default() };
    cluster.create_queue("ttl-drop", dropping).await;
    let forever = QueueConfig::default();
    cluster.create_queue("ttl-own", forever).await;
    let client = cluster.client(leader);

    let started = Instant::now();
    for queue in ["ttl-dlq", "ttl-drop", "ttl-own"] {
        let batch = vec![message("short", MESSAGE_TTL_MS), message("queue-ttl", 0), message("leased", MESSAGE_TTL_MS)];
        client.produce_messages(queue, batch).await.expect("produce");
    }
    // "leased" is held by a consumer when it expires; "short" and "queue-ttl"
    // are given back and wait unleased.
    let mut receipts = BTreeMap::new();
    for queue in ["ttl-dlq", "ttl-drop", "ttl-own"] {
        let leased = client.consume(queue, 3, 1000, 60_000).await.expect("consume");
        assert_eq!(leased.len(), 3, "{queue}");
        let (held, given_back): (Vec<_>, Vec<_>) = leased.into_iter().partition(|m| m.body[..] == b"leased"[..]);
        receipts.insert(queue, held[0].receipt.clone());
        let receipts = given_back.into_iter().map(|m| m.receipt).collect();
        let nack = NackRequest { queue: queue.into(), receipts, delay_ms: Some(0) };
        let nacked = client.messages.clone().nack(request_with_timeout(nack, CALL_TIMEOUT)).await.expect("nack");
        assert_eq!(nacked.into_inner().succeeded, 2);
    }

    let after_short = poll_until(Duration::from_secs(20), "the short-lived messages expire", async || {
        let own = stored(&client, "ttl-own").await;
        (!own.contains_key("short") && !own.contains_key("leased")).then_some(started.elapsed())
    })
    .await;
    assert!(after_short >= Duration::from_millis(MESSAGE_TTL_MS), "expired after {after_short:?}");
    assert!(stored(&client, "ttl-own").await.contains_key("queue-ttl"), "no queue TTL: the other one stays");
    let ack = client.ack("ttl-own", vec![receipts["ttl-own"].clone()]).await.expect("ack");
    assert_eq!(ack.succeeded, 0, "the receipt of an expired message no longer works");

    poll_until(Duration::from_secs(20), "the queue TTL runs out", async || {
        let (dlq, drop) = (stored(&client, "ttl-dlq").await, stored(&client, "ttl-drop").await);
        (dlq.is_empty() && drop.is_empty()).then_some(())
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(QUEUE_TTL_MS));

    let dead = poll_until(Duration::from_secs(20), "all three reach the dead-letter queue", async || {
        let dead = stored(&client, "expired").await;
        (dead.len() >= 3).then_some(dead)
    })
    .await;
    assert_eq!(dead.keys().map(String::as_str).collect::<Vec<_>>(), vec!["leased", "queue-ttl", "short"]);
    for headers in dead.values() {
        assert_eq!(headers.get("raftmq-dlq-reason").map(String::as_str), Some("expired"), "{headers:?}");
        assert_eq!(headers.get("raftmq-dlq-source-queue").map(String::as_str), Some("ttl-dlq"), "{headers:?}");
    }
    cluster.assert_running();
}
