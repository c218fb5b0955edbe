//! Opening the node's database: column families, options, format version.

use std::path::Path;
use std::sync::Arc;

use raftmq_types::GroupId;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options};

use crate::keys::{CF_META, CF_QUEUE, CF_RAFT_LOG, CF_RAFT_META, group_range};
use crate::{StorageError, WalSyncer};

/// Bump when the layout of keys or values changes, with upgrade code.
/// 2: producer dedup ids (`QueueKind::Dedup`), `dedup_window_ms` in queue
/// configs and produce commands.
/// 3: retry backoff, max deliveries, dead-letter queue and TTL in queue
/// configs; lease retry times, expiry and death in delivery records;
/// correlation ids (`QueueKind::Correlation`).
/// 4: subscriptions: delivery records keyed by subscription, message infos
/// (`QueueKind::MessageInfo`), the subscription list, retention in queue
/// configs.
pub const FORMAT_VERSION: u32 = 4;
const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// The node's database and its WAL syncer; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
    syncer: Arc<WalSyncer>,
}

impl Storage {
    /// Opens (or creates) the database at `path` and checks its format version.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // The WAL is synced explicitly (see WalSyncer), never on every write.
        options.set_manual_wal_flush(false);
        let cf = |name: &str| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(name, cf_options)
        };
        let db =
            DB::open_cf_descriptors(&options, path, [cf(CF_RAFT_LOG), cf(CF_RAFT_META), cf(CF_QUEUE), cf(CF_META)])?;
        let db = Arc::new(db);
        let storage = Storage { syncer: Arc::new(WalSyncer::start(db.clone())), db };
        storage.check_format_version()?;
        Ok(storage)
    }

    fn check_format_version(&self) -> Result<(), StorageError> {
        let cf = self.cf(CF_META);
        match self.db.get_cf(cf, FORMAT_VERSION_KEY)? {
            Some(bytes) => {
                let found = bytes
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| StorageError::MalformedKey { cf: CF_META })?;
                if found != FORMAT_VERSION {
                    return Err(StorageError::FormatVersion { found, expected: FORMAT_VERSION });
                }
            }
            None => {
                let mut write = rocksdb::WriteOptions::default();
                write.set_sync(true);
                self.db.put_cf_opt(cf, FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes(), &write)?;
            }
        }
        Ok(())
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub fn syncer(&self) -> &Arc<WalSyncer> {
        &self.syncer
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
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
        Ok(())
    }
}
