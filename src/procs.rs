//! The process table: one entry per process (more exactly, per handle) that uses a table,
//! taken once, on the cold path, and the liveness the kernel vouches for.
//!
//! A process registers by taking an OFD lock (`F_OFD_SETLK`) on the byte of the file at its
//! entry's offset, through an open file description of its own, then bumping the entry's
//! generation. It holds that lock for as long as it uses the table; the kernel drops it when
//! the description's last descriptor closes, at the latest when the process dies (see
//! docs/design.md for fork and exec). Claim words and registry entries name the registration
//! (index and generation), and a checker asks the kernel (`F_OFD_GETLK`, through a description
//! that holds no locks) whether the byte is locked: no PID is ever interpreted. PIDs stay in
//! the entry for display only.
//!
//! Entries are validated on every read: a hostile generation makes an owner look dead (or its
//! claim stale), a hostile kind falls back to asking the kernel, never to trusting a PID out
//! of range.

use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use crate::layout::PROC_SIZE;
use crate::liveness::{self, KernelSays, Liveness, Owner, Registration};
use crate::sys;

/// `ProcEntry::kind`: never used.
pub(crate) const KIND_UNUSED: u32 = 0;
/// `ProcEntry::kind`: held by an OFD lock on the entry's byte.
pub(crate) const KIND_OFD: u32 = 1;
/// `ProcEntry::kind`: registered where the kernel has no OFD locks; judged by PID and start
/// time from /proc (the pre-issue-10 liveness, with its limits).
pub(crate) const KIND_PID: u32 = 2;
/// `ProcEntry::kind`: held for an open file description of the table's *lock file* (the
/// descriptor form, `lockticket exec 9`): vouched for by an OFD lock on byte
/// [`FD_LOCK_BASE`]` + index` of the lock file, placed through that description. Its table
/// byte is unlocked: only a checker with an *anchor* (a description of the lock file) can
/// tell; without one it is judged alive.
pub(crate) const KIND_FD: u32 = 3;

/// Where the lock-file bytes of [`KIND_FD`] entries start: entry `i` locks byte
/// `FD_LOCK_BASE + i` of the user's lock file, far beyond any real file's data (a byte lock
/// needs no data there; below 2^62, so that `off_t` arithmetic never overflows).
pub(crate) const FD_LOCK_BASE: u64 = 0x4c54_0000_0000_0000;

/// The lock-file byte whose lock vouches for [`KIND_FD`] entry `index`.
pub(crate) fn fd_lock_offset(index: u32) -> u64 {
    FD_LOCK_BASE + u64::from(index)
}

/// One process-table entry: a cache line in the mapped file.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct ProcEntry {
    /// Bumped by every new registrant, after it took the entry's lock.
    pub generation: AtomicU32,
    /// [`KIND_UNUSED`], [`KIND_OFD`] or [`KIND_PID`].
    pub kind: AtomicU32,
    /// The registrant's PID, in its own PID namespace (display, and the fallback).
    pub pid: AtomicU32,
    _pad: u32,
    /// The registrant's start time (clock ticks after boot; display, and the fallback).
    pub start: AtomicU64,
    /// When it registered, ns since the Unix epoch.
    pub registered_ns: AtomicU64,
    /// Inode of the registrant's PID namespace (0: unknown).
    pub pidns: AtomicU64,
    _reserved: [u64; 3],
}
const _: () = assert!(core::mem::size_of::<ProcEntry>() == PROC_SIZE as usize);

/// What an entry says about its registrant, for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registrant {
    /// Its PID in its own namespace.
    pub pid: u32,
    /// True when that namespace is not ours (or unknown): the PID may mean another process
    /// here.
    pub foreign_pid: bool,
}

/// The liveness the kernel vouches for, over one table.
pub(crate) struct TableLiveness<'a> {
    /// An open file description of the table that holds no registration lock.
    pub probe: &'a File,
    /// The table's process table.
    pub procs: &'a [ProcEntry],
    /// Its offset in the file (the lock byte of entry `i` is `procs_offset + i * PROC_SIZE`).
    pub procs_offset: u64,
    /// A description of the table's lock file that holds no locks, when the table is keyed by
    /// one: [`KIND_FD`] entries are asked through it; without it they are judged alive.
    pub anchor: Option<&'a File>,
    /// [`KIND_FD`] entries (index, full generation) whose lock-file byte the kernel's list of
    /// file locks showed unlocked after they were recorded (`LockTicket::judge_fd_holders`):
    /// their description is closed for good, so they are dead. Asked only without an anchor.
    pub closed: &'a [(u32, u32)],
}

impl TableLiveness<'_> {
    /// What the kernel says of the lock-file byte of [`KIND_FD`] entry `index`.
    fn fd_entry(&self, index: u32) -> KernelSays {
        match self
            .anchor
            .map(|a| sys::ofd_is_locked(a, fd_lock_offset(index)))
        {
            Some(Some(true)) => KernelSays::Locked,
            Some(Some(false)) => KernelSays::Unlocked,
            Some(None) | None => KernelSays::Unknown,
        }
    }
}

/// The byte whose lock vouches for entry `index`.
pub(crate) fn lock_offset(procs_offset: u64, index: u32) -> u64 {
    procs_offset + u64::from(index) * PROC_SIZE
}

impl Liveness for TableLiveness<'_> {
    fn is_alive(&self, owner: Owner) -> bool {
        let Some(e) = self.procs.get(owner.index as usize) else {
            return false; // no such entry: no process can have registered there
        };
        let before = e.generation.load(SeqCst);
        let kind = e.kind.load(SeqCst);
        let kernel = if kind == KIND_FD {
            if self.anchor.is_none() && self.closed.contains(&(owner.index, before)) {
                KernelSays::Unlocked
            } else {
                self.fd_entry(owner.index)
            }
        } else if kind == KIND_PID {
            let (pid, start) = (e.pid.load(Relaxed), e.start.load(Relaxed));
            if pid == 0 || pid > sys::PID_MAX {
                KernelSays::Unlocked
            } else if sys::pid_alive(pid, start) {
                KernelSays::Locked
            } else {
                KernelSays::Unlocked
            }
        } else {
            match sys::ofd_is_locked(self.probe, lock_offset(self.procs_offset, owner.index)) {
                Some(true) => KernelSays::Locked,
                Some(false) => KernelSays::Unlocked,
                None => KernelSays::Unknown,
            }
        };
        let after = e.generation.load(SeqCst);
        liveness::judge(owner, before, kernel, after)
    }
}

/// True when `anchor` shows the lock-file byte of [`KIND_FD`] entry `index` free (its
/// description is gone); false without an anchor or when the kernel cannot say.
fn fd_entry_free(anchor: Option<&File>, index: u32) -> bool {
    anchor.is_some_and(|a| sys::ofd_is_locked(a, fd_lock_offset(index)) == Some(false))
}

/// Takes an entry of `procs` as a [`KIND_FD`] registration for the open file description of
/// `holder` (a descriptor of the table's lock file): the first entry nobody holds — its table
/// byte free according to `probe` (a description of the table holding no locks) and, for a
/// `KIND_FD` entry, its lock-file byte free according to `anchor` — whose lock-file byte we
/// then get through `holder` (a write lock when `write`, else a read lock). The lock comes
/// first, the generation bump second, as in [`register`]; call under the table's flock.
#[allow(clippy::too_many_arguments)]
pub(crate) fn register_fd(
    procs: &[ProcEntry],
    procs_offset: u64,
    probe: &File,
    anchor: &File,
    holder: std::os::fd::BorrowedFd<'_>,
    write: bool,
    pid: u32,
    now_ns: u64,
    stale: impl Fn(u32) -> Vec<u32>,
) -> Result<Registration, RegisterError> {
    let free = |i: u32, e: &ProcEntry| match e.kind.load(Relaxed) {
        KIND_UNUSED | KIND_OFD => {
            sys::ofd_is_locked(probe, lock_offset(procs_offset, i)) == Some(false)
                && sys::ofd_is_locked(anchor, fd_lock_offset(i)) == Some(false)
        }
        KIND_FD => fd_entry_free(Some(anchor), i),
        _ => false, // the PID fallback: no OFD locks here at all
    };
    let never_used = procs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind.load(Relaxed) == KIND_UNUSED);
    let used = procs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind.load(Relaxed) != KIND_UNUSED);
    let mut taken = None;
    for (i, e) in never_used.chain(used) {
        let i = i as u32;
        if !free(i, e) {
            continue;
        }
        match sys::ofd_try_lock_as(holder, fd_lock_offset(i), write).map_err(RegisterError::Io)? {
            sys::OfdLock::Taken => {
                taken = Some((i, e));
                break;
            }
            sys::OfdLock::Busy => {}
            sys::OfdLock::Unsupported => {
                return Err(RegisterError::Io(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the lock file's filesystem has no OFD locks",
                )));
            }
        }
    }
    let (index, e) = taken.ok_or(RegisterError::Full)?;
    let generation = liveness::next_generation(e.generation.load(SeqCst), &stale(index));
    e.generation.store(generation, SeqCst);
    e.pid.store(pid, Relaxed);
    e.start.store(0, Relaxed);
    e.registered_ns.store(now_ns, Relaxed);
    e.pidns.store(sys::pid_namespace(), Relaxed);
    e.kind.store(KIND_FD, SeqCst);
    Ok(Registration { index, generation })
}

/// The [`KIND_FD`] entries of `procs`: (index, full generation).
pub(crate) fn fd_entries(procs: &[ProcEntry]) -> Vec<(u32, u32)> {
    procs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind.load(SeqCst) == KIND_FD)
        .map(|(i, e)| (i as u32, e.generation.load(SeqCst)))
        .collect()
}

/// The PID namespaces (0: unknown) the [`KIND_FD`] entries of `procs` registered from.
pub(crate) fn fd_namespaces(procs: &[ProcEntry]) -> Vec<u64> {
    procs
        .iter()
        .filter(|e| e.kind.load(SeqCst) == KIND_FD)
        .map(|e| e.pidns.load(Relaxed))
        .collect()
}

/// The [`KIND_FD`] registrations that the open file description of `holder` holds: entries
/// whose lock-file byte is locked according to `anchor` (a description holding no locks)
/// but not according to `holder` itself (a description's own locks never conflict with it).
pub(crate) fn fd_registrations(
    procs: &[ProcEntry],
    anchor: &File,
    holder: std::os::fd::BorrowedFd<'_>,
) -> Vec<Registration> {
    procs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind.load(SeqCst) == KIND_FD)
        .filter(|(i, _)| {
            let off = fd_lock_offset(*i as u32);
            sys::ofd_is_locked(anchor, off) == Some(true)
                && sys::ofd_is_locked(holder, off) == Some(false)
        })
        .map(|(i, e)| Registration {
            index: i as u32,
            generation: e.generation.load(SeqCst),
        })
        .collect()
}

/// Ends [`KIND_FD`] registration `reg` of `holder`'s description: the entry becomes never
/// used again (judged by its unlocked table byte: dead), then the lock-file byte is unlocked.
/// Call under the table's flock, after releasing every ticket that names it.
pub(crate) fn retire_fd(
    procs: &[ProcEntry],
    holder: std::os::fd::BorrowedFd<'_>,
    reg: Registration,
) -> std::io::Result<()> {
    if let Some(e) = procs.get(reg.index as usize)
        && e.generation.load(SeqCst) == reg.generation
        && e.kind.load(SeqCst) == KIND_FD
    {
        e.kind.store(KIND_UNUSED, SeqCst);
    }
    sys::ofd_unlock(holder, fd_lock_offset(reg.index))
}

/// Who registered as `owner`, if the entry still names it.
pub(crate) fn registrant(procs: &[ProcEntry], owner: Owner) -> Option<Registrant> {
    let e = procs.get(owner.index as usize)?;
    if !owner.matches(e.generation.load(Acquire)) {
        return None;
    }
    let pid = e.pid.load(Relaxed);
    if pid == 0 || pid > sys::PID_MAX {
        return None;
    }
    let ns = e.pidns.load(Relaxed);
    let ours = sys::pid_namespace();
    Some(Registrant {
        pid,
        foreign_pid: ns == 0 || ours == 0 || ns != ours,
    })
}

/// Why no entry could be taken.
#[derive(Debug)]
pub(crate) enum RegisterError {
    /// Every entry is held by a live process.
    Full,
    /// A system call failed.
    Io(std::io::Error),
}

/// Takes an entry of `procs` for this process: the first never-used entry whose lock we get,
/// else the first whose lock is free (its registrant is gone). Call under the table's flock
/// (it serialises the fallback; OFD locks alone would arbitrate). `lock` is the open file
/// description that will hold the lock for as long as the registration lives; `stale(i)` the
/// generation bits of the ring's claims that still name entry `i` (see
/// `Ring::fingerprints_naming`).
///
/// A [`KIND_FD`] entry's table byte is unlocked while a live description holds it: it is
/// taken only when `anchor` (a description of the table's lock file) shows its lock-file
/// byte free, and never without an anchor.
#[allow(clippy::too_many_arguments)]
pub(crate) fn register(
    procs: &[ProcEntry],
    procs_offset: u64,
    lock: &File,
    anchor: Option<&File>,
    pid: u32,
    start: u64,
    now_ns: u64,
    stale: impl Fn(u32) -> Vec<u32>,
) -> Result<Registration, RegisterError> {
    let never_used = procs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind.load(Relaxed) == KIND_UNUSED);
    let used = procs
        .iter()
        .enumerate()
        .filter(|(i, e)| match e.kind.load(Relaxed) {
            KIND_UNUSED => false,
            KIND_FD => fd_entry_free(anchor, *i as u32),
            _ => true,
        });
    let mut kind = KIND_OFD;
    let mut taken = None;
    for (i, e) in never_used.chain(used) {
        let i = i as u32;
        match sys::ofd_try_lock(lock, lock_offset(procs_offset, i)).map_err(RegisterError::Io)? {
            sys::OfdLock::Taken => {
                taken = Some((i, e));
                break;
            }
            sys::OfdLock::Busy => {}
            sys::OfdLock::Unsupported => {
                // No kernel lock to vouch for us: the PID fallback, under the flock.
                kind = KIND_PID;
                let free = |e: &ProcEntry| match e.kind.load(Relaxed) {
                    KIND_UNUSED => true,
                    KIND_PID => !sys::pid_alive(e.pid.load(Relaxed), e.start.load(Relaxed)),
                    _ => false,
                };
                taken = procs
                    .iter()
                    .enumerate()
                    .find(|(_, e)| free(e))
                    .map(|(i, e)| (i as u32, e));
                break;
            }
        }
    }
    let (index, e) = taken.ok_or(RegisterError::Full)?;
    // The generation first: from here on, claims of the previous registrant read as stale.
    let generation = liveness::next_generation(e.generation.load(SeqCst), &stale(index));
    e.generation.store(generation, SeqCst);
    e.pid.store(pid, Relaxed);
    e.start.store(start, Relaxed);
    e.registered_ns.store(now_ns, Relaxed);
    e.pidns.store(sys::pid_namespace(), Relaxed);
    e.kind.store(kind, SeqCst);
    Ok(Registration { index, generation })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::handle::LockTicket;
    use crate::share::Share;

    /// The process table's own model, against the real kernel: entries in memory, their lock
    /// bytes in a scratch file. Each "process" is an open file description; dropping it is
    /// the process dying.
    struct Model {
        file: std::path::PathBuf,
        probe: File,
        procs: Vec<ProcEntry>,
        live: Vec<(Registration, File)>,
        dead: Vec<Registration>,
    }

    impl Model {
        fn new(cap: usize) -> Model {
            let file = std::env::temp_dir().join(format!(
                "lockticket-procs-model-{}-{:x}",
                std::process::id(),
                sys::random_u64()
            ));
            let probe = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&file)
                .unwrap();
            Model {
                file,
                probe,
                procs: (0..cap).map(|_| ProcEntry::default()).collect(),
                live: Vec::new(),
                dead: Vec::new(),
            }
        }

        fn liveness(&self) -> TableLiveness<'_> {
            TableLiveness {
                probe: &self.probe,
                procs: &self.procs,
                procs_offset: 0,
                anchor: None,
                closed: &[],
            }
        }

        fn register(&mut self, stale: &[u32]) {
            let lock = sys::reopen(&self.probe, &self.file).unwrap();
            let before: Vec<u32> = self
                .procs
                .iter()
                .map(|e| e.generation.load(SeqCst))
                .collect();
            match register(&self.procs, 0, &lock, None, 42, 7, 0, |_| stale.to_vec()) {
                Ok(r) => {
                    let i = r.index as usize;
                    assert!(
                        self.live.iter().all(|(l, _)| l.index != r.index),
                        "entry {i} handed out twice"
                    );
                    assert_ne!(
                        r.generation, before[i],
                        "a reused entry gets a new generation"
                    );
                    assert!(
                        !stale.contains(&(r.generation & liveness::GEN_FP_MASK)),
                        "generation bits of a stale claim"
                    );
                    self.live.push((r, lock));
                }
                Err(RegisterError::Full) => {
                    assert_eq!(self.live.len(), self.procs.len(), "full with free entries")
                }
                Err(RegisterError::Io(e)) => panic!("{e}"),
            }
        }

        fn kill(&mut self, k: usize) {
            if !self.live.is_empty() {
                let (r, lock) = self.live.remove(k % self.live.len());
                drop(lock);
                self.dead.push(r);
            }
        }

        fn check(&self) {
            let l = self.liveness();
            for (r, _) in &self.live {
                assert!(l.is_alive(r.owner()), "live registration {r:?} judged dead");
            }
            for r in &self.dead {
                assert!(
                    !l.is_alive(r.owner()),
                    "dead registration {r:?} judged alive"
                );
                let fp = Owner {
                    index: r.index,
                    generation: None,
                    gen_fp: r.generation & liveness::GEN_FP_MASK,
                };
                assert!(
                    !l.is_alive(fp),
                    "unpublished claim of dead {r:?} judged alive"
                );
            }
        }
    }

    impl Drop for Model {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.file);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Dead registrations are reclaimed, reused entries get new generations (avoiding the
        /// bits of stale claims), a full table says so, and the kernel's answer matches.
        #[test]
        fn the_process_table_model_holds(
            cap in 1usize..5,
            ops in proptest::collection::vec((any::<bool>(), 0usize..8, 0u32..4), 1..40),
        ) {
            let mut m = Model::new(cap);
            for (register, k, stale) in ops {
                if register {
                    // Stale claims naming the entry carry the next generation's bits
                    // sometimes, forcing the registrant to skip them.
                    let next: Vec<u32> = (1..=stale)
                        .map(|d| {
                            m.procs.iter().map(|e| e.generation.load(SeqCst)).min().unwrap_or(0)
                                .wrapping_add(d) & liveness::GEN_FP_MASK
                        })
                        .collect();
                    m.register(&next);
                } else {
                    m.kill(k);
                }
                m.check();
            }
        }
    }

    /// A scratch lock file and its table-side files, for the descriptor-form entries.
    fn scratch(tag: &str) -> (std::path::PathBuf, File, File) {
        let dir = std::env::temp_dir();
        let base = format!(
            "lockticket-procs-{tag}-{}-{:x}",
            std::process::id(),
            sys::random_u64()
        );
        let table = dir.join(format!("{base}.table"));
        let probe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&table)
            .unwrap();
        let lock_file = dir.join(format!("{base}.lock"));
        std::fs::write(&lock_file, b"").unwrap();
        let anchor = File::open(&lock_file).unwrap();
        std::fs::remove_file(&table).unwrap();
        (lock_file, probe, anchor)
    }

    /// A `KIND_FD` entry is alive exactly while some description holds its lock-file byte
    /// (write-only or read-only), unknown (so alive) to a checker without an anchor, and dead
    /// once retired or once its description is closed.
    #[test]
    fn fd_entries_live_by_their_lock_file_byte() {
        use std::os::fd::AsFd;
        let (lock_file, probe, anchor) = scratch("fd-live");
        let procs: Vec<ProcEntry> = (0..3).map(|_| ProcEntry::default()).collect();
        let liveness = |anchor| TableLiveness {
            probe: &probe,
            procs: &procs,
            procs_offset: 0,
            anchor,
            closed: &[],
        };
        for write in [true, false] {
            let holder = if write {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&lock_file)
                    .unwrap()
            } else {
                File::open(&lock_file).unwrap()
            };
            let reg = register_fd(
                &procs,
                0,
                &probe,
                &anchor,
                holder.as_fd(),
                write,
                1,
                0,
                |_| Vec::new(),
            )
            .unwrap();
            assert_eq!(procs[reg.index as usize].kind.load(SeqCst), KIND_FD);
            assert!(liveness(Some(&anchor)).is_alive(reg.owner()), "held: alive");
            assert!(
                liveness(None).is_alive(reg.owner()),
                "no anchor: judged alive"
            );
            // The holder's own question does not see its lock; the anchor does.
            assert_eq!(fd_registrations(&procs, &anchor, holder.as_fd()), vec![reg]);
            let other = File::open(&lock_file).unwrap();
            assert!(fd_registrations(&procs, &anchor, other.as_fd()).is_empty());
            if write {
                drop(holder); // the shell closes fd 9, or dies
                assert!(
                    !liveness(Some(&anchor)).is_alive(reg.owner()),
                    "closed: dead"
                );
                assert!(
                    liveness(None).is_alive(reg.owner()),
                    "never wrong without an anchor"
                );
            } else {
                retire_fd(&procs, holder.as_fd(), reg).unwrap();
                assert!(
                    !liveness(Some(&anchor)).is_alive(reg.owner()),
                    "retired: dead"
                );
                assert!(
                    !liveness(None).is_alive(reg.owner()),
                    "retired: table byte free"
                );
                assert!(fd_registrations(&procs, &anchor, holder.as_fd()).is_empty());
            }
        }
        std::fs::remove_file(&lock_file).unwrap();
    }

    /// `register` never hands out a live `KIND_FD` entry (its table byte is free), and takes
    /// a dead one over only when an anchor shows its lock-file byte free.
    #[test]
    fn register_skips_live_fd_entries() {
        use std::os::fd::AsFd;
        let (lock_file, probe, anchor) = scratch("fd-skip");
        let procs: Vec<ProcEntry> = (0..1).map(|_| ProcEntry::default()).collect();
        let holder = std::fs::OpenOptions::new()
            .write(true)
            .open(&lock_file)
            .unwrap();
        let fd_reg = register_fd(
            &procs,
            0,
            &probe,
            &anchor,
            holder.as_fd(),
            true,
            1,
            0,
            |_| Vec::new(),
        )
        .unwrap();
        // A registrant's own description of the table (through /proc/self/fd).
        let lock = sys::reopen(&probe, std::path::Path::new("/nonexistent")).unwrap();
        for a in [None, Some(&anchor)] {
            assert!(
                matches!(
                    register(&procs, 0, &lock, a, 1, 0, 0, |_| Vec::new()),
                    Err(RegisterError::Full)
                ),
                "a live descriptor-form entry was handed out (anchor: {})",
                a.is_some()
            );
        }
        drop(holder);
        assert!(
            matches!(
                register(&procs, 0, &lock, None, 1, 0, 0, |_| Vec::new()),
                Err(RegisterError::Full)
            ),
            "without an anchor a descriptor-form entry is never taken"
        );
        let r = register(&procs, 0, &lock, Some(&anchor), 1, 0, 0, |_| Vec::new()).unwrap();
        assert_eq!(r.index, fd_reg.index);
        assert_ne!(r.generation, fd_reg.generation);
        assert_eq!(procs[0].kind.load(SeqCst), KIND_OFD);
        let l = TableLiveness {
            probe: &probe,
            procs: &procs,
            procs_offset: 0,
            anchor: Some(&anchor),
            closed: &[],
        };
        assert!(l.is_alive(r.owner()));
        assert!(
            !l.is_alive(fd_reg.owner()),
            "the old descriptor-form claim is dead"
        );
        std::fs::remove_file(&lock_file).unwrap();
    }

    /// Registers many times over and checks one registration's liveness repeatedly (every
    /// check must say alive); prints what each costs (`--nocapture`, release mode for figures
    /// worth quoting; a short run in CI).
    #[test]
    fn repeated_registrations_and_checks_stay_consistent() {
        let dir = std::env::temp_dir();
        let lt = LockTicket::builder(format!("measure-procs-{}", std::process::id()))
            .directory(&dir)
            .open()
            .unwrap();
        let main = lt.main_lock(Share::Exclusive).unwrap();
        let region = lt.table().unwrap();
        let (pid, start) = sys::current_identity();
        let n = 50;
        let t0 = Instant::now();
        for _ in 0..n {
            let lock = sys::reopen(region.probe_file(), region.path()).unwrap();
            let reg = register(
                region.procs(),
                region.geometry().procs_offset(),
                &lock,
                None,
                pid,
                start,
                0,
                |_| Vec::new(),
            )
            .unwrap();
            std::hint::black_box(reg);
        }
        let reg_ns = t0.elapsed().as_nanos() / n;
        let me = region.register().unwrap();
        let live = region.liveness();
        let m = 2_000;
        let t0 = Instant::now();
        for _ in 0..m {
            assert!(live.is_alive(me.owner()));
        }
        let check_ns = t0.elapsed().as_nanos() / m;
        println!("registration (reopen + F_OFD_SETLK + entry): {reg_ns} ns");
        println!("one liveness check (F_OFD_GETLK + two loads): {check_ns} ns");
        drop(main);
    }
}
