//! The kernel lock on a keyed table's lock file (issue 17, item 4).
//!
//! A keyed table (see [`table_for_lock_file`](crate::table_for_lock_file)) lives in the
//! default directory of the process that opens it. Processes that see different directories
//! (a container or a service with a private `/dev/shm`, a read-only `/dev/shm` that sends the
//! table to `/run`, different `directory` options) meet in *different* tables for the same lock
//! file, and each ring grants its own holder. So a holder of a token in a keyed table also
//! takes a `flock` on the lock file itself — `LOCK_EX` for an exclusive token, `LOCK_SH` for a
//! shared one — after the ring granted the token and before the grant is reported, and drops
//! it before the ring token is released. Within one table that `flock` is always free (the
//! ring serialised its holders already): one uncontended system call. Across tables — and
//! against plain flock(1) users of the same file — the kernel keeps them exclusive.
//!
//! Each guard locks its own open file description (opened again from the handle's anchor), so
//! that two shared holders of one process never share one `flock` (a `LOCK_UN` of one would
//! drop the other's), and a forked child's guards never touch its parent's.
//!
//! The descriptor form (`crate::fd`) locks the caller's own descriptor instead: exactly
//! flock(1)'s semantics, the lock lives as long as that open file description.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::share::Share;
use crate::sys;
use crate::token::Patience;

/// The `flock` a guard of a keyed table holds on the table's lock file, on a description of
/// its own (close-on-exec).
#[derive(Debug)]
pub(crate) struct KernelLock {
    file: File,
}

impl KernelLock {
    /// The description holding the lock.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Drops the lock (for every copy of the description: a forked child's too), before the
    /// ring token is released. A failure leaves the lock to be dropped when the description
    /// is closed, right after.
    #[inline]
    pub(crate) fn unlock(&self) {
        let _ = sys::flock_unlock_fd(self.file.as_fd());
    }
}

/// Takes the `flock` on the lock file behind `anchor` for a token granted in `share` mode,
/// waiting as `patience` allows. `Ok(None)`: not obtained in time (the caller gives the ring
/// token back). `path` names the lock file for messages, and is where it is opened again when
/// `/proc/self/fd` cannot be (checked to be the same file).
pub(crate) fn take(
    anchor: &File,
    path: Option<&Path>,
    share: Share,
    patience: Patience,
) -> Result<Option<KernelLock>> {
    let shown = || {
        path.map(Path::to_path_buf)
            .unwrap_or_else(|| "the lock file".into())
    };
    let file = open_description(anchor, path).map_err(|cause| Error::Io {
        path: shown(),
        op: "open the lock file again",
        cause,
    })?;
    let got = flock_within(file.as_fd(), share, patience).map_err(|cause| Error::Io {
        path: shown(),
        op: "flock",
        cause,
    })?;
    Ok(got.then_some(KernelLock { file }))
}

/// The descriptor form: takes the `flock` on the caller's own description `fd` (shown as
/// `path`), as flock(1) does, waiting as `patience` allows. `Ok(false)`: not obtained in time.
pub(crate) fn take_on(
    fd: BorrowedFd<'_>,
    path: &Path,
    share: Share,
    patience: Patience,
) -> Result<bool> {
    flock_within(fd, share, patience).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        op: "flock",
        cause,
    })
}

/// `flock` on `fd` within `patience`.
fn flock_within(fd: BorrowedFd<'_>, share: Share, patience: Patience) -> std::io::Result<bool> {
    let exclusive = share == Share::Exclusive;
    match patience {
        Patience::Forever => sys::flock_fd(fd, exclusive, false),
        Patience::Try => sys::flock_fd(fd, exclusive, true),
        Patience::Until(deadline) => {
            // Polled: flock(2) has no timeout. Within one table the first try always succeeds
            // (the ring serialised the holders), so this loop is only ever reached when two
            // tables of one lock file meet (processes that see different directories), or a
            // plain flock(1) user holds the file.
            let mut pause = Duration::from_millis(1);
            loop {
                if sys::flock_fd(fd, exclusive, true)? {
                    return Ok(true);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// A new open file description of the file behind `anchor` (close-on-exec): through
/// `/proc/self/fd`, else by `path` if that still names the same file.
fn open_description(anchor: &File, path: Option<&Path>) -> std::io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    match sys::reopen_read_only(anchor.as_fd()) {
        Ok(f) => Ok(f),
        Err(e) => {
            let Some(path) = path else { return Err(e) };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(path)?;
            let (m, want) = (f.metadata()?, anchor.metadata()?);
            if (m.dev(), m.ino()) != (want.dev(), want.ino()) {
                return Err(e);
            }
            Ok(f)
        }
    }
}

impl crate::LockTicket {
    /// Adds the kernel lock on the lock file to `guard`, a token granted in the ring, waiting
    /// for it within `patience`; gives the ring token back when it is not obtained in time.
    #[cold]
    pub(crate) fn lock_file_within<'a>(
        &'a self,
        mut guard: crate::TokenGuard<'a>,
        lock_file: &File,
        patience: Patience,
    ) -> Result<Option<crate::TokenGuard<'a>>> {
        let path = self.lock_file_path.get().map(|p| p.as_path());
        match take(lock_file, path, guard.share(), patience) {
            Ok(Some(k)) => {
                guard.kernel = Some(k);
                Ok(Some(guard))
            }
            Ok(None) => {
                guard.unlock()?;
                Ok(None)
            }
            Err(e) => {
                drop(guard);
                Err(e)
            }
        }
    }

    /// [`Self::lock_file_within`] without a deadline.
    #[cold]
    pub(crate) fn lock_file_forever<'a>(
        &'a self,
        guard: crate::TokenGuard<'a>,
        lock_file: &File,
    ) -> Result<crate::TokenGuard<'a>> {
        match self.lock_file_within(guard, lock_file, Patience::Forever)? {
            Some(g) => Ok(g),
            None => Err(self.corrupted("a kernel lock without deadline returned without the lock")),
        }
    }
}
