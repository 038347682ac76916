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
    /// Its slot in the descriptors a forked child lets go of (`sys::remember_held`).
    held: Option<usize>,
}

impl Drop for KernelLock {
    fn drop(&mut self) {
        if let Some(slot) = self.held {
            sys::forget_held(slot, self.file.as_fd());
        }
    }
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
    // A child forked while we hold the lock must not keep the description (and the lock)
    // after we are gone: it is pointed at /dev/null in the child. Registered before the lock
    // is taken, so that no fork in between is missed.
    let held = sys::remember_held(file.as_fd());
    let k = KernelLock { file, held };
    let got = flock_within(k.file.as_fd(), share, patience).map_err(|cause| Error::Io {
        path: shown(),
        op: "flock",
        cause,
    })?;
    Ok(got.then_some(k))
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

/// What [`LockTicket::find_lock_file`](crate::LockTicket::find_lock_file) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockFileSearch {
    /// Nothing to find: the handle knows its lock file already, the table is not keyed by a
    /// lock file, or it has no holder in the descriptor form.
    NotNeeded,
    /// A process has the lock file open: the handle now judges descriptor-form holders
    /// through a description of it (opened through `/proc/PID/fd`), exactly.
    Found,
    /// No process has the lock file open (it may have been deleted): every descriptor-form
    /// holder registered so far closed its descriptor, and is judged dead from now on.
    NoneOpen,
    /// This process cannot see every process that might have it open (`/proc` missing or
    /// mounted with `hidepid`, descriptors of other users, a holder of another PID
    /// namespace): descriptor-form holders stay judged alive.
    Inconclusive(&'static str),
}

/// The device and inode a keyed table's file name stands for (`lockticket-file-DEV-INO.lt`).
fn keyed_dev_ino(table: &Path) -> Option<(u64, u64)> {
    let name = table.file_name()?.to_str()?;
    let key = name.strip_prefix("lockticket-file-")?.strip_suffix(".lt")?;
    let (dev, ino) = key.split_once('-')?;
    Some((
        u64::from_str_radix(dev, 16).ok()?,
        u64::from_str_radix(ino, 16).ok()?,
    ))
}

/// What one pass over `/proc/*/fd` found for the file `(dev, ino)`.
enum Scan {
    Found(File),
    None,
    Incomplete(&'static str),
}

/// Looks through every process's descriptors for one of the file `(dev, ino)`; opens it again
/// (read-only, close-on-exec) when found.
fn scan_proc(want: (u64, u64)) -> Scan {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Scan::Incomplete("no /proc");
    };
    let mut incomplete = None;
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let fds = match std::fs::read_dir(p.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // exited
            Err(_) => {
                incomplete = Some("the descriptors of some processes cannot be read");
                continue;
            }
        };
        for fd in fds.flatten() {
            let path = fd.path();
            let Ok(m) = std::fs::metadata(&path) else {
                continue; // closed meanwhile, or not a file we may stat
            };
            if (m.dev(), m.ino()) != want {
                continue;
            }
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(&path);
            return match opened {
                Ok(f) if f.metadata().is_ok_and(|m| (m.dev(), m.ino()) == want) => Scan::Found(f),
                // It is open somewhere, but not for us to judge through.
                _ => Scan::Incomplete("the lock file is open in a process we cannot open it from"),
            };
        }
    }
    match incomplete {
        Some(why) => Scan::Incomplete(why),
        None => Scan::None,
    }
}

/// True when `/proc` hides other users' processes from us (`hidepid`, unless we are root).
fn proc_hides_processes() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    info.lines().any(|l| {
        let mut halves = l.split(" - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        left.split(' ').nth(4) == Some("/proc")
            && right.split(' ').nth(2).is_some_and(|opts| {
                opts.split(',').any(|o| {
                    o.strip_prefix("hidepid=")
                        .is_some_and(|v| v != "0" && v != "off")
                        || o == "subset=pid"
                })
            })
    })
}

impl crate::LockTicket {
    /// For a table keyed by a lock file whose handle was not given that file (an inspecting
    /// tool names the table itself, or the file was deleted): looks for the lock file among
    /// the descriptors every process has open (`/proc/*/fd`), so that holders in the
    /// descriptor form ([`lock_fd`](Self::lock_fd)) are judged rather than always taken for
    /// alive. Found open: the handle judges through it ([`LockFileSearch::Found`]). Open
    /// nowhere — the holders' descriptors are all closed, typically because the lock file was
    /// deleted and its shell closed it — the descriptor-form holders registered so far are
    /// dead for good ([`LockFileSearch::NoneOpen`]): `status` shows them dead and a
    /// cleaner removes the table. Where this process cannot see every process
    /// ([`LockFileSearch::Inconclusive`]) nothing changes: they stay judged alive, never
    /// wrongly dead.
    ///
    /// It reads every process's descriptor directory (twice, so that a descriptor handed on
    /// meanwhile is not missed): a call for tools, not for a lock path.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let name = format!("doc-find-lock-file-{}", std::process::id());
    /// let lt = lockticket::LockTicket::open(&name)?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// // A named table is not keyed by a lock file: nothing to find.
    /// assert_eq!(lt.find_lock_file()?, lockticket::LockFileSearch::NotNeeded);
    /// # Ok(()) }
    /// ```
    pub fn find_lock_file(&self) -> Result<LockFileSearch> {
        if self.anchor.get().is_some() {
            return Ok(LockFileSearch::NotNeeded);
        }
        let region = self.table()?;
        let Some(want) = keyed_dev_ino(region.path()) else {
            return Ok(LockFileSearch::NotNeeded);
        };
        // The entries first, the search second: an entry whose description is open nowhere
        // *after* it was recorded is closed for good (a closed description never reopens); a
        // later registrant of the same entry bumps its generation, which the verdict names.
        let entries = crate::procs::fd_entries(region.procs());
        if entries.is_empty() {
            return Ok(LockFileSearch::NotNeeded);
        }
        let ours = sys::pid_namespace();
        if ours == 0
            || crate::procs::fd_namespaces(region.procs())
                .iter()
                .any(|&ns| ns != ours)
        {
            return Ok(LockFileSearch::Inconclusive(
                "a holder registered from another PID namespace",
            ));
        }
        if proc_hides_processes() {
            return Ok(LockFileSearch::Inconclusive(
                "/proc hides other processes (hidepid)",
            ));
        }
        for _ in 0..2 {
            match scan_proc(want) {
                Scan::Found(f) => {
                    self.install_anchor(f)?;
                    return Ok(LockFileSearch::Found);
                }
                Scan::Incomplete(why) => return Ok(LockFileSearch::Inconclusive(why)),
                Scan::None => {}
            }
        }
        region.set_fd_closed(entries);
        Ok(LockFileSearch::NoneOpen)
    }
}
