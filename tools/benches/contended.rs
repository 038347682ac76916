//! Multi-process benches: contended throughput and fairness (1 to 64 processes, three
//! workloads: the lock alone, 2 µs inside / 20 µs outside, 200 µs / 1 ms), kill storms, handoff
//! latency (ping-pong) and reclaim time after a SIGKILLed holder — lockticket against flock,
//! a robust process-shared pthread mutex, a bare CAS spin lock and a plain FIFO ticket spin
//! lock, in one run.
//!
//! Criterion's timing loop measures one thread; these benches measure *processes*, so this
//! binary has its own harness (`harness = false`, no criterion): it re-executes itself as
//! worker processes (role in `LOCKTICKET_BENCH_ROLE`), measures outside any timing loop, prints
//! a summary and writes `target/lockticket-bench/contended.json` (read by
//! `cargo run --release -p lockticket-tools --bin bench_report`).
//!
//! * `cargo bench -p lockticket-tools --bench contended` — the full run (about 70 s).
//! * `LOCKTICKET_BENCH_QUICK=1 cargo bench -p lockticket-tools --bench contended`, or `-- --quick` — short
//!   windows, 5 reclaim runs (about 10 s).
//! * `cargo bench -p lockticket-tools --bench contended -- FILTER` — only the measurements whose id contains
//!   FILTER (e.g. `contended/flock`); the results then go to `contended-partial.json`.
//! * `LOCKTICKET_BENCH_BOUND_US=5000` — the bound of the `lockticket_bounded` tables (default 1 ms).
//! * Without `--bench` (`cargo test --benches`) — a smoke run of a few ms per case, no JSON.
//!
//! Throughput: N workers each loop "lock → non-atomic increment of a shared counter → unlock"
//! until told to stop. After a warm-up the orchestrator samples the counter over several
//! windows; each worker's grants in the measured span give the shares (min/max) and the mean
//! burst (consecutive grants to one process). The counter must equal the sum of all workers'
//! operations at the end (else: panic). Measurements run in rounds, every mechanism once per
//! round, each after a short no-lock ping-pong that probes how far apart the CPUs are at that
//! moment (on a VM the host moves virtual CPUs around, and handoff-bound figures follow); the
//! throughput is the median window over all rounds. Wait times (lock call start to holding)
//! are measured in a *separate* run with two clock reads per operation, so that the
//! throughput runs carry no timing cost.
//!
//! For profilers: `LOCKTICKET_BENCH_ROLE=loop LOCKTICKET_BENCH_KIND=lockticket
//! LOCKTICKET_BENCH_COUNT=100000 valgrind --tool=callgrind target/release/deps/contended-HASH`
//! runs one process doing that many lock + unlock pairs (or `payload64` / `payload4096`
//! set + get); subtract a run with `COUNT=0`.
//!
//! Per grant under contention: `LOCKTICKET_BENCH_ROLE=grants LOCKTICKET_BENCH_KIND=KIND
//! LOCKTICKET_BENCH_PROCS=N LOCKTICKET_BENCH_COUNT=C LOCKTICKET_BENCH_WORK=2,20` runs N worker
//! processes that each do C grants with that work (µs inside, outside) and prints their
//! context switches per grant. Run it under `perf stat -e context-switches -e
//! syscalls:sys_enter_futex --filter 'op == 1'` (every process inherits the counters: futex
//! wakes per grant), or under `valgrind --tool=callgrind --trace-children=yes
//! --toggle-collect='*grant_loop*'` (instructions per grant: a worker's total minus its
//! `busy` work, over its grants).

mod support;

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use lockticket::{Fairness, LockTicket, MainGuard, Share};
use serde_json::{Value, json};
use support::locks::{Kind, Mechanism, PosixSem, Visit, with_mechanism};
use support::procs::{self, Worker};
use support::stats::{Histogram, median};
use support::{Arena, Control, PHASE_GO, PHASE_STOP, monotonic_ns, process_cpu_ns, wait_until};

/// Mechanisms of the throughput and handoff measurements.
const CONTENDED: [Kind; 7] = [
    Kind::LockTicket,
    Kind::LockTicketBounded,
    Kind::Flock,
    Kind::RobustMutex,
    Kind::CasSpin,
    Kind::TicketSpin,
    Kind::BatonRing,
];
/// Mechanisms of the reclaim measurement (flock for reference: the kernel drops it at exit).
const RECLAIM: [Kind; 4] = [
    Kind::LockTicket,
    Kind::LockTicketBounded,
    Kind::RobustMutex,
    Kind::Flock,
];
/// Mechanisms of the throughput measurement at every process count and workload.
const CONTENDED_ALL_N: [Kind; 5] = [
    Kind::LockTicket,
    Kind::LockTicketBounded,
    Kind::Flock,
    Kind::RobustMutex,
    Kind::BatonRing,
];
/// Process counts of the throughput measurement (the spin-lock floors only up to 4: with more
/// processes than CPUs they collapse, which is known and not what is measured here).
const PROCESSES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Holders and waiters SIGKILLed together in the kill-storm measurement (besides the holder).
const STORMS: [usize; 4] = [1, 4, 16, 64];

/// What a worker does besides taking the lock: busy work inside and outside the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Workload {
    name: &'static str,
    inside_us: u64,
    outside_us: u64,
}

/// The three workloads of issue 11: the lock alone, fine-grained, coarse.
const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "none",
        inside_us: 0,
        outside_us: 0,
    },
    Workload {
        name: "2us-20us",
        inside_us: 2,
        outside_us: 20,
    },
    Workload {
        name: "200us-1ms",
        inside_us: 200,
        outside_us: 1000,
    },
];

impl Workload {
    /// The measurement id (the no-work one keeps the historical `contended/KIND/N`).
    fn id(&self, kind: Kind, n: usize) -> String {
        if self.inside_us == 0 && self.outside_us == 0 {
            format!("contended/{}/{n}", kind.name())
        } else {
            format!("contended-{}/{}/{n}", self.name, kind.name())
        }
    }
}

/// Busy work of `iters` calibrated iterations (CPU work, not a clock wait: a preempted worker
/// does not get its work done meanwhile).
#[inline(never)]
fn busy(iters: u64) {
    let mut x = 0u64;
    for i in 0..iters {
        x = std::hint::black_box(x.wrapping_add(i));
    }
    std::hint::black_box(x);
}

/// Iterations of [`busy`] per µs on this machine (median of a few calibrations).
fn calibrate() -> f64 {
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let n = 2_000_000;
            let t = Instant::now();
            busy(n);
            n as f64 / (t.elapsed().as_nanos() as f64 / 1e3)
        })
        .collect();
    median(&runs)
}
/// Bound on any single wait for a worker: a hang becomes a failure.
const BOUND: Duration = Duration::from_secs(60);

const TAG_VAR: &str = "LOCKTICKET_BENCH_TAG";
const KIND_VAR: &str = "LOCKTICKET_BENCH_KIND";
const INDEX_VAR: &str = "LOCKTICKET_BENCH_INDEX";
const TIMED_VAR: &str = "LOCKTICKET_BENCH_TIMED";
const WORK_VAR: &str = "LOCKTICKET_BENCH_WORK";

/// Durations of one run.
#[derive(Clone, Copy, Debug)]
struct Config {
    mode: &'static str,
    /// Run time before the first sample.
    warmup: Duration,
    /// Length of one throughput sample window.
    window: Duration,
    /// Number of windows per round.
    windows: usize,
    /// Rounds: each round measures every mechanism once, in turn, so that slow phases of the
    /// (virtual) machine hit all of them alike.
    rounds: usize,
    /// Length of one ping-pong window.
    handoff_window: Duration,
    /// Number of ping-pong windows per round.
    handoff_windows: usize,
    /// Length of the cross-CPU link probe run before each measurement.
    probe: Duration,
    /// Length of the separate wait-time run.
    timed: Duration,
    /// Reclaim runs per mechanism.
    reclaim_runs: usize,
    /// How long the reclaim waiter waits (and goes to sleep) before the holder is killed.
    asleep: Duration,
}

impl Config {
    fn full() -> Config {
        Config {
            mode: "full",
            warmup: Duration::from_millis(150),
            window: Duration::from_millis(200),
            windows: 2,
            rounds: 4,
            handoff_window: Duration::from_millis(100),
            handoff_windows: 3,
            probe: Duration::from_millis(30),
            timed: Duration::from_millis(500),
            reclaim_runs: 21,
            asleep: Duration::from_millis(20),
        }
    }

    fn quick() -> Config {
        Config {
            mode: "quick",
            warmup: Duration::from_millis(50),
            window: Duration::from_millis(50),
            windows: 3,
            rounds: 1,
            handoff_window: Duration::from_millis(50),
            handoff_windows: 3,
            probe: Duration::from_millis(20),
            timed: Duration::from_millis(100),
            reclaim_runs: 5,
            asleep: Duration::from_millis(20),
        }
    }

    fn smoke() -> Config {
        Config {
            mode: "smoke",
            warmup: Duration::from_millis(5),
            window: Duration::from_millis(10),
            windows: 1,
            rounds: 1,
            handoff_window: Duration::from_millis(10),
            handoff_windows: 1,
            probe: Duration::from_millis(10),
            timed: Duration::from_millis(10),
            reclaim_runs: 1,
            asleep: Duration::from_millis(20),
        }
    }
}

fn main() {
    if let Some(role) = procs::role() {
        worker(&role);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let cfg = if !bench {
        Config::smoke()
    } else if support::quick_mode() {
        Config::quick()
    } else {
        Config::full()
    };
    let wanted = |id: &str| filters.is_empty() || filters.iter().any(|f| id.contains(f));
    let load_before = loadavg();
    let started = Instant::now();

    let syscall = syscall_costs();
    println!(
        "one trivial system call (getppid): {:.0} ns; a plain flock(LOCK_EX)+flock(LOCK_UN) \
         pair on /dev/shm, measured here outside the harness: {:.0} ns",
        syscall.0, syscall.1
    );
    let iters_per_us = calibrate();
    let mut throughput = Vec::new();
    for work in WORKLOADS {
        for n in PROCESSES {
            let kinds: Vec<Kind> = CONTENDED
                .into_iter()
                .filter(|k| CONTENDED_ALL_N.contains(k) || (n <= 4 && work == WORKLOADS[0]))
                .filter(|k| wanted(&work.id(*k, n)))
                .collect();
            let mut accs: Vec<Throughput> = kinds
                .iter()
                .map(|_| Throughput::new(n, work, iters_per_us))
                .collect();
            for _ in 0..cfg.rounds {
                for (kind, acc) in kinds.iter().zip(&mut accs) {
                    let before = link_probe(cfg);
                    let windows = acc.round(*kind, cfg);
                    let after = link_probe(cfg);
                    acc.links.extend([before, after]);
                    acc.window_links
                        .extend(std::iter::repeat_n(before.max(after), windows));
                }
            }
            for (kind, acc) in kinds.iter().zip(accs) {
                throughput.push(acc.finish(*kind, cfg));
            }
        }
    }
    let mut handoff = Vec::new();
    let kinds: Vec<Kind> = CONTENDED
        .into_iter()
        .chain([Kind::NoLock])
        .filter(|k| wanted(&format!("handoff/{}", k.name())))
        .collect();
    // Per mechanism: ns per handoff of every window, the link probes, each window's link.
    type Acc = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut accs: Vec<Acc> = kinds.iter().map(|_| Default::default()).collect();
    for _ in 0..cfg.rounds {
        for (kind, (ns, links, window_links)) in kinds.iter().zip(&mut accs) {
            let before = link_probe(cfg);
            let windows = ping_pong(*kind, cfg);
            let after = link_probe(cfg);
            links.extend([before, after]);
            window_links.extend(std::iter::repeat_n(before.max(after), windows.len()));
            ns.extend(windows);
        }
    }
    for (kind, (ns, links, window_links)) in kinds.iter().zip(accs) {
        let id = format!("handoff/{}", kind.name());
        let med = median(&ns);
        let (near, far) = split_by_link(&ns, &window_links);
        println!(
            "{id:<28} {med:>9.0} ns per handoff (CPUs near: {:.0} ns, far: {:.0} ns; windows: \
             {ns:.0?})",
            median(&near),
            median(&far)
        );
        handoff.push(json!({
            "id": id,
            "mechanism": kind.name(),
            "ns_per_handoff": med,
            "near": by_link(&near),
            "far": by_link(&far),
            "window_ns_per_handoff": ns,
            "window_link_ns": window_links,
            "link_ns": median(&links),
            "link_probes_ns": links,
        }));
    }

    let mut reclaim = Vec::new();
    for kind in RECLAIM {
        let id = format!("reclaim/{}", kind.name());
        if wanted(&id) {
            reclaim.push(reclaim_runs(&id, kind, cfg));
        }
    }

    let mut storms = Vec::new();
    for k in STORMS {
        let id = format!("killstorm/lockticket/{k}");
        if wanted(&id) {
            storms.push(kill_storm(&id, k, cfg));
        }
    }

    let report = json!({
        "mode": cfg.mode,
        "syscall_ns": syscall.0,
        "plain_flock_pair_ns": syscall.1,
        "busy_iters_per_us": iters_per_us,
        "config": format!("{cfg:?}"),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "throughput": throughput,
        "handoff": handoff,
        "reclaim": reclaim,
        "kill_storm": storms,
    });
    if bench {
        let dir = support::results_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let file = if filters.is_empty() {
            "contended.json"
        } else {
            "contended-partial.json"
        };
        let path = dir.join(file);
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!(
            "wrote {} ({:.1} s)",
            path.display(),
            started.elapsed().as_secs_f64()
        );
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Workers.

fn worker(role: &str) {
    if role == "loop" {
        return profile_loop();
    }
    if role == "grants" {
        return profile_grants();
    }
    let arena = Arena::open(&procs::param(TAG_VAR));
    let kind = Kind::from_name(&procs::param(KIND_VAR)).expect("mechanism");
    let index: usize = procs::param(INDEX_VAR).parse().unwrap();
    let ctl = arena.ctl.get();
    match role {
        "contend" => {
            let timed = procs::param(TIMED_VAR) == "1";
            let work = procs::param(WORK_VAR);
            let (inside, outside) = work.split_once(',').expect("work");
            let (inside, outside) = (inside.parse().unwrap(), outside.parse().unwrap());
            let line = with_mechanism(
                kind,
                &arena,
                Contend {
                    ctl,
                    index,
                    timed,
                    inside,
                    outside,
                },
            );
            procs::say(line);
        }
        "pingpong" => {
            let line = with_mechanism(kind, &arena, PingPong { ctl, index });
            procs::say(line);
        }
        "hold" => with_mechanism(kind, &arena, Hold),
        "wait" => {
            let line = with_mechanism(kind, &arena, WaitOnce);
            procs::say(line);
        }
        "grant" => {
            let count = procs::param("LOCKTICKET_BENCH_COUNT").parse().unwrap();
            let work = procs::param(WORK_VAR);
            let (inside, outside) = work.split_once(',').expect("work");
            let (inside, outside) = (inside.parse().unwrap(), outside.parse().unwrap());
            let line = with_mechanism(
                kind,
                &arena,
                Grants {
                    ctl,
                    count,
                    inside,
                    outside,
                },
            );
            procs::say(line);
        }
        other => panic!("unknown role {other}"),
    }
}

/// For profilers (`valgrind --tool=callgrind`): one process, `LOCKTICKET_BENCH_COUNT`
/// iterations of lock + unlock of `LOCKTICKET_BENCH_KIND` (a mechanism name), or of payload
/// set + get (`payload64`, `payload4096`), on fresh files of its own.
fn profile_loop() {
    let what = procs::param(KIND_VAR);
    let count: u64 = procs::param("LOCKTICKET_BENCH_COUNT").parse().unwrap();
    if let Some(size) = what.strip_prefix("payload") {
        let value = vec![7u8; size.parse().unwrap()];
        let lt = LockTicket::builder(format!("bench-{}", support::unique_tag()))
            .payload_capacity(8192)
            .open()
            .unwrap();
        let main = lt.main_lock(Share::Shared).unwrap();
        for _ in 0..count {
            lt.set_payload(std::hint::black_box(&value)).unwrap();
            std::hint::black_box(lt.payload().unwrap());
        }
        main.unlock().unwrap();
        return;
    }
    struct Loop(u64);
    impl Visit for Loop {
        type Out = ();
        fn visit<M: Mechanism>(self, m: &M) {
            for _ in 0..self.0 {
                m.with_lock(|| std::hint::black_box(()));
            }
        }
    }
    let setup = Setup {
        arena: Arena::create(),
        table: None,
        main: None,
    };
    with_mechanism(
        Kind::from_name(&what).expect("mechanism"),
        &setup.arena,
        Loop(count),
    );
}

/// For profilers: `LOCKTICKET_BENCH_PROCS` workers each take `LOCKTICKET_BENCH_COUNT` grants
/// of `LOCKTICKET_BENCH_KIND` with `LOCKTICKET_BENCH_WORK` (µs inside, outside), all started
/// together; prints the workers' context switches per grant. A fixed count, no clock: the
/// same grants under `perf stat` or callgrind, whatever the tool's slowdown.
fn profile_grants() {
    let kind = Kind::from_name(&procs::param(KIND_VAR)).expect("mechanism");
    let n: usize = procs::param("LOCKTICKET_BENCH_PROCS").parse().unwrap();
    let count: u64 = procs::param("LOCKTICKET_BENCH_COUNT").parse().unwrap();
    let work = procs::param(WORK_VAR);
    let (inside, outside) = work.split_once(',').expect("work");
    let per_us = calibrate();
    let iters = |us: &str| (us.parse::<f64>().unwrap() * per_us) as u64;
    let setup = Setup::new(kind);
    let ctl = setup.arena.ctl.get();
    ctl.ready.0.store(0, SeqCst);
    ctl.phase.0.store(0, SeqCst);
    let mut workers: Vec<Worker> = (0..n)
        .map(|i| {
            Worker::spawn(
                "grant",
                &[
                    (TAG_VAR, setup.arena.tag.clone()),
                    (KIND_VAR, kind.name().to_string()),
                    (INDEX_VAR, i.to_string()),
                    ("LOCKTICKET_BENCH_COUNT", count.to_string()),
                    (WORK_VAR, format!("{},{}", iters(inside), iters(outside))),
                ],
            )
        })
        .collect();
    wait_until("workers ready", BOUND * 10, || {
        ctl.ready.0.load(SeqCst) as usize == n
    });
    let started = Instant::now();
    ctl.phase.0.store(PHASE_GO, SeqCst);
    let (mut vol, mut invol) = (0u64, 0u64);
    for w in &mut workers {
        let line = w.hear(BOUND * 10);
        let mut it = line.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        vol += it.next().unwrap();
        invol += it.next().unwrap();
        w.join();
    }
    let grants = (n as u64 * count).max(1) as f64;
    println!(
        "{} N={n} {count} grants each, work {work} µs: {:.0} grants/s; per grant {:.3} voluntary \
         + {:.3} involuntary switches (workers' own)",
        kind.name(),
        grants / started.elapsed().as_secs_f64(),
        vol as f64 / grants,
        invol as f64 / grants,
    );
}

/// A fixed number of grants with work, for [`profile_grants`]. Reports `voluntary
/// involuntary` context switches over the grants.
struct Grants<'a> {
    ctl: &'a Control,
    count: u64,
    inside: u64,
    outside: u64,
}

impl Visit for Grants<'_> {
    type Out = String;
    fn visit<M: Mechanism>(self, m: &M) -> String {
        start_line(self.ctl);
        let before = sched_counters();
        grant_loop(m, self.count, self.inside, self.outside);
        let after = sched_counters();
        format!("{} {}", after[0] - before[0], after[1] - before[1])
    }
}

/// The grants of [`Grants`], alone in a function: `valgrind --tool=callgrind
/// --toggle-collect='*grant_loop*'` counts them without the start line's sleeps.
#[inline(never)]
fn grant_loop<M: Mechanism>(m: &M, count: u64, inside: u64, outside: u64) {
    for _ in 0..count {
        m.with_lock(|| busy(inside));
        busy(outside);
    }
}

/// Registers as ready and waits for the start signal.
fn start_line(ctl: &Control) {
    ctl.ready.0.fetch_add(1, SeqCst);
    while ctl.phase.0.load(Acquire) < PHASE_GO {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// This process's (voluntary, involuntary) context switches and CPU time in ns. Sleeping in
/// the kernel (futex, flock) counts as voluntary; preemption and `sched_yield` as involuntary.
fn sched_counters() -> [u64; 3] {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    [
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
        process_cpu_ns(),
    ]
}

/// Lock → increment → unlock until stopped. Reports `ops bursts voluntary-switches
/// involuntary-switches cpu-ns histogram`.
struct Contend<'a> {
    ctl: &'a Control,
    index: usize,
    timed: bool,
    /// Busy-work iterations inside the lock and after it.
    inside: u64,
    outside: u64,
}

impl Visit for Contend<'_> {
    type Out = String;
    fn visit<M: Mechanism>(self, m: &M) -> String {
        let ctl = self.ctl;
        let me = self.index as u64;
        let counter = &ctl.counter.0;
        let count = &ctl.counts[self.index].0;
        let bursts = &ctl.bursts[self.index].0;
        let mut hist = Histogram::default();
        let (mut n, mut b) = (0u64, 0u64);
        start_line(ctl);
        let before = sched_counters();
        if self.timed {
            loop {
                let t0 = Instant::now();
                let (t1, new) = m.with_lock(|| {
                    let t1 = Instant::now();
                    busy(self.inside);
                    (t1, counter.bump(me))
                });
                hist.record(t1.duration_since(t0).as_nanos() as u64);
                n += 1;
                b += u64::from(new);
                count.store(n, Relaxed);
                bursts.store(b, Relaxed);
                if ctl.phase.0.load(Relaxed) == PHASE_STOP {
                    break;
                }
                busy(self.outside);
            }
        } else {
            loop {
                let new = m.with_lock(|| {
                    busy(self.inside);
                    counter.bump(me)
                });
                n += 1;
                b += u64::from(new);
                count.store(n, Relaxed);
                bursts.store(b, Relaxed);
                if ctl.phase.0.load(Relaxed) == PHASE_STOP {
                    break;
                }
                busy(self.outside);
            }
        }
        let after = sched_counters();
        let [v, i, cpu] = [0, 1, 2].map(|k| after[k] - before[k]);
        format!("{n} {b} {v} {i} {cpu} {}", hist.encode())
    }
}

/// Two workers pass the turn back and forth through the lock: under the lock, the side whose
/// turn it is hands it to the other; the other side keeps taking the lock until it sees its
/// turn. Reports `handoffs`.
struct PingPong<'a> {
    ctl: &'a Control,
    index: usize,
}

impl Visit for PingPong<'_> {
    type Out = String;
    fn visit<M: Mechanism>(self, m: &M) -> String {
        let ctl = self.ctl;
        let me = self.index as u64;
        let c = &ctl.counter.0;
        let count = &ctl.counts[self.index].0;
        let mut n = 0u64;
        start_line(ctl);
        loop {
            let flipped = m.with_lock(|| {
                if c.turn.load(Acquire) == me {
                    let v = c.value.load(Relaxed);
                    c.value.store(v + 1, Relaxed);
                    c.turn.store(1 - me, Release);
                    true
                } else {
                    false
                }
            });
            if flipped {
                n += 1;
                count.store(n, Relaxed);
            }
            if ctl.phase.0.load(Relaxed) == PHASE_STOP {
                break;
            }
        }
        format!("{n}")
    }
}

/// Takes the lock, says so, and holds it until killed.
struct Hold;

impl Visit for Hold {
    type Out = ();
    fn visit<M: Mechanism>(self, m: &M) {
        m.with_lock(|| {
            procs::say("held");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    }
}

/// Says it is about to wait, waits for the lock once, and reports `acquired_at_ns cpu_ns
/// wall_ns owner_died`.
struct WaitOnce;

impl Visit for WaitOnce {
    type Out = String;
    fn visit<M: Mechanism>(self, m: &M) -> String {
        procs::say("waiting");
        let (wall0, cpu0) = (monotonic_ns(), process_cpu_ns());
        let (t1, cpu1) = m.with_lock(|| (monotonic_ns(), process_cpu_ns()));
        format!("{t1} {} {} {}", cpu1 - cpu0, t1 - wall0, m.owner_died())
    }
}

// ---------------------------------------------------------------------------------------------
// Orchestration.

/// The mode of `lockticket_bounded` tables: `Fairness::bounded()` (1 ms), or the bound in µs
/// given by `LOCKTICKET_BENCH_BOUND_US` (for experiments with the bound).
fn bounded_fairness() -> Fairness {
    std::env::var("LOCKTICKET_BENCH_BOUND_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Fairness::bounded(), |us| {
            Fairness::Bounded(Duration::from_micros(us))
        })
}

/// The arena of one measurement, and the table for lockticket (kept alive by our main lock).
struct Setup {
    arena: Arena,
    table: Option<&'static LockTicket>,
    main: Option<MainGuard<'static>>,
}

impl Setup {
    fn new(kind: Kind) -> Setup {
        let arena = Arena::create();
        let (mut table, mut main) = (None, None);
        if matches!(
            kind,
            Kind::LockTicket | Kind::LockTicketBounded | Kind::LockTicketShared
        ) {
            // Leaked (a few hundred bytes per measurement) so that the main guard can live
            // next to it; the guard removes the table when dropped. Room for 64 workers, a
            // kill storm of 66 and us (the default registry holds 64 owners).
            let lt: &'static LockTicket = Box::leak(Box::new(
                LockTicket::builder(arena.table_name())
                    .member_capacity(256)
                    .fairness(if kind == Kind::LockTicketBounded {
                        bounded_fairness()
                    } else {
                        Fairness::Strict
                    })
                    .open()
                    .unwrap(),
            ));
            main = Some(lt.main_lock(Share::Shared).unwrap());
            table = Some(lt);
        }
        Setup { arena, table, main }
    }

    fn spawn(&self, role: &str, kind: Kind, index: usize, timed: bool) -> Worker {
        self.spawn_work(role, kind, index, timed, (0, 0), None)
    }

    /// A worker with `work` (busy iterations inside, outside the lock), in process `group`.
    fn spawn_work(
        &self,
        role: &str,
        kind: Kind,
        index: usize,
        timed: bool,
        work: (u64, u64),
        group: Option<i32>,
    ) -> Worker {
        Worker::spawn_in_group(
            role,
            &[
                (TAG_VAR, self.arena.tag.clone()),
                (KIND_VAR, kind.name().to_string()),
                (INDEX_VAR, index.to_string()),
                (TIMED_VAR, if timed { "1" } else { "0" }.to_string()),
                (WORK_VAR, format!("{},{}", work.0, work.1)),
            ],
            group,
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(main) = self.main.take() {
            main.unlock().expect("main unlock");
        }
        PosixSem::unlink(&self.arena.sem_name());
    }
}

/// What the orchestrator reads at one instant.
struct Snapshot {
    at: Instant,
    counter: u64,
    counts: Vec<u64>,
    bursts: Vec<u64>,
}

fn snapshot(ctl: &Control, n: usize) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        counter: ctl.counter.0.value.load(Relaxed),
        counts: (0..n).map(|i| ctl.counts[i].0.load(Relaxed)).collect(),
        bursts: (0..n).map(|i| ctl.bursts[i].0.load(Relaxed)).collect(),
    }
}

/// One run of `n` workers in `role`: start, sample `windows` windows, stop, collect reports.
#[allow(clippy::too_many_arguments)]
fn run_workers(
    setup: &Setup,
    role: &str,
    kind: Kind,
    n: usize,
    timed: bool,
    work: (u64, u64),
    warmup: Duration,
    windows: &[Duration],
) -> (Vec<Snapshot>, Vec<String>) {
    let ctl = setup.arena.ctl.get();
    ctl.ready.0.store(0, SeqCst);
    ctl.phase.0.store(0, SeqCst);
    ctl.counter.0.value.store(0, SeqCst);
    ctl.counter.0.last.store(0, SeqCst);
    ctl.counter.0.turn.store(0, SeqCst);
    for i in 0..n {
        ctl.counts[i].0.store(0, SeqCst);
        ctl.bursts[i].0.store(0, SeqCst);
    }
    let mut workers: Vec<Worker> = (0..n)
        .map(|i| setup.spawn_work(role, kind, i, timed, work, None))
        .collect();
    wait_until("workers ready", BOUND, || {
        ctl.ready.0.load(SeqCst) as usize == n
    });
    ctl.phase.0.store(PHASE_GO, SeqCst);
    std::thread::sleep(warmup);
    let mut snaps = vec![snapshot(ctl, n)];
    for w in windows {
        std::thread::sleep(*w);
        snaps.push(snapshot(ctl, n));
    }
    ctl.phase.0.store(PHASE_STOP, SeqCst);
    let reports = workers.iter_mut().map(|w| w.hear(BOUND)).collect();
    for w in &mut workers {
        w.join();
    }
    (snaps, reports)
}

fn rate(a: &Snapshot, b: &Snapshot) -> f64 {
    (b.counter - a.counter) as f64 / b.at.duration_since(a.at).as_secs_f64()
}

/// What the contend workers reported, summed.
#[derive(Default)]
struct Reports {
    ops: Vec<u64>,
    voluntary: u64,
    involuntary: u64,
    cpu_ns: u64,
    hist: Histogram,
}

/// Parses contend reports and checks the counter.
fn check_contend_reports(id: &str, ctl: &Control, reports: &[String]) -> Reports {
    let mut out = Reports::default();
    for r in reports {
        let f: Vec<&str> = r.splitn(6, ' ').collect();
        let num = |i: usize| f[i].parse::<u64>().unwrap();
        out.ops.push(num(0));
        out.voluntary += num(2);
        out.involuntary += num(3);
        out.cpu_ns += num(4);
        out.hist.merge(&Histogram::decode(f[5]));
    }
    let total: u64 = out.ops.iter().sum();
    let counter = ctl.counter.0.value.load(SeqCst);
    assert_eq!(
        counter, total,
        "{id}: the counter is {counter} after {total} increments under the lock: mutual \
         exclusion failed"
    );
    out
}

/// The throughput measurement of one mechanism at one process count, over rounds.
struct Throughput {
    n: usize,
    work: Workload,
    /// Busy-work iterations (inside, outside).
    iters: (u64, u64),
    /// Ops/s of every window of every round.
    rates: Vec<f64>,
    /// Grants per worker in the measured windows, summed over rounds.
    grants: Vec<u64>,
    /// New bursts in the measured windows, summed over rounds.
    bursts: u64,
    ops: u64,
    voluntary: u64,
    involuntary: u64,
    cpu_ns: u64,
    /// Cross-CPU link probes taken before and after each round (ns per cache-line handoff).
    links: Vec<f64>,
    /// For each window, the slower of its round's two probes.
    window_links: Vec<f64>,
}

impl Throughput {
    fn new(n: usize, work: Workload, iters_per_us: f64) -> Throughput {
        Throughput {
            n,
            work,
            iters: (
                (work.inside_us as f64 * iters_per_us) as u64,
                (work.outside_us as f64 * iters_per_us) as u64,
            ),
            rates: Vec::new(),
            grants: vec![0; n],
            bursts: 0,
            ops: 0,
            voluntary: 0,
            involuntary: 0,
            cpu_ns: 0,
            links: Vec::new(),
            window_links: Vec::new(),
        }
    }

    /// One round: `n` workers, warm-up, `cfg.windows` windows; no clock reads in the loop.
    /// Returns the number of windows.
    fn round(&mut self, kind: Kind, cfg: Config) -> usize {
        let n = self.n;
        let id = self.work.id(kind, n);
        let setup = Setup::new(kind);
        let windows = vec![cfg.window; cfg.windows];
        let (snaps, reports) = run_workers(
            &setup, "contend", kind, n, false, self.iters, cfg.warmup, &windows,
        );
        let rep = check_contend_reports(&id, setup.arena.ctl.get(), &reports);
        self.rates
            .extend(snaps.windows(2).map(|w| rate(&w[0], &w[1])));
        let (first, last) = (&snaps[0], &snaps[snaps.len() - 1]);
        for i in 0..n {
            self.grants[i] += last.counts[i] - first.counts[i];
            self.bursts += last.bursts[i] - first.bursts[i];
        }
        self.ops += rep.ops.iter().sum::<u64>();
        self.voluntary += rep.voluntary;
        self.involuntary += rep.involuntary;
        self.cpu_ns += rep.cpu_ns;
        windows.len()
    }

    /// Adds the wait-time run (two clock reads per operation) and summarises.
    fn finish(self, kind: Kind, cfg: Config) -> Value {
        let n = self.n;
        let id = self.work.id(kind, n);
        let setup = Setup::new(kind);
        let (tsnaps, treports) = run_workers(
            &setup,
            "contend",
            kind,
            n,
            true,
            self.iters,
            cfg.warmup,
            &[cfg.timed],
        );
        let hist = check_contend_reports(&id, setup.arena.ctl.get(), &treports).hist;
        let timed_rate = rate(&tsnaps[0], &tsnaps[1]);

        let total: u64 = self.grants.iter().sum();
        let shares: Vec<f64> = self
            .grants
            .iter()
            .map(|&g| g as f64 / total.max(1) as f64)
            .collect();
        let max = *self.grants.iter().max().unwrap();
        let min_max = *self.grants.iter().min().unwrap() as f64 / max.max(1) as f64;
        let mean_burst = total as f64 / self.bursts.max(1) as f64;
        let ops_per_s = median(&self.rates);
        let all_ops = self.ops.max(1) as f64;
        let link = median(&self.links);
        let (near, far) = split_by_link(&self.rates, &self.window_links);
        println!(
            "{id:<36} {:>11.0} ops/s  min/max share {min_max:.3}  mean burst {mean_burst:>7.1}  \
             wait p50 {} p99 {} max {} ns  (timed run {:.3} M ops/s)  per op: {:.3} voluntary + \
             {:.3} involuntary switches, {:.0} ns CPU; CPUs near {:.3} M, far {:.3} M ops/s",
            ops_per_s,
            hist.quantile(0.5),
            hist.quantile(0.99),
            hist.max(),
            timed_rate / 1e6,
            self.voluntary as f64 / all_ops,
            self.involuntary as f64 / all_ops,
            self.cpu_ns as f64 / all_ops,
            median(&near) / 1e6,
            median(&far) / 1e6,
        );
        json!({
            "id": id,
            "mechanism": kind.name(),
            "workload": self.work.name,
            "inside_us": self.work.inside_us,
            "outside_us": self.work.outside_us,
            "processes": n,
            "ops_per_s": ops_per_s,
            "window_ops_per_s": self.rates,
            "grants": self.grants,
            "shares": shares,
            "min_max_share": min_max,
            "mean_burst": mean_burst,
            "counter_checked": true,
            "wait_ns": {
                "p50": hist.quantile(0.5),
                "p90": hist.quantile(0.9),
                "p99": hist.quantile(0.99),
                "p999": hist.quantile(0.999),
                "max": hist.max(),
                "samples": hist.total(),
            },
            "timed_run_ops_per_s": timed_rate,
            "per_op": {
                "voluntary_switches": self.voluntary as f64 / all_ops,
                "involuntary_switches": self.involuntary as f64 / all_ops,
                "cpu_ns": self.cpu_ns as f64 / all_ops,
            },
            "near": by_link(&near),
            "far": by_link(&far),
            "window_link_ns": self.window_links,
            "link_ns": link,
            "link_probes_ns": self.links,
        })
    }
}

/// Probes slower than this (ns per cache-line handoff) mean the two CPUs were far apart.
const FAR_LINK_NS: f64 = 100.0;

/// Splits window values by their round's link probe: (CPUs near, CPUs far).
fn split_by_link(values: &[f64], links: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let near = values.iter().zip(links).filter(|(_, l)| **l < FAR_LINK_NS);
    let far = values.iter().zip(links).filter(|(_, l)| **l >= FAR_LINK_NS);
    (
        near.map(|(v, _)| *v).collect(),
        far.map(|(v, _)| *v).collect(),
    )
}

/// The JSON summary of the windows measured in one link state (`null` when none).
fn by_link(values: &[f64]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    json!({ "median": median(values), "windows": values.len() })
}

/// The ping-pong of `kind`: ns per handoff in each window of one run.
fn ping_pong(kind: Kind, cfg: Config) -> Vec<f64> {
    ping_pong_run(
        kind,
        cfg.warmup,
        &vec![cfg.handoff_window; cfg.handoff_windows],
    )
}

/// How far apart the two CPUs are right now: a no-lock ping-pong (ns per cache-line
/// handoff). On a VM this moves with the host's placement of the virtual CPUs.
fn link_probe(cfg: Config) -> f64 {
    median(&ping_pong_run(Kind::NoLock, cfg.probe / 3, &[cfg.probe]))
}

fn ping_pong_run(kind: Kind, warmup: Duration, windows: &[Duration]) -> Vec<f64> {
    let setup = Setup::new(kind);
    let ctl = setup.arena.ctl.get();
    let (snaps, reports) = run_workers(&setup, "pingpong", kind, 2, false, (0, 0), warmup, windows);
    let total: u64 = reports.iter().map(|r| r.parse::<u64>().unwrap()).sum();
    let counter = ctl.counter.0.value.load(SeqCst);
    assert_eq!(
        counter,
        total,
        "handoff/{}: counter {counter} after {total} handoffs",
        kind.name()
    );
    // Handoffs are the counter's increments: each passes the turn to the other process.
    snaps
        .windows(2)
        .map(|w| {
            let d = (w[1].counter - w[0].counter).max(1) as f64;
            w[1].at.duration_since(w[0].at).as_nanos() as f64 / d
        })
        .collect()
}

fn reclaim_runs(id: &str, kind: Kind, cfg: Config) -> Value {
    let setup = Setup::new(kind);
    let mut reclaim_ms = Vec::new();
    let mut cpu_pct = Vec::new();
    let mut died = Vec::new();
    for _ in 0..cfg.reclaim_runs {
        let mut holder = setup.spawn("hold", kind, 0, false);
        assert_eq!(holder.hear(BOUND), "held");
        let mut waiter = setup.spawn("wait", kind, 1, false);
        assert_eq!(waiter.hear(BOUND), "waiting");
        if let Some(lt) = setup.table {
            let pid = waiter.pid();
            wait_until("the waiter in the queue", BOUND, || {
                lt.status().unwrap().queue.iter().any(|t| t.pid == pid)
            });
        }
        // Long past any spin or yield phase: the waiter sleeps now.
        std::thread::sleep(cfg.asleep);
        let killed_at = monotonic_ns();
        holder.kill();
        let line = waiter.hear(BOUND);
        waiter.join();
        let f: Vec<&str> = line.split(' ').collect();
        let acquired_at: u64 = f[0].parse().unwrap();
        let cpu_ns: f64 = f[1].parse().unwrap();
        let wall_ns: f64 = f[2].parse().unwrap();
        reclaim_ms.push(acquired_at.saturating_sub(killed_at) as f64 / 1e6);
        cpu_pct.push(100.0 * cpu_ns / wall_ns);
        died.push(f[3] == "true");
    }
    let med = median(&reclaim_ms);
    let max = reclaim_ms.iter().cloned().fold(0.0, f64::max);
    let cpu = median(&cpu_pct);
    let cpu_max = cpu_pct.iter().cloned().fold(0.0, f64::max);
    let died_all = died.iter().all(|&d| d);
    println!(
        "{id:<28} median {med:.3} ms, max {max:.3} ms over {} runs; waiter CPU while waiting \
         median {cpu:.2} % (max {cpu_max:.2} %); owner death reported: {died_all}",
        reclaim_ms.len()
    );
    json!({
        "id": id,
        "mechanism": kind.name(),
        "median_ms": med,
        "max_ms": max,
        "runs_ms": reclaim_ms,
        "waiter_cpu_percent_median": cpu,
        "waiter_cpu_percent_max": cpu_max,
        "owner_death_reported": died_all,
    })
}

/// The cost of one trivial system call (`getppid`) and of a plain flock pair on a fresh
/// /dev/shm file, measured in this process outside the worker harness (ns, medians of runs).
fn syscall_costs() -> (f64, f64) {
    let n = 200_000;
    let per = |f: &dyn Fn()| {
        let runs: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    f();
                }
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .collect();
        median(&runs)
    };
    let getppid = per(&|| {
        // SAFETY: getppid takes no memory.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    });
    let path = format!(
        "/dev/shm/lockticket-bench-flockpair-{}",
        support::unique_tag()
    );
    let file = std::fs::File::create(&path).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let pair = per(&|| {
        // SAFETY: flock takes no memory; the descriptor is owned by `file` for the whole
        // measurement.
        unsafe {
            libc::flock(fd, libc::LOCK_EX);
            libc::flock(fd, libc::LOCK_UN);
        }
    });
    let _ = std::fs::remove_file(&path);
    (getppid, pair)
}

/// Kill storm: a holder and `k` waiters queued behind it, all in one process group, are
/// SIGKILLed at once; a survivor queued behind them reports when it got the token.
fn kill_storm(id: &str, k: usize, cfg: Config) -> Value {
    let mut reclaim_ms = Vec::new();
    let mut cpu_pct = Vec::new();
    let runs = cfg.reclaim_runs.clamp(1, 5);
    for _ in 0..runs {
        let setup = Setup::new(Kind::LockTicket);
        let lt = setup.table.expect("table");
        let mut holder = setup.spawn_work("hold", Kind::LockTicket, 0, false, (0, 0), Some(0));
        assert_eq!(holder.hear(BOUND), "held");
        let group = holder.pid() as i32;
        let mut doomed = Vec::new();
        for i in 0..k {
            let mut w =
                setup.spawn_work("wait", Kind::LockTicket, i + 1, false, (0, 0), Some(group));
            assert_eq!(w.hear(BOUND), "waiting");
            let pid = w.pid();
            wait_until("a doomed waiter in the queue", BOUND, || {
                lt.status().unwrap().queue.iter().any(|t| t.pid == pid)
            });
            doomed.push(w);
        }
        let mut survivor = setup.spawn("wait", Kind::LockTicket, k + 1, false);
        assert_eq!(survivor.hear(BOUND), "waiting");
        let pid = survivor.pid();
        wait_until("the survivor in the queue", BOUND, || {
            lt.status().unwrap().queue.iter().any(|t| t.pid == pid)
        });
        std::thread::sleep(cfg.asleep);
        let killed_at = monotonic_ns();
        // SAFETY: kill takes no memory; the group is the one our holder leads.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let line = survivor.hear(BOUND);
        survivor.join();
        holder.kill();
        for w in &mut doomed {
            w.kill();
        }
        let f: Vec<&str> = line.split(' ').collect();
        let acquired_at: u64 = f[0].parse().unwrap();
        let cpu_ns: f64 = f[1].parse().unwrap();
        let wall_ns: f64 = f[2].parse().unwrap();
        reclaim_ms.push(acquired_at.saturating_sub(killed_at) as f64 / 1e6);
        cpu_pct.push(100.0 * cpu_ns / wall_ns);
    }
    let med = median(&reclaim_ms);
    let max = reclaim_ms.iter().cloned().fold(0.0, f64::max);
    let cpu = median(&cpu_pct);
    println!(
        "{id:<28} survivor granted {med:.3} ms (median; max {max:.3} ms over {runs} runs) after \
         the holder and {k} waiters were SIGKILLed together; survivor CPU while waiting median \
         {cpu:.2} %"
    );
    json!({
        "id": id,
        "killed_waiters": k,
        "median_ms": med,
        "max_ms": max,
        "runs_ms": reclaim_ms,
        "survivor_cpu_percent_median": cpu,
    })
}
