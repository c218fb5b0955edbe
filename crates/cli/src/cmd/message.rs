//! `raftmq produce|consume|ack|nack`.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, bail};
use raftmq_client::{Client, v1 as pb};

use super::output;

/// Messages per Produce call when reading stdin.
const PRODUCE_BATCH: usize = 500;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    queue: String,
    /// Message bodies; without any, each stdin line is one message.
    bodies: Vec<String>,
    /// A header for every message, KEY=VALUE; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// Producer dedup id of the one message given as an argument: sending it
    /// again within the queue's dedup window stores nothing new.
    #[arg(long)]
    dedup_id: Option<String>,
    /// Deliver the messages no earlier than this many ms after they are stored.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Drop (or dead-letter) the messages this many ms after they are stored.
    #[arg(long, default_value_t = 0)]
    ttl_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    queue: String,
    /// The subscription to consume from.
    #[arg(long, default_value = "default")]
    subscription: String,
    /// Messages per call, 1 to 1000.
    #[arg(long, default_value_t = 10)]
    pub max: u32,
    /// How long to wait when the queue is empty.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
    /// Lease duration; the queue's default when absent.
    #[arg(long)]
    visibility_timeout_ms: Option<u64>,
    /// Leave the messages leased instead of acknowledging them (prints receipts).
    #[arg(long)]
    pub no_ack: bool,
    /// Keep consuming until this many messages arrived or a wait returns nothing.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AckArgs {
    queue: String,
    #[arg(required = true)]
    receipts: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct NackArgs {
    queue: String,
    #[arg(required = true)]
    receipts: Vec<String>,
    /// Delay before the messages may be delivered again (0: at once); the
    /// queue's retry backoff when absent.
    #[arg(long)]
    delay_ms: Option<u64>,
}

fn parse_headers(headers: &[String]) -> anyhow::Result<std::collections::HashMap<String, String>> {
    headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("--header {h:?}: use KEY=VALUE"),
        })
        .collect()
}

pub async fn produce(client: &Client, args: ProduceArgs) -> anyhow::Result<()> {
    let headers = parse_headers(&args.headers)?;
    if args.dedup_id.is_some() && args.bodies.len() != 1 {
        bail!("--dedup-id names one message: pass exactly one body argument");
    }
    let dedup_id = args.dedup_id.clone().unwrap_or_default();
    let (delay_ms, ttl_ms) = (args.delay_ms, args.ttl_ms);
    let message = |body: String| pb::ProduceMessage {
        body: body.into(),
        headers: headers.clone(),
        dedup_id: dedup_id.clone(),
        delay_ms,
        ttl_ms,
        ..Default::default()
    };
    if !args.bodies.is_empty() {
        let offsets = client.produce(&args.queue, args.bodies.into_iter().map(message).collect()).await?;
        print_offsets(&offsets);
        return Ok(());
    }
    let stdin = std::io::stdin();
    let mut batch = Vec::new();
    let mut total = 0usize;
    for line in stdin.lock().lines() {
        let line = line.context("read stdin")?;
        if line.is_empty() {
            continue;
        }
        batch.push(message(line));
        if batch.len() == PRODUCE_BATCH {
            total += batch.len();
            print_offsets(&client.produce(&args.queue, std::mem::take(&mut batch)).await?);
        }
    }
    if !batch.is_empty() {
        total += batch.len();
        print_offsets(&client.produce(&args.queue, batch).await?);
    }
    if total == 0 {
        bail!("nothing to produce: pass bodies as arguments or lines on stdin");
    }
    Ok(())
}

fn print_offsets(offsets: &[u64]) {
    for offset in offsets {
        outln!("{offset}");
    }
}

pub async fn consume(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let mut received = 0u64;
    loop {
        let wanted = match args.count {
            Some(count) => (count - received).min(u64::from(args.max)) as u32,
            None => args.max,
        };
        let messages = client
            .consume_with(pb::ConsumeRequest {
                queue: args.queue.clone(),
                subscription: args.subscription.clone(),
                max_messages: wanted,
                wait_time_ms: args.wait_ms,
                visibility_timeout_ms: args.visibility_timeout_ms.unwrap_or(0),
                ..Default::default()
            })
            .await?;
        for m in &messages {
            if args.json {
                outln!("{}", output::message_json(m));
            } else {
                outln!("{}", output::message_text(m, args.no_ack));
            }
        }
        received += messages.len() as u64;
        if !args.no_ack && !messages.is_empty() {
            let receipts = messages.iter().map(|m| m.receipt.clone()).collect();
            let settled = client.ack(&args.queue, receipts).await?;
            for failed in &settled.failed {
                eprintln!("warning: ack of {} failed: {:?}", failed.receipt, failed.reason());
            }
        }
        let done = match args.count {
            Some(count) => received >= count || messages.is_empty(),
            None => true,
        };
        if done {
            return Ok(());
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PeekArgs {
    queue: String,
    /// Whose delivery state to show.
    #[arg(long, default_value = "default")]
    subscription: String,
    /// The first offset to show.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Stop before this offset.
    #[arg(long)]
    to: Option<u64>,
    /// At most this many messages, 1 to 1000.
    #[arg(long, default_value_t = 10)]
    max: u32,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
}

pub async fn peek(client: &Client, args: PeekArgs) -> anyhow::Result<()> {
    let page = client.peek(&args.queue, &args.subscription, args.from, args.to, args.max).await?;
    for m in &page.messages {
        if args.json {
            outln!("{}", output::peeked_json(m));
        } else {
            outln!("{}", output::peeked_text(m));
        }
    }
    if !args.json {
        eprintln!("next offset: {}", page.next_offset);
    }
    Ok(())
}

fn print_settled(verb: &str, settled: &pb::SettleResponse) -> anyhow::Result<()> {
    outln!("{verb} {}", settled.succeeded);
    for failed in &settled.failed {
        eprintln!("{}: {:?}", failed.receipt, failed.reason());
    }
    if !settled.failed.is_empty() {
        bail!("{} receipts did not take effect", settled.failed.len());
    }
    Ok(())
}

pub async fn ack(client: &Client, args: AckArgs) -> anyhow::Result<()> {
    print_settled("acked", &client.ack(&args.queue, args.receipts).await?)
}

pub async fn nack(client: &Client, args: NackArgs) -> anyhow::Result<()> {
    print_settled("nacked", &client.nack(&args.queue, args.receipts, args.delay_ms.map(Duration::from_millis)).await?)
}
