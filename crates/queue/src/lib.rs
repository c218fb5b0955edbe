//! The queue state machine: what every replica of a queue applies, in log order.
//!
//! [`QueueState::apply`] is synchronous and deterministic: no IO, no clock, no
//! randomness. Time arrives inside the command. Message bodies are not kept
//! here; apply reports what to persist as [`Change`]s, which the storage crate
//! writes in one RocksDB batch together with the applied log id.

mod change;
mod dedup;
mod state;

pub use change::Change;
pub use dedup::MAX_DEDUP_IDS;
pub use state::{DeliveryState, Lease, QueueState, QueueStats, retry_backoff_ms};

#[cfg(test)]
mod tests;
