//! One HTTP/2 channel per peer, shared by every Raft group and by forwarded
//! client calls; and the node's signal that it is shutting down, which ends
//! the peers' long-lived replication streams into this node.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::{HTTP2_CONNECTION_WINDOW, HTTP2_MAX_FRAME_SIZE, HTTP2_STREAM_WINDOW};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// The HTTP/2 streams one connection may carry at once (the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS). A peer holds one replication stream
/// open per group it leads and this node follows, idle between writes: up to
/// about a thousand per node pair, plus heartbeats, votes and forwarded client
/// calls. A client past the limit does not fail: it waits for a stream to
/// close, so every call on the connection would wait behind the idle streams.
/// hyper's own default is 200; tonic's builder passes "no limit" instead, and
/// this states the bound on purpose, far above what a peer needs.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 65_536;

/// Lazily connected channels keyed by peer address. tonic multiplexes all
/// calls of all groups over the one connection and reconnects on its own.
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Set once the node starts shutting down. The peers' replication
    /// streams into this node stay open as long as their leaders replicate,
    /// and the gRPC server's graceful shutdown waits for every stream to end:
    /// the transport ends them on this signal ([`Self::end_streams_on`]).
    shutting_down: Arc<watch::Sender<bool>>,
}

impl Default for PeerChannels {
    fn default() -> Self {
        PeerChannels { channels: Default::default(), shutting_down: Arc::new(watch::Sender::new(false)) }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid peer address {addr:?}: {source}")]
pub struct BadPeerAddress {
    pub addr: String,
    source: tonic::transport::Error,
}

impl PeerChannels {
    pub fn channel(&self, addr: &str) -> Result<Channel, BadPeerAddress> {
        let mut channels = self.channels.lock().expect("peer channel map lock poisoned");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        // No concurrency limit on the channel: replication streams are
        // long-lived and would hold its slots (see MAX_STREAMS_PER_CONNECTION).
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|source| BadPeerAddress { addr: addr.to_string(), source })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            // AppendEntries carry whole batches of messages: HTTP/2's
            // default 64 KiB windows would make each wait for window updates.
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_frame_size(HTTP2_MAX_FRAME_SIZE)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// `shutdown`, made to end the peers' replication streams into this node
    /// as soon as it resolves: give the result to the gRPC server as its
    /// shutdown signal, so that its graceful drain does not wait for them.
    pub fn end_streams_on<F: Future<Output = ()>>(&self, shutdown: F) -> impl Future<Output = ()> + use<F> {
        let shutting_down = self.shutting_down.clone();
        async move {
            shutdown.await;
            shutting_down.send_replace(true);
        }
    }

    /// Resolves once the node starts shutting down.
    pub(crate) fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutting_down = self.shutting_down.subscribe();
        async move {
            // An error means the sender is gone with the node: end too.
            let _ = shutting_down.wait_for(|shutting_down| *shutting_down).await;
        }
    }
}
