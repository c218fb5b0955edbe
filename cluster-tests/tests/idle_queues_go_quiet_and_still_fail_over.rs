//! Idle queue groups stop their Raft timers (quiet), and that costs nothing
//! in availability:
//!
//! - `raftmq bench-idle` creates queues, sees every group on every node go
//!   quiet, and measures the nodes' CPU while they idle;
//! - a produce to a quiet queue commits at once (its leader renews its lease
//!   first), wakes the group, and the group goes quiet again afterwards;
//! - kill -9 of a quiet queue's leader: the survivors elect a new leader from
//!   the node heartbeats alone, nothing acknowledged is lost, and the two
//!   survivors go quiet again with a node down;
//! - the killed node restarts, learns its groups' leaders, and every group
//!   goes quiet again.

use std::collections::BTreeSet;
use std::time::Duration;

use raftmq_cluster_tests::pb::GetClusterStatusResponse;
use raftmq_cluster_tests::{
    NodeId, READY_TIMEOUT, TestCluster, body_text, poll_until, raftmq_command, retry_unavailable, run_with_timeout,
};
use tokio::time::Instant;

const QUEUES: u32 = 40;
const PREFIX: &str = "idle";
/// Quiet after about twice the maximum election timeout of idling, plus the
/// rounds in which nodes hear of each other.
const QUIET_TIMEOUT: Duration = Duration::from_secs(30);

fn queue_names() -> BTreeSet<String> {
    (0..QUEUES).map(|i| format!("{PREFIX}-{i}")).collect()
}

/// (groups of the test's queues, how many are quiet) on one node.
fn quiet_count(status: &GetClusterStatusResponse, names: &BTreeSet<String>) -> (usize, usize) {
    let ours: Vec<_> = status.groups.iter().filter(|g| names.contains(&g.queue)).collect();
    (ours.len(), ours.iter().filter(|g| g.quiet).count())
}

/// Waits until each of `nodes` hosts a group of every queue and all are quiet.
async fn wait_all_quiet(cluster: &TestCluster, nodes: &[NodeId], what: &str) {
    let names = queue_names();
    let started = Instant::now();
    poll_until(QUIET_TIMEOUT, what, async || {
        for node in nodes {
            let status = cluster.client(*node).cluster_status().await.ok()?;
            let (groups, quiet) = quiet_count(&status, &names);
            if groups != names.len() || quiet != groups {
                return None;
            }
        }
        Some(())
    })
    .await;
    println!("{what}: after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_queues_go_quiet_and_still_fail_over() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let everyone = cluster.node_ids();

    let queues = QUEUES.to_string();
    let args =
        ["bench-idle", "--endpoints", &cluster.endpoints(), "--queues", &queues, "--prefix", PREFIX, "--secs", "5"];
    let output = run_with_timeout(raftmq_command(args), None, Duration::from_secs(120)).await;
    output.assert_success();
    let summary = output.bench_summary();
    let nodes = summary["nodes"].as_array().expect("per-node readings");
    assert_eq!(nodes.len(), 3, "{summary}");
    for node in nodes {
        assert_eq!(node["groups"].as_u64(), Some(u64::from(QUEUES)), "every node hosts every queue: {summary}");
        assert_eq!(node["quiet"], node["groups"], "every group quiet at the end of the measurement: {summary}");
        assert!(node["rss_bytes"].as_u64().is_some_and(|rss| rss > 0), "{summary}");
    }
    // Quiet groups wake nothing: what is left is the meta group and the node
    // heartbeats, 1.0-1.6% of a core per node here. With quiet groups turned
    // off the same 40 queues cost 11-15% (raft.quiet_idle_groups = false,
    // measured with bench-idle); the figures come from full-size bench-idle
    // runs, this only guards against losing the effect.
    let max_cpu = summary["max_cpu_percent"].as_f64().expect("cpu");
    assert!(max_cpu > 0.0 && max_cpu < 5.0, "idle nodes used {max_cpu:.2}% of a core: {summary}");

    // A write to a quiet group commits without waiting for any timer.
    let queue = format!("{PREFIX}-0");
    let leader = cluster.leader_of(&queue, Duration::from_secs(10)).await;
    let started = Instant::now();
    let offsets = cluster.client(leader).produce(&queue, ["before the kill"]).await.expect("produce to a quiet group");
    println!("produce to a quiet group took {:?}", started.elapsed());
    assert_eq!(offsets.len(), 1);
    // The write wakes the leader's group (it heartbeats until the followers
    // have the commit index), and it goes quiet again later.
    poll_until(Duration::from_secs(5), "the leader's group wakes after the write", async || {
        let group = cluster.group_status(leader, &queue).await?;
        (!group.quiet).then_some(())
    })
    .await;
    wait_all_quiet(&cluster, &everyone, "the written group is quiet again").await;

    cluster.kill(leader);
    let survivors: Vec<NodeId> = everyone.iter().copied().filter(|id| *id != leader).collect();
    let killed_at = Instant::now();
    let new_leader = cluster.leader_of(&queue, Duration::from_secs(20)).await;
    println!("node {new_leader} leads {queue} {:?} after the kill", killed_at.elapsed());
    let consumer = cluster.client(survivors[0]);
    let messages = retry_unavailable(Duration::from_secs(20), async || consumer.consume(&queue, 10, 1000, 0).await)
        .await
        .expect("consume after the failover");
    assert_eq!(messages.iter().map(body_text).collect::<Vec<_>>(), ["before the kill"]);
    let receipts = messages.iter().map(|m| m.receipt.clone()).collect();
    consumer.ack(&queue, receipts).await.expect("ack after the failover");
    // The queues the dead node led fail over too, once each survivor's
    // staleness limit passes: every group on the survivors gets a leader.
    let names = queue_names();
    poll_until(Duration::from_secs(30), "every queue has a live leader", async || {
        let mut led = BTreeSet::new();
        for node in &survivors {
            let status = cluster.client(*node).cluster_status().await.ok()?;
            led.extend(status.groups.into_iter().filter(|g| g.leader_id == *node).map(|g| g.queue));
        }
        names.is_subset(&led).then_some(())
    })
    .await;
    println!("every queue led by a survivor {:?} after the kill", killed_at.elapsed());
    wait_all_quiet(&cluster, &survivors, "the survivors are quiet with a node down").await;

    cluster.restart(leader);
    cluster.wait_ready(READY_TIMEOUT).await;
    wait_all_quiet(&cluster, &everyone, "the restarted node's groups are quiet again").await;
    let status = cluster.client(leader).cluster_status().await.expect("status of the restarted node");
    for group in status.groups.iter().filter(|g| names.contains(&g.queue)) {
        assert!(group.leader_id != 0, "restarted node knows the leader of {}: {group:?}", group.queue);
    }
    cluster.assert_running();
}
