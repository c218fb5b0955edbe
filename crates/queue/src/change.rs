//! What apply asks storage to persist.

use raftmq_types::{Offset, StoredMessage, SubscriptionId, TimestampMs};

use crate::{DeliveryState, MessageInfo, SubscriptionList};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new message: its body, written once at produce, and its info.
    PutMessage { message: StoredMessage, info: MessageInfo },
    /// Create or overwrite a subscription's delivery record of a message.
    PutDelivery { subscription: SubscriptionId, offset: Offset, state: DeliveryState },
    /// The subscription is done with the message.
    DeleteDelivery { subscription: SubscriptionId, offset: Offset },
    /// Drop a message's body, info and correlation id (its delivery records
    /// are gone already). `size` is its info's (body plus headers, so the
    /// body is no longer), and `correlated` whether it has a correlation id:
    /// storage deletes only the records such a message can have.
    DeleteMessage { offset: Offset, size: u64, correlated: bool },
    /// Drop every message of the queue and every delivery record (purge).
    DeleteAllMessages,
    /// Drop every delivery record of one subscription (delete, seek).
    ClearSubscription(SubscriptionId),
    /// The queue's subscriptions changed.
    PutSubscriptions(SubscriptionList),
    /// The next offset to assign.
    PutNextOffset(Offset),
    /// Remember a producer's dedup id, stored at `offset`, until `expires_at`.
    PutDedup { offset: Offset, id: String, expires_at: TimestampMs },
    /// Forget the dedup id of the message stored at `offset`.
    DeleteDedup { offset: Offset },
}
