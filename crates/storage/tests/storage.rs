//! Storage tests: openraft's own conformance suite, durability across a
//! reopen, WAL group commit, and snapshot transfer between databases.

use std::io;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, StorageError as RaftStorageError};
use raftmq_storage::{
    ApplyWrite, BODY_IN_LOG_MIN_BYTES, COPY_PER_PURGE_BYTES, KEEP_IN_LOG, LogStore, MESSAGES_IN_MEMORY,
    MetaStateMachine, QueueStateMachine, SnapshotData, Storage, TypeConfig,
};
use raftmq_types::{
    GroupId, META_GROUP_ID, MetaCommand, NewMessage, Offset, QueueCommand, QueueConfig, QueueName, QueueRequest,
    RaftRequest, Retention, SeekTarget, SubscriptionId, SubscriptionName, SubscriptionStart, TimestampMs,
};
use tempfile::TempDir;

type Entry = openraft::alias::EntryOf<TypeConfig>;
type LogId = openraft::alias::LogIdOf<TypeConfig>;

const GROUP: GroupId = GroupId(7);

fn open(dir: &TempDir) -> Storage {
    Storage::open(&dir.path().join("db")).expect("open storage")
}

/// A queue group's log store and state machine on `dir`'s database.
async fn queue_group(dir: &TempDir) -> (Storage, LogStore, QueueStateMachine) {
    let storage = open(dir);
    let log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    let sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
    (storage, log, sm)
}

/// How many Raft log entries the database holds, purged or not.
fn log_entries_on_disk(storage: &Storage) -> usize {
    let raft_log = storage.db().cf_handle("raft_log").unwrap();
    storage.db().iterator_cf(raft_log, rocksdb::IteratorMode::Start).count()
}

struct QueueStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, QueueStateMachine, TempDir> for QueueStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, QueueStateMachine), RaftStorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| RaftStorageError::read(TypeConfig::err_from_error(&e)))?;
        let storage = open(&dir);
        let sm = QueueStateMachine::open(storage.clone(), GROUP)
            .await
            .map_err(|e| RaftStorageError::read(TypeConfig::err_from_error(&io::Error::from(e))))?;
        Ok((dir, LogStore::new(storage, GROUP, ApplyWrite::Unlogged), sm))
    }
}

struct MetaStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, MetaStateMachine, TempDir> for MetaStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, MetaStateMachine), RaftStorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| RaftStorageError::read(TypeConfig::err_from_error(&e)))?;
        let storage = open(&dir);
        let sm = MetaStateMachine::open(storage.clone())
            .await
            .map_err(|e| RaftStorageError::read(TypeConfig::err_from_error(&io::Error::from(e))))?;
        Ok((dir, LogStore::new(storage, META_GROUP_ID, ApplyWrite::Logged), sm))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_group_store_passes_openraft_suite() {
    Suite::test_all(QueueStoreBuilder).await.expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread")]
async fn meta_group_store_passes_openraft_suite() {
    Suite::test_all(MetaStoreBuilder).await.expect("openraft storage suite");
}

fn vote() -> openraft::alias::VoteOf<TypeConfig> {
    openraft::alias::VoteOf::<TypeConfig>::new(1, 1)
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn queue_entry(term: u64, index: u64, now: u64, command: QueueCommand) -> Entry {
    Entry::new(
        log_id(term, index),
        EntryPayload::Normal(RaftRequest::Queue(QueueRequest { now: TimestampMs(now), command })),
    )
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.expect("append");
    rx.await.expect("callback called").expect("append flushed");
}

fn produce(n: usize) -> QueueCommand {
    QueueCommand::Produce {
        messages: (0..n).map(|i| NewMessage { body: format!("m{i}").into(), ..Default::default() }).collect(),
        dedup_window_ms: 0,
        limits: Default::default(),
    }
}

/// One message per id, with a 60 s dedup window.
fn produce_deduped(ids: &[&str]) -> QueueCommand {
    QueueCommand::Produce {
        messages: ids
            .iter()
            .map(|id| NewMessage {
                body: id.as_bytes().to_vec().into(),
                dedup_id: Some(id.to_string()),
                ..Default::default()
            })
            .collect(),
        dedup_window_ms: 60_000,
        limits: Default::default(),
    }
}

async fn apply(sm: &mut QueueStateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("apply");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_vote_and_queue_state_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let entries = vec![
        queue_entry(1, 1, 100, produce(3)),
        queue_entry(
            1,
            2,
            200,
            QueueCommand::Lease {
                subscription: SubscriptionName::default_subscription(),
                max_messages: 1,
                max_bytes: 0,
                visibility_timeout_ms: 10_000,
                policy: Default::default(),
                correlation_id: None,
            },
        ),
    ];
    {
        let storage = open(&dir);
        let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
        log.save_vote(&vote()).await.unwrap();
        append(&mut log, entries.clone()).await;
        let mut sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
        apply(&mut sm, entries.clone()).await;
        let receipts = vec![raftmq_types::Receipt::new(Offset(0), 2)];
        let ack = QueueCommand::Ack { receipts, retention: Default::default() };
        let third = queue_entry(1, 3, 300, ack);
        append(&mut log, vec![third.clone()]).await;
        apply(&mut sm, vec![third]).await;
        let stats = sm.reader().state().stats(TimestampMs(300));
        assert_eq!((stats.depth, stats.next_offset), (2, Offset(3)));
    }
    let storage = open(&dir);
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote()));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index()), Some(3));
    assert_eq!(log.try_get_log_entries(1..3).await.unwrap(), entries);
    let mut sm = QueueStateMachine::open(storage, GROUP).await.unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index()), Some(3));
    let reader = sm.reader();
    let stats = reader.state().stats(TimestampMs(300));
    assert_eq!((stats.depth, stats.in_flight, stats.available, stats.next_offset), (2, 0, 2, Offset(3)));
    let bodies = reader.read_messages(&[Offset(0), Offset(1), Offset(2)]).unwrap();
    assert_eq!(bodies.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![Offset(1), Offset(2)], "acked body is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_of_many_groups_share_fsyncs() {
    let dir = TempDir::new().unwrap();
    let storage = open(&dir);
    let before = storage.syncer().sync_count();
    let mut tasks = Vec::new();
    for group in 1..=50u64 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let mut log = LogStore::new(storage, GroupId(group), ApplyWrite::Unlogged);
            for index in 1..=10 {
                append(&mut log, vec![queue_entry(1, index, 1, produce(1))]).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let syncs = storage.syncer().sync_count() - before;
    println!("500 appends took {syncs} fsyncs");
    assert!(syncs < 500, "every append fsynced on its own: {syncs} fsyncs");
    // Each group still reads back exactly its own entries.
    let mut log = LogStore::new(storage, GroupId(17), ApplyWrite::Unlogged);
    assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 10);
}

/// A queue group's snapshot does not flush, and its purge reaches the
/// memtables before the next flush does: the entries it covers are dropped
/// by that flush, never written to an SST file, and only the log after the
/// snapshot is. (Building the snapshot used to flush first, writing out
/// every entry about to be purged.)
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_group_purged_before_a_flush_writes_no_purged_entry_to_sst_files() {
    let dir = TempDir::new().unwrap();
    let (storage, mut log, mut sm) = queue_group(&dir).await;
    let entries: Vec<_> = (1..=110).map(|index| queue_entry(1, index, index, produce(8))).collect();
    append(&mut log, entries[..100].to_vec()).await;
    apply(&mut sm, entries[..100].to_vec()).await;
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index()), Some(100));
    // Entries are deleted only once they are old enough (bodies left in them).
    tokio::time::sleep(KEEP_IN_LOG).await;
    log.purge(snapshot.meta.last_log_id.unwrap()).await.unwrap();
    append(&mut log, entries[100..].to_vec()).await;
    apply(&mut sm, entries[100..].to_vec()).await;
    let raft_log_entries = || {
        let files = storage.db().live_files().unwrap();
        // Records that are not deletions (the purge's range deletion is one).
        let log_files = files.iter().filter(|f| f.column_family_name == "raft_log");
        log_files.map(|f| f.num_entries - f.num_deletions).sum::<u64>()
    };
    assert_eq!(raft_log_entries(), 0, "the snapshot flushed the log");

    storage.flush_memtables().unwrap();
    assert_eq!(raft_log_entries(), 10, "only the entries after the snapshot are written out");
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index()), Some(100));
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[100..]);
    assert_eq!(sm.reader().state().stats(TimestampMs(1_000)).depth, 880, "the state flushed whole");
}

/// Bodies of 4 KiB and more, and the log entries carrying them, go to blob
/// files at a flush (only a reference in the SST file) in `queue` and
/// `raft_log`, and in no other column family; large and small bodies and the
/// log entries read back the same after a reopen.
#[tokio::test(flavor = "multi_thread")]
async fn large_values_are_flushed_to_blob_files_and_read_back() {
    let dir = TempDir::new().unwrap();
    let (storage, mut log, mut sm) = queue_group(&dir).await;
    let body = |offset: usize| {
        let len = if offset.is_multiple_of(2) { 8 * 1024 } else { 100 };
        vec![b'a' + (offset % 26) as u8; len]
    };
    let entries: Vec<_> = (0..20u64)
        .map(|i| {
            let messages = vec![NewMessage { body: body(i as usize).into(), ..Default::default() }];
            let command = QueueCommand::Produce { messages, dedup_window_ms: 0, limits: Default::default() };
            queue_entry(1, i + 1, i + 1, command)
        })
        .collect();
    append(&mut log, entries.clone()).await;
    apply(&mut sm, entries.clone()).await;
    storage.flush_memtables().unwrap();

    let blob_bytes = |cf: &str| {
        let handle = storage.db().cf_handle(cf).unwrap();
        storage.db().property_int_value_cf(handle, "rocksdb.total-blob-file-size").unwrap().unwrap_or(0)
    };
    // Ten bodies of 8 KiB each in both, compressed (LZ4) from runs of one letter.
    for cf in ["queue", "raft_log"] {
        assert!(blob_bytes(cf) > 0, "{cf}: no blob file after a flush of ten 8 KiB bodies");
    }
    assert_eq!(blob_bytes("raft_meta"), 0);

    drop((log, sm));
    drop(storage);
    let storage = open(&dir);
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    let sm = QueueStateMachine::open(storage, GROUP).await.unwrap();
    let offsets: Vec<Offset> = (0..20).map(Offset).collect();
    let read = sm.reader().read_messages(&offsets).unwrap();
    assert_eq!(read.iter().map(|m| m.body.to_vec()).collect::<Vec<_>>(), (0..20).map(body).collect::<Vec<_>>());
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
}

/// A follower's log store writes an entry as the leader sent it, and the
/// leader sends the bytes its log store wrote (`EncodedEntries`), so an
/// entry is encoded once in the cluster. The bytes handed over here are those
/// of another entry with the same log id, to tell which bytes are written.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_writes_entries_as_received_and_a_leader_sends_what_it_wrote() {
    let dir = TempDir::new().unwrap();
    let sent = queue_entry(1, 1, 1, produce(3));
    let appended = queue_entry(1, 1, 1, produce(1));
    let second = queue_entry(1, 2, 2, produce(2));
    let encode = |entry: &Entry| bytes::Bytes::from(postcard::to_stdvec(entry).unwrap());
    {
        let storage = open(&dir);
        let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
        let encoded = storage.encoded_entries(GROUP);
        encoded.received(sent.log_id(), encode(&sent));
        append(&mut log, vec![appended.clone(), second.clone()]).await;
        // The leader's side: what its log store wrote, received or encoded.
        assert_eq!(encoded.encoded(&appended), Some(encode(&sent)));
        assert_eq!(encoded.encoded(&second), Some(encode(&second)));
        let other_term = queue_entry(2, 2, 2, produce(2));
        assert_eq!(encoded.encoded(&other_term), None);
    }
    let storage = open(&dir);
    let mut log = LogStore::new(storage, GROUP, ApplyWrite::Unlogged);
    assert_eq!(log.try_get_log_entries(1..=2).await.unwrap(), [sent, second]);
}

fn produce_bodies(bodies: &[Vec<u8>]) -> QueueCommand {
    QueueCommand::Produce {
        messages: bodies.iter().map(|b| NewMessage { body: b.clone().into(), ..Default::default() }).collect(),
        dedup_window_ms: 0,
        limits: Default::default(),
    }
}

fn bodies_of(sm: &QueueStateMachine, offsets: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    let offsets: Vec<Offset> = offsets.map(Offset).collect();
    sm.reader().read_messages(&offsets).unwrap().into_iter().map(|m| m.body.to_vec()).collect()
}

/// A body is written once per node: apply leaves bodies of
/// `BODY_IN_LOG_MIN_BYTES` and more in the log entry they came in (as the
/// leader encoded it or as a follower received it), the reads find them
/// there, a snapshot carries them, and the purge that deletes the entry
/// copies out first the bodies still stored, none that were deleted. Entries
/// that hold a stored message's body, and those after them, stay until
/// `KEEP_IN_LOG` after their append, though openraft sees them purged at
/// once; those before go at once.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_left_in_the_log_and_copied_out_before_their_entry_goes() {
    let dir = TempDir::new().unwrap();
    let (storage, mut log, mut sm) = queue_group(&dir).await;
    let large = |i: u8| vec![i; BODY_IN_LOG_MIN_BYTES + usize::from(i)];
    let leader_encoded = queue_entry(1, 1, 1, produce_bodies(&[large(1), b"small".to_vec(), large(2)]));
    let received = queue_entry(1, 2, 2, produce_bodies(&[large(3)]));
    // A follower's entry: decoded from the bytes it came in (bodies are
    // slices of them), which its log store writes.
    let bytes = bytes::Bytes::from(postcard::to_stdvec(&received).unwrap());
    let received: Entry = raftmq_types::shared_body::decode_sharing(&bytes, |b| postcard::from_bytes(b)).unwrap();
    storage.encoded_entries(GROUP).received(received.log_id(), bytes);
    append(&mut log, vec![leader_encoded, received]).await;
    // Apply gets the entries from the log store, as openraft does.
    apply(&mut sm, log.try_get_log_entries(1..=2).await.unwrap()).await;
    assert_eq!(storage.body_writes().left_in_log(), 3, "the three large bodies, not the small one");
    let expected = vec![large(1), b"small".to_vec(), large(2), large(3)];
    assert_eq!(bodies_of(&sm, 0..4), expected);

    // Purged at once: openraft no longer sees the entries, but they stay.
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    log.purge(snapshot.meta.last_log_id.unwrap()).await.unwrap();
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    assert_eq!(storage.body_writes().copied_out_of_log(), 0);
    assert_eq!(bodies_of(&sm, 0..4), expected);

    // A snapshot sent to a follower carries the bodies whole.
    let current = sm.get_current_snapshot().await.unwrap().expect("built");
    let replica_dir = TempDir::new().unwrap();
    let mut replica = QueueStateMachine::open(open(&replica_dir), GROUP).await.unwrap();
    replica.install_snapshot(&current.meta, current.snapshot).await.unwrap();
    assert_eq!(bodies_of(&replica, 0..4), expected);

    // Later entries: one whose messages are purged (deleted) before its
    // entry goes, and one whose body is still stored then.
    tokio::time::sleep(KEEP_IN_LOG).await;
    let more = vec![
        queue_entry(1, 3, 3, produce_bodies(&[large(4)])),
        queue_entry(1, 4, 4, QueueCommand::Purge),
        queue_entry(1, 5, 5, produce_bodies(&[large(5), large(6)])),
    ];
    append(&mut log, more).await;
    apply(&mut sm, log.try_get_log_entries(3..=5).await.unwrap()).await;
    assert_eq!(storage.body_writes().left_in_log(), 6);
    let kept = vec![large(5), large(6)];
    assert_eq!(bodies_of(&sm, 0..7), kept);
    // Entries before the first one holding a stored message's body go at
    // once, however recent: 3 and 4 with 1 and 2, not 5.
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    log.purge(snapshot.meta.last_log_id.unwrap()).await.unwrap();
    let left = || log_entries_on_disk(&storage);
    assert_eq!(left(), 1, "entries 1-4 deleted, 5 kept");
    assert_eq!(storage.body_writes().copied_out_of_log(), 0);
    assert_eq!(bodies_of(&sm, 0..7), kept);
    tokio::time::sleep(KEEP_IN_LOG).await;
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    log.purge(snapshot.meta.last_log_id.unwrap()).await.unwrap();
    assert_eq!(storage.body_writes().copied_out_of_log(), 2, "only the bodies still stored");
    assert_eq!(left(), 0, "every entry deleted");
    assert_eq!(bodies_of(&sm, 0..7), kept);

    // The copies are what a restart reads (with a flush: the writes were unlogged).
    storage.flush_memtables().unwrap();
    drop((log, sm, replica));
    drop(storage);
    let sm = QueueStateMachine::open(open(&dir), GROUP).await.unwrap();
    assert_eq!(bodies_of(&sm, 0..7), kept);
}

/// A purge copies no more than `COPY_PER_PURGE_BYTES` of bodies out of the
/// log (openraft's Raft task waits for it): it stops at the next stored
/// body, keeps that body's entry and those after it, and the next purge goes
/// on from there. Every body reads back the same all along, and after a
/// restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_copies_a_bounded_amount_and_the_next_purge_goes_on() {
    let dir = TempDir::new().unwrap();
    let (storage, mut log, mut sm) = queue_group(&dir).await;
    const BODY: usize = 64 << 10;
    const PER_ENTRY: usize = 8;
    // Entries whose bodies fill the budget exactly, and one more.
    let within_budget = COPY_PER_PURGE_BYTES as usize / (BODY * PER_ENTRY);
    let n_entries = within_budget + 1;
    let body = |i: usize| vec![i as u8; BODY];
    let entries: Vec<Entry> = (0..n_entries)
        .map(|e| {
            let bodies: Vec<Vec<u8>> = (0..PER_ENTRY).map(|j| body(e * PER_ENTRY + j)).collect();
            queue_entry(1, e as u64 + 1, 1, produce_bodies(&bodies))
        })
        .collect();
    append(&mut log, entries).await;
    apply(&mut sm, log.try_get_log_entries(1..=n_entries as u64).await.unwrap()).await;
    let n_bodies = (n_entries * PER_ENTRY) as u64;
    assert_eq!(storage.body_writes().left_in_log(), n_bodies);
    let expected: Vec<Vec<u8>> = (0..n_bodies as usize).map(body).collect();

    tokio::time::sleep(KEEP_IN_LOG).await;
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let last = snapshot.meta.last_log_id.unwrap();
    log.purge(last).await.unwrap();
    let left = || log_entries_on_disk(&storage);
    assert_eq!(
        storage.body_writes().copied_out_of_log(),
        (within_budget * PER_ENTRY) as u64,
        "the first purge copies the budget's worth"
    );
    assert_eq!(left(), 1, "the entry of the first body not copied stays");
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty(), "openraft sees it all purged");
    assert_eq!(bodies_of(&sm, 0..n_bodies), expected);

    log.purge(last).await.unwrap();
    assert_eq!(storage.body_writes().copied_out_of_log(), n_bodies, "the next purge copies the rest");
    assert_eq!(left(), 0);
    assert_eq!(bodies_of(&sm, 0..n_bodies), expected);

    storage.flush_memtables().unwrap();
    drop((log, sm));
    drop(storage);
    let sm = QueueStateMachine::open(open(&dir), GROUP).await.unwrap();
    assert_eq!(bodies_of(&sm, 0..n_bodies), expected);
}

/// A database of the version before (4: no bodies left in the log) opens as
/// it is and is marked as this version; an older one is refused, naming
/// both versions.
#[test]
fn a_version_4_database_opens_and_an_older_one_is_refused() {
    let dir = TempDir::new().unwrap();
    let mark = |version: u32| {
        let storage = open(&dir);
        let meta = storage.db().cf_handle("meta").unwrap();
        storage.db().put_cf(meta, b"format_version", version.to_be_bytes()).unwrap();
    };
    let version = || {
        let storage = open(&dir);
        let meta = storage.db().cf_handle("meta").unwrap();
        let bytes = storage.db().get_cf(meta, b"format_version").unwrap().unwrap();
        u32::from_be_bytes(bytes.as_slice().try_into().unwrap())
    };
    mark(4);
    assert_eq!(version(), raftmq_storage::FORMAT_VERSION);
    assert_eq!(raftmq_storage::FORMAT_VERSION, 5);
    mark(3);
    let refused = Storage::open(&dir.path().join("db")).err().expect("version 3 is refused").to_string();
    assert!(refused.contains("version 3") && refused.contains("version 5"), "{refused}");
}

/// Replication and apply read back entries that were just appended: those
/// not yet applied come from memory, applied ones from RocksDB, and a range
/// across the two is read whole and in order either way.
#[tokio::test(flavor = "multi_thread")]
async fn entries_not_yet_applied_are_read_from_memory() {
    let dir = TempDir::new().unwrap();
    let storage = open(&dir);
    let reads = || (storage.log_reads().from_memory(), storage.log_reads().from_disk());
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    let entries: Vec<_> = (1..=10).map(|index| queue_entry(1, index, index, produce(2))).collect();
    append(&mut log, entries.clone()).await;
    assert_eq!(log.try_get_log_entries(1..=10).await.unwrap(), entries);
    assert_eq!(reads(), (10, 0));

    let mut sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
    apply(&mut sm, entries[..4].to_vec()).await;
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries, "4 from disk, 6 from memory");
    assert_eq!(reads(), (16, 4));
    assert_eq!(log.try_get_log_entries(2..4).await.unwrap(), entries[1..3]);
    assert_eq!(reads(), (16, 6));

    // Truncated entries are gone from memory too; their replacements are read.
    let replaced: Vec<_> = (8..=9).map(|index| queue_entry(2, index, 100 + index, produce(1))).collect();
    log.truncate_after(Some(entries[6].log_id())).await.unwrap();
    append(&mut log, replaced.clone()).await;
    let mut expected = entries[4..7].to_vec();
    expected.extend(replaced);
    assert_eq!(log.try_get_log_entries(5..20).await.unwrap(), expected);
    assert_eq!(reads(), (21, 6));

    // Purged entries are not read from memory either.
    log.purge(entries[5].log_id()).await.unwrap();
    assert_eq!(log.try_get_log_entries(1..=9).await.unwrap(), expected[2..]);
    assert_eq!(reads(), (24, 6));
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_ids_survive_reopen_and_snapshot_install() {
    let dir = TempDir::new().unwrap();
    let storage = open(&dir);
    {
        let mut sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
        apply(&mut sm, vec![queue_entry(1, 1, 100, produce_deduped(&["a", "b"]))]).await;
    }
    let mut sm = QueueStateMachine::open(storage, GROUP).await.unwrap();
    assert_eq!(sm.reader().state().stats(TimestampMs(100)).dedup_ids, 2);
    // "b" again after the restart is not stored; "c" is.
    apply(&mut sm, vec![queue_entry(1, 2, 200, produce_deduped(&["b", "c"]))]).await;
    let stats = sm.reader().state().stats(TimestampMs(200));
    assert_eq!((stats.depth, stats.next_offset, stats.dedup_ids), (3, Offset(3), 3));

    // What openraft sends a follower: the current snapshot once one is built
    // (a built snapshot carries only its position).
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
    assert_eq!(snapshot.meta, built.meta);
    let target_dir = TempDir::new().unwrap();
    let mut replica = QueueStateMachine::open(open(&target_dir), GROUP).await.unwrap();
    replica.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(replica.reader().state().stats(TimestampMs(200)), stats);
    apply(&mut replica, vec![queue_entry(1, 3, 300, produce_deduped(&["a", "d"]))]).await;
    assert_eq!(replica.reader().state().stats(TimestampMs(300)).next_offset, Offset(4), "only d is new");
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_installs_on_a_fresh_replica() {
    let source_dir = TempDir::new().unwrap();
    let source = open(&source_dir);
    let mut sm = QueueStateMachine::open(source, GROUP).await.unwrap();
    apply(
        &mut sm,
        vec![
            queue_entry(1, 1, 100, produce(5)),
            queue_entry(
                1,
                2,
                200,
                QueueCommand::Lease {
                    subscription: SubscriptionName::default_subscription(),
                    max_messages: 2,
                    max_bytes: 0,
                    visibility_timeout_ms: 1000,
                    policy: Default::default(),
                    correlation_id: None,
                },
            ),
        ],
    )
    .await;
    // What openraft sends a follower: the current snapshot once one is built
    // (a built snapshot carries only its position).
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
    assert_eq!(snapshot.meta, built.meta);
    assert_eq!(snapshot.meta.last_log_id.as_ref().map(|l| l.index()), Some(2));

    let target_dir = TempDir::new().unwrap();
    let target = open(&target_dir);
    let mut replica = QueueStateMachine::open(target.clone(), GROUP).await.unwrap();
    replica.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let expected = sm.reader().state().stats(TimestampMs(500));
    assert_eq!(replica.reader().state().stats(TimestampMs(500)), expected);
    assert_eq!(replica.reader().read_messages(&[Offset(4)]).unwrap()[0].body, b"m4".to_vec());
    let current = replica.get_current_snapshot().await.unwrap().expect("installed snapshot is current");
    assert_eq!(current.meta, snapshot.meta);
    // And it survives a reopen.
    drop(replica);
    let reopened = QueueStateMachine::open(target, GROUP).await.unwrap();
    assert_eq!(reopened.reader().state().stats(TimestampMs(500)), expected);
}

/// A replica that falls behind gets a snapshot over data of its own: the
/// install leaves exactly the snapshot's data (it is ingested as an SST file
/// with a range deletion of the group's old keys), also after a reopen, and
/// a second install over the first works the same way.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_install_replaces_what_the_replica_had() {
    let source_dir = TempDir::new().unwrap();
    let mut sm = QueueStateMachine::open(open(&source_dir), GROUP).await.unwrap();
    apply(&mut sm, vec![queue_entry(2, 1, 100, produce(3)), queue_entry(2, 2, 100, produce(2))]).await;
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");

    let target_dir = TempDir::new().unwrap();
    let target = open(&target_dir);
    let mut replica = QueueStateMachine::open(target.clone(), GROUP).await.unwrap();
    let other = QueueCommand::Produce {
        messages: (0..8).map(|i| NewMessage { body: format!("old{i}").into(), ..Default::default() }).collect(),
        dedup_window_ms: 0,
        limits: Default::default(),
    };
    apply(&mut replica, vec![queue_entry(1, 1, 50, other)]).await;
    assert_eq!(replica.reader().read_messages(&[Offset(6)]).unwrap().len(), 1);

    replica.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let expected = sm.reader().state().stats(TimestampMs(500));
    assert_eq!(replica.reader().state().stats(TimestampMs(500)), expected);
    let bodies = |r: &QueueStateMachine| -> Vec<Vec<u8>> {
        let offsets: Vec<Offset> = (0..8).map(Offset).collect();
        r.reader().read_messages(&offsets).unwrap().into_iter().map(|m| m.body.to_vec()).collect()
    };
    let want: Vec<Vec<u8>> = ["m0", "m1", "m2", "m0", "m1"].iter().map(|b| b.as_bytes().to_vec()).collect();
    assert_eq!(bodies(&replica), want, "the replica's own messages are gone, the snapshot's are there");
    drop(replica);
    let mut replica = QueueStateMachine::open(target.clone(), GROUP).await.unwrap();
    assert_eq!(replica.reader().state().stats(TimestampMs(500)), expected);
    assert_eq!(bodies(&replica), want);

    // Again, from a source that moved on: the first install's data goes too.
    apply(&mut sm, vec![queue_entry(2, 3, 300, produce(1))]).await;
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let second = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
    replica.install_snapshot(&second.meta, second.snapshot).await.unwrap();
    assert_eq!(replica.reader().state().stats(TimestampMs(500)), sm.reader().state().stats(TimestampMs(500)));
    assert_eq!(bodies(&replica).len(), 6);
}

/// The SST file of an install a crash interrupted is removed at the next open.
#[test]
fn an_unfinished_snapshot_file_is_removed_at_open() {
    let dir = TempDir::new().unwrap();
    drop(open(&dir));
    let leftover = dir.path().join("db").join("snapshots").join("group-7-00000000000000aa.sst");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, b"half an sst").unwrap();
    drop(open(&dir));
    assert!(!leftover.exists());
}

/// Whether a file in `dir` opens with O_DIRECT.
fn takes_o_direct(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("o-direct-check");
    let opened =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&path);
    let _ = std::fs::remove_file(&path);
    opened.is_ok()
}

/// The memtables of the log, Raft metadata and queue data keep an insert
/// position per key prefix (group, or group and kind), as the OPTIONS file
/// RocksDB writes at open records it; the node metadata keeps none. SST
/// files sync as written (or are written with O_DIRECT), and each column
/// family's memtable may take half of the memtable budget.
#[test]
fn memtables_keep_an_insert_hint_per_group_prefix_and_sst_files_sync_as_written() {
    let dir = TempDir::new().unwrap();
    drop(open(&dir));
    let db = dir.path().join("db");
    let newest = std::fs::read_dir(&db)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("OPTIONS-"))
        .max_by_key(|name| name.trim_start_matches("OPTIONS-").parse::<u64>().unwrap())
        .expect("RocksDB writes an OPTIONS file");
    let text = std::fs::read_to_string(db.join(newest)).unwrap();
    /// The value of a `name=value` line in one section of the file.
    fn value_in<'a>(section: &'a str, name: &str) -> Option<&'a str> {
        let prefix = format!("{name}=");
        section.lines().find_map(|l| l.trim().strip_prefix(prefix.as_str()))
    }
    let cf_section = |cf: &str| text.split("[CFOptions \"").find(|s| s.starts_with(&format!("{cf}\"]"))).expect(cf);
    let db_options = text.split("[DBOptions]").nth(1).expect("a DBOptions section");
    let hint_of = |cf: &str| value_in(cf_section(cf), "memtable_insert_with_hint_prefix_extractor");
    assert_eq!(hint_of("raft_log"), Some("rocksdb.FixedPrefix.8"));
    assert_eq!(hint_of("raft_meta"), Some("rocksdb.FixedPrefix.9"));
    assert_eq!(hint_of("queue"), Some("rocksdb.FixedPrefix.9"));
    assert!(matches!(hint_of("meta"), None | Some("nullptr")), "{:?}", hint_of("meta"));
    // SST files are synced a MiB at a time as they are written, not all at the end.
    assert_eq!(value_in(db_options, "bytes_per_sync"), Some("1048576"));
    // Flushes and compactions write around the page cache wherever the
    // directory takes O_DIRECT (a test directory on tmpfs does not).
    let direct = value_in(db_options, "use_direct_io_for_flush_and_compaction");
    assert_eq!(direct, Some(if takes_o_direct(&db) { "true" } else { "false" }), "{}", db.display());
    // Each column family's memtable may take half of the budget of all.
    let bytes = |value: Option<&str>| -> u64 { value.expect("a memtable size").parse().unwrap() };
    let budget = bytes(value_in(db_options, "db_write_buffer_size"));
    for cf in ["raft_log", "queue"] {
        assert_eq!(bytes(value_in(cf_section(cf), "write_buffer_size")), budget / 2, "{cf}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_survive_reopen_and_snapshot_install() {
    let dir = TempDir::new().unwrap();
    let storage = open(&dir);
    let audit = SubscriptionName::new("audit").unwrap();
    let lease = |subscription: &SubscriptionName| QueueCommand::Lease {
        subscription: subscription.clone(),
        max_messages: 10,
        max_bytes: 0,
        visibility_timeout_ms: 10_000,
        policy: Default::default(),
        correlation_id: None,
    };
    let retention = Retention { max_age_ms: 0, max_bytes: 1_000_000 };
    {
        let mut sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
        apply(
            &mut sm,
            vec![
                queue_entry(1, 1, 100, produce(2)),
                queue_entry(
                    1,
                    2,
                    110,
                    QueueCommand::CreateSubscription { name: audit.clone(), start: SubscriptionStart::Latest },
                ),
                queue_entry(1, 3, 120, produce(3)),
                queue_entry(1, 4, 130, lease(&SubscriptionName::default_subscription())),
                queue_entry(
                    1,
                    5,
                    140,
                    QueueCommand::Ack {
                        receipts: (0..5).map(|o| raftmq_types::Receipt::new(Offset(o), 4)).collect(),
                        retention,
                    },
                ),
                queue_entry(1, 6, 150, lease(&audit)),
            ],
        )
        .await;
    }
    let sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
    let state = sm.reader().state().clone();
    let stats = state.stats(TimestampMs(200));
    // Offsets 0 and 1 were acked by default before audit existed: retained.
    assert_eq!((stats.depth, stats.retained, stats.subscriptions), (3, 2, 2));
    let subs = state.subscriptions(TimestampMs(200));
    assert_eq!(
        subs.iter().map(|s| (s.name.as_str(), s.depth, s.in_flight)).collect::<Vec<_>>(),
        vec![("default", 0, 0), ("audit", 3, 3)]
    );
    let mut sm = sm;
    apply(
        &mut sm,
        vec![queue_entry(
            1,
            7,
            300,
            QueueCommand::Seek { subscription: audit.clone(), target: SeekTarget::Offset(Offset(1)), retention },
        )],
    )
    .await;
    let after_seek = sm.reader().state().subscriptions(TimestampMs(300));
    assert_eq!((after_seek[1].depth, after_seek[1].in_flight, after_seek[1].available), (4, 0, 4));

    // What openraft sends a follower: the current snapshot once one is built
    // (a built snapshot carries only its position).
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
    assert_eq!(snapshot.meta, built.meta);
    let target_dir = TempDir::new().unwrap();
    let mut replica = QueueStateMachine::open(open(&target_dir), GROUP).await.unwrap();
    replica.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(replica.reader().state().subscriptions(TimestampMs(300)), after_seek);
    assert_eq!(replica.reader().state().stats(TimestampMs(300)), sm.reader().state().stats(TimestampMs(300)));
    drop(sm);
    let reopened = QueueStateMachine::open(storage, GROUP).await.unwrap();
    assert_eq!(reopened.reader().state().subscriptions(TimestampMs(300)), after_seek);
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_survives_reopen_and_deleted_group_data_is_gone() {
    let dir = TempDir::new().unwrap();
    {
        let storage = open(&dir);
        let mut sm = MetaStateMachine::open(storage.clone()).await.unwrap();
        let create = MetaCommand::CreateQueue {
            name: QueueName::new("orders").unwrap(),
            config: QueueConfig::default(),
            replicas: vec![1, 2, 3],
            now: TimestampMs(1),
        };
        let entry = Entry::new(log_id(1, 1), EntryPayload::Normal(RaftRequest::Meta(create)));
        sm.apply(futures::stream::iter([Ok((entry, None))])).await.unwrap();
        assert_eq!(sm.catalog_watch().borrow().queues.len(), 1);

        let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
        append(&mut log, vec![queue_entry(1, 1, 1, produce(1))]).await;
        storage.delete_group_data(GROUP).unwrap();
        assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    }
    let storage = open(&dir);
    let sm = MetaStateMachine::open(storage).await.unwrap();
    let catalog = sm.catalog_watch().borrow().clone();
    assert_eq!(catalog.queues[&QueueName::new("orders").unwrap()].group_id, GroupId(1));
    assert_eq!(catalog.next_group_id, 2);
}

fn lease(max_messages: u32) -> QueueCommand {
    QueueCommand::Lease {
        subscription: SubscriptionName::default_subscription(),
        max_messages,
        max_bytes: 0,
        visibility_timeout_ms: 60_000,
        policy: Default::default(),
        correlation_id: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deep_backlog_is_evicted_read_back_from_disk_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let storage = open(&dir);
    let total = MESSAGES_IN_MEMORY as u64 * 3 / 2;
    let batches = total / 1000;
    let produces: Vec<Entry> = (1..=batches).map(|i| queue_entry(1, i, 100 + i, produce(1000))).collect();
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    append(&mut log, produces.clone()).await;
    let mut sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
    for entry in produces {
        apply(&mut sm, vec![entry]).await;
    }
    let (in_memory, evicted) = sm.reader().state().resident();
    assert!(in_memory <= MESSAGES_IN_MEMORY as u64, "{in_memory} messages in memory");
    assert_eq!(in_memory + evicted, total);
    let (peeked, next) = sm.reader().peek(SubscriptionId::DEFAULT, Offset(total - 2), Offset(u64::MAX), 5).unwrap();
    assert_eq!(peeked.iter().map(|m| m.offset.0).collect::<Vec<_>>(), [total - 2, total - 1]);
    assert!(
        peeked.iter().all(|m| m.state.is_some_and(|s| s.attempts == 0)),
        "evicted messages peek as never delivered"
    );
    assert_eq!(next, Offset(total));

    // A snapshot of it is sent in frames and installs a replica that also
    // keeps only the head in memory.
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
    let mut frames = Vec::new();
    while let Some(frame) = snapshot.snapshot.next_chunk(usize::MAX).await {
        frames.push(frame.expect("read a frame"));
    }
    assert!(frames.len() > 1, "{} frame(s): the snapshot was not read piece by piece", frames.len());
    let target_dir = TempDir::new().unwrap();
    let mut replica = QueueStateMachine::open(open(&target_dir), GROUP).await.unwrap();
    replica.install_snapshot(&snapshot.meta, SnapshotData::new(frames.concat())).await.unwrap();
    let (in_memory, evicted) = replica.reader().state().resident();
    assert!(in_memory <= MESSAGES_IN_MEMORY as u64 && in_memory + evicted == total);
    let expected = sm.reader().state().stats(TimestampMs(1_000));
    assert_eq!(replica.reader().state().stats(TimestampMs(1_000)), expected);
    drop(sm);

    // A restart reads the backlog without holding it all.
    let mut sm = QueueStateMachine::open(storage.clone(), GROUP).await.unwrap();
    let (in_memory, evicted) = sm.reader().state().resident();
    assert!(in_memory <= MESSAGES_IN_MEMORY as u64 && evicted > 0, "{in_memory} in memory, {evicted} evicted");
    assert_eq!(sm.reader().state().stats(TimestampMs(1_000)).available, total);

    // Leasing everything reads every evicted message back, in order.
    let leases: Vec<Entry> = (1..=batches).map(|i| queue_entry(1, batches + i, 1_000, lease(1000))).collect();
    append(&mut log, leases.clone()).await;
    apply(&mut sm, leases).await;
    let state = sm.reader();
    let state = state.state();
    let stats = state.stats(TimestampMs(1_000));
    assert_eq!((stats.in_flight, stats.available), (total, 0));
    for offset in [0, total / 2, total - 1] {
        assert_eq!(state.delivery(SubscriptionId::DEFAULT, Offset(offset)).map(|d| d.attempts), Some(1));
    }
}
