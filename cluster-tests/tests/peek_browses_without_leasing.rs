//! Peek through the public API and the CLI: it shows stored messages by
//! offset range with their state (available, leased, delayed), pages with
//! `next_offset`, skips acked messages, and changes nothing: a consume after
//! it gets the same messages as first deliveries.

use std::time::Duration;

use raftmq_cluster_tests::pb::peeked_message::State;
use raftmq_cluster_tests::pb::{PeekRequest, PeekResponse, ProduceMessage, ProduceRequest, QueueConfig};
use raftmq_cluster_tests::{
    CALL_TIMEOUT, Client, READY_TIMEOUT, TestCluster, body_text, raftmq_command, request_with_timeout, run_with_timeout,
};
use tonic::Code;

const QUEUE: &str = "browse";

async fn peek(client: &Client, from: u64, to: u64, max: u32) -> Result<PeekResponse, tonic::Status> {
    let request =
        PeekRequest { queue: QUEUE.into(), from_offset: from, max_messages: max, to_offset: to, ..Default::default() };
    client.messages.clone().peek(request_with_timeout(request, CALL_TIMEOUT)).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_browses_without_leasing() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let node = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client(node);
    let messages = ["m0", "m1", "m2", "m3", "m4"]
        .iter()
        .map(|b| ProduceMessage { body: b.as_bytes().to_vec().into(), ..Default::default() })
        .chain([ProduceMessage { body: b"m5".to_vec().into(), delay_ms: 600_000, ..Default::default() }])
        .collect();
    let produce = ProduceRequest { queue: QUEUE.into(), messages };
    client.messages.clone().produce(request_with_timeout(produce, CALL_TIMEOUT)).await.expect("produce");
    // m0 leased and acked, m1 leased.
    let leased = client.consume(QUEUE, 2, 1000, 60_000).await.expect("consume");
    client.ack(QUEUE, vec![leased[0].receipt.clone()]).await.expect("ack");

    let page = peek(&client, 0, 0, 3).await.expect("peek");
    let shown: Vec<(u64, String, State, u32)> = page
        .messages
        .iter()
        .map(|m| (m.offset, String::from_utf8_lossy(&m.body).into(), m.state(), m.delivery_attempts))
        .collect();
    assert_eq!(
        shown,
        vec![
            (1, "m1".into(), State::Leased, 1),
            (2, "m2".into(), State::Available, 0),
            (3, "m3".into(), State::Available, 0)
        ]
    );
    assert!(page.messages[0].until_ms > 0, "a leased message shows when its lease ends");
    assert_eq!(page.next_offset, 4);
    let page = peek(&client, page.next_offset, 0, 3).await.expect("next page");
    assert_eq!(
        page.messages.iter().map(|m| (m.offset, m.state())).collect::<Vec<_>>(),
        vec![(4, State::Available), (5, State::Delayed)]
    );
    assert_eq!(page.next_offset, 6, "the end of the queue");
    let page = peek(&client, 2, 4, 10).await.expect("a range");
    assert_eq!(page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(page.next_offset, 4);

    // Nothing changed: the available ones come as first deliveries.
    let consumed = client.consume(QUEUE, 10, 500, 60_000).await.expect("consume after peek");
    assert_eq!(consumed.iter().map(body_text).collect::<Vec<_>>(), vec!["m2", "m3", "m4"]);
    assert!(consumed.iter().all(|m| m.delivery_attempt == 1));

    // Bad input.
    assert_eq!(peek(&client, 0, 0, 0).await.expect_err("max 0").code(), Code::InvalidArgument);
    let unknown =
        PeekRequest { queue: "nope".into(), from_offset: 0, max_messages: 1, to_offset: 0, ..Default::default() };
    let status = client.messages.clone().peek(request_with_timeout(unknown, CALL_TIMEOUT)).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    // The CLI.
    let endpoint = cluster.endpoint(node);
    let output = run_with_timeout(
        raftmq_command(["peek", QUEUE, "--from", "1", "--max", "2", "--json", "--endpoints", &endpoint]),
        None,
        Duration::from_secs(30),
    )
    .await;
    output.assert_success();
    let lines: Vec<serde_json::Value> =
        output.stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(lines.len(), 2, "{output}");
    assert_eq!((lines[0]["offset"].as_u64(), lines[0]["state"].as_str()), (Some(1), Some("leased")));
    assert_eq!((lines[1]["body"].as_str(), lines[1]["state"].as_str()), (Some("m2"), Some("leased")));
    cluster.assert_running();
}
