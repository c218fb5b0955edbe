//! The state machine's apply path, without a disk or a network: what one
//! replica spends in `QueueState::apply` per produce, lease and ack entry.
//!
//! Run with `cargo bench -p raftmq-queue --bench apply` (release profile;
//! see docs/performance.md for figures).

use std::hint::black_box;

use std::collections::BTreeMap;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use raftmq_queue::{Change, ColdError, ColdStore, MessageInfo, QueueState};
use raftmq_types::{
    DeliveryPolicy, NewMessage, Offset, QueueCommand, QueueLimits, QueueRequest, QueueResponse, Receipt,
    SubscriptionName, TimestampMs,
};

const BATCH: usize = 64;
const BODY: usize = 1024;
/// Messages already in the queue when a measured command applies.
const BACKLOG: usize = 100_000;

fn batch(first: usize, dedup: bool) -> Vec<NewMessage> {
    (first..first + BATCH)
        .map(|i| NewMessage {
            body: vec![b'x'; BODY].into(),
            dedup_id: dedup.then(|| format!("id-{i}")),
            ..Default::default()
        })
        .collect()
}

fn produce(messages: Vec<NewMessage>, dedup_window_ms: u64) -> QueueRequest {
    QueueRequest {
        now: TimestampMs(1_000),
        command: QueueCommand::Produce { messages, dedup_window_ms, limits: QueueLimits::default() },
    }
}

fn lease(now: u64) -> QueueRequest {
    QueueRequest {
        now: TimestampMs(now),
        command: QueueCommand::Lease {
            subscription: SubscriptionName::default_subscription(),
            max_messages: BATCH as u32,
            max_bytes: 0,
            visibility_timeout_ms: 30_000,
            policy: DeliveryPolicy { backoff_min_ms: 1_000, backoff_max_ms: 300_000, ..Default::default() },
            correlation_id: None,
        },
    }
}

/// A queue holding `BACKLOG` available messages, and the log index after
/// them. One lease has run, so the backlog is already indexed as available
/// (the first lease after a burst of produces pays for moving them all).
fn backlog() -> (QueueState, u64, Infos) {
    let mut state = QueueState::new();
    let mut changes = Vec::new();
    let mut infos = Infos::default();
    let mut index = 0;
    for first in (0..BACKLOG).step_by(BATCH) {
        index += 1;
        state.apply(index, &produce(batch(first, false), 0), &mut changes);
        for change in changes.drain(..) {
            if let Change::PutMessage { message, info } = change {
                infos.0.insert(message.offset, info);
            }
        }
    }
    index += 1;
    state.apply(index, &lease(1_500), &mut changes);
    (state, index, infos)
}

/// The message infos as storage would hold them, for reading evicted ones back.
#[derive(Default)]
struct Infos(BTreeMap<Offset, MessageInfo>);

impl ColdStore for Infos {
    fn read_infos(&self, from: Offset, to: Offset) -> Result<Vec<(Offset, MessageInfo)>, ColdError> {
        Ok(self.0.range(from..to).map(|(offset, info)| (*offset, *info)).collect())
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(BATCH as u64));
    let (base, index, infos) = backlog();

    for (name, dedup) in [("produce 64 x 1 KiB", false), ("produce 64 x 1 KiB with dedup ids", true)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || (base.clone(), produce(batch(BACKLOG, dedup), if dedup { 300_000 } else { 0 }), Vec::new()),
                // The state is returned, so that dropping it is not measured.
                |(mut state, request, mut changes)| {
                    let response = state.apply(index + 1, &request, &mut changes);
                    (state, changes, black_box(response))
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.bench_function("lease 64", |b| {
        b.iter_batched(
            || (base.clone(), Vec::new()),
            |(mut state, mut changes)| {
                let response = state.apply(index + 1, &lease(2_000), &mut changes);
                (state, changes, black_box(response))
            },
            BatchSize::LargeInput,
        )
    });
    // Everything but the 64 leased is on disk: the lease reads 1,024 back.
    let mut evicted = base.clone();
    evicted.evict(0);
    group.bench_function("lease 64 from an evicted backlog", |b| {
        b.iter_batched(
            || (evicted.clone(), Vec::new()),
            |(mut state, mut changes)| {
                let response = state.apply_with(index + 1, &lease(2_000), &mut changes, &infos).expect("stored");
                (state, changes, black_box(response))
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("ack 64", |b| {
        b.iter_batched(
            || {
                let mut state = base.clone();
                let mut changes = Vec::new();
                let QueueResponse::Leased { messages } = state.apply(index + 1, &lease(2_000), &mut changes) else {
                    panic!("lease failed")
                };
                let receipts: Vec<Receipt> = messages.iter().map(|m| m.receipt).collect();
                let ack = QueueRequest {
                    now: TimestampMs(3_000),
                    command: QueueCommand::Ack { receipts, retention: Default::default() },
                };
                (state, ack, Vec::new())
            },
            |(mut state, request, mut changes)| {
                let response = state.apply(index + 2, &request, &mut changes);
                (state, changes, black_box(response))
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // What a replica pays after a write that took the queue past its limit:
    // a quarter of the limit goes to disk at once.
    let mut group = c.benchmark_group("evict");
    let to_evict = BACKLOG / 4;
    group.throughput(Throughput::Elements(to_evict as u64));
    group.bench_function("evict the newest quarter of 100,000", |b| {
        b.iter_batched(
            || base.clone(),
            |mut state| {
                let evicted = state.evict(BACKLOG - 1);
                assert!(evicted >= to_evict, "evicted {evicted}");
                state
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(apply, benches);
criterion_main!(apply);
