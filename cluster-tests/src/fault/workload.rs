//! The workload: producers that send unique, numbered messages and consumers
//! that lease and ack them, each through its own node, recording every
//! operation in the [`History`].
//!
//! A producer sends messages with ids `p<N>-<seq>` in small batches at a
//! steady rate, each body the id padded to 1 KiB ([`body_of`]), each
//! message with its id as `dedup_id`. A batch of unknown outcome
//! (recorded as `info`) is sent again with the same ids, up to
//! `produce_attempts` times in all, as a client that wants its messages in
//! would; the server's dedup must keep each id stored once. A consumer leases, then acks what it leased,
//! retrying an ack of unknown outcome with the same receipts; during the run
//! it "crashes" on a few messages (does not ack them) so that lease expiry and
//! redelivery are exercised under faults too. After an error of unknown
//! outcome a worker moves to the next node, as a client with several
//! endpoints would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::{Code, Status};

use crate::client::{Client, request_with_timeout};
use crate::fault::history::{Event, F, History, Msg, Type};
use crate::pb::{AckRequest, ConsumeRequest, ProduceMessage, ProduceRequest};

/// How long one call may take before its outcome counts as unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Leases are short so that unacked messages come back within a run.
const VISIBILITY_TIMEOUT_MS: u64 = 5_000;
const CONSUME_WAIT_MS: u64 = 500;
const CONSUME_MAX: u32 = 50;
/// An ack of unknown outcome is retried (same receipts) for this long.
const ACK_RETRY_FOR: Duration = Duration::from_secs(20);
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    pub queues: Vec<String>,
    pub producers: usize,
    pub consumers: usize,
    /// Messages per produce call.
    pub batch: usize,
    /// Produce calls per second, per producer.
    pub rate: f64,
    /// How often a batch of unknown outcome is sent (same dedup ids) before
    /// the producer gives up on it; 1 never retries.
    pub produce_attempts: usize,
    /// Probability that a consumer leaves a leased message unacked.
    pub skip_ack: f64,
    pub seed: u64,
}

/// Errors after which the operation certainly did not take effect: answers
/// of a server that refused it. Everything else (UNAVAILABLE, UNKNOWN,
/// DEADLINE_EXCEEDED, CANCELLED, INTERNAL, …) may have been applied by a
/// leader that answered too late or not at all, and so may any status the
/// client's transport made up from a broken connection (it carries the
/// transport error as its source), whatever its code: tonic reports an
/// HTTP/2 GOAWAY with ENHANCE_YOUR_CALM as RESOURCE_EXHAUSTED.
fn is_definite_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_none()
        && matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::ResourceExhausted
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::OutOfRange
                | Code::Unimplemented
        )
}

fn completion(status: &Status) -> Type {
    if is_definite_failure(status) { Type::Fail } else { Type::Info }
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Runs `call` with a gRPC deadline and a client-side timeout on top of it.
async fn bounded<T>(call: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("client-side timeout")),
    }
}

/// The nodes a worker may talk to, starting with its own.
#[derive(Clone)]
struct Endpoints {
    nodes: Vec<(u64, Client)>,
    current: usize,
}

impl Endpoints {
    fn new(nodes: &[(u64, Client)], first: usize) -> Endpoints {
        Endpoints { nodes: nodes.to_vec(), current: first % nodes.len() }
    }

    fn current(&self) -> (u64, &Client) {
        let (id, client) = &self.nodes[self.current];
        (*id, client)
    }

    fn next(&mut self) {
        self.current = (self.current + 1) % self.nodes.len();
    }
}

/// Flags the workers watch.
#[derive(Default)]
pub struct Control {
    /// Producers stop.
    pub stop_producing: AtomicBool,
    /// Consumers ack everything from now on (the drain).
    pub draining: AtomicBool,
    /// Consumers stop.
    pub stop_consuming: AtomicBool,
}

pub async fn produce(
    producer: usize,
    queue: String,
    nodes: Vec<(u64, Client)>,
    options: WorkloadOptions,
    history: History,
    control: Arc<Control>,
) {
    let process = format!("producer-{producer}");
    let mut endpoints = Endpoints::new(&nodes, producer);
    let period = Duration::from_secs_f64(1.0 / options.rate.max(0.01));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !control.stop_producing.load(Ordering::Relaxed) {
        ticker.tick().await;
        let ids: Vec<String> = (seq..seq + options.batch as u64).map(|s| format!("p{producer}-{s}")).collect();
        seq += options.batch as u64;
        // A batch of unknown outcome is sent again, with the same dedup ids,
        // like a client that wants its messages in; then the producer moves on.
        for _attempt in 0..options.produce_attempts.max(1) {
            if send_batch(&process, &queue, &ids, &mut endpoints, &history).await {
                break;
            }
            tokio::time::sleep(PAUSE_AFTER_ERROR).await;
        }
    }
}

/// Bytes of every produced body: large enough that the nodes leave it in
/// its log entry (`raftmq_storage::BODY_IN_LOG_MIN_BYTES`), so the runs cover
/// that path too.
const BODY_BYTES: usize = 1024;

/// A message's body: its id, `|`, then the id's bytes repeated up to
/// [`BODY_BYTES`], so that a consumer can tell a body that is not whole or
/// not its own.
fn body_of(id: &str) -> Vec<u8> {
    let mut body = id.as_bytes().to_vec();
    body.push(b'|');
    let filler = BODY_BYTES.saturating_sub(body.len());
    body.extend(id.bytes().cycle().take(filler));
    body
}

/// The id of a delivered body, or, for a body that is not exactly what
/// [`body_of`] made for that id, a name no produce used: the checker then
/// reports the delivery as unexpected.
fn id_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let id = text.split('|').next().unwrap_or_default();
    if body_of(id) == body { id.to_string() } else { format!("damaged body of {} bytes: {id}", body.len()) }
}

/// One produce call; true when its outcome is known (ok or refused).
async fn send_batch(process: &str, queue: &str, ids: &[String], endpoints: &mut Endpoints, history: &History) -> bool {
    {
        let (node, client) = endpoints.current();
        history.record(
            Event::new(process, Type::Invoke, F::Produce)
                .queue(queue)
                .node(node)
                .messages(ids.iter().map(Msg::id).collect()),
        );
        let request = ProduceRequest {
            queue: queue.to_string(),
            messages: ids
                .iter()
                .map(|id| ProduceMessage { body: body_of(id).into(), dedup_id: id.clone(), ..Default::default() })
                .collect(),
        };
        let result = bounded(client.messages.clone().produce(request_with_timeout(request, CALL_TIMEOUT))).await;
        match result {
            Ok(response) if response.offsets.len() == ids.len() => {
                let messages = ids
                    .iter()
                    .zip(response.offsets)
                    .map(|(id, offset)| Msg { offset: Some(offset), ..Msg::id(id) })
                    .collect();
                history.record(Event::new(process, Type::Ok, F::Produce).queue(queue).node(node).messages(messages));
                true
            }
            Ok(response) => {
                let error = format!("{} offsets for {} messages", response.offsets.len(), ids.len());
                history.record(Event::new(process, Type::Info, F::Produce).queue(queue).node(node).error(error));
                false
            }
            Err(status) => {
                let kind = completion(&status);
                history.record(Event::new(process, kind, F::Produce).queue(queue).node(node).error(describe(&status)));
                endpoints.next();
                kind == Type::Fail
            }
        }
    }
}

pub async fn consume(
    consumer: usize,
    queue: String,
    nodes: Vec<(u64, Client)>,
    options: WorkloadOptions,
    history: History,
    control: Arc<Control>,
) {
    let process = format!("consumer-{consumer}");
    let mut endpoints = Endpoints::new(&nodes, consumer + 1);
    let mut rng = StdRng::seed_from_u64(options.seed.wrapping_add(1000 + consumer as u64));
    while !control.stop_consuming.load(Ordering::Relaxed) {
        let (node, client) = endpoints.current();
        history.record(Event::new(&process, Type::Invoke, F::Consume).queue(&queue).node(node));
        let request = ConsumeRequest {
            queue: queue.clone(),
            max_messages: CONSUME_MAX,
            wait_time_ms: CONSUME_WAIT_MS,
            visibility_timeout_ms: VISIBILITY_TIMEOUT_MS,
            ..Default::default()
        };
        let timeout = CALL_TIMEOUT + Duration::from_millis(CONSUME_WAIT_MS);
        let result = bounded(client.messages.clone().consume(request_with_timeout(request, timeout))).await;
        let delivered = match result {
            Ok(response) => response.messages,
            Err(status) => {
                history.record(
                    Event::new(&process, completion(&status), F::Consume)
                        .queue(&queue)
                        .node(node)
                        .error(describe(&status)),
                );
                endpoints.next();
                tokio::time::sleep(PAUSE_AFTER_ERROR).await;
                continue;
            }
        };
        let messages: Vec<Msg> = delivered
            .iter()
            .map(|m| Msg {
                id: id_of(&m.body),
                offset: Some(m.offset),
                attempt: Some(m.delivery_attempt),
                receipt: Some(m.receipt.clone()),
            })
            .collect();
        history.record(Event::new(&process, Type::Ok, F::Consume).queue(&queue).node(node).messages(messages.clone()));
        let draining = control.draining.load(Ordering::Relaxed);
        let to_ack: Vec<Msg> =
            messages.into_iter().filter(|_| draining || !rng.random_bool(options.skip_ack)).collect();
        if !to_ack.is_empty() {
            ack(&process, &queue, &mut endpoints, to_ack, &history).await;
        }
    }
}

/// Acks `messages`, retrying with the same receipts while the outcome is
/// unknown, for up to [`ACK_RETRY_FOR`].
async fn ack(process: &str, queue: &str, endpoints: &mut Endpoints, messages: Vec<Msg>, history: &History) {
    let receipts: Vec<String> = messages.iter().filter_map(|m| m.receipt.clone()).collect();
    let started = tokio::time::Instant::now();
    loop {
        let (node, client) = endpoints.current();
        history.record(Event::new(process, Type::Invoke, F::Ack).queue(queue).node(node).messages(messages.clone()));
        let request = AckRequest { queue: queue.to_string(), receipts: receipts.clone() };
        match bounded(client.messages.clone().ack(request_with_timeout(request, CALL_TIMEOUT))).await {
            Ok(settled) => {
                let mut event = Event::new(process, Type::Ok, F::Ack).queue(queue).node(node);
                event.failed = settled.failed.into_iter().map(|f| f.receipt).collect();
                history.record(event);
                return;
            }
            Err(status) => {
                let kind = completion(&status);
                history.record(Event::new(process, kind, F::Ack).queue(queue).node(node).error(describe(&status)));
                endpoints.next();
                if kind == Type::Fail || started.elapsed() > ACK_RETRY_FOR {
                    return;
                }
                tokio::time::sleep(PAUSE_AFTER_ERROR).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_names_its_message_only_when_whole() {
        let body = body_of("p1-42");
        assert_eq!(body.len(), BODY_BYTES);
        assert_eq!(id_of(&body), "p1-42");
        let mut cut = body.clone();
        cut.pop();
        assert_ne!(id_of(&cut), "p1-42", "a shortened body");
        let mut changed = body.clone();
        changed[700] ^= 1;
        assert_ne!(id_of(&changed), "p1-42", "a changed byte");
        let mut other = body_of("p1-43");
        other[..5].copy_from_slice(b"p1-42");
        assert_ne!(id_of(&other), "p1-42", "another message's filler");
    }
}
