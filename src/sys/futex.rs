//! Futexes on words of the shared mapping: wait and wake on one word, `futex_waitv` on several.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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
// futex_waitv: one sleep on several words (Linux >= 5.16), for the cancel parker and the async
// waiter thread. The words are waited on as 32-bit *shared* futexes (no FUTEX_PRIVATE_FLAG),
// so the wakes they pair with are `futex_wake` above, whatever process or thread calls it.

/// Most words one `futex_waitv` call takes (the kernel's `FUTEX_WAITV_MAX`).
pub(crate) const FUTEX_WAITV_MAX: usize = 128;

/// How a [`futex_waitv`] call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitvOutcome {
    /// A wake on `words[i]` ended the sleep (the kernel names one woken word, the lowest it
    /// saw; others may have changed too).
    Woken(usize),
    /// The timeout passed.
    TimedOut,
    /// One of the words did not hold its expected value when the call began (`EAGAIN`; the
    /// kernel does not say which).
    Mismatch,
    /// A signal interrupted the sleep (`EINTR`).
    Interrupted,
}

/// The kernel's `struct futex_waitv` (uapi/linux/futex.h).
#[cfg(target_os = "linux")]
#[repr(C)]
struct FutexWaitv {
    /// The expected value (a u32 zero-extended: `FUTEX2_SIZE_U32`).
    val: u64,
    /// The word's address.
    uaddr: u64,
    /// `FUTEX2_SIZE_U32`, no `FUTEX2_PRIVATE`: a shared futex, as the ring's words are.
    flags: u32,
    /// Must be zero.
    reserved: u32,
}

/// `FUTEX2_SIZE_U32` (uapi/linux/futex.h): a 32-bit futex word.
#[cfg(target_os = "linux")]
const FUTEX2_SIZE_U32: u32 = 0x02;

/// Sleeps while every `words[i].0` holds `words[i].1`, at most `timeout` (`None`: no limit).
/// One system call (`SYS_futex_waitv`, Linux >= 5.16); the timeout is turned into the absolute
/// `CLOCK_MONOTONIC` instant the call wants. At most [`FUTEX_WAITV_MAX`] words (more, or none:
/// `InvalidInput`). `Err(Unsupported)` where the kernel lacks the call (`ENOSYS`) or off
/// Linux; other errors as the kernel reports them. Spurious wake-ups are possible: callers
/// look at their words again.
pub(crate) fn futex_waitv(
    words: &[(&AtomicU32, u32)],
    timeout: Option<Duration>,
) -> io::Result<WaitvOutcome> {
    if words.is_empty() || words.len() > FUTEX_WAITV_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "futex_waitv takes 1 to 128 words",
        ));
    }
    #[cfg(target_os = "linux")]
    {
        // On the stack (3 KiB): a parker's sleep allocates nothing.
        let mut waiters = [const {
            FutexWaitv {
                val: 0,
                uaddr: 0,
                flags: 0,
                reserved: 0,
            }
        }; FUTEX_WAITV_MAX];
        for (slot, &(w, v)) in waiters.iter_mut().zip(words) {
            *slot = FutexWaitv {
                val: u64::from(v),
                uaddr: w.as_ptr() as usize as u64,
                flags: FUTEX2_SIZE_U32,
                reserved: 0,
            };
        }
        let deadline = match timeout {
            None => None,
            Some(t) => {
                let mut now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `now` is a valid, writable timespec.
                if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let nanos = now.tv_nsec as u64 + u64::from(t.subsec_nanos());
                let secs = (now.tv_sec as u64)
                    .saturating_add(t.as_secs())
                    .saturating_add(nanos / 1_000_000_000)
                    .min(i32::MAX as u64);
                Some(libc::timespec {
                    tv_sec: secs as libc::time_t,
                    tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
                })
            }
        };
        let ts = deadline
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the first `words.len()` (1..=128) entries of `waiters` are filled in with
        // the addresses of valid, aligned u32 words borrowed for the whole call; `ts` is null
        // or points to a timespec that outlives the call; flags 0 as the kernel requires.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex_waitv,
                waiters.as_ptr(),
                words.len() as libc::c_uint,
                0 as libc::c_uint,
                ts,
                libc::CLOCK_MONOTONIC,
            )
        };
        if rc >= 0 {
            return Ok(WaitvOutcome::Woken(rc as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ETIMEDOUT) => Ok(WaitvOutcome::TimedOut),
            Some(libc::EAGAIN) => Ok(WaitvOutcome::Mismatch),
            Some(libc::EINTR) => Ok(WaitvOutcome::Interrupted),
            Some(libc::ENOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "futex_waitv needs Linux 5.16 or later",
            )),
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = timeout;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "futex_waitv is Linux-only",
        ))
    }
}

/// Whether this kernel lets us use `futex_waitv` (asked once, then cached): a call on a word
/// that does not hold the value given returns at once, `EAGAIN` where the call exists,
/// `ENOSYS` where it does not.
pub(crate) fn futex_waitv_supported() -> bool {
    /// 0: not asked yet; 1: supported; 2: missing.
    static KNOWN: AtomicU32 = AtomicU32::new(0);
    match KNOWN.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let probe = AtomicU32::new(0);
            // Anything but a clean answer (ENOSYS, or EPERM from a seccomp filter) counts
            // as missing: the callers then take their fallback.
            let ok = futex_waitv(&[(&probe, 1)], Some(Duration::ZERO)).is_ok();
            KNOWN.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}
