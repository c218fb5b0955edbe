//! One HTTP/2 channel per peer, shared by every Raft group and by forwarded
//! client calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW};
use tonic::transport::{Channel, Endpoint};

/// Lazily connected channels keyed by peer address. tonic multiplexes all
/// calls of all groups over the one connection and reconnects on its own.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
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
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|source| BadPeerAddress { addr: addr.to_string(), source })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            // AppendEntries carry whole batches of messages: HTTP/2's
            // default 64 KiB windows would make each wait for window updates.
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
