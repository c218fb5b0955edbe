//! What apply asks storage to persist.

use raftmq_types::{Offset, StoredMessage};

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
}
