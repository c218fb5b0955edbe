//! `raftmq bench-idle`: what idle queues cost a running cluster.
//!
//! Creates the queues that are missing, waits until every node reports their
//! Raft groups quiet (idle, timers stopped), then reads each node's CPU time
//! and resident memory before and after `--secs` of doing nothing and prints
//! the share of one core each node used and its resident memory (before the
//! queues existed, once they were quiet, after measuring), plus one
//! machine-readable line.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use raftmq_client::{Client, v1 as pb};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Number of idle queues, named `<prefix>-0`, `<prefix>-1`, ...
    #[arg(long, default_value_t = 1000)]
    queues: u32,
    #[arg(long, default_value = "idle")]
    prefix: String,
    /// How long to measure, once the groups are quiet.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// How long to wait for the groups to go quiet; after that the run
    /// measures anyway (the summary counts the quiet groups), so that a
    /// cluster with quiet groups turned off can be measured too.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
    /// Queue creations in flight at once.
    #[arg(long, default_value_t = 8)]
    create_concurrency: usize,
    /// Delete the queues at the end.
    #[arg(long)]
    delete: bool,
}

/// One node's answer to GetClusterStatus, reduced to what this command needs.
#[derive(Debug, Clone)]
struct NodeReading {
    node_id: u64,
    cpu_micros: u64,
    rss_bytes: u64,
    /// Queue groups of this run hosted on the node, and how many are quiet.
    groups: usize,
    quiet: usize,
    /// Queues of this run the node hosts a group of.
    queues: BTreeSet<String>,
}

async fn read_nodes(endpoints: &[String], names: &BTreeSet<String>) -> anyhow::Result<Vec<NodeReading>> {
    let mut readings = Vec::new();
    for endpoint in endpoints {
        let client = Client::connect(std::slice::from_ref(endpoint))?.with_deadline(Duration::from_secs(5));
        let status = client.cluster_status().await?;
        readings.push(reading(&status, names));
    }
    Ok(readings)
}

fn reading(status: &pb::GetClusterStatusResponse, names: &BTreeSet<String>) -> NodeReading {
    let ours: Vec<&pb::GroupStatus> = status.groups.iter().filter(|g| names.contains(&g.queue)).collect();
    NodeReading {
        node_id: status.node_id,
        cpu_micros: status.process_cpu_micros,
        rss_bytes: status.process_rss_bytes,
        groups: ours.len(),
        quiet: ours.iter().filter(|g| g.quiet).count(),
        queues: ours.iter().map(|g| g.queue.clone()).collect(),
    }
}

/// Every queue has a group somewhere, and every group of the run is quiet.
fn all_quiet(readings: &[NodeReading], names: &BTreeSet<String>) -> bool {
    let hosted: BTreeSet<&String> = readings.iter().flat_map(|r| r.queues.iter()).collect();
    hosted.len() == names.len() && readings.iter().all(|r| r.quiet == r.groups)
}

/// CPU used between two readings of one node, as a percentage of one core.
fn cpu_percent(before: &NodeReading, after: &NodeReading, elapsed: Duration) -> f64 {
    let used = after.cpu_micros.saturating_sub(before.cpu_micros) as f64;
    used / (elapsed.as_secs_f64() * 1e6).max(1.0) * 100.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub async fn run(client: &Client, endpoints: &[String], args: IdleArgs) -> anyhow::Result<()> {
    if args.queues == 0 || args.create_concurrency == 0 {
        anyhow::bail!("--queues and --create-concurrency must be at least 1");
    }
    let names: BTreeSet<String> = (0..args.queues).map(|i| format!("{}-{i}", args.prefix)).collect();
    let before_create = read_nodes(endpoints, &names).await?;

    let existing: BTreeSet<String> = client.list_queues().await?.into_iter().map(|q| q.name).collect();
    let missing: Vec<&String> = names.iter().filter(|n| !existing.contains(*n)).collect();
    eprintln!("creating {} queues ({} exist already)", missing.len(), names.len() - missing.len());
    let create_started = Instant::now();
    let mut creates = futures::stream::iter(missing.iter().map(|name| async move {
        match client.create_queue(name, None).await {
            Err(e) if e.code() != Some(tonic::Code::AlreadyExists) => Err(anyhow::anyhow!("create {name}: {e}")),
            _ => Ok(()),
        }
    }))
    .buffer_unordered(args.create_concurrency);
    let mut created = 0;
    while let Some(result) = creates.next().await {
        result?;
        created += 1;
        if created % 100 == 0 {
            eprintln!("  {created} created in {:.1}s", create_started.elapsed().as_secs_f64());
        }
    }
    drop(creates);
    let create_secs = create_started.elapsed().as_secs_f64();

    let settle_started = Instant::now();
    let settled = loop {
        let readings = read_nodes(endpoints, &names).await?;
        if all_quiet(&readings, &names) {
            break readings;
        }
        if settle_started.elapsed() > Duration::from_secs(args.settle_secs) {
            let counts: Vec<String> =
                readings.iter().map(|r| format!("node {}: {}/{} quiet", r.node_id, r.quiet, r.groups)).collect();
            eprintln!(
                "the groups are not all quiet after {}s ({}); measuring anyway",
                args.settle_secs,
                counts.join(", ")
            );
            break readings;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let settle_secs = settle_started.elapsed().as_secs_f64();
    eprintln!("settled after {settle_secs:.1}s; measuring for {}s", args.secs);

    let measure_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let after = read_nodes(endpoints, &names).await?;
    let elapsed = measure_started.elapsed();

    let mut nodes = Vec::new();
    outln!("{} idle queues; created in {create_secs:.1}s, quiet {settle_secs:.1}s later", names.len());
    outln!(
        "{:<6} {:>7} {:>7} {:>12} {:>16} {:>12} {:>16}",
        "node",
        "groups",
        "quiet",
        "cpu % core",
        "rss MiB: before",
        "when quiet",
        "after measuring"
    );
    for node in &after {
        let Some(start) = settled.iter().find(|r| r.node_id == node.node_id) else { continue };
        let rss_before = before_create.iter().find(|r| r.node_id == node.node_id).map_or(0, |r| r.rss_bytes);
        let cpu = cpu_percent(start, node, elapsed);
        outln!(
            "{:<6} {:>7} {:>7} {:>12.2} {:>16.1} {:>12.1} {:>16.1}",
            node.node_id,
            node.groups,
            node.quiet,
            cpu,
            mib(rss_before),
            mib(start.rss_bytes),
            mib(node.rss_bytes)
        );
        nodes.push(json!({
            "node": node.node_id, "groups": node.groups, "quiet": node.quiet, "cpu_percent": cpu,
            "rss_bytes_before": rss_before, "rss_bytes_settled": start.rss_bytes, "rss_bytes": node.rss_bytes,
        }));
    }
    let max_cpu = after
        .iter()
        .filter_map(|node| settled.iter().find(|r| r.node_id == node.node_id).map(|s| cpu_percent(s, node, elapsed)))
        .fold(0.0, f64::max);
    let summary = json!({
        "idle_queues": names.len(), "create_secs": create_secs, "settle_secs": settle_secs,
        "measure_secs": elapsed.as_secs_f64(), "max_cpu_percent": max_cpu, "nodes": nodes,
    });
    outln!("BENCH {summary}");

    if args.delete {
        for name in &names {
            client.delete_queue(name).await?;
        }
        eprintln!("deleted {} queues", names.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node_id: u64, cpu_micros: u64, queues: &[&str], quiet: usize) -> NodeReading {
        NodeReading {
            node_id,
            cpu_micros,
            rss_bytes: 0,
            groups: queues.len(),
            quiet,
            queues: queues.iter().map(|q| q.to_string()).collect(),
        }
    }

    #[test]
    fn quiet_needs_every_queue_hosted_and_every_group_quiet() {
        let names: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert!(all_quiet(&[node(1, 0, &["a", "b"], 2), node(2, 0, &["a"], 1)], &names));
        assert!(!all_quiet(&[node(1, 0, &["a", "b"], 1), node(2, 0, &["a"], 1)], &names));
        // Queue b's group has not started anywhere yet.
        assert!(!all_quiet(&[node(1, 0, &["a"], 1)], &names));
    }

    #[test]
    fn cpu_is_a_share_of_one_core() {
        let (before, after) = (node(1, 1_000_000, &[], 0), node(1, 1_500_000, &[], 0));
        let percent = cpu_percent(&before, &after, Duration::from_secs(10));
        assert!((percent - 5.0).abs() < 1e-9, "{percent}");
    }
}
