//! A crash (SIGKILL) of a node loses no log entry that was reported durable,
//! across switches of WAL file.
//!
//! The test runs itself as a child process that appends log entries through
//! `LogStore` with a 1 MiB memtable budget, so that the WAL file switches
//! every few hundred entries. The child prints the index of every append whose
//! fsync completed; the parent kills it with SIGKILL mid-stream, reopens the
//! database and reads every entry up to the last one printed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ChildTest, Entry, produce_entry};
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use raftmq_storage::{LogStore, Storage, TypeConfig};
use raftmq_types::GroupId;
use tempfile::TempDir;

const GROUP: GroupId = GroupId(3);
/// Set in the child's environment: the database directory to append to.
const CHILD_DIR: &str = "RAFTMQ_WAL_CRASH_CHILD_DIR";
const TEST_NAME: &str = "appends_reported_durable_survive_sigkill_across_wal_file_switches";
const MEMTABLE_BUDGET: usize = 1024 * 1024;
const BODY_BYTES: usize = 8 * 1024;
/// The parent kills the child once this many appends are durable and the
/// RocksDB LOG shows at least `WAL_SWITCHES_BEFORE_KILL` new WAL files.
const DURABLE_BEFORE_KILL: u64 = 3_000;
const WAL_SWITCHES_BEFORE_KILL: usize = 5;

fn entry(index: u64) -> Entry {
    produce_entry(index, BODY_BYTES)
}

/// The child: appends entries 1, 2, ... and prints each index once durable.
/// Bounded, in case the parent is gone.
async fn child(dir: &Path) {
    let storage = Storage::open_with_memtable_budget(dir, MEMTABLE_BUDGET).expect("open storage");
    let mut log = LogStore::new(storage, GROUP);
    for index in 1..=200_000 {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(vec![entry(index)], IOFlushed::signal(tx)).await.expect("append");
        rx.await.expect("callback called").expect("append flushed");
        println!("durable {index}");
    }
}

/// WAL files begun after the first, as the RocksDB LOG tells.
fn wal_switches(db: &Path) -> usize {
    std::fs::read_to_string(db.join("LOG")).map_or(0, |log| log.matches("New memtable created with log file").count())
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_reported_durable_survive_sigkill_across_wal_file_switches() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir)).await;
        return;
    }
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    let mut child = ChildTest::spawn(TEST_NAME, &[(CHILD_DIR, db.as_os_str())]);
    // The first index is printed after the test harness's "test NAME ... ".
    let durable_index = |line: String| line.rsplit_once("durable ").and_then(|(_, i)| i.parse::<u64>().ok());

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut durable = 0;
    while durable < DURABLE_BEFORE_KILL || wal_switches(&db) < WAL_SWITCHES_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "after 60 s: {durable} appends durable, {} WAL file switches",
            wal_switches(&db)
        );
        if let Some(index) = child.lines.recv_timeout(Duration::from_millis(100)).ok().and_then(durable_index) {
            durable = index;
        }
    }
    child.kill();
    // What the child printed before it died was durable when printed.
    durable = child.lines.try_iter().filter_map(durable_index).last().unwrap_or(durable);

    let storage = Storage::open(&db).expect("reopen after the crash");
    let mut log = LogStore::new(storage, GROUP);
    let state = log.get_log_state().await.unwrap();
    let last = state.last_log_id.map(|l| l.index()).unwrap_or(0);
    assert!(last >= durable, "the log ends at {last}, but {durable} was reported durable");
    let entries = log.try_get_log_entries(1..=durable).await.unwrap();
    assert_eq!(entries.len() as u64, durable, "entries missing below {durable}");
    for (i, read) in entries.iter().enumerate() {
        assert_eq!(*read, entry(i as u64 + 1), "entry {} differs after the crash", i + 1);
    }
}
