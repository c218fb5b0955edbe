//! The cluster catalog: every queue, its config, replicas and group id.
//! Pure data and rules; the meta state machine persists it.

use std::collections::BTreeMap;

use raftmq_types::{GroupId, MetaCommand, MetaResponse, NodeId, QueueConfig, QueueName, TimestampMs};
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
                let group_id = GroupId(self.next_group_id);
                self.next_group_id += 1;
                self.queues.insert(
                    name.clone(),
                    CatalogQueue { group_id, config: config.clone(), replicas: replicas.clone(), created_at: *now },
                );
                MetaResponse::QueueCreated { group_id }
            }
            MetaCommand::DeleteQueue { name } => match self.queues.remove(name) {
                Some(queue) => MetaResponse::QueueDeleted { group_id: queue.group_id },
                None => MetaResponse::QueueNotFound,
            },
            // Merged and validated here, at apply, so that concurrent updates
            // of different settings both take effect.
            MetaCommand::UpdateQueue { name, update } => match self.queues.get_mut(name) {
                Some(queue) => {
                    let updated = update.applied_to(&queue.config);
                    match updated.validate() {
                        Ok(()) => {
                            queue.config = updated;
                            MetaResponse::QueueUpdated { group_id: queue.group_id }
                        }
                        Err(e) => MetaResponse::ConfigRejected { reason: e.to_string() },
                    }
                }
                None => MetaResponse::QueueNotFound,
            },
        }
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
}
