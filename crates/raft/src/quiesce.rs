//! Quiet groups: idle queue groups stop their Raft timers.
//!
//! openraft gives every group a tick (every 13/64 of the heartbeat interval)
//! and, on a leader, a heartbeat RPC to each follower every heartbeat
//! interval. With a thousand idle queues that is some 20,000 wake-ups and
//! thousands of RPCs a second on each node, doing nothing. Instead every node
//! sends each peer one [`NodeHeartbeat`] per heartbeat interval, listing for
//! each queue group it hosts the term and leader it knows. On the strength of
//! those:
//!
//! - a **follower** stops its tick, and with it its election timer, while the
//!   node it follows is heard from and claims that group's leadership in the
//!   same term;
//! - a **leader** stops its tick and heartbeats once the group has appended
//!   nothing for a while and every follower that is heard from holds the whole
//!   log and reports following it in this term.
//!
//! As soon as a condition fails the group's timers run again and it is plain
//! Raft. When a leader's node falls silent for a follower's staleness limit
//! (drawn, like an election timeout, from the configured range), the follower
//! ticks again; it last heard from its leader long ago, so it stands for
//! election at the next tick. A write to a quiet group needs no timer:
//! openraft replicates new entries whether or not it ticks. The meta group
//! always ticks.
//!
//! The rule ([`quiet`]) is a pure function of what the node observes, tested
//! below without a cluster; `cluster-tests` drives it through the binary.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use raftmq_proto::internal::raft_transport_client::RaftTransportClient;
use raftmq_proto::internal::{GroupView, NodeHeartbeat};
use raftmq_types::{GroupId, NodeId};
use tracing::debug;

use crate::groups::{GroupManager, QueueGroup, RaftTiming};

/// The term and leader a node knows for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    pub term: u64,
    pub leader: Option<NodeId>,
}

/// What this node observes of one of its queue groups.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub state: ServerState,
    pub view: View,
    /// Voters other than this node.
    pub followers: Vec<NodeId>,
    /// On a leader: the followers whose replication has matched the last log
    /// entry.
    pub caught_up: HashSet<NodeId>,
}

/// A peer's latest heartbeat.
struct Heard {
    at: Instant,
    groups: HashMap<GroupId, View>,
}

/// The node's side of quiescence: what each peer last said. (Each
/// [`QueueGroup`] carries its own quiet flag.)
pub(crate) struct Quiescence {
    node_id: NodeId,
    timing: RaftTiming,
    heard: Mutex<HashMap<NodeId, Heard>>,
}

/// Per group, across rounds: when it last appended, and how long its leader
/// may be silent before it ticks again.
struct Track {
    last_log_index: Option<u64>,
    appended_at: Instant,
    stale_after: Duration,
    /// The round that last saw the group.
    seen: Instant,
}

impl Quiescence {
    pub(crate) fn new(node_id: NodeId, timing: RaftTiming) -> Quiescence {
        Quiescence { node_id, timing, heard: Mutex::default() }
    }

    /// Records a peer's heartbeat.
    pub(crate) fn record(&self, heartbeat: NodeHeartbeat) {
        if heartbeat.node_id == self.node_id {
            return;
        }
        let groups = heartbeat
            .groups
            .iter()
            .map(|g| (GroupId(g.group_id), View { term: g.term, leader: (g.leader_id != 0).then_some(g.leader_id) }))
            .collect();
        self.heard
            .lock()
            .expect("heard map lock poisoned")
            .insert(heartbeat.node_id, Heard { at: Instant::now(), groups });
    }

    /// How long after its last append a leader's group may go quiet: long
    /// enough for a few heartbeats to carry the commit index to followers.
    fn quiet_after(&self) -> Duration {
        Duration::from_millis(2 * self.timing.election_timeout_max_ms)
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.timing.heartbeat_interval_ms)
    }

    /// A staleness limit in the election timeout range, like openraft's own.
    fn draw_stale_after(&self) -> Duration {
        let (min, max) = (self.timing.election_timeout_min_ms, self.timing.election_timeout_max_ms);
        Duration::from_millis(rand::random_range(min..max.max(min + 1)))
    }
}

/// What `peer` last said of `group_id`, if it said it within `max_age`.
fn heard_within(heard: &HashMap<NodeId, Heard>, peer: NodeId, group_id: GroupId, max_age: Duration) -> Option<View> {
    let heard = heard.get(&peer).filter(|h| h.at.elapsed() < max_age)?;
    heard.groups.get(&group_id).copied()
}

/// The waits of the rule, for one group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A leader's group goes quiet once it has appended nothing this long.
    pub quiet_after: Duration,
    /// A follower ticks again once its leader's node is silent this long.
    pub stale_after: Duration,
    /// A leader counts a follower as heard from within this long.
    pub follower_max_age: Duration,
}

/// Whether a group may be quiet. `heard(peer, max_age)` is what `peer` said
/// of the group within `max_age`, `None` if nothing that fresh.
pub(crate) fn quiet(
    me: NodeId,
    observed: &Observed,
    idle_for: Duration,
    limits: Limits,
    heard: impl Fn(NodeId, Duration) -> Option<View>,
) -> bool {
    match observed.state {
        ServerState::Leader => {
            let following_me = View { term: observed.view.term, leader: Some(me) };
            idle_for >= limits.quiet_after
                && observed.followers.iter().all(|follower| match heard(*follower, limits.follower_max_age) {
                    // A follower that is not heard from is down or cut off:
                    // heartbeats would not reach it either. When it comes back
                    // it does not report following this leader, and the group
                    // wakes to bring it in.
                    None => true,
                    Some(view) => view == following_me && observed.caught_up.contains(follower),
                })
        }
        ServerState::Follower => match observed.view.leader {
            Some(leader) if leader != me => {
                heard(leader, limits.stale_after) == Some(View { term: observed.view.term, leader: Some(leader) })
            }
            _ => false,
        },
        _ => false,
    }
}

fn observe(me: NodeId, group: &QueueGroup) -> (Observed, Option<u64>) {
    let metrics = group.raft.metrics();
    let metrics = metrics.borrow_watched();
    let last_log_index = metrics.last_log_index;
    // Only a leader's rule looks at its followers. (A leader without
    // replication progress has no follower caught up, so it stays awake.)
    let (followers, caught_up) = if metrics.state == ServerState::Leader {
        let caught_up = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(_, matched)| matched.as_ref().map(|l| l.index()) == last_log_index)
            .map(|(id, _)| *id)
            .collect();
        (metrics.membership_config.membership().voter_ids().filter(|id| *id != me).collect(), caught_up)
    } else {
        (Vec::new(), HashSet::new())
    };
    let observed = Observed {
        state: metrics.state,
        view: View { term: metrics.current_term, leader: metrics.current_leader },
        followers,
        caught_up,
    };
    (observed, last_log_index)
}

/// Runs until the group manager is dropped: each heartbeat interval, decides
/// for every queue group whether it is quiet, and tells the peers what this
/// node knows. One pass over the groups in place, without cloning them: with
/// a thousand idle groups this loop is most of what the node does.
pub(crate) async fn run(manager: Weak<GroupManager>) {
    let mut tracks: HashMap<GroupId, Track> = HashMap::new();
    let mut round = {
        let Some(manager) = manager.upgrade() else { return };
        tokio::time::interval(manager.quiescence().heartbeat_interval())
    };
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        round.tick().await;
        let Some(manager) = manager.upgrade() else { return };
        let quiescence = manager.quiescence();
        let me = manager.node_id();
        let now = Instant::now();
        let follower_max_age = Duration::from_millis(quiescence.timing.election_timeout_min_ms);
        let mut views = Vec::with_capacity(tracks.len());
        {
            let heard = quiescence.heard.lock().expect("heard map lock poisoned");
            manager.for_each_queue_group(|group| {
                let (observed, last_log_index) = observe(me, group);
                let track = tracks.entry(group.group_id).or_insert_with(|| Track {
                    last_log_index,
                    appended_at: now,
                    stale_after: quiescence.draw_stale_after(),
                    seen: now,
                });
                track.seen = now;
                if track.last_log_index != last_log_index {
                    track.last_log_index = last_log_index;
                    track.appended_at = now;
                }
                let limits =
                    Limits { quiet_after: quiescence.quiet_after(), stale_after: track.stale_after, follower_max_age };
                let is_quiet = quiet(me, &observed, now.duration_since(track.appended_at), limits, |peer, max_age| {
                    heard_within(&heard, peer, group.group_id, max_age)
                });
                if group.set_quiet(is_quiet) != is_quiet {
                    debug!(group_id = %group.group_id, quiet = is_quiet, "group timers {}", if is_quiet { "stopped" } else { "running" });
                    let runtime = group.raft.runtime_config();
                    runtime.heartbeat(!is_quiet);
                    runtime.tick(!is_quiet);
                }
                views.push(GroupView {
                    group_id: group.group_id.0,
                    term: observed.view.term,
                    leader_id: observed.view.leader.unwrap_or(0),
                });
            });
        }
        // Groups that were not seen this round are gone.
        tracks.retain(|_, track| track.seen == now);
        send_heartbeats(&manager, NodeHeartbeat { node_id: me, groups: views });
    }
}

/// One heartbeat to each peer, sent in the background: a slow peer must not
/// hold up the round.
fn send_heartbeats(manager: &GroupManager, heartbeat: NodeHeartbeat) {
    let me = manager.node_id();
    let timeout = manager.quiescence().heartbeat_interval();
    for (peer, node) in manager.members() {
        if peer == me {
            continue;
        }
        let Ok(channel) = manager.peers().channel(&node.addr) else { continue };
        let mut request = tonic::Request::new(heartbeat.clone());
        request.set_timeout(timeout);
        tokio::spawn(async move {
            if let Err(status) = RaftTransportClient::new(channel).heartbeat(request).await {
                debug!(peer, error = %status, "node heartbeat failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = 1;
    const QUIET_AFTER: Duration = Duration::from_secs(4);
    const STALE_AFTER: Duration = Duration::from_millis(1500);
    const LIMITS: Limits =
        Limits { quiet_after: QUIET_AFTER, stale_after: STALE_AFTER, follower_max_age: Duration::from_secs(1) };

    fn leader(term: u64) -> Observed {
        Observed {
            state: ServerState::Leader,
            view: View { term, leader: Some(ME) },
            followers: vec![2, 3],
            caught_up: [2, 3].into(),
        }
    }

    fn follower(term: u64, leader: NodeId) -> Observed {
        Observed {
            state: ServerState::Follower,
            view: View { term, leader: Some(leader) },
            followers: Vec::new(),
            caught_up: HashSet::new(),
        }
    }

    fn says(term: u64, leader: NodeId) -> Option<View> {
        Some(View { term, leader: Some(leader) })
    }

    #[test]
    fn idle_leader_goes_quiet_when_followers_follow_it() {
        let observed = leader(5);
        let everyone_follows = |_, _| says(5, ME);
        assert!(quiet(ME, &observed, QUIET_AFTER, LIMITS, everyone_follows));
        // Not idle long enough: followers may not have the commit index yet.
        assert!(!quiet(ME, &observed, QUIET_AFTER / 2, LIMITS, everyone_follows));
    }

    #[test]
    fn leader_stays_awake_for_a_follower_that_does_not_follow_it() {
        let observed = leader(5);
        // Node 3 restarted and knows no leader yet: heartbeats must reach it.
        let unaware = |peer, _| if peer == 3 { Some(View { term: 5, leader: None }) } else { says(5, ME) };
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, unaware));
        // Node 3 follows someone else in a newer term: this leader must step down.
        let moved_on = |peer, _| if peer == 3 { says(6, 2) } else { says(5, ME) };
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, moved_on));
    }

    #[test]
    fn leader_stays_awake_for_a_follower_that_lags() {
        let mut observed = leader(5);
        observed.caught_up.remove(&2);
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, |_, _| says(5, ME)));
    }

    #[test]
    fn leader_ignores_a_follower_that_is_not_heard_from() {
        let mut observed = leader(5);
        observed.caught_up.remove(&3);
        let three_is_down = |peer, _| if peer == 3 { None } else { says(5, ME) };
        assert!(quiet(ME, &observed, QUIET_AFTER, LIMITS, three_is_down));
    }

    #[test]
    fn follower_is_quiet_while_its_leader_claims_the_group_in_its_term() {
        let observed = follower(5, 2);
        assert!(quiet(ME, &observed, Duration::ZERO, LIMITS, |_, _| says(5, 2)));
    }

    #[test]
    fn follower_ticks_when_its_leader_falls_silent_or_moves_on() {
        let observed = follower(5, 2);
        // Silent: nothing heard within the staleness limit it asks for.
        let silent = |_, max_age: Duration| if max_age == STALE_AFTER { None } else { says(5, 2) };
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, silent));
        // Node 2 no longer leads the group.
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, |_, _| Some(View { term: 5, leader: None })));
        // Node 2 leads it in a newer term than this follower knows.
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, |_, _| says(6, 2)));
    }

    #[test]
    fn candidates_and_leaderless_followers_tick() {
        let mut observed = follower(5, 2);
        observed.view.leader = None;
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, |_, _| says(5, 2)));
        observed.state = ServerState::Candidate;
        observed.view.leader = Some(2);
        assert!(!quiet(ME, &observed, QUIET_AFTER, LIMITS, |_, _| says(5, 2)));
    }
}
