//! `raftmq server`: one node, configured by file, environment and flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use raftmq_server::config::{ConfigOverrides, ServerConfig, parse_peers};

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// TOML config file (see deploy/node1.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    node_id: Option<u64>,
    #[arg(long)]
    listen_addr: Option<SocketAddr>,
    #[arg(long)]
    advertise_addr: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial members, this node included: "1=host:port,2=host:port,3=host:port".
    #[arg(long)]
    peers: Option<String>,
    /// Memory for RocksDB's memtables in MiB (storage.memtable_budget_mib;
    /// default 512): most of a loaded node's RSS.
    #[arg(long)]
    memtable_budget_mib: Option<u64>,
    /// Threads of the node's async runtime (worker_threads; default one per
    /// core).
    #[arg(long)]
    worker_threads: Option<usize>,
}

pub fn run(args: ServerArgs) -> ExitCode {
    let peers = match args.peers.as_deref().map(parse_peers).transpose() {
        Ok(peers) => peers,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let overrides = ConfigOverrides {
        node_id: args.node_id,
        listen_addr: args.listen_addr,
        advertise_addr: args.advertise_addr,
        data_dir: args.data_dir,
        peers,
        memtable_budget_mib: args.memtable_budget_mib,
        worker_threads: args.worker_threads,
    };
    let config = match ServerConfig::load(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log));
    // Colours only on a terminal: `raftmq dev`, tests and process managers
    // write the log to a file, where escape codes get in the way of grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build().expect("start the tokio runtime");
    match runtime.block_on(raftmq_server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "node stopped");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested");
}
