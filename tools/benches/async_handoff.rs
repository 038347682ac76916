//! Handoff latency between two processes, to a blocked thread and to a pending future
//! (issue 19's target: handoff to a pending future ≤ 2× the handoff to a blocked thread).
//!
//! Two worker processes (this binary re-executed, role in `LOCKTICKET_BENCH_ROLE`) take the
//! exclusive token of one table in turn: each loops lock → stamp → unlock, and with a strict
//! FIFO queue a process that unlocks and asks again queues behind the other, so every grant is
//! a handoff. The releaser stamps `CLOCK_MONOTONIC` and its index into a small shared mapping
//! just before it unlocks; the receiver reads the clock as soon as its request returns the
//! guard, so each process measures the handoffs *to* it: in a mixed pair the async side
//! measures blocking→async and the blocking side async→blocking.
//!
//! Waiters: `block` (`token_lock`, a blocked thread), `park` (`token_lock_async` driven by a
//! minimal `block_on` that parks the thread between polls: the future and lockticket's waiter
//! thread alone) and `tokio` (the same future in a tokio `current_thread` runtime's
//! `block_on`).
//!
//! * `cargo bench -p lockticket-tools --bench async_handoff` — 10,000 handoffs per pair.
//! * `LOCKTICKET_BENCH_QUICK=1` (or `-- --quick`) — 1,000; without `--bench`
//!   (`cargo test --benches`) — a smoke run of 50.

use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use lockticket::{LockTicket, Share};

const ROLE_VAR: &str = "LOCKTICKET_BENCH_ROLE";
const TABLE_VAR: &str = "LOCKTICKET_BENCH_TABLE";
const SHM_VAR: &str = "LOCKTICKET_BENCH_SHM";
const INDEX_VAR: &str = "LOCKTICKET_BENCH_INDEX";
const ITERS_VAR: &str = "LOCKTICKET_BENCH_ITERS";
const HOLD_VAR: &str = "LOCKTICKET_BENCH_HOLD_US";

/// The block both workers map.
#[repr(C)]
struct Shared {
    ready: AtomicU32,
    go: AtomicU32,
    /// Index + 1 of the process that released last (0: nobody yet).
    last: AtomicU64,
    /// When it released (CLOCK_MONOTONIC, ns).
    released_at: AtomicU64,
    /// Workers done with their loop.
    done: AtomicU32,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn map(path: &str) -> memmap2::MmapMut {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(4096).unwrap();
    // SAFETY: a private tmpfs file of this bench, only accessed through atomics.
    unsafe { memmap2::MmapMut::map_mut(&f).unwrap() }
}

fn shared(m: &memmap2::MmapMut) -> &Shared {
    // SAFETY: the mapping is 4096 bytes, page-aligned, zero-initialised; Shared is atomics.
    unsafe { &*(m.as_ptr() as *const Shared) }
}

/// The minimal executor: poll, park until woken.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

fn worker(mode: &str) {
    let lt = LockTicket::open(std::env::var(TABLE_VAR).unwrap()).unwrap();
    let _main = lt.main_lock(Share::Shared).unwrap();
    let m = map(&std::env::var(SHM_VAR).unwrap());
    let sh = shared(&m);
    let me: u64 = std::env::var(INDEX_VAR).unwrap().parse::<u64>().unwrap() + 1;
    let iters: usize = std::env::var(ITERS_VAR).unwrap().parse().unwrap();
    let hold_ns: u64 = std::env::var(HOLD_VAR).unwrap().parse::<u64>().unwrap() * 1000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    sh.ready.fetch_add(1, SeqCst);
    while sh.go.load(SeqCst) == 0 {
        std::thread::yield_now();
    }
    let mut lat = Vec::with_capacity(iters);
    let step = |lat: &mut Vec<u64>, died: bool| {
        assert!(!died);
        let now = monotonic_ns();
        let last = sh.last.load(SeqCst);
        if last != 0 && last != me {
            lat.push(now.saturating_sub(sh.released_at.load(SeqCst)));
        }
        sh.last.store(me, SeqCst);
        // Every grant a handoff: release only once the other process is queued (or done),
        // outside the measured span (the stamp comes after).
        while sh.done.load(SeqCst) == 0 && lt.status().unwrap().queue.is_empty() {
            std::thread::yield_now();
        }
        // Then hold on (busy) until the other process's waiter is asleep, if asked to.
        while monotonic_ns() < now + hold_ns {
            std::hint::spin_loop();
        }
        sh.released_at.store(monotonic_ns(), SeqCst);
    };
    let started = Instant::now();
    for _ in 0..iters {
        match mode {
            "block" => {
                let g = lt.token_lock().unwrap();
                step(&mut lat, g.previous_holder_died());
            }
            "park" => {
                let g = block_on(lt.token_lock_async()).unwrap();
                step(&mut lat, g.previous_holder_died());
            }
            "tokio" => {
                let g = rt.block_on(lt.token_lock_async()).unwrap();
                step(&mut lat, g.previous_holder_died());
            }
            other => panic!("unknown mode {other}"),
        }
    }
    let elapsed = started.elapsed();
    sh.done.fetch_add(1, SeqCst);
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "@@ {} {} {} {} {}",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        elapsed.as_nanos()
    );
}

/// One pair: (handoffs to A, median ns; to B, median ns).
struct PairResult {
    to_a: (usize, u64, u64, u64),
    to_b: (usize, u64, u64, u64),
}

fn run_pair(a: &str, b: &str, iters: usize, hold_us: u64) -> PairResult {
    let tag = format!("{}-{}-{}-{hold_us}", std::process::id(), a, b);
    let table = format!("bench-handoff-{tag}");
    let shm = format!("/dev/shm/lockticket-bench-handoff-{tag}");
    let lt = LockTicket::open(&table).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    let m = map(&shm);
    let sh = shared(&m);
    let exe = std::env::current_exe().unwrap();
    let spawn = |mode: &str, index: usize| {
        std::process::Command::new(&exe)
            .env(ROLE_VAR, mode)
            .env(TABLE_VAR, &table)
            .env(SHM_VAR, &shm)
            .env(INDEX_VAR, index.to_string())
            .env(ITERS_VAR, iters.to_string())
            .env(HOLD_VAR, hold_us.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(a, 0), spawn(b, 1)];
    let deadline = Instant::now() + Duration::from_secs(60);
    while sh.ready.load(SeqCst) < 2 {
        assert!(Instant::now() < deadline, "workers did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    sh.go.store(1, SeqCst);
    let mut out = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "worker failed: {:?}", o.status);
        let line = String::from_utf8(o.stdout).unwrap();
        let f: Vec<u64> = line
            .lines()
            .find_map(|l| l.strip_prefix("@@ "))
            .unwrap()
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        out.push((f[0] as usize, f[1], f[2], f[3]));
    }
    main.unlock().unwrap();
    let _ = std::fs::remove_file(&shm);
    PairResult {
        to_a: out[0],
        to_b: out[1],
    }
}

fn main() {
    if let Ok(mode) = std::env::var(ROLE_VAR) {
        worker(&mode);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = std::env::var("LOCKTICKET_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || args.iter().any(|a| a == "--quick");
    let iters = if !args.iter().any(|a| a == "--bench") {
        50
    } else if quick {
        1_000
    } else {
        10_000
    };
    for hold_us in [0, 300] {
        measure(iters, hold_us);
    }
}

/// All pairs with the holder keeping the token `hold_us` after the other process queued
/// (0: the blocked thread is usually still in its 50 µs spin; 300: it sleeps on its futex
/// word, as a pending future always does).
fn measure(iters: usize, hold_us: u64) {
    println!(
        "handoff latency, release stamp to the receiver holding the token ({iters} grants per \
         process, each held {hold_us} µs after the other process queued):"
    );
    let show = |name: &str, r: (usize, u64, u64, u64)| {
        println!(
            "  {name:<22} median {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs  ({} handoffs)",
            r.1 as f64 / 1e3,
            r.2 as f64 / 1e3,
            r.3 as f64 / 1e3,
            r.0
        );
        r.1 as f64
    };
    let bb = run_pair("block", "block", iters, hold_us);
    // Both directions of a same-kind pair are alike: the mean of their medians.
    let block = (show("blocking->blocking", bb.to_a) + show("blocking->blocking", bb.to_b)) / 2.0;
    let pp = run_pair("park", "park", iters, hold_us);
    let park = (show("async->async (park)", pp.to_a) + show("async->async (park)", pp.to_b)) / 2.0;
    let bp = run_pair("block", "park", iters, hold_us);
    show("async->blocking (park)", bp.to_a);
    let b2p = show("blocking->async (park)", bp.to_b);
    let tt = run_pair("tokio", "tokio", iters, hold_us);
    let tokio =
        (show("async->async (tokio)", tt.to_a) + show("async->async (tokio)", tt.to_b)) / 2.0;
    let bt = run_pair("block", "tokio", iters, hold_us);
    show("async->blocking (tokio)", bt.to_a);
    let b2t = show("blocking->async (tokio)", bt.to_b);
    println!(
        "ratios to blocking->blocking, held {hold_us} µs (target: handoff to a pending future \
         <= 2x):"
    );
    for (name, v) in [
        ("async->async (park)", park),
        ("blocking->async (park)", b2p),
        ("async->async (tokio)", tokio),
        ("blocking->async (tokio)", b2t),
    ] {
        println!("  {name:<24} {:.2}x", v / block);
    }
}
