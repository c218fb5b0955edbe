//! State-machine tests: every rule, without a disk or a network.

use std::collections::BTreeMap;

use raftmq_types::{
    DeadReason, DeliveredMessage, DeliveryPolicy, NewMessage, Offset, QueueCommand, QueueLimit, QueueLimits,
    QueueRequest, QueueResponse, Receipt, ReceiptFailure, ReceiptFailureReason, Retention, SeekTarget, SubscriptionId,
    SubscriptionName, SubscriptionStart, TimestampMs,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Change, ColdError, ColdStore, DeliveryState, MessageInfo, QueueState, SubscriptionList, retry_backoff_ms};

const D: SubscriptionId = SubscriptionId::DEFAULT;

fn default_sub() -> SubscriptionName {
    SubscriptionName::default_subscription()
}

/// A queue plus the log index and the persisted-changes model, as a replica sees them.
#[derive(Clone)]
struct Harness {
    state: QueueState,
    index: u64,
    /// What storage would hold: delivery records, bodies and next offset.
    stored_deliveries: BTreeMap<(SubscriptionId, Offset), DeliveryState>,
    stored_infos: BTreeMap<Offset, MessageInfo>,
    stored_subscriptions: Option<SubscriptionList>,
    stored_bodies: BTreeMap<Offset, bytes::Bytes>,
    stored_next: Offset,
    stored_dedup: BTreeMap<Offset, (String, TimestampMs)>,
    stored_correlations: BTreeMap<Offset, String>,
    /// What the leader would stamp into commands that release messages.
    retention: Retention,
    /// Evict after every command down to this many messages in memory.
    evict_limit: Option<usize>,
}

/// The harness's stored message infos, as the state reads evicted ones back.
struct Stored<'a>(&'a BTreeMap<Offset, MessageInfo>);

impl ColdStore for Stored<'_> {
    fn read_infos(&self, from: Offset, to: Offset) -> Result<Vec<(Offset, MessageInfo)>, ColdError> {
        Ok(self.0.range(from..to).map(|(offset, info)| (*offset, *info)).collect())
    }
}

impl Harness {
    fn new() -> Self {
        Harness {
            state: QueueState::new(),
            index: 0,
            stored_deliveries: BTreeMap::new(),
            stored_infos: BTreeMap::new(),
            stored_subscriptions: None,
            stored_bodies: BTreeMap::new(),
            stored_next: Offset(0),
            stored_dedup: BTreeMap::new(),
            stored_correlations: BTreeMap::new(),
            retention: Retention::default(),
            evict_limit: None,
        }
    }

    fn evicting(limit: usize) -> Self {
        Harness { evict_limit: Some(limit), ..Harness::new() }
    }

    fn peek(&self, subscription: SubscriptionId, from: u64, to: u64, max: usize) -> Vec<crate::PeekedMessage> {
        self.state.peek(subscription, Offset(from), Offset(to), max, &Stored(&self.stored_infos)).expect("stored")
    }

    fn apply(&mut self, now: u64, command: QueueCommand) -> QueueResponse {
        self.index += 1;
        let mut changes = Vec::new();
        let request = QueueRequest { now: TimestampMs(now), command };
        let response = self
            .state
            .apply_with(self.index, &request, &mut changes, &Stored(&self.stored_infos))
            .expect("every evicted message is stored");
        for change in changes {
            match change {
                Change::PutMessage { message: m, info } => {
                    if let Some(id) = m.correlation_id {
                        self.stored_correlations.insert(m.offset, id);
                    }
                    self.stored_infos.insert(m.offset, info);
                    self.stored_bodies.insert(m.offset, m.body);
                }
                Change::PutDelivery { subscription, offset, state } => {
                    self.stored_deliveries.insert((subscription, offset), state);
                }
                Change::DeleteDelivery { subscription, offset } => {
                    assert!(self.stored_deliveries.remove(&(subscription, offset)).is_some(), "deleted twice");
                }
                Change::DeleteMessage { offset, size, correlated } => {
                    // Storage deletes only the records these say exist.
                    assert_eq!(self.stored_infos.get(&offset).map(|info| info.size), Some(size), "size of {offset}");
                    assert_eq!(self.stored_correlations.contains_key(&offset), correlated, "correlation of {offset}");
                    assert!(
                        !self.stored_deliveries.keys().any(|(_, o)| *o == offset),
                        "message {offset} deleted while a subscription holds it"
                    );
                    self.stored_infos.remove(&offset);
                    self.stored_bodies.remove(&offset);
                    self.stored_correlations.remove(&offset);
                }
                Change::DeleteAllMessages => {
                    self.stored_deliveries.clear();
                    self.stored_infos.clear();
                    self.stored_bodies.clear();
                    self.stored_correlations.clear();
                }
                Change::ClearSubscription(id) => self.stored_deliveries.retain(|(sub, _), _| *sub != id),
                Change::PutSubscriptions(list) => self.stored_subscriptions = Some(list),
                Change::PutNextOffset(o) => self.stored_next = o,
                Change::PutDedup { offset, id, expires_at } => {
                    self.stored_dedup.insert(offset, (id, expires_at));
                }
                Change::DeleteDedup { offset } => {
                    self.stored_dedup.remove(&offset);
                }
            }
        }
        if let Some(limit) = self.evict_limit {
            self.state.evict(limit);
        }
        // The storage crate's purge skips every record below it.
        let first = self.stored_bodies.keys().next().copied().unwrap_or(self.state.next_offset());
        assert_eq!(self.state.first_stored(), first, "first stored message");
        response
    }

    fn produce(&mut self, now: u64, bodies: &[&str]) -> (u64, u32) {
        let messages =
            bodies.iter().map(|b| NewMessage { body: b.as_bytes().to_vec().into(), ..Default::default() }).collect();
        let offsets = self.produce_messages(now, messages, 0);
        assert!(offsets.iter().all(|(_, duplicate)| !duplicate));
        (offsets.first().map(|(o, _)| *o).unwrap_or(self.state.next_offset().0), offsets.len() as u32)
    }

    /// Produces, and returns (offset, duplicate) per message.
    fn produce_messages(&mut self, now: u64, messages: Vec<NewMessage>, dedup_window_ms: u64) -> Vec<(u64, bool)> {
        match self.apply(now, QueueCommand::Produce { messages, dedup_window_ms, limits: QueueLimits::default() }) {
            QueueResponse::Produced { offsets } => offsets.into_iter().map(|(o, d)| (o.0, d)).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Produces one message per (body, dedup id) with the given window.
    fn produce_deduped(&mut self, now: u64, window_ms: u64, messages: &[(&str, &str)]) -> Vec<(u64, bool)> {
        let messages = messages
            .iter()
            .map(|(body, id)| NewMessage {
                body: body.as_bytes().to_vec().into(),
                dedup_id: Some(id.to_string()),
                ..Default::default()
            })
            .collect();
        self.produce_messages(now, messages, window_ms)
    }

    fn lease(&mut self, now: u64, max: u32, timeout: u64) -> Vec<DeliveredMessage> {
        self.lease_with(now, max, timeout, DeliveryPolicy::default())
    }

    /// Applies a lease command and returns what it leased.
    fn leased(&mut self, now: u64, command: QueueCommand) -> Vec<DeliveredMessage> {
        match self.apply(now, command) {
            QueueResponse::Leased { messages } => messages,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn settle(&mut self, now: u64, command: QueueCommand) -> (u32, Vec<ReceiptFailure>) {
        match self.apply(now, command) {
            QueueResponse::Settled { succeeded, failures } => (succeeded, failures),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn ack(&mut self, now: u64, receipts: &[Receipt]) -> (u32, Vec<ReceiptFailure>) {
        self.settle(now, QueueCommand::Ack { receipts: receipts.to_vec(), retention: Retention::default() })
    }

    /// A replica restarted from what was persisted.
    fn restored(&self) -> QueueState {
        QueueState::restore(
            self.stored_next,
            self.stored_subscriptions.clone(),
            self.stored_infos.clone(),
            self.stored_deliveries.iter().map(|((sub, offset), state)| (*sub, *offset, *state)),
            self.stored_dedup.iter().map(|(offset, (id, expires_at))| (*offset, id.clone(), *expires_at)),
            self.stored_correlations.iter().map(|(offset, id)| (*offset, id.clone())),
        )
    }
}

fn offsets(messages: &[DeliveredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.offset.0).collect()
}

fn failure(receipt: Receipt, reason: ReceiptFailureReason) -> ReceiptFailure {
    ReceiptFailure { receipt, reason }
}

#[test]
fn produce_assigns_sequential_offsets_across_batches() {
    let mut q = Harness::new();
    assert_eq!(q.produce(10, &["a", "b", "c"]), (0, 3));
    assert_eq!(q.produce(11, &["d"]), (3, 1));
    assert_eq!(q.state.next_offset(), Offset(4));
    assert_eq!(q.stored_next, Offset(4));
    assert_eq!(q.stored_bodies[&Offset(3)], b"d".to_vec());
}

#[test]
fn empty_produce_appends_nothing() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    assert_eq!(q.produce(11, &[]), (1, 0));
    assert_eq!(q.state.stats(TimestampMs(11)).depth, 1);
}

#[test]
fn lease_returns_lowest_offsets_first_up_to_max() {
    let mut q = Harness::new();
    q.produce(10, &["a", "b", "c", "d", "e"]);
    let first = q.lease(20, 2, 1000);
    assert_eq!(offsets(&first), vec![0, 1]);
    assert!(first.iter().all(|m| m.delivery_attempt == 1));
    assert!(first.iter().all(|m| m.lease_deadline == TimestampMs(1020)));
    assert_eq!(offsets(&q.lease(21, 10, 1000)), vec![2, 3, 4]);
    assert!(q.lease(22, 10, 1000).is_empty());
}

#[test]
fn leased_message_is_not_leased_again_before_its_deadline() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    q.lease(20, 1, 1000);
    assert!(q.lease(1019, 1, 1000).is_empty());
    assert!(!q.state.has_available(D, TimestampMs(1019)));
}

#[test]
fn expired_lease_makes_message_available_again_with_higher_attempt() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let first = q.lease(20, 1, 1000);
    assert!(q.state.has_available(D, TimestampMs(1020)));
    let second = q.lease(1020, 1, 1000);
    assert_eq!(offsets(&second), vec![0]);
    assert_eq!(second[0].delivery_attempt, 2);
    assert_ne!(second[0].receipt, first[0].receipt);
    // The first receipt is dead now, the second one works.
    assert_eq!(q.ack(1030, &[first[0].receipt]), (0, vec![failure(first[0].receipt, ReceiptFailureReason::LeaseGone)]));
    assert_eq!(q.ack(1031, &[second[0].receipt]), (1, vec![]));
}

#[test]
fn acked_message_never_comes_back() {
    let mut q = Harness::new();
    q.produce(10, &["a", "b"]);
    let leased = q.lease(20, 1, 100);
    assert_eq!(q.ack(30, &[leased[0].receipt]), (1, vec![]));
    assert!(q.state.delivery(D, Offset(0)).is_none());
    assert!(!q.stored_bodies.contains_key(&Offset(0)));
    // Long after the old deadline only message 1 is ever leased.
    for now in [200, 10_000, 1_000_000] {
        assert!(!offsets(&q.lease(now, 10, 100)).contains(&0));
    }
}

/// A batch applies its commands in order, as separate entries would: the
/// same responses, state and stored changes.
#[test]
fn a_batch_is_its_commands_one_after_another() {
    let mut batched = Harness::new();
    let mut separate = Harness::new();
    for q in [&mut batched, &mut separate] {
        q.produce(10, &["a", "b", "c", "d"]);
    }
    let first = batched.lease(20, 2, 1000);
    assert_eq!(separate.lease(20, 2, 1000), first);
    let ack =
        QueueCommand::Ack { receipts: first.iter().map(|m| m.receipt).collect(), retention: Retention::default() };
    let lease = QueueCommand::Lease {
        subscription: default_sub(),
        max_messages: 5,
        max_bytes: 0,
        visibility_timeout_ms: 1000,
        policy: DeliveryPolicy::default(),
        correlation_id: None,
    };
    let response = batched.apply(30, QueueCommand::Batch(vec![ack.clone(), lease.clone()]));
    let acked = separate.apply(30, ack);
    // Lease ids are log indexes: the separate lease at the batch's index.
    separate.index -= 1;
    let one_by_one = vec![acked, separate.apply(30, lease)];
    match &one_by_one[..] {
        [QueueResponse::Settled { succeeded: 2, failures }, QueueResponse::Leased { messages }] => {
            assert!(failures.is_empty());
            assert_eq!(offsets(messages), [2, 3], "the acked messages are not leased again");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(response, QueueResponse::Batch(one_by_one));
    assert_eq!(batched.state.stats(TimestampMs(30)), separate.state.stats(TimestampMs(30)));
    assert_eq!(
        (&batched.stored_deliveries, &batched.stored_bodies),
        (&separate.stored_deliveries, &separate.stored_bodies)
    );
    assert!(!batched.stored_bodies.contains_key(&Offset(0)), "the acked bodies are deleted");
}

#[test]
fn double_ack_reports_message_gone() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let r = q.lease(20, 1, 100)[0].receipt;
    assert_eq!(q.ack(30, &[r, r]), (1, vec![failure(r, ReceiptFailureReason::MessageGone)]));
    assert_eq!(q.ack(31, &[r]), (0, vec![failure(r, ReceiptFailureReason::MessageGone)]));
}

#[test]
fn ack_of_unknown_offset_reports_message_gone() {
    let mut q = Harness::new();
    let r = Receipt::new(Offset(42), 1);
    assert_eq!(q.ack(10, &[r]), (0, vec![failure(r, ReceiptFailureReason::MessageGone)]));
}

#[test]
fn ack_after_lease_expiry_reports_lease_gone_and_keeps_message() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let r = q.lease(20, 1, 100)[0].receipt;
    assert_eq!(q.ack(120, &[r]), (0, vec![failure(r, ReceiptFailureReason::LeaseGone)]));
    assert_eq!(q.state.stats(TimestampMs(120)).depth, 1);
    assert_eq!(offsets(&q.lease(121, 1, 100)), vec![0]);
}

#[test]
fn ack_of_never_leased_message_reports_lease_gone() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let r = Receipt::new(Offset(0), 99);
    assert_eq!(q.ack(20, &[r]), (0, vec![failure(r, ReceiptFailureReason::LeaseGone)]));
}

#[test]
fn nack_with_delay_hides_message_until_delay_passes() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let r = q.lease(20, 1, 1000)[0].receipt;
    assert_eq!(
        q.settle(30, QueueCommand::Nack { receipts: vec![r], delay_ms: Some(500), policy: DeliveryPolicy::default() }),
        (1, vec![])
    );
    assert!(!q.state.has_available(D, TimestampMs(529)));
    assert_eq!(q.state.next_wakeup(D, TimestampMs(100)), Some(TimestampMs(530)));
    assert_eq!(q.state.stats(TimestampMs(100)).delayed, 1);
    assert!(q.lease(529, 1, 1000).is_empty());
    let again = q.lease(530, 1, 1000);
    assert_eq!(offsets(&again), vec![0]);
    assert_eq!(again[0].delivery_attempt, 2);
    // The nacked receipt cannot settle anything any more.
    assert_eq!(q.ack(531, &[r]), (0, vec![failure(r, ReceiptFailureReason::LeaseGone)]));
}

#[test]
fn nack_without_delay_is_available_at_once() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let r = q.lease(20, 1, 1000)[0].receipt;
    q.settle(30, QueueCommand::Nack { receipts: vec![r], delay_ms: Some(0), policy: DeliveryPolicy::default() });
    assert!(q.state.has_available(D, TimestampMs(30)));
    assert_eq!(offsets(&q.lease(30, 1, 1000)), vec![0]);
}

#[test]
fn nack_of_unknown_receipt_fails() {
    let mut q = Harness::new();
    let r = Receipt::new(Offset(3), 3);
    let (ok, failed) =
        q.settle(10, QueueCommand::Nack { receipts: vec![r], delay_ms: Some(0), policy: DeliveryPolicy::default() });
    assert_eq!((ok, failed), (0, vec![failure(r, ReceiptFailureReason::MessageGone)]));
}

#[test]
fn extend_lease_pushes_the_deadline() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let r = q.lease(20, 1, 100)[0].receipt;
    assert_eq!(q.settle(90, QueueCommand::ExtendLease { receipts: vec![r], visibility_timeout_ms: 1000 }), (1, vec![]));
    assert!(q.lease(120, 1, 100).is_empty(), "re-leased at the old deadline");
    assert_eq!(q.state.stats(TimestampMs(120)).in_flight, 1);
    assert_eq!(q.ack(1000, &[r]), (1, vec![]));
}

#[test]
fn extend_after_expiry_fails() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    let r = q.lease(20, 1, 100)[0].receipt;
    let (ok, failed) = q.settle(200, QueueCommand::ExtendLease { receipts: vec![r], visibility_timeout_ms: 1000 });
    assert_eq!((ok, failed), (0, vec![failure(r, ReceiptFailureReason::LeaseGone)]));
}

#[test]
fn purge_removes_everything_and_offsets_keep_growing() {
    let mut q = Harness::new();
    q.produce(10, &["a", "b", "c"]);
    let r = q.lease(20, 1, 1000)[0].receipt;
    assert_eq!(q.apply(30, QueueCommand::Purge), QueueResponse::Purged { removed: 3 });
    assert_eq!(q.state.stats(TimestampMs(30)).depth, 0);
    assert!(q.stored_deliveries.is_empty() && q.stored_bodies.is_empty());
    assert_eq!(q.ack(31, &[r]), (0, vec![failure(r, ReceiptFailureReason::MessageGone)]));
    assert_eq!(q.produce(40, &["d"]), (3, 1));
    assert_eq!(offsets(&q.lease(41, 10, 1000)), vec![3]);
}

#[test]
fn stats_count_each_kind_of_message() {
    let mut q = Harness::new();
    q.produce(0, &["a", "b", "c", "d"]);
    let leased = q.lease(10, 2, 100); // 0, 1 until 110
    q.settle(
        20,
        QueueCommand::Nack {
            receipts: vec![leased[1].receipt],
            delay_ms: Some(1000),
            policy: DeliveryPolicy::default(),
        },
    ); // 1 delayed until 1020
    let s = q.state.stats(TimestampMs(50));
    assert_eq!((s.depth, s.in_flight, s.delayed, s.available, s.next_offset), (4, 1, 1, 2, Offset(4)));
    // After the lease runs out, message 0 counts as available again.
    let s = q.state.stats(TimestampMs(110));
    assert_eq!((s.in_flight, s.delayed, s.available), (0, 1, 3));
    let s = q.state.stats(TimestampMs(1020));
    assert_eq!((s.in_flight, s.delayed, s.available), (0, 0, 4));
    let available = |now, limit| q.state.available_up_to(D, TimestampMs(now), limit);
    assert_eq!((available(50, 10), available(110, 10), available(1020, 10)), (2, 3, 4));
    assert_eq!((available(1020, 3), available(1020, 0)), (3, 0));
}

#[test]
fn next_wakeup_is_the_earliest_future_event() {
    let mut q = Harness::new();
    assert_eq!(q.state.next_wakeup(D, TimestampMs(0)), None);
    q.produce(0, &["a", "b"]);
    q.lease(10, 1, 500); // deadline 510
    assert_eq!(q.state.next_wakeup(D, TimestampMs(10)), Some(TimestampMs(510)));
    assert_eq!(q.state.next_wakeup(D, TimestampMs(600)), None);
}

#[test]
fn huge_delays_saturate_instead_of_overflowing() {
    let mut q = Harness::new();
    q.produce(u64::MAX - 5, &["a"]);
    let r = q.lease(u64::MAX - 5, 1, u64::MAX)[0];
    assert_eq!(r.lease_deadline, TimestampMs(u64::MAX));
}

#[test]
fn restore_from_persisted_changes_continues_identically() {
    let mut q = Harness::new();
    q.produce(0, &["a", "b", "c", "d"]);
    let leased = q.lease(10, 3, 100);
    q.ack(20, &[leased[0].receipt]);
    q.settle(
        30,
        QueueCommand::Nack {
            receipts: vec![leased[1].receipt],
            delay_ms: Some(500),
            policy: DeliveryPolicy::default(),
        },
    );
    let mut restarted = q.clone();
    restarted.state = q.restored();
    assert_eq!(restarted.state.stats(TimestampMs(40)), q.state.stats(TimestampMs(40)));
    for now in [50, 120, 600] {
        assert_eq!(restarted.lease(now, 10, 100), q.lease(now, 10, 100));
    }
}

/// Random commands with advancing time, applied to two replicas, one of which
/// restarts from its persisted changes now and then. Replay a failure with
/// RAFTMQ_TEST_SEED=<seed>.
#[test]
fn random_commands_are_deterministic_and_never_redeliver_acked() {
    let seed: u64 =
        std::env::var("RAFTMQ_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    println!("seed {seed} (replay with RAFTMQ_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    // `b` keeps at most a few messages in memory and reads the rest back:
    // evicting must change no answer, no stored record and no count.
    let mut a = Harness::new();
    let mut b = Harness::evicting([0, 1, 3, 8][rng.random_range(0..4)]);
    let mut now = 0u64;
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut acked: std::collections::BTreeSet<(SubscriptionId, Offset)> = Default::default();
    // One queue config per run, with a fresh jitter seed per command.
    let max_deliveries = if rng.random_bool(0.5) { rng.random_range(1..4) } else { 0 };
    let backoff_min_ms = rng.random_range(0..300);
    let base_policy = DeliveryPolicy {
        max_deliveries,
        backoff_min_ms,
        backoff_max_ms: backoff_min_ms + rng.random_range(0..2000),
        jitter_seed: 0,
        dead_letter: rng.random_bool(0.5),
        dead_letter_expired: rng.random_bool(0.5),
        retention: match rng.random_range(0..3) {
            0 => Retention::default(),
            1 => Retention { max_age_ms: rng.random_range(1..3000), max_bytes: 0 },
            _ => Retention { max_age_ms: rng.random_range(0..3000), max_bytes: rng.random_range(1..20) },
        },
    };
    let retention = base_policy.retention;
    let names = ["default", "s1", "s2"].map(|n| SubscriptionName::new(n).unwrap());
    println!("policy {base_policy:?}");
    // Evictions and read-backs seen in `b`, so the run shows it did both.
    let (mut evictions, mut reloads) = (0, 0);
    for step in 0..3000 {
        let policy = DeliveryPolicy { jitter_seed: rng.random(), ..base_policy };
        now += rng.random_range(0..200);
        let name = names[rng.random_range(0..names.len())].clone();
        let command = match rng.random_range(0..12) {
            0..=2 => QueueCommand::Produce {
                messages: (0..rng.random_range(0..5))
                    .map(|i| NewMessage {
                        body: vec![i as u8 + 1].into(),
                        deliver_at: rng.random_bool(0.2).then(|| TimestampMs(now + rng.random_range(0..2000))),
                        expires_at: rng.random_bool(0.2).then(|| TimestampMs(now + rng.random_range(0..3000))),
                        correlation_id: rng.random_bool(0.3).then(|| format!("c-{}", rng.random_range(0..5))),
                        // A small pool of ids, so that some repeat within the window.
                        dedup_id: rng.random_bool(0.5).then(|| format!("id-{}", rng.random_range(0..30))),
                        ..Default::default()
                    })
                    .collect(),
                dedup_window_ms: if rng.random_bool(0.1) { 0 } else { rng.random_range(1..3000) },
                // Sometimes a limit close to the depth, so that some produces are refused.
                limits: QueueLimits {
                    max_messages: if rng.random_bool(0.2) { rng.random_range(1..20) } else { 0 },
                    max_bytes: if rng.random_bool(0.2) { rng.random_range(1..20) } else { 0 },
                },
            },
            3..=4 => QueueCommand::Lease {
                subscription: name.clone(),
                max_messages: rng.random_range(1..8),
                max_bytes: if rng.random_bool(0.3) { rng.random_range(1..4) } else { 0 },
                visibility_timeout_ms: rng.random_range(1..1000),
                policy,
                // Sometimes only the reply to one of a few correlation ids.
                correlation_id: rng.random_bool(0.2).then(|| format!("c-{}", rng.random_range(0..5))),
            },
            5..=6 if !receipts.is_empty() => {
                let n = rng.random_range(1..=receipts.len().min(4));
                let ack = QueueCommand::Ack { receipts: receipts.split_off(receipts.len() - n), retention };
                // What a consume that acks its last batch proposes.
                if rng.random_bool(0.5) {
                    let lease = QueueCommand::Lease {
                        subscription: name.clone(),
                        max_messages: rng.random_range(1..8),
                        max_bytes: 0,
                        visibility_timeout_ms: rng.random_range(1..1000),
                        policy,
                        correlation_id: None,
                    };
                    QueueCommand::Batch(vec![ack, lease])
                } else {
                    ack
                }
            }
            7 if !receipts.is_empty() => QueueCommand::Nack {
                receipts: vec![receipts.swap_remove(rng.random_range(0..receipts.len()))],
                delay_ms: rng.random_bool(0.5).then(|| rng.random_range(0..500)),
                policy,
            },
            8 if !receipts.is_empty() => QueueCommand::ExtendLease {
                receipts: vec![receipts[rng.random_range(0..receipts.len())]],
                visibility_timeout_ms: rng.random_range(1..1000),
            },
            9 if rng.random_range(0..50) == 0 => QueueCommand::Purge,
            9 if rng.random_bool(0.5) => QueueCommand::Sweep { policy },
            // What the dead-letter mover does: remove some dead messages (and
            // sometimes offsets that are not dead, which must stay).
            9 => {
                let dead = a.state.dead_messages(3);
                let subscription = dead.first().map_or(D, |m| m.subscription);
                QueueCommand::RemoveDead {
                    subscription,
                    retention,
                    offsets: dead
                        .into_iter()
                        .filter(|m| m.subscription == subscription)
                        .map(|m| m.offset)
                        .chain(a.peek(subscription, 0, u64::MAX, 1).into_iter().map(|m| m.offset))
                        .collect(),
                }
            }
            10 if rng.random_bool(0.3) => {
                let start = if rng.random_bool(0.5) { SubscriptionStart::Earliest } else { SubscriptionStart::Latest };
                QueueCommand::CreateSubscription { name: name.clone(), start }
            }
            10 if rng.random_bool(0.1) => QueueCommand::DeleteSubscription { name: name.clone(), retention },
            10 => QueueCommand::Seek {
                subscription: name.clone(),
                target: if rng.random_bool(0.5) {
                    SeekTarget::Offset(Offset(rng.random_range(0..=a.state.next_offset().0 + 1)))
                } else {
                    SeekTarget::Time(TimestampMs(now.saturating_sub(rng.random_range(0..3000))))
                },
                retention,
            },
            _ => QueueCommand::Lease {
                subscription: name.clone(),
                max_messages: 1,
                max_bytes: 0,
                visibility_timeout_ms: 100,
                policy,
                correlation_id: None,
            },
        };
        let sought = a.state.subscription_id(&name);
        let ra = a.apply(now, command.clone());
        let cold_before = b.state.resident().1;
        let rb = b.apply(now, command.clone());
        let cold_after = b.state.resident().1;
        if cold_after > cold_before {
            evictions += 1;
        } else if cold_after < cold_before && !matches!(command, QueueCommand::Purge) {
            reloads += 1;
        }
        assert_eq!(ra, rb, "replicas diverged at step {step} (seed {seed})");
        assert_eq!(a.stored_deliveries, b.stored_deliveries, "stored records diverged at step {step} (seed {seed})");
        let (from, max) = (rng.random_range(0..=a.state.next_offset().0), rng.random_range(1..6));
        let peek_sub = a.state.subscription_id(&name).unwrap_or(D);
        assert_eq!(a.peek(peek_sub, from, u64::MAX, max), b.peek(peek_sub, from, u64::MAX, max), "seed {seed}");
        let parts = match (&command, &ra) {
            (QueueCommand::Batch(commands), QueueResponse::Batch(responses)) => {
                assert_eq!(commands.len(), responses.len(), "one response per command (seed {seed})");
                commands.iter().zip(responses).collect::<Vec<_>>()
            }
            _ => vec![(&command, &ra)],
        };
        for part in parts {
            match part {
                (_, QueueResponse::Leased { messages }) => {
                    for m in messages {
                        let key = (m.receipt.subscription, m.offset);
                        assert!(!acked.contains(&key), "acked {key:?} leased again (seed {seed})");
                        assert!(
                            max_deliveries == 0 || m.delivery_attempt <= max_deliveries,
                            "{} delivered {} times (seed {seed})",
                            m.offset,
                            m.delivery_attempt
                        );
                        receipts.push(m.receipt);
                    }
                }
                (QueueCommand::Ack { receipts: sent, .. }, QueueResponse::Settled { failures, .. }) => {
                    for r in sent {
                        if !failures.iter().any(|f| f.receipt == *r) {
                            acked.insert((r.subscription, r.offset));
                        }
                    }
                }
                // A seek is a replay: acked messages may come again.
                (QueueCommand::Seek { .. }, QueueResponse::Sought { .. }) => {
                    acked.retain(|(sub, _)| Some(*sub) != sought);
                }
                (QueueCommand::Purge, _) => {}
                _ => {}
            }
        }
        if rng.random_range(0..100) == 0 {
            b.state = b.restored();
            b.state.evict(b.evict_limit.expect("b evicts"));
        }
        assert_eq!(a.state.stats(TimestampMs(now)), b.state.stats(TimestampMs(now)), "seed {seed}");
        assert_eq!(a.state.subscriptions(TimestampMs(now)), b.state.subscriptions(TimestampMs(now)), "seed {seed}");
        // The count the leader's consumers check before proposing a lease
        // agrees with the stats, whatever is evicted, and stops at its limit.
        for sub in a.state.subscriptions(TimestampMs(now)) {
            for q in [&a, &b] {
                let available = |limit| q.state.available_up_to(sub.id, TimestampMs(now), limit);
                assert_eq!(available(u64::MAX), sub.available, "seed {seed}");
                assert_eq!(available(3), sub.available.min(3), "seed {seed}");
            }
        }
    }
    println!("{evictions} commands evicted, {reloads} read back");
    assert!(evictions > 0 && reloads > 0, "the run never evicted or never read back (seed {seed})");
}

fn deduped(body: &str, id: &str) -> NewMessage {
    NewMessage { body: body.as_bytes().to_vec().into(), dedup_id: Some(id.to_string()), ..Default::default() }
}

#[test]
fn a_repeated_dedup_id_gets_the_original_offset_and_is_not_stored() {
    let mut q = Harness::new();
    assert_eq!(q.produce_deduped(10, 1000, &[("a", "id-a"), ("b", "id-b")]), vec![(0, false), (1, false)]);
    // A retry of the whole batch, plus one new message.
    assert_eq!(
        q.produce_deduped(20, 1000, &[("a", "id-a"), ("b", "id-b"), ("c", "id-c")]),
        vec![(0, true), (1, true), (2, false)]
    );
    assert_eq!(q.state.stats(TimestampMs(20)).depth, 3);
    assert_eq!(q.stored_bodies.len(), 3);
    assert_eq!(q.state.stats(TimestampMs(20)).dedup_ids, 3);
}

#[test]
fn a_dedup_id_repeated_within_one_batch_is_stored_once() {
    let mut q = Harness::new();
    let offsets = q.produce_messages(10, vec![deduped("x", "same"), deduped("y", "same")], 1000);
    assert_eq!(offsets, vec![(0, false), (0, true)]);
    assert_eq!(q.state.stats(TimestampMs(10)).depth, 1);
}

#[test]
fn a_dedup_id_is_forgotten_when_its_window_passes() {
    let mut q = Harness::new();
    q.produce_deduped(100, 500, &[("a", "id-a")]);
    assert_eq!(q.produce_deduped(599, 500, &[("a", "id-a")]), vec![(0, true)], "1 ms before expiry");
    // At 600 the window of the first produce is over: the id is stored again,
    // and the old record is deleted from storage.
    assert_eq!(q.produce_deduped(600, 500, &[("a", "id-a")]), vec![(1, false)]);
    assert_eq!(q.stored_dedup.len(), 1);
    assert_eq!(q.stored_dedup[&Offset(1)], ("id-a".to_string(), TimestampMs(1100)));
    // A produce without ids still expires old ones.
    q.produce(2000, &["plain"]);
    assert!(q.stored_dedup.is_empty());
    assert_eq!(q.state.stats(TimestampMs(2000)).dedup_ids, 0);
}

#[test]
fn a_zero_window_turns_dedup_off() {
    let mut q = Harness::new();
    assert_eq!(q.produce_deduped(10, 0, &[("a", "id-a"), ("a", "id-a")]), vec![(0, false), (1, false)]);
    assert!(q.stored_dedup.is_empty());
}

#[test]
fn dedup_survives_a_restart() {
    let mut q = Harness::new();
    q.produce_deduped(10, 1000, &[("a", "id-a"), ("b", "id-b")]);
    q.state = q.restored();
    assert_eq!(q.produce_deduped(20, 1000, &[("b", "id-b"), ("c", "id-c")]), vec![(1, true), (2, false)]);
}

#[test]
fn dedup_survives_a_purge_and_ack() {
    let mut q = Harness::new();
    q.produce_deduped(10, 1000, &[("a", "id-a"), ("b", "id-b")]);
    let leased = q.lease(11, 1, 100);
    assert_eq!(q.ack(12, &[leased[0].receipt]), (1, vec![]));
    q.apply(13, QueueCommand::Purge);
    assert_eq!(q.state.stats(TimestampMs(13)).depth, 0);
    // Both retried after the queue was emptied: still not stored again.
    assert_eq!(q.produce_deduped(14, 1000, &[("a", "id-a"), ("b", "id-b")]), vec![(0, true), (1, true)]);
    assert_eq!(q.state.stats(TimestampMs(14)).depth, 0);
}

fn produce_limited(q: &mut Harness, now: u64, messages: Vec<NewMessage>, limits: QueueLimits) -> QueueResponse {
    q.apply(now, QueueCommand::Produce { messages, dedup_window_ms: 1000, limits })
}

fn body(text: &str) -> NewMessage {
    NewMessage { body: text.as_bytes().to_vec().into(), ..Default::default() }
}

#[test]
fn a_produce_past_max_messages_stores_nothing_and_names_the_limit() {
    let mut q = Harness::new();
    let limits = QueueLimits { max_messages: 3, max_bytes: 0 };
    assert!(matches!(produce_limited(&mut q, 10, vec![body("a"), body("b")], limits), QueueResponse::Produced { .. }));
    // Two more do not fit next to two: the whole batch is refused.
    let refused = produce_limited(&mut q, 11, vec![body("c"), body("d")], limits);
    assert_eq!(refused, QueueResponse::Full { limit: QueueLimit::MaxMessages(3), depth: 2, bytes: 2 });
    assert_eq!((q.stored_bodies.len(), q.state.next_offset()), (2, Offset(2)), "nothing stored, no offset used");
    // One fits; after an ack, another does.
    assert!(matches!(produce_limited(&mut q, 12, vec![body("c")], limits), QueueResponse::Produced { .. }));
    assert!(matches!(produce_limited(&mut q, 13, vec![body("d")], limits), QueueResponse::Full { .. }));
    let leased = q.lease(14, 1, 100);
    q.ack(15, &[leased[0].receipt]);
    assert!(matches!(produce_limited(&mut q, 16, vec![body("d")], limits), QueueResponse::Produced { .. }));
    assert_eq!(q.state.stats(TimestampMs(16)).depth, 3);
}

#[test]
fn a_produce_past_max_bytes_is_refused_and_bytes_follow_acks_and_purges() {
    let mut q = Harness::new();
    let limits = QueueLimits { max_messages: 0, max_bytes: 10 };
    let mut with_header = body("12345");
    with_header.headers.insert("k".into(), "v".into()); // 5 + 2 bytes
    assert!(matches!(produce_limited(&mut q, 10, vec![with_header], limits), QueueResponse::Produced { .. }));
    assert_eq!(q.state.stats(TimestampMs(10)).bytes, 7);
    let refused = produce_limited(&mut q, 11, vec![body("1234")], limits);
    assert_eq!(refused, QueueResponse::Full { limit: QueueLimit::MaxBytes(10), depth: 1, bytes: 7 });
    assert!(matches!(produce_limited(&mut q, 12, vec![body("123")], limits), QueueResponse::Produced { .. }));
    assert_eq!(q.state.stats(TimestampMs(12)).bytes, 10);
    assert_eq!(q.restored().stats(TimestampMs(12)).bytes, 10, "a restart recounts the bytes");
    q.apply(13, QueueCommand::Purge);
    assert_eq!(q.state.stats(TimestampMs(13)).bytes, 0);
}

#[test]
fn duplicates_do_not_count_against_the_limits() {
    let mut q = Harness::new();
    let limits = QueueLimits { max_messages: 2, max_bytes: 0 };
    let first = produce_limited(&mut q, 10, vec![deduped("a", "id-a"), deduped("b", "id-b")], limits);
    assert!(matches!(first, QueueResponse::Produced { .. }));
    // A full queue still answers a retry of what it holds.
    let retry = produce_limited(&mut q, 11, vec![deduped("a", "id-a"), deduped("b", "id-b")], limits);
    assert_eq!(retry, QueueResponse::Produced { offsets: vec![(Offset(0), true), (Offset(1), true)] });
    // An id repeated within a batch counts once.
    let mut q = Harness::new();
    let once = produce_limited(
        &mut q,
        10,
        vec![deduped("x", "same"), deduped("x", "same")],
        QueueLimits { max_messages: 1, max_bytes: 0 },
    );
    assert_eq!(once, QueueResponse::Produced { offsets: vec![(Offset(0), false), (Offset(0), true)] });
}

#[test]
fn a_delayed_message_is_delivered_at_its_time_and_not_before() {
    let mut q = Harness::new();
    let later = NewMessage { deliver_at: Some(TimestampMs(500)), ..body("later") };
    let past = NewMessage { deliver_at: Some(TimestampMs(5)), ..body("past") };
    q.produce_messages(100, vec![later, body("now"), past], 0);
    assert_eq!(offsets(&q.lease(100, 10, 1000)), vec![1, 2], "the delayed one waits");
    let stats = q.state.stats(TimestampMs(499));
    assert_eq!((stats.delayed, stats.available), (1, 0));
    assert_eq!(q.state.next_wakeup(D, TimestampMs(100)), Some(TimestampMs(500)));
    assert!(q.lease(499, 10, 1000).is_empty());
    assert!(!q.state.has_available(D, TimestampMs(499)));
    // Still delayed on a replica restarted from storage.
    assert_eq!(q.restored().stats(TimestampMs(499)).delayed, 1);
    assert_eq!(offsets(&q.lease(500, 10, 1000)), vec![0]);
}

#[test]
fn a_purge_drops_delayed_messages_too() {
    let mut q = Harness::new();
    let later = NewMessage { deliver_at: Some(TimestampMs(10_000)), ..body("later") };
    q.produce_messages(100, vec![later], 0);
    assert_eq!(q.apply(200, QueueCommand::Purge), QueueResponse::Purged { removed: 1 });
    assert!(q.lease(20_000, 10, 1000).is_empty(), "nothing comes back at its time");
    assert_eq!(q.state.stats(TimestampMs(20_000)).depth, 0);
    assert!(q.stored_deliveries.is_empty() && q.stored_bodies.is_empty());
}

#[test]
fn peek_shows_a_range_and_changes_nothing() {
    let mut q = Harness::new();
    q.produce(10, &["a", "b", "c", "d"]);
    let leased = q.lease(11, 1, 100);
    q.ack(12, &[leased[0].receipt]); // offset 0 is gone
    let before = q.state.stats(TimestampMs(12));
    let peeked: Vec<u64> = q.peek(D, 0, u64::MAX, 2).iter().map(|m| m.offset.0).collect();
    assert_eq!(peeked, vec![1, 2]);
    let peeked: Vec<u64> = q.peek(D, 2, 3, 10).iter().map(|m| m.offset.0).collect();
    assert_eq!(peeked, vec![2]);
    assert!(q.peek(D, 3, 3, 10).is_empty());
    assert_eq!(q.state.stats(TimestampMs(12)), before);
}

// Retries, delivery limits, dead letters and expiry.

fn policy(max_deliveries: u32, backoff_min_ms: u64, backoff_max_ms: u64, dead_letter: bool) -> DeliveryPolicy {
    DeliveryPolicy {
        max_deliveries,
        backoff_min_ms,
        backoff_max_ms,
        jitter_seed: 7,
        dead_letter,
        dead_letter_expired: true,
        retention: Retention::default(),
    }
}

impl Harness {
    fn lease_with(&mut self, now: u64, max: u32, timeout: u64, policy: DeliveryPolicy) -> Vec<DeliveredMessage> {
        let command = QueueCommand::Lease {
            subscription: default_sub(),
            max_messages: max,
            max_bytes: 0,
            visibility_timeout_ms: timeout,
            policy,
            correlation_id: None,
        };
        self.leased(now, command)
    }

    fn nack(&mut self, now: u64, receipt: Receipt, delay_ms: Option<u64>, policy: DeliveryPolicy) {
        assert_eq!(self.settle(now, QueueCommand::Nack { receipts: vec![receipt], delay_ms, policy }), (1, vec![]));
    }

    /// Produces "a" at 10, leases it at 20 and nacks it at 21: with a
    /// delivery limit of 1, it dies.
    fn nack_to_death(&mut self, p: DeliveryPolicy) {
        self.produce(10, &["a"]);
        let r = self.lease_with(20, 1, 100, p)[0].receipt;
        self.nack(21, r, None, p);
    }

    fn dead(&self) -> Vec<(u64, Option<DeadReason>)> {
        self.state.dead_messages(100).iter().map(|m| (m.offset.0, m.state.dead)).collect()
    }
}

#[test]
fn backoff_doubles_from_min_to_max_with_bounded_jitter() {
    for seed in 0..200u64 {
        let p = DeliveryPolicy { jitter_seed: seed, ..policy(0, 100, 1000, false) };
        let b = |attempts| retry_backoff_ms(&p, attempts, Offset(seed));
        assert!((100..=150).contains(&b(1)), "{}", b(1));
        assert!((200..=300).contains(&b(2)), "{}", b(2));
        assert!((400..=600).contains(&b(3)), "{}", b(3));
        assert!((800..=1000).contains(&b(4)), "{}", b(4));
        assert_eq!(b(5), 1000, "capped at max, jitter included");
        assert_eq!(b(u32::MAX), 1000, "no overflow");
    }
    let spread: std::collections::BTreeSet<u64> = (0..50)
        .map(|seed| {
            retry_backoff_ms(&DeliveryPolicy { jitter_seed: seed, ..policy(0, 100, 1000, false) }, 1, Offset(3))
        })
        .collect();
    assert!(spread.len() > 10, "the jitter varies with the leader's seed: {spread:?}");
    assert_eq!(retry_backoff_ms(&policy(0, 0, 0, false), 5, Offset(1)), 0, "0 and 0 is no backoff");
}

#[test]
fn a_nack_without_delay_waits_for_the_backoff_and_a_nack_with_delay_overrides_it() {
    let mut q = Harness::new();
    let p = policy(0, 1000, 60_000, false);
    q.produce(10, &["a", "b"]);
    let leased = q.lease_with(20, 2, 100, p);
    q.nack(30, leased[0].receipt, None, p);
    q.nack(30, leased[1].receipt, Some(0), p);
    let backoff = retry_backoff_ms(&p, 1, Offset(0));
    assert!((1000..=1500).contains(&backoff));
    let redelivered = q.lease_with(31, 10, 100, p);
    assert_eq!(offsets(&redelivered), vec![1], "the explicit delay of 0 wins");
    q.ack(32, &[redelivered[0].receipt]);
    assert!(q.lease_with(30 + backoff - 1, 10, 100, p).is_empty());
    assert_eq!(q.state.stats(TimestampMs(30 + backoff - 1)).delayed, 1);
    let again = q.lease_with(30 + backoff, 10, 100, p);
    assert_eq!((offsets(&again), again[0].delivery_attempt), (vec![0], 2));
}

#[test]
fn an_expired_lease_comes_back_after_its_backoff() {
    let mut q = Harness::new();
    let p = policy(0, 500, 60_000, false);
    q.produce(10, &["a"]);
    let first = q.lease_with(20, 1, 100, p);
    let retry_at = q.state.delivery(D, Offset(0)).unwrap().lease.unwrap().retry_at;
    assert_eq!(retry_at.0, 120 + retry_backoff_ms(&p, 1, Offset(0)));
    assert!(retry_at.0 >= 620);
    // The lease has run out: the receipt fails, but the message waits for its backoff.
    assert_eq!(q.ack(121, &[first[0].receipt]).0, 0);
    let stats = q.state.stats(TimestampMs(121));
    assert_eq!((stats.in_flight, stats.delayed, stats.available), (0, 1, 0));
    assert!(q.lease_with(retry_at.0 - 1, 1, 100, p).is_empty());
    assert_eq!(q.state.next_wakeup(D, TimestampMs(121)), Some(retry_at));
    assert_eq!(q.lease_with(retry_at.0, 1, 100, p)[0].delivery_attempt, 2);
}

#[test]
fn extending_a_lease_keeps_its_backoff() {
    let mut q = Harness::new();
    let p = policy(0, 500, 500, false);
    q.produce(10, &["a"]);
    let r = q.lease_with(20, 1, 100, p)[0].receipt;
    q.settle(50, QueueCommand::ExtendLease { receipts: vec![r], visibility_timeout_ms: 1000 });
    let lease = q.state.delivery(D, Offset(0)).unwrap().lease.unwrap();
    assert_eq!((lease.deadline.0, lease.retry_at.0), (1050, 1550));
}

#[test]
fn the_last_allowed_nack_dead_letters_the_message() {
    let mut q = Harness::new();
    let p = policy(2, 0, 0, true);
    q.produce(10, &["a"]);
    let first = q.lease_with(20, 1, 100, p);
    q.nack(21, first[0].receipt, None, p);
    let second = q.lease_with(22, 1, 100, p);
    assert_eq!(second[0].delivery_attempt, 2);
    q.nack(23, second[0].receipt, Some(0), p);
    assert_eq!(q.dead(), vec![(0, Some(DeadReason::MaxDeliveries))]);
    assert!(q.lease_with(10_000, 10, 100, p).is_empty(), "a dead message is never delivered");
    let stats = q.state.stats(TimestampMs(24));
    assert_eq!((stats.depth, stats.dead, stats.available), (1, 1, 0));
    // Persisted: a restarted replica still holds it dead.
    assert_eq!(q.restored().dead_messages(10).len(), 1);
    assert_eq!(q.stored_deliveries[&(D, Offset(0))].dead, Some(DeadReason::MaxDeliveries));
}

#[test]
fn a_last_lease_that_runs_out_kills_the_message_at_its_deadline() {
    let mut q = Harness::new();
    let p = policy(1, 1000, 1000, true);
    q.produce(10, &["a", "b"]);
    let leased = q.lease_with(20, 1, 100, p);
    // No backoff after the last delivery: it is due at the deadline.
    assert_eq!(q.state.delivery(D, Offset(0)).unwrap().lease.unwrap().retry_at, TimestampMs(120));
    assert!(!q.state.needs_sweep(TimestampMs(119), &p));
    assert!(q.state.needs_sweep(TimestampMs(120), &p));
    assert_eq!(q.apply(120, QueueCommand::Sweep { policy: p }), QueueResponse::Swept { died: 1, dropped: 0 });
    assert!(!q.state.needs_sweep(TimestampMs(120), &p));
    assert_eq!(q.dead(), vec![(0, Some(DeadReason::MaxDeliveries))]);
    assert_eq!(q.ack(121, &[leased[0].receipt]).1[0].reason, ReceiptFailureReason::LeaseGone);
    assert_eq!(offsets(&q.lease_with(121, 10, 100, p)), vec![1]);
}

#[test]
fn without_a_dead_letter_queue_dead_messages_are_dropped() {
    let mut q = Harness::new();
    let p = policy(1, 0, 0, false);
    q.nack_to_death(p);
    assert!(q.dead().is_empty());
    assert_eq!(q.state.stats(TimestampMs(22)).depth, 0);
    assert!(q.stored_bodies.is_empty() && q.stored_deliveries.is_empty());
}

#[test]
fn a_lowered_delivery_limit_kills_at_the_next_lease() {
    let mut q = Harness::new();
    q.produce(10, &["a"]);
    for now in [20, 200, 400] {
        let r = q.lease_with(now, 1, 100, policy(0, 0, 0, true))[0].receipt;
        q.nack(now + 1, r, Some(0), policy(0, 0, 0, true));
    }
    assert!(q.lease_with(500, 1, 100, policy(2, 0, 0, true)).is_empty());
    assert_eq!(q.dead(), vec![(0, Some(DeadReason::MaxDeliveries))]);
}

#[test]
fn remove_dead_deletes_only_dead_messages() {
    let mut q = Harness::new();
    let p = policy(1, 0, 0, true);
    q.produce(10, &["a", "b"]);
    let r = q.lease_with(20, 1, 100, p)[0].receipt;
    q.nack(21, r, None, p);
    let remove = QueueCommand::RemoveDead {
        subscription: D,
        retention: Retention::default(),
        offsets: vec![Offset(0), Offset(1), Offset(9)],
    };
    assert_eq!(q.apply(30, remove.clone()), QueueResponse::RemovedDead { removed: 1 });
    assert!(q.state.delivery(D, Offset(0)).is_none() && !q.stored_bodies.contains_key(&Offset(0)));
    assert!(q.state.delivery(D, Offset(1)).is_some(), "a live message stays");
    assert_eq!(q.apply(31, remove), QueueResponse::RemovedDead { removed: 0 }, "a repeat is harmless");
    assert_eq!(
        q.apply(32, QueueCommand::RemoveDead { subscription: D, retention: Retention::default(), offsets: vec![] }),
        QueueResponse::RemovedDead { removed: 0 }
    );
}

#[test]
fn expired_messages_are_dropped_or_dead_lettered_even_when_leased() {
    for (dead_letter, dead_letter_expired) in [(false, true), (true, false), (true, true)] {
        let mut q = Harness::new();
        let p = DeliveryPolicy { dead_letter, dead_letter_expired, ..policy(0, 0, 0, dead_letter) };
        let short = NewMessage { expires_at: Some(TimestampMs(500)), ..body("short") };
        let leased_then_expired = NewMessage { expires_at: Some(TimestampMs(600)), ..body("leased") };
        q.produce_messages(10, vec![short, leased_then_expired, body("forever")], 0);
        let r = q.lease_with(20, 1, 10_000, p); // offset 0
        assert_eq!(offsets(&r), vec![0]);
        let r = q.lease_with(20, 1, 10_000, p); // offset 1, leased past its expiry
        assert!(!q.state.needs_sweep(TimestampMs(499), &p));
        assert!(q.state.needs_sweep(TimestampMs(500), &p));
        let swept = q.apply(700, QueueCommand::Sweep { policy: p });
        let kept = dead_letter && dead_letter_expired;
        let expected = if kept { (2, 0) } else { (0, 2) };
        assert_eq!(swept, QueueResponse::Swept { died: expected.0, dropped: expected.1 });
        assert_eq!(q.dead().len(), if kept { 2 } else { 0 });
        assert_eq!(q.ack(701, &[r[0].receipt]).0, 0, "the receipt of an expired message fails");
        assert_eq!(offsets(&q.lease_with(701, 10, 100, p)), vec![2]);
        assert_eq!(q.restored().stats(TimestampMs(701)), q.state.stats(TimestampMs(701)));
    }
}

#[test]
fn a_lease_drops_expired_messages_before_choosing() {
    let mut q = Harness::new();
    let p = policy(0, 0, 0, false);
    let short = NewMessage { expires_at: Some(TimestampMs(50)), ..body("short") };
    q.produce_messages(10, vec![short, body("b")], 0);
    assert_eq!(offsets(&q.lease_with(50, 10, 100, p)), vec![1]);
    assert_eq!(q.state.stats(TimestampMs(50)).depth, 1);
}

#[test]
fn a_purge_drops_dead_messages_too() {
    let mut q = Harness::new();
    let p = policy(1, 0, 0, true);
    q.nack_to_death(p);
    assert_eq!(q.apply(30, QueueCommand::Purge), QueueResponse::Purged { removed: 1 });
    assert!(q.dead().is_empty());
}

#[test]
fn a_byte_limited_lease_stops_before_the_limit_but_always_takes_one() {
    let mut q = Harness::new();
    q.produce(10, &["aaaa", "bbbb", "cccccccc", "d"]);
    let lease = |q: &mut Harness, max_bytes| {
        let command = QueueCommand::Lease {
            subscription: default_sub(),
            max_messages: 10,
            max_bytes,
            visibility_timeout_ms: 100,
            policy: DeliveryPolicy::default(),
            correlation_id: None,
        };
        offsets(&q.leased(20, command))
    };
    assert_eq!(lease(&mut q, 9), vec![0, 1], "4 + 4 fit in 9, the next 8 does not");
    assert_eq!(lease(&mut q, 3), vec![2], "the first message goes whatever its size");
    assert_eq!(lease(&mut q, 0), vec![3], "0 is no byte limit");
}

// Replies: leasing by correlation id.

fn reply(text: &str, correlation_id: &str) -> NewMessage {
    NewMessage { correlation_id: Some(correlation_id.to_string()), ..body(text) }
}

impl Harness {
    fn lease_correlated(&mut self, now: u64, id: &str) -> Vec<DeliveredMessage> {
        let command = QueueCommand::Lease {
            subscription: default_sub(),
            max_messages: 10,
            max_bytes: 0,
            visibility_timeout_ms: 100,
            policy: DeliveryPolicy::default(),
            correlation_id: Some(id.to_string()),
        };
        self.leased(now, command)
    }
}

#[test]
fn a_correlated_lease_takes_only_that_reply_and_only_when_available() {
    let mut q = Harness::new();
    q.produce_messages(10, vec![body("other"), reply("r1", "a"), reply("r2", "b"), reply("r1-again", "a")], 0);
    assert!(q.state.has_available_correlated(D, TimestampMs(10), "a"));
    assert!(!q.state.has_available_correlated(D, TimestampMs(10), "zzz"));
    assert!(q.lease_correlated(11, "zzz").is_empty());
    let got = q.lease_correlated(11, "a");
    assert_eq!(offsets(&got), vec![1], "one message, the lowest offset with that id");
    assert_eq!(offsets(&q.lease_correlated(12, "a")), vec![3]);
    assert!(q.lease_correlated(13, "a").is_empty(), "both replies are leased");
    assert!(!q.state.has_available_correlated(D, TimestampMs(13), "a"));
    // An acked reply leaves the index; a restarted replica has the same index.
    q.ack(14, &[got[0].receipt]);
    assert_eq!(q.stored_correlations.len(), 2);
    assert!(q.restored().has_available_correlated(D, TimestampMs(200), "a"), "offset 3's lease ran out");
    assert_eq!(offsets(&q.lease_correlated(200, "a")), vec![3]);
    assert_eq!(offsets(&q.lease(201, 10, 100)), vec![0, 2], "plain leases take any message");
}

// Subscriptions, retention and seek.

fn sub(name: &str) -> SubscriptionName {
    SubscriptionName::new(name).unwrap()
}

impl Harness {
    fn subscribe(&mut self, now: u64, name: &str, start: SubscriptionStart) -> SubscriptionId {
        match self.apply(now, QueueCommand::CreateSubscription { name: sub(name), start }) {
            QueueResponse::SubscriptionCreated { id } => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn lease_from(&mut self, now: u64, name: &str, max: u32) -> Vec<DeliveredMessage> {
        self.leased(
            now,
            QueueCommand::Lease {
                subscription: sub(name),
                max_messages: max,
                max_bytes: 0,
                visibility_timeout_ms: 100,
                policy: DeliveryPolicy { retention: self.retention, ..DeliveryPolicy::default() },
                correlation_id: None,
            },
        )
    }

    fn ack_all(&mut self, now: u64, messages: &[DeliveredMessage]) {
        let receipts: Vec<Receipt> = messages.iter().map(|m| m.receipt).collect();
        let ack = QueueCommand::Ack { receipts, retention: self.retention };
        assert_eq!(self.settle(now, ack), (messages.len() as u32, vec![]));
    }

    fn seek(&mut self, now: u64, name: &str, target: SeekTarget) -> QueueResponse {
        self.apply(now, QueueCommand::Seek { subscription: sub(name), target, retention: self.retention })
    }

    fn depth_of(&self, now: u64, name: &str) -> u64 {
        self.state.subscriptions(TimestampMs(now)).into_iter().find(|s| s.name == sub(name)).unwrap().depth
    }
}

#[test]
fn every_subscription_receives_every_message_and_settles_its_own() {
    let mut q = Harness::new();
    q.produce(1, &["before"]);
    let audit = q.subscribe(2, "audit", SubscriptionStart::Latest);
    assert_ne!(audit, D);
    q.produce(3, &["a", "b"]);
    let default = q.lease_from(4, "default", 10);
    let audited = q.lease_from(4, "audit", 10);
    assert_eq!(offsets(&default), vec![0, 1, 2]);
    assert_eq!(offsets(&audited), vec![1, 2], "a subscription created at the latest offset skips older messages");
    assert!(audited.iter().all(|m| m.receipt.subscription == audit && m.delivery_attempt == 1));
    // A receipt only settles in its own subscription.
    let foreign = Receipt { subscription: audit, ..default[0].receipt };
    let (ok, failed) = q.ack(5, &[foreign]);
    assert_eq!((ok, failed), (0, vec![failure(foreign, ReceiptFailureReason::MessageGone)]));
    q.ack_all(5, &default);
    assert_eq!(q.depth_of(5, "default"), 0);
    assert_eq!(q.depth_of(5, "audit"), 2);
    assert!(!q.stored_bodies.contains_key(&Offset(0)), "nobody holds offset 0 any more");
    assert!(q.stored_bodies.contains_key(&Offset(1)), "audit has not acked offset 1");
    assert_eq!(q.state.stats(TimestampMs(5)).depth, 2);
    q.ack_all(6, &audited);
    assert!(q.stored_bodies.is_empty() && q.stored_deliveries.is_empty());
    assert_eq!(q.state.stats(TimestampMs(6)).depth, 0);
}

#[test]
fn a_subscription_created_at_the_earliest_offset_gets_every_stored_message() {
    let mut q = Harness::new();
    q.produce(1, &["a", "b", "c"]);
    let leased = q.lease_from(2, "default", 1);
    q.ack_all(3, &leased);
    q.subscribe(4, "replay", SubscriptionStart::Earliest);
    assert_eq!(offsets(&q.lease_from(5, "replay", 10)), vec![1, 2], "offset 0 was acked and not retained");
    assert_eq!(q.state.stats(TimestampMs(5)).subscriptions, 2);
}

#[test]
fn subscription_names_are_unique_default_stays_and_the_count_is_bounded() {
    let mut q = Harness::new();
    let id = q.subscribe(1, "a", SubscriptionStart::Latest);
    let again = QueueCommand::CreateSubscription { name: sub("a"), start: SubscriptionStart::Earliest };
    assert_eq!(q.apply(2, again), QueueResponse::SubscriptionExists { id });
    let delete_default = QueueCommand::DeleteSubscription { name: default_sub(), retention: Retention::default() };
    assert_eq!(q.apply(3, delete_default), QueueResponse::DefaultSubscription);
    let missing = QueueCommand::DeleteSubscription { name: sub("nope"), retention: Retention::default() };
    assert_eq!(q.apply(4, missing), QueueResponse::SubscriptionNotFound);
    assert_eq!(q.seek(5, "nope", SeekTarget::Offset(Offset(0))), QueueResponse::SubscriptionNotFound);
    let lease = QueueCommand::Lease {
        subscription: sub("nope"),
        max_messages: 1,
        max_bytes: 0,
        visibility_timeout_ms: 1,
        policy: DeliveryPolicy::default(),
        correlation_id: None,
    };
    assert_eq!(q.apply(6, lease), QueueResponse::SubscriptionNotFound);
    for i in 2..raftmq_types::config::MAX_SUBSCRIPTIONS {
        q.subscribe(7, &format!("s{i}"), SubscriptionStart::Latest);
    }
    let one_more = QueueCommand::CreateSubscription { name: sub("last"), start: SubscriptionStart::Latest };
    assert_eq!(
        q.apply(8, one_more),
        QueueResponse::TooManySubscriptions { max: raftmq_types::config::MAX_SUBSCRIPTIONS }
    );
}

#[test]
fn deleting_a_subscription_lets_go_of_its_messages_and_its_receipts() {
    let mut q = Harness::new();
    q.subscribe(1, "slow", SubscriptionStart::Latest);
    q.produce(2, &["a", "b"]);
    let fast = q.lease_from(3, "default", 10);
    q.ack_all(3, &fast);
    let slow = q.lease_from(4, "slow", 1);
    assert_eq!(q.stored_bodies.len(), 2, "slow still holds both");
    let delete = QueueCommand::DeleteSubscription { name: sub("slow"), retention: Retention::default() };
    assert!(matches!(q.apply(5, delete), QueueResponse::SubscriptionDeleted { .. }));
    assert!(q.stored_bodies.is_empty() && q.stored_deliveries.is_empty());
    let (ok, failed) = q.ack(6, &[slow[0].receipt]);
    assert_eq!((ok, failed), (0, vec![failure(slow[0].receipt, ReceiptFailureReason::MessageGone)]));
    // A new subscription of the same name is a new subscription: old receipts stay dead.
    let again = q.subscribe(7, "slow", SubscriptionStart::Latest);
    assert_ne!(again, slow[0].receipt.subscription);
    assert_eq!(q.restored().subscriptions(TimestampMs(8)), q.state.subscriptions(TimestampMs(8)));
}

#[test]
fn retention_keeps_acked_messages_for_replay_until_their_age_passes() {
    let mut q = Harness { retention: Retention { max_age_ms: 1000, max_bytes: 0 }, ..Harness::new() };
    q.produce(0, &["a", "b", "c"]);
    let leased = q.lease_from(10, "default", 3);
    q.ack_all(20, &leased);
    let stats = q.state.stats(TimestampMs(20));
    assert_eq!((stats.depth, stats.retained, stats.retained_bytes), (0, 3, 3));
    assert_eq!(q.stored_bodies.len(), 3, "acked but retained");
    // Replay from offset 1: both come again as first deliveries.
    assert_eq!(q.seek(30, "default", SeekTarget::Offset(Offset(1))), QueueResponse::Sought { pending: 2 });
    let replayed = q.lease_from(40, "default", 10);
    assert_eq!(offsets(&replayed), vec![1, 2]);
    assert!(replayed.iter().all(|m| m.delivery_attempt == 1));
    q.ack_all(50, &replayed);
    // A new subscription at the earliest offset sees the retained ones too.
    q.subscribe(60, "late", SubscriptionStart::Earliest);
    assert_eq!(q.depth_of(60, "late"), 3);
    let late = q.lease_from(70, "late", 10);
    q.ack_all(80, &late);
    assert_eq!(q.restored().stats(TimestampMs(80)), q.state.stats(TimestampMs(80)));
    // Past the age limit a sweep deletes them.
    let policy = DeliveryPolicy { retention: q.retention, ..DeliveryPolicy::default() };
    assert!(!q.state.needs_sweep(TimestampMs(999), &policy));
    assert!(q.state.needs_sweep(TimestampMs(1000), &policy));
    assert_eq!(q.apply(1000, QueueCommand::Sweep { policy }), QueueResponse::Swept { died: 0, dropped: 3 });
    assert!(q.stored_bodies.is_empty() && q.stored_infos.is_empty());
    assert_eq!(q.seek(1001, "default", SeekTarget::Offset(Offset(0))), QueueResponse::Sought { pending: 0 });
}

#[test]
fn retention_by_bytes_deletes_the_oldest_first() {
    let mut q = Harness { retention: Retention { max_age_ms: 0, max_bytes: 5 }, ..Harness::new() };
    q.produce(0, &["aa", "bb", "cc", "dd"]);
    let leased = q.lease_from(1, "default", 4);
    q.ack_all(2, &leased);
    let stats = q.state.stats(TimestampMs(2));
    assert_eq!((stats.retained, stats.retained_bytes), (2, 4));
    assert_eq!(q.stored_bodies.keys().map(|o| o.0).collect::<Vec<_>>(), vec![2, 3]);
    // Turning retention off: the next sweep deletes what is left.
    let policy = DeliveryPolicy::default();
    assert!(q.state.needs_sweep(TimestampMs(3), &policy));
    assert_eq!(q.apply(3, QueueCommand::Sweep { policy }), QueueResponse::Swept { died: 0, dropped: 2 });
    assert!(q.stored_bodies.is_empty());
}

#[test]
fn retained_messages_do_not_count_against_the_limits() {
    let mut q = Harness { retention: Retention { max_age_ms: 60_000, max_bytes: 0 }, ..Harness::new() };
    let limits = QueueLimits { max_messages: 2, max_bytes: 0 };
    assert!(matches!(produce_limited(&mut q, 0, vec![body("a"), body("b")], limits), QueueResponse::Produced { .. }));
    assert!(matches!(produce_limited(&mut q, 1, vec![body("c")], limits), QueueResponse::Full { .. }));
    let leased = q.lease_from(2, "default", 2);
    q.ack_all(3, &leased);
    assert!(matches!(produce_limited(&mut q, 4, vec![body("c")], limits), QueueResponse::Produced { .. }));
    assert_eq!(q.state.stats(TimestampMs(4)).retained, 2);
}

#[test]
fn seek_by_time_replays_from_the_first_message_published_then_and_ends_leases() {
    let mut q = Harness { retention: Retention { max_age_ms: 0, max_bytes: 1000 }, ..Harness::new() };
    q.produce(100, &["a"]);
    q.produce(200, &["b"]);
    q.produce(300, &["c"]);
    let first = q.lease_from(400, "default", 3);
    q.ack_all(410, &first[..1]);
    assert_eq!(q.seek(420, "default", SeekTarget::Time(TimestampMs(200))), QueueResponse::Sought { pending: 2 });
    // Leases from before the seek are gone.
    let (ok, failed) = q.ack(430, &[first[1].receipt]);
    assert_eq!((ok, failed.len()), (0, 1));
    assert_eq!(offsets(&q.lease_from(440, "default", 10)), vec![1, 2]);
    // Seeking forward lets go of everything before the target.
    assert_eq!(q.seek(450, "default", SeekTarget::Offset(Offset(2))), QueueResponse::Sought { pending: 1 });
    assert_eq!(q.state.stats(TimestampMs(450)).retained, 2);
    // Past the end: nothing until the next produce.
    assert_eq!(q.seek(460, "default", SeekTarget::Time(TimestampMs(10_000))), QueueResponse::Sought { pending: 0 });
    assert!(q.lease_from(470, "default", 10).is_empty());
    q.produce(480, &["d"]);
    assert_eq!(offsets(&q.lease_from(490, "default", 10)), vec![3]);
    let restored = q.restored();
    assert_eq!(restored.stats(TimestampMs(490)), q.state.stats(TimestampMs(490)));
    assert_eq!(restored.subscriptions(TimestampMs(490)), q.state.subscriptions(TimestampMs(490)));
}

#[test]
fn a_seek_keeps_delivery_times_and_skips_expired_messages() {
    let mut q = Harness { retention: Retention { max_age_ms: 0, max_bytes: 1000 }, ..Harness::new() };
    let delayed =
        NewMessage { body: b"later".to_vec().into(), deliver_at: Some(TimestampMs(5000)), ..Default::default() };
    let short = NewMessage { body: b"short".to_vec().into(), expires_at: Some(TimestampMs(50)), ..Default::default() };
    q.produce_messages(0, vec![delayed, short, body("now")], 0);
    assert_eq!(q.seek(100, "default", SeekTarget::Offset(Offset(0))), QueueResponse::Sought { pending: 2 });
    let now = q.lease_from(110, "default", 10);
    assert_eq!(offsets(&now), vec![2], "the delayed one still waits");
    q.ack_all(120, &now);
    assert_eq!(offsets(&q.lease_from(5000, "default", 10)), vec![0]);
}

#[test]
fn dead_letters_are_per_subscription() {
    let mut q = Harness::new();
    let other = q.subscribe(0, "other", SubscriptionStart::Latest);
    q.produce(1, &["a"]);
    let p = policy(1, 0, 0, true);
    let leased = q.lease_with(2, 1, 10, p);
    q.nack(3, leased[0].receipt, None, p);
    let dead = q.state.dead_messages(10);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].subscription, dead[0].offset, dead[0].state.dead),
        (D, Offset(0), Some(DeadReason::MaxDeliveries))
    );
    assert_eq!(q.depth_of(3, "other"), 1, "the other subscription still has it, alive");
    let remove =
        QueueCommand::RemoveDead { subscription: other, offsets: vec![Offset(0)], retention: Retention::default() };
    assert_eq!(q.apply(4, remove), QueueResponse::RemovedDead { removed: 0 }, "not dead there");
    let remove =
        QueueCommand::RemoveDead { subscription: D, offsets: vec![Offset(0)], retention: Retention::default() };
    assert_eq!(q.apply(5, remove), QueueResponse::RemovedDead { removed: 1 });
    assert!(q.stored_bodies.contains_key(&Offset(0)), "other still holds it");
    assert_eq!(offsets(&q.lease_from(6, "other", 1)), vec![0]);
}

#[test]
fn a_message_for_one_subscription_reaches_only_it() {
    let mut q = Harness::new();
    q.subscribe(0, "a", SubscriptionStart::Latest);
    let only_a = NewMessage { body: b"x".to_vec().into(), subscription: Some(sub("a")), ..Default::default() };
    let gone = NewMessage { body: b"y".to_vec().into(), subscription: Some(sub("deleted")), ..Default::default() };
    q.produce_messages(1, vec![only_a, gone], 0);
    assert_eq!(offsets(&q.lease_from(2, "a", 10)), vec![0, 1]);
    assert_eq!(offsets(&q.lease_from(2, "default", 10)), vec![1], "a missing subscription means every one");
}

#[test]
fn expiry_reaches_every_subscription() {
    let mut q = Harness::new();
    q.subscribe(0, "b", SubscriptionStart::Latest);
    let short = NewMessage { body: b"x".to_vec().into(), expires_at: Some(TimestampMs(100)), ..Default::default() };
    q.produce_messages(1, vec![short], 0);
    let leased = q.lease_from(2, "b", 1);
    assert_eq!(leased.len(), 1);
    let p = policy(0, 0, 0, true);
    assert_eq!(q.apply(100, QueueCommand::Sweep { policy: p }), QueueResponse::Swept { died: 2, dropped: 0 });
    assert_eq!(q.state.dead_messages(10).len(), 2, "dead in both subscriptions, for the dead-letter queue");
    let (ok, _) = q.ack(101, &[leased[0].receipt]);
    assert_eq!(ok, 0, "a dead message cannot be acked");
}

#[test]
fn a_deep_backlog_stays_on_disk_and_is_delivered_in_order() {
    let mut q = Harness::evicting(100);
    for batch in 0..100u64 {
        let bodies: Vec<String> = (0..100).map(|i| format!("m{}", batch * 100 + i)).collect();
        q.produce(1_000 + batch, &bodies.iter().map(String::as_str).collect::<Vec<_>>());
        let (in_memory, _) = q.state.resident();
        assert!(in_memory <= 100, "{in_memory} messages in memory after batch {batch}");
    }
    assert_eq!(q.state.resident(), (75, 9_925), "evicted newest first down to three quarters of the limit");
    assert_eq!(q.state.stats(TimestampMs(5_000)).available, 10_000);
    assert_eq!(q.state.stats(TimestampMs(5_000)).depth, 10_000);
    let peeked: Vec<u64> = q.peek(D, 5_000, 5_003, 10).iter().map(|m| m.offset.0).collect();
    assert_eq!(peeked, [5_000, 5_001, 5_002]);
    let mut next = 0;
    while next < 10_000 {
        let leased = q.lease(6_000, 64, 30_000);
        assert!(!leased.is_empty(), "the backlog ran dry at {next}");
        for m in &leased {
            assert_eq!(m.offset.0, next, "delivered out of order");
            next += 1;
        }
        let receipts: Vec<Receipt> = leased.iter().map(|m| m.receipt).collect();
        assert_eq!(q.ack(6_000, &receipts).0, receipts.len() as u32);
        let (in_memory, _) = q.state.resident();
        assert!(in_memory <= 100 + 1024, "{in_memory} messages in memory at {next}");
    }
    assert!(q.lease(6_000, 64, 30_000).is_empty());
    assert_eq!(q.state.resident(), (0, 0));
    assert!(q.stored_infos.is_empty(), "every acked message is deleted");
}
