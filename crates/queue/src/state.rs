//! Delivery state of every stored message, with indexes that make each
//! command cost O(k log n) for the k messages it touches.

use std::collections::{BTreeMap, BTreeSet};

use std::collections::HashSet;

use raftmq_types::{
    DeliveredMessage, NewMessage, Offset, QueueCommand, QueueLimit, QueueLimits, QueueRequest, QueueResponse, Receipt,
    ReceiptFailure, ReceiptFailureReason, StoredMessage, TimestampMs,
};
use serde::{Deserialize, Serialize};

use crate::Change;
use crate::dedup::DedupIndex;

/// The replicated delivery record of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// How many times the message was leased so far.
    pub attempts: u32,
    /// When it may be leased: its publish time, or a nack's time plus delay.
    pub visible_at: TimestampMs,
    /// Set while leased. A deadline in the past is an expired lease: the
    /// message is available again, and the lease's receipt no longer works.
    pub lease: Option<Lease>,
    /// Body plus headers, in bytes: what the message counts against `max_bytes`.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The log index of the command that created the lease.
    pub lease_id: u64,
    pub deadline: TimestampMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Stored, unacknowledged messages.
    pub depth: u64,
    /// Their bodies and headers, in bytes.
    pub bytes: u64,
    /// Leased with a lease that has not run out.
    pub in_flight: u64,
    /// Unleased, waiting for a nack delay.
    pub delayed: u64,
    /// What a lease command would get now.
    pub available: u64,
    pub next_offset: Offset,
    /// Producer dedup ids remembered.
    pub dedup_ids: u64,
}

/// Where a message is, for the indexes. Derived from its `DeliveryState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Unleased, visible at the given time (may be in the past).
    Waiting(TimestampMs),
    /// Leased until the given deadline (may be in the past).
    Leased(TimestampMs),
}

fn slot(state: &DeliveryState) -> Slot {
    match state.lease {
        Some(lease) => Slot::Leased(lease.deadline),
        None => Slot::Waiting(state.visible_at),
    }
}

#[derive(Debug, Clone, Default)]
pub struct QueueState {
    next_offset: Offset,
    deliveries: BTreeMap<Offset, DeliveryState>,
    /// Sum of `size` over `deliveries`.
    bytes: u64,
    /// Unleased messages by the time they become visible.
    waiting: BTreeSet<(TimestampMs, Offset)>,
    /// Leased messages by lease deadline.
    leased: BTreeSet<(TimestampMs, Offset)>,
    /// Messages known to be available, lowest offset first. Entries move here
    /// from `waiting` and `leased` when a lease command sees them due.
    ready: BTreeSet<Offset>,
    /// Producer dedup ids, with the offsets they were stored at. Not
    /// emptied by a purge: a retried produce still must not store again.
    dedup: DedupIndex,
}

enum Check {
    Valid,
    Failed(ReceiptFailureReason),
}

impl QueueState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state from persisted delivery and dedup records.
    pub fn restore(
        next_offset: Offset,
        deliveries: impl IntoIterator<Item = (Offset, DeliveryState)>,
        dedup: impl IntoIterator<Item = (Offset, String, TimestampMs)>,
    ) -> Self {
        let mut state = QueueState { next_offset, dedup: DedupIndex::restore(dedup), ..Default::default() };
        for (offset, delivery) in deliveries {
            state.insert(offset, delivery);
        }
        state.check_invariants();
        state
    }

    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    pub fn delivery(&self, offset: Offset) -> Option<&DeliveryState> {
        self.deliveries.get(&offset)
    }

    /// Up to `max` stored messages from `from` (inclusive) to `to`
    /// (exclusive), in offset order, with their delivery records. Changes
    /// nothing.
    pub fn peek(&self, from: Offset, to: Offset, max: usize) -> Vec<(Offset, DeliveryState)> {
        if from >= to {
            return Vec::new();
        }
        self.deliveries.range(from..to).take(max).map(|(offset, state)| (*offset, *state)).collect()
    }

    pub fn apply(&mut self, log_index: u64, request: &QueueRequest, changes: &mut Vec<Change>) -> QueueResponse {
        let now = request.now;
        let response = match &request.command {
            QueueCommand::Produce { messages, dedup_window_ms, limits } => {
                self.produce(now, messages, *dedup_window_ms, *limits, changes)
            }
            QueueCommand::Lease { max_messages, visibility_timeout_ms } => {
                self.lease(log_index, now, *max_messages, *visibility_timeout_ms, changes)
            }
            QueueCommand::Ack { receipts } => self.settle(now, receipts, changes, |state, offset, _| {
                state.remove(offset);
                Some(Change::DeleteMessage(offset))
            }),
            QueueCommand::Nack { receipts, delay_ms } => self.settle(now, receipts, changes, |state, offset, d| {
                let updated = DeliveryState { visible_at: now.saturating_add_ms(*delay_ms), lease: None, ..d };
                state.replace(offset, updated);
                Some(Change::PutDelivery { offset, state: updated })
            }),
            QueueCommand::ExtendLease { receipts, visibility_timeout_ms } => {
                self.settle(now, receipts, changes, |state, offset, d| {
                    let lease = d.lease.map(|l| Lease {
                        lease_id: l.lease_id,
                        deadline: now.saturating_add_ms(*visibility_timeout_ms),
                    });
                    let updated = DeliveryState { lease, ..d };
                    state.replace(offset, updated);
                    Some(Change::PutDelivery { offset, state: updated })
                })
            }
            QueueCommand::Purge => {
                let removed = self.deliveries.len() as u64;
                let dedup = std::mem::take(&mut self.dedup);
                *self = QueueState { next_offset: self.next_offset, dedup, ..Default::default() };
                changes.push(Change::DeleteAllMessages);
                QueueResponse::Purged { removed }
            }
        };
        self.check_invariants();
        response
    }

    /// Appends the batch, except messages whose dedup id is remembered: those
    /// answer with the original's offset. Ids repeated within the batch count
    /// too. With `dedup_window_ms` 0 ids are neither checked nor remembered.
    /// If the new messages would take the queue past a limit, nothing is
    /// stored.
    fn produce(
        &mut self,
        now: TimestampMs,
        messages: &[NewMessage],
        dedup_window_ms: u64,
        limits: QueueLimits,
        changes: &mut Vec<Change>,
    ) -> QueueResponse {
        self.dedup.expire(now, changes);
        if let Some(limit) = self.exceeded_limit(now, messages, dedup_window_ms, limits) {
            return QueueResponse::Full { limit, depth: self.deliveries.len() as u64, bytes: self.bytes };
        }
        let first_offset = self.next_offset;
        let mut offsets = Vec::with_capacity(messages.len());
        for message in messages {
            let dedup_id = message.dedup_id.as_deref().filter(|_| dedup_window_ms > 0);
            if let Some(original) = dedup_id.and_then(|id| self.dedup.lookup(id, now)) {
                offsets.push((original, true));
                continue;
            }
            let offset = self.next_offset;
            self.next_offset = Offset(offset.0 + 1);
            // A deliver_at in the past is simply "now".
            let visible_at = message.deliver_at.map_or(now, |at| at.max(now));
            let delivery = DeliveryState { attempts: 0, visible_at, lease: None, size: message.size_bytes() };
            changes.push(Change::PutMessage(StoredMessage {
                offset,
                publish_time: now,
                body: message.body.clone(),
                headers: message.headers.clone(),
            }));
            changes.push(Change::PutDelivery { offset, state: delivery });
            self.insert(offset, delivery);
            if let Some(id) = dedup_id {
                self.dedup.insert(id, offset, now.saturating_add_ms(dedup_window_ms), changes);
            }
            offsets.push((offset, false));
        }
        if self.next_offset != first_offset {
            changes.push(Change::PutNextOffset(self.next_offset));
        }
        QueueResponse::Produced { offsets }
    }

    /// The limit the batch's new (not deduplicated) messages would break.
    fn exceeded_limit(
        &self,
        now: TimestampMs,
        messages: &[NewMessage],
        dedup_window_ms: u64,
        limits: QueueLimits,
    ) -> Option<QueueLimit> {
        if limits.max_messages == 0 && limits.max_bytes == 0 {
            return None;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let (mut count, mut bytes) = (0u64, 0u64);
        for message in messages {
            if let Some(id) = message.dedup_id.as_deref().filter(|_| dedup_window_ms > 0)
                && (self.dedup.lookup(id, now).is_some() || !seen.insert(id))
            {
                continue;
            }
            count += 1;
            bytes += message.size_bytes();
        }
        let depth = self.deliveries.len() as u64;
        if limits.max_messages > 0 && depth + count > limits.max_messages {
            return Some(QueueLimit::MaxMessages(limits.max_messages));
        }
        if limits.max_bytes > 0 && self.bytes + bytes > limits.max_bytes {
            return Some(QueueLimit::MaxBytes(limits.max_bytes));
        }
        None
    }

    fn lease(
        &mut self,
        log_index: u64,
        now: TimestampMs,
        max_messages: u32,
        visibility_timeout_ms: u64,
        changes: &mut Vec<Change>,
    ) -> QueueResponse {
        self.promote_due(now);
        let deadline = now.saturating_add_ms(visibility_timeout_ms);
        let chosen: Vec<Offset> = self.ready.iter().take(max_messages as usize).copied().collect();
        let mut messages = Vec::with_capacity(chosen.len());
        for offset in chosen {
            let current = self.deliveries[&offset];
            let updated = DeliveryState {
                attempts: current.attempts.saturating_add(1),
                lease: Some(Lease { lease_id: log_index, deadline }),
                ..current
            };
            self.replace(offset, updated);
            changes.push(Change::PutDelivery { offset, state: updated });
            messages.push(DeliveredMessage {
                offset,
                receipt: Receipt { offset, lease_id: log_index },
                delivery_attempt: updated.attempts,
                lease_deadline: deadline,
            });
        }
        QueueResponse::Leased { messages }
    }

    /// Ack, nack and extend: check each receipt, then let `settle_one` change
    /// the message. A receipt is valid while its lease is the message's current
    /// lease and has not run out.
    fn settle(
        &mut self,
        now: TimestampMs,
        receipts: &[Receipt],
        changes: &mut Vec<Change>,
        mut settle_one: impl FnMut(&mut QueueState, Offset, DeliveryState) -> Option<Change>,
    ) -> QueueResponse {
        let mut succeeded = 0u32;
        let mut failures = Vec::new();
        for receipt in receipts {
            match self.check(now, receipt) {
                Check::Valid => {
                    let current = self.deliveries[&receipt.offset];
                    if let Some(change) = settle_one(self, receipt.offset, current) {
                        changes.push(change);
                    }
                    succeeded += 1;
                }
                Check::Failed(reason) => failures.push(ReceiptFailure { receipt: *receipt, reason }),
            }
        }
        QueueResponse::Settled { succeeded, failures }
    }

    fn check(&self, now: TimestampMs, receipt: &Receipt) -> Check {
        let Some(delivery) = self.deliveries.get(&receipt.offset) else {
            return Check::Failed(ReceiptFailureReason::MessageGone);
        };
        match delivery.lease {
            Some(lease) if lease.lease_id == receipt.lease_id && lease.deadline > now => Check::Valid,
            _ => Check::Failed(ReceiptFailureReason::LeaseGone),
        }
    }

    /// Moves messages whose visibility time or lease deadline has come into `ready`.
    fn promote_due(&mut self, now: TimestampMs) {
        while let Some(&(at, offset)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(offset);
        }
        while let Some(&(deadline, offset)) = self.leased.first() {
            if deadline > now {
                break;
            }
            self.leased.pop_first();
            self.ready.insert(offset);
        }
    }

    fn insert(&mut self, offset: Offset, delivery: DeliveryState) {
        self.bytes += delivery.size;
        self.deliveries.insert(offset, delivery);
        match slot(&delivery) {
            Slot::Waiting(at) => self.waiting.insert((at, offset)),
            Slot::Leased(deadline) => self.leased.insert((deadline, offset)),
        };
    }

    fn remove(&mut self, offset: Offset) {
        if let Some(old) = self.deliveries.remove(&offset) {
            self.bytes -= old.size;
            self.unindex(offset, &old);
        }
    }

    fn replace(&mut self, offset: Offset, delivery: DeliveryState) {
        self.remove(offset);
        self.insert(offset, delivery);
    }

    fn unindex(&mut self, offset: Offset, old: &DeliveryState) {
        // A message is in `ready` or in the index of its slot, never both.
        if self.ready.remove(&offset) {
            return;
        }
        match slot(old) {
            Slot::Waiting(at) => self.waiting.remove(&(at, offset)),
            Slot::Leased(deadline) => self.leased.remove(&(deadline, offset)),
        };
    }

    pub fn has_available(&self, now: TimestampMs) -> bool {
        !self.ready.is_empty()
            || self.waiting.first().is_some_and(|(at, _)| *at <= now)
            || self.leased.first().is_some_and(|(deadline, _)| *deadline <= now)
    }

    pub fn next_wakeup(&self, now: TimestampMs) -> Option<TimestampMs> {
        let waiting = self.waiting.range((TimestampMs(now.0.saturating_add(1)), Offset(0))..).next();
        let leased = self.leased.range((TimestampMs(now.0.saturating_add(1)), Offset(0))..).next();
        [waiting, leased].into_iter().flatten().map(|(at, _)| *at).min()
    }

    pub fn stats(&self, now: TimestampMs) -> QueueStats {
        let due = |set: &BTreeSet<(TimestampMs, Offset)>| {
            set.range(..(TimestampMs(now.0.saturating_add(1)), Offset(0))).count() as u64
        };
        let waiting_due = due(&self.waiting);
        let leased_due = due(&self.leased);
        QueueStats {
            depth: self.deliveries.len() as u64,
            bytes: self.bytes,
            in_flight: self.leased.len() as u64 - leased_due,
            delayed: self.waiting.len() as u64 - waiting_due,
            available: self.ready.len() as u64 + waiting_due + leased_due,
            next_offset: self.next_offset,
            dedup_ids: self.dedup.len() as u64,
        }
    }

    /// Every message is in exactly one of the three indexes, consistent with
    /// its record; no offset at or beyond `next_offset`.
    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            debug_assert_eq!(
                self.deliveries.len(),
                self.ready.len() + self.waiting.len() + self.leased.len(),
                "index sizes disagree with the delivery records"
            );
            debug_assert_eq!(self.bytes, self.deliveries.values().map(|d| d.size).sum::<u64>(), "byte count is off");
            for (offset, delivery) in &self.deliveries {
                debug_assert!(*offset < self.next_offset, "offset {offset} at or past next_offset");
                let indexed = self.ready.contains(offset)
                    || match slot(delivery) {
                        Slot::Waiting(at) => self.waiting.contains(&(at, *offset)),
                        Slot::Leased(deadline) => self.leased.contains(&(deadline, *offset)),
                    };
                debug_assert!(indexed, "message {offset} missing from the indexes");
            }
        }
    }
}
