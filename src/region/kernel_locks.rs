//! Keyed tables: which of this process's guards holds which description of the lock file
//! with its kernel lock — the table's bookkeeping. Taking the `flock` (and waiting for it) is
//! `crate::lock_file`'s; a guard adds its lock here once taken and its release drops it here.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use super::{Region, io_err};
use crate::error::{IoOp, Result};
use crate::sys;

/// The key a guard's kernel lock is kept under (see `RawToken::key`): ticket (or head), claim
/// word (or bypass owner field), process.
pub(crate) type KernelKey = (u64, u64, u32);

/// The `flock` a guard of a keyed table holds on the table's lock file, on a description of
/// its own (close-on-exec). Kept by the table, not in the guard: the guards of ordinary
/// tables stay as small as before, and their release only tests whether the table has a lock
/// file. Found again by the guard's key.
///
/// The description is a [`sys::ForkLocal`]: a child made by `fork` gets it pointed at
/// /dev/null, so that a holder that forks a worker and dies does not leave the lock file
/// locked by the worker.
#[derive(Debug)]
pub(crate) struct KernelLock {
    key: KernelKey,
    file: sys::ForkLocal,
}

/// The descriptions of the kernel locks that process `pid`'s guards hold (handed to the
/// exec guardian: see `Region::fork_exec_guardian`).
pub(super) fn descriptions_of(
    held: &[KernelLock],
    pid: u32,
) -> impl Iterator<Item = BorrowedFd<'_>> {
    held.iter()
        .filter(move |k| k.key.2 == pid)
        .map(|k| k.file.as_fd())
}

impl Region {
    /// Keeps `file`, the description holding the kernel lock a guard just took, under the
    /// guard's `key`.
    pub(crate) fn keep_kernel_lock(&self, key: KernelKey, file: sys::ForkLocal) {
        self.kernel_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(KernelLock { key, file });
    }

    /// Drops the kernel lock kept under `key`, if there is one (for every copy of the
    /// description: a forked child's too), before the guard releases the ring token, and
    /// closes its description. A failed `LOCK_UN` leaves the lock to the close.
    #[cold]
    #[inline(never)]
    pub(crate) fn release_kernel_lock(&self, key: KernelKey) {
        let k = {
            let mut held = self.kernel_locks.lock().unwrap_or_else(|p| p.into_inner());
            match held.iter().position(|k| k.key == key) {
                Some(i) => held.swap_remove(i),
                None => return, // a guard taken without one (the descriptor form's)
            }
        };
        let _ = sys::flock_unlock_fd(k.file.as_fd());
    }

    /// A new descriptor of the description holding the kernel lock kept under `key` (see
    /// `TokenGuard::lock_file_description`); `None` when there is none.
    pub(crate) fn kernel_lock_description(&self, key: KernelKey) -> Result<Option<File>> {
        let held = self.kernel_locks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(k) = held.iter().find(|k| k.key == key) else {
            return Ok(None);
        };
        k.file
            .try_clone()
            .map(Some)
            .map_err(io_err(&self.path, IoOp::DupLockFileDescription))
    }
}
