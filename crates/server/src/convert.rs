//! Conversions between prost types and domain types.

use raftmq_proto::v1 as pb;
use raftmq_queue::{PeekedMessage, SubscriptionStats};
use raftmq_storage::CatalogQueue;
use raftmq_types::{
    DeliveredMessage, ExpiryAction, NewMessage, QueueConfig, QueueConfigUpdate, QueueName, ReceiptFailure,
    ReceiptFailureReason, StoredMessage, SubscriptionName, TimestampMs,
};

use crate::error::ApiError;

pub fn new_message(message: &pb::ProduceMessage) -> NewMessage {
    NewMessage {
        body: message.body.clone(),
        headers: message.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dedup_id: (!message.dedup_id.is_empty()).then(|| message.dedup_id.clone()),
        // delay_ms is turned into a time by the leader, from its own clock.
        deliver_at: (message.deliver_at_ms > 0).then_some(TimestampMs(message.deliver_at_ms)),
        // Stamped by the leader from the message's and the queue's TTL.
        expires_at: None,
        correlation_id: (!message.correlation_id.is_empty()).then(|| message.correlation_id.clone()),
        // Checked by the produce handler.
        subscription: (!message.subscription.is_empty())
            .then(|| SubscriptionName::new(&message.subscription).ok())
            .flatten(),
    }
}

/// Joins the lease records with the bodies read from storage, by offset.
pub fn delivered(leased: &[DeliveredMessage], bodies: Vec<StoredMessage>) -> Vec<pb::Message> {
    let mut bodies: std::collections::HashMap<u64, StoredMessage> =
        bodies.into_iter().map(|m| (m.offset.0, m)).collect();
    leased
        .iter()
        .filter_map(|lease| {
            let stored = bodies.remove(&lease.offset.0)?;
            Some(pb::Message {
                offset: lease.offset.0,
                body: stored.body,
                headers: stored.headers.into_iter().collect(),
                publish_time_ms: stored.publish_time.0,
                receipt: lease.receipt.to_string(),
                delivery_attempt: lease.delivery_attempt,
                lease_deadline_ms: lease.lease_deadline.0,
                correlation_id: stored.correlation_id.unwrap_or_default(),
            })
        })
        .collect()
}

pub fn settle_response(succeeded: u32, failures: &[ReceiptFailure]) -> pb::SettleResponse {
    pb::SettleResponse {
        succeeded,
        failed: failures
            .iter()
            .map(|f| pb::FailedReceipt {
                receipt: f.receipt.to_string(),
                reason: match f.reason {
                    ReceiptFailureReason::MessageGone => pb::failed_receipt::Reason::MessageGone,
                    ReceiptFailureReason::LeaseGone => pb::failed_receipt::Reason::LeaseGone,
                } as i32,
            })
            .collect(),
    }
}

/// Joins peeked messages with their bodies, by offset; a message whose body
/// is gone (deleted meanwhile) is skipped.
pub fn peeked(records: &[PeekedMessage], bodies: Vec<StoredMessage>, now: TimestampMs) -> Vec<pb::PeekedMessage> {
    use pb::peeked_message::State;
    let mut bodies: std::collections::HashMap<u64, StoredMessage> =
        bodies.into_iter().map(|m| (m.offset.0, m)).collect();
    records
        .iter()
        .filter_map(|record| {
            let stored = bodies.remove(&record.offset.0)?;
            let (state, until) = match record.state.map(|d| (d.dead, d.lease, d.visible_at)) {
                None => (State::Settled, 0),
                Some((Some(_), _, _)) => (State::Dead, 0),
                Some((None, Some(lease), _)) if lease.deadline > now => (State::Leased, lease.deadline.0),
                Some((None, Some(lease), _)) if lease.retry_at > now => (State::Delayed, lease.retry_at.0),
                Some((None, Some(_), _)) => (State::Available, 0),
                Some((None, None, visible_at)) if visible_at > now => (State::Delayed, visible_at.0),
                Some((None, None, _)) => (State::Available, 0),
            };
            Some(pb::PeekedMessage {
                offset: record.offset.0,
                body: stored.body,
                headers: stored.headers.into_iter().collect(),
                publish_time_ms: stored.publish_time.0,
                delivery_attempts: record.state.map_or(0, |d| d.attempts),
                state: state as i32,
                until_ms: until,
                dead_reason: record
                    .state
                    .and_then(|d| d.dead)
                    .map(|reason| reason.as_str().to_string())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

pub fn subscription_pb(stats: &SubscriptionStats) -> pb::Subscription {
    pb::Subscription {
        name: stats.name.to_string(),
        depth: stats.depth,
        in_flight: stats.in_flight,
        delayed: stats.delayed,
        available: stats.available,
        dead: stats.dead,
    }
}

pub fn queue_config_update(update: &pb::QueueConfigUpdate) -> Result<QueueConfigUpdate, ApiError> {
    Ok(QueueConfigUpdate {
        visibility_timeout_ms: update.visibility_timeout_ms,
        max_message_bytes: update.max_message_bytes,
        dedup_window_ms: update.dedup_window_ms,
        max_messages: update.max_messages,
        max_bytes: update.max_bytes,
        retry_backoff_min_ms: update.retry_backoff_min_ms,
        retry_backoff_max_ms: update.retry_backoff_max_ms,
        max_deliveries: update.max_deliveries,
        dead_letter_queue: update.dead_letter_queue.as_deref().map(dead_letter_queue).transpose()?,
        message_ttl_ms: update.message_ttl_ms,
        expiry_action: update.expiry_action.map(expiry_action).transpose()?,
        retention_ms: update.retention_ms,
        retention_bytes: update.retention_bytes,
    })
}

/// "" is no dead-letter queue.
fn dead_letter_queue(name: &str) -> Result<Option<QueueName>, ApiError> {
    if name.is_empty() {
        return Ok(None);
    }
    QueueName::new(name).map(Some).map_err(|e| ApiError::InvalidArgument(format!("config.dead_letter_queue: {e}")))
}

fn expiry_action(value: i32) -> Result<ExpiryAction, ApiError> {
    match pb::ExpiryAction::try_from(value) {
        Ok(pb::ExpiryAction::Drop) => Ok(ExpiryAction::Drop),
        Ok(pb::ExpiryAction::DeadLetter) => Ok(ExpiryAction::DeadLetter),
        Err(_) => Err(ApiError::InvalidArgument(format!(
            "config.expiry_action: unknown value {value}; use EXPIRY_ACTION_DROP (0) or EXPIRY_ACTION_DEAD_LETTER (1)"
        ))),
    }
}

/// Fills the defaults in for fields left unset (or at 0 where 0 is not a
/// meaningful value).
pub fn queue_config(config: Option<&pb::QueueConfig>) -> Result<QueueConfig, ApiError> {
    let mut result = QueueConfig::default();
    if let Some(c) = config {
        if c.visibility_timeout_ms != 0 {
            result.visibility_timeout_ms = c.visibility_timeout_ms;
        }
        if c.max_message_bytes != 0 {
            result.max_message_bytes = c.max_message_bytes;
        }
        if c.replication_factor != 0 {
            result.replication_factor = c.replication_factor;
        }
        if let Some(window) = c.dedup_window_ms {
            result.dedup_window_ms = window;
        }
        result.max_messages = c.max_messages;
        result.max_bytes = c.max_bytes;
        if let Some(min) = c.retry_backoff_min_ms {
            result.retry_backoff_min_ms = min;
        }
        if let Some(max) = c.retry_backoff_max_ms {
            result.retry_backoff_max_ms = max;
        }
        result.max_deliveries = c.max_deliveries;
        result.dead_letter_queue = dead_letter_queue(&c.dead_letter_queue)?;
        result.message_ttl_ms = c.message_ttl_ms;
        result.expiry_action = expiry_action(c.expiry_action)?;
        result.retention_ms = c.retention_ms;
        result.retention_bytes = c.retention_bytes;
    }
    Ok(result)
}

pub fn queue_config_pb(config: &QueueConfig) -> pb::QueueConfig {
    pb::QueueConfig {
        visibility_timeout_ms: config.visibility_timeout_ms,
        max_message_bytes: config.max_message_bytes,
        replication_factor: config.replication_factor,
        dedup_window_ms: Some(config.dedup_window_ms),
        max_messages: config.max_messages,
        max_bytes: config.max_bytes,
        retry_backoff_min_ms: Some(config.retry_backoff_min_ms),
        retry_backoff_max_ms: Some(config.retry_backoff_max_ms),
        max_deliveries: config.max_deliveries,
        dead_letter_queue: config.dead_letter_queue.as_ref().map(ToString::to_string).unwrap_or_default(),
        message_ttl_ms: config.message_ttl_ms,
        expiry_action: match config.expiry_action {
            ExpiryAction::Drop => pb::ExpiryAction::Drop,
            ExpiryAction::DeadLetter => pb::ExpiryAction::DeadLetter,
        } as i32,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
    }
}

pub fn queue_info(name: &QueueName, entry: &CatalogQueue, stats: Option<pb::QueueStats>) -> pb::QueueInfo {
    pb::QueueInfo {
        name: name.to_string(),
        config: Some(queue_config_pb(&entry.config)),
        replicas: entry.replicas.clone(),
        group_id: entry.group_id.0,
        created_at_ms: entry.created_at.0,
        stats,
    }
}
