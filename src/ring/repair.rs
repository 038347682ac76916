//! Rebuilding a ring that is really inconsistent — and only then.
//!
//! The ring's algorithm never produces an impossible state, but bytes written by a buggy or
//! hostile process could (see `crate::repair`). A repair rewrites the ring, and a rewrite of
//! a ring that is in use breaks exclusion and can wedge the queue for good (issue 17: `repair`
//! run on a busy, healthy table rebuilt it up to 29 times a run). The danger was the look: a
//! scan of `head` and the slots, one word after another, sees a ring that moves under it as
//! a ring that makes no sense (a slot read before a release, `head` read after it).
//!
//! So a repair judges only a **snapshot**: two scans in a row that read the same `head` and
//! the same claim words. In the ring's own protocol a claim word only ever moves forward
//! (free, claimed, released = free one lap later; a lagging slot is freed for its next lap)
//! and `head` only grows, so no word can leave a value and come back to it: two equal scans
//! prove that at the instant the second one began, the ring held exactly those words. A ring
//! that never holds still for two scans is in use — requests are claimed, granted and
//! released — and needs no repair ([`RingRepair::NotNeeded`]). A ring that is really broken
//! stands still: nobody can claim past a broken slot, and waiters only read.
//!
//! The rebuild then writes every slot with a compare-and-swap from its snapshot value and
//! moves `head` last with one from the snapshot's `head`: a process that acted after the
//! snapshot (a new claimer, a stale releaser waking up) makes the rebuild stop instead of
//! being overwritten.

use super::*;

/// How many scans a repair makes before it takes a ring that never held still for one that
/// is in use.
const SCANS: usize = 64;

/// The ring at one instant: `head` and the claim words of the tickets `head .. head + capacity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    head: u64,
    words: Vec<u64>,
}

/// One entry of [`Ring::claims`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotClaim {
    /// Slot index.
    pub index: u64,
    /// The claim word.
    pub word: u64,
    /// Who it names.
    pub owner: Owner,
    /// Marked holding (in its lap).
    pub holding: bool,
}

/// What [`Ring::repair`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RingRepair {
    /// The ring is consistent, or in use (it never held still for two scans).
    NotNeeded,
    /// Rebuilt around the live requests.
    Rebuilt {
        /// What was inconsistent.
        problem: String,
        /// `head` before.
        old_head: u64,
        /// `head` after.
        new_head: u64,
        /// Claims of dead processes (or garbage) dropped.
        dropped: usize,
        /// Live requests kept, in their order.
        kept: usize,
    },
    /// Not rebuilt: live processes have claims in it (and `keep_live` was not set, or one of
    /// them is marked holding), or the ring changed under the rebuild.
    Refused {
        /// What is wrong.
        problem: String,
        /// The live claims.
        live: Vec<SlotClaim>,
        /// Those of them marked holding.
        holders: Vec<SlotClaim>,
    },
}

impl Ring<'_> {
    /// Repairs the ring if a snapshot of it is inconsistent (run under the cold lock, so that
    /// repairs never race each other). With no live process named in the snapshot, the ring
    /// is reset; with live ones, it is rebuilt around them, in their order, only when
    /// `keep_live` is set and none of them is marked holding: a live holder whose claim was
    /// overwritten could otherwise be joined by a second one.
    pub(crate) fn repair(&self, liveness: &impl Liveness, keep_live: bool) -> RingRepair {
        let Some(snap) = self.snapshot() else {
            return RingRepair::NotNeeded; // in use: moving rings are not broken ones
        };
        let Some(problem) = self.inconsistency_of(&snap) else {
            return RingRepair::NotNeeded;
        };
        let claims = self.claims_of(&snap);
        let live: Vec<SlotClaim> = claims
            .iter()
            .copied()
            .filter(|c| liveness.is_alive(c.owner))
            .collect();
        let holders: Vec<SlotClaim> = live.iter().copied().filter(|c| c.holding).collect();
        if !live.is_empty() && (!keep_live || !holders.is_empty()) {
            return RingRepair::Refused {
                problem,
                live,
                holders,
            };
        }
        match self.rebuild(&snap, &live) {
            Ok(new_head) => RingRepair::Rebuilt {
                problem,
                old_head: snap.head,
                new_head,
                dropped: claims.len() - live.len(),
                kept: live.len(),
            },
            Err(why) => RingRepair::Refused {
                problem: format!("{problem}; {why}"),
                live,
                holders,
            },
        }
    }

    /// One scan: `head`, then the claim word of every ticket of its window.
    fn scan(&self) -> Snapshot {
        let head = self.words.head.load(SeqCst);
        let words = (0..self.capacity())
            .map(|i| {
                step!();
                self.slot(head.wrapping_add(i)).word.load(SeqCst)
            })
            .collect();
        step!();
        Snapshot { head, words }
    }

    /// Two equal scans in a row (see the module's doc: they prove an instant at which the
    /// ring held exactly that); `None` when the ring never held still for [`SCANS`] scans.
    pub(crate) fn snapshot(&self) -> Option<Snapshot> {
        let mut last = self.scan();
        for _ in 0..SCANS {
            let next = self.scan();
            if next == last {
                return Some(next);
            }
            last = next;
        }
        None
    }

    /// What makes no sense in `snap`, if anything: an impossible slot in the window of
    /// `head`, or a claimed ticket after one not handed out yet (claims are made in order).
    pub(crate) fn inconsistency_of(&self, snap: &Snapshot) -> Option<String> {
        let head = snap.head;
        let mut open = true; // still in the claimed/released prefix
        for (i, &w) in snap.words.iter().enumerate() {
            let t = head.wrapping_add(i as u64);
            match self.state(t, w) {
                SlotState::Impossible => {
                    return Some(format!(
                        "slot of ticket {t} holds {w:#x}, expected lap {} (head {head})",
                        self.lap(t)
                    ));
                }
                SlotState::Claimed | SlotState::Released if !open => {
                    return Some(format!(
                        "ticket {t} is claimed after a free one (head {head})"
                    ));
                }
                SlotState::Claimed | SlotState::Released => {}
                SlotState::Free | SlotState::Lagging => open = false,
            }
        }
        None
    }

    /// The claim of word `w` in slot `index`, as a [`SlotClaim`] (`None`: not claimed).
    fn claim_in(&self, index: u64, w: u64) -> Option<SlotClaim> {
        if owner_of_word(w) == 0 {
            return None;
        }
        let slot = &self.slots[index as usize];
        // A ticket with the word's lap at this slot (only its low lap bits matter for the
        // owner's start-time tag).
        let t = (u64::from(lap_of_word(w)) << self.shift) | index;
        let holding = slot.futex.load(SeqCst) == futex_tag(lap_of_word(w)) | HOLDING;
        Some(SlotClaim {
            index,
            word: w,
            owner: self.owner(t, w),
            holding,
        })
    }

    /// Every slot that names a process (claimed, or lagging), whoever it is: slot index,
    /// claim word, owner, and whether it was marked holding. A live look, for introspection.
    pub(crate) fn claims(&self) -> Vec<SlotClaim> {
        (0..self.capacity())
            .filter_map(|index| self.claim_in(index, self.slots[index as usize].word.load(SeqCst)))
            .collect()
    }

    /// [`claims`](Self::claims) of a snapshot, in slot order.
    fn claims_of(&self, snap: &Snapshot) -> Vec<SlotClaim> {
        let mask = self.capacity() - 1;
        let mut out: Vec<SlotClaim> = snap
            .words
            .iter()
            .enumerate()
            .filter_map(|(i, &w)| self.claim_in(snap.head.wrapping_add(i as u64) & mask, w))
            .collect();
        out.sort_by_key(|c| c.index);
        out
    }

    /// Rebuilds the ring of `snap`, keeping the requests of `keep` (the live claims, none of
    /// them holding) in their order and dropping every other claim. `head` moves to the
    /// oldest kept request (or, with none, two laps past every ticket in use, so that no
    /// stale compare-and-swap from before the repair can succeed on a slot by accident);
    /// every other slot of the new window is released or free for its ticket. Every write
    /// is a compare-and-swap from the snapshot: the rebuild stops at the first word that
    /// changed since (the caller reports it; a ring that moves is in use). Returns the new
    /// `head`.
    fn rebuild(&self, snap: &Snapshot, keep: &[SlotClaim]) -> Result<u64, String> {
        let old = snap.head;
        let hint = self.words.tail.load(SeqCst);
        let span = 1u64 << (32 + self.shift); // tickets with the same slot and lap bits
        // The full ticket of a kept claim: its slot and lap bits, nearest to the old head.
        let ticket = |c: &SlotClaim| {
            let low = (u64::from(lap_of_word(c.word)) << self.shift) | c.index;
            let base = old & !(span - 1);
            [base.wrapping_sub(span), base, base.wrapping_add(span)]
                .into_iter()
                .map(|b| b | low)
                .min_by_key(|t| t.wrapping_sub(old).min(old.wrapping_sub(*t)))
                .unwrap_or(low)
        };
        let mut kept: Vec<(u64, u64)> = keep.iter().map(|c| (ticket(c), c.word)).collect();
        let new_head = match kept.iter().map(|k| k.0).min_by_key(|t| t.wrapping_sub(old)) {
            Some(first) => first,
            None => old.max(hint).wrapping_add(2 * self.capacity()),
        };
        kept.sort_by_key(|k| k.0.wrapping_sub(new_head));
        if let Some(last) = kept.last()
            && last.0.wrapping_sub(new_head) >= self.capacity()
        {
            return Err(format!(
                "the live requests span more than one lap (tickets {new_head} to {})",
                last.0
            ));
        }
        let end = kept.last().map_or(new_head, |k| k.0.wrapping_add(1));
        let mask = self.capacity() - 1;
        for i in 0..self.capacity() {
            let t = new_head.wrapping_add(i);
            let w = match kept.iter().find(|k| k.0 == t) {
                Some(k) => k.1,
                None if t.wrapping_sub(new_head) < end.wrapping_sub(new_head) => {
                    free_word(self.lap(t).wrapping_add(1)) // released
                }
                None => free_word(self.lap(t)),
            };
            // The snapshot's word of this slot (the snapshot is indexed from its own head).
            let was = snap.words[(t.wrapping_sub(old) & mask) as usize];
            step!();
            if was != w
                && self
                    .slot(t)
                    .word
                    .compare_exchange(was, w, SeqCst, SeqCst)
                    .is_err()
            {
                return Err(format!(
                    "the slot of ticket {t} changed during the repair (the ring is in use): \
                     stopped"
                ));
            }
        }
        step!();
        self.words.tail.store(end, SeqCst);
        step!();
        if self
            .words
            .head
            .compare_exchange(old, new_head, SeqCst, SeqCst)
            .is_err()
        {
            return Err("head moved during the repair (the ring is in use): stopped".into());
        }
        self.wake_from(new_head);
        Ok(new_head)
    }
}
