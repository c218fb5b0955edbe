//! Command-line interface: one module per command group.
//!
//! `server` and `dev` run nodes; the others are clients of a running cluster.

/// `println!` for the CLI's output, which ends the process quietly when the
/// reader has gone (`raftmq peek q | head -1`): `println!` panics there.
macro_rules! outln {
    () => {
        $crate::cmd::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cmd::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with the same handling as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cmd::write_stdout(format_args!($($arg)*))
    };
}

mod bench;
mod bench_idle;
mod cluster;
mod dev;
mod message;
mod output;
mod queue;
mod server;
mod subscription;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftmq_client::Client;

pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Debug, Parser)]
#[command(name = "raftmq", version, about = "A replicated message queue: server, local cluster and client")]
pub struct Cli {
    /// Nodes to talk to (any node of the cluster will do), comma-separated host:port.
    #[arg(long, global = true, env = "RAFTMQ_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Server(server::ServerArgs),
    /// Run a local three-node cluster for development, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Create, inspect, delete and purge queues.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Create, list, delete and seek a queue's subscriptions.
    #[command(subcommand)]
    Subscription(subscription::SubscriptionCommand),
    /// Produce messages: the BODY arguments, or one message per stdin line.
    Produce(message::ProduceArgs),
    /// Consume messages (and acknowledge them, unless --no-ack).
    Consume(message::ConsumeArgs),
    /// Browse stored messages without leasing them.
    Peek(message::PeekArgs),
    /// Acknowledge messages by receipt.
    Ack(message::AckArgs),
    /// Give messages back for redelivery.
    Nack(message::NackArgs),
    /// Cluster inspection.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Measure throughput and latency against a running cluster.
    Bench(bench::BenchArgs),
    /// Measure what idle queues cost: create them, wait until their groups
    /// are quiet, and report each node's CPU and memory.
    BenchIdle(bench_idle::IdleArgs),
}

/// Writes to standard output. A closed pipe ends the process with success,
/// as it would a program killed by SIGPIPE (Rust ignores that signal, so a
/// write fails instead). `consume` acks after printing, so the messages it
/// leased come back after their visibility timeout (at least once, as after
/// any crash of a consumer). Any other failure exits with 1.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Server(args) => server::run(args),
        Command::Dev(args) => dev::run(args),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("start the tokio runtime");
            let endpoints = cli.endpoints.clone();
            let result = runtime.block_on(async move {
                let client = Client::connect(&cli.endpoints)?;
                match command {
                    Command::Queue(c) => queue::run(&client, c).await,
                    Command::Subscription(c) => subscription::run(&client, c).await,
                    Command::Produce(a) => message::produce(&client, a).await,
                    Command::Consume(a) => message::consume(&client, a).await,
                    Command::Peek(a) => message::peek(&client, a).await,
                    Command::Ack(a) => message::ack(&client, a).await,
                    Command::Nack(a) => message::nack(&client, a).await,
                    Command::Cluster(c) => cluster::run(&client, c).await,
                    Command::Bench(a) => bench::run(&client, &endpoints, a).await,
                    Command::BenchIdle(a) => bench_idle::run(&client, &endpoints, a).await,
                    Command::Server(_) | Command::Dev(_) => unreachable!("handled above"),
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn endpoints_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from(["raftmq", "queue", "list", "--endpoints", "a:1,b:2"]).unwrap();
        assert_eq!(cli.endpoints, vec!["a:1", "b:2"]);
    }

    #[test]
    fn consume_defaults() {
        let cli = Cli::try_parse_from(["raftmq", "consume", "q"]).unwrap();
        match cli.command {
            Command::Consume(args) => {
                assert_eq!((args.max, args.wait_ms, args.no_ack), (10, 1000, false));
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
