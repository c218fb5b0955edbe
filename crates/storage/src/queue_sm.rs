//! The state-machine store of one queue group: applies committed queue
//! commands with `raftmq-queue` and persists their changes.
//!
//! Apply writes every change of one apply call, plus the applied log id, in one
//! WriteBatch, to the memtables only (`ApplyWrite::Unlogged`): the log entries
//! are already durable, and after a crash apply resumes from the applied log id
//! of the last flush. Snapshots and purges are written the same way, so the
//! log is never purged past what a crash would leave. A body of
//! `BODY_IN_LOG_MIN_BYTES` or more stays in its log entry, which the
//! message's record points into (see [`crate::log_bodies`]).
//!
//! A deep backlog stays on disk: after each write the state evicts messages
//! past [`MESSAGES_IN_MEMORY`] that nobody has received yet, and reads them
//! back from their message-info records when a lease gets to them
//! (`raftmq_queue::ColdStore`).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;
use futures::Stream;
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use raftmq_queue::{
    Change, ColdError, ColdStore, DeliveryState, MessageInfo, PeekedMessage, QueueState, SubscriptionList,
};
use raftmq_types::{GroupId, Offset, RaftRequest, RaftResponse, StoredMessage, SubscriptionId, TimestampMs};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::body_cache::BodyCache;
use crate::db::sized_batch;
use crate::error::{decode, encode};
use crate::keys::{
    CF_QUEUE, GROUP_PREFIX_LEN, QueueKind, delivery_key, delivery_key_parts, group_range, installed_snapshot_key,
    queue_key, queue_kind_range, queue_offset, subscription_range,
};
use crate::log_bodies::{FromLog, LogBody, encode_in_log, long_enough_for_log};
use crate::log_cache::LogCache;
use crate::sm_meta::{
    ApplyWrite, LogId, Membership, Snapshot, SnapshotMeta, apply_entries, put_applied_state, put_snapshot,
    read_applied_state, read_applied_state_at, read_snapshot, write_synced,
};
use crate::stages::{self, Stage};
use crate::type_config::SnapshotChunks;
use crate::{SnapshotData, Storage, StorageError, TypeConfig};

/// How many messages of one queue the state machine keeps in memory before
/// it evicts the newest never-delivered ones (about 300 bytes each): a deep
/// backlog costs disk, not memory.
pub const MESSAGES_IN_MEMORY: usize = 20_000;

/// Reads evicted messages back from their message-info records.
struct Infos<'a> {
    storage: &'a Storage,
    group: GroupId,
}

impl ColdStore for Infos<'_> {
    fn read_infos(&self, from: Offset, to: Offset) -> Result<Vec<(Offset, MessageInfo)>, ColdError> {
        let start = queue_key(self.group, QueueKind::MessageInfo, from).to_vec();
        let end = queue_key(self.group, QueueKind::MessageInfo, to).to_vec();
        read_range(self.storage, start, end, info_record).map_err(|e| ColdError(e.to_string()))
    }
}

#[derive(Clone)]
pub struct QueueStateMachine {
    storage: Storage,
    group: GroupId,
    state: Arc<RwLock<QueueState>>,
    /// The last applied log index, for long-polling consumers to wait on.
    applied: Arc<watch::Sender<u64>>,
    /// The group's log entries in memory, released as they are applied.
    log_cache: Arc<LogCache>,
    /// The newest bodies, for Consume; follows what apply writes.
    bodies: BodyCache,
}

/// Read access to a queue group's applied state, for the server.
#[derive(Clone)]
pub struct QueueReader {
    storage: Storage,
    group: GroupId,
    state: Arc<RwLock<QueueState>>,
    applied: watch::Receiver<u64>,
    bodies: BodyCache,
}

impl QueueStateMachine {
    /// Opens the group's state and rebuilds the in-memory delivery index from
    /// the delivery records (bodies stay on disk).
    pub async fn open(storage: Storage, group: GroupId) -> Result<QueueStateMachine, StorageError> {
        finish_interrupted_install(&storage, group)?;
        let state = load_state(&storage, group)?;
        let (applied, _) = read_applied_state(&storage, group)?;
        let index = applied.map(|l| l.index()).unwrap_or(0);
        let log_cache = storage.log_cache(group);
        log_cache.body_moves().stored_from(state.first_stored());
        Ok(QueueStateMachine {
            log_cache,
            bodies: storage.body_cache(),
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
            bodies: self.bodies.clone(),
        }
    }

    /// Where each stored message's body lies in its log entry, for those
    /// left there (see [`crate::log_bodies`]): `origins` are the index of
    /// the first change of each applied entry and the entry's log index.
    fn locate_bodies(&self, changes: &[Change], origins: &[(usize, u64)]) -> Vec<Option<LogBody>> {
        let mut origin = origins.iter().peekable();
        let mut index = None;
        let mut encoded: Option<(u64, Option<Bytes>)> = None;
        let mut located = Vec::with_capacity(changes.len());
        for (position, change) in changes.iter().enumerate() {
            while let Some((_, at)) = origin.next_if(|(first, _)| *first <= position) {
                index = Some(*at);
            }
            let at = match (change, index) {
                (Change::PutMessage { message, .. }, Some(index)) => {
                    if encoded.as_ref().is_none_or(|(cached, _)| *cached != index) {
                        encoded = Some((index, self.log_cache.encoded_at(index)));
                    }
                    let entry = encoded.as_ref().and_then(|(_, bytes)| bytes.as_ref());
                    entry.and_then(|entry| LogBody::locate(index, entry, &message.body))
                }
                _ => None,
            };
            located.push(at);
        }
        located
    }

    fn write_changes(
        &self,
        batch: &mut WriteBatch,
        changes: &[Change],
        located: &[Option<LogBody>],
    ) -> Result<(), StorageError> {
        let cf = self.storage.cf(CF_QUEUE);
        for (change, at) in changes.iter().zip(located) {
            match change {
                Change::PutMessage { message, info } => {
                    match at {
                        Some(at) => batch.put_cf(
                            cf,
                            queue_key(self.group, QueueKind::BodyInLog, message.offset),
                            encode_in_log(*at, message)?,
                        ),
                        None => batch.put_cf(
                            cf,
                            queue_key(self.group, QueueKind::Body, message.offset),
                            encode("message", message)?,
                        ),
                    }
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
                Change::DeleteMessage { offset, size, correlated } => {
                    // Each deletion is a memtable insert and a tombstone to
                    // flush and compact away: only the records the message
                    // can have. A body shorter than `BODY_IN_LOG_MIN_BYTES`
                    // is never left in the log; a longer one may be either.
                    batch.delete_cf(cf, queue_key(self.group, QueueKind::Body, *offset));
                    if long_enough_for_log(*size) {
                        batch.delete_cf(cf, queue_key(self.group, QueueKind::BodyInLog, *offset));
                    }
                    batch.delete_cf(cf, queue_key(self.group, QueueKind::MessageInfo, *offset));
                    if *correlated {
                        batch.delete_cf(cf, queue_key(self.group, QueueKind::Correlation, *offset));
                    }
                }
                Change::DeleteAllMessages => {
                    for kind in [
                        QueueKind::Delivery,
                        QueueKind::Body,
                        QueueKind::BodyInLog,
                        QueueKind::Correlation,
                        QueueKind::MessageInfo,
                    ] {
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
    /// is read when one is sent ([`Self::stream_snapshot`]), not copied into
    /// memory and the database at every snapshot. openraft uses only the
    /// meta of a built snapshot, to purge the log behind it. The record is
    /// written like apply's writes, to the memtables only: it reaches the
    /// disk with the state it names, at the next flush, and so does the
    /// purge behind it (`LogStore::purge`); no flush is needed here, and a
    /// snapshot costs one small write (see [`crate::log_growth`]).
    fn build(&self) -> Result<Snapshot, StorageError> {
        let (applied, membership) = read_applied_state(&self.storage, self.group)?;
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
        let mut batch = WriteBatch::default();
        put_snapshot(&self.storage, &mut batch, self.group, &meta, &[])?;
        self.storage.db().write_opt(batch, &ApplyWrite::Unlogged.options())?;
        Ok(Snapshot { meta, snapshot: SnapshotData::new(Vec::new()) })
    }

    /// The queue's whole state at the applied position, to send to a
    /// follower, read while it is sent (see [`SnapshotData`]). Apply goes on
    /// meanwhile: position and data are read through one RocksDB snapshot
    /// (apply writes both in one batch), so the data is exactly that of the
    /// position. The data is a sequence of frames, each a little-endian u32
    /// length and a postcard list of (key without the group, value), about
    /// [`SNAPSHOT_FRAME_BYTES`] each.
    async fn stream_snapshot(&self) -> Result<Snapshot, StorageError> {
        let (meta_tx, meta_rx) = oneshot::channel();
        let (start_tx, start_rx) = oneshot::channel::<()>();
        let (chunk_tx, chunk_rx) = mpsc::channel(1);
        let (storage, group) = (self.storage.clone(), self.group);
        tokio::task::spawn_blocking(move || {
            let view = storage.db().snapshot();
            let meta = read_applied_state_at(&storage, &view, group)
                .map(|(last_log_id, last_membership)| SnapshotMeta { last_log_id, last_membership });
            let read = meta.is_ok();
            if meta_tx.send(meta).is_err() || !read || start_rx.blocking_recv().is_err() {
                return;
            }
            let mut frames = Frames { tx: chunk_tx, records: Vec::new(), bytes: 0 };
            if let Err(e) = send_records(&storage, &view, group, &mut frames) {
                let _ = frames.tx.blocking_send(Err(e));
                return;
            }
            if !frames.records.is_empty() {
                let _ = frames.tx.blocking_send(encode_frame(&frames.records));
            }
        });
        let meta = meta_rx.await.map_err(|_| StorageError::SnapshotReaderStopped)??;
        let chunks = SnapshotChunks { start: Some(start_tx), chunks: chunk_rx };
        Ok(Snapshot { meta, snapshot: SnapshotData::Chunks(chunks) })
    }
}

/// The frames of a snapshot being sent, filled record by record.
struct Frames {
    tx: mpsc::Sender<Result<Vec<u8>, StorageError>>,
    records: SnapshotRecords,
    bytes: usize,
}

/// The receiver went away: the snapshot is no longer being sent.
struct Gone;

impl Frames {
    /// Adds a record (its key without the group); sends the frame when full.
    fn push(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), Gone> {
        self.bytes += key.len() + value.len();
        self.records.push((key[GROUP_PREFIX_LEN..].to_vec(), value));
        if self.bytes >= SNAPSHOT_FRAME_BYTES {
            self.tx.blocking_send(encode_frame(&self.records)).map_err(|_| Gone)?;
            self.records.clear();
            self.bytes = 0;
        }
        Ok(())
    }
}

/// The group's `queue` records as of `view`, in key order, into `frames`.
/// A message whose body is in its log entry is sent as a `Body` record with
/// the body read from the entry: a snapshot carries no log, and its
/// receiver's log holds none of those entries.
fn send_records(
    storage: &Storage,
    view: &rocksdb::Snapshot<'_>,
    group: GroupId,
    frames: &mut Frames,
) -> Result<(), StorageError> {
    let (group_start, group_end) = group_range(group);
    let (bodies_start, bodies_end) = queue_kind_range(group, QueueKind::Body);
    let (in_log_start, in_log_end) = queue_kind_range(group, QueueKind::BodyInLog);
    let records = |start: &[u8], end: &[u8]| {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end);
        view.iterator_cf_opt(storage.cf(CF_QUEUE), options, IteratorMode::From(start, rocksdb::Direction::Forward))
    };
    let send = |frames: &mut Frames, start: &[u8], end: &[u8]| -> Result<bool, StorageError> {
        for item in records(start, end) {
            let (key, value) = item?;
            if frames.push(&key, value.into_vec()).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    };
    if !send(frames, &group_start, &bodies_start)? {
        return Ok(());
    }
    // Bodies: `Body` records and those left in the log, merged by offset
    // (a message has one or the other).
    let mut options = ReadOptions::default();
    options.set_snapshot(view);
    let mut from_log = FromLog::new(storage, group);
    let mut stored = records(&bodies_start, &bodies_end).peekable();
    let mut in_log = records(&in_log_start, &in_log_end).peekable();
    let offset_of = |item: Option<&Result<RawRecord, rocksdb::Error>>| match item {
        Some(Ok((key, _))) => queue_offset(key),
        _ => None,
    };
    loop {
        let take_stored = match (stored.peek(), in_log.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) | (_, None) => true,
            (_, Some(Err(_))) | (None, _) => false,
            (a, b) => offset_of(a) <= offset_of(b),
        };
        let (key, value) = if take_stored {
            let (key, value) = stored.next().expect("peeked")?;
            (key.into_vec(), value.into_vec())
        } else {
            let (key, value) = in_log.next().expect("peeked")?;
            let offset = queue_offset(&key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
            let message = from_log.read(&value, &options)?;
            (queue_key(group, QueueKind::Body, offset).to_vec(), encode("message", &message)?)
        };
        if frames.push(&key, value).is_err() {
            return Ok(());
        }
    }
    if !send(frames, &bodies_end, &in_log_start)? {
        return Ok(());
    }
    send(frames, &in_log_end, &group_end)?;
    Ok(())
}

/// About this many bytes of records go in one snapshot frame.
const SNAPSHOT_FRAME_BYTES: usize = 1024 * 1024;

type SnapshotRecords = Vec<(Vec<u8>, Vec<u8>)>;

fn encode_frame(records: &SnapshotRecords) -> Result<Vec<u8>, StorageError> {
    let body = encode("snapshot frame", records)?;
    let length = u32::try_from(body.len()).map_err(|_| StorageError::MalformedSnapshot("frame over 4 GiB".into()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&length.to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// A frame longer than this is taken for corruption rather than allocated
/// (the sender cuts frames at about [`SNAPSHOT_FRAME_BYTES`], plus one record).
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// The frames of a snapshot's data, read and decoded one by one (the
/// install stops at the first error).
fn read_frames(mut data: impl io::BufRead) -> impl Iterator<Item = Result<SnapshotRecords, StorageError>> {
    std::iter::from_fn(move || read_frame(&mut data).transpose())
}

/// The next frame, `None` at the end of the data.
fn read_frame(data: &mut impl io::BufRead) -> Result<Option<SnapshotRecords>, StorageError> {
    let io = |source| StorageError::Io { what: "read a snapshot".into(), source };
    if data.fill_buf().map_err(io)?.is_empty() {
        return Ok(None);
    }
    let truncated = |what: String| {
        move |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => StorageError::MalformedSnapshot(what),
            _ => io(e),
        }
    };
    let mut length = [0u8; 4];
    data.read_exact(&mut length).map_err(truncated("truncated frame length".into()))?;
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(StorageError::MalformedSnapshot(format!("frame of {length} bytes")));
    }
    let mut body = vec![0u8; length];
    data.read_exact(&mut body).map_err(truncated(format!("frame of {length} bytes truncated")))?;
    decode("snapshot frame", &body).map(Some)
}

/// Writes an SST file of the group's new data (a range deletion of the old,
/// the record of `meta`, then the snapshot's records in key order) and has
/// RocksDB ingest it: atomic, and durable when this returns. Memory stays
/// at about one frame; a frame that is malformed or out of order fails the
/// install before anything changes.
pub(crate) fn ingest_snapshot(
    storage: &Storage,
    group: GroupId,
    meta: &SnapshotMeta,
    frames: impl Iterator<Item = Result<SnapshotRecords, StorageError>>,
) -> Result<(), StorageError> {
    // Not while a purge copies bodies out of the log (it would write them
    // over the new data).
    let log_cache = storage.log_cache(group);
    let _moves = log_cache.body_moves().hold();
    let path = storage.snapshot_dir().join(format!("group-{}-{:016x}.sst", group.0, rand::random::<u64>()));
    let written = (|| {
        let mut options = rocksdb::Options::default();
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut writer = rocksdb::SstFileWriter::create(&options);
        writer.open(&path)?;
        let (start, end) = group_range(group);
        writer.delete_range(&start, &end)?;
        let installed = installed_snapshot_key(group);
        writer.put(installed, encode("installed snapshot", meta)?)?;
        for frame in frames {
            for (suffix, value) in frame? {
                let mut key = group.to_be_bytes().to_vec();
                key.extend_from_slice(&suffix);
                if key == installed {
                    // The sender's own record of a snapshot it installed.
                    continue;
                }
                writer.put(key, value)?;
            }
        }
        writer.finish()?;
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        storage.db().ingest_external_file_cf_opts(storage.cf(CF_QUEUE), &ingest, vec![&path])?;
        Ok(())
    })();
    // Moved into the database on success (this name is then a second link);
    // on failure a partial file.
    let _ = std::fs::remove_file(&path);
    written
}

/// The applied position and current snapshot after an install, synced.
fn write_installed_position(storage: &Storage, group: GroupId, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    put_applied_state(storage, &mut batch, group, &meta.last_log_id, Some(&meta.last_membership))?;
    // Like `build`: the position only; the data is in the queue's keys.
    put_snapshot(storage, &mut batch, group, meta, &[])?;
    write_synced(storage, batch)
}

/// An install whose data was ingested but whose position was not written
/// (a crash in between) left data ahead of the applied position: applying
/// the log from that position would apply entries twice. The data is
/// exactly the recorded snapshot's, so the position is set to it.
fn finish_interrupted_install(storage: &Storage, group: GroupId) -> Result<(), StorageError> {
    let Some(bytes) = storage.db().get_cf(storage.cf(CF_QUEUE), installed_snapshot_key(group))? else {
        return Ok(());
    };
    let installed: SnapshotMeta = decode("installed snapshot", &bytes)?;
    let (applied, _) = read_applied_state(storage, group)?;
    if installed.last_log_id > applied {
        warn!(%group, ?applied, installed = ?installed.last_log_id, "finishing a snapshot install a crash interrupted");
        write_installed_position(storage, group, &installed)?;
    }
    Ok(())
}

/// Rebuilds the queue's state from its records, message by message in offset
/// order, each with its delivery records (one cursor per subscription walks
/// alongside). It evicts as it goes, so a deep backlog never is all in memory.
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
    let mut correlations: HashMap<Offset, String> = correlations.into_iter().collect();
    let mut state = QueueState::restoring(next_offset, subscriptions, dedup);
    let mut cursors: Vec<_> = state
        .subscription_ids()
        .into_iter()
        .map(|id| {
            let (start, end) = subscription_range(group, id);
            DeliveryCursor { id, records: range_iter(storage, start.to_vec(), end), head: None }
        })
        .collect();
    let (start, end) = queue_kind_range(group, QueueKind::MessageInfo);
    let mut records = Vec::new();
    for (restored, item) in range_iter(storage, start.to_vec(), end.to_vec()).enumerate() {
        let (key, value) = item?;
        let (offset, info) = info_record(&key, &value)?;
        records.clear();
        for cursor in &mut cursors {
            if let Some(delivery) = cursor.record_of(offset)? {
                records.push((cursor.id, delivery));
            }
        }
        state.restore_message(offset, info, &records, correlations.remove(&offset));
        if restored % 4096 == 4095 {
            state.evict(MESSAGES_IN_MEMORY);
        }
    }
    state.evict(MESSAGES_IN_MEMORY);
    Ok(state)
}

type RawRecords<'a> = rocksdb::DBIteratorWithThreadMode<'a, rocksdb::DB>;
/// A key and value as a RocksDB iterator yields them.
type RawRecord = (Box<[u8]>, Box<[u8]>);

/// The `queue` records from `start` (inclusive) to `end` (exclusive), in key order.
fn range_iter(storage: &Storage, start: Vec<u8>, end: Vec<u8>) -> RawRecords<'_> {
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(end);
    storage.db().iterator_cf_opt(storage.cf(CF_QUEUE), options, IteratorMode::From(&start, rocksdb::Direction::Forward))
}

/// One subscription's delivery records, walked in offset order.
struct DeliveryCursor<'a> {
    id: SubscriptionId,
    records: RawRecords<'a>,
    head: Option<(Offset, DeliveryState)>,
}

impl DeliveryCursor<'_> {
    /// The record of the message at `offset`; called with rising offsets.
    /// Records of messages not stored are passed over, as `QueueState::restore` does.
    fn record_of(&mut self, offset: Offset) -> Result<Option<DeliveryState>, StorageError> {
        loop {
            let (at, delivery) = match self.head.take() {
                Some(head) => head,
                None => match self.records.next() {
                    None => return Ok(None),
                    Some(item) => {
                        let (key, value) = item?;
                        let (_, at) = delivery_key_parts(&key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
                        (at, decode("delivery", &value)?)
                    }
                },
            };
            if at == offset {
                return Ok(Some(delivery));
            }
            if at > offset {
                self.head = Some((at, delivery));
                return Ok(None);
            }
        }
    }
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
    read_range(storage, start.to_vec(), end.to_vec(), decode_one)
}

/// Every `queue` record from `start` (inclusive) to `end` (exclusive), in key
/// order, decoded by `decode_one` from its key and value.
fn read_range<T>(
    storage: &Storage,
    start: Vec<u8>,
    end: Vec<u8>,
    decode_one: impl Fn(&[u8], &[u8]) -> Result<T, StorageError>,
) -> Result<Vec<T>, StorageError> {
    let mut records = Vec::new();
    for item in range_iter(storage, start, end) {
        let (key, value) = item?;
        records.push(decode_one(&key, &value)?);
    }
    Ok(records)
}

/// A message-info record: the message's offset and what the state keeps of it.
fn info_record(key: &[u8], value: &[u8]) -> Result<(Offset, MessageInfo), StorageError> {
    let offset = queue_offset(key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
    Ok((offset, decode("message info", value)?))
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

    /// Up to `max` stored messages of `from..to` with the subscription's
    /// records (see `QueueState::peek`; evicted ones are read from disk),
    /// and the queue's next offset at that moment.
    pub fn peek(
        &self,
        subscription: SubscriptionId,
        from: Offset,
        to: Offset,
        max: usize,
    ) -> Result<(Vec<PeekedMessage>, Offset), ColdError> {
        let state = self.state();
        let records = state.peek(subscription, from, to, max, &Infos { storage: &self.storage, group: self.group })?;
        Ok((records, state.next_offset()))
    }

    /// Reads message bodies to deliver them, in the order of `offsets`: the
    /// newest from memory (and out of it: see [`BodyCache`]), the rest from
    /// RocksDB; offsets not found (acked meanwhile) are skipped.
    pub fn read_for_delivery(&self, offsets: &[Offset]) -> Result<Vec<StoredMessage>, StorageError> {
        self.read(offsets, true)
    }

    /// Reads message bodies, as [`Self::read_for_delivery`] does, but only
    /// to look at them (Peek): what is in memory stays there.
    pub fn read_messages(&self, offsets: &[Offset]) -> Result<Vec<StoredMessage>, StorageError> {
        self.read(offsets, false)
    }

    fn read(&self, offsets: &[Offset], deliver: bool) -> Result<Vec<StoredMessage>, StorageError> {
        let mut messages = self.bodies.get(offsets, deliver);
        let missing: Vec<Offset> =
            offsets.iter().zip(&messages).filter(|(_, cached)| cached.is_none()).map(|(offset, _)| *offset).collect();
        if !missing.is_empty() {
            let mut from_disk = self.read_stored(&missing)?.into_iter().peekable();
            for (offset, message) in offsets.iter().zip(messages.iter_mut()) {
                if message.is_none() && from_disk.peek().is_some_and(|m| m.offset == *offset) {
                    *message = from_disk.next();
                }
            }
        }
        Ok(messages.into_iter().flatten().collect())
    }

    /// Reads message bodies from RocksDB, in the order of `offsets`; offsets
    /// not found are skipped. A message's body is in its `Body` record or, if
    /// it was left in its log entry, in that entry: records and entries are
    /// read through one RocksDB snapshot, as a purge moves a body from the
    /// one to the other and deletes the entry in one write.
    fn read_stored(&self, offsets: &[Offset]) -> Result<Vec<StoredMessage>, StorageError> {
        let db = self.storage.db();
        let cf = self.storage.cf(CF_QUEUE);
        let view = db.snapshot();
        let mut options = ReadOptions::default();
        options.set_snapshot(&view);
        let keys = |kind: QueueKind| offsets.iter().map(move |o| queue_key(self.group, kind, *o)).collect::<Vec<_>>();
        let mut found = vec![None; offsets.len()];
        // Batched: one lookup pass for all keys, and each value decoded from
        // RocksDB's pinned copy rather than from a vector copied out of it.
        let body_keys = keys(QueueKind::Body);
        for (slot, value) in found.iter_mut().zip(db.batched_multi_get_cf_opt(cf, &body_keys, false, &options)) {
            if let Some(bytes) = value? {
                *slot = Some(decode("message", &bytes)?);
            }
        }
        if found.iter().any(Option::is_none) {
            let mut from_log = FromLog::new(&self.storage, self.group);
            let in_log_keys = keys(QueueKind::BodyInLog);
            let in_log = db.batched_multi_get_cf_opt(cf, &in_log_keys, false, &options);
            for (slot, value) in found.iter_mut().zip(in_log) {
                if slot.is_some() {
                    continue;
                }
                if let Some(bytes) = value? {
                    *slot = Some(from_log.read(&bytes, &options)?);
                }
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}

/// The bytes of the messages `changes` store, to size their write batch
/// (bodies left in the log are not written).
fn stored_bytes(changes: &[Change], located: &[Option<LogBody>]) -> usize {
    changes
        .iter()
        .zip(located)
        .map(|(change, at)| match change {
            Change::PutMessage { message, .. } => {
                let headers: usize = message.headers.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
                if at.is_some() { headers } else { message.body.len() + headers }
            }
            _ => 0,
        })
        .sum()
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
        let started = std::time::Instant::now();
        let mut changes = Vec::new();
        let mut origins = Vec::new();
        let store = Infos { storage: &self.storage, group: self.group };
        let applied = apply_entries(entries, |index, request| match request {
            RaftRequest::Queue(request) => {
                origins.push((changes.len(), index));
                let mut state = self.state.write().expect("queue state lock poisoned");
                let response = state.apply_with(index, request, &mut changes, &store).map_err(io::Error::other)?;
                Ok(RaftResponse::Queue(response))
            }
            RaftRequest::Meta(command) => {
                warn!(group = %self.group, ?command, "meta command in a queue group ignored");
                Ok(RaftResponse::Empty)
            }
        })
        .await?;
        let located = self.locate_bodies(&changes, &origins);
        let mut batch = sized_batch(2 * changes.len(), stored_bytes(&changes, &located));
        self.write_changes(&mut batch, &changes, &located)?;
        self.storage.body_writes().count_in_log(located.iter().flatten().count() as u64);
        let first_stored = self.state.read().expect("queue state lock poisoned").first_stored();
        // Not while a purge copies bodies out of the log (it would copy back
        // a message deleted here).
        let moves = self.log_cache.body_moves();
        let _moves = moves.hold();
        // The bodies are cached once written (a read that misses the cache
        // finds them on disk), before waiting readers are woken.
        applied.commit(&self.storage, batch, self.group, &self.log_cache, ApplyWrite::Unlogged, |applied| {
            self.bodies.written(&changes);
            if let Some(log_id) = applied {
                self.applied.send_replace(log_id.index());
            }
        })?;
        moves.stored_from(first_stored);
        // Only now: evicted messages are read back from what was just written.
        self.state.write().expect("queue state lock poisoned").evict(MESSAGES_IN_MEMORY);
        stages::record(Stage::Apply, started.elapsed());
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Replaces the group's data with the snapshot's, never holding the data
    /// in memory whole: the frames go into an SST file on disk, which RocksDB
    /// ingests in one step together with a range deletion of the group's old
    /// data and a record of the snapshot (`installed_snapshot_key`). The
    /// position (in `raft_meta`) is written after that; a crash in between
    /// is finished on the next open (`finish_interrupted_install`).
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        // What a follower receives is a file; other data (tests hand over a
        // sender's stream) is read into memory first.
        let data: Box<dyn io::BufRead + Send> = match snapshot {
            SnapshotData::File(file) => Box::new(file),
            other => Box::new(io::Cursor::new(other.into_bytes().await?)),
        };
        let (storage, group, installing) = (self.storage.clone(), self.group, meta.clone());
        tokio::task::spawn_blocking(move || ingest_snapshot(&storage, group, &installing, read_frames(data)))
            .await
            .map_err(io::Error::other)??;
        self.bodies.clear();
        write_installed_position(&self.storage, self.group, meta)?;
        let state = load_state(&self.storage, self.group)?;
        self.log_cache.body_moves().stored_from(state.first_stored());
        *self.state.write().expect("queue state lock poisoned") = state;
        if let Some(log_id) = &meta.last_log_id {
            self.applied.send_replace(log_id.index());
        }
        Ok(())
    }

    /// `None` until a snapshot has been built or installed; then the state
    /// at the current applied position (at or after that snapshot's, which is
    /// all openraft needs: the log after it is still there), read only if
    /// it is sent.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if read_snapshot(&self.storage, self.group)?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.stream_snapshot().await?))
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::entry::RaftEntry;
    use raftmq_types::{NewMessage, QueueCommand, QueueRequest};
    use tempfile::TempDir;

    use super::*;

    const GROUP: GroupId = GroupId(3);

    fn produce(term: u64, index: u64, bodies: &[&str]) -> openraft::alias::EntryOf<TypeConfig> {
        let messages = bodies.iter().map(|b| NewMessage { body: b.as_bytes().to_vec().into(), ..Default::default() });
        let command =
            QueueCommand::Produce { messages: messages.collect(), dedup_window_ms: 0, limits: Default::default() };
        let request = RaftRequest::Queue(QueueRequest { now: TimestampMs(index), command });
        openraft::alias::EntryOf::<TypeConfig>::new(
            openraft::testing::log_id::<TypeConfig>(term, 1, index),
            EntryPayload::Normal(request),
        )
    }

    async fn apply(sm: &mut QueueStateMachine, entries: Vec<openraft::alias::EntryOf<TypeConfig>>) {
        sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.expect("apply");
    }

    /// A queue group's log store and state machine on a fresh database.
    async fn log_and_state(dir: &TempDir) -> (Storage, crate::LogStore, QueueStateMachine) {
        let storage = Storage::open(dir.path()).unwrap();
        let log = crate::LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
        let sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
        (storage, log, sm)
    }

    /// Appends `entry` and applies it as read back from the log store, as
    /// openraft does: a leader's bodies are then slices of what it wrote.
    async fn append_and_apply(
        log: &mut crate::LogStore,
        sm: &mut QueueStateMachine,
        entry: openraft::alias::EntryOf<TypeConfig>,
    ) {
        use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
        use openraft::type_config::TypeConfigExt;

        let index = entry.index();
        let (tx, rx) = TypeConfig::oneshot();
        log.append(vec![entry], IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        apply(sm, log.try_get_log_entries(index..=index).await.unwrap()).await;
    }

    /// A crash after the SST with the snapshot's data was ingested but before
    /// the applied position was written: the next open sets the position to
    /// the snapshot's, so the log is not applied a second time over its data.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_install_interrupted_after_its_ingest_is_finished_on_open() {
        let source_dir = TempDir::new().unwrap();
        let mut source = QueueStateMachine::open(Storage::open(source_dir.path()).unwrap(), GROUP).await.unwrap();
        apply(&mut source, vec![produce(2, 1, &["a", "b"]), produce(2, 2, &["c"])]).await;
        source.build().unwrap();
        let snapshot = source.get_current_snapshot().await.unwrap().expect("built");
        let data = snapshot.snapshot.into_bytes().await.unwrap();

        let target_dir = TempDir::new().unwrap();
        let target = Storage::open(target_dir.path()).unwrap();
        let mut replica = QueueStateMachine::open(target.clone(), GROUP).await.unwrap();
        apply(&mut replica, vec![produce(1, 1, &["x"])]).await;
        ingest_snapshot(&target, GROUP, &snapshot.meta, read_frames(data.as_slice())).unwrap();
        // The crash: the position is not written.
        drop(replica);

        let reopened = QueueStateMachine::open(target.clone(), GROUP).await.unwrap();
        let (applied, membership) = read_applied_state(&target, GROUP).unwrap();
        assert_eq!(applied, snapshot.meta.last_log_id);
        assert_eq!(membership, snapshot.meta.last_membership);
        assert_eq!(read_snapshot(&target, GROUP).unwrap().map(|s| s.meta), Some(snapshot.meta.clone()));
        let now = TimestampMs(10);
        assert_eq!(reopened.reader().state().stats(now), source.reader().state().stats(now));
        let bodies: Vec<Vec<u8>> = reopened
            .reader()
            .read_messages(&[Offset(0), Offset(1), Offset(2)])
            .unwrap()
            .into_iter()
            .map(|m| m.body.to_vec())
            .collect();
        assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(*reopened.applied.borrow(), 2);
    }

    /// A message that apply deletes after a purge read its body out of the
    /// log, but before the purge writes, is not copied back: the purge
    /// checks, under `BodyMoves`, which of the messages it read are still
    /// stored.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_purge_does_not_copy_back_a_message_deleted_after_it_read_it() {
        let dir = TempDir::new().unwrap();
        let (storage, mut log, mut sm) = log_and_state(&dir).await;
        let large = "x".repeat(crate::BODY_IN_LOG_MIN_BYTES);
        append_and_apply(&mut log, &mut sm, produce(1, 1, &[&large, &large])).await;
        assert_eq!(storage.body_writes().left_in_log(), 2);

        // Nothing old enough to copy: the walk stops at the first record and
        // names its entry, before which a purge may delete everything.
        let none = crate::log_bodies::copy_out_of_log(&storage, GROUP, None, Offset(0), u64::MAX).unwrap();
        assert_eq!((none.next, none.first_kept), (Offset(0), Some(1)));
        let copies = crate::log_bodies::copy_out_of_log(&storage, GROUP, Some(1), Offset(0), u64::MAX).unwrap();
        assert_eq!((copies.next, copies.first_kept), (Offset(2), None), "both read, none left");
        let purge = RaftRequest::Queue(QueueRequest { now: TimestampMs(2), command: QueueCommand::Purge });
        let purge = openraft::alias::EntryOf::<TypeConfig>::new(
            openraft::testing::log_id::<TypeConfig>(1, 1, 2),
            EntryPayload::Normal(purge),
        );
        apply(&mut sm, vec![purge]).await;
        let mut batch = WriteBatch::default();
        copies.write_into(&storage, &mut batch).unwrap();
        assert!(batch.is_empty(), "deleted messages copied back");
        assert_eq!(storage.body_writes().copied_out_of_log(), 0);
        assert!(sm.reader().read_messages(&[Offset(0), Offset(1)]).unwrap().is_empty());
    }

    /// An acknowledged message leaves no record behind, though its deletion
    /// writes only the deletions such a message can need: a body shorter
    /// than `BODY_IN_LOG_MIN_BYTES` is never left in the log, and only a
    /// message with a correlation id has that record.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_acknowledged_message_leaves_no_record_behind() {
        let dir = TempDir::new().unwrap();
        let (storage, mut log, mut sm) = log_and_state(&dir).await;
        let large = "x".repeat(crate::BODY_IN_LOG_MIN_BYTES);
        let messages = vec![
            NewMessage { body: "short".into(), ..Default::default() },
            NewMessage { body: large.into(), ..Default::default() },
            NewMessage { body: "reply".into(), correlation_id: Some("c".into()), ..Default::default() },
        ];
        let lease = QueueCommand::Lease {
            subscription: raftmq_types::SubscriptionName::default_subscription(),
            max_messages: 3,
            max_bytes: 0,
            visibility_timeout_ms: 60_000,
            policy: Default::default(),
            correlation_id: None,
        };
        let receipts = (0..3).map(|o| raftmq_types::Receipt::new(Offset(o), 2)).collect();
        let commands = [
            QueueCommand::Produce { messages, dedup_window_ms: 0, limits: Default::default() },
            lease,
            QueueCommand::Ack { receipts, retention: Default::default() },
        ];
        let records = |kind: QueueKind| read_kind(&storage, GROUP, kind, |_, _| Ok(())).unwrap().len();
        let kinds = [
            QueueKind::Body,
            QueueKind::BodyInLog,
            QueueKind::MessageInfo,
            QueueKind::Correlation,
            QueueKind::Delivery,
        ];
        let mut counts = Vec::new();
        for (i, command) in commands.into_iter().enumerate() {
            let index = i as u64 + 1;
            let request = RaftRequest::Queue(QueueRequest { now: TimestampMs(index), command });
            let entry = openraft::alias::EntryOf::<TypeConfig>::new(
                openraft::testing::log_id::<TypeConfig>(1, 1, index),
                EntryPayload::Normal(request),
            );
            append_and_apply(&mut log, &mut sm, entry).await;
            counts.push(kinds.map(records));
        }
        assert_eq!(counts[0], [2, 1, 3, 1, 3], "stored, each held by the default subscription");
        assert_eq!(counts[1], [2, 1, 3, 1, 3], "leased");
        assert_eq!(counts[2], [0, 0, 0, 0, 0], "acknowledged");
    }

    /// Whatever arrives, reading frames ends with the records or an error,
    /// never a panic or an allocation of what a length claims.
    #[test]
    fn malformed_snapshot_data_is_an_error() {
        let frame = encode_frame(&vec![(vec![1u8], vec![2u8, 3])]).unwrap();
        let read = |data: &[u8]| read_frames(data).collect::<Result<Vec<_>, _>>();
        assert_eq!(read(&frame).unwrap().len(), 1);
        assert_eq!(read(&[frame.clone(), frame.clone()].concat()).unwrap().len(), 2);
        assert!(read(&[]).unwrap().is_empty());
        let malformed = |data: &[u8]| matches!(read(data), Err(StorageError::MalformedSnapshot(_)));
        assert!(malformed(&frame[..2]), "truncated length");
        assert!(malformed(&frame[..frame.len() - 1]), "truncated body");
        assert!(malformed(&u32::MAX.to_le_bytes()), "a length of 4 GiB is not allocated");
        let mut garbage = 3u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(read(&garbage), Err(StorageError::Corrupt { .. })), "undecodable body");
    }
}
