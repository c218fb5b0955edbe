//! Leases this node has proposed and not yet seen answered.
//!
//! Every consumer long-polling a subscription wakes when a produce is
//! applied. If each then proposed a lease, all but the first would find
//! nothing left: empty entries, each replicated, fsynced on a majority and
//! applied for nothing (with four consumers on a steady trickle of produces,
//! 40% of the queue's entries). So a waiting consumer proposes only while the
//! subscription has more messages available than the leases already on their
//! way ask for between them; otherwise it waits for the next apply or for one
//! of those leases to be answered, and checks again. With a backlog deeper
//! than the leases in flight, consumers still lease side by side.
//!
//! Claims are the leader's own bookkeeping: nothing here is replicated, and
//! a claim only decides whether to propose, never what a lease gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use raftmq_types::{GroupId, SubscriptionName};
use tokio::sync::watch;

type Key = (GroupId, SubscriptionName);

struct Pending {
    /// The messages the leases in flight ask for, together.
    claimed: u64,
    /// Sent to (or dropped) whenever one of them is answered.
    answered: watch::Sender<()>,
}

#[derive(Default)]
pub struct LeaseClaims {
    pending: Mutex<HashMap<Key, Pending>>,
}

/// What a consumer that found its subscription non-empty should do.
pub enum Turn {
    /// Propose the lease; the claim lasts until it is dropped, after the answer.
    Propose(Claim),
    /// Leases in flight ask for at least what is available: wait for the next
    /// apply, or until the receiver sees one of them answered.
    Wait(watch::Receiver<()>),
    /// Nothing is available.
    Nothing,
}

impl LeaseClaims {
    /// Claims `max_messages` for a lease of `subscription` in `group` if the
    /// subscription has more messages available than are claimed already.
    /// `available_up_to(n)` counts the available messages, stopping at `n`.
    pub fn turn(
        self: &Arc<Self>,
        group: GroupId,
        subscription: &SubscriptionName,
        max_messages: u32,
        available_up_to: impl FnOnce(u64) -> u64,
    ) -> Turn {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (group, subscription.clone());
        let claimed = pending.get(&key).map_or(0, |p| p.claimed);
        if available_up_to(claimed + 1) <= claimed {
            return match pending.get(&key) {
                Some(p) => Turn::Wait(p.answered.subscribe()),
                None => Turn::Nothing,
            };
        }
        let entry =
            pending.entry(key.clone()).or_insert_with(|| Pending { claimed: 0, answered: watch::Sender::new(()) });
        entry.claimed += u64::from(max_messages);
        Turn::Propose(Claim { claims: self.clone(), key, messages: u64::from(max_messages) })
    }

    #[cfg(test)]
    fn claimed(&self, group: GroupId, subscription: &SubscriptionName) -> u64 {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.get(&(group, subscription.clone())).map_or(0, |p| p.claimed)
    }
}

/// A lease on its way; dropping it (once the lease is answered, or failed)
/// wakes the consumers that waited for it.
pub struct Claim {
    claims: Arc<LeaseClaims>,
    key: Key,
    messages: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut pending = self.claims.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(p) = pending.get_mut(&self.key) else {
            return;
        };
        p.claimed -= self.messages;
        if p.claimed == 0 {
            // Dropping the sender wakes the receivers too.
            pending.remove(&self.key);
        } else {
            p.answered.send_replace(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> SubscriptionName {
        SubscriptionName::default_subscription()
    }

    #[test]
    fn proposes_while_more_is_available_than_is_claimed() {
        let claims = Arc::new(LeaseClaims::default());
        let group = GroupId(7);
        assert!(matches!(claims.turn(group, &sub(), 10, |_| 0), Turn::Nothing));
        // 25 available: leases of 10 and 10 go out; a third would find 5 left.
        let first = match claims.turn(group, &sub(), 10, |n| n.min(25)) {
            Turn::Propose(claim) => claim,
            _ => panic!("the first lease proposes"),
        };
        let second = match claims.turn(group, &sub(), 10, |n| n.min(25)) {
            Turn::Propose(claim) => claim,
            _ => panic!("15 are left for the second"),
        };
        let _third = match claims.turn(group, &sub(), 10, |n| n.min(25)) {
            Turn::Propose(claim) => claim,
            _ => panic!("5 are left for the third"),
        };
        assert_eq!(claims.claimed(group, &sub()), 30);
        assert!(matches!(claims.turn(group, &sub(), 10, |n| n.min(25)), Turn::Wait(_)));
        // Another group or subscription is not held back.
        assert!(matches!(claims.turn(GroupId(8), &sub(), 10, |n| n.min(25)), Turn::Propose(_)));
        drop(first);
        drop(second);
        assert_eq!(claims.claimed(group, &sub()), 10);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_when_a_lease_is_answered() {
        let claims = Arc::new(LeaseClaims::default());
        let group = GroupId(1);
        // 5 available, leases of 2: three go out (6 claimed), a fourth waits.
        let mut leases: Vec<Claim> = (0..3)
            .map(|_| match claims.turn(group, &sub(), 2, |n| n.min(5)) {
                Turn::Propose(claim) => claim,
                _ => panic!("fewer than 5 claimed: propose"),
            })
            .collect();
        let wait = || match claims.turn(group, &sub(), 2, |n| n.min(5)) {
            Turn::Wait(answered) => answered,
            _ => panic!("6 claimed of 5: wait"),
        };
        let mut answered = wait();
        let waiter = tokio::spawn(async move { answered.changed().await.is_ok() });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(leases.pop());
        assert!(waiter.await.expect("waiter"), "one lease answered, others still out");
        assert_eq!(claims.claimed(group, &sub()), 4);
        // The last claim gone, nothing is kept for the subscription.
        let answered = match claims.turn(group, &sub(), 2, |n| n.min(4)) {
            Turn::Wait(answered) => answered,
            _ => panic!("4 claimed of 4: wait"),
        };
        leases.clear();
        assert!(answered.has_changed().is_err(), "the sender is gone with the last claim");
        assert_eq!(claims.claimed(group, &sub()), 0);
        assert!(matches!(claims.turn(group, &sub(), 2, |_| 0), Turn::Nothing));
    }
}
