//! RocksDB storage for raftmq: one database per node, shared by every Raft group.
//!
//! - [`Storage`] opens the database (four column families, a format version)
//!   and owns the [`WalSyncer`] that turns concurrent log appends of all groups
//!   into one fsync.
//! - [`LogStore`] is openraft's log storage for one group; it keeps the
//!   entries not yet applied in memory too, for replication and apply.
//! - [`QueueStateMachine`] applies queue commands through `raftmq-queue` and
//!   persists the changes; [`QueueReader`] gives the server read access.
//! - [`MetaStateMachine`] applies the [`Catalog`] of the meta group.
//!
//! Queue rules live in `raftmq-queue`; this crate only stores.

mod body_cache;
mod catalog;
mod codec;
mod db;
mod error;
mod idle_flush;
mod keys;
mod log_bodies;
mod log_cache;
mod log_growth;
mod log_store;
mod meta_sm;
mod queue_sm;
mod reads;
mod sm_meta;
pub mod stages;
mod type_config;
mod wal_syncer;
mod wal_trimmer;

pub use catalog::{Catalog, CatalogQueue};
pub use codec::to_vec_sized;
pub use db::{DEFAULT_MEMTABLE_BUDGET_BYTES, FORMAT_VERSION, Storage};
pub use error::StorageError;
pub use idle_flush::flush_while_idle;
pub use log_bodies::{BODY_IN_LOG_MIN_BYTES, BodyWrites, COPY_PER_PURGE_BYTES, KEEP_IN_LOG};
pub use log_cache::EncodedEntries;
pub use log_growth::{SNAPSHOT_EVERY_BYTES, SnapshotDue};
pub use log_store::LogStore;
pub use meta_sm::MetaStateMachine;
pub use queue_sm::{MESSAGES_IN_MEMORY, QueueReader, QueueStateMachine};
pub use reads::Reads;
pub use sm_meta::ApplyWrite;
pub use type_config::{SnapshotData, SnapshotSpool, TypeConfig};
pub use wal_syncer::WalSyncer;
