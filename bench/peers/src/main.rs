//! `peerbench`: the workload of `raftmq bench` (crates/cli/src/cmd/bench.rs)
//! against RabbitMQ (a quorum queue, AMQP 0-9-1 with publisher confirms) and
//! NATS JetStream (a replicated work-queue stream with a durable pull
//! consumer), for bench/compare.sh. It prints the same `BENCH {json}` line
//! with the same keys as `raftmq bench`, plus a few of its own.
//!
//! The workload, as in `raftmq bench`:
//! - P producers. In `--mode batch` (the default, what `raftmq bench` does)
//!   each producer publishes W messages back to back (pipelined, none
//!   awaited), waits for all W confirms, and starts the next W; the time of
//!   that round is one `produce_call_ms` sample, the same definition as
//!   raftmq's time of one Produce call of W messages. In `--mode window` each
//!   producer keeps W publishes unconfirmed at all times (a sliding window)
//!   and `produce_call_ms` is then per publish (publish to its confirm).
//!   Both modes also report `produce_msg_ms`: per publish, publish to confirm.
//! - C consumers, each acknowledging every message individually
//!   (basic.ack with multiple=false; a JetStream +ACK per message); acks of
//!   the messages that arrived together are sent together, none awaited one
//!   by one, as raftmq bench acks the receipts of one Consume in one call.
//!   At most 256 unacked messages per consumer (basic.qos prefetch; pull
//!   batches of 256 and max_ack_pending 256 × C), as raftmq bench leases at
//!   most 256 per Consume call.
//! - Producers run for --duration-secs, then consumers drain for at most
//!   --drain-secs.
//! - Clients talk to the leaders, as `raftmq bench` sends its calls to the
//!   queue's leader (`--any-node` spreads them over the nodes instead).
//! - Bodies are --message-size bytes: the publish time, a unique message id
//!   (to count duplicates: `duplicates`, `redelivered` in the summary), 'x'.
//! - End-to-end latency: the first 8 bytes of each body carry the producer's
//!   wall clock (µs since the epoch, little endian) taken just before the
//!   publish; the consumer subtracts it from its clock on receipt. raftmq
//!   bench uses the leader's publish_time_ms (taken when the leader handles
//!   the Produce, ms resolution) instead, so its figure leaves out the hop
//!   from client to leader; on one machine both clocks are the same.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::future::try_join_all;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "raftmq bench's workload against RabbitMQ and NATS JetStream")]
struct Cli {
    #[command(subcommand)]
    system: System,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand, Clone)]
enum System {
    /// RabbitMQ, a quorum queue (x-queue-type quorum) declared on the first URL.
    Rabbitmq {
        /// AMQP URLs. The queue is declared on the first, which then holds its
        /// leader, and every client connects there; with --any-node connections
        /// go round robin over all.
        #[arg(long, value_delimiter = ',', default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        urls: Vec<String>,
        /// Replicas of the quorum queue (x-quorum-initial-group-size).
        #[arg(long, default_value_t = 3)]
        replicas: u32,
    },
    /// NATS JetStream: a file-storage work-queue stream and a durable pull consumer.
    Nats {
        /// NATS URLs. Producers connect to the stream leader's server, consumers
        /// to the consumer leader's; with --any-node round robin over all.
        #[arg(long, value_delimiter = ',', default_value = "nats://127.0.0.1:4222")]
        urls: Vec<String>,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// W publishes, wait for all W confirms, repeat (what raftmq bench does).
    Batch,
    /// Keep W publishes unconfirmed at all times.
    Window,
}

#[derive(clap::Args, Clone)]
struct Args {
    /// Queue (RabbitMQ) or stream (NATS) name; created fresh, deleted at the end.
    #[arg(long, global = true, default_value = "bench")]
    queue: String,
    #[arg(long, global = true, default_value_t = 4)]
    producers: u32,
    #[arg(long, global = true, default_value_t = 4)]
    consumers: u32,
    /// Body size in bytes (at least 16: the publish time and a message id).
    #[arg(long, global = true, default_value_t = 1024)]
    message_size: usize,
    /// W: publishes a producer has unconfirmed (raftmq bench's --batch).
    #[arg(long, global = true, alias = "window", default_value_t = 64)]
    batch: usize,
    #[arg(long, global = true, value_enum, default_value_t = Mode::Batch)]
    mode: Mode,
    /// Unacked messages one consumer may hold (raftmq bench consumes up to 256 per call).
    #[arg(long, global = true, default_value_t = 256)]
    prefetch: u16,
    #[arg(long, global = true, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, global = true, default_value_t = 30)]
    drain_secs: u64,
    /// One connection for everything instead of one per producer and consumer.
    #[arg(long, global = true)]
    shared_connection: bool,
    /// Spread connections round robin over --urls instead of connecting to the
    /// leaders (as `raftmq bench --any-node` sends calls to any node).
    #[arg(long, global = true)]
    any_node: bool,
    /// Bodies of random bytes after their first 16, as `raftmq bench
    /// --random-bodies`, instead of `x` repeated.
    #[arg(long, global = true)]
    random_bodies: bool,
}

#[derive(Default)]
struct Samples {
    produce_call: Vec<Duration>,
    produce_msg: Vec<Duration>,
    end_to_end: Vec<Duration>,
    /// The id (bytes 8..16 of the body) of every message consumed, to count duplicates.
    consumed_ids: Vec<u64>,
}

struct Shared {
    produced: AtomicU64,
    consumed: AtomicU64,
    producing: AtomicBool,
    errors: AtomicU64,
    redelivered: AtomicU64,
    samples: Mutex<Samples>,
}

impl Shared {
    /// Counters at zero, producers running.
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            produced: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            producing: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            samples: Mutex::new(Samples::default()),
        })
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A body: the publish time (µs since the epoch) in bytes 0..8, a unique id
/// in 8..16, then 'x', or bytes of `random` (see [`random_pool`]) at an
/// offset that moves with the id.
fn body(size: usize, id: u64, random: Option<&[u8]>) -> Vec<u8> {
    let mut body = match random {
        Some(pool) => {
            let at = (id as usize).wrapping_mul(size) % (pool.len() - size);
            pool[at..at + size].to_vec()
        }
        None => vec![b'x'; size],
    };
    body[..8].copy_from_slice(&now_us().to_le_bytes());
    body[8..16].copy_from_slice(&id.to_le_bytes());
    body
}

/// Random bytes that random bodies are cut from, at an offset that moves
/// with each message: 4 MiB more than one body, made once per producer.
fn random_pool(size: usize) -> Vec<u8> {
    let mut pool = vec![0; size + 4 * 1024 * 1024];
    rand::fill(&mut pool[..]);
    pool
}

fn id_of(payload: &[u8]) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[8..16]);
    u64::from_le_bytes(id)
}

fn age(payload: &[u8], now: u64) -> Duration {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[..8]);
    Duration::from_micros(now.saturating_sub(u64::from_le_bytes(ts)))
}

/// One producer: `publish` sends one body and returns the future of its confirm.
async fn produce_loop<P, PF, CF>(
    shared: Arc<Shared>,
    args: Args,
    producer: u64,
    until: Instant,
    publish: P,
) -> anyhow::Result<()>
where
    P: Fn(Vec<u8>) -> PF,
    PF: Future<Output = anyhow::Result<CF>>,
    CF: Future<Output = anyhow::Result<()>>,
{
    let (mut calls, mut msgs) = (Vec::new(), Vec::new());
    let mut seq = producer << 40;
    let pool = args.random_bodies.then(|| random_pool(args.message_size));
    let mut next_body = || {
        seq += 1;
        body(args.message_size, seq, pool.as_deref())
    };
    match args.mode {
        Mode::Batch => {
            while Instant::now() < until {
                let sent = Instant::now();
                // All W publishes go out before any confirm is awaited.
                let confirms = try_join_all((0..args.batch).map(|_| publish(next_body()))).await?;
                for confirm in confirms {
                    confirm.await?;
                    msgs.push(sent.elapsed());
                }
                calls.push(sent.elapsed());
                shared.produced.fetch_add(args.batch as u64, Ordering::Relaxed);
            }
        }
        Mode::Window => {
            let mut inflight = FuturesUnordered::new();
            loop {
                // Refill the window: the free places' publishes go out together.
                let free = args.batch - inflight.len();
                if free > 0 && Instant::now() < until {
                    let sent = Instant::now();
                    let confirms = try_join_all((0..free).map(|_| publish(next_body()))).await?;
                    for confirm in confirms {
                        inflight.push(async move { confirm.await.map(|()| sent.elapsed()) });
                    }
                }
                // Wait for one confirm, then take every other one already there.
                let Some(first) = inflight.next().await else { break };
                let mut done = vec![first];
                while let Some(Some(more)) = inflight.next().now_or_never() {
                    done.push(more);
                }
                for latency in done {
                    let latency = latency?;
                    calls.push(latency);
                    msgs.push(latency);
                    shared.produced.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    let mut samples = shared.samples.lock().await;
    samples.produce_call.extend(calls);
    samples.produce_msg.extend(msgs);
    Ok(())
}

fn consumers_done(shared: &Shared, drain_until: Instant) -> bool {
    let done = !shared.producing.load(Ordering::Relaxed)
        && shared.consumed.load(Ordering::Relaxed) >= shared.produced.load(Ordering::Relaxed);
    done || Instant::now() > drain_until
}

/// One consumer: `deliveries` yields (payload, redelivered, ack); acks of one arrival go out together.
async fn consume_loop<S, AF>(shared: Arc<Shared>, drain_until: Instant, deliveries: S) -> anyhow::Result<()>
where
    S: futures::Stream<Item = anyhow::Result<(Vec<u8>, bool, AF)>> + Unpin,
    AF: Future<Output = anyhow::Result<()>>,
{
    let (mut latencies, mut ids) = (Vec::new(), Vec::new());
    let mut chunks = deliveries.ready_chunks(256);
    while !consumers_done(&shared, drain_until) {
        let chunk = match tokio::time::timeout(Duration::from_millis(200), chunks.next()).await {
            Err(_) => continue,
            Ok(None) => bail!("the server ended the consumer"),
            Ok(Some(chunk)) => chunk,
        };
        let received = now_us();
        let mut acks = Vec::with_capacity(chunk.len());
        for delivery in chunk {
            match delivery {
                Ok((payload, redelivered, ack)) => {
                    if redelivered {
                        shared.redelivered.fetch_add(1, Ordering::Relaxed);
                        if std::env::var_os("PEERBENCH_DEBUG").is_some() {
                            eprintln!(
                                "redelivered id {:x}, age {:?}, producing {}, consumed {}, produced {}",
                                id_of(&payload),
                                age(&payload, received),
                                shared.producing.load(Ordering::Relaxed),
                                shared.consumed.load(Ordering::Relaxed),
                                shared.produced.load(Ordering::Relaxed)
                            );
                        }
                    }
                    latencies.push(age(&payload, received));
                    ids.push(id_of(&payload));
                    acks.push(ack);
                }
                Err(e) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("consumer: {e:#}");
                }
            }
        }
        let n = acks.len() as u64;
        try_join_all(acks).await?;
        shared.consumed.fetch_add(n, Ordering::Relaxed);
    }
    let mut samples = shared.samples.lock().await;
    samples.end_to_end.extend(latencies);
    samples.consumed_ids.extend(ids);
    Ok(())
}

// ---------------------------------------------------------------- RabbitMQ

mod rabbit {
    use super::*;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    async fn connect(url: &str) -> anyhow::Result<Arc<Connection>> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connect to {url}"))?;
        Ok(Arc::new(conn))
    }

    pub async fn run(args: &Args, urls: &[String], replicas: u32) -> anyhow::Result<Arc<Shared>> {
        let admin = connect(&urls[0]).await?;
        let channel = admin.create_channel().await?;
        let mut queue_args = FieldTable::default();
        queue_args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        queue_args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(replicas as i32));
        // The leader on the node declaring it, urls[0], where the clients connect.
        queue_args.insert("x-queue-leader-locator".into(), AMQPValue::LongString(LongString::from("client-local")));
        let _ = channel.queue_delete(args.queue.as_str().into(), QueueDeleteOptions::default()).await;
        channel
            .queue_declare(
                args.queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                queue_args,
            )
            .await
            .context("declare the quorum queue")?;

        let mut next = 0usize;
        let mut connection = async || -> anyhow::Result<Arc<Connection>> {
            if args.shared_connection {
                Ok(admin.clone())
            } else if args.any_node {
                next += 1;
                connect(&urls[(next - 1) % urls.len()]).await
            } else {
                connect(&urls[0]).await
            }
        };
        let shared = Shared::new();
        // Set everything up before the clock starts.
        let (mut producer_channels, mut consumer_streams) = (Vec::new(), Vec::new());
        let mut connections = vec![admin.clone()];
        for _ in 0..args.producers {
            let conn = connection().await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            producer_channels.push(ch);
            connections.push(conn);
        }
        for i in 0..args.consumers {
            let conn = connection().await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(args.prefetch, BasicQosOptions::default()).await?;
            let consumer = ch
                .basic_consume(
                    args.queue.as_str().into(),
                    format!("bench-{i}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumer_streams.push((ch, consumer));
            connections.push(conn);
        }

        let started = Instant::now();
        let until = started + Duration::from_secs(args.duration_secs);
        let drain_until = until + Duration::from_secs(args.drain_secs);
        let mut producers = Vec::new();
        for (producer, ch) in producer_channels.into_iter().enumerate() {
            let (shared, args, queue) = (shared.clone(), args.clone(), args.queue.clone());
            producers.push(tokio::spawn(async move {
                let publish = |body: Vec<u8>| {
                    let (ch, queue) = (ch.clone(), queue.clone());
                    async move {
                        let confirm = ch
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions::default(),
                                &body,
                                BasicProperties::default().with_delivery_mode(2),
                            )
                            .await?;
                        anyhow::Ok(async move {
                            let confirmation = confirm.await?;
                            if !confirmation.is_ack() {
                                bail!("publish nacked: {confirmation:?}");
                            }
                            Ok(())
                        })
                    }
                };
                produce_loop(shared, args, producer as u64 + 1, until, publish).await
            }));
        }
        let mut consumers = Vec::new();
        for (ch, consumer) in consumer_streams {
            let (shared, prefetch) = (shared.clone(), args.prefetch);
            consumers.push(tokio::spawn(async move {
                let deliveries = consumer.map(|delivery| {
                    let delivery = delivery?;
                    let (payload, redelivered, acker) = (delivery.data, delivery.redelivered, delivery.acker);
                    anyhow::Ok((payload, redelivered, async move {
                        acker.ack(BasicAckOptions { multiple: false }).await?;
                        anyhow::Ok(())
                    }))
                });
                let result = consume_loop(shared, drain_until, deliveries).await;
                // A synchronous method as a barrier: the server has taken every ack sent
                // before it, so closing the channel returns no acked message to the queue
                // (without it the last acks could be lost and those messages redelivered
                // to the consumers still running).
                let _ = ch.basic_qos(prefetch, BasicQosOptions::default()).await;
                let _ = ch.close(200, "bench done".into()).await;
                result
            }));
        }
        let result = super::finish(args, &shared, started, producers, consumers).await;
        let _ = channel.queue_delete(args.queue.as_str().into(), QueueDeleteOptions::default()).await;
        for conn in connections {
            let _ = conn.close(200, "bench done".into()).await;
        }
        result.map(|()| shared)
    }
}

// ---------------------------------------------------------------- NATS

mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer, stream};

    async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(url).await.with_context(|| format!("connect to {url}"))
    }

    pub async fn run(args: &Args, urls: &[String], replicas: usize) -> anyhow::Result<Arc<Shared>> {
        let admin = connect(&urls[0]).await?;
        let js = jetstream::new(admin.clone());
        let _ = js.delete_stream(&args.queue).await;
        let subject = format!("{}.msgs", args.queue);
        let stream = js
            .create_stream(stream::Config {
                name: args.queue.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create the stream: {e}"))?;
        let mut stream = stream;
        let mut durable: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: i64::from(args.prefetch) * i64::from(args.consumers.max(1)),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create the consumer: {e}"))?;
        // Producers connect to the stream's leader and consumers to the
        // consumer's leader (each its own Raft group), unless --any-node.
        let (mut producer_url, mut consumer_url) = (None, None);
        if !args.any_node && !args.shared_connection {
            let stream_leader = stream.info().await.ok().and_then(|i| i.cluster.clone()).and_then(|c| c.leader);
            let consumer_leader = durable.info().await.ok().and_then(|i| i.cluster.clone()).and_then(|c| c.leader);
            for url in urls {
                let name = connect(url).await?.server_info().server_name;
                if stream_leader.as_deref() == Some(name.as_str()) {
                    producer_url = Some(url.clone());
                }
                if consumer_leader.as_deref() == Some(name.as_str()) {
                    consumer_url = Some(url.clone());
                }
            }
            eprintln!(
                "stream leader {} ({}), consumer leader {} ({})",
                stream_leader.as_deref().unwrap_or("?"),
                producer_url.as_deref().unwrap_or("not among --urls: round robin"),
                consumer_leader.as_deref().unwrap_or("?"),
                consumer_url.as_deref().unwrap_or("not among --urls: round robin"),
            );
        }
        let mut next = 0usize;
        let mut connection = async |leader: &Option<String>| -> anyhow::Result<async_nats::Client> {
            if args.shared_connection {
                Ok(admin.clone())
            } else if let Some(url) = leader {
                connect(url).await
            } else {
                next += 1;
                connect(&urls[(next - 1) % urls.len()]).await
            }
        };
        let shared = Shared::new();
        let mut producer_contexts = Vec::new();
        for _ in 0..args.producers {
            producer_contexts.push(jetstream::new(connection(&producer_url).await?));
        }
        let mut consumer_streams = Vec::new();
        for _ in 0..args.consumers {
            let client = connection(&consumer_url).await?;
            let js = jetstream::new(client.clone());
            let consumer: consumer::PullConsumer = js
                .get_stream(&args.queue)
                .await
                .map_err(|e| anyhow!("get the stream: {e}"))?
                .get_consumer("bench")
                .await
                .map_err(|e| anyhow!("get the consumer: {e}"))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(args.prefetch as usize)
                .messages()
                .await
                .map_err(|e| anyhow!("pull: {e}"))?;
            consumer_streams.push((client, messages));
        }

        let started = Instant::now();
        let until = started + Duration::from_secs(args.duration_secs);
        let drain_until = until + Duration::from_secs(args.drain_secs);
        let mut producers = Vec::new();
        for (producer, js) in producer_contexts.into_iter().enumerate() {
            let (shared, args, subject) = (shared.clone(), args.clone(), subject.clone());
            producers.push(tokio::spawn(async move {
                let publish = |body: Vec<u8>| {
                    let (js, subject) = (js.clone(), subject.clone());
                    async move {
                        let ack = js.publish(subject, body.into()).await.map_err(|e| anyhow!("publish: {e}"))?;
                        anyhow::Ok(async move {
                            ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
                            Ok(())
                        })
                    }
                };
                produce_loop(shared, args, producer as u64 + 1, until, publish).await
            }));
        }
        let mut consumers = Vec::new();
        for (client, messages) in consumer_streams {
            let shared = shared.clone();
            consumers.push(tokio::spawn(async move {
                let deliveries = messages.map(|message| {
                    let message = message.map_err(|e| anyhow!("pull: {e}"))?;
                    let payload = message.payload.to_vec();
                    let redelivered = message.info().map(|info| info.delivered > 1).unwrap_or(false);
                    anyhow::Ok((payload, redelivered, async move {
                        message.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
                        anyhow::Ok(())
                    }))
                });
                let result = consume_loop(shared, drain_until, deliveries).await;
                let _ = client.flush().await; // the last acks out before the connection goes
                result
            }));
        }
        let result = super::finish(args, &shared, started, producers, consumers).await;
        let _ = js.delete_stream(&args.queue).await;
        result.map(|()| shared)
    }
}

type Tasks = Vec<tokio::task::JoinHandle<anyhow::Result<()>>>;

async fn finish(
    args: &Args,
    shared: &Arc<Shared>,
    started: Instant,
    producers: Tasks,
    consumers: Tasks,
) -> anyhow::Result<()> {
    let until = started + Duration::from_secs(args.duration_secs);
    let (mut last_p, mut last_c) = (0, 0);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1).min(until.saturating_duration_since(Instant::now()))).await;
        let (p, c) = (shared.produced.load(Ordering::Relaxed), shared.consumed.load(Ordering::Relaxed));
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
    let mut first_error = None;
    for producer in producers {
        if let Err(e) = producer.await? {
            first_error.get_or_insert(e);
        }
    }
    let produce_secs = started.elapsed().as_secs_f64();
    shared.producing.store(false, Ordering::Relaxed);
    for consumer in consumers {
        if let Err(e) = consumer.await? {
            first_error.get_or_insert(e);
        }
    }
    let total_secs = started.elapsed().as_secs_f64();
    report(args, shared, produce_secs, total_secs).await;
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(())
}

async fn report(args: &Args, shared: &Shared, produce_secs: f64, total_secs: f64) {
    let mut samples = shared.samples.lock().await;
    samples.produce_call.sort();
    samples.produce_msg.sort();
    samples.end_to_end.sort();
    samples.consumed_ids.sort_unstable();
    let duplicates = samples.consumed_ids.windows(2).filter(|w| w[0] == w[1]).count();
    let pct =
        |v: &[Duration]| json!({"p50": percentile(v, 50.0), "p99": percentile(v, 99.0), "p999": percentile(v, 99.9)});
    let (p, c) = (shared.produced.load(Ordering::Relaxed), shared.consumed.load(Ordering::Relaxed));
    let mode = match args.mode {
        Mode::Batch => "batch",
        Mode::Window => "window",
    };
    let summary = json!({
        "queue": args.queue, "producers": args.producers, "consumers": args.consumers,
        "message_size": args.message_size, "batch": args.batch,
        "produced": p, "consumed": c,
        "produce_msgs_per_sec": p as f64 / produce_secs,
        "consume_msgs_per_sec": c as f64 / total_secs,
        "produce_call_ms": pct(&samples.produce_call),
        "end_to_end_ms": pct(&samples.end_to_end),
        "produce_msg_ms": pct(&samples.produce_msg),
        "mode": mode, "prefetch": args.prefetch,
        "consumer_errors": shared.errors.load(Ordering::Relaxed),
        "duplicates": duplicates,
        "redelivered": shared.redelivered.load(Ordering::Relaxed),
    });
    println!(
        "produced {p} in {produce_secs:.1}s ({:.0} msg/s), consumed {c} in {total_secs:.1}s ({:.0} msg/s)",
        p as f64 / produce_secs,
        c as f64 / total_secs
    );
    println!(
        "produce call ({}) ms: p50 {:.1}  p99 {:.1}  p999 {:.1}",
        if args.mode == Mode::Batch { format!("batch of {}", args.batch) } else { "one publish".into() },
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
    println!("BENCH {summary}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = cli.args;
    if args.batch == 0 || args.batch > 1000 || args.message_size < 16 || args.prefetch == 0 {
        eprintln!("error: --batch must be 1 to 1000, --message-size at least 16, --prefetch at least 1");
        return std::process::ExitCode::from(2);
    }
    let result = match &cli.system {
        System::Rabbitmq { urls, replicas } => rabbit::run(&args, urls, *replicas).await,
        System::Nats { urls, replicas } => nats::run(&args, urls, *replicas).await,
    };
    match result {
        Ok(shared) => {
            let (p, c) = (shared.produced.load(Ordering::Relaxed), shared.consumed.load(Ordering::Relaxed));
            if c < p {
                eprintln!("error: only {c} of {p} produced messages were consumed within --drain-secs");
                return std::process::ExitCode::from(1);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_by_rank_as_raftmq_bench_does() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), 51.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn the_publish_time_travels_in_the_first_eight_bytes() {
        let b = body(64, 7, None);
        assert_eq!(id_of(&b), 7);
        assert_eq!(b.len(), 64);
        assert!(b[16..].iter().all(|&x| x == b'x'));
        let age = age(&b, now_us() + 1500);
        assert!(age >= Duration::from_micros(1500) && age < Duration::from_secs(1));
    }

    #[test]
    fn random_bodies_keep_time_and_id_and_differ() {
        let pool = random_pool(1024);
        let (a, b) = (body(1024, 1, Some(&pool)), body(1024, 2, Some(&pool)));
        assert_eq!((id_of(&a), id_of(&b), a.len()), (1, 2, 1024));
        assert!(age(&a, now_us()) < Duration::from_secs(1));
        assert_ne!(a[16..], b[16..]);
        let distinct: std::collections::HashSet<u8> = a[16..].iter().copied().collect();
        assert!(distinct.len() > 200, "random bytes use most byte values: {}", distinct.len());
    }
}
