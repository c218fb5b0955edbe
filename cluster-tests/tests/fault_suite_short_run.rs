//! The CI run of the fault suite: the three-node cluster of
//! `deploy/docker-compose.yml`, from an image built here, under a few dozen
//! faults (kill -9, pauses, partitions, restart storms) for a few minutes,
//! then healed, drained and checked. Fails on any lost message, any acked
//! message delivered again, any unexpected message or offset conflict, or a
//! cluster that does not recover; the output names the seed to replay with
//! `raftmq-fault run --seed N`.
//!
//! `RAFTMQ_FAULT_SEED` and `RAFTMQ_FAULT_DURATION` (e.g. `10m`) override the
//! random seed and the 150 s of faults.

use std::process::Command;
use std::time::Duration;

use raftmq_cluster_tests::fault::nemesis::FaultKind;
use raftmq_cluster_tests::fault::workload::WorkloadOptions;
use raftmq_cluster_tests::fault::{Mode, RunOptions, run};
use raftmq_cluster_tests::{raftmq_binary, repo_root, run_with_timeout};

const IMAGE: &str = "raftmq:fault-test";
const DEFAULT_DURATION: Duration = Duration::from_secs(150);
/// A fault every few seconds: 150 s gave 23 to 30 here; long partitions make fewer.
const MIN_FAULTS: u64 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite_short_run() {
    // The image of the binary under test, as users build it.
    let mut build = Command::new(repo_root().join("deploy/build-image"));
    build.env("RAFTMQ_BIN", raftmq_binary()).env("RAFTMQ_IMAGE", IMAGE);
    run_with_timeout(build, None, Duration::from_secs(300)).await.assert_success();

    let seed = match std::env::var("RAFTMQ_FAULT_SEED") {
        Ok(seed) => seed.parse().expect("RAFTMQ_FAULT_SEED is a number"),
        Err(_) => rand::random(),
    };
    let duration = match std::env::var("RAFTMQ_FAULT_DURATION") {
        Ok(d) => humantime::parse_duration(&d).expect("RAFTMQ_FAULT_DURATION is a duration like 10m"),
        Err(_) => DEFAULT_DURATION,
    };
    let out = tempfile::Builder::new().prefix("raftmq-fault-").tempdir().expect("create the run's directory");
    let options = RunOptions {
        mode: Mode::Docker,
        duration,
        seed,
        faults: FaultKind::ALL.to_vec(),
        workload: WorkloadOptions {
            queues: vec!["fault-q0".into(), "fault-q1".into()],
            producers: 4,
            consumers: 4,
            batch: 5,
            rate: 20.0,
            produce_attempts: 3,
            skip_ack: 0.01,
            seed,
        },
        out_dir: out.path().to_path_buf(),
        image: IMAGE.to_string(),
        worker_threads: None,
    };
    println!("fault run with seed {seed} for {duration:?}; history in {}", out.path().display());
    let outcome = match run(&options).await {
        Ok(outcome) => outcome,
        Err(e) => {
            let kept = out.keep();
            panic!("the fault run failed (seed {seed}; history and logs kept in {}): {e:#}", kept.display())
        }
    };
    let summary = outcome.summary(&options);
    println!("{summary}");
    let faults: u64 = outcome.report.faults.values().sum();
    if !outcome.is_valid() || faults < MIN_FAULTS || outcome.report.produced_ok == 0 || outcome.report.acked == 0 {
        let kept = out.keep();
        panic!(
            "fault run failed (seed {seed}): {faults} faults (at least {MIN_FAULTS} wanted), {} messages confirmed, \
             {} acked; history and node logs kept in {}\n{summary}",
            outcome.report.produced_ok,
            outcome.report.acked,
            kept.display()
        );
    }
}
