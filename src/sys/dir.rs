//! A table's name in its directory, through a descriptor of the directory: `*at` calls,
//! `O_TMPFILE` and linking it in, the birth time, link counts.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::file::reopen_read_only;

// ---------------------------------------------------------------------------------------------
// A table's name in its directory, through a descriptor of the directory: what a path names is
// judged the same way after a chdir, a chroot or a change of mount namespace.

/// Opens `dir` as an `O_PATH` directory descriptor (close-on-exec): a handle on the directory
/// itself, for the `*at` calls below, that grants no access of its own.
pub(crate) fn open_dir_path(dir: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    Ok(f.into())
}

/// Device and inode of what `name` names in `dir` (`fstatat`, not following a symlink).
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<(u64, u64)> {
    // SAFETY: `stat` is a plain C struct, all-zero valid; fstatat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a borrowed open directory fd, a NUL-terminated name and a valid out-pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Removes `name` from `dir` (`unlinkat`).
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: a borrowed open directory fd and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new regular file in `dir` without a name (`O_TMPFILE`, read-write, close-on-exec): it
/// vanishes with its last descriptor unless [`link_at`] gives it one, so a creator killed
/// half-way leaves nothing behind. `EOPNOTSUPP` (or `EISDIR`/`EINVAL` from older kernels) where
/// the filesystem or kernel cannot.
pub(crate) fn open_tmpfile(dir: BorrowedFd<'_>, mode: u32) -> io::Result<File> {
    // SAFETY: a borrowed open directory fd, a NUL-terminated literal, and the mode argument
    // that O_TMPFILE (which includes O_DIRECTORY) requires.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// True for the errors of [`open_tmpfile`] that mean "not supported here".
pub(crate) fn tmpfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
    )
}

/// Gives the file behind `file` (an [`open_tmpfile`] one) the name `name` in `dir`: through
/// `/proc/self/fd` (`linkat(…, AT_SYMLINK_FOLLOW)`, what unprivileged processes may do), else
/// `linkat(fd, "", …, AT_EMPTY_PATH)` (needs `CAP_DAC_READ_SEARCH`). `EEXIST` when the name is
/// taken; the first attempt's error when neither works.
pub(crate) fn link_at(file: &File, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<()> {
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: NUL-terminated paths, an open directory fd; linkat reads no other memory.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let first = io::Error::last_os_error();
    if first.raw_os_error() == Some(libc::EEXIST) {
        return Err(first);
    }
    // SAFETY: as above, with our own open fd and an empty NUL-terminated path.
    let rc = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let second = io::Error::last_os_error();
    if second.raw_os_error() == Some(libc::EEXIST) {
        return Err(second);
    }
    Err(first)
}

/// What tells a file apart from an earlier one that had the same inode number (filesystems
/// reuse the numbers of removed files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Birth {
    /// Its creation time in nanoseconds since the epoch (`statx` `stx_btime`).
    Time(u64),
    /// Its inode generation (`FS_IOC_GETVERSION`), where the filesystem has no birth time.
    Generation(u32),
    /// Neither is available.
    Unknown,
}

/// The [`Birth`] of the file behind `fd`: its birth time when the filesystem reports one,
/// else, for a regular file or a directory, its inode generation when the filesystem keeps one
/// (non-zero), else `Unknown`.
pub(crate) fn birth(fd: BorrowedFd<'_>) -> Birth {
    // SAFETY: `statx` is a plain C struct, all-zero valid; the kernel writes into it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on a borrowed open fd with an empty NUL-terminated path (AT_EMPTY_PATH)
    // and a valid out-pointer.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_TYPE | libc::STATX_BTIME,
            &mut stx,
        )
    };
    if rc != 0 {
        return Birth::Unknown;
    }
    if stx.stx_mask & libc::STATX_BTIME != 0 {
        let ns = (stx.stx_btime.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(stx.stx_btime.tv_nsec));
        if ns != 0 {
            return Birth::Time(ns);
        }
    }
    // The generation is asked of regular files and directories only: an ioctl number means
    // something else to a device's driver.
    let kind = u32::from(stx.stx_mode) & libc::S_IFMT;
    if stx.stx_mask & libc::STATX_TYPE == 0 || (kind != libc::S_IFREG && kind != libc::S_IFDIR) {
        return Birth::Unknown;
    }
    let mut generation: libc::c_int = 0;
    // SAFETY: FS_IOC_GETVERSION on a borrowed open fd writes one int into `generation`;
    // filesystems without it fail with ENOTTY/EOPNOTSUPP and write nothing.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::FS_IOC_GETVERSION,
            &mut generation as *mut libc::c_int,
        )
    };
    if rc == 0 && generation != 0 {
        return Birth::Generation(generation as u32);
    }
    // An `O_PATH` descriptor (the descriptor form accepts one) cannot be asked: ask a
    // read-only description of the same file, so that every process computes the same key.
    if rc != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        && let Ok(f) = reopen_read_only(fd)
    {
        // SAFETY: as above, on the new description.
        let rc = unsafe {
            libc::ioctl(
                f.as_raw_fd(),
                libc::FS_IOC_GETVERSION,
                &mut generation as *mut libc::c_int,
            )
        };
        if rc == 0 && generation != 0 {
            return Birth::Generation(generation as u32);
        }
    }
    Birth::Unknown
}

/// Opens `name` in `dir` read-write, never following a symlink, close-on-exec.
pub(crate) fn open_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: a borrowed open directory fd and a NUL-terminated name; no mode (no O_CREAT).
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// How many names the file behind `fd` has (`st_nlink`): 0 once it was removed everywhere.
pub(crate) fn link_count(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: `stat` is a plain C struct, all-zero valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a borrowed, open fd with a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_nlink as u64)
}

/// True when `dir` is a directory this process may create files in (`access(W_OK|X_OK)`).
pub(crate) fn is_writable_dir(dir: &std::path::Path) -> bool {
    use nix::unistd::AccessFlags;
    dir.is_dir() && nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}
