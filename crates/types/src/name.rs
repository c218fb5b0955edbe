//! Validated queue names: `[A-Za-z0-9._-]`, 1 to 200 characters.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_QUEUE_NAME_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueNameError {
    #[error("queue name is empty; use 1 to {MAX_QUEUE_NAME_LEN} characters from [A-Za-z0-9._-]")]
    Empty,
    #[error("queue name is {len} characters long; the limit is {MAX_QUEUE_NAME_LEN}")]
    TooLong { len: usize },
    #[error("queue name contains {bad:?}; only [A-Za-z0-9._-] are allowed")]
    InvalidCharacter { bad: char },
}

impl QueueName {
    pub fn new(name: impl Into<String>) -> Result<QueueName, QueueNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(QueueNameError::Empty);
        }
        let len = name.chars().count();
        if len > MAX_QUEUE_NAME_LEN {
            return Err(QueueNameError::TooLong { len });
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(QueueNameError::InvalidCharacter { bad });
        }
        Ok(QueueName(name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_allowed_characters() {
        assert!(QueueName::new("orders.v2_eu-west").is_ok());
        assert!(QueueName::new("a".repeat(200)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(QueueName::new(""), Err(QueueNameError::Empty));
        assert_eq!(QueueName::new("a".repeat(201)), Err(QueueNameError::TooLong { len: 201 }));
        assert_eq!(QueueName::new("has space"), Err(QueueNameError::InvalidCharacter { bad: ' ' }));
        assert_eq!(QueueName::new("a/b"), Err(QueueNameError::InvalidCharacter { bad: '/' }));
    }
}
