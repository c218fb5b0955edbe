//! Plain data shared by every raftmq crate: ids, names, queue configuration and
//! the replicated commands with their outputs.
//!
//! Nothing here does IO or knows about tokio, prost or RocksDB. The enums in
//! [`command`] are what goes into the Raft log, so changing their shape changes
//! the on-disk format (see `raftmq-storage`'s format version).

pub mod command;
pub mod config;
pub mod ids;
pub mod message;
pub mod name;
pub mod receipt;
pub mod shared_body;

pub use command::{
    DeadReason, DeliveredMessage, DeliveryPolicy, MetaCommand, MetaResponse, QueueCommand, QueueLimit, QueueLimits,
    QueueRequest, QueueResponse, RaftRequest, RaftResponse, ReceiptFailure, ReceiptFailureReason, Retention,
    SeekTarget, SubscriptionStart,
};
pub use config::{ConfigError, ExpiryAction, QueueConfig, QueueConfigUpdate};
pub use ids::{GroupId, META_GROUP_ID, NodeId, Offset, SubscriptionId, TimestampMs};
pub use message::{MAX_CORRELATION_ID_BYTES, MAX_DEDUP_ID_BYTES, NewMessage, StoredMessage};
pub use name::{DEFAULT_SUBSCRIPTION, NameError, QueueName, QueueNameError, SubscriptionName};
pub use receipt::{Receipt, ReceiptParseError};
