//! `raftmq subscription create|list|delete|seek`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Subcommand;
use raftmq_client::{Client, v1 as pb};
use serde_json::json;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Start {
    /// Only messages produced from now on.
    Latest,
    /// Every message the queue still stores.
    Earliest,
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionCommand {
    /// Add a subscription: it receives every message, with its own leases and acks.
    Create {
        queue: String,
        name: String,
        /// Where it starts.
        #[arg(long, value_enum, default_value_t = Start::Latest)]
        from: Start,
    },
    /// List a queue's subscriptions with their counts.
    List {
        queue: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a subscription and its delivery state.
    Delete { queue: String, name: String },
    /// Replay or skip: the subscription holds every stored message from the
    /// target on, as never delivered, and is done with the earlier ones.
    Seek {
        queue: String,
        /// The subscription (default: "default").
        #[arg(long, default_value = "default")]
        subscription: String,
        /// From this offset.
        #[arg(long, group = "target")]
        offset: Option<u64>,
        /// From messages published at or after this time (ms since the Unix epoch).
        #[arg(long, group = "target")]
        time_ms: Option<u64>,
        /// From messages published this long ago or later, e.g. "10m" or "2h".
        #[arg(long, group = "target", value_parser = humantime::parse_duration)]
        since: Option<Duration>,
    },
}

fn subscription_json(s: &pb::Subscription) -> serde_json::Value {
    json!({
        "name": s.name, "depth": s.depth, "in_flight": s.in_flight, "delayed": s.delayed,
        "available": s.available, "dead": s.dead,
    })
}

pub async fn run(client: &Client, command: SubscriptionCommand) -> anyhow::Result<()> {
    match command {
        SubscriptionCommand::Create { queue, name, from } => {
            let created = client.create_subscription(&queue, &name, matches!(from, Start::Earliest)).await?;
            outln!("created subscription {} of {queue}, holding {} messages", created.name, created.depth);
        }
        SubscriptionCommand::List { queue, json } => {
            let subscriptions = client.list_subscriptions(&queue).await?;
            if json {
                outln!("{}", serde_json::Value::Array(subscriptions.iter().map(subscription_json).collect()));
            } else {
                outln!(
                    "{:<40} {:>10} {:>10} {:>10} {:>10} {:>8}",
                    "name",
                    "depth",
                    "available",
                    "in_flight",
                    "delayed",
                    "dead"
                );
                for s in &subscriptions {
                    outln!(
                        "{:<40} {:>10} {:>10} {:>10} {:>10} {:>8}",
                        s.name,
                        s.depth,
                        s.available,
                        s.in_flight,
                        s.delayed,
                        s.dead
                    );
                }
            }
        }
        SubscriptionCommand::Delete { queue, name } => {
            client.delete_subscription(&queue, &name).await?;
            outln!("deleted subscription {name} of {queue}");
        }
        SubscriptionCommand::Seek { queue, subscription, offset, time_ms, since } => {
            let target = match (offset, time_ms, since) {
                (Some(offset), _, _) => pb::seek_request::Target::Offset(offset),
                (_, Some(time_ms), _) => pb::seek_request::Target::TimeMs(time_ms),
                (_, _, Some(since)) => {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
                    pb::seek_request::Target::TimeMs(now.saturating_sub(since).as_millis() as u64)
                }
                _ => bail!("say where to seek: --offset, --time-ms or --since"),
            };
            let pending = client.seek(&queue, &subscription, target).await?;
            outln!("subscription {subscription} of {queue} now holds {pending} messages");
        }
    }
    Ok(())
}
