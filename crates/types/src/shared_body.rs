//! Message bodies decoded as slices of the buffer they are decoded from.
//!
//! A follower receives each log entry inside one buffer (the leader's
//! AppendEntries request), and a log entry read back from RocksDB arrives in
//! one buffer too. Decoded the usual way, every body in them would be copied
//! out into an allocation of its own; decoded inside [`decode_sharing`], a
//! body that lies within the buffer is a reference-counted slice of it
//! instead. The encoding is the same either way (a postcard byte string), so
//! nothing on disk or on the wire changes.
//!
//! The buffer lives as long as any body sliced from it: hand this only
//! buffers whose bodies are dropped about when the buffer would be (a log
//! entry's, until it is applied and its bodies written to RocksDB).

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::{Deserializer, Serializer, de};

thread_local! {
    /// The buffer being decoded by [`decode_sharing`] on this thread, if any.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` on `source`'s bytes; bodies decoded in it that lie within
/// `source` share its memory instead of being copied. Decoding is
/// synchronous, so the buffer is known exactly while `decode` runs (and is
/// forgotten again, on a panic too, when it returns).
pub fn decode_sharing<T>(source: &Bytes, decode: impl FnOnce(&[u8]) -> T) -> T {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SOURCE.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(SOURCE.with(|s| s.replace(Some(source.clone()))));
    decode(source)
}

/// `source`'s slice that is `v`, if `v` lies within the buffer being decoded.
fn shared(v: &[u8]) -> Option<Bytes> {
    SOURCE.with(|s| {
        let source = s.borrow();
        let source = source.as_ref()?;
        let (start, end) = (source.as_ptr() as usize, source.as_ptr() as usize + source.len());
        let (v_start, v_end) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
        (!v.is_empty() && start <= v_start && v_end <= end).then(|| source.slice_ref(v))
    })
}

/// `#[serde(with = "crate::shared_body")]`: encodes a body as `Bytes` does,
/// and decodes it as a slice of the buffer being decoded where it can.
pub fn serialize<S: Serializer>(body: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(body)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    // `deserialize_bytes`, not `_byte_buf`: postcard hands a borrowed slice
    // of its input only to the former.
    deserializer.deserialize_bytes(BodyVisitor)
}

struct BodyVisitor;

impl<'de> de::Visitor<'de> for BodyVisitor {
    type Value = Bytes;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(shared(v).unwrap_or_else(|| Bytes::copy_from_slice(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut body = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element()? {
            body.push(byte);
        }
        Ok(Bytes::from(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewMessage, Offset, StoredMessage, TimestampMs};

    fn within(body: &Bytes, buffer: &Bytes) -> bool {
        let start = buffer.as_ptr() as usize;
        let at = body.as_ptr() as usize;
        start <= at && at + body.len() <= start + buffer.len()
    }

    fn messages() -> Vec<NewMessage> {
        (0..3u8).map(|i| NewMessage { body: vec![i; 1000 + usize::from(i)].into(), ..Default::default() }).collect()
    }

    #[test]
    fn bodies_decoded_inside_share_the_buffer() {
        let buffer = Bytes::from(postcard::to_stdvec(&messages()).unwrap());
        let decoded: Vec<NewMessage> = decode_sharing(&buffer, |b| postcard::from_bytes(b)).unwrap();
        assert_eq!(decoded, messages());
        for message in &decoded {
            assert!(within(&message.body, &buffer), "a body was copied out of the buffer");
        }
    }

    #[test]
    fn bodies_decoded_outside_are_copies() {
        let buffer = Bytes::from(postcard::to_stdvec(&messages()).unwrap());
        let decoded: Vec<NewMessage> = postcard::from_bytes(&buffer).unwrap();
        assert_eq!(decoded, messages());
        assert!(decoded.iter().all(|m| !within(&m.body, &buffer)));
        // After a sharing decode the buffer is forgotten again.
        let _: Vec<NewMessage> = decode_sharing(&buffer, |b| postcard::from_bytes(b)).unwrap();
        let decoded: Vec<NewMessage> = postcard::from_bytes(&buffer).unwrap();
        assert!(decoded.iter().all(|m| !within(&m.body, &buffer)));
    }

    #[test]
    fn a_body_from_another_buffer_is_copied() {
        let source = Bytes::from(postcard::to_stdvec(&messages()).unwrap());
        let other = postcard::to_stdvec(&messages()).unwrap();
        let decoded: Vec<NewMessage> = decode_sharing(&source, |_| postcard::from_bytes(&other)).unwrap();
        assert_eq!(decoded, messages());
        assert!(decoded.iter().all(|m| !within(&m.body, &source)));
    }

    #[test]
    fn nested_decodes_restore_the_outer_buffer() {
        let outer = Bytes::from(postcard::to_stdvec(&messages()).unwrap());
        let inner = Bytes::from(postcard::to_stdvec(&messages()).unwrap());
        let decoded: Vec<NewMessage> = decode_sharing(&outer, |b| {
            let _: Vec<NewMessage> = decode_sharing(&inner, |i| postcard::from_bytes(i)).unwrap();
            postcard::from_bytes(b)
        })
        .unwrap();
        assert!(decoded.iter().all(|m| within(&m.body, &outer)));
    }

    #[test]
    fn stored_messages_and_empty_bodies_decode_too() {
        let stored = StoredMessage {
            offset: Offset(7),
            publish_time: TimestampMs(1),
            body: Bytes::from_static(b"stored body"),
            headers: [("k".to_string(), "v".to_string())].into(),
            correlation_id: Some("c".into()),
        };
        let empty = NewMessage::default();
        let buffer = Bytes::from(postcard::to_stdvec(&(stored.clone(), empty.clone())).unwrap());
        let decoded: (StoredMessage, NewMessage) = decode_sharing(&buffer, |b| postcard::from_bytes(b)).unwrap();
        assert_eq!(decoded, (stored, empty));
        assert!(within(&decoded.0.body, &buffer));
    }
}
