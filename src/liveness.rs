//! Is the owner of a slot still alive? Answers the kernel vouches for.
//!
//! Owners are named by *registrations* in the table's process table (see `procs`): an entry
//! index and a generation, bumped by every process that takes the entry over. A registered
//! process holds an OFD lock on the entry's byte, which the kernel drops when the last
//! descriptor of that open file description closes — at the latest when the process dies. A
//! checker asks the kernel whether the byte is locked (`F_OFD_GETLK`) and whether the entry
//! still carries the owner's generation: no PID, no /proc, so PID namespaces, `hidepid` and PID
//! reuse cannot fool it.
//!
//! This module is the pure decision ([`judge`]) and the [`Liveness`] trait the algorithm
//! modules take; the implementation that asks the OS is `procs::TableLiveness`.

pub(crate) use crate::layout::GEN_FP_BITS;
/// Mask for [`GEN_FP_BITS`].
pub(crate) const GEN_FP_MASK: u32 = (1 << GEN_FP_BITS) - 1;

/// Who owns a slot or a registry entry: a registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    /// Index of the process-table entry.
    pub index: u32,
    /// The registration's full generation, when known.
    pub generation: Option<u32>,
    /// Low [`GEN_FP_BITS`] of the generation (always known for ring slots).
    pub gen_fp: u32,
}

impl Owner {
    /// An owner whose full generation is known.
    pub(crate) fn full(index: u32, generation: u32) -> Owner {
        Owner {
            index,
            generation: Some(generation),
            gen_fp: generation & GEN_FP_MASK,
        }
    }

    /// True when the entry's generation `generation` is this owner's.
    pub(crate) fn matches(&self, generation: u32) -> bool {
        match self.generation {
            Some(g) => g == generation,
            None => self.gen_fp == generation & GEN_FP_MASK,
        }
    }
}

/// This process's registration in a table: what its claim words name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// Index of the process-table entry.
    pub index: u32,
    /// Its generation when we took it.
    pub generation: u32,
}

impl Registration {
    /// As an owner.
    pub(crate) fn owner(&self) -> Owner {
        Owner::full(self.index, self.generation)
    }

    /// The registration in one word: its generation above its index + 1 (never 0). How the
    /// main-lock registry and the payload's writer lock name a registration, and how a region
    /// caches this process's own.
    #[inline]
    pub(crate) fn word(&self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index).wrapping_add(1)
    }

    /// The registration a [`word`](Self::word) names.
    #[inline]
    pub(crate) fn of_word(word: u64) -> Registration {
        Registration {
            index: (word as u32).wrapping_sub(1),
            generation: (word >> 32) as u32,
        }
    }
}

/// The generation a new registrant of an entry whose generation is `old` takes: the next one
/// whose low [`GEN_FP_BITS`] are not among `stale` (the bits of claims still naming the entry).
pub(crate) fn next_generation(old: u32, stale: &[u32]) -> u32 {
    let mut g = old.wrapping_add(1);
    for _ in 0..=stale.len() {
        if !stale.contains(&(g & GEN_FP_MASK)) {
            break;
        }
        g = g.wrapping_add(1);
    }
    g
}

/// Decides liveness. The OS implementation (`procs::TableLiveness`) asks the kernel; tests use
/// a table of their own.
pub(crate) trait Liveness {
    /// True unless `owner` is certainly dead.
    fn is_alive(&self, owner: Owner) -> bool;
}

/// What the kernel says about the lock on an entry's byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelSays {
    /// Some open file description holds it: its process is alive.
    Locked,
    /// Nobody holds it: whoever registered there is gone.
    Unlocked,
    /// The question failed (no OFD locks here, an I/O error): unknown.
    Unknown,
}

/// What a checker found for an owner: the entry's generation read before and after asking
/// the kernel, and the kernel's answer in between. Pure, for tests.
///
/// A new registrant takes the entry's lock *before* it bumps the generation, and keeps the
/// lock as long as it lives; so a generation that differs from the owner's, read at either
/// end, means the owner's registration was taken over (its process is gone), and an unlocked
/// byte means nobody is registered there. A registrant between its lock and its bump makes
/// the owner look alive for a moment: the safe side (a later check decides).
pub(crate) fn judge(owner: Owner, gen_before: u32, kernel: KernelSays, gen_after: u32) -> bool {
    if !owner.matches(gen_before) || !owner.matches(gen_after) {
        return false;
    }
    match kernel {
        KernelSays::Locked | KernelSays::Unknown => true,
        KernelSays::Unlocked => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_registration_is_dead_and_a_held_one_alive() {
        let o = Owner::full(3, 7);
        assert!(judge(o, 7, KernelSays::Locked, 7));
        assert!(!judge(o, 7, KernelSays::Unlocked, 7));
        assert!(
            judge(o, 7, KernelSays::Unknown, 7),
            "unknown is the safe side"
        );
        assert!(
            !judge(o, 8, KernelSays::Locked, 8),
            "taken over by a new registrant"
        );
        assert!(
            !judge(o, 7, KernelSays::Locked, 8),
            "taken over while we asked"
        );
        let fp = Owner {
            index: 3,
            generation: None,
            gen_fp: 7,
        };
        assert!(judge(
            fp,
            7 + (1 << GEN_FP_BITS),
            KernelSays::Locked,
            7 + (1 << GEN_FP_BITS)
        ));
        assert!(!judge(fp, 8, KernelSays::Locked, 8));
    }
}
