//! Descriptors a forked child must not keep, and the exec guardian.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};

use super::process::parse_stat;

// ---------------------------------------------------------------------------------------------
// Descriptors a forked child must not keep (issue 17, items 6 and 10b).

/// How many descriptors [`ForkLocal`] tracks at once; more are not tracked (a child made by
/// `fork` then keeps the extra ones until its first call on the handle, as before).
const FORK_LOCAL_SLOTS: usize = 128;
/// The descriptors of this process a forked child must let go of, `-1` for an empty slot.
static FORK_LOCAL: [AtomicI32; FORK_LOCAL_SLOTS] = [const { AtomicI32::new(-1) }; FORK_LOCAL_SLOTS];
/// A descriptor of /dev/null (close-on-exec), opened once, that the child handler puts in
/// place of each tracked descriptor; `-1` if it could not be opened (nothing is replaced).
pub(super) static PLACEHOLDER: AtomicI32 = AtomicI32::new(-1);
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
pub(super) fn untrack(fd: RawFd) {
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
