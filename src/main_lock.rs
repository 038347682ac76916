//! The main lock: registering the owners of a table, and the last one out.

use crate::error::{Error, Result};
use crate::handle::LockTicket;
use crate::handle::REOPEN_ATTEMPTS;
use crate::layout::{self, Geometry};
use crate::members::{self, JoinRefused};
use crate::raw::RawMember;
use crate::region::{Create, Region};
use crate::share::Share;
use crate::sys;

impl LockTicket {
    // -----------------------------------------------------------------------------------------
    // Main lock.

    /// Registers this process as an owner of the table, creating the table if needed.
    ///
    /// * [`Share::Exclusive`] (the original's `MainLock()`): succeeds when no live process owns
    ///   the table; creates it when absent.
    /// * [`Share::Shared`] (`MainLock(1)`): joins other shared owners.
    ///
    /// A table whose owners are all dead is reclaimed ([`MainGuard::reclaimed`] says so). The
    /// last owner to leave removes the file. Errors: [`Error::MainLockBusy`] when live owners
    /// hold it in a conflicting mode, [`Error::AlreadyRegistered`] when this process holds it
    /// already, and the file errors of [`LockTicket::open`].
    pub fn main_lock(&self, share: Share) -> Result<MainGuard<'_>> {
        let (pid, start) = sys::current_identity();
        self.check_current_at_path()?;
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let mut reclaimed = false;
        let create = Create {
            main_mode: match share {
                Share::Exclusive => layout::MAIN_EXCLUSIVE,
                Share::Shared => layout::MAIN_SHARED,
            },
            ..self.create
        };
        let joined = self.open_or_create(Some(create), |region, created| {
            let cold = region.cold()?;
            if !region.still_at_path()? {
                return Ok(None); // removed or replaced while we opened it
            }
            // We hold the flock and the file is still there: if it is retired, whoever
            // retired it died before unlinking (retiring and unlinking happen under one flock).
            cold.revive_abandoned()?;
            let census = members::census(region.members(), &region.liveness());
            if census.live.is_empty() && !created {
                // Taken over from dead owners; a table kept by owners that left (see
                // `Builder::keep`) has no entries left: not a reclaim.
                reclaimed = census.cleared > 0;
                // An orphan: taken over in place, so that the payload the dead left and the
                // death of a holder (reported by the next grant) survive. Dead requests are
                // reclaimed now; a ring in a state no sequence of operations produces is not
                // trusted: the table starts afresh.
                if drain_dead(&region).is_err() {
                    cold.retire_and_unlink()?;
                    return Ok(None);
                }
            }
            // This handle's registration in this file, if it mapped the file before (the
            // region opened here is then dropped by `install`, which moves a registration
            // taken here over to the kept one).
            let kept = regions
                .iter()
                .find(|r| r.same_file(&region) && !r.retired())
                .and_then(|r| r.registration(pid));
            let me = match kept {
                Some(me) => me,
                None => cold.registration()?,
            };
            let index = members::join(
                region.members(),
                &census.live,
                me,
                (pid, start),
                share,
                sys::now_ns(),
            )
            .map_err(|refused| self.refused(refused, pid, region.geometry()))?;
            drop(cold);
            Ok(Some((region, index, created)))
        })?;
        let Some((region, index, created)) = joined else {
            return Err(Error::Corrupted {
                path: self.path.clone(),
                detail: format!(
                    "the table kept changing under us (created and removed {REOPEN_ATTEMPTS} \
                     times)"
                ),
            });
        };
        let region = self.install(&mut regions, region);
        Ok(MainGuard {
            lt: self,
            region,
            raw: RawMember {
                index,
                pid,
                start,
                created,
                reclaimed,
            },
        })
    }

    fn refused(&self, refused: JoinRefused, pid: u32, g: Geometry) -> Error {
        let path = self.path.clone();
        match refused {
            JoinRefused::Busy { share, pids } => Error::MainLockBusy { path, share, pids },
            JoinRefused::AlreadyRegistered => Error::AlreadyRegistered { path, pid },
            JoinRefused::Full => Error::RegistryFull {
                path,
                capacity: g.member_capacity,
            },
        }
    }
}

/// Reclaims the requests of dead processes at the head of an orphan's queue (each raising the
/// died flag if it held the token), until the head is alive, empty, or a capacity's worth of
/// tickets was looked at.
fn drain_dead(region: &Region) -> std::result::Result<(), crate::ring::Broken> {
    let (ring, liveness) = (region.ring(), region.liveness());
    for _ in 0..2 * ring.capacity() + 2 {
        match ring.check_head(&liveness)? {
            crate::ring::HeadCheck::Fine => return Ok(()),
            crate::ring::HeadCheck::Advanced | crate::ring::HeadCheck::Reclaimed { .. } => {}
        }
    }
    Ok(())
}

/// A registration as owner of the table (the main lock). Leaves on [`unlock`](Self::unlock)
/// or drop; the last owner out removes the table. Dropped in a forked child, it does nothing.
#[must_use = "the main lock is released when the guard is dropped"]
pub struct MainGuard<'a> {
    lt: &'a LockTicket,
    region: &'a Region,
    /// The membership (see `crate::raw`).
    raw: RawMember,
}

impl std::fmt::Debug for MainGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainGuard")
            .field("path", &self.lt.path)
            .field("pid", &self.raw.pid)
            .field("created", &self.raw.created)
            .field("reclaimed", &self.raw.reclaimed)
            .finish_non_exhaustive()
    }
}

impl MainGuard<'_> {
    /// True when this call created the table.
    pub fn created(&self) -> bool {
        self.raw.created
    }

    /// True when the table existed but all its registered owners were dead, and was taken
    /// over (the original refused such "orphan" tables).
    pub fn reclaimed(&self) -> bool {
        self.raw.reclaimed
    }

    /// Leaves (the original's `MainUnlock()`); the last owner removes the table. If this
    /// process still holds (or waits for) a token of the table at that moment, the table is
    /// removed when the [`LockTicket`] handle is dropped instead — after every guard, since
    /// they borrow it — unless another process joined or uses it by then. So no order of
    /// unlocks or drops leaves the file behind.
    /// In a forked child that inherited the guard: [`Error::NotOwner`], and the parent stays
    /// registered. [`Error::TableRemoved`] (after leaving) when the file was removed or
    /// replaced under its users.
    pub fn unlock(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        leave(this.lt, this.region, &this.raw)
    }
}

impl<'a> MainGuard<'a> {
    /// The table it is a membership of.
    pub(crate) fn region(&self) -> &'a Region {
        self.region
    }

    /// The handle, the table and the membership, without leaving: for an owned guard.
    pub(crate) fn into_raw(self) -> (&'a LockTicket, &'a Region, RawMember) {
        let this = std::mem::ManuallyDrop::new(self);
        (this.lt, this.region, this.raw)
    }
}

/// Leaves the main lock held as `raw` in `region` of handle `lt` (every main guard's way
/// out, whatever its shape).
pub(crate) fn leave(lt: &LockTicket, region: &Region, raw: &RawMember) -> Result<()> {
    let pid = sys::current_identity().0;
    if pid != raw.pid {
        // A forked child (any kind of fork): the registration is the parent's.
        return Err(Error::NotOwner {
            path: lt.path.clone(),
            what: "main lock",
            owner: raw.pid,
            pid,
        });
    }
    // Before leaving (the last one out retires the table, which a removal check would
    // then take for the ordinary way out): was the file removed under us?
    let at_path = region.check_at_path();
    let cold = region.cold()?;
    if !members::leave(region.members(), raw.index, raw.pid, raw.start) {
        return Err(lt.corrupted("our main-lock registration was removed from the table"));
    }
    if !lt.keep
        && members::census(region.members(), &region.liveness())
            .live
            .is_empty()
    {
        // Last one out. If this process still holds or waits for a token (a guard kept
        // past the main guard, a struct whose fields drop in that order), the table stays
        // until the handle goes, which no guard can outlive.
        if !cold.retire_unless_in_use(&region.liveness())? {
            lt.retire_pending
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    drop(cold);
    at_path
}

impl Drop for MainGuard<'_> {
    fn drop(&mut self) {
        let _ = leave(self.lt, self.region, &self.raw);
    }
}
