//! How a queued request waits for its turn: spin, yield, then sleep on a futex.
//!
//! The policy, and why (measured on a 2-core VM, see docs/benchmarks.md):
//! * Waking a futex sleeper on the other CPU costs ~30 µs, a cache-line handoff ~60 ns. So the
//!   **next-in-line** spins for a short while: most hand-offs then cost a cache miss, not a
//!   wake-up.
//! * Waiters **farther back** must not spin: with more processes than CPUs a spinner can take
//!   the CPU from the holder or the next-in-line (a FIFO lock then collapses). They yield
//!   briefly, then sleep. Release pre-wakes the request *behind* the new holder, so it spins
//!   by the time its turn comes.
//! * Nobody burns CPU behind a long holder: after the budgets below everyone sleeps on the
//!   futex word of its own slot (woken individually, no thundering herd). Sleeps time out so
//!   that a dead holder is found: each timeout checks the head of the queue.

use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use crate::liveness::{Liveness, Registration};
use crate::ring::{Broken, Claim, Grant, Ring, Ticket};
use crate::share::Share;
use crate::sys;

/// How long the next-in-line spins before sleeping.
const SPIN_BUDGET: Duration = Duration::from_micros(50);
/// How long farther waiters yield before sleeping.
const YIELD_BUDGET: Duration = Duration::from_micros(50);
/// Sleep length of the next-in-line: bounds how long a dead holder goes unnoticed.
const PARK_NEXT: Duration = Duration::from_millis(2);
/// Sleep length of farther waiters (they are pre-woken when they become next-in-line).
const PARK_FAR: Duration = Duration::from_millis(10);
/// Spin iterations between clock reads.
const SPINS_PER_CHECK: u32 = 64;

/// How a wait ended, when nothing went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The request holds the token.
    Granted,
    /// The deadline passed first.
    TimedOut,
}

/// Why a wait failed.
#[derive(Debug)]
pub(crate) enum WaitError<E> {
    /// The ring is corrupt or our slot was taken.
    Broken(Broken),
    /// The caller's periodic check failed (e.g. the parent died).
    Check(E),
}

impl<E> From<Broken> for WaitError<E> {
    fn from(b: Broken) -> Self {
        WaitError::Broken(b)
    }
}

/// What a waiting request brings along: when to give up, how to tell the dead from the
/// living, and the caller's own check, run at every sleep timeout.
pub(crate) struct Waiter<'l, L, C> {
    /// Give up at this instant; `None`: never.
    pub deadline: Option<Instant>,
    /// Decides whether the head of the queue is alive.
    pub liveness: &'l L,
    /// The caller's periodic check (e.g. "the parent is alive").
    pub check: C,
}

impl<L: Liveness, E, C: FnMut() -> Result<(), E>> Waiter<'_, L, C> {
    /// True once the deadline has passed at `now`.
    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// `nap`, cut short so as not to sleep past the deadline.
    fn nap(&self, nap: Duration, now: Instant) -> Duration {
        self.deadline
            .map_or(nap, |d| nap.min(d.saturating_duration_since(now)))
    }

    /// After a sleep nobody ended: makes sure the head of the queue is alive (reclaiming it
    /// if not), then runs the caller's check.
    fn on_timeout(&mut self, ring: &Ring<'_>) -> Result<(), WaitError<E>> {
        ring.check_head(self.liveness)?;
        (self.check)().map_err(WaitError::Check)
    }
}

/// Waits until `tk` is granted, the waiter's deadline passes, or its check fails. Does not
/// release the ticket: the caller does that on any outcome but `Granted`.
pub(crate) fn until_granted<L: Liveness, E>(
    ring: &Ring<'_>,
    tk: Ticket,
    waiter: &mut Waiter<'_, L, impl FnMut() -> Result<(), E>>,
) -> Result<Outcome, WaitError<E>> {
    let share = tk.share();
    let mut phase = Instant::now();
    let mut spins = 0u32;
    loop {
        let ahead = match ring.grant(tk, share)? {
            Grant::Granted => return Ok(Outcome::Granted),
            Grant::Waiting { ahead } => ahead,
        };
        spins += 1;
        if !spins.is_multiple_of(SPINS_PER_CHECK) && ahead == 1 {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        if waiter.expired(now) {
            return Ok(Outcome::TimedOut);
        }
        let budget = if ahead == 1 {
            SPIN_BUDGET
        } else {
            YIELD_BUDGET
        };
        if now.duration_since(phase) < budget {
            if ahead > 1 {
                sys::yield_now();
            }
            continue;
        }
        // Sleep on our own slot's futex word.
        let nap = waiter.nap(if ahead == 1 { PARK_NEXT } else { PARK_FAR }, now);
        let (word, parked) = ring.park_word(tk);
        if let Grant::Granted = ring.grant(tk, share)? {
            return Ok(Outcome::Granted);
        }
        sys::futex_wait(word, parked, nap);
        if now.elapsed() >= nap {
            // Nobody woke us: make sure the head of the queue is alive, then sleep again
            // (the spin budget stays spent: no CPU burnt behind a long holder).
            waiter.on_timeout(ring)?;
        } else {
            // Woken (our turn is near): spin or yield again before sleeping.
            phase = Instant::now();
        }
        spins = 0;
    }
}

/// Claims a slot, waiting while the ring is full. `None` when the deadline passes first.
pub(crate) fn claim<L: Liveness, E>(
    ring: &Ring<'_>,
    share: Share,
    me: Registration,
    waiter: &mut Waiter<'_, L, impl FnMut() -> Result<(), E>>,
) -> Result<Option<Ticket>, WaitError<E>> {
    let backoff = Backoff::new();
    let mut full_since: Option<Instant> = None;
    loop {
        match ring.try_claim(share, me) {
            Claim::Claimed(tk) => return Ok(Some(tk)),
            Claim::Retry => backoff.spin(),
            Claim::Broken(b) => return Err(WaitError::Broken(b)),
            Claim::Full => {
                // Every slot is taken. Rare (capacity is sized for the expected crowd), so a
                // plain sleep-and-retry is enough; it also finds dead holders.
                let now = Instant::now();
                if waiter.expired(now) {
                    return Ok(None);
                }
                let since = *full_since.get_or_insert(now);
                if backoff.is_completed() {
                    waiter.on_timeout(ring)?;
                    let nap = if now.duration_since(since) < Duration::from_millis(1) {
                        Duration::from_micros(50)
                    } else {
                        Duration::from_millis(1)
                    };
                    std::thread::sleep(waiter.nap(nap, now));
                } else {
                    backoff.snooze();
                }
            }
        }
    }
}
