//! Raft for raftmq: the group manager (the meta group plus one openraft group
//! per queue), the node-to-node transport that carries every group's RPCs over
//! one channel per peer, the node heartbeats that let idle groups stop their
//! timers ([`quiesce`]), and the codec for openraft's messages.
//!
//! The storage crate supplies the log stores and state machines; the server
//! crate builds on [`GroupManager`] to route client calls to group leaders.

pub mod codec;
pub mod groups;
pub mod network;
pub mod peers;
pub mod quiesce;
pub mod transport;

pub use groups::{GroupError, GroupManager, MetaRaft, QueueGroup, QueueRaft, RaftTiming};
pub use peers::PeerChannels;
pub use transport::TransportService;
