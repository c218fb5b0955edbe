//! The state-machine store of one queue group: applies committed queue
//! commands with `raftmq-queue` and persists their changes.
//!
//! Apply writes every change of one apply call, plus the applied log id, in one
//! WriteBatch without fsync: the log entries are already durable, and after a
//! crash apply resumes from the persisted applied log id.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::Stream;
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use raftmq_queue::{Change, DeliveryState, MessageInfo, QueueState, SubscriptionList};
use raftmq_types::{GroupId, Offset, RaftRequest, RaftResponse, StoredMessage, SubscriptionId, TimestampMs};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::error::{decode, encode};
use crate::keys::{
    CF_QUEUE, QueueKind, delivery_key, delivery_key_parts, group_range, queue_key, queue_kind_range, queue_offset,
    subscription_range,
};
use crate::sm_meta::{
    LogId, Membership, Snapshot, SnapshotMeta, apply_entries, put_applied_state, put_snapshot, read_applied_state,
    read_applied_state_at, read_snapshot, write_synced,
};
use crate::{SnapshotData, Storage, StorageError, TypeConfig};

#[derive(Clone)]
pub struct QueueStateMachine {
    storage: Storage,
    group: GroupId,
    state: Arc<RwLock<QueueState>>,
    /// The last applied log index, for long-polling consumers to wait on.
    applied: Arc<watch::Sender<u64>>,
}

/// Read access to a queue group's applied state, for the server.
#[derive(Clone)]
pub struct QueueReader {
    storage: Storage,
    group: GroupId,
    state: Arc<RwLock<QueueState>>,
    applied: watch::Receiver<u64>,
}

/// A snapshot: every queue record of the group (keys without the group prefix).
#[derive(Serialize, Deserialize)]
struct QueueSnapshot {
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl QueueStateMachine {
    /// Opens the group's state and rebuilds the in-memory delivery index from
    /// the delivery records (bodies stay on disk).
    pub async fn open(storage: Storage, group: GroupId) -> Result<QueueStateMachine, StorageError> {
        let state = load_state(&storage, group)?;
        let (applied, _) = read_applied_state(&storage, group)?;
        let index = applied.map(|l| l.index()).unwrap_or(0);
        Ok(QueueStateMachine {
            storage,
            group,
            state: Arc::new(RwLock::new(state)),
            applied: Arc::new(watch::channel(index).0),
        })
    }

    pub fn reader(&self) -> QueueReader {
        QueueReader {
            storage: self.storage.clone(),
            group: self.group,
            state: self.state.clone(),
            applied: self.applied.subscribe(),
        }
    }

    fn write_changes(&self, batch: &mut WriteBatch, changes: &[Change]) -> Result<(), StorageError> {
        let cf = self.storage.cf(CF_QUEUE);
        for change in changes {
            match change {
                Change::PutMessage { message, info } => {
                    batch.put_cf(
                        cf,
                        queue_key(self.group, QueueKind::Body, message.offset),
                        encode("message", message)?,
                    );
                    batch.put_cf(
                        cf,
                        queue_key(self.group, QueueKind::MessageInfo, message.offset),
                        encode("message info", info)?,
                    );
                    if let Some(id) = &message.correlation_id {
                        let key = queue_key(self.group, QueueKind::Correlation, message.offset);
                        batch.put_cf(cf, key, encode("correlation id", id)?);
                    }
                }
                Change::PutDelivery { subscription, offset, state } => {
                    batch.put_cf(cf, delivery_key(self.group, *subscription, *offset), encode("delivery", state)?)
                }
                Change::DeleteDelivery { subscription, offset } => {
                    batch.delete_cf(cf, delivery_key(self.group, *subscription, *offset))
                }
                Change::DeleteMessage(offset) => {
                    for kind in [QueueKind::Body, QueueKind::MessageInfo, QueueKind::Correlation] {
                        batch.delete_cf(cf, queue_key(self.group, kind, *offset));
                    }
                }
                Change::DeleteAllMessages => {
                    for kind in [QueueKind::Delivery, QueueKind::Body, QueueKind::Correlation, QueueKind::MessageInfo] {
                        let (start, end) = queue_kind_range(self.group, kind);
                        batch.delete_range_cf(cf, start, end);
                    }
                }
                Change::ClearSubscription(subscription) => {
                    let (start, end) = subscription_range(self.group, *subscription);
                    batch.delete_range_cf(cf, start.as_slice(), end.as_slice());
                }
                Change::PutSubscriptions(list) => batch.put_cf(
                    cf,
                    queue_key(self.group, QueueKind::Subscriptions, Offset(0)),
                    encode("subscriptions", list)?,
                ),
                Change::PutNextOffset(offset) => batch.put_cf(
                    cf,
                    queue_key(self.group, QueueKind::Header, Offset(0)),
                    encode("next offset", offset)?,
                ),
                Change::PutDedup { offset, id, expires_at } => batch.put_cf(
                    cf,
                    queue_key(self.group, QueueKind::Dedup, *offset),
                    encode("dedup id", &(id, expires_at))?,
                ),
                Change::DeleteDedup { offset } => batch.delete_cf(cf, queue_key(self.group, QueueKind::Dedup, *offset)),
            }
        }
        Ok(())
    }

    /// Records a snapshot at the applied position. Only the position is
    /// stored: the queue's data is in RocksDB already, so a snapshot's data
    /// is read when one is asked for ([`Self::materialize`]), not copied into
    /// memory and the database every 20,000 entries. openraft uses only the
    /// meta of a built snapshot, to purge the log behind it.
    fn build(&self) -> Result<Snapshot, StorageError> {
        let (applied, membership) = read_applied_state(&self.storage, self.group)?;
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
        let mut batch = WriteBatch::default();
        put_snapshot(&self.storage, &mut batch, self.group, &meta, &[])?;
        self.storage.db().write(batch)?;
        Ok(Snapshot { meta, snapshot: SnapshotData::new(Vec::new()) })
    }

    /// The queue's whole state at the applied position, to send to a
    /// follower. Apply goes on meanwhile: position and data are read through
    /// one RocksDB snapshot (apply writes both in one batch), so the data is
    /// exactly that of the position.
    fn materialize(&self) -> Result<Snapshot, StorageError> {
        let view = self.storage.db().snapshot();
        let (applied, membership) = read_applied_state_at(&self.storage, &view, self.group)?;
        let (start, end) = group_range(self.group);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end);
        let mut records = Vec::new();
        for item in view.iterator_cf_opt(
            self.storage.cf(CF_QUEUE),
            options,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (key, value) = item?;
            records.push((key[8..].to_vec(), value.to_vec()));
        }
        let data = encode("snapshot", &QueueSnapshot { records })?;
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
        Ok(Snapshot { meta, snapshot: SnapshotData::new(data) })
    }
}

fn load_state(storage: &Storage, group: GroupId) -> Result<QueueState, StorageError> {
    let db = storage.db();
    let cf = storage.cf(CF_QUEUE);
    let next_offset: Offset = match db.get_cf(cf, queue_key(group, QueueKind::Header, Offset(0)))? {
        Some(bytes) => decode("next offset", &bytes)?,
        None => Offset(0),
    };
    let subscriptions: Option<SubscriptionList> =
        match db.get_cf(cf, queue_key(group, QueueKind::Subscriptions, Offset(0)))? {
            Some(bytes) => Some(decode("subscriptions", &bytes)?),
            None => None,
        };
    let infos = read_kind(storage, group, QueueKind::MessageInfo, |key, value| {
        let offset = queue_offset(key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
        let info: MessageInfo = decode("message info", value)?;
        Ok((offset, info))
    })?;
    let deliveries = read_kind(storage, group, QueueKind::Delivery, |key, value| {
        let (subscription, offset): (SubscriptionId, Offset) =
            delivery_key_parts(key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
        let state: DeliveryState = decode("delivery", value)?;
        Ok((subscription, offset, state))
    })?;
    let dedup = read_kind(storage, group, QueueKind::Dedup, |key, value| {
        let offset = queue_offset(key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
        let (id, expires_at): (String, TimestampMs) = decode("dedup id", value)?;
        Ok((offset, id, expires_at))
    })?;
    let correlations = read_kind(storage, group, QueueKind::Correlation, |key, value| {
        let offset = queue_offset(key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
        let id: String = decode("correlation id", value)?;
        Ok((offset, id))
    })?;
    Ok(QueueState::restore(next_offset, subscriptions, infos, deliveries, dedup, correlations))
}

/// Every record of one kind of the group, in key order, decoded by `decode_one`
/// from its key and value.
fn read_kind<T>(
    storage: &Storage,
    group: GroupId,
    kind: QueueKind,
    decode_one: impl Fn(&[u8], &[u8]) -> Result<T, StorageError>,
) -> Result<Vec<T>, StorageError> {
    let (start, end) = queue_kind_range(group, kind);
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(end);
    let mut records = Vec::new();
    for item in storage.db().iterator_cf_opt(
        storage.cf(CF_QUEUE),
        options,
        IteratorMode::From(&start, rocksdb::Direction::Forward),
    ) {
        let (key, value) = item?;
        records.push(decode_one(&key, &value)?);
    }
    Ok(records)
}

impl QueueReader {
    /// The applied state; hold the guard briefly and never across an await.
    pub fn state(&self) -> RwLockReadGuard<'_, QueueState> {
        self.state.read().expect("queue state lock poisoned")
    }

    /// Changes whenever apply advances; long polls wait on it.
    pub fn applied_index_watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Reads message bodies; offsets not found (acked meanwhile) are skipped.
    pub fn read_messages(&self, offsets: &[Offset]) -> Result<Vec<StoredMessage>, StorageError> {
        let cf = self.storage.cf(CF_QUEUE);
        let keys: Vec<_> = offsets.iter().map(|o| (cf, queue_key(self.group, QueueKind::Body, *o))).collect();
        let mut messages = Vec::with_capacity(offsets.len());
        for value in self.storage.db().multi_get_cf(keys) {
            if let Some(bytes) = value? {
                messages.push(decode("message", &bytes)?);
            }
        }
        Ok(messages)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for QueueStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        Ok(self.build()?)
    }
}

impl RaftStateMachine<TypeConfig> for QueueStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        Ok(read_applied_state(&self.storage, self.group)?)
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut changes = Vec::new();
        let applied = apply_entries(entries, |index, request| match request {
            RaftRequest::Queue(request) => {
                let mut state = self.state.write().expect("queue state lock poisoned");
                RaftResponse::Queue(state.apply(index, request, &mut changes))
            }
            RaftRequest::Meta(command) => {
                warn!(group = %self.group, ?command, "meta command in a queue group ignored");
                RaftResponse::Empty
            }
        })
        .await?;
        let mut batch = WriteBatch::default();
        self.write_changes(&mut batch, &changes)?;
        if let Some(log_id) = applied.commit(&self.storage, batch, self.group)? {
            self.applied.send_replace(log_id.index());
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let decoded: QueueSnapshot = decode("snapshot", &data)?;
        let cf = self.storage.cf(CF_QUEUE);
        let mut batch = WriteBatch::default();
        let (start, end) = group_range(self.group);
        batch.delete_range_cf(cf, &start, &end);
        for (suffix, value) in decoded.records {
            let mut key = self.group.to_be_bytes().to_vec();
            key.extend_from_slice(&suffix);
            batch.put_cf(cf, key, value);
        }
        put_applied_state(&self.storage, &mut batch, self.group, &meta.last_log_id, Some(&meta.last_membership))?;
        // Like `build`: the position only; the data is in the queue's keys.
        put_snapshot(&self.storage, &mut batch, self.group, meta, &[])?;
        write_synced(&self.storage, batch)?;
        let state = load_state(&self.storage, self.group)?;
        *self.state.write().expect("queue state lock poisoned") = state;
        if let Some(log_id) = &meta.last_log_id {
            self.applied.send_replace(log_id.index());
        }
        Ok(())
    }

    /// `None` until a snapshot has been built or installed; then the state
    /// at the current applied position (at or after that snapshot's, which is
    /// all openraft needs: the log after it is still there).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if read_snapshot(&self.storage, self.group)?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.materialize()?))
    }
}
