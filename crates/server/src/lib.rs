//! The raftmq node: configuration, the gRPC services, and [`run`].
//!
//! `run` opens the node's RocksDB, starts the group manager (meta group plus
//! the queue groups the catalog assigns here), and serves on one port: the
//! public `raftmq.v1` services, the internal Raft transport, the standard
//! health service and server reflection. Handlers are thin: validation and
//! routing live in [`routing`], replicated logic in the queue crate.

pub mod clock;
pub mod config;
pub mod convert;
pub mod dead_letters;
pub mod error;
pub mod grpc;
pub mod lease_claims;
pub mod routing;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use openraft::BasicNode;
use raftmq_proto::internal::raft_transport_server::RaftTransportServer;
use raftmq_proto::v1::cluster_service_server::ClusterServiceServer;
use raftmq_proto::v1::message_service_server::MessageServiceServer;
use raftmq_proto::v1::queue_service_server::QueueServiceServer;
use raftmq_raft::{GroupManager, PeerChannels, RaftTiming, TransportService};
use tracing::info;

use crate::config::ServerConfig;
use crate::dead_letters::Tender;
use crate::grpc::cluster_service::ClusterServiceImpl;
use crate::grpc::message_service::MessageServiceImpl;
use crate::grpc::queue_service::QueueServiceImpl;
use crate::routing::Router;

/// Large enough for a full batch of maximum-size messages; the per-message
/// limit is enforced by the handlers with a clear message.
const MAX_GRPC_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Runs a node until `shutdown` resolves.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("bind listen_addr {}", config.listen_addr))?;
    run_with_listener(config, listener, shutdown).await
}

/// Like [`run`], on a listener the caller bound (tests bind port 0).
pub async fn run_with_listener(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data_dir {}", config.data_dir.display()))?;
    let storage = raftmq_storage::Storage::open_near_memtable_budget(
        &config.data_dir.join("db"),
        config.storage.memtable_budget_bytes(),
    )
    .with_context(|| format!("open database in {}", config.data_dir.display()))?;
    let initial_members: BTreeMap<u64, BasicNode> =
        config.peers.iter().map(|p| (p.id, BasicNode::new(p.addr.clone()))).collect();
    let timing = RaftTiming {
        heartbeat_interval_ms: config.raft.heartbeat_interval_ms,
        election_timeout_min_ms: config.raft.election_timeout_min_ms,
        election_timeout_max_ms: config.raft.election_timeout_max_ms,
        quiet_idle_groups: config.raft.quiet_idle_groups,
    };
    let groups = GroupManager::start(config.node_id, storage.clone(), initial_members, timing, PeerChannels::default())
        .await
        .context("start raft groups")?;
    let router = Arc::new(Router::new(groups.clone()));
    let messages = Arc::new(MessageServiceImpl::new(router.clone()));
    let tender = tokio::spawn(Tender::new(router.clone(), messages.clone()).run());
    let idle_flush = tokio::spawn(raftmq_storage::flush_while_idle(storage.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MessageServiceServer<MessageServiceImpl>>().await;
    health_reporter.set_serving::<QueueServiceServer<QueueServiceImpl>>().await;
    health_reporter.set_serving::<ClusterServiceServer<ClusterServiceImpl>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(raftmq_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build reflection service")?;

    let local_addr = listener.local_addr().context("read listener address")?;
    info!(node_id = config.node_id, addr = %local_addr, data_dir = %config.data_dir.display(), "raftmq node serving");
    // The builder's tcp_nodelay applies only to listeners tonic binds itself;
    // these connections are accepted here, so Nagle is turned off here.
    // Without it a small answer waits for the peer's delayed ACK (~40 ms).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |stream| {
        if let Ok(stream) = &stream
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::warn!(error = %e, "could not turn off Nagle's algorithm on a connection");
        }
        stream
    });
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(raftmq_proto::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(raftmq_proto::HTTP2_CONNECTION_WINDOW)
        .max_frame_size(raftmq_proto::HTTP2_MAX_FRAME_SIZE)
        // A peer holds a replication stream open per group it leads and
        // this node follows: the bound is stated, far above that.
        .max_concurrent_streams(raftmq_raft::peers::MAX_STREAMS_PER_CONNECTION)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            MessageServiceServer::from_arc(messages.clone())
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        )
        .add_service(QueueServiceServer::new(QueueServiceImpl::new(router.clone(), messages.clone())))
        .add_service(ClusterServiceServer::new(ClusterServiceImpl::new(router.clone())))
        .add_service(
            RaftTransportServer::new(TransportService::new(groups.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        )
        // The peers' replication streams end as soon as shutdown starts;
        // the graceful drain would wait for them otherwise.
        .serve_with_incoming_shutdown(incoming, groups.peers().end_streams_on(shutdown))
        .await
        .context("serve grpc")?;
    tender.abort();
    idle_flush.abort();
    info!(node_id = config.node_id, "shutting down raft groups");
    groups.shutdown().await;
    // How well appends shared fsyncs over this run (group commit at work).
    info!(
        wal_syncs = storage.syncer().sync_count(),
        wal_sync_requests = storage.syncer().request_count(),
        "write-ahead log fsync totals"
    );
    Ok(())
}
