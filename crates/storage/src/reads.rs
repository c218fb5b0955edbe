//! Where a node's reads were served from.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many items (log entries, message bodies) a node's readers got from
/// memory and how many from RocksDB, since the process started.
#[derive(Default)]
pub struct Reads {
    from_memory: AtomicU64,
    from_disk: AtomicU64,
}

impl Reads {
    pub fn from_memory(&self) -> u64 {
        self.from_memory.load(Ordering::Relaxed)
    }

    pub fn from_disk(&self) -> u64 {
        self.from_disk.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, from_memory: usize, from_disk: usize) {
        self.from_memory.fetch_add(from_memory as u64, Ordering::Relaxed);
        self.from_disk.fetch_add(from_disk as u64, Ordering::Relaxed);
    }
}
