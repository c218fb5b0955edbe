//! The cluster test harness: real `raftmq server` processes on loopback ports,
//! killed, stopped and restarted, and driven over the public gRPC API.
//!
//! - [`TestCluster`] (`cluster.rs`) owns the node processes, their data
//!   directories and log files. It prints the log tails when a test panics.
//! - [`Client`] (`client.rs`) wraps the generated `raftmq.v1` clients of one
//!   node with a timeout on every call.
//! - [`poll_until`] and [`retry_unavailable`] (`poll.rs`) bound every wait.
//! - [`run_with_timeout`] (`command.rs`) runs the `raftmq` CLI or another
//!   program and captures its output.
//!
//! - [`memtable_sizes`] and [`log_events`] (`db_options.rs`) read what a
//!   node's RocksDB writes about itself in its database directory.
//!
//! - [`fault`] is the fault-injection suite (workload, nemesis, checker),
//!   run by the `raftmq-fault` binary and by `tests/fault_suite_short_run.rs`.
//!
//! Architecture invariant: nothing here waits without a deadline, and this
//! crate does not depend on the server's crates (no RocksDB in its build): the
//! tests see the system exactly as a user does, through the binary and gRPC.
//!
//! The binary under test comes from `RAFTMQ_BIN`, set by `scripts/test`, or
//! else from the target directory the test executable was built into.

mod client;
mod cluster;
mod command;
mod db_options;
pub mod fault;
mod poll;

pub use client::{CALL_TIMEOUT, Client, body_text, is_retryable, request_with_timeout};
pub use cluster::{NodeId, READY_TIMEOUT, TestCluster, raftmq_binary, repo_root};
pub use command::{CommandOutput, raftmq_cli, raftmq_command, run_python_example, run_with_timeout};
pub use db_options::{MemtableSizes, log_events, memtable_sizes};
pub use poll::{poll_until, retry_unavailable};
/// The generated public API, re-exported so tests name one crate.
pub use raftmq_proto::v1 as pb;
