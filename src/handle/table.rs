//! The mapped table behind a handle: mapping it on first use, remapping it when it was removed,
//! replaced or retired under us, creating it, installing a new mapping.

use std::sync::Arc;
use std::sync::atomic::Ordering::*;

use crate::error::{Error, Result};
use crate::region::{Create, Region};

use super::LockTicket;

/// How many times a cold path opens the table again when it was removed, replaced or retired
/// under it before giving up.
pub(crate) const REOPEN_ATTEMPTS: usize = 64;

impl LockTicket {
    /// The table in use, mapping it (again) when it is not mapped yet or was retired.
    #[inline]
    pub(crate) fn table(&self) -> Result<&Region> {
        match self.mapped() {
            Some(r) => Ok(r),
            None => {
                // A table found removed under its users is not silently replaced: the
                // handle's users would no longer exclude those of the old file.
                if let Some(r) = self.current_region()
                    && let Some(what) = r.removal()
                {
                    return Err(r.removed_error(what, false));
                }
                self.remap()
            }
        }
    }

    /// The table in use, if it is mapped, not retired and not found removed.
    #[inline]
    pub(crate) fn mapped(&self) -> Option<&Region> {
        let r = self.current_region()?;
        (!r.retired() && r.removal().is_none()).then_some(r)
    }

    /// The table this handle used last, whatever its state.
    #[inline]
    fn current_region(&self) -> Option<&Region> {
        let p = self.current.load(Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: `current` only ever points into an `Arc` held by `regions`, which are dropped
        // only when `self` is, which the borrow of `self` rules out.
        Some(unsafe { &*p })
    }

    /// Checks (one `stat`) that the path still names the table this handle uses; a table
    /// removed or replaced under its users is marked and reported (see
    /// [`Region::check_at_path`]).
    pub(crate) fn check_current_at_path(&self) -> Result<()> {
        match self.current_region() {
            Some(r) => r.check_at_path(),
            None => Ok(()),
        }
    }

    #[cold]
    pub(crate) fn remap(&self) -> Result<&Region> {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        // Retired and being removed, or its retirer died: `revive_if_abandoned` tells which.
        let found = self.open_or_create(None, |region, _| {
            Ok(region.revive_if_abandoned()?.then_some(region))
        })?;
        match found {
            Some(region) => Ok(self.install(&mut regions, region)),
            None => Err(Error::Removed {
                path: self.path.clone(),
            }),
        }
    }

    /// The one open-or-create routine of the cold paths. Opens the table at the handle's
    /// path — creating it with `create` when there is none, else failing with
    /// [`Error::NotCreated`] — and hands it to `settle` with "created by this call". Opens
    /// again while `settle` answers `None` (the table was removed, replaced or retired under
    /// us), at most [`REOPEN_ATTEMPTS`] times; `Ok(None)` when it kept changing.
    pub(crate) fn open_or_create<T>(
        &self,
        create: Option<Create>,
        mut settle: impl FnMut(Region, bool) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        for _ in 0..REOPEN_ATTEMPTS {
            let (region, created) = match Region::open_existing(&self.path, self.perms())? {
                Some(r) => (r, false),
                None => match create {
                    None => {
                        return Err(Error::NotCreated {
                            path: self.path.clone(),
                        });
                    }
                    Some(opts) => match Region::create(&self.path, opts)? {
                        Some(r) => (r, true),
                        None => continue, // someone else created it first
                    },
                },
            };
            if let Some(want) = self.fairness
                && region.fairness() != want
            {
                return Err(Error::FairnessMismatch {
                    path: self.path.clone(),
                    table: region.fairness(),
                    requested: want,
                });
            }
            if let Some(anchor) = self.anchor.get() {
                region.set_anchor(anchor)?;
            }
            if let Some(done) = settle(region, created)? {
                return Ok(Some(done));
            }
        }
        Ok(None)
    }

    /// Makes `region` the table in use (or keeps the current mapping when it is the same
    /// file), and frees the resources of tables that were removed.
    pub(crate) fn install<'a>(
        &'a self,
        regions: &mut Vec<Arc<Region>>,
        region: Region,
    ) -> &'a Region {
        let same = regions
            .iter()
            .find(|r| r.same_file(&region) && !r.retired());
        let ptr: *const Region = match same {
            Some(r) => {
                r.adopt_registration(&region);
                &**r
            }
            None => {
                regions.push(Arc::new(region));
                &**regions.last().expect("just pushed")
            }
        };
        for old in regions.iter() {
            if !std::ptr::eq(&**old, ptr) && old.retired() && !old.still_at_path().unwrap_or(true) {
                old.neuter();
            }
        }
        self.current.store(ptr as *mut Region, Release);
        // SAFETY: points into an `Arc` held by `regions`, which lives as long as `self`.
        unsafe { &*ptr }
    }
}
