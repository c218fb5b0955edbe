//! The README's first set-up command, `raftmq dev`: it starts three nodes
//! that serve the CLI, says so, stops every node on Ctrl-C (SIGINT) with exit
//! code 0, and a second `raftmq dev` on the same data directory has the
//! first one's queue and messages. A third, whose standard output is a pipe
//! nobody reads (`raftmq dev | head -1`), still runs and stops its nodes.
//! `--memtable-budget-mib` reaches every node, and so do the runtime
//! threads: a third of the machine's cores each by default, or
//! `--worker-threads`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raftmq_cluster_tests::{memtable_sizes, raftmq_cli, raftmq_command};

const QUEUE: &str = "dev-queue";
const UP_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// `raftmq dev --memtable-budget-mib`, passed on to every node.
const DEV_BUDGET_MIB: u64 = 48;

/// A base port whose next two ports are free too (`raftmq dev` listens on
/// base, base + 1 and base + 2).
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let base = first.local_addr().unwrap().port();
        if base > u16::MAX - 2 {
            continue;
        }
        if (1..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no three consecutive free loopback ports");
}

fn ports_free(base: u16) -> bool {
    (0..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok())
}

/// A running `raftmq dev` and the lines it prints. Dropped without `stop`
/// (a failing test), it is interrupted so that it stops its nodes.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
}

impl Dev {
    fn start(data_dir: &std::path::Path, base_port: u16, args: &[&str]) -> Dev {
        Dev::start_with_stdout(data_dir, base_port, Stdio::piped(), args)
    }

    fn start_with_stdout(data_dir: &std::path::Path, base_port: u16, stdout: Stdio, args: &[&str]) -> Dev {
        let mut command = raftmq_command(["dev", "--base-port", &base_port.to_string()]);
        command.args(["--memtable-budget-mib", &DEV_BUDGET_MIB.to_string()]).args(args);
        command.arg("--data-dir").arg(data_dir).stdout(stdout).stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start raftmq dev");
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Dev { child, lines, printed: Vec::new() }
    }

    /// Waits for the line that says the cluster is up.
    fn wait_up(&mut self) {
        let deadline = Instant::now() + UP_TIMEOUT;
        while !self.printed.iter().any(|l| l.contains("cluster is up")) {
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "raftmq dev exited before the cluster was up; it printed {:?}",
                self.printed
            );
            assert!(Instant::now() < deadline, "raftmq dev not up within {UP_TIMEOUT:?}: {:?}", self.printed);
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.printed.push(line);
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    fn interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    /// Ctrl-C, then waits for the exit; returns its success and what it printed.
    fn stop(self) -> (bool, Vec<String>) {
        self.stop_with(libc::SIGINT)
    }

    /// `signal` (SIGINT or SIGTERM), then waits for the exit.
    fn stop_with(mut self, signal: libc::c_int) -> (bool, Vec<String>) {
        self.signal(signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "raftmq dev still running {STOP_TIMEOUT:?} after signal {signal}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut printed = std::mem::take(&mut self.printed);
        printed.extend(self.lines.try_iter());
        (status.success(), printed)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.interrupt();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Each node's runtime threads, as `cluster status` asked of that node says.
async fn runtime_threads(base: u16) -> Vec<usize> {
    let mut threads = Vec::new();
    for node in 0..3 {
        let status = raftmq_cli(&format!("127.0.0.1:{}", base + node), &["cluster", "status"], None).await;
        let out = &status.assert_success().stdout;
        assert!(out.starts_with(&format!("answered by node {}", node + 1)), "{status}");
        let count = out.split(" runtime threads").next().and_then(|s| s.rsplit(' ').next()?.parse().ok());
        threads.push(count.unwrap_or_else(|| panic!("no runtime threads in {status}")));
    }
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_serves_keeps_data_and_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("dev-data");
    let base = free_base_port();
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");

    let mut dev = Dev::start(&data_dir, base, &[]);
    dev.wait_up();
    // The three nodes share the machine's cores: a third each, at least one.
    let cores = std::thread::available_parallelism().expect("count the cores").get();
    assert_eq!(runtime_threads(base).await, vec![(cores / 3).max(1); 3], "{cores} cores");
    assert!(dev.printed.iter().any(|l| l.contains("runtime thread(s) each")), "{:?}", dev.printed);
    // Every node took the memtable budget given to raftmq dev (75-100% of it).
    for node in 1..=3 {
        let db = data_dir.join(format!("node-{node}")).join("db");
        let sizes = memtable_sizes(&db).unwrap_or_else(|| panic!("no OPTIONS file in {}", db.display()));
        let budget = DEV_BUDGET_MIB << 20;
        assert!((budget * 3 / 4..=budget).contains(&sizes.budget), "node {node}: {sizes:?}");
    }
    let status = raftmq_cli(&endpoints, &["cluster", "status"], None).await;
    for node in 1..=3 {
        let addr = format!("127.0.0.1:{}", base + node - 1);
        assert!(status.assert_success().stdout.contains(&addr), "cluster status does not show {addr}: {status}");
    }
    raftmq_cli(&endpoints, &["queue", "create", QUEUE], None).await.assert_success();
    raftmq_cli(&endpoints, &["produce", QUEUE], Some(b"one\ntwo\n")).await.assert_success();
    let (stopped, printed) = dev.stop();
    assert!(stopped, "raftmq dev did not exit 0 on SIGINT; it printed {printed:?}");
    assert!(printed.iter().any(|l| l.contains("stopping the cluster")), "printed {printed:?}");
    assert!(ports_free(base), "a node still holds its port after raftmq dev stopped");

    // Its data stays: a second start serves the same queue and messages.
    let mut dev = Dev::start(&data_dir, base, &["--worker-threads", "3"]);
    dev.wait_up();
    assert_eq!(runtime_threads(base).await, vec![3; 3], "--worker-threads reaches every node");
    let peek = raftmq_cli(&endpoints, &["peek", QUEUE, "--json"], None).await;
    let out = &peek.assert_success().stdout;
    assert!(out.contains("one") && out.contains("two"), "peek after a restart of raftmq dev: {peek}");
    // SIGTERM (kill, a process manager) stops the nodes as Ctrl-C does.
    let (stopped, printed) = dev.stop_with(libc::SIGTERM);
    assert!(stopped, "the second raftmq dev did not exit 0 on SIGTERM; it printed {printed:?}");
    assert!(printed.iter().any(|l| l.contains("stopping the cluster")), "printed {printed:?}");
    assert!(ports_free(base), "a node still holds its port after the second raftmq dev stopped on SIGTERM");

    // Standard output closed: nothing is read, so the cluster is up when the
    // CLI gets an answer.
    let (reader, writer) = std::io::pipe().expect("make a pipe");
    drop(reader);
    let mut dev = Dev::start_with_stdout(&data_dir, base, Stdio::from(writer), &[]);
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        assert!(
            matches!(dev.child.try_wait(), Ok(None)),
            "raftmq dev with a closed stdout exited: {:?}",
            dev.child.try_wait()
        );
        if raftmq_cli(&endpoints, &["queue", "get", QUEUE], None).await.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "raftmq dev with a closed stdout not up within {UP_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stopped, _) = dev.stop();
    assert!(stopped, "raftmq dev with a closed stdout did not exit 0 on SIGINT");
    assert!(ports_free(base), "a node still holds its port after raftmq dev with a closed stdout stopped");
}
