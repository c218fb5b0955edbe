//! A Rust client for raftmq: any node of the cluster will do, calls that meet
//! UNAVAILABLE (no leader yet, node down) are retried on the next endpoint
//! with backoff until the call's deadline.
//!
//! A retried `produce` may append its batch twice when the first attempt
//! committed but its answer was lost; producer dedup ids will close that gap.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use raftmq_proto::v1 as pb;
use raftmq_proto::v1::cluster_service_client::ClusterServiceClient;
use raftmq_proto::v1::message_service_client::MessageServiceClient;
use raftmq_proto::v1::queue_service_client::QueueServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use raftmq_proto::v1;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {message}")]
    InvalidEndpoint { endpoint: String, message: String },
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Status),
}

impl ClientError {
    /// The gRPC code, for errors that came from the server or the transport.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}").to_uppercase()
}

/// Turns "host:port" or a URL into an endpoint URL.
pub fn endpoint_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Whether a failed call may be retried safely on another node.
pub fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<Channel>>,
    /// The endpoints as given, normalised by `endpoint_url`, in channel order.
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    /// How long a call, retries included, may take.
    deadline: Duration,
}

const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

impl Client {
    /// Channels connect lazily: this does not fail if a node is down. Must be
    /// called inside a tokio runtime.
    pub fn connect(endpoints: &[String]) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let channels = endpoints
            .iter()
            .map(|e| {
                Endpoint::from_shared(endpoint_url(e))
                    .map(|endpoint| {
                        endpoint
                            .connect_timeout(Duration::from_secs(1))
                            .tcp_nodelay(true)
                            .initial_stream_window_size(raftmq_proto::HTTP2_STREAM_WINDOW)
                            .initial_connection_window_size(raftmq_proto::HTTP2_CONNECTION_WINDOW)
                            .max_frame_size(raftmq_proto::HTTP2_MAX_FRAME_SIZE)
                            .http2_keep_alive_interval(Duration::from_secs(10))
                            .connect_lazy()
                    })
                    .map_err(|err| ClientError::InvalidEndpoint { endpoint: e.clone(), message: err.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            channels: Arc::new(channels),
            urls: Arc::new(endpoints.iter().map(|e| endpoint_url(e)).collect()),
            next: Arc::new(AtomicUsize::new(0)),
            deadline: Duration::from_secs(15),
        })
    }

    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self
    }

    fn channel(&self) -> Channel {
        let i = self.next.load(Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    fn rotate(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends later calls to the node that leads `queue`, if it is one of the
    /// endpoints: any node serves any call, but a call to the leader skips
    /// the forwarding hop. Returns whether it found the leader among them.
    /// Errors and failovers still move calls on to the next endpoint.
    pub async fn prefer_leader_of(&self, queue: &str) -> Result<bool, ClientError> {
        let leader = self.get_queue(queue).await?.stats.map(|s| s.leader_id).unwrap_or(0);
        if leader == 0 {
            return Ok(false);
        }
        let status = self.cluster_status().await?;
        let Some(node) = status.nodes.iter().find(|n| n.id == leader) else { return Ok(false) };
        match self.urls.iter().position(|url| *url == endpoint_url(&node.addr)) {
            Some(index) => {
                self.next.store(index, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Runs `call` until it succeeds, fails with a non-retryable status, or the deadline passes.
    async fn retry<T, F, Fut>(&self, extra: Duration, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.deadline + extra;
        let mut backoff = Duration::from_millis(50);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match call(self.channel(), remaining.max(Duration::from_millis(1))).await {
                Ok(value) => return Ok(value),
                Err(status) if is_retryable(&status) && Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %status.message(), "retrying on another node");
                    self.rotate();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(status) => return Err(ClientError::Status(status)),
            }
        }
    }

    fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    /// Changes the settings set in `update`; returns the queue with its new config.
    pub async fn update_queue(&self, name: &str, update: pb::QueueConfigUpdate) -> Result<pb::QueueInfo, ClientError> {
        let message = pb::UpdateQueueRequest { name: name.to_string(), update: Some(update) };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                let response = QueueServiceClient::new(channel).update_queue(Self::request(message, timeout)).await?;
                response.into_inner().queue.ok_or_else(|| Status::internal("server returned no queue"))
            }
        })
        .await
    }

    /// Moves up to `max` (0: all available) messages of the dead-letter
    /// queue `name` back to the queues they died in.
    pub async fn redrive(&self, name: &str, max: u64) -> Result<pb::RedriveResponse, ClientError> {
        let message = pb::RedriveRequest { queue: name.to_string(), max_messages: max };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move { Ok(QueueServiceClient::new(channel).redrive(Self::request(message, timeout)).await?.into_inner()) }
        })
        .await
    }

    /// Adds subscription `name` to `queue`, starting at the earliest stored
    /// message or at the next one produced.
    pub async fn create_subscription(
        &self,
        queue: &str,
        name: &str,
        earliest: bool,
    ) -> Result<pb::Subscription, ClientError> {
        let start = if earliest { pb::SubscriptionStart::Earliest } else { pb::SubscriptionStart::Latest };
        let message =
            pb::CreateSubscriptionRequest { queue: queue.to_string(), name: name.to_string(), start: start as i32 };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                let response =
                    QueueServiceClient::new(channel).create_subscription(Self::request(message, timeout)).await?;
                response.into_inner().subscription.ok_or_else(|| Status::internal("server returned no subscription"))
            }
        })
        .await
    }

    pub async fn list_subscriptions(&self, queue: &str) -> Result<Vec<pb::Subscription>, ClientError> {
        let message = pb::ListSubscriptionsRequest { queue: queue.to_string() };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                let response =
                    QueueServiceClient::new(channel).list_subscriptions(Self::request(message, timeout)).await?;
                Ok(response.into_inner().subscriptions)
            }
        })
        .await
    }

    pub async fn delete_subscription(&self, queue: &str, name: &str) -> Result<(), ClientError> {
        let message = pb::DeleteSubscriptionRequest { queue: queue.to_string(), name: name.to_string() };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                QueueServiceClient::new(channel).delete_subscription(Self::request(message, timeout)).await?;
                Ok(())
            }
        })
        .await
    }

    /// Moves `subscription` ("" is `default`) to an offset or a time; returns
    /// how many messages it then holds.
    pub async fn seek(
        &self,
        queue: &str,
        subscription: &str,
        target: pb::seek_request::Target,
    ) -> Result<u64, ClientError> {
        let message =
            pb::SeekRequest { queue: queue.to_string(), subscription: subscription.to_string(), target: Some(target) };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                Ok(QueueServiceClient::new(channel).seek(Self::request(message, timeout)).await?.into_inner().pending)
            }
        })
        .await
    }

    pub async fn create_queue(
        &self,
        name: &str,
        config: Option<pb::QueueConfig>,
    ) -> Result<pb::QueueInfo, ClientError> {
        let message = pb::CreateQueueRequest { name: name.to_string(), config };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                let response = QueueServiceClient::new(channel).create_queue(Self::request(message, timeout)).await?;
                response.into_inner().queue.ok_or_else(|| Status::internal("server returned no queue"))
            }
        })
        .await
    }

    pub async fn get_queue(&self, name: &str) -> Result<pb::QueueInfo, ClientError> {
        let message = pb::GetQueueRequest { name: name.to_string() };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                let response = QueueServiceClient::new(channel).get_queue(Self::request(message, timeout)).await?;
                response.into_inner().queue.ok_or_else(|| Status::internal("server returned no queue"))
            }
        })
        .await
    }

    pub async fn list_queues(&self) -> Result<Vec<pb::QueueInfo>, ClientError> {
        self.retry(Duration::ZERO, |channel, timeout| async move {
            let response =
                QueueServiceClient::new(channel).list_queues(Self::request(pb::ListQueuesRequest {}, timeout)).await?;
            Ok(response.into_inner().queues)
        })
        .await
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), ClientError> {
        let message = pb::DeleteQueueRequest { name: name.to_string() };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                QueueServiceClient::new(channel).delete_queue(Self::request(message, timeout)).await?;
                Ok(())
            }
        })
        .await
    }

    pub async fn purge_queue(&self, name: &str) -> Result<u64, ClientError> {
        let message = pb::PurgeQueueRequest { name: name.to_string() };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                let response = QueueServiceClient::new(channel).purge_queue(Self::request(message, timeout)).await?;
                Ok(response.into_inner().removed)
            }
        })
        .await
    }

    /// Produces a batch; returns the offsets in order.
    pub async fn produce(&self, queue: &str, messages: Vec<pb::ProduceMessage>) -> Result<Vec<u64>, ClientError> {
        let message = pb::ProduceRequest { queue: queue.to_string(), messages };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                let mut client = MessageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                Ok(client.produce(Self::request(message, timeout)).await?.into_inner().offsets)
            }
        })
        .await
    }

    /// Leases up to `max` messages of the `default` subscription, waiting up
    /// to `wait` for some to arrive.
    pub async fn consume(
        &self,
        queue: &str,
        max: u32,
        wait: Duration,
        visibility_timeout: Option<Duration>,
    ) -> Result<Vec<pb::Message>, ClientError> {
        self.consume_with(pb::ConsumeRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_time_ms: wait.as_millis() as u64,
            visibility_timeout_ms: visibility_timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
            ..Default::default()
        })
        .await
    }

    /// Acks `ack` (receipts of messages received earlier) and leases up to
    /// `max` messages of the `default` subscription in one call and one Raft
    /// entry, waiting up to `wait` for messages; `acked` in the answer says
    /// which receipts took effect. A retried call acks again: receipts that
    /// took effect the first time then fail as gone.
    pub async fn consume_and_ack(
        &self,
        queue: &str,
        max: u32,
        wait: Duration,
        ack: Vec<String>,
    ) -> Result<pb::ConsumeResponse, ClientError> {
        self.consume_answer(pb::ConsumeRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_time_ms: wait.as_millis() as u64,
            ack,
            ..Default::default()
        })
        .await
    }

    /// Consume with every field of the request (a subscription, a byte limit, …).
    pub async fn consume_with(&self, message: pb::ConsumeRequest) -> Result<Vec<pb::Message>, ClientError> {
        Ok(self.consume_answer(message).await?.messages)
    }

    /// A Consume call, retried, answered whole.
    async fn consume_answer(&self, message: pb::ConsumeRequest) -> Result<pb::ConsumeResponse, ClientError> {
        let wait = Duration::from_millis(message.wait_time_ms);
        self.retry(wait, |channel, timeout| {
            let message = message.clone();
            async move {
                let mut client = MessageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                Ok(client.consume(Self::request(message, timeout)).await?.into_inner())
            }
        })
        .await
    }

    /// Up to `max` stored messages from `from` (to `to`, exclusive, if given),
    /// without leasing them, with the delivery state of `subscription` ("" is
    /// `default`).
    pub async fn peek(
        &self,
        queue: &str,
        subscription: &str,
        from: u64,
        to: Option<u64>,
        max: u32,
    ) -> Result<pb::PeekResponse, ClientError> {
        let message = pb::PeekRequest {
            queue: queue.to_string(),
            from_offset: from,
            max_messages: max,
            to_offset: to.unwrap_or(0),
            subscription: subscription.to_string(),
        };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move { Ok(MessageServiceClient::new(channel).peek(Self::request(message, timeout)).await?.into_inner()) }
        })
        .await
    }

    pub async fn ack(&self, queue: &str, receipts: Vec<String>) -> Result<pb::SettleResponse, ClientError> {
        let message = pb::AckRequest { queue: queue.to_string(), receipts };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move { Ok(MessageServiceClient::new(channel).ack(Self::request(message, timeout)).await?.into_inner()) }
        })
        .await
    }

    /// Gives messages back: redelivered after `delay`, or after the queue's
    /// retry backoff when `None`.
    pub async fn nack(
        &self,
        queue: &str,
        receipts: Vec<String>,
        delay: Option<Duration>,
    ) -> Result<pb::SettleResponse, ClientError> {
        let delay_ms = delay.map(|d| d.as_millis() as u64);
        let message = pb::NackRequest { queue: queue.to_string(), receipts, delay_ms };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move { Ok(MessageServiceClient::new(channel).nack(Self::request(message, timeout)).await?.into_inner()) }
        })
        .await
    }

    pub async fn extend_lease(
        &self,
        queue: &str,
        receipts: Vec<String>,
        visibility_timeout: Duration,
    ) -> Result<pb::SettleResponse, ClientError> {
        let message = pb::ExtendLeaseRequest {
            queue: queue.to_string(),
            receipts,
            visibility_timeout_ms: visibility_timeout.as_millis() as u64,
        };
        self.retry(Duration::ZERO, |channel, timeout| {
            let message = message.clone();
            async move {
                Ok(MessageServiceClient::new(channel).extend_lease(Self::request(message, timeout)).await?.into_inner())
            }
        })
        .await
    }

    pub async fn cluster_status(&self) -> Result<pb::GetClusterStatusResponse, ClientError> {
        self.retry(Duration::ZERO, |channel, timeout| async move {
            let request = Self::request(pb::GetClusterStatusRequest {}, timeout);
            Ok(ClusterServiceClient::new(channel).get_cluster_status(request).await?.into_inner())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_accept_host_port_and_urls() {
        assert_eq!(endpoint_url("127.0.0.1:7001"), "http://127.0.0.1:7001");
        assert_eq!(endpoint_url(" http://a:1 "), "http://a:1");
        assert!(Client::connect(&[]).is_err());
        assert!(Client::connect(&["127.0.0.1:7001".into()]).is_ok());
    }

    #[test]
    fn only_unavailable_is_retried() {
        assert!(is_retryable(&Status::unavailable("no leader")));
        for code in [Code::InvalidArgument, Code::NotFound, Code::DeadlineExceeded, Code::Unknown, Code::Internal] {
            assert!(!is_retryable(&Status::new(code, "x")), "{code:?}");
        }
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_when_no_node_answers() {
        // Nothing listens on port 1: connection refused is UNAVAILABLE.
        let client = Client::connect(&["127.0.0.1:1".into()]).unwrap().with_deadline(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let error = client.list_queues().await.unwrap_err();
        assert_eq!(error.code(), Some(Code::Unavailable));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
