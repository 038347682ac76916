//! Bounded bypass: in a table created with `Fairness::Bounded`, a running process may take
//! the exclusive token *ahead of the queue* while the request whose turn it is cannot use it
//! — asleep, or woken but not yet running — so that the lock never waits for the scheduler to
//! run a sleeper while running processes could use it. Once the head runs, nobody goes ahead
//! of it for longer than the one critical section already inside (the handshake below). The
//! head's age does not count (issue 21): how long it waited in the queue, or for the
//! scheduler after its wake-up, is not a delay the lock could shorten by handing it the
//! token; a bound that counted it turned the mode into strict FIFO exactly where bypassing
//! pays (16–64 processes on 2 CPUs). Strict tables never get here (`Ring::is_bounded` is
//! false: no extra word is read).
//!
//! # The bypass word
//! One `u32` in the header: 0 when nobody bypasses, else the bypasser's owner field (as in a
//! claim word: registration index + 1, generation bits) and, once it has entered, bit 31
//! ([`ENTERED`]). Only the bypasser changes a live bypass word; a reclaimer clears it only
//! when the kernel says its owner is dead.
//!
//! # Who may be in the critical section
//! The ring grants as in strict mode; a bypass is a second way in, excluded from the first by a
//! Dekker-style handshake over two sequentially consistent writes:
//!
//! * a **bypasser** CASes the bypass word from 0 to its owner field, *then* looks at the head
//!   request: it enters only when that request is exclusive, published, and asleep
//!   (`PARKED`, or `WOKEN` and not run since); otherwise it clears the word again and queues
//!   like anyone;
//! * a **granted request** leaves the sleeping states by a swap to `ENTERING` (a request that
//!   never slept is `WAITING`, and its claim CAS was its announcement), *then* reads the bypass
//!   word: it enters only when that is 0, else it waits for the bypasser to leave.
//!
//! With both sides' write-then-read sequentially consistent, at least one of them sees the
//! other: never both inside. A request that is granted shared is never bypassed (the bypasser
//! requires an exclusive head, and no shared request after an exclusive head is granted).
//!
//! # Crash windows
//! * A bypasser dies between its CAS and its look at the head, or after clearing: the word
//!   names a dead owner without [`ENTERED`]: the granted request that waits for it clears it
//!   ([`Ring::check_bypass`]) and reports no death (it never entered).
//! * A bypasser dies inside (the word has [`ENTERED`]): cleared the same way, and the next
//!   holder is told the previous holder died.
//! * A granted request dies while `ENTERING` (waiting for a bypasser): it never held; the head
//!   check reclaims its slot as a waiter's (`was_holding` is only for `HOLDING`).
//! * Stale writes: a bypasser stalled between its CAS and its look at the head can only enter
//!   if the head it then sees is asleep, whatever happened meanwhile; a late clear by a
//!   bypasser can only clear its own value (nobody else writes a live bypasser's word).

use std::sync::atomic::{AtomicU32, Ordering::*};

use super::*;

/// Bit 31 of the bypass word: the bypasser has entered (its death is a holder's death).
pub(crate) const ENTERED: u32 = 1 << 31;

/// A held bypass: the owner field in the bypass word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bypass {
    /// Our owner field (without [`ENTERED`]; the bypass word is 32 bits). Kept in a 64-bit
    /// field so that both shapes of a held token's place are two whole words: a guard is moved
    /// a few times between the fast path and its caller, and a 32-bit field here made those
    /// moves copy the other shape's second word as two halves, then read it back whole (a
    /// store-forwarding stall on every uncontended lock+unlock).
    pub owner: u64,
    /// `head` when we entered: the ticket of the request we went ahead of (for the
    /// died-holder report).
    pub head: u64,
}

/// Whether a granted request of a bounded table may enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Nobody bypasses: it holds the token.
    Clear,
    /// A bypasser is inside (or deciding): wait until the word changes from this value.
    Busy(u32),
}

/// What a look at the bypass word found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BypassCheck {
    /// Nobody bypasses, or the bypasser is alive.
    Fine,
    /// The bypasser was dead; the word was cleared.
    Reclaimed {
        /// It had entered (it died holding the token).
        was_holding: bool,
    },
}

impl Ring<'_> {
    /// True when the request at ticket `h`, with claim word `w`, may be gone ahead of: an
    /// exclusive claim, published, asleep, and waiting less than the bound at `now_ns`.
    #[inline]
    fn may_bypass(&self, h: u64, w: u64) -> bool {
        if self.state(h, w) != SlotState::Claimed || is_shared_word(w) {
            return false;
        }
        let slot = self.slot(h);
        let lap = self.lap(h);
        // Published (its futex word then holds this lap's state, not a stale one).
        let s = slot.start.load(Acquire);
        if s == 0 || s >> START_BITS != u64::from(lap & 0xff_ffff) {
            return false;
        }
        let f = slot.futex.load(SeqCst);
        let tag = futex_tag(lap);
        // Asleep, or woken and not run since: it cannot use the token now, whatever its age.
        f == tag | PARKED || f == tag | WOKEN
    }

    /// One attempt of registration `me` to take the exclusive token ahead of the queue. (No
    /// clock is read: the head's age does not count.)
    pub(crate) fn try_bypass(&self, me: Registration) -> Option<Bypass> {
        if !self.is_bounded() {
            return None;
        }
        let h = self.words.head.load(SeqCst);
        step!();
        let w = self.slot(h).word.load(SeqCst);
        step!();
        if self.state(h, w) != SlotState::Claimed || is_shared_word(w) {
            return None; // an empty queue (claim it), or shared holders
        }
        if !self.may_bypass(h, w) || self.words.bypass.load(Relaxed) != 0 {
            return None;
        }
        step!();
        let mine = owner_field(me) as u32; // 31 bits: bit 31 stays free for ENTERED
        if self
            .words
            .bypass
            .compare_exchange(0, mine, SeqCst, Relaxed)
            .is_err()
        {
            return None;
        }
        step!();
        // Our write is in; now look again (see the module docs: one of the two sees the other).
        let h = self.words.head.load(SeqCst);
        step!();
        let w = self.slot(h).word.load(SeqCst);
        step!();
        if !self.may_bypass(h, w) {
            self.clear_bypass();
            return None;
        }
        step!();
        self.words.bypass.store(mine | ENTERED, Release);
        step!();
        self.words.bypass_thread.store(thread_word(0), Relaxed);
        self.words.bypasses.fetch_add(1, Relaxed);
        Some(Bypass {
            owner: u64::from(mine),
            head: h,
        })
    }

    /// Leaves a bypass: clears the word and wakes granted requests that sleep on it.
    #[inline]
    pub(crate) fn release_bypass(&self, _b: Bypass) {
        self.clear_bypass();
    }

    #[inline]
    fn clear_bypass(&self) {
        // A swap, not a store: ordered before the read of the waiters flag (a sleeper sets the
        // flag, then re-reads the word before it sleeps).
        self.words.bypass.swap(0, SeqCst);
        step!();
        if self.words.bypass_waiters.load(SeqCst) != 0
            && self.words.bypass_waiters.swap(0, SeqCst) != 0
        {
            (self.wake)(self.words.bypass);
        }
    }

    /// After `tk` was granted in a bounded table: may it enter? Leaves the sleeping states
    /// first (so that no new bypass starts), then looks at the bypass word.
    #[inline]
    pub(crate) fn enter(&self, tk: Ticket) -> Entry {
        let f = &self.slot(tk.t).futex;
        let tag = futex_tag(tk.lap());
        // A request that never slept is WAITING, and only its owner moves it from there: its
        // claim CAS announced it (a bypasser requires a sleeping head). One that slept must
        // leave PARKED / WOKEN by a sequentially consistent write before it reads the word.
        if f.load(Relaxed) != tag | WAITING {
            f.swap(tag | ENTERING, SeqCst);
            step!();
        }
        let b = self.words.bypass.load(SeqCst);
        step!();
        match b {
            0 => Entry::Clear,
            b => Entry::Busy(b),
        }
    }

    /// Prepares to sleep until the bypass word changes from `b`: sets the waiters flag and
    /// returns the word to sleep on. The caller re-reads the word after this and before
    /// sleeping.
    pub(crate) fn bypass_park_word(&self) -> &AtomicU32 {
        self.words.bypass_waiters.store(1, SeqCst);
        self.words.bypass
    }

    /// Clears the bypass word if its owner is dead.
    pub(crate) fn check_bypass(&self, liveness: &impl Liveness) -> BypassCheck {
        let b = self.words.bypass.load(SeqCst);
        step!();
        if b == 0 {
            return BypassCheck::Fine;
        }
        if liveness.is_alive(owner_of_field(u64::from(b) & OWNER_MASK)) {
            return BypassCheck::Fine;
        }
        step!();
        if self
            .words
            .bypass
            .compare_exchange(b, 0, SeqCst, Relaxed)
            .is_err()
        {
            return BypassCheck::Fine;
        }
        step!();
        self.words.reclaimed.fetch_add(1, Relaxed);
        BypassCheck::Reclaimed {
            was_holding: b & ENTERED != 0,
        }
    }

    /// True when the bypass is held by the calling thread of registration `me` (a request
    /// of ours would wait for it forever).
    pub(crate) fn bypass_held_by_this_thread(&self, me_word: u64) -> bool {
        let b = self.words.bypass.load(SeqCst);
        b != 0
            && u64::from(b) & OWNER_MASK == owner_of_word(me_word) as u64
            && self.words.bypass_thread.load(SeqCst) == thread_word(0)
    }

    /// The bypasser's owner field and whether it entered, if anyone bypasses (for status).
    pub(crate) fn bypasser(&self) -> Option<(Owner, bool)> {
        let b = self.words.bypass.load(SeqCst);
        (b != 0).then(|| (owner_of_field(u64::from(b) & OWNER_MASK), b & ENTERED != 0))
    }

    /// Died-holder report for a bypasser that entered ahead of ticket `head`.
    #[inline]
    pub(crate) fn bypass_died_before(&self, head: u64) -> bool {
        if self.words.dead_holder.load(Relaxed) == 0 {
            return false;
        }
        self.died_before(Ticket { t: head, word: 0 })
    }
}
