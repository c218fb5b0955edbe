//! Proves that bad requests get the documented status code and a message
//! that names what was wrong, also through a node that forwards the call, and
//! that none of them hurts the server.

use std::fmt::Debug;
use std::time::Duration;

use raftmq_cluster_tests::pb::failed_receipt::Reason;
use raftmq_cluster_tests::pb::{
    AckRequest, ConsumeRequest, CreateQueueRequest, CreateSubscriptionRequest, DeleteQueueRequest, GetQueueRequest,
    NackRequest, ProduceMessage, ProduceRequest, QueueConfig, SeekRequest,
};
use raftmq_cluster_tests::{CALL_TIMEOUT, READY_TIMEOUT, TestCluster, poll_until, request_with_timeout};
use tonic::{Code, Status};

const QUEUE: &str = "well-formed";
const ONE_MIB: usize = 1024 * 1024;

/// Asserts `result` failed with `code` and a message containing each of `mentions`.
fn assert_rejected<T: Debug>(what: &str, result: Result<tonic::Response<T>, Status>, code: Code, mentions: &[&str]) {
    let status = match result {
        Ok(response) => panic!("{what}: expected {code:?}, got OK: {:?}", response.into_inner()),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what}: wrong status code; message: {:?}", status.message());
    for needle in mentions {
        assert!(
            status.message().contains(needle),
            "{what}: the message {:?} does not mention {needle:?}",
            status.message()
        );
    }
    println!("{what}: {:?} {:?}", status.code(), status.message());
}

fn req<T>(message: T) -> tonic::Request<T> {
    request_with_timeout(message, CALL_TIMEOUT)
}

fn message(body: impl Into<Vec<u8>>) -> ProduceMessage {
    let body: Vec<u8> = body.into();
    ProduceMessage { body: body.into(), ..Default::default() }
}

fn produce(queue: &str, messages: Vec<ProduceMessage>) -> ProduceRequest {
    ProduceRequest { queue: queue.to_string(), messages }
}

fn consume(max_messages: u32, wait_time_ms: u64, visibility_timeout_ms: u64) -> ConsumeRequest {
    ConsumeRequest { queue: QUEUE.to_string(), max_messages, wait_time_ms, visibility_timeout_ms, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_status() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let node = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client(node);
    let mut queues = client.queues.clone();
    let mut messages = client.messages.clone();

    // Queue names.
    let create = |name: &str| CreateQueueRequest { name: name.to_string(), config: None };
    assert_rejected(
        "create with a bad name",
        queues.create_queue(req(create("bad name!"))).await,
        Code::InvalidArgument,
        &["name", "' '"],
    );
    assert_rejected(
        "create with an empty name",
        queues.create_queue(req(create(""))).await,
        Code::InvalidArgument,
        &["name"],
    );
    assert_rejected(
        "create with a 201-char name",
        queues.create_queue(req(create(&"q".repeat(201)))).await,
        Code::InvalidArgument,
        &["name", "200"],
    );
    assert_rejected("create a duplicate", queues.create_queue(req(create(QUEUE))).await, Code::AlreadyExists, &[QUEUE]);
    let bad_config = CreateQueueRequest {
        name: "bad-config".to_string(),
        config: Some(QueueConfig { max_message_bytes: 64 * ONE_MIB as u64, ..Default::default() }),
    };
    assert_rejected(
        "create with max_message_bytes 64 MiB",
        queues.create_queue(req(bad_config)).await,
        Code::InvalidArgument,
        &["max_message_bytes"],
    );
    let bad_window = CreateQueueRequest {
        name: "bad-window".to_string(),
        config: Some(QueueConfig { dedup_window_ms: Some(25 * 60 * 60 * 1000), ..Default::default() }),
    };
    assert_rejected(
        "create with a 25-hour dedup window",
        queues.create_queue(req(bad_window)).await,
        Code::InvalidArgument,
        &["dedup_window_ms", "24 hours"],
    );

    // Retry, dead-letter and expiry settings.
    let with = |name: &str, config: QueueConfig| CreateQueueRequest { name: name.to_string(), config: Some(config) };
    let cases = [
        (
            "create with a dead-letter queue that does not exist",
            with("orphan", QueueConfig { dead_letter_queue: "nowhere".into(), ..Default::default() }),
            vec!["dead_letter_queue", "nowhere", "does not exist"],
        ),
        (
            "create with itself as dead-letter queue",
            with("selfish", QueueConfig { dead_letter_queue: "selfish".into(), ..Default::default() }),
            vec!["dead_letter_queue", "itself"],
        ),
        (
            "create with a malformed dead-letter queue name",
            with("badly-named-dlq", QueueConfig { dead_letter_queue: "no spaces".into(), ..Default::default() }),
            vec!["dead_letter_queue"],
        ),
        (
            "create with retry_backoff_min_ms above max",
            with(
                "backwards",
                QueueConfig { retry_backoff_min_ms: Some(5000), retry_backoff_max_ms: Some(10), ..Default::default() },
            ),
            vec!["retry_backoff_min_ms", "retry_backoff_max_ms"],
        ),
        (
            "create with max_deliveries 100000",
            with("too-patient", QueueConfig { max_deliveries: 100_000, ..Default::default() }),
            vec!["max_deliveries", "10000"],
        ),
        (
            "create with a two-year TTL",
            with("ancient", QueueConfig { message_ttl_ms: 2 * 365 * 24 * 3600 * 1000, ..Default::default() }),
            vec!["message_ttl_ms"],
        ),
        (
            "create with an unknown expiry action",
            with("confused", QueueConfig { expiry_action: 7, ..Default::default() }),
            vec!["expiry_action", "7"],
        ),
    ];
    for (what, request, mentions) in cases {
        assert_rejected(what, queues.create_queue(req(request)).await, Code::InvalidArgument, &mentions);
    }
    cluster.create_queue("in-use.dlq", QueueConfig::default()).await;
    let user = QueueConfig { dead_letter_queue: "in-use.dlq".into(), ..Default::default() };
    cluster.create_queue("dlq-user", user).await;
    assert_rejected(
        "delete a queue that is a dead-letter queue",
        queues.delete_queue(req(DeleteQueueRequest { name: "in-use.dlq".into() })).await,
        Code::FailedPrecondition,
        &["in-use.dlq", "dlq-user", "dead_letter_queue"],
    );
    let too_long = ProduceMessage { ttl_ms: 2 * 365 * 24 * 3600 * 1000, ..message("x") };
    assert_rejected(
        "produce with a two-year ttl_ms",
        messages.produce(req(produce(QUEUE, vec![too_long]))).await,
        Code::InvalidArgument,
        &["messages[0].ttl_ms"],
    );
    assert_rejected(
        "get an unknown queue",
        queues.get_queue(req(GetQueueRequest { name: "no-such-queue".into() })).await,
        Code::NotFound,
        &["no-such-queue"],
    );
    assert_rejected(
        "produce to an unknown queue",
        messages.produce(req(produce("no-such-queue", vec![message("x")]))).await,
        Code::NotFound,
        &["no-such-queue"],
    );
    assert_rejected(
        "produce to a bad queue name",
        messages.produce(req(produce("a/b", vec![message("x")]))).await,
        Code::InvalidArgument,
        &["queue", "'/'"],
    );

    // Produce.
    let both = ProduceMessage { delay_ms: 10, deliver_at_ms: 10, ..message("x") };
    assert_rejected(
        "produce with both delay_ms and deliver_at_ms",
        messages.produce(req(produce(QUEUE, vec![both]))).await,
        Code::InvalidArgument,
        &["messages[0]", "delay_ms", "deliver_at_ms"],
    );
    let long_id = ProduceMessage { dedup_id: "d".repeat(129), ..message("x") };
    assert_rejected(
        "produce with a 129-byte dedup_id",
        messages.produce(req(produce(QUEUE, vec![message("ok"), long_id]))).await,
        Code::InvalidArgument,
        &["messages[1].dedup_id", "128"],
    );
    assert_rejected(
        "produce an empty batch",
        messages.produce(req(produce(QUEUE, vec![]))).await,
        Code::InvalidArgument,
        &["messages"],
    );
    assert_rejected(
        "produce an empty body",
        messages.produce(req(produce(QUEUE, vec![message("ok"), message("")]))).await,
        Code::InvalidArgument,
        &["messages[1]", "body"],
    );
    let too_big = message(vec![b'x'; ONE_MIB + 1]);
    assert_rejected(
        "produce a body over 1 MiB",
        messages.produce(req(produce(QUEUE, vec![message("ok"), too_big]))).await,
        Code::InvalidArgument,
        &["messages[1]", "max_message_bytes"],
    );
    let too_many = (0..1001).map(|_| message("x")).collect();
    assert_rejected(
        "produce 1001 messages",
        messages.produce(req(produce(QUEUE, too_many))).await,
        Code::InvalidArgument,
        &["messages", "1000"],
    );

    // Consume.
    assert_rejected(
        "consume max_messages 0",
        messages.consume(req(consume(0, 0, 0))).await,
        Code::InvalidArgument,
        &["max_messages"],
    );
    assert_rejected(
        "consume max_messages 100000",
        messages.consume(req(consume(100_000, 0, 0))).await,
        Code::InvalidArgument,
        &["max_messages"],
    );
    assert_rejected(
        "consume wait_time_ms a day",
        messages.consume(req(consume(1, 86_400_000, 0))).await,
        Code::InvalidArgument,
        &["wait_time_ms"],
    );
    assert_rejected(
        "consume visibility_timeout_ms 13 h",
        messages.consume(req(consume(1, 0, 13 * 3_600_000))).await,
        Code::InvalidArgument,
        &["visibility_timeout_ms"],
    );

    // Receipts.
    let ack = |receipts: Vec<&str>| AckRequest {
        queue: QUEUE.to_string(),
        receipts: receipts.into_iter().map(String::from).collect(),
    };
    assert_rejected(
        "ack a malformed receipt",
        messages.ack(req(ack(vec!["not-a-receipt"]))).await,
        Code::InvalidArgument,
        &["receipt", "not-a-receipt"],
    );
    assert_rejected("ack no receipts", messages.ack(req(ack(vec![]))).await, Code::InvalidArgument, &["receipts"]);
    let nack = NackRequest { queue: QUEUE.to_string(), receipts: vec!["not-a-receipt".into()], delay_ms: Some(0) };
    assert_rejected("nack a malformed receipt", messages.nack(req(nack)).await, Code::InvalidArgument, &["receipt"]);

    // A stale receipt is not an error of the call: it is reported in `failed`.
    client.produce(QUEUE, ["settle me"]).await.expect("produce a good message");
    let leased = client.consume(QUEUE, 1, 5000, 60_000).await.expect("consume a good message");
    assert_eq!(leased.len(), 1, "{leased:?}");
    let receipt = leased[0].receipt.clone();
    let first = client.ack(QUEUE, vec![receipt.clone()]).await.expect("ack");
    assert_eq!((first.succeeded, first.failed.len()), (1, 0), "{first:?}");
    let stale = client.ack(QUEUE, vec![receipt.clone()]).await.expect("ack with a stale receipt is answered");
    assert_eq!(stale.succeeded, 0, "{stale:?}");
    assert_eq!(stale.failed.len(), 1, "{stale:?}");
    assert_eq!(stale.failed[0].receipt, receipt);
    assert_eq!(stale.failed[0].reason(), Reason::MessageGone, "{stale:?}");
    let nack = NackRequest { queue: QUEUE.to_string(), receipts: vec![receipt.clone()], delay_ms: Some(0) };
    let stale_nack = messages.nack(req(nack)).await.expect("nack with a stale receipt is answered").into_inner();
    assert_eq!((stale_nack.succeeded, stale_nack.failed.len()), (0, 1), "{stale_nack:?}");

    // Subscriptions: a seek without a target, an unknown start, a message
    // for a subscription the queue does not have, a receipt naming another
    // subscription.
    let seek = SeekRequest { queue: QUEUE.into(), subscription: String::new(), target: None };
    assert_rejected("seek without a target", queues.seek(req(seek)).await, Code::InvalidArgument, &["target"]);
    let start = CreateSubscriptionRequest { queue: QUEUE.into(), name: "s".into(), start: 7 };
    assert_rejected("unknown start", queues.create_subscription(req(start)).await, Code::InvalidArgument, &["start"]);
    let targeted = ProduceMessage { subscription: "ghost".into(), ..message("x") };
    assert_rejected(
        "produce to an unknown subscription",
        messages.produce(req(produce(QUEUE, vec![targeted]))).await,
        Code::NotFound,
        &["ghost"],
    );
    let foreign = format!("r2-5-0-{}", 1);
    let other = client.ack(QUEUE, vec![foreign]).await.expect("a receipt of an unknown subscription is answered");
    assert_eq!((other.succeeded, other.failed.len()), (0, 1), "{other:?}");
    assert_eq!(other.failed[0].reason(), Reason::MessageGone, "{other:?}");

    // The server is still up and serving, on every node.
    cluster.assert_running();
    cluster.wait_ready(Duration::from_secs(10)).await;
    client.produce(QUEUE, ["still alive"]).await.expect("produce after the bad input");
    let after = client.consume(QUEUE, 10, 5000, 60_000).await.expect("consume after the bad input");
    assert_eq!(after.iter().map(|m| &m.body[..]).collect::<Vec<_>>(), vec![b"still alive".as_slice()]);
    client.ack(QUEUE, vec![after[0].receipt.clone()]).await.expect("ack after the bad input");
    poll_until(Duration::from_secs(10), "the queue's depth is 0", async || {
        let stats = client.get_queue(QUEUE).await.ok()?.stats?;
        (stats.depth == 0).then_some(())
    })
    .await;
}
