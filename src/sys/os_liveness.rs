//! Liveness by PID and start time, from `/proc`: what a process table entry falls back to
//! where the kernel has no OFD locks, and how a forked child watches a parent it has no pidfd
//! for. Wrong across PID namespaces and under `hidepid` (see docs/design.md): never the first
//! choice.

use super::{ProcStatus, process_status};

/// True unless the process `pid` that started at `start` (clock ticks after boot) is
/// certainly gone: no such PID, a zombie, or another process with that PID.
pub(crate) fn pid_alive(pid: u32, start: u64) -> bool {
    match process_status(pid) {
        ProcStatus::Dead => false,
        ProcStatus::AliveUnknownStart => true,
        ProcStatus::Alive { start: s } => s == start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_knows_we_are_alive() {
        let (pid, start) = super::super::current_identity();
        assert!(pid_alive(pid, start));
        assert!(!pid_alive(pid, start + 1));
    }
}
