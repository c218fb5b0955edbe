//! Streaming consume through the public API: the server pushes no more than
//! the credit allows (in messages and in bytes), settling on the stream frees
//! credit, a nack comes back on the stream, a stream served by a follower
//! keeps delivering and acking across kill -9 of the queue's leader without
//! redelivering anything acked, and a closed stream's unsettled messages come
//! back after their lease.

use std::collections::BTreeSet;
use std::time::Duration;

use raftmq_cluster_tests::pb::stream_consume_request::Request as Req;
use raftmq_cluster_tests::pb::stream_consume_response::Response as Resp;
use raftmq_cluster_tests::pb::stream_settle::Action;
use raftmq_cluster_tests::pb::{
    Message, QueueConfig, StreamConsumeRequest, StreamCredit, StreamOpen, StreamSettle, StreamSettled,
};
use raftmq_cluster_tests::{Client, READY_TIMEOUT, TestCluster, body_text};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const QUEUE: &str = "streamed";
const MESSAGES: usize = 30;
/// Long enough that no lease runs out (and frees credit) while the test
/// checks the credit.
const LEASE_MS: u64 = 30_000;
const EXTEND_MS: u64 = 60_000;
/// For the closed stream's message, which must come back soon.
const SHORT_LEASE_MS: u64 = 3_000;
/// Long enough for a push the credit allows to arrive on loopback.
const QUIET: Duration = Duration::from_millis(1_500);

struct Stream {
    requests: mpsc::Sender<StreamConsumeRequest>,
    responses: Streaming<raftmq_cluster_tests::pb::StreamConsumeResponse>,
    next_id: u64,
}

impl Stream {
    async fn open(client: &Client, credit: StreamCredit, lease_ms: u64) -> Stream {
        let (requests, rx) = mpsc::channel(16);
        let open = StreamOpen {
            queue: QUEUE.into(),
            visibility_timeout_ms: lease_ms,
            credit: Some(credit),
            ..Default::default()
        };
        requests.send(StreamConsumeRequest { request: Some(Req::Open(open)) }).await.expect("send open");
        let responses = client
            .messages
            .clone()
            .stream_consume(ReceiverStream::new(rx))
            .await
            .expect("open the stream")
            .into_inner();
        Stream { requests, responses, next_id: 1 }
    }

    async fn credit(&self, max_messages: u32, max_bytes: u64) {
        let credit = StreamCredit { max_messages, max_bytes };
        self.requests.send(StreamConsumeRequest { request: Some(Req::Credit(credit)) }).await.expect("send credit");
    }

    /// Sends a settle and returns its id; an extend asks for `EXTEND_MS`.
    async fn settle(&mut self, action: Action, messages: &[Message], delay_ms: Option<u64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let settle = StreamSettle {
            id,
            receipts: messages.iter().map(|m| m.receipt.clone()).collect(),
            action: action as i32,
            delay_ms,
            visibility_timeout_ms: if action == Action::Extend { EXTEND_MS } else { 0 },
        };
        self.requests.send(StreamConsumeRequest { request: Some(Req::Settle(settle)) }).await.expect("send settle");
        id
    }

    /// The next response within `timeout`, or `None`.
    async fn next(&mut self, timeout: Duration) -> Option<Resp> {
        match tokio::time::timeout(timeout, self.responses.message()).await {
            Err(_) => None,
            Ok(Ok(Some(response))) => response.response,
            Ok(Ok(None)) => panic!("the server ended the stream"),
            Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        }
    }

    /// Messages until `n` arrived (settle answers go to `settled`); panics after 30 s.
    async fn messages(&mut self, n: usize, settled: &mut Vec<StreamSettled>) -> Vec<Message> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Resp::Messages(batch)) => got.extend(batch.messages),
                Some(Resp::Settled(s)) => settled.push(s),
                None => panic!("only {} of {n} messages arrived within 30 s", got.len()),
            }
        }
        got
    }

    /// Asserts nothing but settle answers arrive for `QUIET`.
    async fn assert_quiet(&mut self, why: &str, settled: &mut Vec<StreamSettled>) {
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                None => return,
                Some(Resp::Settled(s)) => settled.push(s),
                Some(Resp::Messages(batch)) => {
                    panic!("{why}: {} messages pushed beyond the credit", batch.messages.len())
                }
            }
        }
    }

    /// Waits for the answer to settle `id`; returns (succeeded, receipts that failed).
    async fn settled(
        &mut self,
        id: u64,
        settled: &mut Vec<StreamSettled>,
        pushed: &mut Vec<Message>,
    ) -> (u32, Vec<String>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = settled.iter().find(|s| s.id == id) {
                let result = s.result.clone().expect("a settle result");
                return (result.succeeded, result.failed.into_iter().map(|f| f.receipt).collect());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Resp::Settled(s)) => settled.push(s),
                Some(Resp::Messages(batch)) => pushed.extend(batch.messages),
                None => panic!("no answer to settle {id} within 30 s"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consume_with_credit() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let config = QueueConfig { retry_backoff_min_ms: Some(0), retry_backoff_max_ms: Some(0), ..Default::default() };
    let leader = cluster.create_queue(QUEUE, config).await;
    let server = cluster.node_ids().into_iter().find(|id| *id != leader).expect("a follower");
    let client = cluster.client(server);
    // Ten bytes each.
    let bodies: Vec<String> = (0..MESSAGES).map(|i| format!("m-{i:02}-pad!!")).collect();
    assert!(bodies.iter().all(|b| b.len() == 10));
    client.produce(QUEUE, bodies.iter().map(|b| b.as_bytes().to_vec())).await.expect("produce");
    let mut settled = Vec::new();

    // Five messages of credit: five arrive, then nothing.
    let mut stream = Stream::open(&client, StreamCredit { max_messages: 5, max_bytes: 0 }, LEASE_MS).await;
    let mut held = stream.messages(5, &mut settled).await;
    assert_eq!(held.len(), 5, "one push may not exceed the credit");
    stream.assert_quiet("credit of 5 messages", &mut settled).await;

    // Acking two frees two.
    let acked: Vec<Message> = held.drain(..2).collect();
    let id = stream.settle(Action::Ack, &acked, None).await;
    let mut pushed = Vec::new();
    assert_eq!(stream.settled(id, &mut settled, &mut pushed).await, (2, vec![]));
    let more = stream.messages(2usize.saturating_sub(pushed.len()), &mut settled).await;
    held.append(&mut pushed);
    held.extend(more);
    assert_eq!(held.len(), 5);
    stream.assert_quiet("credit of 5 messages after 2 acks", &mut settled).await;

    // A byte credit: 5 outstanding × 10 bytes = 50; 80 bytes leave room for 3.
    stream.credit(100, 80).await;
    held.extend(stream.messages(3, &mut settled).await);
    stream.assert_quiet("credit of 80 bytes", &mut settled).await;
    assert_eq!(held.len(), 8);

    // Extending leases on the stream succeeds and keeps the messages outstanding.
    let id = stream.settle(Action::Extend, &held[..2], None).await;
    assert_eq!(stream.settled(id, &mut settled, &mut pushed).await, (2, vec![]));
    assert!(pushed.is_empty(), "{} messages pushed beyond the credit after an extend", pushed.len());
    stream.assert_quiet("credit of 80 bytes after an extend", &mut settled).await;

    // A nack with no delay (the queue's backoff is 0) comes back on the stream.
    let nacked = held.remove(0);
    let id = stream.settle(Action::Nack, std::slice::from_ref(&nacked), None).await;
    assert_eq!(stream.settled(id, &mut settled, &mut pushed).await, (1, vec![]));
    let again = if pushed.is_empty() { stream.messages(1, &mut settled).await } else { std::mem::take(&mut pushed) };
    assert_eq!(again.len(), 1);
    assert_eq!((body_text(&again[0]), again[0].delivery_attempt), (body_text(&nacked), 2));
    held.extend(again);

    // Open the credit and kill the leader: the stream (served by a follower)
    // goes on delivering and acking through the new leader.
    stream.credit(1000, 0).await;
    cluster.kill(leader);
    println!("killed node {leader}, the queue's leader; the stream is served by node {server}");
    let mut acked_bodies: BTreeSet<String> = acked.iter().map(body_text).collect();
    let mut outstanding = held;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked_bodies.len() < MESSAGES {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {MESSAGES} acked within 60 s", acked_bodies.len());
        if !outstanding.is_empty() {
            let batch: Vec<Message> = std::mem::take(&mut outstanding);
            let id = stream.settle(Action::Ack, &batch, None).await;
            let (ok, failed) = stream.settled(id, &mut settled, &mut outstanding).await;
            // A lease may have run out during the failover; the message then comes back.
            assert_eq!(ok as usize + failed.len(), batch.len());
            if !failed.is_empty() {
                println!("{} of {} acks failed during the failover (leases ran out)", failed.len(), batch.len());
            }
            acked_bodies.extend(batch.iter().filter(|m| !failed.contains(&m.receipt)).map(body_text));
            for m in &outstanding {
                assert!(!acked_bodies.contains(&body_text(m)), "acked {} delivered again", body_text(m));
            }
            continue;
        }
        match stream.next(Duration::from_secs(5)).await {
            Some(Resp::Messages(batch)) => {
                for m in batch.messages {
                    assert!(!acked_bodies.contains(&body_text(&m)), "acked {} delivered again", body_text(&m));
                    outstanding.push(m);
                }
            }
            Some(Resp::Settled(s)) => settled.push(s),
            None => {}
        }
    }
    assert_eq!(acked_bodies, bodies.iter().cloned().collect::<BTreeSet<_>>());
    drop(stream);
    // Settle ids are per stream.
    settled.clear();

    // A closed stream's unsettled message comes back after its lease.
    cluster.restart(leader);
    cluster.wait_ready(READY_TIMEOUT).await;
    client.produce(QUEUE, ["left behind"]).await.expect("produce");
    let mut first = Stream::open(&client, StreamCredit { max_messages: 1, max_bytes: 0 }, SHORT_LEASE_MS).await;
    let taken = first.messages(1, &mut settled).await;
    assert_eq!(body_text(&taken[0]), "left behind");
    drop(first);
    let mut second =
        Stream::open(&cluster.client(leader), StreamCredit { max_messages: 10, max_bytes: 0 }, LEASE_MS).await;
    let back = second.messages(1, &mut settled).await;
    assert_eq!((body_text(&back[0]), back[0].delivery_attempt), ("left behind".to_string(), 2));
    let id = second.settle(Action::Ack, &back, None).await;
    assert_eq!(second.settled(id, &mut settled, &mut Vec::new()).await, (1, vec![]));
    cluster.assert_running();
}
