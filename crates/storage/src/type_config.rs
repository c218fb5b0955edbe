//! The openraft type configuration shared by the meta group and every queue group.

use raftmq_types::{RaftRequest, RaftResponse};

openraft::declare_raft_types!(
    /// One configuration for all groups: entries carry a [`RaftRequest`] that
    /// is either a meta or a queue command.
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// Snapshots are built and shipped as one buffer. Queue snapshots hold
/// delivery records and bodies of unacknowledged messages only.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
