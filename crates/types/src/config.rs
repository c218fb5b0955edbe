//! Per-queue configuration, set at creation and replicated in the catalog.

use serde::{Deserialize, Serialize};

pub const DEFAULT_VISIBILITY_TIMEOUT_MS: u64 = 30_000;
pub const MAX_VISIBILITY_TIMEOUT_MS: u64 = 12 * 60 * 60 * 1000;
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// The hard ceiling for `max_message_bytes`: gRPC frames and Raft entries stay
/// reasonable below it.
pub const MAX_MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;
pub const MAX_DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// How long a consumed message stays invisible to other consumers unless
    /// the consumer asks for another duration.
    pub visibility_timeout_ms: u64,
    /// Largest accepted body plus headers, in bytes.
    pub max_message_bytes: u64,
    /// Number of replicas; capped at the cluster size when the queue is created.
    pub replication_factor: u32,
    /// How long a produced `dedup_id` is remembered; 0 turns dedup off.
    pub dedup_window_ms: u64,
    /// Most messages stored (acked ones do not count); 0 is no limit.
    pub max_messages: u64,
    /// Most bytes stored (body plus headers of unacked messages); 0 is no limit.
    pub max_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout_ms: DEFAULT_VISIBILITY_TIMEOUT_MS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            max_messages: 0,
            max_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("visibility_timeout_ms must be between 1 and {MAX_VISIBILITY_TIMEOUT_MS}, got {0}")]
    VisibilityTimeout(u64),
    #[error("max_message_bytes must be between 1 and {MAX_MAX_MESSAGE_BYTES}, got {0}")]
    MaxMessageBytes(u64),
    #[error("replication_factor must be 1 or more, got {0}")]
    ReplicationFactor(u32),
    #[error("dedup_window_ms must be at most {MAX_DEDUP_WINDOW_MS} (24 hours), got {0}")]
    DedupWindow(u64),
}

impl QueueConfig {
    /// The limits a produce must respect, stamped into the command by the leader.
    pub fn limits(&self) -> crate::QueueLimits {
        crate::QueueLimits { max_messages: self.max_messages, max_bytes: self.max_bytes }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.visibility_timeout_ms == 0 || self.visibility_timeout_ms > MAX_VISIBILITY_TIMEOUT_MS {
            return Err(ConfigError::VisibilityTimeout(self.visibility_timeout_ms));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MAX_MESSAGE_BYTES {
            return Err(ConfigError::MaxMessageBytes(self.max_message_bytes));
        }
        if self.replication_factor == 0 {
            return Err(ConfigError::ReplicationFactor(self.replication_factor));
        }
        if self.dedup_window_ms > MAX_DEDUP_WINDOW_MS {
            return Err(ConfigError::DedupWindow(self.dedup_window_ms));
        }
        Ok(())
    }
}

/// A change to some settings of an existing queue; `None` keeps the current
/// value. The replication factor is fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QueueConfigUpdate {
    pub visibility_timeout_ms: Option<u64>,
    pub max_message_bytes: Option<u64>,
    pub dedup_window_ms: Option<u64>,
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
}

impl QueueConfigUpdate {
    pub fn is_empty(&self) -> bool {
        *self == QueueConfigUpdate::default()
    }

    /// `config` with this update's fields replaced; not yet validated.
    pub fn applied_to(&self, config: &QueueConfig) -> QueueConfig {
        QueueConfig {
            visibility_timeout_ms: self.visibility_timeout_ms.unwrap_or(config.visibility_timeout_ms),
            max_message_bytes: self.max_message_bytes.unwrap_or(config.max_message_bytes),
            replication_factor: config.replication_factor,
            dedup_window_ms: self.dedup_window_ms.unwrap_or(config.dedup_window_ms),
            max_messages: self.max_messages.unwrap_or(config.max_messages),
            max_bytes: self.max_bytes.unwrap_or(config.max_bytes),
        }
    }
}
