//! The parker: how a waiting request sleeps and reads the clock — the seam between the wait
//! policy (`wait`) and the OS, as parking_lot's `ThreadParkerT` is between its lock
//! algorithms and the platform.
//!
//! The policy (spin, park, the liveness deadline, the far-waiter backoff, the bypass wait) is
//! generic over a [`Parker`]: in production [`Futex`] sleeps on a futex of the shared mapping
//! (woken by `sys::futex_wake`, which the ring calls on release); the policy's unit tests run
//! it on a virtual clock that records every sleep. A waiter that is not a thread (the async
//! waiter to come) is meant to be another parker.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use crate::sys;

/// How a waiter sleeps, and what time it is.
pub(crate) trait Parker {
    /// The current instant (the policy reads time only through this).
    fn now(&self) -> Instant;
    /// Sleeps while `word` holds `expected`, at most `timeout`. May return early — a wake-up,
    /// a signal, spuriously, or at once when the word already differs: the caller looks
    /// again.
    fn park(&self, word: &AtomicU32, expected: u32, timeout: Duration);
    /// Sleeps for `d` with nothing to wait on (a full ring: no slot word is ours yet).
    fn sleep(&self, d: Duration);

    /// True once the wait must end at once, granted or not (a cancelled request: see
    /// `crate::cancel`). The wait loop asks after every sleep.
    #[inline]
    fn cancelled(&self) -> bool {
        false
    }
}

/// The production parker: a futex wait on the shared word (process-shared: a release in
/// another process wakes it), the monotonic clock, `thread::sleep`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Futex;

impl Parker for Futex {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[inline]
    fn park(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        sys::futex_wait(word, expected, timeout);
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}
