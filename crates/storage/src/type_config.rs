//! The openraft type configuration shared by the meta group and every queue group.

use raftmq_types::{RaftRequest, RaftResponse};
use tokio::sync::{mpsc, oneshot};

use crate::StorageError;

openraft::declare_raft_types!(
    /// One configuration for all groups: entries carry a [`RaftRequest`] that
    /// is either a meta or a queue command.
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A snapshot's data. What a node receives, and the meta group's catalog,
/// are bytes. A queue group's own snapshot is read from a RocksDB snapshot
/// piece by piece while it is sent, so it is never whole in the sender's
/// memory, and one that is never sent (openraft asks for the current
/// snapshot at start-up, for its position) is never read.
pub enum SnapshotData {
    Bytes(Vec<u8>),
    Chunks(SnapshotChunks),
}

/// The pieces of a snapshot, read by a blocking task that waits for the
/// first request; dropping this unread stops the task before it reads.
pub struct SnapshotChunks {
    pub(crate) start: Option<oneshot::Sender<()>>,
    pub(crate) chunks: mpsc::Receiver<Result<Vec<u8>, StorageError>>,
}

impl SnapshotData {
    pub fn new(bytes: Vec<u8>) -> SnapshotData {
        SnapshotData::Bytes(bytes)
    }

    /// The next piece of the data (bytes are cut at `max`); `None` at the
    /// end. The pieces joined are the data.
    pub async fn next_chunk(&mut self, max: usize) -> Option<Result<Vec<u8>, StorageError>> {
        match self {
            SnapshotData::Bytes(bytes) if bytes.is_empty() => None,
            SnapshotData::Bytes(bytes) => {
                let rest = bytes.split_off(max.min(bytes.len()));
                Some(Ok(std::mem::replace(bytes, rest)))
            }
            SnapshotData::Chunks(chunks) => {
                if let Some(start) = chunks.start.take() {
                    // The reader may have failed already; its error is in `chunks`.
                    let _ = start.send(());
                }
                chunks.chunks.recv().await
            }
        }
    }

    /// The whole data in one buffer.
    pub async fn into_bytes(mut self) -> Result<Vec<u8>, StorageError> {
        if let SnapshotData::Bytes(bytes) = self {
            return Ok(bytes);
        }
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk(usize::MAX).await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }
}
