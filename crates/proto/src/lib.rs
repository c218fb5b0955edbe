//! Generated gRPC code for `proto/`: the public API (`raftmq.v1`) and the
//! node-to-node transport (`raftmq.internal.v1`).
//!
//! Only `raftmq-proto`, `raftmq-server` and `raftmq-client` see prost types;
//! conversions to domain types live with their users.

pub mod v1 {
    tonic::include_proto!("raftmq.v1");
}

pub mod internal {
    tonic::include_proto!("raftmq.internal.v1");
}

/// The encoded descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftmq_descriptor");
