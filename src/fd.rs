//! The descriptor form of flock(1) (`flock 9`, `flock -u 9`): a token held for an *open file
//! description* of the table's lock file rather than for a process.
//!
//! The process that asks waits in the queue as itself (so that a kill while waiting leaves
//! nothing held). Once granted, under the table's cold lock, it registers a process-table
//! entry of kind `KIND_FD` — vouched for by an OFD lock on byte `FD_LOCK_BASE + index` of the
//! *lock file*, placed through the caller's descriptor, so on the caller's description — and
//! hands its ticket over to that entry (`Ring::transfer`). The token is then held for as long
//! as that description is open somewhere (the shell that has `9>file` open) or until
//! [`LockTicket::unlock_fd`] releases it. Checkers need an *anchor* (a description of the
//! lock file holding no locks) to judge such entries; without one they are judged alive. See
//! docs/design.md, "The descriptor form".

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{DescriptorProblem, Error, Result};
use crate::handle::LockTicket;
use crate::liveness::Registration;
use crate::patience::{Patience, patience_for};
use crate::region::Region;
use crate::ring::{self, Ticket};
use crate::share::Share;
use crate::{procs, sys};

/// What [`LockTicket::lock_fd`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FdLock {
    /// The description held the token in this mode already: nothing changed (as flock(2)
    /// asked again on the same description).
    pub already_held: bool,
    /// The description held it in the other mode: that token was released first, then this
    /// one taken (not atomic, as flock(2)'s conversion).
    pub converted: bool,
    /// The previous holder died holding the token (like `EOWNERDEAD`). Never raised for a
    /// previous holder of the descriptor form: closing the descriptor is how it releases,
    /// and a reclaimer cannot tell that from a death.
    pub previous_holder_died: bool,
}

/// Where the table for the lock file open on descriptor `fd` lives: the table
/// [`table_for_lock_file`](crate::table_for_lock_file) gives for that file (named after its
/// device, inode and birth, in `directory`, default [`default_directory`](crate::default_directory)),
/// found by `fstat` on the descriptor, never by a path — and never the descriptor's file itself,
/// even when it is a lock table (a shell's `9>file` truncates a file). Refused: a descriptor
/// that is not open ([`Error::Io`] with `EBADF`), anything but a regular file or a directory
/// ([`Error::NotARegularFile`]), and a file on a network filesystem
/// ([`Error::LockFileOnNetwork`]).
///
/// ```
/// use std::os::fd::AsFd;
/// # fn main() -> lockticket::Result<()> {
/// let dir = std::env::temp_dir();
/// let f = std::fs::File::open(&dir).unwrap();
/// let by_fd = lockticket::table_for_lock_fd(f.as_fd(), None)?;
/// let by_path = lockticket::table_for_lock_file(&dir, None)?.unwrap();
/// assert_eq!(by_fd, by_path);
/// # Ok(()) }
/// ```
pub fn table_for_lock_fd(fd: BorrowedFd<'_>, directory: Option<&Path>) -> Result<PathBuf> {
    use std::os::fd::AsRawFd;
    let path = describe_fd(fd);
    let io = |op: crate::error::IoOp| {
        let path = path.clone();
        move |cause| Error::Io { path, op, cause }
    };
    sys::fd_access_mode(fd.as_raw_fd()).map_err(io(crate::error::IoOp::DescriptorFlags))?;
    let (dev, ino, kind) = sys::fstat_fd(fd).map_err(io(crate::error::IoOp::Fstat))?;
    if kind != libc::S_IFREG && kind != libc::S_IFDIR {
        return Err(Error::NotARegularFile {
            path,
            kind: match kind {
                libc::S_IFIFO => "a FIFO or pipe",
                libc::S_IFSOCK => "a socket",
                libc::S_IFCHR | libc::S_IFBLK => "a device",
                _ => "not a regular file",
            },
        });
    }
    if let Some(fs) = sys::fs_magic_of_file(fd)
        .ok()
        .and_then(sys::network_fs_name)
    {
        return Err(Error::LockFileOnNetwork { path, fs });
    }
    let dir = match directory {
        Some(d) => d.to_path_buf(),
        None => crate::path::default_directory()?,
    };
    let key = crate::path::lock_file_key(dev, ino, sys::birth(fd));
    Ok(dir.join(crate::path::table_file_name(&key)))
}

/// What descriptor `fd` names, for messages: the path the kernel shows, else `descriptor N`.
fn describe_fd(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from(format!("descriptor {}", fd.as_raw_fd())))
}

impl LockTicket {
    /// Tells the handle the lock file its table is keyed by (the file given to
    /// [`table_for_lock_file`](crate::table_for_lock_file)): the handle keeps a read-only
    /// description of it (holding no locks) through which it judges tokens held in the
    /// descriptor form ([`lock_fd`](Self::lock_fd)). Without it such a holder is always
    /// judged alive: never wrong, but a handle that does not know the lock file cannot
    /// reclaim a token whose descriptor was closed. Call it before the first lock call; the
    /// first lock file given stays.
    ///
    /// It also makes every token of this handle take the kernel's `flock` on the lock file
    /// (`LOCK_EX`, or `LOCK_SH` for a shared token) once the queue granted it, dropped just
    /// before the token is released (see [`TokenGuard::lock_file_description`]): processes that
    /// meet in *another* table for the same file (another directory, a private `/dev/shm`)
    /// and plain flock(1) users of the file stay excluded. Within one table that `flock` is
    /// always free at once; across tables only exclusion holds, not arrival order.
    ///
    /// [`TokenGuard::lock_file_description`]: crate::TokenGuard::lock_file_description
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// let lock_file = std::env::temp_dir();
    /// let table = lockticket::table_for_lock_file(&lock_file, None)?.unwrap();
    /// let lt = lockticket::LockTicket::open(&table)?;
    /// lt.set_lock_file(&lock_file)?;
    /// # Ok(()) }
    /// ```
    pub fn set_lock_file(&self, lock_file: &Path) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(lock_file)
            .map_err(|cause| Error::Io {
                path: lock_file.to_path_buf(),
                op: crate::error::IoOp::Open,
                cause,
            })?;
        if self.anchor.get().is_none() {
            let _ = self
                .lock_file_path
                .set(std::path::absolute(lock_file).unwrap_or_else(|_| lock_file.to_path_buf()));
        }
        self.install_anchor(f)
    }

    fn install_anchor(&self, f: File) -> Result<()> {
        let _ = self.anchor.set(f);
        let anchor = self.anchor.get().expect("just set");
        for r in self
            .regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            r.set_anchor(anchor)?;
        }
        Ok(())
    }

    /// The handle's anchor, made from `fd` when it has none; refused when it names another
    /// file than `fd`.
    fn fd_anchor(&self, fd: BorrowedFd<'_>) -> Result<&File> {
        let path = describe_fd(fd);
        let io = |op: crate::error::IoOp| {
            let path = path.clone();
            move |cause| Error::Io { path, op, cause }
        };
        let want = sys::fstat_dev_ino(fd).map_err(io(crate::error::IoOp::Fstat))?;
        if self.anchor.get().is_none() {
            let f = sys::reopen_read_only(fd)
                .map_err(io(crate::error::IoOp::OpenDescriptorReadOnly))?;
            self.install_anchor(f)?;
        }
        let anchor = self.anchor.get().expect("set above");
        let m = anchor.metadata().map_err(io(crate::error::IoOp::Fstat))?;
        if (m.dev(), m.ino()) != want {
            return Err(Error::BadDescriptor {
                path,
                problem: DescriptorProblem::OtherFile,
            });
        }
        Ok(anchor)
    }

    /// Takes the token for the open file description of descriptor `fd` (flock(1)'s `flock
    /// [-s] 9`): held until that description is closed everywhere — every process that has
    /// it (a shell's `9>file`, its children) closed it or exited — or until
    /// [`unlock_fd`](Self::unlock_fd). `fd` is a descriptor of the file the table is keyed by
    /// (see [`table_for_lock_fd`]); the table must exist (take the main lock first, like for
    /// any token). `wait`: `None` waits as long as it takes, `Some(Duration::ZERO)` not at all,
    /// else at most that long; `Ok(None)` when it was not obtained. Asked again for the same
    /// description: in the same mode it returns at once ([`FdLock::already_held`]), in the
    /// other one it releases, then takes the token again ([`FdLock::converted`]).
    ///
    /// The calling process waits in the queue as itself, so killing it while it waits leaves
    /// nothing held; it needs not stay alive once this returns.
    ///
    /// Once granted, the kernel's `flock` is taken on `fd`'s own description too (`LOCK_EX`,
    /// or `LOCK_SH` for [`Share::Shared`]), exactly as `flock 9` takes it, within the same
    /// `wait`: it lives as long as the description, and [`unlock_fd`](Self::unlock_fd) drops it
    /// before releasing the token. It keeps flock(1) users of the file and processes that use
    /// another table for it (another directory) excluded.
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// # fn main() -> lockticket::Result<()> {
    /// # let lock_path = std::env::temp_dir().join(format!("doc-lock-fd-{}", std::process::id()));
    /// let lock_file = std::fs::File::create(&lock_path).unwrap(); // as a shell's 9>file
    /// let table = lockticket::table_for_lock_fd(lock_file.as_fd(), None)?;
    /// let lt = lockticket::LockTicket::open(&table)?;
    /// let owner = lt.main_lock(lockticket::Share::Shared)?; // creates the table
    /// let got = lt.lock_fd(lock_file.as_fd(), lockticket::Share::Exclusive, None)?.unwrap();
    /// assert!(!got.already_held);
    /// let again = lt.lock_fd(lock_file.as_fd(), lockticket::Share::Exclusive, None)?.unwrap();
    /// assert!(again.already_held); // the same description holds it: no deadlock
    /// assert_eq!(lt.unlock_fd(lock_file.as_fd())?, 1);
    /// owner.unlock()?;
    /// # std::fs::remove_file(&lock_path).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn lock_fd(
        &self,
        fd: BorrowedFd<'_>,
        share: Share,
        wait: Option<Duration>,
    ) -> Result<Option<FdLock>> {
        let patience = match wait {
            None => Patience::Forever,
            Some(d) if d.is_zero() => Patience::NoWait,
            Some(d) => patience_for(d),
        };
        self.request().mode(share).patience(patience).lock_fd(fd)
    }

    /// [`lock_fd`](Self::lock_fd) as a request asks it ([`TokenRequest::lock_fd`]).
    ///
    /// [`TokenRequest::lock_fd`]: crate::TokenRequest::lock_fd
    pub(crate) fn lock_fd_as(
        &self,
        fd: BorrowedFd<'_>,
        share: Share,
        patience: Patience,
    ) -> Result<Option<FdLock>> {
        use std::os::fd::AsRawFd;
        let path = describe_fd(fd);
        let mode = sys::fd_access_mode(fd.as_raw_fd()).map_err(|cause| Error::Io {
            path: path.clone(),
            op: crate::error::IoOp::DescriptorFlags,
            cause,
        })?;
        let write = match mode {
            libc::O_WRONLY | libc::O_RDWR => true,
            libc::O_RDONLY => false,
            _ => {
                return Err(Error::BadDescriptor {
                    path,
                    problem: DescriptorProblem::PathOnly,
                });
            }
        };
        let anchor = self.fd_anchor(fd)?;
        let mut converted = false;
        {
            let region = self.table()?;
            let _cold = region.cold()?;
            for reg in procs::fd_registrations(region.procs(), anchor, fd) {
                let held = fd_tickets(region, reg);
                if held.iter().any(|tk| tk.share() == share) {
                    return Ok(Some(FdLock {
                        already_held: true,
                        converted: false,
                        previous_holder_died: false,
                    }));
                }
                converted |= !held.is_empty();
                release_fd(self, region, fd, reg, &held)?;
            }
        }
        let ask = crate::token::Ask {
            share,
            patience,
            route: crate::token::Route::Descriptor,
            cancel: None,
        };
        let Some(guard) = self.acquire(ask)? else {
            return Ok(None);
        };
        // The kernel's flock on the caller's description, as flock(1) takes it: keeps holders
        // that use another table for this file (another directory or /dev/shm) and plain
        // flock(1) users out (`crate::lock_file`). Within one table it is free at once.
        let flocked = crate::lock_file::take_on(fd, &path, share, patience);
        match flocked {
            Ok(true) => {}
            Ok(false) => {
                guard.unlock()?;
                return Ok(None);
            }
            Err(e) => {
                drop(guard);
                return Err(e);
            }
        }
        let unflock = || {
            let _ = sys::flock_unlock_fd(fd);
        };
        let died = guard.previous_holder_died();
        let (region, raw) = guard.into_raw();
        let crate::raw::Place::Queued(tk) = raw.place() else {
            // Route::Descriptor never goes ahead of the queue.
            unflock();
            let _ = raw.release(region);
            return Err(self.corrupted("the descriptor form was granted ahead of the queue"));
        };
        let ring = region.ring();
        let release_ours = |tk: Ticket| match tk.share() {
            Share::Exclusive => ring.release_exclusive(tk),
            Share::Shared => ring.release(tk),
        };
        let cold = match region.cold() {
            Ok(c) => c,
            Err(e) => {
                unflock();
                let _ = release_ours(tk);
                return Err(e);
            }
        };
        let anchor = region.anchor().unwrap_or(anchor);
        let display_pid = std::os::unix::process::parent_id();
        let reg = match procs::register_fd(
            region.procs(),
            region.geometry().procs_offset(),
            region.probe(),
            anchor,
            fd,
            write,
            display_pid,
            sys::now_ns(),
            |i| ring.fingerprints_naming(i),
        ) {
            Ok(reg) => reg,
            Err(e) => {
                unflock();
                let _ = release_ours(tk);
                return Err(match e {
                    procs::RegisterError::Full => Error::ProcessTableFull {
                        path: region.path().to_path_buf(),
                        capacity: region.geometry().proc_capacity,
                    },
                    procs::RegisterError::Io(cause) => Error::Io {
                        path,
                        op: crate::error::IoOp::RegistrationLock,
                        cause,
                    },
                });
            }
        };
        if let Err(b) = ring.transfer(tk, reg, display_pid) {
            let _ = procs::retire_fd(region.procs(), fd, reg);
            unflock();
            return Err(self.broken(b));
        }
        drop(cold);
        Ok(Some(FdLock {
            already_held: false,
            converted,
            previous_holder_died: died,
        }))
    }

    /// Releases the token(s) the open file description of descriptor `fd` holds (flock(1)'s
    /// `flock -u 9`), waking the next waiter at once; returns how many registrations of that
    /// description were ended (0 when it held nothing, which is no error, as for flock). A
    /// table that does not exist holds nothing.
    pub fn unlock_fd(&self, fd: BorrowedFd<'_>) -> Result<usize> {
        let anchor = self.fd_anchor(fd)?;
        let region = match self.table() {
            Ok(r) => r,
            Err(Error::NotCreated { .. } | Error::Removed { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let _cold = region.cold()?;
        let regs = procs::fd_registrations(region.procs(), anchor, fd);
        for &reg in &regs {
            let held = fd_tickets(region, reg);
            release_fd(self, region, fd, reg, &held)?;
        }
        Ok(regs.len())
    }
}

/// The tickets in the ring that name `reg`.
fn fd_tickets(region: &Region, reg: Registration) -> Vec<Ticket> {
    let ring = region.ring();
    let head = ring.head();
    ring.claims()
        .into_iter()
        .filter(|c| c.owner.index == reg.index && c.owner.matches(reg.generation))
        .map(|c| Ticket {
            t: ring::ticket_of_slot(head, c.index, ring.capacity() - 1),
            word: c.word,
        })
        .collect()
}

/// Releases `held` on behalf of `reg` (the normal release path, which wakes the next waiter),
/// then ends the registration. Under the cold lock.
fn release_fd(
    lt: &LockTicket,
    region: &Region,
    fd: BorrowedFd<'_>,
    reg: Registration,
    held: &[Ticket],
) -> Result<()> {
    if !held.is_empty() {
        // The description's flock first: never two holders of the file meanwhile.
        let _ = sys::flock_unlock_fd(fd);
    }
    for &tk in held {
        region.ring().release(tk).map_err(|b| lt.broken(b))?;
    }
    procs::retire_fd(region.procs(), fd.as_fd(), reg).map_err(|cause| Error::Io {
        path: describe_fd(fd),
        op: crate::error::IoOp::RegistrationUnlock,
        cause,
    })
}
