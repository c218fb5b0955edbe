//! When a queue group's log has grown enough to snapshot and purge.
//!
//! A queue group's snapshot is only its applied position (the data is the
//! queue's keys), so building one costs a RocksDB write, and purging behind
//! it costs a range deletion, written to the memtables like apply's writes
//! (`ApplyWrite::Unlogged`). An entry purged before the next memtable flush
//! never reaches an SST file: the flush drops what the deletion covers. So
//! the log is snapshotted and purged by its size, every
//! [`SNAPSHOT_EVERY_BYTES`] appended: at most that much of each group's log
//! (plus what replication to a follower still holds) is written out at a
//! flush, rather than every entry since the last snapshot: with messages
//! that do not compress, each body was written once more per node
//! (docs/performance.md, twelfth session).
//!
//! The log store counts the bytes it appends ([`LogGrowth`]); a task of the
//! group (in `raftmq-raft`) waits on [`SnapshotDue`] and asks openraft for a
//! snapshot, after which openraft purges the log behind it.
//!
//! A purge may keep entries on disk that openraft sees purged: those still
//! holding stored bodies, or appended less than `KEEP_IN_LOG` before
//! (`crate::log_bodies`). They go at a later purge, and by size alone that
//! comes only after another [`SNAPSHOT_EVERY_BYTES`] of appends: a queue
//! drained and then left idle would keep them on disk for good. So a
//! snapshot is also due once the log has kept entries, has grown since the
//! last snapshot, and then saw no append for [`TIDY_WHEN_QUIET_FOR`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// A queue group builds a snapshot (and purges its log behind it) each time
/// this many bytes of entries were appended to its log since the last. A
/// follower further behind than the log left catches up from a snapshot.
pub const SNAPSHOT_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// A queue group whose last purge kept entries on disk, and that appended
/// since its last snapshot, snapshots (and so purges again) once it has
/// appended nothing for this long.
pub const TIDY_WHEN_QUIET_FOR: Duration = Duration::from_secs(2);

/// The log store's side: counts appended bytes, and tells [`SnapshotDue`]
/// when they pass [`SNAPSHOT_EVERY_BYTES`], or when a log with kept entries
/// (see [`LogGrowth::kept_entries`]) takes its first append since the last
/// snapshot. Dropping it (with the log store) ends the waits.
pub(crate) struct LogGrowth {
    appended: Arc<AtomicU64>,
    kept: Arc<AtomicBool>,
    due: watch::Sender<()>,
    /// [`TIDY_WHEN_QUIET_FOR`], shorter in tests.
    quiet: Duration,
}

impl Default for LogGrowth {
    /// A log just opened counts as one byte short of a snapshot: its first
    /// append makes one due. How much log it holds from before (appended,
    /// perhaps applied again since a crash, not yet purged) is not known
    /// without reading it, and a node restarted more often than it appends
    /// `SNAPSHOT_EVERY_BYTES` would otherwise never purge (seen in a fault
    /// run with a kill every few seconds: one purge in ten minutes).
    fn default() -> LogGrowth {
        LogGrowth {
            appended: Arc::new(AtomicU64::new(SNAPSHOT_EVERY_BYTES - 1)),
            kept: Arc::default(),
            due: watch::Sender::new(()),
            quiet: TIDY_WHEN_QUIET_FOR,
        }
    }
}

impl LogGrowth {
    /// Counts `bytes` more appended.
    pub fn appended(&self, bytes: u64) {
        let before = self.appended.fetch_add(bytes, Ordering::Relaxed);
        let crossed = before < SNAPSHOT_EVERY_BYTES && before + bytes >= SNAPSHOT_EVERY_BYTES;
        // The first append since a snapshot starts the quiet wait of a log
        // with kept entries.
        let tidy_wait = before == 0 && self.kept.load(Ordering::Relaxed);
        if crossed || tidy_wait {
            self.due.send_replace(());
        }
    }

    /// Says whether the last purge left entries on disk that openraft sees
    /// purged (see the module's doc).
    pub fn kept_entries(&self, kept: bool) {
        if !self.kept.swap(kept, Ordering::Relaxed) && kept {
            self.due.send_replace(());
        }
    }

    /// A waiter for the next snapshot due. One per log.
    pub fn subscribe(&self) -> SnapshotDue {
        SnapshotDue {
            appended: self.appended.clone(),
            kept: self.kept.clone(),
            due: self.due.subscribe(),
            quiet: self.quiet,
        }
    }
}

/// Waits until a queue group's log has grown by [`SNAPSHOT_EVERY_BYTES`]
/// since the last time it said so, or until a log with kept entries goes
/// quiet (see the module's doc). Holds neither the log store nor its data.
pub struct SnapshotDue {
    appended: Arc<AtomicU64>,
    kept: Arc<AtomicBool>,
    due: watch::Receiver<()>,
    quiet: Duration,
}

impl SnapshotDue {
    /// Returns `true` once [`SNAPSHOT_EVERY_BYTES`] were appended since the
    /// last `true` (counting restarts from there), or once the last purge
    /// kept entries and the log, grown since the last `true`, then took no
    /// append for [`TIDY_WHEN_QUIET_FOR`]; and `false` once the log store is
    /// gone (the group stopped). An idle group's waiter never wakes; a busy
    /// one with kept entries looks at its log's growth once per
    /// [`TIDY_WHEN_QUIET_FOR`].
    pub async fn next(&mut self) -> bool {
        loop {
            let appended = self.appended.load(Ordering::Relaxed);
            if appended >= SNAPSHOT_EVERY_BYTES {
                self.appended.fetch_sub(appended, Ordering::Relaxed);
                return true;
            }
            if appended > 0 && self.kept.load(Ordering::Relaxed) {
                match tokio::time::timeout(self.quiet, self.due.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return false,
                    Err(_quiet) if self.appended.load(Ordering::Relaxed) == appended => {
                        self.appended.fetch_sub(appended, Ordering::Relaxed);
                        return true;
                    }
                    Err(_still_appending) => continue,
                }
            }
            if self.due.changed().await.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn due_within(due: &mut SnapshotDue, wait: Duration) -> Option<bool> {
        tokio::time::timeout(wait, due.next()).await.ok()
    }

    #[tokio::test]
    async fn due_at_the_first_append_then_once_per_threshold_and_done_when_the_log_is_gone() {
        let growth = LogGrowth::default();
        let mut due = growth.subscribe();
        let short = Duration::from_millis(50);
        assert_eq!(due_within(&mut due, short).await, None, "nothing appended yet");
        growth.appended(1);
        assert_eq!(due_within(&mut due, short).await, Some(true), "a log just opened snapshots at its first append");

        growth.appended(SNAPSHOT_EVERY_BYTES - 1);
        assert_eq!(due_within(&mut due, short).await, None, "one byte short");
        growth.appended(1);
        assert_eq!(due_within(&mut due, short).await, Some(true));
        assert_eq!(due_within(&mut due, short).await, None, "counting starts over");

        // Appends while nobody waits, past the threshold twice: one snapshot
        // covers them all, and the count starts over from there.
        growth.appended(3 * SNAPSHOT_EVERY_BYTES);
        assert_eq!(due_within(&mut due, short).await, Some(true));
        assert_eq!(due_within(&mut due, short).await, None);

        // A waiter already parked is woken by the append that crosses.
        let waiter = tokio::spawn(async move {
            let result = due.next().await;
            (result, due)
        });
        tokio::time::sleep(short).await;
        growth.appended(SNAPSHOT_EVERY_BYTES);
        let (result, mut due) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(result);

        drop(growth);
        assert_eq!(due_within(&mut due, Duration::from_secs(5)).await, Some(false), "the log store is gone");
    }

    #[tokio::test]
    async fn a_log_with_kept_entries_is_due_once_it_goes_quiet_after_appends() {
        let quiet = Duration::from_millis(200);
        let growth = LogGrowth { quiet, ..LogGrowth::default() };
        let mut due = growth.subscribe();
        growth.appended(1);
        assert_eq!(due_within(&mut due, quiet / 4).await, Some(true), "the first append");

        growth.appended(1);
        assert_eq!(due_within(&mut due, 3 * quiet).await, None, "appended and quiet, but nothing kept");

        growth.kept_entries(true);
        assert_eq!(due_within(&mut due, 2 * quiet).await, Some(true), "kept entries, appended, then quiet");
        assert_eq!(due_within(&mut due, 3 * quiet).await, None, "kept entries, but nothing appended since");

        // Appends every quarter of the quiet period: not due while they go on.
        let appending = async {
            for _ in 0..12 {
                growth.appended(100);
                tokio::time::sleep(quiet / 4).await;
            }
        };
        let (while_appending, ()) = tokio::join!(due_within(&mut due, 3 * quiet), appending);
        assert_eq!(while_appending, None, "appending all along");
        assert_eq!(due_within(&mut due, 2 * quiet).await, Some(true), "quiet after the appends");

        // A purge that deletes all it may: the next appends wait for size.
        growth.kept_entries(false);
        growth.appended(100);
        assert_eq!(due_within(&mut due, 3 * quiet).await, None, "nothing kept");

        drop(growth);
        assert_eq!(due_within(&mut due, Duration::from_secs(5)).await, Some(false), "the log store is gone");
    }
}
