//! Is the owner of a slot still alive? Answers that survive PID reuse.
//!
//! This module is the pure decision ([`judge`]) and the [`Liveness`] trait the algorithm
//! modules take; the implementation that asks the OS is `sys::OsLiveness`.
//!
//! A process is named by `(pid, start time)`: the start time (clock ticks after boot, field 22
//! of `/proc/PID/stat`) differs between a dead process and a later one that got its PID.
//! Zombies count as dead: a SIGKILLed process whose parent has not reaped it yet must not hold
//! a lock.

use crate::sys::ProcStatus;

pub(crate) use crate::layout::START_FP_BITS;
/// Mask for [`START_FP_BITS`].
pub(crate) const START_FP_MASK: u64 = (1 << START_FP_BITS) - 1;

/// What is known about the owner of a slot or a registry entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    /// Process id.
    pub pid: u32,
    /// Full start time, when published.
    pub start: Option<u64>,
    /// Low [`START_FP_BITS`] of the start time (always known for ring slots).
    pub start_fp: Option<u64>,
}

/// Decides liveness. The OS implementation (`sys::OsLiveness`) reads /proc; tests use a table
/// of their own.
pub(crate) trait Liveness {
    /// True unless `owner` is certainly dead.
    fn is_alive(&self, owner: Owner) -> bool;
}

/// The decision, apart from the OS query (unit-testable).
pub(crate) fn judge(owner: Owner, status: ProcStatus) -> bool {
    match status {
        ProcStatus::Dead => false,
        ProcStatus::AliveUnknownStart => true,
        ProcStatus::Alive { start } => match (owner.start, owner.start_fp) {
            (Some(s), _) => s == start,
            (None, Some(fp)) => fp == start & START_FP_MASK,
            (None, None) => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(start: Option<u64>, fp: Option<u64>) -> Owner {
        Owner {
            pid: 7,
            start,
            start_fp: fp,
        }
    }

    #[test]
    fn a_recycled_pid_is_dead() {
        let alive = ProcStatus::Alive { start: 1000 };
        assert!(judge(owner(Some(1000), None), alive));
        assert!(!judge(owner(Some(999), None), alive));
        assert!(judge(owner(None, Some(1000 & START_FP_MASK)), alive));
        assert!(!judge(owner(None, Some(1001 & START_FP_MASK)), alive));
        assert!(!judge(owner(Some(1000), None), ProcStatus::Dead));
        assert!(judge(owner(Some(1), None), ProcStatus::AliveUnknownStart));
    }
}
