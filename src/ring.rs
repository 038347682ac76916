//! The token ring: a strictly FIFO lock among processes, in exclusive and shared modes.
//!
//! This module is the algorithm, over plain atomics: no OS calls, no `unsafe`. It runs the same
//! on a mapped table and on an in-memory one (property tests, Miri). Waiting (spin, yield,
//! futex) lives in `wait`, liveness answers come in through [`Liveness`].
//!
//! # Tickets and slots
//! `head` is the oldest ticket not yet released; it only grows (wrapping `u64`). Ticket `t`
//! lives in slot `t % capacity`, in *lap* `t / capacity`. A slot's claim word says, in one
//! atomic value, which lap the slot is in and who owns it:
//!
//! ```text
//! bits 63..32  lap (low 32 bits of t / capacity)
//! bit  31      shared request
//! bits 30..16  low 15 bits of the owner's registration generation (tells a reused entry apart)
//! bits 15..0   owner's process-table index + 1; 0 = not claimed
//! ```
//!
//! * **free for t**: `lap(t) << 32`, owner 0: ticket `t` may be claimed here.
//! * **claimed by R for t**: lap(t), registration R's index and generation bits. The claim CAS
//!   is the moment a
//!   request enters the queue *and* names its owner: no instant exists where a ticket is taken
//!   but nobody can be blamed for it.
//! * **released**: the lap moves on (`lap(t) + 1`), which is also "free for t + capacity".
//!
//! Tickets are claimed strictly in order: a claimer starts at the oldest ticket it may need and
//! moves past a ticket only once it has seen it claimed (or released), so the claimed tickets
//! always form a prefix `[head, end)`. The header's `tail` word is only a *hint* of `end`, stored
//! (not CASed) after a claim; it never exceeds `end`, so starting a scan there skips nothing.
//! That keeps an uncontended lock at one read-modify-write.
//!
//! A request is granted when `head` reaches it (exclusive), or when every unreleased ticket
//! before it is shared (shared). An exclusive holder releases by storing `head = t + 1`, then
//! moving its slot's lap on; any other release moves the lap on, then advances `head` over
//! every released ticket. Then it wakes the new holders and the next-in-line. `head` only ever
//! moves forward (docs/design.md, "Stale writes").
//!
//! # Crash windows
//! A process may die at any instruction. Every state it can leave behind is recognised:
//! a claimed slot names a registration (reclaimed when the kernel says its process is gone), a
//! released slot whose releaser died before advancing `head` is advanced over by any waiter, a
//! lagging slot (an exclusive releaser that died after moving `head`) is freed by the head
//! check when `head` reaches it again, a stale `tail` hint only costs the next claimer a longer
//! scan.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*, fence};

use crate::layout::{REG_INDEX_BITS, SLOT_SIZE};
use crate::liveness::{GEN_FP_BITS, GEN_FP_MASK, Liveness, Owner, Registration};
use crate::share::Share;

/// A place where a process may be preempted, stopped or killed: between two accesses to
/// shared words. Nothing in production builds; in tests and fuzzing builds a scheduler may
/// stop the process here for as long as it likes (see `interleave`).
macro_rules! step {
    () => {
        #[cfg(any(test, fuzzing))]
        interleave::point();
    };
}

/// The owner field of a claim word: index + 1 and generation bits.
const OWNER_MASK: u64 = (1 << 31) - 1;
const INDEX_MASK: u64 = (1 << REG_INDEX_BITS) - 1;
const FP_SHIFT: u32 = REG_INDEX_BITS;
const SHARED_BIT: u64 = 1 << 31;
const _: () = assert!(REG_INDEX_BITS + GEN_FP_BITS == 31);

/// `Slot::futex` state: the owner is queued and not asleep.
pub(crate) const WAITING: u32 = 0;
/// `Slot::futex` state: the owner sleeps on the futex; wake it when it may be granted.
pub(crate) const PARKED: u32 = 1;
/// `Slot::futex` state: the owner saw its grant and holds the token.
pub(crate) const HOLDING: u32 = 2;
/// `Slot::futex` state: a release woke the owner from PARKED; it has not run since (in a
/// bounded table its turn may still be borrowed: see `bypass`).
pub(crate) const WOKEN: u32 = 3;
/// `Slot::futex` state (bounded tables): the owner was granted after sleeping and is
/// entering: no bypass may start any more, and it waits for one in progress to end.
pub(crate) const ENTERING: u32 = 4;

/// Bits of a slot's `start` word that hold the owner's full generation; the rest hold a lap
/// tag.
const START_BITS: u32 = 40;
const START_MASK: u64 = (1 << START_BITS) - 1;

/// One token slot: a cache line in the mapped file.
///
/// `start` and `futex` carry a tag of the lap they belong to, so a value left behind by a
/// previous owner of the slot is recognised as stale instead of being trusted.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The claim word (see the module docs).
    pub word: AtomicU64,
    /// Owner's registration generation (low 40 bits) tagged with the lap (high 24 bits);
    /// 0 = unpublished.
    pub start: AtomicU64,
    /// PID of the owner's parent (the handle's creator), for status.
    pub parent: AtomicU64,
    /// When the request entered the queue, then when it got the token, in ns since the Unix
    /// epoch (0 = not recorded).
    pub since_ns: AtomicU64,
    /// Wait state (low 16 bits) tagged with the lap (high 16 bits); the futex sleeps on it.
    pub futex: AtomicU32,
    _pad: u32,
    /// The owner's thread (low 48 bits) tagged with the lap (high 16 bits): tells a thread
    /// that asks again for a token it holds (which would wait on itself).
    pub thread: AtomicU64,
    _reserved: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Slot>() == SLOT_SIZE as usize);

/// The shared words a ring works on, besides its slots.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingWords<'a> {
    /// A hint of the next ticket to hand out (never beyond it).
    pub tail: &'a AtomicU64,
    /// Oldest ticket not released.
    pub head: &'a AtomicU64,
    /// Ticket + 1 of the last holder that died holding, until the next holder takes note.
    pub dead_holder: &'a AtomicU64,
    /// Count of reclaimed slots.
    pub reclaimed: &'a AtomicU64,
    /// Bounded tables: who holds the token ahead of the queue (see `bypass`).
    pub bypass: &'a AtomicU32,
    /// Bounded tables: a granted request sleeps on `bypass`.
    pub bypass_waiters: &'a AtomicU32,
    /// Bounded tables: the bypass holder's thread tag.
    pub bypass_thread: &'a AtomicU64,
    /// Bounded tables: count of grants ahead of the queue.
    pub bypasses: &'a AtomicU64,
}

/// A queued or granted request: its ticket and the claim word that proves ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// The ticket number.
    pub t: u64,
    /// The claim word written into the slot.
    pub word: u64,
}

impl Ticket {
    /// Its lap, as carried in the claim word (no need to know the capacity).
    #[inline(always)]
    fn lap(&self) -> u32 {
        lap_of_word(self.word)
    }

    /// Its mode.
    #[inline(always)]
    pub(crate) fn share(&self) -> Share {
        if is_shared_word(self.word) {
            Share::Shared
        } else {
            Share::Exclusive
        }
    }
}

/// Result of one claim attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The request is in the queue.
    Claimed(Ticket),
    /// Every slot is in use; wait for a release.
    Full,
    /// Another process moved first; try again.
    Retry,
    /// A slot is in a lap it can never be in: the file was overwritten.
    Broken(Broken),
}

/// Where a queued request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// It holds the token.
    Granted,
    /// It waits; `ahead` unreleased tickets are before it (1 = next in line).
    Waiting {
        /// Tickets between `head` (inclusive) and this one.
        ahead: u64,
    },
}

/// The ring's state makes no sense: the file was overwritten, or our slot was taken from us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Broken(pub String);

/// A ring view: slots plus the shared words, and how to wake a sleeper.
#[derive(Clone, Copy)]
pub(crate) struct Ring<'a> {
    words: RingWords<'a>,
    slots: &'a [Slot],
    shift: u32,
    mask: u64,
    wake: fn(&AtomicU32),
    /// Bounded tables: the bypass bound in ns (0: a strict table, no bypass).
    bound_ns: u64,
    /// Strict tables pre-wake the next-in-line only while the queue holds at most this many
    /// requests (the CPU count: see `wake_from`).
    prewake_up_to: u64,
}

impl std::fmt::Debug for Ring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.slots.len())
            .finish_non_exhaustive()
    }
}

#[inline]
fn lap_of_word(w: u64) -> u32 {
    (w >> 32) as u32
}
/// The owner field (0: not claimed).
#[inline]
fn owner_of_word(w: u64) -> u32 {
    (w & OWNER_MASK) as u32
}
/// The registration index a claimed word names (its owner field is not 0).
#[inline]
fn index_of_word(w: u64) -> u32 {
    ((w & INDEX_MASK) as u32).wrapping_sub(1)
}
/// The owner field naming registration `me` (in a claim word and in the bypass word).
#[inline]
fn owner_field(me: Registration) -> u64 {
    (u64::from(me.generation & GEN_FP_MASK) << FP_SHIFT)
        | (u64::from(me.index).wrapping_add(1) & INDEX_MASK)
}
/// The owner an owner field names, by its generation bits only (the full generation is not in
/// the word).
#[inline]
fn owner_of_field(w: u64) -> Owner {
    Owner {
        index: index_of_word(w),
        generation: None,
        gen_fp: ((w >> FP_SHIFT) as u32) & GEN_FP_MASK,
    }
}
#[inline]
fn is_shared_word(w: u64) -> bool {
    w & SHARED_BIT != 0
}
#[inline]
fn free_word(lap: u32) -> u64 {
    u64::from(lap) << 32
}
#[inline]
fn futex_tag(lap: u32) -> u32 {
    lap << 16
}

/// The calling thread's tag in lap `lap` (see `Slot::thread`): the address of a thread-local
/// byte (unique among live threads; a constant-initialised thread-local costs one address
/// computation) tagged with the lap.
#[inline(always)]
fn thread_word(lap: u32) -> u64 {
    thread_local! {
        static ANCHOR: u8 = const { 0 };
    }
    let addr = ANCHOR.with(|a| std::ptr::from_ref(a) as usize as u64);
    (u64::from(lap & 0xffff) << 48) | (addr & ((1 << 48) - 1))
}

impl<'a> Ring<'a> {
    /// A view over `slots` (a power-of-two count) and the shared words. `wake(word)` wakes
    /// every sleeper on a futex word; `bound_ns` is the bypass bound of a bounded table (0:
    /// strict); a release pre-wakes the next-in-line only while at most `prewake_up_to`
    /// requests are queued (the CPUs a spinning next-in-line may use).
    pub(crate) fn new(
        words: RingWords<'a>,
        slots: &'a [Slot],
        wake: fn(&AtomicU32),
        bound_ns: u64,
        prewake_up_to: u64,
    ) -> Self {
        debug_assert!(slots.len().is_power_of_two());
        Ring {
            words,
            slots,
            shift: slots.len().trailing_zeros(),
            mask: slots.len() as u64 - 1,
            wake,
            bound_ns,
            prewake_up_to,
        }
    }

    /// True for a bounded table (a running process may go ahead of sleeping waiters).
    #[inline(always)]
    pub(crate) fn is_bounded(&self) -> bool {
        self.bound_ns != 0
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    #[inline]
    fn lap(&self, t: u64) -> u32 {
        (t >> self.shift) as u32
    }

    #[inline]
    pub(crate) fn slot(&self, t: u64) -> &'a Slot {
        // `mask` is capacity - 1 and capacity == slots.len(): always in bounds, whatever `t`
        // a hostile file put in `head` or `tail`.
        &self.slots[(t as usize) & self.slots.len().wrapping_sub(1)]
    }

    /// The claim word ticket `t` would carry for this owner.
    #[inline]
    fn claim_word(&self, t: u64, share: Share, me: Registration) -> u64 {
        let shared = if share == Share::Shared {
            SHARED_BIT
        } else {
            0
        };
        free_word(self.lap(t)) | shared | owner_field(me)
    }

    /// What the claim word `w` says about ticket `t`.
    #[inline]
    fn state(&self, t: u64, w: u64) -> SlotState {
        let lap = self.lap(t);
        let wl = lap_of_word(w);
        if wl == lap {
            if owner_of_word(w) != 0 {
                SlotState::Claimed
            } else if w == free_word(lap) {
                SlotState::Free
            } else {
                SlotState::Impossible
            }
        } else if wl == lap.wrapping_add(1) {
            SlotState::Released
        } else if wl == lap.wrapping_sub(1) && owner_of_word(w) != 0 {
            SlotState::Lagging
        } else {
            SlotState::Impossible
        }
    }

    /// One attempt to enter the queue as registration `me` (its index below
    /// `MAX_PROC_CAPACITY`).
    #[inline(always)]
    pub(crate) fn try_claim(&self, share: Share, me: Registration) -> Claim {
        let head = self.words.head.load(SeqCst);
        step!();
        let hint = self.words.tail.load(Relaxed);
        step!();
        // Start at the hint when it is plausible; it never points past the first free ticket.
        let mut t = if hint.wrapping_sub(head) < self.capacity() {
            hint
        } else {
            head
        };
        loop {
            if t.wrapping_sub(head) >= self.capacity() {
                return Claim::Full;
            }
            let slot = self.slot(t);
            let w = slot.word.load(SeqCst);
            step!();
            match self.state(t, w) {
                SlotState::Free => {
                    let mine = self.claim_word(t, share, me);
                    if slot.word.compare_exchange(w, mine, SeqCst, Relaxed).is_ok() {
                        step!();
                        self.words.tail.store(t.wrapping_add(1), Relaxed);
                        step!();
                        return self.confirm_claim(t, mine);
                    }
                    step!();
                    // Someone else took t: look at it again.
                }
                SlotState::Claimed | SlotState::Released => t = t.wrapping_add(1),
                SlotState::Lagging => return Claim::Full,
                SlotState::Impossible => return self.impossible_at(t, w, head),
            }
        }
    }

    /// A slot in a lap it cannot be in. A lap behind is impossible (t - capacity is behind
    /// `head`, so released); laps ahead mean we are slow and `head` moved on: start over.
    #[cold]
    fn impossible_at(&self, t: u64, w: u64, head: u64) -> Claim {
        if self.words.head.load(SeqCst) == head {
            return Claim::Broken(Broken(format!(
                "slot of ticket {t} holds {w:#x}, expected lap {} (head {head})",
                self.lap(t)
            )));
        }
        Claim::Retry
    }

    /// Checks a successful claim of ticket `t` with word `mine`.
    ///
    /// Normally `t` is within a capacity of `head`. If this thread stalled between reading the
    /// slot and its CAS for 2^32 laps, the CAS can succeed on the same slot in a later lap with
    /// equal low lap bits; the real ticket is then the one of this slot within a capacity of
    /// `head` — or, when that one has other lap bits, a ticket too far ahead to queue: we
    /// withdraw it and retry (see docs/design.md).
    #[inline(always)]
    fn confirm_claim(&self, t: u64, mine: u64) -> Claim {
        let head = self.words.head.load(SeqCst);
        if t.wrapping_sub(head) < self.capacity() {
            return Claim::Claimed(Ticket { t, word: mine });
        }
        self.stale_claim(t, mine, head)
    }

    #[cold]
    fn stale_claim(&self, t: u64, mine: u64, head: u64) -> Claim {
        let real = ticket_of_slot(head, t & self.mask, self.mask);
        if self.lap(real) == lap_of_word(mine) {
            return Claim::Claimed(Ticket {
                t: real,
                word: mine,
            });
        }
        let next = free_word(lap_of_word(mine).wrapping_add(1));
        let _ = self
            .slot(t)
            .word
            .compare_exchange(mine, next, SeqCst, Relaxed);
        Claim::Retry
    }

    /// Records who waits in the claimed slot: full generation, parent and enqueue time.
    #[inline]
    pub(crate) fn publish(&self, tk: Ticket, generation: u32, parent: u32, since_ns: u64) {
        let slot = self.slot(tk.t);
        let tag = u64::from(tk.lap() & 0xff_ffff) << START_BITS;
        slot.futex.store(futex_tag(tk.lap()) | WAITING, Relaxed);
        step!();
        slot.thread.store(thread_word(tk.lap()), Relaxed);
        slot.parent.store(u64::from(parent), Relaxed);
        slot.since_ns.store(since_ns, Relaxed);
        slot.start
            .store(tag | (u64::from(generation) & START_MASK), Release);
        step!();
    }

    /// True when `tk` is at the head of the queue (granted, whatever its mode).
    #[inline(always)]
    pub(crate) fn granted_at_once(&self, tk: Ticket) -> bool {
        self.words.head.load(SeqCst) == tk.t
    }

    /// Records when a waiter got the token (status shows holders' grant times).
    pub(crate) fn set_since(&self, tk: Ticket, ns: u64) {
        self.slot(tk.t).since_ns.store(ns, Relaxed);
    }

    /// Whether `tk` may hold the token now (in the mode its claim word carries).
    #[inline]
    pub(crate) fn grant(&self, tk: Ticket) -> Result<Grant, Broken> {
        let head = self.words.head.load(SeqCst);
        step!();
        let ahead = tk.t.wrapping_sub(head);
        if ahead == 0 {
            return Ok(Grant::Granted);
        }
        if ahead >= self.capacity() {
            return Err(self.explain_lost(tk, head));
        }
        if tk.share() == Share::Shared && self.only_shared_before(head, ahead) {
            return Ok(Grant::Granted);
        }
        Ok(Grant::Waiting { ahead })
    }

    /// True when every unreleased ticket in `head .. head + n` is a shared request.
    #[inline(never)]
    fn only_shared_before(&self, head: u64, n: u64) -> bool {
        (0..n).all(|i| {
            let t = head.wrapping_add(i);
            let w = self.slot(t).word.load(SeqCst);
            step!();
            // Released tickets do not block; claimed ones block unless shared; an unclaimed
            // or lagging ticket before ours cannot exist, so be conservative if seen.
            match self.state(t, w) {
                SlotState::Released => true,
                SlotState::Claimed => is_shared_word(w),
                SlotState::Free | SlotState::Lagging | SlotState::Impossible => false,
            }
        })
    }

    #[cold]
    fn lost(&self, tk: Ticket) -> Broken {
        self.explain_lost(tk, self.words.head.load(SeqCst))
    }

    #[cold]
    fn explain_lost(&self, tk: Ticket, head: u64) -> Broken {
        let now = self.slot(tk.t).word.load(SeqCst);
        if now != tk.word {
            Broken(format!(
                "our queue slot (ticket {}) was taken over (claim word {:#x} is now {:#x})",
                tk.t, tk.word, now
            ))
        } else {
            Broken(format!("head ticket {head} has passed our ticket {}", tk.t))
        }
    }

    /// Marks a granted request as holding (so its death is reported to the next holder) and
    /// returns whether the previous holder died holding.
    ///
    /// `dead_holder` names the dead holder's ticket + 1. A value left by a reclaimer that
    /// stalled for more than a lap names a ticket that cannot be our predecessor: dropped.
    #[inline]
    pub(crate) fn mark_holding(&self, tk: Ticket) -> bool {
        self.slot(tk.t)
            .futex
            .store(futex_tag(tk.lap()) | HOLDING, Release);
        step!();
        if self.words.dead_holder.load(Relaxed) == 0 {
            return false;
        }
        self.died_before(tk)
    }

    #[cold]
    fn died_before(&self, tk: Ticket) -> bool {
        let dead = self.words.dead_holder.swap(0, AcqRel);
        // dead - 1 is the dead holder's ticket: in [t - capacity, t).
        dead != 0 && tk.t.wrapping_sub(dead) < self.capacity()
    }

    /// The futex word of ticket `t`'s slot (what a waiter sleeps on), without changing it.
    pub(crate) fn slot_word(&self, t: u64) -> &'a AtomicU32 {
        &self.slot(t).futex
    }

    /// Forgets which thread asked for `tk` (an async request: its task may move between
    /// threads, and another task on this thread asking again waits; it is no deadlock).
    pub(crate) fn untag_thread(&self, tk: Ticket) {
        self.slot(tk.t).thread.store(0, Relaxed);
    }

    /// Prepares to sleep: the futex word and the value to sleep on. The caller must re-check
    /// [`Ring::grant`] after this and before sleeping (no lost wake-up: see `wake_slot`).
    pub(crate) fn park_word(&self, tk: Ticket) -> (&'a AtomicU32, u32) {
        let value = futex_tag(tk.lap()) | PARKED;
        let f = &self.slot(tk.t).futex;
        f.store(value, SeqCst);
        (f, value)
    }

    /// Leaves the queue: releases a held token, or withdraws a waiting request. Wakes whoever
    /// may go next.
    #[inline]
    pub(crate) fn release(&self, tk: Ticket) -> Result<(), Broken> {
        self.release_slot(tk)?;
        step!();
        if self
            .words
            .head
            .compare_exchange(tk.t, tk.t.wrapping_add(1), SeqCst, Relaxed)
            .is_ok()
        {
            step!();
            self.hand_over(tk.t.wrapping_add(1));
        } else {
            step!();
            self.advance_head(); // not the head (a waiter leaving, a shared holder): look
        }
        Ok(())
    }

    /// Releases a *held exclusive* token: like [`release`](Self::release), one atomic
    /// read-modify-write cheaper.
    ///
    /// `head` moves first, by a plain store, then the slot is released. While we hold, our
    /// claimed slot pins `head` at our ticket (head only moves over released slots, and a
    /// live claim is changed by nobody else), so the store does what a CAS would: `head` only
    /// ever moves forward, however long we stall between the two writes (issue 9: releasing
    /// the slot first let a checker move `head` on, and a late store then moved it back
    /// across laps). Between the two writes our slot still carries our claim while `head` has
    /// passed it: the slot is *lagging* ([`SlotState::Lagging`]). Ticket `t + capacity`,
    /// which needs the slot, waits for it like for a full ring; if we die there, the head
    /// check releases it for us once `head` reaches `t + capacity`.
    #[inline]
    pub(crate) fn release_exclusive(&self, tk: Ticket) -> Result<(), Broken> {
        debug_assert!(!is_shared_word(tk.word));
        let slot = self.slot(tk.t);
        if slot.word.load(Relaxed) != tk.word {
            return Err(self.lost(tk));
        }
        step!();
        let next = tk.t.wrapping_add(1);
        self.words.head.store(next, Release);
        step!();
        slot.word
            .store(free_word(tk.lap().wrapping_add(1)), Release);
        step!();
        self.hand_over(next);
        Ok(())
    }

    /// Moves our claim word to the next lap: ticket `tk.t` is released.
    #[inline(always)]
    fn release_slot(&self, tk: Ticket) -> Result<(), Broken> {
        let slot = self.slot(tk.t);
        // Only the owner changes a live claim (reclaimers only touch dead owners' slots), so a
        // check and a store do what a CAS would, at a fraction of the cost.
        if slot.word.load(Relaxed) != tk.word {
            return Err(self.lost(tk));
        }
        step!();
        slot.word
            .store(free_word(tk.lap().wrapping_add(1)), Release);
        Ok(())
    }

    /// After `head` moved to `next`: wake whoever that grants.
    #[inline(always)]
    fn hand_over(&self, next: u64) {
        let w = self.slot(next).word.load(SeqCst);
        step!();
        match self.state(next, w) {
            // Nobody queued. A request claimed from now on reads the new `head` (it spins
            // before it ever sleeps, and re-checks after a full fence before sleeping).
            SlotState::Free | SlotState::Lagging => {}
            SlotState::Claimed => {
                // Order our `head` update before reading its wait word (see `wake_slot`).
                fence(SeqCst);
                self.wake_from(next);
            }
            SlotState::Released | SlotState::Impossible => self.advance_head(),
        }
    }

    /// Moves `head` over released tickets and wakes the requests this grants (plus the
    /// next-in-line, so it is spinning by the time its turn comes).
    #[cold]
    pub(crate) fn advance_head(&self) {
        let mut moved = false;
        for _ in 0..self.capacity() {
            let h = self.words.head.load(SeqCst);
            step!();
            let w = self.slot(h).word.load(SeqCst);
            step!();
            if self.state(h, w) != SlotState::Released {
                break; // ticket h queued, held, or not handed out yet
            }
            moved |= self
                .words
                .head
                .compare_exchange(h, h.wrapping_add(1), SeqCst, SeqCst)
                .is_ok();
            step!();
        }
        if moved {
            self.wake_from(self.words.head.load(SeqCst));
        }
    }

    /// Wakes the requests granted when `head == h`, and the first one after them.
    #[cold]
    fn wake_from(&self, h: u64) {
        let mut run_shared = true;
        for i in 0..self.capacity() {
            let t = h.wrapping_add(i);
            let w = self.slot(t).word.load(SeqCst);
            step!();
            if self.state(t, w) != SlotState::Claimed {
                break;
            }
            let granted = i == 0 || (run_shared && is_shared_word(w));
            if !granted && (self.is_bounded() || self.queued() > self.prewake_up_to) {
                // No pre-wake in a bounded table: while the next-in-line sleeps, running
                // processes may take the token ahead of it; it is woken when its turn comes.
                // Nor in a queue longer than the CPUs: a pre-woken next-in-line spins only
                // where each spinner has a CPU (`wait`'s load control), so there it would
                // only run to find it may not spin and go back to sleep — a futex wake, two
                // context switches and a CPU taken from the holder, per grant, for nothing
                // (measured: 2.4 voluntary switches per grant at 64 processes with work,
                // against the baton ring's 1.0). It is woken when its turn comes, like any
                // sleeper.
                break;
            }
            self.wake_slot(t);
            if !granted {
                break; // that was the next-in-line
            }
            run_shared = is_shared_word(w);
        }
    }

    /// Wakes the owner of ticket `t` if it sleeps.
    ///
    /// No lost wake-up: a sleeper stores PARKED, then re-checks `head`, then sleeps only while
    /// the word is still PARKED; we move `head`, then look for PARKED. With sequentially
    /// consistent operations one of the two sees the other's write.
    #[inline]
    fn wake_slot(&self, t: u64) {
        let f = &self.slot(t).futex;
        let tag = futex_tag(self.lap(t));
        if f.load(SeqCst) == tag | PARKED
            && f.compare_exchange(tag | PARKED, tag | WOKEN, SeqCst, Relaxed)
                .is_ok()
        {
            (self.wake)(f);
        }
    }

    /// Who owns ticket `t` according to claim word `w`.
    pub(crate) fn owner(&self, t: u64, w: u64) -> Owner {
        let s = self.slot(t).start.load(Acquire);
        let tag_ok = s >> START_BITS == u64::from(self.lap(t) & 0xff_ffff) && s != 0;
        Owner {
            index: index_of_word(w),
            generation: tag_ok.then_some((s & START_MASK) as u32),
            gen_fp: ((w >> FP_SHIFT) as u32) & GEN_FP_MASK,
        }
    }

    /// The oldest unreleased ticket.
    #[inline]
    pub(crate) fn head(&self) -> u64 {
        self.words.head.load(SeqCst)
    }

    /// Unreleased tickets, as far as the `tail` hint tells (a hint: it may lag behind, never
    /// run ahead of the last claim). How crowded the queue is, for the wait policy.
    #[inline]
    pub(crate) fn queued(&self) -> u64 {
        let head = self.words.head.load(Relaxed);
        let tail = self.words.tail.load(Relaxed);
        tail.wrapping_sub(head).min(self.capacity())
    }
}

/// What a claim word says about a ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Not handed out yet: claimable.
    Free,
    /// Queued or held.
    Claimed,
    /// Released (the lap moved on).
    Released,
    /// Still claimed by ticket `t - capacity`, whose exclusive holder moved `head` past it
    /// and has not released the slot yet (stalled between its two writes, or dead there).
    /// Ticket `t` cannot be claimed until then: the ring is full at `t`.
    Lagging,
    /// A state no sequence of operations produces: the file was overwritten.
    Impossible,
}

/// Steps that a process may die between, for the property tests.
#[cfg(any(test, fuzzing))]
impl Ring<'_> {
    /// Sets up an empty ring whose next ticket is `t` (to test wrap-around).
    pub(crate) fn reset_at(&self, t: u64) {
        self.words.head.store(t, SeqCst);
        self.words.tail.store(t, SeqCst);
        for i in 0..self.capacity() {
            let ti = t.wrapping_add(i);
            self.slot(ti).word.store(free_word(self.lap(ti)), SeqCst);
        }
    }
}

mod bypass;
mod introspect;
mod reclaim;
mod repair;
mod transfer;

pub(crate) use bypass::{Bypass, BypassCheck, Entry};
pub(crate) use introspect::ticket_of_slot;
pub(crate) use reclaim::HeadCheck;
pub(crate) use repair::{RingRepair, SlotClaim};

#[cfg(any(test, fuzzing))]
pub(crate) mod interleave;
#[cfg(any(test, fuzzing))]
pub mod model;
#[cfg(test)]
mod tests;
