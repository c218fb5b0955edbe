//! Group commit for the write-ahead log.
//!
//! Every log append of every group on the node writes its batch, then asks the
//! syncer to make it durable. The syncer thread takes every request pending,
//! calls `flush_wal(true)` (an fsync) once, and completes them all. So N
//! appends arriving together cost one fsync instead of N.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use rocksdb::DB;
use tracing::{error, warn};

use crate::StorageError;
use crate::stages::{self, Stage};

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// An fsync this slow is logged: every append waiting for it waits as long
/// (the `fsync` stage in `GetClusterStatus` has the whole distribution).
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_millis(50);

pub struct WalSyncer {
    /// `None` only while dropping: closing the channel stops the thread.
    requests: Option<mpsc::Sender<Done>>,
    thread: Option<std::thread::JoinHandle<()>>,
    syncs: Arc<AtomicU64>,
    requests_total: Arc<AtomicU64>,
    /// Time spent inside `flush_wal(true)`, in microseconds.
    sync_micros: Arc<AtomicU64>,
}

impl WalSyncer {
    pub fn start(db: Arc<DB>) -> WalSyncer {
        let (requests, receiver) = mpsc::channel::<Done>();
        let syncs = Arc::new(AtomicU64::new(0));
        let thread_syncs = syncs.clone();
        let sync_micros = Arc::new(AtomicU64::new(0));
        let thread_micros = sync_micros.clone();
        let thread = std::thread::Builder::new()
            .name("raftmq-wal-sync".into())
            .spawn(move || {
                // Ends when every sender is gone, i.e. when the storage is dropped.
                while let Ok(first) = receiver.recv() {
                    let mut batch = vec![first];
                    batch.extend(receiver.try_iter());
                    let started = std::time::Instant::now();
                    let result = db.flush_wal(true).map_err(|e| e.to_string());
                    let elapsed = started.elapsed();
                    stages::record(Stage::Fsync, elapsed);
                    if elapsed >= SLOW_FSYNC {
                        warn!(
                            ms = elapsed.as_millis() as u64,
                            appends = batch.len(),
                            "slow fsync of the write-ahead log"
                        );
                    }
                    thread_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
                    thread_syncs.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = &result {
                        error!(error = %e, "fsync of the write-ahead log failed");
                    }
                    for done in batch {
                        done(result.clone());
                    }
                }
            })
            .expect("spawn the WAL sync thread");
        WalSyncer {
            requests: Some(requests),
            thread: Some(thread),
            syncs,
            requests_total: Arc::new(AtomicU64::new(0)),
            sync_micros,
        }
    }

    /// Calls `done` once everything written to the WAL before this call is on disk.
    pub fn sync_then(&self, done: impl FnOnce(Result<(), String>) + Send + 'static) -> Result<(), StorageError> {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        let requests = self.requests.as_ref().ok_or(StorageError::SyncerStopped)?;
        requests.send(Box::new(done)).map_err(|_| StorageError::SyncerStopped)
    }

    /// Waits until everything written to the WAL so far is on disk.
    pub async fn sync(&self) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync_then(move |result| {
            let _ = tx.send(result);
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Sync(e)),
            Err(_) => Err(StorageError::SyncerStopped),
        }
    }

    /// fsyncs performed so far.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Microseconds spent in fsyncs so far.
    pub fn sync_micros(&self) -> u64 {
        self.sync_micros.load(Ordering::Relaxed)
    }

    /// Sync requests received so far (each append or vote is one).
    pub fn request_count(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }
}

impl Drop for WalSyncer {
    /// Waits for pending syncs and for the thread to let go of the database,
    /// so that the database is closed when the last `Storage` is dropped.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
