//! `raftmq bench`: drives a running cluster with producers and consumers and
//! reports throughput and latency percentiles, plus one machine-readable line.
//!
//! Produce latency is the time of one Produce call (a batch), from sending to
//! the committed answer. End-to-end latency is from a message's publish time
//! (the leader's clock) to its receipt by a consumer; on one machine both
//! clocks are the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raftmq_client::{Client, v1 as pb};
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Queue to use; created if missing.
    #[arg(long, default_value = "bench")]
    queue: String,
    #[arg(long, default_value_t = 4)]
    producers: u32,
    #[arg(long, default_value_t = 4)]
    consumers: u32,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    message_size: usize,
    /// Messages per Produce call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// How long producers run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// After the producers stop, how long consumers may take to drain.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
    /// Send every call to the first endpoint, whichever node leads the queue,
    /// instead of to the leader: measures the forwarding hop.
    #[arg(long)]
    any_node: bool,
}

#[derive(Default)]
struct Samples {
    produce_call: Vec<Duration>,
    end_to_end: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One node's write-ahead log counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Wal {
    node: u64,
    syncs: u64,
    requests: u64,
    micros: u64,
}

/// Each reachable node's WAL counters, asked of every endpoint itself (not
/// forwarded), so the counters are its own.
async fn wal_counters(endpoints: &[String]) -> Vec<Wal> {
    let mut counters = Vec::new();
    for endpoint in endpoints {
        let Ok(client) = Client::connect(std::slice::from_ref(endpoint)) else { continue };
        if let Ok(status) = client.with_deadline(Duration::from_secs(3)).cluster_status().await {
            counters.push(Wal {
                node: status.node_id,
                syncs: status.wal_syncs,
                requests: status.wal_sync_requests,
                micros: status.wal_sync_micros,
            });
        }
    }
    counters
}

/// The counters' growth between two readings, summed over the nodes in both
/// (`node` holds how many).
fn wal_delta(before: &[Wal], after: &[Wal]) -> Wal {
    let mut delta = Wal::default();
    for now in after {
        if let Some(then) = before.iter().find(|w| w.node == now.node) {
            delta.syncs += now.syncs.saturating_sub(then.syncs);
            delta.requests += now.requests.saturating_sub(then.requests);
            delta.micros += now.micros.saturating_sub(then.micros);
            delta.node += 1;
        }
    }
    delta
}

pub async fn run(client: &Client, endpoints: &[String], args: BenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > 1000 || args.message_size == 0 {
        anyhow::bail!("--batch must be 1 to 1000 and --message-size at least 1");
    }
    match client.create_queue(&args.queue, None).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    if !args.any_node {
        // A new queue elects its leader first.
        let elected_by = Instant::now() + Duration::from_secs(10);
        while Instant::now() < elected_by {
            let leader = client.get_queue(&args.queue).await.ok().and_then(|q| q.stats).map_or(0, |s| s.leader_id);
            if leader != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match client.prefer_leader_of(&args.queue).await {
            Ok(true) => eprintln!("sending calls to the leader of {}", args.queue),
            Ok(false) => eprintln!("the leader of {} is not among the endpoints; calls are forwarded", args.queue),
            Err(e) => eprintln!("could not find the leader of {} ({e}); calls may be forwarded", args.queue),
        }
    }
    let wal_before = wal_counters(endpoints).await;
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let producing = Arc::new(AtomicBool::new(true));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let produce_until = started + Duration::from_secs(args.duration_secs);

    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let (client, queue, produced, samples) =
            (client.clone(), args.queue.clone(), produced.clone(), samples.clone());
        let batch: Vec<pb::ProduceMessage> = (0..args.batch)
            .map(|_| pb::ProduceMessage { body: vec![b'x'; args.message_size], ..Default::default() })
            .collect();
        producers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < produce_until {
                let sent = Instant::now();
                client.produce(&queue, batch.clone()).await?;
                latencies.push(sent.elapsed());
                produced.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            samples.lock().await.produce_call.extend(latencies);
            anyhow::Ok(())
        }));
    }
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let (client, queue, produced, consumed, producing, samples) = (
            client.clone(),
            args.queue.clone(),
            produced.clone(),
            consumed.clone(),
            producing.clone(),
            samples.clone(),
        );
        let drain_until = produce_until + Duration::from_secs(args.drain_secs);
        consumers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let done = !producing.load(Ordering::Relaxed)
                    && consumed.load(Ordering::Relaxed) >= produced.load(Ordering::Relaxed);
                if done || Instant::now() > drain_until {
                    break;
                }
                let messages = client.consume(&queue, 256, Duration::from_millis(200), None).await?;
                if messages.is_empty() {
                    continue;
                }
                let received = now_ms();
                latencies
                    .extend(messages.iter().map(|m| Duration::from_millis(received.saturating_sub(m.publish_time_ms))));
                let receipts = messages.iter().map(|m| m.receipt.clone()).collect();
                client.ack(&queue, receipts).await?;
                consumed.fetch_add(messages.len() as u64, Ordering::Relaxed);
            }
            samples.lock().await.end_to_end.extend(latencies);
            anyhow::Ok(())
        }));
    }

    // Progress once a second while producing.
    let (mut last_p, mut last_c) = (0, 0);
    while Instant::now() < produce_until {
        tokio::time::sleep(Duration::from_secs(1).min(produce_until.saturating_duration_since(Instant::now()))).await;
        let (p, c) = (produced.load(Ordering::Relaxed), consumed.load(Ordering::Relaxed));
        eprintln!(
            "{:>5.1}s  produced {:>9} (+{:>7})  consumed {:>9} (+{:>7})",
            started.elapsed().as_secs_f64(),
            p,
            p - last_p,
            c,
            c - last_c
        );
        (last_p, last_c) = (p, c);
    }
    for producer in producers {
        producer.await??;
    }
    let produce_secs = started.elapsed().as_secs_f64();
    producing.store(false, Ordering::Relaxed);
    for consumer in consumers {
        consumer.await??;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let wal = wal_delta(&wal_before, &wal_counters(endpoints).await);
    let (fsyncs, fsync_requests, nodes) = (wal.syncs, wal.requests, wal.node);
    let fsync_mean_ms = wal.micros as f64 / 1000.0 / fsyncs.max(1) as f64;

    let mut samples = samples.lock().await;
    samples.produce_call.sort();
    samples.end_to_end.sort();
    let (p, c) = (produced.load(Ordering::Relaxed), consumed.load(Ordering::Relaxed));
    let summary = json!({
        "queue": args.queue, "producers": args.producers, "consumers": args.consumers,
        "message_size": args.message_size, "batch": args.batch,
        "produced": p, "consumed": c,
        "produce_msgs_per_sec": p as f64 / produce_secs,
        "consume_msgs_per_sec": c as f64 / total_secs,
        "produce_call_ms": {"p50": percentile(&samples.produce_call, 50.0), "p99": percentile(&samples.produce_call, 99.0), "p999": percentile(&samples.produce_call, 99.9)},
        "end_to_end_ms": {"p50": percentile(&samples.end_to_end, 50.0), "p99": percentile(&samples.end_to_end, 99.0), "p999": percentile(&samples.end_to_end, 99.9)},
        "wal_fsyncs": fsyncs, "wal_fsync_requests": fsync_requests, "wal_nodes": nodes, "fsync_mean_ms": fsync_mean_ms,
        "fsyncs_per_1000_messages": fsyncs as f64 * 1000.0 / p.max(1) as f64,
    });
    println!(
        "produced {p} in {produce_secs:.1}s ({:.0} msg/s), consumed {c} in {total_secs:.1}s ({:.0} msg/s)",
        p as f64 / produce_secs,
        c as f64 / total_secs
    );
    println!(
        "produce call (batch of {}) ms: p50 {:.1}  p99 {:.1}  p999 {:.1}",
        args.batch,
        percentile(&samples.produce_call, 50.0),
        percentile(&samples.produce_call, 99.0),
        percentile(&samples.produce_call, 99.9)
    );
    println!(
        "end to end ms: p50 {:.1}  p99 {:.1}  p999 {:.1}",
        percentile(&samples.end_to_end, 50.0),
        percentile(&samples.end_to_end, 99.0),
        percentile(&samples.end_to_end, 99.9)
    );
    println!(
        "fsyncs on {nodes} nodes: {fsyncs} for {fsync_requests} appends and votes, {:.1} per 1000 produced messages \
         (consume and ack entries included), {fsync_mean_ms:.1} ms each on average",
        fsyncs as f64 * 1000.0 / p.max(1) as f64
    );
    println!("BENCH {summary}");
    if c < p {
        anyhow::bail!("only {c} of {p} produced messages were consumed within --drain-secs");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_by_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), 51.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn wal_delta_counts_only_nodes_read_twice() {
        let wal = |node, syncs, requests, micros| Wal { node, syncs, requests, micros };
        let before = [wal(1, 10, 20, 1000), wal(2, 5, 5, 0)];
        let after = [wal(1, 15, 40, 4000), wal(2, 6, 9, 500), wal(3, 100, 100, 9)];
        assert_eq!(wal_delta(&before, &after), wal(2, 6, 24, 3500));
    }
}
