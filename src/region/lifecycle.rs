//! A table's lifecycle: retired by its last owner and unlinked, found removed or replaced
//! under its users, revived when abandoned, neutered.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::*;

use crate::error::{Error, Result};
use crate::liveness::Liveness;
use crate::sys;

use super::{Cold, Region, io_err};

impl Region {
    /// True once the last owner retired this table (it is, or is about to be, unlinked).
    #[inline]
    pub(crate) fn retired(&self) -> bool {
        self.header().retired.load(SeqCst) != 0
    }

    /// What a user found, if the table's path stopped naming this file under its users:
    /// "removed" or "replaced by another file". One load: the holder's unlock reads it.
    #[inline]
    pub(crate) fn removal(&self) -> Option<crate::error::Removal> {
        match self.header().removed.load(SeqCst) {
            0 => None,
            2 => Some(crate::error::Removal::Replaced),
            _ => Some(crate::error::Removal::Removed),
        }
    }

    /// The error for a table found removed.
    pub(crate) fn removed_error(&self, what: crate::error::Removal, holder: bool) -> Error {
        Error::TableRemoved {
            path: self.path.clone(),
            what,
            holder,
        }
    }

    /// Checks that the path still names this file (a slow-path check: one `stat`). A table
    /// that is retired left its path on purpose (the last owner out); otherwise a missing or
    /// different file is marked in the table, so that every user learns at its next call,
    /// and reported.
    pub(crate) fn check_at_path(&self) -> Result<()> {
        if let Some(what) = self.removal() {
            return Err(self.removed_error(what, false));
        }
        if self.retired() {
            return Ok(());
        }
        // Asked of the directory the table was opened in (never of the path, which a chdir
        // or chroot since would make name another place): "replaced" when the name names
        // another file; "removed" when the name is gone from that directory — unlinked, or
        // renamed away (the file may still have a name elsewhere, but whoever opens the path
        // now makes a second table: its users must learn that exclusion is not guaranteed).
        let mark = match self.at_path() {
            Ok(Some(true)) => return Ok(()),
            Ok(Some(false)) => 2,
            Ok(None) => 1,
            // Cannot tell (EACCES on the directory): say nothing, unless our own descriptor
            // shows the file has no name left anywhere.
            Err(_) => match sys::link_count(self.probe.as_fd()) {
                Ok(0) => 1,
                _ => return Ok(()),
            },
        };
        if self.retired() {
            return Ok(()); // retired and unlinked meanwhile: the last owner's way out
        }
        let _ = self
            .header()
            .removed
            .compare_exchange(0, mark, SeqCst, SeqCst);
        match self.removal() {
            Some(what) => Err(self.removed_error(what, false)),
            None => Ok(()),
        }
    }

    /// For a table found retired: takes the cold lock and revives the table if its retirer
    /// died before unlinking it (see [`Cold::revive_abandoned`]). True when it is usable.
    pub(crate) fn revive_if_abandoned(&self) -> Result<bool> {
        if self.retired() {
            self.cold()?.revive_abandoned()?;
        }
        Ok(!self.retired())
    }

    /// True while the table's name in its directory still names this table's file (not
    /// unlinked, not renamed away, not replaced).
    pub(crate) fn still_at_path(&self) -> Result<bool> {
        match self.at_path() {
            Ok(at) => Ok(at == Some(true)),
            Err(e) => Err(io_err(&self.path, crate::error::IoOp::Stat)(e)),
        }
    }

    /// What the table's name in the directory it was opened in names now (`fstatat` through
    /// the directory's descriptor, not following a symlink): `Some(true)` this file,
    /// `Some(false)` another one, `None` nothing.
    fn at_path(&self) -> io::Result<Option<bool>> {
        match sys::stat_at(self.dir.as_fd(), &self.name) {
            Ok(id) => Ok(Some(id == (self.dev, self.ino))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the mapping with private memory that reads as a retired, poisoned table, and
    /// closes the file: frees the resources of a table that was removed and replaced, while
    /// any straggling reference still points at valid memory (and errors out).
    pub(crate) fn neuter(&self) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.take().is_none() {
            return;
        }
        // Our registration in the removed file dies with its descriptor; the probe is pointed
        // at /dev/null, so that the removed file's pages are freed.
        drop(
            self.reg_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        self.reg_pid.store(0, SeqCst);
        sys::point_at_dev_null(&self.probe);
        for m in [&self.map, &self.payload_map] {
            // SAFETY: `m` is a whole mapping we own; the memory behind our references into
            // it (header, ring, registry, payload) is atomics and integers, valid as zeroes.
            // MmapRaw unmaps the range on drop as before.
            unsafe { sys::remap_anonymous(m.as_mut_ptr(), m.len()) };
        }
        let h = self.header();
        h.retired.store(1, SeqCst);
        h.head.store(1 << 63, SeqCst);
        h.tail.store(1 << 63, SeqCst);
    }
}

impl Cold<'_> {
    /// Clears the retired mark of a table whose retirer died before unlinking it: retiring
    /// and unlinking happen under this lock, so a retired table still at its path, seen with
    /// the lock held, was abandoned half-way.
    pub(crate) fn revive_abandoned(&self) -> Result<()> {
        let r = self.region;
        if r.retired() && r.still_at_path()? {
            r.header().retired.store(0, SeqCst);
        }
        Ok(())
    }

    /// The last owner's way out: retires and unlinks the table unless a live process still
    /// has a token request in it. Retires *before* looking at the ring: a process that claims
    /// a slot afterwards sees the mark and leaves (both sides use `SeqCst`); if the ring is in
    /// use, the mark is taken back. True when the table was retired.
    pub(crate) fn retire_unless_in_use(&self, liveness: &impl Liveness) -> Result<bool> {
        let r = self.region;
        r.header().retired.store(1, SeqCst);
        if r.ring().has_live_requests(liveness) {
            r.header().retired.store(0, SeqCst); // still in use: keep it
            return Ok(false);
        }
        self.retire_and_unlink()?;
        Ok(true)
    }

    /// Marks the table retired and unlinks it if the path still names it.
    pub(crate) fn retire_and_unlink(&self) -> Result<()> {
        let r = self.region;
        r.header().retired.store(1, SeqCst);
        if r.still_at_path()? {
            match sys::unlink_at(r.dir.as_fd(), &r.name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // A shared table in a sticky directory (/dev/shm, /tmp) created by another
                // user: only its owner (or root) may unlink it. It stays behind retired and
                // harmless: the next user revives it (`revive_abandoned`), and `lockticket
                // clean` run by its owner removes it.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(io_err(&r.path, crate::error::IoOp::RemoveTable)(e)),
            }
        }
        Ok(())
    }
}
