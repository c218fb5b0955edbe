//! The gRPC codec of every raftmq service, clients and servers alike:
//! prost's, except that each message's whole encoded length is reserved in
//! the send buffer before the message is encoded into it.
//!
//! tonic's buffer starts at 8 KiB, and prost's encoder reserves nothing: a
//! Consume answer of 256 bodies of 64 KiB (16 MiB) grew the buffer by
//! doubling, copying everything encoded so far at each step and faulting in
//! fresh pages: about 5% of the servers' CPU samples at 64 KiB, and 7% less
//! server CPU per message with the length reserved (docs/performance.md,
//! fourteenth session).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};

/// [`tonic_prost::ProstCodec`] with a sized send buffer (see the module).
#[derive(Debug, Clone, Copy)]
pub struct SizedProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SizedProstCodec<T, U> {
    fn default() -> Self {
        SizedProstCodec(PhantomData)
    }
}

impl<T, U> Codec for SizedProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedProstEncoder<T>;
    type Decoder = <tonic_prost::ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        SizedProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        // Decoding already reserves each message's length, read from its header.
        tonic_prost::ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// Encodes a message into room reserved for all of it.
#[derive(Debug, Clone, Copy)]
pub struct SizedProstEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedProstEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| Status::internal(format!("encode a message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
