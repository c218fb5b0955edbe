//! The client side of the node-to-node transport: openraft's network traits
//! implemented over the `RaftTransport` gRPC service.
//!
//! Every group gets its own [`GroupNetworkFactory`], which only differs in the
//! group id it stamps on each message; the channels underneath are the node's
//! shared [`PeerChannels`].
//!
//! Replication goes through `stream_append` ([`append_stream`]): openraft's
//! AppendEntries to a follower, pipelined on one long-lived gRPC stream.
//! Votes and snapshots are one call each.

mod append_stream;

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};

use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode, OptionalSend};
use raftmq_proto::internal::RaftMessage;
use raftmq_proto::internal::raft_transport_client::RaftTransportClient;
use raftmq_storage::{EncodedEntries, SnapshotData, TypeConfig};
use raftmq_types::{GroupId, NodeId};
use tonic::transport::Channel;

use crate::codec;
use crate::peers::PeerChannels;

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
type Vote = openraft::alias::VoteOf<TypeConfig>;

/// Snapshot data is sent in chunks of this size so that no single gRPC message
/// gets near tonic's 4 MiB default limit.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// How many times openraft's `soft_ttl` (3/4 of the heartbeat interval) an
/// open stream waits for the next answer that is due. The follower answers
/// each request once its entries are fsynced, in order, so with many MiB in
/// flight to a busy node the next answer can take longer than one `soft_ttl`
/// (187 ms by default) while the follower is healthy. Giving up then cost
/// more than the wait: openraft backs off for 200 ms and sends again from
/// the follower's last acknowledged entry, all the entries that were in
/// flight a second time, read back from RocksDB once the leader has applied
/// them (docs/performance.md, tenth session). A follower that is gone
/// closes the connection and fails the stream at once; only a silent one
/// waits this long.
pub const ANSWER_PATIENCE: u32 = 4;

pub struct GroupNetworkFactory {
    group_id: GroupId,
    peers: PeerChannels,
    /// The group's log as its log store encoded it: entries still in memory
    /// are sent as those bytes. Without it every entry is encoded to send.
    log: Option<EncodedEntries>,
}

impl GroupNetworkFactory {
    pub fn new(group_id: GroupId, peers: PeerChannels) -> Self {
        GroupNetworkFactory { group_id, peers, log: None }
    }

    /// Sends entries of `log` as its log store encoded them.
    pub fn sending_encoded(self, log: EncodedEntries) -> Self {
        GroupNetworkFactory { log: Some(log), ..self }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupConnection {
        GroupConnection {
            group_id: self.group_id,
            target,
            log: self.log.clone(),
            client: self
                .peers
                .channel(&node.addr)
                .map(|channel| RaftTransportClient::new(channel).max_decoding_message_size(usize::MAX))
                .map_err(|e| e.to_string()),
        }
    }
}

/// The connection of one group to one peer.
pub struct GroupConnection {
    group_id: GroupId,
    target: NodeId,
    log: Option<EncodedEntries>,
    /// An invalid peer address is reported as `Unreachable` on every call
    /// rather than panicking in `new_client`, which cannot fail.
    client: Result<RaftTransportClient<Channel>, String>,
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network_error(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

/// Transport failures where the peer is down or not listening back off;
/// everything else (including the peer not hosting the group yet) is retried.
fn status_to_rpc_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable => unreachable(status),
        tonic::Code::Unknown if status.message().contains("connect") => unreachable(status),
        _ => network_error(status),
    }
}

/// Snapshot transfer reports the same failures in its own error type.
fn to_streaming_error(error: RPCError<TypeConfig>) -> StreamingError<TypeConfig> {
    match error {
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Network(n) => StreamingError::Network(n),
        other => StreamingError::Network(NetworkError::new(&AnyError::error(other.to_string()))),
    }
}

impl GroupConnection {
    fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    fn message(&self, payload: Vec<u8>) -> RaftMessage {
        RaftMessage { group_id: self.group_id.0, payload: payload.into(), ..Default::default() }
    }

    fn reply_payload(&self, reply: RaftMessage) -> Result<bytes::Bytes, RPCError<TypeConfig>> {
        if !reply.error.is_empty() {
            return Err(network_error(format!("node {} for group {}: {}", self.target, self.group_id, reply.error)));
        }
        Ok(reply.payload)
    }
}

impl RaftNetworkV2<TypeConfig> for GroupConnection {
    type SnapshotData = SnapshotData;

    /// One request on a stream of its own. openraft replicates and sends
    /// heartbeats through [`Self::stream_append`] and does not call this; it
    /// is here because the trait requires it.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let last_sent = rpc.entries.last().map(|entry| entry.log_id).or(rpc.prev_log_id);
        let (group_id, target) = (self.group_id, self.target);
        let mut answers = self.stream_append(futures::stream::iter([rpc]), option).await?;
        let answer = answers.next().await.ok_or_else(|| {
            network_error(format!("node {target} ended the append stream of group {group_id} unanswered"))
        })??;
        Ok(match answer {
            Ok(matched) if matched == last_sent => AppendEntriesResponse::Success,
            Ok(matched) => AppendEntriesResponse::PartialSuccess(matched),
            Err(StreamAppendError::Conflict(_)) => AppendEntriesResponse::Conflict,
            Err(StreamAppendError::HigherVote(vote)) => AppendEntriesResponse::HigherVote(vote),
        })
    }

    /// Pipelined replication: every request goes out as soon as openraft
    /// produces it; answers come back in order as the follower makes the
    /// entries durable. The gRPC stream opens with the first request, and
    /// failing to open it is the first answer. `soft_ttl` bounds opening,
    /// and [`ANSWER_PATIENCE`] times it, while an answer is due, the wait
    /// for the next one; an idle stream never times out.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let answers = append_stream::answers(
            self.client(),
            self.group_id,
            self.target,
            self.log.clone(),
            input,
            option.soft_ttl(),
        );
        Box::pin(futures::future::ready(Ok(answers)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = codec::encode("vote request", &rpc).map_err(network_error)?;
        let mut request = tonic::Request::new(self.message(payload));
        request.set_timeout(option.soft_ttl());
        let reply = self.client()?.vote(request).await.map_err(status_to_rpc_error)?;
        let payload = self.reply_payload(reply.into_inner())?;
        codec::decode("vote response", &payload).map_err(network_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = codec::encode("snapshot header", &(vote, snapshot.meta.clone()))
            .map_err(|e| to_streaming_error(network_error(e)))?;
        // The data is read while it is sent (a queue's snapshot is not whole
        // in memory); a read error ends the stream with a message saying so.
        let group_id = self.group_id.0;
        let chunks = futures::stream::unfold(Some(snapshot.snapshot), move |data| async move {
            let mut data = data?;
            let (payload, error, rest) = match data.next_chunk(SNAPSHOT_CHUNK_BYTES).await? {
                Ok(chunk) => (chunk.into(), String::new(), Some(data)),
                Err(e) => (bytes::Bytes::new(), format!("reading the snapshot: {e}"), None),
            };
            Some((RaftMessage { group_id, payload, error, ..Default::default() }, rest))
        });
        let messages = futures::stream::iter([self.message(header)]).chain(chunks);
        let mut client = self.client().map_err(to_streaming_error)?;
        let send = client.install_snapshot(messages);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply,
        };
        let reply = reply.map_err(|status| to_streaming_error(status_to_rpc_error(status)))?;
        let payload = self.reply_payload(reply.into_inner()).map_err(to_streaming_error)?;
        codec::decode("snapshot response", &payload).map_err(|e| to_streaming_error(network_error(e)))
    }

    fn backoff(&self) -> Option<openraft::network::Backoff> {
        // A dead peer is retried every 200 ms: fast enough for a restarted node
        // to rejoin at once, slow enough not to spin.
        Some(openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}
