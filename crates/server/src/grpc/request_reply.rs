//! `MessageService/Request` and `Reply`: an RPC over two queues.
//!
//! Both are compositions of the unary handlers, called in-process so that
//! each step is routed to its queue's leader: a request is a produce (with
//! `raftmq-reply-to` and `raftmq-correlation-id` headers) followed by
//! consumes of the reply queue for that correlation id until the caller's
//! deadline, and an ack of the reply; a reply is a produce with the
//! correlation id. The correlation id doubles as the dedup id of both, so a
//! retried request or a repeated reply is stored once.

use std::time::Duration;

use raftmq_proto::v1::message_service_server::MessageService;
use raftmq_proto::v1::{
    AckRequest, ConsumeRequest, ProduceMessage, ProduceRequest, ReplyRequest, ReplyResponse, RequestRequest,
    RequestResponse,
};
use raftmq_types::{MAX_CORRELATION_ID_BYTES, QueueName};
use tokio::time::Instant;
use tonic::Status;

use crate::error::ApiError;
use crate::grpc::message_service::{MAX_WAIT_MS, MessageServiceImpl};
use crate::routing::{CallContext, request_until};

pub const REPLY_TO_HEADER: &str = "raftmq-reply-to";
pub const CORRELATION_ID_HEADER: &str = "raftmq-correlation-id";
/// Kept back from the caller's deadline for the ack and the answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

fn check_correlation_id(field: &str, id: &str) -> Result<(), Status> {
    if id.len() > MAX_CORRELATION_ID_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "{field}: {} bytes; at most {MAX_CORRELATION_ID_BYTES}",
            id.len()
        ))
        .into());
    }
    Ok(())
}

fn check_queue(field: &str, name: &str) -> Result<(), Status> {
    QueueName::new(name).map_err(|e| ApiError::InvalidArgument(format!("{field}: {e}")))?;
    Ok(())
}

pub async fn request(
    messages: &MessageServiceImpl,
    ctx: CallContext,
    request: RequestRequest,
) -> Result<RequestResponse, Status> {
    check_queue("queue", &request.queue)?;
    check_queue("reply_queue", &request.reply_queue)?;
    check_correlation_id("correlation_id", &request.correlation_id)?;
    let Some(mut message) = request.message else {
        return Err(ApiError::InvalidArgument("message: missing; send the request's body".into()).into());
    };
    let correlation_id = match request.correlation_id.as_str() {
        "" => format!("{:032x}", rand::random::<u128>()),
        id => id.to_string(),
    };
    let until = ctx.deadline.checked_sub(ANSWER_MARGIN).unwrap_or(ctx.deadline);
    // The reply queue must exist, or the caller would wait for nothing.
    let probe = ConsumeRequest {
        queue: request.reply_queue.clone(),
        max_messages: 1,
        correlation_id: correlation_id.clone(),
        ..Default::default()
    };
    let early = messages.consume(request_until(probe, until)).await.map_err(|status| match status.code() {
        tonic::Code::NotFound => ApiError::QueueNotFound(request.reply_queue.clone()).into(),
        _ => status,
    })?;

    message.headers.insert(REPLY_TO_HEADER.into(), request.reply_queue.clone());
    message.headers.insert(CORRELATION_ID_HEADER.into(), correlation_id.clone());
    if message.dedup_id.is_empty() {
        message.dedup_id = format!("raftmq-request-{correlation_id}");
    }
    let produce = ProduceRequest { queue: request.queue.clone(), messages: vec![message] };
    let produced = messages.produce(request_until(produce, until)).await?.into_inner();
    let request_offset = produced.offsets.first().copied().unwrap_or_default();

    // A retried request may find its reply already there.
    let mut reply = early.into_inner().messages.pop();
    while reply.is_none() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Status::deadline_exceeded(format!(
                "no reply to request {correlation_id} (offset {request_offset} of {}) before the deadline; a later \
                 reply stays in {} for its TTL: Consume it with correlation_id {correlation_id}",
                request.queue, request.reply_queue
            )));
        }
        let wait_time_ms = (left.as_millis() as u64).min(MAX_WAIT_MS);
        let consume = ConsumeRequest {
            queue: request.reply_queue.clone(),
            max_messages: 1,
            wait_time_ms,
            correlation_id: correlation_id.clone(),
            ..Default::default()
        };
        match messages.consume(request_until(consume, until)).await {
            Ok(response) => reply = response.into_inner().messages.pop(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => return Err(status),
        }
    }
    let reply = reply.expect("the loop ends with a reply");
    let ack = AckRequest { queue: request.reply_queue, receipts: vec![reply.receipt.clone()] };
    messages.ack(request_until(ack, ctx.deadline)).await?;
    Ok(RequestResponse { reply: Some(reply), correlation_id, request_offset })
}

pub async fn reply(
    messages: &MessageServiceImpl,
    ctx: CallContext,
    request: ReplyRequest,
) -> Result<ReplyResponse, Status> {
    check_queue("reply_to", &request.reply_to)?;
    if request.correlation_id.is_empty() {
        return Err(ApiError::InvalidArgument(
            "correlation_id: empty; pass the request's raftmq-correlation-id header".into(),
        )
        .into());
    }
    check_correlation_id("correlation_id", &request.correlation_id)?;
    let Some(message) = request.message else {
        return Err(ApiError::InvalidArgument("message: missing; send the reply's body".into()).into());
    };
    let message = ProduceMessage {
        correlation_id: request.correlation_id.clone(),
        dedup_id: format!("raftmq-reply-{}", request.correlation_id),
        ..message
    };
    let produce = ProduceRequest { queue: request.reply_to, messages: vec![message] };
    let produced = messages.produce(request_until(produce, ctx.deadline)).await?.into_inner();
    Ok(ReplyResponse {
        offset: produced.offsets.first().copied().unwrap_or_default(),
        duplicate: produced.duplicates.first().copied().unwrap_or_default(),
    })
}
