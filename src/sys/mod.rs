//! OS plumbing: process identity, /proc (and [`OsLiveness`] over it), futexes, flock, statfs,
//! pidfd, file allocation, the neutering remap.
//!
//! Every system call of the crate goes through this module, so the algorithm modules stay free
//! of OS calls and can be tested in memory. The one exception is creating the mappings, which
//! `region` does through `memmap2`. This module knows no file format.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

mod os_liveness;
pub(crate) use os_liveness::OsLiveness;

/// Largest PID Linux hands out (`PID_MAX_LIMIT` is 2^22).
pub(crate) const PID_MAX: u32 = (1 << 22) - 1;

// ---------------------------------------------------------------------------------------------
// Our own identity, cached: `getpid` is a real system call and the lock path must not pay it.

/// Our PID, or 0 when not yet known (at start and in a freshly forked child).
static CACHED_PID: AtomicU32 = AtomicU32::new(0);
/// Our start time in clock ticks since boot, or 0 when not yet known.
static CACHED_START: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_identity_in_child() {
    // Runs in the child right after fork: only async-signal-safe work, so just forget.
    CACHED_PID.store(0, Ordering::Relaxed);
    CACHED_START.store(0, Ordering::Relaxed);
}

/// This process's identity `(pid, start time)`, cached across calls and refreshed after `fork`.
#[inline]
pub(crate) fn current_identity() -> (u32, u64) {
    let pid = CACHED_PID.load(Ordering::Relaxed);
    let start = CACHED_START.load(Ordering::Relaxed);
    if pid != 0 && start != 0 {
        return (pid, start);
    }
    refresh_identity()
}

#[cold]
fn refresh_identity() -> (u32, u64) {
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only stores to atomics (async-signal-safe); the
        // function pointer is 'static. A failure (ENOMEM) only means we would keep a stale
        // PID in a child, so it is checked against getpid below on every refresh anyway.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_identity_in_child));
        }
    });
    let pid = std::process::id();
    // Our own /proc entry always exists; fall back to a non-zero marker if /proc is absent,
    // which makes liveness checks of us fall back to the PID alone.
    let start = match process_status(pid) {
        ProcStatus::Alive { start } => start,
        _ => u64::MAX,
    };
    CACHED_START.store(start, Ordering::Relaxed);
    CACHED_PID.store(pid, Ordering::Relaxed);
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
pub(crate) fn fs_magic_of_file(file: &File) -> io::Result<i64> {
    let st = nix::sys::statfs::fstatfs(file).map_err(io::Error::from)?;
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
    fn we_are_alive_and_pid_zero_is_not() {
        let (pid, start) = current_identity();
        assert_eq!(pid, std::process::id());
        assert_eq!(process_status(pid), ProcStatus::Alive { start });
        assert_eq!(process_status(0), ProcStatus::Dead);
        assert_eq!(process_status(PID_MAX + 1), ProcStatus::Dead);
    }
}
