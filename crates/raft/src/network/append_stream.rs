//! The leader's side of `AppendStream`: AppendEntries to one follower,
//! pipelined over one gRPC bidirectional stream.
//!
//! openraft hands [`answers`] its stream of requests and reads the answers,
//! in request order, from the stream it gets back. Each request goes out as
//! soon as openraft produces it, without waiting for the answers to earlier
//! ones; the follower answers each once its entries are durable. Between
//! writes openraft keeps the stream open with nothing to send, so an idle
//! stream is normal: the timeout runs only while an answer is due.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{AbortHandle, BoxStream};
use futures::{Stream, StreamExt};
use openraft::errors::RPCError;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use raftmq_proto::internal::RaftMessage;
use raftmq_proto::internal::raft_transport_client::RaftTransportClient;
use raftmq_storage::stages::{self, Stage};
use raftmq_storage::{EncodedEntries, TypeConfig};
use raftmq_types::{GroupId, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{ANSWER_PATIENCE, network_error, status_to_rpc_error, unreachable};
use crate::codec;
use crate::transport::GROUP_ID_HEADER;

/// One answer as openraft wants it: the follower's result, or why there is none.
pub(super) type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The answers of `target` to `requests`, sent on a stream of their own.
/// The stream is opened once the first request is there: openraft sleeps
/// out its backoff after a failure inside its request stream, so connecting
/// first would retry a node that refuses connections in a tight loop.
/// Opening must succeed within `soft_ttl`; after that, whenever an answer is
/// due and none arrives for [`ANSWER_PATIENCE`] times `soft_ttl`, the
/// answers end with an error.
///
/// The answers end after the last one when `requests` ends, and right after
/// anything but a success: an error of the follower's (a conflict, a higher
/// vote), of the transport (opening included), or a timeout.
pub(super) fn answers<S>(
    client: Result<RaftTransportClient<Channel>, RPCError<TypeConfig>>,
    group_id: GroupId,
    target: NodeId,
    log: Option<EncodedEntries>,
    mut requests: S,
    soft_ttl: Duration,
) -> BoxStream<'static, Answer>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let opened = async move {
        let first = requests.next().await?;
        let requests = futures::stream::iter([first]).chain(requests);
        let opened = match client {
            Ok(client) => open(client, group_id, target, log, requests, soft_ttl).await,
            Err(e) => Err(e),
        };
        Some(opened)
    };
    futures::stream::once(opened)
        .flat_map(|opened| match opened {
            None => futures::stream::empty().boxed(),
            Some(Ok(answers)) => answers,
            Some(Err(e)) => futures::stream::iter([Err(e)]).boxed(),
        })
        .boxed()
}

/// Opens the stream to `target` and starts sending `requests` on it.
async fn open<S>(
    mut client: RaftTransportClient<Channel>,
    group_id: GroupId,
    target: NodeId,
    log: Option<EncodedEntries>,
    requests: S,
    soft_ttl: Duration,
) -> Result<BoxStream<'static, Answer>, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let (sent, sent_rx) = watch::channel(Sent::default());
    let sent_at = SentAt::default();
    let (requests, stop_requests) =
        futures::stream::abortable(encoded_requests(group_id, log, requests, sent, sent_at.clone()));
    let mut request = tonic::Request::new(requests);
    request.metadata_mut().insert(GROUP_ID_HEADER, group_id.0.into());
    // No gRPC deadline on the call: it would bound the whole stream, which
    // lives as long as openraft's replication session. The follower answers
    // the call at once, without waiting for the first request to be handled;
    // a node that does not within soft_ttl is treated like one that refuses
    // connections. On a failure the request side is ended, as when the
    // answers end (`Drop`).
    let opened = tokio::time::timeout(soft_ttl, client.append_stream(request)).await;
    let answers = match opened {
        Ok(Ok(answers)) => answers.into_inner(),
        Ok(Err(status)) => {
            stop_requests.abort();
            return Err(status_to_rpc_error(status));
        }
        Err(_) => {
            stop_requests.abort();
            return Err(unreachable(format!(
                "node {target} did not open the append stream of group {group_id} within {soft_ttl:?}"
            )));
        }
    };
    let answers = Answers {
        answers,
        stop_requests,
        sent: sent_rx,
        sent_at,
        requests_gone: false,
        n_answered: 0,
        deadline: None,
        patience: soft_ttl * ANSWER_PATIENCE,
        group_id,
        target,
    };
    let answers = futures::stream::unfold(Some(answers), |answers| async move {
        let mut answers = answers?;
        let answer = answers.next().await?;
        let go_on = matches!(answer, Ok(Ok(_)));
        Some((answer, go_on.then_some(answers)))
    });
    Ok(answers.boxed())
}

/// When each unanswered request went out, oldest first, if it carried
/// entries (`None` for one without): the replicate stage's latency.
type SentAt = Arc<Mutex<VecDeque<Option<Instant>>>>;

/// What the request side has sent so far: the answer side reads it to know
/// whether an answer is due.
#[derive(Debug, Default)]
struct Sent {
    n_requests: u64,
    /// No request follows: openraft's input ended, or one could not be
    /// encoded. The follower then ends the stream after its last answer.
    finished: bool,
    /// Why the requests stopped early; reported after the last answer.
    encode_error: Option<String>,
}

/// openraft's requests, encoded, counted in `sent` as they go out. An encode
/// failure ends them (a request cannot be skipped: the next one follows on
/// from it).
fn encoded_requests<S>(
    group_id: GroupId,
    log: Option<EncodedEntries>,
    requests: S,
    sent: watch::Sender<Sent>,
    sent_at: SentAt,
) -> impl Stream<Item = RaftMessage> + Send + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    futures::stream::unfold((requests, sent, sent_at), move |(mut requests, sent, sent_at)| {
        let log = log.clone();
        async move {
            let Some(rpc) = requests.next().await else {
                sent.send_modify(|sent| sent.finished = true);
                return None;
            };
            let has_entries = !rpc.entries.is_empty();
            match codec::encode_append(rpc, log.as_ref()) {
                Ok((payload, entries)) => {
                    sent_at.lock().unwrap_or_else(|e| e.into_inner()).push_back(has_entries.then(Instant::now));
                    sent.send_modify(|sent| sent.n_requests += 1);
                    let message =
                        RaftMessage { group_id: group_id.0, payload: payload.into(), error: String::new(), entries };
                    Some((message, (requests, sent, sent_at)))
                }
                Err(e) => {
                    sent.send_modify(|sent| {
                        sent.finished = true;
                        sent.encode_error = Some(format!("group {group_id}: {e}"));
                    });
                    None
                }
            }
        }
    })
    .fuse()
}

/// The answer side of one stream.
struct Answers {
    answers: tonic::Streaming<RaftMessage>,
    /// Ends the request side when the answers are over (see `Drop`).
    stop_requests: AbortHandle,
    sent: watch::Receiver<Sent>,
    sent_at: SentAt,
    /// The request side was dropped (the call is over): nothing more is sent.
    requests_gone: bool,
    n_answered: u64,
    /// While an answer (or the end, once the requests are finished) is due:
    /// when the follower counts as stuck. Each answer restarts it.
    deadline: Option<Instant>,
    /// How long an answer that is due may take ([`ANSWER_PATIENCE`] times
    /// openraft's `soft_ttl`).
    patience: Duration,
    group_id: GroupId,
    target: NodeId,
}

/// What woke the answer side up.
enum Event {
    Answer(Option<Result<RaftMessage, tonic::Status>>),
    Sent,
    TimedOut,
}

/// openraft's request stream is polled by the HTTP/2 connection, not by
/// openraft, and while it waits for new entries it holds a lock that
/// openraft's next replication session needs. When the answers end or are
/// dropped, the request side ends too, so that the connection drops
/// openraft's stream at once, whatever the follower does with its side.
impl Drop for Answers {
    fn drop(&mut self) {
        self.stop_requests.abort();
    }
}

impl Answers {
    /// The next answer; `None` once the follower ended the stream with every
    /// request answered.
    async fn next(&mut self) -> Option<Answer> {
        loop {
            let (n_requests, finished) = {
                let sent = self.sent.borrow_and_update();
                (sent.n_requests, sent.finished || self.requests_gone)
            };
            let due = self.n_answered < n_requests || finished;
            self.deadline = match (due, self.deadline) {
                (false, _) => None,
                (true, None) => Some(Instant::now() + self.patience),
                (true, Some(deadline)) => Some(deadline),
            };
            let deadline = self.deadline;
            let event = tokio::select! {
                answer = self.answers.next() => Event::Answer(answer),
                changed = self.sent.changed(), if !self.requests_gone => {
                    if changed.is_err() {
                        self.requests_gone = true;
                    }
                    Event::Sent
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    Event::TimedOut
                }
            };
            match event {
                Event::Answer(answer) => return self.on_answer(answer),
                Event::Sent => continue,
                Event::TimedOut => {
                    let awaited = match n_requests - self.n_answered {
                        0 => "the end of the stream".to_string(),
                        n_due => format!("the answers to {n_due} requests"),
                    };
                    return Some(Err(network_error(format!(
                        "node {} sent nothing on the append stream of group {} for {:?}, awaiting {awaited}",
                        self.target, self.group_id, self.patience
                    ))));
                }
            }
        }
    }

    fn on_answer(&mut self, answer: Option<Result<RaftMessage, tonic::Status>>) -> Option<Answer> {
        let n_requests = self.sent.borrow().n_requests;
        let message = match answer {
            Some(Ok(message)) => message,
            Some(Err(status)) => return Some(Err(status_to_rpc_error(status))),
            None if self.n_answered < n_requests => {
                return Some(Err(network_error(format!(
                    "node {} ended the append stream of group {} with {} requests unanswered",
                    self.target,
                    self.group_id,
                    n_requests - self.n_answered
                ))));
            }
            None => return self.sent.borrow().encode_error.clone().map(|e| Err(network_error(e))),
        };
        if !message.error.is_empty() {
            return Some(Err(network_error(format!(
                "node {} for group {}: {}",
                self.target, self.group_id, message.error
            ))));
        }
        if self.n_answered == n_requests {
            return Some(Err(network_error(format!(
                "node {} answered more than was sent on the append stream of group {}",
                self.target, self.group_id
            ))));
        }
        self.n_answered += 1;
        self.deadline = None;
        if let Some(Some(sent_at)) = self.sent_at.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
            stages::record(Stage::Replicate, sent_at.elapsed());
        }
        Some(codec::decode("append result", &message.payload).map_err(network_error))
    }
}
