//! Messages as produced and as stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Offset, TimestampMs};

/// A message as a producer hands it over, before it has an offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NewMessage {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl NewMessage {
    /// Bytes counted against `max_message_bytes`: body plus header keys and values.
    pub fn size_bytes(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.body.len() + headers) as u64
    }
}

/// A committed message: immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub offset: Offset,
    /// The leader's clock when the produce was proposed.
    pub publish_time: TimestampMs,
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}
