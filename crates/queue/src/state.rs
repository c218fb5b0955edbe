//! The queue's state: the message table, the subscriptions with their
//! delivery state, the producer dedup ids, and every rule that changes them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use raftmq_types::{
    DeadReason, DeliveredMessage, DeliveryPolicy, NewMessage, Offset, QueueCommand, QueueLimit, QueueLimits,
    QueueRequest, QueueResponse, Receipt, ReceiptFailure, ReceiptFailureReason, Retention, SeekTarget, StoredMessage,
    SubscriptionId, SubscriptionName, SubscriptionStart, TimestampMs, config::MAX_SUBSCRIPTIONS,
};
use serde::{Deserialize, Serialize};

use crate::Change;
use crate::cold::{Cold, ColdError, ColdStore, NothingEvicted};
use crate::dedup::DedupIndex;
use crate::subscription::{DeliveryState, Lease, Subscription, SubscriptionStats};
use crate::table::{MessageInfo, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Stored messages some subscription has not acked yet, dead ones
    /// included: what `max_messages` counts.
    pub depth: u64,
    /// Their bodies and headers, in bytes: what `max_bytes` counts.
    pub bytes: u64,
    /// Summed over the subscriptions (see `QueueState::subscriptions`):
    /// leased with a lease that has not run out,
    pub in_flight: u64,
    /// waiting for a delivery time, a nack's delay or a retry backoff,
    pub delayed: u64,
    /// what lease commands would get now,
    pub available: u64,
    /// dead, waiting to be moved to the dead-letter queue.
    pub dead: u64,
    /// Messages every subscription is done with, kept by retention.
    pub retained: u64,
    pub retained_bytes: u64,
    pub next_offset: Offset,
    /// Producer dedup ids remembered.
    pub dedup_ids: u64,
    pub subscriptions: u64,
}

/// The persisted list of a queue's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionList {
    /// The id the next subscription gets; ids are never reused.
    pub next_id: u32,
    pub subscriptions: Vec<(SubscriptionId, SubscriptionName)>,
}

/// A dead message of one subscription, for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadMessage {
    pub subscription: SubscriptionId,
    pub subscription_name: SubscriptionName,
    pub offset: Offset,
    pub state: DeliveryState,
    pub info: MessageInfo,
}

/// A stored message as `peek` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekedMessage {
    pub offset: Offset,
    pub info: MessageInfo,
    /// The subscription's record; `None` when the subscription is done with
    /// the message (acked, or before its start) and retention keeps it.
    pub state: Option<DeliveryState>,
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

/// How many evicted messages a lease reads back at least, so that a consumer
/// working through a deep backlog reads the disk once per chunk.
/// Small in tests, so that they read runs back in pieces.
const RELOAD_CHUNK: u64 = if cfg!(test) { 2 } else { 1024 };

/// How many in-memory messages past the number to evict `evict` looks at,
/// for the ones that cannot be evicted (delayed, expiring, delivered).
const EVICT_SCAN_SLACK: usize = if cfg!(test) { 2 } else { 1024 };

fn exhausted(policy: &DeliveryPolicy, attempts: u32) -> bool {
    policy.max_deliveries > 0 && attempts >= policy.max_deliveries
}

#[derive(Debug, Clone)]
pub struct QueueState {
    next_offset: Offset,
    table: Table,
    /// Held messages evicted from memory (see `cold.rs`).
    cold: Cold,
    subscriptions: BTreeMap<SubscriptionId, Subscription>,
    by_name: BTreeMap<SubscriptionName, SubscriptionId>,
    next_subscription: u32,
    /// Producer dedup ids, with the offsets they were stored at. Not
    /// emptied by a purge: a retried produce still must not store again.
    dedup: DedupIndex,
}

impl Default for QueueState {
    fn default() -> Self {
        let mut state = QueueState {
            next_offset: Offset(0),
            table: Table::default(),
            cold: Cold::default(),
            subscriptions: BTreeMap::new(),
            by_name: BTreeMap::new(),
            next_subscription: 1,
            dedup: DedupIndex::default(),
        };
        state.add_subscription(SubscriptionId::DEFAULT, SubscriptionName::default_subscription());
        state
    }
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

/// When a subscription lets go of a message, and the retention that decides
/// whether the table keeps it.
#[derive(Clone, Copy)]
struct Release {
    now: TimestampMs,
    retention: Retention,
}

fn put_delivery(sub: &mut Subscription, offset: Offset, state: DeliveryState, changes: &mut Vec<Change>) {
    sub.replace(offset, state);
    changes.push(Change::PutDelivery { subscription: sub.id, offset, state });
}

/// The subscription is done with the message: acked, dropped or dead-lettered.
fn drop_record(sub: &mut Subscription, table: &mut Table, offset: Offset, release: Release, changes: &mut Vec<Change>) {
    sub.remove(offset);
    changes.push(Change::DeleteDelivery { subscription: sub.id, offset });
    table.release(offset, release.now, &release.retention, changes);
}

/// A message dies in a subscription: kept as dead for the dead-letter queue,
/// or dropped.
fn kill(
    sub: &mut Subscription,
    table: &mut Table,
    offset: Offset,
    reason: DeadReason,
    keep: bool,
    release: Release,
    changes: &mut Vec<Change>,
) {
    if keep {
        let current = *sub.get(offset).expect("kill of a message the subscription does not hold");
        put_delivery(sub, offset, DeliveryState { dead: Some(reason), lease: None, ..current }, changes);
    } else {
        drop_record(sub, table, offset, release, changes);
    }
}

impl Deaths {
    fn count(&mut self, keep: bool) {
        if keep { self.died += 1 } else { self.dropped += 1 }
    }
}

/// Brings one subscription's indexes up to `now`: messages whose delivery or
/// retry time came move into `ready`, or die if their last allowed delivery
/// ran out.
fn advance_subscription(
    sub: &mut Subscription,
    table: &mut Table,
    now: TimestampMs,
    policy: &DeliveryPolicy,
    deaths: &mut Deaths,
    changes: &mut Vec<Change>,
) {
    sub.promote_waiting(now);
    let release = Release { now, retention: policy.retention };
    while let Some(offset) = sub.due_lease(now) {
        let attempts = sub.get(offset).map_or(0, |d| d.attempts);
        if exhausted(policy, attempts) {
            kill(sub, table, offset, DeadReason::MaxDeliveries, policy.dead_letter, release, changes);
            deaths.count(policy.dead_letter);
        } else {
            sub.promote_lease(offset);
        }
    }
}

impl QueueState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state from persisted records: the subscription list
    /// (`None` for a queue that never changed it), message infos, delivery
    /// records, dedup ids and correlation ids. The tests' replica restart;
    /// storage restores message by message ([`Self::restoring`]).
    #[cfg(test)]
    pub(crate) fn restore(
        next_offset: Offset,
        list: Option<SubscriptionList>,
        messages: impl IntoIterator<Item = (Offset, MessageInfo)>,
        deliveries: impl IntoIterator<Item = (SubscriptionId, Offset, DeliveryState)>,
        dedup: impl IntoIterator<Item = (Offset, String, TimestampMs)>,
        correlations: impl IntoIterator<Item = (Offset, String)>,
    ) -> Self {
        let mut state = QueueState::restoring(next_offset, list, dedup);
        let mut records: HashMap<Offset, Vec<(SubscriptionId, DeliveryState)>> = HashMap::new();
        for (id, offset, delivery) in deliveries {
            records.entry(offset).or_default().push((id, delivery));
        }
        let mut correlations: HashMap<Offset, String> = correlations.into_iter().collect();
        for (offset, info) in messages {
            let records = records.remove(&offset).unwrap_or_default();
            state.restore_message(offset, info, &records, correlations.remove(&offset));
        }
        state.check_invariants();
        state
    }

    /// A state without messages, to restore them one by one in offset order
    /// with [`Self::restore_message`]: a deep backlog can be evicted while
    /// it is read.
    pub fn restoring(
        next_offset: Offset,
        list: Option<SubscriptionList>,
        dedup: impl IntoIterator<Item = (Offset, String, TimestampMs)>,
    ) -> Self {
        let mut state = QueueState { next_offset, dedup: DedupIndex::restore(dedup), ..Default::default() };
        if let Some(list) = list {
            state.subscriptions.clear();
            state.by_name.clear();
            state.next_subscription = list.next_id;
            for (id, name) in list.subscriptions {
                state.add_subscription(id, name);
            }
        }
        state
    }

    /// Every subscription's id, lowest first.
    pub fn subscription_ids(&self) -> Vec<SubscriptionId> {
        self.subscriptions.keys().copied().collect()
    }

    /// One stored message with its delivery records; records of
    /// subscriptions that no longer exist are ignored.
    pub fn restore_message(
        &mut self,
        offset: Offset,
        info: MessageInfo,
        records: &[(SubscriptionId, DeliveryState)],
        correlation_id: Option<String>,
    ) {
        let holders = records.iter().filter(|(id, _)| self.subscriptions.contains_key(id)).count();
        self.table.restore(offset, info, holders as u32);
        for (id, delivery) in records {
            if let Some(sub) = self.subscriptions.get_mut(id) {
                sub.insert(offset, *delivery);
            }
        }
        if let Some(id) = correlation_id {
            self.table.restore_correlation(offset, id);
        }
    }

    fn add_subscription(&mut self, id: SubscriptionId, name: SubscriptionName) {
        self.by_name.insert(name.clone(), id);
        self.subscriptions.insert(id, Subscription::new(id, name));
    }

    fn subscription_list(&self) -> SubscriptionList {
        SubscriptionList {
            next_id: self.next_subscription,
            subscriptions: self.subscriptions.values().map(|s| (s.id, s.name.clone())).collect(),
        }
    }

    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    pub fn subscription_id(&self, name: &SubscriptionName) -> Option<SubscriptionId> {
        self.by_name.get(name).copied()
    }

    pub fn delivery(&self, subscription: SubscriptionId, offset: Offset) -> Option<&DeliveryState> {
        self.subscriptions.get(&subscription)?.get(offset)
    }

    /// Up to `max` stored messages from `from` (inclusive) to `to`
    /// (exclusive), in offset order, with the subscription's delivery
    /// records; evicted ones are read from `store`. Changes nothing.
    pub fn peek(
        &self,
        subscription: SubscriptionId,
        from: Offset,
        to: Offset,
        max: usize,
        store: &impl ColdStore,
    ) -> Result<Vec<PeekedMessage>, ColdError> {
        let mut records = self.peek_in_memory(subscription, from, to, max);
        for (start, end, holders) in self.cold.overlapping(from, to) {
            if records.iter().filter(|r| r.offset < start).count() >= max {
                break;
            }
            let upto = Offset(end.0.min(start.0.saturating_add(max as u64)));
            let held = holders.contains(&subscription);
            for (offset, info) in store.read_infos(start, upto)? {
                let state = held.then(|| DeliveryState::fresh(info.deliver_at));
                records.push(PeekedMessage { offset, info, state });
            }
        }
        records.sort_by_key(|r| r.offset);
        records.truncate(max);
        Ok(records)
    }

    fn peek_in_memory(&self, subscription: SubscriptionId, from: Offset, to: Offset, max: usize) -> Vec<PeekedMessage> {
        if from >= to {
            return Vec::new();
        }
        let sub = self.subscriptions.get(&subscription);
        self.table
            .range(from, to)
            .take(max)
            .map(|(offset, info)| PeekedMessage {
                offset,
                info: *info,
                state: sub.and_then(|s| s.get(offset)).copied(),
            })
            .collect()
    }

    /// Up to `max` dead messages of every subscription, for the dead-letter queue.
    pub fn dead_messages(&self, max: usize) -> Vec<DeadMessage> {
        self.subscriptions
            .values()
            .flat_map(|sub| {
                sub.dead_offsets().map(move |offset| DeadMessage {
                    subscription: sub.id,
                    subscription_name: sub.name.clone(),
                    offset,
                    state: *sub.get(offset).expect("dead index and records agree"),
                    info: *self.table.info(offset).expect("a held message is in the table"),
                })
            })
            .take(max)
            .collect()
    }

    /// Whether a `Sweep` would change anything now: a time to live ran out,
    /// (with a delivery limit) a lease ran out and may have been the last, or
    /// retention no longer keeps a retained message.
    pub fn needs_sweep(&self, now: TimestampMs, policy: &DeliveryPolicy) -> bool {
        self.table.due_expiry(now).is_some()
            || (policy.max_deliveries > 0 && self.subscriptions.values().any(|s| s.due_lease(now).is_some()))
            || self.table.needs_trim(now, &policy.retention)
    }

    /// [`Self::apply_with`] for a state that never evicts messages (tests,
    /// benchmarks): there is nothing to read back.
    ///
    /// # Panics
    /// If the state has evicted messages and the command needs them.
    pub fn apply(&mut self, log_index: u64, request: &QueueRequest, changes: &mut Vec<Change>) -> QueueResponse {
        self.apply_with(log_index, request, changes, &NothingEvicted).expect("a state that evicts needs a cold store")
    }

    /// Applies one committed command: the response, and the changes to
    /// persist appended to `changes`. Evicted messages the command needs are
    /// read back from `store` first; if that fails, the command has not been
    /// applied (reading back changes what is in memory, never the state).
    pub fn apply_with(
        &mut self,
        log_index: u64,
        request: &QueueRequest,
        changes: &mut Vec<Change>,
        store: &impl ColdStore,
    ) -> Result<QueueResponse, ColdError> {
        self.apply_command(log_index, request.now, &request.command, changes, store)
    }

    fn apply_command(
        &mut self,
        log_index: u64,
        now: TimestampMs,
        command: &QueueCommand,
        changes: &mut Vec<Change>,
        store: &impl ColdStore,
    ) -> Result<QueueResponse, ColdError> {
        if let QueueCommand::Batch(commands) = command {
            // Each command reads back what it needs when its turn comes, as
            // if it were its own entry. Should a read-back fail midway, the
            // commands before it are applied in memory only: the error stops
            // the group before anything is persisted, and a restart rebuilds
            // the state from storage and applies the whole entry again.
            let responses = commands
                .iter()
                .map(|command| self.apply_command(log_index, now, command, changes, store))
                .collect::<Result<_, _>>()?;
            return Ok(QueueResponse::Batch(responses));
        }
        self.reload_for(now, command, store)?;
        Ok(self.apply_in_memory(log_index, now, command, changes))
    }

    /// Reads back the evicted messages `command` could touch. Only a lease
    /// takes evicted messages as they come; the commands that change every
    /// message of a subscription read all of them back.
    fn reload_for(
        &mut self,
        now: TimestampMs,
        command: &QueueCommand,
        store: &impl ColdStore,
    ) -> Result<(), ColdError> {
        if self.cold.is_empty() {
            return Ok(());
        }
        match command {
            QueueCommand::Lease { subscription, max_messages, policy, correlation_id: None, .. } => {
                match self.subscription_id(subscription) {
                    Some(id) => self.reload_for_lease(id, *max_messages, now, policy, store),
                    None => Ok(()),
                }
            }
            QueueCommand::Seek { .. }
            | QueueCommand::DeleteSubscription { .. }
            | QueueCommand::CreateSubscription { start: SubscriptionStart::Earliest, .. } => self.reload_all(store),
            _ => Ok(()),
        }
    }

    /// A lease takes its messages lowest offset first from the available
    /// ones. Its `n`-th pick from memory is at most the `n`-th ready message
    /// that will not die first (more may become ready, none of these leaves),
    /// so every evicted message it could take is below that: read those back.
    fn reload_for_lease(
        &mut self,
        id: SubscriptionId,
        n: u32,
        now: TimestampMs,
        policy: &DeliveryPolicy,
        store: &impl ColdStore,
    ) -> Result<(), ColdError> {
        if n == 0 {
            return Ok(());
        }
        while let Some((start, end)) = self.cold.first_held_by(id) {
            let sub = &self.subscriptions[&id];
            let table = &self.table;
            let nth = sub
                .ready_offsets()
                .filter(|offset| {
                    let attempts = sub.get(*offset).map_or(0, |d| d.attempts);
                    !exhausted(policy, attempts) && !table.info(*offset).is_some_and(|info| info.expired(now))
                })
                .nth(n as usize - 1);
            if nth.is_some_and(|offset| offset < start) {
                break;
            }
            let upto = Offset(end.0.min(start.0.saturating_add(u64::from(n).max(RELOAD_CHUNK))));
            self.reload(start, upto, store)?;
            // What the lease itself would do first; it lets the next round see them.
            self.subscriptions.get_mut(&id).expect("resolved above").promote_waiting(now);
        }
        Ok(())
    }

    fn reload_all(&mut self, store: &impl ColdStore) -> Result<(), ColdError> {
        while let Some((start, end)) = self.cold.first() {
            self.reload(start, end, store)?;
        }
        Ok(())
    }

    /// Reads back `start..upto`, the front of a cold run, into memory.
    fn reload(&mut self, start: Offset, upto: Offset, store: &impl ColdStore) -> Result<(), ColdError> {
        let loaded = store.read_infos(start, upto)?;
        let complete = loaded.len() as u64 == upto.0 - start.0
            && loaded.iter().zip(start.0..).all(|((offset, info), want)| {
                offset.0 == want && info.expires_at.is_none() && info.deliver_at == info.publish_time
            });
        if !complete {
            return Err(ColdError(format!(
                "messages {start}..{upto} should be stored without expiry or delay; read {} records",
                loaded.len()
            )));
        }
        let holders = self.cold.take_front(start, upto, &loaded);
        for (offset, info) in loaded {
            self.table.reload(offset, info, holders.len() as u32);
            for id in &holders {
                let sub = self.subscriptions.get_mut(id).expect("cold runs are held by existing subscriptions");
                sub.insert(offset, DeliveryState::fresh(info.deliver_at));
            }
        }
        Ok(())
    }

    /// Evicts messages from memory while it holds more than `limit`, down
    /// to three quarters of it, newest first: the oldest are leased next.
    /// Only messages that are cold (see `cold.rs`) can go. Returns how many
    /// went. Call it only when every change so far is stored: evicted
    /// messages are read back from the store.
    pub fn evict(&mut self, limit: usize) -> usize {
        let len = self.table.len();
        if len <= limit {
            return 0;
        }
        let excess = len - (limit - limit / 4);
        let victims: Vec<(Offset, Vec<SubscriptionId>)> = self
            .table
            .newest_first()
            .take(excess + EVICT_SCAN_SLACK)
            .filter_map(|(offset, info, holders)| self.cold_holders(offset, info, holders).map(|ids| (offset, ids)))
            .take(excess)
            .collect();
        let evicted = victims.len();
        for (offset, holders) in victims {
            let info = self.table.evict(offset);
            for id in &holders {
                self.subscriptions.get_mut(id).expect("listed from the subscriptions").remove(offset);
            }
            self.cold.push(offset, info.size, holders);
        }
        self.check_invariants();
        evicted
    }

    /// The subscriptions holding the message, if it can be evicted: no
    /// expiry, no delay, no correlation id, never delivered by any holder.
    fn cold_holders(&self, offset: Offset, info: &MessageInfo, holders: u32) -> Option<Vec<SubscriptionId>> {
        if holders == 0
            || info.expires_at.is_some()
            || info.deliver_at != info.publish_time
            || self.table.is_correlated(offset)
        {
            return None;
        }
        let fresh = DeliveryState::fresh(info.deliver_at);
        let mut ids = Vec::with_capacity(holders as usize);
        for sub in self.subscriptions.values() {
            match sub.get(offset) {
                Some(delivery) if *delivery == fresh => ids.push(sub.id),
                Some(_) => return None,
                None => {}
            }
        }
        Some(ids)
    }

    /// The offset of the lowest stored message (in memory or evicted), or
    /// the next offset when none is: every message below it is deleted.
    pub fn first_stored(&self) -> Offset {
        let evicted = self.cold.first().map(|(start, _)| start);
        self.table.first().into_iter().chain(evicted).min().unwrap_or(self.next_offset)
    }

    /// Messages held in memory and evicted.
    pub fn resident(&self) -> (u64, u64) {
        (self.table.len() as u64, self.cold.totals().0)
    }

    fn apply_in_memory(
        &mut self,
        log_index: u64,
        now: TimestampMs,
        command: &QueueCommand,
        changes: &mut Vec<Change>,
    ) -> QueueResponse {
        let response = match command {
            QueueCommand::Produce { messages, dedup_window_ms, limits } => {
                self.produce(now, messages, *dedup_window_ms, *limits, changes)
            }
            QueueCommand::Lease {
                subscription,
                max_messages,
                max_bytes,
                visibility_timeout_ms,
                policy,
                correlation_id,
            } => {
                let limits = match correlation_id {
                    Some(id) => Limits::Correlated(id),
                    None => Limits::Count(*max_messages, *max_bytes),
                };
                match self.subscription_id(subscription) {
                    Some(id) => self.lease(log_index, now, id, limits, *visibility_timeout_ms, policy, changes),
                    None => QueueResponse::SubscriptionNotFound,
                }
            }
            QueueCommand::Ack { receipts, retention } => {
                let release = Release { now, retention: *retention };
                self.settle(now, receipts, |sub, table, offset, _| drop_record(sub, table, offset, release, changes))
            }
            QueueCommand::Nack { receipts, delay_ms, policy } => {
                let release = Release { now, retention: policy.retention };
                self.settle(now, receipts, |sub, table, offset, current| {
                    if exhausted(policy, current.attempts) {
                        kill(sub, table, offset, DeadReason::MaxDeliveries, policy.dead_letter, release, changes);
                        return;
                    }
                    let delay = delay_ms.unwrap_or_else(|| retry_backoff_ms(policy, current.attempts, offset));
                    let updated = DeliveryState { visible_at: now.saturating_add_ms(delay), lease: None, ..current };
                    put_delivery(sub, offset, updated, changes);
                })
            }
            QueueCommand::ExtendLease { receipts, visibility_timeout_ms } => {
                self.settle(now, receipts, |sub, _, offset, current| {
                    let lease = current.lease.map(|l| {
                        let deadline = now.saturating_add_ms(*visibility_timeout_ms);
                        let backoff = l.retry_at.0.saturating_sub(l.deadline.0);
                        Lease { lease_id: l.lease_id, deadline, retry_at: deadline.saturating_add_ms(backoff) }
                    });
                    put_delivery(sub, offset, DeliveryState { lease, ..current }, changes);
                })
            }
            QueueCommand::Purge => {
                let removed = self.table.len() as u64 + self.cold.totals().0;
                for sub in self.subscriptions.values_mut() {
                    sub.clear();
                }
                self.table = Table::default();
                self.cold = Cold::default();
                changes.push(Change::DeleteAllMessages);
                QueueResponse::Purged { removed }
            }
            QueueCommand::Sweep { policy } => {
                let mut deaths = Deaths::default();
                self.advance_expiry(now, policy, &mut deaths, changes);
                for sub in self.subscriptions.values_mut() {
                    advance_subscription(sub, &mut self.table, now, policy, &mut deaths, changes);
                }
                deaths.dropped += self.table.trim(now, &policy.retention, changes);
                QueueResponse::Swept { died: deaths.died, dropped: deaths.dropped }
            }
            QueueCommand::RemoveDead { subscription, offsets, retention } => {
                let mut removed = 0;
                if let Some(sub) = self.subscriptions.get_mut(subscription) {
                    let release = Release { now, retention: *retention };
                    for offset in offsets {
                        if sub.get(*offset).is_some_and(|d| d.dead.is_some()) {
                            drop_record(sub, &mut self.table, *offset, release, changes);
                            removed += 1;
                        }
                    }
                }
                QueueResponse::RemovedDead { removed }
            }
            QueueCommand::CreateSubscription { name, start } => self.create_subscription(now, name, *start, changes),
            QueueCommand::DeleteSubscription { name, retention } => {
                let Some(id) = self.subscription_id(name) else {
                    return self.checked(QueueResponse::SubscriptionNotFound);
                };
                if id == SubscriptionId::DEFAULT {
                    return self.checked(QueueResponse::DefaultSubscription);
                }
                let mut sub = self.subscriptions.remove(&id).expect("named subscriptions exist");
                self.by_name.remove(name);
                changes.push(Change::ClearSubscription(id));
                for offset in sub.clear() {
                    self.table.release(offset, now, retention, changes);
                }
                changes.push(Change::PutSubscriptions(self.subscription_list()));
                QueueResponse::SubscriptionDeleted { id }
            }
            QueueCommand::Seek { subscription, target, retention } => match self.subscription_id(subscription) {
                Some(id) => {
                    let pending = self.seek(id, *target, Release { now, retention: *retention }, changes);
                    QueueResponse::Sought { pending }
                }
                None => QueueResponse::SubscriptionNotFound,
            },
            QueueCommand::Batch(_) => unreachable!("apply_command applies a batch one command at a time"),
        };
        self.checked(response)
    }

    fn checked(&self, response: QueueResponse) -> QueueResponse {
        self.check_invariants();
        response
    }

    /// Appends the batch, except messages whose dedup id is remembered: those
    /// answer with the original's offset. Ids repeated within the batch count
    /// too. With `dedup_window_ms` 0 ids are neither checked nor remembered.
    /// If the new messages would take the queue past a limit, nothing is
    /// stored. Every subscription receives each new message, unless the
    /// message names one that exists.
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
            let (depth, bytes) = self.table.held();
            return QueueResponse::Full { limit, depth, bytes };
        }
        let everyone: Vec<SubscriptionId> = self.subscriptions.keys().copied().collect();
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
            let info = MessageInfo {
                publish_time: now,
                deliver_at: message.deliver_at.map_or(now, |at| at.max(now)),
                size: message.size_bytes(),
                expires_at: message.expires_at,
            };
            changes.push(Change::PutMessage {
                message: StoredMessage {
                    offset,
                    publish_time: now,
                    body: message.body.clone(),
                    headers: message.headers.clone(),
                    correlation_id: message.correlation_id.clone(),
                },
                info,
            });
            let only = message.subscription.as_ref().and_then(|name| self.by_name.get(name));
            let targets = only.map_or(everyone.as_slice(), std::slice::from_ref);
            self.table.add(offset, info, message.correlation_id.as_deref(), targets.len() as u32);
            for id in targets {
                let sub = self.subscriptions.get_mut(id).expect("listed above");
                put_delivery(sub, offset, DeliveryState::fresh(info.deliver_at), changes);
            }
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
        let (depth, held_bytes) = self.table.held();
        if limits.max_messages > 0 && depth + count > limits.max_messages {
            return Some(QueueLimit::MaxMessages(limits.max_messages));
        }
        if limits.max_bytes > 0 && held_bytes + bytes > limits.max_bytes {
            return Some(QueueLimit::MaxBytes(limits.max_bytes));
        }
        None
    }

    #[allow(clippy::too_many_arguments)] // one per field of the Lease command
    fn lease(
        &mut self,
        log_index: u64,
        now: TimestampMs,
        id: SubscriptionId,
        limits: Limits,
        visibility_timeout_ms: u64,
        policy: &DeliveryPolicy,
        changes: &mut Vec<Change>,
    ) -> QueueResponse {
        let mut deaths = Deaths::default();
        self.advance_expiry(now, policy, &mut deaths, changes);
        let sub = self.subscriptions.get_mut(&id).expect("resolved by the caller");
        let table = &mut self.table;
        advance_subscription(sub, table, now, policy, &mut deaths, changes);
        let release = Release { now, retention: policy.retention };
        let deadline = now.saturating_add_ms(visibility_timeout_ms);
        let mut messages = Vec::new();
        let mut bytes = 0u64;
        let (max_messages, max_bytes) = match limits {
            Limits::Count(messages, bytes) => (messages, bytes),
            Limits::Correlated(_) => (1, 0),
        };
        while messages.len() < max_messages as usize {
            let next = match limits {
                Limits::Count(..) => sub.first_ready(),
                Limits::Correlated(id) => table.correlated(id).find(|offset| sub.is_ready(*offset)),
            };
            let Some(offset) = next else { break };
            let current = *sub.get(offset).expect("ready messages have records");
            let size = table.info(offset).expect("held messages are in the table").size;
            if max_bytes > 0 && !messages.is_empty() && bytes + size > max_bytes {
                break;
            }
            // The limit may have been lowered since its last delivery.
            if exhausted(policy, current.attempts) {
                kill(sub, table, offset, DeadReason::MaxDeliveries, policy.dead_letter, release, changes);
                continue;
            }
            let attempts = current.attempts.saturating_add(1);
            // No backoff after the last allowed delivery: it dies when the lease runs out.
            let backoff = if exhausted(policy, attempts) { 0 } else { retry_backoff_ms(policy, attempts, offset) };
            let lease = Lease { lease_id: log_index, deadline, retry_at: deadline.saturating_add_ms(backoff) };
            put_delivery(sub, offset, DeliveryState { attempts, lease: Some(lease), ..current }, changes);
            bytes += size;
            messages.push(DeliveredMessage {
                offset,
                receipt: Receipt { subscription: id, offset, lease_id: log_index },
                delivery_attempt: attempts,
                lease_deadline: deadline,
            });
        }
        QueueResponse::Leased { messages }
    }

    /// Ack, nack and extend: check each receipt, then let `settle_one` change
    /// the message in the receipt's subscription. A receipt is valid while
    /// its lease is the message's current lease there and has not run out.
    fn settle(
        &mut self,
        now: TimestampMs,
        receipts: &[Receipt],
        mut settle_one: impl FnMut(&mut Subscription, &mut Table, Offset, DeliveryState),
    ) -> QueueResponse {
        let mut succeeded = 0u32;
        let mut failures = Vec::new();
        for receipt in receipts {
            let Some(sub) = self.subscriptions.get_mut(&receipt.subscription) else {
                failures.push(ReceiptFailure { receipt: *receipt, reason: ReceiptFailureReason::MessageGone });
                continue;
            };
            // An evicted message was never delivered: no receipt is for its lease.
            if sub.get(receipt.offset).is_none() && self.cold.holds(sub.id, receipt.offset) {
                failures.push(ReceiptFailure { receipt: *receipt, reason: ReceiptFailureReason::LeaseGone });
                continue;
            }
            match check(sub, now, receipt) {
                Check::Valid => {
                    let current = *sub.get(receipt.offset).expect("checked");
                    settle_one(sub, &mut self.table, receipt.offset, current);
                    succeeded += 1;
                }
                Check::Failed(reason) => failures.push(ReceiptFailure { receipt: *receipt, reason }),
            }
        }
        QueueResponse::Settled { succeeded, failures }
    }

    /// Messages whose time to live ran out die in every subscription that
    /// holds them alive; a retained one is deleted.
    fn advance_expiry(
        &mut self,
        now: TimestampMs,
        policy: &DeliveryPolicy,
        deaths: &mut Deaths,
        changes: &mut Vec<Change>,
    ) {
        let keep = policy.dead_letter && policy.dead_letter_expired;
        let release = Release { now, retention: policy.retention };
        while let Some(offset) = self.table.due_expiry(now) {
            self.table.expiry_handled(offset);
            if self.table.holders(offset) == 0 {
                // Retained: nobody needs it, and its time is up.
                self.table.delete_retained(offset, changes);
                continue;
            }
            for sub in self.subscriptions.values_mut() {
                if sub.get(offset).is_some_and(|d| d.dead.is_none()) {
                    kill(sub, &mut self.table, offset, DeadReason::Expired, keep, release, changes);
                    deaths.count(keep);
                }
            }
        }
    }

    fn create_subscription(
        &mut self,
        now: TimestampMs,
        name: &SubscriptionName,
        start: SubscriptionStart,
        changes: &mut Vec<Change>,
    ) -> QueueResponse {
        if let Some(id) = self.subscription_id(name) {
            return QueueResponse::SubscriptionExists { id };
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return QueueResponse::TooManySubscriptions { max: MAX_SUBSCRIPTIONS };
        }
        let id = SubscriptionId(self.next_subscription);
        self.next_subscription += 1;
        self.add_subscription(id, name.clone());
        changes.push(Change::PutSubscriptions(self.subscription_list()));
        if start == SubscriptionStart::Earliest {
            // Nothing to release: the subscription is empty.
            self.seek(id, SeekTarget::Offset(Offset(0)), Release { now, retention: Retention::default() }, changes);
        }
        QueueResponse::SubscriptionCreated { id }
    }

    /// The subscription holds every stored, unexpired message at or after
    /// `target` as never delivered, and lets go of the others. Returns how
    /// many it holds.
    fn seek(&mut self, id: SubscriptionId, target: SeekTarget, release: Release, changes: &mut Vec<Change>) -> u64 {
        let now = release.now;
        let wanted: Vec<(Offset, TimestampMs)> = self
            .table
            .iter()
            .filter(|(offset, info)| {
                !info.expired(now)
                    && match target {
                        SeekTarget::Offset(from) => *offset >= from,
                        SeekTarget::Time(from) => info.publish_time >= from,
                    }
            })
            .map(|(offset, info)| (offset, info.deliver_at))
            .collect();
        let sub = self.subscriptions.get_mut(&id).expect("resolved by the caller");
        // Hold the wanted messages first, so that letting go of the others
        // cannot make retention delete one of them.
        for (offset, _) in &wanted {
            if sub.get(*offset).is_none() {
                self.table.hold(*offset);
            }
        }
        let keep: BTreeSet<Offset> = wanted.iter().map(|(offset, _)| *offset).collect();
        changes.push(Change::ClearSubscription(id));
        for offset in sub.clear() {
            if !keep.contains(&offset) {
                self.table.release(offset, now, &release.retention, changes);
            }
        }
        for (offset, visible_at) in &wanted {
            put_delivery(sub, *offset, DeliveryState::fresh(*visible_at), changes);
        }
        wanted.len() as u64
    }

    /// Whether a lease of the subscription for correlation id `id` would get a message now.
    pub fn has_available_correlated(&self, subscription: SubscriptionId, now: TimestampMs, id: &str) -> bool {
        self.subscriptions
            .get(&subscription)
            .is_some_and(|sub| self.table.correlated(id).any(|offset| sub.is_available(now, offset)))
    }

    /// Whether a lease would get anything now (the server asks
    /// `available_up_to`, which also says how much).
    #[cfg(test)]
    pub fn has_available(&self, subscription: SubscriptionId, now: TimestampMs) -> bool {
        self.available_up_to(subscription, now, 1) > 0
    }

    /// How many messages a lease of `subscription` would find available now
    /// (evicted ones included: never delivered, so due), counting no further
    /// than `limit`.
    pub fn available_up_to(&self, subscription: SubscriptionId, now: TimestampMs, limit: u64) -> u64 {
        let Some(sub) = self.subscriptions.get(&subscription) else {
            return 0;
        };
        let hot = sub.available_up_to(now, usize::try_from(limit).unwrap_or(usize::MAX)) as u64;
        if hot >= limit {
            return hot;
        }
        (hot + self.cold.held_by(subscription)).min(limit)
    }

    pub fn next_wakeup(&self, subscription: SubscriptionId, now: TimestampMs) -> Option<TimestampMs> {
        self.subscriptions.get(&subscription)?.next_wakeup(now)
    }

    /// Every subscription with its counts, `default` first.
    pub fn subscriptions(&self, now: TimestampMs) -> Vec<SubscriptionStats> {
        self.subscriptions.values().map(|sub| self.subscription_stats(sub, now)).collect()
    }

    /// Evicted messages are never delivered and due: available.
    fn subscription_stats(&self, sub: &Subscription, now: TimestampMs) -> SubscriptionStats {
        let mut stats = sub.stats(now);
        let cold = self.cold.held_by(sub.id);
        stats.depth += cold;
        stats.available += cold;
        stats
    }

    pub fn stats(&self, now: TimestampMs) -> QueueStats {
        let (depth, bytes) = self.table.held();
        let (retained, retained_bytes) = self.table.retained();
        let mut stats = QueueStats {
            depth,
            bytes,
            retained,
            retained_bytes,
            next_offset: self.next_offset,
            dedup_ids: self.dedup.len() as u64,
            subscriptions: self.subscriptions.len() as u64,
            ..Default::default()
        };
        for sub in self.subscriptions.values() {
            let s = self.subscription_stats(sub, now);
            stats.in_flight += s.in_flight;
            stats.delayed += s.delayed;
            stats.available += s.available;
            stats.dead += s.dead;
        }
        stats
    }

    /// The table and every subscription are consistent: each record is of a
    /// stored message, each message's holder count is its number of
    /// records, and nothing is at or beyond `next_offset`.
    /// O(n): run after every command by this crate's tests only (a debug
    /// build of the server would pay it on every apply).
    fn check_invariants(&self) {
        if cfg!(test) {
            self.table.check_invariants(self.cold.totals());
            self.cold.check_invariants();
            for (start, end, ids) in self.cold.runs() {
                debug_assert!(end <= self.next_offset, "cold run {start}..{end} past next_offset");
                debug_assert!(self.table.range(start, end).next().is_none(), "cold run {start}..{end} in memory");
                debug_assert!(
                    ids.iter().all(|id| self.subscriptions.contains_key(id)),
                    "cold run of a gone subscription"
                );
            }
            let mut holders: HashMap<Offset, u32> = HashMap::new();
            for sub in self.subscriptions.values() {
                sub.check_invariants();
                for offset in sub.offsets() {
                    *holders.entry(offset).or_default() += 1;
                }
            }
            for (offset, _) in self.table.iter() {
                debug_assert!(offset < self.next_offset, "offset {offset} at or past next_offset");
                let count = holders.remove(&offset).unwrap_or(0);
                debug_assert_eq!(self.table.holders(offset), count, "holder count of {offset} is off");
            }
            debug_assert!(holders.is_empty(), "delivery records of messages not in the table: {holders:?}");
            debug_assert_eq!(self.by_name.len(), self.subscriptions.len(), "subscription names disagree");
        }
    }
}

fn check(sub: &Subscription, now: TimestampMs, receipt: &Receipt) -> Check {
    let Some(delivery) = sub.get(receipt.offset) else {
        return Check::Failed(ReceiptFailureReason::MessageGone);
    };
    match delivery.lease {
        Some(lease) if delivery.dead.is_none() && lease.lease_id == receipt.lease_id && lease.deadline > now => {
            Check::Valid
        }
        _ => Check::Failed(ReceiptFailureReason::LeaseGone),
    }
}
