//! The public handle, its builder and the lock guards.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, Ordering::*};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::layout::{self, Geometry};
use crate::liveness::{Liveness, OsLiveness, Owner};
use crate::members::{self, JoinRefused};
use crate::region::{Create, Region};
use crate::ring::{Broken, Claim, Grant, Ticket};
use crate::wait::{self, Waited};
use crate::{Share, payload, sys};

/// A handle on a lock table: the main lock, FIFO token locks and the payload.
///
/// Opening a handle creates nothing; [`main_lock`](Self::main_lock) creates the table. The
/// handle is `Send + Sync`: threads of one process queue in the same FIFO as other processes.
/// A handle inherited through `fork` works in the child: its tokens carry the child's PID and
/// name the handle's creator as parent; once that parent is gone the child's lock calls fail
/// with [`Error::ParentGone`].
pub struct LockTicket {
    path: PathBuf,
    create: Create,
    creator: (u32, u64),
    creator_pidfd: Option<OwnedFd>,
    /// The table in use: points into one of `regions`, or null before the first use.
    current: AtomicPtr<Region>,
    /// Every table this handle mapped. Boxes are never freed before the handle, so references
    /// handed out (guards, `current`) stay valid; replaced tables are neutered instead.
    #[allow(clippy::vec_box)] // the boxes give each region an address that never moves
    regions: Mutex<Vec<Box<Region>>>,
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
    payload_capacity: u64,
    directory: Option<PathBuf>,
}

impl Builder {
    /// File mode of the table (default `0o600`). Wider modes let other users share the lock;
    /// an existing table that grants more than this is refused ("doubtful permissions").
    pub fn permissions(mut self, mode: u32) -> Self {
        self.permissions = mode;
        self
    }

    /// Token slots: how many requests can be queued at once (default 256; rounded up to a
    /// power of two, 2 to 65536). More requests than slots wait for a free slot.
    pub fn ring_capacity(mut self, slots: u32) -> Self {
        self.ring_capacity = slots;
        self
    }

    /// Main-lock registry entries: how many processes can hold the shared main lock at once
    /// (default 64, at most 4096).
    pub fn member_capacity(mut self, entries: u32) -> Self {
        self.member_capacity = entries;
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
        if self.payload_capacity == 0 || self.payload_capacity > layout::MAX_PAYLOAD_CAPACITY {
            return Err(Error::InvalidOption(format!(
                "payload_capacity {}: 1 to {} bytes",
                self.payload_capacity,
                layout::MAX_PAYLOAD_CAPACITY
            )));
        }
        let path = crate::path::resolve(&self.name_or_path, self.directory.as_deref())?;
        let geometry = Geometry {
            ring_capacity: ring.next_power_of_two(),
            member_capacity: self.member_capacity,
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
            },
            creator,
            creator_pidfd: sys::pidfd_open(creator.0),
            current: AtomicPtr::new(std::ptr::null_mut()),
            regions: Mutex::new(Vec::new()),
        })
    }
}

/// How long a token request may wait.
#[derive(Clone, Copy, Debug)]
enum Patience {
    /// Not at all.
    Try,
    /// Until this instant.
    Until(Instant),
    /// Forever.
    Forever,
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
            payload_capacity: layout::DEFAULT_PAYLOAD_CAPACITY as usize as u64,
            directory: None,
        }
    }

    /// The table's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

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
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let mut reclaimed = false;
        for _ in 0..64 {
            let (region, created) = match Region::open_existing(&self.path, self.perms())? {
                Some(r) => (r, false),
                None => {
                    let mode = match share {
                        Share::Exclusive => layout::MAIN_EXCLUSIVE,
                        Share::Shared => layout::MAIN_SHARED,
                    };
                    match Region::create(
                        &self.path,
                        Create {
                            main_mode: mode,
                            ..self.create
                        },
                    )? {
                        Some(r) => (r, true),
                        None => continue, // someone else created it first
                    }
                }
            };
            let cold = region.cold()?;
            if !region.still_at_path()? {
                continue; // removed or replaced while we opened it
            }
            if region.retired() {
                // We hold the flock and the file is still there: whoever retired it died
                // before unlinking (retiring and unlinking happen under one flock).
                region.header().retired.store(0, SeqCst);
            }
            let census = members::census(region.members(), &OsLiveness);
            if census.live.is_empty() && !created {
                reclaimed = true;
                if !region.ring().has_live_requests(&OsLiveness) {
                    // An orphan: start afresh rather than trust what dead owners left.
                    cold.retire_and_unlink()?;
                    continue;
                }
            }
            let index = members::join(
                region.members(),
                &census.live,
                pid,
                start,
                share,
                sys::now_ns(),
            )
            .map_err(|refused| self.refused(refused, pid, region.geometry()))?;
            drop(cold);
            let region = self.install(&mut regions, region);
            return Ok(MainGuard {
                lt: self,
                region,
                index,
                pid,
                start,
                created,
                reclaimed,
            });
        }
        Err(Error::Corrupted {
            path: self.path.clone(),
            detail: "the table kept changing under us (created and removed 64 times)".into(),
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

    fn perms(&self) -> u32 {
        self.create.permissions
    }

    // -----------------------------------------------------------------------------------------
    // Token lock.

    /// Takes the exclusive token, waiting in FIFO order (the original's `TokenLock()`).
    #[inline]
    pub fn token_lock(&self) -> Result<TokenGuard<'_>> {
        match self.fast(Share::Exclusive) {
            Fast::Granted(g) => Ok(g),
            other => self.acquire_blocking(Share::Exclusive, other),
        }
    }

    /// Takes a shared (reader) token, waiting in FIFO order. Consecutive shared requests hold
    /// together; a shared request behind a queued exclusive one waits for it.
    #[inline]
    pub fn token_lock_shared(&self) -> Result<TokenGuard<'_>> {
        match self.fast(Share::Shared) {
            Fast::Granted(g) => Ok(g),
            other => self.acquire_blocking(Share::Shared, other),
        }
    }

    /// Takes the exclusive token if that is possible without waiting; never blocks and leaves
    /// no trace in the queue when it fails.
    pub fn try_token_lock(&self) -> Result<Option<TokenGuard<'_>>> {
        self.acquire(Share::Exclusive, Patience::Try)
    }

    /// Takes a shared token if that is possible without waiting.
    pub fn try_token_lock_shared(&self) -> Result<Option<TokenGuard<'_>>> {
        self.acquire(Share::Shared, Patience::Try)
    }

    /// Takes the exclusive token, waiting at most `timeout`. `Ok(None)` on timeout; the
    /// request then leaves the queue without a trace.
    pub fn token_lock_timeout(&self, timeout: Duration) -> Result<Option<TokenGuard<'_>>> {
        self.acquire(Share::Exclusive, patience_for(timeout))
    }

    /// Takes a shared token, waiting at most `timeout`.
    pub fn token_lock_shared_timeout(&self, timeout: Duration) -> Result<Option<TokenGuard<'_>>> {
        self.acquire(Share::Shared, patience_for(timeout))
    }

    #[cold]
    fn acquire_blocking<'a>(&'a self, share: Share, fast: Fast<'a>) -> Result<TokenGuard<'a>> {
        let got = match fast {
            Fast::Granted(g) => Some(g),
            Fast::Claimed(region, tk) => {
                self.after_claim(region, tk, share, Patience::Forever, self.creator.0)?
            }
            Fast::Missed => self.acquire_slow(share, Patience::Forever)?,
        };
        match got {
            Some(g) => Ok(g),
            None => Err(self.corrupted("a request without deadline returned without a grant")),
        }
    }

    /// Takes a token within `patience`.
    #[inline]
    fn acquire(&self, share: Share, patience: Patience) -> Result<Option<TokenGuard<'_>>> {
        match self.fast(share) {
            Fast::Granted(g) => Ok(Some(g)),
            Fast::Claimed(region, tk) => {
                self.after_claim(region, tk, share, patience, self.creator.0)
            }
            Fast::Missed => self.acquire_slow(share, patience),
        }
    }

    /// The fast path: one claim attempt on the mapped table, granted at once. Everything else
    /// (waiting, a full ring, a retired table, a forked child) goes to the cold paths.
    #[inline(always)]
    fn fast(&self, share: Share) -> Fast<'_> {
        let (pid, start) = sys::current_identity();
        if pid != self.creator.0 {
            return Fast::Missed; // a forked child: the slow path checks the parent
        }
        let Some(region) = self.mapped() else {
            return Fast::Missed;
        };
        let ring = region.ring();
        let Claim::Claimed(tk) = ring.try_claim(share, pid, start) else {
            return Fast::Missed;
        };
        ring.publish(tk, start, pid, sys::coarse_now_ns());
        if ring.granted_at_once(tk) && !region.retired() {
            return Fast::Granted(self.holding(region, tk, share, pid));
        }
        Fast::Claimed(region, tk)
    }

    /// The guard of a granted request, marked as holding.
    #[inline(always)]
    fn holding<'a>(
        &'a self,
        region: &'a Region,
        tk: Ticket,
        share: Share,
        pid: u32,
    ) -> TokenGuard<'a> {
        let died = region.ring().mark_holding(tk);
        TokenGuard {
            lt: self,
            region,
            tk,
            share,
            pid,
            died,
        }
    }

    #[cold]
    fn acquire_slow(&self, share: Share, patience: Patience) -> Result<Option<TokenGuard<'_>>> {
        let (pid, start) = sys::current_identity();
        self.check_parent(pid)?;
        let deadline = match patience {
            Patience::Until(d) => Some(d),
            Patience::Try | Patience::Forever => None,
        };
        let region = self.table()?;
        let ring = region.ring();
        let tk = if let Patience::Try = patience {
            if share == Share::Exclusive && !ring.is_idle() {
                return Ok(None);
            }
            match ring.try_claim(share, pid, start) {
                Claim::Claimed(tk) => tk,
                Claim::Broken(b) => return Err(self.broken(b)),
                Claim::Full | Claim::Retry => return Ok(None),
            }
        } else {
            let claimed = wait::claim(ring, share, pid, start, deadline, &OsLiveness, || {
                self.check_parent(pid)
            });
            match claimed {
                Ok(Some(tk)) => tk,
                Ok(None) => return Ok(None),
                Err(w) => return Err(self.wait_error(w)),
            }
        };
        self.claimed(region, tk, share, patience, pid, start)
    }

    /// Continues after a successful claim: publish, re-check the table, wait for the grant.
    #[inline]
    fn claimed<'a>(
        &'a self,
        region: &'a Region,
        tk: Ticket,
        share: Share,
        patience: Patience,
        pid: u32,
        start: u64,
    ) -> Result<Option<TokenGuard<'a>>> {
        region
            .ring()
            .publish(tk, start, self.creator.0, sys::coarse_now_ns());
        self.after_claim(region, tk, share, patience, pid)
    }

    /// After a published claim: re-check the table, then wait for the grant.
    #[cold]
    fn after_claim<'a>(
        &'a self,
        region: &'a Region,
        tk: Ticket,
        share: Share,
        patience: Patience,
        pid: u32,
    ) -> Result<Option<TokenGuard<'a>>> {
        let ring = region.ring();
        if region.retired() {
            // The last owner retired this table after we looked: leave it, use the new one.
            let _ = ring.release(tk);
            return self.acquire_slow(share, patience);
        }
        let first = ring.grant(tk, share);
        self.wait_claimed(region, tk, share, patience, pid, first)
    }

    #[cold]
    fn wait_claimed<'a>(
        &'a self,
        region: &'a Region,
        tk: Ticket,
        share: Share,
        patience: Patience,
        pid: u32,
        first: Result<Grant, Broken>,
    ) -> Result<Option<TokenGuard<'a>>> {
        let ring = region.ring();
        let deadline = match patience {
            Patience::Until(d) => Some(d),
            Patience::Try | Patience::Forever => None,
        };
        let outcome = match (patience, first) {
            (_, Ok(Grant::Granted)) => Waited::Granted,
            (_, Err(b)) => Waited::Broken(b),
            (Patience::Try, Ok(Grant::Waiting { .. })) => Waited::TimedOut,
            (_, Ok(Grant::Waiting { .. })) => {
                wait::until_granted(ring, tk, share, deadline, &OsLiveness, || {
                    self.check_parent(pid)
                })
            }
        };
        let outcome = match outcome {
            Waited::Granted if pid != self.creator.0 => match self.check_parent(pid) {
                Ok(()) => Waited::Granted,
                Err(e) => Waited::Check(e),
            },
            other => other,
        };
        match outcome {
            Waited::Granted => {
                ring.set_since(tk, sys::coarse_now_ns()); // now "held since", for status
                Ok(Some(self.holding(region, tk, share, pid)))
            }
            Waited::TimedOut => {
                ring.release(tk).map_err(|b| self.broken(b))?;
                Ok(None)
            }
            other => {
                let _ = ring.release(tk);
                Err(self.wait_error(other))
            }
        }
    }

    fn wait_error(&self, w: Waited<Error>) -> Error {
        match w {
            Waited::Broken(b) => self.broken(b),
            Waited::Check(e) => e,
            Waited::Granted | Waited::TimedOut => self.corrupted("unexpected wait outcome"),
        }
    }

    fn broken(&self, b: Broken) -> Error {
        self.corrupted(&b.0)
    }

    fn corrupted(&self, detail: &str) -> Error {
        Error::Corrupted {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// In a forked child: fails once the handle's creator has exited.
    #[inline]
    fn check_parent(&self, pid: u32) -> Result<()> {
        if pid == self.creator.0 {
            return Ok(());
        }
        let gone = match &self.creator_pidfd {
            Some(fd) => sys::pidfd_exited(fd),
            None => !OsLiveness.is_alive(Owner {
                pid: self.creator.0,
                start: Some(self.creator.1),
                start_fp: None,
            }),
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
            None => self.remap(),
        }
    }

    /// The table in use, if it is mapped and not retired.
    #[inline]
    fn mapped(&self) -> Option<&Region> {
        let p = self.current.load(Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: `current` only ever points into a Box held by `regions`, and those are freed
        // only when `self` is dropped, which the borrow of `self` rules out.
        let r = unsafe { &*p };
        (!r.retired()).then_some(r)
    }

    #[cold]
    fn remap(&self) -> Result<&Region> {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..64 {
            let Some(region) = Region::open_existing(&self.path, self.perms())? else {
                return Err(Error::NotCreated {
                    path: self.path.clone(),
                });
            };
            if region.retired() {
                // Retired and being removed, or its retirer died: the flock tells which.
                let cold = region.cold()?;
                if region.retired() && region.still_at_path()? {
                    region.header().retired.store(0, SeqCst);
                }
                drop(cold);
                if region.retired() {
                    continue;
                }
            }
            return Ok(self.install(&mut regions, region));
        }
        Err(Error::Removed {
            path: self.path.clone(),
        })
    }

    /// Makes `region` the table in use (or keeps the current mapping when it is the same
    /// file), and frees the resources of tables that were removed.
    #[allow(clippy::vec_box)] // see `regions`
    fn install<'a>(&'a self, regions: &mut Vec<Box<Region>>, region: Region) -> &'a Region {
        let same = regions
            .iter()
            .find(|r| r.same_file(&region) && !r.retired());
        let ptr: *const Region = match same {
            Some(r) => &**r,
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
            .with_payload_writer(|p| p.write(value))
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
            other => self.corrupted(&format!("payload: {other}")),
        }
    }

    /// A snapshot of the table: owners, holders, the queue in FIFO order, counters. Never
    /// blocks the lock. Fails with [`Error::NotCreated`] when there is no table.
    pub fn status(&self) -> Result<crate::Status> {
        Ok(crate::status::snapshot(self.table()?))
    }
}

/// What the fast path got.
enum Fast<'a> {
    /// The token.
    Granted(TokenGuard<'a>),
    /// A published claim that must wait (or a retired table to leave).
    Claimed(&'a Region, Ticket),
    /// Nothing: take the slow path.
    Missed,
}

fn patience_for(timeout: Duration) -> Patience {
    match Instant::now().checked_add(timeout) {
        Some(d) => Patience::Until(d),
        None => Patience::Forever,
    }
}

/// A registration as owner of the table (the main lock). Leaves on [`unlock`](Self::unlock)
/// or drop; the last owner out removes the table. Dropped in a forked child, it does nothing.
#[must_use = "the main lock is released when the guard is dropped"]
pub struct MainGuard<'a> {
    lt: &'a LockTicket,
    region: &'a Region,
    index: usize,
    pid: u32,
    start: u64,
    created: bool,
    reclaimed: bool,
}

impl std::fmt::Debug for MainGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainGuard")
            .field("path", &self.lt.path)
            .field("pid", &self.pid)
            .field("created", &self.created)
            .field("reclaimed", &self.reclaimed)
            .finish_non_exhaustive()
    }
}

impl MainGuard<'_> {
    /// True when this call created the table.
    pub fn created(&self) -> bool {
        self.created
    }

    /// True when the table existed but all its registered owners were dead, and was taken
    /// over (the original refused such "orphan" tables).
    pub fn reclaimed(&self) -> bool {
        self.reclaimed
    }

    /// Leaves (the original's `MainUnlock()`); the last owner removes the table.
    pub fn unlock(self) -> Result<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.leave()
    }

    fn leave(&mut self) -> Result<()> {
        if sys::current_identity().0 != self.pid {
            return Ok(()); // a forked child: the registration is the parent's
        }
        let region = self.region;
        let cold = region.cold()?;
        if !members::leave(region.members(), self.index, self.pid, self.start) {
            return Err(self
                .lt
                .corrupted("our main-lock registration was removed from the table"));
        }
        if members::census(region.members(), &OsLiveness)
            .live
            .is_empty()
        {
            // Last one out. Retire before looking for token users: a process that claims a
            // slot afterwards sees the mark and leaves (both sides use SeqCst).
            region.header().retired.store(1, SeqCst);
            if region.ring().has_live_requests(&OsLiveness) {
                region.header().retired.store(0, SeqCst); // still in use: keep it
            } else {
                cold.retire_and_unlink()?;
            }
        }
        Ok(())
    }
}

impl Drop for MainGuard<'_> {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}

/// A held token. Released on [`unlock`](Self::unlock) or drop (the original's
/// `TokenUnlock()`); dropped in a forked child, it does nothing.
#[must_use = "the token is released when the guard is dropped"]
pub struct TokenGuard<'a> {
    lt: &'a LockTicket,
    region: &'a Region,
    tk: Ticket,
    share: Share,
    pid: u32,
    died: bool,
}

impl std::fmt::Debug for TokenGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGuard")
            .field("path", &self.lt.path)
            .field("share", &self.share)
            .field("ticket", &self.tk.t)
            .field("pid", &self.pid)
            .field("previous_holder_died", &self.died)
            .finish()
    }
}

impl TokenGuard<'_> {
    /// True when the previous holder died while holding the token (like `EOWNERDEAD`): the
    /// state it protected may be half-updated; repair it before relying on it.
    pub fn previous_holder_died(&self) -> bool {
        self.died
    }

    /// Exclusive or shared.
    pub fn share(&self) -> Share {
        self.share
    }

    /// Releases the token. Fails only if the table was corrupted meanwhile.
    pub fn unlock(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        this.release()
    }

    #[inline]
    fn release(&self) -> Result<()> {
        if sys::current_identity().0 != self.pid {
            return Ok(()); // a forked child: the token is the parent's
        }
        self.region
            .ring()
            .release(self.tk)
            .map_err(|b| self.lt.broken(b))
    }
}

impl Drop for TokenGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let _ = self.release();
    }
}
