//! The fault-injection suite: a workload of producers and consumers writes a
//! [`history`] while the [`nemesis`] kills, pauses and partitions nodes; after
//! a quiet heal-and-drain phase the [`checker`] decides from the history
//! alone whether an acknowledged message was lost or an acked one delivered
//! again.
//!
//! [`run`] drives one run against local processes or the containers of
//! `deploy/docker-compose.yml` ([`backend`]). The `raftmq-fault` binary is
//! its command line; `fault_suite_short_run` in `tests/` is the CI run.

pub mod backend;
pub mod checker;
pub mod history;
pub mod nemesis;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cluster::{READY_TIMEOUT, TestCluster, free_loopback_addrs};
use crate::fault::backend::{Backend, DockerCluster};
use crate::fault::checker::Report;
use crate::fault::history::History;
use crate::fault::nemesis::{FaultKind, Nemesis, leader_of};
use crate::fault::workload::{Control, WorkloadOptions};
use crate::pb::QueueConfig;

/// Longest wait for the cluster to serve again after the last fault.
const HEAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest drain: every stored message delivered and acked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Workers get this long to finish their current call once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Three local `raftmq server` processes; no partitions.
    Processes,
    /// `deploy/docker-compose.yml` with an image built by `deploy/build-image`.
    Docker,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub mode: Mode,
    /// How long the nemesis injects faults; setup, heal and drain come on top.
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    pub workload: WorkloadOptions,
    /// Gets `history.jsonl`, `report.md` and the nodes' logs.
    pub out_dir: PathBuf,
    /// The image for the docker mode.
    pub image: String,
    /// Runtime threads of each node (`raftmq server --worker-threads`), in
    /// the processes mode; `None` leaves the server's default, one per core.
    /// The docker mode's nodes take theirs from `deploy/node*.toml`.
    pub worker_threads: Option<usize>,
}

/// What a run produced: the checker's report and how the end went.
pub struct Outcome {
    pub report: Report,
    /// Time from the end of the faults until every queue had been drained, if it was.
    pub drained_after: Option<Duration>,
    pub history: PathBuf,
    /// Each node's runtime threads, as it reported them at the start.
    pub runtime_threads: Vec<u32>,
}

impl Outcome {
    pub fn is_valid(&self) -> bool {
        self.report.is_valid() && self.drained_after.is_some()
    }

    /// The report with the run's settings, as Markdown.
    pub fn summary(&self, options: &RunOptions) -> String {
        let faults: Vec<&str> = options.faults.iter().map(|f| f.name()).collect();
        let drain = match self.drained_after {
            Some(d) => format!("drained {:.1} s after the last fault", d.as_secs_f64()),
            None => format!("NOT drained within {DRAIN_TIMEOUT:?}: the cluster did not recover"),
        };
        let threads: Vec<String> = self.runtime_threads.iter().map(u32::to_string).collect();
        format!(
            "seed {} · {:?} mode · runtime threads per node {} · {} of faults ({}) · queues {} · {} producers ({} msg × {}/s) · {} consumers · {}\n\n{}\n{}\n",
            options.seed,
            options.mode,
            threads.join(", "),
            humantime::format_duration(options.duration),
            faults.join(", "),
            options.workload.queues.join(", "),
            options.workload.producers,
            options.workload.batch,
            options.workload.rate,
            options.workload.consumers,
            drain,
            self.report.table(),
            if self.is_valid() {
                "VALID: no violation.".to_string()
            } else {
                format!("INVALID: replay with --seed {}", options.seed)
            },
        )
    }
}

/// Runs the workload and the nemesis for `options.duration`, heals, drains,
/// and checks the history.
pub async fn run(options: &RunOptions) -> anyhow::Result<Outcome> {
    if options.mode == Mode::Docker && options.worker_threads.is_some() {
        bail!("--worker-threads needs --mode processes: the docker mode's nodes take theirs from deploy/node*.toml");
    }
    std::fs::create_dir_all(&options.out_dir).with_context(|| format!("create {}", options.out_dir.display()))?;
    let history_path = options.out_dir.join("history.jsonl");
    let history = History::create(&history_path).with_context(|| format!("create {}", history_path.display()))?;

    let mut backend = match options.mode {
        Mode::Processes => {
            let threads = options.worker_threads.map(|n| n.to_string());
            let args = match &threads {
                Some(n) => vec!["--worker-threads", n.as_str()],
                None => Vec::new(),
            };
            let mut cluster = TestCluster::start_with(3, &[], &args);
            cluster.wait_ready(READY_TIMEOUT).await;
            Backend::Processes(cluster)
        }
        Mode::Docker => {
            let project = format!("raftmq-fault-{}", std::process::id());
            let addrs = free_loopback_addrs(3);
            let ports = [addrs[0].port(), addrs[1].port(), addrs[2].port()];
            println!("starting {project} from image {} on ports {ports:?}", options.image);
            Backend::Docker(DockerCluster::up(&project, &options.image, ports).await?)
        }
    };
    if !backend.supports_partitions()
        && let Some(kind) = options.faults.iter().find(|f| f.needs_partitions())
    {
        bail!("{kind} needs real packet loss between nodes: use --mode docker");
    }
    let result = drive(options, &mut backend, &history).await;
    history.flush()?;
    if let Err(e) = backend.save_logs(&options.out_dir).await {
        eprintln!("could not save the node logs: {e:#}");
    }
    let (drained_after, runtime_threads) = result?;
    drop(backend);

    let events = history::read(&history_path)?;
    let report = checker::check(&events);
    let outcome = Outcome { report, drained_after, history: history_path, runtime_threads };
    std::fs::write(options.out_dir.join("report.md"), outcome.summary(options))?;
    Ok(outcome)
}

/// Returns when the queues were drained after the faults (`None` if they
/// were not), and each node's runtime threads.
async fn drive(
    options: &RunOptions,
    backend: &mut Backend,
    history: &History,
) -> anyhow::Result<(Option<Duration>, Vec<u32>)> {
    let queues = &options.workload.queues;
    let runtime_threads = wait_serving(backend, READY_TIMEOUT).await?;
    println!("runtime threads per node: {runtime_threads:?}");
    for queue in queues {
        create_queue(backend, queue).await?;
    }

    let control = Arc::new(Control::default());
    let nodes = backend.clients();
    let mut producers = JoinSet::new();
    for p in 0..options.workload.producers {
        let queue = queues[p % queues.len()].clone();
        let task =
            workload::produce(p, queue, nodes.clone(), options.workload.clone(), history.clone(), control.clone());
        producers.spawn(task);
    }
    let mut consumers = JoinSet::new();
    for c in 0..options.workload.consumers {
        let queue = queues[c % queues.len()].clone();
        let task =
            workload::consume(c, queue, nodes.clone(), options.workload.clone(), history.clone(), control.clone());
        consumers.spawn(task);
    }

    // The nemesis. An error in it (a docker command that failed) still heals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut nemesis = Nemesis::new(options.seed, options.faults.clone(), queues.clone(), history.clone());
    let nemesis_result = nemesis.run(backend, Instant::now() + options.duration).await;
    let faults_ended = Instant::now();
    println!("faults over; healing and draining");
    recover_everything(backend).await;
    nemesis_result?;

    wait_serving(backend, HEAL_TIMEOUT).await?;
    control.stop_producing.store(true, Ordering::Relaxed);
    join_all(&mut producers, "producers").await?;
    control.draining.store(true, Ordering::Relaxed);
    let drained = drain(backend, queues).await;
    control.stop_consuming.store(true, Ordering::Relaxed);
    join_all(&mut consumers, "consumers").await?;
    Ok((drained.then(|| faults_ended.elapsed()), runtime_threads))
}

/// Undoes whatever may still be in force: cuts, pauses, dead nodes.
async fn recover_everything(backend: &mut Backend) {
    if let Err(e) = backend.heal().await {
        eprintln!("heal: {e:#}");
    }
    for node in backend.node_ids() {
        // Errors are expected here: most nodes are neither paused nor dead.
        let _ = backend.resume(node).await;
        if let Backend::Processes(cluster) = backend
            && cluster.is_running(node)
        {
            continue;
        }
        let _ = backend.start(node).await;
    }
}

/// Waits until every node agrees on a meta-group leader; returns each node's
/// runtime threads, from the same answers.
async fn wait_serving(backend: &Backend, timeout: Duration) -> anyhow::Result<Vec<u32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        let mut threads = Vec::new();
        for (node, client) in backend.clients() {
            let (leader, node_threads) =
                match tokio::time::timeout(Duration::from_secs(3), client.cluster_status()).await {
                    Ok(Ok(status)) => (
                        status.groups.iter().find(|g| g.group_id == 0).map(|g| g.leader_id).unwrap_or(0),
                        status.worker_threads,
                    ),
                    _ => (0, 0),
                };
            leaders.push((node, leader));
            threads.push(node_threads);
        }
        if leaders[0].1 != 0 && leaders.iter().all(|(_, leader)| *leader == leaders[0].1) {
            return Ok(threads);
        }
        if Instant::now() >= deadline {
            bail!("the cluster did not agree on a meta leader within {timeout:?}: (node, leader) = {leaders:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_queue(backend: &Backend, queue: &str) -> anyhow::Result<()> {
    let client = backend.clients().remove(0).1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.create_queue(queue, QueueConfig::default()).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::AlreadyExists => break,
            Err(status) if Instant::now() < deadline => {
                eprintln!("create queue {queue}: {status:?}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => bail!("create queue {queue}: {status:?}"),
        }
    }
    while leader_of(backend, queue).await.is_none() {
        if Instant::now() >= deadline {
            bail!("queue {queue} has no leader after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Waits until every queue is empty: nothing stored, nothing leased, as every
/// node reports it at the same next offset (so no lagging replica's stale view
/// counts as empty).
async fn drain(backend: &Backend, queues: &[String]) -> bool {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let clients = backend.clients();
    loop {
        let mut empty = 0;
        for queue in queues {
            let mut views = Vec::new();
            for (_, client) in &clients {
                if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(5), client.get_queue(queue)).await
                    && let Some(stats) = info.stats
                {
                    views.push((stats.depth, stats.in_flight, stats.next_offset));
                }
            }
            if views.len() == clients.len() && views.iter().all(|v| v.0 == 0 && v.1 == 0 && v.2 == views[0].2) {
                empty += 1;
            }
        }
        if empty == queues.len() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn join_all(tasks: &mut JoinSet<()>, what: &str) -> anyhow::Result<()> {
    let joined = tokio::time::timeout(STOP_TIMEOUT, async {
        while let Some(result) = tasks.join_next().await {
            result.with_context(|| format!("one of the {what} panicked"))?;
        }
        anyhow::Ok(())
    })
    .await;
    joined.with_context(|| format!("the {what} did not stop within {STOP_TIMEOUT:?}"))?
}
