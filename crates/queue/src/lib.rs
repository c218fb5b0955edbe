//! The queue state machine: what every replica of a queue applies, in log order.
//!
//! [`QueueState::apply`] is synchronous and deterministic: no IO, no clock, no
//! randomness. Time arrives inside the command. Message bodies are not kept
//! here; apply reports what to persist as [`Change`]s, which the storage crate
//! writes in one RocksDB batch together with the applied log id.
//!
//! A queue is a message table (`table.rs`) and one or more subscriptions
//! (`subscription.rs`), each with its own delivery record per message it
//! holds: its leases, attempts and deaths. Every queue has `default`.

mod change;
mod cold;
mod dedup;
mod state;
mod subscription;
mod table;

pub use change::Change;
pub use cold::{ColdError, ColdStore};
pub use dedup::MAX_DEDUP_IDS;
pub use state::{DeadMessage, PeekedMessage, QueueState, QueueStats, SubscriptionList, retry_backoff_ms};
pub use subscription::{DeliveryState, Lease, SubscriptionStats};
pub use table::MessageInfo;

#[cfg(test)]
mod tests;
