//! What a guard holds, without a borrow: the raw token and the raw main-lock membership that
//! every guard shape — borrowed ([`TokenGuard`](crate::TokenGuard),
//! [`MainGuard`](crate::MainGuard)), owned ([`OwnedTokenGuard`](crate::OwnedTokenGuard),
//! [`OwnedMainGuard`](crate::OwnedMainGuard)), and the async ones to come — is a thin shell
//! over, as lock_api's raw locks are under its guards. Each knows how to let go, given the
//! table it was taken in; a shell only decides how that table is kept alive (a borrow of the
//! handle, or an `Arc` of the mapped table and of the handle).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::{Error, Result};
use crate::region::{KernelKey, Region};
use crate::ring::{Bypass, Ticket};
use crate::share::Share;
use crate::sys;

/// Where a token is held.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    /// A granted ticket of the queue (its claim word names the owner and the mode).
    Queued(Ticket),
    /// Ahead of the queue (bounded tables): the head it went ahead of, and our bypass word.
    Ahead(Bypass),
}

/// A held token: where, by which process, and what it was told. No `Drop`: a shell releases
/// it (a clone is how a shell hands it to another, never dropping the first).
#[derive(Debug)]
pub(crate) struct RawToken {
    place: Place,
    /// The process that took it (a forked child's copy cannot release it).
    pid: u32,
    /// The previous holder died holding it (0 or 1). A word, not a `bool`: next to `pid` it
    /// fills the word without padding. With a `bool` the guard carried three padding bytes
    /// that its moves (fast path -> `Result` -> caller) copied as odd-sized pieces, and the
    /// release then read the table pointer with one load spanning two of those stores — a
    /// store-forwarding stall on the unlock's critical path.
    died: u32,
    /// The fencing token, taken from the table the first time it is asked for (0: not yet).
    /// An atomic, not a `OnceLock`: a `OnceLock` in the guard (its `Drop` looks at its state)
    /// cost the uncontended lock+unlock 6 ns, measured.
    fence: AtomicU64,
}

impl Clone for RawToken {
    fn clone(&self) -> Self {
        RawToken {
            place: self.place,
            pid: self.pid,
            died: self.died,
            fence: AtomicU64::new(self.fence.load(Relaxed)),
        }
    }
}

impl RawToken {
    /// A token held at `place` by process `pid`.
    #[inline(always)]
    pub(crate) fn new(place: Place, pid: u32, died: bool) -> RawToken {
        RawToken {
            place,
            pid,
            died: u32::from(died),
            fence: AtomicU64::new(0),
        }
    }

    /// Where it is held.
    pub(crate) fn place(&self) -> Place {
        self.place
    }

    /// The process that holds it.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The previous holder died holding it.
    pub(crate) fn died(&self) -> bool {
        self.died != 0
    }

    /// Exclusive or shared (a place ahead of the queue is always exclusive).
    #[inline]
    pub(crate) fn share(&self) -> Share {
        match self.place {
            Place::Queued(tk) => tk.share(),
            Place::Ahead(_) => Share::Exclusive,
        }
    }

    /// The key a keyed table keeps this token's kernel lock on its lock file under
    /// (`Region::keep_kernel_lock`): ticket (or head), claim word (or bypass owner field),
    /// process.
    pub(crate) fn key(&self) -> KernelKey {
        match self.place {
            Place::Queued(tk) => (tk.t, tk.word, self.pid),
            Place::Ahead(b) => (b.head, b.owner, self.pid),
        }
    }

    /// The ticket, or the head a token ahead of the queue went ahead of (for `Debug`).
    pub(crate) fn ticket_number(&self) -> u64 {
        match self.place {
            Place::Queued(tk) => tk.t,
            Place::Ahead(b) => b.head,
        }
    }

    /// The fencing token of this grant in `region` (see `Region::next_fence`).
    pub(crate) fn fencing_token(&self, region: &Region) -> u64 {
        match self.fence.load(Relaxed) {
            0 => {
                // Two threads asking at once through a shared guard may both take one: the
                // first stored is kept for good, the other is skipped (tokens only grow).
                let mine = region.next_fence();
                match self.fence.compare_exchange(0, mine, Relaxed, Relaxed) {
                    Ok(_) => mine,
                    Err(first) => first,
                }
            }
            t => t,
        }
    }

    /// Releases the token in `region`, the table it was taken in. Fails with
    /// [`Error::NotOwner`] in a forked child (the token stays the parent's), with
    /// [`Error::Corrupted`] when the table was overwritten meanwhile, and with
    /// [`Error::TableRemoved`] (after releasing) when the file was found removed or replaced
    /// while the token was held.
    #[inline(always)]
    pub(crate) fn release(&self, region: &Region) -> Result<()> {
        if sys::current_identity().0 != self.pid {
            return Err(self.not_owner(region)); // a forked child: the token is the parent's
        }
        if region.anchor().is_some() {
            // A keyed table: its lock file's flock first, never two holders of the file.
            region.release_kernel_lock(self.key());
        }
        let ring = region.ring();
        let released = match self.place {
            Place::Queued(tk) if tk.share() == Share::Exclusive => ring.release_exclusive(tk),
            Place::Queued(tk) => ring.release(tk),
            Place::Ahead(b) => {
                ring.release_bypass(b);
                Ok(())
            }
        };
        if let Err(b) = released {
            return Err(corrupted(region, b));
        }
        // One load, no system call: a user that found the table removed marked it.
        match region.removal() {
            None => Ok(()),
            Some(what) => Err(region.removed_error(what, true)),
        }
    }

    #[cold]
    #[inline(never)]
    fn not_owner(&self, region: &Region) -> Error {
        Error::NotOwner {
            path: region.path().to_path_buf(),
            what: "token",
            owner: self.pid,
            pid: sys::current_identity().0,
        }
    }
}

#[cold]
#[inline(never)]
fn corrupted(region: &Region, b: crate::ring::Broken) -> Error {
    Error::Corrupted {
        path: region.path().to_path_buf(),
        detail: b.0,
    }
}

/// A raw token with the table it was taken in kept alive by an `Arc`: what the owned and the
/// async guard shapes hold (they differ only in what else they keep and in `Send`). Releases
/// on [`unlock`](Self::unlock) or drop, once.
#[derive(Debug)]
pub(crate) struct ArcToken {
    raw: RawToken,
    region: std::sync::Arc<Region>,
    /// Released by `unlock` (the drop then has nothing to do).
    released: bool,
}

impl ArcToken {
    /// `raw`, held in `region`.
    pub(crate) fn new(raw: RawToken, region: std::sync::Arc<Region>) -> ArcToken {
        ArcToken {
            raw,
            region,
            released: false,
        }
    }

    /// What is held.
    pub(crate) fn raw(&self) -> &RawToken {
        &self.raw
    }

    /// The table it is held in.
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The fencing token of this grant.
    pub(crate) fn fencing_token(&self) -> u64 {
        self.raw.fencing_token(&self.region)
    }

    /// Releases the token (see [`RawToken::release`]).
    pub(crate) fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.raw.release(&self.region)
    }
}

impl Drop for ArcToken {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.raw.release(&self.region);
        }
    }
}

/// A main-lock membership: the registry entry, and what joining found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawMember {
    /// The registry entry.
    pub index: usize,
    /// The process that joined (a forked child's copy cannot leave for it).
    pub pid: u32,
    /// Its start time, as the entry records it.
    pub start: u64,
    /// Joining created the table.
    pub created: bool,
    /// Joining took over a table whose owners had all died.
    pub reclaimed: bool,
}
