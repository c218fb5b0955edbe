//! Receipts: the opaque handle a consumer gets with each leased message.
//!
//! A receipt names the subscription, the message and the lease it was
//! delivered under. The lease id is the Raft log index of the command that
//! created the lease, so it is unique within the queue, across leader changes
//! too, and a receipt from an earlier delivery never settles a later one.
//! Receipts of the `default` subscription keep the shorter `r1-` form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Offset, SubscriptionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Receipt {
    pub subscription: SubscriptionId,
    pub offset: Offset,
    pub lease_id: u64,
}

impl Receipt {
    /// A receipt of the `default` subscription.
    pub fn new(offset: Offset, lease_id: u64) -> Receipt {
        Receipt { subscription: SubscriptionId::DEFAULT, offset, lease_id }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed receipt {0:?}: pass the receipt string exactly as Consume returned it")]
pub struct ReceiptParseError(pub String);

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subscription == SubscriptionId::DEFAULT {
            write!(f, "r1-{:x}-{:x}", self.offset.0, self.lease_id)
        } else {
            write!(f, "r2-{:x}-{:x}-{:x}", self.subscription.0, self.offset.0, self.lease_id)
        }
    }
}

impl FromStr for Receipt {
    type Err = ReceiptParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ReceiptParseError(s.chars().take(64).collect());
        let hex = |part: &str| u64::from_str_radix(part, 16).map_err(|_| bad());
        let parts: Vec<&str> = s.split('-').collect();
        match parts.as_slice() {
            ["r1", offset, lease_id] => Ok(Receipt::new(Offset(hex(offset)?), hex(lease_id)?)),
            ["r2", subscription, offset, lease_id] => {
                let subscription = u32::try_from(hex(subscription)?).map_err(|_| bad())?;
                Ok(Receipt {
                    subscription: SubscriptionId(subscription),
                    offset: Offset(hex(offset)?),
                    lease_id: hex(lease_id)?,
                })
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let receipt = Receipt::new(Offset(12345), 987);
        assert_eq!(receipt.to_string(), "r1-3039-3db");
        assert_eq!(receipt.to_string().parse::<Receipt>(), Ok(receipt));
        let receipt = Receipt { subscription: SubscriptionId(3), offset: Offset(12345), lease_id: 987 };
        assert_eq!(receipt.to_string(), "r2-3-3039-3db");
        assert_eq!(receipt.to_string().parse::<Receipt>(), Ok(receipt));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "r1-", "r1-zz-1", "r2-1-1", "r1-1", "r1-1-1-1", "r2-100000000-1-1", "r3-1-1-1", "hello"] {
            assert!(bad.parse::<Receipt>().is_err(), "{bad:?} parsed");
        }
    }
}
