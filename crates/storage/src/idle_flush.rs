//! Flushes the memtables of a node that has stopped writing.
//!
//! The memtables are large (`storage.memtable_budget_mib`, 512 MiB by
//! default) so that a flush comes seldom under load: what it writes out is
//! what is live at that moment, and everything deleted in between is never
//! written. But a flush also comes only when they fill: a node whose queues
//! were drained and then left idle kept its memtables in memory and the WAL
//! files behind them on disk (hundreds of MiB per node) for as long as it
//! stayed idle, although almost nothing in them was live any more, and
//! replayed that WAL at a restart.
//!
//! So once the node has asked for no WAL sync (no log append, no vote: every
//! write to a queue is a log append first) for [`IDLE_FOR`], and its
//! memtables hold [`IDLE_FLUSH_MIN_BYTES`] or more, they are flushed, once
//! per idle spell. The flush is RocksDB's ordinary atomic flush of all
//! column families; the WAL files it makes obsolete are archived and
//! trimmed away like any others.

use std::time::Duration;

use tracing::{info, warn};

use crate::Storage;

/// How long a node must have asked for no WAL sync before its memtables
/// are flushed.
const IDLE_FOR: Duration = Duration::from_secs(10);
/// Memtables smaller than this stay as they are when the node goes idle.
const IDLE_FLUSH_MIN_BYTES: u64 = 8 * 1024 * 1024;
/// How often the node's activity is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Watches `storage` for idle spells and flushes its memtables in each (see
/// the module's doc). Runs until the task is dropped or aborted; wakes every
/// [`CHECK_EVERY`], reading two counters.
pub async fn flush_while_idle(storage: Storage) {
    let mut last_requests = storage.syncer().request_count();
    let mut quiet_since = tokio::time::Instant::now();
    let mut flushed_this_spell = false;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let requests = storage.syncer().request_count();
        if requests != last_requests {
            last_requests = requests;
            quiet_since = tokio::time::Instant::now();
            flushed_this_spell = false;
            continue;
        }
        if flushed_this_spell || quiet_since.elapsed() < IDLE_FOR {
            continue;
        }
        flushed_this_spell = true;
        let memtable_bytes = match storage.memtable_bytes() {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(error = %e, "could not read the memtables' size");
                continue;
            }
        };
        if memtable_bytes < IDLE_FLUSH_MIN_BYTES {
            continue;
        }
        let flushing = storage.clone();
        let flush = move || {
            flushing.flush_memtables()?;
            release_freed_memory();
            Ok::<(), crate::StorageError>(())
        };
        match tokio::task::spawn_blocking(flush).await {
            Ok(Ok(())) => info!(memtable_mib = memtable_bytes >> 20, "idle: memtables flushed"),
            Ok(Err(e)) => warn!(error = %e, "idle: could not flush the memtables"),
            Err(e) => warn!(error = %e, "idle: the memtable flush did not finish"),
        }
    }
}

/// Hands the memory that the flushed memtables freed back to the system:
/// glibc keeps freed heap memory for later allocations, so without this the
/// node's resident memory stayed where the memtables had taken it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}
