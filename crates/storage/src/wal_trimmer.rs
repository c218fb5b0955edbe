//! Deletes obsolete write-ahead log files a little at a time.
//!
//! Once a memtable flush has made a WAL file obsolete, RocksDB would delete
//! it at once: one `unlink` of the whole file (tens of MiB at half load, a
//! hundred and more at 64 KiB). On a file system mounted with online
//! `discard`, as this project's machines are, freeing that many blocks
//! discards them in one go, and every fsync on the disk (those of the other
//! nodes sharing it too) waits behind it: 8 ms for 36 MiB measured on its
//! own, 50-130 ms seen under load ("slow fsync of the write-ahead log", all
//! three nodes at once), and the fsync tail of a half-load run is where the
//! produce p99 comes from (docs/performance.md, ninth session).
//!
//! So RocksDB archives obsolete WAL files instead (`WAL_ttl_seconds`: a
//! rename into `archive/`, which frees nothing), and this thread shortens
//! the oldest archived file by [`CHUNK`] bytes every [`PAUSE`], then
//! removes it once it is that short: each truncation frees, and discards, a
//! chunk small enough to hold an fsync up by a millisecond or two. RocksDB
//! never reads archived files (recovery replays only the live WAL files),
//! and it still deletes archived files older than [`ARCHIVE_TTL_SECS`]
//! itself, should this thread fall that far behind (it can trim 400 MiB/s).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tracing::warn;

/// Bytes freed per truncation.
pub(crate) const CHUNK: u64 = 2 * 1024 * 1024;
/// The wait between truncations while files are left to trim.
const PAUSE: Duration = Duration::from_millis(5);
/// How often the archive is looked at when it was empty.
const IDLE_PAUSE: Duration = Duration::from_millis(100);
/// RocksDB deletes archived WAL files older than this itself (checking every
/// half of it): only a backstop, as the trimmer removes them within moments.
pub(crate) const ARCHIVE_TTL_SECS: u64 = 600;
/// RocksDB's name for the directory under the WAL directory.
const ARCHIVE_DIR: &str = "archive";

pub(crate) struct WalTrimmer {
    /// `None` only while dropping: closing the channel stops the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    trimmed: Arc<AtomicU64>,
}

impl WalTrimmer {
    /// Starts trimming the archive under `wal_dir` (the database directory).
    pub fn start(wal_dir: &Path) -> WalTrimmer {
        let archive = wal_dir.join(ARCHIVE_DIR);
        let (stop, stopped) = mpsc::channel::<()>();
        let trimmed = Arc::new(AtomicU64::new(0));
        let thread_trimmed = trimmed.clone();
        let thread = std::thread::Builder::new()
            .name("raftmq-wal-trim".into())
            .spawn(move || {
                let mut warned = false;
                loop {
                    let pause = match trim_step(&archive) {
                        Ok(Some(freed)) => {
                            thread_trimmed.fetch_add(freed, Ordering::Relaxed);
                            warned = false;
                            PAUSE
                        }
                        Ok(None) => IDLE_PAUSE,
                        Err(e) => {
                            // Once per run of failures; RocksDB's own deletion of
                            // old archived files still bounds the space.
                            if !warned {
                                warn!(error = %e, archive = %archive.display(), "could not trim an archived WAL file");
                                warned = true;
                            }
                            IDLE_PAUSE
                        }
                    };
                    // Ends when the trimmer is dropped (the sender with it).
                    if let Err(mpsc::RecvTimeoutError::Disconnected) = stopped.recv_timeout(pause) {
                        return;
                    }
                }
            })
            .expect("spawn the WAL trim thread");
        WalTrimmer { stop: Some(stop), thread: Some(thread), trimmed }
    }

    /// Bytes of archived WAL files freed so far (by truncation or removal).
    pub fn trimmed_bytes(&self) -> u64 {
        self.trimmed.load(Ordering::Relaxed)
    }
}

impl Drop for WalTrimmer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Frees up to [`CHUNK`] bytes of the oldest archived WAL file: cuts that
/// much off its end, or removes it if it is no longer than that. Returns the
/// bytes freed, or `None` when there is nothing to trim (no archive yet, or
/// an empty one).
fn trim_step(archive: &Path) -> std::io::Result<Option<u64>> {
    let Some(oldest) = oldest_wal_file(archive)? else { return Ok(None) };
    let file = match std::fs::OpenOptions::new().write(true).open(&oldest) {
        Ok(file) => file,
        // RocksDB's own purge may have removed it since the listing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > CHUNK {
        file.set_len(len - CHUNK)?;
        return Ok(Some(CHUNK));
    }
    drop(file);
    match std::fs::remove_file(&oldest) {
        Ok(()) => Ok(Some(len)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

/// The archived WAL file with the lowest number (RocksDB names them
/// `NNNNNN.log`, numbered in the order they were written).
fn oldest_wal_file(archive: &Path) -> std::io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(archive) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut oldest: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".log"))
            .and_then(|number| number.parse::<u64>().ok());
        if let Some(number) = number
            && oldest.as_ref().is_none_or(|(lowest, _)| number < *lowest)
        {
            oldest = Some((number, path));
        }
    }
    Ok(oldest.map(|(_, path)| path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_the_oldest_file_a_chunk_at_a_time_then_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(ARCHIVE_DIR);
        assert_eq!(trim_step(&archive).unwrap(), None, "no archive yet");
        std::fs::create_dir(&archive).unwrap();
        assert_eq!(trim_step(&archive).unwrap(), None, "an empty archive");
        let (older, newer) = (archive.join("000009.log"), archive.join("000010.log"));
        std::fs::write(&older, vec![1u8; (CHUNK + CHUNK / 2) as usize]).unwrap();
        std::fs::write(&newer, vec![2u8; 10]).unwrap();
        // Not a WAL file: left alone.
        std::fs::write(archive.join("LOCK"), b"").unwrap();

        assert_eq!(trim_step(&archive).unwrap(), Some(CHUNK));
        assert_eq!(std::fs::metadata(&older).unwrap().len(), CHUNK / 2, "cut from the end");
        assert_eq!(std::fs::metadata(&newer).unwrap().len(), 10, "the newer file waits its turn");
        assert_eq!(trim_step(&archive).unwrap(), Some(CHUNK / 2));
        assert!(!older.exists(), "removed once short");
        assert_eq!(trim_step(&archive).unwrap(), Some(10));
        assert!(!newer.exists());
        assert_eq!(trim_step(&archive).unwrap(), None);
        assert!(archive.join("LOCK").exists());
    }
}
