//! Other processes: /proc status and stat, `kill(pid, 0)`, pidfds, thread ids.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Largest PID Linux hands out (`PID_MAX_LIMIT` is 2^22).
pub(crate) const PID_MAX: u32 = (1 << 22) - 1;

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

/// The calling thread's kernel id (`gettid`); 0 off Linux.
pub(crate) fn gettid() -> u32 {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() } as u32;
    #[cfg(not(target_os = "linux"))]
    let tid = 0;
    tid
}

/// The scheduler state (`R`, `S`, ...) of thread `tid` of this process, from
/// `/proc/self/task/TID/stat`; `None` if it cannot be read.
#[cfg(test)]
pub(crate) fn thread_state(tid: u32) -> Option<u8> {
    let bytes = std::fs::read(format!("/proc/self/task/{tid}/stat")).ok()?;
    Some(parse_stat(&bytes)?.state)
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
