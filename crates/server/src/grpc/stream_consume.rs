//! `MessageService/StreamConsume`: consume over one bidirectional stream with
//! client-granted credit.
//!
//! The node the client connected to serves the stream. It leases, acks, nacks
//! and extends through the unary handlers in-process, so every step is routed
//! to the queue's leader (and retried across leader changes) exactly as a
//! client's own calls would be. Two tasks share the stream's [`Window`]: the
//! pusher leases while the credit has room and sends what it got; the reader
//! applies credit changes and settles. The stream itself holds no queue
//! state: what is leased and acked is replicated like any other lease and ack.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::v1::message_service_server::MessageService;
use raftmq_proto::v1::stream_consume_request::Request as StreamRequest;
use raftmq_proto::v1::stream_consume_response::Response as StreamResponse;
use raftmq_proto::v1::stream_settle::Action;
use raftmq_proto::v1::{
    AckRequest, ConsumeRequest, ExtendLeaseRequest, NackRequest, SettleResponse, StreamConsumeRequest,
    StreamConsumeResponse, StreamCredit, StreamMessages, StreamSettle, StreamSettled,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, Streaming};

use crate::clock;
use crate::error::ApiError;
use crate::grpc::message_service::MessageServiceImpl;
use crate::routing::request_until;

pub const MAX_CREDIT_MESSAGES: u32 = 10_000;
/// Each lease call waits this long for messages before the pusher looks at
/// its window again.
const LONG_POLL_MS: u64 = 2_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub type ResponseStream = ReceiverStream<Result<StreamConsumeResponse, Status>>;

/// Messages delivered on the stream and not yet settled, against the credit.
struct Window {
    credit: StreamCredit,
    /// Receipt → (bytes, lease deadline).
    outstanding: HashMap<String, (u64, Instant)>,
}

impl Window {
    /// Forgets messages whose lease ran out: they are not this stream's any more.
    fn prune(&mut self) {
        let now = Instant::now();
        self.outstanding.retain(|_, (_, deadline)| *deadline > now);
    }

    /// How many messages and bytes (0: no byte limit) may be leased now;
    /// `None` when the credit is used up.
    fn room(&mut self) -> Option<(u32, u64)> {
        self.prune();
        let count = self.outstanding.len() as u32;
        if count >= self.credit.max_messages {
            return None;
        }
        let messages = (self.credit.max_messages - count).min(crate::grpc::message_service::MAX_BATCH as u32);
        if self.credit.max_bytes == 0 {
            return Some((messages, 0));
        }
        let bytes: u64 = self.outstanding.values().map(|(size, _)| size).sum();
        match self.credit.max_bytes.checked_sub(bytes) {
            Some(room) if room > 0 => Some((messages, room)),
            // Nothing outstanding: one message goes through whatever its size.
            _ if count == 0 => Some((1, 0)),
            _ => None,
        }
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.outstanding.values().map(|(_, deadline)| *deadline).min()
    }
}

fn invalid(message: String) -> Status {
    ApiError::InvalidArgument(message).into()
}

fn check_credit(credit: &StreamCredit) -> Result<(), Status> {
    if credit.max_messages > MAX_CREDIT_MESSAGES {
        return Err(invalid(format!(
            "credit.max_messages: got {}, use 0 to {MAX_CREDIT_MESSAGES}",
            credit.max_messages
        )));
    }
    Ok(())
}

fn request<T>(message: T, timeout: Duration) -> Request<T> {
    request_until(message, Instant::now() + timeout)
}

/// Reads the opening message, then serves the stream from two tasks.
pub async fn serve(
    messages: Arc<MessageServiceImpl>,
    mut incoming: Streaming<StreamConsumeRequest>,
) -> Result<ResponseStream, Status> {
    let open = match incoming.message().await? {
        Some(StreamConsumeRequest { request: Some(StreamRequest::Open(open)) }) => open,
        Some(_) => return Err(invalid("the first message of the stream must be `open`".into())),
        None => return Err(invalid("the stream ended before `open`".into())),
    };
    raftmq_types::QueueName::new(&open.queue).map_err(ApiError::from)?;
    crate::grpc::message_service::subscription_name(&open.subscription)?;
    let credit = open.credit.unwrap_or_default();
    check_credit(&credit)?;
    let (tx, rx) = mpsc::channel(16);
    let window = Arc::new(Mutex::new(Window { credit, outstanding: HashMap::new() }));
    let changed = Arc::new(Notify::new());
    let pusher = tokio::spawn(push(
        messages.clone(),
        open.queue.clone(),
        open.subscription.clone(),
        open.visibility_timeout_ms,
        window.clone(),
        changed.clone(),
        tx.clone(),
    ));
    tokio::spawn(async move {
        let result = read(&messages, &open.queue, &mut incoming, &window, &changed, &tx).await;
        pusher.abort();
        if let Err(status) = result {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Leases while the window has room and sends what arrives.
async fn push(
    messages: Arc<MessageServiceImpl>,
    queue: String,
    subscription: String,
    visibility_timeout_ms: u64,
    window: Arc<Mutex<Window>>,
    changed: Arc<Notify>,
    tx: mpsc::Sender<Result<StreamConsumeResponse, Status>>,
) {
    loop {
        let (room, wake_at) = {
            let mut window = window.lock().expect("stream window lock poisoned");
            (window.room(), window.earliest_deadline())
        };
        let Some((max_messages, max_bytes)) = room else {
            // Wait for credit: a settle, a credit change, or a lease running out.
            let wake_at = wake_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = tx.closed() => return,
            }
            continue;
        };
        let consume = ConsumeRequest {
            queue: queue.clone(),
            subscription: subscription.clone(),
            max_messages,
            wait_time_ms: LONG_POLL_MS,
            visibility_timeout_ms,
            max_bytes,
            ..Default::default()
        };
        let timeout = CALL_TIMEOUT + Duration::from_millis(LONG_POLL_MS);
        let leased = tokio::select! {
            result = messages.consume(request(consume, timeout)) => result,
            _ = tx.closed() => return,
        };
        let leased = match leased {
            Ok(response) => response.into_inner().messages,
            Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        if leased.is_empty() {
            continue;
        }
        {
            let mut window = window.lock().expect("stream window lock poisoned");
            let now_ms = clock::now().0;
            for m in &leased {
                let size = m.body.len() + m.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                let deadline = Instant::now() + Duration::from_millis(m.lease_deadline_ms.saturating_sub(now_ms));
                window.outstanding.insert(m.receipt.clone(), (size as u64, deadline));
            }
        }
        let response =
            StreamConsumeResponse { response: Some(StreamResponse::Messages(StreamMessages { messages: leased })) };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

/// Applies the client's credit changes and settles, until the client closes
/// its side or sends something malformed.
async fn read(
    messages: &MessageServiceImpl,
    queue: &str,
    incoming: &mut Streaming<StreamConsumeRequest>,
    window: &Mutex<Window>,
    changed: &Notify,
    tx: &mpsc::Sender<Result<StreamConsumeResponse, Status>>,
) -> Result<(), Status> {
    while let Some(message) = incoming.message().await? {
        match message.request {
            Some(StreamRequest::Credit(credit)) => {
                check_credit(&credit)?;
                window.lock().expect("stream window lock poisoned").credit = credit;
                changed.notify_one();
            }
            Some(StreamRequest::Settle(settle)) => {
                let id = settle.id;
                let result = settle_one(messages, queue, settle, window).await?;
                changed.notify_one();
                let response = StreamConsumeResponse {
                    response: Some(StreamResponse::Settled(StreamSettled { id, result: Some(result) })),
                };
                if tx.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
            }
            Some(StreamRequest::Open(_)) => return Err(invalid("`open` may only be the first message".into())),
            None => return Err(invalid("empty stream message: set credit or settle".into())),
        }
    }
    Ok(())
}

async fn settle_one(
    messages: &MessageServiceImpl,
    queue: &str,
    settle: StreamSettle,
    window: &Mutex<Window>,
) -> Result<SettleResponse, Status> {
    let queue = queue.to_string();
    let receipts = settle.receipts.clone();
    let result = match settle.action() {
        Action::Ack => messages.ack(request(AckRequest { queue, receipts }, CALL_TIMEOUT)).await?,
        Action::Nack => {
            let nack = NackRequest { queue, receipts, delay_ms: settle.delay_ms };
            messages.nack(request(nack, CALL_TIMEOUT)).await?
        }
        Action::Extend => {
            let extend = ExtendLeaseRequest { queue, receipts, visibility_timeout_ms: settle.visibility_timeout_ms };
            messages.extend_lease(request(extend, CALL_TIMEOUT)).await?
        }
        Action::Unspecified => {
            return Err(invalid(format!("settle {}: set action to ACK, NACK or EXTEND", settle.id)));
        }
    }
    .into_inner();
    let mut window = window.lock().expect("stream window lock poisoned");
    let failed: std::collections::HashSet<&str> = result.failed.iter().map(|f| f.receipt.as_str()).collect();
    for receipt in &settle.receipts {
        if settle.action() == Action::Extend && !failed.contains(receipt.as_str()) {
            let deadline = Instant::now() + Duration::from_millis(settle.visibility_timeout_ms);
            if let Some(entry) = window.outstanding.get_mut(receipt) {
                entry.1 = deadline;
            }
        } else {
            // Acked, nacked, or no longer leased: not outstanding any more.
            window.outstanding.remove(receipt);
        }
    }
    Ok(result)
}
