//! Request errors of the server and their one mapping to gRPC status codes.

use raftmq_types::{ConfigError, QueueNameError, SubscriptionName};
use tonic::{Code, Status};

/// A request error: something the caller can act on. Fatal errors (storage
/// failure, a stopped Raft node) become `Internal`/`Unavailable` here too, but
/// are logged where they happen.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("queue {0:?} does not exist; create it first or check the name")]
    QueueNotFound(String),
    #[error("queue {0:?} already exists")]
    QueueAlreadyExists(String),
    #[error(
        "queue {queue:?} has no subscription \"{subscription}\"; list them with ListSubscriptions \
         (`raftmq subscription list {queue}`) or create it"
    )]
    SubscriptionNotFound { queue: String, subscription: SubscriptionName },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}; retry later")]
    Unavailable(String),
    /// A produce that would take a queue past `max_messages` or `max_bytes`,
    /// or a subscription past the most a queue may have.
    #[error("{0}")]
    QueueFull(String),
    /// The call conflicts with the cluster's state, e.g. deleting a queue
    /// that is another queue's dead-letter queue.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<QueueNameError> for ApiError {
    fn from(e: QueueNameError) -> Self {
        ApiError::InvalidArgument(format!("name: {e}"))
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        ApiError::InvalidArgument(format!("config: {e}"))
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::QueueNotFound(_) => Code::NotFound,
            ApiError::QueueAlreadyExists(_) | ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::SubscriptionNotFound { .. } => Code::NotFound,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::QueueFull(_) => Code::ResourceExhausted,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
