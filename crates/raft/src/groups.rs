//! The group manager: the meta group, and one Raft group per queue hosted here.
//!
//! Every node runs the meta group. It watches the catalog the meta group
//! replicates and starts (or stops and deletes) the queue groups for which the
//! catalog lists it as a replica. All groups share the node's RocksDB instance
//! and its peer channels.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use openraft::BasicNode;
use openraft::errors::{ClientWriteError, ForwardReason, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use raftmq_storage::{
    ApplyWrite, Catalog, LogStore, MetaStateMachine, QueueReader, QueueStateMachine, SnapshotDue, Storage, TypeConfig,
};
use raftmq_types::{GroupId, META_GROUP_ID, NodeId, QueueName, RaftRequest};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::network::GroupNetworkFactory;
use crate::peers::PeerChannels;
use crate::quiesce::{self, Quiescence};

pub type MetaRaft = openraft::Raft<TypeConfig, MetaStateMachine>;
pub type QueueRaft = openraft::Raft<TypeConfig, QueueStateMachine>;

/// Raft timing, shared by every group of the node.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Whether idle queue groups may stop their timers ([`crate::quiesce`]).
    pub quiet_idle_groups: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("start raft group {group_id}: {message}")]
    Start { group_id: GroupId, message: String },
    #[error("storage: {0}")]
    Storage(String),
}

/// A queue group hosted on this node.
#[derive(Clone)]
pub struct QueueGroup {
    pub group_id: GroupId,
    pub queue: QueueName,
    pub raft: QueueRaft,
    /// Read access to the applied queue state and message bodies.
    pub reader: QueueReader,
    /// Set while the group is quiet, its timers stopped ([`crate::quiesce`]).
    quiet: Arc<AtomicBool>,
}

impl QueueGroup {
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    /// Marks the group quiet or not; returns whether it was.
    pub(crate) fn set_quiet(&self, quiet: bool) -> bool {
        self.quiet.swap(quiet, Ordering::Relaxed)
    }

    /// Appends `request` to the group's log and waits until it is applied;
    /// this node must lead the group.
    ///
    /// openraft refuses writes from a leader without a quorum acknowledgement
    /// within the maximum election timeout (its lease). A quiet leader sends
    /// no heartbeats, so its lease has run out: one heartbeat round renews it
    /// first. A group woken a moment ago may still answer `LeaseExpired`; then
    /// a heartbeat round is started for the caller's retry.
    pub async fn write(
        &self,
        request: RaftRequest,
    ) -> Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>> {
        if self.is_quiet() {
            // An error means this node no longer leads; the write reports it.
            let _ = self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await;
        }
        let result = self.raft.client_write(request).await;
        if let Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) = &result
            && matches!(forward.reason, ForwardReason::LeaseExpired)
        {
            let _ = self.raft.trigger().heartbeat().await;
        }
        result
    }
}

pub struct GroupManager {
    node_id: NodeId,
    storage: Storage,
    peers: PeerChannels,
    /// The queue groups' Raft configuration (the meta group's differs in
    /// its snapshots: see `start`).
    queue_raft_config: Arc<openraft::Config>,
    meta: MetaRaft,
    catalog: watch::Receiver<Arc<Catalog>>,
    queues: RwLock<HashMap<GroupId, QueueGroup>>,
    /// What the peers last said of their queue groups (each group carries
    /// its own quiet flag).
    quiescence: Quiescence,
    /// Serialises reconciliation so that two catalog changes never start the
    /// same group twice.
    reconcile_lock: tokio::sync::Mutex<()>,
}

impl GroupManager {
    /// Opens the meta group (initialising it from `initial_members` on first
    /// start) and starts following the catalog.
    pub async fn start(
        node_id: NodeId,
        storage: Storage,
        initial_members: BTreeMap<NodeId, BasicNode>,
        timing: RaftTiming,
        peers: PeerChannels,
    ) -> Result<Arc<GroupManager>, GroupError> {
        let timed = openraft::Config {
            cluster_name: "raftmq".to_string(),
            heartbeat_interval: timing.heartbeat_interval_ms,
            election_timeout_min: timing.election_timeout_min_ms,
            election_timeout_max: timing.election_timeout_max_ms,
            ..Default::default()
        };
        // The meta group's log is purged behind a snapshot every 20,000
        // entries, keeping 5,000 for followers a little behind; a follower
        // further behind catches up from a snapshot.
        let meta_config = openraft::Config {
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 5_000,
            ..timed.clone()
        };
        // A queue group snapshots by the size of its log, not by the count
        // of entries (one is 100 bytes or 4 MiB): `snapshot_as_the_log_grows`
        // asks for one every `SNAPSHOT_EVERY_BYTES`, and openraft purges the
        // whole log behind it once every follower's replication stream has
        // acknowledged those entries, so that the purge reaches the memtables
        // before a flush would write the entries out
        // (`raftmq_storage::SnapshotDue`).
        let queue_config = openraft::Config {
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            ..timed
        };
        let meta_config = Arc::new(meta_config.validate()?);
        let queue_raft_config = Arc::new(queue_config.validate()?);

        let meta_sm = MetaStateMachine::open(storage.clone()).await.map_err(|e| GroupError::Storage(e.to_string()))?;
        let catalog = meta_sm.catalog_watch();
        let meta = openraft::Raft::new(
            node_id,
            meta_config,
            GroupNetworkFactory::new(META_GROUP_ID, peers.clone())
                .sending_encoded(storage.encoded_entries(META_GROUP_ID)),
            LogStore::new(storage.clone(), META_GROUP_ID, ApplyWrite::Logged),
            meta_sm,
        )
        .await
        .map_err(|e| GroupError::Start { group_id: META_GROUP_ID, message: e.to_string() })?;
        initialize_once(META_GROUP_ID, &meta, initial_members).await?;

        let manager = Arc::new(GroupManager {
            node_id,
            storage,
            peers,
            queue_raft_config,
            meta,
            catalog,
            queues: RwLock::new(HashMap::new()),
            quiescence: Quiescence::new(node_id, timing),
            reconcile_lock: tokio::sync::Mutex::new(()),
        });
        manager.reconcile().await;
        tokio::spawn(follow_catalog(Arc::downgrade(&manager), manager.catalog.clone()));
        if timing.quiet_idle_groups {
            tokio::spawn(quiesce::run(Arc::downgrade(&manager)));
        }
        Ok(manager)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's database, for its write-ahead log counters.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn meta(&self) -> &MetaRaft {
        &self.meta
    }

    pub fn peers(&self) -> &PeerChannels {
        &self.peers
    }

    /// The catalog as applied on this node (may trail the meta leader).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    pub fn queue_group(&self, group_id: GroupId) -> Option<QueueGroup> {
        self.queues.read().expect("queue map lock poisoned").get(&group_id).cloned()
    }

    /// Calls `visit` on every hosted queue group under the group map's read
    /// lock, so `visit` must not block.
    pub(crate) fn for_each_queue_group(&self, visit: impl FnMut(&QueueGroup)) {
        self.queues.read().expect("queue map lock poisoned").values().for_each(visit);
    }

    /// The hosted queue groups for which `wanted` holds, cloned. `wanted` runs
    /// under the group map's read lock, so it must not block; per-round scans
    /// of every group use this to clone only the few they act on.
    pub fn queue_groups_where(&self, mut wanted: impl FnMut(&QueueGroup) -> bool) -> Vec<QueueGroup> {
        self.queues.read().expect("queue map lock poisoned").values().filter(|g| wanted(g)).cloned().collect()
    }

    pub fn queue_groups(&self) -> Vec<QueueGroup> {
        let mut groups: Vec<QueueGroup> =
            self.queues.read().expect("queue map lock poisoned").values().cloned().collect();
        groups.sort_by_key(|g| g.group_id);
        groups
    }

    pub(crate) fn quiescence(&self) -> &Quiescence {
        &self.quiescence
    }

    /// Cluster members and their addresses, from the meta group's membership.
    pub fn members(&self) -> BTreeMap<NodeId, BasicNode> {
        let metrics = self.meta.metrics();
        let membership = metrics.borrow_watched().membership_config.clone();
        membership.nodes().map(|(id, node)| (*id, node.clone())).collect()
    }

    pub fn member_addr(&self, node_id: NodeId) -> Option<String> {
        self.members().remove(&node_id).map(|node| node.addr)
    }

    /// Brings the hosted queue groups in line with the catalog.
    async fn reconcile(&self) {
        let _serialised = self.reconcile_lock.lock().await;
        let catalog = self.catalog();
        let wanted: BTreeMap<GroupId, (&QueueName, &raftmq_storage::CatalogQueue)> = catalog
            .queues
            .iter()
            .filter(|(_, q)| q.replicas.contains(&self.node_id))
            .map(|(name, q)| (q.group_id, (name, q)))
            .collect();

        let stale: Vec<QueueGroup> =
            self.queue_groups().into_iter().filter(|g| !wanted.contains_key(&g.group_id)).collect();
        for group in stale {
            info!(group_id = %group.group_id, queue = %group.queue, "stopping deleted queue group");
            self.queues.write().expect("queue map lock poisoned").remove(&group.group_id);
            if let Err(e) = group.raft.shutdown().await {
                warn!(group_id = %group.group_id, error = %e, "queue group did not shut down cleanly");
            }
            if let Err(e) = self.storage.delete_group_data(group.group_id) {
                warn!(group_id = %group.group_id, error = %e, "deleting queue group data failed");
            }
        }

        let members = self.members();
        for (group_id, (name, queue)) in wanted {
            if self.queue_group(group_id).is_some() {
                continue;
            }
            match self.start_queue_group(group_id, name.clone(), &queue.replicas, &members).await {
                Ok(group) => {
                    info!(%group_id, queue = %name, "queue group started");
                    self.queues.write().expect("queue map lock poisoned").insert(group_id, group);
                }
                Err(e) => warn!(%group_id, queue = %name, error = %e, "could not start queue group; will retry"),
            }
        }
    }

    async fn start_queue_group(
        &self,
        group_id: GroupId,
        queue: QueueName,
        replicas: &[NodeId],
        members: &BTreeMap<NodeId, BasicNode>,
    ) -> Result<QueueGroup, GroupError> {
        let sm = QueueStateMachine::open(self.storage.clone(), group_id)
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        let reader = sm.reader();
        let log = LogStore::new(self.storage.clone(), group_id, ApplyWrite::Unlogged);
        let snapshot_due = log.snapshot_due();
        let raft = openraft::Raft::new(
            self.node_id,
            self.queue_raft_config.clone(),
            GroupNetworkFactory::new(group_id, self.peers.clone())
                .sending_encoded(self.storage.encoded_entries(group_id)),
            log,
            sm,
        )
        .await
        .map_err(|e| GroupError::Start { group_id, message: e.to_string() })?;
        tokio::spawn(snapshot_as_the_log_grows(group_id, raft.clone(), snapshot_due));
        let mut nodes = BTreeMap::new();
        for id in replicas {
            let node = members.get(id).cloned().ok_or_else(|| GroupError::Start {
                group_id,
                message: format!("replica {id} is not a cluster member"),
            })?;
            nodes.insert(*id, node);
        }
        // The replica with the highest id initialises at once and, its first
        // log id being the greatest, is elected within a round trip. The
        // others wait a moment first: by then they normally hold its log
        // or have voted for it, and openraft refuses their initialisation.
        // Were all to initialise at once, one that saw the new queue late
        // (its catalog a few milliseconds behind) would campaign against the
        // leader just elected and leave the queue without one for an
        // election timeout (1.3 s seen, docs/performance.md). If the highest
        // replica is down, the others initialise after the wait and elect
        // among themselves.
        let highest = replicas.iter().max() == Some(&self.node_id);
        if highest {
            initialize_once(group_id, &raft, nodes).await?;
        } else {
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FOLLOWER_INITIALISE_DELAY).await;
                if let Err(e) = initialize_once(group_id, &raft, nodes).await {
                    warn!(%group_id, error = %e, "could not initialise the queue group");
                }
            });
        }
        Ok(QueueGroup { group_id, queue, raft, reader, quiet: Arc::default() })
    }

    pub async fn shutdown(&self) {
        for group in self.queue_groups() {
            let _ = group.raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
    }
}

/// How long a new queue group's replicas other than the highest wait before
/// they initialise it (see `start_queue_group`).
const FOLLOWER_INITIALISE_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

/// Asks openraft for a snapshot of a queue group each time its log has grown
/// by `SNAPSHOT_EVERY_BYTES`, or has gone quiet with entries its last purge
/// kept (`raftmq_storage::SnapshotDue`); openraft then purges the log behind
/// it. Ends when the group's log store is dropped (the group stopped) or its
/// Raft has stopped.
async fn snapshot_as_the_log_grows(group_id: GroupId, raft: QueueRaft, mut due: SnapshotDue) {
    while due.next().await {
        if let Err(e) = raft.trigger().snapshot().await {
            info!(%group_id, error = %e, "queue group stopped; no more snapshots");
            return;
        }
    }
}

/// Every initial member initialises the group with the same membership; openraft
/// allows that, and refuses (`NotAllowed`) once a node has any log or vote, which
/// is the normal case on restart.
async fn initialize_once<SM>(
    group_id: GroupId,
    raft: &openraft::Raft<TypeConfig, SM>,
    members: BTreeMap<NodeId, BasicNode>,
) -> Result<(), GroupError>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    match raft.initialize(members).await {
        Ok(()) => {
            info!(%group_id, "raft group initialised");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(GroupError::Start { group_id, message: e.to_string() }),
    }
}

async fn follow_catalog(manager: std::sync::Weak<GroupManager>, mut catalog: watch::Receiver<Arc<Catalog>>) {
    loop {
        // Also retry on a timer: a queue group that failed to start (for example
        // because a replica's address was not known yet) is retried.
        if let Ok(Err(_closed)) = tokio::time::timeout(std::time::Duration::from_secs(2), catalog.changed()).await {
            return; // the meta state machine is gone: the node is shutting down
        }
        let Some(manager) = manager.upgrade() else { return };
        manager.reconcile().await;
    }
}
