//! [`TestCluster`]: n real `raftmq server` processes and their lifecycles.
//!
//! Node `i` (1-based, also its Raft node id) listens on a loopback port picked
//! at start and kept for its lifetime, so a restarted node comes back at the
//! same address with the same data directory. Each node writes its output to
//! `node.log` beside its data; the log survives restarts (each start adds a
//! banner) and its tail is printed when a test panics. Dropping the cluster
//! kills every node.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raftmq_proto::v1::{GroupStatus, QueueConfig};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::client::Client;
use crate::command::remove_raftmq_env;
use crate::poll::retry_unavailable;

/// A node's Raft id: 1 to n.
pub type NodeId = u64;

/// Long enough for three processes to open RocksDB and elect a meta leader on
/// a loaded 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A node that ignores SIGTERM for this long is a bug.
const GRACEFUL_STOP_TIMEOUT: Duration = Duration::from_secs(30);
const QUEUE_READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 80;

/// The repository root: the binary's relative paths (`examples/`, `proto/`)
/// are resolved from here.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cluster-tests/ sits in the repository root").to_path_buf()
}

/// The `raftmq` binary under test: `$RAFTMQ_BIN`, or `raftmq` in the target
/// directory this test executable was built into (`target/<profile>/deps/..`).
pub fn raftmq_binary() -> PathBuf {
    let path = match std::env::var_os("RAFTMQ_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("locate the test executable");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .unwrap_or_else(|| panic!("test executable {} is not in target/<profile>/deps", exe.display()));
            profile_dir.join("raftmq")
        }
    };
    assert!(
        path.is_file(),
        "the raftmq binary is missing at {}: run scripts/test, which builds it and sets RAFTMQ_BIN \
         (or run `cargo build -p raftmq-cli --bin raftmq` before the tests)",
        path.display()
    );
    path
}

struct Node {
    id: NodeId,
    addr: SocketAddr,
    /// Holds `data/` (the node's `--data-dir`) and `node.log`.
    dir: PathBuf,
    /// `None` while the node is stopped or killed.
    process: Option<Child>,
    /// Number of times started, for the banner in the log.
    starts: u32,
}

impl Node {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

pub struct TestCluster {
    nodes: Vec<Node>,
    binary: PathBuf,
    /// Deleted on drop, unless the test is panicking: then the data and logs
    /// are kept for a post-mortem and their path is printed.
    root: Option<TempDir>,
    /// Settings given to every node as environment variables
    /// (`RAFTMQ_RAFT__ELECTION_TIMEOUT_MIN_MS`, …).
    env: Vec<(String, String)>,
    /// Flags added to every node's `raftmq server` command line.
    args: Vec<String>,
}

impl TestCluster {
    /// Starts `n` nodes that know each other as peers. Returns at once; call
    /// [`TestCluster::wait_ready`] before using the cluster.
    pub fn start(n: usize) -> TestCluster {
        TestCluster::start_with_env(n, &[])
    }

    /// Like [`TestCluster::start`], with `env` set for every node, on every
    /// start.
    pub fn start_with_env(n: usize, env: &[(&str, &str)]) -> TestCluster {
        TestCluster::start_with(n, env, &[])
    }

    /// Like [`TestCluster::start_with_env`], with `args` added to every
    /// node's `raftmq server` command line, on every start.
    pub fn start_with(n: usize, env: &[(&str, &str)], args: &[&str]) -> TestCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let binary = raftmq_binary();
        let root = tempfile::Builder::new().prefix("raftmq-cluster-").tempdir().expect("create the cluster's temp dir");
        let nodes = free_loopback_addrs(n)
            .into_iter()
            .enumerate()
            .map(|(i, addr)| {
                let id = i as NodeId + 1;
                let dir = root.path().join(format!("node{id}"));
                std::fs::create_dir_all(&dir).expect("create node dir");
                Node { id, addr, dir, process: None, starts: 0 }
            })
            .collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut cluster = TestCluster { nodes, binary, root: Some(root), env, args };
        for id in cluster.node_ids() {
            cluster.spawn(id);
        }
        let listing: Vec<String> = cluster.nodes.iter().map(|n| format!("node {} at {}", n.id, n.addr)).collect();
        println!("started {}; logs and data in {}", listing.join(", "), cluster.root_path().display());
        cluster
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// `127.0.0.1:PORT` of the node, the same across restarts.
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.node(node).addr
    }

    /// `http://127.0.0.1:PORT`, for gRPC clients.
    pub fn endpoint(&self, node: NodeId) -> String {
        format!("http://{}", self.addr(node))
    }

    /// Every node's address, comma-separated: the CLI's `--endpoints`.
    pub fn endpoints(&self) -> String {
        self.node_ids().iter().map(|id| self.addr(*id).to_string()).collect::<Vec<_>>().join(",")
    }

    pub fn client(&self, node: NodeId) -> Client {
        Client::connect_lazy(&self.endpoint(node))
    }

    pub fn data_dir(&self, node: NodeId) -> PathBuf {
        self.node(node).data_dir()
    }

    pub fn log_path(&self, node: NodeId) -> PathBuf {
        self.node(node).log_path()
    }

    pub fn is_running(&self, node: NodeId) -> bool {
        self.node(node).process.is_some()
    }

    pub fn running_nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| n.process.is_some()).map(|n| n.id).collect()
    }

    /// Panics if a node that should be running has exited on its own (a
    /// crash, or a refused config): nothing later could work.
    pub fn assert_running(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.process.as_mut()
                && let Some(status) = child.try_wait().expect("poll a node process")
            {
                node.process = None;
                panic!("node {} exited unexpectedly with {status}; its log is printed below", node.id);
            }
        }
    }

    /// Waits until every running node reports the same nonzero meta-group
    /// leader in `GetClusterStatus`.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let mut views = Vec::new();
            for id in self.running_nodes() {
                let leader = match self.client(id).cluster_status().await {
                    Ok(status) => status.groups.iter().find(|g| g.group_id == 0).map(|g| g.leader_id).unwrap_or(0),
                    Err(_) => 0,
                };
                views.push((id, leader));
            }
            let first = views.first().map(|(_, leader)| *leader).unwrap_or(0);
            if first != 0 && views.iter().all(|(_, leader)| *leader == first) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("cluster not ready within {timeout:?}: (node, meta leader it sees) = {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a queue through node 1 (or the first running node), retrying
    /// while the cluster answers UNAVAILABLE, and waits until its Raft group
    /// has a leader. Returns the leader.
    pub async fn create_queue(&mut self, name: &str, config: QueueConfig) -> NodeId {
        let client = self.client(*self.running_nodes().first().expect("a running node"));
        let mut attempts = 0;
        let created = retry_unavailable(QUEUE_READY_TIMEOUT, async || {
            attempts += 1;
            match client.create_queue(name, config.clone()).await {
                // An earlier attempt took effect but its answer was lost.
                Err(status) if status.code() == tonic::Code::AlreadyExists && attempts > 1 => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await;
        if let Err(status) = created {
            panic!("create queue {name}: {status:?}");
        }
        self.leader_of(name, QUEUE_READY_TIMEOUT).await
    }

    /// The node leading `queue`'s Raft group: the running node whose own
    /// `GetClusterStatus` says it leads the group. Waits for one to exist.
    pub async fn leader_of(&mut self, queue: &str, timeout: Duration) -> NodeId {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            for id in self.running_nodes() {
                if let Some(group) = self.group_status(id, queue).await
                    && group.leader_id == id
                {
                    return id;
                }
            }
            if Instant::now() >= deadline {
                panic!("no node claims leadership of queue {queue} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status of `queue`'s group as `node` sees it; `None` if the node
    /// does not answer or hosts no replica of the queue.
    pub async fn group_status(&self, node: NodeId, queue: &str) -> Option<GroupStatus> {
        let status = self.client(node).cluster_status().await.ok()?;
        status.groups.into_iter().find(|g| g.group_id != 0 && g.queue == queue)
    }

    /// `queue`'s last log index on `leader`, once every node has applied
    /// all of it: how many entries a step cost is the difference of two.
    pub async fn settled_log_index(&self, leader: NodeId, queue: &str) -> u64 {
        crate::poll_until(Duration::from_secs(10), "the queue's log to settle", async || {
            let last = self.group_status(leader, queue).await?.last_log_index;
            for node in self.node_ids() {
                if self.group_status(node, queue).await?.applied_index != last {
                    return None;
                }
            }
            Some(last)
        })
        .await
    }

    /// kill -9: `Child::kill` sends SIGKILL on unix. Waits for the process.
    pub fn kill(&mut self, node: NodeId) {
        let child = self.node_mut(node).process.take();
        let mut child = child.unwrap_or_else(|| panic!("kill node {node}: it is not running"));
        child.kill().unwrap_or_else(|e| panic!("kill node {node}: {e}"));
        child.wait().unwrap_or_else(|e| panic!("reap node {node}: {e}"));
        println!("killed node {node} (SIGKILL)");
    }

    pub fn kill_all(&mut self) {
        for id in self.running_nodes() {
            self.kill(id);
        }
    }

    /// Sends `signal` to a running node (SIGSTOP and SIGCONT pause and resume it).
    pub fn signal(&self, node: NodeId, signal: libc::c_int) -> anyhow::Result<()> {
        let child = self.node(node).process.as_ref().ok_or_else(|| anyhow::anyhow!("node {node} is not running"))?;
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) takes plain integers; `pid` is our child and not
        // yet reaped, so it cannot name another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            anyhow::bail!("signal {signal} to node {node}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, then waits for the node to exit. Panics if it takes longer
    /// than 30 s (after killing it).
    pub async fn stop(&mut self, node: NodeId) {
        self.stop_nodes(&[node]).await;
    }

    /// SIGTERM to every running node at once, then waits for all of them.
    pub async fn stop_all(&mut self) {
        let running = self.running_nodes();
        self.stop_nodes(&running).await;
    }

    async fn stop_nodes(&mut self, ids: &[NodeId]) {
        for &id in ids {
            let child = self.node(id).process.as_ref().unwrap_or_else(|| panic!("stop node {id}: it is not running"));
            let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
            // SAFETY: kill(2) takes plain integers; `pid` is our child and not
            // yet reaped, so it cannot name another process.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                let error = std::io::Error::last_os_error();
                panic!("send SIGTERM to node {id}: {error}");
            }
        }
        let deadline = Instant::now() + GRACEFUL_STOP_TIMEOUT;
        for &id in ids {
            let node = self.node_mut(id);
            let child = node.process.as_mut().expect("checked above");
            loop {
                match child.try_wait().unwrap_or_else(|e| panic!("wait for node {id}: {e}")) {
                    Some(status) => {
                        println!("stopped node {id} (SIGTERM): {status}");
                        node.process = None;
                        break;
                    }
                    None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        node.process = None;
                        panic!("node {id} did not exit within {GRACEFUL_STOP_TIMEOUT:?} of SIGTERM; killed it");
                    }
                }
            }
        }
    }

    /// Starts a stopped or killed node again: same id, address and data.
    pub fn restart(&mut self, node: NodeId) {
        assert!(!self.is_running(node), "restart node {node}: it is still running; kill or stop it first");
        self.spawn(node);
        println!("restarted node {node}");
    }

    /// Starts every node that is not running.
    pub fn restart_all(&mut self) {
        for id in self.node_ids() {
            if !self.is_running(id) {
                self.restart(id);
            }
        }
    }

    /// Prints the last lines of every node's log to stderr.
    pub fn print_log_tails(&self) {
        for node in &self.nodes {
            let path = node.log_path();
            eprintln!("----- node {} ({}) last {LOG_TAIL_LINES} lines of {} -----", node.id, node.addr, path.display());
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let lines: Vec<&str> = text.lines().collect();
                    for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                        eprintln!("{line}");
                    }
                }
                Err(e) => eprintln!("(cannot read it: {e})"),
            }
        }
        eprintln!("----- end of node logs -----");
    }

    fn root_path(&self) -> &Path {
        self.root.as_ref().expect("the temp dir lives as long as the cluster").path()
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// `1=127.0.0.1:P1,2=127.0.0.1:P2,…`, the node itself included.
    fn peers_flag(&self) -> String {
        self.nodes.iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, id: NodeId) {
        let peers = self.peers_flag();
        let binary = self.binary.clone();
        let env = self.env.clone();
        let args = self.args.clone();
        let node = self.node_mut(id);
        node.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", node.log_path().display()));
        writeln!(log, "===== test harness: start #{} of node {} at {} =====", node.starts, id, node.addr)
            .expect("write the node log");
        let log_for_stderr = log.try_clone().expect("duplicate the log file handle");

        let mut command = Command::new(&binary);
        command
            .arg("server")
            .args(["--node-id", &id.to_string()])
            .args(["--listen-addr", &node.addr.to_string()])
            .args(["--advertise-addr", &node.addr.to_string()])
            .arg("--data-dir")
            .arg(node.data_dir())
            .args(["--peers", &peers])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr));
        remove_raftmq_env(&mut command);
        command.envs(env);
        command.env("RUST_BACKTRACE", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // If the test process dies without running Drop (SIGKILL from a test
        // runner timeout), the nodes die with it instead of lingering. The
        // signal follows the death of the spawning *thread*: start nodes from
        // the test's own task, not from spawn_blocking.
        // SAFETY: prctl(2) is async-signal-safe and the closure allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("start {} for node {id}: {e}", binary.display()));
        node.process = Some(child);
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            self.print_log_tails();
            if let Some(root) = self.root.take() {
                eprintln!("node data and logs kept in {}", root.keep().display());
            }
        }
    }
}

/// `n` distinct free loopback addresses. Every listener is held until all are
/// bound, so no two nodes get the same port; the ports are free again when
/// this returns, and the kernel does not hand them out again soon.
pub(crate) fn free_loopback_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("read a bound address")).collect()
}
