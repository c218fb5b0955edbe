//! openraft's log storage for one group, in the shared `raft_log` and
//! `raft_meta` column families.
//!
//! Durability: `append` completes its callback only after the WAL holding the
//! entries is fsynced (through the node's [`WalSyncer`], shared by all
//! groups); `save_vote` returns only after the vote is fsynced. A purge is
//! written the way the group's state machine writes what it applies
//! ([`ApplyWrite`]), so that it never survives a crash that the applied
//! state it stands on does not.
//!
//! Reads: the entries appended and not yet applied are also kept in memory
//! (`LogCache`), so replication and apply get them without reading RocksDB
//! and decoding; older ones are read from RocksDB.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use raftmq_types::{GroupId, Offset, QueueCommand, QueueRequest, RaftRequest};
use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::db::sized_batch;
use crate::error::{decode, decode_shared, encode};
use crate::keys::{CF_RAFT_LOG, CF_RAFT_META, MetaTag, log_index, log_key, meta_key};
use crate::log_bodies::{COPY_PER_PURGE_BYTES, KEEP_IN_LOG, copy_out_of_log, long_enough_for_log};
use crate::log_cache::LogCache;
use crate::log_growth::{LogGrowth, SnapshotDue};
use crate::sm_meta::ApplyWrite;
use crate::stages::{self, Stage};
use crate::{Storage, StorageError, TypeConfig};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

#[derive(Clone)]
pub struct LogStore {
    storage: Storage,
    group: GroupId,
    /// Shared with the group's state machine, which releases what it applied.
    cache: Arc<LogCache>,
    /// How the group's state machine writes: a purge is written the same way.
    writes: ApplyWrite,
    /// Bytes appended, for the snapshots of queue groups ([`SnapshotDue`]).
    growth: Arc<LogGrowth>,
    /// Queue groups: what their purges need to know of the bodies left in
    /// the log ([`crate::log_bodies`]).
    bodies: Option<Arc<Mutex<LogBodies>>>,
}

/// A queue group's appends not yet deleted, and where its bodies left in
/// the log begin.
#[derive(Default)]
struct LogBodies {
    /// The first and last index of each append, and when it was made, oldest
    /// first; entries before the first were appended before the process
    /// started (or forgotten, past [`REMEMBERED_APPENDS`]).
    appends: VecDeque<(u64, u64, Instant)>,
    /// Every `BodyInLog` record below this offset was copied out.
    copy_from: Offset,
}

/// The most appends a queue group's log remembers the time of; older ones
/// count as old enough to delete.
const REMEMBERED_APPENDS: usize = 4096;

impl LogBodies {
    /// The last entry that a purge through `upto` deletes: entries appended
    /// [`KEEP_IN_LOG`] ago or earlier (openraft sees all through `upto`
    /// purged; the rest go at a later purge).
    fn deletable_through(&self, upto: u64, now: Instant) -> Option<u64> {
        let Some((first, _, _)) = self.appends.front() else { return Some(upto) };
        let mut through = first.checked_sub(1).map(|before| before.min(upto));
        for (_, last, at) in &self.appends {
            if now.saturating_duration_since(*at) < KEEP_IN_LOG {
                break;
            }
            through = through.max(Some((*last).min(upto)));
        }
        through
    }
}

impl LogStore {
    /// The log of `group`, whose state machine writes as `writes` says
    /// (`Logged` for the meta group, `Unlogged` for queue groups).
    pub fn new(storage: Storage, group: GroupId, writes: ApplyWrite) -> LogStore {
        let cache = storage.log_cache(group);
        let bodies = matches!(writes, ApplyWrite::Unlogged).then(Arc::default);
        LogStore { storage, group, cache, writes, growth: Arc::default(), bodies }
    }

    /// Says when this log has grown enough that a snapshot is due (queue
    /// groups; see [`crate::log_growth`]).
    pub fn snapshot_due(&self) -> SnapshotDue {
        self.growth.subscribe()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        tag: MetaTag,
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        let cf = self.storage.cf(CF_RAFT_META);
        match self.storage.db().get_cf(cf, meta_key(self.group, tag))? {
            Some(bytes) => Ok(Some(decode(what, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, tag: MetaTag, what: &'static str, value: &T) -> Result<(), StorageError> {
        let cf = self.storage.cf(CF_RAFT_META);
        self.storage.db().put_cf(cf, meta_key(self.group, tag), encode(what, value)?)?;
        Ok(())
    }

    /// The entries in `start..end_exclusive`: those in memory from the
    /// cache, the rest from RocksDB (the part before the cache's first entry,
    /// and, should an append land between the two reads, any after its last).
    fn read_range(&self, start: u64, end_exclusive: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let cached = self.cache.get(start, end_exclusive);
        let Some(first_cached) = cached.first().map(|e| e.index()) else {
            return self.read_range_from_disk(start, end_exclusive);
        };
        let mut entries =
            if start < first_cached { self.read_range_from_disk(start, Some(first_cached))? } else { Vec::new() };
        let after_cached = first_cached + cached.len() as u64;
        entries.extend(cached);
        if end_exclusive.is_some_and(|end| end > after_cached) {
            entries.extend(self.read_range_from_disk(after_cached, end_exclusive)?);
        }
        Ok(entries)
    }

    fn read_range_from_disk(&self, start: u64, end_exclusive: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        // A queue group keeps purged entries a while (see `purge`): they are
        // not the log's any more.
        let start = match &self.bodies {
            Some(_) => match self.get_meta::<LogId>(MetaTag::LastPurged, "last purged log id")? {
                Some(purged) => start.max(purged.index() + 1),
                None => start,
            },
            None => start,
        };
        if end_exclusive.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let db = self.storage.db();
        let cf = self.storage.cf(CF_RAFT_LOG);
        let mut options = ReadOptions::default();
        let upper = match end_exclusive {
            Some(end) => log_key(self.group, end).to_vec(),
            None => crate::keys::group_range(self.group).1,
        };
        options.set_iterate_upper_bound(upper);
        let from = log_key(self.group, start);
        let mut entries = Vec::new();
        for item in db.iterator_cf_opt(cf, options, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item?;
            let index = log_index(&key).ok_or(StorageError::MalformedKey { cf: CF_RAFT_LOG })?;
            // Bodies share the value's buffer: entries read back are replicated
            // or applied, then dropped.
            let entry: Entry = decode_shared("log entry", &bytes::Bytes::from(value.into_vec()))?;
            if entry.index() != index {
                return Err(StorageError::MalformedKey { cf: CF_RAFT_LOG });
            }
            entries.push(entry);
        }
        self.cache.reads().count(0, entries.len());
        Ok(entries)
    }

    /// The log id of the log's last entry, decoded from the start of its
    /// value only: an entry's log id is encoded first, and an entry can be
    /// megabytes of bodies.
    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut iter = self.storage.log_iterator(self.group);
        iter.seek_to_last();
        iter.status()?;
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else { return Ok(None) };
        let log_id: LogId = postcard::take_from_bytes(value)
            .map(|(log_id, _)| log_id)
            .map_err(|source| StorageError::Corrupt { what: "log entry", source })?;
        if log_index(key) != Some(log_id.index()) {
            return Err(StorageError::MalformedKey { cf: CF_RAFT_LOG });
        }
        Ok(Some(log_id))
    }
}

/// Whether applying `request` stores a body that apply leaves in the log
/// (one of [`crate::BODY_IN_LOG_MIN_BYTES`] or more).
fn carries_bodies(request: &RaftRequest) -> bool {
    fn produces(command: &QueueCommand) -> bool {
        match command {
            QueueCommand::Produce { messages, .. } => {
                messages.iter().any(|message| long_enough_for_log(message.body.len() as u64))
            }
            QueueCommand::Batch(commands) => commands.iter().any(produces),
            _ => false,
        }
    }
    matches!(request, RaftRequest::Queue(QueueRequest { command, .. }) if produces(command))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.checked_add(1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        Ok(self.read_range(start, end)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.get_meta(MetaTag::Vote, "vote")?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(MetaTag::LastPurged, "last purged log id")?;
        let last_log_id = match self.last_log_id()? {
            Some(log_id) => Some(log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(MetaTag::Vote, "vote", vote)?;
        // A vote must be on disk before it is acted on: a node must never vote
        // twice in a term, even across a crash.
        self.storage.syncer().sync().await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: losing it only means re-learning the commit index.
        self.put_meta(MetaTag::Committed, "committed log id", &committed)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(MetaTag::Committed, "committed log id")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        let started = std::time::Instant::now();
        let cf = self.storage.cf(CF_RAFT_LOG);
        // A follower writes the bytes the leader sent (`EncodedEntries`); the
        // leader encodes, and sends what it wrote.
        let mut encoded = Vec::new();
        for entry in entries {
            let (entry, bytes) = match self.cache.take_received(&entry) {
                Some(bytes) => (entry, bytes),
                None => {
                    let bytes = bytes::Bytes::from(encode("log entry", &entry)?);
                    // A queue group's produce is kept (for apply) decoded from
                    // what is written, so that apply can leave its bodies in
                    // the log: they are then slices of the entry's bytes.
                    let entry = match (&self.bodies, &entry.payload) {
                        (Some(_), EntryPayload::Normal(request)) if carries_bodies(request) => {
                            decode_shared("log entry", &bytes)?
                        }
                        _ => entry,
                    };
                    (entry, bytes)
                }
            };
            encoded.push((entry, bytes));
        }
        if let (Some(bodies), Some((first, _)), Some((last, _))) = (&self.bodies, encoded.first(), encoded.last()) {
            let mut bodies = bodies.lock().expect("log bodies lock poisoned");
            bodies.appends.push_back((first.index(), last.index(), Instant::now()));
            if bodies.appends.len() > REMEMBERED_APPENDS {
                bodies.appends.pop_front();
            }
        }
        let mut batch = sized_batch(encoded.len(), encoded.iter().map(|(_, bytes)| bytes.len()).sum());
        let mut appended = 0;
        for (entry, bytes) in &encoded {
            batch.put_cf(cf, log_key(self.group, entry.index()), bytes);
            appended += bytes.len() as u64;
        }
        // Written now, so the entries are readable when this returns; durable
        // when the syncer's fsync completes, and only then is openraft told.
        self.storage.db().write(batch).map_err(StorageError::from)?;
        self.cache.append(encoded);
        self.growth.appended(appended);
        self.storage.syncer().sync_then(move |result| {
            stages::record(Stage::LogFlush, started.elapsed());
            callback.io_completed(result.map_err(io::Error::other))
        })?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(log_id) => log_id.index() + 1,
            None => 0,
        };
        let cf = self.storage.cf(CF_RAFT_LOG);
        let end = crate::keys::group_range(self.group).1;
        self.storage
            .db()
            .delete_range_cf(cf, log_key(self.group, from).as_slice(), end.as_slice())
            .map_err(StorageError::from)?;
        self.cache.truncate_after(last_log_id.map(|log_id| log_id.index()));
        // Truncated entries were never committed; if the deletion is lost in a
        // crash, openraft truncates them again when the leader's log disagrees.
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let started = Instant::now();
        let purged = self.purge_through(log_id).await;
        stages::record(Stage::Purge, started.elapsed());
        purged
    }
}

impl LogStore {
    async fn purge_through(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The entries go only once the applied state they could rebuild
        // cannot be lost. The meta group applies through the WAL: synced
        // here, then the purge is logged too. Queue groups apply to the
        // memtables only, durable at the next (atomic) flush: the purge is
        // written the same way, so it reaches the disk with that flush, never
        // before the state, and is lost with it in a crash (the entries are
        // then still in the WAL and SST files, and openraft applies them
        // again). Entries purged before a flush are dropped by it, never
        // written to an SST file.
        //
        // Except a purge past the log's last entry: that is one after a
        // snapshot was installed (written synced, so the state is durable),
        // and entries the leader sends next follow the snapshot. Lost in a
        // crash while those later appends survive, it would leave a hole
        // between the log's old entries and the new ones (seen in the fault
        // suite: "log entry not found" at start-up). Logged, it precedes them
        // in the WAL and is replayed whenever they are.
        if matches!(self.writes, ApplyWrite::Logged) {
            self.storage.syncer().sync().await?;
        }
        let beyond_log = self.last_log_id()?.is_none_or(|last| last.index() < log_id.index());
        let write = if beyond_log { ApplyWrite::Logged } else { self.writes };
        let mut batch = rocksdb::WriteBatch::default();
        let meta = self.storage.cf(CF_RAFT_META);
        batch.put_cf(meta, meta_key(self.group, MetaTag::LastPurged), encode("last purged log id", &log_id)?);
        let cf = self.storage.cf(CF_RAFT_LOG);
        let Some(bodies) = &self.bodies else {
            batch.delete_range_cf(cf, log_key(self.group, 0), log_key(self.group, log_id.index() + 1));
            self.storage.db().write_opt(batch, &write.options()).map_err(StorageError::from)?;
            self.cache.release_through(log_id.index());
            return Ok(());
        };
        // A queue group: openraft sees the log purged through `log_id`. The
        // entries before the first one that still holds a stored message's
        // body go at once; the rest once they are old enough, the bodies
        // still stored in them copied out in the same write (see
        // `crate::log_bodies`).
        let (old_through, copy_from) = {
            let bodies = bodies.lock().expect("log bodies lock poisoned");
            let through = if beyond_log {
                Some(log_id.index())
            } else {
                bodies.deletable_through(log_id.index(), Instant::now())
            };
            // Every message below the first stored one is deleted: no
            // body of it to copy.
            (through, bodies.copy_from.max(self.cache.body_moves().first_stored()))
        };
        let copies = copy_out_of_log(&self.storage, self.group, old_through, copy_from, COPY_PER_PURGE_BYTES)?;
        let copied_to = copies.next;
        let through = match copies.first_kept {
            Some(kept) => kept.checked_sub(1).map(|before| before.min(log_id.index())),
            None => Some(log_id.index()),
        };
        {
            let _moves = self.cache.body_moves().hold();
            copies.write_into(&self.storage, &mut batch)?;
            if let Some(through) = through {
                batch.delete_range_cf(cf, log_key(self.group, 0), log_key(self.group, through + 1));
            }
            self.storage.db().write_opt(batch, &write.options()).map_err(StorageError::from)?;
        }
        // Entries openraft sees purged and still on disk go at a later
        // purge; the growth counter makes one due once the log goes quiet.
        self.growth.kept_entries(through.is_none_or(|through| through < log_id.index()));
        let mut bodies = bodies.lock().expect("log bodies lock poisoned");
        bodies.copy_from = copied_to;
        if let Some(through) = through {
            while bodies.appends.front().is_some_and(|(_, last, _)| *last <= through) {
                bodies.appends.pop_front();
            }
        }
        drop(bodies);
        self.cache.release_through(log_id.index());
        Ok(())
    }
}
