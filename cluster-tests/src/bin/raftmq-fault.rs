//! `raftmq-fault`: the fault-injection suite's command line.
//!
//! ```text
//! raftmq-fault run --mode docker --duration 1h        # the long run
//! raftmq-fault run --mode processes --duration 2m     # no containers, no partitions
//! raftmq-fault run --mode processes --worker-threads 1 # nodes as `raftmq dev` runs them on 2 or 3 cores
//! raftmq-fault check target/fault/<run>/history.jsonl # check a history again
//! ```
//!
//! `run` exits 1 when the checker finds a violation (the report names the
//! seed to replay) and 2 when the run itself could not be carried out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use raftmq_cluster_tests::fault::nemesis::FaultKind;
use raftmq_cluster_tests::fault::workload::WorkloadOptions;
use raftmq_cluster_tests::fault::{Mode, RunOptions, checker, history, run};

#[derive(Parser)]
#[command(about = "Fault injection against a three-node raftmq cluster, with a checker of the history")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Three local processes: kills, pauses and restarts, no partitions.
    Processes,
    /// deploy/docker-compose.yml (build the image first: deploy/build-image).
    Docker,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the workload under faults, heals, drains and checks.
    Run {
        #[arg(long, value_enum, default_value = "docker")]
        mode: ModeArg,
        /// How long faults are injected, e.g. 3m, 1h.
        #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Seed of the fault schedule; random if absent (the report names it).
        #[arg(long)]
        seed: Option<u64>,
        /// Faults to draw from, comma-separated; all that the mode supports if absent.
        #[arg(long, value_delimiter = ',')]
        faults: Vec<FaultKind>,
        #[arg(long, default_value_t = 2)]
        queues: usize,
        #[arg(long, default_value_t = 4)]
        producers: usize,
        #[arg(long, default_value_t = 4)]
        consumers: usize,
        /// Messages per produce call.
        #[arg(long, default_value_t = 5)]
        batch: usize,
        /// Produce calls per second, per producer.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Where the history, report and node logs go; target/fault/<seed> if absent.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, env = "RAFTMQ_IMAGE", default_value = "raftmq:local")]
        image: String,
        /// Runtime threads of each node (`raftmq server --worker-threads`);
        /// the server's default, one per core, if absent. `--mode processes` only.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: Option<u16>,
    },
    /// Checks a history written by `run` and prints the report.
    Check { history: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    match cli.command {
        Command::Check { history } => match history::read(&history) {
            Ok(events) => {
                let report = checker::check(&events);
                println!("{}", report.table());
                if report.is_valid() { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            mode,
            duration,
            seed,
            faults,
            queues,
            producers,
            consumers,
            batch,
            rate,
            out,
            image,
            worker_threads,
        } => {
            let mode = match mode {
                ModeArg::Processes => Mode::Processes,
                ModeArg::Docker => Mode::Docker,
            };
            let seed = seed.unwrap_or_else(rand::random);
            let faults = if faults.is_empty() {
                FaultKind::ALL.into_iter().filter(|f| mode == Mode::Docker || !f.needs_partitions()).collect()
            } else {
                faults
            };
            let options = RunOptions {
                mode,
                duration,
                seed,
                faults,
                workload: WorkloadOptions {
                    queues: (0..queues.max(1)).map(|i| format!("fault-q{i}")).collect(),
                    producers,
                    consumers,
                    batch,
                    rate,
                    produce_attempts: 3,
                    skip_ack: 0.01,
                    seed,
                },
                out_dir: out.unwrap_or_else(|| PathBuf::from(format!("target/fault/{seed}"))),
                image,
                worker_threads: worker_threads.map(usize::from),
            };
            println!("fault run: seed {seed}, output in {}", options.out_dir.display());
            match runtime.block_on(run(&options)) {
                Ok(outcome) => {
                    println!("{}", outcome.summary(&options));
                    println!("history: {}", outcome.history.display());
                    if outcome.is_valid() { ExitCode::SUCCESS } else { ExitCode::from(1) }
                }
                Err(e) => {
                    eprintln!("the run could not be carried out (seed {seed}): {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
