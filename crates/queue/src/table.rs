//! The message table: every stored message of the queue, how many
//! subscriptions still hold it, and the messages kept only by retention.
//!
//! A message is stored while some subscription holds it (it has a delivery
//! record there) or while retention keeps it. When the last holder lets go,
//! the message is retained, or deleted if retention is off, has no room for
//! it, or its time to live ran out.

use std::collections::{BTreeMap, BTreeSet};

use raftmq_types::{Offset, Retention, TimestampMs};
use serde::{Deserialize, Serialize};

use crate::Change;

/// What the state machine keeps of a stored message; the body stays on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInfo {
    /// The leader's clock when it was produced.
    pub publish_time: TimestampMs,
    /// When it is first deliverable: its publish time, or its `deliver_at`.
    /// A subscription that receives it later (created at the earliest
    /// offset, or sought back) waits for this too.
    pub deliver_at: TimestampMs,
    /// Body plus headers, in bytes: what it counts against `max_bytes`.
    pub size: u64,
    /// When its time to live runs out; `None` is never.
    pub expires_at: Option<TimestampMs>,
}

impl MessageInfo {
    pub fn expired(&self, now: TimestampMs) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    info: MessageInfo,
    /// Subscriptions with a delivery record of this message.
    holders: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    /// The messages in memory; evicted (cold) ones are not here.
    entries: BTreeMap<Offset, Entry>,
    /// Number and bytes of the messages some subscription holds: what the
    /// queue's limits count. Evicted messages are held and count here too.
    held: u64,
    held_bytes: u64,
    /// Messages no subscription holds, kept by retention.
    retained: BTreeSet<Offset>,
    retained_bytes: u64,
    /// Stored messages with a time to live whose expiry was not handled yet.
    expiring: BTreeSet<(TimestampMs, Offset)>,
    /// Correlation ids of stored messages (replies), both ways.
    by_correlation: BTreeSet<(String, Offset)>,
    correlation_of: BTreeMap<Offset, String>,
}

impl Table {
    /// Messages in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn held(&self) -> (u64, u64) {
        (self.held, self.held_bytes)
    }

    pub fn retained(&self) -> (u64, u64) {
        (self.retained.len() as u64, self.retained_bytes)
    }

    /// The lowest offset in memory.
    pub fn first(&self) -> Option<Offset> {
        self.entries.first_key_value().map(|(offset, _)| *offset)
    }

    pub fn info(&self, offset: Offset) -> Option<&MessageInfo> {
        self.entries.get(&offset).map(|entry| &entry.info)
    }

    pub fn range(&self, from: Offset, to: Offset) -> impl Iterator<Item = (Offset, &MessageInfo)> {
        self.entries.range(from..to).map(|(offset, entry)| (*offset, &entry.info))
    }

    pub fn iter(&self) -> impl Iterator<Item = (Offset, &MessageInfo)> {
        self.entries.iter().map(|(offset, entry)| (*offset, &entry.info))
    }

    /// Messages in memory, newest first, with their holder counts.
    pub fn newest_first(&self) -> impl Iterator<Item = (Offset, &MessageInfo, u32)> {
        self.entries.iter().rev().map(|(offset, entry)| (*offset, &entry.info, entry.holders))
    }

    pub fn is_correlated(&self, offset: Offset) -> bool {
        self.correlation_of.contains_key(&offset)
    }

    /// Drops a held message from memory (it becomes cold); it stays counted
    /// as held. Only for messages without expiry or correlation id.
    pub fn evict(&mut self, offset: Offset) -> MessageInfo {
        let entry = self.entries.remove(&offset).expect("eviction of a message not in the table");
        debug_assert!(entry.holders > 0 && entry.info.expires_at.is_none() && !self.is_correlated(offset));
        entry.info
    }

    /// An evicted message read back; it was counted as held all along.
    pub fn reload(&mut self, offset: Offset, info: MessageInfo, holders: u32) {
        debug_assert!(holders > 0 && info.expires_at.is_none());
        self.entries.insert(offset, Entry { info, holders });
    }

    /// Stores a new message that `holders` subscriptions hold. With none,
    /// the caller must call [`Table::unheld`] next.
    pub fn add(&mut self, offset: Offset, info: MessageInfo, correlation_id: Option<&str>, holders: u32) {
        self.entries.insert(offset, Entry { info, holders });
        if holders > 0 {
            self.held += 1;
            self.held_bytes += info.size;
        }
        if let Some(at) = info.expires_at {
            self.expiring.insert((at, offset));
        }
        if let Some(id) = correlation_id {
            self.by_correlation.insert((id.to_string(), offset));
            self.correlation_of.insert(offset, id.to_string());
        }
    }

    /// A restored message, with its holders counted from the delivery records.
    pub fn restore(&mut self, offset: Offset, info: MessageInfo, holders: u32) {
        self.add(offset, info, None, holders);
        if holders == 0 {
            self.retained.insert(offset);
            self.retained_bytes += info.size;
        }
    }

    pub fn restore_correlation(&mut self, offset: Offset, id: String) {
        if self.entries.contains_key(&offset) {
            self.by_correlation.insert((id.clone(), offset));
            self.correlation_of.insert(offset, id);
        }
    }

    /// One more subscription holds the message.
    pub fn hold(&mut self, offset: Offset) {
        let entry = self.entries.get_mut(&offset).expect("hold of a message not in the table");
        if entry.holders == 0 {
            self.retained.remove(&offset);
            self.retained_bytes -= entry.info.size;
            self.held += 1;
            self.held_bytes += entry.info.size;
        }
        entry.holders += 1;
    }

    /// One subscription is done with the message.
    pub fn release(&mut self, offset: Offset, now: TimestampMs, retention: &Retention, changes: &mut Vec<Change>) {
        let entry = self.entries.get_mut(&offset).expect("release of a message not in the table");
        entry.holders -= 1;
        if entry.holders == 0 {
            self.held -= 1;
            self.held_bytes -= entry.info.size;
            self.unheld(offset, now, retention, changes);
        }
    }

    /// A message nobody holds: retained, or deleted if retention does not
    /// keep it.
    pub fn unheld(&mut self, offset: Offset, now: TimestampMs, retention: &Retention, changes: &mut Vec<Change>) {
        let info = self.entries[&offset].info;
        if retention.is_off() || info.expired(now) || too_old(&info, now, retention) {
            self.delete(offset, changes);
            return;
        }
        self.retained.insert(offset);
        self.retained_bytes += info.size;
        self.trim(now, retention, changes);
    }

    /// Deletes retained messages that retention no longer keeps: past the
    /// age limit, and oldest first while over the byte limit. Returns how many.
    pub fn trim(&mut self, now: TimestampMs, retention: &Retention, changes: &mut Vec<Change>) -> u64 {
        let mut deleted = 0;
        while let Some(&oldest) = self.retained.first() {
            let info = self.entries[&oldest].info;
            let over_bytes = retention.max_bytes > 0 && self.retained_bytes > retention.max_bytes;
            if !(retention.is_off() || over_bytes || too_old(&info, now, retention)) {
                break;
            }
            self.delete(oldest, changes);
            deleted += 1;
        }
        deleted
    }

    /// Whether `trim` would delete something now.
    pub fn needs_trim(&self, now: TimestampMs, retention: &Retention) -> bool {
        self.retained.first().is_some_and(|oldest| {
            retention.is_off()
                || (retention.max_bytes > 0 && self.retained_bytes > retention.max_bytes)
                || too_old(&self.entries[oldest].info, now, retention)
        })
    }

    /// The earliest expiry not handled yet, if it is due.
    pub fn due_expiry(&self, now: TimestampMs) -> Option<Offset> {
        self.expiring.first().filter(|(at, _)| *at <= now).map(|(_, offset)| *offset)
    }

    /// The message's expiry is handled: the subscriptions holding it let it die.
    pub fn expiry_handled(&mut self, offset: Offset) {
        if let Some(at) = self.entries.get(&offset).and_then(|entry| entry.info.expires_at) {
            self.expiring.remove(&(at, offset));
        }
    }

    pub fn holders(&self, offset: Offset) -> u32 {
        self.entries.get(&offset).map_or(0, |entry| entry.holders)
    }

    /// Deletes a message no subscription holds (its time to live ran out).
    pub fn delete_retained(&mut self, offset: Offset, changes: &mut Vec<Change>) {
        debug_assert!(self.retained.contains(&offset), "message {offset} is not retained");
        self.delete(offset, changes);
    }

    fn delete(&mut self, offset: Offset, changes: &mut Vec<Change>) {
        let Some(entry) = self.entries.remove(&offset) else { return };
        debug_assert_eq!(entry.holders, 0, "message {offset} deleted while held");
        if self.retained.remove(&offset) {
            self.retained_bytes -= entry.info.size;
        }
        if let Some(at) = entry.info.expires_at {
            self.expiring.remove(&(at, offset));
        }
        let correlation = self.correlation_of.remove(&offset);
        let correlated = correlation.is_some();
        if let Some(id) = correlation {
            self.by_correlation.remove(&(id, offset));
        }
        changes.push(Change::DeleteMessage { offset, size: entry.info.size, correlated });
    }

    /// Offsets of stored messages carrying `id`, lowest first.
    pub fn correlated<'a>(&'a self, id: &'a str) -> impl Iterator<Item = Offset> + 'a {
        self.by_correlation
            .range((id.to_string(), Offset(0))..)
            .take_while(move |(other, _)| other == id)
            .map(|(_, offset)| *offset)
    }

    /// `cold` is the number and bytes of evicted messages.
    /// O(n): run after every command by this crate's tests only (a debug
    /// build of the server would pay it on every apply).
    pub fn check_invariants(&self, cold: (u64, u64)) {
        if cfg!(test) {
            let held: Vec<_> = self.entries.values().filter(|e| e.holders > 0).collect();
            debug_assert_eq!(self.held, held.len() as u64 + cold.0, "held count is off");
            debug_assert_eq!(
                self.held_bytes,
                held.iter().map(|e| e.info.size).sum::<u64>() + cold.1,
                "held bytes are off"
            );
            debug_assert_eq!(
                (self.held - cold.0) as usize + self.retained.len(),
                self.entries.len(),
                "retained set is off"
            );
            debug_assert!(
                self.retained.iter().all(|offset| self.entries[offset].holders == 0),
                "a held message is in the retained set"
            );
            debug_assert_eq!(
                self.retained_bytes,
                self.retained.iter().map(|offset| self.entries[offset].info.size).sum::<u64>(),
                "retained bytes are off"
            );
            debug_assert!(self.expiring.iter().all(|(_, o)| self.entries.contains_key(o)), "expiry of a gone message");
            debug_assert_eq!(self.by_correlation.len(), self.correlation_of.len(), "correlation indexes disagree");
            debug_assert!(
                self.correlation_of.keys().all(|offset| self.entries.contains_key(offset)),
                "a correlation id of a deleted message"
            );
        }
    }
}

fn too_old(info: &MessageInfo, now: TimestampMs, retention: &Retention) -> bool {
    retention.max_age_ms > 0 && info.publish_time.saturating_add_ms(retention.max_age_ms) <= now
}
