//! The leader's clock, read only when a command is proposed.

use std::time::{SystemTime, UNIX_EPOCH};

use raftmq_types::TimestampMs;

pub fn now() -> TimestampMs {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    TimestampMs(ms)
}
