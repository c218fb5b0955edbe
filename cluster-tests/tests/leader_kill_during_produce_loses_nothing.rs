//! Proves that an acknowledged produce survives kill -9 of the queue's leader
//! in the middle of a stream of produces and consumes: producers see the queue
//! writable again within seconds, every produce that returned OK is consumed
//! (during the run or afterwards) at the offset it was given, no message acked
//! during the run is delivered again, and the killed node catches up on restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::{Client, READY_TIMEOUT, TestCluster, body_text, is_retryable, poll_until};
use tokio::task::JoinSet;
use tokio::time::Instant;

const QUEUE: &str = "failover";
const N_PRODUCERS: usize = 4;
const BATCH: usize = 10;
/// Produced before the kill, so that the kill lands mid-stream.
const MIN_CONFIRMED_BEFORE_KILL: usize = 300;
const MAX_RECOVERY: Duration = Duration::from_secs(10);
const VISIBILITY_TIMEOUT_MS: u64 = 300_000;

/// What one producer saw.
#[derive(Default)]
struct ProducerReport {
    /// Produces that returned OK: each body with the offset it was given.
    confirmed: Vec<(String, u64)>,
    /// Bodies of produces that failed with an unknown outcome: they may or
    /// may not have been appended.
    unknown: Vec<String>,
}

/// Produces numbered batches through `client` until `stop`, retrying after
/// UNAVAILABLE and transport errors. Every success is recorded in
/// `successes` as (when the call was sent, when it returned OK).
async fn produce_until_stopped(
    producer: usize,
    client: Client,
    stop: Arc<AtomicBool>,
    successes: Arc<Mutex<Vec<(Instant, Instant)>>>,
) -> ProducerReport {
    let mut report = ProducerReport::default();
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let bodies: Vec<String> = (seq..seq + BATCH).map(|i| format!("p{producer}-{i:06}")).collect();
        seq += BATCH;
        let sent_at = Instant::now();
        match client.produce(QUEUE, bodies.clone()).await {
            Ok(offsets) => {
                assert_eq!(offsets.len(), BATCH, "one offset per message");
                successes.lock().expect("lock successes").push((sent_at, Instant::now()));
                report.confirmed.extend(bodies.into_iter().zip(offsets));
            }
            Err(status) if is_retryable(&status) => {
                report.unknown.extend(bodies);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("producer {producer} via {}: unexpected error {status:?}", client.endpoint),
        }
    }
    report
}

/// Lease of the consumer that runs during the kill: short, so that messages it
/// leased under a consume whose answer was lost come back for the final drain.
const LIVE_VISIBILITY_TIMEOUT_MS: u64 = 5_000;

/// Consumes and acks through `client` until `stop`, retrying through the
/// failover. Returns (offset, body) of every message whose ack took effect.
async fn consume_until_stopped(client: Client, stop: Arc<AtomicBool>) -> Vec<(u64, String)> {
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let messages = match client.consume(QUEUE, 100, 200, LIVE_VISIBILITY_TIMEOUT_MS).await {
            Ok(messages) => messages,
            Err(status) if is_retryable(&status) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(status) => panic!("live consumer via {}: unexpected error {status:?}", client.endpoint),
        };
        if messages.is_empty() {
            continue;
        }
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
        // An ack whose answer was lost is retried with the same receipts:
        // leases are replicated, so the new leader knows them. MESSAGE_GONE on
        // a retry means the first attempt took effect.
        let deadline = Instant::now() + Duration::from_secs(30);
        let settled = loop {
            match client.ack(QUEUE, receipts.clone()).await {
                Ok(settled) => break settled,
                Err(status) if is_retryable(&status) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("live consumer ack via {}: {status:?}", client.endpoint),
            }
        };
        let lease_gone: HashSet<&String> = settled
            .failed
            .iter()
            .filter(|f| f.reason() == raftmq_cluster_tests::pb::failed_receipt::Reason::LeaseGone)
            .map(|f| &f.receipt)
            .collect();
        for message in &messages {
            // LEASE_GONE: the lease ran out first; the message comes back later.
            if !lease_gone.contains(&message.receipt) {
                acked.push((message.offset, body_text(message)));
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_during_produce_loses_nothing() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let followers: Vec<u64> = cluster.node_ids().into_iter().filter(|id| *id != leader).collect();
    // Two producers per follower. They keep their node; none talks to the
    // leader, which is about to die.
    let targets: Vec<u64> = (0..N_PRODUCERS).map(|p| followers[p % followers.len()]).collect();
    println!("queue {QUEUE} is led by node {leader}; producers target nodes {targets:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let mut producers = JoinSet::new();
    for (producer, node) in targets.iter().enumerate() {
        producers.spawn(produce_until_stopped(producer, cluster.client(*node), stop.clone(), successes.clone()));
    }

    // One consumer on the other follower runs through the kill too.
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let live_consumer = tokio::spawn(consume_until_stopped(cluster.client(followers[1]), stop_consumer.clone()));

    let n_successes = || successes.lock().expect("lock successes").len();
    poll_until(Duration::from_secs(60), "enough produces succeed before the kill", async || {
        (n_successes() * BATCH >= MIN_CONFIRMED_BEFORE_KILL).then_some(())
    })
    .await;
    cluster.kill(leader);
    let killed_at = Instant::now();

    // Only produces sent after the kill count: one the old leader committed
    // just before dying can still return OK a moment after the kill.
    let recovered_at = poll_until(Duration::from_secs(60), "a produce sent after the kill succeeds", async || {
        let successes = successes.lock().expect("lock successes");
        successes.iter().filter(|(sent_at, _)| *sent_at > killed_at).map(|(_, done_at)| *done_at).min()
    })
    .await;
    let recovery = recovered_at - killed_at;
    println!("first successful produce {recovery:?} after kill -9 of leader node {leader}");

    // Let the new leader take some load, then stop the producers.
    let before = n_successes();
    poll_until(Duration::from_secs(30), "more produces succeed on the new leader", async || {
        (n_successes() >= before + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut confirmed: HashMap<String, u64> = HashMap::new();
    let mut unknown: HashSet<String> = HashSet::new();
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(report) = producers.join_next().await {
            let report = report.expect("a producer task panicked");
            confirmed.extend(report.confirmed);
            unknown.extend(report.unknown);
        }
    })
    .await;
    assert!(joined.is_ok(), "producers did not stop within 60 s");
    stop_consumer.store(true, Ordering::Relaxed);
    let acked_live = tokio::time::timeout(Duration::from_secs(60), live_consumer)
        .await
        .expect("the live consumer did not stop within 60 s")
        .expect("the live consumer panicked");
    println!("the live consumer acked {} messages during the run", acked_live.len());
    assert!(!acked_live.is_empty(), "the live consumer acked nothing");
    println!("{} messages confirmed, {} of unknown outcome", confirmed.len(), unknown.len());
    assert!(
        recovery < MAX_RECOVERY,
        "produces failed for {recovery:?} after the leader died; the limit is {MAX_RECOVERY:?}"
    );

    // Every confirmed message is there, at its offset; nothing else is.
    let consumer = cluster.client(followers[0]);
    let acked_live_offsets: HashSet<u64> = acked_live.iter().map(|(offset, _)| *offset).collect();
    let mut delivered: HashMap<u64, String> = acked_live.iter().cloned().collect();
    let mut delivered_bodies: HashSet<String> = acked_live.iter().map(|(_, body)| body.clone()).collect();
    let mut empty_in_a_row = 0;
    let started = Instant::now();
    // Until every confirmed message is seen and the queue is empty, or
    // nothing comes for 5 consumes in a row (then the check below says what
    // is missing).
    loop {
        assert!(started.elapsed() < Duration::from_secs(180), "draining the queue took over 180 s");
        let messages =
            consumer.consume(QUEUE, 1000, 1000, VISIBILITY_TIMEOUT_MS).await.expect("consume after failover");
        if messages.is_empty() {
            empty_in_a_row += 1;
            if empty_in_a_row >= 5 || confirmed.keys().all(|body| delivered_bodies.contains(body)) {
                break;
            }
            continue;
        }
        empty_in_a_row = 0;
        let mut receipts = Vec::new();
        for message in &messages {
            let text = body_text(message);
            assert!(
                confirmed.contains_key(&text) || unknown.contains(&text),
                "offset {} carries {text:?}, which no producer sent",
                message.offset
            );
            // A body can be appended twice: a node that forwards a produce
            // retries it when the old leader dies under the call.
            delivered_bodies.insert(text.clone());
            assert!(
                !acked_live_offsets.contains(&message.offset),
                "offset {} was acked during the run and delivered again",
                message.offset
            );
            assert!(delivered.insert(message.offset, text).is_none(), "offset {} delivered twice", message.offset);
            receipts.push(message.receipt.clone());
        }
        let settled = consumer.ack(QUEUE, receipts).await.expect("ack after failover");
        assert!(settled.failed.is_empty(), "{:?}", settled.failed);
    }
    let mut offsets_of: HashMap<&String, Vec<u64>> = HashMap::new();
    for (offset, body) in &delivered {
        offsets_of.entry(body).or_default().push(*offset);
    }
    let lost: Vec<&String> = confirmed.keys().filter(|body| !offsets_of.contains_key(body)).collect();
    assert!(lost.is_empty(), "{} confirmed messages were lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    for (body, offset) in &confirmed {
        assert!(
            offsets_of[body].contains(offset),
            "{body:?} was confirmed at offset {offset} but delivered at {:?}",
            offsets_of[body]
        );
    }
    let n_duplicates = delivered.len() - offsets_of.len();
    println!(
        "delivered {} messages: all {} confirmed, {} of unknown outcome, {n_duplicates} appended twice",
        delivered.len(),
        confirmed.len(),
        offsets_of.len() - confirmed.len()
    );

    // The killed node comes back and catches up with the queue's leader.
    cluster.restart(leader);
    cluster.wait_ready(READY_TIMEOUT).await;
    let new_leader = cluster.leader_of(QUEUE, Duration::from_secs(30)).await;
    let target = cluster.group_status(new_leader, QUEUE).await.expect("the leader's view of the queue").applied_index;
    let caught_up = poll_until(Duration::from_secs(60), "the restarted node catches up", async || {
        let status = cluster.group_status(leader, QUEUE).await?;
        (status.applied_index >= target).then_some(status.applied_index)
    })
    .await;
    println!("restarted node {leader} applied index {caught_up}, leader node {new_leader} had {target}");
    cluster.assert_running();
}
