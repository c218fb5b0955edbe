//! The follower's side of `AppendStream` (`TransportService`) on a one-node
//! group manager with a real database, driven by the leader's side
//! (`GroupConnection::stream_append`): it refuses a group it does not host,
//! hands pipelined requests to openraft and sends its answers back in order,
//! and ends idle streams as soon as the node starts shutting down.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::RPCError;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, StreamAppendError};
use openraft::{BasicNode, ServerState};
use raftmq_proto::internal::raft_transport_server::RaftTransportServer;
use raftmq_raft::network::{GroupConnection, GroupNetworkFactory};
use raftmq_raft::{GroupManager, PeerChannels, RaftTiming, TransportService};
use raftmq_storage::{Storage, TypeConfig};
use raftmq_types::{GroupId, META_GROUP_ID};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

type Vote = openraft::alias::VoteOf<TypeConfig>;
type LogId = openraft::alias::LogIdOf<TypeConfig>;

/// No test waits longer than this for anything that should happen.
const BOUND: Duration = Duration::from_secs(10);
const NODE: u64 = 1;

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let name = format!("raftmq-append-stream-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One node serving the Raft transport on 127.0.0.1, leading its meta group.
struct Node {
    addr: String,
    groups: Arc<GroupManager>,
    shutdown: Option<oneshot::Sender<()>>,
    served: JoinHandle<Result<(), tonic::transport::Error>>,
    _dir: TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = TempDir::new();
        let storage = Storage::open(&dir.0.join("db")).expect("open the database");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("read the bound address").to_string();
        // Elections far apart: a test plays a leader of a later term, and
        // the node must not stand for election between its requests.
        let timing = RaftTiming {
            heartbeat_interval_ms: 500,
            election_timeout_min_ms: 5_000,
            election_timeout_max_ms: 6_000,
            quiet_idle_groups: false,
        };
        let members = BTreeMap::from([(NODE, BasicNode::new(&addr))]);
        let groups =
            GroupManager::start(NODE, storage, members, timing, PeerChannels::default()).await.expect("start the node");
        groups.meta().wait(Some(BOUND)).state(ServerState::Leader, "lead the meta group").await.expect("lead in time");
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        // As the node's server does: the shutdown signal ends the streams.
        let shutdown_rx = groups.peers().end_streams_on(async {
            let _ = shutdown_rx.await;
        });
        let served = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftTransportServer::new(TransportService::new(groups.clone())))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_rx),
        );
        Node { addr, groups, shutdown: Some(shutdown), served, _dir: dir }
    }

    async fn connect(&self, group_id: GroupId) -> GroupConnection {
        GroupNetworkFactory::new(group_id, PeerChannels::default()).new_client(NODE, &BasicNode::new(&self.addr)).await
    }

    /// The meta group's last applied log id, once everything is applied.
    async fn last_applied(&self) -> LogId {
        let metrics = self.groups.meta().metrics().borrow_watched().clone();
        let last_index = metrics.last_log_index.expect("the meta group has a log");
        let metrics = self
            .groups
            .meta()
            .wait(Some(BOUND))
            .applied_index(Some(last_index), "apply the log")
            .await
            .expect("apply in time");
        metrics.last_applied.expect("something is applied")
    }

    /// Starts the node's shutdown and waits until the server has stopped.
    async fn stop(mut self) {
        let _ = self.shutdown.take().expect("stopped once").send(());
        let served = timeout(BOUND, &mut self.served).await;
        served.expect("the server stops in time").expect("the server task").expect("the server");
        self.groups.shutdown().await;
    }
}

fn option() -> RPCOption {
    RPCOption::new(Duration::from_secs(2))
}

/// A leader's input that stays open, as openraft's does between writes,
/// until the sender is dropped.
fn input()
-> (mpsc::Sender<AppendEntriesRequest<TypeConfig>>, impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ReceiverStream::new(rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_not_hosted_here_is_refused_in_band() {
    let node = Node::start().await;
    let mut connection = node.connect(GroupId(4242)).await;
    let (requests, input) = input();
    let mut answers = connection.stream_append(input, option()).await.expect("open the stream");
    let heartbeat = AppendEntriesRequest {
        vote: Vote::new_committed(1, 2),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    };
    requests.send(heartbeat).await.expect("the stream takes requests");
    match timeout(BOUND, answers.next()).await.expect("the refusal comes in time") {
        Some(Err(RPCError::Network(e))) => assert!(e.to_string().contains("not hosted"), "unexpected error: {e}"),
        other => panic!("expected the refusal as a network error, got {other:?}"),
    }
    assert!(answers.next().await.is_none(), "the answers end after the refusal");
    drop(answers);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_reach_openraft_and_its_answers_come_back_in_order() {
    let node = Node::start().await;
    let base = node.last_applied().await;
    // A leader of a later term (node 2, unknown here, which is no matter to
    // AppendEntries) sends three entries, one request each, all at once.
    let entry_id = |i: u64| openraft::testing::log_id::<TypeConfig>(5, 2, base.index + i);
    let requests: Vec<_> = (1..=3)
        .map(|i| AppendEntriesRequest {
            vote: Vote::new_committed(5, 2),
            prev_log_id: Some(if i == 1 { base } else { entry_id(i - 1) }),
            leader_commit: None,
            entries: vec![openraft::testing::blank_ent::<TypeConfig>(5, 2, base.index + i)],
        })
        .collect();
    let (sender, input) = input();
    let mut connection = node.connect(META_GROUP_ID).await;
    let mut answers = connection.stream_append(input, option()).await.expect("open the stream");
    for request in requests {
        sender.send(request).await.expect("the stream takes requests");
    }
    for i in 1..=3 {
        match timeout(BOUND, answers.next()).await.expect("openraft answers in time") {
            Some(Ok(Ok(matched))) => assert_eq!(matched, Some(entry_id(i)), "answer {i}"),
            other => panic!("expected answer {i} to be a success, got {other:?}"),
        }
    }

    // The stream stays open, idle, and shutting the node down ends it.
    let idle = timeout(Duration::from_millis(500), answers.next()).await;
    assert!(idle.is_err(), "an idle stream yielded {:?}", idle.unwrap());
    let stopped = tokio::spawn(node.stop());
    let end = timeout(BOUND, answers.next()).await.expect("the stream ends in time");
    assert!(end.is_none(), "the stream ends cleanly, got {end:?}");
    drop(answers);
    drop(sender);
    stopped.await.expect("the node stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_is_told_of_the_higher_vote_and_the_stream_ends() {
    let node = Node::start().await;
    let (requests, input) = input();
    let mut connection = node.connect(META_GROUP_ID).await;
    let mut answers = connection.stream_append(input, option()).await.expect("open the stream");
    requests
        .send(AppendEntriesRequest {
            vote: Vote::new_committed(0, 2),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        })
        .await
        .expect("the stream takes requests");
    match timeout(BOUND, answers.next()).await.expect("openraft answers in time") {
        Some(Ok(Err(StreamAppendError::HigherVote(vote)))) => {
            assert_eq!(vote, node.groups.meta().metrics().borrow_watched().vote, "the node's own vote")
        }
        other => panic!("expected a higher vote, got {other:?}"),
    }
    assert!(timeout(BOUND, answers.next()).await.expect("the answers end in time").is_none());
    drop(answers);
    node.stop().await;
}
