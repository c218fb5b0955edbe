//! `raftmq dev`: a local three-node cluster as three child processes of this
//! executable, each with its own data directory and log file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use raftmq_client::Client;
use raftmq_server::config::ServerConfig;
use tokio::signal::unix::{Signal, SignalKind, signal};

const NODES: u16 = 3;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the nodes keep their data and logs.
    #[arg(long, default_value = ".raftmq-dev")]
    data_dir: PathBuf,
    /// Node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Delete the data directory first.
    #[arg(long)]
    clean: bool,
    /// Memory for each node's RocksDB memtables in MiB (default 512).
    #[arg(long)]
    memtable_budget_mib: Option<u64>,
    /// Runtime threads of each node (default: a third of this machine's
    /// cores, at least one, as the three nodes share them).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=ServerConfig::MAX_WORKER_THREADS as i64))]
    worker_threads: Option<u16>,
}

/// Each node's share of this machine's cores: three nodes with a runtime
/// thread per core each would run three times as many threads as there are
/// cores, and pay for it in wake-ups and thread switches.
fn worker_threads_per_node() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / usize::from(NODES)).max(1))
}

struct Node {
    id: u16,
    addr: String,
    log: PathBuf,
    child: Child,
}

pub fn run(args: DevArgs) -> ExitCode {
    match run_cluster(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_cluster(args: DevArgs) -> anyhow::Result<ExitCode> {
    if args.clean && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir).with_context(|| format!("remove {}", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;
    let addrs: Vec<String> = (0..NODES).map(|i| format!("127.0.0.1:{}", args.base_port + i)).collect();
    let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let peers = peers.join(",");
    let exe = std::env::current_exe().context("find the raftmq executable")?;
    let worker_threads = args.worker_threads.map_or_else(worker_threads_per_node, usize::from);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Listening for Ctrl-C and SIGTERM before any node starts: either would
    // otherwise end this process by default and leave the nodes running.
    let mut stop_signals = {
        let _runtime = runtime.enter();
        StopSignals::listen()?
    };

    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u16 + 1;
        let log = args.data_dir.join(format!("node-{id}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("server")
            .args(["--node-id", &id.to_string(), "--listen-addr", addr, "--peers", &peers])
            .args(["--worker-threads", &worker_threads.to_string()])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("node-{id}")))
            .args(args.memtable_budget_mib.map(|mib| format!("--memtable-budget-mib={mib}")))
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("start node {id}"))?;
        nodes.push(Node { id, addr: addr.clone(), log, child });
    }

    let ready = runtime.block_on(async {
        tokio::select! {
            ready = wait_ready(&addrs, &mut nodes) => Some(ready),
            () = stop_signals.recv() => None,
        }
    });
    match ready {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            eprintln!("error: the cluster did not start: {e}");
            stop(&mut nodes);
            return Ok(ExitCode::from(1));
        }
        None => {
            say(format_args!("stopping the cluster"));
            stop(&mut nodes);
            return Ok(ExitCode::SUCCESS);
        }
    }

    say(format_args!(
        "raftmq dev cluster is up: three nodes of {worker_threads} runtime thread(s) each, data in {}",
        args.data_dir.display()
    ));
    for node in &nodes {
        say(format_args!("  node {}  {}  log: {}", node.id, node.addr, node.log.display()));
    }
    say(format_args!(""));
    say(format_args!("Try it (the CLI talks to these endpoints by default):"));
    say(format_args!("  raftmq queue create demo"));
    say(format_args!("  echo hello | raftmq produce demo"));
    say(format_args!("  raftmq consume demo"));
    say(format_args!("  raftmq cluster status"));
    say(format_args!(""));
    say(format_args!(
        "Ctrl-C (or SIGTERM) stops the cluster; its data stays in {} (use --clean to start over).",
        args.data_dir.display()
    ));

    let exit = runtime.block_on(async {
        loop {
            tokio::select! {
                () = stop_signals.recv() => return None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Some(code) = exited(&mut nodes) {
                        return Some(code);
                    }
                }
            }
        }
    });
    if let Some((id, log)) = exit {
        eprintln!("error: node {id} exited; the end of its log ({}):", log.display());
        eprintln!("{}", tail(&log, 30));
        stop(&mut nodes);
        return Ok(ExitCode::from(1));
    }
    say(format_args!("stopping the cluster"));
    stop(&mut nodes);
    Ok(ExitCode::SUCCESS)
}

/// What stops the cluster: Ctrl-C (SIGINT) at the terminal, or SIGTERM
/// from `kill`, a process manager or a script. Each is handled by stopping
/// the nodes first, never by the default of ending this process alone.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("listen for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listen for SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Prints a line for the person at the terminal. A closed standard output
/// (`raftmq dev | head -1`) is ignored: the nodes keep running until Ctrl-C,
/// where `println!` would panic and leave them running with nobody to stop
/// them.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

async fn wait_ready(addrs: &[String], nodes: &mut [Node]) -> Result<(), String> {
    let client = Client::connect(addrs).map_err(|e| e.to_string())?.with_deadline(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((id, log)) = exited(nodes) {
            return Err(format!("node {id} exited:\n{}", tail(&log, 30)));
        }
        if let Ok(status) = client.cluster_status().await
            && status.groups.first().is_some_and(|meta| meta.leader_id != 0)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("no meta-group leader within 60 s; see the node logs".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exited(nodes: &mut [Node]) -> Option<(u16, PathBuf)> {
    nodes.iter_mut().find_map(|n| match n.child.try_wait() {
        Ok(Some(_)) => Some((n.id, n.log.clone())),
        _ => None,
    })
}

/// SIGTERM, then SIGKILL for nodes still running after 5 s.
fn stop(nodes: &mut [Node]) {
    for node in nodes.iter() {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for node in nodes.iter_mut() {
        while Instant::now() < deadline && matches!(node.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(node.child.try_wait(), Ok(None)) {
            let _ = node.child.kill();
        }
        let _ = node.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
