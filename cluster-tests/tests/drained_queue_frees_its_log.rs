//! A backlog's bodies stay in their Raft log entries (written once), and a
//! purge copies only a bounded amount of them out before it deletes the
//! entries, so the entries of a backlog stay on disk behind the purged
//! index. Once consumers drain the queue and it goes quiet, every replica
//! deletes them within seconds, through the real binary: not only after
//! the next 8 MiB of appends, which an idle queue never makes. And a node
//! that then writes nothing for 10 s flushes its memtables, so the
//! write-ahead log holding the drained messages leaves the disk too.

use std::path::Path;
use std::time::Duration;

use raftmq_cluster_tests::pb::{GroupStatus, QueueConfig};
use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, poll_until};

const QUEUE: &str = "drained";
/// 4 KiB bodies: left in their log entry (512 bytes or more).
const BODY_BYTES: usize = 4096;
/// 16 MiB of bodies: past a purge's copy budget of 1 MiB many times over,
/// and two snapshots' worth of log (one every 8 MiB appended).
const MESSAGES: u64 = 4096;
const BATCH: u64 = 128;

fn body(i: u64) -> Vec<u8> {
    let mut body = format!("m{i}-").into_bytes();
    body.resize(BODY_BYTES, b'0' + (i % 10) as u8);
    body
}

/// Bytes of the live write-ahead log files in a node's database directory
/// (not those RocksDB archived, which the node trims away).
fn live_wal_bytes(db: &Path) -> u64 {
    std::fs::read_dir(db)
        .expect("the node's database directory")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// Entries at or below the purged index still stored on this replica.
fn kept(status: &GroupStatus) -> u64 {
    match status.first_log_index {
        0 => 0,
        first => (status.purged_index + 1).saturating_sub(first),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_queue_frees_its_log() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let client = cluster.client(leader);
    for first in (0..MESSAGES).step_by(BATCH as usize) {
        let offsets = client.produce(QUEUE, (first..first + BATCH).map(body)).await.expect("produce");
        assert_eq!(offsets.first(), Some(&first));
    }

    // With nothing consumed, every replica's purges keep most of the
    // backlog's entries for the bodies in them.
    for node in cluster.node_ids() {
        let status = poll_until(Duration::from_secs(30), "a purge that keeps entries", async || {
            let status = cluster.group_status(node, QUEUE).await?;
            (status.applied_index == status.last_log_index && kept(&status) > 0).then_some(status)
        })
        .await;
        println!(
            "node {node} before the drain: purged through {}, first stored entry {} ({} kept), last {}",
            status.purged_index,
            status.first_log_index,
            kept(&status),
            status.last_log_index
        );
    }

    client
        .drain_in_order(QUEUE, MESSAGES, |message| assert!(message.body == body(message.offset), "body differs"))
        .await;
    // The WAL holds the bodies (16 MiB) until a flush. Not asserted: a slow
    // machine could idle 10 s before the drain and flush early; the check
    // below still fails without the idle flush, as nothing else empties it.
    for node in cluster.node_ids() {
        let wal = live_wal_bytes(&cluster.data_dir(node).join("db"));
        println!("node {node} after the drain: {} KiB of live write-ahead log", wal / 1024);
    }

    // The acks appended far less than 8 MiB; the queue goes quiet, and each
    // replica purges again and deletes every kept entry.
    for node in cluster.node_ids() {
        let status = poll_until(Duration::from_secs(30), "the kept entries deleted", async || {
            let status = cluster.group_status(node, QUEUE).await?;
            (kept(&status) == 0).then_some(status)
        })
        .await;
        println!(
            "node {node} after the drain: purged through {}, first stored entry {}, last {}",
            status.purged_index, status.first_log_index, status.last_log_index
        );
    }

    // Nothing written since: within seconds of the node's 10 s idle spell,
    // its memtables are flushed and its live WAL is a fresh, empty file.
    for node in cluster.node_ids() {
        let db = cluster.data_dir(node).join("db");
        let wal = poll_until(Duration::from_secs(40), "the idle node's WAL to empty", async || {
            let wal = live_wal_bytes(&db);
            (wal < 1024 * 1024).then_some(wal)
        })
        .await;
        println!("node {node} idle: {} KiB of live write-ahead log", wal / 1024);
    }
    cluster.assert_running();
}
