//! Errors of the storage crate.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("corrupt {what}: {source}")]
    Corrupt { what: &'static str, source: postcard::Error },
    #[error("encode {what}: {source}")]
    Encode { what: &'static str, source: postcard::Error },
    #[error(
        "data directory has on-disk format version {found}, this build reads version {expected}; use a matching raftmq version"
    )]
    FormatVersion { found: u32, expected: u32 },
    #[error("malformed key in column family {cf}")]
    MalformedKey { cf: &'static str },
    #[error("fsync of the write-ahead log failed: {0}")]
    Sync(String),
    #[error("the WAL syncer thread has stopped")]
    SyncerStopped,
    #[error("the snapshot reader stopped before it read the snapshot's position")]
    SnapshotReaderStopped,
    #[error("malformed snapshot: {0}")]
    MalformedSnapshot(String),
    #[error("the body of message {offset} is not in log entry {index}, where its record says it is")]
    BodyNotInLog { offset: u64, index: u64 },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> io::Error {
        match e {
            StorageError::Corrupt { .. }
            | StorageError::MalformedKey { .. }
            | StorageError::MalformedSnapshot(_)
            | StorageError::BodyNotInLog { .. } => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            other => io::Error::other(other.to_string()),
        }
    }
}

pub(crate) fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StorageError> {
    crate::codec::to_vec_sized(value).map_err(|source| StorageError::Encode { what, source })
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|source| StorageError::Corrupt { what, source })
}

/// [`decode`], with the message bodies in `bytes` shared rather than copied
/// (`raftmq_types::shared_body`).
pub(crate) fn decode_shared<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &bytes::Bytes,
) -> Result<T, StorageError> {
    raftmq_types::shared_body::decode_sharing(bytes, |bytes| decode(what, bytes))
}
