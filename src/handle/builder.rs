//! [`Builder`]: a handle's options, each with a sensible default, and opening the handle.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicPtr;

use crate::error::{Error, Result};
use crate::fairness::Fairness;
use crate::layout::{self, Geometry};
use crate::region::Create;
use crate::{payload, sys};

use super::LockTicket;

impl LockTicket {
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
