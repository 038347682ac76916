//! Reclaiming what dead processes left in the ring: the head check (a dead head owner, a
//! released ticket whose releaser died, a lagging slot), the sweep of dead claims, and the
//! generation fingerprints a registrant taking over an entry must avoid.

use std::sync::atomic::Ordering::*;

use crate::liveness::{GEN_FP_MASK, Liveness};

use super::*;

/// What a liveness pass found at the head of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadCheck {
    /// Nothing to do: the queue is empty or its head is alive.
    Fine,
    /// A released ticket was left at the head (its releaser died); head moved on.
    Advanced,
    /// The head's owner was dead; its slot was reclaimed.
    Reclaimed {
        /// The dead process's registration index.
        index: u32,
        /// It had seen its grant (it died holding the token).
        was_holding: bool,
    },
}

impl Ring<'_> {
    /// Looks at the head of the queue: finishes a release whose owner died before advancing
    /// `head`, and reclaims the slot of a dead owner. Every waiter calls this when its sleep
    /// times out, so a dead holder blocks nobody for longer than one such timeout.
    pub(crate) fn check_head(&self, liveness: &impl Liveness) -> Result<HeadCheck, Broken> {
        let h = self.words.head.load(SeqCst);
        step!();
        let slot = self.slot(h);
        let w = slot.word.load(SeqCst);
        step!();
        let index = index_of_word(w);
        match self.state(h, w) {
            SlotState::Released => {
                self.advance_head();
                return Ok(HeadCheck::Advanced);
            }
            SlotState::Free => {
                // An empty queue. Tickets are claimed in order, so a claimed ticket behind a
                // free head cannot happen unless the file was overwritten.
                let n = h.wrapping_add(1);
                let behind = self.state(n, self.slot(n).word.load(SeqCst)) == SlotState::Claimed;
                if behind && self.words.head.load(SeqCst) == h && slot.word.load(SeqCst) == w {
                    return Err(Broken(format!(
                        "ticket {n} is queued behind a free head {h}"
                    )));
                }
                return Ok(HeadCheck::Fine);
            }
            SlotState::Impossible => {
                if self.words.head.load(SeqCst) == h {
                    return Err(Broken(format!(
                        "head ticket {h} has an impossible slot {w:#x}"
                    )));
                }
                return Ok(HeadCheck::Fine);
            }
            SlotState::Lagging => return Ok(self.finish_lagging(h, w, liveness)),
            SlotState::Claimed => {}
        }
        if liveness.is_alive(self.owner(h, w)) {
            return Ok(HeadCheck::Fine);
        }
        step!();
        let was_holding = slot.futex.load(SeqCst) == futex_tag(self.lap(h)) | HOLDING;
        step!();
        let next_lap = free_word(self.lap(h).wrapping_add(1));
        if slot
            .word
            .compare_exchange(w, next_lap, SeqCst, Relaxed)
            .is_err()
        {
            return Ok(HeadCheck::Fine); // someone else reclaimed it first
        }
        step!();
        if was_holding {
            // Raised only by the one reclaimer whose CAS took the dead holder's claim: never
            // for a death that did not happen (raising it before the CAS let a checker that
            // stalled past the holder's own release report a death that never was: found by
            // the split-step model). See docs/design.md, "Stale writes", for the window left.
            self.words.dead_holder.store(h.wrapping_add(1), Release);
            step!();
        }
        self.words.reclaimed.fetch_add(1, Relaxed);
        step!();
        self.advance_head();
        Ok(HeadCheck::Reclaimed { index, was_holding })
    }

    /// [`check_head`](Self::check_head), then every dead request between `head` and `upto`
    /// (the caller's own ticket) in one pass: a waiter that finds what blocks it dead clears
    /// all the dead ahead of it at once (a kill storm: a holder and the waiters behind it
    /// killed together), instead of one per sleep. Stops at the first live request (that one
    /// blocks us, and its liveness was just asked). Returns what the head check found and how
    /// many further requests were reclaimed.
    ///
    /// A dead request that is not the head is released for its owner, like a withdrawal
    /// (`release` of a waiting ticket): the lap moves on and `head` later skips it. A dead
    /// shared holder there raises the died flag first, like the head check does.
    pub(crate) fn sweep_dead(
        &self,
        upto: u64,
        liveness: &impl Liveness,
    ) -> Result<(HeadCheck, u64), Broken> {
        let first = self.check_head(liveness)?;
        step!();
        if first == HeadCheck::Fine {
            return Ok((first, 0));
        }
        let mut more = 0;
        let mut t = self.words.head.load(SeqCst);
        step!();
        while upto.wrapping_sub(t).wrapping_sub(1) < self.capacity() - 1 {
            let slot = self.slot(t);
            let w = slot.word.load(SeqCst);
            step!();
            match self.state(t, w) {
                SlotState::Released => {
                    t = t.wrapping_add(1);
                    continue;
                }
                SlotState::Claimed => {}
                SlotState::Free | SlotState::Lagging | SlotState::Impossible => break,
            }
            if liveness.is_alive(self.owner(t, w)) {
                break;
            }
            step!();
            let was_holding = slot.futex.load(SeqCst) == futex_tag(self.lap(t)) | HOLDING;
            step!();
            let next_lap = free_word(self.lap(t).wrapping_add(1));
            if slot
                .word
                .compare_exchange(w, next_lap, SeqCst, Relaxed)
                .is_ok()
            {
                step!();
                if was_holding {
                    // Only after our CAS took the claim (as in `check_head`).
                    self.words.dead_holder.store(t.wrapping_add(1), Release);
                    step!();
                }
                self.words.reclaimed.fetch_add(1, Relaxed);
                more += 1;
            }
            step!();
            t = t.wrapping_add(1);
        }
        if more > 0 {
            self.advance_head();
        }
        Ok((first, more))
    }

    /// The slot of ticket `h` (= `head`) still holds the claim `w` of ticket `h - capacity`,
    /// whose holder moved `head` on but has not released the slot. If that process is dead,
    /// release the slot for it (it had given up the token: no death to report).
    #[cold]
    fn finish_lagging(&self, h: u64, w: u64, liveness: &impl Liveness) -> HeadCheck {
        let prev = h.wrapping_sub(self.capacity());
        if liveness.is_alive(self.owner(prev, w)) {
            return HeadCheck::Fine; // stalled, not dead: it will finish
        }
        step!();
        let freed = self
            .slot(h)
            .word
            .compare_exchange(w, free_word(self.lap(h)), SeqCst, Relaxed)
            .is_ok();
        step!();
        if !freed {
            return HeadCheck::Fine;
        }
        self.words.reclaimed.fetch_add(1, Relaxed);
        HeadCheck::Reclaimed {
            index: index_of_word(w),
            was_holding: false,
        }
    }

    /// The generation bits of every claim word in the ring that names process-table entry
    /// `index`, whatever its lap. A registrant that takes the entry over (its previous
    /// registrant is gone, so these claims are all stale) picks a generation outside them:
    /// then no stale claim, published or not, can pass for the new registrant.
    pub(crate) fn fingerprints_naming(&self, index: u32) -> Vec<u32> {
        let bypass = u64::from(self.words.bypass.load(SeqCst));
        self.slots
            .iter()
            .map(|s| s.word.load(SeqCst))
            .chain(std::iter::once(bypass))
            .filter(|&w| owner_of_word(w) != 0 && index_of_word(w) == index)
            .map(|w| ((w >> FP_SHIFT) as u32) & GEN_FP_MASK)
            .collect()
    }
}
