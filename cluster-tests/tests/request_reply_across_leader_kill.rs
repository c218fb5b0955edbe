//! Request/reply through the public API: a worker consumes requests and
//! answers with Reply; Request returns the matching reply; a request whose
//! reply comes after its deadline gets DEADLINE_EXCEEDED naming the
//! correlation id, and the late reply is kept in the reply queue where
//! Consume by correlation id finds it; a request survives kill -9 of the
//! reply queue's leader while it waits; a retried request is stored once;
//! bad requests get clear statuses.

use std::time::Duration;

use raftmq_cluster_tests::pb::{
    ConsumeRequest, ProduceMessage, QueueConfig, ReplyRequest, RequestRequest, RequestResponse,
};
use raftmq_cluster_tests::{CALL_TIMEOUT, Client, READY_TIMEOUT, TestCluster, body_text, request_with_timeout};
use tonic::{Code, Status};

const REQUESTS: &str = "rpc";
const REPLIES: &str = "rpc.replies";

async fn call(client: &Client, body: &str, correlation_id: &str, timeout: Duration) -> Result<RequestResponse, Status> {
    let request = RequestRequest {
        queue: REQUESTS.into(),
        message: Some(ProduceMessage { body: body.as_bytes().to_vec().into(), ..Default::default() }),
        reply_queue: REPLIES.into(),
        correlation_id: correlation_id.into(),
    };
    Ok(client.messages.clone().request(request_with_timeout(request, timeout)).await?.into_inner())
}

/// Takes one request from the queue and answers it with "re: <body>" after
/// `delay`; returns the request's correlation id.
async fn serve_one(client: &Client, delay: Duration) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no request arrived within 60 s");
        let Ok(mut got) = client.consume(REQUESTS, 1, 1000, 30_000).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Some(request) = got.pop() else { continue };
        let reply_to = request.headers.get("raftmq-reply-to").cloned().expect("a reply-to header");
        let correlation_id = request.headers.get("raftmq-correlation-id").cloned().expect("a correlation id header");
        assert_eq!(reply_to, REPLIES);
        tokio::time::sleep(delay).await;
        let reply = ReplyRequest {
            reply_to,
            correlation_id: correlation_id.clone(),
            message: Some(ProduceMessage { body: format!("re: {}", body_text(&request)).into(), ..Default::default() }),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.messages.clone().reply(request_with_timeout(reply.clone(), CALL_TIMEOUT)).await {
                Ok(_) => break,
                Err(status) if tokio::time::Instant::now() < deadline => {
                    println!("reply failed ({status:?}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("reply: {status:?}"),
            }
        }
        client.ack(REQUESTS, vec![request.receipt]).await.expect("ack the request");
        return correlation_id;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_across_leader_kill() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.create_queue(REQUESTS, QueueConfig::default()).await;
    let replies_leader =
        cluster.create_queue(REPLIES, QueueConfig { message_ttl_ms: 120_000, ..Default::default() }).await;
    let others: Vec<u64> = cluster.node_ids().into_iter().filter(|id| *id != replies_leader).collect();
    let caller = cluster.client(others[0]);
    let worker = cluster.client(others[1]);

    // A plain round trip.
    let served = tokio::spawn({
        let worker = worker.clone();
        async move { serve_one(&worker, Duration::ZERO).await }
    });
    let answer = call(&caller, "ping", "", Duration::from_secs(20)).await.expect("request");
    let reply = answer.reply.expect("a reply");
    assert_eq!(body_text(&reply), "re: ping");
    assert_eq!(reply.correlation_id, answer.correlation_id);
    assert_eq!(served.await.expect("worker"), answer.correlation_id);

    // The reply comes after the deadline: the caller gets DEADLINE_EXCEEDED,
    // and the reply is kept.
    let late = call(&caller, "slow", "late-1", Duration::from_secs(3)).await.expect_err("no reply in time");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(late.message().contains("late-1") && late.message().contains(REPLIES), "{late:?}");
    assert_eq!(serve_one(&worker, Duration::ZERO).await, "late-1");
    let kept = ConsumeRequest {
        queue: REPLIES.into(),
        max_messages: 10,
        wait_time_ms: 5_000,
        correlation_id: "late-1".into(),
        ..Default::default()
    };
    let kept = caller.messages.clone().consume(request_with_timeout(kept, CALL_TIMEOUT * 2)).await.expect("consume");
    let kept = kept.into_inner().messages;
    assert_eq!(kept.len(), 1, "the late reply is kept and found by its correlation id");
    assert_eq!(body_text(&kept[0]), "re: slow");
    caller.ack(REPLIES, vec![kept[0].receipt.clone()]).await.expect("ack the late reply");

    // The reply queue's leader dies while a request waits.
    let served = tokio::spawn({
        let worker = worker.clone();
        async move { serve_one(&worker, Duration::from_secs(3)).await }
    });
    let waiting = tokio::spawn({
        let caller = caller.clone();
        async move { call(&caller, "through a failover", "failover-1", Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(replies_leader);
    println!("killed node {replies_leader}, leader of {REPLIES}, while a request waits");
    let answer = waiting.await.expect("caller task").expect("request across the failover");
    assert_eq!(body_text(&answer.reply.expect("a reply")), "re: through a failover");
    assert_eq!(served.await.expect("worker"), "failover-1");

    // A retried request (same correlation id) is stored once.
    let first = call(&caller, "twice", "dup-1", Duration::from_secs(3)).await.expect_err("nobody serves yet");
    assert_eq!(first.code(), Code::DeadlineExceeded);
    let served = tokio::spawn({
        let worker = worker.clone();
        async move { serve_one(&worker, Duration::ZERO).await }
    });
    let answer = call(&caller, "twice", "dup-1", Duration::from_secs(20)).await.expect("retried request");
    assert_eq!(body_text(&answer.reply.expect("a reply")), "re: twice");
    assert_eq!(served.await.expect("worker"), "dup-1");
    let extra = worker.consume(REQUESTS, 10, 1_000, 30_000).await.expect("consume");
    assert!(extra.is_empty(), "the retried request was stored twice: {extra:?}");

    // Bad input.
    let missing = RequestRequest {
        queue: REQUESTS.into(),
        message: Some(ProduceMessage { body: b"x".to_vec().into(), ..Default::default() }),
        reply_queue: "no-such-queue".into(),
        correlation_id: String::new(),
    };
    let status = caller.messages.clone().request(request_with_timeout(missing, CALL_TIMEOUT)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("no-such-queue"), "{status:?}");
    let anonymous = ReplyRequest {
        reply_to: REPLIES.into(),
        correlation_id: String::new(),
        message: Some(ProduceMessage { body: b"x".to_vec().into(), ..Default::default() }),
    };
    let status = caller.messages.clone().reply(request_with_timeout(anonymous, CALL_TIMEOUT)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("correlation_id"), "{status:?}");

    cluster.restart(replies_leader);
    cluster.wait_ready(READY_TIMEOUT).await;
    cluster.assert_running();
}
