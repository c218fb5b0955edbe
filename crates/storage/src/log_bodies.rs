//! Bodies written once per node: left in their log entry.
//!
//! A body reaches a replica in a log entry, which the replica writes (and
//! fsyncs) before anything applies it. Apply used to write the body a second
//! time, into the message's `Body` record: a second write batch copy and
//! memtable insert of every body, and a second blob write at a flush. Now,
//! when the body is a slice of the entry's bytes as the log store wrote them
//! (the log cache keeps entry and bytes together, and the entry's bodies are
//! slices of those bytes), apply writes a `BodyInLog` record instead: the
//! entry's index, where the body lies in the entry, and the rest of the
//! message. Otherwise (an entry read back from RocksDB, a body under
//! [`BODY_IN_LOG_MIN_BYTES`]) it writes the `Body` record as before. A
//! message has one of the two records, never both.
//!
//! The log store copies the bodies still stored out of the entries it
//! deletes ([`copy_out_of_log`]) in the write that deletes them, so no
//! record ever points at a deleted entry. It finds them without a lock, then
//! holds [`BodyMoves`] while it checks which are still stored and writes,
//! as apply does while it writes, so that a message deleted by apply is never
//! copied back. The entries before the first one that holds a stored
//! message's body are deleted at once; that one and those after it only
//! [`KEEP_IN_LOG`] after their append, so the bodies consumed and
//! acknowledged by then (most, when consumers keep up) are never copied, and
//! a memtable flush writes out no more of the log than the consumers lag
//! behind (up to that delay). A purge copies at most
//! [`COPY_PER_PURGE_BYTES`] of bodies; the entries it stops at stay for the
//! next purge. Readers resolve `BodyInLog` records through one
//! RocksDB snapshot together with the entry they point to.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raftmq_types::{GroupId, Offset, StoredMessage, TimestampMs};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::error::{decode, encode};
use crate::keys::{CF_QUEUE, CF_RAFT_LOG, QueueKind, log_key, queue_key, queue_kind_range, queue_offset};
use crate::{Storage, StorageError};

/// Bodies shorter than this are written into their `Body` record at apply:
/// copying them costs little, and their record needs no log entry read back.
pub const BODY_IN_LOG_MIN_BYTES: usize = 512;

/// A queue group's log entries are deleted no sooner than this after their
/// append: bodies still stored when their entry goes are copied out of it.
/// At 64 KiB messages under full load (`raftmq bench`, 4 producers × 64 in
/// flight, 4 consumers), 250 ms left 10-23% of the bodies to copy and 1 s
/// none; what is kept costs memtable space (about 90 MiB per node at that
/// load for this delay) and is written out at a flush.
pub const KEEP_IN_LOG: Duration = Duration::from_millis(500);

/// The most body bytes one purge copies out of the log. openraft runs a
/// purge inside the group's Raft task, so the group's appends and commits
/// wait for it: with nothing consumed, each purge (one per 8 MiB appended)
/// used to copy every body it found, 27-46 ms at the median and 274 ms at
/// most in a 10 million message backlog on 2 cores, and the produce p99
/// followed. Past this budget the walk stops at the next record; its entry
/// and those after it stay for a later purge, which continues from there.
/// Bodies that no purge has reached yet are written once, in their entry
/// (to a blob file at a flush, as a `Body` record's would be), but the
/// entry stays whole until a purge deletes it: with the bodies of its
/// acknowledged messages, until a purge after they are acknowledged
/// (docs/performance.md, twentieth session: 23% more messages per second
/// and a third of the produce p99 in a 10 million message backlog, 18% more
/// disk).
pub const COPY_PER_PURGE_BYTES: u64 = 1 << 20;

/// Whether a body of `len` bytes is long enough to be left in its log
/// entry: the one test of [`BODY_IN_LOG_MIN_BYTES`].
pub(crate) fn long_enough_for_log(len: u64) -> bool {
    len >= BODY_IN_LOG_MIN_BYTES as u64
}

/// Where a body lies in the value of its log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogBody {
    index: u64,
    start: u64,
    len: u64,
}

impl LogBody {
    /// `body`'s place in `encoded`, the value of log entry `index`, if it is
    /// a slice of it (and long enough to be worth leaving there).
    pub fn locate(index: u64, encoded: &Bytes, body: &Bytes) -> Option<LogBody> {
        if !long_enough_for_log(body.len() as u64) {
            return None;
        }
        let base = encoded.as_ptr() as usize;
        let start = (body.as_ptr() as usize).checked_sub(base)?;
        (start + body.len() <= encoded.len()).then_some(LogBody { index, start: start as u64, len: body.len() as u64 })
    }
}

/// The value of a `BodyInLog` record: where the body is, and the message
/// without it (decoded as a `StoredMessage` with an empty body).
pub(crate) fn encode_in_log(at: LogBody, message: &StoredMessage) -> Result<Vec<u8>, StorageError> {
    let without_body = WithoutBody {
        offset: message.offset,
        publish_time: message.publish_time,
        body: &[],
        headers: &message.headers,
        correlation_id: &message.correlation_id,
    };
    encode("message in the log", &(at, without_body))
}

/// A `StoredMessage` borrowed, with an empty body: the same fields in the
/// same order, so postcard writes what it writes for the message with its
/// body emptied, without apply copying the headers to make one.
#[derive(Serialize)]
struct WithoutBody<'a> {
    offset: Offset,
    publish_time: TimestampMs,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
    headers: &'a BTreeMap<String, String>,
    correlation_id: &'a Option<String>,
}

/// Held by apply while it writes a group's changes, and by the log store
/// while it copies bodies out of entries and deletes them: a message that
/// apply deletes is never copied back by a purge that read it before.
#[derive(Default)]
pub(crate) struct BodyMoves {
    lock: Mutex<()>,
    /// No message below this offset is stored, on disk either: set from the
    /// state machine's state once what it applied is written. A purge looks
    /// for bodies to copy from here, so it does not step over the deletions
    /// of every message acknowledged since the last purge (tens of
    /// thousands at full load).
    first_stored: AtomicU64,
}

impl BodyMoves {
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().expect("body moves lock poisoned")
    }

    pub fn first_stored(&self) -> Offset {
        Offset(self.first_stored.load(Ordering::Acquire))
    }

    /// Called with `offset` the state's first stored message, after the
    /// deletions of every message below it are written.
    pub fn stored_from(&self, offset: Offset) {
        self.first_stored.store(offset.0, Ordering::Release);
    }
}

/// How a node's applied bodies were written, since it started.
#[derive(Default)]
pub struct BodyWrites {
    in_log: AtomicU64,
    copied: AtomicU64,
}

impl BodyWrites {
    /// Bodies that apply left in their log entry (written once).
    pub fn left_in_log(&self) -> u64 {
        self.in_log.load(Ordering::Relaxed)
    }

    /// Of those, bodies copied out of their entry before it was deleted
    /// (written twice after all).
    pub fn copied_out_of_log(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    pub(crate) fn count_in_log(&self, n: u64) {
        self.in_log.fetch_add(n, Ordering::Relaxed);
    }
}

/// Reads the messages of `BodyInLog` records with their bodies, from the log
/// entries they point into, as of `options` (a reader sets a RocksDB
/// snapshot, under which records and entries agree). Keeps the last entry
/// read: consecutive messages are mostly in one entry.
pub(crate) struct FromLog<'a> {
    storage: &'a Storage,
    group: GroupId,
    last: Option<(u64, Bytes)>,
}

impl<'a> FromLog<'a> {
    pub fn new(storage: &'a Storage, group: GroupId) -> FromLog<'a> {
        FromLog { storage, group, last: None }
    }

    /// The message of the `BodyInLog` record `value`, body included.
    pub fn read(&mut self, value: &[u8], options: &ReadOptions) -> Result<StoredMessage, StorageError> {
        let (at, message) = decode_in_log(value)?;
        self.resolve(at, message, options)
    }

    /// `message` (of a `BodyInLog` record) with its body, found at `at`.
    fn resolve(
        &mut self,
        at: LogBody,
        mut message: StoredMessage,
        options: &ReadOptions,
    ) -> Result<StoredMessage, StorageError> {
        let missing = || StorageError::BodyNotInLog { offset: message.offset.0, index: at.index };
        let entry = match &self.last {
            Some((index, entry)) if *index == at.index => entry.clone(),
            _ => {
                let key = log_key(self.group, at.index);
                let Some(value) = self.storage.db().get_cf_opt(self.storage.cf(CF_RAFT_LOG), key, options)? else {
                    return Err(missing());
                };
                let entry = Bytes::from(value);
                self.last = Some((at.index, entry.clone()));
                entry
            }
        };
        let end = at.start.checked_add(at.len).filter(|end| *end <= entry.len() as u64).ok_or_else(missing)?;
        message.body = entry.slice(at.start as usize..end as usize);
        Ok(message)
    }
}

fn decode_in_log(value: &[u8]) -> Result<(LogBody, StoredMessage), StorageError> {
    decode("message in the log", value)
}

/// The bodies still in log entries up to `through`, copied out: found
/// without holding the group's [`BodyMoves`] (apply must not wait for the
/// walk and the reads of entries), written by [`BodyCopies::write_into`]
/// under it.
pub(crate) struct BodyCopies {
    /// Each message's `BodyInLog` key and its `Body` record.
    copies: Vec<(Vec<u8>, [u8; 17], Vec<u8>)>,
    /// Every `BodyInLog` record below this offset is copied or gone.
    pub next: Offset,
    /// The entry of the first `BodyInLog` record not copied (at `next`),
    /// if there is one: once the copies are written, no stored message's
    /// body is in an entry before it. Apply writes records only for the
    /// entries it applies (after those a purge deletes), so none appears
    /// there later.
    pub first_kept: Option<u64>,
}

/// Reads the body of every message whose body is in a log entry up to
/// `through` (none when `None`), starting at offset `from` (every
/// `BodyInLog` record below it was copied before, or its message deleted),
/// until the bodies read reach `budget` bytes ([`COPY_PER_PURGE_BYTES`]).
/// The entries are still there: only the purge that writes these copies
/// deletes them.
pub(crate) fn copy_out_of_log(
    storage: &Storage,
    group: GroupId,
    through: Option<u64>,
    from: Offset,
    budget: u64,
) -> Result<BodyCopies, StorageError> {
    let cf = storage.cf(CF_QUEUE);
    let (_, end) = queue_kind_range(group, QueueKind::BodyInLog);
    let start = queue_key(group, QueueKind::BodyInLog, from);
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(end);
    let mut copies = BodyCopies { copies: Vec::new(), next: from, first_kept: None };
    let mut reader = FromLog::new(storage, group);
    let mut read = 0;
    for item in storage.db().iterator_cf_opt(cf, options, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
        let (key, value) = item?;
        let offset = queue_offset(&key).ok_or(StorageError::MalformedKey { cf: CF_QUEUE })?;
        let (at, message) = decode_in_log(&value)?;
        if read >= budget || through.is_none_or(|through| at.index > through) {
            // Offsets rise with log indexes: every later record is in this
            // entry or a later one.
            copies.next = offset;
            copies.first_kept = Some(at.index);
            break;
        }
        read += at.len;
        let message = reader.resolve(at, message, &ReadOptions::default())?;
        let body_key = queue_key(group, QueueKind::Body, offset);
        copies.copies.push((key.into_vec(), body_key, encode("message", &message)?));
        copies.next = Offset(offset.0 + 1);
    }
    Ok(copies)
}

impl BodyCopies {
    /// Adds to `batch` the copies of the messages still stored (apply may
    /// have deleted some since they were read). The caller holds the
    /// group's [`BodyMoves`] from this call until `batch` is written.
    pub fn write_into(self, storage: &Storage, batch: &mut WriteBatch) -> Result<(), StorageError> {
        if self.copies.is_empty() {
            return Ok(());
        }
        let cf = storage.cf(CF_QUEUE);
        let keys: Vec<&[u8]> = self.copies.iter().map(|(key, _, _)| key.as_slice()).collect();
        let stored = storage.db().batched_multi_get_cf(cf, &keys, true);
        let mut copied = 0;
        for ((key, body_key, body), stored) in self.copies.iter().zip(stored) {
            if stored?.is_some() {
                batch.put_cf(cf, body_key, body);
                batch.delete_cf(cf, key);
                copied += 1;
            }
        }
        storage.body_writes().copied.fetch_add(copied, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_located_only_inside_the_entry() {
        let encoded = Bytes::from(vec![7u8; 4096]);
        let inside = encoded.slice(100..100 + BODY_IN_LOG_MIN_BYTES);
        assert_eq!(
            LogBody::locate(9, &encoded, &inside),
            Some(LogBody { index: 9, start: 100, len: BODY_IN_LOG_MIN_BYTES as u64 })
        );
        let whole_tail = encoded.slice(4096 - 600..);
        assert_eq!(LogBody::locate(9, &encoded, &whole_tail).map(|at| at.start + at.len), Some(4096));
        let short = encoded.slice(0..BODY_IN_LOG_MIN_BYTES - 1);
        assert_eq!(LogBody::locate(9, &encoded, &short), None, "too short to leave in the log");
        let elsewhere = Bytes::from(vec![7u8; 1000]);
        assert_eq!(LogBody::locate(9, &encoded, &elsewhere), None, "a copy, not a slice");
        let overlapping = Bytes::from(vec![7u8; 8192]);
        let past_the_end = overlapping.slice(4000..5000);
        let first_half = overlapping.slice(0..4096);
        assert_eq!(LogBody::locate(9, &first_half, &past_the_end), None, "runs past the entry's end");
    }

    #[test]
    fn a_record_decodes_as_the_message_with_an_empty_body() {
        let message = StoredMessage {
            offset: Offset(7),
            publish_time: TimestampMs(123),
            body: Bytes::from(vec![1u8; 600]),
            headers: BTreeMap::from([("k".to_string(), "v".to_string())]),
            correlation_id: Some("reply-1".to_string()),
        };
        let at = LogBody { index: 9, start: 40, len: 600 };
        let (decoded_at, decoded) = decode_in_log(&encode_in_log(at, &message).unwrap()).unwrap();
        assert_eq!(decoded_at, at);
        assert_eq!(decoded, StoredMessage { body: Bytes::new(), ..message });
    }
}
