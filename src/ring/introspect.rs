//! Looking at the queue without changing it: the requests in it, `head` and the end of the
//! claimed tickets, idleness, live requests, and the self-deadlock check.

use std::sync::atomic::Ordering::*;

use crate::liveness::{Liveness, Owner};
use crate::share::Share;

use super::*;

impl Ring<'_> {
    /// True when a request before `tk` that holds the token belongs to the calling thread
    /// (same registration, same thread tag, in the right lap): waiting for it would never end.
    ///
    /// Only granted requests hold, and those are the head and the run of shared requests
    /// right after it (released ones among them skipped): the look stops at the first request
    /// that cannot be granted. A thread's *waiting* request cannot be ahead of it (a thread
    /// waits for one request at a time; an async task's request is untagged). So an
    /// exclusive queue costs one slot read here, not one per waiter ahead: this runs on every
    /// request that has to wait, and a look at every slot of a 64-deep queue (a cache miss
    /// each) cost more CPU per grant than the handover itself.
    #[cold]
    pub(crate) fn held_by_this_thread_before(&self, tk: Ticket) -> bool {
        let head = self.words.head.load(SeqCst);
        let ahead = tk.t.wrapping_sub(head).min(self.capacity());
        for i in 0..ahead {
            let t = head.wrapping_add(i);
            let slot = self.slot(t);
            let w = slot.word.load(SeqCst);
            match self.state(t, w) {
                SlotState::Released => continue, // a shared holder that left
                SlotState::Claimed => {}
                SlotState::Free | SlotState::Lagging | SlotState::Impossible => return false,
            }
            if owner_of_word(w) == owner_of_word(tk.word)
                && slot.futex.load(SeqCst) == futex_tag(self.lap(t)) | HOLDING
                && slot.thread.load(SeqCst) == thread_word(self.lap(t))
            {
                return true;
            }
            if !is_shared_word(w) {
                return false; // the exclusive head, or a request no later one is granted past
            }
        }
        false
    }

    /// True when `head .. tail` holds a slot claimed by a live process, or a live process
    /// holds the token ahead of the queue (bounded tables).
    pub(crate) fn has_live_requests(&self, liveness: &impl Liveness) -> bool {
        self.requests()
            .into_iter()
            .any(|r| liveness.is_alive(r.owner))
            || self
                .bypasser()
                .is_some_and(|(owner, _)| liveness.is_alive(owner))
    }

    /// The requests in the queue, oldest first (a best-effort snapshot).
    pub(crate) fn requests(&self) -> Vec<Request> {
        let head = self.words.head.load(SeqCst);
        let mut out = Vec::new();
        let mut run_shared = true;
        for i in 0..self.capacity() {
            let t = head.wrapping_add(i);
            let slot = self.slot(t);
            let w = slot.word.load(SeqCst);
            match self.state(t, w) {
                SlotState::Claimed => {}
                SlotState::Released => continue,
                SlotState::Free | SlotState::Lagging | SlotState::Impossible => break,
            }
            let shared = is_shared_word(w);
            let granted = i == 0 || (run_shared && shared);
            run_shared = granted && shared;
            let futex = slot.futex.load(Relaxed);
            out.push(Request {
                ticket: t,
                share: if shared {
                    Share::Shared
                } else {
                    Share::Exclusive
                },
                owner: self.owner(t, w),
                parent: slot.parent.load(Relaxed) as u32,
                since_ns: slot.since_ns.load(Relaxed),
                granted,
                holding: futex == futex_tag(self.lap(t)) | HOLDING,
            });
        }
        out
    }

    /// `head`, and the first ticket not handed out yet (found by a scan, bounded).
    pub(crate) fn head_tail(&self) -> (u64, u64) {
        let head = self.words.head.load(SeqCst);
        let mut t = head;
        for _ in 0..self.capacity() {
            match self.state(t, self.slot(t).word.load(SeqCst)) {
                SlotState::Claimed | SlotState::Released => t = t.wrapping_add(1),
                SlotState::Free | SlotState::Lagging | SlotState::Impossible => break,
            }
        }
        (head, t)
    }

    /// True when nobody holds or waits (the head ticket is free).
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        let h = self.words.head.load(SeqCst);
        self.state(h, self.slot(h).word.load(SeqCst)) == SlotState::Free
    }
}

/// One entry of [`Ring::requests`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Ticket number.
    pub ticket: u64,
    /// Mode.
    pub share: Share,
    /// Owner.
    pub owner: Owner,
    /// Parent PID recorded by the owner.
    pub parent: u32,
    /// Enqueue time (ns since the epoch; 0 when not recorded).
    pub since_ns: u64,
    /// The ring grants it now.
    pub granted: bool,
    /// Its owner has seen the grant.
    pub holding: bool,
}

/// The ticket in `[head, head + capacity)` that lives in slot `index`.
pub(crate) fn ticket_of_slot(head: u64, index: u64, mask: u64) -> u64 {
    head.wrapping_add(index.wrapping_sub(head) & mask)
}
