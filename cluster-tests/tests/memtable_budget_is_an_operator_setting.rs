//! The memory a node gives RocksDB's memtables is the operator's to set
//! (`storage.memtable_budget_mib` in the config file,
//! `RAFTMQ_STORAGE__MEMTABLE_BUDGET_MIB`, `--memtable-budget-mib`):
//! - each node opens its database with a budget between 75% and 100% of the
//!   setting, each column family that takes bodies with half of it, and says
//!   so in its log;
//! - a cluster on the smallest budget flushes bodies to blob files as it
//!   takes them, and gives every body back intact;
//! - the flag wins over the environment;
//! - a value out of range is refused with exit code 2 and a message that
//!   names the setting and its unit.

use std::time::Duration;

use raftmq_cluster_tests::pb::QueueConfig;
use raftmq_cluster_tests::{
    READY_TIMEOUT, TestCluster, log_events, memtable_sizes, poll_until, raftmq_command, run_with_timeout,
};

const MIB: u64 = 1024 * 1024;
const QUEUE: &str = "small-memtables";
/// 2,400 bodies of 8 KiB: about 19 MiB in the log and as much in the queue's
/// data on each node, several times what a 16 MiB budget holds.
const MESSAGES: usize = 2_400;
const BODY_BYTES: usize = 8 * 1024;
const PER_CALL: usize = 50;

/// Body `i`: its index, then bytes that differ from one message to the next.
fn body(i: usize) -> Vec<u8> {
    let mut body = format!("message {i:06} ").into_bytes();
    body.extend((0..BODY_BYTES - body.len()).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8));
    body
}

/// The budget `sizes` shows is 75-100% of `setting_mib`, and the two column
/// families that take bodies may each fill half of it.
fn assert_budget(sizes: &raftmq_cluster_tests::MemtableSizes, setting_mib: u64, what: &str) {
    let setting = setting_mib * MIB;
    assert!(
        (setting * 3 / 4..=setting).contains(&sizes.budget),
        "{what}: budget {} bytes is not 75-100% of {setting_mib} MiB: {sizes:?}",
        sizes.budget
    );
    for cf in ["raft_log", "queue"] {
        assert_eq!(sizes.per_column_family.get(cf), Some(&(sizes.budget / 2)), "{what}, {cf}: {sizes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memtable_budget_is_an_operator_setting() {
    // The smallest budget, from the environment.
    let mut cluster = TestCluster::start_with_env(3, &[("RAFTMQ_STORAGE__MEMTABLE_BUDGET_MIB", "16")]);
    cluster.wait_ready(READY_TIMEOUT).await;
    for node in cluster.node_ids() {
        let db = cluster.data_dir(node).join("db");
        let sizes =
            memtable_sizes(&db).unwrap_or_else(|| panic!("node {node} has no OPTIONS file in {}", db.display()));
        assert_budget(&sizes, 16, &format!("node {node}"));
        let log = std::fs::read_to_string(cluster.log_path(node)).expect("read the node's log");
        let said = log.lines().find(|l| l.contains("database open")).expect("the node logs its database opening");
        let mib = (sizes.budget / MIB).to_string();
        assert!(said.contains(&format!("memtable_budget_mib={mib}")), "node {node} said {said:?}, budget {mib} MiB");
    }

    let leader = cluster.create_queue(QUEUE, QueueConfig::default()).await;
    let client = cluster.client(leader);
    for start in (0..MESSAGES).step_by(PER_CALL) {
        let offsets = client.produce(QUEUE, (start..start + PER_CALL).map(body)).await.expect("produce");
        assert_eq!(offsets.len(), PER_CALL);
    }
    // Every node flushed bodies out to blob files while it took them.
    for node in cluster.node_ids() {
        let db = cluster.data_dir(node).join("db");
        poll_until(Duration::from_secs(30), "bodies flushed to blob files", async || {
            (log_events(&db, "blob_file_creation") > 0).then_some(())
        })
        .await;
    }
    // Every body comes back as it was produced, the oldest from the files.
    let mut next = 0;
    while next < MESSAGES {
        let messages = client.consume(QUEUE, 200, 1_000, 60_000).await.expect("consume");
        assert!(!messages.is_empty(), "nothing to consume after {next} of {MESSAGES}");
        for message in &messages {
            assert_eq!(message.offset, next as u64, "in order, none missing");
            assert!(message.body[..] == body(next)[..], "the body of message {next} differs");
            next += 1;
        }
        let receipts = messages.into_iter().map(|m| m.receipt).collect();
        client.ack(QUEUE, receipts).await.expect("ack");
    }
    drop(cluster);

    // The flag wins over the environment: a node started with both.
    let mut node =
        TestCluster::start_with(1, &[("RAFTMQ_STORAGE__MEMTABLE_BUDGET_MIB", "64")], &["--memtable-budget-mib", "32"]);
    node.wait_ready(READY_TIMEOUT).await;
    let db = node.data_dir(1).join("db");
    let sizes = memtable_sizes(&db).unwrap_or_else(|| panic!("no OPTIONS file in {}", db.display()));
    assert_budget(&sizes, 32, "--memtable-budget-mib 32 over RAFTMQ_STORAGE__MEMTABLE_BUDGET_MIB=64");
    drop(node);

    // Out of range: bytes where MiB are meant, and too little to work with.
    let dir = tempfile::tempdir().expect("temp dir");
    for value in ["536870912", "4"] {
        let args = ["server", "--node-id", "1", "--peers", "1=127.0.0.1:1", "--memtable-budget-mib", value];
        let mut command = raftmq_command(args);
        command.arg("--data-dir").arg(dir.path().join("refused"));
        let refused = run_with_timeout(command, None, Duration::from_secs(30)).await;
        assert_eq!(refused.status.code(), Some(2), "budget {value} must be refused with exit 2: {refused}");
        assert!(
            refused.stderr.contains("storage.memtable_budget_mib") && refused.stderr.contains("MiB"),
            "the error does not name the setting and its unit: {refused}"
        );
    }
}
