//! The cold part of a deep backlog: messages the state machine keeps on disk
//! only, as runs of offsets.
//!
//! A message is *cold* when it is stored, has no expiry, no correlation id
//! and no delivery delay, and every subscription holding it has never
//! delivered it. Such a message needs nothing in memory but its offset and
//! who holds it, so contiguous ones collapse into one [`Run`]. The state
//! machine evicts cold messages when it holds more than its limit
//! ([`crate::QueueState::evict`]) and reads them back from a [`ColdStore`]
//! before a command could touch them.
//!
//! What is cold and what is in memory is a replica's own affair: every
//! command answers and changes the same whatever the split, so replicas may
//! evict at different times. The random test in `tests.rs` checks exactly
//! that, against a replica that never evicts.

use std::collections::BTreeMap;
use std::fmt;

use raftmq_types::{Offset, SubscriptionId};

use crate::MessageInfo;

/// Where evicted messages are read back from: the storage crate reads the
/// message infos from RocksDB. Every offset of a run is stored, and nothing
/// changes a cold message on disk, so a read returns what was evicted.
pub trait ColdStore {
    /// The infos of the stored messages from `from` (inclusive) to `to`
    /// (exclusive), in offset order.
    fn read_infos(&self, from: Offset, to: Offset) -> Result<Vec<(Offset, MessageInfo)>, ColdError>;
}

/// Reading cold messages back failed: a disk error, or a message that should
/// be stored is not. The state is unchanged by the command that needed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdError(pub String);

impl fmt::Display for ColdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading evicted messages back: {}", self.0)
    }
}

impl std::error::Error for ColdError {}

/// For a state that has never evicted anything: any read is a bug.
pub(crate) struct NothingEvicted;

impl ColdStore for NothingEvicted {
    fn read_infos(&self, from: Offset, to: Offset) -> Result<Vec<(Offset, MessageInfo)>, ColdError> {
        Err(ColdError(format!("messages {from}..{to} were evicted, but no store was given to read them")))
    }
}

/// Offsets `start..end` (the map key is `start`): all stored, all cold, all
/// held by exactly `holders`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    end: Offset,
    bytes: u64,
    /// Sorted.
    holders: Vec<SubscriptionId>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Cold {
    runs: BTreeMap<Offset, Run>,
    count: u64,
    bytes: u64,
}

impl Cold {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number and bytes of the cold messages.
    pub fn totals(&self) -> (u64, u64) {
        (self.count, self.bytes)
    }

    /// How many cold messages `sub` holds.
    pub fn held_by(&self, sub: SubscriptionId) -> u64 {
        self.runs.iter().filter(|(_, run)| run.holders.contains(&sub)).map(|(start, run)| run.end.0 - start.0).sum()
    }

    pub fn holds(&self, sub: SubscriptionId, offset: Offset) -> bool {
        self.run_at(offset).is_some_and(|(_, run)| run.holders.contains(&sub))
    }

    pub fn contains(&self, offset: Offset) -> bool {
        self.run_at(offset).is_some()
    }

    fn run_at(&self, offset: Offset) -> Option<(&Offset, &Run)> {
        self.runs.range(..=offset).next_back().filter(|(_, run)| offset < run.end)
    }

    /// The lowest run `sub` holds, as `start..end`.
    pub fn first_held_by(&self, sub: SubscriptionId) -> Option<(Offset, Offset)> {
        self.runs.iter().find(|(_, run)| run.holders.contains(&sub)).map(|(start, run)| (*start, run.end))
    }

    /// The lowest run, as `start..end`.
    pub fn first(&self) -> Option<(Offset, Offset)> {
        self.runs.first_key_value().map(|(start, run)| (*start, run.end))
    }

    /// The runs overlapping `from..to`, clipped to it, with their holders.
    pub fn overlapping(&self, from: Offset, to: Offset) -> Vec<(Offset, Offset, &[SubscriptionId])> {
        let first = self.run_at(from).map_or(from, |(start, _)| *start);
        self.runs
            .range(first..to)
            .map(|(start, run)| ((*start).max(from), run.end.min(to), run.holders.as_slice()))
            .filter(|(start, end, _)| start < end)
            .collect()
    }

    /// Adds one evicted message, joining the runs next to it when they have
    /// the same holders.
    pub fn push(&mut self, offset: Offset, size: u64, holders: Vec<SubscriptionId>) {
        debug_assert!(!self.contains(offset), "message {offset} evicted twice");
        debug_assert!(holders.is_sorted() && !holders.is_empty());
        self.count += 1;
        self.bytes += size;
        let next = Offset(offset.0 + 1);
        let mut run = Run { end: next, bytes: size, holders };
        if self.runs.get(&next).is_some_and(|above| above.holders == run.holders) {
            let above = self.runs.remove(&next).expect("checked");
            run.end = above.end;
            run.bytes += above.bytes;
        }
        if let Some((_, below)) = self.runs.range_mut(..offset).next_back()
            && below.end == offset
            && below.holders == run.holders
        {
            below.end = run.end;
            below.bytes += run.bytes;
            return;
        }
        self.runs.insert(offset, run);
    }

    /// Removes `start..upto` from the front of the run starting at `start`,
    /// whose messages are `loaded` (read back, `upto - start` of them).
    /// Returns the run's holders.
    pub fn take_front(&mut self, start: Offset, upto: Offset, loaded: &[(Offset, MessageInfo)]) -> Vec<SubscriptionId> {
        let mut run = self.runs.remove(&start).expect("take_front of a run that does not exist");
        debug_assert!(start < upto && upto <= run.end);
        let bytes: u64 = loaded.iter().map(|(_, info)| info.size).sum();
        self.count -= upto.0 - start.0;
        self.bytes -= bytes;
        let holders = run.holders.clone();
        if upto < run.end {
            run.bytes -= bytes;
            self.runs.insert(upto, run);
        }
        holders
    }

    /// Every run is non-empty, the runs do not overlap, and the totals add up.
    pub fn check_invariants(&self) {
        if cfg!(test) {
            let mut last_end = Offset(0);
            let (mut count, mut bytes) = (0, 0);
            for (start, run) in &self.runs {
                debug_assert!(*start >= last_end && *start < run.end, "cold runs overlap or are empty");
                last_end = run.end;
                count += run.end.0 - start.0;
                bytes += run.bytes;
            }
            debug_assert_eq!((count, bytes), (self.count, self.bytes), "cold totals are off");
        }
    }

    /// The runs as `(start, end, holders)`, for the state's invariant check.
    pub fn runs(&self) -> impl Iterator<Item = (Offset, Offset, &[SubscriptionId])> {
        self.runs.iter().map(|(start, run)| (*start, run.end, run.holders.as_slice()))
    }
}
