//! One subscription's delivery state: a record per message it holds, indexed
//! by when each becomes due, so that each command costs O(k log n) for the k
//! messages it touches.

use std::collections::{BTreeMap, BTreeSet};

use raftmq_types::{DeadReason, Offset, SubscriptionId, SubscriptionName, TimestampMs};
use serde::{Deserialize, Serialize};

/// The replicated delivery record of one message in one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// How many times the message was leased so far.
    pub attempts: u32,
    /// When it may be leased: its delivery time, or a nack's time plus delay.
    pub visible_at: TimestampMs,
    /// Set while leased. A deadline in the past is an expired lease: the
    /// message is available again at the lease's `retry_at`, and the lease's
    /// receipt no longer works.
    pub lease: Option<Lease>,
    /// Set when the message died in this subscription: it is never delivered
    /// here again and waits for the leader to commit it in the dead-letter
    /// queue (`RemoveDead`).
    pub dead: Option<DeadReason>,
}

impl DeliveryState {
    /// Never delivered, visible at `visible_at`.
    pub fn fresh(visible_at: TimestampMs) -> DeliveryState {
        DeliveryState { attempts: 0, visible_at, lease: None, dead: None }
    }
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

/// Where a message is, for the indexes. Derived from its `DeliveryState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Unleased, visible at the given time (may be in the past).
    Waiting(TimestampMs),
    /// Leased; available again at the given retry time (may be in the past).
    Leased(TimestampMs),
    Dead,
}

pub(crate) fn slot(state: &DeliveryState) -> Slot {
    match (state.dead, state.lease) {
        (Some(_), _) => Slot::Dead,
        (None, Some(lease)) => Slot::Leased(lease.retry_at),
        (None, None) => Slot::Waiting(state.visible_at),
    }
}

/// A subscription's counts, as `QueueState::subscriptions` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    pub id: SubscriptionId,
    pub name: SubscriptionName,
    /// Messages it holds: not yet acked, dead ones included.
    pub depth: u64,
    /// Leased with a lease that has not run out.
    pub in_flight: u64,
    /// Waiting for a delivery time, a nack's delay or a retry backoff.
    pub delayed: u64,
    /// What a lease command would get now.
    pub available: u64,
    /// Dead, waiting to be moved to the dead-letter queue.
    pub dead: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub id: SubscriptionId,
    pub name: SubscriptionName,
    deliveries: BTreeMap<Offset, DeliveryState>,
    /// Unleased messages by the time they become visible.
    waiting: BTreeSet<(TimestampMs, Offset)>,
    /// Leased messages by the time they may be delivered again.
    leased: BTreeSet<(TimestampMs, Offset)>,
    /// Messages known to be available, lowest offset first. Entries move here
    /// from `waiting` and `leased` when a lease or sweep command sees them due.
    ready: BTreeSet<Offset>,
    /// Dead messages, waiting for the dead-letter queue.
    dead: BTreeSet<Offset>,
}

impl Subscription {
    pub fn new(id: SubscriptionId, name: SubscriptionName) -> Subscription {
        Subscription {
            id,
            name,
            deliveries: BTreeMap::new(),
            waiting: BTreeSet::new(),
            leased: BTreeSet::new(),
            ready: BTreeSet::new(),
            dead: BTreeSet::new(),
        }
    }

    pub fn get(&self, offset: Offset) -> Option<&DeliveryState> {
        self.deliveries.get(&offset)
    }

    pub fn offsets(&self) -> impl Iterator<Item = Offset> + '_ {
        self.deliveries.keys().copied()
    }

    pub fn first_ready(&self) -> Option<Offset> {
        self.ready.first().copied()
    }

    /// Messages known to be available, lowest offset first.
    pub fn ready_offsets(&self) -> impl Iterator<Item = Offset> + '_ {
        self.ready.iter().copied()
    }

    pub fn is_ready(&self, offset: Offset) -> bool {
        self.ready.contains(&offset)
    }

    pub fn dead_offsets(&self) -> impl Iterator<Item = Offset> + '_ {
        self.dead.iter().copied()
    }

    /// The earliest lease whose retry time came, if any.
    pub fn due_lease(&self, now: TimestampMs) -> Option<Offset> {
        self.leased.first().filter(|(at, _)| *at <= now).map(|(_, offset)| *offset)
    }

    /// Moves every waiting message whose time came into `ready`.
    pub fn promote_waiting(&mut self, now: TimestampMs) {
        while let Some(&(at, offset)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(offset);
        }
    }

    /// A lease ran out and the message may be delivered again.
    pub fn promote_lease(&mut self, offset: Offset) {
        if let Some(Slot::Leased(at)) = self.deliveries.get(&offset).map(slot) {
            self.leased.remove(&(at, offset));
            self.ready.insert(offset);
        }
    }

    pub fn insert(&mut self, offset: Offset, delivery: DeliveryState) {
        self.deliveries.insert(offset, delivery);
        match slot(&delivery) {
            Slot::Waiting(at) => self.waiting.insert((at, offset)),
            Slot::Leased(at) => self.leased.insert((at, offset)),
            Slot::Dead => self.dead.insert(offset),
        };
    }

    pub fn remove(&mut self, offset: Offset) -> Option<DeliveryState> {
        let old = self.deliveries.remove(&offset)?;
        // A message is in `ready` or in the index of its slot, never both.
        if !self.ready.remove(&offset) {
            match slot(&old) {
                Slot::Waiting(at) => self.waiting.remove(&(at, offset)),
                Slot::Leased(at) => self.leased.remove(&(at, offset)),
                Slot::Dead => self.dead.remove(&offset),
            };
        }
        Some(old)
    }

    pub fn replace(&mut self, offset: Offset, delivery: DeliveryState) {
        self.remove(offset);
        self.insert(offset, delivery);
    }

    /// Empties the subscription; returns the offsets it held.
    pub fn clear(&mut self) -> Vec<Offset> {
        let offsets = self.deliveries.keys().copied().collect();
        *self = Subscription::new(self.id, self.name.clone());
        offsets
    }

    /// How many messages a lease would find available now, counting no
    /// further than `limit`.
    pub fn available_up_to(&self, now: TimestampMs, limit: usize) -> usize {
        let due = (TimestampMs(now.0.saturating_add(1)), Offset(0));
        let waiting = self.waiting.range(..due);
        let leased = self.leased.range(..due);
        let ready = self.ready.len().min(limit);
        ready + waiting.chain(leased).take(limit - ready).count()
    }

    /// Whether a lease would take the message at `offset` now.
    pub fn is_available(&self, now: TimestampMs, offset: Offset) -> bool {
        self.ready.contains(&offset)
            || match self.deliveries.get(&offset).map(slot) {
                Some(Slot::Waiting(at) | Slot::Leased(at)) => at <= now,
                _ => false,
            }
    }

    /// The earliest time after `now` at which a message becomes available.
    pub fn next_wakeup(&self, now: TimestampMs) -> Option<TimestampMs> {
        let after = (TimestampMs(now.0.saturating_add(1)), Offset(0));
        let waiting = self.waiting.range(after..).next();
        let leased = self.leased.range(after..).next();
        [waiting, leased].into_iter().flatten().map(|(at, _)| *at).min()
    }

    pub fn stats(&self, now: TimestampMs) -> SubscriptionStats {
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
        SubscriptionStats {
            id: self.id,
            name: self.name.clone(),
            depth: self.deliveries.len() as u64,
            in_flight,
            delayed: self.waiting.len() as u64 - waiting_due + backing_off,
            available: self.ready.len() as u64 + waiting_due + leased_due,
            dead: self.dead.len() as u64,
        }
    }

    /// Every record is in exactly one of the four slot indexes, consistent
    /// with its state.
    /// O(n): run after every command by this crate's tests only (a debug
    /// build of the server would pay it on every apply).
    pub fn check_invariants(&self) {
        if cfg!(test) {
            debug_assert_eq!(
                self.deliveries.len(),
                self.ready.len() + self.waiting.len() + self.leased.len() + self.dead.len(),
                "index sizes disagree with the delivery records of {}",
                self.name
            );
            for (offset, delivery) in &self.deliveries {
                let indexed = match slot(delivery) {
                    Slot::Waiting(at) => self.ready.contains(offset) || self.waiting.contains(&(at, *offset)),
                    Slot::Leased(at) => self.ready.contains(offset) || self.leased.contains(&(at, *offset)),
                    Slot::Dead => self.dead.contains(offset),
                };
                debug_assert!(indexed, "message {offset} missing from the indexes of {}", self.name);
            }
        }
    }
}
