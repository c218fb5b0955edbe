//! The replicated commands and their outputs: what goes into the Raft log and
//! what apply returns to the proposer.
//!
//! One Raft type configuration serves the meta group and every queue group, so
//! a log entry carries a [`RaftRequest`] that is either a meta or a queue
//! command. Every time-dependent command carries the leader's clock in
//! `now`; apply never reads a clock of its own.

use serde::{Deserialize, Serialize};

use crate::{
    GroupId, NewMessage, NodeId, Offset, QueueConfig, QueueConfigUpdate, QueueName, Receipt, SubscriptionId,
    SubscriptionName, TimestampMs,
};

/// The application data of a Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRequest {
    Meta(MetaCommand),
    Queue(QueueRequest),
}

/// What apply returns for an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RaftResponse {
    /// Blank and membership entries, and commands sent to the wrong kind of group.
    #[default]
    Empty,
    Meta(MetaResponse),
    Queue(QueueResponse),
}

/// Changes to the cluster catalog, applied by the meta group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create a queue on the given replicas; the meta state machine assigns its group id.
    CreateQueue {
        name: QueueName,
        config: QueueConfig,
        replicas: Vec<NodeId>,
        now: TimestampMs,
    },
    DeleteQueue {
        name: QueueName,
    },
    /// Change some settings of a queue; applied only if the result is valid.
    UpdateQueue {
        name: QueueName,
        update: QueueConfigUpdate,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    QueueCreated {
        group_id: GroupId,
    },
    QueueAlreadyExists {
        group_id: GroupId,
    },
    QueueDeleted {
        group_id: GroupId,
    },
    QueueNotFound,
    QueueUpdated {
        group_id: GroupId,
    },
    /// The create or update would make the config invalid; nothing changed.
    ConfigRejected {
        reason: String,
    },
    /// The queue cannot be deleted: it is the dead-letter queue of `used_by`.
    QueueInUse {
        used_by: QueueName,
    },
}

/// A command for one queue group, stamped with the proposing leader's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRequest {
    pub now: TimestampMs,
    pub command: QueueCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueCommand {
    /// Append a batch; offsets are assigned in order at apply. A message whose
    /// `dedup_id` was produced less than `dedup_window_ms` ago (the queue's
    /// window, stamped by the leader) is not appended again.
    /// A batch that would take the queue past `limits` is not stored at all.
    Produce { messages: Vec<NewMessage>, dedup_window_ms: u64, limits: QueueLimits },
    /// Lease up to `max_messages` available messages, and no more than
    /// `max_bytes` of them (0: no byte limit; the first message is leased
    /// whatever its size), until `now + visibility_timeout_ms`.
    /// One command per consume call, however many messages it leases. Due
    /// expiries and exhausted messages are handled first, as by `Sweep`.
    /// With `correlation_id`, only an available message carrying that id is
    /// leased (at most one): how a requester takes its reply.
    Lease {
        subscription: SubscriptionName,
        max_messages: u32,
        max_bytes: u64,
        visibility_timeout_ms: u64,
        policy: DeliveryPolicy,
        correlation_id: Option<String>,
    },
    /// Settle receipts: their subscriptions are done with the messages. A
    /// message no subscription holds any more is kept as `retention` says,
    /// then deleted.
    Ack { receipts: Vec<Receipt>, retention: Retention },
    /// Give messages back, visible again after `delay_ms`, or after the
    /// policy's backoff when `None`. A message out of deliveries dies instead.
    Nack { receipts: Vec<Receipt>, delay_ms: Option<u64>, policy: DeliveryPolicy },
    /// Push lease deadlines to `now + visibility_timeout_ms`.
    ExtendLease { receipts: Vec<Receipt>, visibility_timeout_ms: u64 },
    /// Drop every message of every subscription, leased or not, and every
    /// retained message. The subscriptions stay.
    Purge,
    /// Proposed by the leader when `QueueState::needs_sweep` says so: expires
    /// messages whose time to live ran out, kills those whose last lease
    /// ran out with no deliveries left, and deletes retained messages that
    /// retention no longer keeps.
    Sweep { policy: DeliveryPolicy },
    /// The given dead messages of `subscription` are committed in the
    /// dead-letter queue: the subscription is done with them. Offsets that
    /// are not dead (any more) are left alone.
    RemoveDead { subscription: SubscriptionId, offsets: Vec<Offset>, retention: Retention },
    /// A new subscription that receives every message from `start` on.
    CreateSubscription { name: SubscriptionName, start: SubscriptionStart },
    /// The subscription and its delivery state go; messages only it held are
    /// kept as `retention` says. `default` cannot be deleted.
    DeleteSubscription { name: SubscriptionName, retention: Retention },
    /// Replay: the subscription holds, as never delivered, every stored
    /// message at or after `target`, and is done with every earlier one.
    /// Outstanding leases of the subscription end.
    Seek { subscription: SubscriptionName, target: SeekTarget, retention: Retention },
    /// Several commands in one entry, applied in order as if each were its
    /// own entry, with the same `now`: a consume that acks what the consumer
    /// received before and leases the next messages ([`QueueCommand::Ack`]
    /// then [`QueueCommand::Lease`]) costs one replication and fsync, not two.
    Batch(Vec<QueueCommand>),
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionStart {
    /// With every message the queue still stores (retained ones included).
    Earliest,
    /// With the next message produced.
    Latest,
}

/// Where a seek moves a subscription to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeekTarget {
    /// The message at this offset and every later one.
    Offset(Offset),
    /// Every message published at or after this time.
    Time(TimestampMs),
}

/// How long a queue keeps messages that every subscription is done with (for
/// seeking back and for subscriptions created at `Earliest`), stamped by the
/// leader into every command that can release a message. Off when both are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Retention {
    /// Kept until this long after their publish time; 0 is no age limit.
    pub max_age_ms: u64,
    /// The oldest are deleted while the retained bytes exceed this; 0 is no
    /// byte limit.
    pub max_bytes: u64,
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.max_age_ms == 0 && self.max_bytes == 0
    }
}

/// The redelivery rules of a queue, stamped into commands by the leader so
/// that every replica applies the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeliveryPolicy {
    /// 0 is no limit.
    pub max_deliveries: u32,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Chosen at random by the leader per command; each backoff's jitter is
    /// derived from it and the message's offset.
    pub jitter_seed: u64,
    /// Dead messages are kept for the dead-letter queue; otherwise dropped.
    pub dead_letter: bool,
    /// Expired messages die (and are dead-lettered) rather than being dropped.
    pub dead_letter_expired: bool,
    pub retention: Retention,
}

/// Why a message died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadReason {
    /// It was delivered `max_deliveries` times without an ack.
    MaxDeliveries,
    /// Its time to live ran out.
    Expired,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxDeliveries => "max_deliveries",
            DeadReason::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueResponse {
    /// One entry per produced message, in order: its offset, and whether it
    /// was a duplicate (then the offset is the original's).
    Produced {
        offsets: Vec<(Offset, bool)>,
    },
    /// Leased messages in offset order; bodies are read from storage by the caller.
    Leased {
        messages: Vec<DeliveredMessage>,
    },
    /// Result of Ack, Nack or ExtendLease: receipts not listed in `failures` took effect.
    Settled {
        succeeded: u32,
        failures: Vec<ReceiptFailure>,
    },
    Purged {
        removed: u64,
    },
    /// Result of Sweep: messages moved to the dead set and messages deleted.
    Swept {
        died: u64,
        dropped: u64,
    },
    /// Result of RemoveDead.
    RemovedDead {
        removed: u64,
    },
    SubscriptionCreated {
        id: SubscriptionId,
    },
    /// A subscription of that name exists already; nothing changed.
    SubscriptionExists {
        id: SubscriptionId,
    },
    SubscriptionDeleted {
        id: SubscriptionId,
    },
    /// Lease, seek or delete named a subscription the queue does not have.
    SubscriptionNotFound,
    /// The queue has `max` subscriptions already.
    TooManySubscriptions {
        max: usize,
    },
    /// `default` cannot be deleted.
    DefaultSubscription,
    /// Result of Seek: how many messages the subscription now holds.
    Sought {
        pending: u64,
    },
    /// The produce stored nothing: its new messages would take the queue past
    /// `limit`. `depth` and `bytes` are what the queue held.
    Full {
        limit: QueueLimit,
        depth: u64,
        bytes: u64,
    },
    /// Result of Batch: one response per command, in order.
    Batch(Vec<QueueResponse>),
}

/// A queue's size limits, as of the produce; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QueueLimits {
    pub max_messages: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueLimit {
    MaxMessages(u64),
    MaxBytes(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredMessage {
    pub offset: Offset,
    pub receipt: Receipt,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub delivery_attempt: u32,
    /// When the lease ends unless extended.
    pub lease_deadline: TimestampMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFailure {
    pub receipt: Receipt,
    pub reason: ReceiptFailureReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptFailureReason {
    /// No such message in the receipt's subscription: it was acked, purged,
    /// sought past, the subscription was deleted, or it never existed.
    MessageGone,
    /// The lease this receipt names has ended (expired, nacked, or the
    /// message was delivered again under a newer lease).
    LeaseGone,
}

/// Log lines show what an entry does without its payload (bodies can be large).
impl std::fmt::Display for RaftRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftRequest::Meta(MetaCommand::CreateQueue { name, replicas, .. }) => {
                write!(f, "create queue {name} on {replicas:?}")
            }
            RaftRequest::Meta(MetaCommand::DeleteQueue { name }) => write!(f, "delete queue {name}"),
            RaftRequest::Meta(MetaCommand::UpdateQueue { name, update }) => {
                write!(f, "update queue {name}: {update:?}")
            }
            RaftRequest::Queue(QueueRequest { now, command }) => fmt_queue_command(f, now, command),
        }
    }
}

fn fmt_queue_command(f: &mut std::fmt::Formatter<'_>, now: &TimestampMs, command: &QueueCommand) -> std::fmt::Result {
    match command {
        QueueCommand::Produce { messages, .. } => write!(f, "produce {} messages at {now}", messages.len()),
        QueueCommand::Lease { subscription, max_messages, visibility_timeout_ms, .. } => {
            write!(f, "lease up to {max_messages} of {subscription} for {visibility_timeout_ms} ms at {now}")
        }
        QueueCommand::Ack { receipts, .. } => write!(f, "ack {} receipts at {now}", receipts.len()),
        QueueCommand::Nack { receipts, delay_ms, .. } => {
            write!(f, "nack {} receipts, delay {delay_ms:?} ms, at {now}", receipts.len())
        }
        QueueCommand::ExtendLease { receipts, visibility_timeout_ms } => {
            write!(f, "extend {} leases by {visibility_timeout_ms} ms at {now}", receipts.len())
        }
        QueueCommand::Purge => write!(f, "purge at {now}"),
        QueueCommand::Sweep { .. } => write!(f, "sweep at {now}"),
        QueueCommand::RemoveDead { subscription, offsets, .. } => {
            write!(f, "remove {} dead-lettered of {subscription} at {now}", offsets.len())
        }
        QueueCommand::CreateSubscription { name, start } => {
            write!(f, "create subscription {name} at {start:?}, at {now}")
        }
        QueueCommand::DeleteSubscription { name, .. } => write!(f, "delete subscription {name} at {now}"),
        QueueCommand::Seek { subscription, target, .. } => {
            write!(f, "seek {subscription} to {target:?} at {now}")
        }
        QueueCommand::Batch(commands) => {
            write!(f, "{} commands:", commands.len())?;
            for command in commands {
                write!(f, " [")?;
                fmt_queue_command(f, now, command)?;
                write!(f, "]")?;
            }
            Ok(())
        }
    }
}
