//! Node configuration: defaults < TOML file < `RAFTMQ_*` environment < flags,
//! validated once at start with messages that name the setting.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// host:port that peers and clients dial.
    pub addr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// How often a leader heartbeats its followers.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears nothing for a random time in [min, max] starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Idle queue groups stop their Raft timers while node heartbeats show a
    /// live leader; off, every group ticks and heartbeats all the time.
    pub quiet_idle_groups: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            quiet_idle_groups: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageTuning {
    /// The memory the node's RocksDB memtables may fill before they are
    /// flushed to disk (all column families together), in MiB; each node
    /// draws its own between 75% and 100% of it. Most of a loaded node's
    /// RSS: smaller uses less memory and writes more to disk under load.
    pub memtable_budget_mib: u64,
}

impl StorageTuning {
    /// Below this, a node under load flushes several times a second.
    pub const MIN_MEMTABLE_BUDGET_MIB: u64 = 16;
    /// Far beyond any memory this is meant for; a larger number is most
    /// likely bytes given where MiB were meant.
    pub const MAX_MEMTABLE_BUDGET_MIB: u64 = 64 * 1024;

    pub fn memtable_budget_bytes(&self) -> usize {
        (self.memtable_budget_mib * 1024 * 1024) as usize
    }
}

impl Default for StorageTuning {
    fn default() -> Self {
        StorageTuning { memtable_budget_mib: (raftmq_storage::DEFAULT_MEMTABLE_BUDGET_BYTES / (1024 * 1024)) as u64 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's id, 1 or more, unique in the cluster.
    pub node_id: u64,
    /// Where the gRPC port (clients and peers) listens.
    pub listen_addr: SocketAddr,
    /// What peers and clients should dial; defaults to listen_addr.
    pub advertise_addr: Option<String>,
    /// Where the node keeps its RocksDB database.
    pub data_dir: PathBuf,
    /// The initial voters, this node included.
    pub peers: Vec<PeerConfig>,
    pub raft: RaftTuning,
    #[serde(default)]
    pub storage: StorageTuning,
    /// tracing filter, e.g. "info" or "raftmq_server=debug,info".
    pub log: String,
    /// Threads of the node's async runtime, which run its gRPC service, Raft
    /// groups and storage writes. Unset: one per core. Nodes that share a
    /// machine do best with a share of its cores each (`raftmq dev` gives
    /// each of its three a third, at least one): more threads than cores only
    /// add wake-ups and thread switches (docs/performance.md).
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// Values from command-line flags; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub node_id: Option<u64>,
    pub listen_addr: Option<SocketAddr>,
    pub advertise_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub peers: Option<Vec<PeerConfig>>,
    pub memtable_budget_mib: Option<u64>,
    pub worker_threads: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{setting}: {message}")]
    Setting { setting: &'static str, message: String },
}

fn setting(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Setting { setting, message: message.into() }
}

/// Parses "1=127.0.0.1:7001,2=127.0.0.1:7002" (the form of `--peers` and `RAFTMQ_PEERS`).
pub fn parse_peers(list: &str) -> Result<Vec<PeerConfig>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|item| {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| setting("peers", format!("{item:?} is not ID=HOST:PORT, e.g. 1=127.0.0.1:7001")))?;
            let id = id
                .trim()
                .parse::<u64>()
                .map_err(|_| setting("peers", format!("{id:?} in {item:?} is not a node id")))?;
            Ok(PeerConfig { id, addr: addr.trim().to_string() })
        })
        .collect()
}

/// Settings read from `RAFTMQ_<NAME>`; nested ones use `__` (RAFTMQ_RAFT__HEARTBEAT_INTERVAL_MS).
/// `RAFTMQ_PEERS` is parsed separately, in the compact form of `--peers`.
const ENV_SETTINGS: &[&str] = &[
    "node_id",
    "listen_addr",
    "advertise_addr",
    "data_dir",
    "log",
    "raft__heartbeat_interval_ms",
    "raft__election_timeout_min_ms",
    "raft__election_timeout_max_ms",
    "raft__quiet_idle_groups",
    "storage__memtable_budget_mib",
    "worker_threads",
];

/// The defaults, expressed as a partial document so that required settings
/// stay missing unless given.
#[derive(Serialize)]
struct Defaults {
    listen_addr: String,
    raft: RaftTuning,
    storage: StorageTuning,
    log: String,
}

impl ServerConfig {
    /// More runtime threads than any machine this runs on has cores.
    pub const MAX_WORKER_THREADS: usize = 1024;

    pub fn load(path: Option<&Path>, overrides: ConfigOverrides) -> Result<ServerConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Defaults {
            listen_addr: "127.0.0.1:7001".into(),
            raft: RaftTuning::default(),
            storage: StorageTuning::default(),
            log: "info,openraft=warn".into(),
        }));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::File { path: path.to_path_buf(), message: "no such file".into() });
            }
            figment = figment.merge(Toml::file(path));
        }
        // RAFTMQ_PEERS has a compact form of its own; everything else maps
        // directly (RAFTMQ_RAFT__HEARTBEAT_INTERVAL_MS for nested settings).
        // Only the node's own settings: other RAFTMQ_* variables (the CLI's
        // RAFTMQ_ENDPOINTS, test tooling) are not mistakes in this config.
        let env = Env::prefixed("RAFTMQ_")
            .filter(|key| ENV_SETTINGS.iter().any(|known| key.as_str().eq_ignore_ascii_case(known)));
        figment = figment.merge(env.split("__"));
        if let Ok(peers) = std::env::var("RAFTMQ_PEERS") {
            figment = figment.merge(Serialized::default("peers", parse_peers(&peers)?));
        }
        if let Some(v) = overrides.node_id {
            figment = figment.merge(Serialized::default("node_id", v));
        }
        if let Some(v) = overrides.listen_addr {
            figment = figment.merge(Serialized::default("listen_addr", v.to_string()));
        }
        if let Some(v) = overrides.advertise_addr {
            figment = figment.merge(Serialized::default("advertise_addr", v));
        }
        if let Some(v) = overrides.data_dir {
            figment = figment.merge(Serialized::default("data_dir", v));
        }
        if let Some(v) = overrides.peers {
            figment = figment.merge(Serialized::default("peers", v));
        }
        if let Some(v) = overrides.memtable_budget_mib {
            figment = figment.merge(Serialized::default("storage.memtable_budget_mib", v));
        }
        if let Some(v) = overrides.worker_threads {
            figment = figment.merge(Serialized::default("worker_threads", v));
        }
        // data_dir defaults from node_id, so it is filled in after the rest.
        if figment.find_value("data_dir").is_err()
            && let Ok(id) = figment.extract_inner::<u64>("node_id")
        {
            figment = figment.merge(Serialized::default("data_dir", format!("./data/node-{id}")));
        }
        let config: ServerConfig = figment.extract().map_err(|e| describe(path, e))?;
        config.validate()?;
        Ok(config)
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise_addr.clone().unwrap_or_else(|| self.listen_addr.to_string())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(setting("node_id", "must be 1 or more"));
        }
        if self.peers.is_empty() {
            return Err(setting("peers", "is empty; list every initial node, this one included (ID=HOST:PORT,...)"));
        }
        let mut ids = BTreeSet::new();
        for peer in &self.peers {
            if peer.id == 0 {
                return Err(setting("peers", format!("peer {:?} has id 0; ids start at 1", peer.addr)));
            }
            if !ids.insert(peer.id) {
                return Err(setting("peers", format!("node id {} appears twice", peer.id)));
            }
            if peer.addr.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(setting("peers", format!("address {:?} of node {} is not HOST:PORT", peer.addr, peer.id)));
            }
        }
        if !ids.contains(&self.node_id) {
            return Err(setting(
                "peers",
                format!("node_id {} is not in the peer list; add it or fix node_id", self.node_id),
            ));
        }
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 {
            return Err(setting("raft.heartbeat_interval_ms", "must be 1 or more"));
        }
        if raft.election_timeout_min_ms >= raft.election_timeout_max_ms {
            return Err(setting(
                "raft.election_timeout_min_ms",
                format!(
                    "{} must be less than raft.election_timeout_max_ms ({})",
                    raft.election_timeout_min_ms, raft.election_timeout_max_ms
                ),
            ));
        }
        if raft.heartbeat_interval_ms >= raft.election_timeout_min_ms {
            return Err(setting(
                "raft.heartbeat_interval_ms",
                format!(
                    "{} must be less than raft.election_timeout_min_ms ({})",
                    raft.heartbeat_interval_ms, raft.election_timeout_min_ms
                ),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(setting("data_dir", "is empty"));
        }
        let budget = self.storage.memtable_budget_mib;
        let (min, max) = (StorageTuning::MIN_MEMTABLE_BUDGET_MIB, StorageTuning::MAX_MEMTABLE_BUDGET_MIB);
        if !(min..=max).contains(&budget) {
            return Err(setting(
                "storage.memtable_budget_mib",
                format!("{budget} is not between {min} and {max}; the budget is in MiB (512 by default)"),
            ));
        }
        if let Some(threads) = self.worker_threads
            && !(1..=Self::MAX_WORKER_THREADS).contains(&threads)
        {
            return Err(setting(
                "worker_threads",
                format!("{threads} is not between 1 and {}; leave it unset for one per core", Self::MAX_WORKER_THREADS),
            ));
        }
        Ok(())
    }
}

/// figment's errors name the key path; say which file and what to do.
fn describe(path: Option<&Path>, error: figment::Error) -> ConfigError {
    let mut messages = Vec::new();
    for e in error {
        let key = if e.path.is_empty() { String::new() } else { format!("{}: ", e.path.join(".")) };
        let message = match &e.kind {
            figment::error::Kind::MissingField(field) => {
                format!(
                    "{field}: missing; set it in the config file, with RAFTMQ_{} or with a flag",
                    field.to_uppercase()
                )
            }
            figment::error::Kind::UnknownField(field, _) => {
                format!("{key}{field}: unknown setting; check the spelling")
            }
            _ => format!("{key}{}", e.kind),
        };
        let source = e.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
        messages.push(format!("{message}{source}"));
    }
    let message = messages.join("; ");
    match path {
        Some(path) if message.contains("TOML") => ConfigError::File { path: path.to_path_buf(), message },
        _ => ConfigError::Invalid(message),
    }
}

#[cfg(test)]
// figment's Jail API returns its large error type by value.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn peers3() -> Vec<PeerConfig> {
        parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003").unwrap()
    }

    fn load_str(toml: &str) -> Result<ServerConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml).unwrap();
        ServerConfig::load(Some(&path), ConfigOverrides::default())
    }

    const GOOD: &str = r#"
        node_id = 2
        listen_addr = "127.0.0.1:7002"
        data_dir = "/tmp/raftmq-node-2"
        [[peers]]
        id = 1
        addr = "127.0.0.1:7001"
        [[peers]]
        id = 2
        addr = "127.0.0.1:7002"
    "#;

    #[test]
    fn parses_peer_lists() {
        assert_eq!(peers3().len(), 3);
        assert_eq!(peers3()[1], PeerConfig { id: 2, addr: "127.0.0.1:7002".into() });
        assert!(parse_peers("1-127.0.0.1:7001").is_err());
        assert!(parse_peers("x=127.0.0.1:7001").is_err());
    }

    #[test]
    fn loads_a_file_with_defaults_filled_in() {
        figment::Jail::expect_with(|_| {
            let config = load_str(GOOD).unwrap();
            assert_eq!(config.node_id, 2);
            assert_eq!(config.raft, RaftTuning::default());
            assert_eq!(config.log, "info,openraft=warn");
            assert_eq!(config.advertise_addr(), "127.0.0.1:7002");
            Ok(())
        });
    }

    #[test]
    fn environment_beats_file_and_flags_beat_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RAFTMQ_LISTEN_ADDR", "127.0.0.1:9002");
            jail.set_env("RAFTMQ_RAFT__HEARTBEAT_INTERVAL_MS", "100");
            jail.set_env("RAFTMQ_ENDPOINTS", "not-a-setting-of-the-server");
            let config = load_str(GOOD).unwrap();
            assert!(config.raft.quiet_idle_groups, "on by default");
            jail.set_env("RAFTMQ_RAFT__QUIET_IDLE_GROUPS", "false");
            let config = load_str(GOOD).unwrap();
            assert_eq!(config.listen_addr.to_string(), "127.0.0.1:9002");
            assert_eq!(config.raft.heartbeat_interval_ms, 100);
            assert!(!config.raft.quiet_idle_groups);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node.toml");
            std::fs::write(&path, GOOD).unwrap();
            let overrides =
                ConfigOverrides { listen_addr: Some("127.0.0.1:9999".parse().unwrap()), ..Default::default() };
            let config = ServerConfig::load(Some(&path), overrides).unwrap();
            assert_eq!(config.listen_addr.to_string(), "127.0.0.1:9999");
            Ok(())
        });
    }

    #[test]
    fn memtable_budget_from_file_environment_and_flag() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(load_str(GOOD).unwrap().storage.memtable_budget_bytes(), 512 << 20, "the default");
            let in_file = format!("{GOOD}\n[storage]\nmemtable_budget_mib = 128\n");
            assert_eq!(load_str(&in_file).unwrap().storage.memtable_budget_mib, 128);
            jail.set_env("RAFTMQ_STORAGE__MEMTABLE_BUDGET_MIB", "64");
            assert_eq!(load_str(&in_file).unwrap().storage.memtable_budget_mib, 64);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node.toml");
            std::fs::write(&path, &in_file).unwrap();
            let overrides = ConfigOverrides { memtable_budget_mib: Some(32), ..Default::default() };
            let config = ServerConfig::load(Some(&path), overrides).unwrap();
            assert_eq!(config.storage.memtable_budget_bytes(), 32 << 20);
            Ok(())
        });
    }

    #[test]
    fn worker_threads_from_file_environment_and_flag() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(load_str(GOOD).unwrap().worker_threads, None, "one per core unless set");
            let in_file = format!("worker_threads = 3\n{GOOD}");
            assert_eq!(load_str(&in_file).unwrap().worker_threads, Some(3));
            jail.set_env("RAFTMQ_WORKER_THREADS", "2");
            assert_eq!(load_str(&in_file).unwrap().worker_threads, Some(2));
            let overrides = ConfigOverrides {
                node_id: Some(3),
                peers: Some(peers3()),
                worker_threads: Some(1),
                ..Default::default()
            };
            assert_eq!(ServerConfig::load(None, overrides).unwrap().worker_threads, Some(1));
            Ok(())
        });
    }

    #[test]
    fn flags_alone_are_enough_and_data_dir_defaults_from_node_id() {
        figment::Jail::expect_with(|_| {
            let overrides = ConfigOverrides { node_id: Some(3), peers: Some(peers3()), ..Default::default() };
            let config = ServerConfig::load(None, overrides).unwrap();
            assert_eq!(config.data_dir, PathBuf::from("./data/node-3"));
            Ok(())
        });
    }

    #[test]
    fn peers_from_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RAFTMQ_PEERS", "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003");
            jail.set_env("RAFTMQ_NODE_ID", "1");
            let config = ServerConfig::load(None, ConfigOverrides::default()).unwrap();
            assert_eq!(config.peers, peers3());
            Ok(())
        });
    }

    fn error_of(toml: &str) -> String {
        let mut message = String::new();
        figment::Jail::expect_with(|_| {
            message = load_str(toml).unwrap_err().to_string();
            Ok(())
        });
        message
    }

    #[test]
    fn bad_settings_are_named() {
        let missing_id = GOOD.replace("node_id = 2", "");
        assert!(error_of(&missing_id).contains("node_id"), "{}", error_of(&missing_id));
        let not_member = GOOD.replace("node_id = 2", "node_id = 4");
        assert!(error_of(&not_member).contains("node_id 4 is not in the peer list"));
        let bad_addr = GOOD.replace("listen_addr = \"127.0.0.1:7002\"", "listen_addr = \"nowhere\"");
        assert!(error_of(&bad_addr).contains("listen_addr"), "{}", error_of(&bad_addr));
        let unknown = format!("colour = \"blue\"\n{GOOD}");
        assert!(error_of(&unknown).contains("colour"), "{}", error_of(&unknown));
        let timeouts = format!("{GOOD}\n[raft]\nelection_timeout_min_ms = 3000\n");
        assert!(error_of(&timeouts).contains("raft.election_timeout_min_ms"));
        let dup = format!("{GOOD}\n[[peers]]\nid = 2\naddr = \"127.0.0.1:7009\"\n");
        assert!(error_of(&dup).contains("appears twice"));
        for budget in [0, 15, 65_537, 512 << 20] {
            let message = error_of(&format!("{GOOD}\n[storage]\nmemtable_budget_mib = {budget}\n"));
            assert!(message.contains("storage.memtable_budget_mib") && message.contains("in MiB"), "{message}");
        }
        for threads in [0, 1025] {
            let message = error_of(&format!("worker_threads = {threads}\n{GOOD}"));
            assert!(message.contains("worker_threads") && message.contains("between 1 and 1024"), "{message}");
        }
        let negative = error_of(&format!("worker_threads = -1\n{GOOD}"));
        assert!(negative.contains("worker_threads"), "{negative}");
        let unknown_storage = error_of(&format!("{GOOD}\n[storage]\nblock_cache_mib = 1\n"));
        assert!(unknown_storage.contains("block_cache_mib"), "{unknown_storage}");
    }

    #[test]
    fn missing_file_is_reported() {
        let error = ServerConfig::load(Some(Path::new("/nonexistent/raftmq.toml")), ConfigOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/raftmq.toml") && error.contains("no such file"), "{error}");
    }

    #[test]
    fn shipped_deploy_files_load() {
        figment::Jail::expect_with(|_| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
            for n in 1..=3 {
                let config = ServerConfig::load(Some(&root.join(format!("node{n}.toml"))), ConfigOverrides::default())
                    .unwrap_or_else(|e| panic!("deploy/node{n}.toml: {e}"));
                assert_eq!(config.node_id, n);
                assert_eq!(config.peers.len(), 3);
            }
            Ok(())
        });
    }
}
