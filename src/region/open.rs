//! Creating a table whole (`O_TMPFILE`, filled, then linked into place), opening and
//! auditing an existing one (never following a symlink, refusing files wider than asked,
//! validating the header before mapping), and mapping it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::fairness::Fairness;
use crate::layout::{self, FIXED_HEADER_SIZE, FixedHeader, Geometry};
use crate::payload;
use crate::ring::{Ring, RingWords, Slot};
use crate::sys;

use super::{ColdFile, Region, SharedHeader, io_err, parent_dir};

/// Options a new table is created with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Create {
    pub permissions: u32,
    pub geometry: Geometry,
    pub main_mode: u32,
    /// The header's fairness encoding (mode, bound in µs).
    pub fairness: (u32, u32),
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
        let meta = file
            .metadata()
            .map_err(io_err(path, crate::error::IoOp::Fstat))?;
        check_kind(path, &meta)?;
        // What the file is, before its permissions are judged: a user's script or a copied
        // /etc/passwd is "not a lock table", and a damaged table (truncated, bad geometry) is
        // said to be one, never "a table with doubtful permissions".
        let mut bytes = [0u8; FIXED_HEADER_SIZE];
        let n = read_full_at(&file, &mut bytes).map_err(io_err(path, crate::error::IoOp::Read))?;
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
        let dirfd =
            sys::open_dir_path(dir).map_err(io_err(path, crate::error::IoOp::OpenDirectory))?;
        let name = CString::new(path.file_name().unwrap_or_default().as_bytes()).map_err(|_| {
            io_err(path, crate::error::IoOp::NameTable)(io::Error::from(
                io::ErrorKind::InvalidInput,
            ))
        })?;
        match sys::open_tmpfile(dirfd.as_fd(), opts.permissions) {
            Ok(file) => {
                let mut region = Self::fill_new(path, path, file, opts)?;
                // Hold the table's flock from before it is visible until the caller has
                // registered (it takes the same lock again with `cold`, then drops it): a
                // joiner must not find a new table without owners and take it for an orphan.
                region
                    .lock_new()
                    .map_err(io_err(path, crate::error::IoOp::Flock))?;
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
            Ok(mut region) => match region
                .lock_new()
                .and_then(|()| std::fs::hard_link(&tmp, path))
            {
                Ok(()) => {
                    region.map_by_name();
                    Ok(Some(region))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(io_err(path, crate::error::IoOp::LinkIntoPlace)(e)),
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
    ///
    /// The new mappings are made elsewhere, and only once both exist do they replace the old
    /// ones: no failure can leave the table half-mapped. It takes `&mut self`: the region has
    /// not been handed to anyone yet, so nothing can hold a reference into the old mappings
    /// when they are dropped (unmapped). Another process may already have opened the table
    /// through its new name and changed it: both mappings show the same pages of the same
    /// file (checked by dev/ino), so nothing written in between is lost. (This used to move the
    /// new mapping over the old one with `mremap(MREMAP_FIXED)` behind `&self`, which
    /// valgrind's address-space manager cannot follow; see docs/reliability.md.)
    fn map_by_name(&mut self) {
        let Ok(named) = sys::open_at(self.dir.as_fd(), &self.name) else {
            return;
        };
        if !sys::fstat_dev_ino(named.as_fd()).is_ok_and(|id| id == (self.dev, self.ino)) {
            return; // replaced at once: keep what we have
        }
        let Ok((map, payload_map)) = map_file(&named, self.geometry) else {
            return;
        };
        let ring = ring_over(&map, self.geometry, self.fixed);
        // `ring` views `self.map`'s pages; replace it with the mapping it was built over
        // before the old mapping goes (the assignments drop, and so unmap, the old ones).
        self.ring = ring;
        self.map = map;
        self.payload_map = payload_map;
    }

    /// Sizes and initialises a new table in `file` (`tmp` names it in messages).
    fn fill_new(path: &Path, tmp: &Path, file: File, opts: Create) -> Result<Region> {
        // The exact mode, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(opts.permissions))
            .map_err(io_err(tmp, crate::error::IoOp::Chmod))?;
        let size = opts.geometry.file_size();
        sys::allocate(&file, size).map_err(io_err(tmp, crate::error::IoOp::Allocate))?;
        let fixed = layout::new_header(
            opts.geometry,
            opts.permissions,
            opts.main_mode,
            opts.fairness,
            sys::now_ns(),
            sys::random_u64(),
        );
        let meta = file
            .metadata()
            .map_err(io_err(tmp, crate::error::IoOp::Fstat))?;
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
        let (map, payload_map) =
            map_file(&file, geometry).map_err(|(op, e)| io_err(path, op)(e))?;
        let ring = ring_over(&map, geometry, fixed);
        let cold = ColdFile::open(&file, opened_at)?;
        let dir = sys::open_dir_path(parent_dir(path))
            .map_err(io_err(path, crate::error::IoOp::OpenDirectory))?;
        let name = CString::new(path.file_name().unwrap_or_default().as_bytes()).map_err(|_| {
            io_err(path, crate::error::IoOp::NameTable)(io::Error::from(
                io::ErrorKind::InvalidInput,
            ))
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

    /// Takes the flock of a table that is not visible yet (see `create`).
    fn lock_new(&self) -> io::Result<()> {
        let guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(cold) => sys::flock_exclusive(&cold.file),
            None => Ok(()),
        }
    }
}

/// Maps the lock part and the payload part of table `file` (shared, read-write).
fn map_file(
    file: &File,
    geometry: Geometry,
) -> std::result::Result<(MmapRaw, MmapRaw), (crate::error::IoOp, io::Error)> {
    let map = MmapOptions::new()
        .len(geometry.lock_len() as usize)
        .map_raw(file)
        .map_err(|e| (crate::error::IoOp::Map, e))?;
    let payload_map = MmapOptions::new()
        .offset(geometry.payload_offset())
        .len(geometry.payload_region_len as usize)
        .map_raw(file)
        .map_err(|e| (crate::error::IoOp::MapPayload, e))?;
    Ok((map, payload_map))
}

/// The ring view over the lock mapping `map` of a table with this geometry and header.
fn ring_over(map: &MmapRaw, geometry: Geometry, fixed: FixedHeader) -> Ring<'static> {
    // SAFETY: the header page and `ring_capacity` slots lie inside `map` (lock_len covers
    // them; RING_OFFSET is page aligned so the atomics are aligned), and all-bytes-valid
    // atomics may alias memory other processes write. The 'static lifetime is a lie kept
    // inside this module: the ring is stored in the Region that owns `map` next to it and is
    // only ever handed out borrowed from that Region; `neuter` keeps the range mapped, and
    // `map_by_name` replaces the ring together with its mapping.
    unsafe {
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
            crate::wait::cpus(),
        )
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
                    op: crate::error::IoOp::Open,
                    cause: e,
                })
            }
            _ => Error::Io {
                path: path.to_path_buf(),
                op: crate::error::IoOp::Open,
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

fn wake_all(word: &AtomicU32) {
    sys::futex_wake(word, i32::MAX);
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
