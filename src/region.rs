//! The mapped table file and its typed views.
//!
//! This is where the crate's raw memory lives. A table is created in a file without a name
//! (`O_TMPFILE`), fully initialised, and only then linked to its path, so a file at a table
//! path is never half-made by us, and a creator killed half-way leaves nothing. The directory
//! a table was opened in is kept (`O_PATH`): whether its name still names the table is asked
//! of that directory, never of a path another `chdir` would resolve elsewhere. Opening never
//! follows a symlink, refuses files that grant more than the requested permissions, and
//! validates the header before mapping anything.
//!
//! This file holds [`Region`] and its views (header, ring, payload, members, processes); the
//! concerns around it live in submodules: `open` (create, open, audit, map), `register` (this
//! process's registration and the exec guardian), `cold` (the cold-path lock), `lifecycle`
//! (retire, removal, revival, neutering), `repair` (rebuilding an inconsistent ring) and
//! `kernel_locks` (which guard holds which kernel lock on a keyed table's lock file).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Mutex, MutexGuard};

use memmap2::MmapRaw;

use crate::error::{Error, Result};
use crate::fairness::Fairness;
use crate::layout::{FIXED_HEADER_SIZE, FixedHeader, Geometry, HEADER_SIZE, hot};
use crate::members::Member;
use crate::payload::{self, Payload};
use crate::procs::{ProcEntry, TableLiveness};
use crate::ring::Ring;
use crate::sys;

mod cold;
mod kernel_locks;
mod lifecycle;
mod open;
mod register;
mod repair;

pub(crate) use kernel_locks::KernelKey;
pub(crate) use open::Create;
pub(crate) use repair::Repair;
pub use repair::Repaired;

/// The header page as shared atomics. Offsets are fixed by `layout` (checked below). Private
/// to this module: the retire lifecycle is changed only through [`Region`] and [`Cold`].
#[repr(C)]
struct SharedHeader {
    fixed: [AtomicU64; 17],
    /// Non-zero once retired by the last owner.
    retired: AtomicU32,
    /// Non-zero once found removed (1) or replaced (2) under its users.
    removed: AtomicU32,
    _pad0: [u32; 28],
    /// A hint of the next ticket to hand out (see `ring`).
    tail: AtomicU64,
    _pad1: [u64; 15],
    /// Oldest unreleased ticket.
    head: AtomicU64,
    _pad2: [u64; 15],
    /// Ticket + 1 of a holder that died holding.
    dead_holder: AtomicU64,
    /// Reclaimed slot count.
    reclaimed: AtomicU64,
    /// Ring rebuilds after an inconsistency (see `Cold::repair_ring`).
    repairs: AtomicU64,
    /// The last fencing token handed out (see `Region::next_fence`).
    fence: AtomicU64,
    _pad3: [u64; 12],
    /// Bounded tables: who holds the token ahead of the queue (see `ring::bypass`).
    bypass: AtomicU32,
    /// Bounded tables: a granted request sleeps on `bypass`.
    bypass_waiters: AtomicU32,
    /// Bounded tables: the bypass holder's thread tag.
    bypass_thread: AtomicU64,
    /// Bounded tables: grants ahead of the queue.
    bypasses: AtomicU64,
    _pad4: [u64; 13],
}
const _: () = {
    assert!(core::mem::offset_of!(SharedHeader, retired) == hot::RETIRED as usize);
    assert!(core::mem::offset_of!(SharedHeader, removed) == hot::REMOVED as usize);
    assert!(core::mem::offset_of!(SharedHeader, tail) == hot::TAIL as usize);
    assert!(core::mem::offset_of!(SharedHeader, head) == hot::HEAD as usize);
    assert!(core::mem::offset_of!(SharedHeader, dead_holder) == hot::DEAD_HOLDER as usize);
    assert!(core::mem::offset_of!(SharedHeader, reclaimed) == hot::RECLAIMED as usize);
    assert!(core::mem::offset_of!(SharedHeader, repairs) == hot::REPAIRS as usize);
    assert!(core::mem::offset_of!(SharedHeader, fence) == hot::FENCE as usize);
    assert!(core::mem::offset_of!(SharedHeader, bypass) == hot::BYPASS as usize);
    assert!(core::mem::offset_of!(SharedHeader, bypass_waiters) == hot::BYPASS_WAITERS as usize);
    assert!(core::mem::offset_of!(SharedHeader, bypass_thread) == hot::BYPASS_THREAD as usize);
    assert!(core::mem::offset_of!(SharedHeader, bypasses) == hot::BYPASSES as usize);
    assert!(core::mem::size_of::<SharedHeader>() <= HEADER_SIZE as usize);
    assert!(core::mem::size_of::<[AtomicU64; 17]>() == FIXED_HEADER_SIZE);
};

/// A mapped table.
pub(crate) struct Region {
    /// The table's path, absolute (see `path::resolve`): for messages.
    path: PathBuf,
    /// The directory the table was opened in (`O_PATH`), and the table's name in it: every
    /// "does the path still name this file?" check asks through these, never through `path`,
    /// so a `chdir`, `chroot` or mount-namespace change after opening cannot make a table look
    /// removed (issue 17).
    dir: OwnedFd,
    name: CString,
    /// The cold-path lock's open file description (`flock`), `None` once neutered. The mutex
    /// also serialises this process's threads on the cold paths (flock does not: it belongs to
    /// the open file description, which they share). Never mapped (a mapping keeps its
    /// description, and so a flock on it, alive in every forked child), and replaced in a
    /// forked child before its first cold path (see [`Region::cold`]).
    file: Mutex<Option<ColdFile>>,
    map: MmapRaw,
    payload_map: MmapRaw,
    geometry: Geometry,
    fixed: FixedHeader,
    dev: u64,
    ino: u64,
    /// The ring view over `map`, built once (the lock path reuses it).
    ring: Ring<'static>,
    /// The open file description the table is mapped from, which never holds a lock (OFD or
    /// flock): liveness checks ask the kernel through it (a description's own locks never
    /// conflict with it), and new descriptions are opened from it. Pointed at /dev/null when
    /// neutered.
    probe: File,
    /// The PID of the process whose registration `reg_id` is (0: none). A forked child reads
    /// its parent's here and registers anew.
    reg_pid: AtomicU32,
    /// Our registration, as a [`Registration::word`](crate::liveness::Registration::word).
    reg_id: AtomicU64,
    /// The open file description that holds our registration's OFD lock (a forked child lets
    /// go of its copy at once: see `sys::ForkLocal`).
    reg_lock: Mutex<Option<sys::ForkLocal>>,
    /// A read-only description of the lock file this table is keyed by, holding no locks,
    /// when the handle knows it (see `LockTicket::set_lock_file`): `KIND_FD` entries are
    /// judged through it.
    anchor: std::sync::OnceLock<File>,
    /// `KIND_FD` entries found dead without an anchor: their lock-file byte was unlocked in
    /// the kernel's list of file locks after they were recorded (see
    /// `LockTicket::judge_fd_holders`).
    fd_closed: std::sync::OnceLock<Vec<(u32, u32)>>,
    /// Keyed tables: the kernel locks on the lock file that this process's guards hold
    /// (`kernel_locks`).
    kernel_locks: Mutex<Vec<kernel_locks::KernelLock>>,
}

/// The cold-path lock's description and the process that opened it.
struct ColdFile {
    file: sys::ForkLocal,
    /// A forked child (another PID) opens its own before locking.
    pid: u32,
}

impl ColdFile {
    /// A new description of the file behind `of` (opened at `path`, if /proc is missing).
    fn open(of: &File, path: &Path) -> Result<ColdFile> {
        let file = sys::reopen(of, path)
            .map_err(io_err(path, crate::error::IoOp::ReopenForColdPathLock))?;
        Ok(ColdFile {
            file: sys::ForkLocal::new(file),
            pid: sys::current_identity().0,
        })
    }
}

/// The cold-path lock of a table (see [`Region::cold`]). Unlocks on drop.
pub(crate) struct Cold<'a> {
    guard: MutexGuard<'a, Option<ColdFile>>,
    region: &'a Region,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(path: &'a Path, op: crate::error::IoOp) -> impl FnOnce(io::Error) -> Error + 'a {
    move |cause| Error::Io {
        path: path.to_path_buf(),
        op,
        cause,
    }
}

impl Region {
    /// The table's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The validated sizes.
    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The validated fixed header.
    pub(crate) fn fixed(&self) -> &FixedHeader {
        &self.fixed
    }

    /// The fairness mode the table was created with.
    pub(crate) fn fairness(&self) -> Fairness {
        Fairness::decode(self.fixed.fairness, self.fixed.bound_us)
    }

    /// Grants ahead of the queue so far (bounded tables).
    pub(crate) fn bypasses(&self) -> u64 {
        self.header().bypasses.load(Relaxed)
    }

    /// The header's shared words.
    #[inline]
    fn header(&self) -> &SharedHeader {
        // SAFETY: the mapping is at least HEADER_SIZE bytes (geometry.lock_len() includes the
        // header page), page aligned (so aligned for every atomic), lives as long as `self`,
        // and an all-bytes-valid type (atomics and integers) may alias memory other processes
        // write concurrently: all accesses that matter go through atomics.
        unsafe { &*(self.map.as_ptr() as *const SharedHeader) }
    }

    /// The main-lock registry.
    pub(crate) fn members(&self) -> &[Member] {
        let n = self.geometry.member_capacity as usize;
        // SAFETY: `lock_len` is members_offset + n * 64 bytes; members_offset is a multiple of
        // 64; Member is atomics and integers, valid for any bytes.
        unsafe {
            std::slice::from_raw_parts(
                self.map
                    .as_ptr()
                    .add(self.geometry.members_offset() as usize) as *const Member,
                n,
            )
        }
    }

    /// The process table.
    pub(crate) fn procs(&self) -> &[ProcEntry] {
        let n = self.geometry.proc_capacity as usize;
        // SAFETY: `lock_len` is procs_offset + n * 64 bytes; procs_offset is a multiple of 64;
        // ProcEntry is atomics and integers, valid for any bytes.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(self.geometry.procs_offset() as usize) as *const ProcEntry,
                n,
            )
        }
    }

    /// The description liveness checks ask the kernel through (measurements).
    #[cfg(test)]
    pub(crate) fn probe_file(&self) -> &File {
        &self.probe
    }

    /// Liveness over this table's process table, asked of the kernel.
    pub(crate) fn liveness(&self) -> TableLiveness<'_> {
        TableLiveness {
            probe: &self.probe,
            procs: self.procs(),
            procs_offset: self.geometry.procs_offset(),
            anchor: self.anchor.get(),
            closed: self.fd_closed.get().map_or(&[], Vec::as_slice),
        }
    }

    /// Records `KIND_FD` entries (index, full generation) found closed for good (their
    /// lock-file byte unlocked after they were recorded). The first record stays.
    pub(crate) fn set_fd_closed(&self, entries: Vec<(u32, u32)>) {
        let _ = self.fd_closed.set(entries);
    }

    /// The anchor on the table's lock file, if one was given. Asked on every lock and unlock
    /// (a keyed table takes another path): inline, or it is two calls through the GOT per
    /// lock+unlock from another crate (callgrind).
    #[inline]
    pub(crate) fn anchor(&self) -> Option<&File> {
        self.anchor.get()
    }

    /// Gives the table the anchor on its lock file (a description holding no locks); the
    /// first one given stays.
    pub(crate) fn set_anchor(&self, anchor: &File) -> Result<()> {
        if self.anchor.get().is_none() {
            let dup = anchor
                .try_clone()
                .map_err(io_err(&self.path, crate::error::IoOp::Dup))?;
            let _ = self.anchor.set(dup);
        }
        Ok(())
    }

    /// The description liveness checks of the table itself ask through.
    pub(crate) fn probe(&self) -> &File {
        &self.probe
    }

    /// The ring over this table.
    #[inline]
    pub(crate) fn ring(&self) -> &Ring<'_> {
        &self.ring
    }

    /// The payload region.
    pub(crate) fn payload(&self) -> Payload<'_> {
        // SAFETY: payload_map is exactly region_len(capacity) bytes (a multiple of 8) at a
        // page-aligned address, so aligned for AtomicU64; it lives as long as `self`, which
        // the returned borrow ties it to (`neuter` keeps the range mapped); atomics are valid
        // for any bytes and may alias memory other processes write.
        let words = unsafe {
            std::slice::from_raw_parts(
                self.payload_map.as_ptr().cast::<AtomicU64>(),
                self.payload_map.len() / 8,
            )
        };
        Payload::new(words, self.geometry.payload_capacity)
    }

    /// How many slots were reclaimed from dead processes (statistics).
    pub(crate) fn reclaimed_slots(&self) -> u64 {
        self.header().reclaimed.load(Relaxed)
    }

    /// A new fencing token: larger than every one handed out before in this table (the
    /// counter lives in the file: it survives reclaims, repairs, orphan takeovers and, for a
    /// kept table, runs). Asked by a holder while it holds, so the token of a later grant is
    /// always larger; nothing is counted on the lock path itself.
    pub(crate) fn next_fence(&self) -> u64 {
        self.header().fence.fetch_add(1, SeqCst).wrapping_add(1)
    }

    /// The last fencing token handed out (0: none yet).
    pub(crate) fn last_fence(&self) -> u64 {
        self.header().fence.load(SeqCst)
    }

    /// How many times the ring was rebuilt after it was found inconsistent.
    pub(crate) fn repairs(&self) -> u64 {
        self.header().repairs.load(Relaxed)
    }

    /// Runs `f` as the only payload writer (see `Payload::with_writer`).
    pub(crate) fn with_payload_writer<T>(&self, f: impl FnOnce(&Payload<'_>) -> T) -> Result<T> {
        let me = self.register()?;
        let payload = self.payload();
        Ok(payload.with_writer(payload::writer_identity(me), &self.liveness(), f))
    }

    /// True when both map the same file.
    pub(crate) fn same_file(&self, other: &Region) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
