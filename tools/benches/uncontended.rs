//! Uncontended lock + unlock in one process: lockticket's exclusive and shared tokens against
//! the mechanisms a user would pick instead, all on tmpfs, in one run.
//!
//! `cargo bench -p lockticket-tools --bench uncontended` (`LOCKTICKET_BENCH_QUICK=1` for a short run). Results: criterion's
//! `target/criterion/uncontended/*/new/estimates.json`, summarised by
//! `cargo run --release -p lockticket-tools --bin bench_report`.

mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::Ordering::{Relaxed, Release, SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use support::Arena;
use support::locks::{Kind, Mechanism, PosixSem, Visit, with_mechanism};

/// Benchmarks one lock + unlock of a mechanism.
struct LockUnlock<'a, 'c> {
    group: &'a mut criterion::BenchmarkGroup<'c, criterion::measurement::WallTime>,
    name: &'static str,
}

impl Visit for LockUnlock<'_, '_> {
    type Out = ();
    fn visit<M: Mechanism>(self, m: &M) {
        self.group
            .bench_function(self.name, |b| b.iter(|| m.with_lock(|| black_box(()))));
    }
}

fn uncontended(c: &mut Criterion) {
    let arena = Arena::create();
    // The table stays alive across the benches (as in an application holding its main lock).
    let lt = lockticket::LockTicket::open(arena.table_name()).unwrap();
    let keep = lt.main_lock(lockticket::Share::Shared).unwrap();
    let mut group = c.benchmark_group("uncontended");
    support::configure(&mut group);
    // lockticket through the public API, exactly as an application calls it.
    group.bench_function("lockticket_exclusive", |b| {
        b.iter(|| drop(black_box(lt.token_lock().unwrap())))
    });
    group.bench_function("lockticket_shared", |b| {
        b.iter(|| drop(black_box(lt.token_lock_shared().unwrap())))
    });
    // The async forms, polled once with a no-op waker (no runtime): a free token is granted
    // at the first poll, so this is the async fast path alone.
    group.bench_function("lockticket_exclusive_async", |b| {
        b.iter(|| drop(black_box(poll_ready(lt.token_lock_async()))))
    });
    group.bench_function("lockticket_shared_async", |b| {
        b.iter(|| drop(black_box(poll_ready(lt.token_lock_shared_async()))))
    });
    // The same in a table created with bounded fairness (the fast path reads the bypass word).
    let bounded = lockticket::LockTicket::builder(format!("{}-bounded", arena.table_name()))
        .fairness(lockticket::Fairness::bounded())
        .open()
        .unwrap();
    let keep_bounded = bounded.main_lock(lockticket::Share::Shared).unwrap();
    group.bench_function("lockticket_bounded_exclusive", |b| {
        b.iter(|| drop(black_box(bounded.token_lock().unwrap())))
    });
    for kind in [
        Kind::Flock,
        Kind::Ofd,
        Kind::RobustMutex,
        Kind::PosixSem,
        Kind::CasSpin,
        Kind::TicketSpin,
    ] {
        with_mechanism(
            kind,
            &arena,
            LockUnlock {
                group: &mut group,
                name: kind.name(),
            },
        );
    }
    group.finish();
    async_ratio(&lt);
    PosixSem::unlink(&arena.sem_name());
    keep.unlock().unwrap();
    keep_bounded.unlock().unwrap();
}

/// Polls `f` once with a no-op waker; it must be ready (an uncontended grant).
fn poll_ready<F: Future<Output = lockticket::Result<lockticket::AsyncTokenGuard>>>(
    f: F,
) -> lockticket::AsyncTokenGuard {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(g)) => g,
        Poll::Ready(Err(e)) => panic!("{e}"),
        Poll::Pending => panic!("an uncontended async request is pending"),
    }
}

/// Issue 19's target (uncontended async lock + unlock ≤ 1.5× the blocking one), measured
/// here side by side, interleaved, outside criterion: the median of 9 runs of 20,000 pairs
/// each, printed with the ratio.
fn async_ratio(lt: &lockticket::LockTicket) {
    let n = if support::quick_mode() {
        20_000
    } else {
        100_000
    };
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let (mut blocking, mut asynch) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        blocking.push(time(&|| drop(black_box(lt.token_lock().unwrap()))));
        asynch.push(time(&|| drop(black_box(poll_ready(lt.token_lock_async())))));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, a) = (med(&mut blocking), med(&mut asynch));
    println!(
        "uncontended exclusive lock + unlock: blocking {b:.1} ns, async (one poll, no-op waker) \
         {a:.1} ns: ratio {:.2}x (target <= 1.5x)",
        a / b
    );
}

/// The building blocks' costs, to explain the figures above: one atomic read-modify-write on
/// a word of a shared tmpfs mapping (x86: a `lock`-prefixed instruction), a sequentially
/// consistent store (`xchg`), and the clocks a lock path might read (`Instant::now` is
/// `CLOCK_MONOTONIC`; lockticket stamps requests with `CLOCK_REALTIME_COARSE`).
fn primitives(c: &mut Criterion) {
    let arena = Arena::create();
    let word = &arena.ctl.get().counter.0.value;
    let mut group = c.benchmark_group("primitives");
    support::configure(&mut group);
    group.bench_function("cas", |b| {
        let mut v = word.load(Relaxed);
        b.iter(|| {
            v = match word.compare_exchange(v, v.wrapping_add(1), SeqCst, Relaxed) {
                Ok(_) => v.wrapping_add(1),
                Err(now) => now,
            }
        })
    });
    group.bench_function("fetch_add", |b| b.iter(|| word.fetch_add(1, SeqCst)));
    group.bench_function("seqcst_store", |b| {
        b.iter(|| word.store(black_box(1), SeqCst))
    });
    group.bench_function("release_store", |b| {
        b.iter(|| word.store(black_box(1), Release))
    });
    group.bench_function("instant_now", |b| b.iter(std::time::Instant::now));
    group.bench_function("clock_realtime_coarse", |b| {
        b.iter(|| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec into a valid local.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
            black_box(ts.tv_nsec)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = uncontended, primitives
}
criterion_main!(benches);
