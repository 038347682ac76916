//! Our own identity (PID and start time, cached on a wipe-on-fork page), our PID namespace,
//! our credentials.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::process::{ProcStatus, process_status};

// ---------------------------------------------------------------------------------------------
// Our own identity, cached: `getpid` is a real system call and the lock path must not pay it.

/// Where this process keeps its cached identity: a page advised `MADV_WIPEONFORK`, which the
/// kernel hands to every child made without `CLONE_VM` (`fork`, `_Fork`, `syscall(SYS_fork)`,
/// `clone`) as zeroes, whether or not `pthread_atfork` handlers ran. A zero PID means "not
/// known here yet": a child can never pass for its parent, and the fast path pays two loads
/// for it, no system call.
#[repr(C, align(64))]
pub(super) struct IdentityCache {
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
pub(super) static CACHE: AtomicPtr<IdentityCache> = AtomicPtr::new(std::ptr::null_mut());
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

/// This process's effective uid and gid, and its supplementary groups.
pub(crate) fn credentials() -> (u32, u32, Vec<u32>) {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let groups = nix::unistd::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    (uid, gid, groups)
}
