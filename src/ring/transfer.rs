//! Handing a held token over to another registration (the descriptor form).

use std::sync::atomic::Ordering::*;

use crate::liveness::Registration;

use super::*;

impl Ring<'_> {
    /// Hands the held token `tk` over to registration `to` (the descriptor form: an entry
    /// vouched for by a lock of the shell's open file description), keeping its ticket, lap
    /// and mode. Three writes, each leaving an owner a checker can judge (docs/design.md,
    /// "The descriptor form"): `start` is unpublished (0: owners are judged by the claim
    /// word's generation bits), the claim word is CASed from ours to `to`'s, then `to`'s full
    /// generation is published. The wait state becomes WAITING, not HOLDING: the new owner
    /// gives the token up by closing its descriptor, which a reclaimer cannot tell from a
    /// death, so none is reported. Call while holding `tk`, under the cold lock.
    pub(crate) fn transfer(
        &self,
        tk: Ticket,
        to: Registration,
        parent: u32,
    ) -> Result<Ticket, Broken> {
        let slot = self.slot(tk.t);
        slot.futex.store(futex_tag(tk.lap()) | WAITING, SeqCst);
        slot.start.store(0, SeqCst);
        step!();
        let word = (tk.word & !OWNER_MASK) | owner_field(to);
        if slot
            .word
            .compare_exchange(tk.word, word, SeqCst, SeqCst)
            .is_err()
        {
            return Err(self.lost(tk));
        }
        step!();
        slot.thread.store(0, Relaxed);
        slot.parent.store(u64::from(parent), Relaxed);
        let tag = u64::from(tk.lap() & 0xff_ffff) << START_BITS;
        slot.start
            .store(tag | (u64::from(to.generation) & START_MASK), Release);
        Ok(Ticket { t: tk.t, word })
    }
}
