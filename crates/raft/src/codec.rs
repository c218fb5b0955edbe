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

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use raftmq_storage::Storage;
    use raftmq_types::{GroupId, NewMessage, QueueCommand, QueueRequest, RaftRequest, TimestampMs};

    use super::*;

    fn produce(index: u64, bodies: &[&'static str]) -> Entry {
        let messages = bodies
            .iter()
            .map(|b| NewMessage { body: Bytes::from_static(b.as_bytes()), ..Default::default() })
            .collect();
        let command = QueueCommand::Produce { messages, dedup_window_ms: 0, limits: Default::default() };
        let request = RaftRequest::Queue(QueueRequest { now: TimestampMs(index), command });
        Entry::new(openraft::testing::log_id::<TypeConfig>(1, 1, index), EntryPayload::Normal(request))
    }

    fn request(entries: Vec<Entry>) -> AppendRequest {
        AppendRequest {
            vote: openraft::alias::VoteOf::<TypeConfig>::new(1, 1),
            prev_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 4)),
            entries,
            leader_commit: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 3)),
        }
    }

    fn bodies(entry: &Entry) -> Vec<Bytes> {
        match &entry.payload {
            EntryPayload::Normal(RaftRequest::Queue(QueueRequest {
                command: QueueCommand::Produce { messages, .. },
                ..
            })) => messages.iter().map(|m| m.body.clone()).collect(),
            other => panic!("not a produce: {other:?}"),
        }
    }

    #[test]
    fn an_append_request_goes_with_its_entries_beside_it_and_comes_back_whole() {
        let dir = tempfile::TempDir::new().unwrap();
        let storage = Storage::open(&dir.path().join("db")).unwrap();
        let sent = request(vec![produce(5, &["a", "bb"]), produce(6, &["ccc"])]);
        let (payload, entries) = encode_append(sent.clone(), None).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], Bytes::from(postcard::to_stdvec(&sent.entries[0]).unwrap()));
        let received = decode_append(&payload.into(), &entries, &storage.encoded_entries(GroupId(9))).unwrap();
        assert_eq!(
            (received.vote, received.prev_log_id, received.leader_commit),
            (sent.vote, sent.prev_log_id, sent.leader_commit)
        );
        assert_eq!(received.entries, sent.entries);
        // The bodies are slices of the bytes received, not copies.
        for (entry, encoded) in received.entries.iter().zip(&entries) {
            for body in bodies(entry) {
                let (start, at) = (encoded.as_ptr() as usize, body.as_ptr() as usize);
                assert!(start <= at && at + body.len() <= start + encoded.len());
            }
        }
    }

    #[test]
    fn a_malformed_append_request_is_an_error() {
        let dir = tempfile::TempDir::new().unwrap();
        let storage = Storage::open(&dir.path().join("db")).unwrap();
        let log = storage.encoded_entries(GroupId(9));
        let sent = request(vec![produce(5, &["a"])]);
        let (payload, entries) = encode_append(sent.clone(), None).unwrap();
        let payload = Bytes::from(payload);
        // Entries inside the request and beside it.
        let whole = Bytes::from(encode("append request", &sent).unwrap());
        assert!(matches!(decode_append(&whole, &entries, &log), Err(CodecError::Malformed(_))));
        // Bytes that are no entry, and no request.
        let garbage = Bytes::from_static(&[0xff; 3]);
        assert!(matches!(decode_append(&payload, &[garbage], &log), Err(CodecError::Decode { .. })));
        assert!(matches!(
            decode_append(&Bytes::from_static(&[0xff; 2]), &entries, &log),
            Err(CodecError::Decode { .. })
        ));
    }
}
