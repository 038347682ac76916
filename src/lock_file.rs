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
//!
//! Who does what: this module takes the `flock` (`take`, `take_on`) and judges
//! descriptor-form holders; the token path (`LockTicket::lock_file_within`, in `crate::token`)
//! adds the lock to a guard; the table keeps which guard holds which description
//! (`region::kernel_locks`), and a guard's release drops it there. So imports run one way:
//! `token` → `lock_file` → the lower floors, and neither `region` nor `token` is imported here.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, IoOp, Result};
use crate::patience::Patience;
use crate::share::Share;
use crate::sys;

/// Takes the `flock` on the lock file behind `anchor` for a token granted in `share` mode,
/// waiting as `patience` allows. `Ok(None)`: not obtained in time (the caller gives the ring
/// token back). `path` names the lock file for messages, and is where it is opened again when
/// `/proc/self/fd` cannot be (checked to be the same file). The caller keeps the description
/// (`Region::keep_kernel_lock`) for the guard's release.
pub(crate) fn take(
    anchor: &File,
    path: Option<&Path>,
    share: Share,
    patience: Patience,
) -> Result<Option<sys::ForkLocal>> {
    let shown = || {
        path.map(Path::to_path_buf)
            .unwrap_or_else(|| "the lock file".into())
    };
    let file = open_description(anchor, path).map_err(|cause| Error::Io {
        path: shown(),
        op: IoOp::OpenLockFileAgain,
        cause,
    })?;
    // A child forked while we hold the lock must not keep the description (and the lock)
    // after we are gone: it is pointed at /dev/null in the child. Tracked before the lock is
    // taken, so that no fork in between is missed.
    let file = sys::ForkLocal::new(file);
    match flock_within(file.as_fd(), share, patience) {
        Ok(true) => Ok(Some(file)),
        Ok(false) => Ok(None),
        Err(cause) => Err(Error::Io {
            path: shown(),
            op: IoOp::Flock,
            cause,
        }),
    }
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
        op: IoOp::Flock,
        cause,
    })
}

/// `flock` on `fd` within `patience`.
fn flock_within(fd: BorrowedFd<'_>, share: Share, patience: Patience) -> std::io::Result<bool> {
    let exclusive = share == Share::Exclusive;
    match patience {
        Patience::Forever => sys::flock_fd(fd, exclusive, false),
        Patience::NoWait => sys::flock_fd(fd, exclusive, true),
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

/// What [`LockTicket::judge_fd_holders`](crate::LockTicket::judge_fd_holders) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdHolders {
    /// Nothing to judge: the handle knows its lock file already (it judges exactly), the
    /// table is not keyed by a lock file, or it has no holder in the descriptor form.
    NotNeeded,
    /// The descriptor-form entries were judged from the kernel's list of file locks: `dead`
    /// of them closed their descriptor (they are judged dead from now on), `alive` still
    /// hold it.
    Judged {
        /// Entries whose description still holds its lock-file byte.
        alive: usize,
        /// Entries whose description is closed: dead for good.
        dead: usize,
    },
    /// The kernel's list cannot be trusted here (no `/proc/locks`, or a holder registered
    /// from another PID namespace, whose locks older kernels leave out): descriptor-form
    /// holders stay judged alive, never wrongly dead.
    Unknown(&'static str),
}

/// The device and inode a keyed table's file name stands for
/// (`lockticket-file-DEV-INO[-BIRTH].lt`, see `path::lock_file_key`).
fn keyed_dev_ino(table: &Path) -> Option<(u64, u64)> {
    let name = crate::path::table_name(table.file_name()?)?;
    crate::path::lock_file_key_dev_ino(name)
}

/// The byte ranges of OFD locks held (not waited for) on the file `(major, minor, ino)`,
/// from the text of `/proc/locks` (lines as `1: OFDLCK ADVISORY WRITE -1 fe:00:1234 5 5`).
fn ofd_ranges(locks: &str, major: u64, minor: u64, ino: u64) -> Vec<(u64, Option<u64>)> {
    locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // A waiter's line has "->" after the id; it holds nothing.
            if f.len() < 8 || f[1] != "OFDLCK" {
                return None;
            }
            let mut file = f[5].split(':');
            let (maj, min, i) = (file.next()?, file.next()?, file.next()?);
            if u64::from_str_radix(maj, 16).ok()? != major
                || u64::from_str_radix(min, 16).ok()? != minor
                || i.parse::<u64>().ok()? != ino
            {
                return None;
            }
            let start = f[6].parse::<u64>().ok()?;
            let end = match f[7] {
                "EOF" => None,
                e => Some(e.parse::<u64>().ok()?),
            };
            Some((start, end))
        })
        .collect()
}

impl crate::handle::LockTicket {
    /// For a table keyed by a lock file whose handle was not given that file (a tool names
    /// the table itself, or the lock file was deleted and can no longer be named): judges the
    /// holders in the descriptor form ([`lock_fd`](Self::lock_fd)) from the kernel's list of
    /// file locks (`/proc/locks`, readable by every user, which lists OFD locks whatever
    /// process holds them): an entry whose lock-file byte is locked by nobody has closed its
    /// descriptor, for good, and is judged dead from then on — `status` shows it dead and a
    /// cleaner removes the table. Without this such holders are always judged alive (never
    /// wrong, but a deleted lock file's table then stays "in use" forever).
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let name = format!("doc-judge-fd-{}", std::process::id());
    /// let lt = lockticket::LockTicket::open(&name)?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// // A named table is not keyed by a lock file: nothing to judge.
    /// assert_eq!(lt.judge_fd_holders()?, lockticket::FdHolders::NotNeeded);
    /// # Ok(()) }
    /// ```
    pub fn judge_fd_holders(&self) -> Result<FdHolders> {
        if self.anchor.get().is_some() {
            return Ok(FdHolders::NotNeeded);
        }
        let region = self.table()?;
        let Some((dev, ino)) = keyed_dev_ino(region.path()) else {
            return Ok(FdHolders::NotNeeded);
        };
        // The entries first, the kernel's list second: an entry whose byte is locked by
        // nobody *after* it was recorded has closed its description for good (a closed
        // description never comes back; a retired entry is unlocked by its owner); a later
        // registrant of the same entry locks the byte first, then bumps the generation, which
        // the verdict names.
        let entries = crate::procs::fd_entries(region.procs());
        if entries.is_empty() {
            return Ok(FdHolders::NotNeeded);
        }
        let ours = sys::pid_namespace();
        if ours == 0
            || crate::procs::fd_namespaces(region.procs())
                .iter()
                .any(|&ns| ns != ours)
        {
            return Ok(FdHolders::Unknown(
                "a holder registered from another PID namespace",
            ));
        }
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
            return Ok(FdHolders::Unknown("no /proc/locks"));
        };
        let dev = nix::libc::dev_t::from(dev);
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let ranges = ofd_ranges(&locks, major, minor, ino);
        type Entries = Vec<(u32, u32)>;
        let (dead, alive): (Entries, Entries) = entries.into_iter().partition(|&(i, _)| {
            let byte = crate::procs::fd_lock_offset(i);
            !ranges
                .iter()
                .any(|&(start, end)| start <= byte && end.is_none_or(|e| byte <= e))
        });
        let judged = FdHolders::Judged {
            alive: alive.len(),
            dead: dead.len(),
        };
        region.set_fd_closed(dead);
        Ok(judged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_names_and_proc_locks_lines_parse() {
        assert_eq!(
            keyed_dev_ino(Path::new("/dev/shm/lockticket-file-fe00-98c037.lt")),
            Some((0xfe00, 0x98c037))
        );
        assert_eq!(
            keyed_dev_ino(Path::new("/dev/shm/lockticket-file-fe00-98c037-g5.lt")),
            Some((0xfe00, 0x98c037))
        );
        assert_eq!(keyed_dev_ino(Path::new("/dev/shm/lockticket-job.lt")), None);
        let locks = "1: OFDLCK ADVISORY  WRITE -1 fe:00:10011160 5500021044926218241 5500021044926218241\n\
                     2: FLOCK  ADVISORY  WRITE 16225 fe:00:10011160 0 EOF\n\
                     3: -> OFDLCK ADVISORY  WRITE -1 fe:00:10011160 7 7\n\
                     4: OFDLCK ADVISORY  READ -1 fe:00:99 9 EOF\n";
        assert_eq!(
            ofd_ranges(locks, 0xfe, 0, 10011160),
            vec![(5500021044926218241, Some(5500021044926218241))]
        );
        assert_eq!(ofd_ranges(locks, 0xfe, 0, 99), vec![(9, None)]);
        assert!(ofd_ranges(locks, 0xfe, 1, 99).is_empty());
    }
}
