//! `raftmq cluster status`.

use clap::Subcommand;
use raftmq_client::Client;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, and per Raft group the leader, term, commit and applied index,
    /// the index the log is purged through and the first entry this node
    /// still stores (entries at or below the purged index are kept for
    /// message bodies still stored in them), whether the group is quiet (idle,
    /// its timers stopped), and how many of the queue's messages this node
    /// indexes in memory and keeps on disk only.
    Status,
}

pub async fn run(client: &Client, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            outln!(
                "answered by node {} (cpu {:.1} s since start, {} MiB resident, {} runtime threads)",
                status.node_id,
                status.process_cpu_micros as f64 / 1e6,
                status.process_rss_bytes / (1024 * 1024),
                status.worker_threads
            );
            outln!("{:<6} {:<24} reachable", "node", "address");
            for node in &status.nodes {
                outln!("{:<6} {:<24} {}", node.id, node.addr, if node.reachable { "yes" } else { "no" });
            }
            outln!();
            outln!(
                "{:<8} {:<30} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5} {:>10} {:>10}  voters",
                "group",
                "queue",
                "leader",
                "term",
                "commit",
                "applied",
                "last_log",
                "purged",
                "first_log",
                "quiet",
                "in_memory",
                "on_disk"
            );
            for g in &status.groups {
                let queue = if g.group_id == 0 { "(meta)" } else { g.queue.as_str() };
                outln!(
                    "{:<8} {:<30} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>5} {:>10} {:>10}  {:?}",
                    g.group_id,
                    queue,
                    g.leader_id,
                    g.term,
                    g.commit_index,
                    g.applied_index,
                    g.last_log_index,
                    g.purged_index,
                    g.first_log_index,
                    if g.quiet { "yes" } else { "no" },
                    g.messages_in_memory,
                    g.messages_evicted,
                    g.voters
                );
            }
        }
    }
    Ok(())
}
