//! How a queued request waits for its turn: the next-in-line spins briefly, everyone else
//! sleeps on a futex at once.
//!
//! The policy, and why (measured on a 2-core VM, see docs/benchmarks.md):
//! * Waking a futex sleeper on the other CPU costs ~30 µs, a cache-line handoff ~60 ns. So the
//!   **next-in-line** spins for a short while ([`SPIN_BUDGET`]): most hand-offs then cost a
//!   cache miss, not a wake-up. It is the only spinner (one per queue, or the shared requests
//!   granted together): the holder and at most one spinner run, whatever N.
//! * It spins only where that can pay: when the queue holds no more requests than there are
//!   CPUs (load control, after Johnson et al., ASPLOS 2010: holder and spinner each have a
//!   CPU; beyond that a spinner takes the CPU from the holder — a pre-woken sleeper preempts
//!   whoever runs — or from processes with work). Measured on the 2-core VM: letting a
//!   pre-woken next-in-line spin when the queue is longer than the CPU count cut throughput
//!   at 8-64 processes by 2-10× (lock-holder preemption); longer budgets were worse.
//! * Waiters **farther back** sleep at once, on the futex word of their own slot (woken
//!   individually, no thundering herd, no yield loops). A release pre-wakes the request
//!   *behind* the new holder, so it is running by the time its turn comes.
//! * **Reclaim runs on a deadline of its own**: the waiter computes when to look at what
//!   blocks it ([`CHECK_NEXT`], [`CHECK_FAR`]) and keeps that instant across EINTR, spurious
//!   wake-ups and pre-wakes, so that signals (an interval timer, a profiler) never postpone
//!   the liveness check. The check sweeps every dead request ahead of us in one pass
//!   ([`Ring::sweep_dead`]): a kill storm costs one check, not one per sleep. Farther waiters
//!   look only when `head` has not moved since their last look (a moving queue has a live
//!   holder; this keeps long queues from reading /proc on every timeout). Waiters more than
//!   [`WATCHED`] behind the head back off (up to 64 ms) while the queue stands still: a pool of
//!   a thousand sleeping waiters would otherwise wake half a million times a second.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use crate::liveness::{Liveness, Registration};
use crate::ring::{Broken, BypassCheck, Claim, Entry, Grant, HeadCheck, Ring, Ticket};
use crate::share::Share;
use crate::sys;

/// How long the next-in-line spins before sleeping.
const SPIN_BUDGET: Duration = Duration::from_micros(50);
/// How often the next-in-line checks that what blocks it is alive: bounds how long a dead
/// holder goes unnoticed.
const CHECK_NEXT: Duration = Duration::from_millis(1);
/// How often farther waiters look whether `head` moved (and check it when it did not): bounds
/// a kill storm's reclaim when the next-in-line died too.
const CHECK_FAR: Duration = Duration::from_millis(2);
/// How soon to look again after a look that reclaimed something: in a kill storm the killed
/// processes exit one after another (the kernel tears them down on the same CPUs), and a
/// request whose owner is still exiting counts as alive.
const CHECK_AGAIN: Duration = Duration::from_micros(200);
/// Spin iterations between clock reads.
const SPINS_PER_CHECK: u32 = 64;
/// Waiters this close to the head look on the short schedule ([`CHECK_FAR`]) whatever
/// happens: a kill storm of up to this many processes ahead of a survivor is found in one
/// interval.
const WATCHED: u64 = 80;
/// Waiters farther back double their interval after every look that found the queue standing
/// still (a live holder holding long), up to `CHECK_FAR << MAX_BACKOFF` (64 ms): a pool of a
/// thousand sleeping waiters must not wake up half a million times a second.
const MAX_BACKOFF: u32 = 5;

/// CPUs this process may run on (cached: `available_parallelism` is a system call).
fn cpus() -> u64 {
    static CPUS: AtomicU32 = AtomicU32::new(0);
    let n = CPUS.load(Relaxed);
    if n != 0 {
        return u64::from(n);
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(1 << 16) as u32);
    CPUS.store(n, Relaxed);
    u64::from(n)
}

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

    /// The periodic look of a queued request `tk` at what blocks it: every dead request ahead
    /// of it is reclaimed in one pass, then the caller's check runs. True when something was
    /// reclaimed (more of the dead may still be on their way out: look again soon).
    fn on_check(&mut self, ring: &Ring<'_>, tk: Ticket) -> Result<bool, WaitError<E>> {
        let (head, more) = ring.sweep_dead(tk.t, self.liveness)?;
        (self.check)().map_err(WaitError::Check)?;
        Ok(head != HeadCheck::Fine || more > 0)
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
    let start = Instant::now();
    // When to look at what blocks us: a deadline of its own, kept across EINTR, spurious
    // wake-ups and pre-wakes (only a look moves it).
    let mut check_at = start + CHECK_NEXT;
    // `head` at our last look (farther waiters check only a queue that did not move).
    let mut looked_at = None;
    // Looks in a row at a queue that stood still (far waiters back off).
    let mut quiet = 0u32;
    // Since when we may spin as next-in-line (`None`: not now).
    let mut spin_from = Some(start);
    let mut spins = 0u32;
    loop {
        let ahead = match ring.grant(tk, share)? {
            Grant::Granted => return Ok(Outcome::Granted),
            Grant::Waiting { ahead } => ahead,
        };
        if ahead == 1 && spin_from.is_some() {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(SPINS_PER_CHECK) {
                std::hint::spin_loop();
                continue;
            }
        }
        let now = Instant::now();
        if waiter.expired(now) {
            // A deadline shorter than the check interval must not miss a dead holder.
            return match last_look(ring, tk, waiter.liveness)? {
                Grant::Granted => Ok(Outcome::Granted),
                Grant::Waiting { .. } => Ok(Outcome::TimedOut),
            };
        }
        if now >= check_at {
            let head = ring.head();
            let reclaimed = if ahead == 1 || looked_at == Some(head) {
                waiter.on_check(ring, tk)?
            } else {
                (waiter.check)().map_err(WaitError::Check)?;
                false
            };
            let now_head = ring.head();
            quiet = if !reclaimed && looked_at == Some(now_head) {
                quiet.saturating_add(1)
            } else {
                0
            };
            looked_at = (!reclaimed).then_some(now_head);
            check_at = now
                + match (reclaimed, ahead) {
                    (true, _) => CHECK_AGAIN,
                    (false, 1) => CHECK_NEXT,
                    (false, a) if a <= WATCHED => CHECK_FAR,
                    (false, _) => CHECK_FAR * (1 << quiet.min(MAX_BACKOFF)),
                };
            continue;
        }
        if let Some(from) = spin_from {
            let may_spin =
                ahead == 1 && now.duration_since(from) < SPIN_BUDGET && ring.queued() <= cpus();
            if may_spin {
                continue;
            }
            spin_from = None;
        }
        // Sleep on our own slot's futex word, until a release wakes us or it is time to look.
        let (word, parked) = ring.park_word(tk);
        if let Grant::Granted = ring.grant(tk, share)? {
            return Ok(Outcome::Granted);
        }
        let nap = waiter.nap(check_at.saturating_duration_since(now), now);
        sys::futex_wait(word, parked, nap);
        // A release that wakes us first moves the word off `parked` (see `Ring::wake_slot`);
        // a signal, a spurious wake-up or the timeout leave it: then nothing changes.
        if word.load(Relaxed) != parked {
            spin_from = Some(Instant::now());
            spins = 0;
        }
    }
}

/// One last look before queued request `tk` gives up (a `try_` call, or a deadline that
/// passed before its first periodic check): every dead request at the head of the queue is
/// reclaimed (a released ticket left behind is passed), then the grant is asked again. So a
/// dead holder never blocks callers that only ever try, or only ever wait less than
/// [`CHECK_NEXT`] (issue 17: a poller behind a SIGKILLed holder was never granted). Costs a
/// failed attempt one liveness check of the head.
#[cold]
pub(crate) fn last_look<L: Liveness>(
    ring: &Ring<'_>,
    tk: Ticket,
    liveness: &L,
) -> Result<Grant, Broken> {
    // Every pass that does something moves `head` on or frees a slot ahead of us: at most a
    // ring's worth of them.
    for _ in 0..=ring.capacity() {
        let grant = ring.grant(tk, tk.share())?;
        if grant == Grant::Granted || ring.check_head(liveness)? == HeadCheck::Fine {
            return Ok(grant);
        }
    }
    ring.grant(tk, tk.share())
}

/// How a granted request of a bounded table got in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entered {
    /// It holds the token; `died` when a bypasser it waited for died inside.
    Clear {
        /// The bypasser it waited for died holding the token.
        died: bool,
    },
    /// The deadline passed while a bypasser was inside.
    TimedOut,
}

/// Bounded tables: after `tk` was granted, waits until no bypasser is inside (see
/// `ring::bypass`): spins briefly where that can pay (a bypasser's critical section is
/// usually short), then sleeps on the bypass word; looks at the bypasser's liveness on the
/// same schedule as a waiter looks at the head, so a bypasser that died inside blocks nobody
/// for longer than [`CHECK_NEXT`]. With no deadline left (a `try_` call) it looks once.
pub(crate) fn until_entered<L: Liveness, E>(
    ring: &Ring<'_>,
    tk: Ticket,
    waiter: &mut Waiter<'_, L, impl FnMut() -> Result<(), E>>,
) -> Result<Entered, WaitError<E>> {
    let start = Instant::now();
    let mut check_at = start + CHECK_NEXT;
    let mut died = false;
    let mut spins = 0u32;
    loop {
        let b = match ring.enter(tk) {
            Entry::Clear => return Ok(Entered::Clear { died }),
            Entry::Busy(b) => b,
        };
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(SPINS_PER_CHECK) {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        if waiter.expired(now) {
            // One look at the bypasser: a dead one never blocks callers that only try.
            if let BypassCheck::Reclaimed { was_holding } = ring.check_bypass(waiter.liveness) {
                died |= was_holding;
                continue;
            }
            return Ok(Entered::TimedOut);
        }
        if now >= check_at {
            if let BypassCheck::Reclaimed { was_holding } = ring.check_bypass(waiter.liveness) {
                died |= was_holding;
            }
            (waiter.check)().map_err(WaitError::Check)?;
            check_at = now + CHECK_NEXT;
            continue;
        }
        if now.duration_since(start) < SPIN_BUDGET && ring.queued() <= cpus() {
            continue;
        }
        let word = ring.bypass_park_word();
        if word.load(SeqCst) != b {
            continue;
        }
        let nap = waiter.nap(check_at.saturating_duration_since(now), now);
        sys::futex_wait(word, b, nap);
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
