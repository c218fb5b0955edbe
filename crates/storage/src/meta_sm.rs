//! The state-machine store of the meta group: the catalog, persisted whole
//! (it is small) with the applied log id in one WriteBatch.

use std::io;
use std::sync::Arc;

use futures::Stream;
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use raftmq_types::{META_GROUP_ID, RaftRequest, RaftResponse};
use rocksdb::WriteBatch;
use tokio::sync::watch;
use tracing::warn;

use crate::error::{decode, encode};
use crate::keys::CF_META;
use crate::sm_meta::{
    ApplyWrite, LogId, Membership, Snapshot, SnapshotMeta, apply_entries, put_applied_state, put_snapshot,
    read_applied_state, read_applied_state_at, read_snapshot, write_synced,
};
use crate::{Catalog, SnapshotData, Storage, StorageError, TypeConfig};

const CATALOG_KEY: &[u8] = b"catalog";

#[derive(Clone)]
pub struct MetaStateMachine {
    storage: Storage,
    catalog: Arc<watch::Sender<Arc<Catalog>>>,
}

impl MetaStateMachine {
    pub async fn open(storage: Storage) -> Result<MetaStateMachine, StorageError> {
        let catalog = read_catalog(&storage)?;
        Ok(MetaStateMachine { storage, catalog: Arc::new(watch::channel(Arc::new(catalog)).0) })
    }

    /// The applied catalog, updated after every apply that changes it.
    pub fn catalog_watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.subscribe()
    }

    fn build(&self) -> Result<Snapshot, StorageError> {
        // Apply goes on while this runs: position and catalog come from one
        // RocksDB snapshot (apply writes both in one batch), not the catalog
        // in memory, which may already be ahead of the position read.
        let view = self.storage.db().snapshot();
        let (applied, membership) = read_applied_state_at(&self.storage, &view, META_GROUP_ID)?;
        let data = match view.get_cf(self.storage.cf(CF_META), CATALOG_KEY)? {
            Some(bytes) => bytes,
            None => encode("catalog", &Catalog::default())?,
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
        let mut batch = WriteBatch::default();
        put_snapshot(&self.storage, &mut batch, META_GROUP_ID, &meta, &data)?;
        self.storage.db().write(batch)?;
        Ok(Snapshot { meta, snapshot: SnapshotData::new(data) })
    }
}

fn read_catalog(storage: &Storage) -> Result<Catalog, StorageError> {
    match storage.db().get_cf(storage.cf(CF_META), CATALOG_KEY)? {
        Some(bytes) => decode("catalog", &bytes),
        None => Ok(Catalog::default()),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        Ok(self.build()?)
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        Ok(read_applied_state(&self.storage, META_GROUP_ID)?)
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut catalog = (*self.catalog.borrow().clone()).clone();
        let mut changed = false;
        let applied = apply_entries(entries, |_index, request| match request {
            RaftRequest::Meta(command) => {
                changed = true;
                Ok(RaftResponse::Meta(catalog.apply(command)))
            }
            RaftRequest::Queue(_) => {
                warn!("queue command in the meta group ignored");
                Ok(RaftResponse::Empty)
            }
        })
        .await?;
        let mut batch = WriteBatch::default();
        if changed {
            batch.put_cf(self.storage.cf(CF_META), CATALOG_KEY, encode("catalog", &catalog)?);
        }
        // The catalog is published after it is written and before the
        // answers: a create handler reads it as soon as its write returns.
        // The meta group applies rarely: its cache is looked up each time.
        let log_cache = self.storage.log_cache(META_GROUP_ID);
        applied.commit(&self.storage, batch, META_GROUP_ID, &log_cache, ApplyWrite::Logged, |_| {
            if changed {
                self.catalog.send_replace(Arc::new(catalog));
            }
        })?;
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_bytes().await?;
        let catalog: Catalog = decode("catalog", &data)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.storage.cf(CF_META), CATALOG_KEY, encode("catalog", &catalog)?);
        put_applied_state(&self.storage, &mut batch, META_GROUP_ID, &meta.last_log_id, Some(&meta.last_membership))?;
        put_snapshot(&self.storage, &mut batch, META_GROUP_ID, meta, &data)?;
        write_synced(&self.storage, batch)?;
        self.catalog.send_replace(Arc::new(catalog));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(read_snapshot(&self.storage, META_GROUP_ID)?)
    }
}
