//! [`OsLiveness`]: the liveness the algorithm modules are given in production.

use crate::liveness::{Liveness, Owner, judge};

/// Liveness from the operating system: `/proc` (or `kill(pid, 0)`), judged by
/// [`judge`](crate::liveness::judge).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OsLiveness;

impl Liveness for OsLiveness {
    fn is_alive(&self, owner: Owner) -> bool {
        judge(owner, super::process_status(owner.pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_knows_we_are_alive() {
        let (pid, start) = super::super::current_identity();
        assert!(OsLiveness.is_alive(Owner {
            pid,
            start: Some(start),
            start_fp: None
        }));
        assert!(!OsLiveness.is_alive(Owner {
            pid,
            start: Some(start + 1),
            start_fp: None
        }));
    }
}
