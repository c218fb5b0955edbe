//! Delivery state of every stored message, with indexes that make each
//! command cost O(k log n) for the k messages it touches.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use raftmq_types::{
    DeadReason, DeliveredMessage, DeliveryPolicy, NewMessage, Offset, QueueCommand, QueueLimit, QueueLimits,
    QueueRequest, QueueResponse, Receipt, ReceiptFailure, ReceiptFailureReason, StoredMessage, TimestampMs,
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
    /// message is available again at the lease's `retry_at`, and the lease's
    /// receipt no longer works.
    pub lease: Option<Lease>,
    /// Body plus headers, in bytes: what the message counts against `max_bytes`.
    pub size: u64,
    /// When its time to live runs out; `None` is never.
    pub expires_at: Option<TimestampMs>,
    /// Set when the message died: it is never delivered again and waits for
    /// the leader to commit it in the dead-letter queue (`RemoveDead`).
    pub dead: Option<DeadReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The log index of the command that created the lease.
    pub lease_id: u64,
    pub deadline: TimestampMs,
    /// When the message may be delivered again if the lease runs out: the
    /// deadline plus the retry backoff chosen when it was leased.
    pub retry_at: TimestampMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Stored, unacknowledged messages, dead ones included.
    pub depth: u64,
    /// Their bodies and headers, in bytes.
    pub bytes: u64,
    /// Leased with a lease that has not run out.
    pub in_flight: u64,
    /// Waiting for a delivery time, a nack's delay or a retry backoff.
    pub delayed: u64,
    /// What a lease command would get now.
    pub available: u64,
    /// Dead, waiting to be moved to the dead-letter queue.
    pub dead: u64,
    pub next_offset: Offset,
    /// Producer dedup ids remembered.
    pub dedup_ids: u64,
}

/// Where a message is, for the indexes. Derived from its `DeliveryState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Unleased, visible at the given time (may be in the past).
    Waiting(TimestampMs),
    /// Leased; available again at the given retry time (may be in the past).
    Leased(TimestampMs),
    Dead,
}

fn slot(state: &DeliveryState) -> Slot {
    match (state.dead, state.lease) {
        (Some(_), _) => Slot::Dead,
        (None, Some(lease)) => Slot::Leased(lease.retry_at),
        (None, None) => Slot::Waiting(state.visible_at),
    }
}

/// The redelivery delay after a message's `attempts`-th delivery failed:
/// `min · 2^(attempts−1)` capped at `max`, plus up to half of that again as
/// jitter, never above `max`. The jitter comes from the leader's seed and the
/// offset, so every replica computes the same delay.
pub fn retry_backoff_ms(policy: &DeliveryPolicy, attempts: u32, offset: Offset) -> u64 {
    let exponent = attempts.saturating_sub(1).min(63);
    let base = policy.backoff_min_ms.saturating_mul(1u64 << exponent).min(policy.backoff_max_ms);
    let spread = base / 2;
    if spread == 0 {
        return base;
    }
    let jitter = mix(policy.jitter_seed ^ offset.0.rotate_left(32) ^ u64::from(attempts)) % (spread + 1);
    (base + jitter).min(policy.backoff_max_ms)
}

/// SplitMix64's finaliser: spreads neighbouring inputs over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn exhausted(policy: &DeliveryPolicy, attempts: u32) -> bool {
    policy.max_deliveries > 0 && attempts >= policy.max_deliveries
}

#[derive(Debug, Clone, Default)]
pub struct QueueState {
    next_offset: Offset,
    deliveries: BTreeMap<Offset, DeliveryState>,
    /// Sum of `size` over `deliveries`.
    bytes: u64,
    /// Unleased messages by the time they become visible.
    waiting: BTreeSet<(TimestampMs, Offset)>,
    /// Leased messages by the time they may be delivered again.
    leased: BTreeSet<(TimestampMs, Offset)>,
    /// Messages known to be available, lowest offset first. Entries move here
    /// from `waiting` and `leased` when a lease or sweep command sees them due.
    ready: BTreeSet<Offset>,
    /// Dead messages, waiting for the dead-letter queue.
    dead: BTreeSet<Offset>,
    /// Live (not dead) messages with a time to live, by expiry time. A
    /// secondary index: each is also in one of the four above.
    expiring: BTreeSet<(TimestampMs, Offset)>,
    /// Producer dedup ids, with the offsets they were stored at. Not
    /// emptied by a purge: a retried produce still must not store again.
    dedup: DedupIndex,
    /// Correlation ids of stored messages (replies), both ways.
    by_correlation: BTreeSet<(String, Offset)>,
    correlation_of: BTreeMap<Offset, String>,
}

enum Check {
    Valid,
    Failed(ReceiptFailureReason),
}

/// What a lease may take.
#[derive(Clone, Copy)]
enum Limits<'a> {
    /// Up to this many messages and bytes (0: no byte limit), lowest offset first.
    Count(u32, u64),
    /// One message with this correlation id.
    Correlated(&'a str),
}

/// What `advance` did to messages that died.
#[derive(Debug, Default)]
struct Deaths {
    died: u64,
    dropped: u64,
}

impl QueueState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state from persisted delivery, dedup and correlation records.
    pub fn restore(
        next_offset: Offset,
        deliveries: impl IntoIterator<Item = (Offset, DeliveryState)>,
        dedup: impl IntoIterator<Item = (Offset, String, TimestampMs)>,
        correlations: impl IntoIterator<Item = (Offset, String)>,
    ) -> Self {
        let mut state = QueueState { next_offset, dedup: DedupIndex::restore(dedup), ..Default::default() };
        for (offset, delivery) in deliveries {
            state.insert(offset, delivery);
        }
        for (offset, id) in correlations {
            state.by_correlation.insert((id.clone(), offset));
            state.correlation_of.insert(offset, id);
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

    /// Up to `max` dead messages, lowest offset first, for the dead-letter queue.
    pub fn dead_messages(&self, max: usize) -> Vec<(Offset, DeliveryState)> {
        self.dead.iter().take(max).map(|offset| (*offset, self.deliveries[offset])).collect()
    }

    /// Whether a `Sweep` would change anything now: a time to live ran out,
    /// or (with a delivery limit) a lease ran out and may have been the last.
    pub fn needs_sweep(&self, now: TimestampMs, policy: &DeliveryPolicy) -> bool {
        self.expiring.first().is_some_and(|(at, _)| *at <= now)
            || (policy.max_deliveries > 0 && self.leased.first().is_some_and(|(at, _)| *at <= now))
    }

    pub fn apply(&mut self, log_index: u64, request: &QueueRequest, changes: &mut Vec<Change>) -> QueueResponse {
        let now = request.now;
        let response = match &request.command {
            QueueCommand::Produce { messages, dedup_window_ms, limits } => {
                self.produce(now, messages, *dedup_window_ms, *limits, changes)
            }
            QueueCommand::Lease { max_messages, max_bytes, visibility_timeout_ms, policy, correlation_id } => {
                let limits = match correlation_id {
                    Some(id) => Limits::Correlated(id),
                    None => Limits::Count(*max_messages, *max_bytes),
                };
                self.lease(log_index, now, limits, *visibility_timeout_ms, policy, changes)
            }
            QueueCommand::Ack { receipts } => {
                self.settle(now, receipts, |state, offset, _| state.delete(offset, changes))
            }
            QueueCommand::Nack { receipts, delay_ms, policy } => {
                self.settle(now, receipts, |state, offset, current| {
                    if exhausted(policy, current.attempts) {
                        state.kill(offset, DeadReason::MaxDeliveries, policy.dead_letter, changes);
                        return;
                    }
                    let delay = delay_ms.unwrap_or_else(|| retry_backoff_ms(policy, current.attempts, offset));
                    let updated = DeliveryState { visible_at: now.saturating_add_ms(delay), lease: None, ..current };
                    state.replace(offset, updated);
                    changes.push(Change::PutDelivery { offset, state: updated });
                })
            }
            QueueCommand::ExtendLease { receipts, visibility_timeout_ms } => {
                self.settle(now, receipts, |state, offset, current| {
                    let lease = current.lease.map(|l| {
                        let deadline = now.saturating_add_ms(*visibility_timeout_ms);
                        let backoff = l.retry_at.0.saturating_sub(l.deadline.0);
                        Lease { lease_id: l.lease_id, deadline, retry_at: deadline.saturating_add_ms(backoff) }
                    });
                    let updated = DeliveryState { lease, ..current };
                    state.replace(offset, updated);
                    changes.push(Change::PutDelivery { offset, state: updated });
                })
            }
            QueueCommand::Purge => {
                let removed = self.deliveries.len() as u64;
                let dedup = std::mem::take(&mut self.dedup);
                *self = QueueState { next_offset: self.next_offset, dedup, ..Default::default() };
                changes.push(Change::DeleteAllMessages);
                QueueResponse::Purged { removed }
            }
            QueueCommand::Sweep { policy } => {
                let deaths = self.advance(now, policy, changes);
                QueueResponse::Swept { died: deaths.died, dropped: deaths.dropped }
            }
            QueueCommand::RemoveDead { offsets } => {
                let mut removed = 0;
                for offset in offsets {
                    if self.deliveries.get(offset).is_some_and(|d| d.dead.is_some()) {
                        self.delete(*offset, changes);
                        removed += 1;
                    }
                }
                QueueResponse::RemovedDead { removed }
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
            let delivery = DeliveryState {
                attempts: 0,
                visible_at,
                lease: None,
                size: message.size_bytes(),
                expires_at: message.expires_at,
                dead: None,
            };
            changes.push(Change::PutMessage(StoredMessage {
                offset,
                publish_time: now,
                body: message.body.clone(),
                headers: message.headers.clone(),
                correlation_id: message.correlation_id.clone(),
            }));
            if let Some(id) = &message.correlation_id {
                self.by_correlation.insert((id.clone(), offset));
                self.correlation_of.insert(offset, id.clone());
            }
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
        limits: Limits,
        visibility_timeout_ms: u64,
        policy: &DeliveryPolicy,
        changes: &mut Vec<Change>,
    ) -> QueueResponse {
        self.advance(now, policy, changes);
        let deadline = now.saturating_add_ms(visibility_timeout_ms);
        let mut messages = Vec::new();
        let mut bytes = 0u64;
        let (max_messages, max_bytes) = match limits {
            Limits::Count(messages, bytes) => (messages, bytes),
            Limits::Correlated(_) => (1, 0),
        };
        while messages.len() < max_messages as usize {
            let next = match limits {
                Limits::Count(..) => self.ready.first().copied(),
                Limits::Correlated(id) => self.correlated(id).find(|offset| self.ready.contains(offset)),
            };
            let Some(offset) = next else { break };
            let current = self.deliveries[&offset];
            if max_bytes > 0 && !messages.is_empty() && bytes + current.size > max_bytes {
                break;
            }
            // The limit may have been lowered since its last delivery.
            if exhausted(policy, current.attempts) {
                self.kill(offset, DeadReason::MaxDeliveries, policy.dead_letter, changes);
                continue;
            }
            let attempts = current.attempts.saturating_add(1);
            // No backoff after the last allowed delivery: it dies when the lease runs out.
            let backoff = if exhausted(policy, attempts) { 0 } else { retry_backoff_ms(policy, attempts, offset) };
            let lease = Lease { lease_id: log_index, deadline, retry_at: deadline.saturating_add_ms(backoff) };
            let updated = DeliveryState { attempts, lease: Some(lease), ..current };
            self.replace(offset, updated);
            changes.push(Change::PutDelivery { offset, state: updated });
            bytes += current.size;
            messages.push(DeliveredMessage {
                offset,
                receipt: Receipt { offset, lease_id: log_index },
                delivery_attempt: attempts,
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
        mut settle_one: impl FnMut(&mut QueueState, Offset, DeliveryState),
    ) -> QueueResponse {
        let mut succeeded = 0u32;
        let mut failures = Vec::new();
        for receipt in receipts {
            match self.check(now, receipt) {
                Check::Valid => {
                    let current = self.deliveries[&receipt.offset];
                    settle_one(self, receipt.offset, current);
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
            Some(lease) if delivery.dead.is_none() && lease.lease_id == receipt.lease_id && lease.deadline > now => {
                Check::Valid
            }
            _ => Check::Failed(ReceiptFailureReason::LeaseGone),
        }
    }

    /// Brings the indexes up to `now`: messages whose time to live ran out
    /// die, messages whose delivery time or retry time came move into
    /// `ready`, or die if their last allowed delivery ran out.
    fn advance(&mut self, now: TimestampMs, policy: &DeliveryPolicy, changes: &mut Vec<Change>) -> Deaths {
        let mut deaths = Deaths::default();
        while let Some(&(at, offset)) = self.expiring.first() {
            if at > now {
                break;
            }
            let keep = policy.dead_letter && policy.dead_letter_expired;
            self.kill(offset, DeadReason::Expired, keep, changes);
            if keep { deaths.died += 1 } else { deaths.dropped += 1 }
        }
        while let Some(&(at, offset)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(offset);
        }
        while let Some(&(at, offset)) = self.leased.first() {
            if at > now {
                break;
            }
            if exhausted(policy, self.deliveries[&offset].attempts) {
                self.kill(offset, DeadReason::MaxDeliveries, policy.dead_letter, changes);
                if policy.dead_letter { deaths.died += 1 } else { deaths.dropped += 1 }
            } else {
                self.leased.pop_first();
                self.ready.insert(offset);
            }
        }
        deaths
    }

    /// A message dies: kept as dead for the dead-letter queue, or deleted.
    fn kill(&mut self, offset: Offset, reason: DeadReason, keep: bool, changes: &mut Vec<Change>) {
        if keep {
            let updated = DeliveryState { dead: Some(reason), lease: None, ..self.deliveries[&offset] };
            self.replace(offset, updated);
            changes.push(Change::PutDelivery { offset, state: updated });
        } else {
            self.delete(offset, changes);
        }
    }

    /// The message is gone for good: acked, dropped or dead-lettered.
    fn delete(&mut self, offset: Offset, changes: &mut Vec<Change>) {
        self.remove(offset);
        if let Some(id) = self.correlation_of.remove(&offset) {
            self.by_correlation.remove(&(id, offset));
        }
        changes.push(Change::DeleteMessage(offset));
    }

    fn insert(&mut self, offset: Offset, delivery: DeliveryState) {
        self.bytes += delivery.size;
        self.deliveries.insert(offset, delivery);
        match slot(&delivery) {
            Slot::Waiting(at) => self.waiting.insert((at, offset)),
            Slot::Leased(at) => self.leased.insert((at, offset)),
            Slot::Dead => self.dead.insert(offset),
        };
        if let (Some(at), None) = (delivery.expires_at, delivery.dead) {
            self.expiring.insert((at, offset));
        }
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
        if let Some(at) = old.expires_at {
            self.expiring.remove(&(at, offset));
        }
        // A message is in `ready` or in the index of its slot, never both.
        if self.ready.remove(&offset) {
            return;
        }
        match slot(old) {
            Slot::Waiting(at) => self.waiting.remove(&(at, offset)),
            Slot::Leased(at) => self.leased.remove(&(at, offset)),
            Slot::Dead => self.dead.remove(&offset),
        };
    }

    /// Offsets of stored messages carrying `id`, lowest first.
    fn correlated<'a>(&'a self, id: &'a str) -> impl Iterator<Item = Offset> + 'a {
        self.by_correlation
            .range((id.to_string(), Offset(0))..)
            .take_while(move |(other, _)| other == id)
            .map(|(_, offset)| *offset)
    }

    /// Whether a lease for correlation id `id` would get a message now.
    pub fn has_available_correlated(&self, now: TimestampMs, id: &str) -> bool {
        self.correlated(id).any(|offset| {
            self.ready.contains(&offset)
                || match slot(&self.deliveries[&offset]) {
                    Slot::Waiting(at) | Slot::Leased(at) => at <= now,
                    Slot::Dead => false,
                }
        })
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
        let after_now = (TimestampMs(now.0.saturating_add(1)), Offset(0));
        let waiting_due = self.waiting.range(..after_now).count() as u64;
        let leased_due = self.leased.range(..after_now).count() as u64;
        // Leased and not yet due to come back: in flight, or in a retry backoff.
        let in_flight = self
            .leased
            .range(after_now..)
            .filter(|(_, offset)| self.deliveries[offset].lease.is_some_and(|l| l.deadline > now))
            .count() as u64;
        let backing_off = self.leased.len() as u64 - leased_due - in_flight;
        QueueStats {
            depth: self.deliveries.len() as u64,
            bytes: self.bytes,
            in_flight,
            delayed: self.waiting.len() as u64 - waiting_due + backing_off,
            available: self.ready.len() as u64 + waiting_due + leased_due,
            dead: self.dead.len() as u64,
            next_offset: self.next_offset,
            dedup_ids: self.dedup.len() as u64,
        }
    }

    /// Every message is in exactly one of the four slot indexes, consistent
    /// with its record, and in `expiring` exactly when it is live with a time
    /// to live; no offset at or beyond `next_offset`.
    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            debug_assert_eq!(
                self.deliveries.len(),
                self.ready.len() + self.waiting.len() + self.leased.len() + self.dead.len(),
                "index sizes disagree with the delivery records"
            );
            debug_assert_eq!(self.bytes, self.deliveries.values().map(|d| d.size).sum::<u64>(), "byte count is off");
            debug_assert_eq!(self.by_correlation.len(), self.correlation_of.len(), "correlation indexes disagree");
            debug_assert!(
                self.correlation_of.keys().all(|offset| self.deliveries.contains_key(offset)),
                "a correlation id of a deleted message"
            );
            let live_expiring = self.deliveries.values().filter(|d| d.expires_at.is_some() && d.dead.is_none()).count();
            debug_assert_eq!(self.expiring.len(), live_expiring, "expiry index is off");
            for (offset, delivery) in &self.deliveries {
                debug_assert!(*offset < self.next_offset, "offset {offset} at or past next_offset");
                let indexed = match slot(delivery) {
                    Slot::Waiting(at) => self.ready.contains(offset) || self.waiting.contains(&(at, *offset)),
                    Slot::Leased(at) => self.ready.contains(offset) || self.leased.contains(&(at, *offset)),
                    Slot::Dead => self.dead.contains(offset),
                };
                debug_assert!(indexed, "message {offset} missing from the indexes");
                if let (Some(at), None) = (delivery.expires_at, delivery.dead) {
                    debug_assert!(self.expiring.contains(&(at, *offset)), "message {offset} missing from expiring");
                }
            }
        }
    }
}
