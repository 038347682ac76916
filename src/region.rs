//! The mapped table file: creating it whole, opening and auditing it, and typed views of it.
//!
//! This is where the crate's raw memory lives. A table is created in a file without a name
//! (`O_TMPFILE`), fully initialised, and only then linked to its path, so a file at a table
//! path is never half-made by us, and a creator killed half-way leaves nothing. The directory
//! a table was opened in is kept (`O_PATH`): whether its name still names the table is asked
//! of that directory, never of a path another `chdir` would resolve elsewhere. Opening never follows a symlink, refuses files that grant more than the
//! requested permissions, and validates the header before mapping anything.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Mutex, MutexGuard};

use memmap2::{MmapOptions, MmapRaw};

use crate::Fairness;
use crate::error::{Error, Result};
use crate::layout::{self, FIXED_HEADER_SIZE, FixedHeader, Geometry, HEADER_SIZE, hot};
use crate::liveness::{Liveness, Registration};
use crate::members::Member;
use crate::payload::{self, Payload};
use crate::procs::{self, ProcEntry, TableLiveness};
use crate::repair::Repaired;
use crate::ring::{Ring, RingRepair, RingWords, Slot};
use crate::sys;

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
    /// Our registration: index << 32 | generation.
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
    /// (`crate::lock_file`).
    kernel_locks: Mutex<Vec<crate::lock_file::KernelLock>>,
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
        let file = sys::reopen(of, path).map_err(io_err(path, "reopen for the cold-path lock"))?;
        Ok(ColdFile {
            file: sys::ForkLocal::new(file),
            pid: sys::current_identity().0,
        })
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

/// Options a new table is created with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Create {
    pub permissions: u32,
    pub geometry: Geometry,
    pub main_mode: u32,
    /// The header's fairness encoding (mode, bound in µs).
    pub fairness: (u32, u32),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |cause| Error::Io {
        path: path.to_path_buf(),
        op,
        cause,
    }
}

impl Region {
    /// Opens the table at `path` if one exists there. `Ok(None)` when there is no file.
    pub(crate) fn open_existing(path: &Path, permissions: u32) -> Result<Option<Region>> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(classify_open_error(path, e)),
        };
        let meta = file.metadata().map_err(io_err(path, "fstat"))?;
        check_kind(path, &meta)?;
        // What the file is, before its permissions are judged: a user's script or a copied
        // /etc/passwd is "not a lock table", and a damaged table (truncated, bad geometry) is
        // said to be one, never "a table with doubtful permissions".
        let mut bytes = [0u8; FIXED_HEADER_SIZE];
        let n = read_full_at(&file, &mut bytes).map_err(io_err(path, "read"))?;
        let (fixed, geometry) =
            layout::validate_header(&bytes[..n], meta.len(), payload::region_len).map_err(
                |reason| match reason {
                    layout::HeaderError::NewerVersion { found } => Error::UnsupportedVersion {
                        path: path.to_path_buf(),
                        found,
                        supported: layout::FORMAT_VERSION,
                    },
                    reason => Error::InvalidTable {
                        path: path.to_path_buf(),
                        reason,
                    },
                },
            )?;
        audit(path, &meta, permissions)?;
        check_not_network(path, sys::fs_magic_of_file(&file).ok())?;
        Self::map(path, path, file, &meta, fixed, geometry).map(Some)
    }

    /// Creates a table at `path`: writes it whole in a file without a name (`O_TMPFILE` in the
    /// target directory), then links it into place — nothing to leak if the creator is killed
    /// half-way, and no temporary name whose length depends on the table's (issue 17). Where
    /// `O_TMPFILE` is not supported, or the nameless file cannot be linked (no /proc and no
    /// `CAP_DAC_READ_SEARCH`), a short named temporary file ([`temp_file_name`](crate::path::temp_file_name)) is used
    /// instead. `Ok(None)` when a file appeared at `path` first (open that one instead).
    pub(crate) fn create(path: &Path, opts: Create) -> Result<Option<Region>> {
        let dir = parent_dir(path);
        check_not_network(path, sys::fs_magic_of_path(dir).ok())?;
        let dirfd = sys::open_dir_path(dir).map_err(io_err(path, "open the table's directory"))?;
        let name = CString::new(path.file_name().unwrap_or_default().as_bytes()).map_err(|_| {
            io_err(path, "name the table")(io::Error::from(io::ErrorKind::InvalidInput))
        })?;
        match sys::open_tmpfile(dirfd.as_fd(), opts.permissions) {
            Ok(file) => {
                let region = Self::fill_new(path, path, file, opts)?;
                // Hold the table's flock from before it is visible until the caller has
                // registered (it takes the same lock again with `cold`, then drops it): a
                // joiner must not find a new table without owners and take it for an orphan.
                region.lock_new().map_err(io_err(path, "flock"))?;
                // Linked through the mapped description (any description of the file would do).
                let linked = sys::link_at(&region.probe, dirfd.as_fd(), &name);
                match linked {
                    Ok(()) => {
                        region.map_by_name();
                        return Ok(Some(region));
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
                    // Cannot be linked here: made again with a name, below.
                    Err(_) => {}
                }
            }
            Err(e) if sys::tmpfile_unsupported(&e) => {}
            Err(e) => return Err(classify_open_error(path, e)),
        }
        Self::create_named(path, dir, opts)
    }

    /// [`Region::create`] through a named temporary file in the target directory, where a
    /// nameless one cannot be made or linked. A creator killed half-way leaves that file
    /// behind: `lockticket clean` removes it ([`temp_file_creator`](crate::temp_file_creator)).
    fn create_named(path: &Path, dir: &Path, opts: Create) -> Result<Option<Region>> {
        let tmp = dir.join(crate::path::temp_file_name(
            std::process::id(),
            sys::random_u64(),
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(opts.permissions)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| classify_open_error(path, e))?;
        let made = Self::fill_new(path, &tmp, file, opts);
        let outcome = match made {
            // The flock is held from before the table is visible, as above.
            Ok(region) => match region
                .lock_new()
                .and_then(|()| std::fs::hard_link(&tmp, path))
            {
                Ok(()) => {
                    region.map_by_name();
                    Ok(Some(region))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(io_err(path, "link new table into place")(e)),
            },
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        outcome
    }

    /// After a new table was linked into place: maps it again through its name, so that
    /// `/proc/PID/maps` shows the table's path for this process's mappings (`lockticket list`
    /// finds tables removed under their users there), not the nameless file's `#INODE
    /// (deleted)` or the temporary name. Same file, same pages: nothing else changes. Best
    /// effort: the old mappings stay on any failure.
    fn map_by_name(&self) {
        let Ok(named) = sys::open_at(self.dir.as_fd(), &self.name) else {
            return;
        };
        if !sys::fstat_dev_ino(named.as_fd()).is_ok_and(|id| id == (self.dev, self.ino)) {
            return; // replaced at once: keep what we have
        }
        for (m, offset) in [
            (&self.map, 0),
            (&self.payload_map, self.geometry.payload_offset()),
        ] {
            // SAFETY: `m` is a whole shared read-write mapping we own of this very file (same
            // dev/ino) at `offset`; the references into it stay valid (same pages).
            unsafe { sys::remap_same_file(m.as_mut_ptr(), m.len(), &named, offset) };
        }
    }

    /// Sizes and initialises a new table in `file` (`tmp` names it in messages).
    fn fill_new(path: &Path, tmp: &Path, file: File, opts: Create) -> Result<Region> {
        // The exact mode, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(opts.permissions))
            .map_err(io_err(tmp, "chmod"))?;
        let size = opts.geometry.file_size();
        sys::allocate(&file, size).map_err(io_err(tmp, "allocate"))?;
        let fixed = layout::new_header(
            opts.geometry,
            opts.permissions,
            opts.main_mode,
            opts.fairness,
            sys::now_ns(),
            sys::random_u64(),
        );
        let meta = file.metadata().map_err(io_err(tmp, "fstat"))?;
        let region = Self::map(path, tmp, file, &meta, fixed, opts.geometry)?;
        let bytes = bytemuck::bytes_of(&fixed);
        for (word, chunk) in region.header().fixed.iter().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(b), Relaxed);
        }
        region.payload().init();
        // dev/ino of the new file are those of the final path: it is linked there.
        Ok(region)
    }

    /// Maps `file` (opened at `opened_at`: `path`, or the temporary name of a new table).
    fn map(
        path: &Path,
        opened_at: &Path,
        file: File,
        meta: &std::fs::Metadata,
        fixed: FixedHeader,
        geometry: Geometry,
    ) -> Result<Region> {
        let map = MmapOptions::new()
            .len(geometry.lock_len() as usize)
            .map_raw(&file)
            .map_err(io_err(path, "mmap"))?;
        let payload_map = MmapOptions::new()
            .offset(geometry.payload_offset())
            .len(geometry.payload_region_len as usize)
            .map_raw(&file)
            .map_err(io_err(path, "mmap payload"))?;
        // SAFETY: the header page and `ring_capacity` slots lie inside `map` (lock_len covers
        // them; RING_OFFSET is page aligned so the atomics are aligned), and all-bytes-valid
        // atomics may alias memory other processes write. The 'static lifetime is a lie kept
        // inside this module: `ring` is only ever handed out borrowed from the Region, which
        // owns `map`, and `neuter` keeps the range mapped.
        let ring = unsafe {
            let base = map.as_ptr();
            let h = &*(base as *const SharedHeader);
            let slots = std::slice::from_raw_parts(
                base.add(layout::RING_OFFSET as usize) as *const Slot,
                geometry.ring_capacity as usize,
            );
            Ring::new(
                RingWords {
                    tail: &h.tail,
                    head: &h.head,
                    dead_holder: &h.dead_holder,
                    reclaimed: &h.reclaimed,
                    bypass: &h.bypass,
                    bypass_waiters: &h.bypass_waiters,
                    bypass_thread: &h.bypass_thread,
                    bypasses: &h.bypasses,
                },
                slots,
                wake_all,
                Fairness::decode(fixed.fairness, fixed.bound_us).bound_ns(),
            )
        };
        let cold = ColdFile::open(&file, opened_at)?;
        let dir = sys::open_dir_path(parent_dir(path))
            .map_err(io_err(path, "open the table's directory"))?;
        let name = CString::new(path.file_name().unwrap_or_default().as_bytes()).map_err(|_| {
            io_err(path, "name the table")(io::Error::from(io::ErrorKind::InvalidInput))
        })?;
        Ok(Region {
            path: path.to_path_buf(),
            dir,
            name,
            probe: file,
            reg_pid: AtomicU32::new(0),
            reg_id: AtomicU64::new(0),
            reg_lock: Mutex::new(None),
            anchor: std::sync::OnceLock::new(),
            fd_closed: std::sync::OnceLock::new(),
            kernel_locks: Mutex::new(Vec::new()),
            file: Mutex::new(Some(cold)),
            map,
            payload_map,
            geometry,
            fixed,
            dev: meta.dev(),
            ino: meta.ino(),
            ring,
        })
    }

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

    /// The kernel locks on the lock file that this process's guards hold (keyed tables).
    pub(crate) fn kernel_locks(&self) -> &Mutex<Vec<crate::lock_file::KernelLock>> {
        &self.kernel_locks
    }

    /// The anchor on the table's lock file, if one was given.
    pub(crate) fn anchor(&self) -> Option<&File> {
        self.anchor.get()
    }

    /// Gives the table the anchor on its lock file (a description holding no locks); the
    /// first one given stays.
    pub(crate) fn set_anchor(&self, anchor: &File) -> Result<()> {
        if self.anchor.get().is_none() {
            let dup = anchor.try_clone().map_err(io_err(&self.path, "dup"))?;
            let _ = self.anchor.set(dup);
        }
        Ok(())
    }

    /// The description liveness checks of the table itself ask through.
    pub(crate) fn probe(&self) -> &File {
        &self.probe
    }

    /// This process's registration in the table, if it has one (no system call).
    #[inline]
    pub(crate) fn registration(&self, pid: u32) -> Option<Registration> {
        if self.reg_pid.load(Acquire) != pid {
            return None;
        }
        let id = self.reg_id.load(Relaxed);
        Some(Registration {
            index: (id >> 32) as u32,
            generation: id as u32,
        })
    }

    /// This process's registration, registering now if it has none (cold: takes the flock).
    #[cold]
    pub(crate) fn register(&self) -> Result<Registration> {
        let (pid, _) = sys::current_identity();
        match self.registration(pid) {
            Some(r) => Ok(r),
            None => self.cold()?.registration(),
        }
    }

    /// Takes over `from`'s registration when this region (the same file, mapped earlier by the
    /// same handle) has none for this process: `from` is about to be dropped, and with it the
    /// descriptor whose lock vouches for the registration.
    pub(crate) fn adopt_registration(&self, from: &Region) {
        let (pid, _) = sys::current_identity();
        if !self.same_file(from) || self.registration(pid).is_some() {
            return;
        }
        let Some(reg) = from.registration(pid) else {
            return;
        };
        let lock = from
            .reg_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut mine = self.reg_lock.lock().unwrap_or_else(|p| p.into_inner());
        *mine = lock;
        self.reg_id.store(
            u64::from(reg.index) << 32 | u64::from(reg.generation),
            Relaxed,
        );
        self.reg_pid.store(pid, Release);
    }

    /// Forks the exec guardian of our registration (see `sys::fork_guardian`), registering
    /// first if needed: the registration then lives exactly as long as the calling thread, and
    /// so as long as the program it is about to `exec`. The caller checked that the process
    /// has one thread. `None` when no descriptor vouches for the registration.
    pub(crate) fn fork_exec_guardian(&self) -> Result<Option<u32>> {
        self.register()?;
        let lock = self.reg_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(reg) = lock.as_ref() else {
            return Ok(None);
        };
        // A keyed table's kernel locks on the lock file held by this process's guards go with
        // the registration (`crate::lock_file`): the guardian keeps them too, so that neither
        // the program nor its children hold them, and they end with the program.
        let pid = sys::current_identity().0;
        let kernel = self.kernel_locks.lock().unwrap_or_else(|p| p.into_inner());
        let mut keep = vec![reg.as_fd()];
        keep.extend(crate::lock_file::descriptions_of(&kernel, pid));
        sys::fork_guardian(&keep)
            .map(Some)
            .map_err(io_err(&self.path, "fork the exec guardian"))
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

    /// True once the last owner retired this table (it is, or is about to be, unlinked).
    #[inline]
    pub(crate) fn retired(&self) -> bool {
        self.header().retired.load(SeqCst) != 0
    }

    /// What a user found, if the table's path stopped naming this file under its users:
    /// "removed" or "replaced by another file". One load: the holder's unlock reads it.
    #[inline]
    pub(crate) fn removal(&self) -> Option<&'static str> {
        match self.header().removed.load(SeqCst) {
            0 => None,
            2 => Some("replaced by another file"),
            _ => Some("removed"),
        }
    }

    /// The error for a table found removed.
    pub(crate) fn removed_error(&self, what: &'static str, holder: bool) -> Error {
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

    /// Exclusive access to the table's cold paths: serialises this process's threads (mutex)
    /// and other processes (flock, released by the kernel if we die).
    ///
    /// A forked child first opens a description of its own: the one it inherited is its
    /// parent's (or /dev/null, see `sys::ForkLocal`), and a flock on a shared description
    /// would let both run a cold path at once.
    pub(crate) fn cold(&self) -> Result<Cold<'_>> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cold) = guard.as_mut() else {
            return Err(Error::Removed {
                path: self.path.clone(),
            });
        };
        if cold.pid != sys::current_identity().0 {
            *cold = ColdFile::open(&self.probe, &self.path)?;
        }
        sys::flock_exclusive(&cold.file).map_err(io_err(&self.path, "flock"))?;
        Ok(Cold {
            guard,
            region: self,
        })
    }

    /// Runs `f` as the only payload writer (see `Payload::with_writer`).
    pub(crate) fn with_payload_writer<T>(&self, f: impl FnOnce(&Payload<'_>) -> T) -> Result<T> {
        let me = self.register()?;
        let payload = self.payload();
        Ok(payload.with_writer(payload::writer_identity(me), &self.liveness(), f))
    }

    /// Takes the flock of a table that is not visible yet (see `create`).
    fn lock_new(&self) -> io::Result<()> {
        let guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(cold) => sys::flock_exclusive(&cold.file),
            None => Ok(()),
        }
    }

    /// True when both map the same file.
    pub(crate) fn same_file(&self, other: &Region) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// True while the table's name in its directory still names this table's file (not
    /// unlinked, not renamed away, not replaced).
    pub(crate) fn still_at_path(&self) -> Result<bool> {
        match self.at_path() {
            Ok(at) => Ok(at == Some(true)),
            Err(e) => Err(io_err(&self.path, "stat")(e)),
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

/// What [`Cold::repair_ring`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Repair {
    /// The ring is consistent (perhaps another process repaired it first).
    NotNeeded,
    /// Rebuilt.
    Repaired(Repaired),
    /// Not safe to rebuild: live processes have claims in the ring.
    Refused {
        /// What is wrong.
        problem: String,
        /// Live processes named in the ring.
        live: Vec<u32>,
        /// Those of them marked holding.
        holders: Vec<u32>,
    },
}

/// The cold-path lock of a table (see [`Region::cold`]). Unlocks on drop.
pub(crate) struct Cold<'a> {
    guard: MutexGuard<'a, Option<ColdFile>>,
    region: &'a Region,
}

impl Cold<'_> {
    /// This process's registration, taken now if it has none (or only its parent's).
    pub(crate) fn registration(&self) -> Result<Registration> {
        let r = self.region;
        let (pid, start) = sys::current_identity();
        if let Some(reg) = r.registration(pid) {
            return Ok(reg);
        }
        let Some(cold) = self.guard.as_ref() else {
            return Err(Error::Removed {
                path: r.path.clone(),
            });
        };
        // Tracked at once, so that a child forked from here on does not keep it.
        let lock = sys::ForkLocal::new(
            sys::reopen(&cold.file, &r.path).map_err(io_err(&r.path, "reopen for registration"))?,
        );
        let reg = procs::register(
            r.procs(),
            r.geometry.procs_offset(),
            &lock,
            r.anchor.get(),
            pid,
            start,
            sys::now_ns(),
            |i| r.ring().fingerprints_naming(i),
        )
        .map_err(|e| match e {
            procs::RegisterError::Full => Error::ProcessTableFull {
                path: r.path.clone(),
                capacity: r.geometry.proc_capacity,
            },
            procs::RegisterError::Io(e) => io_err(&r.path, "F_OFD_SETLK")(e),
        })?;
        // A forked child drops its copy of the parent's lock description here (the parent's
        // own descriptor keeps the parent's registration).
        *r.reg_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(lock);
        r.reg_id.store(
            u64::from(reg.index) << 32 | u64::from(reg.generation),
            Relaxed,
        );
        r.reg_pid.store(pid, Release);
        Ok(reg)
    }

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

    /// Rebuilds an inconsistent ring (issue 9: never a permanent outage). Looks again under
    /// this lock (another process may have repaired it already). With no live process named
    /// in any slot, the ring is reset at once. With live ones, it is rebuilt around them only
    /// when `keep_live` is set (`lockticket repair`) and none of them holds the token:
    /// otherwise a live holder whose claim was overwritten could be joined by a second one.
    pub(crate) fn repair_ring(&self, keep_live: bool) -> Repair {
        let r = self.region;
        // PIDs for the messages (0 when the entry no longer names the registration).
        let pid =
            |c: &crate::ring::SlotClaim| procs::registrant(r.procs(), c.owner).map_or(0, |g| g.pid);
        match r.ring().repair(&r.liveness(), keep_live) {
            RingRepair::NotNeeded => Repair::NotNeeded,
            RingRepair::Rebuilt {
                problem,
                old_head,
                new_head,
                dropped,
                kept,
            } => {
                r.header().repairs.fetch_add(1, Relaxed);
                Repair::Repaired(Repaired {
                    problem,
                    old_head,
                    new_head,
                    dropped,
                    kept,
                })
            }
            RingRepair::Refused {
                problem,
                live,
                holders,
            } => Repair::Refused {
                problem,
                live: live.iter().map(pid).collect(),
                holders: holders.iter().map(pid).collect(),
            },
        }
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
                Err(e) => return Err(io_err(&r.path, "remove table")(e)),
            }
        }
        Ok(())
    }
}

impl Drop for Cold<'_> {
    fn drop(&mut self) {
        if let Some(cold) = self.guard.as_ref() {
            sys::flock_unlock(&cold.file);
        }
    }
}

fn wake_all(word: &AtomicU32) {
    sys::futex_wake(word, i32::MAX);
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn read_full_at(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn classify_open_error(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Error::Symlink {
            path: path.to_path_buf(),
        },
        Some(libc::EISDIR) => Error::NotARegularFile {
            path: path.to_path_buf(),
            kind: "a directory",
        },
        // A socket (ENXIO) or another special file that cannot be opened: say what it is.
        _ => match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_file() && !meta.file_type().is_symlink() => {
                check_kind(path, &meta).err().unwrap_or(Error::Io {
                    path: path.to_path_buf(),
                    op: "open",
                    cause: e,
                })
            }
            _ => Error::Io {
                path: path.to_path_buf(),
                op: "open",
                cause: e,
            },
        },
    }
}

fn check_kind(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(Error::NotARegularFile {
        path: path.to_path_buf(),
        kind,
    })
}

fn check_not_network(path: &Path, magic: Option<i64>) -> Result<()> {
    match magic.and_then(sys::network_fs_name) {
        Some(fs) => Err(Error::NetworkFilesystem {
            path: path.to_path_buf(),
            fs,
        }),
        None => Ok(()),
    }
}

fn audit(path: &Path, meta: &std::fs::Metadata, requested: u32) -> Result<()> {
    let (uid, gid, groups) = sys::credentials();
    audit_rules(
        meta.mode(),
        meta.uid(),
        meta.gid(),
        requested,
        uid,
        gid,
        &groups,
    )
    .map_err(|reason| Error::DoubtfulPermissions {
        path: path.to_path_buf(),
        reason,
    })
}

/// The original's "doubtful permissions" audit: refuse a file that grants more than
/// `requested` would. Pure, for tests.
pub(crate) fn audit_rules(
    mode: u32,
    file_uid: u32,
    file_gid: u32,
    requested: u32,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> std::result::Result<(), String> {
    let mode = mode & 0o7777;
    let extra = mode & !requested & 0o777;
    if extra != 0 {
        return Err(format!(
            "mode {mode:04o} grants {extra:04o} beyond the requested {requested:04o}"
        ));
    }
    if mode & 0o7000 != 0 {
        return Err(format!("mode {mode:04o} has setuid/setgid/sticky bits"));
    }
    let owner_bits = (mode >> 6) & 0o7;
    if file_uid != uid && owner_bits & !(requested & 0o7) != 0 {
        return Err(format!(
            "owned by uid {file_uid}, not by us (uid {uid}), and the requested mode \
             {requested:04o} does not grant others that access"
        ));
    }
    let group_bits = (mode >> 3) & 0o7;
    let our_group = file_gid == gid || groups.contains(&file_gid);
    if !our_group && group_bits & !(requested & 0o7) != 0 {
        return Err(format!(
            "group {file_gid} is not one of ours and has access the requested mode \
             {requested:04o} does not grant to others"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::audit_rules;

    #[test]
    fn the_audit_refuses_wider_files() {
        let ok = |mode, fu, fg, req| audit_rules(mode, fu, fg, req, 1000, 100, &[100, 200]);
        assert!(ok(0o600, 1000, 100, 0o600).is_ok());
        assert!(ok(0o600, 1000, 999, 0o600).is_ok()); // foreign group without access: fine
        assert!(ok(0o644, 1000, 100, 0o600).is_err()); // wider than requested
        assert!(ok(0o600, 0, 100, 0o600).is_err()); // someone else owns it
        assert!(ok(0o666, 0, 100, 0o666).is_ok()); // shared on purpose
        assert!(ok(0o660, 1000, 999, 0o660).is_err()); // a foreign group gets rw
        assert!(ok(0o660, 1000, 200, 0o660).is_ok()); // a supplementary group of ours
        assert!(ok(0o4600, 1000, 100, 0o7600).is_err());
        assert!(ok(0o400, 1000, 100, 0o600).is_ok()); // narrower is fine (open may fail)
    }
}
