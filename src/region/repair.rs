//! Rebuilding an inconsistent ring under the cold lock (see `crate::repair`).

use std::fmt;
use std::sync::atomic::Ordering::*;

use crate::procs;
use crate::ring::RingRepair;

use super::Cold;

/// What a repair of the ring did (see [`LockTicket::repair`](crate::LockTicket::repair)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Repaired {
    /// What was inconsistent.
    pub problem: String,
    /// `head` before the repair.
    pub old_head: u64,
    /// `head` after it.
    pub new_head: u64,
    /// Claims of dead processes (or garbage) dropped.
    pub dropped: usize,
    /// Live requests kept, in their order.
    pub kept: usize,
}

impl fmt::Display for Repaired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; head moved from {} to {}, {} live request(s) kept in order, {} dead claim(s) dropped",
            self.problem, self.old_head, self.new_head, self.kept, self.dropped
        )
    }
}

/// What [`Cold::repair_ring`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Repair {
    /// The ring is consistent (perhaps another process repaired it first).
    NotNeeded,
    /// Rebuilt.
    Repaired(Repaired),
    /// Not safe to rebuild: live processes have claims in the ring.
    Refused {
        /// What is wrong.
        problem: String,
        /// Live processes named in the ring.
        live: Vec<u32>,
        /// Those of them marked holding.
        holders: Vec<u32>,
    },
}

impl Cold<'_> {
    /// Rebuilds an inconsistent ring (issue 9: never a permanent outage). Looks again under
    /// this lock (another process may have repaired it already). With no live process named
    /// in any slot, the ring is reset at once. With live ones, it is rebuilt around them only
    /// when `keep_live` is set (`lockticket repair`) and none of them holds the token:
    /// otherwise a live holder whose claim was overwritten could be joined by a second one.
    pub(crate) fn repair_ring(&self, keep_live: bool) -> Repair {
        let r = self.region;
        // PIDs for the messages (0 when the entry no longer names the registration).
        let pid =
            |c: &crate::ring::SlotClaim| procs::registrant(r.procs(), c.owner).map_or(0, |g| g.pid);
        match r.ring().repair(&r.liveness(), keep_live) {
            RingRepair::NotNeeded => Repair::NotNeeded,
            RingRepair::Rebuilt {
                problem,
                old_head,
                new_head,
                dropped,
                kept,
            } => {
                r.header().repairs.fetch_add(1, Relaxed);
                Repair::Repaired(Repaired {
                    problem,
                    old_head,
                    new_head,
                    dropped,
                    kept,
                })
            }
            RingRepair::Refused {
                problem,
                live,
                holders,
            } => Repair::Refused {
                problem,
                live: live.iter().map(pid).collect(),
                holders: holders.iter().map(pid).collect(),
            },
        }
    }
}
