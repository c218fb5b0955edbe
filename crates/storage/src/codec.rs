//! Postcard encoding into a vector allocated once: what the storage crate
//! stores and what the Raft transport sends are encoded with it.

/// `postcard::to_stdvec`, into a vector allocated once at the encoding's
/// exact size. `to_stdvec` grows its vector by doubling, which copies a
/// large value (a Raft entry of 64 KiB bodies) about once more and touches
/// fresh pages at each step; measuring the size first walks the value
/// without copying any body.
pub fn to_vec_sized<T: serde::Serialize + ?Sized>(value: &T) -> postcard::Result<Vec<u8>> {
    let size = postcard::experimental::serialized_size(value)?;
    postcard::serialize_with_flavor(value, SizedVec(Vec::with_capacity(size)))
}

/// A postcard output that appends to a vector (what `to_stdvec` uses, minus
/// its empty start: postcard's own flavor cannot be given a capacity).
struct SizedVec(Vec<u8>);

impl postcard::ser_flavors::Flavor for SizedVec {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use raftmq_types::{NewMessage, QueueCommand, QueueRequest, RaftRequest, TimestampMs};

    use super::*;

    /// The same bytes as `to_stdvec`, in one allocation of exactly that size.
    #[test]
    fn sized_encoding_matches_postcard_and_allocates_once() {
        let messages = (0..8)
            .map(|i| NewMessage {
                body: vec![i as u8; 65_536 + i].into(),
                headers: [("k".to_string(), "v".repeat(i))].into(),
                dedup_id: (i % 2 == 0).then(|| format!("id-{i}")),
                ..Default::default()
            })
            .collect();
        let command = QueueCommand::Produce { messages, dedup_window_ms: 1000, limits: Default::default() };
        let request = RaftRequest::Queue(QueueRequest { now: TimestampMs(7), command });
        let sized = to_vec_sized(&request).unwrap();
        assert_eq!(sized, postcard::to_stdvec(&request).unwrap());
        assert_eq!(sized.capacity(), sized.len());
    }
}
