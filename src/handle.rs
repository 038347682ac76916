//! The public handle: options, opening, the mapped table, payload and status calls.
//!
//! `LockTicket`'s methods live in three files, one `impl` block per concern:
//! * here: [`Builder`], opening, the mapped table (`table`, `remap`, `open_or_create`,
//!   `install`), the payload calls and `status`;
//! * `src/main_lock.rs`: `main_lock` and [`MainGuard`](crate::MainGuard);
//! * `src/token.rs`: the `token_lock*` calls, waiting for a grant, and
//!   [`TokenGuard`](crate::TokenGuard).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering::*};
use std::sync::{Arc, Mutex};

use crate::Fairness;
use crate::error::{Error, Result};
use crate::layout::{self, Geometry};
use crate::main_lock::MainGuard;
use crate::region::{Create, Region};
use crate::ring::Broken;
use crate::share::Share;
use crate::token::TokenGuard;
use crate::{payload, sys};

/// How many times a cold path opens the table again when it was removed, replaced or retired
/// under it before giving up.
pub(crate) const REOPEN_ATTEMPTS: usize = 64;

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
    /// Every table this handle mapped. Boxes are never freed before the handle, so references
    /// handed out (guards, `current`) stay valid; replaced tables are neutered instead.
    #[allow(clippy::vec_box)] // the boxes give each region an address that never moves
    pub(crate) regions: Mutex<Vec<Box<Region>>>,
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
    /// Takes the exclusive token (like [`token_lock`](Self::token_lock)) with a guard that
    /// owns a reference to the handle: it can be returned from a function or kept in a struct
    /// without a lifetime.
    ///
    /// ```
    /// use std::sync::Arc;
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-owned-{}", std::process::id());
    /// let lt = Arc::new(lockticket::LockTicket::builder(&name).directory(&dir).open()?);
    /// struct Job {
    ///     _owner: lockticket::OwnedMainGuard,
    ///     token: lockticket::OwnedTokenGuard,
    /// }
    /// let job = Job { _owner: lt.main_lock_owned(lockticket::Share::Shared)?, token: lt.token_lock_owned()? };
    /// assert!(!job.token.previous_holder_died());
    /// # Ok(()) }
    /// ```
    pub fn token_lock_owned(self: &Arc<Self>) -> Result<crate::OwnedTokenGuard> {
        let guard = self.token_lock()?;
        // SAFETY: the guard borrows `self` and a region in a Box that `self.regions` owns and
        // frees only when the handle is dropped. The owned guard keeps an `Arc` of the handle
        // in a field declared after the guard, so the guard is dropped (released) before that
        // `Arc`, hence before the handle: the borrow never outlives what it points to.
        let guard = unsafe { std::mem::transmute::<TokenGuard<'_>, TokenGuard<'static>>(guard) };
        Ok(crate::OwnedTokenGuard {
            guard: Some(guard),
            lt: Arc::clone(self),
        })
    }

    /// Joins the table (like [`main_lock`](Self::main_lock)) with a guard that owns a
    /// reference to the handle (see [`token_lock_owned`](Self::token_lock_owned)).
    pub fn main_lock_owned(self: &Arc<Self>, share: Share) -> Result<crate::OwnedMainGuard> {
        let guard = self.main_lock(share)?;
        // SAFETY: as in `token_lock_owned`: the owned guard drops this guard before the `Arc`
        // that keeps the handle (and the region the guard borrows) alive.
        let guard = unsafe { std::mem::transmute::<MainGuard<'_>, MainGuard<'static>>(guard) };
        Ok(crate::OwnedMainGuard {
            guard: Some(guard),
            lt: Arc::clone(self),
        })
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

/// Options for [`LockTicket`], each with a sensible default.
///
/// ```
/// # fn main() -> lockticket::Result<()> {
/// let dir = std::env::temp_dir();
/// let lt = lockticket::LockTicket::builder("builder-doc")
///     .permissions(0o600)
///     .ring_capacity(64)
///     .payload_capacity(1024)
///     .directory(&dir)
///     .open()?;
/// assert!(lt.path().starts_with(&dir));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    name_or_path: PathBuf,
    permissions: u32,
    ring_capacity: u32,
    member_capacity: u32,
    proc_capacity: u32,
    payload_capacity: u64,
    directory: Option<PathBuf>,
    keep: bool,
    fairness: Option<Fairness>,
}

impl Builder {
    /// Keep the table — and its payload — after the last main-lock owner leaves, so that a
    /// later run (the next cron job) finds the value this one left (default: the last owner
    /// out removes the file). `lockticket clean NAME` removes a kept table; a later owner's
    /// [`MainGuard::reclaimed`](crate::MainGuard::reclaimed) stays false for a table left
    /// this way (nobody died).
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-keep-{}", std::process::id());
    /// let open = || lockticket::LockTicket::builder(&name).directory(&dir).keep(true).open();
    /// let run1 = open()?;
    /// let owner = run1.main_lock(lockticket::Share::Exclusive)?;
    /// run1.set_payload(b"last processed: 17")?;
    /// owner.unlock()?; // the table stays
    /// drop(run1);
    ///
    /// let run2 = open()?; // a later run
    /// let owner = run2.main_lock(lockticket::Share::Exclusive)?;
    /// assert_eq!(run2.payload()?, b"last processed: 17");
    /// assert!(!owner.reclaimed());
    /// # drop(owner); std::fs::remove_file(run2.path()).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// The table's [`Fairness`]: strict FIFO (the default for a new table) or a bounded
    /// bypass, chosen at creation and recorded in the table. Without this option a handle
    /// takes the mode of the table it finds; with it, a table created with another mode is
    /// refused with [`Error::FairnessMismatch`] naming both.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-fairness-{}", std::process::id());
    /// use lockticket::{Fairness, LockTicket, Share};
    ///
    /// let lt = LockTicket::builder(&name).directory(&dir).fairness(Fairness::bounded()).open()?;
    /// let _owner = lt.main_lock(Share::Exclusive)?; // creates it bounded
    /// drop(lt.token_lock()?);
    ///
    /// let strict = LockTicket::builder(&name).directory(&dir).fairness(Fairness::Strict).open()?;
    /// assert!(matches!(
    ///     strict.main_lock(Share::Shared),
    ///     Err(lockticket::Error::FairnessMismatch { .. })
    /// ));
    /// # Ok(()) }
    /// ```
    pub fn fairness(mut self, fairness: Fairness) -> Self {
        self.fairness = Some(fairness);
        self
    }

    /// File mode of the table (default `0o600`). Wider modes let other users share the lock;
    /// an existing table that grants more than this is refused ("doubtful permissions").
    pub fn permissions(mut self, mode: u32) -> Self {
        self.permissions = mode;
        self
    }

    /// Token slots: how many requests can be queued at once (default 1024; rounded up to a
    /// power of two, 2 to 65536). More requests than slots wait for a free slot.
    pub fn ring_capacity(mut self, slots: u32) -> Self {
        self.ring_capacity = slots;
        self
    }

    /// Main-lock registry entries: how many processes can hold the shared main lock at once
    /// (default 1024, at most 4096).
    pub fn member_capacity(mut self, entries: u32) -> Self {
        self.member_capacity = entries;
        self
    }

    /// Process-table entries: how many processes (more exactly, handles) can use the table
    /// at once, each registered once, on its first use (default 1024, at most 32768). One
    /// more gets [`Error::ProcessTableFull`].
    pub fn process_capacity(mut self, entries: u32) -> Self {
        self.proc_capacity = entries;
        self
    }

    /// Payload capacity in bytes (default 4096, at most 16 MiB).
    pub fn payload_capacity(mut self, bytes: usize) -> Self {
        self.payload_capacity = bytes as u64;
        self
    }

    /// Directory for a table given by *name* (default: the first of `/dev/shm`, `/run/shm`,
    /// `/run`, `/tmp` that is writable and memory-backed). Ignored for paths.
    pub fn directory(mut self, dir: impl AsRef<Path>) -> Self {
        self.directory = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Resolves the path and checks the options. Creates nothing.
    pub fn open(self) -> Result<LockTicket> {
        if self.permissions & !0o777 != 0 || self.permissions & 0o600 != 0o600 {
            return Err(Error::InvalidOption(format!(
                "permissions {:04o}: give permission bits (at most 0o777) that include owner \
                 read and write (0o600)",
                self.permissions
            )));
        }
        let ring = self.ring_capacity.max(layout::MIN_RING_CAPACITY);
        if ring > layout::MAX_RING_CAPACITY {
            return Err(Error::InvalidOption(format!(
                "ring_capacity {ring}: at most {}",
                layout::MAX_RING_CAPACITY
            )));
        }
        if self.member_capacity == 0 || self.member_capacity > layout::MAX_MEMBER_CAPACITY {
            return Err(Error::InvalidOption(format!(
                "member_capacity {}: 1 to {}",
                self.member_capacity,
                layout::MAX_MEMBER_CAPACITY
            )));
        }
        if self.proc_capacity == 0 || self.proc_capacity > layout::MAX_PROC_CAPACITY {
            return Err(Error::InvalidOption(format!(
                "process_capacity {}: 1 to {}",
                self.proc_capacity,
                layout::MAX_PROC_CAPACITY
            )));
        }
        if self.payload_capacity == 0 || self.payload_capacity > layout::MAX_PAYLOAD_CAPACITY {
            return Err(Error::InvalidOption(format!(
                "payload_capacity {}: 1 to {} bytes",
                self.payload_capacity,
                layout::MAX_PAYLOAD_CAPACITY
            )));
        }
        let fairness = self.fairness.unwrap_or_default();
        let Some(fairness_code) = fairness.encode() else {
            return Err(Error::InvalidOption(format!(
                "fairness {fairness}: a bounded bypass needs a bound from 1 µs to {} s",
                u32::MAX / 1_000_000
            )));
        };
        let path = crate::path::resolve(&self.name_or_path, self.directory.as_deref())?;
        let geometry = Geometry {
            ring_capacity: ring.next_power_of_two(),
            member_capacity: self.member_capacity,
            proc_capacity: self.proc_capacity,
            payload_capacity: self.payload_capacity,
            payload_region_len: payload::region_len(self.payload_capacity),
        };
        let creator = sys::current_identity();
        Ok(LockTicket {
            path,
            create: Create {
                permissions: self.permissions,
                geometry,
                main_mode: 0,
                fairness: fairness_code,
            },
            fairness: self.fairness,
            creator,
            creator_pidfd: sys::pidfd_open(creator.0),
            current: AtomicPtr::new(std::ptr::null_mut()),
            regions: Mutex::new(Vec::new()),
            retire_pending: std::sync::atomic::AtomicBool::new(false),
            keep: self.keep,
            anchor: std::sync::OnceLock::new(),
            lock_file_path: std::sync::OnceLock::new(),
        })
    }
}

/// The guardian process of [`LockTicket::hold_across_exec`], which keeps this process's
/// registration alive across `exec`. Dropped (when `exec` failed), it kills and reaps the
/// guardian; after a successful `exec` nothing drops it, and the guardian lives exactly as
/// long as the program.
///
/// ```no_run
/// # fn main() -> lockticket::Result<()> {
/// let lt = lockticket::LockTicket::open("myapp")?;
/// let guardian = lt.hold_across_exec()?;
/// println!("guardian: {:?}", guardian.pid());
/// drop(guardian); // not exec'ing after all: the guardian ends
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ExecGuardian {
    pid: Option<u32>,
}

impl ExecGuardian {
    /// The guardian's PID; `None` where no guardian is needed (no OFD locks on this system:
    /// the registration is judged by PID and start time, which `exec` keeps).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

impl Drop for ExecGuardian {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            sys::end_child(pid);
        }
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

    /// A builder for a handle with non-default options.
    pub fn builder(name_or_path: impl AsRef<Path>) -> Builder {
        Builder {
            name_or_path: name_or_path.as_ref().to_path_buf(),
            permissions: 0o600,
            ring_capacity: layout::DEFAULT_RING_CAPACITY,
            member_capacity: layout::DEFAULT_MEMBER_CAPACITY,
            proc_capacity: layout::DEFAULT_PROC_CAPACITY,
            payload_capacity: layout::DEFAULT_PAYLOAD_CAPACITY as usize as u64,
            directory: None,
            keep: false,
            fairness: None,
        }
    }

    /// Keeps this process's registration in the table — and so its tokens and main lock —
    /// alive across `exec`, until the program it execs exits, and no longer: for a process
    /// that holds a token and then execs the program that is to hold it (`lockticket exec
    /// -F`).
    ///
    /// It forks a *guardian*: a tiny child that keeps the descriptor whose OFD lock vouches
    /// for the registration (and nothing else: its standard streams are /dev/null), ignores
    /// the signals sent to whole process groups, and is killed by the kernel when the calling
    /// thread — after `exec`, the program — ends (`PR_SET_PDEATHSIG`). The registration's
    /// descriptor stays close-on-exec, so the program and the children it starts never hold
    /// it: the lock ends with the program, not with its last background child. The program
    /// has one more child process, which never exits before it (a program that waits for
    /// *all* its children to end would wait for it).
    ///
    /// Call it from a **single-threaded** process, right before `exec` (the death signal
    /// follows the thread that forked the guardian): with more threads it fails with
    /// [`Error::NotSingleThreaded`]. If `exec` fails, drop the returned [`ExecGuardian`]: it
    /// ends the guardian, and the registration is this process's again.
    ///
    /// ```no_run
    /// use std::os::unix::process::CommandExt;
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::LockTicket::open("myapp")?;
    /// let token = lt.token_lock()?;
    /// let guardian = lt.hold_across_exec()?;
    /// let err = std::process::Command::new("make").exec(); // returns only on failure
    /// drop(guardian);
    /// drop(token);
    /// eprintln!("cannot run make: {err}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn hold_across_exec(&self) -> Result<ExecGuardian> {
        let table = self.table()?;
        if let Some(threads) = sys::thread_count()
            && threads > 1
        {
            return Err(Error::NotSingleThreaded {
                path: self.path.clone(),
                threads,
            });
        }
        Ok(ExecGuardian {
            pid: table.fork_exec_guardian()?,
        })
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
        // SAFETY: `current` only ever points into a Box held by `regions`, and those are freed
        // only when `self` is dropped, which the borrow of `self` rules out.
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
    #[allow(clippy::vec_box)] // see `regions`
    pub(crate) fn install<'a>(
        &'a self,
        regions: &mut Vec<Box<Region>>,
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
                regions.push(Box::new(region));
                &**regions.last().expect("just pushed")
            }
        };
        for old in regions.iter() {
            if !std::ptr::eq(&**old, ptr) && old.retired() && !old.still_at_path().unwrap_or(true) {
                old.neuter();
            }
        }
        self.current.store(ptr as *mut Region, Release);
        // SAFETY: points into a Box owned by `regions`, which lives as long as `self`.
        unsafe { &*ptr }
    }
}

/// Payload and status.
impl LockTicket {
    /// Stores `value` as the table's payload (the original's `SetCustomData`). Readers see
    /// either the previous value or this one, whole; a writer killed mid-write leaves the
    /// previous value readable. Concurrent writers are serialised. A value larger than the
    /// table's payload capacity gives [`Error::PayloadTooLarge`] and changes nothing.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let name = format!("doc-payload-{}", std::process::id());
    /// let lt = lockticket::LockTicket::open(&name)?;
    /// let _owner = lt.main_lock(lockticket::Share::Exclusive)?;
    /// lt.set_payload(b"/var/tmp/job-17.json")?;
    /// assert_eq!(lt.payload()?, b"/var/tmp/job-17.json");
    /// lt.clear_payload()?;
    /// assert!(lt.payload()?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn set_payload(&self, value: &[u8]) -> Result<()> {
        let region = self.table()?;
        region
            .with_payload_writer(|p| p.write(value))?
            .map(drop)
            .map_err(|e| self.payload_error(e))
    }

    /// The current payload (the original's `GetCustomData`); empty when never set. Takes no
    /// lock: a complete snapshot, possibly already replaced by a newer one.
    pub fn payload(&self) -> Result<Vec<u8>> {
        self.payload_value().map(|v| v.bytes)
    }

    /// The current payload and its generation (incremented by every write).
    pub fn payload_with_generation(&self) -> Result<(Vec<u8>, u64)> {
        self.payload_value().map(|v| (v.bytes, v.generation))
    }

    fn payload_value(&self) -> Result<payload::PayloadValue> {
        self.table()?
            .payload()
            .read()
            .map_err(|e| self.payload_error(e))
    }

    /// Empties the payload (the original's `SetCustomData(undef)`).
    pub fn clear_payload(&self) -> Result<()> {
        self.set_payload(&[])
    }

    /// Stores a plain-old-data value as the payload.
    pub fn set_payload_pod<T: bytemuck::Pod>(&self, value: &T) -> Result<()> {
        self.set_payload(bytemuck::bytes_of(value))
    }

    /// Reads a plain-old-data value; `None` when the payload is empty, an error when its size
    /// is not `size_of::<T>()`.
    pub fn payload_pod<T: bytemuck::Pod>(&self) -> Result<Option<T>> {
        let bytes = self.payload()?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() != std::mem::size_of::<T>() {
            return Err(Error::PayloadEncoding {
                path: self.path.clone(),
                detail: format!(
                    "payload has {} bytes, {} needs {}",
                    bytes.len(),
                    std::any::type_name::<T>(),
                    std::mem::size_of::<T>()
                ),
            });
        }
        Ok(Some(bytemuck::pod_read_unaligned(&bytes)))
    }

    /// Stores a structured value (encoded with postcard).
    #[cfg(feature = "serde")]
    pub fn set_data<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(|e| Error::PayloadEncoding {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        self.set_payload(&bytes)
    }

    /// Reads a structured value stored by [`set_data`](Self::set_data); `None` when empty.
    #[cfg(feature = "serde")]
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        let bytes = self.payload()?;
        if bytes.is_empty() {
            return Ok(None);
        }
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| Error::PayloadEncoding {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    fn payload_error(&self, e: payload::PayloadError) -> Error {
        match e {
            payload::PayloadError::TooLarge { len, capacity } => Error::PayloadTooLarge {
                path: self.path.clone(),
                len,
                capacity,
            },
            payload::PayloadError::Busy { attempts } => Error::PayloadBusy {
                path: self.path.clone(),
                attempts,
            },
            other => self.corrupted(&format!("payload: {other}")),
        }
    }

    /// A snapshot of the table: owners, holders, the queue in FIFO order, counters. Never
    /// blocks the lock. Fails with [`Error::NotCreated`] when there is no table.
    pub fn status(&self) -> Result<crate::Status> {
        self.check_current_at_path()?;
        Ok(crate::status::snapshot(self.table()?))
    }
}
