//! OS plumbing: process identity, /proc (and [`OsLiveness`] over it), futexes, flock, statfs,
//! pidfd, file allocation, the neutering remap.
//!
//! Every system call of the crate goes through this module, so the algorithm modules stay free
//! of OS calls and can be tested in memory. The one exception is creating the mappings, which
//! `region` does through `memmap2`. This module knows no file format.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

mod os_liveness;
pub(crate) use os_liveness::pid_alive;

/// Largest PID Linux hands out (`PID_MAX_LIMIT` is 2^22).
pub(crate) const PID_MAX: u32 = (1 << 22) - 1;

// ---------------------------------------------------------------------------------------------
// Our own identity, cached: `getpid` is a real system call and the lock path must not pay it.

/// Where this process keeps its cached identity: a page advised `MADV_WIPEONFORK`, which the
/// kernel hands to every child made without `CLONE_VM` (`fork`, `_Fork`, `syscall(SYS_fork)`,
/// `clone`) as zeroes, whether or not `pthread_atfork` handlers ran. A zero PID means "not
/// known here yet": a child can never pass for its parent, and the fast path pays two loads
/// for it, no system call.
#[repr(C, align(64))]
struct IdentityCache {
    /// Our PID, or 0 when not yet known (at start and in any freshly forked child).
    pid: AtomicU32,
    /// Our start time in clock ticks since boot, or 0 when not yet known.
    start: AtomicU64,
}

/// Used where `MADV_WIPEONFORK` is not available (Linux < 4.14, other systems): cleared in
/// the child by a `pthread_atfork` handler, which a raw fork skips (see docs/design.md).
static FALLBACK_CACHE: IdentityCache = IdentityCache {
    pid: AtomicU32::new(0),
    start: AtomicU64::new(0),
};
/// The cache in use: null before the first call, then the wipe-on-fork page (never unmapped)
/// or [`FALLBACK_CACHE`]. A child inherits the pointer; the page behind it reads as zeroes.
static CACHE: AtomicPtr<IdentityCache> = AtomicPtr::new(std::ptr::null_mut());
static SETUP: Once = Once::new();
/// True when the cache lives in a wipe-on-fork page (for tests and docs).
static WIPES_ON_FORK: AtomicBool = AtomicBool::new(false);

extern "C" fn forget_identity_in_child() {
    // Runs in the child right after fork: only async-signal-safe work, so just forget.
    FALLBACK_CACHE.pid.store(0, Ordering::Relaxed);
    FALLBACK_CACHE.start.store(0, Ordering::Relaxed);
}

/// This process's identity `(pid, start time)`, cached across calls and refreshed in any
/// child, however it was forked.
#[inline]
pub(crate) fn current_identity() -> (u32, u64) {
    let cache = CACHE.load(Ordering::Acquire);
    if !cache.is_null() {
        // SAFETY: `CACHE` only ever holds null, the address of `FALLBACK_CACHE`, or a page
        // mapped by `identity_cache` that is never unmapped; both are valid, aligned
        // `IdentityCache`s (atomics, valid as zeroes) for the life of the process and of
        // every child (which gets the page zeroed or copied at the same address).
        let c = unsafe { &*cache };
        let pid = c.pid.load(Ordering::Relaxed);
        let start = c.start.load(Ordering::Relaxed);
        if pid != 0 && start != 0 {
            return (pid, start);
        }
    }
    refresh_identity()
}

/// True when a forked child forgets its parent's identity even without `pthread_atfork`.
#[cfg(test)]
pub(crate) fn fork_detection_wipes() -> bool {
    let _ = current_identity();
    WIPES_ON_FORK.load(Ordering::Relaxed)
}

/// Maps the wipe-on-fork page, or `None` where the kernel refuses `MADV_WIPEONFORK`.
fn wipe_on_fork_page() -> Option<*mut IdentityCache> {
    #[cfg(target_os = "linux")]
    {
        let len = 4096;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: `p .. p + len` is the mapping just made, owned by nobody else yet.
        if unsafe { libc::madvise(p, len, libc::MADV_WIPEONFORK) } != 0 {
            // SAFETY: unmaps the mapping just made; nothing refers to it.
            unsafe { libc::munmap(p, len) };
            return None;
        }
        Some(p.cast())
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cold]
fn refresh_identity() -> (u32, u64) {
    SETUP.call_once(|| {
        // SAFETY: registers a handler that only stores to atomics (async-signal-safe); the
        // function pointer is 'static. Kept with the wipe-on-fork page too: it costs nothing.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_identity_in_child));
        }
        let cache = match wipe_on_fork_page() {
            Some(page) => {
                WIPES_ON_FORK.store(true, Ordering::Relaxed);
                page
            }
            None => std::ptr::from_ref(&FALLBACK_CACHE).cast_mut(),
        };
        CACHE.store(cache, Ordering::Release);
    });
    let pid = std::process::id();
    // Our own /proc entry always exists; fall back to a non-zero marker if /proc is absent,
    // which makes liveness checks of us fall back to the PID alone.
    let start = match process_status(pid) {
        ProcStatus::Alive { start } => start,
        _ => u64::MAX,
    };
    let cache = CACHE.load(Ordering::Acquire);
    if !cache.is_null() {
        // SAFETY: see `current_identity`.
        let c = unsafe { &*cache };
        c.start.store(start, Ordering::Relaxed);
        c.pid.store(pid, Ordering::Relaxed);
    }
    (pid, start)
}

// ---------------------------------------------------------------------------------------------
// Other processes.

/// What /proc and `kill(pid, 0)` say about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcStatus {
    /// No such process, or a zombie (it has exited; only its exit status remains).
    Dead,
    /// Running (or stopped, or sleeping), started at `start` clock ticks after boot.
    Alive {
        /// Field 22 of /proc/PID/stat.
        start: u64,
    },
    /// Exists, but its start time cannot be read (no /proc, hidepid, another OS).
    AliveUnknownStart,
}

/// Looks a process up. Never fails: anything unreadable counts as "alive, start unknown"
/// (the safe side: a lock is never taken from a process that might be alive).
pub(crate) fn process_status(pid: u32) -> ProcStatus {
    if pid == 0 || pid > PID_MAX {
        return ProcStatus::Dead;
    }
    let path = format!("/proc/{pid}/stat");
    match std::fs::read(&path) {
        Ok(bytes) => match parse_stat(&bytes) {
            // A zombie has exited and only waits to be reaped: dead. Unless it is a thread
            // group leader whose *other* threads still run (the main thread exited alone):
            // that process is alive and may hold a lock in one of them.
            Some(st) if matches!(st.state, b'Z' | b'X') && st.threads <= 1 => ProcStatus::Dead,
            Some(st) => ProcStatus::Alive { start: st.start },
            None => ProcStatus::AliveUnknownStart,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => ProcStatus::Dead,
        Err(_) => {
            if kill_zero(pid) {
                ProcStatus::AliveUnknownStart
            } else {
                ProcStatus::Dead
            }
        }
    }
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `D`, `T`, `Z`, ...
    pub state: u8,
    /// Field 20: number of threads.
    pub threads: u64,
    /// Field 22: start time, clock ticks after boot.
    pub start: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after the *last* ')'.
pub(crate) fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // After ')' come field 3 (state), 4, ... : threads is the 18th of them, start the 20th.
    let state = *fields.next()?.as_bytes().first()?;
    let threads = fields.nth(16)?.parse().ok()?;
    let start = fields.nth(1)?.parse().ok()?;
    Some(Stat {
        state,
        threads,
        start,
    })
}

/// `kill(pid, 0)`: true unless the process certainly does not exist.
pub(crate) fn kill_zero(pid: u32) -> bool {
    if pid == 0 || pid > PID_MAX {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; pid is a positive value in
    // range, so it never addresses a process group.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A pidfd for `pid` (Linux ≥ 5.3), `None` where unsupported.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open takes (pid, flags) and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd >= 0 {
            // SAFETY: the kernel just gave us this fd; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            // pidfds are created close-on-exec already.
            return Some(fd);
        }
    }
    let _ = pid;
    None
}

/// True when the process behind `pidfd` has exited.
pub(crate) fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc > 0 && p.revents & libc::POLLIN != 0
}

// ---------------------------------------------------------------------------------------------
// Futexes on words of the shared mapping (process-shared: no FUTEX_PRIVATE_FLAG).

/// Sleeps while `*word == expected`, at most `timeout`. Spurious wake-ups are possible.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    #[cfg(target_os = "linux")]
    {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT
        // with a relative timeout reads it and may sleep. Errors (EAGAIN when the value
        // changed, EINTR, ETIMEDOUT) all mean "re-check", which every caller does.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                &ts as *const libc::timespec,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Portable fallback: a short sleep; callers re-check the condition.
        if word.load(Ordering::Acquire) == expected {
            std::thread::sleep(timeout.min(Duration::from_micros(200)));
        }
    }
}

/// Wakes up to `n` sleepers on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: FUTEX_WAKE only uses the address as a key; it never dereferences beyond it.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (word, n);
}

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

/// Replaces the shared mapping at `addr .. addr + len` by a new shared mapping of `file` at
/// `offset` — the same file, so the same pages: the contents do not change, only the name
/// `/proc/PID/maps` shows for the range (the name `file` was opened by). Maps the new range
/// elsewhere first and moves it over the old one with `mremap(MREMAP_FIXED)`, so on any
/// failure the old mapping is left as it was.
///
/// # Safety
///
/// `addr .. addr + len` must be a whole shared read-write mapping owned by the caller of the
/// same file `file` names, at `offset`.
pub(crate) unsafe fn remap_same_file(addr: *mut u8, len: usize, file: &File, offset: u64) -> bool {
    // SAFETY: a new mapping at an address of the kernel's choosing; nothing aliases it yet.
    let new = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if new == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: moves our new mapping onto the caller's range (see above: the same pages of the
    // same file, so every reference into the range stays valid and sees the same memory);
    // on failure the old mapping is untouched and the new one is unmapped.
    unsafe {
        let moved = libc::mremap(
            new,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            addr.cast::<libc::c_void>(),
        );
        if moved == libc::MAP_FAILED {
            libc::munmap(new, len);
            return false;
        }
    }
    true
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

/// The inode of our PID namespace (`/proc/self/ns/pid`), 0 when unknown: tells a reader of a
/// registration whether its PID means the same in the reader's namespace.
pub(crate) fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    // A process's own PID namespace never changes; a child made by clone(CLONE_NEWPID) has
    // another one and inherits this cache, so it is keyed by our PID. (Status calls this for
    // every entry: a thousand `stat`s of /proc otherwise.)
    static CACHED: AtomicU64 = AtomicU64::new(0); // pid << 32 | low 32 bits of the inode
    static FULL: AtomicU64 = AtomicU64::new(0);
    let pid = u64::from(std::process::id());
    let c = CACHED.load(Relaxed);
    if c >> 32 == pid && c != 0 {
        let full = FULL.load(Relaxed);
        if full & 0xffff_ffff == c & 0xffff_ffff {
            return full;
        }
    }
    let ns = std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0);
    if ns != 0 {
        FULL.store(ns, Relaxed);
        CACHED.store(pid << 32 | (ns & 0xffff_ffff), Relaxed);
    }
    ns
}

/// Makes `file`'s descriptor refer to /dev/null instead (`dup2`, atomic for concurrent
/// users of the descriptor number): frees the file it named while the `File` stays valid.
pub(crate) fn point_at_dev_null(file: &File) {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).open("/dev/null") {
        // SAFETY: both descriptors are open and ours; dup2 atomically replaces the second,
        // which `file` keeps owning (it closes /dev/null on drop).
        unsafe {
            libc::dup2(null.as_raw_fd(), file.as_raw_fd());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors a forked child must not keep (issue 17, items 6 and 10b).

/// How many descriptors [`ForkLocal`] tracks at once; more are not tracked (a child made by
/// `fork` then keeps the extra ones until its first call on the handle, as before).
const FORK_LOCAL_SLOTS: usize = 128;
/// The descriptors of this process a forked child must let go of, `-1` for an empty slot.
static FORK_LOCAL: [AtomicI32; FORK_LOCAL_SLOTS] = [const { AtomicI32::new(-1) }; FORK_LOCAL_SLOTS];
/// A descriptor of /dev/null (close-on-exec), opened once, that the child handler puts in
/// place of each tracked descriptor; `-1` if it could not be opened (nothing is replaced).
static PLACEHOLDER: AtomicI32 = AtomicI32::new(-1);
/// Most descriptions an exec guardian keeps (the registration and a keyed table's kernel
/// locks on its lock file).
pub(crate) const GUARDIAN_KEEPS: usize = 4;
/// Tracked descriptors the next child keeps (the exec guardian's), `-1`: none.
static KEEP_IN_CHILD: [AtomicI32; GUARDIAN_KEEPS] = [const { AtomicI32::new(-1) }; GUARDIAN_KEEPS];
static FORK_LOCAL_SETUP: Once = Once::new();

extern "C" fn drop_fork_locals_in_child() {
    // Runs in the child right after fork(3), on its only thread: only atomics and dup3/dup2
    // and fcntl, which are async-signal-safe system calls.
    let null = PLACEHOLDER.load(Ordering::Relaxed);
    if null < 0 {
        return;
    }
    let mut keep = [-1; GUARDIAN_KEEPS];
    for (k, slot) in keep.iter_mut().zip(&KEEP_IN_CHILD) {
        *k = slot.load(Ordering::Relaxed);
    }
    for slot in &FORK_LOCAL {
        let fd = slot.load(Ordering::Relaxed);
        if fd >= 0 && !keep.contains(&fd) {
            // SAFETY: `fd` was open in the parent when the child's copy of the descriptor
            // table was made (a tracked descriptor leaves the table before it is closed, and
            // the kernel copies descriptors before memory), so it names our copy of a
            // registration or cold-path description; replacing it with /dev/null drops the
            // child's reference while the `File` that owns the number stays valid.
            unsafe { replace_with(null, fd) };
        }
    }
}

/// `dup3(from, to, O_CLOEXEC)` (where available): `to` now names what `from` names.
///
/// # Safety
///
/// `to` must be a descriptor the caller owns (or an unused number).
unsafe fn replace_with(from: RawFd, to: RawFd) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    // SAFETY: the caller owns `to`; dup3 atomically replaces it.
    unsafe {
        libc::dup3(from, to, libc::O_CLOEXEC);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    // SAFETY: as above; then close-on-exec is set again on our own descriptor.
    unsafe {
        if libc::dup2(from, to) >= 0 {
            libc::fcntl(to, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

fn fork_local_setup() {
    FORK_LOCAL_SETUP.call_once(|| {
        if let Ok(null) = std::fs::OpenOptions::new().read(true).open("/dev/null") {
            // Kept open for the life of the process (std opens it close-on-exec).
            PLACEHOLDER.store(std::os::fd::IntoRawFd::into_raw_fd(null), Ordering::Relaxed);
        }
        // SAFETY: registers a handler that only touches atomics and makes async-signal-safe
        // system calls; the function pointer is 'static.
        unsafe {
            libc::pthread_atfork(None, None, Some(drop_fork_locals_in_child));
        }
    });
}

/// A descriptor that a child made by `fork(3)` does not keep: in the child, a
/// `pthread_atfork` handler puts /dev/null in its place (same number, so the `File` stays
/// valid and closes /dev/null later). For the descriptions whose locks say something about
/// *this* process — the registration's OFD lock, the cold-path `flock` — which a child must
/// not keep alive after its parent dies. A raw fork (`clone`, `syscall(SYS_fork)`) runs no
/// handler: such a child keeps its copies until it closes or replaces them (see
/// docs/design.md).
#[derive(Debug)]
pub(crate) struct ForkLocal(File);

impl ForkLocal {
    /// Tracks `file` (if the table has room: see [`FORK_LOCAL_SLOTS`]).
    pub(crate) fn new(file: File) -> ForkLocal {
        fork_local_setup();
        let fd = file.as_raw_fd();
        for slot in &FORK_LOCAL {
            if slot
                .compare_exchange(-1, fd, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        ForkLocal(file)
    }
}

impl std::ops::Deref for ForkLocal {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl Drop for ForkLocal {
    fn drop(&mut self) {
        // Leave the table *before* the descriptor is closed (by the field's drop, after
        // this): the child handler must never replace a number that was closed and reused.
        untrack(self.0.as_raw_fd());
    }
}

/// Takes `fd` out of the table of [`ForkLocal`] descriptors.
fn untrack(fd: RawFd) {
    for slot in &FORK_LOCAL {
        if slot
            .compare_exchange(fd, -1, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            break;
        }
    }
}

/// True when `fd` is tracked by a [`ForkLocal`] (tests).
#[cfg(test)]
pub(crate) fn is_fork_local(fd: RawFd) -> bool {
    FORK_LOCAL.iter().any(|s| s.load(Ordering::SeqCst) == fd)
}

/// The number of threads of this process (`/proc/self/stat`), `None` when unknown.
pub(crate) fn thread_count() -> Option<u64> {
    let bytes = std::fs::read("/proc/self/stat").ok()?;
    parse_stat(&bytes).map(|st| st.threads)
}

/// Forks the *exec guardian* of `keep` and returns its PID: a child that keeps `keep`'s open
/// file descriptions (at most [`GUARDIAN_KEEPS`]; nothing else open: its standard streams are
/// /dev/null) until the
/// calling thread exits — `PR_SET_PDEATHSIG` = `SIGKILL` — so until the program this process
/// is about to `exec` exits, however it ends. It ignores the signals a terminal or a service
/// manager sends to a whole group, and does nothing else.
///
/// The calling process must have one thread (the death signal follows the thread that
/// forked; the caller checks). Where `PR_SET_PDEATHSIG` does not exist, the guardian instead
/// polls its parent (`getppid`) every 10 ms.
pub(crate) fn fork_guardian(keep: &[BorrowedFd<'_>]) -> io::Result<u32> {
    if keep.len() > GUARDIAN_KEEPS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "more than {GUARDIAN_KEEPS} descriptions to keep across exec (one per token held)"
            ),
        ));
    }
    fork_local_setup();
    let parent = std::process::id() as libc::pid_t;
    let mut keep_fds = [-1; GUARDIAN_KEEPS];
    for (k, fd) in keep_fds.iter_mut().zip(keep) {
        *k = fd.as_raw_fd();
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null_fd = null.as_raw_fd();
    // A bound for closing descriptors where close_range is missing.
    // SAFETY: getrlimit writes one struct we own.
    let max_fd = unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur != libc::RLIM_INFINITY
        {
            (rl.rlim_cur as libc::c_int).clamp(64, 1 << 16)
        } else {
            1 << 16
        }
    };
    // Block every signal across the fork, so that none reaches the guardian before it ignores
    // them (the parent's mask is restored right after).
    // SAFETY: plain signal-mask calls on local, initialised sets.
    let old_mask = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    for (slot, fd) in KEEP_IN_CHILD.iter().zip(keep_fds) {
        slot.store(fd, Ordering::SeqCst);
    }
    // SAFETY: the caller has one thread; the child makes only async-signal-safe system calls
    // (see `guardian_main`) and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the freshly forked child, on its only thread.
        unsafe { guardian_main(parent, keep_fds, null_fd, max_fd) }
    }
    let err = io::Error::last_os_error();
    for slot in &KEEP_IN_CHILD {
        slot.store(-1, Ordering::SeqCst);
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    drop(null);
    if pid < 0 {
        return Err(err);
    }
    Ok(pid as u32)
}

/// Kills our child `pid` (`SIGKILL`) and reaps it.
pub(crate) fn end_child(pid: u32) {
    // SAFETY: signals and waits for a child of ours, which nothing else reaps (its PID cannot
    // be reused before this waitpid).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(pid as libc::pid_t, &mut status, 0) < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// The guardian's whole life (see [`fork_guardian`]).
///
/// # Safety
///
/// Only in a child just made by `fork`, on its only thread; never returns.
unsafe fn guardian_main(
    parent: libc::pid_t,
    keep_fds: [RawFd; GUARDIAN_KEEPS],
    null_fd: RawFd,
    max_fd: libc::c_int,
) -> ! {
    // SAFETY: async-signal-safe system calls only, on descriptors this child owns.
    unsafe {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            // The parent died before the death signal was armed: nothing to guard.
            libc::_exit(0);
        }
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
            libc::SIGALRM,
        ] {
            libc::signal(s, libc::SIG_IGN);
        }
        // Our own copies of the guarded descriptions, above the standard streams (a copy
        // never replaces a descriptor: the originals stay until the sweep below).
        let mut kept = [-1; GUARDIAN_KEEPS];
        for (k, fd) in kept.iter_mut().zip(keep_fds) {
            if fd >= 0 {
                *k = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
                if *k < 0 {
                    libc::_exit(0);
                }
            }
        }
        // Hold no pipe or terminal of the caller's (`$(lockticket exec -F …)` must end).
        for std_fd in 0..3 {
            libc::dup2(null_fd, std_fd);
        }
        close_all_from(3, kept, max_fd);
        loop {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                // Every signal stays blocked (the mask was full at the fork): only SIGKILL
                // (the death signal, or a user's) ends this.
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::sigsuspend(&all);
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            {
                if libc::getppid() != parent {
                    libc::_exit(0);
                }
                libc::usleep(10_000);
            }
        }
    }
}

/// Closes every descriptor from `low` up, except those in `except` (-1: no entry;
/// `close_range` between them where the kernel has it, else one by one below `max_fd`).
/// Async-signal-safe: no allocation.
///
/// # Safety
///
/// Only where nothing else uses those descriptors (a freshly forked, single-threaded child).
unsafe fn close_all_from(low: RawFd, mut except: [RawFd; GUARDIAN_KEEPS], max_fd: libc::c_int) {
    except.sort_unstable();
    #[cfg(target_os = "linux")]
    // SAFETY: see above; close_range takes (first, last, flags).
    unsafe {
        let ok = |first: RawFd, last: libc::c_uint| {
            first as libc::c_uint > last
                || libc::syscall(libc::SYS_close_range, first as libc::c_uint, last, 0) == 0
        };
        let mut from = low;
        let mut all = true;
        for e in except.into_iter().filter(|e| *e >= low) {
            all &= ok(from, (e - 1) as libc::c_uint);
            from = e + 1;
        }
        if all && ok(from, libc::c_uint::MAX) {
            return;
        }
    }
    let top = except.iter().copied().max().unwrap_or(-1) + 1;
    for fd in low..max_fd.max(top) {
        if !except.contains(&fd) {
            // SAFETY: see above.
            unsafe { libc::close(fd) };
        }
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

/// True when `dir` is a directory this process may create files in (`access(W_OK|X_OK)`).
pub(crate) fn is_writable_dir(dir: &std::path::Path) -> bool {
    use nix::unistd::AccessFlags;
    dir.is_dir() && nix::unistd::access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

/// Replaces the pages at `addr .. addr + len` in place with anonymous private zeroed memory
/// (`mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS)`): the range stays mapped, but no longer
/// shows the file. On failure the old mapping is left as it was.
///
/// # Safety
///
/// `addr .. addr + len` must be a whole mapping (or whole pages of one) owned by the caller,
/// and nothing may hold a Rust reference to that memory whose type assumes its contents
/// other than "any bytes" (atomics and integers are fine: the new contents are zeroes).
pub(crate) unsafe fn remap_anonymous(addr: *mut u8, len: usize) {
    // SAFETY: the caller owns the range (see above); MAP_FIXED replaces exactly those pages
    // with readable, writable memory, so the range stays valid at the same address.
    unsafe {
        libc::mmap(
            addr.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
    }
}

/// Filesystem magic of the filesystem holding `file`.
pub(crate) fn fs_magic_of_file(file: impl AsFd) -> io::Result<i64> {
    let st = nix::sys::statfs::fstatfs(file.as_fd()).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64)
}

/// Filesystem magic of the filesystem holding `path`.
pub(crate) fn fs_magic_of_path(path: &std::path::Path) -> io::Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64)
}

/// True for tmpfs and ramfs (memory-backed: the table never touches a disk).
pub(crate) fn is_memory_fs(magic: i64) -> bool {
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6_u32 as i64;
    magic == TMPFS || magic == RAMFS || magic == RAMFS as u32 as i64
}

/// The name of a network filesystem, if `magic` is one (a shared mapping is not coherent
/// across hosts there).
pub(crate) fn network_fs_name(magic: i64) -> Option<&'static str> {
    let m = magic as u32;
    Some(match m {
        0x6969 => "NFS",
        0x517b => "SMB",
        0xff53_4d42 => "CIFS",
        0xfe53_4d42 => "SMB2",
        0x5346_414f => "AFS",
        0x6b41_4653 => "kAFS",
        0x00c3_6400 => "Ceph",
        0x0102_1997 => "9P",
        0x7375_7245 => "Coda",
        0x564c => "NCP",
        0x0133_3bb7 => "GlusterFS",
        0x0bd0_0bd0 => "Lustre",
        _ => return None,
    })
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wall-clock time in ns from the coarse clock (a few ns to read; resolution of a tick).
#[inline]
pub(crate) fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(target_os = "linux")]
    let clock = libc::CLOCK_REALTIME_COARSE;
    #[cfg(not(target_os = "linux"))]
    let clock = libc::CLOCK_REALTIME;
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// A random 64-bit value (for table nonces); falls back to time and PID mixing.
pub(crate) fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `v`.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n == 8 {
        return v;
    }
    // No getrandom: mix the clock and the PID through std's randomly keyed SipHash.
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((now_ns(), std::process::id()))
}

/// This process's effective uid and gid, and its supplementary groups.
pub(crate) fn credentials() -> (u32, u32, Vec<u32>) {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let groups = nix::unistd::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    (uid, gid, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = b"123 (a) b) (c) S 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 3 21 424242 23\n";
        let st = Stat {
            state: b'S',
            threads: 3,
            start: 424242,
        };
        assert_eq!(parse_stat(line), Some(st));
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_stat(b"1 (x) Z"), None);
    }

    #[test]
    fn filesystems_are_told_apart() {
        assert_eq!(network_fs_name(0x6969), Some("NFS"));
        assert_eq!(network_fs_name(0xff53_4d42_u32 as i64), Some("CIFS"));
        assert_eq!(network_fs_name(0xfe53_4d42_u32 as i64), Some("SMB2"));
        assert_eq!(network_fs_name(0x0102_1994), None); // tmpfs
        assert!(is_memory_fs(0x0102_1994));
        assert!(is_memory_fs(0x8584_58f6_u32 as i64));
        assert!(!is_memory_fs(0xef53)); // ext4
        // /dev/shm is tmpfs on every Linux this runs on; its magic is read, not guessed.
        if let Ok(magic) = fs_magic_of_path(std::path::Path::new("/dev/shm")) {
            assert!(is_memory_fs(magic), "{magic:#x}");
        }
    }

    #[test]
    fn the_identity_cache_is_wiped_in_every_child() {
        if !fork_detection_wipes() {
            println!(
                "SKIP: the kernel refuses MADV_WIPEONFORK (Linux < 4.14?): a raw fork is \
                 not detected here; pthread_atfork still covers fork(3)"
            );
            return;
        }
        assert!(!CACHE.load(Ordering::Relaxed).is_null());
    }

    #[test]
    fn fork_local_descriptors_are_tracked_until_untracked() {
        let f = File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        let tracked = ForkLocal::new(f);
        assert!(is_fork_local(fd));
        assert!(
            PLACEHOLDER.load(Ordering::Relaxed) >= 0,
            "/dev/null is open"
        );
        // What `drop` does before closing (checked while the number cannot be reused).
        untrack(fd);
        assert!(!is_fork_local(fd));
        drop(tracked);
    }

    #[test]
    fn we_are_alive_and_pid_zero_is_not() {
        let (pid, start) = current_identity();
        assert_eq!(pid, std::process::id());
        assert_eq!(process_status(pid), ProcStatus::Alive { start });
        assert_eq!(process_status(0), ProcStatus::Dead);
        assert_eq!(process_status(PID_MAX + 1), ProcStatus::Dead);
    }
}
