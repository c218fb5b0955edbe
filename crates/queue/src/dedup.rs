//! Producer dedup: the `dedup_id`s stored recently, each with the offset of
//! the message that carried it.
//!
//! An id is remembered until its expiry (the produce's time plus the queue's
//! dedup window), and at most [`MAX_DEDUP_IDS`] ids per queue are kept: past
//! that, the oldest is forgotten early. Both rules depend only on replicated
//! data, so every replica forgets the same ids at the same log index, and a
//! replica rebuilt from storage (records keyed by offset) is identical to one
//! that never restarted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use raftmq_types::{Offset, TimestampMs};

use crate::Change;

/// Memory bound of one queue's dedup index: about 150 bytes plus the id's
/// length per entry, so ~200 MB at most with 64-byte ids.
pub const MAX_DEDUP_IDS: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: Offset,
    expires_at: TimestampMs,
}

#[derive(Debug, Clone)]
pub struct DedupIndex {
    by_id: HashMap<Arc<str>, Entry>,
    /// The same entries by offset: oldest first, for expiry and eviction.
    by_offset: BTreeMap<Offset, Arc<str>>,
    /// [`MAX_DEDUP_IDS`]; smaller in tests.
    limit: usize,
}

impl Default for DedupIndex {
    fn default() -> Self {
        DedupIndex { by_id: HashMap::new(), by_offset: BTreeMap::new(), limit: MAX_DEDUP_IDS }
    }
}

impl DedupIndex {
    pub fn restore(entries: impl IntoIterator<Item = (Offset, String, TimestampMs)>) -> DedupIndex {
        let mut index = DedupIndex::default();
        for (offset, id, expires_at) in entries {
            let id: Arc<str> = id.into();
            index.by_offset.insert(offset, id.clone());
            index.by_id.insert(id, Entry { offset, expires_at });
        }
        index
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The offset `id` was stored at, if that was within its window.
    pub fn lookup(&self, id: &str, now: TimestampMs) -> Option<Offset> {
        self.by_id.get(id).filter(|entry| entry.expires_at > now).map(|entry| entry.offset)
    }

    /// Remembers that `id` was stored at `offset`, until `expires_at`.
    pub fn insert(&mut self, id: &str, offset: Offset, expires_at: TimestampMs, changes: &mut Vec<Change>) {
        // An expired entry for the same id that expiry has not reached yet.
        if let Some(old) = self.by_id.get(id).copied() {
            self.forget(old.offset, changes);
        }
        while self.by_id.len() >= self.limit {
            let Some((&oldest, _)) = self.by_offset.first_key_value() else { break };
            self.forget(oldest, changes);
        }
        let id: Arc<str> = id.into();
        self.by_offset.insert(offset, id.clone());
        self.by_id.insert(id.clone(), Entry { offset, expires_at });
        changes.push(Change::PutDedup { offset, id: id.to_string(), expires_at });
    }

    /// Forgets ids whose window has passed, oldest first, stopping at the
    /// first live one (an entry written under a leader with a later clock may
    /// hold back a few expired ones for a while; `lookup` ignores those).
    pub fn expire(&mut self, now: TimestampMs, changes: &mut Vec<Change>) {
        while let Some((&offset, id)) = self.by_offset.first_key_value() {
            if self.by_id[id].expires_at > now {
                break;
            }
            self.forget(offset, changes);
        }
    }

    fn forget(&mut self, offset: Offset, changes: &mut Vec<Change>) {
        if let Some(id) = self.by_offset.remove(&offset) {
            self.by_id.remove(&id);
            changes.push(Change::DeleteDedup { offset });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: u64) -> TimestampMs {
        TimestampMs(t)
    }

    #[test]
    fn the_oldest_id_is_forgotten_first_beyond_the_limit() {
        let mut index = DedupIndex { limit: 3, ..DedupIndex::default() };
        let mut changes = Vec::new();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            index.insert(id, Offset(i as u64), ms(1000), &mut changes);
        }
        assert_eq!(index.len(), 3);
        assert_eq!(index.lookup("a", ms(0)), None, "evicted");
        assert_eq!(index.lookup("d", ms(0)), Some(Offset(3)));
        assert!(changes.contains(&Change::DeleteDedup { offset: Offset(0) }));
    }

    #[test]
    fn expiry_stops_at_the_first_live_id_and_lookup_ignores_expired_ones() {
        let mut index = DedupIndex::default();
        let mut changes = Vec::new();
        // A later leader's clock ran behind: offset 1 expires before offset 0.
        index.insert("late", Offset(0), ms(500), &mut changes);
        index.insert("early", Offset(1), ms(200), &mut changes);
        changes.clear();
        index.expire(ms(300), &mut changes);
        assert!(changes.is_empty(), "offset 0 is live and holds back the expired offset 1");
        assert_eq!(index.lookup("early", ms(300)), None);
        assert_eq!(index.lookup("late", ms(300)), Some(Offset(0)));
        index.expire(ms(500), &mut changes);
        assert_eq!(changes, vec![Change::DeleteDedup { offset: Offset(0) }, Change::DeleteDedup { offset: Offset(1) }]);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn reusing_an_expired_id_replaces_its_record() {
        let mut index = DedupIndex::default();
        let mut changes = Vec::new();
        index.insert("x", Offset(5), ms(100), &mut changes);
        index.insert("y", Offset(4), ms(900), &mut changes); // holds back expiry of offset 5
        changes.clear();
        index.insert("x", Offset(7), ms(1100), &mut changes);
        assert_eq!(changes[0], Change::DeleteDedup { offset: Offset(5) });
        assert_eq!(index.len(), 2);
        assert_eq!(index.lookup("x", ms(1000)), Some(Offset(7)));
    }
}
