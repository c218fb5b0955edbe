//! Moving messages between queues, at least once: dead messages to their
//! queue's dead-letter queue, and `Redrive` back from a dead-letter queue.
//!
//! Both commit a message in the target queue before they delete it from the
//! source, and both give each copy a dedup id derived from the source's group
//! id and offset, so a move retried after a crash or a leader change is
//! stored once (within the target's dedup window). They go through the
//! public produce, consume and ack handlers in-process, so routing to each
//! queue's leader is the same as for any client call.
//!
//! The [`Tender`] runs on every node and looks after the queues this node
//! leads: it proposes a `Sweep` when a time to live or a last lease ran out
//! (so that nothing waits for a consumer to notice), and moves dead messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use raftmq_proto::v1::message_service_server::MessageService;
use raftmq_proto::v1::{AckRequest, ConsumeRequest, NackRequest, ProduceMessage, ProduceRequest, RedriveResponse};
use raftmq_raft::QueueGroup;
use raftmq_storage::CatalogQueue;
use raftmq_types::{Offset, QueueCommand, QueueName, QueueRequest, QueueResponse, SubscriptionId};
use tokio::time::Instant;
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

use crate::clock;
use crate::grpc::message_service::{MAX_BATCH, MessageServiceImpl};
use crate::routing::{LocalError, Router, propose, request_until};

/// Headers a dead-lettered message carries, besides its own.
pub const SOURCE_QUEUE_HEADER: &str = "raftmq-dlq-source-queue";
pub const SOURCE_OFFSET_HEADER: &str = "raftmq-dlq-source-offset";
pub const DELIVERIES_HEADER: &str = "raftmq-dlq-delivery-count";
pub const REASON_HEADER: &str = "raftmq-dlq-reason";
pub const PUBLISH_TIME_HEADER: &str = "raftmq-dlq-source-publish-time-ms";
/// The subscription the message died in; a redrive gives it back to that
/// subscription only.
pub const SOURCE_SUBSCRIPTION_HEADER: &str = "raftmq-dlq-source-subscription";
const DLQ_HEADERS: [&str; 6] = [
    SOURCE_QUEUE_HEADER,
    SOURCE_OFFSET_HEADER,
    DELIVERIES_HEADER,
    REASON_HEADER,
    PUBLISH_TIME_HEADER,
    SOURCE_SUBSCRIPTION_HEADER,
];

const TICK: Duration = Duration::from_millis(250);
/// Per produce or ack the tender or a redrive sends.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Redrive holds the messages it cannot move under this lease until it ends.
const REDRIVE_LEASE_MS: u64 = 60_000;

fn request<T>(message: T) -> Request<T> {
    request_until(message, Instant::now() + CALL_TIMEOUT)
}

/// What a queue's leader has to do: sweep (a time to live, a last lease or
/// retention ran out), move dead messages to the dead-letter queue.
struct Tending {
    sweep: bool,
    dead: bool,
}

impl Tending {
    fn any(&self) -> bool {
        self.sweep || self.dead
    }
}

fn needs_tending(group: &QueueGroup, entry: &CatalogQueue, now: raftmq_types::TimestampMs) -> Tending {
    let policy = entry.config.delivery_policy(0);
    let state = group.reader.state();
    Tending {
        sweep: state.needs_sweep(now, &policy),
        dead: entry.config.dead_letter_queue.is_some() && !state.dead_messages(1).is_empty(),
    }
}

/// Sweeps and dead-letters for the queues this node leads.
pub struct Tender {
    router: Arc<Router>,
    messages: Arc<MessageServiceImpl>,
}

impl Tender {
    pub fn new(router: Arc<Router>, messages: Arc<MessageServiceImpl>) -> Tender {
        Tender { router, messages }
    }

    /// Runs until the task is aborted.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Most groups need nothing: look at every one in place and clone
            // only those this node leads that have work.
            let (me, catalog, now) = (self.router.node_id(), self.router.groups().catalog(), clock::now());
            let due = self.router.groups().queue_groups_where(|group| {
                group.raft.metrics().borrow_watched().current_leader == Some(me)
                    && catalog.queues.get(&group.queue).is_some_and(|entry| needs_tending(group, entry, now).any())
            });
            for group in due {
                let Some(entry) = catalog.queues.get(&group.queue) else { continue };
                if let Err(e) = self.tend(&group, entry).await {
                    warn!(queue = %group.queue, error = %e, "sweeping or dead-lettering failed; will retry");
                }
            }
        }
    }

    async fn tend(&self, group: &QueueGroup, entry: &CatalogQueue) -> Result<(), String> {
        let now = clock::now();
        let policy = entry.config.delivery_policy(rand::random());
        let Tending { sweep, dead } = needs_tending(group, entry, now);
        if sweep {
            match propose(group, QueueRequest { now, command: QueueCommand::Sweep { policy } }).await {
                Ok(QueueResponse::Swept { died, dropped }) if died + dropped > 0 => {
                    debug!(queue = %group.queue, died, dropped, "swept");
                }
                Ok(_) | Err(LocalError::NotLeader(_)) => {}
                Err(LocalError::Api(e)) => return Err(format!("sweep: {e}")),
            }
        }
        match &entry.config.dead_letter_queue {
            Some(dlq) if dead => self.move_dead(group, entry, dlq).await,
            _ => Ok(()),
        }
    }

    /// Commits a batch of dead messages of one subscription in `dlq`, then
    /// removes them from that subscription.
    async fn move_dead(&self, group: &QueueGroup, entry: &CatalogQueue, dlq: &QueueName) -> Result<(), String> {
        let mut dead = group.reader.state().dead_messages(MAX_BATCH);
        let Some(first) = dead.first() else { return Ok(()) };
        let (subscription, subscription_name) = (first.subscription, first.subscription_name.clone());
        dead.retain(|m| m.subscription == subscription);
        let offsets: Vec<Offset> = dead.iter().map(|m| m.offset).collect();
        let bodies = group.reader.read_for_delivery(&offsets).map_err(|e| format!("read dead messages: {e}"))?;
        let records: BTreeMap<Offset, _> = dead.into_iter().map(|m| (m.offset, m.state)).collect();
        let mut moved = Vec::with_capacity(bodies.len());
        let mut messages = Vec::with_capacity(bodies.len());
        for stored in bodies {
            let Some(record) = records.get(&stored.offset) else { continue };
            let mut headers: std::collections::HashMap<String, String> = stored.headers.into_iter().collect();
            headers.insert(SOURCE_QUEUE_HEADER.into(), group.queue.to_string());
            headers.insert(SOURCE_OFFSET_HEADER.into(), stored.offset.0.to_string());
            headers.insert(DELIVERIES_HEADER.into(), record.attempts.to_string());
            headers.insert(REASON_HEADER.into(), record.dead.map(|r| r.as_str()).unwrap_or("unknown").into());
            headers.insert(PUBLISH_TIME_HEADER.into(), stored.publish_time.0.to_string());
            headers.insert(SOURCE_SUBSCRIPTION_HEADER.into(), subscription_name.to_string());
            // The default subscription keeps the id it had before subscriptions existed.
            let dedup_id = if subscription == SubscriptionId::DEFAULT {
                format!("raftmq-dlq-{}-{}", group.group_id.0, stored.offset.0)
            } else {
                format!("raftmq-dlq-{}-s{}-{}", group.group_id.0, subscription.0, stored.offset.0)
            };
            messages.push(ProduceMessage {
                body: stored.body,
                headers,
                dedup_id,
                correlation_id: stored.correlation_id.unwrap_or_default(),
                ..Default::default()
            });
            moved.push(stored.offset);
        }
        if messages.is_empty() {
            return Ok(());
        }
        let produce = ProduceRequest { queue: dlq.to_string(), messages };
        self.messages
            .produce(request(produce))
            .await
            .map_err(|s| format!("produce to dead-letter queue {dlq}: {}", s.message()))?;
        let count = moved.len();
        let command = QueueCommand::RemoveDead { subscription, offsets: moved, retention: entry.config.retention() };
        match propose(group, QueueRequest { now: clock::now(), command }).await {
            Ok(_) => {
                info!(queue = %group.queue, subscription = %subscription_name, %dlq, count, "dead-lettered");
                Ok(())
            }
            // Another leader will move them again; the dedup ids keep the copies to one.
            Err(LocalError::NotLeader(_)) => Ok(()),
            Err(LocalError::Api(e)) => Err(format!("remove dead-lettered messages: {e}")),
        }
    }
}

/// Moves up to `max` (0: all available) messages of the dead-letter queue
/// `dlq` back to their source queues, until `deadline`.
pub async fn redrive(
    router: &Router,
    messages: &MessageServiceImpl,
    dlq: &QueueName,
    max: u64,
    deadline: Instant,
) -> Result<RedriveResponse, Status> {
    let group_id = router
        .catalog_entry(dlq)
        .ok_or_else(|| Status::from(crate::error::ApiError::QueueNotFound(dlq.to_string())))?
        .group_id;
    let mut response = RedriveResponse::default();
    let mut reasons = BTreeSet::new();
    // Receipts of messages that cannot be moved, held until the end so that
    // the loop does not meet them again, then given back.
    let mut held: Vec<String> = Vec::new();
    let outcome = async {
        while max == 0 || response.moved + response.skipped < max {
            if Instant::now() + CALL_TIMEOUT > deadline {
                break;
            }
            let want = if max == 0 {
                MAX_BATCH as u64
            } else {
                (max - response.moved - response.skipped).min(MAX_BATCH as u64)
            };
            let consume = ConsumeRequest {
                queue: dlq.to_string(),
                max_messages: want as u32,
                wait_time_ms: 0,
                visibility_timeout_ms: REDRIVE_LEASE_MS,
                ..Default::default()
            };
            let leased = messages.consume(request(consume)).await?.into_inner().messages;
            if leased.is_empty() {
                break;
            }
            let mut by_source: BTreeMap<String, Vec<raftmq_proto::v1::Message>> = BTreeMap::new();
            for message in leased {
                match message.headers.get(SOURCE_QUEUE_HEADER) {
                    Some(source) => by_source.entry(source.clone()).or_default().push(message),
                    None => {
                        reasons.insert(format!("no {SOURCE_QUEUE_HEADER} header"));
                        response.skipped += 1;
                        held.push(message.receipt);
                    }
                }
            }
            for (source, batch) in by_source {
                let produce = ProduceRequest {
                    queue: source.clone(),
                    messages: batch
                        .iter()
                        .map(|m| ProduceMessage {
                            body: m.body.clone(),
                            headers: m
                                .headers
                                .iter()
                                .filter(|(k, _)| !DLQ_HEADERS.contains(&k.as_str()))
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                            dedup_id: format!("raftmq-redrive-{}-{}", group_id.0, m.offset),
                            correlation_id: m.correlation_id.clone(),
                            // Back to the subscription it died in; without the
                            // header (an older dead letter), to every one.
                            subscription: m.headers.get(SOURCE_SUBSCRIPTION_HEADER).cloned().unwrap_or_default(),
                            ..Default::default()
                        })
                        .collect(),
                };
                let receipts: Vec<String> = batch.into_iter().map(|m| m.receipt).collect();
                match messages.produce(request(produce)).await {
                    Ok(_) => {
                        let count = receipts.len() as u64;
                        let ack = AckRequest { queue: dlq.to_string(), receipts };
                        messages.ack(request(ack)).await?;
                        response.moved += count;
                    }
                    Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                        reasons.insert(format!("queue {source:?}: {}", status.message()));
                        response.skipped += receipts.len() as u64;
                        held.extend(receipts);
                    }
                    Err(status) => {
                        held.extend(receipts);
                        return Err(status);
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    for receipts in held.chunks(MAX_BATCH) {
        let nack = NackRequest { queue: dlq.to_string(), receipts: receipts.to_vec(), delay_ms: Some(0) };
        if let Err(e) = messages.nack(request(nack)).await {
            warn!(%dlq, error = %e.message(), "giving back messages redrive could not move failed; their leases will run out");
        }
    }
    outcome?;
    response.skipped_reasons = reasons.into_iter().collect();
    Ok(response)
}
