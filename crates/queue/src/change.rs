//! What apply asks storage to persist.

use raftmq_types::{Offset, StoredMessage, TimestampMs};

use crate::DeliveryState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new message body, written once at produce.
    PutMessage(StoredMessage),
    /// Create or overwrite the delivery record of a message.
    PutDelivery { offset: Offset, state: DeliveryState },
    /// Drop a message's body and delivery record.
    DeleteMessage(Offset),
    /// Drop every body and delivery record of the queue (purge).
    DeleteAllMessages,
    /// The next offset to assign.
    PutNextOffset(Offset),
    /// Remember a producer's dedup id, stored at `offset`, until `expires_at`.
    PutDedup { offset: Offset, id: String, expires_at: TimestampMs },
    /// Forget the dedup id of the message stored at `offset`.
    DeleteDedup { offset: Offset },
}
