//! A crash (SIGKILL) of a node loses no log entry that was reported durable,
//! across switches of WAL file.
//!
//! The test runs itself as a child process that appends log entries through
//! `LogStore` with a 1 MiB memtable budget, so that the WAL file switches
//! every few hundred entries. The child prints the index of every append whose
//! fsync completed; the parent kills it with SIGKILL mid-stream, reopens the
//! database and reads every entry up to the last one printed. And the WAL
//! files the switches leave behind are freed by the `WalTrimmer`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ChildTest, Entry, produce_entry};
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use raftmq_storage::{ApplyWrite, LogStore, Storage, TypeConfig};
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
    let mut log = LogStore::new(storage, GROUP, ApplyWrite::Unlogged);
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
        if let Some(index) = child.next_line(Duration::from_millis(100)).and_then(durable_index) {
            durable = index;
        }
    }
    child.kill();
    // What the child printed before it died was durable when printed.
    durable = child.lines.try_iter().filter_map(durable_index).last().unwrap_or(durable);

    let storage = Storage::open(&db).expect("reopen after the crash");
    let mut log = LogStore::new(storage, GROUP, ApplyWrite::Unlogged);
    let state = log.get_log_state().await.unwrap();
    let last = state.last_log_id.map(|l| l.index()).unwrap_or(0);
    assert!(last >= durable, "the log ends at {last}, but {durable} was reported durable");
    let entries = log.try_get_log_entries(1..=durable).await.unwrap();
    assert_eq!(entries.len() as u64, durable, "entries missing below {durable}");
    for (i, read) in entries.iter().enumerate() {
        assert_eq!(*read, entry(i as u64 + 1), "entry {} differs after the crash", i + 1);
    }
}

/// Appends of the trim test.
const TRIM_APPENDS: u64 = 2_000;

/// WAL files (`NNNNNN.log`) directly in `dir`.
fn wal_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|name| name.ends_with(".log")).collect()
}

/// Obsolete WAL files are archived and freed a chunk at a time by the
/// `WalTrimmer`, never deleted whole by RocksDB: one deletion of tens of MiB
/// on a file system with online discard stalls every fsync on the disk.
#[tokio::test(flavor = "multi_thread")]
async fn obsolete_wal_files_are_trimmed_not_deleted_whole() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("db");
    let storage = Storage::open_with_memtable_budget(&db, MEMTABLE_BUDGET).expect("open storage");
    let mut log = LogStore::new(storage.clone(), GroupId(5), ApplyWrite::Unlogged);
    for index in 1..=TRIM_APPENDS {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(vec![produce_entry(index, BODY_BYTES)], IOFlushed::signal(tx)).await.expect("append");
        rx.await.expect("callback called").expect("append flushed");
    }
    let rocksdb_log = std::fs::read_to_string(db.join("LOG")).unwrap();
    let switches = rocksdb_log.matches("New memtable created with log file").count();
    assert!(switches >= 5, "only {switches} WAL file switches: the test wrote too little");

    // Every obsolete WAL file goes through the archive and is freed there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let archived = wal_files(&db.join("archive"));
        if archived.is_empty() && storage.wal_trimmed_bytes() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s the archive still holds {archived:?}; {} bytes trimmed",
            storage.wal_trimmed_bytes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // About the bytes of the appends, less the live WAL files'.
    let written = TRIM_APPENDS * BODY_BYTES as u64;
    assert!(storage.wal_trimmed_bytes() >= written / 2, "{} of {written} bytes trimmed", storage.wal_trimmed_bytes());
    let live = wal_files(&db);
    assert!(live.len() <= 2, "obsolete WAL files left live: {live:?}");
    let rocksdb_log = std::fs::read_to_string(db.join("LOG")).unwrap();
    let deleted_whole: Vec<&str> =
        rocksdb_log.lines().filter(|line| line.contains("Deleted file") && line.contains(".log ")).collect();
    assert!(deleted_whole.is_empty(), "RocksDB deleted WAL files itself: {deleted_whole:?}");

    // The log itself is untouched.
    let entries = log.try_get_log_entries(1..=TRIM_APPENDS).await.unwrap();
    assert_eq!(entries.len() as u64, TRIM_APPENDS);
    assert_eq!(entries[0], produce_entry(1, BODY_BYTES));
    assert_eq!(entries[TRIM_APPENDS as usize - 1], produce_entry(TRIM_APPENDS, BODY_BYTES));
}
