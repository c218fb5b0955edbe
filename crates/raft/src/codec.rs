//! Encoding of openraft's messages for the node-to-node transport.
//!
//! openraft's request and response types are serde types; postcard turns them
//! into compact bytes carried in `RaftMessage.payload`. Decoding failures are
//! errors, never panics: the bytes come from the network.

use bytes::Bytes;
use openraft::entry::RaftEntry;
use openraft::raft::AppendEntriesRequest;
use raftmq_storage::{EncodedEntries, TypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

type AppendRequest = AppendEntriesRequest<TypeConfig>;
type Entry = openraft::alias::EntryOf<TypeConfig>;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode {what}: {source}")]
    Encode { what: &'static str, source: postcard::Error },
    #[error("decode {what}: {source}")]
    Decode { what: &'static str, source: postcard::Error },
    #[error("{0}")]
    Malformed(&'static str),
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

/// An AppendEntries request as it is sent: the request without its entries,
/// and each entry encoded on its own. An entry the leader's log still holds
/// in memory goes as the bytes its log store wrote (`log`), so it is not
/// encoded again for every follower.
pub fn encode_append(
    mut rpc: AppendRequest,
    log: Option<&EncodedEntries>,
) -> Result<(Vec<u8>, Vec<Bytes>), CodecError> {
    let entries = std::mem::take(&mut rpc.entries)
        .iter()
        .map(|entry| match log.and_then(|log| log.encoded(entry)) {
            Some(encoded) => Ok(encoded),
            None => encode("log entry", entry).map(Bytes::from),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((encode("append request", &rpc)?, entries))
}

/// The request [`encode_append`] made. The entries' bodies are slices of
/// the bytes received, and each entry's bytes are handed to the follower's
/// log store (`log`), which writes them as they are.
pub fn decode_append(payload: &Bytes, entries: &[Bytes], log: &EncodedEntries) -> Result<AppendRequest, CodecError> {
    let mut rpc: AppendRequest = decode_shared("append request", payload)?;
    if !rpc.entries.is_empty() && !entries.is_empty() {
        return Err(CodecError::Malformed("an append request carries entries twice"));
    }
    let decoded =
        entries.iter().map(|bytes| decode_shared::<Entry>("log entry", bytes)).collect::<Result<Vec<_>, _>>()?;
    for (entry, bytes) in decoded.iter().zip(entries) {
        log.received(entry.log_id(), bytes.clone());
    }
    rpc.entries.extend(decoded);
    Ok(rpc)
}
