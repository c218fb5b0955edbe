//! [`Client`]: the generated `raftmq.v1` clients for one node, with a timeout
//! on every call so that a dead or stuck node fails the test instead of
//! hanging it.
//!
//! The generated clients are public fields for calls the helpers do not cover
//! (the bad-input test builds its own requests); use [`request_with_timeout`]
//! for those.

use std::time::Duration;

use raftmq_proto::v1::cluster_service_client::ClusterServiceClient;
use raftmq_proto::v1::message_service_client::MessageServiceClient;
use raftmq_proto::v1::queue_service_client::QueueServiceClient;
use raftmq_proto::v1::{
    AckRequest, ConsumeRequest, ConsumeResponse, CreateQueueRequest, DeleteQueueRequest, GetClusterStatusRequest,
    GetClusterStatusResponse, GetQueueRequest, Message, ProduceMessage, ProduceRequest, QueueConfig, QueueInfo,
    SettleResponse,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Timeout of one call (a consume adds its long-poll wait to it). The server
/// itself retries for up to its own 10 s default while a leader is elected.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Consume answers carry up to 1000 bodies; the default 4 MiB is too small.
const MAX_DECODING_BYTES: usize = 256 * 1024 * 1024;

/// Errors after which the outcome is unknown and a retry is reasonable: no
/// leader yet, a node going away under the call, a timeout.
pub fn is_retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded)
}

/// `message` with a gRPC deadline; the server sees it as `grpc-timeout`.
pub fn request_with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A message body as text; the tests only produce UTF-8 bodies.
pub fn body_text(message: &Message) -> String {
    String::from_utf8(message.body.to_vec())
        .unwrap_or_else(|_| panic!("offset {} has a body that is not UTF-8: {:?}", message.offset, message.body))
}

/// Runs a call with a client-side timeout on top of the gRPC deadline, so a
/// call can never outlive `timeout` by much even if the deadline is ignored.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout + Duration::from_secs(2), call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {timeout:?} (client-side timeout)"))),
    }
}

/// The clients of one node. Cheap to clone; connects lazily, so it can be
/// made for a node that is down and reconnects after the node restarts.
#[derive(Clone)]
pub struct Client {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub queues: QueueServiceClient<Channel>,
    pub messages: MessageServiceClient<Channel>,
    pub cluster: ClusterServiceClient<Channel>,
    /// For the standard services (health, reflection).
    pub channel: Channel,
}

impl Client {
    pub fn connect_lazy(endpoint: &str) -> Client {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .unwrap_or_else(|e| panic!("endpoint {endpoint:?} is not a URI: {e}"))
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        Client {
            endpoint: endpoint.to_string(),
            queues: QueueServiceClient::new(channel.clone()),
            messages: MessageServiceClient::new(channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES),
            cluster: ClusterServiceClient::new(channel.clone()),
            channel,
        }
    }

    pub async fn create_queue(&self, name: &str, config: QueueConfig) -> Result<QueueInfo, Status> {
        let request = CreateQueueRequest { name: name.to_string(), config: Some(config) };
        let response = bounded(CALL_TIMEOUT, self.queues.clone().create_queue(timed(request))).await?;
        response.queue.ok_or_else(|| Status::internal("CreateQueueResponse without a queue"))
    }

    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo, Status> {
        let request = GetQueueRequest { name: name.to_string() };
        let response = bounded(CALL_TIMEOUT, self.queues.clone().get_queue(timed(request))).await?;
        response.queue.ok_or_else(|| Status::internal("GetQueueResponse without a queue"))
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), Status> {
        let request = DeleteQueueRequest { name: name.to_string() };
        bounded(CALL_TIMEOUT, self.queues.clone().delete_queue(timed(request))).await?;
        Ok(())
    }

    /// Produces one message per body, without headers; returns their offsets.
    pub async fn produce<B: Into<Vec<u8>>>(
        &self,
        queue: &str,
        bodies: impl IntoIterator<Item = B>,
    ) -> Result<Vec<u64>, Status> {
        let messages = bodies
            .into_iter()
            .map(|body| {
                let body: Vec<u8> = body.into();
                ProduceMessage { body: body.into(), ..Default::default() }
            })
            .collect();
        self.produce_messages(queue, messages).await
    }

    pub async fn produce_messages(&self, queue: &str, messages: Vec<ProduceMessage>) -> Result<Vec<u64>, Status> {
        let request = ProduceRequest { queue: queue.to_string(), messages };
        Ok(bounded(CALL_TIMEOUT, self.messages.clone().produce(timed(request))).await?.offsets)
    }

    /// Leases up to `max_messages`, waiting up to `wait_time_ms` for some.
    /// `visibility_timeout_ms` 0 takes the queue's default.
    pub async fn consume(
        &self,
        queue: &str,
        max_messages: u32,
        wait_time_ms: u64,
        visibility_timeout_ms: u64,
    ) -> Result<Vec<Message>, Status> {
        let request = ConsumeRequest {
            queue: queue.to_string(),
            max_messages,
            wait_time_ms,
            visibility_timeout_ms,
            ..Default::default()
        };
        Ok(self.consume_with(request).await?.messages)
    }

    /// Consume with every field of the request (an ack, a subscription, ...),
    /// answered whole.
    pub async fn consume_with(&self, request: ConsumeRequest) -> Result<ConsumeResponse, Status> {
        let timeout = CALL_TIMEOUT + Duration::from_millis(request.wait_time_ms);
        let mut client = self.messages.clone();
        bounded(timeout, client.consume(request_with_timeout(request, timeout))).await
    }

    /// Consumes `count` messages, which must come in offset order from 0,
    /// up to 500 per call (retrying for a minute while the queue has no
    /// leader), hands each to `check`, acks each batch, and then asserts the
    /// queue is empty. Panics on anything else.
    pub async fn drain_in_order(&self, queue: &str, count: u64, mut check: impl FnMut(&Message)) {
        let mut next = 0;
        while next < count {
            let messages = crate::retry_unavailable(Duration::from_secs(60), async || {
                self.consume(queue, 500, 1_000, 60_000).await
            })
            .await
            .expect("consume");
            assert!(!messages.is_empty(), "the backlog ran dry at {next}");
            for message in &messages {
                assert_eq!(message.offset, next, "out of order");
                check(message);
                next += 1;
            }
            let receipts = messages.iter().map(|m| m.receipt.clone()).collect();
            let settled = self.ack(queue, receipts).await.expect("ack");
            assert!(settled.failed.is_empty(), "acks failed: {:?}", settled.failed);
        }
        let stats = self.get_queue(queue).await.expect("get queue").stats.expect("stats");
        assert_eq!((stats.depth, stats.available), (0, 0), "the queue is empty");
    }

    pub async fn ack(&self, queue: &str, receipts: Vec<String>) -> Result<SettleResponse, Status> {
        let request = AckRequest { queue: queue.to_string(), receipts };
        bounded(CALL_TIMEOUT, self.messages.clone().ack(timed(request))).await
    }

    pub async fn cluster_status(&self) -> Result<GetClusterStatusResponse, Status> {
        bounded(CALL_TIMEOUT, self.cluster.clone().get_cluster_status(timed(GetClusterStatusRequest {}))).await
    }
}

fn timed<T>(message: T) -> Request<T> {
    request_with_timeout(message, CALL_TIMEOUT)
}
