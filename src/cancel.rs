//! Cancelling a blocked wait from another thread (issue 19, item 4).
//!
//! A [`Cancel`] is a futex word of this process (0: live, 1: cancelled) behind an `Arc`.
//! [`Cancel::cancel`] sets it and wakes every thread sleeping on it. A waiter that must be
//! cancellable parks through a [`CancelParker`]: one `futex_waitv` sleep on *both* its slot
//! word and the cancel word, so either a grant or a cancel ends the sleep at once. Both words
//! are waited on and woken as shared futexes (no `FUTEX_PRIVATE_FLAG` on either side: the
//! flags of a wait and its wake must match, and the ring's slot words are shared).
//!
//! No lost wake-up: `cancel` stores 1 *before* `FUTEX_WAKE`; a parker hands the kernel the
//! expected value 0 for the cancel word, which the kernel compares under its futex-bucket lock
//! before sleeping. A cancel before that compare makes the call return at once (`EAGAIN`), one
//! after it finds the parker queued and wakes it.
//!
//! Where `futex_waitv` is missing (Linux < 5.16, seccomp, non-Linux) the parker falls back to
//! sleeping on the slot word alone in naps of at most [`FALLBACK_NAP`], looking at the cancel
//! word between naps: a cancel then takes up to 1 ms to be seen, and a parked waiter wakes up
//! at most 1,000 times a second (the blocking wait policy already wakes every 1–2 ms near the
//! head of the queue for its liveness look, so near the head this adds little; far back, where
//! the policy backs off to 64 ms, it is the whole cost).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::park::Parker;
use crate::sys;

/// The longest nap of a [`CancelParker`] where `futex_waitv` is missing: bounds how late a
/// cancel is seen there.
pub(crate) const FALLBACK_NAP: Duration = Duration::from_millis(1);

/// A handle that cancels waits from another thread: cheap to clone (an `Arc`), `Send + Sync`.
///
/// Every clone shares one state: once [`cancel`](Self::cancel) is called, every wait that
/// carries this handle (or a clone) ends at once, and so does every later one — a `Cancel` is
/// not re-armed; make a new one for the next wait.
///
/// ```
/// let cancel = lockticket::Cancel::new();
/// let other = cancel.clone();
/// std::thread::spawn(move || other.cancel()).join().unwrap();
/// assert!(cancel.is_cancelled());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    /// 0 while live, 1 once cancelled; waited on and woken as a shared futex.
    word: Arc<AtomicU32>,
}

impl Cancel {
    /// A fresh, live handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: every wait carrying this handle ends at once (those blocked now and those to
    /// come). Idempotent; only the first call makes a system call (`FUTEX_WAKE`).
    pub fn cancel(&self) {
        if self.word.swap(1, SeqCst) == 0 {
            sys::futex_wake(&self.word, i32::MAX);
        }
    }

    /// True once [`cancel`](Self::cancel) was called on this handle or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.word.load(SeqCst) != 0
    }

    /// A parker whose sleeps also end when this handle is cancelled.
    #[cfg_attr(not(test), allow(dead_code))] // wired in by the request path (issue 19)
    pub(crate) fn parker(&self) -> CancelParker<'_> {
        CancelParker {
            cancel: self,
            waitv: sys::futex_waitv_supported(),
        }
    }
}

/// A [`Parker`] that sleeps on the slot word *and* a [`Cancel`]'s word: it returns at once
/// once the handle is cancelled. The wait loop that uses it must look at
/// [`Cancel::is_cancelled`] after every `park` (and before its first), and leave the queue
/// with a distinct outcome when it is set — the parker only ends the sleep. A loop that does
/// not look would spin: once cancelled, every `park` returns at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CancelParker<'c> {
    /// The handle whose word we also sleep on.
    cancel: &'c Cancel,
    /// `futex_waitv` works here (else: the polling fallback, see the module docs).
    waitv: bool,
}

impl Parker for CancelParker<'_> {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn park(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        if self.cancel.is_cancelled() {
            return;
        }
        if self.waitv {
            // Any outcome (woken, timeout, mismatch, EINTR) means "look again"; an error
            // (none is expected once the probe succeeded) is a spurious return too.
            let _ = sys::futex_waitv(&[(word, expected), (&self.cancel.word, 0)], Some(timeout));
        } else {
            sys::futex_wait(word, expected, timeout.min(FALLBACK_NAP));
        }
    }

    fn sleep(&self, d: Duration) {
        // Nothing of ours to wait on but the cancel word itself: an exact sleep, no fallback
        // needed (plain FUTEX_WAIT exists everywhere this crate parks).
        sys::futex_wait(&self.cancel.word, 0, d);
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

#[cfg(test)]
impl CancelParker<'_> {
    /// The same parker, forced onto the fallback (to test it where `futex_waitv` exists).
    fn fallback(cancel: &Cancel) -> CancelParker<'_> {
        CancelParker {
            cancel,
            waitv: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Turns a hang into a failure; never a measure of speed.
    const HANG: Duration = Duration::from_secs(20);

    /// Parks through `make(&cancel)` on a word nobody changes, with a timeout far beyond
    /// [`HANG`]; another thread cancels once the parker is about to park. The park must end.
    fn cancel_ends_a_park(make: for<'c> fn(&'c Cancel) -> CancelParker<'c>) {
        let cancel = Cancel::new();
        let word = AtomicU32::new(7);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let parker = make(&cancel);
                tid_tx.send(sys::gettid()).unwrap();
                // Parks in a loop, as the wait policy does, until it sees the cancel.
                while !cancel.is_cancelled() {
                    parker.park(&word, 7, Duration::from_secs(3600));
                }
                tx.send(()).unwrap();
            });
            // Wait until the waiter sleeps (state S in /proc), so that the cancel has to
            // wake it rather than be seen before the park; give up waiting after a while
            // (a cancel before the park must end it too).
            let tid = tid_rx.recv().unwrap();
            let start = Instant::now();
            while sys::thread_state(tid) != Some(b'S') && start.elapsed() < HANG / 4 {
                std::thread::yield_now();
            }
            let other = cancel.clone();
            std::thread::spawn(move || other.cancel()).join().unwrap();
            rx.recv_timeout(HANG)
                .expect("a cancelled park did not return");
        });
        assert!(cancel.is_cancelled());
        assert_eq!(word.load(SeqCst), 7, "the slot word is left alone");
    }

    #[test]
    fn cancel_wakes_a_parked_thread() {
        cancel_ends_a_park(Cancel::parker);
    }

    #[test]
    fn cancel_wakes_a_parked_thread_on_the_fallback() {
        cancel_ends_a_park(CancelParker::fallback);
    }

    #[test]
    fn cancel_before_park_returns_at_once() {
        let cancel = Cancel::new();
        cancel.cancel();
        cancel.cancel(); // idempotent
        let word = AtomicU32::new(0);
        let start = Instant::now();
        cancel.parker().park(&word, 0, Duration::from_secs(3600));
        CancelParker::fallback(&cancel).park(&word, 0, Duration::from_secs(3600));
        cancel.parker().sleep(Duration::from_secs(3600));
        assert!(start.elapsed() < HANG);
    }

    #[test]
    fn a_live_cancel_parker_still_wakes_on_its_word_and_times_out() {
        let cancel = Cancel::new();
        let parker = cancel.parker();
        let word = AtomicU32::new(1);
        // A word that already differs: back at once.
        parker.park(&word, 2, Duration::from_secs(3600));
        // A word that holds: the timeout ends the park.
        parker.park(&word, 1, Duration::from_millis(1));
        parker.sleep(Duration::from_millis(1));
        assert!(!cancel.is_cancelled());
        // Send + Sync, cheap clone.
        fn send_sync<T: Send + Sync + Clone>(_: &T) {}
        send_sync(&cancel);
    }
}
