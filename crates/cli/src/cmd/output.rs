//! Printing results as text or JSON.

use raftmq_client::v1 as pb;
use serde_json::json;

pub fn queue_json(q: &pb::QueueInfo) -> serde_json::Value {
    let config = q.config.clone().unwrap_or_default();
    let stats = q.stats.as_ref().map(|s| {
        json!({
            "depth": s.depth, "in_flight": s.in_flight, "delayed": s.delayed, "available": s.available,
            "next_offset": s.next_offset, "leader_id": s.leader_id, "applied_index": s.applied_index,
            "reported_by": s.reported_by, "bytes": s.bytes, "dedup_ids": s.dedup_ids, "dead": s.dead,
            "retained": s.retained, "retained_bytes": s.retained_bytes, "subscriptions": s.subscriptions,
        })
    });
    json!({
        "name": q.name, "group_id": q.group_id, "replicas": q.replicas, "created_at_ms": q.created_at_ms,
        "config": {
            "visibility_timeout_ms": config.visibility_timeout_ms,
            "max_message_bytes": config.max_message_bytes,
            "replication_factor": config.replication_factor,
            "dedup_window_ms": config.dedup_window_ms,
            "max_messages": config.max_messages,
            "max_bytes": config.max_bytes,
            "retry_backoff_min_ms": config.retry_backoff_min_ms,
            "retry_backoff_max_ms": config.retry_backoff_max_ms,
            "max_deliveries": config.max_deliveries,
            "dead_letter_queue": config.dead_letter_queue,
            "message_ttl_ms": config.message_ttl_ms,
            "expiry_action": expiry_action(config.expiry_action),
            "retention_ms": config.retention_ms,
            "retention_bytes": config.retention_bytes,
        },
        "stats": stats,
    })
}

fn expiry_action(value: i32) -> &'static str {
    match pb::ExpiryAction::try_from(value) {
        Ok(pb::ExpiryAction::DeadLetter) => "dead-letter",
        _ => "drop",
    }
}

pub fn queue_text(q: &pb::QueueInfo) -> String {
    let config = q.config.clone().unwrap_or_default();
    let limit = |n: u64| if n == 0 { "none".to_string() } else { n.to_string() };
    let dlq = if config.dead_letter_queue.is_empty() { "none" } else { config.dead_letter_queue.as_str() };
    let mut out = format!(
        "queue {}\n  replicas {:?}  group {}\n  visibility_timeout_ms {}  max_message_bytes {}  replication_factor {}\n  \
         dedup_window_ms {}  max_messages {}  max_bytes {}\n  \
         retry_backoff_ms {}..{}  max_deliveries {}  dead_letter_queue {dlq}  message_ttl_ms {}  expiry_action {}\n  \
         retention_ms {}  retention_bytes {}\n",
        q.name,
        q.replicas,
        q.group_id,
        config.visibility_timeout_ms,
        config.max_message_bytes,
        config.replication_factor,
        config.dedup_window_ms.unwrap_or_default(),
        limit(config.max_messages),
        limit(config.max_bytes),
        config.retry_backoff_min_ms.unwrap_or_default(),
        config.retry_backoff_max_ms.unwrap_or_default(),
        limit(u64::from(config.max_deliveries)),
        limit(config.message_ttl_ms),
        expiry_action(config.expiry_action),
        limit(config.retention_ms),
        limit(config.retention_bytes),
    );
    match &q.stats {
        Some(s) => out.push_str(&format!(
            "  depth {}  bytes {}  in_flight {}  delayed {}  available {}  dead {}  next_offset {}  dedup_ids {}\n  \
             subscriptions {}  retained {} ({} bytes)\n  leader {}  (reported by node {} at applied index {})\n",
            s.depth,
            s.bytes,
            s.in_flight,
            s.delayed,
            s.available,
            s.dead,
            s.next_offset,
            s.dedup_ids,
            s.subscriptions,
            s.retained,
            s.retained_bytes,
            s.leader_id,
            s.reported_by,
            s.applied_index
        )),
        None => out.push_str("  (no statistics: the answering node holds no replica)\n"),
    }
    out
}

pub fn message_json(m: &pb::Message) -> serde_json::Value {
    json!({
        "offset": m.offset,
        "body": String::from_utf8_lossy(&m.body),
        "headers": m.headers,
        "publish_time_ms": m.publish_time_ms,
        "delivery_attempt": m.delivery_attempt,
        "receipt": m.receipt,
        "lease_deadline_ms": m.lease_deadline_ms,
    })
}

pub fn message_text(m: &pb::Message, show_receipt: bool) -> String {
    let mut headers: Vec<String> = m.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    headers.sort();
    let mut line = format!("{}\tattempt {}\t{}", m.offset, m.delivery_attempt, String::from_utf8_lossy(&m.body));
    if !headers.is_empty() {
        line.push_str(&format!("\t[{}]", headers.join(" ")));
    }
    if show_receipt {
        line.push_str(&format!("\treceipt {}", m.receipt));
    }
    line
}

fn peeked_state(m: &pb::PeekedMessage) -> &'static str {
    match m.state() {
        pb::peeked_message::State::Available => "available",
        pb::peeked_message::State::Leased => "leased",
        pb::peeked_message::State::Delayed => "delayed",
        pb::peeked_message::State::Dead => "dead",
        pb::peeked_message::State::Settled => "settled",
        pb::peeked_message::State::Unspecified => "unknown",
    }
}

pub fn peeked_json(m: &pb::PeekedMessage) -> serde_json::Value {
    json!({
        "offset": m.offset,
        "body": String::from_utf8_lossy(&m.body),
        "headers": m.headers,
        "publish_time_ms": m.publish_time_ms,
        "delivery_attempts": m.delivery_attempts,
        "state": peeked_state(m),
        "until_ms": m.until_ms,
        "dead_reason": m.dead_reason,
    })
}

pub fn peeked_text(m: &pb::PeekedMessage) -> String {
    format!("{}\t{}\t{}\t{}", m.offset, peeked_state(m), m.delivery_attempts, String::from_utf8_lossy(&m.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_shows_offset_attempt_body_headers() {
        let m = pb::Message {
            offset: 7,
            body: b"hi".to_vec().into(),
            headers: [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())].into(),
            delivery_attempt: 2,
            receipt: "r1-7-9".into(),
            ..Default::default()
        };
        assert_eq!(message_text(&m, false), "7\tattempt 2\thi\t[a=1 b=2]");
        assert!(message_text(&m, true).ends_with("receipt r1-7-9"));
        assert_eq!(message_json(&m)["body"], "hi");
    }

    #[test]
    fn queue_text_names_the_depth() {
        let q = pb::QueueInfo {
            name: "q".into(),
            stats: Some(pb::QueueStats { depth: 42, ..Default::default() }),
            ..Default::default()
        };
        assert!(queue_text(&q).contains("depth 42"));
    }
}
