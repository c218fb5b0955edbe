//! A crash (SIGKILL) of a node loses nothing a queue's state machine needs:
//! apply writes without the WAL, so after a crash the state and its applied
//! position are those of the last memtable flush, and the log from there on
//! must still be there to apply again. Snapshots and purges are written the
//! same way (to the memtables only), so a purge must never reach the disk
//! before the state it stands on.
//!
//! The test runs itself as a child process that appends produce entries
//! through `LogStore`, applies each through `QueueStateMachine`, and every
//! `SNAPSHOT_EVERY` entries builds a snapshot and purges the whole log up to
//! it (as openraft does for queue groups, which keep no log behind a
//! snapshot). After a few snapshots the child applies some more entries and
//! stops; the parent kills it with SIGKILL, reopens the database, and
//! checks that the state agrees with its applied position, that the log
//! still holds every entry after that position, and that applying them
//! again gives every message once, each with its body (apply left every
//! body in its log entry, and each purge, made once its entries were old
//! enough to delete, copied bodies out first, up to its budget, keeping the
//! entries of those it did not reach). It does so twice: with a memtable budget
//! that never fills (nothing is flushed, so after the crash nothing is
//! applied or purged and the whole log is there), and with a small one
//! (RocksDB flushes on its own, between and across snapshots, and each flush
//! takes the purges written before it to disk with the state).
//!
//! A second test crashes a follower just after it installed a snapshot past
//! the end of its log, purged up to it and appended the entries that follow
//! it, as openraft does when a leader sends a lagging follower a snapshot:
//! the log must open without a hole between its old entries and the new ones.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ChildTest, Entry, produce_entry};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use raftmq_storage::{ApplyWrite, COPY_PER_PURGE_BYTES, KEEP_IN_LOG, LogStore, QueueStateMachine, Storage, TypeConfig};
use raftmq_types::{GroupId, Offset, QueueCommand, QueueRequest, RaftRequest, TimestampMs};
use tempfile::TempDir;

const GROUP: GroupId = GroupId(3);
/// Set in the child's environment: the database directory to use.
const CHILD_DIR: &str = "RAFTMQ_APPLY_CRASH_CHILD_DIR";
/// Set in the child's environment: its memtable budget in bytes.
const CHILD_BUDGET: &str = "RAFTMQ_APPLY_CRASH_CHILD_BUDGET";
const TEST_NAME: &str = "a_crash_after_a_snapshot_and_purge_loses_no_applied_entry";
/// Set in the child's environment of the install test: its database directory.
const INSTALL_CHILD_DIR: &str = "RAFTMQ_INSTALL_CRASH_CHILD_DIR";
const INSTALL_TEST_NAME: &str = "a_crash_after_a_snapshot_install_leaves_a_log_without_a_hole";
/// The follower's own log before the install: entries 1 to `FOLLOWER_HAD`,
/// of which it applied `FOLLOWER_APPLIED`.
const FOLLOWER_HAD: u64 = 10;
const FOLLOWER_APPLIED: u64 = 5;
/// The snapshot the leader sends covers entries 1 to `SNAPSHOT_AT`, and the
/// leader then sends entries up to `LEADER_LAST`.
const SNAPSHOT_AT: u64 = 50;
const LEADER_LAST: u64 = 60;
/// Flushed on its own every 100 entries or so.
const SMALL_BUDGET: usize = 1024 * 1024;
/// Never full in this test: 1,337 entries write about 11 MB.
const LARGE_BUDGET: usize = 64 * 1024 * 1024;
const BODY_BYTES: usize = 4 * 1024;
const SNAPSHOT_EVERY: u64 = 400;
/// The child stops this many entries after its last snapshot, their apply
/// written but not flushed.
const STOP_AT: u64 = 3 * SNAPSHOT_EVERY + 137;

fn entry(index: u64) -> Entry {
    produce_entry(index, BODY_BYTES)
}

async fn apply(sm: &mut QueueStateMachine, entries: Vec<Entry>) {
    sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.expect("apply");
}

/// The child: appends and applies entries 1 to `STOP_AT`, snapshots and
/// purges every `SNAPSHOT_EVERY`, then waits to be killed (bounded, in case
/// the parent is gone).
async fn child(dir: &Path, budget: usize) {
    let storage = Storage::open_with_memtable_budget(dir, budget).expect("open storage");
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    let mut sm = QueueStateMachine::open(storage.clone(), GROUP).await.expect("open the state machine");
    for index in 1..=STOP_AT {
        append(&mut log, vec![entry(index)]).await;
        // As openraft does: the entry read back from the log store, whose
        // body apply leaves in the log.
        let appended = log.try_get_log_entries(index..=index).await.expect("read the entry back");
        apply(&mut sm, appended).await;
        if index % SNAPSHOT_EVERY == 0 {
            let snapshot = sm.build_snapshot().await.expect("build a snapshot");
            let upto = snapshot.meta.last_log_id.expect("a snapshot of applied entries");
            assert_eq!(upto.index(), index);
            // Old enough to be deleted: the bodies in it are copied out
            // first, up to a purge's budget; the entries of the rest stay.
            tokio::time::sleep(KEEP_IN_LOG).await;
            log.purge(upto).await.expect("purge");
        }
    }
    assert_eq!(storage.body_writes().left_in_log(), STOP_AT, "every body was left in the log");
    // None acknowledged: each purge copies its budget's worth, fewer than
    // the bodies behind each snapshot, and the next goes on from there.
    let per_purge = COPY_PER_PURGE_BYTES / BODY_BYTES as u64;
    assert!(per_purge < SNAPSHOT_EVERY);
    assert_eq!(storage.body_writes().copied_out_of_log(), 3 * per_purge, "none acknowledged: a budget per purge");
    println!("stopped at {STOP_AT}");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Waits until the child says it stopped (within 120 s), then kills it.
/// Fails at once if the child exits first ([`ChildTest::next_line`]).
fn stop_and_kill(child: &mut ChildTest) {
    // Printed after the test harness's "test NAME ... " on the same line.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !child.next_line(Duration::from_secs(1)).is_some_and(|line| line.contains("stopped at")) {
        assert!(std::time::Instant::now() < deadline, "the child did not stop within 120 s");
    }
    child.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_a_snapshot_and_purge_loses_no_applied_entry() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let budget = std::env::var(CHILD_BUDGET).expect("a budget").parse().expect("a number");
        child(Path::new(&dir), budget).await;
        return;
    }
    for budget in [LARGE_BUDGET, SMALL_BUDGET] {
        crash_and_recover(budget).await;
    }
}

async fn crash_and_recover(budget: usize) {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    let budget_text = budget.to_string();
    let mut child = ChildTest::spawn(TEST_NAME, &[(CHILD_DIR, db.as_os_str()), (CHILD_BUDGET, budget_text.as_ref())]);
    stop_and_kill(&mut child);

    let storage = Storage::open(&db).expect("reopen after the crash");
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    let mut sm = QueueStateMachine::open(storage, GROUP).await.expect("reopen the state machine");
    let (applied, _) = sm.applied_state().await.unwrap();
    let applied = applied.map(|l| l.index()).unwrap_or(0);
    let now = TimestampMs(STOP_AT + 1);
    let depth = sm.reader().state().stats(now).depth;
    let never_flushed = budget == LARGE_BUDGET;
    let budget = format!("memtable budget {budget}");
    assert_eq!(depth, applied, "{budget}: the state holds {depth} messages, but its applied position is {applied}");
    let state = log.get_log_state().await.unwrap();
    let purged = state.last_purged_log_id.map(|l| l.index()).unwrap_or(0);
    let last = state.last_log_id.map(|l| l.index()).unwrap_or(0);
    assert!(
        purged <= applied,
        "{budget}: the log is purged up to {purged}, but only {applied} is applied after the crash"
    );
    assert_eq!(last, STOP_AT, "{budget}: every append was durable");
    if never_flushed {
        assert_eq!((applied, purged), (0, 0), "{budget}: nothing was flushed, yet applied or purged entries survived");
    } else {
        assert!(purged >= SNAPSHOT_EVERY, "{budget}: purged up to {purged}: no purge reached the disk with a flush");
    }

    let again = log.try_get_log_entries(applied + 1..=last).await.unwrap();
    assert_eq!(again.len() as u64, last - applied, "{budget}: log entries missing after {applied}");
    apply(&mut sm, again).await;
    let stats = sm.reader().state().stats(now);
    assert_eq!(stats.depth, STOP_AT, "{budget}: every produced message, once");
    assert_eq!(stats.next_offset.0, STOP_AT);
    // Every body, whether it was copied out of a deleted entry, is still in
    // its entry, or was written again by this apply.
    let offsets: Vec<Offset> = (0..STOP_AT).map(Offset).collect();
    let messages = sm.reader().read_messages(&offsets).unwrap();
    assert_eq!(messages.len() as u64, STOP_AT, "{budget}: bodies missing");
    for message in messages {
        let expected = entry(message.offset.0 + 1);
        let EntryPayload::Normal(RaftRequest::Queue(QueueRequest {
            command: QueueCommand::Produce { messages, .. },
            ..
        })) = &expected.payload
        else {
            unreachable!("a produce entry")
        };
        assert!(message.body == messages[0].body, "{budget}: the body of message {} differs", message.offset.0);
    }
}

/// The child of the install test: a follower with entries 1 to
/// `FOLLOWER_HAD` installs a snapshot of entries 1 to `SNAPSHOT_AT` (built
/// by a leader's state machine in another database), purges its log up to
/// it, appends the entries after it, and waits to be killed. Its memtables
/// never fill, so nothing written without the WAL survives the crash.
async fn install_child(dir: &Path) {
    let leader = Storage::open(&dir.join("leader")).expect("open the leader's storage");
    let mut leader_sm = QueueStateMachine::open(leader, GROUP).await.expect("open the leader's state machine");
    apply(&mut leader_sm, (1..=SNAPSHOT_AT).map(entry).collect()).await;
    leader_sm.build_snapshot().await.expect("build a snapshot");
    let snapshot = leader_sm.get_current_snapshot().await.expect("read the snapshot").expect("a snapshot was built");

    let storage =
        Storage::open_with_memtable_budget(&dir.join("follower"), LARGE_BUDGET).expect("open the follower's storage");
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    let mut sm = QueueStateMachine::open(storage, GROUP).await.expect("open the follower's state machine");
    append(&mut log, (1..=FOLLOWER_HAD).map(entry).collect()).await;
    apply(&mut sm, (1..=FOLLOWER_APPLIED).map(entry).collect()).await;

    sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install the snapshot");
    log.purge(snapshot.meta.last_log_id.expect("a snapshot of applied entries")).await.expect("purge");
    append(&mut log, (SNAPSHOT_AT + 1..=LEADER_LAST).map(entry).collect()).await;
    println!("stopped at {LEADER_LAST}");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.expect("append");
    rx.await.expect("callback called").expect("append flushed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_a_snapshot_install_leaves_a_log_without_a_hole() {
    if let Some(dir) = std::env::var_os(INSTALL_CHILD_DIR) {
        install_child(Path::new(&dir)).await;
        return;
    }
    let dir = TempDir::new().unwrap();
    let mut child = ChildTest::spawn(INSTALL_TEST_NAME, &[(INSTALL_CHILD_DIR, dir.path().as_os_str())]);
    stop_and_kill(&mut child);

    let storage = Storage::open(&dir.path().join("follower")).expect("reopen after the crash");
    let mut log = LogStore::new(storage.clone(), GROUP, ApplyWrite::Unlogged);
    let mut sm = QueueStateMachine::open(storage, GROUP).await.expect("reopen the state machine");
    let (applied, _) = sm.applied_state().await.unwrap();
    let applied = applied.map(|l| l.index()).unwrap_or(0);
    assert_eq!(applied, SNAPSHOT_AT, "the installed snapshot is durable");
    let state = log.get_log_state().await.unwrap();
    let purged = state.last_purged_log_id.map(|l| l.index()).unwrap_or(0);
    let last = state.last_log_id.map(|l| l.index()).unwrap_or(0);
    assert_eq!(last, LEADER_LAST, "every append was durable");
    assert_eq!(purged, SNAPSHOT_AT, "the purge up to the snapshot was lost, while the appends after it survived");
    // What openraft reads at start-up: the log from the purge on, whole.
    let entries = log.try_get_log_entries(purged + 1..=last).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, (SNAPSHOT_AT + 1..=LEADER_LAST).collect::<Vec<_>>(), "the log after the purge");
    apply(&mut sm, entries).await;
    let stats = sm.reader().state().stats(TimestampMs(LEADER_LAST + 1));
    assert_eq!(stats.depth, LEADER_LAST, "every produced message, once");
}
