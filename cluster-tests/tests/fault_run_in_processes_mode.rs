//! `raftmq-fault run --mode processes`, as it is run by hand: three local
//! `raftmq server` processes under kills and pauses. These check that
//! `--worker-threads` reaches every node (each reports its runtime threads
//! in `GetClusterStatus`, which the run's report repeats), and that the
//! docker mode refuses it rather than ignoring it.

use std::process::Command;
use std::time::Duration;

use raftmq_cluster_tests::{raftmq_binary, run_with_timeout};

fn raftmq_fault() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_raftmq-fault"));
    command.env("RAFTMQ_BIN", raftmq_binary());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_gives_every_node_the_runtime_threads_asked_for() {
    // One more than the machine's cores: never the server's own default.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let out = tempfile::Builder::new().prefix("raftmq-fault-processes-").tempdir().expect("create the run's directory");
    let mut run = raftmq_fault();
    run.args(["run", "--mode", "processes", "--duration", "8s", "--seed", "7"])
        .args(["--worker-threads", &threads.to_string()])
        .arg("--out")
        .arg(out.path());
    let output = run_with_timeout(run, None, Duration::from_secs(240)).await;
    output.assert_success();
    let report = std::fs::read_to_string(out.path().join("report.md")).expect("the run writes report.md");
    let expected = format!("runtime threads per node {threads}, {threads}, {threads}");
    assert!(report.contains(&expected), "the report should say {expected:?}:\n{report}");
    assert!(report.contains("VALID: no violation."), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_mode_refuses_worker_threads() {
    let out = tempfile::Builder::new().prefix("raftmq-fault-docker-").tempdir().expect("create the run's directory");
    let mut run = raftmq_fault();
    run.args(["run", "--mode", "docker", "--duration", "1s", "--worker-threads", "1"]).arg("--out").arg(out.path());
    let output = run_with_timeout(run, None, Duration::from_secs(60)).await;
    assert_eq!(output.status.code(), Some(2), "a run that cannot be carried out exits 2: {output}");
    assert!(output.stderr.contains("--worker-threads needs --mode processes"), "{output}");
}
