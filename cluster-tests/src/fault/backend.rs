//! Where the nodes of a fault run live, and the faults each backend can
//! inject: local processes ([`TestCluster`]) or the containers of
//! `deploy/docker-compose.yml`.
//!
//! Partitions need real packet loss, so only the container backend offers
//! them: it drops packets with iptables inside a container's network
//! namespace (entered from the host with nsenter), which cuts node-to-node
//! traffic while clients on the host still reach every node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::client::Client;
use crate::cluster::{NodeId, TestCluster, repo_root};

/// A docker or iptables command that takes longer than this is stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub enum Backend {
    Processes(TestCluster),
    Docker(DockerCluster),
}

impl Backend {
    pub fn node_ids(&self) -> Vec<NodeId> {
        match self {
            Backend::Processes(cluster) => cluster.node_ids(),
            Backend::Docker(cluster) => cluster.ports.keys().copied().collect(),
        }
    }

    pub fn client(&self, node: NodeId) -> Client {
        match self {
            Backend::Processes(cluster) => cluster.client(node),
            Backend::Docker(cluster) => Client::connect_lazy(&format!("http://127.0.0.1:{}", cluster.ports[&node])),
        }
    }

    pub fn clients(&self) -> Vec<(NodeId, Client)> {
        self.node_ids().into_iter().map(|id| (id, self.client(id))).collect()
    }

    pub fn supports_partitions(&self) -> bool {
        matches!(self, Backend::Docker(_))
    }

    /// kill -9.
    pub async fn kill(&mut self, node: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Processes(cluster) => {
                cluster.kill(node);
                Ok(())
            }
            Backend::Docker(cluster) => cluster.docker(&["kill", "--signal", "KILL", &cluster.container(node)?]).await,
        }
    }

    /// Starts a killed node again, with its data.
    pub async fn start(&mut self, node: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Processes(cluster) => {
                cluster.restart(node);
                Ok(())
            }
            Backend::Docker(cluster) => cluster.docker(&["start", &cluster.container(node)?]).await,
        }
    }

    /// Freezes every thread of the node (SIGSTOP, or the cgroup freezer).
    pub async fn pause(&mut self, node: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Processes(cluster) => cluster.signal(node, libc::SIGSTOP),
            Backend::Docker(cluster) => cluster.docker(&["pause", &cluster.container(node)?]).await,
        }
    }

    pub async fn resume(&mut self, node: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Processes(cluster) => cluster.signal(node, libc::SIGCONT),
            Backend::Docker(cluster) => cluster.docker(&["unpause", &cluster.container(node)?]).await,
        }
    }

    /// Drops every packet that `to` receives from `from`.
    pub async fn cut(&mut self, from: NodeId, to: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Processes(_) => bail!("partitions need the docker backend"),
            Backend::Docker(cluster) => {
                let source = cluster.ip(from).await?;
                cluster.iptables(to, &["-A", "INPUT", "-s", &source, "-j", "DROP"]).await
            }
        }
    }

    /// Removes every cut.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        match self {
            Backend::Processes(_) => Ok(()),
            Backend::Docker(cluster) => {
                for node in cluster.ports.keys().copied().collect::<Vec<_>>() {
                    cluster.iptables(node, &["-F", "INPUT"]).await?;
                }
                Ok(())
            }
        }
    }

    /// Keeps the nodes' logs: copies them into `dir` (containers), or prints
    /// where they are (processes, whose logs live in the cluster's temp dir).
    pub async fn save_logs(&self, dir: &Path) -> anyhow::Result<()> {
        match self {
            Backend::Processes(cluster) => {
                for id in cluster.node_ids() {
                    std::fs::copy(cluster.log_path(id), dir.join(format!("node{id}.log")))?;
                }
                Ok(())
            }
            Backend::Docker(cluster) => cluster.save_logs(dir).await,
        }
    }
}

/// The three-node cluster of `deploy/docker-compose.yml`, under a compose
/// project of its own. `docker-compose down -v` on drop removes its
/// containers, network and volumes.
pub struct DockerCluster {
    project: String,
    compose_file: PathBuf,
    image: String,
    /// Node id → host port published for its gRPC API.
    ports: BTreeMap<NodeId, u16>,
}

impl DockerCluster {
    /// `docker-compose up -d` of the shipped compose file, with the given
    /// image and host ports.
    pub async fn up(project: &str, image: &str, ports: [u16; 3]) -> anyhow::Result<DockerCluster> {
        let cluster = DockerCluster {
            project: project.to_string(),
            compose_file: repo_root().join("deploy/docker-compose.yml"),
            image: image.to_string(),
            ports: (1..=3).zip(ports).collect(),
        };
        cluster.compose(&["up", "--detach", "--no-build"]).await?;
        Ok(cluster)
    }

    fn compose_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .args(["--project-name", &self.project, "--file"])
            .arg(&self.compose_file)
            .args(args)
            .env("RAFTMQ_IMAGE", &self.image)
            .kill_on_drop(true);
        for (node, port) in &self.ports {
            command.env(format!("RAFTMQ_NODE{node}_PORT"), port.to_string());
        }
        command
    }

    async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        output(self.compose_command(args), &format!("docker-compose {}", args.join(" "))).await
    }

    async fn docker(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = Command::new("docker");
        command.args(args).kill_on_drop(true);
        output(command, &format!("docker {}", args.join(" "))).await.map(|_| ())
    }

    /// The container's name: compose 1.x names it `<project>_node<N>_1`.
    fn container(&self, node: NodeId) -> anyhow::Result<String> {
        if !self.ports.contains_key(&node) {
            bail!("no node {node}");
        }
        Ok(format!("{}_node{node}_1", self.project))
    }

    async fn inspect(&self, node: NodeId, format: &str) -> anyhow::Result<String> {
        let mut command = Command::new("docker");
        command.args(["inspect", "--format", format, &self.container(node)?]).kill_on_drop(true);
        Ok(output(command, "docker inspect").await?.trim().to_string())
    }

    /// The node's address on the compose network; a restarted container may get another one.
    async fn ip(&self, node: NodeId) -> anyhow::Result<String> {
        let ip = self.inspect(node, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").await?;
        if ip.is_empty() {
            bail!("node {node} has no IP address: is its container running?");
        }
        Ok(ip)
    }

    /// Runs iptables in the node's network namespace, with the host's binary.
    async fn iptables(&self, node: NodeId, args: &[&str]) -> anyhow::Result<()> {
        let pid = self.inspect(node, "{{.State.Pid}}").await?;
        if pid == "0" {
            // Not running: its namespace, and every rule in it, is gone.
            return Ok(());
        }
        // Entering another namespace and changing its firewall takes root.
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        let mut command = if unsafe { libc::geteuid() } == 0 {
            Command::new("nsenter")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["--non-interactive", "nsenter"]);
            sudo
        };
        command.args(["--target", &pid, "--net", "iptables", "-w"]).args(args).kill_on_drop(true);
        output(command, &format!("iptables {} in node {node}", args.join(" "))).await.map(|_| ())
    }

    async fn save_logs(&self, dir: &Path) -> anyhow::Result<()> {
        for node in self.ports.keys() {
            let mut command = Command::new("docker");
            command.args(["logs", &self.container(*node)?]).kill_on_drop(true);
            let logs = tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await??;
            let mut text = logs.stdout;
            text.extend_from_slice(&logs.stderr);
            std::fs::write(dir.join(format!("node{node}.log")), text)?;
        }
        Ok(())
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        let mut command = std::process::Command::new("docker-compose");
        command
            .args(["--project-name", &self.project, "--file"])
            .arg(&self.compose_file)
            .args(["down", "--volumes", "--timeout", "5"])
            .env("RAFTMQ_IMAGE", &self.image)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Err(e) = command.status() {
            eprintln!("docker-compose down for {}: {e}", self.project);
        }
    }
}

/// Runs `command`, returns its stdout, fails with its stderr.
async fn output(mut command: Command, what: &str) -> anyhow::Result<String> {
    let result = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .with_context(|| format!("{what}: no answer within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("{what}: cannot run it"))?;
    if !result.status.success() {
        bail!("{what}: {}: {}", result.status, String::from_utf8_lossy(&result.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}
