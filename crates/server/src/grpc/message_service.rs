//! `raftmq.v1.MessageService`: produce, consume, ack, nack, extend lease.
//!
//! Each handler validates what it can without the queue, then runs on the
//! queue's leader through the [`Router`]. The work on the leader is one Raft
//! proposal; nothing here touches storage except reading message bodies for
//! a consume.

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::v1::message_service_client::MessageServiceClient;
use raftmq_proto::v1::message_service_server::MessageService;
use raftmq_proto::v1::{
    AckRequest, ConsumeRequest, ConsumeResponse, ExtendLeaseRequest, NackRequest, PeekRequest, PeekResponse,
    ProduceRequest, ProduceResponse, ReplyRequest, ReplyResponse, RequestRequest, RequestResponse, SettleResponse,
    StreamConsumeRequest,
};
use raftmq_types::config::{MAX_MESSAGE_TTL_MS, MAX_VISIBILITY_TIMEOUT_MS};
use raftmq_types::{
    MAX_CORRELATION_ID_BYTES, MAX_DEDUP_ID_BYTES, NewMessage, Offset, QueueCommand, QueueConfig, QueueLimit, QueueName,
    QueueRequest, QueueResponse, Receipt, SubscriptionName,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::clock;
use crate::convert;
use crate::error::ApiError;
use crate::grpc::{request_reply, stream_consume};
use crate::lease_claims::{LeaseClaims, Turn};
use raftmq_raft::QueueGroup;
use raftmq_storage::stages::{self, Stage};

use crate::routing::{CallContext, LocalError, Router, propose};

pub const MAX_BATCH: usize = 1000;
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Clone)]
pub struct MessageServiceImpl {
    router: Arc<Router>,
    /// Leases proposed here and not yet answered, shared by every consume
    /// and stream served by this node.
    lease_claims: Arc<LeaseClaims>,
}

impl MessageServiceImpl {
    pub fn new(router: Arc<Router>) -> Self {
        MessageServiceImpl { router, lease_claims: Arc::default() }
    }
}

fn queue_name(name: &str) -> Result<QueueName, Status> {
    QueueName::new(name).map_err(|e| ApiError::from(e).into())
}

/// A request's subscription field: empty is `default`.
pub(crate) fn subscription_name(name: &str) -> Result<SubscriptionName, Status> {
    if name.is_empty() {
        return Ok(SubscriptionName::default_subscription());
    }
    SubscriptionName::new(name).map_err(|e| ApiError::InvalidArgument(format!("subscription: {e}")).into())
}

fn check_batch(field: &str, n: usize) -> Result<(), Status> {
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::InvalidArgument(format!("{field}: got {n}, send 1 to {MAX_BATCH}")).into());
    }
    Ok(())
}

/// Each receipt of a request's `field`, parsed.
fn parse_each_receipt(field: &str, receipts: &[String]) -> Result<Vec<Receipt>, Status> {
    let parse = |r: &String| r.parse::<Receipt>().map_err(|e| ApiError::InvalidArgument(format!("{field}: {e}")));
    receipts.iter().map(|r| parse(r).map_err(Status::from)).collect()
}

fn parse_receipts(receipts: &[String]) -> Result<Vec<Receipt>, Status> {
    check_batch("receipts", receipts.len())?;
    parse_each_receipt("receipts", receipts)
}

/// A consume's receipts to ack with its lease: none is no ack.
fn parse_consume_acks(receipts: &[String]) -> Result<Option<Vec<Receipt>>, Status> {
    if receipts.is_empty() {
        return Ok(None);
    }
    if receipts.len() > MAX_BATCH {
        return Err(ApiError::InvalidArgument(format!("ack: got {}, send 0 to {MAX_BATCH}", receipts.len())).into());
    }
    parse_each_receipt("ack", receipts).map(Some)
}

/// The two answers of a `Batch` of an ack and a lease.
fn ack_and_lease(response: QueueResponse) -> Result<(QueueResponse, QueueResponse), LocalError> {
    match response {
        QueueResponse::Batch(responses) => match <[_; 2]>::try_from(responses) {
            Ok([ack, lease]) => Ok((ack, lease)),
            Err(responses) => Err(unexpected(QueueResponse::Batch(responses))),
        },
        other => Err(unexpected(other)),
    }
}

/// A settle command's answer, as the API gives it.
fn settled(response: QueueResponse) -> Result<SettleResponse, LocalError> {
    match response {
        QueueResponse::Settled { succeeded, failures } => Ok(convert::settle_response(succeeded, &failures)),
        other => Err(unexpected(other)),
    }
}

fn check_duration(field: &str, ms: u64, allow_zero: bool) -> Result<(), Status> {
    if (!allow_zero && ms == 0) || ms > MAX_VISIBILITY_TIMEOUT_MS {
        let low = if allow_zero { 0 } else { 1 };
        return Err(ApiError::InvalidArgument(format!(
            "{field}: got {ms} ms, use {low} to {MAX_VISIBILITY_TIMEOUT_MS} ms (12 hours)"
        ))
        .into());
    }
    Ok(())
}

type Client = MessageServiceClient<tonic::transport::Channel>;

fn client(channel: tonic::transport::Channel) -> Client {
    MessageServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

fn unexpected(response: QueueResponse) -> LocalError {
    ApiError::Internal(format!("unexpected response {response:?}")).into()
}

impl MessageServiceImpl {
    /// Ack, Nack and ExtendLease share everything but the command, which
    /// the leader builds from the queue's config.
    async fn settle<C, R, RF>(
        &self,
        ctx: CallContext,
        queue: &QueueName,
        command: C,
        remote: R,
    ) -> Result<SettleResponse, Status>
    where
        C: Fn(&QueueConfig) -> QueueCommand,
        R: Fn(Client, CallContext) -> RF,
        RF: Future<Output = Result<SettleResponse, Status>>,
    {
        self.router
            .on_queue_leader(
                ctx,
                queue,
                |group, entry| {
                    let command = command(&entry.config);
                    async move { settled(propose(&group, QueueRequest { now: clock::now(), command }).await?) }
                },
                |channel, ctx| remote(client(channel), ctx),
            )
            .await
    }
}

/// What a consume asks a lease for.
struct LeaseAsk {
    subscription: SubscriptionName,
    max_messages: u32,
    max_bytes: u64,
    correlation_id: Option<String>,
    visibility_timeout_ms: u64,
}

/// How long a consume holds the ack it carries while it waits for messages
/// to lease with it, before it proposes the ack alone.
const MAX_ACK_HOLD: Duration = Duration::from_millis(100);

/// Leases messages on the leader, waiting up to `wait_until` for some to
/// become available. Proposes nothing while nothing is available, nor while
/// leases already on their way (from other consumers) ask for everything
/// that is ([`crate::lease_claims`]). Receipts in `ack` are acked in the
/// same entry as the lease (`QueueCommand::Batch`): a consumer that keeps
/// up with its producers finds nothing to lease when it acks, so the ack
/// waits for messages too, for up to [`MAX_ACK_HOLD`] (and never past the
/// wait), and then goes alone.
async fn lease_on_leader(
    group: QueueGroup,
    config: QueueConfig,
    claims: Arc<LeaseClaims>,
    ask: LeaseAsk,
    ack: Option<Vec<Receipt>>,
    wait_until: Instant,
) -> Result<ConsumeResponse, LocalError> {
    let LeaseAsk { subscription, max_messages, max_bytes, correlation_id, visibility_timeout_ms } = ask;
    let mut ack = ack.map(|receipts| QueueCommand::Ack { receipts, retention: config.retention() });
    let ack_until = wait_until.min(Instant::now() + MAX_ACK_HOLD);
    let mut acked = None;
    let mut applied = group.reader.applied_index_watch();
    let own_id = group.raft.metrics().borrow_watched().id;
    loop {
        let now = clock::now();
        let (lease_now, claim, mut answered, wakeup) = {
            let state = group.reader.state();
            let Some(id) = state.subscription_id(&subscription) else {
                return Err(ApiError::SubscriptionNotFound { queue: group.queue.to_string(), subscription }.into());
            };
            let (lease_now, claim, answered) = match &correlation_id {
                // A correlated lease picks its own few messages: not claimed.
                Some(correlation_id) => (state.has_available_correlated(id, now, correlation_id), None, None),
                None => match claims
                    .turn(group.group_id, &subscription, max_messages, |limit| state.available_up_to(id, now, limit))
                {
                    Turn::Propose(claim) => (true, Some(claim), None),
                    Turn::Wait(answered) => (false, None, Some(answered)),
                    Turn::Nothing => (false, None, None),
                },
            };
            (lease_now, claim, answered, state.next_wakeup(id, now))
        };
        if lease_now {
            let policy = config.delivery_policy(rand::random());
            let lease = QueueCommand::Lease {
                subscription: subscription.clone(),
                max_messages,
                max_bytes,
                visibility_timeout_ms,
                policy,
                correlation_id: correlation_id.clone(),
            };
            let response = match ack.take() {
                None => propose(&group, QueueRequest { now, command: lease }).await?,
                Some(ack) => {
                    let command = QueueCommand::Batch(vec![ack, lease]);
                    let (ack, lease) = ack_and_lease(propose(&group, QueueRequest { now, command }).await?)?;
                    acked = Some(settled(ack)?);
                    lease
                }
            };
            // The lease is answered: consumers waiting on it may look again.
            drop(claim);
            match response {
                QueueResponse::Leased { messages } if !messages.is_empty() => {
                    let offsets: Vec<_> = messages.iter().map(|m| m.offset).collect();
                    let bodies = group
                        .reader
                        .read_for_delivery(&offsets)
                        .map_err(|e| ApiError::Internal(format!("read messages: {e}")))?;
                    return Ok(ConsumeResponse { messages: convert::delivered(&messages, bodies), acked });
                }
                QueueResponse::Leased { .. } => {}
                QueueResponse::SubscriptionNotFound => {
                    let queue = group.queue.to_string();
                    return Err(ApiError::SubscriptionNotFound { queue, subscription }.into());
                }
                other => return Err(unexpected(other)),
            }
        } else if let Some(command) = ack.take_if(|_| Instant::now() >= ack_until) {
            // Nothing came to lease while the ack was held: it goes alone.
            acked = Some(settled(propose(&group, QueueRequest { now, command }).await?)?);
            continue;
        }
        if Instant::now() >= wait_until {
            return Ok(ConsumeResponse { messages: Vec::new(), acked });
        }
        // Sleep until something is applied, a lease in flight is answered, a
        // lease or delay runs out, or the wait ends.
        let mut sleep_until = if ack.is_some() { ack_until } else { wait_until };
        if let Some(wakeup) = wakeup {
            let in_ms = wakeup.0.saturating_sub(now.0);
            sleep_until = sleep_until.min(Instant::now() + Duration::from_millis(in_ms));
        }
        // Leadership may move while waiting; re-check it on every wake-up.
        let leader = group.raft.metrics().borrow_watched().current_leader;
        if leader != Some(own_id) {
            return Err(LocalError::NotLeader(leader));
        }
        let lease_answered = async {
            match answered.as_mut() {
                // Changed or closed (the last claim gone): either way, look again.
                Some(receiver) => {
                    let _ = receiver.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    // The group stopped (queue deleted or node shutting down).
                    return Err(ApiError::Unavailable(format!("queue {} is shutting down here", group.queue)).into());
                }
            }
            _ = lease_answered => {}
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
    }
}

#[tonic::async_trait]
impl MessageService for MessageServiceImpl {
    type StreamConsumeStream = stream_consume::ResponseStream;

    async fn request(&self, request: Request<RequestRequest>) -> Result<Response<RequestResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        Ok(Response::new(request_reply::request(self, ctx, request.into_inner()).await?))
    }

    async fn reply(&self, request: Request<ReplyRequest>) -> Result<Response<ReplyResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        Ok(Response::new(request_reply::reply(self, ctx, request.into_inner()).await?))
    }

    async fn stream_consume(
        &self,
        request: Request<Streaming<StreamConsumeRequest>>,
    ) -> Result<Response<Self::StreamConsumeStream>, Status> {
        // The stream's tasks outlive this call; they share the router.
        let messages = Arc::new(self.clone());
        Ok(Response::new(stream_consume::serve(messages, request.into_inner()).await?))
    }

    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let started = Instant::now();
        let ctx = CallContext::from_metadata(request.metadata());
        let from_client = ctx.hops == 0;
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        check_batch("messages", request.messages.len())?;
        if let Some(i) = request.messages.iter().position(|m| m.body.is_empty()) {
            return Err(
                ApiError::InvalidArgument(format!("messages[{i}].body: is empty; send at least one byte")).into()
            );
        }
        if let Some(i) = request.messages.iter().position(|m| m.dedup_id.len() > MAX_DEDUP_ID_BYTES) {
            return Err(ApiError::InvalidArgument(format!(
                "messages[{i}].dedup_id: {} bytes; at most {MAX_DEDUP_ID_BYTES}",
                request.messages[i].dedup_id.len()
            ))
            .into());
        }
        if let Some(i) = request.messages.iter().position(|m| m.delay_ms > 0 && m.deliver_at_ms > 0) {
            return Err(
                ApiError::InvalidArgument(format!("messages[{i}]: set delay_ms or deliver_at_ms, not both")).into()
            );
        }
        if let Some(i) = request.messages.iter().position(|m| m.correlation_id.len() > MAX_CORRELATION_ID_BYTES) {
            return Err(ApiError::InvalidArgument(format!(
                "messages[{i}].correlation_id: {} bytes; at most {MAX_CORRELATION_ID_BYTES}",
                request.messages[i].correlation_id.len()
            ))
            .into());
        }
        if let Some(i) = request.messages.iter().position(|m| m.ttl_ms > MAX_MESSAGE_TTL_MS) {
            return Err(ApiError::InvalidArgument(format!(
                "messages[{i}].ttl_ms: {} ms; at most {MAX_MESSAGE_TTL_MS} (one year)",
                request.messages[i].ttl_ms
            ))
            .into());
        }
        for (i, message) in request.messages.iter().enumerate() {
            if !message.subscription.is_empty() {
                subscription_name(&message.subscription)
                    .map_err(|status| Status::invalid_argument(format!("messages[{i}].{}", status.message())))?;
            }
        }
        // Relative delays and lifetimes count from the leader's clock when it proposes.
        let delays: Vec<(u64, u64)> = request.messages.iter().map(|m| (m.delay_ms, m.ttl_ms)).collect();
        let response = self
            .router
            .on_queue_leader(
                ctx,
                &queue,
                |group, entry| {
                    // Converted on each attempt (a retry after a leader change
                    // needs its own): one copy of the bodies, not a
                    // conversion and then a clone.
                    let mut messages: Vec<NewMessage> = request.messages.iter().map(convert::new_message).collect();
                    let queue = &queue;
                    let delays = &delays;
                    async move {
                        let now = clock::now();
                        for (message, (delay, ttl)) in messages.iter_mut().zip(delays) {
                            if *delay > 0 {
                                message.deliver_at = Some(now.saturating_add_ms(*delay));
                            }
                            // The shorter of the message's and the queue's TTL; 0 is none.
                            let ttl = [*ttl, entry.config.message_ttl_ms].into_iter().filter(|t| *t > 0).min();
                            message.expires_at = ttl.map(|ttl| now.saturating_add_ms(ttl));
                        }
                        let limit = entry.config.max_message_bytes;
                        if let Some((i, m)) = messages.iter().enumerate().find(|(_, m)| m.size_bytes() > limit) {
                            return Err(ApiError::InvalidArgument(format!(
                                "messages[{i}]: {} bytes (body plus headers) exceed the queue's max_message_bytes of {limit}",
                                m.size_bytes()
                            ))
                            .into());
                        }
                        {
                            let state = group.reader.state();
                            let missing = messages.iter().filter_map(|m| m.subscription.as_ref()).find(|name| state.subscription_id(name).is_none());
                            if let Some(name) = missing {
                                let queue = queue.to_string();
                                return Err(ApiError::SubscriptionNotFound { queue, subscription: name.clone() }.into());
                            }
                        }
                        let batch = messages.len();
                        let command = QueueCommand::Produce {
                            messages,
                            dedup_window_ms: entry.config.dedup_window_ms,
                            limits: entry.config.limits(),
                        };
                        match propose(&group, QueueRequest { now, command }).await? {
                            QueueResponse::Produced { offsets } => Ok(ProduceResponse {
                                offsets: offsets.iter().map(|(offset, _)| offset.0).collect(),
                                duplicates: offsets.iter().map(|(_, duplicate)| *duplicate).collect(),
                            }),
                            QueueResponse::Full { limit, depth, bytes } => {
                                Err(ApiError::QueueFull(full_message(queue, limit, depth, bytes, batch)).into())
                            }
                            other => Err(unexpected(other)),
                        }
                    }
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(client(channel).produce(request).await?.into_inner()) }
                },
            )
            .await?;
        // Where a client called, not again where the call was forwarded to.
        if from_client {
            stages::record(Stage::ProduceCall, started.elapsed());
        }
        Ok(Response::new(response))
    }

    async fn consume(&self, request: Request<ConsumeRequest>) -> Result<Response<ConsumeResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        check_batch("max_messages", request.max_messages as usize)?;
        if request.wait_time_ms > MAX_WAIT_MS {
            return Err(ApiError::InvalidArgument(format!(
                "wait_time_ms: got {}, use 0 to {MAX_WAIT_MS}",
                request.wait_time_ms
            ))
            .into());
        }
        if request.visibility_timeout_ms != 0 {
            check_duration("visibility_timeout_ms", request.visibility_timeout_ms, false)?;
        }
        let subscription = subscription_name(&request.subscription)?;
        let ack = parse_consume_acks(&request.ack)?;
        // The long poll must fit in the caller's deadline, with room for the answer.
        let wait_until = (Instant::now() + Duration::from_millis(request.wait_time_ms))
            .min(ctx.deadline.checked_sub(Duration::from_millis(200)).unwrap_or(ctx.deadline));
        let response = self
            .router
            .on_queue_leader(
                ctx,
                &queue,
                |group, entry| {
                    let visibility_timeout_ms = match request.visibility_timeout_ms {
                        0 => entry.config.visibility_timeout_ms,
                        ms => ms,
                    };
                    let ask = LeaseAsk {
                        subscription: subscription.clone(),
                        max_messages: request.max_messages,
                        max_bytes: request.max_bytes,
                        correlation_id: (!request.correlation_id.is_empty()).then(|| request.correlation_id.clone()),
                        visibility_timeout_ms,
                    };
                    lease_on_leader(group, entry.config, self.lease_claims.clone(), ask, ack.clone(), wait_until)
                },
                |channel, ctx| {
                    let mut forwarded = request.clone();
                    // The time already spent here counts against the wait.
                    forwarded.wait_time_ms = wait_until.saturating_duration_since(Instant::now()).as_millis() as u64;
                    let forwarded = ctx.forward(forwarded);
                    async move { Ok(client(channel).consume(forwarded).await?.into_inner()) }
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<SettleResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        let receipts = parse_receipts(&request.receipts)?;
        let response = self
            .settle(
                ctx,
                &queue,
                |config: &QueueConfig| QueueCommand::Ack { receipts: receipts.clone(), retention: config.retention() },
                |mut client, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(client.ack(request).await?.into_inner()) }
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<SettleResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        let receipts = parse_receipts(&request.receipts)?;
        if let Some(delay_ms) = request.delay_ms {
            check_duration("delay_ms", delay_ms, true)?;
        }
        let delay_ms = request.delay_ms;
        let command = move |config: &QueueConfig| QueueCommand::Nack {
            receipts: receipts.clone(),
            delay_ms,
            policy: config.delivery_policy(rand::random()),
        };
        let response = self
            .settle(ctx, &queue, command, |mut client, ctx| {
                let request = ctx.forward(request.clone());
                async move { Ok(client.nack(request).await?.into_inner()) }
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn peek(&self, request: Request<PeekRequest>) -> Result<Response<PeekResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        check_batch("max_messages", request.max_messages as usize)?;
        let subscription = subscription_name(&request.subscription)?;
        let from = Offset(request.from_offset);
        let to = if request.to_offset == 0 { Offset(u64::MAX) } else { Offset(request.to_offset) };
        let max = request.max_messages as usize;
        let response = self
            .router
            .on_queue_leader(
                ctx,
                &queue,
                |group, _entry| {
                    let subscription = subscription.clone();
                    async move {
                        let now = clock::now();
                        let id = group.reader.state().subscription_id(&subscription);
                        let Some(id) = id else {
                            let queue = group.queue.to_string();
                            return Err(ApiError::SubscriptionNotFound { queue, subscription }.into());
                        };
                        let (records, next_offset) = group
                            .reader
                            .peek(id, from, to, max)
                            .map_err(|e| ApiError::Internal(format!("peek: {e}")))?;
                        let next_offset = match records.last() {
                            Some(last) if records.len() == max => Offset(last.offset.0 + 1),
                            // The range is exhausted: the next page starts at its end.
                            _ => to.min(next_offset).max(from),
                        };
                        let offsets: Vec<Offset> = records.iter().map(|m| m.offset).collect();
                        let bodies = group
                            .reader
                            .read_messages(&offsets)
                            .map_err(|e| ApiError::Internal(format!("read messages: {e}")))?;
                        Ok(PeekResponse {
                            messages: convert::peeked(&records, bodies, now),
                            next_offset: next_offset.0,
                        })
                    }
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(client(channel).peek(request).await?.into_inner()) }
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn extend_lease(&self, request: Request<ExtendLeaseRequest>) -> Result<Response<SettleResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        let receipts = parse_receipts(&request.receipts)?;
        check_duration("visibility_timeout_ms", request.visibility_timeout_ms, false)?;
        let visibility_timeout_ms = request.visibility_timeout_ms;
        let command =
            move |_: &QueueConfig| QueueCommand::ExtendLease { receipts: receipts.clone(), visibility_timeout_ms };
        let response = self
            .settle(ctx, &queue, command, |mut client, ctx| {
                let request = ctx.forward(request.clone());
                async move { Ok(client.extend_lease(request).await?.into_inner()) }
            })
            .await?;
        Ok(Response::new(response))
    }
}

/// RESOURCE_EXHAUSTED's message: which limit, and what the queue holds.
fn full_message(queue: &QueueName, limit: QueueLimit, depth: u64, bytes: u64, batch: usize) -> String {
    match limit {
        QueueLimit::MaxMessages(max) => format!(
            "queue {queue} is full: max_messages is {max} and it holds {depth} unacknowledged messages, \
             so the {batch} in this produce do not fit; nothing was stored. Consume and ack, or raise max_messages"
        ),
        QueueLimit::MaxBytes(max) => format!(
            "queue {queue} is full: max_bytes is {max} and it holds {bytes} bytes of unacknowledged messages, \
             so this produce of {batch} messages does not fit; nothing was stored. Consume and ack, or raise max_bytes"
        ),
    }
}
