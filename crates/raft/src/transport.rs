//! The server side of the node-to-node transport: routes each Raft RPC to the
//! group named by its group id.

use std::sync::Arc;

use futures::StreamExt;
use raftmq_proto::internal::RaftMessage;
use raftmq_proto::internal::raft_transport_server::RaftTransport;
use raftmq_storage::{SnapshotData, TypeConfig};
use raftmq_types::{GroupId, META_GROUP_ID};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::groups::GroupManager;

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

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let group_id = GroupId(message.group_id);
        let rpc = codec::decode("append request", &message.payload).map_err(bad_payload)?;
        let result = if group_id == META_GROUP_ID {
            self.groups.meta().append_entries(rpc).await
        } else {
            let Some(group) = self.groups.queue_group(group_id) else {
                return reply_error(group_id, "group not hosted on this node (yet)");
            };
            group.raft.append_entries(rpc).await
        };
        match result {
            Ok(response) => reply(group_id, "append response", &response),
            Err(e) => reply_error(group_id, e),
        }
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let group_id = GroupId(message.group_id);
        let rpc = codec::decode("vote request", &message.payload).map_err(bad_payload)?;
        let result = if group_id == META_GROUP_ID {
            self.groups.meta().vote(rpc).await
        } else {
            let Some(group) = self.groups.queue_group(group_id) else {
                return reply_error(group_id, "group not hosted on this node (yet)");
            };
            group.raft.vote(rpc).await
        };
        match result {
            Ok(response) => reply(group_id, "vote response", &response),
            Err(e) => reply_error(group_id, e),
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
            data.extend_from_slice(&chunk?.payload);
        }
        let snapshot =
            openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: SnapshotData::new(data) };
        let result = if group_id == META_GROUP_ID {
            self.groups.meta().install_full_snapshot(vote, snapshot).await
        } else {
            let Some(group) = self.groups.queue_group(group_id) else {
                return reply_error(group_id, "group not hosted on this node (yet)");
            };
            group.raft.install_full_snapshot(vote, snapshot).await
        };
        match result {
            Ok(response) => reply(group_id, "snapshot response", &response),
            Err(e) => reply_error(group_id, e),
        }
    }
}
