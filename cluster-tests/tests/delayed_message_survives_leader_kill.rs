//! Delayed delivery through the public API, across a failover: a message
//! produced with `delay_ms` is not delivered before its time, even after
//! kill -9 of the leader that stored it, and is delivered once its time has
//! come, by the new leader; one with `deliver_at_ms` in the past goes at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftmq_cluster_tests::pb::{ProduceMessage, ProduceRequest, QueueConfig};
use raftmq_cluster_tests::{
    CALL_TIMEOUT, READY_TIMEOUT, TestCluster, body_text, request_with_timeout, retry_unavailable,
};
use tokio::time::Instant;

const QUEUE: &str = "delayed";
const DELAY_MS: u64 = 6_000;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_message_survives_leader_kill() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let followers: Vec<u64> = cluster.node_ids().into_iter().filter(|id| *id != leader).collect();
    let client = cluster.client(followers[0]);

    let sent_at_ms = unix_ms();
    let request = ProduceRequest {
        queue: QUEUE.into(),
        messages: vec![
            ProduceMessage { body: b"later".to_vec().into(), delay_ms: DELAY_MS, ..Default::default() },
            ProduceMessage { body: b"now".to_vec().into(), deliver_at_ms: sent_at_ms - 60_000, ..Default::default() },
        ],
    };
    let offsets = client
        .messages
        .clone()
        .produce(request_with_timeout(request, CALL_TIMEOUT))
        .await
        .expect("produce")
        .into_inner()
        .offsets;
    assert_eq!(offsets, vec![0, 1]);
    // From the leader: a follower answers from its own replica, which may not
    // have applied the produce yet.
    let info = cluster.client(leader).get_queue(QUEUE).await.expect("get").stats.expect("stats");
    assert_eq!((info.delayed, info.available), (1, 1));

    cluster.kill(leader);
    let consumer = cluster.client(followers[1]);
    let mut delivered = Vec::new();
    let started = Instant::now();
    while delivered.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "only {delivered:?} delivered within 60 s");
        let messages =
            retry_unavailable(Duration::from_secs(30), async || consumer.consume(QUEUE, 10, 1000, 60_000).await)
                .await
                .expect("consume through the failover");
        for message in messages {
            let at_ms = unix_ms();
            let body = body_text(&message);
            if body == "later" {
                assert!(
                    at_ms >= sent_at_ms + DELAY_MS,
                    "delivered {} ms after the produce was sent, before its {DELAY_MS} ms delay",
                    at_ms - sent_at_ms
                );
            }
            println!("{body} delivered {} ms after the produce", at_ms - sent_at_ms);
            delivered.push(body);
        }
    }
    assert_eq!(delivered, vec!["now", "later"]);
    cluster.assert_running();
}
