//! Subscriptions, retention and seek through the public API, across a
//! failover:
//!
//! - every subscription receives every message and settles its own: acks in
//!   one do not touch another, and consumers of one subscription compete;
//! - after the queue's leader is killed, nothing acked in a subscription
//!   comes back there, unacked leases come back, and a subscription that had
//!   consumed nothing still gets everything, as first deliveries;
//! - with retention on, a seek back replays acked messages, a seek by time
//!   starts at the first message published then, and a subscription created
//!   at the earliest offset gets every retained message;
//! - deleting a subscription removes it; `default` cannot be deleted; bad
//!   names and unknown subscriptions get clear status codes.

use std::collections::BTreeSet;
use std::time::Duration;

use raftmq_cluster_tests::pb::{
    ConsumeRequest, CreateSubscriptionRequest, DeleteSubscriptionRequest, ListSubscriptionsRequest, Message,
    ProduceMessage, QueueConfig, SeekRequest, Subscription, SubscriptionStart, seek_request,
};
use raftmq_cluster_tests::{
    CALL_TIMEOUT, Client, READY_TIMEOUT, TestCluster, body_text, request_with_timeout, retry_unavailable,
};
use tokio::time::Instant;
use tonic::Code;

const QUEUE: &str = "events";
const MESSAGES: usize = 20;
const LEASE_MS: u64 = 2_000;
const RETRY_FOR: Duration = Duration::from_secs(60);

async fn create_subscription(
    client: &Client,
    name: &str,
    start: SubscriptionStart,
) -> Result<Subscription, tonic::Status> {
    let request = CreateSubscriptionRequest { queue: QUEUE.into(), name: name.into(), start: start as i32 };
    let response = client.queues.clone().create_subscription(request_with_timeout(request, CALL_TIMEOUT)).await?;
    Ok(response.into_inner().subscription.expect("a created subscription"))
}

async fn subscriptions(client: &Client) -> Vec<Subscription> {
    retry_unavailable(RETRY_FOR, async || {
        let request = ListSubscriptionsRequest { queue: QUEUE.into() };
        let response = client.queues.clone().list_subscriptions(request_with_timeout(request, CALL_TIMEOUT)).await?;
        Ok(response.into_inner().subscriptions)
    })
    .await
    .expect("list subscriptions")
}

async fn seek(client: &Client, subscription: &str, target: seek_request::Target) -> u64 {
    retry_unavailable(RETRY_FOR, async || {
        let request = SeekRequest { queue: QUEUE.into(), subscription: subscription.into(), target: Some(target) };
        Ok(client.queues.clone().seek(request_with_timeout(request, CALL_TIMEOUT)).await?.into_inner().pending)
    })
    .await
    .expect("seek")
}

async fn consume_from(client: &Client, subscription: &str, wait_ms: u64) -> Result<Vec<Message>, tonic::Status> {
    let request = ConsumeRequest {
        queue: QUEUE.into(),
        subscription: subscription.into(),
        max_messages: 100,
        wait_time_ms: wait_ms,
        visibility_timeout_ms: LEASE_MS,
        ..Default::default()
    };
    let timeout = CALL_TIMEOUT + Duration::from_millis(wait_ms);
    Ok(client.messages.clone().consume(request_with_timeout(request, timeout)).await?.into_inner().messages)
}

/// Consumes from `subscription` until `n` messages arrived, within 30 s.
async fn consume_n(client: &Client, subscription: &str, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < n {
        assert!(started.elapsed() < Duration::from_secs(30), "{subscription}: only {} of {n} arrived", got.len());
        got.extend(
            retry_unavailable(RETRY_FOR, async || consume_from(client, subscription, 1000).await).await.unwrap(),
        );
    }
    assert_eq!(got.len(), n, "{subscription}: more messages than expected");
    got
}

async fn ack(client: &Client, messages: &[Message]) {
    let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
    let settled = retry_unavailable(RETRY_FOR, async || client.ack(QUEUE, receipts.clone()).await).await.unwrap();
    assert_eq!(settled.succeeded as usize, messages.len(), "{:?}", settled.failed);
}

fn bodies(messages: &[Message]) -> BTreeSet<String> {
    messages.iter().map(body_text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_fan_out_and_seek_across_leader_kill() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let config = QueueConfig { retention_ms: 10 * 60 * 1000, ..Default::default() };
    let leader = cluster.create_queue(QUEUE, config).await;
    let follower = cluster.node_ids().into_iter().find(|id| *id != leader).unwrap();
    let client = cluster.client(follower);

    // Subscriptions, through a follower (forwarded to the leader).
    for name in ["audit", "billing"] {
        let created =
            retry_unavailable(RETRY_FOR, async || create_subscription(&client, name, SubscriptionStart::Latest).await);
        assert_eq!(created.await.expect("create subscription").depth, 0);
    }
    let again = create_subscription(&client, "audit", SubscriptionStart::Earliest).await.expect_err("exists");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let bad = create_subscription(&client, "no spaces", SubscriptionStart::Latest).await.expect_err("bad name");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("subscription name"), "{bad:?}");
    let unknown = consume_from(&client, "nope", 0).await.expect_err("unknown subscription");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("nope"), "{unknown:?}");
    let delete_default = DeleteSubscriptionRequest { queue: QUEUE.into(), name: "default".into() };
    let refused = client.queues.clone().delete_subscription(request_with_timeout(delete_default, CALL_TIMEOUT)).await;
    assert_eq!(refused.expect_err("default stays").code(), Code::FailedPrecondition);

    let messages: Vec<ProduceMessage> =
        (0..MESSAGES).map(|i| ProduceMessage { body: format!("event-{i:02}").into(), ..Default::default() }).collect();
    let offsets = client.produce_messages(QUEUE, messages).await.expect("produce");
    let all: BTreeSet<String> = (0..MESSAGES).map(|i| format!("event-{i:02}")).collect();

    // default takes and acks everything; audit acks half; billing consumes nothing.
    let default_first = consume_n(&client, "default", MESSAGES).await;
    assert_eq!(bodies(&default_first), all);
    ack(&client, &default_first).await;
    let audit_first = consume_n(&client, "audit", MESSAGES).await;
    assert_eq!(bodies(&audit_first), all, "audit receives every message too");
    assert!(audit_first.iter().all(|m| m.delivery_attempt == 1 && m.receipt.starts_with("r2-")));
    let (audit_acked, audit_open) = audit_first.split_at(MESSAGES / 2);
    ack(&client, audit_acked).await;
    let listed = subscriptions(&cluster.client(leader)).await;
    let depths: Vec<(&str, u64)> = listed.iter().map(|s| (s.name.as_str(), s.depth)).collect();
    assert_eq!(depths, vec![("default", 0), ("audit", 10), ("billing", 20)]);

    // The leader dies.
    cluster.kill(leader);
    let new_leader = cluster.leader_of(QUEUE, Duration::from_secs(30)).await;
    println!("node {leader} killed; node {new_leader} leads {QUEUE}");
    let client = cluster.client(new_leader);

    // Nothing acked comes back; audit's open leases do, after they run out.
    let audit_again = consume_n(&client, "audit", audit_open.len()).await;
    assert_eq!(bodies(&audit_again), bodies(audit_open), "audit got back exactly its unacked messages");
    assert!(audit_again.iter().all(|m| m.delivery_attempt == 2));
    ack(&client, &audit_again).await;
    let billing = consume_n(&client, "billing", MESSAGES).await;
    assert_eq!(bodies(&billing), all);
    assert!(billing.iter().all(|m| m.delivery_attempt == 1));
    ack(&client, &billing).await;
    let leftover = retry_unavailable(RETRY_FOR, async || consume_from(&client, "default", 2_500).await).await.unwrap();
    assert!(leftover.is_empty(), "acked messages came back to default: {:?}", bodies(&leftover));

    // Everything is acked everywhere, and retention keeps it for replay.
    let info = retry_unavailable(RETRY_FOR, async || client.get_queue(QUEUE).await).await.unwrap();
    let stats = info.stats.expect("the leader has stats");
    assert_eq!((stats.depth, stats.retained, stats.subscriptions), (0, MESSAGES as u64, 3), "{stats:?}");

    // Seek back by offset: audit replays all of it, as first deliveries.
    assert_eq!(seek(&client, "audit", seek_request::Target::Offset(offsets[0])).await, MESSAGES as u64);
    let replay = consume_n(&client, "audit", MESSAGES).await;
    assert_eq!(bodies(&replay), all);
    assert!(replay.iter().all(|m| m.delivery_attempt == 1));
    ack(&client, &replay).await;

    // Seek by time: from the publish time of the eleventh message on.
    let from_time = default_first.iter().map(|m| (m.offset, m.publish_time_ms)).collect::<Vec<_>>();
    let cut = from_time.iter().find(|(offset, _)| *offset == offsets[10]).unwrap().1;
    let expected: BTreeSet<String> = default_first.iter().filter(|m| m.publish_time_ms >= cut).map(body_text).collect();
    let pending = seek(&client, "default", seek_request::Target::TimeMs(cut)).await;
    assert_eq!(pending as usize, expected.len());
    let replay = consume_n(&client, "default", expected.len()).await;
    assert_eq!(bodies(&replay), expected);
    ack(&client, &replay).await;

    // A subscription created at the earliest offset sees every retained message.
    let late =
        retry_unavailable(RETRY_FOR, async || create_subscription(&client, "late", SubscriptionStart::Earliest).await);
    assert_eq!(late.await.unwrap().depth, MESSAGES as u64);

    // Deleting one leaves the others.
    let delete = DeleteSubscriptionRequest { queue: QUEUE.into(), name: "billing".into() };
    client.queues.clone().delete_subscription(request_with_timeout(delete, CALL_TIMEOUT)).await.expect("delete");
    let names: Vec<String> = subscriptions(&client).await.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["default", "audit", "late"]);
    let gone = consume_from(&client, "billing", 0).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    cluster.restart(leader);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.assert_running();
}
