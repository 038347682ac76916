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
//!   blocks it ([`CHECK_NEXT`], [`CHECK_FAR`], [`CHECK_FIRST`] for a far waiter's first look) and keeps that instant across EINTR, spurious
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
use crate::park::{Futex, Parker};
use crate::ring::{Broken, BypassCheck, Claim, Entry, Grant, HeadCheck, Ring, Ticket};
use crate::share::Share;

/// How long the next-in-line spins before sleeping.
const SPIN_BUDGET: Duration = Duration::from_micros(50);
/// How often the next-in-line checks that what blocks it is alive: bounds how long a dead
/// holder goes unnoticed.
const CHECK_NEXT: Duration = Duration::from_millis(1);
/// How often farther waiters look whether `head` moved (and check it when it did not): bounds
/// a kill storm's reclaim when the next-in-line died too.
const CHECK_FAR: Duration = Duration::from_millis(2);
/// When a farther waiter first looks (then every [`CHECK_FAR`]): most waits in a moving queue
/// end before it, and a look costs a wake-up, a context switch and a `stat` of the path.
const CHECK_FIRST: Duration = Duration::from_millis(4);
/// How soon to look again after a look that reclaimed something: in a kill storm the killed
/// processes exit one after another (the kernel tears them down on the same CPUs), and a
/// request whose owner is still exiting counts as alive.
const CHECK_AGAIN: Duration = Duration::from_micros(200);
/// Looks on the [`CHECK_AGAIN`] schedule after the last one that reclaimed something, even
/// when they reclaim nothing: a storm's last victims (often the holder, killed first but torn
/// down last) are still exiting when the pass after the previous victims' reclaim runs, and
/// a fall back to [`CHECK_FAR`] there cost 2 ms per such round (a K = 64 storm took 7–9 ms).
/// 10 × 200 µs: a storm's stragglers are found within 2 ms of the previous reclaim.
const STORM_LOOKS: u32 = 10;
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
pub(crate) fn cpus() -> u64 {
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
    /// The parker says the wait must end (a cancelled request).
    Cancelled,
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

/// One kind of wait — for a grant, for a bypasser to leave — as [`wait_turn`] drives it.
trait Turn<E> {
    /// What a wait that ends well gives.
    type Done;
    /// Is the wait over? (Shared memory only, no system call.)
    fn poll(&mut self) -> Result<Option<Self::Done>, WaitError<E>>;
    /// True when this waiter would be the next to run (only then may spinning pay).
    fn next_in_line(&self) -> bool;
    /// True while spinning still pays, `spun` after spinning became allowed.
    fn may_spin(&self, spun: Duration) -> bool;
    /// How long after the wait starts the first look comes.
    fn first_look(&mut self) -> Duration {
        CHECK_NEXT
    }
    /// The periodic look at what blocks us (reclaiming the dead) and the caller's check;
    /// returns how long until the next look.
    fn look(&mut self) -> Result<Duration, WaitError<E>>;
    /// The deadline passed: one last look at what blocks us; `Some` when the wait turned out
    /// to be over (a dead holder never blocks a caller whose deadline is short).
    fn last_look(&mut self) -> Result<Option<Self::Done>, WaitError<E>>;
    /// Gets ready to sleep: the word to sleep on and the value it holds meanwhile; `None`
    /// when things moved (poll again instead).
    fn sleep_on(&mut self) -> Result<Option<(&AtomicU32, u32)>, WaitError<E>>;
}

/// The one loop every wait runs: poll; spin while that can pay; look at what blocks us on a
/// deadline of its own (kept across EINTR, spurious wake-ups and pre-wakes: only a look moves
/// it); park on the turn's word until woken, the next look, or the caller's deadline. A wake
/// that changed the word (a release: we may be next) allows a new spin. `None`: the deadline
/// passed.
fn wait_turn<E, T: Turn<E>>(
    parker: &impl Parker,
    deadline: Option<Instant>,
    mut turn: T,
) -> Result<Option<T::Done>, WaitError<E>> {
    let start = parker.now();
    let mut check_at = start + turn.first_look();
    // Since when we may spin (`None`: not now; `Some(None)`: since the next clock read).
    let mut spin_from = Some(Some(start));
    let mut spins = 0u32;
    // The first clock read is `start` itself (only polls happened since): a request that
    // sleeps at once, then is woken by its grant, reads the clock once in all. (Three reads per
    // contended grant before: start, before sleeping, after the wake.)
    let mut fresh = Some(start);
    loop {
        if let Some(done) = turn.poll()? {
            return Ok(Some(done));
        }
        if parker.cancelled() {
            return Err(WaitError::Cancelled);
        }
        if spin_from.is_some() && turn.next_in_line() {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(SPINS_PER_CHECK) {
                std::hint::spin_loop();
                continue;
            }
        }
        let now = fresh.take().unwrap_or_else(|| parker.now());
        if deadline.is_some_and(|d| now >= d) {
            return turn.last_look();
        }
        if now >= check_at {
            check_at = now + turn.look()?;
            continue;
        }
        if let Some(from) = spin_from {
            let from = from.unwrap_or(now);
            if turn.next_in_line() && turn.may_spin(now.duration_since(from)) {
                spin_from = Some(Some(from));
                continue;
            }
            spin_from = None;
        }
        let Some((word, expected)) = turn.sleep_on()? else {
            continue;
        };
        let mut nap = check_at.saturating_duration_since(now);
        if let Some(d) = deadline {
            nap = nap.min(d.saturating_duration_since(now));
        }
        parker.park(word, expected, nap);
        // A release that wakes us first moves the word off `expected` (see `Ring::wake_slot`);
        // a signal, a spurious wake-up or the timeout leave it: then nothing changes.
        // The spin budget starts at the next clock read, if one comes: a grant found at the
        // next poll needs none.
        if word.load(Relaxed) != expected {
            spin_from = Some(None);
            spins = 0;
        }
    }
}

/// A queued request waiting for its grant.
struct GrantTurn<'r, 'a, 'w, 'l, L, C> {
    ring: &'r Ring<'a>,
    tk: Ticket,
    waiter: &'w mut Waiter<'l, L, C>,
    /// Requests ahead of us at the last poll (1: next in line).
    ahead: u64,
    /// `head` at our last look (farther waiters check only a queue that did not move).
    looked_at: Option<u64>,
    /// Looks in a row at a queue that stood still (far waiters back off).
    quiet: u32,
    /// Looks left on the [`CHECK_AGAIN`] schedule since the last reclaim ([`STORM_LOOKS`]).
    storm: u32,
}

impl<L: Liveness, E, C: FnMut() -> Result<(), E>> Turn<E> for GrantTurn<'_, '_, '_, '_, L, C> {
    type Done = ();

    fn poll(&mut self) -> Result<Option<()>, WaitError<E>> {
        match self.ring.grant(self.tk)? {
            Grant::Granted => Ok(Some(())),
            Grant::Waiting { ahead } => {
                self.ahead = ahead;
                Ok(None)
            }
        }
    }

    fn next_in_line(&self) -> bool {
        self.ahead == 1
    }

    fn may_spin(&self, spun: Duration) -> bool {
        spun < SPIN_BUDGET && self.ring.queued() <= cpus()
    }

    /// The next-in-line looks after [`CHECK_NEXT`]. A farther waiter notes `head` now, as a
    /// look would, and first looks after [`CHECK_FIRST`]: that look already sweeps when
    /// `head` stood still since the start, and a wait shorter than that — the common one, in
    /// a moving queue — ends without a timeout. (A first look at 1 ms that only noted `head`
    /// woke most waiters of a 64-process queue once per grant, for nothing: 0.76 extra sleeps
    /// per grant against the baton ring.)
    fn first_look(&mut self) -> Duration {
        let head = self.ring.head();
        if self.tk.t.wrapping_sub(head) <= 1 {
            return CHECK_NEXT;
        }
        self.looked_at = Some(head);
        CHECK_FIRST
    }

    fn look(&mut self) -> Result<Duration, WaitError<E>> {
        let (ring, ahead) = (self.ring, self.ahead);
        let head = ring.head();
        let reclaimed = if ahead == 1 || self.looked_at == Some(head) {
            self.waiter.on_check(ring, self.tk)?
        } else {
            (self.waiter.check)().map_err(WaitError::Check)?;
            false
        };
        let now_head = ring.head();
        self.quiet = if !reclaimed && self.looked_at == Some(now_head) {
            self.quiet.saturating_add(1)
        } else {
            0
        };
        // After a reclaim too, the next look sweeps if `head` then still stands where our
        // reclaim left it (a live holder's progress moves it; a storm's stragglers do not).
        self.looked_at = Some(now_head);
        if reclaimed {
            self.storm = STORM_LOOKS;
        } else if self.storm > 0 && now_head == head {
            self.storm -= 1;
        } else {
            self.storm = 0; // the queue moves: a live holder serves it
        }
        Ok(match (reclaimed || self.storm > 0, ahead) {
            (true, _) => CHECK_AGAIN,
            (false, 1) => CHECK_NEXT,
            (false, a) if a <= WATCHED => CHECK_FAR,
            (false, _) => CHECK_FAR * (1 << self.quiet.min(MAX_BACKOFF)),
        })
    }

    fn last_look(&mut self) -> Result<Option<()>, WaitError<E>> {
        Ok(match last_look(self.ring, self.tk, self.waiter.liveness)? {
            Grant::Granted => Some(()),
            Grant::Waiting { .. } => None,
        })
    }

    fn sleep_on(&mut self) -> Result<Option<(&AtomicU32, u32)>, WaitError<E>> {
        // Mark ourselves asleep, then look once more: a release between the two either sees
        // PARKED and wakes us, or we see its grant here.
        let (word, parked) = self.ring.park_word(self.tk);
        Ok(match self.ring.grant(self.tk)? {
            Grant::Granted => None,
            Grant::Waiting { .. } => Some((word, parked)),
        })
    }
}

/// Waits until `tk` is granted, the waiter's deadline passes, or its check fails. Does not
/// release the ticket: the caller does that on any outcome but `Granted`.
pub(crate) fn until_granted<L: Liveness, E>(
    ring: &Ring<'_>,
    tk: Ticket,
    waiter: &mut Waiter<'_, L, impl FnMut() -> Result<(), E>>,
) -> Result<Outcome, WaitError<E>> {
    until_granted_on(&Futex, ring, tk, waiter)
}

/// [`until_granted`] on any parker.
pub(crate) fn until_granted_on<L: Liveness, E>(
    parker: &impl Parker,
    ring: &Ring<'_>,
    tk: Ticket,
    waiter: &mut Waiter<'_, L, impl FnMut() -> Result<(), E>>,
) -> Result<Outcome, WaitError<E>> {
    let deadline = waiter.deadline;
    let turn = GrantTurn {
        ring,
        tk,
        waiter,
        ahead: 0,
        looked_at: None,
        quiet: 0,
        storm: 0,
    };
    Ok(match wait_turn(parker, deadline, turn)? {
        Some(()) => Outcome::Granted,
        None => Outcome::TimedOut,
    })
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
        let grant = ring.grant(tk)?;
        if grant == Grant::Granted || ring.check_head(liveness)? == HeadCheck::Fine {
            return Ok(grant);
        }
    }
    ring.grant(tk)
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

/// A granted request of a bounded table waiting for the bypasser inside to leave.
struct EnterTurn<'r, 'a, 'w, 'l, L, C> {
    ring: &'r Ring<'a>,
    tk: Ticket,
    waiter: &'w mut Waiter<'l, L, C>,
    /// The bypass word at the last poll.
    busy: u32,
    /// A bypasser we waited for died inside.
    died: bool,
}

impl<L: Liveness, E, C: FnMut() -> Result<(), E>> Turn<E> for EnterTurn<'_, '_, '_, '_, L, C> {
    type Done = bool;

    fn poll(&mut self) -> Result<Option<bool>, WaitError<E>> {
        Ok(match self.ring.enter(self.tk) {
            Entry::Clear => Some(self.died),
            Entry::Busy(b) => {
                self.busy = b;
                None
            }
        })
    }

    fn next_in_line(&self) -> bool {
        true // the token is ours once the bypasser leaves
    }

    fn may_spin(&self, spun: Duration) -> bool {
        spun < SPIN_BUDGET && self.ring.queued() <= cpus()
    }

    fn look(&mut self) -> Result<Duration, WaitError<E>> {
        if let BypassCheck::Reclaimed { was_holding } = self.ring.check_bypass(self.waiter.liveness)
        {
            self.died |= was_holding;
        }
        (self.waiter.check)().map_err(WaitError::Check)?;
        Ok(CHECK_NEXT)
    }

    fn last_look(&mut self) -> Result<Option<bool>, WaitError<E>> {
        // A dead bypasser never blocks callers that only try. No bypass starts while we are
        // ENTERING, so this ends after at most one reclaim.
        for _ in 0..2 {
            match self.ring.check_bypass(self.waiter.liveness) {
                BypassCheck::Reclaimed { was_holding } => self.died |= was_holding,
                BypassCheck::Fine => return Ok(None),
            }
            if let Some(died) = self.poll()? {
                return Ok(Some(died));
            }
        }
        Ok(None)
    }

    fn sleep_on(&mut self) -> Result<Option<(&AtomicU32, u32)>, WaitError<E>> {
        let word = self.ring.bypass_park_word();
        Ok((word.load(SeqCst) == self.busy).then_some((word, self.busy)))
    }
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
    until_entered_on(&Futex, ring, tk, waiter)
}

/// [`until_entered`] on any parker.
pub(crate) fn until_entered_on<L: Liveness, E>(
    parker: &impl Parker,
    ring: &Ring<'_>,
    tk: Ticket,
    waiter: &mut Waiter<'_, L, impl FnMut() -> Result<(), E>>,
) -> Result<Entered, WaitError<E>> {
    let deadline = waiter.deadline;
    let turn = EnterTurn {
        ring,
        tk,
        waiter,
        busy: 0,
        died: false,
    };
    Ok(match wait_turn(parker, deadline, turn)? {
        Some(died) => Entered::Clear { died },
        None => Entered::TimedOut,
    })
}

/// Claims a slot, waiting while the ring is full. `None` when the deadline passes first.
pub(crate) fn claim<L: Liveness, E>(
    ring: &Ring<'_>,
    share: Share,
    me: Registration,
    waiter: &mut Waiter<'_, L, impl FnMut() -> Result<(), E>>,
) -> Result<Option<Ticket>, WaitError<E>> {
    claim_on(&Futex, ring, share, me, waiter)
}

/// [`claim`] on any parker.
pub(crate) fn claim_on<L: Liveness, E>(
    parker: &impl Parker,
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
                let now = parker.now();
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
                    parker.sleep(waiter.nap(nap, now));
                    if parker.cancelled() {
                        return Err(WaitError::Cancelled);
                    }
                } else {
                    backoff.snooze();
                }
            }
        }
    }
}

/// The policy on a virtual clock: every sleep is recorded, the world acts while we "sleep".
#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::liveness::Owner;
    use crate::ring::model::{MemRing, no_wake};

    /// A parker whose clock moves only when it is read (a little: spinning costs time) or
    /// slept on; `on_park` runs at every sleep, as the rest of the world.
    struct Virtual<'w> {
        t0: Instant,
        elapsed: Cell<Duration>,
        naps: RefCell<Vec<Duration>>,
        on_park: RefCell<Box<dyn FnMut(Duration) + 'w>>,
    }

    impl<'w> Virtual<'w> {
        fn new(on_park: impl FnMut(Duration) + 'w) -> Self {
            Virtual {
                t0: Instant::now(),
                elapsed: Cell::new(Duration::ZERO),
                naps: RefCell::new(Vec::new()),
                on_park: RefCell::new(Box::new(on_park)),
            }
        }
        fn advance(&self, d: Duration) {
            self.elapsed.set(self.elapsed.get() + d);
        }
        fn at(&self) -> Instant {
            self.t0 + self.elapsed.get()
        }
    }

    impl Parker for Virtual<'_> {
        fn now(&self) -> Instant {
            self.advance(Duration::from_nanos(20));
            self.at()
        }
        fn park(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
            self.naps.borrow_mut().push(timeout);
            (self.on_park.borrow_mut())(self.elapsed.get());
            // Woken at once by a change, else the whole nap.
            if word.load(SeqCst) == expected {
                self.advance(timeout);
            } else {
                self.advance(Duration::from_micros(1));
            }
        }
        fn sleep(&self, d: Duration) {
            self.advance(d);
        }
    }

    /// Registrations whose bit is set are dead.
    #[derive(Default)]
    struct Dead(Cell<u64>);
    impl Dead {
        fn kill(&self, index: u32) {
            self.0.set(self.0.get() | 1 << index);
        }
    }
    impl Liveness for Dead {
        fn is_alive(&self, o: Owner) -> bool {
            self.0.get() & (1 << o.index) == 0
        }
    }

    fn reg(index: u32) -> Registration {
        Registration {
            index,
            generation: index,
        }
    }

    fn queue(ring: &Ring<'_>, index: u32) -> Ticket {
        match ring.try_claim(Share::Exclusive, reg(index)) {
            Claim::Claimed(tk) => {
                ring.publish(tk, index, 0, 0);
                tk
            }
            other => panic!("{other:?}"),
        }
    }

    fn ok() -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn a_dead_holder_is_found_within_one_check_interval() {
        let mem = MemRing::new(4);
        let ring = mem.ring(no_wake);
        let holder = queue(&ring, 0);
        ring.mark_holding(holder);
        let me = queue(&ring, 1);
        let dead = Dead::default();
        dead.kill(0);
        let parker = Virtual::new(|_| {});
        let mut waiter = Waiter {
            deadline: None,
            liveness: &dead,
            check: ok,
        };
        let out = until_granted_on(&parker, &ring, me, &mut waiter).unwrap();
        assert_eq!(out, Outcome::Granted);
        assert!(
            parker.elapsed.get() <= CHECK_NEXT + Duration::from_micros(100),
            "found after {:?}",
            parker.elapsed.get()
        );
        assert!(ring.mark_holding(me), "the death is reported");
    }

    #[test]
    fn a_release_wakes_the_waiter_without_waiting_for_a_look() {
        let mem = MemRing::new(4);
        let ring = mem.ring(no_wake);
        let holder = queue(&ring, 0);
        ring.mark_holding(holder);
        let me = queue(&ring, 1);
        let alive = Dead::default();
        let released = Cell::new(false);
        let parker = Virtual::new(|_| {
            if !released.replace(true) {
                ring.release_exclusive(holder).unwrap();
            }
        });
        let mut waiter = Waiter {
            deadline: None,
            liveness: &alive,
            check: ok,
        };
        let out = until_granted_on(&parker, &ring, me, &mut waiter).unwrap();
        assert_eq!(out, Outcome::Granted);
        assert_eq!(
            parker.naps.borrow().len(),
            1,
            "one sleep, ended by the release"
        );
        assert!(
            parker.elapsed.get() < CHECK_NEXT,
            "{:?}",
            parker.elapsed.get()
        );
        assert!(!ring.mark_holding(me), "nobody died");
    }

    #[test]
    fn the_deadline_is_never_overslept_and_ends_with_a_last_look() {
        let mem = MemRing::new(4);
        let ring = mem.ring(no_wake);
        let holder = queue(&ring, 0);
        ring.mark_holding(holder);
        let me = queue(&ring, 1);
        let dead = Dead::default();
        let parker = Virtual::new(|_| {});
        let deadline = parker.t0 + Duration::from_micros(5_500);
        let mut waiter = Waiter {
            deadline: Some(deadline),
            liveness: &dead,
            check: ok,
        };
        let out = until_granted_on(&parker, &ring, me, &mut waiter).unwrap();
        assert_eq!(out, Outcome::TimedOut);
        let end = parker.at();
        assert!(end >= deadline && end < deadline + Duration::from_micros(10));
        assert!(parker.naps.borrow().iter().all(|n| *n <= CHECK_NEXT));
        // A deadline shorter than the look interval still finds a dead holder at its end.
        dead.kill(0);
        let parker = Virtual::new(|_| {});
        let mut waiter = Waiter {
            deadline: Some(parker.t0 + Duration::from_micros(300)),
            liveness: &dead,
            check: ok,
        };
        let out = until_granted_on(&parker, &ring, me, &mut waiter).unwrap();
        assert_eq!(out, Outcome::Granted);
    }

    #[test]
    fn far_waiters_back_off_while_the_queue_stands_still() {
        let mem = MemRing::new(256);
        let ring = mem.ring(no_wake);
        let holder = queue(&ring, 0);
        ring.mark_holding(holder);
        for i in 1..=(WATCHED as u32 + 20) {
            queue(&ring, i % 60 + 1);
        }
        let me = queue(&ring, 62);
        let alive = Dead::default();
        let parker = Virtual::new(|_| {});
        let mut waiter = Waiter {
            deadline: Some(parker.t0 + Duration::from_secs(1)),
            liveness: &alive,
            check: ok,
        };
        let out = until_granted_on(&parker, &ring, me, &mut waiter).unwrap();
        assert_eq!(out, Outcome::TimedOut);
        let naps = parker.naps.borrow();
        // 1 s of a still queue: 2, 4, … 64 ms, then every 64 ms — not every 2 ms (500).
        assert!(naps.len() < 30, "{} sleeps in 1 s", naps.len());
        assert!(
            naps.iter()
                .any(|n| *n > CHECK_FAR * (1 << (MAX_BACKOFF - 1)))
        );
        // A near waiter keeps the short schedule: a kill storm ahead is found at once.
        let mem = MemRing::new(256);
        let ring = mem.ring(no_wake);
        let holder = queue(&ring, 0);
        ring.mark_holding(holder);
        for i in 1..10 {
            queue(&ring, i);
        }
        let me = queue(&ring, 10);
        let parker = Virtual::new(|_| {});
        let mut waiter = Waiter {
            deadline: Some(parker.t0 + Duration::from_millis(100)),
            liveness: &alive,
            check: ok,
        };
        assert_eq!(
            until_granted_on(&parker, &ring, me, &mut waiter).unwrap(),
            Outcome::TimedOut
        );
        // (After a first look at CHECK_FIRST.)
        let naps = parker.naps.borrow();
        assert!(naps[0] <= CHECK_FIRST, "{naps:?}");
        assert!(naps[1..].iter().all(|n| *n <= CHECK_FAR), "{naps:?}");
    }

    #[test]
    fn a_kill_storm_torn_down_in_rounds_is_swept_on_the_short_schedule() {
        // The holder and the first half of the queue are dead at once; the rest (still
        // exiting in a real storm: alive to the kernel) die half a millisecond after the first
        // reclaim. The pass after that reclaim finds nothing; the next rounds still come every
        // CHECK_AGAIN, not CHECK_FAR (the old schedule took a K = 64 storm to 7–9 ms).
        let mem = MemRing::new(64);
        let ring = mem.ring(no_wake);
        let holder = queue(&ring, 0);
        ring.mark_holding(holder);
        for i in 1..=20 {
            queue(&ring, i);
        }
        let me = queue(&ring, 21);
        let dead = Dead::default();
        for i in 0..=10 {
            dead.kill(i);
        }
        let parker = Virtual::new(|elapsed| {
            if elapsed > CHECK_FIRST + Duration::from_micros(500) {
                for i in 11..=20 {
                    dead.kill(i);
                }
            }
        });
        let mut waiter = Waiter {
            deadline: Some(parker.t0 + Duration::from_secs(1)),
            liveness: &dead,
            check: ok,
        };
        let out = until_granted_on(&parker, &ring, me, &mut waiter).unwrap();
        assert_eq!(out, Outcome::Granted);
        let at = parker.elapsed.get();
        assert!(
            at <= CHECK_FIRST + Duration::from_micros(500) + 2 * CHECK_AGAIN,
            "granted after {at:?}: {:?}",
            parker.naps.borrow()
        );
    }

    #[test]
    fn a_dead_bypasser_blocks_the_entering_head_for_one_check_interval_at_most() {
        let mem = MemRing::with_bound(4, 1_000_000);
        let ring = mem.ring(no_wake);
        let holder = queue(&ring, 0);
        ring.mark_holding(holder);
        let head = queue(&ring, 1);
        let _ = ring.park_word(head);
        ring.release_exclusive(holder).unwrap();
        let b = ring
            .try_bypass(reg(2))
            .expect("a sleeping head is bypassed");
        let _ = b;
        let dead = Dead::default();
        dead.kill(2);
        let parker = Virtual::new(|_| {});
        let mut waiter = Waiter {
            deadline: None,
            liveness: &dead,
            check: ok,
        };
        let out = until_entered_on(&parker, &ring, head, &mut waiter).unwrap();
        assert!(matches!(out, Entered::Clear { .. }), "{out:?}");
        assert!(parker.elapsed.get() <= CHECK_NEXT + Duration::from_micros(100));
    }
}
