//! `raftmq queue create|list|get|delete|purge|update|redrive`.

use clap::Subcommand;
use raftmq_client::{Client, v1 as pb};

use super::output;

/// Queue settings, for `create` (absent: the default) and `update` (absent: unchanged).
#[derive(Debug, clap::Args)]
pub struct Settings {
    /// Default lease duration of consumed messages (default 30000).
    #[arg(long)]
    visibility_timeout_ms: Option<u64>,
    /// Largest accepted message, body plus headers (default 1048576).
    #[arg(long)]
    max_message_bytes: Option<u64>,
    /// How long a produced dedup id is remembered (default 300000; 0 turns dedup off).
    #[arg(long)]
    dedup_window_ms: Option<u64>,
    /// Most unacknowledged messages; produces beyond it fail (default and 0: no limit).
    #[arg(long)]
    max_messages: Option<u64>,
    /// Most bytes of unacknowledged messages; produces beyond it fail (default and 0: no limit).
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Shortest redelivery backoff after a nack or an expired lease (default 1000).
    #[arg(long)]
    retry_backoff_min_ms: Option<u64>,
    /// Longest redelivery backoff (default 300000).
    #[arg(long)]
    retry_backoff_max_ms: Option<u64>,
    /// Deliveries after which an unacknowledged message dies (default and 0: no limit).
    #[arg(long)]
    max_deliveries: Option<u32>,
    /// Queue that dead messages move to ("" for none: they are dropped).
    #[arg(long)]
    dead_letter_queue: Option<String>,
    /// Time to live of every message (default and 0: forever).
    #[arg(long)]
    message_ttl_ms: Option<u64>,
    /// What happens to expired messages (default: drop).
    #[arg(long, value_enum)]
    expiry_action: Option<ExpiryAction>,
    /// Keep messages every subscription is done with this long, for seek and
    /// new subscriptions (default 0; retention is off while this and
    /// --retention-bytes are 0).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Most bytes of such messages kept, oldest deleted first (default and 0: no limit).
    #[arg(long)]
    retention_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExpiryAction {
    Drop,
    DeadLetter,
}

impl From<ExpiryAction> for pb::ExpiryAction {
    fn from(action: ExpiryAction) -> Self {
        match action {
            ExpiryAction::Drop => pb::ExpiryAction::Drop,
            ExpiryAction::DeadLetter => pb::ExpiryAction::DeadLetter,
        }
    }
}

impl Settings {
    fn config(self, replication_factor: Option<u32>) -> pb::QueueConfig {
        pb::QueueConfig {
            visibility_timeout_ms: self.visibility_timeout_ms.unwrap_or(0),
            max_message_bytes: self.max_message_bytes.unwrap_or(0),
            replication_factor: replication_factor.unwrap_or(0),
            dedup_window_ms: self.dedup_window_ms,
            max_messages: self.max_messages.unwrap_or(0),
            max_bytes: self.max_bytes.unwrap_or(0),
            retry_backoff_min_ms: self.retry_backoff_min_ms,
            retry_backoff_max_ms: self.retry_backoff_max_ms,
            max_deliveries: self.max_deliveries.unwrap_or(0),
            dead_letter_queue: self.dead_letter_queue.unwrap_or_default(),
            message_ttl_ms: self.message_ttl_ms.unwrap_or(0),
            expiry_action: pb::ExpiryAction::from(self.expiry_action.unwrap_or(ExpiryAction::Drop)) as i32,
            retention_ms: self.retention_ms.unwrap_or(0),
            retention_bytes: self.retention_bytes.unwrap_or(0),
        }
    }

    fn update(self) -> pb::QueueConfigUpdate {
        pb::QueueConfigUpdate {
            visibility_timeout_ms: self.visibility_timeout_ms,
            max_message_bytes: self.max_message_bytes,
            dedup_window_ms: self.dedup_window_ms,
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            retry_backoff_min_ms: self.retry_backoff_min_ms,
            retry_backoff_max_ms: self.retry_backoff_max_ms,
            max_deliveries: self.max_deliveries,
            dead_letter_queue: self.dead_letter_queue,
            message_ttl_ms: self.message_ttl_ms,
            expiry_action: self.expiry_action.map(|a| pb::ExpiryAction::from(a) as i32),
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue.
    Create {
        name: String,
        /// Number of replicas (default 3, capped at the cluster size).
        #[arg(long)]
        replication_factor: Option<u32>,
        #[command(flatten)]
        settings: Settings,
        #[arg(long)]
        json: bool,
    },
    /// List queues.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a queue with its statistics.
    Get {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a queue and all its messages.
    Delete { name: String },
    /// Remove every message of a queue.
    Purge { name: String },
    /// Change settings of a queue; only the ones given change.
    Update {
        name: String,
        #[command(flatten)]
        settings: Settings,
        #[arg(long)]
        json: bool,
    },
    /// Move messages of a dead-letter queue back to the queues they died in.
    Redrive {
        /// The dead-letter queue.
        name: String,
        /// At most this many (default: all that are available).
        #[arg(long, default_value_t = 0)]
        max: u64,
    },
}

pub async fn run(client: &Client, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Create { name, replication_factor, settings, json } => {
            let queue = client.create_queue(&name, Some(settings.config(replication_factor))).await?;
            if json {
                outln!("{}", output::queue_json(&queue));
            } else {
                outln!("created queue {} on nodes {:?}", queue.name, queue.replicas);
            }
        }
        QueueCommand::List { json } => {
            let queues = client.list_queues().await?;
            if json {
                outln!("{}", serde_json::Value::Array(queues.iter().map(output::queue_json).collect()));
            } else if queues.is_empty() {
                outln!("no queues");
            } else {
                outln!("{:<40} {:>10} {:>10} {:>8}  replicas", "name", "depth", "in_flight", "leader");
                for q in &queues {
                    let (depth, in_flight, leader) = match &q.stats {
                        Some(s) => (s.depth.to_string(), s.in_flight.to_string(), s.leader_id.to_string()),
                        None => ("-".into(), "-".into(), "-".into()),
                    };
                    outln!("{:<40} {depth:>10} {in_flight:>10} {leader:>8}  {:?}", q.name, q.replicas);
                }
            }
        }
        QueueCommand::Get { name, json } => {
            let queue = client.get_queue(&name).await?;
            if json {
                outln!("{}", output::queue_json(&queue));
            } else {
                out!("{}", output::queue_text(&queue));
            }
        }
        QueueCommand::Update { name, settings, json } => {
            let queue = client.update_queue(&name, settings.update()).await?;
            if json {
                outln!("{}", output::queue_json(&queue));
            } else {
                out!("{}", output::queue_text(&queue));
            }
        }
        QueueCommand::Redrive { name, max } => {
            let redriven = client.redrive(&name, max).await?;
            outln!("moved {} messages from {name} back to their queues", redriven.moved);
            if redriven.skipped > 0 {
                outln!("left {} in {name}: {}", redriven.skipped, redriven.skipped_reasons.join("; "));
            }
        }
        QueueCommand::Delete { name } => {
            client.delete_queue(&name).await?;
            outln!("deleted queue {name}");
        }
        QueueCommand::Purge { name } => {
            let removed = client.purge_queue(&name).await?;
            outln!("purged {removed} messages from {name}");
        }
    }
    Ok(())
}
