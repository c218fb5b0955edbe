//! The cluster catalog: every queue, its config, replicas and group id.
//! Pure data and rules; the meta state machine persists it.

use std::collections::BTreeMap;

use raftmq_types::{ConfigError, GroupId, MetaCommand, MetaResponse, NodeId, QueueConfig, QueueName, TimestampMs};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogQueue {
    pub group_id: GroupId,
    pub config: QueueConfig,
    pub replicas: Vec<NodeId>,
    pub created_at: TimestampMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub queues: BTreeMap<QueueName, CatalogQueue>,
    /// Group ids are never reused, so a deleted queue's leftovers can never be
    /// mistaken for a new queue's data. 0 is the meta group.
    pub next_group_id: u64,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { queues: BTreeMap::new(), next_group_id: 1 }
    }
}

impl Catalog {
    pub fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        match command {
            MetaCommand::CreateQueue { name, config, replicas, now } => {
                if let Some(existing) = self.queues.get(name) {
                    return MetaResponse::QueueAlreadyExists { group_id: existing.group_id };
                }
                if let Err(e) = self.check_dead_letter_queue(name, config) {
                    return MetaResponse::ConfigRejected { reason: e.to_string() };
                }
                let group_id = GroupId(self.next_group_id);
                self.next_group_id += 1;
                self.queues.insert(
                    name.clone(),
                    CatalogQueue { group_id, config: config.clone(), replicas: replicas.clone(), created_at: *now },
                );
                MetaResponse::QueueCreated { group_id }
            }
            MetaCommand::DeleteQueue { name } => {
                if let Some(used_by) = self.dead_letter_users(name).next() {
                    return MetaResponse::QueueInUse { used_by: used_by.clone() };
                }
                match self.queues.remove(name) {
                    Some(queue) => MetaResponse::QueueDeleted { group_id: queue.group_id },
                    None => MetaResponse::QueueNotFound,
                }
            }
            // Merged and validated here, at apply, so that concurrent updates
            // of different settings both take effect.
            MetaCommand::UpdateQueue { name, update } => {
                let Some(queue) = self.queues.get(name) else { return MetaResponse::QueueNotFound };
                let updated = update.applied_to(&queue.config);
                if let Err(e) = updated.validate().and_then(|()| self.check_dead_letter_queue(name, &updated)) {
                    return MetaResponse::ConfigRejected { reason: e.to_string() };
                }
                let queue = self.queues.get_mut(name).expect("looked up above");
                queue.config = updated;
                MetaResponse::QueueUpdated { group_id: queue.group_id }
            }
        }
    }

    /// A queue's dead-letter queue must exist and be another queue. (A chain
    /// of dead-letter queues is allowed; a dead message moves one step per
    /// death.)
    fn check_dead_letter_queue(&self, name: &QueueName, config: &QueueConfig) -> Result<(), ConfigError> {
        match &config.dead_letter_queue {
            Some(dlq) if dlq == name => Err(ConfigError::DeadLetterQueueIsSelf(dlq.to_string())),
            Some(dlq) if !self.queues.contains_key(dlq) => Err(ConfigError::DeadLetterQueueMissing(dlq.to_string())),
            _ => Ok(()),
        }
    }

    /// The queues whose dead-letter queue is `name`.
    pub fn dead_letter_users<'a>(&'a self, name: &'a QueueName) -> impl Iterator<Item = &'a QueueName> + 'a {
        self.queues
            .iter()
            .filter(move |(other, q)| *other != name && q.config.dead_letter_queue.as_ref() == Some(name))
            .map(|(other, _)| other)
    }
}

#[cfg(test)]
mod tests {
    use raftmq_types::QueueConfigUpdate;

    use super::*;

    fn create(name: &str) -> MetaCommand {
        MetaCommand::CreateQueue {
            name: QueueName::new(name).unwrap(),
            config: QueueConfig::default(),
            replicas: vec![1, 2, 3],
            now: TimestampMs(5),
        }
    }

    #[test]
    fn create_assigns_group_ids_from_one_and_rejects_duplicates() {
        let mut catalog = Catalog::default();
        assert_eq!(catalog.apply(&create("a")), MetaResponse::QueueCreated { group_id: GroupId(1) });
        assert_eq!(catalog.apply(&create("b")), MetaResponse::QueueCreated { group_id: GroupId(2) });
        assert_eq!(catalog.apply(&create("a")), MetaResponse::QueueAlreadyExists { group_id: GroupId(1) });
        assert_eq!(catalog.queues.len(), 2);
    }

    #[test]
    fn delete_removes_and_ids_are_not_reused() {
        let mut catalog = Catalog::default();
        catalog.apply(&create("a"));
        let delete = MetaCommand::DeleteQueue { name: QueueName::new("a").unwrap() };
        assert_eq!(catalog.apply(&delete), MetaResponse::QueueDeleted { group_id: GroupId(1) });
        assert_eq!(catalog.apply(&delete), MetaResponse::QueueNotFound);
        assert_eq!(catalog.apply(&create("a")), MetaResponse::QueueCreated { group_id: GroupId(2) });
    }

    #[test]
    fn update_changes_only_the_given_settings_and_refuses_invalid_results() {
        let mut catalog = Catalog::default();
        catalog.apply(&create("a"));
        let name = QueueName::new("a").unwrap();
        let update = |update: QueueConfigUpdate| MetaCommand::UpdateQueue { name: name.clone(), update };
        let limit = QueueConfigUpdate { max_messages: Some(10), ..Default::default() };
        assert!(matches!(catalog.apply(&update(limit)), MetaResponse::QueueUpdated { .. }));
        let window = QueueConfigUpdate { dedup_window_ms: Some(0), ..Default::default() };
        catalog.apply(&update(window));
        let config = &catalog.queues[&name].config;
        assert_eq!((config.max_messages, config.dedup_window_ms), (10, 0), "both updates took effect");
        assert_eq!(config.visibility_timeout_ms, QueueConfig::default().visibility_timeout_ms);
        let bad = QueueConfigUpdate { visibility_timeout_ms: Some(0), ..Default::default() };
        match catalog.apply(&update(bad)) {
            MetaResponse::ConfigRejected { reason } => assert!(reason.contains("visibility_timeout_ms"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(catalog.queues[&name].config.visibility_timeout_ms, QueueConfig::default().visibility_timeout_ms);
        let missing = MetaCommand::UpdateQueue { name: QueueName::new("b").unwrap(), update: Default::default() };
        assert_eq!(catalog.apply(&missing), MetaResponse::QueueNotFound);
    }

    #[test]
    fn a_dead_letter_queue_must_exist_be_another_queue_and_outlive_its_users() {
        let mut catalog = Catalog::default();
        let name = |n: &str| QueueName::new(n).unwrap();
        let with_dlq = |queue: &str, dlq: &str| MetaCommand::CreateQueue {
            name: name(queue),
            config: QueueConfig { dead_letter_queue: Some(name(dlq)), ..Default::default() },
            replicas: vec![1],
            now: TimestampMs(1),
        };
        let rejected = |response: MetaResponse, needle: &str| match response {
            MetaResponse::ConfigRejected { reason } => assert!(reason.contains(needle), "{reason}"),
            other => panic!("{other:?}"),
        };
        rejected(catalog.apply(&with_dlq("work", "work.dlq")), "does not exist");
        rejected(catalog.apply(&with_dlq("work", "work")), "the queue itself");
        catalog.apply(&create("work.dlq"));
        assert!(matches!(catalog.apply(&with_dlq("work", "work.dlq")), MetaResponse::QueueCreated { .. }));
        let delete_dlq = MetaCommand::DeleteQueue { name: name("work.dlq") };
        assert_eq!(catalog.apply(&delete_dlq), MetaResponse::QueueInUse { used_by: name("work") });
        let to_self = QueueConfigUpdate { dead_letter_queue: Some(Some(name("work"))), ..Default::default() };
        rejected(catalog.apply(&MetaCommand::UpdateQueue { name: name("work"), update: to_self }), "itself");
        let clear = QueueConfigUpdate { dead_letter_queue: Some(None), ..Default::default() };
        catalog.apply(&MetaCommand::UpdateQueue { name: name("work"), update: clear });
        assert!(matches!(catalog.apply(&delete_dlq), MetaResponse::QueueDeleted { .. }));
    }
}
