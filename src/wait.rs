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

use crate::share::Share;
use crate::liveness::Liveness;
use crate::ring::{Broken, Claim, Grant, Ring, Ticket};
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

/// How a wait ended.
#[derive(Debug)]
pub(crate) enum Waited<E> {
    /// The request holds the token.
    Granted,
    /// The deadline passed first.
    TimedOut,
    /// The ring is corrupt or our slot was taken.
    Broken(Broken),
    /// The caller's periodic check failed (e.g. the parent died).
    Check(E),
}

/// Waits until `tk` is granted, `deadline` passes, or `check` (run at every sleep timeout)
/// fails. Does not release the ticket: the caller does that on any outcome but `Granted`.
pub(crate) fn until_granted<E>(
    ring: &Ring<'_>,
    tk: Ticket,
    share: Share,
    deadline: Option<Instant>,
    liveness: &impl Liveness,
    mut check: impl FnMut() -> Result<(), E>,
) -> Waited<E> {
    let mut phase = Instant::now();
    let mut spins = 0u32;
    loop {
        let ahead = match ring.grant(tk, share) {
            Ok(Grant::Granted) => return Waited::Granted,
            Ok(Grant::Waiting { ahead }) => ahead,
            Err(b) => return Waited::Broken(b),
        };
        spins += 1;
        if !spins.is_multiple_of(SPINS_PER_CHECK) && ahead == 1 {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Waited::TimedOut;
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
        let nap = if ahead == 1 { PARK_NEXT } else { PARK_FAR };
        let nap = deadline.map_or(nap, |d| nap.min(d.saturating_duration_since(now)));
        let (word, parked) = ring.park_word(tk);
        match ring.grant(tk, share) {
            Ok(Grant::Granted) => return Waited::Granted,
            Ok(Grant::Waiting { .. }) => {}
            Err(b) => return Waited::Broken(b),
        }
        sys::futex_wait(word, parked, nap);
        if now.elapsed() >= nap {
            // Nobody woke us: make sure the head of the queue is alive, then sleep again
            // (the spin budget stays spent: no CPU burnt behind a long holder).
            if let Err(b) = ring.check_head(liveness) {
                return Waited::Broken(b);
            }
            if let Err(e) = check() {
                return Waited::Check(e);
            }
        } else {
            // Woken (our turn is near): spin or yield again before sleeping.
            phase = Instant::now();
        }
        spins = 0;
    }
}

/// Claims a slot, waiting while the ring is full. `None` when the deadline passes first.
pub(crate) fn claim<E>(
    ring: &Ring<'_>,
    share: Share,
    pid: u32,
    start: u64,
    deadline: Option<Instant>,
    liveness: &impl Liveness,
    mut check: impl FnMut() -> Result<(), E>,
) -> Result<Option<Ticket>, Waited<E>> {
    let backoff = Backoff::new();
    let mut full_since: Option<Instant> = None;
    loop {
        match ring.try_claim(share, pid, start) {
            Claim::Claimed(tk) => return Ok(Some(tk)),
            Claim::Retry => backoff.spin(),
            Claim::Broken(b) => return Err(Waited::Broken(b)),
            Claim::Full => {
                // Every slot is taken. Rare (capacity is sized for the expected crowd), so a
                // plain sleep-and-retry is enough; it also finds dead holders.
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Ok(None);
                }
                let since = *full_since.get_or_insert(now);
                if backoff.is_completed() {
                    ring.check_head(liveness).map_err(Waited::Broken)?;
                    check().map_err(Waited::Check)?;
                    let nap = if now.duration_since(since) < Duration::from_millis(1) {
                        Duration::from_micros(50)
                    } else {
                        Duration::from_millis(1)
                    };
                    std::thread::sleep(deadline.map_or(nap, |d| nap.min(d - now)));
                } else {
                    backoff.snooze();
                }
            }
        }
    }
}
