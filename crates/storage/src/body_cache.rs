//! The bodies of a queue's newest messages, kept in memory from their apply
//! until they are delivered, so that Consume serves them without reading
//! RocksDB back and decoding them.
//!
//! Only the replica that serves a queue's consumers (its leader) keeps them:
//! a group keeps bodies while its bodies were read within the last
//! [`SERVING_WINDOW`], so a follower keeps none, and a new leader starts
//! after its first Consume.
//!
//! Invariant: the cache never decides what a read returns, only where it is
//! read from. A body is put in after apply wrote it to RocksDB and taken out
//! when apply deletes it, so whatever is cached is also on disk; a read takes
//! from memory what is there and reads the rest from RocksDB. A body
//! delivered once is taken out (a second delivery, after a lease ran out or a
//! nack, reads RocksDB), and a queue keeps the oldest bodies it has when it
//! reaches its budget, since a queue delivers oldest first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_queue::Change;
use raftmq_types::{Offset, StoredMessage};

use crate::reads::Reads;

/// The most one queue keeps, in body and header bytes.
const GROUP_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// The most all the queues of a node keep together.
const NODE_BUDGET_BYTES: usize = 256 * 1024 * 1024;
/// A group keeps bodies while it served a read this recently.
const SERVING_WINDOW: Duration = Duration::from_secs(10);

/// The body caches of the node's queue groups and how its body reads were
/// served; held by [`crate::Storage`].
#[derive(Default)]
pub(crate) struct BodyCaches {
    held: Arc<AtomicUsize>,
    reads: Arc<Reads>,
}

impl BodyCaches {
    /// A new, empty cache for one group's state machine.
    pub fn group(&self) -> BodyCache {
        BodyCache {
            bodies: Arc::new(Mutex::new(GroupBodies {
                messages: BTreeMap::new(),
                bytes: 0,
                node_held: self.held.clone(),
                last_read: None,
            })),
            reads: self.reads.clone(),
        }
    }

    pub fn reads(&self) -> &Reads {
        &self.reads
    }
}

/// One group's cache, shared by its state machine (which fills it) and its
/// readers (which take from it).
#[derive(Clone)]
pub(crate) struct BodyCache {
    bodies: Arc<Mutex<GroupBodies>>,
    reads: Arc<Reads>,
}

struct GroupBodies {
    messages: BTreeMap<Offset, StoredMessage>,
    bytes: usize,
    /// What every group of the node holds together.
    node_held: Arc<AtomicUsize>,
    last_read: Option<Instant>,
}

fn size(message: &StoredMessage) -> usize {
    message.size_bytes() as usize
}

impl GroupBodies {
    fn remove(&mut self, offset: Offset) -> Option<StoredMessage> {
        let message = self.messages.remove(&offset)?;
        self.bytes -= size(&message);
        self.node_held.fetch_sub(size(&message), Ordering::Relaxed);
        Some(message)
    }

    fn clear(&mut self) {
        self.node_held.fetch_sub(self.bytes, Ordering::Relaxed);
        self.messages.clear();
        self.bytes = 0;
    }

    fn serving(&self) -> bool {
        self.last_read.is_some_and(|at| at.elapsed() < SERVING_WINDOW)
    }

    /// Keeps `message` if this group is serving reads and both budgets have room.
    fn insert(&mut self, message: &StoredMessage) {
        let size = size(message);
        if !self.serving() || self.bytes + size > GROUP_BUDGET_BYTES {
            return;
        }
        let claimed = self.node_held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            (held + size <= NODE_BUDGET_BYTES).then_some(held + size)
        });
        if claimed.is_ok() {
            self.bytes += size;
            if let Some(replaced) = self.messages.insert(message.offset, message.clone()) {
                self.bytes -= self::size(&replaced);
                self.node_held.fetch_sub(self::size(&replaced), Ordering::Relaxed);
            }
        }
    }
}

impl Drop for GroupBodies {
    fn drop(&mut self) {
        self.clear();
    }
}

impl BodyCache {
    /// Follows what apply wrote to RocksDB (call it after the write): new
    /// messages are kept while this group serves reads and the budgets have
    /// room; deleted ones are forgotten.
    pub fn written(&self, changes: &[Change]) {
        let mut bodies = self.bodies.lock().expect("body cache lock poisoned");
        for change in changes {
            match change {
                Change::PutMessage { message, .. } => bodies.insert(message),
                Change::DeleteMessage { offset, .. } => {
                    bodies.remove(*offset);
                }
                Change::DeleteAllMessages => bodies.clear(),
                _ => {}
            }
        }
    }

    /// Forgets everything (the group's data was replaced by a snapshot).
    pub fn clear(&self) {
        self.bodies.lock().expect("body cache lock poisoned").clear();
    }

    /// The cached messages of `offsets`, position by position; `None` where
    /// a message must be read from RocksDB. A delivery (`deliver`) takes
    /// them out, counts the reads and marks the group as serving reads; a
    /// look at them (Peek) changes nothing.
    pub fn get(&self, offsets: &[Offset], deliver: bool) -> Vec<Option<StoredMessage>> {
        let mut bodies = self.bodies.lock().expect("body cache lock poisoned");
        if !deliver {
            return offsets.iter().map(|offset| bodies.messages.get(offset).cloned()).collect();
        }
        bodies.last_read = Some(Instant::now());
        let taken: Vec<Option<StoredMessage>> = offsets.iter().map(|offset| bodies.remove(*offset)).collect();
        let from_memory = taken.iter().filter(|m| m.is_some()).count();
        self.reads.count(from_memory, offsets.len() - from_memory);
        taken
    }

    #[cfg(test)]
    fn take(&self, offsets: &[Offset]) -> Vec<Option<StoredMessage>> {
        self.get(offsets, true)
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let bodies = self.bodies.lock().unwrap();
        (bodies.bytes, bodies.node_held.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use raftmq_queue::MessageInfo;
    use raftmq_types::TimestampMs;

    use super::*;

    fn put(offset: u64, len: usize) -> Change {
        let message = StoredMessage {
            offset: Offset(offset),
            publish_time: TimestampMs(0),
            body: vec![b'x'; len].into(),
            headers: Default::default(),
            correlation_id: None,
        };
        let info = MessageInfo {
            publish_time: TimestampMs(0),
            deliver_at: TimestampMs(0),
            size: len as u64,
            expires_at: None,
        };
        Change::PutMessage { message, info }
    }

    fn offsets(taken: &[Option<StoredMessage>]) -> Vec<Option<u64>> {
        taken.iter().map(|m| m.as_ref().map(|m| m.offset.0)).collect()
    }

    #[test]
    fn keeps_bodies_only_while_serving_reads() {
        let cache = BodyCaches::default().group();
        cache.written(&[put(0, 10)]);
        assert_eq!(offsets(&cache.take(&[Offset(0)])), [None], "a follower keeps nothing");
        cache.written(&[put(1, 10), put(2, 10)]);
        assert_eq!(offsets(&cache.take(&[Offset(2), Offset(1), Offset(3)])), [Some(2), Some(1), None]);
        // Taken once: a second delivery reads RocksDB.
        assert_eq!(offsets(&cache.take(&[Offset(1)])), [None]);
        let reads = &cache.reads;
        assert_eq!((reads.from_memory(), reads.from_disk()), (2, 3));
        assert_eq!(cache.held(), (0, 0));
    }

    #[test]
    fn a_look_leaves_bodies_in_place_and_counts_no_delivery() {
        let cache = BodyCaches::default().group();
        cache.take(&[]);
        cache.written(&[put(0, 10)]);
        assert_eq!(offsets(&cache.get(&[Offset(0), Offset(1)], false)), [Some(0), None]);
        assert_eq!(offsets(&cache.take(&[Offset(0)])), [Some(0)]);
        assert_eq!((cache.reads.from_memory(), cache.reads.from_disk()), (1, 0));
    }

    #[test]
    fn deleted_messages_are_forgotten() {
        let cache = BodyCaches::default().group();
        cache.take(&[]);
        cache.written(&[
            put(0, 10),
            put(1, 10),
            put(2, 10),
            Change::DeleteMessage { offset: Offset(1), size: 10, correlated: false },
        ]);
        assert_eq!(offsets(&cache.take(&[Offset(1)])), [None]);
        cache.written(&[Change::DeleteAllMessages]);
        assert_eq!(offsets(&cache.take(&[Offset(0), Offset(2)])), [None, None]);
        assert_eq!(cache.held(), (0, 0));
    }

    #[test]
    fn keeps_the_oldest_within_the_group_and_node_budgets() {
        let caches = BodyCaches::default();
        let (a, b) = (caches.group(), caches.group());
        a.take(&[]);
        b.take(&[]);
        let half = GROUP_BUDGET_BYTES / 2;
        a.written(&[put(0, half), put(1, half), put(2, 1)]);
        assert_eq!(a.held(), (GROUP_BUDGET_BYTES, GROUP_BUDGET_BYTES));
        assert_eq!(offsets(&a.take(&[Offset(0), Offset(1), Offset(2)])), [Some(0), Some(1), None]);
        // The node's budget is shared: groups fill it, and what one group
        // lets go of is the others' again, also when a group is dropped.
        let groups: Vec<_> = (0..NODE_BUDGET_BYTES / GROUP_BUDGET_BYTES).map(|_| caches.group()).collect();
        for group in &groups {
            group.take(&[]);
            group.written(&[put(0, half), put(1, half)]);
        }
        b.written(&[put(0, 1)]);
        assert_eq!(offsets(&b.take(&[Offset(0)])), [None], "the node's budget is spent");
        drop(groups);
        b.written(&[put(1, 1)]);
        assert_eq!(offsets(&b.take(&[Offset(1)])), [Some(1)]);
        assert_eq!(caches.held.load(Ordering::Relaxed), 0);
    }
}
