//! `raftmq queue create|list|get|delete|purge`.

use clap::Subcommand;
use raftmq_client::{Client, v1 as pb};

use super::output;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue.
    Create {
        name: String,
        /// Default lease duration of consumed messages (default 30000).
        #[arg(long)]
        visibility_timeout_ms: Option<u64>,
        /// Largest accepted message, body plus headers (default 1048576).
        #[arg(long)]
        max_message_bytes: Option<u64>,
        /// Number of replicas (default 3, capped at the cluster size).
        #[arg(long)]
        replication_factor: Option<u32>,
        /// How long a produced dedup id is remembered (default 300000; 0 turns dedup off).
        #[arg(long)]
        dedup_window_ms: Option<u64>,
        /// Most unacknowledged messages; produces beyond it fail (default: no limit).
        #[arg(long)]
        max_messages: Option<u64>,
        /// Most bytes of unacknowledged messages; produces beyond it fail (default: no limit).
        #[arg(long)]
        max_bytes: Option<u64>,
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
        #[arg(long)]
        visibility_timeout_ms: Option<u64>,
        #[arg(long)]
        max_message_bytes: Option<u64>,
        /// 0 turns dedup off.
        #[arg(long)]
        dedup_window_ms: Option<u64>,
        /// 0 removes the limit.
        #[arg(long)]
        max_messages: Option<u64>,
        /// 0 removes the limit.
        #[arg(long)]
        max_bytes: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(client: &Client, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Create {
            name,
            visibility_timeout_ms,
            max_message_bytes,
            replication_factor,
            dedup_window_ms,
            max_messages,
            max_bytes,
            json,
        } => {
            let config = pb::QueueConfig {
                visibility_timeout_ms: visibility_timeout_ms.unwrap_or(0),
                max_message_bytes: max_message_bytes.unwrap_or(0),
                replication_factor: replication_factor.unwrap_or(0),
                dedup_window_ms,
                max_messages: max_messages.unwrap_or(0),
                max_bytes: max_bytes.unwrap_or(0),
            };
            let queue = client.create_queue(&name, Some(config)).await?;
            if json {
                println!("{}", output::queue_json(&queue));
            } else {
                println!("created queue {} on nodes {:?}", queue.name, queue.replicas);
            }
        }
        QueueCommand::List { json } => {
            let queues = client.list_queues().await?;
            if json {
                println!("{}", serde_json::Value::Array(queues.iter().map(output::queue_json).collect()));
            } else if queues.is_empty() {
                println!("no queues");
            } else {
                println!("{:<40} {:>10} {:>10} {:>8}  replicas", "name", "depth", "in_flight", "leader");
                for q in &queues {
                    let (depth, in_flight, leader) = match &q.stats {
                        Some(s) => (s.depth.to_string(), s.in_flight.to_string(), s.leader_id.to_string()),
                        None => ("-".into(), "-".into(), "-".into()),
                    };
                    println!("{:<40} {depth:>10} {in_flight:>10} {leader:>8}  {:?}", q.name, q.replicas);
                }
            }
        }
        QueueCommand::Get { name, json } => {
            let queue = client.get_queue(&name).await?;
            if json {
                println!("{}", output::queue_json(&queue));
            } else {
                print!("{}", output::queue_text(&queue));
            }
        }
        QueueCommand::Update {
            name,
            visibility_timeout_ms,
            max_message_bytes,
            dedup_window_ms,
            max_messages,
            max_bytes,
            json,
        } => {
            let update = pb::QueueConfigUpdate {
                visibility_timeout_ms,
                max_message_bytes,
                dedup_window_ms,
                max_messages,
                max_bytes,
            };
            let queue = client.update_queue(&name, update).await?;
            if json {
                println!("{}", output::queue_json(&queue));
            } else {
                print!("{}", output::queue_text(&queue));
            }
        }
        QueueCommand::Delete { name } => {
            client.delete_queue(&name).await?;
            println!("deleted queue {name}");
        }
        QueueCommand::Purge { name } => {
            let removed = client.purge_queue(&name).await?;
            println!("purged {removed} messages from {name}");
        }
    }
    Ok(())
}
