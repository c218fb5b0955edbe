//! Encoding of openraft's messages for the node-to-node transport.
//!
//! openraft's request and response types are serde types; postcard turns them
//! into compact bytes carried in `RaftMessage.payload`. Decoding failures are
//! errors, never panics: the bytes come from the network.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode {what}: {source}")]
    Encode { what: &'static str, source: postcard::Error },
    #[error("decode {what}: {source}")]
    Decode { what: &'static str, source: postcard::Error },
}

pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    raftmq_storage::to_vec_sized(value).map_err(|source| CodecError::Encode { what, source })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|source| CodecError::Decode { what, source })
}

/// [`decode`], with the message bodies in `bytes` shared rather than copied
/// (`raftmq_types::shared_body`): for AppendEntries, whose entries a follower
/// keeps only until it has applied them.
pub fn decode_shared<T: DeserializeOwned>(what: &'static str, bytes: &bytes::Bytes) -> Result<T, CodecError> {
    raftmq_types::shared_body::decode_sharing(bytes, |bytes| decode(what, bytes))
}
