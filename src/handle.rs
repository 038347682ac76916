//! The public handle, [`LockTicket`]: what it holds, opening it, and the checks every call
//! shares.
//!
//! `LockTicket`'s methods live with the concern they serve, one `impl` block per file:
//! * here: `open`, `path`, the parent check and the error helpers;
//! * `handle/builder.rs`: `builder` and [`Builder`];
//! * `handle/table.rs`: the mapped table (`table`, `mapped`, `remap`, `open_or_create`,
//!   `install`);
//! * `handle/exec.rs`: `hold_across_exec` and [`ExecGuardian`];
//! * `handle/payload.rs`: the payload calls (`set_payload`, `payload`, `set_data`, …);
//! * `src/status.rs`: `status`;
//! * `src/main_lock.rs`: `main_lock` and [`MainGuard`](crate::MainGuard);
//! * `src/token.rs`: the `token_lock*` short forms and [`TokenGuard`](crate::TokenGuard);
//! * `src/request.rs`: `request`, `token_lock_until*`, `with_token*`;
//! * `src/owned.rs`: the owned guards (`token_lock_owned`, `main_lock_owned`, …);
//! * `src/async_lock.rs`: the async forms (`token_lock_async`, …);
//! * `src/fd.rs`: the descriptor form (`set_lock_file`, `lock_fd`, `unlock_fd`);
//! * `src/lock_file.rs`: the kernel lock of keyed tables and judging descriptor-form holders;
//! * `src/repair.rs`: `repair` and the automatic recovery.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering::*};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::fairness::Fairness;
use crate::region::{Create, Region};
use crate::ring::Broken;
use crate::sys;

mod builder;
mod exec;
mod payload;
mod table;

pub use builder::Builder;
pub use exec::ExecGuardian;
pub(crate) use table::REOPEN_ATTEMPTS;

/// A handle on a lock table: the main lock, FIFO token locks and the payload.
///
/// Opening a handle creates nothing; [`main_lock`](Self::main_lock) creates the table. The
/// handle is `Send + Sync`: threads of one process queue in the same FIFO as other processes.
/// A handle inherited through `fork` works in the child: its tokens carry the child's PID and
/// name the handle's creator as parent; once that parent is gone the child's lock calls fail
/// with [`Error::ParentGone`].
pub struct LockTicket {
    pub(crate) path: PathBuf,
    pub(crate) create: Create,
    pub(crate) creator: (u32, u64),
    pub(crate) creator_pidfd: Option<OwnedFd>,
    /// The table in use: points into one of `regions`, or null before the first use.
    pub(crate) current: AtomicPtr<Region>,
    /// Every table this handle mapped. They are never freed before the handle, so references
    /// handed out (guards, `current`) stay valid; replaced tables are neutered instead. An
    /// `Arc` gives each an address that never moves, and lets an owned guard keep the table
    /// it holds a token of alive by itself (see `region_arc`).
    pub(crate) regions: Mutex<Vec<Arc<Region>>>,
    /// The last main-lock owner left while this process still had token requests in the
    /// table: retire it when the handle goes (see `MainGuard::unlock`), so that no drop order
    /// leaves the file behind.
    pub(crate) retire_pending: std::sync::atomic::AtomicBool,
    /// Keep the table after the last owner leaves ([`Builder::keep`]).
    pub(crate) keep: bool,
    /// The fairness asked for ([`Builder::fairness`]); `None`: the table's.
    pub(crate) fairness: Option<Fairness>,
    /// A read-only description of the lock file the table is keyed by (see
    /// [`LockTicket::set_lock_file`]), handed to every table this handle maps.
    pub(crate) anchor: std::sync::OnceLock<std::fs::File>,
    /// The lock file's path as given to [`LockTicket::set_lock_file`] (made absolute), for
    /// messages and to open it again where `/proc` is missing.
    pub(crate) lock_file_path: std::sync::OnceLock<PathBuf>,
}

impl LockTicket {
    /// The `Arc` of a table this handle mapped (for an owned guard, which keeps the table it
    /// holds something in alive by itself). `None` never happens for a region the handle
    /// handed out.
    pub(crate) fn region_arc(&self, region: &Region) -> Option<Arc<Region>> {
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|r| std::ptr::eq(&***r, region))
            .cloned()
    }
}

impl Drop for LockTicket {
    fn drop(&mut self) {
        if self.keep
            || !self.retire_pending.load(Relaxed)
            || sys::current_identity().0 != self.creator.0
        {
            return; // nothing deferred, or a forked child: the table is the parent's business
        }
        // Every guard borrowed this handle, so they are all gone: retire the table unless
        // another process joined or uses it meanwhile.
        if let Some(region) = self.mapped()
            && let Ok(cold) = region.cold()
            && crate::members::census(region.members(), &region.liveness())
                .live
                .is_empty()
        {
            let _ = cold.retire_unless_in_use(&region.liveness());
        }
    }
}

impl std::fmt::Debug for LockTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockTicket")
            .field("path", &self.path)
            .field(
                "permissions",
                &format_args!("{:04o}", self.create.permissions),
            )
            .field("ring_capacity", &self.create.geometry.ring_capacity)
            .field("payload_capacity", &self.create.geometry.payload_capacity)
            .field("creator", &self.creator.0)
            .finish_non_exhaustive()
    }
}

impl LockTicket {
    /// A handle on the table `name_or_path` with default options (see [`Builder`]).
    ///
    /// A *name* (`[-_A-Za-z0-9]{1,218}`) is placed in the default directory as
    /// `lockticket-NAME.lt`; a *path* (`/…`, `./…`, `../…`) is used as given.
    pub fn open(name_or_path: impl AsRef<Path>) -> Result<LockTicket> {
        Self::builder(name_or_path).open()
    }

    /// The table's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn perms(&self) -> u32 {
        self.create.permissions
    }

    pub(crate) fn broken(&self, b: Broken) -> Error {
        self.corrupted(&b.0)
    }

    pub(crate) fn corrupted(&self, detail: &str) -> Error {
        Error::Corrupted {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// In a forked child: fails once the handle's creator has exited.
    #[inline]
    pub(crate) fn check_parent(&self, pid: u32) -> Result<()> {
        if pid == self.creator.0 {
            return Ok(());
        }
        let gone = match &self.creator_pidfd {
            Some(fd) => sys::pidfd_exited(fd),
            None => !sys::pid_alive(self.creator.0, self.creator.1),
        };
        if gone {
            return Err(Error::ParentGone {
                path: self.path.clone(),
                parent: self.creator.0,
            });
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The mapped table.
}
