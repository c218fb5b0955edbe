//! The server side of the node-to-node transport: routes each Raft RPC to the
//! group named by its group id.
//!
//! Replication arrives on `AppendStream`, one long-lived stream per group and
//! leader: its requests are fed to openraft's `Raft::stream_append` as they
//! arrive, and its answers sent back as openraft produces them, in order.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::errors::Fatal;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use raftmq_proto::internal::raft_transport_server::RaftTransport;
use raftmq_proto::internal::{HeartbeatReply, NodeHeartbeat, RaftMessage};
use raftmq_storage::{EncodedEntries, SnapshotData, TypeConfig};
use raftmq_types::{GroupId, META_GROUP_ID};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::codec;
use crate::groups::{GroupManager, MetaRaft, QueueRaft};

type Vote = openraft::alias::VoteOf<TypeConfig>;
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

pub struct TransportService {
    groups: Arc<GroupManager>,
}

impl TransportService {
    pub fn new(groups: Arc<GroupManager>) -> Self {
        TransportService { groups }
    }
}

/// The request header naming the group of an `AppendStream` call (decimal),
/// so that the group is found before the first message arrives.
pub const GROUP_ID_HEADER: &str = "raftmq-group-id";

fn reply<T: Serialize>(group_id: GroupId, what: &'static str, value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::encode(what, value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { group_id: group_id.0, payload: payload.into(), ..Default::default() }))
}

/// A failure the sender should retry later (the group is not hosted here yet,
/// or the Raft node stopped): carried in-band so it is not mistaken for a
/// transport failure.
fn error_message(group_id: GroupId, error: impl std::fmt::Display) -> RaftMessage {
    RaftMessage { group_id: group_id.0, error: error.to_string(), ..Default::default() }
}

/// An [`error_message`] as the whole answer to a call.
fn reply_error(group_id: GroupId, error: impl std::fmt::Display) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(error_message(group_id, error)))
}

fn bad_payload(e: codec::CodecError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The Raft node of one group hosted here: the meta group or a queue group.
/// The two are different types (their state machines differ), so each RPC
/// dispatches on this once.
enum GroupRaft {
    Meta(MetaRaft),
    Queue(QueueRaft),
}

impl TransportService {
    fn group(&self, group_id: GroupId) -> Option<GroupRaft> {
        if group_id == META_GROUP_ID {
            Some(GroupRaft::Meta(self.groups.meta().clone()))
        } else {
            self.groups.queue_group(group_id).map(|g| GroupRaft::Queue(g.raft))
        }
    }
}

/// Answers with `result` encoded, or with its error in-band.
fn answer<T: Serialize, E: std::fmt::Display>(
    group_id: GroupId,
    what: &'static str,
    result: Result<T, E>,
) -> Result<Response<RaftMessage>, Status> {
    match result {
        Ok(value) => reply(group_id, what, &value),
        Err(e) => reply_error(group_id, e),
    }
}

const NOT_HOSTED: &str = "group not hosted on this node (yet)";

fn group_id_header<T>(request: &Request<T>) -> Result<GroupId, Status> {
    let value = request
        .metadata()
        .get(GROUP_ID_HEADER)
        .ok_or_else(|| Status::invalid_argument(format!("the {GROUP_ID_HEADER} header is missing")))?;
    let group_id = value.to_str().ok().and_then(|value| value.parse().ok());
    group_id.map(GroupId).ok_or_else(|| Status::invalid_argument(format!("bad {GROUP_ID_HEADER} header {value:?}")))
}

/// The leader's requests, decoded. A message that does not decode, or a
/// broken stream, ends them: openraft then answers what it has and ends its
/// answers, and the leader opens a new stream.
fn decoded_requests(
    group_id: GroupId,
    messages: Streaming<RaftMessage>,
    log: EncodedEntries,
) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static {
    futures::stream::unfold(messages, move |mut messages| {
        let log = log.clone();
        async move {
            match messages.next().await? {
                Ok(message) => match codec::decode_append(&message.payload, &message.entries, &log) {
                    Ok(rpc) => Some((rpc, messages)),
                    Err(e) => {
                        warn!(%group_id, error = %e, "ending an append stream: a request does not decode");
                        None
                    }
                },
                // The leader dropped the stream (its replication session ended).
                Err(status) if status.code() == tonic::Code::Cancelled => {
                    debug!(%group_id, %status, "append stream cancelled by the leader");
                    None
                }
                Err(status) => {
                    warn!(%group_id, %status, "ending an append stream: receiving failed");
                    None
                }
            }
        }
    })
}

/// openraft's answers, encoded, ending after the first that is not a success.
/// A `Fatal` (the group's Raft stopped) goes back in-band, like a group that
/// is not hosted here.
fn encoded_answers<S>(group_id: GroupId, answers: S) -> impl Stream<Item = Result<RaftMessage, Status>> + Send + 'static
where
    S: Stream<Item = Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>> + Send + 'static,
{
    futures::stream::unfold(Some(Box::pin(answers)), move |answers| async move {
        let mut answers = answers?;
        let (message, go_on) = match answers.next().await? {
            Ok(result) => match codec::encode("append result", &result) {
                Ok(payload) => (
                    RaftMessage { group_id: group_id.0, payload: payload.into(), ..Default::default() },
                    result.is_ok(),
                ),
                Err(e) => (error_message(group_id, e), false),
            },
            Err(fatal) => (error_message(group_id, format!("raft stopped: {fatal}")), false),
        };
        Some((Ok(message), go_on.then_some(answers)))
    })
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    type AppendStreamStream = BoxStream<'static, Result<RaftMessage, Status>>;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let group_id = group_id_header(&request)?;
        let Some(raft) = self.group(group_id) else {
            let refusal = futures::stream::iter([Ok(error_message(group_id, NOT_HOSTED))]);
            return Ok(Response::new(refusal.boxed()));
        };
        // A stream stays open, idle between writes, as long as the leader's
        // replication session lasts, and the server's graceful shutdown
        // waits for every stream: both directions end when shutdown starts.
        let peers = self.groups.peers();
        let log = self.groups.storage().encoded_entries(group_id);
        let requests = decoded_requests(group_id, request.into_inner(), log).take_until(peers.shutting_down());
        let answers = match raft {
            GroupRaft::Meta(raft) => encoded_answers(group_id, raft.stream_append(requests)).boxed(),
            GroupRaft::Queue(raft) => encoded_answers(group_id, raft.stream_append(requests)).boxed(),
        };
        Ok(Response::new(answers.take_until(peers.shutting_down()).boxed()))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let group_id = GroupId(message.group_id);
        let rpc = codec::decode("vote request", &message.payload).map_err(bad_payload)?;
        match self.group(group_id) {
            Some(GroupRaft::Meta(raft)) => answer(group_id, "vote response", raft.vote(rpc).await),
            Some(GroupRaft::Queue(raft)) => answer(group_id, "vote response", raft.vote(rpc).await),
            None => reply_error(group_id, NOT_HOSTED),
        }
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("snapshot stream is empty"))??;
        let group_id = GroupId(first.group_id);
        let (vote, meta): (Vote, SnapshotMeta) =
            codec::decode("snapshot header", &first.payload).map_err(bad_payload)?;
        // Spooled to a file as it comes (a deep backlog's snapshot is as big
        // as the backlog); the writes go to the page cache.
        let spool_error = |e: raftmq_storage::StorageError| Status::internal(format!("group {group_id}: {e}"));
        let mut spool = self.groups.storage().snapshot_spool().map_err(spool_error)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if !chunk.error.is_empty() {
                // The sender could not read its snapshot: install nothing.
                return Err(Status::aborted(format!("group {group_id}: sender failed: {}", chunk.error)));
            }
            spool.write(&chunk.payload).map_err(spool_error)?;
        }
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: spool.finish().map_err(spool_error)?,
        };
        match self.group(group_id) {
            Some(GroupRaft::Meta(raft)) => {
                answer(group_id, "snapshot response", raft.install_full_snapshot(vote, snapshot).await)
            }
            Some(GroupRaft::Queue(raft)) => {
                answer(group_id, "snapshot response", raft.install_full_snapshot(vote, snapshot).await)
            }
            None => reply_error(group_id, NOT_HOSTED),
        }
    }

    async fn heartbeat(&self, request: Request<NodeHeartbeat>) -> Result<Response<HeartbeatReply>, Status> {
        self.groups.quiescence().record(request.into_inner());
        Ok(Response::new(HeartbeatReply {}))
    }
}
