//! The openraft type configuration shared by the meta group and every queue group.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

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

/// A snapshot's data. The meta group's catalog is bytes. A queue group's own
/// snapshot is read from a RocksDB snapshot piece by piece while it is sent,
/// so it is never whole in the sender's memory, and one that is never sent
/// (openraft asks for the current snapshot at start-up, for its position) is
/// never read. What a node receives is spooled to a file ([`SnapshotSpool`]),
/// so it is never whole in the receiver's memory either.
pub enum SnapshotData {
    Bytes(Vec<u8>),
    Chunks(SnapshotChunks),
    File(BufReader<File>),
}

/// A snapshot being received: its pieces are appended to an unnamed file in
/// the database directory, gone when closed (also after a crash).
pub struct SnapshotSpool {
    file: BufWriter<File>,
}

impl SnapshotSpool {
    pub(crate) fn create(dir: &Path) -> Result<SnapshotSpool, StorageError> {
        let file = tempfile::tempfile_in(dir)
            .map_err(|source| StorageError::Io { what: format!("create a file in {}", dir.display()), source })?;
        Ok(SnapshotSpool { file: BufWriter::new(file) })
    }

    /// Appends the next piece (a write to the page cache; not synced: the
    /// spool is read once, by the install, and never after a restart).
    pub fn write(&mut self, piece: &[u8]) -> Result<(), StorageError> {
        self.file.write_all(piece).map_err(|source| StorageError::Io { what: "spool a snapshot".into(), source })
    }

    /// The data received, to read from the start.
    pub fn finish(self) -> Result<SnapshotData, StorageError> {
        let io = |source| StorageError::Io { what: "spool a snapshot".into(), source };
        let mut file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok(SnapshotData::File(BufReader::new(file)))
    }
}

/// The most a piece read back from a spool holds.
const SPOOL_READ_BYTES: usize = 1024 * 1024;

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
            SnapshotData::File(file) => {
                let mut piece = Vec::new();
                match file.by_ref().take(max.min(SPOOL_READ_BYTES) as u64).read_to_end(&mut piece) {
                    Ok(0) => None,
                    Ok(_) => Some(Ok(piece)),
                    Err(source) => Some(Err(StorageError::Io { what: "read a spooled snapshot".into(), source })),
                }
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
