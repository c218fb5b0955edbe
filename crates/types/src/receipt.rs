//! Receipts: the opaque handle a consumer gets with each leased message.
//!
//! A receipt names the message and the lease it was delivered under. The lease
//! id is the Raft log index of the command that created the lease, so it is
//! unique within the queue, across leader changes too, and a receipt from an
//! earlier delivery never settles a later one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Offset;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Receipt {
    pub offset: Offset,
    pub lease_id: u64,
}

const RECEIPT_PREFIX: &str = "r1-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed receipt {0:?}: pass the receipt string exactly as Consume returned it")]
pub struct ReceiptParseError(pub String);

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RECEIPT_PREFIX}{:x}-{:x}", self.offset.0, self.lease_id)
    }
}

impl FromStr for Receipt {
    type Err = ReceiptParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ReceiptParseError(s.chars().take(64).collect());
        let rest = s.strip_prefix(RECEIPT_PREFIX).ok_or_else(bad)?;
        let (offset, lease_id) = rest.split_once('-').ok_or_else(bad)?;
        let offset = u64::from_str_radix(offset, 16).map_err(|_| bad())?;
        let lease_id = u64::from_str_radix(lease_id, 16).map_err(|_| bad())?;
        Ok(Receipt { offset: Offset(offset), lease_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let receipt = Receipt { offset: Offset(12345), lease_id: 987 };
        assert_eq!(receipt.to_string().parse::<Receipt>(), Ok(receipt));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "r1-", "r1-zz-1", "r2-1-1", "r1-1", "r1-1-1-1", "hello"] {
            assert!(bad.parse::<Receipt>().is_err(), "{bad:?} parsed");
        }
    }
}
