//! The mechanisms under test behind one trait: lockticket's token and the baselines a user
//! would pick instead (flock, OFD fcntl locks, a robust process-shared pthread mutex, a POSIX
//! named semaphore, a bare CAS spin lock — the floor), plus "no lock" for the ping-pong floor.

use std::cell::Cell;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use lockticket::{LockTicket, Share};

use super::{Arena, Control};

/// A lock: runs `f` while holding it.
pub trait Mechanism {
    /// Takes the lock, runs `f`, releases the lock.
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R;

    /// Whether the last acquisition reported that the previous owner died holding the lock.
    fn owner_died(&self) -> bool {
        false
    }
}

/// Every mechanism, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// lockticket's exclusive token.
    LockTicket,
    /// lockticket's exclusive token in a table created with `Fairness::bounded()`.
    LockTicketBounded,
    /// lockticket's shared token.
    LockTicketShared,
    /// `flock(LOCK_EX)` / `flock(LOCK_UN)` on a tmpfs file.
    Flock,
    /// OFD fcntl locks (`F_OFD_SETLKW` / `F_UNLCK`) on a tmpfs file.
    Ofd,
    /// A robust process-shared pthread mutex in a tmpfs mapping.
    RobustMutex,
    /// A POSIX named semaphore (`sem_open`, `sem_wait`, `sem_post`).
    PosixSem,
    /// A bare test-and-test-and-set CAS spin lock on a tmpfs mapping (the floor).
    CasSpin,
    /// A plain FIFO ticket lock whose waiters all spin (the FIFO floor; collapses when
    /// processes outnumber CPUs).
    TicketSpin,
    /// The baton ring: processes pass a turn round a ring of futex words, one `FUTEX_WAKE`
    /// per handover and no lock logic — the cost any strict FIFO pays when the next holder
    /// is asleep (issue 21's strict-FIFO reference).
    BatonRing,
    /// No lock at all (the ping-pong floor: a cache line going back and forth).
    NoLock,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 11] = [
        Kind::LockTicket,
        Kind::LockTicketBounded,
        Kind::LockTicketShared,
        Kind::Flock,
        Kind::Ofd,
        Kind::RobustMutex,
        Kind::PosixSem,
        Kind::CasSpin,
        Kind::TicketSpin,
        Kind::BatonRing,
        Kind::NoLock,
    ];

    /// The name used in bench ids and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::LockTicket => "lockticket",
            Kind::LockTicketBounded => "lockticket_bounded",
            Kind::LockTicketShared => "lockticket_shared",
            Kind::Flock => "flock",
            Kind::Ofd => "ofd_fcntl",
            Kind::RobustMutex => "robust_mutex",
            Kind::PosixSem => "posix_semaphore",
            Kind::CasSpin => "cas_spin",
            Kind::TicketSpin => "ticket_spin",
            Kind::BatonRing => "baton_ring",
            Kind::NoLock => "no_lock",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Code generic over a mechanism (a closure cannot be generic).
pub trait Visit {
    /// What the visit returns.
    type Out;
    /// Runs with the mechanism.
    fn visit<M: Mechanism>(self, m: &M) -> Self::Out;
}

/// Opens mechanism `kind` of `arena` in this process and runs `v` with it.
pub fn with_mechanism<V: Visit>(kind: Kind, arena: &Arena, v: V) -> V::Out {
    match kind {
        Kind::LockTicket | Kind::LockTicketBounded | Kind::LockTicketShared => {
            // The table's fairness is the one its creator chose (see `Setup`).
            let lt = LockTicket::open(arena.table_name()).expect("open table");
            let main = lt.main_lock(Share::Shared).expect("main lock");
            let out = if kind != Kind::LockTicketShared {
                v.visit(&Token {
                    lt: &lt,
                    died: Cell::new(false),
                })
            } else {
                v.visit(&SharedToken { lt: &lt })
            };
            main.unlock().expect("main unlock");
            out
        }
        Kind::Flock => v.visit(&Flock::open(&arena.lock_file.path)),
        Kind::Ofd => v.visit(&Ofd::open(&arena.lock_file.path)),
        Kind::RobustMutex => v.visit(&RobustMutex::new(arena.ctl.get())),
        Kind::PosixSem => v.visit(&PosixSem::open(&arena.sem_name())),
        Kind::CasSpin => v.visit(&CasSpin {
            word: &arena.ctl.get().spin.0,
        }),
        Kind::TicketSpin => {
            let ctl = arena.ctl.get();
            v.visit(&TicketSpin {
                next: &ctl.ticket_next.0,
                serving: &ctl.ticket_serving.0,
            })
        }
        Kind::BatonRing => {
            let ctl = arena.ctl.get();
            v.visit(&BatonRing {
                next: &ctl.baton_next.0,
                words: &ctl.baton,
            })
        }
        Kind::NoLock => v.visit(&NoLock),
    }
}

/// lockticket's exclusive token.
pub struct Token<'a> {
    pub lt: &'a LockTicket,
    pub died: Cell<bool>,
}

impl Mechanism for Token<'_> {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let g = self.lt.token_lock().expect("token_lock");
        self.died.set(g.previous_holder_died());
        let r = f();
        drop(g);
        r
    }

    fn owner_died(&self) -> bool {
        self.died.get()
    }
}

/// lockticket's shared token.
pub struct SharedToken<'a> {
    pub lt: &'a LockTicket,
}

impl Mechanism for SharedToken<'_> {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let g = self.lt.token_lock_shared().expect("token_lock_shared");
        let r = f();
        drop(g);
        r
    }
}

/// `flock` on its own open file description.
pub struct Flock {
    file: File,
}

impl Flock {
    /// Opens `path` (a new open file description: flock locks belong to those).
    pub fn open(path: &Path) -> Flock {
        Flock {
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap(),
        }
    }

    fn op(&self, op: libc::c_int) {
        loop {
            // SAFETY: flock on a descriptor this struct owns; no memory is passed.
            let rc = unsafe { libc::flock(self.file.as_raw_fd(), op) };
            if rc == 0 {
                return;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "flock: {e}");
        }
    }
}

impl Mechanism for Flock {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        self.op(libc::LOCK_EX);
        let r = f();
        self.op(libc::LOCK_UN);
        r
    }
}

/// Open-file-description record locks (`F_OFD_SETLKW`) over the whole file.
pub struct Ofd {
    file: File,
}

impl Ofd {
    /// Opens `path` (a new open file description: OFD locks belong to those).
    pub fn open(path: &Path) -> Ofd {
        Ofd {
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap(),
        }
    }

    fn op(&self, cmd: libc::c_int, kind: libc::c_int) {
        // SAFETY: `struct flock` is plain old data; all-zero is a valid value (l_pid must be
        // 0 for OFD locks).
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 0;
        fl.l_len = 0; // the whole file
        loop {
            // SAFETY: fcntl with an OFD lock command reads one valid `struct flock` that
            // lives across the call; the descriptor is owned by this struct.
            let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut fl) };
            if rc == 0 {
                return;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "fcntl: {e}");
        }
    }
}

impl Mechanism for Ofd {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        self.op(libc::F_OFD_SETLKW, libc::F_WRLCK);
        let r = f();
        self.op(libc::F_OFD_SETLK, libc::F_UNLCK);
        r
    }
}

/// A robust, process-shared pthread mutex living in the control block's mapping.
pub struct RobustMutex {
    m: *mut libc::pthread_mutex_t,
    /// Set when a lock call returned `EOWNERDEAD` (the previous owner died holding it).
    pub owner_died: Cell<bool>,
}

impl RobustMutex {
    /// Initialises the mutex of a fresh control block (once, by its creator).
    pub fn init(ctl: &Control) {
        let m = ctl.mutex.0.get();
        // SAFETY: `attr` is a local initialised by pthread_mutexattr_init before use and
        // destroyed after; `m` points to a suitably aligned pthread_mutex_t inside a live
        // shared mapping that no other process uses yet (the creator initialises it before
        // spawning anyone). Return codes are checked.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            assert_eq!(libc::pthread_mutexattr_init(&mut attr), 0);
            assert_eq!(
                libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED),
                0
            );
            assert_eq!(
                libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST),
                0
            );
            assert_eq!(libc::pthread_mutex_init(m, &attr), 0);
            libc::pthread_mutexattr_destroy(&mut attr);
        }
    }

    /// The (already initialised) mutex of `ctl`.
    pub fn new(ctl: &Control) -> RobustMutex {
        RobustMutex {
            m: ctl.mutex.0.get(),
            owner_died: Cell::new(false),
        }
    }

    /// Locks; marks the mutex consistent again if its previous owner died holding it.
    #[inline]
    pub fn lock(&self) {
        // SAFETY: `m` points into the control block's mapping, which outlives `self` (the
        // borrow of `Control` in `new`), and was initialised as a process-shared robust mutex.
        let rc = unsafe { libc::pthread_mutex_lock(self.m) };
        if rc == libc::EOWNERDEAD {
            // SAFETY: as above; we hold the mutex in the inconsistent state, which is the
            // precondition of pthread_mutex_consistent.
            assert_eq!(unsafe { libc::pthread_mutex_consistent(self.m) }, 0);
            self.owner_died.set(true);
        } else {
            assert_eq!(rc, 0, "pthread_mutex_lock");
        }
    }

    /// Unlocks.
    #[inline]
    pub fn unlock(&self) {
        // SAFETY: as in `lock`; called only by the thread that holds the mutex.
        let rc = unsafe { libc::pthread_mutex_unlock(self.m) };
        debug_assert_eq!(rc, 0);
    }
}

impl Mechanism for RobustMutex {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        self.lock();
        let r = f();
        self.unlock();
        r
    }

    fn owner_died(&self) -> bool {
        self.owner_died.get()
    }
}

/// A POSIX named semaphore with initial value 1, used as a lock.
pub struct PosixSem {
    sem: *mut libc::sem_t,
}

impl PosixSem {
    /// Opens (creating if needed, with value 1) the semaphore `name` (`/…`).
    pub fn open(name: &str) -> PosixSem {
        let c = CString::new(name).unwrap();
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call; with O_CREAT,
        // sem_open takes a mode_t and an unsigned int value as variadic arguments, passed here
        // with their C types.
        let sem = unsafe {
            libc::sem_open(
                c.as_ptr(),
                libc::O_CREAT,
                0o600 as libc::mode_t,
                1 as libc::c_uint,
            )
        };
        assert!(
            sem != libc::SEM_FAILED,
            "sem_open: {}",
            std::io::Error::last_os_error()
        );
        PosixSem { sem }
    }

    /// Removes the semaphore's name (its creator calls this when done).
    pub fn unlink(name: &str) {
        let c = CString::new(name).unwrap();
        // SAFETY: a valid NUL-terminated string; failure (already gone) is harmless.
        unsafe { libc::sem_unlink(c.as_ptr()) };
    }
}

impl Drop for PosixSem {
    fn drop(&mut self) {
        // SAFETY: `sem` came from a successful sem_open and is closed once, here.
        unsafe { libc::sem_close(self.sem) };
    }
}

impl Mechanism for PosixSem {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        loop {
            // SAFETY: `sem` is a semaphore opened by sem_open and not yet closed.
            if unsafe { libc::sem_wait(self.sem) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "sem_wait: {e}");
        }
        let r = f();
        // SAFETY: as above.
        unsafe { libc::sem_post(self.sem) };
        r
    }
}

/// A bare test-and-test-and-set spin lock on a word of a shared mapping: neither fair, nor
/// robust, nor sleeping — the floor any lock on such a mapping pays.
pub struct CasSpin<'a> {
    pub word: &'a AtomicU32,
}

impl Mechanism for CasSpin<'_> {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        while self
            .word
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.word.load(Ordering::Relaxed) != 0 {
                std::hint::spin_loop();
            }
        }
        let r = f();
        self.word.store(0, Ordering::Release);
        r
    }
}

/// A plain FIFO ticket lock, every waiter spinning: one `fetch_add` to enter, one store to
/// leave. Neither robust nor sleeping.
pub struct TicketSpin<'a> {
    pub next: &'a AtomicU64,
    pub serving: &'a AtomicU64,
}

impl Mechanism for TicketSpin<'_> {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = self.next.fetch_add(1, Ordering::Relaxed);
        while self.serving.load(Ordering::Acquire) != t {
            std::hint::spin_loop();
        }
        let r = f();
        self.serving.store(t.wrapping_add(1), Ordering::Release);
        r
    }
}

/// The baton ring (see [`Kind::BatonRing`]): a ticket, then a futex sleep on that ticket's
/// word until the previous holder hands the turn over with one store and one `FUTEX_WAKE`.
/// Strict FIFO, sleeping, neither robust nor spinning.
pub struct BatonRing<'a> {
    pub next: &'a AtomicU64,
    pub words: &'a [super::Line<AtomicU32>; super::MAX_WORKERS],
}

impl BatonRing<'_> {
    fn word(&self, t: u64) -> &AtomicU32 {
        &self.words[(t % super::MAX_WORKERS as u64) as usize].0
    }
}

impl Mechanism for BatonRing<'_> {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = self.next.fetch_add(1, Ordering::Relaxed);
        let mine = self.word(t);
        loop {
            let v = mine.load(Ordering::Acquire);
            if v == t as u32 {
                break;
            }
            // SAFETY: FUTEX_WAIT on a live, aligned word of the shared mapping; it only
            // sleeps while the word still holds `v`.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    mine.as_ptr(),
                    libc::FUTEX_WAIT,
                    v,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
        let r = f();
        let next = self.word(t.wrapping_add(1));
        next.store(t.wrapping_add(1) as u32, Ordering::Release);
        // SAFETY: FUTEX_WAKE only uses the address as a key.
        unsafe {
            libc::syscall(libc::SYS_futex, next.as_ptr(), libc::FUTEX_WAKE, 1);
        }
        r
    }
}

/// No lock: only meaningful for the ping-pong, where the turn word alone orders the sides.
pub struct NoLock;

impl Mechanism for NoLock {
    #[inline]
    fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
}
