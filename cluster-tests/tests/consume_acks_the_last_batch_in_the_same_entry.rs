//! A consumer can ack the batch it received with its next Consume
//! (`ConsumeRequest.ack`): the ack and the next lease are one Raft entry
//! instead of two, acked messages are gone for good, and the answer says
//! which receipts took effect. With nothing to lease the ack waits with the
//! call for messages (up to 100 ms), and then goes alone. A bad receipt in
//! `ack` is refused before anything happens.

use std::time::Duration;

use raftmq_cluster_tests::pb::{ConsumeRequest, QueueConfig};
use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, body_text};
use tonic::Code;

const QUEUE: &str = "acknext";

fn consume(max_messages: u32, wait_time_ms: u64, ack: Vec<String>) -> ConsumeRequest {
    ConsumeRequest { queue: QUEUE.to_string(), max_messages, wait_time_ms, ack, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_acks_the_last_batch_in_the_same_entry() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    // Through a follower: the ack travels with the forwarded consume.
    let follower = cluster.node_ids().into_iter().find(|n| *n != leader).expect("a follower");
    let client = cluster.client(follower);
    client.produce(QUEUE, ["m0", "m1", "m2", "m3"]).await.expect("produce");

    let first = client.consume_with(consume(2, 1_000, vec![])).await.expect("consume");
    assert_eq!(first.messages.iter().map(body_text).collect::<Vec<_>>(), ["m0", "m1"]);
    assert_eq!(first.acked, None, "nothing to ack, no ack result");
    let receipts = |response: &raftmq_cluster_tests::pb::ConsumeResponse| {
        response.messages.iter().map(|m| m.receipt.clone()).collect::<Vec<_>>()
    };

    // Ack m0 and m1 and lease the next two: one entry.
    let before = cluster.settled_log_index(leader, QUEUE).await;
    let second = client.consume_with(consume(2, 1_000, receipts(&first))).await.expect("consume and ack");
    assert_eq!(second.messages.iter().map(body_text).collect::<Vec<_>>(), ["m2", "m3"]);
    let acked = second.acked.clone().expect("an ack result");
    assert_eq!((acked.succeeded, acked.failed.len()), (2, 0));
    assert_eq!(cluster.settled_log_index(leader, QUEUE).await - before, 1, "ack and lease in one entry");

    // Nothing left to lease: the ack of m2 and m3 waits for messages with
    // the call, then goes alone, and the call waits out its time.
    let before = cluster.settled_log_index(leader, QUEUE).await;
    let started = std::time::Instant::now();
    let third = client.consume_with(consume(10, 1_500, receipts(&second))).await.expect("ack with an empty consume");
    assert!(third.messages.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(1_500), "the call waited for messages");
    assert_eq!(third.acked.clone().map(|a| a.succeeded), Some(2));
    assert_eq!(cluster.settled_log_index(leader, QUEUE).await - before, 1, "the ack alone");

    // A message that arrives while the ack is held is leased with it: one
    // entry for both.
    client.produce(QUEUE, ["m5"]).await.expect("produce");
    let fourth = client.consume_with(consume(10, 1_000, vec![])).await.expect("consume");
    let before = cluster.settled_log_index(leader, QUEUE).await;
    let producer = cluster.client(leader);
    // Before or after the consume reaches the leader, within the hold.
    let late = tokio::spawn(async move { producer.produce(QUEUE, ["m6"]).await });
    let fifth = client.consume_with(consume(10, 1_000, receipts(&fourth))).await.expect("consume and ack");
    late.await.expect("producer task").expect("produce");
    assert_eq!(fifth.messages.iter().map(body_text).collect::<Vec<_>>(), ["m6"]);
    assert_eq!(fifth.acked.clone().map(|a| a.succeeded), Some(1));
    assert_eq!(cluster.settled_log_index(leader, QUEUE).await - before, 2, "the produce, and the ack with the lease");
    client.ack(QUEUE, receipts(&fifth)).await.expect("ack");

    // The same receipts again: already acked, reported as failed.
    let again = client.consume_with(consume(10, 0, receipts(&second))).await.expect("ack twice");
    let again = again.acked.expect("an ack result");
    assert_eq!((again.succeeded, again.failed.len()), (0, 2));

    // Everything is acked: nothing comes back, even after the visibility timeout.
    let queue = client.get_queue(QUEUE).await.expect("get queue");
    assert_eq!(queue.stats.map(|s| (s.depth, s.in_flight)), Some((0, 0)));

    // A receipt that does not parse fails the whole call, before any lease.
    client.produce(QUEUE, ["m4"]).await.expect("produce");
    let bad = client.consume_with(consume(10, 0, vec!["not-a-receipt".into()])).await.expect_err("bad receipt");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().starts_with("ack: "), "{bad:?}");
    let too_many = client.consume_with(consume(10, 0, vec!["x".into(); 1001])).await.expect_err("too many");
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    let rest = client.consume(QUEUE, 10, 1_000, 0).await.expect("consume");
    assert_eq!(rest.iter().map(body_text).collect::<Vec<_>>(), ["m4"], "the refused calls leased nothing");
}
