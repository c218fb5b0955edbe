//! Identifier newtypes that cross crate boundaries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node of the cluster. Openraft wants a plain integer here, so this one is
/// an alias rather than a newtype; it is never mixed with other integers.
pub type NodeId = u64;

/// A Raft group: the meta group or one queue. Keys in RocksDB are prefixed with
/// its big-endian bytes, so all data of a group is one contiguous key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct GroupId(pub u64);

/// The meta group (membership and queue catalog) always has group id 0; queue
/// groups are numbered from 1 by the meta state machine.
pub const META_GROUP_ID: GroupId = GroupId(0);

impl GroupId {
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// The position of a message in its queue, assigned at commit: 0, 1, 2, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A subscription of one queue, numbered in creation order by the queue's
/// state machine; `default` is 0. Never reused within a queue, so a receipt
/// from a deleted subscription never settles a message of a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct SubscriptionId(pub u32);

impl SubscriptionId {
    pub const DEFAULT: SubscriptionId = SubscriptionId(0);
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Milliseconds since the Unix epoch, as read by the leader that proposed a
/// command. Apply never reads a clock; it only sees these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct TimestampMs(pub u64);

impl TimestampMs {
    pub fn saturating_add_ms(self, ms: u64) -> TimestampMs {
        TimestampMs(self.0.saturating_add(ms))
    }
}

impl fmt::Display for TimestampMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
