//! How long each stage of the write path takes, for finding which stage owns
//! the tail of produce latency.
//!
//! One set of histograms per process (a node is a process), recorded by the
//! code that runs each stage and reported by `GetClusterStatus`, which
//! `raftmq bench` reads before and after a run to print each stage's
//! percentiles over that run. Values are microseconds in HdrHistograms with
//! two significant digits (at most 1% off), saturating at one hour.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};

/// A stage of the write path, as seen on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The node a client called: a `Produce` call from its decoded request
    /// reaching the handler to the handler's answer (validation, routing,
    /// forwarding to the leader if this node does not lead, the commit).
    /// Its difference to the client's own timing is the network, gRPC
    /// encoding and decoding, and waiting for a core outside the handler.
    ProduceCall,
    /// Leader: a `Produce` command from proposal to its answer (leader's
    /// fsync, a follower's acknowledgement and apply, plus any wait in
    /// between).
    ProduceCommit,
    /// Leader: the same for every other queue command (leases, acks, nacks,
    /// sweeps, ...).
    OtherCommit,
    /// Any node: a log append from its write until the fsync that covers it
    /// completed, including the wait for an fsync already under way.
    LogFlush,
    /// Any node: one fsync of the write-ahead log.
    Fsync,
    /// Leader: one AppendEntries request to a follower from sending it to its
    /// answer (the follower's write and fsync included).
    Replicate,
    /// Any node: applying one batch of committed entries to a queue (state
    /// machine and the unsynced RocksDB write of its changes).
    Apply,
    /// Any node: one purge of a group's log, which openraft runs in the
    /// group's Raft task, so nothing else of the group moves meanwhile
    /// (queue groups: finding the bodies still stored in the entries it
    /// deletes, copying them out, and the write).
    Purge,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::ProduceCall,
        Stage::ProduceCommit,
        Stage::OtherCommit,
        Stage::LogFlush,
        Stage::Fsync,
        Stage::Replicate,
        Stage::Apply,
        Stage::Purge,
    ];

    /// The name reported in `GetClusterStatus`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::ProduceCall => "produce_call",
            Stage::ProduceCommit => "produce_commit",
            Stage::OtherCommit => "other_commit",
            Stage::LogFlush => "log_flush",
            Stage::Fsync => "fsync",
            Stage::Replicate => "replicate",
            Stage::Apply => "apply",
            Stage::Purge => "log_purge",
        }
    }

    fn slot(self) -> usize {
        Stage::ALL.iter().position(|s| *s == self).expect("every stage is in ALL")
    }
}

const MAX_MICROS: u64 = 3_600_000_000;

static HISTOGRAMS: LazyLock<[Mutex<Histogram<u64>>; Stage::ALL.len()]> = LazyLock::new(|| {
    std::array::from_fn(|_| Mutex::new(Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds")))
});

/// Records that one run of `stage` took `elapsed`.
pub fn record(stage: Stage, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
    let mut histogram = HISTOGRAMS[stage.slot()].lock().unwrap_or_else(|e| e.into_inner());
    histogram.saturating_record(micros);
}

/// Every stage's histogram since the process started, in HdrHistogram's V2
/// serialisation (which HdrHistogram libraries in most languages read), with
/// its count.
pub fn serialized() -> Vec<(Stage, Vec<u8>, u64)> {
    Stage::ALL
        .iter()
        .map(|stage| {
            let histogram = HISTOGRAMS[stage.slot()].lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut bytes = Vec::new();
            // Writing to a Vec cannot fail; an empty histogram reads back as
            // empty, so a failure costs only this report.
            if let Err(e) = V2Serializer::new().serialize(&histogram, &mut bytes) {
                tracing::warn!(stage = stage.name(), error = ?e, "serialising a stage histogram");
                bytes.clear();
            }
            (*stage, bytes, histogram.len())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn recorded_durations_come_back_from_the_serialised_histogram() {
        let before: Histogram<u64> =
            Deserializer::new().deserialize(&mut &serialized()[Stage::Replicate.slot()].1[..]).expect("deserialise");
        for ms in 1..=100 {
            record(Stage::Replicate, Duration::from_millis(ms));
        }
        let (stage, bytes, count) = serialized().swap_remove(Stage::Replicate.slot());
        assert_eq!(stage, Stage::Replicate);
        let mut after: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).expect("deserialise");
        assert_eq!(count, after.len());
        after.subtract(&before).expect("subtract");
        assert_eq!(after.len(), 100);
        let p99 = after.value_at_quantile(0.99);
        assert!((98_000..=100_000).contains(&p99), "p99 {p99} µs");
        let p50 = after.value_at_quantile(0.5);
        assert!((49_000..=51_000).contains(&p50), "p50 {p50} µs");
    }
}
