//! Bounded waiting: poll a condition until a deadline, retry a call while the
//! cluster answers UNAVAILABLE. Tests never sleep for a fixed time to let
//! something happen; they poll for it.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::client::is_retryable;

/// Pause between two polls: short enough to measure failover times, long
/// enough not to load a 2-core machine.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Some`, and returns that value. Panics with
/// `what` once `timeout` has passed.
pub async fn poll_until<T>(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Calls `call` until it returns something other than a retryable error (see
/// [`is_retryable`]) or `timeout` passes, and returns the last result.
///
/// Only for calls that are safe to repeat: a produce retried after an error of
/// unknown outcome may be appended twice.
pub async fn retry_unavailable<T>(
    timeout: Duration,
    mut call: impl AsyncFnMut() -> Result<T, Status>,
) -> Result<T, Status> {
    let deadline = Instant::now() + timeout;
    loop {
        match call().await {
            Err(status) if is_retryable(&status) && Instant::now() < deadline => {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            other => return other,
        }
    }
}
