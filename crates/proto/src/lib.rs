//! Generated gRPC code for `proto/`: the public API (`raftmq.v1`) and the
//! node-to-node transport (`raftmq.internal.v1`).
//!
//! Only `raftmq-proto`, `raftmq-server` and `raftmq-client` see prost types;
//! conversions to domain types live with their users.

pub mod codec;

pub mod v1 {
    tonic::include_proto!("raftmq.v1");
}

pub mod internal {
    tonic::include_proto!("raftmq.internal.v1");
}

/// HTTP/2 flow-control windows of every raftmq connection: client, server
/// and peer. The protocol's default of 64 KiB is less than one produce of
/// 64 × 1 KiB messages, so concurrent calls would take turns waiting for
/// window updates.
pub const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// The largest HTTP/2 frame every raftmq connection accepts (client, server
/// and peer), instead of the protocol's default of 16 KiB. A sender cuts each
/// message into frames of at most the receiver's size and writes each frame
/// to the socket on its own: a 64 KiB body was five writes and as many
/// wake-ups of the reader, an AppendEntries of 64 of them some 260.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// The encoded descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftmq_descriptor");
