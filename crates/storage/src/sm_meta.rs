//! What both state machines keep beside their data: the last applied log id,
//! the last membership, and the current snapshot, in `raft_meta`.

use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use raftmq_types::GroupId;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::error::{decode, encode};
use crate::keys::{CF_RAFT_META, MetaTag, meta_key};
use crate::log_cache::LogCache;
use crate::{SnapshotData, Storage, StorageError, TypeConfig};

pub(crate) type LogId = LogIdOf<TypeConfig>;
pub(crate) type Membership = StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
pub(crate) type Snapshot = SnapshotOf<TypeConfig, SnapshotData>;

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

pub(crate) fn read_applied_state(
    storage: &Storage,
    group: GroupId,
) -> Result<(Option<LogId>, Membership), StorageError> {
    read_applied_state_at(storage, &storage.db().snapshot(), group)
}

/// The applied position and membership as of `view`. A snapshot builder reads
/// them and the state machine's data through one RocksDB snapshot: apply goes
/// on while it builds, and the data must be exactly that of the position.
pub(crate) fn read_applied_state_at(
    storage: &Storage,
    view: &rocksdb::Snapshot<'_>,
    group: GroupId,
) -> Result<(Option<LogId>, Membership), StorageError> {
    let cf = storage.cf(CF_RAFT_META);
    let applied = match view.get_cf(cf, meta_key(group, MetaTag::LastApplied))? {
        Some(bytes) => decode("last applied log id", &bytes)?,
        None => None,
    };
    let membership = match view.get_cf(cf, meta_key(group, MetaTag::Membership))? {
        Some(bytes) => decode("membership", &bytes)?,
        None => Membership::default(),
    };
    Ok((applied, membership))
}

/// Adds the applied position (and membership, if it changed) to an apply batch,
/// so that data and position are written atomically.
pub(crate) fn put_applied_state(
    storage: &Storage,
    batch: &mut WriteBatch,
    group: GroupId,
    applied: &Option<LogId>,
    membership: Option<&Membership>,
) -> Result<(), StorageError> {
    let cf = storage.cf(CF_RAFT_META);
    batch.put_cf(cf, meta_key(group, MetaTag::LastApplied), encode("last applied log id", applied)?);
    if let Some(membership) = membership {
        batch.put_cf(cf, meta_key(group, MetaTag::Membership), encode("membership", membership)?);
    }
    Ok(())
}

/// Keeps the latest snapshot, so `get_current_snapshot` returns exactly what
/// was built or installed.
pub(crate) fn put_snapshot(
    storage: &Storage,
    batch: &mut WriteBatch,
    group: GroupId,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), StorageError> {
    let stored = StoredSnapshot { meta: meta.clone(), data: data.to_vec() };
    batch.put_cf(storage.cf(CF_RAFT_META), meta_key(group, MetaTag::Snapshot), encode("snapshot", &stored)?);
    Ok(())
}

pub(crate) fn read_snapshot(storage: &Storage, group: GroupId) -> Result<Option<Snapshot>, StorageError> {
    match storage.db().get_cf(storage.cf(CF_RAFT_META), meta_key(group, MetaTag::Snapshot))? {
        Some(bytes) => {
            let stored: StoredSnapshot = decode("snapshot", &bytes)?;
            Ok(Some(Snapshot { meta: stored.meta, snapshot: SnapshotData::new(stored.data) }))
        }
        None => Ok(None),
    }
}

pub(crate) fn write_synced(storage: &Storage, batch: WriteBatch) -> Result<(), StorageError> {
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(true);
    storage.db().write_opt(batch, &options)?;
    Ok(())
}

/// What one apply call went through: the responses to send once the batch is
/// written, and the position to persist with it.
pub(crate) struct AppliedEntries {
    pub responses: Vec<(openraft::storage::ApplyResponder<TypeConfig>, raftmq_types::RaftResponse)>,
    pub last_applied: Option<LogId>,
    pub last_membership: Option<Membership>,
}

/// How an apply call's write reaches the disk. Never synced either way: the
/// log entries are durable, and after a crash apply resumes from the
/// persisted applied position. The group's log store writes its purges the
/// same way (`LogStore::new`).
#[derive(Clone, Copy, Debug)]
pub enum ApplyWrite {
    /// Through the WAL: RocksDB replays it after a crash. The meta group's
    /// (rare) writes, whose snapshots carry their data.
    Logged,
    /// To the memtables only. After a crash the state and its applied
    /// position are those of the last flush (the column families flush
    /// atomically, `Storage::open`), and the log from there on is still
    /// there because the purges behind it, written the same way, are those
    /// of the same flush. Queue groups: a body is written to the WAL once,
    /// in its log entry, not a second time by apply.
    Unlogged,
}

impl ApplyWrite {
    /// The write options for a write made this way.
    pub(crate) fn options(self) -> rocksdb::WriteOptions {
        let mut options = rocksdb::WriteOptions::default();
        options.disable_wal(matches!(self, ApplyWrite::Unlogged));
        options
    }
}

impl AppliedEntries {
    /// Persists the applied position in `batch`, writes it as `write` says
    /// (never synced), drops the applied entries from the log's memory
    /// (`LogCache`), runs `publish` with the applied position (what
    /// readers see of the new state must be there before a proposer hears
    /// back), then answers the proposers.
    pub fn commit(
        self,
        storage: &Storage,
        mut batch: WriteBatch,
        group: GroupId,
        log_cache: &LogCache,
        write: ApplyWrite,
        publish: impl FnOnce(Option<&LogId>),
    ) -> Result<(), StorageError> {
        put_applied_state(storage, &mut batch, group, &self.last_applied, self.last_membership.as_ref())?;
        storage.db().write_opt(batch, &write.options())?;
        if let Some(applied) = &self.last_applied {
            // Applied entries are read again only by a follower far behind
            // (from RocksDB), so the log's memory can let them go.
            log_cache.release_through(applied.index());
        }
        publish(self.last_applied.as_ref());
        for (responder, response) in self.responses {
            responder.send(response);
        }
        Ok(())
    }
}

/// Runs the application part of every entry through `apply_request`; blank
/// and membership entries are handled here, the same for both state machines.
pub(crate) async fn apply_entries<Strm>(
    mut entries: Strm,
    mut apply_request: impl FnMut(u64, &raftmq_types::RaftRequest) -> Result<raftmq_types::RaftResponse, std::io::Error>,
) -> Result<AppliedEntries, std::io::Error>
where
    Strm: futures::Stream<Item = Result<openraft::storage::EntryResponder<TypeConfig>, std::io::Error>>
        + Unpin
        + openraft::OptionalSend,
{
    use futures::TryStreamExt;
    use openraft::entry::RaftEntry;

    let mut applied = AppliedEntries { responses: Vec::new(), last_applied: None, last_membership: None };
    while let Some((entry, responder)) = entries.try_next().await? {
        let log_id = entry.log_id();
        let response = match &entry.payload {
            openraft::EntryPayload::Normal(request) => apply_request(log_id.index(), request)?,
            openraft::EntryPayload::Blank => raftmq_types::RaftResponse::Empty,
            openraft::EntryPayload::Membership(membership) => {
                applied.last_membership = Some(Membership::new(Some(log_id), membership.clone()));
                raftmq_types::RaftResponse::Empty
            }
        };
        applied.last_applied = Some(log_id);
        if let Some(responder) = responder {
            applied.responses.push((responder, response));
        }
    }
    Ok(applied)
}
