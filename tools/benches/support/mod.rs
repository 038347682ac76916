//! Shared plumbing of the benches: the baseline locks lockticket is compared with, a shared
//! control block in a tmpfs mapping, helper processes and small statistics.
//!
//! Used by every bench file through `mod support;`; each uses a part of it.
#![allow(dead_code)]

pub mod locks;
pub mod procs;
pub mod stats;

use std::cell::UnsafeCell;
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use memmap2::MmapMut;

/// Where every bench file lives: tmpfs, like lockticket's tables.
pub const SHM_DIR: &str = "/dev/shm";

/// Most worker processes a control block has room for.
pub const MAX_WORKERS: usize = 64;

/// Quick mode: `LOCKTICKET_BENCH_QUICK=1 cargo bench -p lockticket-tools`, or `cargo bench -p lockticket-tools --benches -- --quick`
/// (criterion's own flag; `--benches` keeps it away from the library's libtest harness, which
/// rejects it).
pub fn quick_mode() -> bool {
    std::env::var("LOCKTICKET_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--quick")
}

/// Sets a criterion group's times: 0.7 s warm-up, 2 s measurement, 60 samples; in quick
/// mode (`LOCKTICKET_BENCH_QUICK=1`) 0.2 s, 0.5 s and 20 samples. (`--quick` is criterion's
/// own, shorter still.)
pub fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    if quick_mode() {
        group.warm_up_time(Duration::from_millis(200));
        group.measurement_time(Duration::from_millis(500));
        group.sample_size(20);
    } else {
        group.warm_up_time(Duration::from_millis(700));
        group.measurement_time(Duration::from_secs(2));
        group.sample_size(60);
    }
}

/// A unique tag for this process's bench files: `PID-N`.
pub fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A file on tmpfs, removed on drop by the process that created it.
#[derive(Debug)]
pub struct ShmFile {
    pub path: PathBuf,
    pub file: File,
    owner: bool,
}

impl ShmFile {
    /// Creates `/dev/shm/lockticket-bench-TAG.KIND` of `len` zero bytes.
    pub fn create(tag: &str, kind: &str, len: u64) -> ShmFile {
        let path = Path::new(SHM_DIR).join(format!("lockticket-bench-{tag}.{kind}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.set_len(len).unwrap();
        ShmFile {
            path,
            file,
            owner: true,
        }
    }

    /// Opens a file created by another process (not removed on drop).
    pub fn open(tag: &str, kind: &str) -> ShmFile {
        let path = Path::new(SHM_DIR).join(format!("lockticket-bench-{tag}.{kind}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        ShmFile {
            path,
            file,
            owner: false,
        }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A `#[repr(C)]` value of type `T` living in a `MAP_SHARED` mapping of a file.
///
/// `T` must consist of atomics and `UnsafeCell`s only (every bit pattern valid, zero a valid
/// initial state), since other processes change it at any time.
pub struct Mapped<T> {
    map: MmapMut,
    _t: PhantomData<T>,
}

impl<T> Mapped<T> {
    /// Maps the first `size_of::<T>()` bytes of `file` (which must be that long).
    pub fn new(file: &File) -> Mapped<T> {
        let len = std::mem::size_of::<T>();
        assert!(
            file.metadata().unwrap().len() >= len as u64,
            "file too short to map"
        );
        // SAFETY: a shared mapping of a file that other processes change concurrently. That is
        // the point: every field of `T` is an atomic or an `UnsafeCell` only touched through
        // raw pointers under a process-shared lock, so concurrent changes are not UB for us.
        // The file is at least `len` bytes long (checked above) and is never truncated while
        // mapped (only the creator removes it, after every worker has exited).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file) }.unwrap();
        assert_eq!(map.as_ptr() as usize % std::mem::align_of::<T>(), 0);
        Mapped {
            map,
            _t: PhantomData,
        }
    }

    /// The shared value.
    pub fn get(&self) -> &T {
        // SAFETY: the mapping is page-aligned (checked against `T`'s alignment in `new`) and
        // at least `size_of::<T>()` long; `T` is made of atomics and cells, for which any
        // bytes (in particular zeros) are a valid value; the reference lives no longer than
        // the mapping (borrowed from `self`).
        unsafe { &*(self.map.as_ptr() as *const T) }
    }
}

/// A value on its own cache line (no false sharing between fields).
#[repr(C, align(64))]
#[derive(Default)]
pub struct Line<T>(pub T);

/// The counter the contended workers increment under the lock, and who incremented it last.
#[repr(C)]
#[derive(Default)]
pub struct Counter {
    /// Incremented *non-atomically* (a load and a store) under the lock under test: lost
    /// updates show up as a final value below the number of operations.
    pub value: AtomicU64,
    /// Index + 1 of the worker that incremented last (to measure bursts).
    pub last: AtomicU64,
    /// Ping-pong: whose turn it is (worker index).
    pub turn: AtomicU64,
}

impl Counter {
    /// One non-atomic increment; returns whether the previous increment was another worker's
    /// (a new burst of grants starts). Call only under the lock.
    #[inline]
    pub fn bump(&self, me: u64) -> bool {
        let v = self.value.load(Ordering::Relaxed);
        self.value.store(v + 1, Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        if last != me + 1 {
            self.last.store(me + 1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// The control block shared by the bench orchestrator and its worker processes; also holds
/// the in-mapping baselines (robust mutex, CAS spin lock).
#[repr(C)]
pub struct Control {
    /// A process-shared robust pthread mutex (initialised by the creator).
    pub mutex: Line<UnsafeCell<libc::pthread_mutex_t>>,
    /// The bare CAS spin lock word: 0 free, 1 held.
    pub spin: Line<AtomicU32>,
    /// The FIFO ticket spin lock: next ticket to hand out.
    pub ticket_next: Line<AtomicU64>,
    /// The FIFO ticket spin lock: ticket now served.
    pub ticket_serving: Line<AtomicU64>,
    /// The baton ring: next ticket to hand out.
    pub baton_next: Line<AtomicU64>,
    /// The baton ring: one futex word per ticket in flight (ticket `t` goes when word
    /// `t % MAX_WORKERS` holds `t`, low 32 bits).
    pub baton: [Line<AtomicU32>; MAX_WORKERS],
    /// The counter protected by the lock under test.
    pub counter: Line<Counter>,
    /// Workers that are ready to start.
    pub ready: Line<AtomicU32>,
    /// 1: start; 2: stop.
    pub phase: Line<AtomicU32>,
    /// Operations done by each worker (written by that worker only).
    pub counts: [Line<AtomicU64>; MAX_WORKERS],
    /// New bursts (grants following another worker's grant) of each worker.
    pub bursts: [Line<AtomicU64>; MAX_WORKERS],
}

pub const PHASE_GO: u32 = 1;
pub const PHASE_STOP: u32 = 2;

/// A control block plus the files of every baseline, named by one tag, created by the
/// orchestrator (or the uncontended bench) and opened by name in worker processes.
pub struct Arena {
    pub tag: String,
    pub ctl_file: ShmFile,
    pub ctl: Mapped<Control>,
    /// A separate file for `flock` and OFD locks (the lock files of those baselines).
    pub lock_file: ShmFile,
}

impl Arena {
    /// Creates the files and initialises the robust mutex.
    pub fn create() -> Arena {
        let tag = unique_tag();
        let ctl_file = ShmFile::create(&tag, "ctl", std::mem::size_of::<Control>() as u64);
        let lock_file = ShmFile::create(&tag, "lock", 4096);
        let ctl = Mapped::<Control>::new(&ctl_file.file);
        locks::RobustMutex::init(ctl.get());
        Arena {
            tag,
            ctl_file,
            ctl,
            lock_file,
        }
    }

    /// Opens the arena created under `tag` (in a worker process).
    pub fn open(tag: &str) -> Arena {
        let ctl_file = ShmFile::open(tag, "ctl");
        let lock_file = ShmFile::open(tag, "lock");
        let ctl = Mapped::<Control>::new(&ctl_file.file);
        Arena {
            tag: tag.to_string(),
            ctl_file,
            ctl,
            lock_file,
        }
    }

    /// The lockticket table name for this arena.
    pub fn table_name(&self) -> String {
        format!("bench-{}", self.tag)
    }

    /// The POSIX semaphore name for this arena.
    pub fn sem_name(&self) -> String {
        format!("/lockticket-bench-{}", self.tag)
    }
}

/// `CLOCK_MONOTONIC` in ns: comparable between processes (unlike `Instant`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time this process used so far, in ns.
pub fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid local.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until `cond` holds, polling every 100 µs; panics after `bound` (a hang becomes a
/// failure, not a stuck bench).
pub fn wait_until(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The directory for the bench results: `$CARGO_TARGET_DIR/lockticket-bench` or
/// `target/lockticket-bench` in the workspace (the parent of `tools/`).
pub fn results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("lockticket-bench")
}
