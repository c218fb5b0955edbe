//! The newest log entries of each group, kept in memory from their append
//! until they are applied, so that replication and apply do not read back
//! and decode what was just written; each with the bytes its append wrote,
//! which the leader sends to followers as they are ([`EncodedEntries`]).
//!
//! Invariant: a group's cache is empty or holds a contiguous run of entries
//! that ends at the last entry the log store has written (a suffix of the
//! log). Appends add to its end; truncation cuts its end; apply, purge and
//! the byte budget take from its front. A read is served from the cache
//! where the range lies in it and from RocksDB for the rest, so a cache that
//! was emptied only costs reads, never changes what a read returns.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::alias::{EntryOf, LogIdOf};
use openraft::entry::RaftEntry;
use raftmq_types::GroupId;

use crate::TypeConfig;
use crate::log_bodies::BodyMoves;
use crate::reads::Reads;

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;

/// The most one group keeps, in encoded bytes, however far apply lags (a
/// follower catching up, a state machine slower than the log). Past it the
/// oldest entries are dropped, and read back from RocksDB when asked for.
/// The newest entry is kept whatever its size.
const GROUP_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// The caches of every group on a node, and how the node's log reads were
/// served; held by [`crate::Storage`].
#[derive(Default)]
pub(crate) struct LogCaches {
    groups: Mutex<HashMap<GroupId, Arc<LogCache>>>,
    reads: Arc<Reads>,
}

impl LogCaches {
    /// The cache of `group`, made empty on first use.
    pub fn group(&self, group: GroupId) -> Arc<LogCache> {
        let mut groups = self.groups.lock().expect("log caches lock poisoned");
        groups
            .entry(group)
            .or_insert_with(|| {
                Arc::new(LogCache {
                    entries: Mutex::default(),
                    received: Mutex::default(),
                    reads: self.reads.clone(),
                    moves: BodyMoves::default(),
                })
            })
            .clone()
    }

    /// Empties and forgets a deleted group's cache (a log store still open
    /// on the group reads nothing from it any more).
    pub fn remove(&self, group: GroupId) {
        if let Some(cache) = self.groups.lock().expect("log caches lock poisoned").remove(&group) {
            cache.truncate_after(None);
        }
    }

    pub fn reads(&self) -> &Reads {
        &self.reads
    }
}

/// The encoded entries of one group's log, for the transport: the leader
/// sends the bytes its log store wrote instead of encoding each entry again
/// for every follower, and a follower's log store writes the bytes it
/// received instead of encoding the entry once more. The bytes are
/// postcard's encoding of the entry either way, so what is sent and written
/// is the same as if each were encoded where it is needed.
#[derive(Clone)]
pub struct EncodedEntries(Arc<LogCache>);

impl EncodedEntries {
    pub(crate) fn new(cache: Arc<LogCache>) -> EncodedEntries {
        EncodedEntries(cache)
    }

    /// The bytes the log store wrote for `entry`, while it is in memory.
    pub fn encoded(&self, entry: &Entry) -> Option<Bytes> {
        self.0.encoded(entry)
    }

    /// Hands `encoded`, as received from the leader, to the log store's
    /// append of the entry `log_id` (kept within the group's byte budget).
    pub fn received(&self, log_id: LogId, encoded: Bytes) {
        self.0.receive(log_id, encoded)
    }
}

/// One group's cache.
pub(crate) struct LogCache {
    entries: Mutex<CachedEntries>,
    /// On a follower: entries as the leader sent them, encoded, until the
    /// log store appends them (see [`EncodedEntries::received`]).
    received: Mutex<ReceivedEntries>,
    reads: Arc<Reads>,
    /// Apply and purge of the group's bodies left in the log (see
    /// [`crate::log_bodies`]).
    moves: BodyMoves,
}

#[derive(Default)]
struct CachedEntries {
    /// Each entry with its encoding, oldest first, indexes consecutive.
    entries: VecDeque<(Entry, Bytes)>,
    bytes: usize,
}

impl CachedEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn pop_front(&mut self) {
        if let Some((_, encoded)) = self.entries.pop_front() {
            self.bytes -= encoded.len();
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, encoded)) = self.entries.pop_back() {
            self.bytes -= encoded.len();
        }
    }
}

/// Encoded entries a follower received, in the order received, within the
/// group's byte budget (the oldest go first).
#[derive(Default)]
struct ReceivedEntries {
    entries: VecDeque<(LogId, Bytes)>,
    bytes: usize,
}

impl ReceivedEntries {
    fn pop_front(&mut self) {
        if let Some((_, encoded)) = self.entries.pop_front() {
            self.bytes -= encoded.len();
        }
    }
}

impl LogCache {
    /// Adds entries just written to the log, each with the bytes written; the
    /// first of them follows the last entry the log holds. Entries the cache
    /// held from that index on (a truncated log being overwritten) are
    /// replaced.
    pub fn append(&self, appended: Vec<(Entry, Bytes)>) {
        let Some((first, _)) = appended.first() else { return };
        let first = first.index();
        let mut cached = self.entries.lock().expect("log cache lock poisoned");
        while cached.entries.back().is_some_and(|(e, _)| e.index() >= first) {
            cached.pop_back();
        }
        if cached.entries.back().is_some_and(|(e, _)| e.index() + 1 != first) {
            // Not contiguous (never expected: openraft appends right after
            // the last entry). Start over rather than hold a gap.
            *cached = CachedEntries::default();
        }
        for (entry, encoded) in appended {
            debug_assert!(cached.entries.back().is_none_or(|(e, _)| e.index() + 1 == entry.index()));
            cached.bytes += encoded.len();
            cached.entries.push_back((entry, encoded));
        }
        while cached.bytes > GROUP_BUDGET_BYTES && cached.entries.len() > 1 {
            cached.pop_front();
        }
    }

    /// Drops the entries up to and including `index`: applied (their state is
    /// written) or purged from the log.
    pub fn release_through(&self, index: u64) {
        let mut cached = self.entries.lock().expect("log cache lock poisoned");
        while cached.first_index().is_some_and(|first| first <= index) {
            cached.pop_front();
        }
    }

    /// Drops the entries after `index` (`None`: all), as the log is truncated.
    pub fn truncate_after(&self, index: Option<u64>) {
        let mut cached = self.entries.lock().expect("log cache lock poisoned");
        while cached.entries.back().is_some_and(|(e, _)| index.is_none_or(|index| e.index() > index)) {
            cached.pop_back();
        }
    }

    /// Clones of the cached entries with indexes in `start..end` (`None`: no
    /// end), in order; the range's part before the first of them is not in
    /// memory.
    pub fn get(&self, start: u64, end: Option<u64>) -> Vec<Entry> {
        let cached = self.entries.lock().expect("log cache lock poisoned");
        let Some(first_cached) = cached.first_index() else { return Vec::new() };
        let skip = (start.max(first_cached) - first_cached) as usize;
        let entries: Vec<Entry> = cached
            .entries
            .iter()
            .skip(skip)
            .take_while(|(e, _)| end.is_none_or(|end| e.index() < end))
            .map(|(e, _)| e.clone())
            .collect();
        self.reads.count(entries.len(), 0);
        entries
    }

    /// The bytes the log store wrote for `entry`, if it is cached (the same
    /// log id: the same entry, by Raft's log matching property).
    pub fn encoded(&self, entry: &Entry) -> Option<Bytes> {
        let cached = self.entries.lock().expect("log cache lock poisoned");
        let position = entry.index().checked_sub(cached.first_index()?)?;
        let (cached_entry, encoded) = cached.entries.get(usize::try_from(position).ok()?)?;
        (cached_entry.log_id() == entry.log_id()).then(|| encoded.clone())
    }

    /// The bytes the log store wrote for the entry at `index`, if it is
    /// cached (apply: a committed entry, the one the log holds there).
    pub fn encoded_at(&self, index: u64) -> Option<Bytes> {
        let cached = self.entries.lock().expect("log cache lock poisoned");
        let position = index.checked_sub(cached.first_index()?)?;
        cached.entries.get(usize::try_from(position).ok()?).map(|(_, encoded)| encoded.clone())
    }

    pub fn body_moves(&self) -> &BodyMoves {
        &self.moves
    }

    /// Keeps `encoded`, the leader's encoding of the entry `log_id`, for the
    /// log store's append of that entry ([`Self::take_received`]).
    pub fn receive(&self, log_id: LogId, encoded: Bytes) {
        let mut received = self.received.lock().expect("log cache lock poisoned");
        received.bytes += encoded.len();
        received.entries.push_back((log_id, encoded));
        while received.bytes > GROUP_BUDGET_BYTES && received.entries.len() > 1 {
            received.pop_front();
        }
    }

    /// The received encoding of `entry`, if it was kept. Entries received
    /// for its index or earlier ones are forgotten on the way (answered, or
    /// dropped by openraft, or an older leader's); what was received for
    /// later entries stays.
    pub fn take_received(&self, entry: &Entry) -> Option<Bytes> {
        let mut received = self.received.lock().expect("log cache lock poisoned");
        let (index, log_id) = (entry.index(), entry.log_id());
        let mut found = None;
        let mut dropped = 0;
        received.entries.retain(|(received_id, encoded)| {
            if received_id.index() > index {
                return true;
            }
            if found.is_none() && *received_id == log_id {
                found = Some(encoded.clone());
            }
            dropped += encoded.len();
            false
        });
        received.bytes -= dropped;
        found
    }

    /// The index after the last cached entry, if any is cached.
    #[cfg(test)]
    pub fn end(&self) -> Option<u64> {
        let cached = self.entries.lock().expect("log cache lock poisoned");
        cached.entries.back().map(|(e, _)| e.index() + 1)
    }

    pub fn reads(&self) -> &Reads {
        &self.reads
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;

    fn entry(index: u64) -> (Entry, Bytes) {
        (Entry::new(openraft::testing::log_id::<TypeConfig>(1, 1, index), EntryPayload::Blank), sized(10))
    }

    fn sized(len: usize) -> Bytes {
        Bytes::from(vec![0; len])
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.index()).collect()
    }

    fn cache() -> Arc<LogCache> {
        LogCaches::default().group(GroupId(1))
    }

    #[test]
    fn serves_the_part_of_a_range_it_holds() {
        let cache = cache();
        cache.append((5..10).map(entry).collect());
        assert_eq!(indexes(&cache.get(3, Some(8))), [5, 6, 7]);
        assert_eq!(indexes(&cache.get(7, None)), [7, 8, 9]);
        assert!(cache.get(10, None).is_empty());
        assert!(cache.get(0, Some(5)).is_empty());
        assert_eq!(cache.reads().from_memory(), 3 + 3);
    }

    #[test]
    fn apply_and_purge_take_from_the_front_truncation_from_the_end() {
        let cache = cache();
        cache.append((1..=10).map(entry).collect());
        cache.release_through(3);
        assert_eq!(indexes(&cache.get(0, None)), (4..=10).collect::<Vec<_>>());
        cache.truncate_after(Some(7));
        assert_eq!(cache.end(), Some(8));
        // Overwriting from 6 replaces 6 and 7.
        cache.append((6..=8).map(entry).collect());
        assert_eq!(indexes(&cache.get(0, None)), [4, 5, 6, 7, 8]);
        cache.truncate_after(None);
        assert_eq!(cache.end(), None);
    }

    #[test]
    fn a_gap_empties_the_cache_instead_of_holding_it() {
        let cache = cache();
        cache.append((1..=3).map(entry).collect());
        cache.append((7..=8).map(entry).collect());
        assert_eq!(indexes(&cache.get(0, None)), [7, 8]);
    }

    #[test]
    fn gives_the_encoding_of_the_entry_with_the_same_log_id() {
        let cache = cache();
        cache.append((5..8).map(|i| (entry(i).0, sized(i as usize))).collect());
        assert_eq!(cache.encoded(&entry(6).0).map(|b| b.len()), Some(6));
        assert_eq!(cache.encoded(&entry(4).0), None);
        assert_eq!(cache.encoded(&entry(8).0), None);
        let other_term = Entry::new(openraft::testing::log_id::<TypeConfig>(2, 1, 6), EntryPayload::Blank);
        assert_eq!(cache.encoded(&other_term), None);
    }

    #[test]
    fn received_entries_are_taken_by_log_id_and_stale_ones_forgotten() {
        let cache = cache();
        let received = |term, index, len| {
            let log_id = openraft::testing::log_id::<TypeConfig>(term, 1, index);
            cache.receive(log_id, sized(len));
            Entry::new(log_id, EntryPayload::Blank)
        };
        // A stream of an old leader (term 1) cut short, then the new one's.
        received(1, 5, 1);
        received(1, 6, 1);
        let new5 = received(2, 5, 25);
        let new6 = received(2, 6, 26);
        // Appended in order: the old term's 5 is passed over, its 6 stays
        // until 6 is appended.
        assert_eq!(cache.take_received(&new5).map(|b| b.len()), Some(25));
        // An entry never received is not found, and what follows it stays.
        assert_eq!(cache.take_received(&entry(4).0), None);
        assert_eq!(cache.take_received(&new6).map(|b| b.len()), Some(26));
        assert_eq!(cache.take_received(&new6), None);
        assert_eq!(cache.received.lock().unwrap().bytes, 0);
    }

    #[test]
    fn received_entries_keep_to_the_budget() {
        let cache = cache();
        let log_id = |index| openraft::testing::log_id::<TypeConfig>(1, 1, index);
        cache.receive(log_id(1), sized(GROUP_BUDGET_BYTES / 2));
        cache.receive(log_id(2), sized(GROUP_BUDGET_BYTES / 2));
        cache.receive(log_id(3), sized(1));
        assert_eq!(cache.take_received(&entry(1).0), None);
        assert!(cache.take_received(&entry(2).0).is_some());
    }

    #[test]
    fn keeps_to_its_budget_but_always_the_newest_entry() {
        let cache = cache();
        let big = |index| (entry(index).0, sized(GROUP_BUDGET_BYTES / 2));
        cache.append(vec![big(1), big(2)]);
        assert_eq!(indexes(&cache.get(0, None)), [1, 2]);
        cache.append(vec![big(3)]);
        assert_eq!(indexes(&cache.get(0, None)), [2, 3]);
        cache.append(vec![(entry(4).0, sized(GROUP_BUDGET_BYTES * 2))]);
        assert_eq!(indexes(&cache.get(0, None)), [4]);
    }
}
