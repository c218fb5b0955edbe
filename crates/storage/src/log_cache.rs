//! The newest log entries of each group, kept in memory from their append
//! until they are applied, so that replication and apply do not read back
//! and decode what was just written.
//!
//! Invariant: a group's cache is empty or holds a contiguous run of entries
//! that ends at the last entry the log store has written (a suffix of the
//! log). Appends add to its end; truncation cuts its end; apply, purge and
//! the byte budget take from its front. A read is served from the cache
//! where the range lies in it and from RocksDB for the rest, so a cache that
//! was emptied only costs reads, never changes what a read returns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::alias::EntryOf;
use openraft::entry::RaftEntry;
use raftmq_types::GroupId;

use crate::TypeConfig;

type Entry = EntryOf<TypeConfig>;

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
    reads: Arc<LogReads>,
}

impl LogCaches {
    /// The cache of `group`, made empty on first use.
    pub fn group(&self, group: GroupId) -> Arc<LogCache> {
        let mut groups = self.groups.lock().expect("log caches lock poisoned");
        groups
            .entry(group)
            .or_insert_with(|| Arc::new(LogCache { entries: Mutex::default(), reads: self.reads.clone() }))
            .clone()
    }

    /// Empties and forgets a deleted group's cache (a log store still open
    /// on the group reads nothing from it any more).
    pub fn remove(&self, group: GroupId) {
        if let Some(cache) = self.groups.lock().expect("log caches lock poisoned").remove(&group) {
            cache.truncate_after(None);
        }
    }

    pub fn reads(&self) -> &LogReads {
        &self.reads
    }
}

/// How many log entries the node's readers (replication and apply) got from
/// memory and how many from RocksDB, since the process started.
#[derive(Default)]
pub struct LogReads {
    from_memory: AtomicU64,
    from_disk: AtomicU64,
}

impl LogReads {
    pub fn from_memory(&self) -> u64 {
        self.from_memory.load(Ordering::Relaxed)
    }

    pub fn from_disk(&self) -> u64 {
        self.from_disk.load(Ordering::Relaxed)
    }

    pub(crate) fn count_from_disk(&self, n: usize) {
        self.from_disk.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// One group's cache.
pub(crate) struct LogCache {
    entries: Mutex<CachedEntries>,
    reads: Arc<LogReads>,
}

#[derive(Default)]
struct CachedEntries {
    /// Each entry with its encoded size, oldest first, indexes consecutive.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl CachedEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }
}

impl LogCache {
    /// Adds entries just written to the log, each with its encoded size; the
    /// first of them follows the last entry the log holds. Entries the cache
    /// held from that index on (a truncated log being overwritten) are
    /// replaced.
    pub fn append(&self, appended: Vec<(Entry, usize)>) {
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
        for (entry, size) in appended {
            debug_assert!(cached.entries.back().is_none_or(|(e, _)| e.index() + 1 == entry.index()));
            cached.bytes += size;
            cached.entries.push_back((entry, size));
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
        self.reads.from_memory.fetch_add(entries.len() as u64, Ordering::Relaxed);
        entries
    }

    /// The index after the last cached entry, if any is cached.
    #[cfg(test)]
    pub fn end(&self) -> Option<u64> {
        let cached = self.entries.lock().expect("log cache lock poisoned");
        cached.entries.back().map(|(e, _)| e.index() + 1)
    }

    pub fn reads(&self) -> &LogReads {
        &self.reads
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;

    fn entry(index: u64) -> (Entry, usize) {
        (Entry::new(openraft::testing::log_id::<TypeConfig>(1, 1, index), EntryPayload::Blank), 10)
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
    fn keeps_to_its_budget_but_always_the_newest_entry() {
        let cache = cache();
        let big = |index| (entry(index).0, GROUP_BUDGET_BYTES / 2);
        cache.append(vec![big(1), big(2)]);
        assert_eq!(indexes(&cache.get(0, None)), [1, 2]);
        cache.append(vec![big(3)]);
        assert_eq!(indexes(&cache.get(0, None)), [2, 3]);
        cache.append(vec![(entry(4).0, GROUP_BUDGET_BYTES * 2)]);
        assert_eq!(indexes(&cache.get(0, None)), [4]);
    }
}
