//! Per-queue configuration, set at creation and replicated in the catalog.

use serde::{Deserialize, Serialize};

use crate::{DeliveryPolicy, QueueName, Retention};

pub const DEFAULT_VISIBILITY_TIMEOUT_MS: u64 = 30_000;
pub const MAX_VISIBILITY_TIMEOUT_MS: u64 = 12 * 60 * 60 * 1000;
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// The hard ceiling for `max_message_bytes`: gRPC frames and Raft entries stay
/// reasonable below it.
pub const MAX_MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;
pub const MAX_DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
pub const DEFAULT_RETRY_BACKOFF_MIN_MS: u64 = 1_000;
pub const DEFAULT_RETRY_BACKOFF_MAX_MS: u64 = 5 * 60 * 1000;
/// The ceiling for either backoff bound, and for a nack's own delay.
pub const MAX_RETRY_BACKOFF_MS: u64 = MAX_VISIBILITY_TIMEOUT_MS;
pub const MAX_MAX_DELIVERIES: u32 = 10_000;
/// The ceiling for a message's time to live: one year.
pub const MAX_MESSAGE_TTL_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// The ceiling for `retention_ms`: one year.
pub const MAX_RETENTION_MS: u64 = MAX_MESSAGE_TTL_MS;
/// Most subscriptions per queue, `default` included.
pub const MAX_SUBSCRIPTIONS: usize = 64;

/// What happens to a message whose time to live runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ExpiryAction {
    /// It is deleted.
    #[default]
    Drop,
    /// It moves to the queue's dead-letter queue (deleted if it has none).
    DeadLetter,
}

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
    /// Redelivery backoff after a nack without a delay or an expired lease:
    /// `min · 2^(attempt−1)`, at most `max`, plus up to half again of jitter
    /// (never above `max`). 0 and 0 redeliver at once.
    pub retry_backoff_min_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// Deliveries after which a message that is not acked is dead; 0 is no limit.
    pub max_deliveries: u32,
    /// Where dead messages go; `None` drops them.
    pub dead_letter_queue: Option<QueueName>,
    /// Time to live of every message from its publish time; 0 is forever. A
    /// message's own TTL can only shorten it.
    pub message_ttl_ms: u64,
    pub expiry_action: ExpiryAction,
    /// How long messages that every subscription is done with stay stored,
    /// for seeking back and for new subscriptions; 0 is no age limit.
    /// Retention is off when both this and `retention_bytes` are 0.
    pub retention_ms: u64,
    /// Most bytes of such messages kept, oldest deleted first; 0 is no limit.
    pub retention_bytes: u64,
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
            retry_backoff_min_ms: DEFAULT_RETRY_BACKOFF_MIN_MS,
            retry_backoff_max_ms: DEFAULT_RETRY_BACKOFF_MAX_MS,
            max_deliveries: 0,
            dead_letter_queue: None,
            message_ttl_ms: 0,
            expiry_action: ExpiryAction::Drop,
            retention_ms: 0,
            retention_bytes: 0,
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
    #[error(
        "retry_backoff_min_ms ({min}) must not exceed retry_backoff_max_ms ({max}), which is at most {MAX_RETRY_BACKOFF_MS} (12 hours)"
    )]
    RetryBackoff { min: u64, max: u64 },
    #[error("max_deliveries must be at most {MAX_MAX_DELIVERIES} (0 is no limit), got {0}")]
    MaxDeliveries(u32),
    #[error("message_ttl_ms must be at most {MAX_MESSAGE_TTL_MS} (one year; 0 is forever), got {0}")]
    MessageTtl(u64),
    #[error(
        "retention_ms must be at most {MAX_RETENTION_MS} (one year; 0 with retention_bytes 0 keeps nothing), got {0}"
    )]
    Retention(u64),
    #[error("dead_letter_queue {0:?} does not exist; create it first")]
    DeadLetterQueueMissing(String),
    #[error("dead_letter_queue {0:?} is the queue itself; name another queue")]
    DeadLetterQueueIsSelf(String),
    #[error("queue {queue:?} is the dead-letter queue of {used_by:?}; change that queue's dead_letter_queue first")]
    InUseAsDeadLetterQueue { queue: String, used_by: String },
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
        if self.retry_backoff_min_ms > self.retry_backoff_max_ms || self.retry_backoff_max_ms > MAX_RETRY_BACKOFF_MS {
            return Err(ConfigError::RetryBackoff { min: self.retry_backoff_min_ms, max: self.retry_backoff_max_ms });
        }
        if self.max_deliveries > MAX_MAX_DELIVERIES {
            return Err(ConfigError::MaxDeliveries(self.max_deliveries));
        }
        if self.message_ttl_ms > MAX_MESSAGE_TTL_MS {
            return Err(ConfigError::MessageTtl(self.message_ttl_ms));
        }
        if self.retention_ms > MAX_RETENTION_MS {
            return Err(ConfigError::Retention(self.retention_ms));
        }
        Ok(())
    }

    /// The redelivery rules a lease, nack or sweep applies, stamped into the
    /// command by the leader with a jitter seed of its choosing.
    pub fn delivery_policy(&self, jitter_seed: u64) -> DeliveryPolicy {
        DeliveryPolicy {
            max_deliveries: self.max_deliveries,
            backoff_min_ms: self.retry_backoff_min_ms,
            backoff_max_ms: self.retry_backoff_max_ms,
            jitter_seed,
            dead_letter: self.dead_letter_queue.is_some(),
            dead_letter_expired: self.expiry_action == ExpiryAction::DeadLetter,
            retention: self.retention(),
        }
    }

    /// What the leader stamps into commands that can release a message.
    pub fn retention(&self) -> Retention {
        Retention { max_age_ms: self.retention_ms, max_bytes: self.retention_bytes }
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
    pub retry_backoff_min_ms: Option<u64>,
    pub retry_backoff_max_ms: Option<u64>,
    pub max_deliveries: Option<u32>,
    /// `Some(None)` removes the dead-letter queue.
    pub dead_letter_queue: Option<Option<QueueName>>,
    pub message_ttl_ms: Option<u64>,
    pub expiry_action: Option<ExpiryAction>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
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
            retry_backoff_min_ms: self.retry_backoff_min_ms.unwrap_or(config.retry_backoff_min_ms),
            retry_backoff_max_ms: self.retry_backoff_max_ms.unwrap_or(config.retry_backoff_max_ms),
            max_deliveries: self.max_deliveries.unwrap_or(config.max_deliveries),
            dead_letter_queue: self.dead_letter_queue.clone().unwrap_or_else(|| config.dead_letter_queue.clone()),
            message_ttl_ms: self.message_ttl_ms.unwrap_or(config.message_ttl_ms),
            expiry_action: self.expiry_action.unwrap_or(config.expiry_action),
            retention_ms: self.retention_ms.unwrap_or(config.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(config.retention_bytes),
        }
    }
}
