//! The nemesis: injects one fault at a time, chosen by a seeded random
//! schedule, and undoes it before the next. At most one node is ever faulty,
//! so a majority is always intact: every fault here is one raftmq promises to
//! survive without losing an acknowledged message.
//!
//! The seed fixes the schedule (which fault, which random node, how long);
//! which node leads a queue when a `-leader` fault strikes depends on the run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cluster::NodeId;
use crate::fault::backend::Backend;
use crate::fault::history::{Event, F, History, Type};

const NEMESIS: &str = "nemesis";
/// A node that does not answer a status call within this is treated as down.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of a random node, restarted after a few seconds.
    Kill,
    /// kill -9 of the current leader of a random queue.
    KillLeader,
    /// SIGSTOP (or the cgroup freezer) of a random node, resumed later.
    Pause,
    PauseLeader,
    /// A random node loses all packets from and to its peers: the
    /// minority/majority split of a three-node cluster.
    Isolate,
    IsolateLeader,
    /// A random node stops receiving from its peers but can still send.
    OneWayCut,
    /// Several nodes, one after another, killed and restarted at once.
    RestartStorm,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::Pause,
        FaultKind::PauseLeader,
        FaultKind::Isolate,
        FaultKind::IsolateLeader,
        FaultKind::OneWayCut,
        FaultKind::RestartStorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::Pause => "pause",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::Isolate => "isolate",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::OneWayCut => "one-way-cut",
            FaultKind::RestartStorm => "restart-storm",
        }
    }

    /// The name a fault is recorded under: a `-leader` fault that found no
    /// leader to hit struck a random node, and is recorded as such.
    fn recorded_name(self, hit_a_leader: bool) -> &'static str {
        match self {
            FaultKind::KillLeader if !hit_a_leader => FaultKind::Kill.name(),
            FaultKind::PauseLeader if !hit_a_leader => FaultKind::Pause.name(),
            FaultKind::IsolateLeader if !hit_a_leader => FaultKind::Isolate.name(),
            _ => self.name(),
        }
    }

    pub fn needs_partitions(self) -> bool {
        matches!(self, FaultKind::Isolate | FaultKind::IsolateLeader | FaultKind::OneWayCut)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultKind, String> {
        FaultKind::ALL.into_iter().find(|kind| kind.name() == s).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
            format!("unknown fault {s:?}; the faults are {}", names.join(", "))
        })
    }
}

pub struct Nemesis {
    rng: StdRng,
    faults: Vec<FaultKind>,
    queues: Vec<String>,
    history: History,
}

impl Nemesis {
    pub fn new(seed: u64, faults: Vec<FaultKind>, queues: Vec<String>, history: History) -> Nemesis {
        assert!(!faults.is_empty(), "the nemesis needs at least one kind of fault");
        Nemesis { rng: StdRng::seed_from_u64(seed), faults, queues, history }
    }

    /// Injects faults until `until`, then returns with every fault undone.
    pub async fn run(&mut self, backend: &mut Backend, until: Instant) -> anyhow::Result<()> {
        loop {
            self.sleep_between(500, 3000).await;
            if Instant::now() >= until {
                return Ok(());
            }
            let kind = *self.faults.choose(&mut self.rng).expect("faults is not empty");
            self.inject(backend, kind).await.with_context(|| format!("inject {kind}"))?;
        }
    }

    async fn inject(&mut self, backend: &mut Backend, kind: FaultKind) -> anyhow::Result<()> {
        match kind {
            FaultKind::Kill | FaultKind::KillLeader | FaultKind::Pause | FaultKind::PauseLeader => {
                let (node, queue) = self.target(backend, kind).await;
                let name = kind.recorded_name(queue.is_some());
                let kill = matches!(kind, FaultKind::Kill | FaultKind::KillLeader);
                if kill {
                    backend.kill(node).await?
                } else {
                    backend.pause(node).await?
                }
                self.record_fault(name, node, queue.as_deref());
                self.sleep_between(1000, 6000).await;
                if kill {
                    backend.start(node).await?
                } else {
                    backend.resume(node).await?
                }
                self.record_recover(name, node);
            }
            FaultKind::Isolate | FaultKind::IsolateLeader | FaultKind::OneWayCut => {
                let (node, queue) = self.target(backend, kind).await;
                for peer in backend.node_ids().into_iter().filter(|peer| *peer != node) {
                    backend.cut(peer, node).await?;
                    if kind != FaultKind::OneWayCut {
                        backend.cut(node, peer).await?;
                    }
                }
                let name = kind.recorded_name(queue.is_some());
                self.record_fault(name, node, queue.as_deref());
                self.sleep_between(2000, 8000).await;
                backend.heal().await?;
                self.record_recover(name, node);
            }
            FaultKind::RestartStorm => {
                let rounds = self.rng.random_range(3..=5);
                for _ in 0..rounds {
                    let node = *backend.node_ids().choose(&mut self.rng).expect("nodes");
                    backend.kill(node).await?;
                    self.record_fault("storm-kill", node, None);
                    self.sleep_between(200, 1500).await;
                    backend.start(node).await?;
                    self.record_recover("storm-kill", node);
                    self.sleep_between(500, 2000).await;
                }
            }
        }
        Ok(())
    }

    /// The node a fault hits: the leader of a random queue for `-leader`
    /// faults (and that queue), a random node otherwise or when no leader is
    /// known.
    async fn target(&mut self, backend: &Backend, kind: FaultKind) -> (NodeId, Option<String>) {
        if matches!(kind, FaultKind::KillLeader | FaultKind::PauseLeader | FaultKind::IsolateLeader) {
            let queue = self.queues.choose(&mut self.rng).expect("queues").clone();
            if let Some(leader) = leader_of(backend, &queue).await {
                return (leader, Some(queue));
            }
        }
        (*backend.node_ids().choose(&mut self.rng).expect("nodes"), None)
    }

    fn record_fault(&self, fault: &str, node: NodeId, queue: Option<&str>) {
        let mut event = Event::new(NEMESIS, Type::Info, F::Fault).fault(fault, vec![node]);
        event.queue = queue.map(str::to_string);
        println!("fault: {fault} node {node}{}", queue.map(|q| format!(" (leader of {q})")).unwrap_or_default());
        self.history.record(event);
    }

    fn record_recover(&self, fault: &str, node: NodeId) {
        self.history.record(Event::new(NEMESIS, Type::Info, F::Recover).fault(fault, vec![node]));
    }

    async fn sleep_between(&mut self, min_ms: u64, max_ms: u64) {
        let ms = self.rng.random_range(min_ms..=max_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The node that leads `queue`'s group by its own account, the one with the
/// highest term if several claim it (an isolated old leader may not know yet).
pub async fn leader_of(backend: &Backend, queue: &str) -> Option<NodeId> {
    let mut best: Option<(u64, NodeId)> = None;
    for (node, client) in backend.clients() {
        let Ok(Ok(status)) = tokio::time::timeout(STATUS_TIMEOUT, client.cluster_status()).await else { continue };
        for group in status.groups {
            if group.group_id != 0 && group.queue == queue && group.leader_id == node {
                best = best.max(Some((group.term, node)));
            }
        }
    }
    best.map(|(_, node)| node)
}
