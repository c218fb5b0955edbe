//! Opening the node's database: column families, options, format version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raftmq_types::GroupId;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options,
};

use crate::body_cache::{BodyCache, BodyCaches};
use crate::keys::{
    CF_META, CF_QUEUE, CF_RAFT_LOG, CF_RAFT_META, GROUP_KIND_PREFIX_LEN, GROUP_PREFIX_LEN, group_range, log_index,
};
use crate::log_bodies::BodyWrites;
use crate::log_cache::{EncodedEntries, LogCache, LogCaches};
use crate::reads::Reads;
use crate::wal_trimmer::{ARCHIVE_TTL_SECS, WalTrimmer};
use crate::{SnapshotSpool, StorageError, WalSyncer};

/// Snapshots received and SST files of snapshots being installed, inside the
/// database directory (RocksDB leaves other names alone).
const SNAPSHOT_DIR: &str = "snapshots";

/// Bump when the layout of keys or values changes, with upgrade code.
/// 2: producer dedup ids (`QueueKind::Dedup`), `dedup_window_ms` in queue
/// configs and produce commands.
/// 3: retry backoff, max deliveries, dead-letter queue and TTL in queue
/// configs; lease retry times, expiry and death in delivery records;
/// correlation ids (`QueueKind::Correlation`).
/// 4: subscriptions: delivery records keyed by subscription, message infos
/// (`QueueKind::MessageInfo`), the subscription list, retention in queue
/// configs.
/// 5: bodies left in their log entry (`QueueKind::BodyInLog`). A version 4
/// database has none and is read as it is; opening it marks it version 5,
/// which a build that reads 4 then refuses.
pub const FORMAT_VERSION: u32 = 5;
/// The one older version this build opens (and marks [`FORMAT_VERSION`]).
const UPGRADABLE_FORMAT_VERSION: u32 = 4;
const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// The column families, all opened at once and flushed together.
const ALL_CFS: [&str; 4] = [CF_RAFT_LOG, CF_RAFT_META, CF_QUEUE, CF_META];
/// The memtable budget a node has unless its operator sets one
/// (`storage.memtable_budget_mib`): the memtables of every column family
/// together are flushed above it, and each column family's alone above half
/// of it (the two that take message bodies, `raft_log` and `queue`, grow
/// about alike). What a node's RSS mostly follows under load.
pub const DEFAULT_MEMTABLE_BUDGET_BYTES: usize = 512 * 1024 * 1024;
/// In `raft_log` and `queue`, values at least this long (bodies of 4 KiB
/// and more, and log entries carrying them or a batch of smaller ones) are
/// written at a flush to blob files, with only a reference in the SST file.
const MIN_BLOB_BYTES: u64 = 4096;
/// The one block cache of the database.
const BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// A file briefly created at open to learn whether the directory takes
/// O_DIRECT (RocksDB leaves names it does not know alone).
const DIRECT_IO_PROBE: &str = "direct-io-probe";
/// How much of an SST file being written is synced at a time (files written
/// buffered: all of them where O_DIRECT is not available).
const SST_BYTES_PER_SYNC: u64 = 1024 * 1024;

/// The length of the key prefix under which a column family's memtable keeps
/// an insert position (`memtable_insert_with_hint_prefix_extractor`), if it
/// keeps one. Within one prefix keys are mostly written in increasing order:
/// a group's log entries (`group`) by index, a queue's records of one kind
/// (`group ‖ kind`) by offset, and a group's Raft metadata (`group ‖ tag`)
/// is one key written over and over. So each insert lands right after the
/// previous one of its prefix, and the skiplist search starts there instead
/// of at the top: 5% less server CPU at half load, 7-9% more messages at
/// peak (docs/performance.md, 2026-12-03, sixth session). Each prefix costs
/// about 250 bytes per memtable; RocksDB ignores the hint in a write group
/// whose batches it inserts concurrently.
fn memtable_hint_prefix(cf: &str) -> Option<usize> {
    match cf {
        CF_RAFT_LOG => Some(GROUP_PREFIX_LEN),
        CF_QUEUE | CF_RAFT_META => Some(GROUP_KIND_PREFIX_LEN),
        _ => None,
    }
}

/// Whether large values of the column family `cf` go to blob files
/// ([`MIN_BLOB_BYTES`]). What a flush writes of `raft_log` and `queue` is
/// mostly what is soon deleted: the log's unpurged tail, and the bodies of
/// messages not yet acknowledged. With those values in blob files,
/// compaction copies only keys and references from level to level, not the
/// bodies; a blob file goes once no SST file refers to it, and compaction rewrites
/// what is still live in the oldest quarter of blob files (blob garbage
/// collection), so that one long-lived body does not keep a whole file.
fn keeps_blob_files(cf: &str) -> bool {
    cf == CF_RAFT_LOG || cf == CF_QUEUE
}

/// Whether files in the directory `path` (created if missing) can be written
/// with O_DIRECT: most disk file systems can, tmpfs cannot, and RocksDB
/// would fail its first flush there rather than at open.
fn takes_direct_io(path: &Path) -> Result<bool, StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, source| StorageError::Io { what: format!("{what} {}", path.display()), source };
    std::fs::create_dir_all(path).map_err(|e| io("create", e))?;
    let probe = path.join(DIRECT_IO_PROBE);
    let opened =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&probe);
    let takes = opened.is_ok();
    drop(opened);
    if let Err(e) = std::fs::remove_file(&probe)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(io("remove a probe file in", e));
    }
    Ok(takes)
}

/// The node's database, its WAL syncer and trimmer and the newest log entries of each
/// group in memory; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
    syncer: Arc<WalSyncer>,
    trimmer: Arc<WalTrimmer>,
    log_caches: Arc<LogCaches>,
    body_caches: Arc<BodyCaches>,
    body_writes: Arc<BodyWrites>,
}

impl Storage {
    /// Opens (or creates) the database at `path` and checks its format
    /// version, with the default memtable budget.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        Storage::open_near_memtable_budget(path, DEFAULT_MEMTABLE_BUDGET_BYTES)
    }

    /// [`Storage::open`] with a memtable budget drawn between 75% and 100%
    /// of `budget` (what a node does with the operator's setting): the
    /// replicas of a queue receive the same writes, so with equal budgets
    /// they all switch memtables (and WAL files) at the same moment, and the
    /// fsync stall that comes with it (50-100 ms on a shared disk) hits a
    /// majority at once (docs/performance.md).
    pub fn open_near_memtable_budget(path: &Path, budget: usize) -> Result<Storage, StorageError> {
        let drawn = budget - rand::random_range(0..=budget / 4);
        Storage::open_with_memtable_budget(path, drawn)
    }

    /// [`Storage::open`] with a given budget for the memtables of all column
    /// families together: above it they are flushed (all at once) and a new
    /// WAL file begins. Tests use a small one to switch WAL files often.
    pub fn open_with_memtable_budget(path: &Path, budget: usize) -> Result<Storage, StorageError> {
        // No space is preallocated for files (the Rust binding has no setter
        // for this one). RocksDB preallocated each WAL file (about 74 MiB
        // here) and trimmed it back with ftruncate when it closed it at a
        // memtable switch; that trim once took 56 ms (strace), while every
        // fsync on the node stalled (docs/performance.md).
        let mut options = Options::default().get_options_from_string("allow_fallocate=false")?;
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // The WAL is synced explicitly (see WalSyncer), never on every write.
        options.set_manual_wal_flush(false);
        // WAL files are not recycled (`recycle_log_file_num`): RocksDB refuses
        // writes without the WAL when it recycles, and applying without the
        // WAL halves what each fsync writes, which does more for the tail
        // than recycling did (docs/performance.md, 2026-12-03, fourth session).
        // Queue groups apply without the WAL (`ApplyWrite::Unlogged`): their
        // data (`queue`), applied position and snapshot (`raft_meta`) and
        // the purges of their log (`raft_log`) survive a crash only as far
        // as the last flush, so every flush is of all column families at
        // once, and position, data and log always agree.
        options.set_atomic_flush(true);
        // RocksDB's memory has a budget: the memtables of all column
        // families together, and one block cache for all of them (by
        // default each has its own). Index blocks are charged to the cache
        // too (by default they stay in memory for every open SST file and
        // grow with the data), as a two-level index whose partitions stay
        // at high priority and whose small top level is pinned: one flat
        // index in a 64 MiB cache made reading a deep backlog back 2.3x
        // slower (docs/performance.md).
        options.set_db_write_buffer_size(budget);
        // Obsolete WAL files go to `archive/` (a rename) rather than being
        // deleted at once; the `WalTrimmer` frees them a few MiB at a time,
        // so that no single deletion discards tens of MiB while fsyncs wait.
        // (No size limit on the archive, RocksDB's default: only the TTL.)
        options.set_wal_ttl_seconds(ARCHIVE_TTL_SECS);
        // A flush or compaction writes its SST file through the page cache
        // and syncs it every `SST_BYTES_PER_SYNC` as it goes, rather than
        // all at the end: with bodies that do not compress, a flush is
        // tens of MiB, and one sync of all of it held every node's WAL
        // fsyncs up behind it on a shared disk (docs/performance.md,
        // eleventh session).
        options.set_bytes_per_sync(SST_BYTES_PER_SYNC);
        // Flushes and compactions write their SST and blob files with
        // O_DIRECT, around the page cache, where the file system allows it
        // (tmpfs on older kernels does not). Buffered, every byte they wrote
        // was copied into the page cache first and written back later: at
        // 64 KiB, 13% less server CPU per message and 15% more messages
        // with O_DIRECT; at 1 KiB no difference measured (docs/performance.md,
        // fourteenth session).
        let direct_io = takes_direct_io(path)?;
        options.set_use_direct_io_for_flush_and_compaction(direct_io);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cf = |name: &str| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_cache_index_and_filter_blocks(true);
            table.set_cache_index_and_filter_blocks_with_high_priority(true);
            table.set_pin_top_level_index_and_filter(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            let mut cf_options = match memtable_hint_prefix(name) {
                Some(len) => Options::default().get_options_from_string(format!(
                    "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{len}"
                ))?,
                None => Options::default(),
            };
            cf_options.set_compression_type(DBCompressionType::Lz4);
            cf_options.set_block_based_table_factory(&table);
            cf_options.set_write_buffer_size(budget / 2);
            if keeps_blob_files(name) {
                cf_options.set_enable_blob_files(true);
                cf_options.set_min_blob_size(MIN_BLOB_BYTES);
                cf_options.set_blob_compression_type(DBCompressionType::Lz4);
                cf_options.set_enable_blob_gc(true);
            }
            Ok::<_, StorageError>(ColumnFamilyDescriptor::new(name, cf_options))
        };
        let cfs = ALL_CFS.into_iter().map(cf).collect::<Result<Vec<_>, _>>()?;
        let db = DB::open_cf_descriptors(&options, path, cfs)?;
        let db = Arc::new(db);
        let storage = Storage {
            syncer: Arc::new(WalSyncer::start(db.clone())),
            trimmer: Arc::new(WalTrimmer::start(db.path())),
            db,
            log_caches: Arc::new(LogCaches::default()),
            body_caches: Arc::new(BodyCaches::default()),
            body_writes: Arc::default(),
        };
        storage.check_format_version()?;
        storage.prepare_snapshot_dir()?;
        tracing::info!(
            path = %path.display(),
            memtable_budget_mib = budget >> 20,
            direct_io_for_flush_and_compaction = direct_io,
            "database open"
        );
        Ok(storage)
    }

    /// Creates the snapshot directory, or empties it: an install that a crash
    /// interrupted while it wrote its SST file left that file behind (as big
    /// as the snapshot), and nothing installs before open returns, so every
    /// file there is such a one. Spools are unnamed.
    fn prepare_snapshot_dir(&self) -> Result<(), StorageError> {
        let dir = self.snapshot_dir();
        let io = |source| StorageError::Io { what: format!("prepare {}", dir.display()), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_file() {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        Ok(())
    }

    /// Where snapshots are received and their SST files written; it exists
    /// once the database is open.
    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.db.path().join(SNAPSHOT_DIR)
    }

    fn check_format_version(&self) -> Result<(), StorageError> {
        let cf = self.cf(CF_META);
        if let Some(bytes) = self.db.get_cf(cf, FORMAT_VERSION_KEY)? {
            let found = bytes
                .as_slice()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| StorageError::MalformedKey { cf: CF_META })?;
            if found == FORMAT_VERSION {
                return Ok(());
            }
            if found != UPGRADABLE_FORMAT_VERSION {
                return Err(StorageError::FormatVersion { found, expected: FORMAT_VERSION });
            }
        }
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(true);
        self.db.put_cf_opt(cf, FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes(), &write)?;
        Ok(())
    }

    /// Writes every memtable to SST files (all column families at once) and
    /// returns when they are durable: what was applied without the WAL
    /// before this call survives a crash after it. Blocks for as long as the
    /// flush takes (up to the memtable budget's worth of writes).
    pub fn flush_memtables(&self) -> Result<(), StorageError> {
        let cfs: Vec<&ColumnFamily> = ALL_CFS.iter().map(|name| self.cf(name)).collect();
        let mut options = rocksdb::FlushOptions::default();
        options.set_wait(true);
        self.db.flush_cfs_opt(&cfs, &options)?;
        Ok(())
    }

    /// Bytes held by the memtables of all column families, flushed or not
    /// (RocksDB's `rocksdb.cur-size-all-mem-tables`).
    pub fn memtable_bytes(&self) -> Result<u64, StorageError> {
        let mut bytes = 0;
        for name in ALL_CFS {
            bytes += self.db.property_int_value_cf(self.cf(name), "rocksdb.cur-size-all-mem-tables")?.unwrap_or(0);
        }
        Ok(bytes)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// A file to receive a snapshot into (see [`SnapshotSpool`]).
    pub fn snapshot_spool(&self) -> Result<SnapshotSpool, StorageError> {
        SnapshotSpool::create(&self.snapshot_dir())
    }

    /// Bytes of obsolete WAL files the WAL trimmer has freed so far.
    pub fn wal_trimmed_bytes(&self) -> u64 {
        self.trimmer.trimmed_bytes()
    }

    pub fn syncer(&self) -> &Arc<WalSyncer> {
        &self.syncer
    }

    /// The newest log entries of `group`, shared by its log store (which
    /// fills it) and its state machine (which empties it as it applies).
    pub(crate) fn log_cache(&self, group: GroupId) -> Arc<LogCache> {
        self.log_caches.group(group)
    }

    /// A new body cache for a queue group's state machine.
    pub(crate) fn body_cache(&self) -> BodyCache {
        self.body_caches.group()
    }

    /// How the node's reads of bodies for delivery were served since it
    /// started: from the newest bodies kept in memory, or from RocksDB.
    pub fn body_reads(&self) -> &Reads {
        self.body_caches.reads()
    }

    /// How the node's applied bodies were written since it started: left in
    /// their log entry, and copied out of it before it was deleted.
    pub fn body_writes(&self) -> &BodyWrites {
        &self.body_writes
    }

    /// The encoded entries of `group`'s log, for the transport.
    pub fn encoded_entries(&self, group: GroupId) -> EncodedEntries {
        EncodedEntries::new(self.log_caches.group(group))
    }

    /// How the node's log reads were served since it started: from the
    /// in-memory cache of the newest entries, or from RocksDB.
    pub fn log_reads(&self) -> &Reads {
        self.log_caches.reads()
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    /// The index of the first entry of `group`'s log still stored on this
    /// node, `None` if none is. A queue group's entries at or below its
    /// purged index stay stored while bodies still stored in them need
    /// them (see `crate::log_bodies`).
    pub fn first_log_index(&self, group: GroupId) -> Result<Option<u64>, StorageError> {
        let mut iter = self.log_iterator(group);
        iter.seek_to_first();
        iter.status()?;
        match iter.key() {
            None => Ok(None),
            Some(key) => log_index(key).map(Some).ok_or(StorageError::MalformedKey { cf: CF_RAFT_LOG }),
        }
    }

    /// An iterator over `group`'s Raft log entries, bounded to them.
    pub(crate) fn log_iterator(&self, group: GroupId) -> rocksdb::DBRawIteratorWithThreadMode<'_, DB> {
        let (start, end) = group_range(group);
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(start);
        options.set_iterate_upper_bound(end);
        self.db.raw_iterator_cf_opt(self.cf(CF_RAFT_LOG), options)
    }

    /// Drops everything a group stored: its log, Raft metadata and queue data.
    pub fn delete_group_data(&self, group: GroupId) -> Result<(), StorageError> {
        let (start, end) = group_range(group);
        let mut batch = rocksdb::WriteBatch::default();
        for name in [CF_RAFT_LOG, CF_RAFT_META, CF_QUEUE] {
            batch.delete_range_cf(self.cf(name), &start, &end);
        }
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(true);
        self.db.write_opt(batch, &write)?;
        self.log_caches.remove(group);
        Ok(())
    }
}

/// A write batch with room for `records` puts whose values total
/// `value_bytes`, allocated once: a batch grows by copying itself at each
/// doubling, which for large values (64 KiB bodies) is a copy more of
/// everything written. Room per record: its tag, column family, key and the
/// lengths' varints (our keys are under 32 bytes).
pub(crate) fn sized_batch(records: usize, value_bytes: usize) -> rocksdb::WriteBatch {
    const HEADER: usize = 12;
    const PER_RECORD: usize = 64;
    rocksdb::WriteBatch::with_capacity_bytes(HEADER + records * PER_RECORD + value_bytes)
}
