//! Proves a queue's state survives a restart of the whole cluster, graceful
//! (SIGTERM) or not (kill -9 of every node): the queue still exists, acked
//! messages never come back, leased-but-unacked messages come back once their
//! lease ends (as a redelivery), and never-consumed messages are delivered.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, body_text, poll_until, retry_unavailable};
use tokio::time::Instant;

const QUEUE: &str = "survives-restart";
const N_MESSAGES: usize = 300;
const N_ACKED: usize = 100;
const N_LEASED: usize = 50;
/// Short, so the leases end soon after the restart.
const LEASE_MS: u64 = 3000;

enum Stop {
    Graceful,
    Kill9,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_keeps_state_after_sigterm() {
    restart_scenario(Stop::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_keeps_state_after_kill_9() {
    restart_scenario(Stop::Kill9).await;
}

/// Consumes `n` messages (leasing them for `lease_ms`), in as many calls as it takes.
async fn consume_n(
    client: &raftmq_cluster_tests::Client,
    n: usize,
    lease_ms: u64,
) -> Vec<raftmq_cluster_tests::pb::Message> {
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} messages consumed within 30 s", messages.len());
        let want = (n - messages.len()) as u32;
        messages.extend(client.consume(QUEUE, want, 1000, lease_ms).await.expect("consume before the restart"));
    }
    messages
}

async fn restart_scenario(stop: Stop) {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let client = cluster.client(1);

    let bodies: Vec<String> = (0..N_MESSAGES).map(|i| format!("survivor-{i:04}")).collect();
    for chunk in bodies.chunks(50) {
        client.produce(QUEUE, chunk.to_vec()).await.expect("produce before the restart");
    }

    let acked = consume_n(&client, N_ACKED, 60_000).await;
    let settled = client.ack(QUEUE, acked.iter().map(|m| m.receipt.clone()).collect()).await.expect("ack");
    assert_eq!(settled.succeeded as usize, N_ACKED, "{:?}", settled.failed);
    let acked: HashSet<String> = acked.iter().map(body_text).collect();

    let leased = consume_n(&client, N_LEASED, LEASE_MS).await;
    let lease_ends_ms = leased.iter().map(|m| m.lease_deadline_ms).max().expect("leased messages");
    let leased: HashSet<String> = leased.iter().map(body_text).collect();
    let never_consumed: HashSet<String> =
        bodies.iter().filter(|b| !acked.contains(*b) && !leased.contains(*b)).cloned().collect();
    assert_eq!(never_consumed.len(), N_MESSAGES - N_ACKED - N_LEASED);

    match stop {
        Stop::Graceful => cluster.stop_all().await,
        Stop::Kill9 => cluster.kill_all(),
    }
    cluster.restart_all();
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.leader_of(QUEUE, Duration::from_secs(30)).await;

    let client = cluster.client(2);
    let info = retry_unavailable(Duration::from_secs(30), async || client.get_queue(QUEUE).await)
        .await
        .expect("the queue exists after the restart");
    assert_eq!(info.name, QUEUE);

    // Everything not acked comes back: the never-consumed ones at once, the
    // leased ones after their lease, as their second delivery.
    let mut delivered: HashMap<String, u32> = HashMap::new();
    let started = Instant::now();
    while delivered.len() < N_MESSAGES - N_ACKED {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "after the restart only {} of {} unacked messages came back within 90 s",
            delivered.len(),
            N_MESSAGES - N_ACKED
        );
        let messages = client.consume(QUEUE, 100, 2000, 60_000).await.expect("consume after the restart");
        for message in &messages {
            let text = body_text(message);
            assert!(!acked.contains(&text), "{text:?} was acked before the restart but delivered again");
            assert!(delivered.insert(text.clone(), message.delivery_attempt).is_none(), "{text:?} delivered twice");
        }
        if !messages.is_empty() {
            client
                .ack(QUEUE, messages.iter().map(|m| m.receipt.clone()).collect())
                .await
                .expect("ack after the restart");
        }
    }
    for (text, attempt) in &delivered {
        let expected = if leased.contains(text) { 2 } else { 1 };
        assert_eq!(*attempt, expected, "{text:?}: delivery_attempt {attempt} after the restart");
    }

    // Nothing else comes back, even after the old leases would have ended.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let wait_ms = lease_ends_ms.saturating_sub(now_ms) + 1000;
    let rest = client.consume(QUEUE, 100, wait_ms, 60_000).await.expect("final consume");
    assert!(rest.is_empty(), "delivered after everything was acked: {rest:?}");
    poll_until(Duration::from_secs(10), "the queue's depth is 0", async || {
        let stats = client.get_queue(QUEUE).await.ok()?.stats?;
        (stats.depth == 0).then_some(())
    })
    .await;
}
