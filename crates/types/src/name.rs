//! Validated names of queues and subscriptions: `[A-Za-z0-9._-]`, 1 to 200
//! characters.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_QUEUE_NAME_LEN: usize = 200;
/// Every queue has this subscription, created with the queue and never deleted.
pub const DEFAULT_SUBSCRIPTION: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueName(String);

/// The name of one of a queue's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubscriptionName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty; use 1 to {MAX_QUEUE_NAME_LEN} characters from [A-Za-z0-9._-]")]
    Empty { kind: &'static str },
    #[error("{kind} name is {len} characters long; the limit is {MAX_QUEUE_NAME_LEN}")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} name contains {bad:?}; only [A-Za-z0-9._-] are allowed")]
    InvalidCharacter { kind: &'static str, bad: char },
}

pub type QueueNameError = NameError;

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    let len = name.chars().count();
    if len > MAX_QUEUE_NAME_LEN {
        return Err(NameError::TooLong { kind, len });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(NameError::InvalidCharacter { kind, bad });
    }
    Ok(())
}

impl QueueName {
    pub fn new(name: impl Into<String>) -> Result<QueueName, NameError> {
        let name = name.into();
        validate("queue", &name)?;
        Ok(QueueName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl SubscriptionName {
    pub fn new(name: impl Into<String>) -> Result<SubscriptionName, NameError> {
        let name = name.into();
        validate("subscription", &name)?;
        Ok(SubscriptionName(name))
    }

    /// The `default` subscription every queue has.
    pub fn default_subscription() -> SubscriptionName {
        SubscriptionName(DEFAULT_SUBSCRIPTION.to_string())
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_SUBSCRIPTION
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_allowed_characters() {
        assert!(QueueName::new("orders.v2_eu-west").is_ok());
        assert!(QueueName::new("a".repeat(200)).is_ok());
        assert!(SubscriptionName::new("audit-log").is_ok());
        assert!(SubscriptionName::default_subscription().is_default());
    }

    #[test]
    fn rejects_bad_names() {
        let kind = "queue";
        assert_eq!(QueueName::new(""), Err(NameError::Empty { kind }));
        assert_eq!(QueueName::new("a".repeat(201)), Err(NameError::TooLong { kind, len: 201 }));
        assert_eq!(QueueName::new("has space"), Err(NameError::InvalidCharacter { kind, bad: ' ' }));
        assert_eq!(QueueName::new("a/b"), Err(NameError::InvalidCharacter { kind, bad: '/' }));
        assert_eq!(
            SubscriptionName::new("a b").unwrap_err().to_string(),
            "subscription name contains ' '; only [A-Za-z0-9._-] are allowed"
        );
    }
}
