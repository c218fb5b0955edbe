//! The server side of the node-to-node transport: routes each Raft RPC to the
//! group named by its group id.

use std::sync::Arc;

use futures::StreamExt;
use raftmq_proto::internal::raft_transport_server::RaftTransport;
use raftmq_proto::internal::{HeartbeatReply, NodeHeartbeat, RaftMessage};
use raftmq_storage::{SnapshotData, TypeConfig};
use raftmq_types::{GroupId, META_GROUP_ID};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

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

fn reply<T: Serialize>(group_id: GroupId, what: &'static str, value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::encode(what, value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { group_id: group_id.0, payload: payload.into(), error: String::new() }))
}

/// A failure the sender should retry later (the group is not hosted here yet,
/// or the Raft node stopped): carried in-band so it is not mistaken for a
/// transport failure.
fn reply_error(group_id: GroupId, error: impl std::fmt::Display) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage { group_id: group_id.0, payload: Default::default(), error: error.to_string() }))
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

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let group_id = GroupId(message.group_id);
        let rpc = codec::decode("append request", &message.payload).map_err(bad_payload)?;
        match self.group(group_id) {
            Some(GroupRaft::Meta(raft)) => answer(group_id, "append response", raft.append_entries(rpc).await),
            Some(GroupRaft::Queue(raft)) => answer(group_id, "append response", raft.append_entries(rpc).await),
            None => reply_error(group_id, NOT_HOSTED),
        }
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
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if !chunk.error.is_empty() {
                // The sender could not read its snapshot: install nothing.
                return Err(Status::aborted(format!("group {group_id}: sender failed: {}", chunk.error)));
            }
            data.extend_from_slice(&chunk.payload);
        }
        let snapshot =
            openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: SnapshotData::new(data) };
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
