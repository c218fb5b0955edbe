//! `raftmq.v1.ClusterService`: what this node knows of the cluster.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::v1::cluster_service_client::ClusterServiceClient;
use raftmq_proto::v1::cluster_service_server::ClusterService;
use raftmq_proto::v1::{GetClusterStatusRequest, GetClusterStatusResponse, GroupStatus, NodeInfo, StageLatency};
use raftmq_raft::GroupManager;
use raftmq_storage::TypeConfig;
use raftmq_storage::stages;
use raftmq_types::{GroupId, META_GROUP_ID};
use tonic::{Request, Response, Status};

use crate::routing::{CallContext, Router};

pub struct ClusterServiceImpl {
    router: Arc<Router>,
}

impl ClusterServiceImpl {
    pub fn new(router: Arc<Router>) -> Self {
        ClusterServiceImpl { router }
    }
}

impl ClusterServiceImpl {
    /// The meta leader's view of the nodes, or `None` if it does not answer within a second.
    async fn nodes_from(&self, leader: u64, ctx: CallContext) -> Option<Vec<NodeInfo>> {
        let addr = self.router.groups().member_addr(leader)?;
        let channel = self.router.groups().peers().channel(&addr).ok()?;
        let mut request = ctx.forward(GetClusterStatusRequest {});
        request.set_timeout(Duration::from_secs(1));
        let response = ClusterServiceClient::new(channel).get_cluster_status(request).await.ok()?;
        Some(response.into_inner().nodes)
    }
}

/// The answer: this node's id and write-ahead-log counters with `nodes` and `groups`.
fn status(manager: &GroupManager, nodes: Vec<NodeInfo>, groups: Vec<GroupStatus>) -> GetClusterStatusResponse {
    let syncer = manager.storage().syncer();
    let usage = process_usage();
    GetClusterStatusResponse {
        node_id: manager.node_id(),
        nodes,
        groups,
        wal_syncs: syncer.sync_count(),
        wal_sync_requests: syncer.request_count(),
        wal_sync_micros: syncer.sync_micros(),
        log_entries_read_from_memory: manager.storage().log_reads().from_memory(),
        log_entries_read_from_disk: manager.storage().log_reads().from_disk(),
        bodies_read_from_memory: manager.storage().body_reads().from_memory(),
        bodies_read_from_disk: manager.storage().body_reads().from_disk(),
        bodies_left_in_log: manager.storage().body_writes().left_in_log(),
        bodies_copied_out_of_log: manager.storage().body_writes().copied_out_of_log(),
        process_cpu_micros: usage.cpu_micros,
        process_rss_bytes: usage.rss_bytes,
        worker_threads: u32::try_from(tokio::runtime::Handle::current().metrics().num_workers()).unwrap_or(u32::MAX),
        stage_latencies: stages::serialized()
            .into_iter()
            .map(|(stage, histogram, count)| StageLatency { stage: stage.name().to_string(), histogram, count })
            .collect(),
    }
}

/// This process's CPU time and resident memory.
#[derive(Default)]
struct ProcessUsage {
    cpu_micros: u64,
    rss_bytes: u64,
}

#[cfg(target_os = "linux")]
fn process_usage() -> ProcessUsage {
    match procfs::process::Process::myself().and_then(|me| me.stat()) {
        Ok(stat) => ProcessUsage {
            cpu_micros: (stat.utime + stat.stime) * 1_000_000 / procfs::ticks_per_second().max(1),
            rss_bytes: stat.rss * procfs::page_size(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not read this process's cpu time and memory");
            ProcessUsage::default()
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn process_usage() -> ProcessUsage {
    ProcessUsage::default()
}

fn group_status(
    group_id: GroupId,
    queue: String,
    metrics: &openraft::RaftMetrics<TypeConfig>,
    quiet: bool,
    (messages_in_memory, messages_evicted): (u64, u64),
    first_log_index: Option<u64>,
) -> GroupStatus {
    let last_log_index = metrics.last_log_index.unwrap_or(0);
    let replication_lag = metrics
        .replication
        .as_ref()
        .map(|progress| {
            progress
                .iter()
                .filter(|(id, _)| **id != metrics.id)
                .map(|(id, matched)| {
                    let matched = matched.as_ref().map(|l| l.index()).unwrap_or(0);
                    (*id, last_log_index.saturating_sub(matched))
                })
                .collect()
        })
        .unwrap_or_default();
    GroupStatus {
        group_id: group_id.0,
        queue,
        leader_id: metrics.current_leader.unwrap_or(0),
        term: metrics.current_term,
        commit_index: metrics.local_committed.as_ref().map(|l| l.index()).unwrap_or(0),
        applied_index: metrics.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
        last_log_index,
        voters: metrics.membership_config.membership().voter_ids().collect(),
        replication_lag,
        quiet,
        messages_in_memory,
        messages_evicted,
        snapshot_index: metrics.snapshot.as_ref().map(|l| l.index()).unwrap_or(0),
        purged_index: metrics.purged.as_ref().map(|l| l.index()).unwrap_or(0),
        first_log_index: first_log_index.unwrap_or(0),
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterServiceImpl {
    async fn get_cluster_status(
        &self,
        request: Request<GetClusterStatusRequest>,
    ) -> Result<Response<GetClusterStatusResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let groups = self.router.groups();
        let meta_metrics = groups.meta().metrics().borrow_watched().clone();
        let first_log_index = |group| {
            groups.storage().first_log_index(group).map_err(|e| Status::internal(format!("reading the log: {e}")))
        };
        let meta_first = first_log_index(META_GROUP_ID)?;
        let mut statuses = vec![group_status(META_GROUP_ID, String::new(), &meta_metrics, false, (0, 0), meta_first)];
        for group in groups.queue_groups() {
            let metrics = group.raft.metrics().borrow_watched().clone();
            let resident = group.reader.state().resident();
            let queue = group.queue.to_string();
            let first = first_log_index(group.group_id)?;
            statuses.push(group_status(group.group_id, queue, &metrics, group.is_quiet(), resident, first));
        }
        // Only the meta leader hears from every node; a follower asks it for
        // the node list and falls back to what it knows itself.
        if let Some(leader) = meta_metrics.current_leader.filter(|l| *l != groups.node_id())
            && ctx.can_forward()
            && let Some(nodes) = self.nodes_from(leader, ctx).await
        {
            return Ok(Response::new(status(groups, nodes, statuses)));
        }
        // A peer is reachable if the meta leader heard from it recently.
        let heartbeat = meta_metrics.heartbeat.clone();
        let mut nodes = Vec::new();
        for (id, node) in groups.members() {
            let reachable = id == groups.node_id()
                || Some(id) == meta_metrics.current_leader
                || heartbeat
                    .as_ref()
                    .and_then(|h| h.get(&id).cloned().flatten())
                    .map(|t| openraft::Instant::elapsed(&*t) < Duration::from_secs(3))
                    .unwrap_or(false);
            nodes.push(NodeInfo { id, addr: node.addr, reachable });
        }
        Ok(Response::new(status(groups, nodes, statuses)))
    }
}
