//! Key layout. Every key starts with the big-endian group id, so one group's
//! data is one contiguous range that `delete_range_cf` can drop at once.
//!
//! - `raft_log`:  group ‖ log index
//! - `raft_meta`: group ‖ tag (vote, last purged, last applied, membership, snapshot)
//! - `queue`:     group ‖ kind ‖ offset (kinds: header, body, dedup id,
//!   correlation id, message info, body in the log); delivery records are
//!   group ‖ 2 ‖ subscription ‖ offset, and the subscription list is
//!   group ‖ 7; group ‖ 0 records the last snapshot installed.

use raftmq_types::{GroupId, Offset, SubscriptionId};

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_META: &str = "raft_meta";
pub const CF_QUEUE: &str = "queue";
pub const CF_META: &str = "meta";

/// Every key's first bytes: the big-endian group id.
pub const GROUP_PREFIX_LEN: usize = 8;
/// The group id and the one-byte kind (`queue`) or tag (`raft_meta`) after it.
pub const GROUP_KIND_PREFIX_LEN: usize = GROUP_PREFIX_LEN + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MetaTag {
    Vote = 1,
    LastPurged = 2,
    LastApplied = 3,
    Membership = 4,
    Snapshot = 5,
    Committed = 6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum QueueKind {
    /// Per-queue header: the next offset.
    Header = 1,
    /// A subscription's delivery record of a message (see `delivery_key`).
    Delivery = 2,
    Body = 3,
    /// A producer dedup id, keyed by the offset of the message that carried it.
    Dedup = 4,
    /// The correlation id of a stored message (a reply), keyed by its offset.
    Correlation = 5,
    /// What the state machine keeps of a message: publish time, size, expiry.
    MessageInfo = 6,
    /// The queue's subscription list (one record, offset 0).
    Subscriptions = 7,
    /// A message whose body is still in its log entry: where in the entry,
    /// and the rest of the message. A message has this record or a `Body`
    /// record, never both (see `raftmq_storage::queue_sm`).
    BodyInLog = 8,
}

pub fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The log index of a `raft_log` key, if it is one.
pub fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(8..16)?.try_into().ok()?))
}

pub fn meta_key(group: GroupId, tag: MetaTag) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = tag as u8;
    key
}

/// group ‖ 0, below every other key of the group in `queue`: the meta of the
/// last snapshot installed, written with the data it replaced the group's
/// data with (see `QueueStateMachine::install_snapshot`).
pub fn installed_snapshot_key(group: GroupId) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key
}

pub fn queue_key(group: GroupId, kind: QueueKind, offset: Offset) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = kind as u8;
    key[9..].copy_from_slice(&offset.0.to_be_bytes());
    key
}

/// The offset of a `queue` key, if it is one.
pub fn queue_offset(key: &[u8]) -> Option<Offset> {
    Some(Offset(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?)))
}

/// group ‖ 2 ‖ subscription ‖ offset: one subscription's records are contiguous.
pub fn delivery_key(group: GroupId, subscription: SubscriptionId, offset: Offset) -> [u8; 21] {
    let mut key = [0u8; 21];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = QueueKind::Delivery as u8;
    key[9..13].copy_from_slice(&subscription.0.to_be_bytes());
    key[13..].copy_from_slice(&offset.0.to_be_bytes());
    key
}

/// The subscription and offset of a delivery key, if it is one.
pub fn delivery_key_parts(key: &[u8]) -> Option<(SubscriptionId, Offset)> {
    let subscription = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?);
    let offset = u64::from_be_bytes(key.get(13..21)?.try_into().ok()?);
    Some((SubscriptionId(subscription), Offset(offset)))
}

/// `[start, end)` covering the delivery records of one subscription.
pub fn subscription_range(group: GroupId, subscription: SubscriptionId) -> ([u8; 21], Vec<u8>) {
    let start = delivery_key(group, subscription, Offset(0));
    let end = match subscription.0.checked_add(1) {
        Some(next) => delivery_key(group, SubscriptionId(next), Offset(0)).to_vec(),
        None => queue_key(group, QueueKind::Body, Offset(0)).to_vec(),
    };
    (start, end)
}

/// `[start, end)` covering every key of `group` in any column family.
pub fn group_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = group.to_be_bytes().to_vec();
    let end = match group.0.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        // Longer than any key, so above every key of the last group.
        None => vec![0xff; 18],
    };
    (start, end)
}

/// `[start, end)` covering one kind of queue record of `group`.
pub fn queue_kind_range(group: GroupId, kind: QueueKind) -> ([u8; 17], [u8; 17]) {
    let start = queue_key(group, kind, Offset(0));
    let mut end = start;
    end[8] = kind as u8 + 1;
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let mut keys = vec![log_key(GroupId(2), 1), log_key(GroupId(1), 300), log_key(GroupId(1), 2)];
        keys.sort();
        assert_eq!(keys, vec![log_key(GroupId(1), 2), log_key(GroupId(1), 300), log_key(GroupId(2), 1)]);
        assert_eq!(log_index(&log_key(GroupId(7), 99)), Some(99));
        assert_eq!(log_index(b"short"), None);
    }

    #[test]
    fn group_range_holds_exactly_the_group() {
        let (start, end) = group_range(GroupId(5));
        let inside = [
            log_key(GroupId(5), 0).to_vec(),
            log_key(GroupId(5), u64::MAX).to_vec(),
            meta_key(GroupId(5), MetaTag::Snapshot).to_vec(),
        ];
        for key in inside {
            assert!(key.as_slice() >= start.as_slice() && key.as_slice() < end.as_slice());
        }
        for key in [log_key(GroupId(4), u64::MAX).to_vec(), log_key(GroupId(6), 0).to_vec()] {
            assert!(!(key.as_slice() >= start.as_slice() && key.as_slice() < end.as_slice()));
        }
        let (start, end) = group_range(GroupId(u64::MAX));
        assert!(log_key(GroupId(u64::MAX), u64::MAX).as_slice() < end.as_slice());
        assert!(log_key(GroupId(u64::MAX), 0).as_slice() >= start.as_slice());
    }

    #[test]
    fn queue_kind_range_holds_one_kind() {
        let (start, end) = queue_kind_range(GroupId(3), QueueKind::Delivery);
        let d = queue_key(GroupId(3), QueueKind::Delivery, Offset(u64::MAX));
        let b = queue_key(GroupId(3), QueueKind::Body, Offset(0));
        let h = queue_key(GroupId(3), QueueKind::Header, Offset(u64::MAX));
        assert!(d >= start && d < end);
        assert!(!(b >= start && b < end));
        assert!(!(h >= start && h < end));
        assert_eq!(queue_offset(&d), Some(Offset(u64::MAX)));
        let record = delivery_key(GroupId(3), SubscriptionId(u32::MAX), Offset(u64::MAX));
        assert!(record.as_slice() >= start.as_slice() && record.as_slice() < end.as_slice());
    }

    #[test]
    fn subscription_range_holds_one_subscription() {
        let (start, end) = subscription_range(GroupId(3), SubscriptionId(1));
        let inside = delivery_key(GroupId(3), SubscriptionId(1), Offset(u64::MAX));
        assert!(inside.as_slice() >= start.as_slice() && inside.as_slice() < end.as_slice());
        assert_eq!(delivery_key_parts(&inside), Some((SubscriptionId(1), Offset(u64::MAX))));
        for outside in [
            delivery_key(GroupId(3), SubscriptionId(0), Offset(u64::MAX)),
            delivery_key(GroupId(3), SubscriptionId(2), Offset(0)),
        ] {
            assert!(!(outside.as_slice() >= start.as_slice() && outside.as_slice() < end.as_slice()));
        }
        let (start, end) = subscription_range(GroupId(3), SubscriptionId(u32::MAX));
        let last = delivery_key(GroupId(3), SubscriptionId(u32::MAX), Offset(u64::MAX));
        assert!(last.as_slice() >= start.as_slice() && last.as_slice() < end.as_slice());
    }
}
