//! Queue limits through the public API: a produce that would take a queue
//! past `max_messages` or `max_bytes` fails with RESOURCE_EXHAUSTED, a message
//! naming the limit, and stores nothing; nothing stored is dropped; acking
//! makes room again; a retried produce of stored dedup ids is still answered.

use raftmq_cluster_tests::pb::{ProduceMessage, ProduceRequest, QueueConfig};
use raftmq_cluster_tests::{CALL_TIMEOUT, READY_TIMEOUT, TestCluster, body_text, request_with_timeout};
use tonic::Code;

fn request(queue: &str, bodies: &[&str], dedup: bool) -> ProduceRequest {
    ProduceRequest {
        queue: queue.to_string(),
        messages: bodies
            .iter()
            .map(|b| ProduceMessage {
                body: b.as_bytes().to_vec().into(),
                dedup_id: if dedup { b.to_string() } else { String::new() },
                ..Default::default()
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_produce() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue("bounded", QueueConfig { max_messages: 3, ..Default::default() }).await;
    let small_leader = cluster.create_queue("small", QueueConfig { max_bytes: 10, ..Default::default() }).await;
    // Through a follower: the limit is enforced at apply on the leader.
    let node = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client(node);
    let mut messages = client.messages.clone();
    let produce =
        |queue: &str, bodies: &[&str], dedup: bool| request_with_timeout(request(queue, bodies, dedup), CALL_TIMEOUT);

    messages.produce(produce("bounded", &["a", "b"], true)).await.expect("two fit under max_messages 3");
    let refused = messages.produce(produce("bounded", &["c", "d"], true)).await.expect_err("four do not fit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for part in ["bounded", "max_messages is 3", "holds 2", "nothing was stored"] {
        assert!(refused.message().contains(part), "{:?} lacks {part:?}", refused.message());
    }
    // A full queue still answers the retry of a stored batch.
    messages.produce(produce("bounded", &["c"], true)).await.expect("a third fits");
    let retry = messages.produce(produce("bounded", &["a", "b"], true)).await.expect("duplicates need no room");
    assert_eq!(retry.into_inner().duplicates, vec![true, true]);
    // Stats from the leader: a follower answers from its own replica, which may trail.
    let stats = cluster.client(leader).get_queue("bounded").await.expect("get").stats.expect("stats");
    assert_eq!((stats.depth, stats.next_offset), (3, 3), "nothing dropped, no offset used by the refusals");

    // Acking makes room.
    let leased = client.consume("bounded", 10, 1000, 30_000).await.expect("consume");
    assert_eq!(leased.iter().map(body_text).collect::<Vec<_>>(), vec!["a", "b", "c"]);
    client.ack("bounded", vec![leased[0].receipt.clone()]).await.expect("ack");
    messages.produce(produce("bounded", &["d"], true)).await.expect("room after an ack");

    // max_bytes counts body plus headers of unacked messages.
    messages.produce(produce("small", &["123456"], false)).await.expect("6 bytes fit under 10");
    let refused = messages.produce(produce("small", &["12345"], false)).await.expect_err("11 bytes do not");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("max_bytes is 10"), "{:?}", refused.message());
    let stats = cluster.client(small_leader).get_queue("small").await.expect("get").stats.expect("stats");
    assert_eq!((stats.depth, stats.bytes), (1, 6));
    cluster.assert_running();
}
