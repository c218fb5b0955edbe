//! `raftmq bench`: drives a running cluster with producers and consumers and
//! reports throughput and latency percentiles, plus one machine-readable line.
//!
//! Produce latency is the time of one Produce call (a batch), from sending to
//! the committed answer (under `--rate`, from the time the call was due). End-to-end latency is from a message's publish time
//! (the leader's clock) to its receipt by a consumer; on one machine both
//! clocks are the same.
//!
//! By default every producer keeps one Produce call in flight (a closed loop:
//! the offered load is whatever the cluster takes). `--rate` paces the calls
//! instead (an open loop at a fixed offered load: calls go out on schedule
//! while earlier ones are unanswered, up to 16 per producer), `--count` stops after a
//! number of messages, and `--queues` spreads producers and consumers over
//! several queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use raftmq_client::{Client, v1 as pb};
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Queue to use; created if missing. With `--queues` above 1, the name
    /// of the queues `<queue>-0` .. `<queue>-{n-1}` instead.
    #[arg(long, default_value = "bench")]
    queue: String,
    /// How many queues to spread the load over: producer i produces to queue
    /// i mod n, consumer j consumes from queue j mod n. Needs at least n
    /// producers and n consumers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    queues: u32,
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// 0 fills a backlog: producers only, nothing consumed or waited for.
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
    /// Target produce rate in messages per second, over all producers: each
    /// producer sends one call of `--batch` messages per slot of
    /// producers × batch / rate, without waiting for earlier answers (up to
    /// 16 calls in flight each); latency counts from the slot. Without it,
    /// each producer keeps one call in flight.
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Stop producing after this many messages in total (or when
    /// `--duration-secs` ends, whichever comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// After the producers stop, how long consumers may take to drain.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
    /// Ack each batch with an Ack call of its own. By default a consumer
    /// acks a batch with its next Consume (`ConsumeRequest.ack`): one Raft
    /// entry per batch instead of two.
    #[arg(long)]
    separate_acks: bool,
    /// Send every call to the first endpoint, whichever node leads the queue,
    /// instead of to the leader: measures the forwarding hop.
    #[arg(long)]
    any_node: bool,
    /// One connection per queue for all its producers and consumers, instead
    /// of one per producer and one per consumer (as separate client
    /// processes would have, and as bench/peers connects to RabbitMQ and NATS).
    #[arg(long)]
    shared_connection: bool,
    /// Bodies of random bytes, different for every message of a call,
    /// instead of a repeated `x`: RocksDB compresses what it flushes, so
    /// `x` bodies cost raftmq less disk than real payloads would.
    #[arg(long)]
    random_bodies: bool,
}

#[derive(Default)]
struct Samples {
    produce_call: Vec<Duration>,
    end_to_end: Vec<Duration>,
    /// Open loop: calls that waited for one of their producer's
    /// [`OPEN_LOOP_IN_FLIGHT`] slots, so went out after their time.
    waited_for_slot: u64,
    /// Open loop: how late each call went out, from its slot to the moment
    /// its task began the call (timer, task wake-up and slot waits: the
    /// client's own share of the produce latency, included in it).
    send_delay: Vec<Duration>,
}

/// What one producer measured.
#[derive(Default)]
struct ProducerRun {
    latencies: Vec<Duration>,
    send_delays: Vec<Duration>,
    waited_for_slot: u64,
}

/// One message body of `size` bytes: `x` repeated, or random bytes.
fn bench_body(size: usize, random: bool) -> Vec<u8> {
    if random {
        let mut body = vec![0; size];
        rand::fill(&mut body[..]);
        body
    } else {
        vec![b'x'; size]
    }
}

/// Calls one producer may have in flight under `--rate`. Calls are sent at
/// their time whatever is still unanswered, so a slow answer does not move
/// the schedule (no coordinated omission); the bound keeps a cluster that
/// cannot keep up from being buried. A call that has to wait for a slot
/// counts the wait in its latency.
const OPEN_LOOP_IN_FLIGHT: usize = 16;

/// One producer's share of the run.
struct Producer {
    client: Client,
    queue: String,
    batch: Vec<pb::ProduceMessage>,
    budget: Arc<AtomicU64>,
    produced: Arc<AtomicU64>,
    until: Instant,
}

impl Producer {
    /// The messages of the next call, or `None` when the run is over.
    fn next_call(&self) -> Option<Vec<pb::ProduceMessage>> {
        if Instant::now() >= self.until {
            return None;
        }
        let n = take_from_budget(&self.budget, self.batch.len() as u64) as usize;
        (n > 0).then(|| self.batch[..n].to_vec())
    }

    /// One call in flight at a time, each sent when the previous is answered;
    /// latency from sending to the answer.
    async fn closed_loop(self) -> anyhow::Result<ProducerRun> {
        let mut run = ProducerRun::default();
        while let Some(messages) = self.next_call() {
            let n = messages.len() as u64;
            let sent = Instant::now();
            self.client.produce(&self.queue, messages).await?;
            run.latencies.push(sent.elapsed());
            self.produced.fetch_add(n, Ordering::Relaxed);
        }
        Ok(run)
    }

    /// A call every `period` from `first_call`, whether or not earlier ones
    /// are answered (up to [`OPEN_LOOP_IN_FLIGHT`]); latency from the call's
    /// slot to its answer, so time spent waiting to be sent counts too.
    async fn open_loop(self, first_call: Instant, period: Duration) -> anyhow::Result<ProducerRun> {
        let mut slots = pace(first_call, period, self.until);
        let in_flight = Arc::new(Semaphore::new(OPEN_LOOP_IN_FLIGHT));
        let (mut calls, mut run) = (JoinSet::new(), ProducerRun::default());
        while let Some(slot) = slots.recv().await {
            let Some(messages) = self.next_call() else {
                break;
            };
            let permit = match in_flight.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    run.waited_for_slot += 1;
                    in_flight.clone().acquire_owned().await?
                }
            };
            let (client, queue, produced) = (self.client.clone(), self.queue.clone(), self.produced.clone());
            calls.spawn(async move {
                let n = messages.len() as u64;
                let send_delay = slot.elapsed();
                client.produce(&queue, messages).await?;
                drop(permit);
                produced.fetch_add(n, Ordering::Relaxed);
                anyhow::Ok((slot.elapsed(), send_delay))
            });
            while let Some(done) = calls.try_join_next() {
                run.record(done??);
            }
        }
        while let Some(done) = calls.join_next().await {
            run.record(done??);
        }
        Ok(run)
    }
}

/// The slots of an open loop: `first_call`, then one every `period`, each
/// sent when its time comes, until `until`. A thread of its own sleeps to
/// each slot: tokio's timer has a resolution of 1 ms and fires at the next
/// millisecond after a deadline, which made calls go out 1.1 ms late at the
/// median (more than a third of a produce call's median at half load), a
/// delay of the bench, not of the servers. Slots whose time has passed
/// while the receiver was slow are sent at once, so the offered load stays
/// what was asked for; at most [`PACED_SLOTS_QUEUED`] wait in the channel
/// (a rate far above what the producer can send must not fill memory), and
/// each carries its scheduled time, so a late call still counts from it.
fn pace(first_call: Instant, period: Duration, until: Instant) -> tokio::sync::mpsc::Receiver<Instant> {
    let (slots, receiver) = tokio::sync::mpsc::channel(PACED_SLOTS_QUEUED);
    std::thread::spawn(move || {
        let mut slot = first_call;
        while slot < until {
            std::thread::sleep(slot.saturating_duration_since(Instant::now()));
            if slots.blocking_send(slot).is_err() {
                break;
            }
            slot += period;
        }
    });
    receiver
}

/// Slots of an open loop sent and not yet taken, at most.
const PACED_SLOTS_QUEUED: usize = 1024;

impl ProducerRun {
    fn record(&mut self, (latency, send_delay): (Duration, Duration)) {
        self.latencies.push(latency);
        self.send_delays.push(send_delay);
    }
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

/// The queues a run uses: `base` itself when there is one, else `base-0` ..
/// `base-{n-1}`.
fn queue_names(base: &str, n: u32) -> Vec<String> {
    if n == 1 { vec![base.to_string()] } else { (0..n).map(|i| format!("{base}-{i}")).collect() }
}

/// How often each of `producers` sends a call of `batch` messages so that
/// together they offer `rate` messages per second.
fn call_period(rate: u64, producers: u32, batch: usize) -> Duration {
    debug_assert!(rate > 0 && producers > 0, "checked by the argument parser and run");
    let period = Duration::from_secs_f64(f64::from(producers) * batch as f64 / rate as f64);
    // tokio's interval refuses a zero period; a rate that high is unlimited anyway.
    period.max(Duration::from_nanos(1))
}

/// Takes up to `batch` messages from what `budget` has left and returns how
/// many it took: fewer at the end, 0 once it is spent.
fn take_from_budget(budget: &AtomicU64, batch: u64) -> u64 {
    let left = budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left - left.min(batch)))
        .expect("the update always returns Some");
    left.min(batch)
}

/// Waits (up to 10 s) for a new queue to elect its leader, then makes
/// `client` send its calls there.
async fn prefer_leader(client: &Client, queue: &str) {
    let elected_by = Instant::now() + Duration::from_secs(10);
    while Instant::now() < elected_by {
        let leader = client.get_queue(queue).await.ok().and_then(|q| q.stats).map_or(0, |s| s.leader_id);
        if leader != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match client.prefer_leader_of(queue).await {
        Ok(true) => eprintln!("sending calls to the leader of {queue}"),
        Ok(false) => eprintln!("the leader of {queue} is not among the endpoints; calls are forwarded"),
        Err(e) => eprintln!("could not find the leader of {queue} ({e}); calls may be forwarded"),
    }
}

/// One node's write-ahead log counters, and how it read its log back.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Wal {
    node: u64,
    syncs: u64,
    requests: u64,
    micros: u64,
    log_reads_from_memory: u64,
    log_reads_from_disk: u64,
    body_reads_from_memory: u64,
    body_reads_from_disk: u64,
    bodies_left_in_log: u64,
    bodies_copied_out_of_log: u64,
}

/// What one node reported: its WAL counters and its write-path stage
/// latencies (microseconds) since it started.
struct NodeReading {
    wal: Wal,
    stages: Vec<(String, Histogram<u64>)>,
}

/// Each reachable node's counters, asked of every endpoint itself (not
/// forwarded), so the counters are its own.
async fn node_readings(endpoints: &[String]) -> Vec<NodeReading> {
    let mut readings = Vec::new();
    for endpoint in endpoints {
        let Ok(client) = Client::connect(std::slice::from_ref(endpoint)) else { continue };
        if let Ok(status) = client.with_deadline(Duration::from_secs(3)).cluster_status().await {
            let stages = status
                .stage_latencies
                .iter()
                .filter_map(|stage| {
                    let histogram = Deserializer::new().deserialize(&mut &stage.histogram[..]).ok()?;
                    Some((stage.stage.clone(), histogram))
                })
                .collect();
            let wal = Wal {
                node: status.node_id,
                syncs: status.wal_syncs,
                requests: status.wal_sync_requests,
                micros: status.wal_sync_micros,
                log_reads_from_memory: status.log_entries_read_from_memory,
                log_reads_from_disk: status.log_entries_read_from_disk,
                body_reads_from_memory: status.bodies_read_from_memory,
                body_reads_from_disk: status.bodies_read_from_disk,
                bodies_left_in_log: status.bodies_left_in_log,
                bodies_copied_out_of_log: status.bodies_copied_out_of_log,
            };
            readings.push(NodeReading { wal, stages });
        }
    }
    readings
}

/// One stage on one node over the run.
#[derive(Debug, Clone, PartialEq)]
struct StageRun {
    node: u64,
    stage: String,
    count: u64,
    /// Milliseconds.
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Each stage's latencies between two readings, per node read both times;
/// stages that recorded nothing in between are left out.
fn stage_runs(before: &[NodeReading], after: &[NodeReading]) -> Vec<StageRun> {
    let mut runs = Vec::new();
    for now in after {
        let Some(then) = before.iter().find(|r| r.wal.node == now.wal.node) else { continue };
        for (stage, histogram) in &now.stages {
            let mut delta = histogram.clone();
            if let Some((_, earlier)) = then.stages.iter().find(|(s, _)| s == stage)
                && delta.subtract(earlier).is_err()
            {
                // The node restarted in between: its histogram began anew.
                continue;
            }
            if delta.is_empty() {
                continue;
            }
            let ms = |micros: u64| micros as f64 / 1000.0;
            runs.push(StageRun {
                node: now.wal.node,
                stage: stage.clone(),
                count: delta.len(),
                p50: ms(delta.value_at_quantile(0.5)),
                p99: ms(delta.value_at_quantile(0.99)),
                p999: ms(delta.value_at_quantile(0.999)),
                max: ms(delta.max()),
            });
        }
    }
    runs
}

/// The counters' growth between two readings, summed over the nodes in both
/// (`node` holds how many).
fn wal_delta(before: &[NodeReading], after: &[NodeReading]) -> Wal {
    let mut delta = Wal::default();
    for now in after.iter().map(|r| &r.wal) {
        if let Some(then) = before.iter().map(|r| &r.wal).find(|w| w.node == now.node) {
            delta.syncs += now.syncs.saturating_sub(then.syncs);
            delta.requests += now.requests.saturating_sub(then.requests);
            delta.micros += now.micros.saturating_sub(then.micros);
            delta.log_reads_from_memory += now.log_reads_from_memory.saturating_sub(then.log_reads_from_memory);
            delta.log_reads_from_disk += now.log_reads_from_disk.saturating_sub(then.log_reads_from_disk);
            delta.body_reads_from_memory += now.body_reads_from_memory.saturating_sub(then.body_reads_from_memory);
            delta.body_reads_from_disk += now.body_reads_from_disk.saturating_sub(then.body_reads_from_disk);
            delta.bodies_left_in_log += now.bodies_left_in_log.saturating_sub(then.bodies_left_in_log);
            delta.bodies_copied_out_of_log +=
                now.bodies_copied_out_of_log.saturating_sub(then.bodies_copied_out_of_log);
            delta.node += 1;
        }
    }
    delta
}

pub async fn run(client: &Client, endpoints: &[String], args: BenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > 1000 || args.message_size == 0 {
        anyhow::bail!("--batch must be 1 to 1000 and --message-size at least 1");
    }
    let backlog_only = args.consumers == 0;
    if args.producers < args.queues || (!backlog_only && args.consumers < args.queues) {
        anyhow::bail!(
            "--queues {} needs at least as many producers and consumers, so that every queue has both \
             (given {} producers and {} consumers)",
            args.queues,
            args.producers,
            args.consumers
        );
    }
    let queues = queue_names(&args.queue, args.queues);
    // One client per queue, so that each queue's calls can go to its own
    // leader: a client's preferred endpoint is shared by all its clones.
    // `Client::connect` gives a client its own connections. The first queue
    // keeps the command's client, so one queue runs as it always did.
    let mut clients = vec![client.clone()];
    for _ in 1..queues.len() {
        clients.push(Client::connect(endpoints)?);
    }
    for queue in &queues {
        match client.create_queue(queue, None).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !args.any_node {
        for (queue, client) in queues.iter().zip(&clients) {
            prefer_leader(client, queue).await;
        }
    }
    // A producer's or consumer's client: its queue's own, or one with
    // connections of its own that sends its calls where that one does.
    let connection = async |queue_client: &Client, queue: &str| -> anyhow::Result<Client> {
        if args.shared_connection {
            return Ok(queue_client.clone());
        }
        let client = Client::connect(endpoints)?;
        if !args.any_node && !client.prefer_leader_of(queue).await? {
            eprintln!("the leader of {queue} is not among the endpoints; calls are forwarded");
        }
        // Connects now (channels connect lazily), not in the first timed call.
        client.get_queue(queue).await?;
        Ok(client)
    };
    let nodes_before = node_readings(endpoints).await;
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let producing = Arc::new(AtomicBool::new(true));
    // The messages producers may still send, all of them together.
    let budget = Arc::new(AtomicU64::new(args.count.unwrap_or(u64::MAX)));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let period = args.rate.map(|rate| call_period(rate, args.producers, args.batch));
    let started = Instant::now();
    let produce_until = started + Duration::from_secs(args.duration_secs);

    let mut producers = Vec::new();
    for i in 0..args.producers {
        let q = (i % args.queues) as usize;
        let client = connection(&clients[q], &queues[q]).await?;
        let (queue, produced, budget, samples) = (queues[q].clone(), produced.clone(), budget.clone(), samples.clone());
        let batch: Vec<pb::ProduceMessage> = (0..args.batch)
            .map(|_| pb::ProduceMessage {
                body: bench_body(args.message_size, args.random_bodies).into(),
                ..Default::default()
            })
            .collect();
        let producer = Producer { client, queue, batch, budget, produced, until: produce_until };
        // Producer i starts i / producers of a period in, so the calls of all
        // producers are spread over the period rather than sent together.
        let schedule =
            period.map(|period| (started + period.mul_f64(f64::from(i) / f64::from(args.producers)), period));
        producers.push(tokio::spawn(async move {
            let run = match schedule {
                Some((first_call, period)) => producer.open_loop(first_call, period).await?,
                None => producer.closed_loop().await?,
            };
            let mut samples = samples.lock().await;
            samples.produce_call.extend(run.latencies);
            samples.send_delay.extend(run.send_delays);
            samples.waited_for_slot += run.waited_for_slot;
            anyhow::Ok(())
        }));
    }
    let mut consumers = Vec::new();
    for j in 0..args.consumers {
        let q = (j % args.queues) as usize;
        let client = connection(&clients[q], &queues[q]).await?;
        let (queue, produced, consumed, producing, samples) =
            (queues[q].clone(), produced.clone(), consumed.clone(), producing.clone(), samples.clone());
        let (drain, separate_acks) = (Duration::from_secs(args.drain_secs), args.separate_acks);
        consumers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut unacked: Vec<String> = Vec::new();
            // Set when this consumer first sees that the producers stopped.
            let mut drain_until = None;
            loop {
                if !producing.load(Ordering::Relaxed) {
                    let drain_until = *drain_until.get_or_insert_with(|| Instant::now() + drain);
                    if consumed.load(Ordering::Relaxed) >= produced.load(Ordering::Relaxed)
                        || Instant::now() > drain_until
                    {
                        break;
                    }
                }
                // The receipts of the last batch ride on this consume, unless
                // acks go separately.
                let response = client
                    .consume_and_ack(&queue, 256, Duration::from_millis(200), std::mem::take(&mut unacked))
                    .await?;
                let acked = response.acked.map_or(0, |acked| acked.succeeded);
                consumed.fetch_add(u64::from(acked), Ordering::Relaxed);
                let messages = response.messages;
                if messages.is_empty() {
                    continue;
                }
                let received = now_ms();
                latencies
                    .extend(messages.iter().map(|m| Duration::from_millis(received.saturating_sub(m.publish_time_ms))));
                let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
                if separate_acks {
                    let acked = client.ack(&queue, receipts).await?;
                    consumed.fetch_add(u64::from(acked.succeeded), Ordering::Relaxed);
                } else {
                    unacked = receipts;
                }
            }
            if !unacked.is_empty() {
                // The consumer stopped with a batch received and not yet
                // acked (the drain ran out, or more was consumed than this
                // run produced: a backlog from before).
                let acked = client.ack(&queue, unacked).await?;
                consumed.fetch_add(u64::from(acked.succeeded), Ordering::Relaxed);
            }
            samples.lock().await.end_to_end.extend(latencies);
            anyhow::Ok(())
        }));
    }

    // Progress once a second until the producers are done: at the end of
    // --duration-secs, or earlier when --count is reached.
    let producers_done = async move {
        for producer in producers {
            producer.await??;
        }
        anyhow::Ok(())
    };
    tokio::pin!(producers_done);
    let second = Duration::from_secs(1);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::from_std(started + second), second);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut last_p, mut last_c) = (0, 0);
    loop {
        tokio::select! {
            result = &mut producers_done => {
                result?;
                break;
            }
            _ = progress.tick() => {
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
        }
    }
    let produce_secs = started.elapsed().as_secs_f64();
    producing.store(false, Ordering::Relaxed);
    for consumer in consumers {
        consumer.await??;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let nodes_after = node_readings(endpoints).await;
    let wal = wal_delta(&nodes_before, &nodes_after);
    let stages = stage_runs(&nodes_before, &nodes_after);
    let (fsyncs, fsync_requests, nodes) = (wal.syncs, wal.requests, wal.node);
    let fsync_mean_ms = wal.micros as f64 / 1000.0 / fsyncs.max(1) as f64;

    let mut samples = samples.lock().await;
    samples.produce_call.sort();
    samples.end_to_end.sort();
    samples.send_delay.sort();
    let (p, c) = (produced.load(Ordering::Relaxed), consumed.load(Ordering::Relaxed));
    let summary = json!({
        "queue": args.queue, "producers": args.producers, "consumers": args.consumers,
        "message_size": args.message_size, "batch": args.batch,
        "queues": args.queues, "rate": args.rate, "count": args.count, "separate_acks": args.separate_acks,
        "shared_connection": args.shared_connection, "random_bodies": args.random_bodies,
        "produced": p, "consumed": c,
        "produce_msgs_per_sec": p as f64 / produce_secs,
        "consume_msgs_per_sec": c as f64 / total_secs,
        "produce_call_ms": {"p50": percentile(&samples.produce_call, 50.0), "p99": percentile(&samples.produce_call, 99.0), "p999": percentile(&samples.produce_call, 99.9)},
        "end_to_end_ms": {"p50": percentile(&samples.end_to_end, 50.0), "p99": percentile(&samples.end_to_end, 99.0), "p999": percentile(&samples.end_to_end, 99.9)},
        "send_delay_ms": (!samples.send_delay.is_empty()).then(|| json!({"p50": percentile(&samples.send_delay, 50.0), "p99": percentile(&samples.send_delay, 99.0), "p999": percentile(&samples.send_delay, 99.9)})),
        "wal_fsyncs": fsyncs, "wal_fsync_requests": fsync_requests, "wal_nodes": nodes, "fsync_mean_ms": fsync_mean_ms,
        "fsyncs_per_1000_messages": fsyncs as f64 * 1000.0 / p.max(1) as f64,
        "log_reads_from_memory": wal.log_reads_from_memory, "log_reads_from_disk": wal.log_reads_from_disk,
        "body_reads_from_memory": wal.body_reads_from_memory, "body_reads_from_disk": wal.body_reads_from_disk,
        "bodies_left_in_log": wal.bodies_left_in_log, "bodies_copied_out_of_log": wal.bodies_copied_out_of_log,
        "stages_ms": stages.iter().map(|s| json!({
            "node": s.node, "stage": s.stage, "count": s.count,
            "p50": s.p50, "p99": s.p99, "p999": s.p999, "max": s.max,
        })).collect::<Vec<_>>(),
    });
    let offered = args.rate.map_or_else(|| "unlimited".to_string(), |rate| format!("{rate} msg/s"));
    outln!("offered rate {offered} over {} queue(s)", queues.len());
    if samples.waited_for_slot > 0 {
        outln!(
            "{} of {} produce calls went out late, their producer's {OPEN_LOOP_IN_FLIGHT} calls in flight \
             unanswered: the offered rate was not fully met on time (the wait counts in their latency)",
            samples.waited_for_slot,
            samples.produce_call.len(),
        );
    }
    outln!(
        "produced {p} in {produce_secs:.1}s ({:.0} msg/s), consumed {c} in {total_secs:.1}s ({:.0} msg/s)",
        p as f64 / produce_secs,
        c as f64 / total_secs
    );
    outln!(
        "produce call (batch of {}) ms: p50 {:.1}  p99 {:.1}  p999 {:.1}",
        args.batch,
        percentile(&samples.produce_call, 50.0),
        percentile(&samples.produce_call, 99.0),
        percentile(&samples.produce_call, 99.9)
    );
    if !samples.send_delay.is_empty() {
        outln!(
            "of which sent late (from the call's slot until it went out: the client's timer and wake-up) ms: \
             p50 {:.1}  p99 {:.1}  p999 {:.1}",
            percentile(&samples.send_delay, 50.0),
            percentile(&samples.send_delay, 99.0),
            percentile(&samples.send_delay, 99.9)
        );
    }
    outln!(
        "end to end ms: p50 {:.1}  p99 {:.1}  p999 {:.1}",
        percentile(&samples.end_to_end, 50.0),
        percentile(&samples.end_to_end, 99.0),
        percentile(&samples.end_to_end, 99.9)
    );
    outln!(
        "fsyncs on {nodes} nodes: {fsyncs} for {fsync_requests} appends and votes, {:.1} per 1000 produced messages \
         (consume and ack entries included), {fsync_mean_ms:.1} ms each on average",
        fsyncs as f64 * 1000.0 / p.max(1) as f64
    );
    outln!(
        "log entries read back to replicate and apply, on {nodes} nodes: {} from memory, {} from RocksDB",
        wal.log_reads_from_memory,
        wal.log_reads_from_disk
    );
    outln!(
        "message bodies read to deliver them: {} from memory, {} from RocksDB",
        wal.body_reads_from_memory,
        wal.body_reads_from_disk
    );
    outln!(
        "message bodies applied on {nodes} nodes and left in their log entry (written once): {}, of which copied \
         out before the entry was deleted (written twice): {}",
        wal.bodies_left_in_log,
        wal.bodies_copied_out_of_log
    );
    if !stages.is_empty() {
        outln!("write-path stages over the run, ms (server side; see GetClusterStatus for each stage):");
        outln!("{:>5}  {:<15} {:>8} {:>8} {:>8} {:>8} {:>8}", "node", "stage", "count", "p50", "p99", "p999", "max");
        for s in &stages {
            outln!(
                "{:>5}  {:<15} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                s.node,
                s.stage,
                s.count,
                s.p50,
                s.p99,
                s.p999,
                s.max
            );
        }
    }
    outln!("BENCH {summary}");
    if !backlog_only && c < p {
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
    fn one_queue_keeps_its_name_and_more_are_numbered() {
        assert_eq!(queue_names("bench", 1), ["bench"]);
        assert_eq!(queue_names("bench", 3), ["bench-0", "bench-1", "bench-2"]);
    }

    #[test]
    fn call_period_splits_the_rate_over_producers_and_batches() {
        // 2 producers × 50 messages per call at 2000 msg/s: each calls 20 times a second.
        assert_eq!(call_period(2000, 2, 50), Duration::from_millis(50));
        assert_eq!(call_period(1000, 1, 1), Duration::from_millis(1));
        assert_eq!(call_period(3, 4, 64), Duration::from_secs_f64(4.0 * 64.0 / 3.0));
        // Never zero, which tokio's interval would refuse.
        assert_eq!(call_period(u64::MAX, 1, 1), Duration::from_nanos(1));
    }

    #[test]
    fn budget_hands_out_batches_then_the_rest_then_nothing() {
        let budget = AtomicU64::new(100);
        assert_eq!(take_from_budget(&budget, 64), 64);
        assert_eq!(take_from_budget(&budget, 64), 36);
        assert_eq!(take_from_budget(&budget, 64), 0);
        assert_eq!(take_from_budget(&budget, 64), 0);
        let unlimited = AtomicU64::new(u64::MAX);
        assert_eq!(take_from_budget(&unlimited, 1000), 1000);
    }

    #[test]
    fn budget_split_between_threads_adds_up_to_the_count() {
        let budget = AtomicU64::new(1000);
        let taken: u64 = std::thread::scope(|scope| {
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        std::iter::from_fn(|| Some(take_from_budget(&budget, 7)).filter(|&n| n > 0)).sum::<u64>()
                    })
                })
                .collect();
            takers.into_iter().map(|t| t.join().expect("taker thread")).sum()
        });
        assert_eq!(taken, 1000);
    }

    #[derive(clap::Parser)]
    struct BenchCommand {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        use clap::Parser;
        BenchCommand::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn new_options_default_to_one_queue_no_rate_no_count() {
        let args = parse(&[]).expect("defaults parse");
        assert_eq!((args.queues, args.rate, args.count), (1, None, None));
        let args = parse(&["--queues", "2", "--rate", "2000", "--count", "3000"]).expect("options parse");
        assert_eq!((args.queues, args.rate, args.count), (2, Some(2000), Some(3000)));
        for zero in ["--queues", "--rate", "--count"] {
            assert!(parse(&[zero, "0"]).is_err(), "{zero} 0 accepted");
        }
    }

    #[tokio::test]
    async fn more_queues_than_producers_or_consumers_is_refused_before_any_call() {
        // Nothing listens on this endpoint: the check must come first.
        let endpoints = ["127.0.0.1:1".to_string()];
        let client = Client::connect(&endpoints).expect("lazy client");
        for too_few in [["--producers", "2"], ["--consumers", "2"]] {
            let args = parse(&["--queues", "3", too_few[0], too_few[1]]).expect("options parse");
            let error = run(&client, &endpoints, args).await.expect_err("2 of one side for 3 queues");
            assert!(
                error.to_string().starts_with("--queues 3 needs at least as many producers and consumers"),
                "{error}"
            );
        }
    }

    #[test]
    fn stage_percentiles_cover_only_the_run() {
        let histogram = |values: &[u64]| {
            let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 2).unwrap();
            values.iter().for_each(|v| h.record(*v).unwrap());
            h
        };
        let reading = |node, stages: Vec<(&str, Histogram<u64>)>| NodeReading {
            wal: Wal { node, ..Wal::default() },
            stages: stages.into_iter().map(|(s, h)| (s.to_string(), h)).collect(),
        };
        // Before the run: 1,000 slow fsyncs of 500 ms each on node 1.
        let slow = vec![500_000; 1000];
        let before = [reading(1, vec![("fsync", histogram(&slow)), ("apply", histogram(&[7]))])];
        let mut during: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        during.extend(&slow);
        let after = [
            reading(1, vec![("fsync", histogram(&during)), ("apply", histogram(&[7]))]),
            reading(2, vec![("fsync", histogram(&[1000]))]),
        ];
        let runs = stage_runs(&before, &after);
        // Node 2 was not read before the run; apply recorded nothing during it.
        assert_eq!(runs.len(), 1, "{runs:?}");
        let fsync = &runs[0];
        assert_eq!((fsync.node, fsync.stage.as_str(), fsync.count), (1, "fsync", 100));
        assert!((49.0..=51.0).contains(&fsync.p50), "{fsync:?}");
        assert!((98.0..=100.0).contains(&fsync.p99), "{fsync:?}");
        assert!(fsync.max <= 100.5, "{fsync:?}");
    }

    #[test]
    fn wal_delta_counts_only_nodes_read_twice() {
        let wal = |node, syncs, requests, micros, memory| NodeReading {
            wal: Wal {
                node,
                syncs,
                requests,
                micros,
                log_reads_from_memory: memory,
                log_reads_from_disk: memory / 10,
                body_reads_from_memory: memory / 2,
                body_reads_from_disk: memory / 5,
                bodies_left_in_log: memory / 3,
                bodies_copied_out_of_log: memory / 30,
            },
            stages: vec![],
        };
        let before = [wal(1, 10, 20, 1000, 100), wal(2, 5, 5, 0, 0)];
        let after = [wal(1, 15, 40, 4000, 300), wal(2, 6, 9, 500, 50), wal(3, 100, 100, 9, 1000)];
        assert_eq!(wal_delta(&before, &after), wal(2, 6, 24, 3500, 250).wal);
    }
}
