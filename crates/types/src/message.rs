//! Messages as produced and as stored.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Offset, SubscriptionName, TimestampMs};

/// A message as a producer hands it over, before it has an offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NewMessage {
    /// Shared, not copied, from the gRPC request to the log entry, the log's
    /// memory and apply (a clone is a reference count); on a follower, a
    /// slice of the AppendEntries request it came in (see [`crate::shared_body`]).
    #[serde(with = "crate::shared_body")]
    pub body: Bytes,
    pub headers: BTreeMap<String, String>,
    /// The producer's id for this message: a second message with the same id
    /// within the queue's dedup window is not stored again (see `QueueState`).
    pub dedup_id: Option<String>,
    /// Not delivered before this time (the leader's clock); `None` is at once.
    pub deliver_at: Option<TimestampMs>,
    /// Dropped or dead-lettered at this time (the leader's clock, from the
    /// message's and the queue's time to live); `None` is never.
    pub expires_at: Option<TimestampMs>,
    /// Makes the message findable by a lease for this id (replies).
    pub correlation_id: Option<String>,
    /// Only this subscription receives the message (a redriven dead letter
    /// goes back to the subscription it died in); `None` is every one.
    pub subscription: Option<SubscriptionName>,
}

/// Longest accepted `dedup_id`, in bytes.
pub const MAX_DEDUP_ID_BYTES: usize = 128;
/// Longest accepted `correlation_id`, in bytes.
pub const MAX_CORRELATION_ID_BYTES: usize = 128;

/// Body plus header keys and values, in bytes.
fn size_bytes(body: &Bytes, headers: &BTreeMap<String, String>) -> u64 {
    let headers: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (body.len() + headers) as u64
}

impl NewMessage {
    /// Bytes counted against `max_message_bytes`: body plus header keys and values.
    pub fn size_bytes(&self) -> u64 {
        size_bytes(&self.body, &self.headers)
    }
}

/// A committed message: immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub offset: Offset,
    /// The leader's clock when the produce was proposed.
    pub publish_time: TimestampMs,
    #[serde(with = "crate::shared_body")]
    pub body: Bytes,
    pub headers: BTreeMap<String, String>,
    pub correlation_id: Option<String>,
}

impl StoredMessage {
    /// Body plus header keys and values, in bytes: the size of the message
    /// as it was produced ([`NewMessage::size_bytes`]).
    pub fn size_bytes(&self) -> u64 {
        size_bytes(&self.body, &self.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies as `Bytes` (and before them `serde_bytes`) change how fast
    /// bodies are encoded, not the bytes: postcard writes a sequence of u8
    /// and a byte string the same way, so logs and data written before read
    /// back unchanged.
    #[test]
    fn bodies_encode_as_before() {
        #[derive(Serialize)]
        struct Plain {
            body: Vec<u8>,
        }
        #[derive(Serialize)]
        struct ByteString {
            #[serde(with = "serde_bytes")]
            body: Vec<u8>,
        }
        let body = (0..=255u8).cycle().take(1000).collect::<Vec<u8>>();
        let message = NewMessage { body: body.clone().into(), ..Default::default() };
        let encoded = postcard::to_stdvec(&message).unwrap();
        let plain = postcard::to_stdvec(&Plain { body: body.clone() }).unwrap();
        assert_eq!(&encoded[..plain.len()], plain.as_slice());
        assert_eq!(postcard::to_stdvec(&ByteString { body }).unwrap(), plain);
        assert_eq!(postcard::from_bytes::<NewMessage>(&encoded).unwrap(), message);
    }
}
