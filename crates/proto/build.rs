//! Generates the gRPC code from `proto/` with a vendored protoc, so nothing
//! needs installing by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    // Read at run time, not with env!(): cargo reuses a compiled build script
    // across clones that share a target directory, and env!() would bake in
    // the first clone's path.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "raftmq/v1/queues.proto",
        "raftmq/v1/messages.proto",
        "raftmq/v1/cluster.proto",
        "raftmq/internal/v1/raft.proto",
    ]
    .map(|f| root.join(f));
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("raftmq_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        // prost's codec with each message's length reserved before it is
        // encoded (src/codec.rs).
        .codec_path("crate::codec::SizedProstCodec")
        .bytes(".raftmq.internal.v1.RaftMessage.payload")
        .bytes(".raftmq.internal.v1.RaftMessage.entries")
        // Bodies are shared from the request buffer on, never copied into
        // vectors (raftmq_types::NewMessage::body).
        .bytes(".raftmq.v1.ProduceMessage.body")
        .bytes(".raftmq.v1.Message.body")
        .bytes(".raftmq.v1.PeekedMessage.body")
        .compile_protos(&files, &[root])?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
