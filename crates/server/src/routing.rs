//! Leader routing: every call may arrive at any node; this module finds the
//! node that must serve it and either serves it here or forwards it there.
//!
//! A forwarded call is the same public gRPC call, sent to the leader over the
//! node's peer channel with an `x-raftmq-hops` header. A node that receives a
//! call with too many hops does not forward again but answers UNAVAILABLE, and
//! the first node retries until the call's deadline. So forwarding never loops,
//! and while leadership is unknown or moving the caller just sees latency.

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use raftmq_raft::{GroupManager, QueueGroup};
use raftmq_storage::stages::{self, Stage};
use raftmq_storage::{CatalogQueue, TypeConfig};
use raftmq_types::{
    MetaCommand, MetaResponse, NodeId, QueueCommand, QueueName, QueueRequest, QueueResponse, RaftRequest, RaftResponse,
};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::error::ApiError;

pub const HOPS_HEADER: &str = "x-raftmq-hops";
/// A call is forwarded at most once onward from the node it reached; with the
/// leader hint of the receiving node that is enough in steady state.
const MAX_HOPS: u32 = 2;
/// Used when the caller sets no deadline.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// A call that paused this long in all for a queue's leader is logged.
const SLOW_ROUTING: Duration = Duration::from_millis(500);

/// The pauses one call made while the queue's leader was unknown, moving or
/// unreachable. Logged when the call ends, on whatever path, if they added
/// up to [`SLOW_ROUTING`]: a client sees such a wait only as a slow call.
struct RoutingPauses<'a> {
    queue: &'a QueueName,
    started: Instant,
    pauses: u32,
    last_reason: &'static str,
}

impl<'a> RoutingPauses<'a> {
    fn new(queue: &'a QueueName) -> Self {
        RoutingPauses { queue, started: Instant::now(), pauses: 0, last_reason: "" }
    }

    async fn pause(&mut self, reason: &'static str) {
        self.pauses += 1;
        self.last_reason = reason;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

impl Drop for RoutingPauses<'_> {
    fn drop(&mut self) {
        if RETRY_PAUSE * self.pauses >= SLOW_ROUTING {
            warn!(
                queue = %self.queue,
                pauses = self.pauses,
                call_ms = self.started.elapsed().as_millis() as u64,
                last_reason = self.last_reason,
                "a call waited for the queue's leader"
            );
        }
    }
}

/// Per-call routing context, taken from the incoming request's metadata.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    pub hops: u32,
    pub deadline: Instant,
}

impl CallContext {
    pub fn from_metadata(metadata: &MetadataMap) -> CallContext {
        let hops = metadata.get(HOPS_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(DEFAULT_DEADLINE);
        CallContext { hops, deadline: Instant::now() + timeout }
    }

    pub fn can_forward(&self) -> bool {
        self.hops < MAX_HOPS
    }

    /// A request for the next node, carrying the hop count and what is left of the deadline.
    pub fn forward<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = request_until(message, self.deadline);
        request
            .metadata_mut()
            .insert(HOPS_HEADER, (self.hops + 1).to_string().parse().expect("a number is valid metadata"));
        request
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// A request whose `grpc-timeout` ends at `deadline`: for a forwarded call,
/// and for the handlers the server calls in-process (the tender, redrive,
/// streams, request/reply), which then route like any client call.
pub fn request_until<T>(message: T, deadline: Instant) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    request
}

/// `grpc-timeout` is an integer and a unit: H, M, S, m, u, n.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Why a local attempt did not produce an answer.
pub enum LocalError {
    /// This node is not (or no longer) the leader; retry via the given one.
    NotLeader(Option<NodeId>),
    Api(ApiError),
}

impl From<ApiError> for LocalError {
    fn from(e: ApiError) -> Self {
        LocalError::Api(e)
    }
}

pub struct Router {
    groups: Arc<GroupManager>,
}

/// Where the call goes next.
enum Target {
    Local(QueueGroup),
    Remote(NodeId),
    Wait,
}

impl Router {
    pub fn new(groups: Arc<GroupManager>) -> Router {
        Router { groups }
    }

    pub fn groups(&self) -> &Arc<GroupManager> {
        &self.groups
    }

    pub fn node_id(&self) -> NodeId {
        self.groups.node_id()
    }

    fn channel_to(&self, node_id: NodeId) -> Result<Channel, ApiError> {
        let addr = self
            .groups
            .member_addr(node_id)
            .ok_or_else(|| ApiError::Unavailable(format!("node {node_id} is not a known cluster member")))?;
        self.groups.peers().channel(&addr).map_err(|e| ApiError::Internal(e.to_string()))
    }

    pub fn meta_leader(&self) -> Option<NodeId> {
        self.groups.meta().metrics().borrow_watched().current_leader
    }

    /// Looks the queue up in the local catalog.
    pub fn catalog_entry(&self, queue: &QueueName) -> Option<CatalogQueue> {
        self.groups.catalog().queues.get(queue).cloned()
    }

    /// Runs `local` on the queue's leader: here if this node leads the queue,
    /// otherwise through `remote` on the node that does. Retries while
    /// leadership is unknown or moving, until the call's deadline.
    pub async fn on_queue_leader<T, L, LF, R, RF>(
        &self,
        ctx: CallContext,
        queue: &QueueName,
        local: L,
        remote: R,
    ) -> Result<T, tonic::Status>
    where
        L: Fn(QueueGroup, CatalogQueue) -> LF,
        LF: Future<Output = Result<T, LocalError>>,
        R: Fn(Channel, CallContext) -> RF,
        RF: Future<Output = Result<T, tonic::Status>>,
    {
        let mut hint: Option<NodeId> = None;
        let mut replica_cursor = 0usize;
        let mut pauses = RoutingPauses::new(queue);
        loop {
            let Some(entry) = self.catalog_entry(queue) else {
                // The local catalog may trail the meta leader by a moment right
                // after a create: the meta leader's catalog is authoritative.
                match self.meta_leader() {
                    Some(leader) if leader != self.node_id() && ctx.can_forward() => {
                        return remote(self.channel_to(leader)?, ctx).await;
                    }
                    _ => return Err(ApiError::QueueNotFound(queue.to_string()).into()),
                }
            };
            let target = match self.groups.queue_group(entry.group_id) {
                Some(group) => {
                    let leader = group.raft.metrics().borrow_watched().current_leader;
                    match leader.or(hint) {
                        Some(id) if id == self.node_id() => Target::Local(group),
                        Some(id) => Target::Remote(id),
                        None => Target::Wait,
                    }
                }
                None => match hint {
                    Some(id) => Target::Remote(id),
                    None if entry.replicas.is_empty() => Target::Wait,
                    None => {
                        replica_cursor += 1;
                        Target::Remote(entry.replicas[replica_cursor % entry.replicas.len()])
                    }
                },
            };
            match target {
                Target::Local(group) => match local(group, entry).await {
                    Ok(value) => return Ok(value),
                    Err(LocalError::Api(e)) => return Err(e.into()),
                    Err(LocalError::NotLeader(leader)) => {
                        hint = leader.filter(|id| *id != self.node_id());
                        if hint.is_none() {
                            pauses.pause("this node stopped leading, no new leader known").await;
                        }
                    }
                },
                Target::Remote(node) if ctx.can_forward() => match remote(self.channel_to(node)?, ctx).await {
                    Err(status) if is_retryable(&status) => {
                        debug!(%queue, node, error = %status.message(), "forwarded call failed; retrying");
                        hint = None;
                        pauses.pause("a forwarded call failed").await;
                    }
                    other => return other,
                },
                Target::Remote(_) => {
                    return Err(ApiError::Unavailable(format!(
                        "node {} does not lead queue {queue} and the call was already forwarded",
                        self.node_id()
                    ))
                    .into());
                }
                Target::Wait => pauses.pause("no leader known").await,
            }
            if ctx.expired() {
                return Err(ApiError::Unavailable(format!(
                    "queue {queue} has no leader reachable from node {} before the deadline",
                    self.node_id()
                ))
                .into());
            }
        }
    }

    /// Proposes a meta command on the meta leader, forwarding with `remote`
    /// when this node does not lead the meta group.
    pub async fn on_meta_leader<T, R, RF>(
        &self,
        ctx: CallContext,
        command: MetaCommand,
        local: impl Fn(MetaResponse) -> Result<T, ApiError>,
        remote: R,
    ) -> Result<T, tonic::Status>
    where
        R: Fn(Channel, CallContext) -> RF,
        RF: Future<Output = Result<T, tonic::Status>>,
    {
        loop {
            match self.meta_leader() {
                Some(leader) if leader == self.node_id() => {
                    match self.groups.meta().client_write(RaftRequest::Meta(command.clone())).await {
                        Ok(response) => match response.data {
                            RaftResponse::Meta(meta) => return local(meta).map_err(Into::into),
                            other => {
                                return Err(ApiError::Internal(format!("unexpected meta response {other:?}")).into());
                            }
                        },
                        Err(e) => match not_leader(&e) {
                            Some(_) => tokio::time::sleep(RETRY_PAUSE).await,
                            None => return Err(ApiError::Unavailable(format!("meta group: {e}")).into()),
                        },
                    }
                }
                Some(leader) if ctx.can_forward() => match remote(self.channel_to(leader)?, ctx).await {
                    Err(status) if is_retryable(&status) => tokio::time::sleep(RETRY_PAUSE).await,
                    other => return other,
                },
                _ => tokio::time::sleep(RETRY_PAUSE).await,
            }
            if ctx.expired() {
                return Err(ApiError::Unavailable(format!(
                    "the cluster's meta group has no leader reachable from node {}",
                    self.node_id()
                ))
                .into());
            }
        }
    }
}

/// Whether a forwarded call should be tried again, via whoever leads next.
/// UNAVAILABLE is the peer saying so; UNKNOWN and CANCELLED are what tonic
/// reports when the connection to the peer breaks mid-call, typically because
/// the leader died. Any other status tonic made up from a transport error
/// (it then carries the error as its source) is no answer from the peer
/// either: an HTTP/2 GOAWAY with ENHANCE_YOUR_CALM, for one, arrives as
/// RESOURCE_EXHAUSTED, which passed on to the client would read as "queue
/// full". (As with any retry of a produce whose answer was lost, the batch
/// may then be stored twice; producer dedup ids will close that.)
fn is_retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
        || std::error::Error::source(status).is_some()
}

/// `Some(leader hint)` when a write failed only because this node does not lead.
fn not_leader(error: &RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Option<Option<NodeId>> {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Some(f.leader_id),
        _ => None,
    }
}

/// Proposes a queue command on the local group, which must be its leader.
pub async fn propose(group: &QueueGroup, request: QueueRequest) -> Result<QueueResponse, LocalError> {
    let stage = match request.command {
        QueueCommand::Produce { .. } => Stage::ProduceCommit,
        _ => Stage::OtherCommit,
    };
    let started = Instant::now();
    let result = group.write(RaftRequest::Queue(request)).await;
    if result.is_ok() {
        stages::record(stage, started.elapsed());
    }
    match result {
        Ok(response) => match response.data {
            RaftResponse::Queue(queue_response) => Ok(queue_response),
            other => Err(ApiError::Internal(format!("unexpected queue response {other:?}")).into()),
        },
        Err(e) => match not_leader(&e) {
            Some(hint) => Err(LocalError::NotLeader(hint)),
            // LogEntryDiscarded: the outcome is unknown; the client decides.
            None => Err(ApiError::Unavailable(format!("queue {}: {e}", group.queue)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_forwards_are_retried_but_answers_are_not() {
        for code in [tonic::Code::Unavailable, tonic::Code::Unknown, tonic::Code::Cancelled] {
            assert!(is_retryable(&tonic::Status::new(code, "x")), "{code:?}");
        }
        for code in [tonic::Code::InvalidArgument, tonic::Code::NotFound, tonic::Code::DeadlineExceeded] {
            assert!(!is_retryable(&tonic::Status::new(code, "x")), "{code:?}");
        }
        // What tonic makes of a GOAWAY(ENHANCE_YOUR_CALM) on the connection to the peer.
        let mut transport = tonic::Status::resource_exhausted("h2 protocol error: http2 error");
        transport.set_source(std::sync::Arc::new(std::io::Error::other("connection error")));
        assert!(is_retryable(&transport));
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5Q"), None);
    }
}
