//! Files: `flock`, OFD byte locks, access modes, `fstat`, reopening, allocation.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

// ---------------------------------------------------------------------------------------------
// Files.

/// Takes an exclusive `flock` on `file`, waiting for it. The kernel drops it if we die.
pub(crate) fn flock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes a `flock` on the description behind `fd`: `LOCK_EX` when `exclusive`, else
/// `LOCK_SH`; with `nonblock` only if that is possible at once. `Ok(false)`: busy (only with
/// `nonblock`). Interrupted calls are retried.
pub(crate) fn flock_fd(fd: BorrowedFd<'_>, exclusive: bool, nonblock: bool) -> io::Result<bool> {
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if nonblock {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a descriptor the caller keeps open; it reads no memory of ours.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblock => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Drops the `flock` of the description behind `fd` (for every descriptor of it).
pub(crate) fn flock_unlock_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock on a descriptor the caller keeps open.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What `F_OFD_SETLK` gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OfdLock {
    /// We hold the byte now.
    Taken,
    /// Another open file description holds it.
    Busy,
    /// This system has no OFD locks (not Linux, Linux < 3.15, a filesystem without them).
    Unsupported,
}

#[cfg(target_os = "linux")]
fn one_byte(offset: u64, kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0; // required for OFD locks
    fl
}

/// Takes a write lock on the byte at `offset` of `file`'s open file description, without
/// waiting (`F_OFD_SETLK`). The kernel drops it when the last descriptor of that description
/// is closed — at the latest when every process holding one has died or exec'd it away.
pub(crate) fn ofd_try_lock(file: &File, offset: u64) -> io::Result<OfdLock> {
    ofd_try_lock_as(file.as_fd(), offset, true)
}

/// Like [`ofd_try_lock`] on any descriptor's open file description, with a write lock
/// (`write`: the description must be open for writing) or a read lock (it must be open for
/// reading: a directory, `9<file`). Either conflicts with a checker's `F_WRLCK` question.
pub(crate) fn ofd_try_lock_as(fd: BorrowedFd<'_>, offset: u64, write: bool) -> io::Result<OfdLock> {
    #[cfg(target_os = "linux")]
    {
        let fl = one_byte(offset, if write { libc::F_WRLCK } else { libc::F_RDLCK });
        loop {
            // SAFETY: fcntl on a borrowed, open fd with a valid, initialised `flock`.
            let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
            if rc == 0 {
                return Ok(OfdLock::Taken);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(OfdLock::Busy),
                Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOLCK) => {
                    return Ok(OfdLock::Unsupported);
                }
                _ => return Err(e),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, offset, write);
        Ok(OfdLock::Unsupported)
    }
}

/// Drops the lock of `fd`'s open file description on the byte at `offset` (`F_OFD_SETLK`
/// with `F_UNLCK`; nothing happens when it holds none).
pub(crate) fn ofd_unlock(fd: BorrowedFd<'_>, offset: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let fl = one_byte(offset, libc::F_UNLCK);
        loop {
            // SAFETY: fcntl on a borrowed, open fd with a valid, initialised `flock`.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, offset);
        Ok(())
    }
}

/// Asks the kernel whether another open file description holds a lock on the byte at
/// `offset` (`F_OFD_GETLK`): `Some(true)` locked, `Some(false)` free, `None` when the question
/// failed. Locks of `file`'s own description never conflict with it, so ask through a
/// description that holds none (or through a holder, to learn whether *another* one holds it).
pub(crate) fn ofd_is_locked(file: impl AsFd, offset: u64) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        let mut fl = one_byte(offset, libc::F_WRLCK);
        loop {
            // SAFETY: fcntl on an open fd; F_OFD_GETLK writes into the `flock` we own.
            let rc = unsafe { libc::fcntl(file.as_fd().as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
            if rc == 0 {
                return Some(fl.l_type != libc::F_UNLCK as libc::c_short);
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return None;
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset);
        None
    }
}

/// The access mode of descriptor `fd` (`O_RDONLY`, `O_WRONLY`, `O_RDWR`, or `O_PATH` among
/// the flags): `EBADF` when it is not open.
pub(crate) fn fd_access_mode(fd: std::os::fd::RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL only reads the descriptor table; an unopened fd gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & (libc::O_ACCMODE | libc::O_PATH))
}

/// A new open file description of the file behind `fd`, read-only, close-on-exec (through
/// `/proc/self/fd`, checked to be the same file): an *anchor* that holds no locks, through
/// which `F_OFD_GETLK` sees the locks of every description of the file (an `O_PATH`
/// descriptor cannot ask).
pub(crate) fn reopen_read_only(fd: BorrowedFd<'_>) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let want = fstat_dev_ino(fd)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let m = f.metadata()?;
    if (m.dev(), m.ino()) != want {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "/proc/self/fd names another file than the descriptor",
        ));
    }
    Ok(f)
}

/// Device and inode of the file behind `fd` (`fstat`).
pub(crate) fn fstat_dev_ino(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    fstat_fd(fd).map(|(dev, ino, _)| (dev, ino))
}

/// Device, inode and file type (`st_mode & S_IFMT`) of the file behind `fd` (`fstat`).
pub(crate) fn fstat_fd(fd: BorrowedFd<'_>) -> io::Result<(u64, u64, u32)> {
    // SAFETY: `stat` is a plain C struct, all-zero valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a borrowed, open fd with a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        st.st_dev as u64,
        st.st_ino as u64,
        st.st_mode as u32 & libc::S_IFMT,
    ))
}

/// A second, independent open file description of the file behind `file` (close-on-exec):
/// through `/proc/self/fd`, else — only where /proc is not mounted — by `path` (refused unless
/// it is still the same file). Any other failure (EMFILE or ENFILE when out of descriptors,
/// ENOMEM, EACCES) is returned as it is: it says what went wrong, where "no /proc" would not.
pub(crate) fn reopen(file: &File, path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let want = file.metadata()?;
    let same = |f: File| -> io::Result<Option<File>> {
        let m = f.metadata()?;
        Ok((m.dev() == want.dev() && m.ino() == want.ino()).then_some(f))
    };
    // /proc/self/fd/N is a magic link: opening it needs following it.
    let by_proc = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()));
    match by_proc {
        Ok(f) => {
            if let Some(f) = same(f)? {
                return Ok(f);
            }
        }
        // No /proc here (or no such entry: not procfs): try the path.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let by_path = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path);
    match by_path {
        Ok(f) => match same(f)? {
            Some(f) => Ok(f),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "cannot open a second description of the table (no /proc, and the path names \
                 another file now)",
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "cannot open a second description of the table (no /proc, and the path names no \
             file now)",
        )),
        Err(e) => Err(e),
    }
}

/// Drops our `flock` on `file` (closing the file would too).
pub(crate) fn flock_unlock(file: &File) {
    // SAFETY: flock on an fd we own; a failure leaves the lock to be dropped at close.
    unsafe {
        libc::flock(file.as_raw_fd(), libc::LOCK_UN);
    }
}

/// Reserves `size` bytes of `file` now (`posix_fallocate`), so a full tmpfs gives `ENOSPC`
/// here instead of `SIGBUS` on a later page fault. Where the filesystem cannot allocate
/// (`EOPNOTSUPP`, `EINVAL`), sets the length instead.
pub(crate) fn allocate(file: &File, size: u64) -> io::Result<()> {
    // SAFETY: posix_fallocate on an fd we own; it reads no memory of ours.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}
