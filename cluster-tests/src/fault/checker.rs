//! The checker: reads a history and decides whether the cluster kept its
//! promises. Violations (any makes the run fail):
//!
//! - **lost**: a produce returned `ok`, and the message was never delivered
//!   (the run ends with a drain, so everything still stored is delivered).
//! - **unexpected**: a delivered message that no produce sent, or whose
//!   produce failed for certain (`fail`, not `info`).
//! - **acked then delivered again**: a delivery of a stored message (queue,
//!   offset) by a consume *invoked after* an ack of that message returned
//!   `ok` without naming its receipt as failed.
//! - **offset conflicts**: two different messages delivered at one offset, or
//!   a message delivered at offsets that do not include the one its `ok`
//!   produce returned.
//!
//! Reported, not violations: redeliveries of a message that was not acked
//! (at-least-once), messages appended twice (a produce whose outcome was lost
//! and which a forwarding node retried), first deliveries out of a producer's
//! order, and the time from each leader fault to the next successful produce
//! on that queue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use crate::fault::history::{Event, F, Type};

/// (queue, offset): one stored message.
type Key = (String, u64);

#[derive(Debug, Default)]
pub struct Report {
    /// Operations by function: (ok, fail, info).
    pub ops: BTreeMap<&'static str, (u64, u64, u64)>,
    /// Messages in produces that returned ok / failed / had an unknown outcome.
    pub produced_ok: u64,
    pub produced_failed: u64,
    pub produced_unknown: u64,
    /// Deliveries in consumes that returned ok, and distinct stored messages among them.
    pub deliveries: u64,
    pub delivered_distinct: u64,
    /// Distinct stored messages whose ack returned ok.
    pub acked: u64,
    pub lost: Vec<String>,
    pub unexpected: Vec<String>,
    pub acked_then_delivered: Vec<String>,
    pub offset_conflicts: Vec<String>,
    /// Deliveries beyond the first of one stored message.
    pub redeliveries: u64,
    /// Ids stored at more than one offset.
    pub appended_twice: u64,
    /// Consecutive messages of one producer whose first deliveries came in the
    /// opposite order.
    pub out_of_order: u64,
    pub faults: BTreeMap<String, u64>,
    /// Leader faults: milliseconds from the fault to the first successful
    /// produce on the queue that was invoked after it, by fault kind.
    pub recoveries_ms: BTreeMap<String, Vec<u64>>,
    /// Leader faults after which no produce on that queue succeeded.
    pub unrecovered: u64,
    /// Leader faults followed by another fault before a produce on their
    /// queue succeeded: their recovery would measure several faults, so it
    /// is not counted.
    pub interrupted: u64,
    /// Microseconds from the first to the last event.
    pub duration_us: u64,
}

impl Report {
    /// Each kind of violation, with its row label, and its examples.
    fn violation_lists(&self) -> [(&'static str, &Vec<String>); 4] {
        [
            ("lost (acknowledged, never delivered)", &self.lost),
            ("unexpected (delivered, never produced)", &self.unexpected),
            ("acked, then delivered again", &self.acked_then_delivered),
            ("produce offsets that disagree", &self.offset_conflicts),
        ]
    }

    pub fn violations(&self) -> u64 {
        self.violation_lists().iter().map(|(_, list)| list.len() as u64).sum()
    }

    pub fn is_valid(&self) -> bool {
        self.violations() == 0
    }

    /// The results as Markdown tables, followed by examples of each violation.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let minutes = self.duration_us as f64 / 60e6;
        let total_faults: u64 = self.faults.values().sum();
        let _ = writeln!(out, "| run | |\n|---|---|");
        let _ = writeln!(out, "| duration | {minutes:.1} min |");
        let _ = writeln!(out, "| faults injected | {total_faults} |");
        for (op, (ok, fail, info)) in &self.ops {
            let _ = writeln!(out, "| {op} operations (ok / fail / unknown) | {ok} / {fail} / {info} |");
        }
        let _ = writeln!(
            out,
            "| messages produced (ok / fail / unknown) | {} / {} / {} |",
            self.produced_ok, self.produced_failed, self.produced_unknown
        );
        let _ = writeln!(out, "| deliveries (distinct messages) | {} ({}) |", self.deliveries, self.delivered_distinct);
        let _ = writeln!(out, "| messages acked | {} |", self.acked);
        let _ = writeln!(out);
        let _ = writeln!(out, "| check | count | verdict |\n|---|---|---|");
        for (what, list) in self.violation_lists() {
            let verdict = if list.is_empty() { "ok" } else { "VIOLATION" };
            let _ = writeln!(out, "| {what} | {} | {verdict} |", list.len());
        }
        let _ = writeln!(out, "| redeliveries of unacked messages | {} | allowed |", self.redeliveries);
        let _ =
            writeln!(out, "| messages appended twice (retried produce) | {} | allowed, counted |", self.appended_twice);
        let _ = writeln!(out, "| first deliveries out of producer order | {} | reported |", self.out_of_order);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| fault | injected | recoveries measured | recovery p50 | p90 | max |\n|---|---|---|---|---|---|"
        );
        for (fault, count) in &self.faults {
            match self.recoveries_ms.get(fault) {
                Some(times) if !times.is_empty() => {
                    let mut sorted = times.clone();
                    sorted.sort_unstable();
                    let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
                    let _ = writeln!(
                        out,
                        "| {fault} | {count} | {} | {} ms | {} ms | {} ms |",
                        sorted.len(),
                        pick(0.5),
                        pick(0.9),
                        sorted[sorted.len() - 1]
                    );
                }
                _ => {
                    let _ = writeln!(out, "| {fault} | {count} | | | | |");
                }
            }
        }
        for (fault, times) in &self.recoveries_ms {
            let _ = writeln!(out, "\n{fault} recovery distribution: {}", distribution(times));
        }
        if self.interrupted > 0 {
            let _ = writeln!(
                out,
                "\n{} leader faults were followed by another fault before a produce succeeded; their recovery is not measured.",
                self.interrupted
            );
        }
        if self.unrecovered > 0 {
            let _ = writeln!(out, "\n{} leader faults saw no successful produce afterwards.", self.unrecovered);
        }
        for (what, list) in self.violation_lists() {
            if !list.is_empty() {
                let shown: Vec<&String> = list.iter().take(20).collect();
                let _ = writeln!(out, "\n{what} ({}), first {}: {shown:?}", list.len(), shown.len());
            }
        }
        out
    }
}

/// Counts of recovery times in buckets, e.g. `<1 s: 0, 1-2 s: 3, …`.
fn distribution(times_ms: &[u64]) -> String {
    const BOUNDS_S: [u64; 7] = [1, 2, 3, 4, 5, 7, 10];
    let mut counts = [0usize; BOUNDS_S.len() + 1];
    for ms in times_ms {
        let bucket = BOUNDS_S.iter().position(|s| *ms < s * 1000).unwrap_or(BOUNDS_S.len());
        counts[bucket] += 1;
    }
    let mut parts = Vec::new();
    let mut lower = 0;
    for (i, count) in counts.iter().enumerate() {
        match BOUNDS_S.get(i) {
            Some(upper) => parts.push(format!("{lower}-{upper} s: {count}")),
            None => parts.push(format!("≥{lower} s: {count}")),
        }
        lower = BOUNDS_S.get(i).copied().unwrap_or(lower);
    }
    parts.join(", ")
}

fn op_name(f: F) -> &'static str {
    match f {
        F::Produce => "produce",
        F::Consume => "consume",
        F::Ack => "ack",
        F::Fault | F::Recover => "nemesis",
    }
}

/// `p<producer>-<sequence>` → (producer, sequence).
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (producer, seq) = id.strip_prefix('p')?.split_once('-')?;
    Some((producer.parse().ok()?, seq.parse().ok()?))
}

/// A leader fault waiting for the first successful produce after it.
struct PendingRecovery {
    fault: String,
    queue: String,
    at_us: u64,
}

pub fn check(events: &[Event]) -> Report {
    let mut report = Report::default();
    let mut invoked: HashMap<&str, &Event> = HashMap::new();
    let mut attempted: HashSet<&str> = HashSet::new();
    let mut failed_ids: HashSet<&str> = HashSet::new();
    // id → (queue, offset) its ok produce returned.
    let mut confirmed: HashMap<&str, Key> = HashMap::new();
    // (queue, offset) → id first delivered there.
    let mut stored: HashMap<Key, &str> = HashMap::new();
    // id → the offsets it was delivered at, per queue.
    let mut offsets_of: HashMap<&str, HashSet<Key>> = HashMap::new();
    // id → time of its first delivery (the consume's invocation).
    let mut first_delivery: HashMap<&str, u64> = HashMap::new();
    // (queue, offset) → when an ack of it first returned ok.
    let mut acked_at: HashMap<Key, u64> = HashMap::new();
    let mut pending: Vec<PendingRecovery> = Vec::new();

    for event in events {
        match (event.f, event.kind) {
            (F::Fault, _) => {
                let fault = event.fault.clone().unwrap_or_else(|| "unnamed".to_string());
                *report.faults.entry(fault.clone()).or_default() += 1;
                report.interrupted += pending.len() as u64;
                pending.clear();
                if fault.ends_with("-leader")
                    && let Some(queue) = &event.queue
                {
                    pending.push(PendingRecovery { fault, queue: queue.clone(), at_us: event.time_us });
                }
                continue;
            }
            (F::Recover, _) => continue,
            (_, Type::Invoke) => {
                if event.f == F::Produce {
                    attempted.extend(event.messages.iter().map(|m| m.id.as_str()));
                }
                invoked.insert(&event.process, event);
                continue;
            }
            _ => {}
        }
        // A completion: pair it with its invocation.
        let Some(invocation) = invoked.remove(event.process.as_str()) else { continue };
        let counts = report.ops.entry(op_name(event.f)).or_default();
        match event.kind {
            Type::Ok => counts.0 += 1,
            Type::Fail => counts.1 += 1,
            _ => counts.2 += 1,
        }
        let queue = event.queue.clone().or_else(|| invocation.queue.clone()).unwrap_or_default();
        match (event.f, event.kind) {
            (F::Produce, Type::Ok) => {
                report.produced_ok += event.messages.len() as u64;
                for message in &event.messages {
                    if let Some(offset) = message.offset {
                        confirmed.insert(&message.id, (queue.clone(), offset));
                    }
                }
                pending.retain(|p| {
                    let recovered = p.queue == queue && invocation.time_us > p.at_us;
                    if recovered {
                        let ms = (event.time_us - p.at_us) / 1000;
                        report.recoveries_ms.entry(p.fault.clone()).or_default().push(ms);
                    }
                    !recovered
                });
            }
            (F::Produce, Type::Fail) => {
                report.produced_failed += invocation.messages.len() as u64;
                failed_ids.extend(invocation.messages.iter().map(|m| m.id.as_str()));
            }
            (F::Produce, _) => report.produced_unknown += invocation.messages.len() as u64,
            (F::Consume, Type::Ok) => {
                for message in &event.messages {
                    let Some(offset) = message.offset else { continue };
                    let key = (queue.clone(), offset);
                    report.deliveries += 1;
                    if let Some(&acked) = acked_at.get(&key)
                        && acked < invocation.time_us
                    {
                        report.acked_then_delivered.push(format!(
                            "{} at {}:{offset} delivered by a consume invoked at {} µs, acked at {acked} µs",
                            message.id, key.0, invocation.time_us
                        ));
                    }
                    match stored.get(&key) {
                        Some(first) if *first != message.id => report
                            .offset_conflicts
                            .push(format!("{}:{offset} delivered as {first} and as {}", key.0, message.id)),
                        Some(_) => report.redeliveries += 1,
                        None => {
                            stored.insert(key.clone(), &message.id);
                        }
                    }
                    offsets_of.entry(&message.id).or_default().insert(key);
                    first_delivery.entry(&message.id).or_insert(invocation.time_us);
                }
            }
            (F::Ack, Type::Ok) => {
                let refused: HashSet<&str> = event.failed.iter().map(String::as_str).collect();
                for message in &invocation.messages {
                    let (Some(offset), Some(receipt)) = (message.offset, &message.receipt) else { continue };
                    if !refused.contains(receipt.as_str()) {
                        acked_at.entry((queue.clone(), offset)).or_insert(event.time_us);
                    }
                }
            }
            _ => {}
        }
    }

    report.unrecovered = pending.len() as u64;
    report.delivered_distinct = stored.len() as u64;
    report.acked = acked_at.len() as u64;
    report.duration_us = match (events.first(), events.last()) {
        (Some(first), Some(last)) => last.time_us.saturating_sub(first.time_us),
        _ => 0,
    };

    let mut lost: Vec<String> = Vec::new();
    for (id, key) in &confirmed {
        match offsets_of.get(id) {
            None => lost.push(id.to_string()),
            Some(keys) if !keys.contains(key) => {
                let mut at: Vec<String> = keys.iter().map(|(q, o)| format!("{q}:{o}")).collect();
                at.sort();
                report.offset_conflicts.push(format!("{id} confirmed at {}:{} but delivered at {at:?}", key.0, key.1));
            }
            Some(_) => {}
        }
    }
    lost.sort();
    report.lost = lost;
    let mut unexpected: Vec<String> = offsets_of
        .keys()
        .filter(|id| !attempted.contains(*id) || failed_ids.contains(*id))
        .map(|id| id.to_string())
        .collect();
    unexpected.sort();
    report.unexpected = unexpected;
    report.appended_twice = offsets_of.values().filter(|keys| keys.len() > 1).count() as u64;
    report.acked_then_delivered.sort();
    report.offset_conflicts.sort();

    // Order of first deliveries, per producer, between consecutive messages.
    let mut by_producer: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (id, at) in &first_delivery {
        if let Some((producer, seq)) = parse_id(id) {
            by_producer.entry(producer).or_default().push((seq, *at));
        }
    }
    for deliveries in by_producer.values_mut() {
        deliveries.sort_unstable();
        report.out_of_order += deliveries.windows(2).filter(|pair| pair[1].1 < pair[0].1).count() as u64;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::history::Msg;

    /// Builds a history with increasing times, like [`History`] would.
    #[derive(Default)]
    struct Builder {
        events: Vec<Event>,
    }

    impl Builder {
        fn push(&mut self, mut event: Event) -> &mut Self {
            event.index = self.events.len() as u64;
            event.time_us = event.index * 1000;
            self.events.push(event);
            self
        }

        fn produce(&mut self, process: &str, id: &str, outcome: Type, offset: Option<u64>) -> &mut Self {
            self.push(Event::new(process, Type::Invoke, F::Produce).queue("q").messages(vec![Msg::id(id)]));
            let mut message = Msg::id(id);
            message.offset = offset;
            self.push(Event::new(process, outcome, F::Produce).queue("q").messages(vec![message]))
        }

        fn consume(&mut self, process: &str, delivered: &[(&str, u64)]) -> &mut Self {
            self.push(Event::new(process, Type::Invoke, F::Consume).queue("q"));
            let messages = delivered
                .iter()
                .map(|(id, offset)| Msg {
                    id: id.to_string(),
                    offset: Some(*offset),
                    attempt: Some(1),
                    receipt: Some(format!("r-{offset}")),
                })
                .collect();
            self.push(Event::new(process, Type::Ok, F::Consume).queue("q").messages(messages))
        }

        fn ack(&mut self, process: &str, acked: &[(&str, u64)], outcome: Type) -> &mut Self {
            let messages = acked
                .iter()
                .map(|(id, offset)| Msg {
                    id: id.to_string(),
                    offset: Some(*offset),
                    attempt: None,
                    receipt: Some(format!("r-{offset}")),
                })
                .collect();
            self.push(Event::new(process, Type::Invoke, F::Ack).queue("q").messages(messages));
            self.push(Event::new(process, outcome, F::Ack).queue("q"))
        }

        fn check(&self) -> Report {
            check(&self.events)
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(0))
            .produce("producer-0", "p0-1", Type::Info, None)
            .produce("producer-0", "p0-2", Type::Ok, Some(1))
            .consume("consumer-0", &[("p0-0", 0), ("p0-2", 1)])
            .ack("consumer-0", &[("p0-0", 0)], Type::Ok)
            // Not acked: its redelivery is allowed.
            .consume("consumer-0", &[("p0-2", 1)])
            .ack("consumer-0", &[("p0-2", 1)], Type::Ok)
            .consume("consumer-0", &[]);
        let report = history.check();
        assert!(report.is_valid(), "{}", report.table());
        assert_eq!(report.produced_ok, 2);
        assert_eq!(report.produced_unknown, 1);
        assert_eq!(report.redeliveries, 1);
        assert_eq!(report.acked, 2);
    }

    #[test]
    fn a_lost_message_fails() {
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(0))
            .produce("producer-0", "p0-1", Type::Ok, Some(1))
            .consume("consumer-0", &[("p0-0", 0)]);
        let report = history.check();
        assert!(!report.is_valid());
        assert_eq!(report.lost, vec!["p0-1".to_string()]);
        assert!(report.table().contains("| lost (acknowledged, never delivered) | 1 | VIOLATION |"));
    }

    #[test]
    fn an_acked_message_delivered_again_fails() {
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(0))
            .consume("consumer-0", &[("p0-0", 0)])
            .ack("consumer-0", &[("p0-0", 0)], Type::Ok)
            .consume("consumer-1", &[("p0-0", 0)]);
        let report = history.check();
        assert!(!report.is_valid());
        assert_eq!(report.acked_then_delivered.len(), 1, "{}", report.table());
    }

    #[test]
    fn a_refused_or_unknown_ack_allows_redelivery() {
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(0))
            .produce("producer-0", "p0-1", Type::Ok, Some(1))
            .consume("consumer-0", &[("p0-0", 0), ("p0-1", 1)])
            .ack("consumer-0", &[("p0-0", 0)], Type::Info);
        // The server refused the second ack's receipt (the lease ran out).
        history.push(Event::new("consumer-0", Type::Invoke, F::Ack).queue("q").messages(vec![Msg {
            id: "p0-1".into(),
            offset: Some(1),
            attempt: None,
            receipt: Some("r-1".into()),
        }]));
        let mut refused = Event::new("consumer-0", Type::Ok, F::Ack).queue("q");
        refused.failed = vec!["r-1".into()];
        history.push(refused);
        history.consume("consumer-1", &[("p0-0", 0), ("p0-1", 1)]);
        let report = history.check();
        assert!(report.is_valid(), "{}", report.table());
        assert_eq!(report.redeliveries, 2);
    }

    #[test]
    fn a_delivery_racing_an_ack_is_not_a_violation() {
        // The consume was invoked before the ack returned: the lease may have
        // run out and the message been leased again before the ack landed.
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(0))
            .consume("consumer-0", &[("p0-0", 0)])
            .push(Event::new("consumer-1", Type::Invoke, F::Consume).queue("q"));
        history.ack("consumer-0", &[("p0-0", 0)], Type::Ok);
        history.push(Event::new("consumer-1", Type::Ok, F::Consume).queue("q").messages(vec![Msg {
            id: "p0-0".into(),
            offset: Some(0),
            attempt: Some(2),
            receipt: Some("r-0b".into()),
        }]));
        let report = history.check();
        assert!(report.is_valid(), "{}", report.table());
    }

    #[test]
    fn an_offset_conflict_fails() {
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(0))
            .produce("producer-1", "p1-0", Type::Ok, Some(0))
            .consume("consumer-0", &[("p0-0", 0)])
            .consume("consumer-1", &[("p1-0", 0)]);
        let report = history.check();
        assert!(!report.is_valid());
        // Two messages delivered at offset 0; both were confirmed there.
        assert_eq!(report.offset_conflicts, vec!["q:0 delivered as p0-0 and as p1-0".to_string()]);
        assert!(report.table().contains("| produce offsets that disagree | 1 | VIOLATION |"));
    }

    #[test]
    fn a_message_delivered_away_from_its_confirmed_offset_fails() {
        let mut history = Builder::default();
        history.produce("producer-0", "p0-0", Type::Ok, Some(3)).consume("consumer-0", &[("p0-0", 4)]);
        let report = history.check();
        assert_eq!(report.offset_conflicts.len(), 1, "{}", report.table());
        assert!(report.lost.is_empty());
    }

    #[test]
    fn a_message_appended_twice_is_counted_not_failed() {
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(1))
            .consume("consumer-0", &[("p0-0", 0), ("p0-0", 1)])
            .ack("consumer-0", &[("p0-0", 0), ("p0-0", 1)], Type::Ok);
        let report = history.check();
        assert!(report.is_valid(), "{}", report.table());
        assert_eq!(report.appended_twice, 1);
    }

    #[test]
    fn unexpected_messages_fail() {
        let mut history = Builder::default();
        history.produce("producer-0", "p0-0", Type::Fail, None).consume("consumer-0", &[("p0-0", 0), ("p9-9", 1)]);
        let report = history.check();
        assert_eq!(report.unexpected, vec!["p0-0".to_string(), "p9-9".to_string()]);
        assert!(!report.is_valid());
    }

    #[test]
    fn recovery_is_measured_from_a_leader_fault_to_the_next_produce_invoked_after_it() {
        let mut history = Builder::default();
        history.produce("producer-0", "p0-0", Type::Ok, Some(0));
        // t = 2 ms: the leader is killed.
        history.push(Event::new("nemesis", Type::Info, F::Fault).queue("q").fault("kill-leader", vec![1]));
        // Invoked at 3 ms, unknown; invoked at 5 ms, ok at 6 ms.
        history.produce("producer-0", "p0-1", Type::Info, None).produce("producer-0", "p0-2", Type::Ok, Some(1));
        history.consume("consumer-0", &[("p0-0", 0), ("p0-2", 1)]);
        let report = history.check();
        assert!(report.is_valid(), "{}", report.table());
        assert_eq!(report.faults["kill-leader"], 1);
        assert_eq!(report.recoveries_ms["kill-leader"], vec![4]);
        assert!(
            report.table().contains("kill-leader recovery distribution: 0-1 s: 1, 1-2 s: 0,"),
            "{}",
            report.table()
        );
        assert_eq!(report.unrecovered, 0);
    }

    #[test]
    fn a_recovery_interrupted_by_the_next_fault_is_not_measured() {
        let mut history = Builder::default();
        history.push(Event::new("nemesis", Type::Info, F::Fault).queue("q").fault("isolate-leader", vec![1]));
        history.produce("producer-0", "p0-0", Type::Info, None);
        history.push(Event::new("nemesis", Type::Info, F::Fault).fault("isolate", vec![2]));
        history.produce("producer-0", "p0-1", Type::Ok, Some(0));
        history.consume("consumer-0", &[("p0-1", 0)]);
        let report = history.check();
        assert!(report.is_valid(), "{}", report.table());
        assert!(!report.recoveries_ms.contains_key("isolate-leader"), "{:?}", report.recoveries_ms);
        assert_eq!((report.interrupted, report.unrecovered), (1, 0));
        assert!(report.table().contains("1 leader faults were followed by another fault"), "{}", report.table());
    }

    #[test]
    fn out_of_order_first_deliveries_are_counted() {
        let mut history = Builder::default();
        history
            .produce("producer-0", "p0-0", Type::Ok, Some(0))
            .produce("producer-0", "p0-1", Type::Ok, Some(1))
            .consume("consumer-0", &[("p0-1", 1)])
            .consume("consumer-0", &[("p0-0", 0)]);
        let report = history.check();
        assert!(report.is_valid());
        assert_eq!(report.out_of_order, 1);
    }
}
