//! The leader's side of `AppendStream` (`GroupConnection::stream_append`)
//! against a scripted follower on 127.0.0.1: requests are pipelined, an
//! answer overdue by its patience (`ANSWER_PATIENCE` times soft_ttl) ends
//! the stream with an error, an idle stream never times out, and thousands
//! of idle streams on one peer connection do not hold up other calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::BasicNode;
use openraft::errors::RPCError;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use raftmq_proto::internal::raft_transport_client::RaftTransportClient;
use raftmq_proto::internal::raft_transport_server::{RaftTransport, RaftTransportServer};
use raftmq_proto::internal::{HeartbeatReply, NodeHeartbeat, RaftMessage};
use raftmq_raft::codec;
use raftmq_raft::network::{ANSWER_PATIENCE, GroupConnection, GroupNetworkFactory};
use raftmq_raft::peers::{MAX_STREAMS_PER_CONNECTION, PeerChannels};
use raftmq_storage::TypeConfig;
use raftmq_types::GroupId;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type Vote = openraft::alias::VoteOf<TypeConfig>;

const GROUP: GroupId = GroupId(7);
const FOLLOWER: u64 = 2;
/// No test waits longer than this for anything that should happen.
const BOUND: Duration = Duration::from_secs(10);

/// What the scripted follower saw and did, in order, across all its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A request arrived: the index of its entry.
    Received(u64),
    /// The answer to that request was sent.
    Answered(u64),
}

/// A follower that holds its answers back until `answer_after` requests
/// have arrived on a stream, then answers each request received so far and
/// each one after at once. It answers success, matching the request's entry.
struct ScriptedFollower {
    answer_after: usize,
    events: Arc<Mutex<Vec<Event>>>,
    open_streams: Arc<AtomicUsize>,
}

/// Counts a stream as open while its task runs.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl RaftTransport for ScriptedFollower {
    type AppendStreamStream = ReceiverStream<Result<RaftMessage, Status>>;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let (answers, answers_rx) = mpsc::channel(64);
        let answer_after = self.answer_after;
        let events = self.events.clone();
        self.open_streams.fetch_add(1, Ordering::SeqCst);
        let open = OpenStream(self.open_streams.clone());
        tokio::spawn(async move {
            let _open = open;
            let mut held = Vec::new();
            let mut n_received = 0;
            while let Some(Ok(message)) = incoming.next().await {
                // The entries go beside the request (`codec::encode_append`).
                let rpc: AppendEntriesRequest<TypeConfig> =
                    codec::decode("append request", &message.payload).expect("the leader sends valid requests");
                assert!(rpc.entries.is_empty());
                let last = message.entries.last().expect("the test's requests carry one entry");
                let last: openraft::alias::EntryOf<TypeConfig> =
                    codec::decode("log entry", last).expect("the leader sends valid entries");
                let last = last.log_id;
                events.lock().unwrap().push(Event::Received(last.index));
                held.push(last);
                n_received += 1;
                if n_received < answer_after {
                    continue;
                }
                for last in held.drain(..) {
                    events.lock().unwrap().push(Event::Answered(last.index));
                    let result: StreamAppendResult<TypeConfig> = Ok(Some(last));
                    let payload = codec::encode("append result", &result).expect("encode a result");
                    let answer = RaftMessage { group_id: GROUP.0, payload: payload.into(), ..Default::default() };
                    if answers.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(answers_rx)))
    }

    async fn vote(&self, _request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(RaftMessage::default()))
    }

    async fn install_snapshot(
        &self,
        _request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftMessage>, Status> {
        // No test here sends a snapshot; one that did would fail on this.
        Err(Status::failed_precondition("the scripted follower takes no snapshots"))
    }

    async fn heartbeat(&self, _request: Request<NodeHeartbeat>) -> Result<Response<HeartbeatReply>, Status> {
        Ok(Response::new(HeartbeatReply {}))
    }
}

struct Follower {
    addr: String,
    events: Arc<Mutex<Vec<Event>>>,
    open_streams: Arc<AtomicUsize>,
}

impl Follower {
    /// Serves a scripted follower on a free port, with the stream limit the
    /// node's server uses.
    async fn start(answer_after: usize) -> Follower {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("read the bound address").to_string();
        let events = Arc::new(Mutex::new(Vec::new()));
        let open_streams = Arc::new(AtomicUsize::new(0));
        let follower = ScriptedFollower { answer_after, events: events.clone(), open_streams: open_streams.clone() };
        tokio::spawn(
            tonic::transport::Server::builder()
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .add_service(RaftTransportServer::new(follower))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Follower { addr, events, open_streams }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    async fn connect(&self, peers: &PeerChannels) -> GroupConnection {
        GroupNetworkFactory::new(GROUP, peers.clone()).new_client(FOLLOWER, &BasicNode::new(&self.addr)).await
    }
}

/// The request carrying the entry at `index` (term 1, leader node 1).
fn request(index: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: (index > 1).then(|| openraft::testing::log_id::<TypeConfig>(1, 1, index - 1)),
        leader_commit: None,
        entries: vec![openraft::testing::blank_ent::<TypeConfig>(1, 1, index)],
    }
}

/// The index a successful answer reports as matched.
fn matched(answer: Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>) -> u64 {
    match answer {
        Some(Ok(Ok(Some(log_id)))) => log_id.index,
        other => panic!("expected a success answer, got {other:?}"),
    }
}

/// openraft's option for a stream whose soft_ttl is about `soft_ttl`.
fn option(soft_ttl: Duration) -> RPCOption {
    RPCOption::new(soft_ttl * 4 / 3)
}

/// A leader's input: requests are pushed in by the test; the stream stays
/// open, as openraft's does between writes, until the sender is dropped.
fn input()
-> (mpsc::Sender<AppendEntriesRequest<TypeConfig>>, impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ReceiverStream::new(rx))
}

#[tokio::test]
async fn requests_are_sent_without_waiting_for_answers() {
    // The follower answers nothing before it holds three requests: sending
    // one request at a time, waiting for its answer, never gets there.
    let follower = Follower::start(3).await;
    let mut connection = follower.connect(&PeerChannels::default()).await;
    let (requests, input) = input();
    let mut answers = timeout(BOUND, connection.stream_append(input, option(Duration::from_secs(5))))
        .await
        .expect("open the stream in time")
        .expect("open the stream");
    for index in 1..=3 {
        requests.send(request(index)).await.expect("the stream takes requests");
    }
    for index in 1..=3 {
        let answer = timeout(BOUND, answers.next()).await.expect("the follower answers in time");
        assert_eq!(matched(answer), index, "answers come in request order");
    }
    use Event::{Answered, Received};
    assert_eq!(
        follower.events(),
        [Received(1), Received(2), Received(3), Answered(1), Answered(2), Answered(3)],
        "all three requests reached the follower before it answered any"
    );

    // Later requests go out too, and the answers end when the input does.
    requests.send(request(4)).await.expect("the stream takes requests");
    let answer = timeout(BOUND, answers.next()).await.expect("the follower answers in time");
    assert_eq!(matched(answer), 4);
    drop(requests);
    let end = timeout(BOUND, answers.next()).await.expect("the answers end in time");
    assert!(end.is_none(), "the answers end with the input, got {end:?}");
}

#[tokio::test]
async fn an_unanswered_request_fails_the_stream_after_its_patience() {
    let follower = Follower::start(usize::MAX).await;
    let mut connection = follower.connect(&PeerChannels::default()).await;
    let option = option(Duration::from_millis(200));
    let patience = option.soft_ttl() * ANSWER_PATIENCE;
    let (requests, input) = input();
    let mut answers = connection.stream_append(input, option).await.expect("open the stream");
    let sent_at = Instant::now();
    requests.send(request(1)).await.expect("the stream takes requests");

    let answer = timeout(BOUND, answers.next()).await.expect("the stream gives up in time");
    let waited = sent_at.elapsed();
    match answer {
        Some(Err(RPCError::Network(e))) => {
            assert!(e.to_string().contains("sent nothing on the append stream"), "unexpected error: {e}")
        }
        other => panic!("expected a network error, got {other:?}"),
    }
    assert!(waited >= patience, "gave up after {waited:?}, before its patience {patience:?}");
    assert!(waited < patience * 2, "gave up only after {waited:?}, its patience is {patience:?}");
    let end = timeout(BOUND, answers.next()).await.expect("the answers end in time");
    assert!(end.is_none(), "the answers end after the error, got {end:?}");
    assert_eq!(follower.events(), [Event::Received(1)]);
}

#[tokio::test]
async fn an_idle_stream_does_not_time_out() {
    let follower = Follower::start(1).await;
    let mut connection = follower.connect(&PeerChannels::default()).await;
    let soft_ttl = Duration::from_millis(500);
    let (requests, input) = input();
    let mut answers = connection.stream_append(input, option(soft_ttl)).await.expect("open the stream");

    // Idle before the first request (the gRPC stream is not open yet), and
    // again between answered requests on the open stream.
    for index in 1..=3 {
        let idle = timeout(soft_ttl * 2, answers.next()).await;
        assert!(idle.is_err(), "an idle stream yielded {:?}", idle.unwrap());
        let n_open = follower.open_streams.load(Ordering::SeqCst);
        assert_eq!(n_open, usize::from(index > 1), "the stream opens with the first request, and only once");
        requests.send(request(index)).await.expect("the stream takes requests");
        let answer = timeout(BOUND, answers.next()).await.expect("the follower answers in time");
        assert_eq!(matched(answer), index);
    }
}

#[tokio::test]
async fn a_node_that_refuses_connections_is_unreachable() {
    // openraft backs off after Unreachable, sleeping inside its request
    // stream: the connection is attempted only once a request is there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("read the bound address").to_string();
    drop(listener);
    let factory = GroupNetworkFactory::new(GROUP, PeerChannels::default());
    let mut connection = { factory }.new_client(FOLLOWER, &BasicNode::new(&addr)).await;
    let (requests, input) = input();
    let mut answers = connection.stream_append(input, option(Duration::from_secs(2))).await.expect("no call yet");
    let idle = timeout(Duration::from_millis(300), answers.next()).await;
    assert!(idle.is_err(), "nothing happens before the first request, got {:?}", idle.unwrap());
    requests.send(request(1)).await.expect("the stream takes requests");
    match timeout(BOUND, answers.next()).await.expect("the connection fails in time") {
        Some(Err(RPCError::Unreachable(_))) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(answers.next().await.is_none(), "the answers end after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_streams_do_not_hold_up_other_calls() {
    // Twice the thousand groups a node pair may share, plus some.
    const STREAMS: usize = 2_100;
    let follower = Follower::start(1).await;
    let peers = PeerChannels::default();
    let (stop, stopped) = watch::channel(false);
    let (opened, mut opened_rx) = mpsc::channel(STREAMS);
    for _ in 0..STREAMS {
        let mut connection = follower.connect(&peers).await;
        let (opened, mut stopped) = (opened.clone(), stopped.clone());
        tokio::spawn(async move {
            // One answered request opens the stream; then it idles, open.
            let (requests, input) = input();
            let answers = connection.stream_append(input, option(Duration::from_secs(5))).await;
            let mut answers = answers.expect("stream_append itself does not fail");
            requests.send(request(1)).await.expect("the stream takes requests");
            let answer = match answers.next().await {
                Some(Ok(Ok(_))) => Ok(()),
                other => Err(format!("{other:?}")),
            };
            let _ = opened.send(answer).await;
            let _ = stopped.wait_for(|stop| *stop).await;
        });
    }
    for _ in 0..STREAMS {
        let opened = timeout(BOUND, opened_rx.recv()).await.expect("streams open in time");
        opened.expect("the task reports").expect("every stream opens and answers");
    }
    assert_eq!(follower.open_streams.load(Ordering::SeqCst), STREAMS, "all streams are open at the follower");

    // A plain call on the same channel, and a replication stream that works.
    let channel = peers.channel(&follower.addr).expect("the follower's address is valid");
    let vote = timeout(Duration::from_secs(2), RaftTransportClient::new(channel).vote(RaftMessage::default())).await;
    vote.expect("a vote call goes through at once").expect("the vote call succeeds");
    let mut connection = follower.connect(&peers).await;
    let mut answers = timeout(
        Duration::from_secs(2),
        connection.stream_append(futures::stream::iter([request(1)]), option(Duration::from_secs(2))),
    )
    .await
    .expect("one more stream opens at once")
    .expect("one more stream opens");
    let answer = timeout(BOUND, answers.next()).await.expect("the follower answers in time");
    assert_eq!(matched(answer), 1);
    let _ = stop.send(true);
}
