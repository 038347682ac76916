//! A model of the ring's users, driven step by step: enqueue, publish, grant, release, death
//! at every step boundary, PID reuse, reclaim, with the design brief's invariants checked after
//! every step and a drain at the end (no deadlock by death). Pure: no OS calls, so Miri runs
//! it. Used by the property tests and by the `ring_ops` fuzz target.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use super::*;
use crate::liveness::{Liveness, Owner, START_FP_MASK};

/// An in-memory ring: the shared words and the slots a mapped table would hold.
pub(crate) struct MemRing {
    tail: AtomicU64,
    head: AtomicU64,
    dead_holder: AtomicU64,
    reclaimed: AtomicU64,
    /// The slots.
    pub(crate) slots: Vec<Slot>,
}

impl MemRing {
    /// `capacity` free slots, head and tail at 0.
    pub(crate) fn new(capacity: usize) -> Self {
        MemRing {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            dead_holder: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
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
        };
        Ring::new(words, &self.slots, wake)
    }
}

/// A waker for single-threaded models: nobody sleeps.
pub(crate) fn no_wake(_: &AtomicU32) {}

/// Which processes live, and since when (start times): the test's stand-in for /proc.
#[derive(Default)]
struct World {
    alive: RefCell<HashMap<u32, u64>>,
}

impl Liveness for World {
    fn is_alive(&self, o: Owner) -> bool {
        match self.alive.borrow().get(&o.pid) {
            None => false,
            Some(&start) => match (o.start, o.start_fp) {
                (Some(s), _) => s == start,
                (None, Some(fp)) => fp == start & START_FP_MASK,
                (None, None) => true,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Claimed, start time not yet published.
    Claimed,
    /// Published, waiting.
    Waiting,
    /// Saw its grant.
    Holding,
}

#[derive(Clone, Copy, Debug)]
struct Req {
    tk: Ticket,
    share: Share,
    phase: Phase,
    /// Sequence number of the claim (the model's arrival order).
    arrival: u64,
}

/// One step of the model.
#[derive(Clone, Debug)]
pub enum Op {
    /// Process `.0` queues (shared when `.1`).
    Enqueue(usize, bool),
    /// Claim, then die before moving `tail`.
    EnqueueAndDie(usize, bool),
    /// Process publishes its start time.
    Publish(usize),
    /// Process checks for its grant.
    Poll(usize),
    /// Process releases (or withdraws) its request.
    Release(usize),
    /// Release the slot, then die before moving `head`.
    ReleaseAndDie(usize),
    /// Process is SIGKILLed.
    Kill(usize),
    /// The dead process's PID is handed to a new process (new start time).
    Reuse(usize),
    /// Process checks the head of the queue for a dead owner.
    CheckHead(usize),
}

/// Processes in the model.
pub const PROCS: usize = 5;

struct Model<'a> {
    ring: Ring<'a>,
    world: &'a World,
    /// pid of process i is i + 1; its current start time.
    start: [u64; PROCS],
    /// The request each process has (at most one; dead processes keep theirs until reclaimed).
    req: [Option<Req>; PROCS],
    /// Requests of dead processes (orphans), not yet reclaimed: tickets.
    orphans: Vec<Req>,
    arrivals: u64,
    /// Ticket the model expects the next claim to get.
    next_ticket: u64,
    /// Number of holders the model saw die while holding, not yet reported.
    pending_death_report: bool,
}

impl Model<'_> {
    fn pid(i: usize) -> u32 {
        i as u32 + 1
    }

    fn alive(&self, i: usize) -> bool {
        self.world.alive.borrow().contains_key(&Self::pid(i))
    }

    fn die(&mut self, i: usize) {
        self.world.alive.borrow_mut().remove(&Self::pid(i));
        if let Some(r) = self.req[i].take() {
            self.orphans.push(r);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Enqueue(i, shared) | Op::EnqueueAndDie(i, shared) => {
                if !self.alive(i) || self.req[i].is_some() {
                    return;
                }
                let share = if shared {
                    Share::Shared
                } else {
                    Share::Exclusive
                };
                let tk = if matches!(op, Op::EnqueueAndDie(..)) {
                    self.ring.claim_only(share, Self::pid(i), self.start[i])
                } else {
                    let mut got = None;
                    // Single-threaded, so Retry only happens while helping a dead claimer.
                    for _ in 0..4 {
                        match self.ring.try_claim(share, Self::pid(i), self.start[i]) {
                            Claim::Claimed(tk) => {
                                got = Some(tk);
                                break;
                            }
                            Claim::Full => break,
                            Claim::Retry => continue,
                            Claim::Broken(b) => panic!("broken: {b:?}"),
                        }
                    }
                    got
                };
                match tk {
                    None => {
                        // Only a full ring refuses (after helping a dead claimer's tail);
                        // the bare claim CAS also fails on a slot a dead claimer took.
                        let (head, tail) = self.ring.head_tail();
                        let full = tail.wrapping_sub(head) >= self.ring.capacity();
                        assert!(
                            full || matches!(op, Op::EnqueueAndDie(..)),
                            "claim refused on a ring with room"
                        );
                    }
                    Some(tk) => {
                        let (head, _) = self.ring.head_tail();
                        assert!(
                            tk.t.wrapping_sub(head) < self.ring.capacity(),
                            "claimed beyond a full ring"
                        );
                        assert_eq!(tk.t, self.next_ticket, "tickets are handed out in order");
                        self.next_ticket = self.next_ticket.wrapping_add(1);
                        self.arrivals += 1;
                        self.req[i] = Some(Req {
                            tk,
                            share,
                            phase: Phase::Claimed,
                            arrival: self.arrivals,
                        });
                        if matches!(op, Op::EnqueueAndDie(..)) {
                            self.die(i);
                        }
                    }
                }
            }
            Op::Publish(i) => {
                if let Some(r) = self.req[i].as_mut().filter(|r| r.phase == Phase::Claimed) {
                    self.ring.publish(r.tk, self.start[i], 0, 0);
                    r.phase = Phase::Waiting;
                }
            }
            Op::Poll(i) => {
                let Some(r) = self.req[i] else { return };
                if r.phase == Phase::Holding {
                    return;
                }
                if let Grant::Granted = self.ring.grant(r.tk, r.share).expect("grant") {
                    self.check_fifo_grant(i, r);
                    let died = self.ring.mark_holding(r.tk);
                    if died {
                        assert!(
                            self.pending_death_report,
                            "death reported that never happened"
                        );
                    }
                    self.pending_death_report &= !died;
                    self.req[i].as_mut().unwrap().phase = Phase::Holding;
                }
            }
            Op::Release(i) => {
                if let Some(r) = self.req[i].take() {
                    if r.phase == Phase::Holding && r.share == Share::Exclusive {
                        self.ring.release_exclusive(r.tk).expect("release");
                    } else {
                        self.ring.release(r.tk).expect("release");
                    }
                }
            }
            Op::ReleaseAndDie(i) => {
                if let Some(r) = self.req[i].take() {
                    assert!(self.ring.release_only(r.tk));
                    self.world.alive.borrow_mut().remove(&Self::pid(i));
                }
            }
            Op::Kill(i) => {
                if self.alive(i) {
                    self.die(i);
                }
            }
            Op::Reuse(i) => {
                if !self.alive(i) {
                    self.start[i] += 1; // a new process, same PID, later start
                    self.world
                        .alive
                        .borrow_mut()
                        .insert(Self::pid(i), self.start[i]);
                }
            }
            Op::CheckHead(i) => {
                if !self.alive(i) {
                    return;
                }
                match self.ring.check_head(self.world).expect("check_head") {
                    HeadCheck::Reclaimed { pid, was_holding } => {
                        let pos = self
                            .orphans
                            .iter()
                            .position(|o| o.tk.word & PID_MASK == u64::from(pid))
                            .expect("reclaimed a slot no dead process owned");
                        let o = self.orphans.remove(pos);
                        assert_eq!(was_holding, o.phase == Phase::Holding);
                        if was_holding {
                            self.pending_death_report = true;
                        }
                    }
                    HeadCheck::Fine | HeadCheck::Advanced => {}
                }
            }
        }
        self.check_invariants();
    }

    /// FIFO: nothing that arrived earlier and conflicts is still in the ring.
    fn check_fifo_grant(&self, i: usize, r: Req) {
        let earlier = self
            .req
            .iter()
            .flatten()
            .chain(self.orphans.iter())
            .filter(|o| o.arrival < r.arrival);
        for o in earlier {
            let conflicts = r.share == Share::Exclusive || o.share == Share::Exclusive;
            assert!(
                !conflicts,
                "process {i} ({:?}, ticket {}) granted before earlier {:?} ticket {}",
                r.share, r.tk.t, o.share, o.tk.t
            );
        }
    }

    fn check_invariants(&self) {
        let (head, tail) = self.ring.head_tail();
        let used = tail.wrapping_sub(head);
        assert!(used <= self.ring.capacity(), "head {head} tail {tail}");
        // Mutual exclusion among holders (live or dead-but-unreclaimed).
        let holders: Vec<&Req> = self
            .req
            .iter()
            .flatten()
            .chain(self.orphans.iter())
            .filter(|r| r.phase == Phase::Holding)
            .collect();
        if holders.len() > 1 {
            assert!(
                holders.iter().all(|r| r.share == Share::Shared),
                "exclusive token held together with another: {holders:?}"
            );
        }
        // Every request the model knows is in the ring, in [head, end).
        for r in self.req.iter().flatten().chain(self.orphans.iter()) {
            assert!(
                r.tk.t.wrapping_sub(head) < used,
                "request {r:?} outside [{head}, {tail})"
            );
            assert_eq!(
                self.ring.slot(r.tk.t).word.load(SeqCst),
                r.tk.word,
                "slot of {r:?} lost"
            );
        }
        // And every claimed slot in [head, end) belongs to a request the model knows.
        let known: usize = self.req.iter().flatten().count() + self.orphans.len();
        assert_eq!(self.ring.requests().len(), known, "ring and model disagree");
        // The tail hint never points past the first free ticket.
        let hint = self.ring.words.tail.load(SeqCst);
        assert!(
            hint.wrapping_sub(head) > self.ring.capacity() || hint.wrapping_sub(head) <= used,
            "tail hint {hint} beyond the queue [{head}, {tail})"
        );
    }

    /// No deadlock by death: with every live process polling and releasing, and waiters
    /// checking the head, the queue drains.
    fn drain(&mut self) {
        for _ in 0..(4 * self.ring.capacity() as usize + 4 * PROCS) {
            for i in 0..PROCS {
                if self.req[i].is_some() && self.req[i].unwrap().phase == Phase::Claimed {
                    self.step(&Op::Publish(i));
                }
                self.step(&Op::Poll(i));
                if self.req[i].is_some_and(|r| r.phase == Phase::Holding) {
                    self.step(&Op::Release(i));
                }
            }
            // Someone alive looks at the head (spawn one if everybody died).
            let looker = (0..PROCS).find(|&i| self.alive(i)).unwrap_or_else(|| {
                self.step(&Op::Reuse(0));
                0
            });
            self.step(&Op::CheckHead(looker));
            let (head, tail) = self.ring.head_tail();
            if head == tail && self.req.iter().all(Option::is_none) {
                if self.orphans.is_empty() {
                    return;
                }
                // A claimer died before moving `tail`: the next claimer moves it on, and the
                // dead claim is then reclaimed like any other.
                self.step(&Op::Enqueue(looker, false));
            }
        }
        panic!(
            "queue did not drain: head/tail {:?}, requests {:?}, orphans {:?}",
            self.ring.head_tail(),
            self.req,
            self.orphans
        );
    }
}

/// Runs `ops` on a ring of `2^cap_shift` slots whose first ticket is `start_ticket`, checking
/// the invariants after every step (panics on a violation), then drains the queue.
pub fn run(cap_shift: u32, start_ticket: u64, ops: &[Op]) {
    let cap = 1usize << cap_shift;
    let mem = MemRing::new(cap);
    let ring = mem.ring(no_wake);
    ring.reset_at(start_ticket);
    let world = World::default();
    let start: [u64; PROCS] = [1000, 2001, 3002, 4003, 5004];
    for (i, s) in start.iter().enumerate() {
        world.alive.borrow_mut().insert(i as u32 + 1, *s);
    }
    let mut m = Model {
        ring,
        world: &world,
        start,
        req: [None; PROCS],
        orphans: Vec::new(),
        arrivals: 0,
        next_ticket: start_ticket,
        pending_death_report: false,
    };
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
    let ops: Vec<Op> = rest
        .chunks(2)
        .map(|c| {
            let p = usize::from(c.get(1).copied().unwrap_or(0)) % PROCS;
            let shared = c.get(1).copied().unwrap_or(0) & 0x80 != 0;
            match c[0] % 9 {
                0 => Op::Enqueue(p, shared),
                1 => Op::EnqueueAndDie(p, shared),
                2 => Op::Publish(p),
                3 => Op::Poll(p),
                4 => Op::Release(p),
                5 => Op::ReleaseAndDie(p),
                6 => Op::Kill(p),
                7 => Op::Reuse(p),
                _ => Op::CheckHead(p),
            }
        })
        .collect();
    run(cap_shift, start, &ops);
}
