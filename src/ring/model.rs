//! A model of the ring's users, driven one shared-memory access at a time: every process runs
//! the real ring code on a thread of its own and stops at every `step!()` mark (see
//! `interleave`), so claims, releases, head advances and reclaims interleave at any point,
//! and a process may stall between two of its writes for any number of other steps or be
//! killed there. The design brief's invariants are checked after every single step, and a
//! drain at the end checks that the queue empties and a full lap of the ring still works
//! (no deadlock by death, no permanent damage). No OS calls, so Miri runs it. Used by the
//! property tests and by the `ring_ops` fuzz target.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use super::interleave::{Procs, Status};
use super::*;
use crate::liveness::{Liveness, Owner, Registration};

/// An in-memory ring: the shared words and the slots a mapped table would hold.
pub(crate) struct MemRing {
    tail: AtomicU64,
    head: AtomicU64,
    dead_holder: AtomicU64,
    reclaimed: AtomicU64,
    bypass: AtomicU32,
    bypass_waiters: AtomicU32,
    bypass_thread: AtomicU64,
    bypasses: AtomicU64,
    /// The bypass bound (0: strict).
    bound_ns: u64,
    /// The slots.
    pub(crate) slots: Vec<Slot>,
}

impl MemRing {
    /// `capacity` free slots, head and tail at 0: a strict ring.
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_bound(capacity, 0)
    }

    /// A ring with bypass bound `bound_ns` (0: strict).
    pub(crate) fn with_bound(capacity: usize, bound_ns: u64) -> Self {
        MemRing {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            dead_holder: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            bypass: AtomicU32::new(0),
            bypass_waiters: AtomicU32::new(0),
            bypass_thread: AtomicU64::new(0),
            bypasses: AtomicU64::new(0),
            bound_ns,
            slots: (0..capacity).map(|_| Slot::default()).collect(),
        }
    }

    /// A ring view; `wake` is called for every futex wake.
    pub(crate) fn ring(&self, wake: fn(&AtomicU32)) -> Ring<'_> {
        let words = RingWords {
            tail: &self.tail,
            head: &self.head,
            dead_holder: &self.dead_holder,
            reclaimed: &self.reclaimed,
            bypass: &self.bypass,
            bypass_waiters: &self.bypass_waiters,
            bypass_thread: &self.bypass_thread,
            bypasses: &self.bypasses,
        };
        // Pre-wakes whatever the queue's length: every wake the protocol may do is modelled.
        Ring::new(words, &self.slots, wake, self.bound_ns, u64::MAX)
    }
}

/// A waker for models: nobody sleeps.
pub(crate) fn no_wake(_: &AtomicU32) {}

/// Which registrations live: process-table index -> the generation of its live registrant.
/// The test's stand-in for the process table and the kernel's OFD locks.
#[derive(Default)]
pub(crate) struct World {
    alive: Mutex<HashMap<u32, u32>>,
}

impl World {
    fn set(&self, index: u32, generation: Option<u32>) {
        let mut alive = self.alive.lock().unwrap_or_else(|e| e.into_inner());
        match generation {
            Some(g) => alive.insert(index, g),
            None => alive.remove(&index),
        };
    }
}

impl Liveness for World {
    fn is_alive(&self, o: Owner) -> bool {
        let alive = self.alive.lock().unwrap_or_else(|e| e.into_inner());
        alive.get(&o.index).is_some_and(|&g| o.matches(g))
    }
}

/// The ring's memory and the world, shared by the scheduler and the process threads.
struct Shared {
    mem: Option<MemRing>,
    world: World,
}

impl Shared {
    fn ring(&self) -> Ring<'_> {
        match &self.mem {
            Some(m) => m.ring(no_wake),
            None => unreachable!("the model always has a ring"),
        }
    }
}

/// One step of the model. A process that is in the middle of an operation takes one more
/// step of it for any of `Enqueue`, `Poll`, `Release` and `CheckHead`; the others stall.
#[derive(Clone, Debug)]
pub enum Op {
    /// Process `.0` queues (shared when `.1`): claim, then publish.
    Enqueue(usize, bool),
    /// Process checks for its grant (and marks itself holding).
    Poll(usize),
    /// Process releases (or withdraws) its request.
    Release(usize),
    /// Process checks the head of the queue for a dead owner.
    CheckHead(usize),
    /// Process takes up to `.1` more steps of its operation.
    Step(usize, u8),
    /// Process is SIGKILLed, wherever it stands.
    Kill(usize),
    /// The dead process's process-table entry is taken by a new process (next generation).
    Reuse(usize),
    /// Bounded rings: process tries to take the token ahead of the queue.
    Bypass(usize),
    /// Process marks its queued request asleep (`park_word`), as a waiter does before its
    /// futex wait.
    Park(usize),
    /// Process runs `repair` (what `lockticket repair` does), one shared-memory access at a
    /// time while the others go on: the model's ring is never corrupt, so it must find
    /// nothing to do, whatever runs meanwhile.
    Repair(usize),
}

/// Processes in the model.
pub const PROCS: usize = 5;

/// What an operation returned.
#[derive(Debug)]
enum Out {
    Enqueued(Result<Option<Ticket>, Broken>),
    /// `Some(died)` when granted.
    Polled(Result<Option<bool>, Broken>),
    Released(Result<(), Broken>),
    Checked(Result<HeadCheck, Broken>),
    /// `Some(died)` when it went ahead.
    Bypassed(Option<(Bypass, bool)>),
    Parked,
    Repaired(RingRepair),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Enqueue,
    Poll,
    Release,
    CheckHead,
    Bypass,
    Park,
    Repair,
}

#[derive(Clone, Copy, Debug)]
struct Req {
    tk: Ticket,
    holding: bool,
}

/// A process incarnation.
#[derive(Clone, Copy, Debug)]
struct Proc {
    /// Its process-table entry.
    index: u32,
    /// Its registration's generation.
    generation: u32,
    thread: usize,
    req: Option<Req>,
    /// Holds the token ahead of the queue.
    bypass: Option<Bypass>,
    /// The operation in flight.
    op: Option<Kind>,
}

struct Model {
    shared: Arc<Shared>,
    procs: Procs<Out>,
    /// The live incarnation of each process-table entry (None: dead, not reused yet).
    live: [Option<Proc>; PROCS],
    /// Incarnations that were killed, with what they had and were doing.
    dead: Vec<Proc>,
    /// `head` after the previous step: it never moves back.
    last_head: u64,
    /// Holders killed while holding (not while releasing).
    holder_deaths: u64,
    next_generation: u32,
}

impl Model {
    fn ring(&self) -> Ring<'_> {
        self.shared.ring()
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Enqueue(i, shared) => {
                let share = if shared {
                    Share::Shared
                } else {
                    Share::Exclusive
                };
                self.act(i, Kind::Enqueue, share);
            }
            Op::Poll(i) => self.act(i, Kind::Poll, Share::Exclusive),
            Op::Bypass(i) => self.act(i, Kind::Bypass, Share::Exclusive),
            Op::Park(i) => self.act(i, Kind::Park, Share::Exclusive),
            Op::Repair(i) => self.act(i, Kind::Repair, Share::Exclusive),
            Op::Release(i) => self.act(i, Kind::Release, Share::Exclusive),
            Op::CheckHead(i) => self.act(i, Kind::CheckHead, Share::Exclusive),
            Op::Step(i, n) => {
                for _ in 0..n {
                    if self.live[i].is_none_or(|p| p.op.is_none()) {
                        break;
                    }
                    self.advance(i);
                }
            }
            Op::Kill(i) => {
                if let Some(p) = self.live[i].take() {
                    self.procs.kill(p.thread);
                    self.shared.world.set(p.index, None);
                    if may_hold(&p) {
                        self.holder_deaths += 1;
                    }
                    self.dead.push(p);
                }
            }
            Op::Reuse(i) => {
                if self.live[i].is_none() {
                    // Every other reuse skips 2^15 generations: the claim word's 15
                    // generation bits then match a dead registrant's, and only the full
                    // generation published in the slot tells them apart.
                    // (The registrant avoids the bits of claims still naming the entry, as
                    // `procs::register` does.)
                    let jump: u32 = if self.next_generation.is_multiple_of(2) {
                        1
                    } else {
                        1 << 15
                    };
                    let stale = self.ring().fingerprints_naming(i as u32);
                    self.next_generation = crate::liveness::next_generation(
                        self.next_generation.wrapping_add(jump - 1),
                        &stale,
                    );
                    let p = Proc {
                        index: i as u32,
                        generation: self.next_generation,
                        thread: self.procs.spawn(),
                        req: None,
                        bypass: None,
                        op: None,
                    };
                    self.shared.world.set(p.index, Some(p.generation));
                    self.live[i] = Some(p);
                }
            }
        }
        self.check_invariants();
    }

    /// Process `i` takes one step: of its operation in flight, or the first of `kind`.
    fn act(&mut self, i: usize, kind: Kind, share: Share) {
        let Some(p) = self.live[i] else { return };
        if p.op.is_some() {
            self.advance(i);
            return;
        }
        let shared = Arc::clone(&self.shared);
        let status = match (kind, p.req) {
            (Kind::Repair, _) => self.procs.start(p.thread, move || {
                Out::Repaired(shared.ring().repair(&shared.world, true))
            }),
            _ if p.bypass.is_some() && kind != Kind::Release => return,
            (Kind::Release, None) => {
                let Some(b) = p.bypass else { return };
                self.procs.start(p.thread, move || {
                    shared.ring().release_bypass(b);
                    Out::Released(Ok(()))
                })
            }
            (Kind::Bypass, None) => self.procs.start(p.thread, move || {
                let ring = shared.ring();
                let me = Registration {
                    index: p.index,
                    generation: p.generation,
                };
                Out::Bypassed(
                    ring.try_bypass(me)
                        .map(|b| (b, ring.bypass_died_before(b.head))),
                )
            }),
            (Kind::Park, Some(r)) if !r.holding => self.procs.start(p.thread, move || {
                let _ = shared.ring().park_word(r.tk);
                Out::Parked
            }),
            (Kind::Enqueue, None) => self.procs.start(p.thread, move || {
                let ring = shared.ring();
                let me = Registration {
                    index: p.index,
                    generation: p.generation,
                };
                Out::Enqueued(enqueue(&ring, share, me))
            }),
            (Kind::Poll, Some(r)) if !r.holding => self.procs.start(p.thread, move || {
                let ring = shared.ring();
                Out::Polled(ring.grant(r.tk).map(|g| match g {
                    Grant::Granted if ring.is_bounded() => {
                        // As `wait::until_entered`: enter, or look at the bypasser.
                        let mut died = false;
                        loop {
                            match ring.enter(r.tk) {
                                Entry::Clear => break Some(ring.mark_holding(r.tk) | died),
                                Entry::Busy(_) => match ring.check_bypass(&shared.world) {
                                    BypassCheck::Reclaimed { was_holding } => died |= was_holding,
                                    BypassCheck::Fine => break None,
                                },
                            }
                        }
                    }
                    Grant::Granted => Some(ring.mark_holding(r.tk)),
                    Grant::Waiting { .. } => None,
                }))
            }),
            (Kind::Release, Some(r)) => self.procs.start(p.thread, move || {
                let ring = shared.ring();
                Out::Released(if r.holding && r.tk.share() == Share::Exclusive {
                    ring.release_exclusive(r.tk)
                } else {
                    ring.release(r.tk)
                })
            }),
            // A queued waiter sweeps the dead ahead of it, as `wait` does; others (and holders)
            // check the head alone.
            (Kind::CheckHead, Some(r)) if !r.holding => self.procs.start(p.thread, move || {
                Out::Checked(
                    shared
                        .ring()
                        .sweep_dead(r.tk.t, &shared.world)
                        .map(|(head, _)| head),
                )
            }),
            (Kind::CheckHead, _) => self.procs.start(p.thread, move || {
                Out::Checked(shared.ring().check_head(&shared.world))
            }),
            _ => return,
        };
        if let Some(p) = self.live[i].as_mut() {
            p.op = Some(kind);
        }
        self.settle(i, status);
    }

    fn advance(&mut self, i: usize) {
        let Some(p) = self.live[i] else { return };
        let status = self.procs.step(p.thread);
        self.settle(i, status);
    }

    /// Runs process `i`'s operation in flight to its end.
    fn finish(&mut self, i: usize) {
        while self.live[i].is_some_and(|p| p.op.is_some()) {
            self.advance(i);
            self.check_invariants();
        }
    }

    /// Books what an operation of process `i` returned, checking it.
    fn settle(&mut self, i: usize, status: Status<Out>) {
        let Status::Done(out) = status else { return };
        let Some(mut p) = self.live[i] else { return };
        p.op = None;
        match out {
            Out::Enqueued(r) => {
                if let Some(tk) = r.unwrap_or_else(|b| panic!("claim of process {i}: {b:?}")) {
                    let head = self.ring().words.head.load(SeqCst);
                    assert!(
                        tk.t.wrapping_sub(head) < self.ring().capacity(),
                        "ticket {} claimed beyond the ring (head {head})",
                        tk.t
                    );
                    p.req = Some(Req { tk, holding: false });
                }
            }
            Out::Polled(r) => {
                if let Some(died) = r.unwrap_or_else(|b| panic!("grant of process {i}: {b:?}")) {
                    let Some(mut req) = p.req else {
                        unreachable!("only a queued process polls")
                    };
                    self.check_fifo_grant(i, req.tk);
                    assert!(
                        !died || self.holder_deaths > 0,
                        "a holder's death reported that never happened"
                    );
                    req.holding = true;
                    p.req = Some(req);
                }
            }
            Out::Released(r) => {
                r.unwrap_or_else(|b| panic!("release of process {i}: {b:?}"));
                if p.bypass.take().is_none() {
                    p.req = None;
                }
            }
            Out::Bypassed(b) => {
                if let Some((b, died)) = b {
                    assert!(
                        !died || self.holder_deaths > 0,
                        "a holder's death reported that never happened (bypass)"
                    );
                    self.check_bypass_entry(i);
                    p.bypass = Some(b);
                }
            }
            Out::Parked => {}
            Out::Repaired(r) => assert_eq!(
                r,
                RingRepair::NotNeeded,
                "repair of a consistent ring did something (head/tail {:?})",
                self.ring().head_tail()
            ),
            Out::Checked(r) => match r.unwrap_or_else(|b| panic!("head check: {b:?}")) {
                HeadCheck::Reclaimed { index, was_holding } => {
                    let owner = self
                        .dead
                        .iter()
                        .filter(|d| d.index == index)
                        .collect::<Vec<_>>();
                    assert!(
                        !owner.is_empty(),
                        "reclaimed a slot of live registration {index}"
                    );
                    assert!(
                        !was_holding || owner.iter().any(|d| may_hold(d)),
                        "reclaimed registration {index} as a holder, but it never held"
                    );
                }
                HeadCheck::Fine | HeadCheck::Advanced => {}
            },
        }
        self.live[i] = Some(p);
    }

    /// The requests that still count: those (of live or dead processes) whose slot still
    /// holds their claim and that `head` has not passed. A request being released counts
    /// until its first write (an exclusive one moves `head` first, a shared one its slot).
    fn standing(&self) -> Vec<(Option<usize>, Req)> {
        let ring = self.ring();
        let head = ring.words.head.load(SeqCst);
        let live = self
            .live
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((Some(i), (*p)?.req?)));
        let dead = self.dead.iter().filter_map(|p| Some((None, p.req?)));
        live.chain(dead)
            .filter(|(_, r)| {
                ring.slot(r.tk.t).word.load(SeqCst) == r.tk.word
                    && r.tk.t.wrapping_sub(head) < ring.capacity()
            })
            .collect()
    }

    /// Holders ahead of the queue that still count: live bypassers not being released, and
    /// any process (live or dead) whose owner field the bypass word still carries after it
    /// entered.
    fn bypass_holders(&self) -> Vec<String> {
        let ring = self.ring();
        let word = ring.words.bypass.load(SeqCst);
        let mut out: Vec<String> = self
            .live
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let p = (*p)?;
                (p.bypass.is_some() && p.op != Some(Kind::Release)).then(|| format!("live {i}"))
            })
            .collect();
        for d in &self.dead {
            if let Some(b) = d.bypass
                && u64::from(word) == b.owner | u64::from(super::bypass::ENTERED)
            {
                out.push(format!("dead index {}", d.index));
            }
        }
        out
    }

    /// When process `i` went ahead of the queue: nobody else holds.
    fn check_bypass_entry(&self, i: usize) {
        let holding: Vec<_> = self
            .standing()
            .into_iter()
            .filter(|(_, r)| r.holding)
            .collect();
        assert!(
            holding.is_empty() && self.bypass_holders().is_empty(),
            "process {i} went ahead of the queue while {holding:?} / {:?} hold",
            self.bypass_holders()
        );
    }

    /// Live requests that are not being released.
    fn live_requests(&self) -> Vec<(usize, Req)> {
        let live = self.live.iter().enumerate();
        live.filter_map(|(i, p)| {
            let p = (*p)?;
            (p.op != Some(Kind::Release)).then_some((i, p.req?))
        })
        .collect()
    }

    /// FIFO: no earlier conflicting request is still queued when `tk` is granted.
    fn check_fifo_grant(&self, i: usize, tk: Ticket) {
        let cap = self.ring().capacity();
        for (who, r) in self.standing() {
            let before = tk.t.wrapping_sub(r.tk.t);
            let conflicts = tk.share() == Share::Exclusive || r.tk.share() == Share::Exclusive;
            assert!(
                !(conflicts && before > 0 && before < cap),
                "process {i} ({:?}, ticket {}) granted before earlier {:?} ticket {} (of {who:?})",
                tk.share(),
                tk.t,
                r.tk.share(),
                r.tk.t
            );
        }
    }

    fn check_invariants(&mut self) {
        let head = self.ring().words.head.load(SeqCst);
        // `head` only moves forward (wrapping), and never by more than a lap at once.
        let moved = head.wrapping_sub(self.last_head);
        assert!(
            moved <= self.ring().capacity(),
            "head moved from {} to {head} (back, or past unreleased tickets)",
            self.last_head
        );
        self.last_head = head;
        let ring = self.ring();
        let cap = ring.capacity();
        let (_, end) = ring.head_tail();
        let used = end.wrapping_sub(head);
        assert!(used <= cap, "head {head} end {end}");
        // Mutual exclusion among holders (live, or dead and not reclaimed).
        let standing = self.standing();
        let holders: Vec<_> = standing.iter().filter(|(_, r)| r.holding).collect();
        if holders.len() > 1 {
            assert!(
                holders.iter().all(|(_, r)| r.tk.share() == Share::Shared),
                "exclusive token held together with another: {holders:?}"
            );
        }
        let bypassers = self.bypass_holders();
        assert!(
            bypassers.len() <= 1 && (bypassers.is_empty() || holders.is_empty()),
            "token held ahead of the queue by {bypassers:?} together with {holders:?}"
        );
        // A live request (not being released) keeps its slot and its place in the queue.
        for (who, r) in self.live_requests() {
            assert_eq!(
                ring.slot(r.tk.t).word.load(SeqCst),
                r.tk.word,
                "slot of {who:?}'s {r:?} lost"
            );
            assert!(
                r.tk.t.wrapping_sub(head) < used,
                "request {r:?} of {who:?} outside [{head}, {end})"
            );
        }
        // The tail hint never points past the first free ticket.
        let hint = ring.words.tail.load(SeqCst);
        assert!(
            hint.wrapping_sub(head) > cap || hint.wrapping_sub(head) <= used,
            "tail hint {hint} beyond the queue [{head}, {end})"
        );
    }

    fn alive_looker(&mut self) -> usize {
        match (0..PROCS).find(|&i| self.live[i].is_some()) {
            Some(i) => i,
            None => {
                self.step(&Op::Reuse(0));
                0
            }
        }
    }

    /// Runs one whole operation of process `i`.
    fn whole(&mut self, i: usize, op: Op) {
        self.step(&op);
        self.finish(i);
    }

    /// No deadlock by death, no lasting damage: every live process finishes what it was
    /// doing, the live ones poll and release while someone checks the head, and the queue
    /// drains; then one process goes round the whole ring twice.
    fn drain(&mut self) {
        let cap = self.ring().capacity() as usize;
        let mut drained = false;
        for _ in 0..(4 * cap + 4 * PROCS) {
            for i in 0..PROCS {
                self.finish(i);
                if self.live[i].is_some_and(|p| p.bypass.is_some()) {
                    self.whole(i, Op::Release(i));
                }
                match self.live[i].and_then(|p| p.req) {
                    Some(r) if r.holding => self.whole(i, Op::Release(i)),
                    Some(_) => self.whole(i, Op::Poll(i)),
                    None => {}
                }
            }
            let looker = self.alive_looker();
            self.whole(looker, Op::CheckHead(looker));
            let idle = self
                .live
                .iter()
                .flatten()
                .all(|p| p.req.is_none() && p.bypass.is_none());
            if idle && self.ring().requests().is_empty() {
                drained = true;
                break;
            }
        }
        assert!(
            drained,
            "queue did not drain: head/tail {:?}, requests {:?}, live {:?}",
            self.ring().head_tail(),
            self.ring().requests(),
            self.live
        );
        let i = self.alive_looker();
        for lap in 0..2 * cap {
            let mut got = false;
            for _ in 0..(4 * cap + 4) {
                self.whole(i, Op::Enqueue(i, lap % 3 == 0));
                if self.live[i].is_some_and(|p| p.req.is_some()) {
                    got = true;
                    break;
                }
                self.whole(i, Op::CheckHead(i));
            }
            assert!(
                got,
                "no slot after the drain: {:?}",
                self.ring().head_tail()
            );
            for _ in 0..(4 * cap + 4) {
                self.whole(i, Op::Poll(i));
                if self.live[i].is_some_and(|p| p.req.is_some_and(|r| r.holding)) {
                    break;
                }
                self.whole(i, Op::CheckHead(i));
            }
            self.whole(i, Op::Release(i));
            assert!(
                self.live[i].is_some_and(|p| p.req.is_none()),
                "a lone request was never granted: {:?}",
                self.ring().head_tail()
            );
        }
    }
}

/// A dead process may have died holding the token: it held (perhaps before the first write
/// of its release), or died in the middle of a poll (after marking itself holding, before the
/// model heard of its grant).
fn may_hold(p: &Proc) -> bool {
    p.req.is_some_and(|r| r.holding)
        || p.bypass.is_some()
        || p.op == Some(Kind::Poll)
        || p.op == Some(Kind::Bypass)
}

/// A claim as the blocking path makes it (retrying when another process moved first), then
/// the publication of the request.
fn enqueue(ring: &Ring<'_>, share: Share, me: Registration) -> Result<Option<Ticket>, Broken> {
    for _ in 0..4 {
        match ring.try_claim(share, me) {
            Claim::Claimed(tk) => {
                ring.publish(tk, me.generation, 0, 0);
                return Ok(Some(tk));
            }
            Claim::Full => return Ok(None),
            Claim::Retry => continue,
            Claim::Broken(b) => return Err(b),
        }
    }
    Ok(None)
}

/// Runs `ops` on a ring of `2^cap_shift` slots whose first ticket is `start_ticket`, checking
/// the invariants after every step (panics on a violation), then drains the queue. `bounded`:
/// a bounded ring (bypasses allowed; the model's clock stands still, so every sleeping head
/// may be gone ahead of).
pub fn run(cap_shift: u32, start_ticket: u64, bounded: bool, ops: &[Op]) {
    let cap = 1usize << cap_shift;
    let shared = Arc::new(Shared {
        mem: Some(MemRing::with_bound(
            cap,
            if bounded { 1_000_000 } else { 0 },
        )),
        world: World::default(),
    });
    shared.ring().reset_at(start_ticket);
    let mut m = Model {
        shared,
        procs: Procs::default(),
        live: [None; PROCS],
        dead: Vec::new(),
        last_head: start_ticket,
        holder_deaths: 0,
        next_generation: 1000,
    };
    for i in 0..PROCS {
        m.step(&Op::Reuse(i));
    }
    for op in ops {
        m.step(op);
    }
    m.drain();
}

/// Decodes fuzzer bytes into a ring size, a first ticket and steps, and runs them.
pub fn run_bytes(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cap_shift = 1 + u32::from(first % 3);
    let (start, rest) = match rest.split_first_chunk::<8>() {
        Some((b, rest)) => {
            let raw = u64::from_le_bytes(*b);
            let start = match first >> 6 {
                0 => raw % 64,
                1 => u64::MAX - raw % 64,
                2 => ((1u64 << 32) << cap_shift).wrapping_sub(raw % 64),
                _ => raw,
            };
            (start, rest)
        }
        None => (0, rest),
    };
    let bounded = first & 0x20 != 0;
    let kinds = if bounded { 11 } else { 9 };
    let ops: Vec<Op> = rest
        .chunks(2)
        .map(|c| {
            let arg = c.get(1).copied().unwrap_or(0);
            let p = usize::from(arg) % PROCS;
            let shared = arg & 0x80 != 0;
            match c[0] % kinds {
                0 => Op::Enqueue(p, shared),
                1 => Op::Poll(p),
                2 => Op::Release(p),
                3 => Op::CheckHead(p),
                4 => Op::Step(p, 1 + (arg >> 3) % 4),
                5 => Op::Kill(p),
                6 => Op::Reuse(p),
                7 => Op::Step(p, 255),
                8 if !bounded => Op::Repair(p),
                8 => Op::Bypass(p),
                9 => Op::Park(p),
                _ => Op::Repair(p),
            }
        })
        .collect();
    run(cap_shift, start, bounded, &ops);
}
