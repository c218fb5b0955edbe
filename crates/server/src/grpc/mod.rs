//! The public gRPC services. Thin adapters: validate, route, convert.

pub mod cluster_service;
pub mod message_service;
pub mod queue_service;
pub mod request_reply;
pub mod stream_consume;
