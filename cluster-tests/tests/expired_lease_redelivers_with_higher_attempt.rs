//! Proves the lease contract: a message consumed and not acknowledged comes
//! back once its visibility timeout runs out, with delivery_attempt 2 and a
//! new receipt; the old receipt no longer settles it; once acknowledged it is
//! never delivered again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::pb::failed_receipt::Reason;
use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, body_text, poll_until};
use tokio::time::Instant;

const QUEUE: &str = "short-leases";
const VISIBILITY_TIMEOUT_MS: u64 = 1000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_redelivers_with_higher_attempt() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    // Through a follower: leases must work the same when forwarded.
    let node = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client(node);

    let offsets = client.produce(QUEUE, ["lease me"]).await.expect("produce");
    assert_eq!(offsets.len(), 1);

    let leased_at = Instant::now();
    let first = client.consume(QUEUE, 10, 5000, VISIBILITY_TIMEOUT_MS).await.expect("first consume");
    assert_eq!(first.len(), 1, "the one message is delivered: {first:?}");
    let first = &first[0];
    assert_eq!((first.offset, first.delivery_attempt), (offsets[0], 1));
    assert_eq!(body_text(first), "lease me");
    assert!(
        first.lease_deadline_ms >= now_ms() - 50 && first.lease_deadline_ms <= now_ms() + VISIBILITY_TIMEOUT_MS + 50,
        "lease deadline {} is not about {VISIBILITY_TIMEOUT_MS} ms from now ({})",
        first.lease_deadline_ms,
        now_ms()
    );

    // While the lease holds, nobody else gets the message.
    let during = client.consume(QUEUE, 10, 0, VISIBILITY_TIMEOUT_MS).await.expect("consume during the lease");
    if leased_at.elapsed() < Duration::from_millis(VISIBILITY_TIMEOUT_MS - 200) {
        assert!(during.is_empty(), "a leased message was delivered again before its lease ran out: {during:?}");
    } else {
        println!("skipped the during-lease check: the consume took {:?}", leased_at.elapsed());
    }

    // After the lease runs out, the same message comes back.
    let second = client.consume(QUEUE, 10, 10_000, VISIBILITY_TIMEOUT_MS).await.expect("second consume");
    assert_eq!(second.len(), 1, "the expired message is redelivered: {second:?}");
    let second = &second[0];
    assert!(
        now_ms() + 50 >= first.lease_deadline_ms,
        "redelivered before the first lease's deadline {} (now {})",
        first.lease_deadline_ms,
        now_ms()
    );
    assert_eq!(second.offset, first.offset);
    assert_eq!(body_text(second), "lease me");
    assert_eq!(second.delivery_attempt, 2, "the redelivery counts as attempt 2");
    assert_ne!(second.receipt, first.receipt, "a redelivery comes with a new receipt");

    // The first receipt lost its lease; it must not settle the message.
    let stale = client.ack(QUEUE, vec![first.receipt.clone()]).await.expect("ack with the stale receipt");
    assert_eq!(stale.succeeded, 0, "a stale receipt settled the message: {stale:?}");
    assert_eq!(stale.failed.len(), 1, "{stale:?}");
    assert_eq!(stale.failed[0].receipt, first.receipt);
    assert_eq!(stale.failed[0].reason(), Reason::LeaseGone, "{stale:?}");

    // Ack inside the second lease (it may have run out again on a slow box).
    let acked = client.ack(QUEUE, vec![second.receipt.clone()]).await.expect("ack the redelivery");
    if acked.succeeded == 0 {
        assert!(now_ms() > second.lease_deadline_ms, "a receipt within its lease failed to ack: {acked:?}");
        panic!("the box is too slow for a {VISIBILITY_TIMEOUT_MS} ms lease: the second lease ran out before its ack");
    }
    assert_eq!(acked.succeeded, 1);
    assert!(acked.failed.is_empty(), "{acked:?}");

    // Settled for good: the receipts fail, and nothing is delivered again,
    // even well after the last lease would have run out.
    let again = client.ack(QUEUE, vec![second.receipt.clone()]).await.expect("ack an acked message");
    assert_eq!(again.succeeded, 0);
    assert_eq!(again.failed.len(), 1);
    assert_eq!(again.failed[0].reason(), Reason::MessageGone, "{again:?}");
    let wait_ms = second.lease_deadline_ms.saturating_sub(now_ms()) + 2000;
    let after = client.consume(QUEUE, 10, wait_ms, VISIBILITY_TIMEOUT_MS).await.expect("consume after the ack");
    assert!(now_ms() > second.lease_deadline_ms, "the final consume returned before the old lease deadline");
    assert!(after.is_empty(), "an acknowledged message was delivered again: {after:?}");
    poll_until(Duration::from_secs(10), "the queue's depth is 0", async || {
        let stats = client.get_queue(QUEUE).await.ok()?.stats?;
        (stats.depth == 0).then_some(())
    })
    .await;
}
