//! Writes `docs/benchmarks.md` and `docs/benchmarks-throughput.svg` from the results of the
//! last `cargo bench -p lockticket-tools`:
//!
//! * criterion's medians, `target/criterion/{uncontended,payload}/**/new/estimates.json`;
//! * the multi-process results of `tools/benches/contended.rs`, `target/lockticket-bench/contended.json`.
//!
//! ```text
//! cargo bench -p lockticket-tools && cargo run --release -p lockticket-tools --bin bench_report
//! ```
//!
//! The section between the `analysis:begin` and `analysis:end` markers of an existing
//! `docs/benchmarks.md` is hand-written (profiling notes) and kept as it is.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// The command that produces the figures (written at the top of the report).
const COMMAND: &str =
    "cargo bench -p lockticket-tools && cargo run --release -p lockticket-tools --bin bench_report";
const BEGIN: &str = "<!-- analysis:begin (hand-written; kept by bench_report) -->";
const END: &str = "<!-- analysis:end -->";

/// The design brief's figures for the Perl original (measured on the project's development
/// machine, not in this run).
const PERL_LOCK_UNLOCK_NS: f64 = 38_500.0;
const PERL_CONTENDED_2: f64 = 282.0;
const PERL_PAYLOAD_NS: f64 = 22_000.0;

/// Link probes at or above this (ns per cache-line handoff) count as "CPUs far" (as in
/// `tools/benches/contended.rs`).
const FAR: u32 = 100;

/// Mechanisms of the multi-process measurements, in table order.
const MULTI: [&str; 7] = [
    "lockticket",
    "lockticket_bounded",
    "flock",
    "robust_mutex",
    "cas_spin",
    "ticket_spin",
    "baton_ring",
];

/// Mechanisms of the N-scan (every workload, every N), in table order.
const SCAN: [&str; 5] = [
    "lockticket",
    "lockticket_bounded",
    "flock",
    "robust_mutex",
    "baton_ring",
];

/// Process counts of the N-scan.
const NS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Workloads of the N-scan: JSON name, description.
const WORKLOADS: [(&str, &str); 3] = [
    (
        "none",
        "no work: the lock alone (a counter increment inside)",
    ),
    (
        "2us-20us",
        "2 µs of busy work inside the lock, 20 µs outside",
    ),
    (
        "200us-1ms",
        "200 µs of busy work inside the lock, 1 ms outside",
    ),
];

/// The bounded-fairness bound (`Fairness::bounded()`), in ms.
const BOUND_MS: f64 = 1.0;

fn main() {
    // The workspace root (this tool lives in `tools/`): its `target/` and `docs/`.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ is in the workspace");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let data = Data::load(&target);
    let doc_path = root.join("docs/benchmarks.md");
    let svg_path = root.join("docs/benchmarks-throughput.svg");
    let wait_svg_path = root.join("docs/benchmarks-worst-wait.svg");
    let analysis = std::fs::read_to_string(&doc_path)
        .ok()
        .and_then(|old| {
            let a = old.find(BEGIN)? + BEGIN.len();
            let b = old[a..].find(END)? + a;
            Some(old[a..b].trim().to_string())
        })
        .unwrap_or_else(|| "(No analysis written yet.)".to_string());
    std::fs::create_dir_all(root.join("docs")).unwrap();
    plot_scan(&data, &svg_path, Metric::Throughput);
    plot_scan(&data, &wait_svg_path, Metric::WorstWait);
    let md = render(&data, &analysis);
    std::fs::write(&doc_path, md).unwrap();
    println!(
        "wrote {}, {} and {}",
        doc_path.display(),
        svg_path.display(),
        wait_svg_path.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs.

/// A criterion estimate: median and its 95 % confidence interval, in ns.
#[derive(Clone, Copy, Debug)]
struct Est {
    median: f64,
    lo: f64,
    hi: f64,
}

struct Data {
    criterion: PathBuf,
    contended: Value,
    contended_path: PathBuf,
}

impl Data {
    fn load(target: &Path) -> Data {
        let contended_path = target.join("lockticket-bench/contended.json");
        let contended = std::fs::read_to_string(&contended_path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| {
                eprintln!(
                    "warning: {} missing: run `cargo bench -p lockticket-tools --bench contended` first",
                    contended_path.display()
                );
                Value::Null
            });
        Data {
            criterion: target.join("criterion"),
            contended,
            contended_path,
        }
    }

    /// Criterion's median for `group/id` (ns per iteration).
    fn est(&self, group: &str, id: &str) -> Option<Est> {
        let path = self
            .criterion
            .join(group)
            .join(id)
            .join("new/estimates.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        let m = &v["median"];
        Some(Est {
            median: m["point_estimate"].as_f64()?,
            lo: m["confidence_interval"]["lower_bound"].as_f64()?,
            hi: m["confidence_interval"]["upper_bound"].as_f64()?,
        })
    }

    fn median(&self, group: &str, id: &str) -> Option<f64> {
        self.est(group, id).map(|e| e.median)
    }

    /// When criterion last wrote `group/id`.
    fn criterion_time(&self, group: &str, id: &str) -> Option<std::time::SystemTime> {
        let path = self
            .criterion
            .join(group)
            .join(id)
            .join("new/estimates.json");
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    fn throughput(&self, mech: &str, n: u64) -> Option<&Value> {
        self.tp(mech, "none", n)
    }

    /// The throughput entry of `mech` with `n` processes on `workload`.
    fn tp(&self, mech: &str, workload: &str, n: u64) -> Option<&Value> {
        self.contended["throughput"].as_array()?.iter().find(|e| {
            e["mechanism"] == mech
                && e["processes"].as_u64() == Some(n)
                && e["workload"].as_str().unwrap_or("none") == workload
        })
    }

    /// Ops/s of `mech` on `workload` with `n` processes.
    fn wops(&self, mech: &str, workload: &str, n: u64) -> Option<f64> {
        self.tp(mech, workload, n)?["ops_per_s"].as_f64()
    }

    /// Ratio of `mech`'s ops/s to flock's, same workload and N.
    fn vs_flock(&self, mech: &str, workload: &str, n: u64) -> Option<f64> {
        Some(self.wops(mech, workload, n)? / self.wops("flock", workload, n)?)
    }

    /// Worst wait (the longest lock call of the wait-time run), in ns.
    fn wait_max(&self, mech: &str, workload: &str, n: u64) -> Option<f64> {
        self.tp(mech, workload, n)?["wait_ns"]["max"].as_f64()
    }

    fn wshare(&self, mech: &str, workload: &str, n: u64) -> Option<f64> {
        self.tp(mech, workload, n)?["min_max_share"].as_f64()
    }

    fn ops(&self, mech: &str, n: u64) -> Option<f64> {
        self.throughput(mech, n)?["ops_per_s"].as_f64()
    }

    fn entry(&self, section: &str, mech: &str) -> Option<&Value> {
        self.contended[section]
            .as_array()?
            .iter()
            .find(|e| e["mechanism"] == mech)
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers.

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} µs", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.2} µs", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0} ns")
    } else {
        format!("{v:.1} ns")
    }
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".to_string())
}

fn mops(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0} k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// An axis label: `100 M`, `2.5 M`, `10 k`, `100`.
fn axis(v: f64) -> String {
    let (x, unit) = if v >= 1e6 {
        (v / 1e6, " M")
    } else if v >= 1e3 {
        (v / 1e3, " k")
    } else {
        (v, "")
    };
    if x >= 10.0 || (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}{unit}")
    } else {
        format!("{x:.1}{unit}")
    }
}

fn ratio(v: f64) -> String {
    if v < 0.01 {
        format!("{v:.1e}×")
    } else if v >= 100.0 {
        format!("{v:.0}×")
    } else if v >= 10.0 {
        format!("{v:.1}×")
    } else {
        format!("{v:.2}×")
    }
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
    .to_string()
}

fn label(mech: &str) -> &'static str {
    match mech {
        "lockticket" => "lockticket (exclusive token)",
        "lockticket_bounded" => "lockticket, bounded fairness (1 ms)",
        "lockticket_bounded_exclusive" => "lockticket exclusive token, bounded fairness (1 ms)",
        "lockticket_exclusive" => "lockticket exclusive token",
        "lockticket_shared" => "lockticket shared token",
        "flock" => "flock(LOCK_EX) + flock(LOCK_UN)",
        "ofd_fcntl" => "OFD fcntl (F_OFD_SETLKW / F_UNLCK)",
        "robust_mutex" => "robust process-shared pthread mutex",
        "posix_semaphore" => "POSIX named semaphore",
        "cas_spin" => "bare CAS spin lock (the floor)",
        "ticket_spin" => "plain FIFO ticket lock, all spin (the FIFO floor)",
        "baton_ring" => "baton ring: a turn passed by one futex wake (the sleeping-FIFO reference)",
        "no_lock" => "no lock (turn word only: the cache-line floor)",
        _ => "?",
    }
}

fn short(mech: &str) -> &'static str {
    match mech {
        "lockticket" => "lockticket",
        "lockticket_bounded" => "lockticket bounded",
        "flock" => "flock",
        "robust_mutex" => "robust mutex",
        "cas_spin" => "CAS spin",
        "ticket_spin" => "ticket spin",
        "baton_ring" => "baton ring",
        _ => "?",
    }
}

/// The three load averages of a `/proc/loadavg` line.
fn load(v: &Value) -> String {
    v.as_str()
        .unwrap_or("?")
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn machine() -> String {
    let cpuinfo = read_trim("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown")
        .to_string();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = read_trim("/proc/sys/kernel/osrelease");
    let mem = read_trim("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_string()))
        .unwrap_or_default();
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let clock = read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    format!(
        "| | |\n|---|---|\n| CPU | {model} |\n| logical CPUs | {cpus} |\n| memory | {mem} |\n\
         | kernel (`uname -r`) | {kernel} |\n| clock source | {clock} |\n| compiler | {rustc} |\n"
    )
}

fn utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_secs(secs)
}

fn utc_secs(secs: u64) -> String {
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

// ---------------------------------------------------------------------------------------------
// The report.

fn render(d: &Data, analysis: &str) -> String {
    let mut s = String::new();
    let c = &d.contended;
    let w = &mut s;
    writeln!(w, "# Benchmarks\n").unwrap();
    writeln!(
        w,
        "Generated by `tools/src/bin/bench_report.rs` from one benchmark run on one machine. \
         Produced with:\n\n```sh\n{COMMAND}\n```\n"
    )
    .unwrap();
    let crit_time = d
        .criterion_time("uncontended", "lockticket_exclusive")
        .map(utc);
    writeln!(
        w,
        "* criterion benches (`tools/benches/uncontended.rs`, `tools/benches/payload.rs`): medians from \
         `target/criterion/*/*/new/estimates.json`, written {};",
        crit_time.unwrap_or_else(|| "— (not run)".into())
    )
    .unwrap();
    writeln!(
        w,
        "* multi-process benches (`tools/benches/contended.rs`, own harness): `{}`, written {}, mode \
         `{}`, {:.0} s; load average before `{}`, after `{}` (1, 5, 15 min).\n",
        d.contended_path
            .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
            .unwrap_or(&d.contended_path)
            .display(),
        c["unix_time"]
            .as_u64()
            .map(utc_secs)
            .unwrap_or_else(|| "— (not run)".into()),
        c["mode"].as_str().unwrap_or("?"),
        c["elapsed_s"].as_f64().unwrap_or(0.0),
        load(&c["loadavg_before"]),
        load(&c["loadavg_after"]),
    )
    .unwrap();
    if c["mode"].as_str() != Some("full") {
        writeln!(
            w,
            "> **Not a publishable run**: the multi-process results come from a `{}` run. \
             Re-run `cargo bench -p lockticket-tools` (no quick mode) on a quiet machine.\n",
            c["mode"].as_str().unwrap_or("missing")
        )
        .unwrap();
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let load1 = |k: &str| {
        c[k].as_str()
            .and_then(|l| l.split(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let busy = load1("loadavg_before").max(load1("loadavg_after"));
    if busy > 1.5 * cpus {
        writeln!(
            w,
            "> **Loaded machine**: the 1-minute load average reached {busy:.1} on {cpus:.0} \
             CPUs around the multi-process run; other jobs shared the CPUs, and absolute \
             figures (worst waits above all) carry their noise. Compare ratios within this run.\n"
        )
        .unwrap();
    }
    writeln!(w, "## Machine\n\n{}", machine()).unwrap();
    let mut probes: Vec<f64> = ["throughput", "handoff"]
        .iter()
        .filter_map(|k| c[*k].as_array())
        .flatten()
        .filter_map(|e| e["link_probes_ns"].as_array())
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    probes.sort_by(f64::total_cmp);
    if !probes.is_empty() {
        writeln!(
            w,
            "Distance between the two CPUs during the multi-process benches: a no-lock \
             ping-pong probe run before and after every measurement round took {} per \
             cache-line handoff (min), {} (median), {} (max) over {} probes. {}\n",
            ns(probes[0]),
            ns(probes[probes.len() / 2]),
            ns(probes[probes.len() - 1]),
            probes.len(),
            if probes[probes.len() - 1] >= f64::from(FAR) {
                "The host moved the two virtual CPUs between close (~50 ns) and distant \
                 (~200 ns) placements during this run; handoff-bound figures (2-process \
                 throughput, ping-pong) follow that by up to 5×; the no-work N ≤ 4 results are \
                 also split by placement below. Compare mechanisms within one placement."
            } else {
                "All probes were under 100 ns: the two virtual CPUs stayed close together for \
                 the whole run. (On this VM the host sometimes places them far apart, ~200 ns \
                 per handoff, for seconds at a time; handoff-bound figures then drop by up to \
                 5×: see the analysis. The benches measure in rounds and split results by \
                 placement for that reason.)"
            }
        )
        .unwrap();
    }

    targets(w, d);
    uncontended(w, d);
    scan(w, d);
    kill_storms(w, d);
    contended(w, d);
    handoff(w, d);
    reclaim(w, d);
    payload(w, d);
    perl(w, d);

    writeln!(w, "## Analysis\n\n{BEGIN}\n\n{analysis}\n\n{END}\n").unwrap();
    method(w);
    s
}

/// One measured cell of a target: where, the figure, the limit it is held to, as shown.
struct Cell {
    at: String,
    value: f64,
    limit: f64,
    shown: String,
}

/// The "measured" and "verdict" columns of a target over its cells: met when every cell is at
/// least (`higher`) or at most its limit.
fn check(cells: &[Cell], higher: bool) -> (String, String) {
    if cells.is_empty() {
        return ("—".to_string(), verdict(None));
    }
    // > 1: met with that margin; < 1: missed.
    let margin = |c: &Cell| {
        if higher {
            c.value / c.limit
        } else {
            c.limit / c.value
        }
    };
    let ok = |c: &Cell| margin(c) >= 1.0;
    let worst = cells
        .iter()
        .min_by(|a, b| margin(a).total_cmp(&margin(b)))
        .unwrap();
    let measured = if cells.len() == 1 {
        cells[0].shown.clone()
    } else {
        let lo = cells
            .iter()
            .min_by(|a, b| a.value.total_cmp(&b.value))
            .unwrap();
        let hi = cells
            .iter()
            .max_by(|a, b| a.value.total_cmp(&b.value))
            .unwrap();
        format!(
            "{} cells; lowest {}: {}; highest {}: {}",
            cells.len(),
            lo.at,
            lo.shown,
            hi.at,
            hi.shown
        )
    };
    let by = |c: &Cell| {
        if higher {
            format!("{:.0} % short", 100.0 * (1.0 - c.value / c.limit))
        } else {
            format!("{} the limit", ratio(c.value / c.limit))
        }
    };
    let missed: Vec<&Cell> = cells.iter().filter(|c| !ok(c)).collect();
    let v = if missed.is_empty() {
        if cells.len() == 1 {
            verdict(Some(true))
        } else {
            format!(
                "{} (closest: {}, {})",
                verdict(Some(true)),
                worst.at,
                worst.shown
            )
        }
    } else {
        let list = missed
            .iter()
            .map(|c| format!("{} {}", c.at, c.shown))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} at {} of {}: {list}; worst {} ({})",
            verdict(Some(false)),
            missed.len(),
            cells.len(),
            worst.at,
            by(worst)
        )
    };
    (measured, v)
}

/// Worst wait as a number of ms, without the unit: `61`, `8.0`, `0.31`.
fn ms_num(ns: f64) -> String {
    let v = ns / 1e6;
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ms(ns: f64) -> String {
    format!("{} ms", ms_num(ns))
}

/// CPU per operation in µs, without the unit: `1250`, `45.2`, `0.55`.
fn us_num(ns: f64) -> String {
    let v = ns / 1e3;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The system-call cost of this run (one `getppid`, one plain flock pair), for ratios against
/// flock.
fn syscall_line(d: &Data) -> String {
    let c = &d.contended;
    format!(
        "System-call cost in this run: one `getppid` {}, a plain `flock(LOCK_EX)` + \
         `flock(LOCK_UN)` pair on a fresh /dev/shm file {} (measured by the bench's \
         orchestrator). Every ratio against flock moves with this cost: on a machine with \
         cheaper system calls flock is faster.",
        opt(c["syscall_ns"].as_f64(), ns),
        opt(c["plain_flock_pair_ns"].as_f64(), ns)
    )
}

/// Cells of a ratio-to-flock target for `mech` on `workloads` at `ns`.
fn ratio_cells(d: &Data, mech: &str, workloads: &[&str], ns: &[u64], min: f64) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &wl in workloads {
        for &n in ns {
            if let Some(r) = d.vs_flock(mech, wl, n) {
                let at = if workloads.len() == 1 {
                    format!("N={n}")
                } else {
                    format!("{wl} N={n}")
                };
                cells.push(Cell {
                    at,
                    value: r,
                    limit: min,
                    shown: ratio(r),
                });
            }
        }
    }
    cells
}

fn share_cells(d: &Data, mech: &str, min: f64) -> Vec<Cell> {
    let mut cells = Vec::new();
    for (wl, _) in WORKLOADS {
        for n in NS.into_iter().filter(|&n| n >= 2) {
            if let Some(s) = d.wshare(mech, wl, n) {
                cells.push(Cell {
                    at: format!("{wl} N={n}"),
                    value: s,
                    limit: min,
                    shown: format!("{s:.2}"),
                });
            }
        }
    }
    cells
}

fn targets(w: &mut String, d: &Data) {
    let lt = d.median("uncontended", "lockticket_exclusive");
    let ltb = d.median("uncontended", "lockticket_bounded_exclusive");
    let cas = d.median("uncontended", "cas_spin");
    let flock = d.median("uncontended", "flock");
    let pay = d.median("payload", "lockticket_set_get/64");
    let both = |a: Option<f64>, b: Option<f64>| a.zip(b);
    let from2: Vec<u64> = NS.into_iter().filter(|&n| n >= 2).collect();

    writeln!(w, "## Targets\n").unwrap();
    writeln!(
        w,
        "Issue 21's targets (and the design brief's that still apply), as ratios measured side by \
         side in this run. *Strict*: lockticket's default table (`Fairness::Strict`, FIFO); \
         *bounded*: a table created with `Fairness::bounded()` (a running process may go \
         ahead of a head that sleeps or was not run since its wake-up; once the head runs it \
         waits for one critical section at most). A target over several \
         workloads or N is met when every one of them meets it; the verdict lists the misses. \
         Worst wait: the longest lock call of the wait-time run. {}\n",
        syscall_line(d)
    )
    .unwrap();
    writeln!(w, "| target | measured | verdict |\n|---|---|---|").unwrap();
    let mut row = |t: &str, (m, v): (String, String)| {
        writeln!(w, "| {t} | {m} | {v} |").unwrap();
    };

    // Strict.
    row(
        "strict, 200 µs / 1 ms: ≥ 0.9× flock at every N from 2 to 64",
        check(
            &ratio_cells(d, "lockticket", &["200us-1ms"], &from2, 0.9),
            true,
        ),
    );
    let mut cells = Vec::new();
    for wl in ["2us-20us", "200us-1ms"] {
        for n in [8u64, 16, 32, 64] {
            if let Some((a, b)) = both(d.wops("lockticket", wl, n), d.wops("baton_ring", wl, n)) {
                cells.push(Cell {
                    at: format!("{wl} N={n}"),
                    value: a / b,
                    limit: 1.0,
                    shown: ratio(a / b),
                });
            }
        }
    }
    row(
        "strict, with work: ≥ 1× the baton ring at N ≥ 8",
        check(&cells, true),
    );
    row(
        "strict: min/max share ≥ 0.8 (every workload, N 2–64)",
        check(&share_cells(d, "lockticket", 0.8), true),
    );
    let mut cells = Vec::new();
    for wl in ["2us-20us", "200us-1ms"] {
        for &n in &from2 {
            if let Some((a, b)) = both(d.wait_max("lockticket", wl, n), d.wait_max("flock", wl, n))
            {
                cells.push(Cell {
                    at: format!("{wl} N={n}"),
                    value: a,
                    limit: b,
                    shown: format!("{} vs {}", ms(a), ms(b)),
                });
            }
        }
    }
    row(
        "strict: worst wait below flock's where there is work (N 2–64)",
        check(&cells, false),
    );
    row(
        "strict, no work: ≥ 2× flock at N = 2",
        check(&ratio_cells(d, "lockticket", &["none"], &[2], 2.0), true),
    );
    row(
        "strict, no work: ≥ 0.8× flock at N = 4",
        check(&ratio_cells(d, "lockticket", &["none"], &[4], 0.8), true),
    );

    // Bounded.
    let all_wl: Vec<&str> = WORKLOADS.iter().map(|w| w.0).collect();
    row(
        "bounded: ≥ 1× flock on every workload at every N from 2 to 64",
        check(
            &ratio_cells(d, "lockticket_bounded", &all_wl, &from2, 1.0),
            true,
        ),
    );
    let mut cells = Vec::new();
    for (wl, _) in WORKLOADS {
        for n in [2u64] {
            let Some(e) = d.tp("lockticket_bounded", wl, n) else {
                continue;
            };
            let hold_ms = e["inside_us"].as_f64().unwrap_or(0.0) / 1e3;
            let limit = (BOUND_MS + hold_ms + 5.0) * 1e6;
            if let Some(a) = e["wait_ns"]["max"].as_f64() {
                cells.push(Cell {
                    at: format!("{wl} N={n}"),
                    value: a,
                    limit,
                    shown: format!("{} (limit {})", ms(a), ms(limit)),
                });
            }
        }
    }
    row(
        "bounded: worst wait ≤ bound (1 ms) + longest hold + 5 ms where not oversubscribed (N ≤ 2)",
        check(&cells, false),
    );
    let mut cells = Vec::new();
    for (wl, _) in WORKLOADS {
        for n in [4u64, 8, 16, 32, 64] {
            let a = d.wait_max("lockticket_bounded", wl, n);
            let f = d.wait_max("flock", wl, n);
            let r = d.wait_max("robust_mutex", wl, n);
            if let (Some(a), Some(f), Some(r)) = (a, f, r) {
                cells.push(Cell {
                    at: format!("{wl} N={n}"),
                    value: a,
                    limit: f.min(r),
                    shown: format!("{} vs flock {}, robust {}", ms(a), ms(f), ms(r)),
                });
            }
        }
    }
    row(
        "bounded: worst wait below flock's and the robust mutex's everywhere else (N 4–64)",
        check(&cells, false),
    );
    row(
        "bounded: min/max share ≥ 0.5 (every workload, N 2–64)",
        check(&share_cells(d, "lockticket_bounded", 0.5), true),
    );

    // Both.
    let mut cells = Vec::new();
    for (name, v) in [("strict", lt), ("bounded", ltb)] {
        if let Some((a, b)) = both(v, cas) {
            cells.push(Cell {
                at: name.to_string(),
                value: a / b,
                limit: 3.0,
                shown: format!("{} / {} = {}", ns(a), ns(b), ratio(a / b)),
            });
        }
    }
    row(
        "both: uncontended exclusive lock+unlock ≤ 3× the bare CAS floor",
        check(&cells, false),
    );
    let mut cells = Vec::new();
    let mut cpu = Vec::new();
    for (name, m) in [("strict", "lockticket"), ("bounded", "lockticket_bounded")] {
        let Some(e) = d.entry("reclaim", m) else {
            continue;
        };
        if let Some(v) = e["median_ms"].as_f64() {
            cells.push(Cell {
                at: name.to_string(),
                value: v,
                limit: 5.0,
                shown: format!(
                    "{v:.2} ms (max {:.2} ms)",
                    e["max_ms"].as_f64().unwrap_or(0.0)
                ),
            });
        }
        if let Some(v) = e["waiter_cpu_percent_max"].as_f64() {
            cpu.push(Cell {
                at: name.to_string(),
                value: v,
                limit: 5.0,
                shown: format!("{v:.2} % of one CPU"),
            });
        }
    }
    row(
        "both: one SIGKILLed holder reclaimed ≤ 5 ms (median)",
        check(&cells, false),
    );
    row(
        "… with the waiter asleep meanwhile (CPU ≤ 5 % of its wait, worst run)",
        check(&cpu, false),
    );
    let mut cells = Vec::new();
    for e in d.contended["kill_storm"].as_array().into_iter().flatten() {
        let k = e["killed_waiters"].as_u64().unwrap_or(0);
        if let Some(v) = e["median_ms"].as_f64().filter(|_| k <= 64) {
            cells.push(Cell {
                at: format!("K={k}"),
                value: v,
                limit: 5.0,
                shown: format!("{v:.2} ms (max {:.2})", e["max_ms"].as_f64().unwrap_or(0.0)),
            });
        }
    }
    row(
        "both: kill storms (holder + K waiters SIGKILLed together) ≤ 5 ms median for K ≤ 64",
        check(&cells, false),
    );

    // The design brief's targets that still apply.
    let r = both(flock, lt).map(|(a, b)| a / b);
    row(
        "uncontended: ≥ 10× faster than an flock pair",
        (
            opt(both(flock, lt), |(a, b)| {
                format!("{} / {} = {}", ns(a), ns(b), ratio(a / b))
            }),
            verdict(r.map(|r| r >= 10.0)),
        ),
    );
    row(
        "payload set+get of 64 bytes ≤ 200 ns",
        (opt(pay, ns), verdict(pay.map(|p| p <= 200.0))),
    );
    let r = lt.map(|l| PERL_LOCK_UNLOCK_NS / l);
    row(
        "lock/unlock ≥ 2000× faster than the Perl original (38.5 µs, not this run)",
        (
            opt(lt, |l| {
                format!("38.5 µs / {} = {}", ns(l), ratio(PERL_LOCK_UNLOCK_NS / l))
            }),
            verdict(r.map(|r| r >= 2000.0)),
        ),
    );
    writeln!(w).unwrap();
}

fn uncontended(w: &mut String, d: &Data) {
    writeln!(w, "## Uncontended lock + unlock, one process\n").unwrap();
    writeln!(
        w,
        "criterion, `tools/benches/uncontended.rs`: one lock and one unlock per iteration, nothing \
         else; every lock on tmpfs (`/dev/shm`). Median and its 95 % confidence interval. \
         \"Brief's reference\" is the design brief's figure from the development machine \
         (not this run).\n"
    )
    .unwrap();
    let cas = d.median("uncontended", "cas_spin");
    let flock = d.median("uncontended", "flock");
    let lt = d.median("uncontended", "lockticket_exclusive");
    writeln!(
        w,
        "| mechanism | median | 95 % CI | × CAS floor | flock ÷ this | ÷ lockticket excl. | \
         brief's reference |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    let rows = [
        ("lockticket_exclusive", None),
        ("lockticket_bounded_exclusive", None),
        ("lockticket_shared", None),
        ("flock", Some(256.0)),
        ("ofd_fcntl", Some(360.0)),
        ("robust_mutex", Some(17.0)),
        ("posix_semaphore", Some(15.0)),
        ("cas_spin", Some(6.1)),
        ("ticket_spin", None),
    ];
    for (id, reference) in rows {
        let e = d.est("uncontended", id);
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            label(id),
            opt(e, |e| ns(e.median)),
            opt(e, |e| format!("{} – {}", ns(e.lo), ns(e.hi))),
            opt(e.zip(cas), |(e, c)| ratio(e.median / c)),
            opt(e.zip(flock), |(e, f)| ratio(f / e.median)),
            opt(e.zip(lt), |(e, l)| ratio(e.median / l)),
            opt(reference, ns),
        )
        .unwrap();
    }
    writeln!(
        w,
        "\nBuilding blocks (criterion group `primitives`, same run), to read the figures above: \
         an atomic read-modify-write on a word of a shared tmpfs mapping (x86: one \
         `lock`-prefixed instruction) costs {} (CAS) / {} (fetch_add); a sequentially \
         consistent store (`xchg`) {}, a release store {}; `Instant::now()` {}, \
         `clock_gettime(CLOCK_REALTIME_COARSE)` {}.",
        opt(d.median("primitives", "cas"), ns),
        opt(d.median("primitives", "fetch_add"), ns),
        opt(d.median("primitives", "seqcst_store"), ns),
        opt(d.median("primitives", "release_store"), ns),
        opt(d.median("primitives", "instant_now"), ns),
        opt(d.median("primitives", "clock_realtime_coarse"), ns),
    )
    .unwrap();
    writeln!(w).unwrap();
}

fn scan(w: &mut String, d: &Data) {
    writeln!(w, "## Throughput at every N\n").unwrap();
    writeln!(
        w,
        "`tools/benches/contended.rs`: N worker *processes* (the bench binary re-executed) on the \
         2 CPUs, each looping lock → non-atomic increment of a counter in a shared tmpfs mapping \
         (plus the workload's busy work inside) → unlock → the workload's busy work outside. \
         Busy work is calibrated CPU work, not a clock wait. Throughput is the median over \
         sampling windows after a warm-up; the counter is checked to equal the sum of all \
         operations. Ratios (÷ flock) are against flock at the same N and workload. {}\n",
        syscall_line(d)
    )
    .unwrap();
    writeln!(
        w,
        "![throughput versus processes, one panel per workload](benchmarks-throughput.svg)\n\n\
         ![worst wait versus processes, one panel per workload](benchmarks-worst-wait.svg)\n"
    )
    .unwrap();
    writeln!(
        w,
        "Second table of each workload: *share* = the fewest grants any process got ÷ the most \
         (1 = even); *worst wait* = the longest lock call (from calling lock to holding it) in \
         a separate wait-time run; *CPU/op* = CPU time of all workers ÷ operations (2 busy \
         CPUs = 2 × wall time). Each cell lists lockticket strict / lockticket bounded / flock / \
         robust mutex / baton ring. The baton ring (a turn passed by one futex wake, no lock \
         logic) is the strict-FIFO reference: *strict ÷ baton* is what strict order costs on \
         top of its wake-ups.\n"
    )
    .unwrap();
    for (wl, desc) in WORKLOADS {
        writeln!(w, "### `{wl}`: {desc}\n").unwrap();
        writeln!(
            w,
            "| N | lockticket | ÷ flock | lockticket bounded | ÷ flock | flock | robust mutex | \
             ÷ flock | baton ring | strict ÷ baton |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        .unwrap();
        for n in NS {
            let o = |m: &str| opt(d.wops(m, wl, n), |v| format!("{} ops/s", mops(v)));
            let r = |m: &str| opt(d.vs_flock(m, wl, n), ratio);
            let vs_baton = opt(
                d.wops("lockticket", wl, n)
                    .zip(d.wops("baton_ring", wl, n))
                    .map(|(a, b)| a / b),
                ratio,
            );
            writeln!(
                w,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                o("lockticket"),
                r("lockticket"),
                o("lockticket_bounded"),
                r("lockticket_bounded"),
                o("flock"),
                o("robust_mutex"),
                r("robust_mutex"),
                o("baton_ring"),
                vs_baton,
            )
            .unwrap();
        }
        writeln!(
            w,
            "\n| N | share (strict / bounded / flock / robust / baton) | worst wait, ms | CPU/op, µs |\n\
             |---:|---|---|---|"
        )
        .unwrap();
        for n in NS {
            let join = |f: &dyn Fn(&Value) -> Option<String>| {
                SCAN.iter()
                    .map(|m| d.tp(m, wl, n).and_then(f).unwrap_or_else(|| "—".into()))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            writeln!(
                w,
                "| {n} | {} | {} | {} |",
                join(&|e| e["min_max_share"].as_f64().map(|s| format!("{s:.2}"))),
                join(&|e| e["wait_ns"]["max"].as_f64().map(ms_num)),
                join(&|e| e["per_op"]["cpu_ns"].as_f64().map(us_num)),
            )
            .unwrap();
        }
        writeln!(w).unwrap();
    }
}

fn kill_storms(w: &mut String, d: &Data) {
    let Some(storms) = d.contended["kill_storm"].as_array() else {
        return;
    };
    writeln!(w, "## Kill storms: holder + K waiters SIGKILLed together\n").unwrap();
    writeln!(
        w,
        "lockticket (strict): the holder and K queued waiters run in one process group, killed \
         by one `kill(-pgid, SIGKILL)`; a survivor queued behind them (asleep) reports when it \
         holds the token. Survivor granted after: from just before `kill` to the survivor \
         holding the lock; survivor CPU: its CPU time over its whole wait.\n"
    )
    .unwrap();
    writeln!(
        w,
        "| K | runs | survivor granted after, median | max | survivor CPU (median) |\n\
         |---:|---:|---:|---:|---:|"
    )
    .unwrap();
    for e in storms {
        writeln!(
            w,
            "| {} | {} | {:.2} ms | {:.2} ms | {:.1} % |",
            e["killed_waiters"].as_u64().unwrap_or(0),
            e["runs_ms"].as_array().map_or(0, |a| a.len()),
            e["median_ms"].as_f64().unwrap_or(0.0),
            e["max_ms"].as_f64().unwrap_or(0.0),
            e["survivor_cpu_percent_median"].as_f64().unwrap_or(0.0),
        )
        .unwrap();
    }
    writeln!(w).unwrap();
}

fn contended(w: &mut String, d: &Data) {
    writeln!(
        w,
        "## Spin-lock floors and CPU placement (no work, N ≤ 4)\n"
    )
    .unwrap();
    writeln!(
        w,
        "The bare CAS spin lock and the plain FIFO ticket spin lock (all waiters spin) are \
         measured up to N = 4 only (a spinning FIFO lock collapses beyond the CPU count). \
         Near / far: the same windows split by the link probes around their round (CPUs \
         *near*: a cache-line handoff under {FAR} ns; *far*: slower), median ops/s and \
         (windows); compare mechanisms within one column.\n"
    )
    .unwrap();
    writeln!(
        w,
        "| mechanism | N=1 | N=2 | N=4 | N=2 near | N=2 far | N=4 near | N=4 far |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    for m in MULTI {
        let cell = |n: u64, state: &str| {
            let e = d.throughput(m, n).map(|e| &e[state]);
            match e.and_then(|e| e["median"].as_f64().zip(e["windows"].as_u64())) {
                Some((v, k)) => format!("{} ({k})", mops(v)),
                None => "—".to_string(),
            }
        };
        let o = |n: u64| opt(d.ops(m, n), mops);
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            short(m),
            o(1),
            o(2),
            o(4),
            cell(2, "near"),
            cell(2, "far"),
            cell(4, "near"),
            cell(4, "far")
        )
        .unwrap();
    }
    writeln!(
        w,
        "\nThe brief's reference figures (development machine, not this run): 2 processes — \
         flock 2.75 M ops/s (share 0.83, bursts of ~140), robust mutex 16.8 M (bursts of 6), \
         pure-spin FIFO ticket lock 6.3 M (strict alternation); 4 processes — flock 3.0 M \
         (share 0.73), robust mutex 16 M, pure-spin ticket lock 26 k (collapse), \
         spin-then-yield ticket lock 0.75 M (share 0.98).\n"
    )
    .unwrap();
}

fn handoff(w: &mut String, d: &Data) {
    writeln!(w, "## Handoff latency (ping-pong)\n").unwrap();
    writeln!(
        w,
        "Two processes pass a turn word back and forth: each takes the lock, and if it is its \
         turn hands the turn to the other, then unlocks; the other keeps taking the lock until \
         it sees its turn. Time per handoff (one direction), median of windows. \"No lock\" \
         spins on the turn word alone: a cache line moving between the CPUs, the floor.\n"
    )
    .unwrap();
    writeln!(
        w,
        "| mechanism | per handoff | CPU link (probe median) |\n|---|---:|---:|"
    )
    .unwrap();
    for m in MULTI.into_iter().chain(["no_lock"]) {
        let e = d.entry("handoff", m);
        let v = e.and_then(|e| e["ns_per_handoff"].as_f64());
        let link = e.and_then(|e| e["link_ns"].as_f64());
        writeln!(w, "| {} | {} | {} |", label(m), opt(v, ns), opt(link, ns)).unwrap();
    }
    writeln!(w).unwrap();
}

fn reclaim(w: &mut String, d: &Data) {
    writeln!(w, "## Reclaim after a holder is SIGKILLed\n").unwrap();
    writeln!(
        w,
        "A helper process takes the lock and holds it; a second one calls lock and waits \
         (the bench waits until it is queued, then 20 ms more, so it is asleep); the holder is \
         SIGKILLed. Measured: from just before `kill` to the waiter holding the lock \
         (`CLOCK_MONOTONIC`, both processes), and the waiter's CPU time during its whole wait. \
         The robust mutex (the kernel's robust-futex list, `EOWNERDEAD`) and flock (released by \
         the kernel at exit) are references: neither is FIFO, and flock cannot tell the next \
         holder that the previous one died.\n"
    )
    .unwrap();
    writeln!(
        w,
        "| mechanism | runs | median | max | waiter CPU (median / max) | death reported |\n\
         |---|---:|---:|---:|---:|---|"
    )
    .unwrap();
    for m in ["lockticket", "lockticket_bounded", "robust_mutex", "flock"] {
        let Some(e) = d.entry("reclaim", m) else {
            continue;
        };
        writeln!(
            w,
            "| {} | {} | {:.3} ms | {:.3} ms | {:.2} % / {:.2} % | {} |",
            label(m),
            e["runs_ms"].as_array().map_or(0, |a| a.len()),
            e["median_ms"].as_f64().unwrap_or(0.0),
            e["max_ms"].as_f64().unwrap_or(0.0),
            e["waiter_cpu_percent_median"].as_f64().unwrap_or(0.0),
            e["waiter_cpu_percent_max"].as_f64().unwrap_or(0.0),
            if e["owner_death_reported"].as_bool() == Some(true) {
                "yes (every run)"
            } else {
                "no"
            },
        )
        .unwrap();
    }
    writeln!(w).unwrap();
}

fn payload(w: &mut String, d: &Data) {
    writeln!(w, "## Payload\n").unwrap();
    writeln!(
        w,
        "criterion, `tools/benches/payload.rs` (table created with `payload_capacity(8192)`). The \
         baseline stores the value in a tmpfs file: `flock(LOCK_EX)` + `pwrite` to set, \
         `flock(LOCK_SH)` + `pread` to get (what one would do without lockticket).\n"
    )
    .unwrap();
    writeln!(w, "| operation | 64 B | 4 KiB |\n|---|---:|---:|").unwrap();
    for (id, what) in [
        ("lockticket_set_get", "lockticket `set_payload` + `payload`"),
        ("lockticket_set", "lockticket `set_payload` alone"),
        ("lockticket_get", "lockticket `payload` alone"),
        ("file_flock_set_get", "file + flock, set + get"),
    ] {
        let a = d.median("payload", &format!("{id}/64"));
        let b = d.median("payload", &format!("{id}/4096"));
        writeln!(w, "| {what} | {} | {} |", opt(a, ns), opt(b, ns)).unwrap();
    }
    let lt = d.median("payload", "lockticket_set_get/64");
    let file = d.median("payload", "file_flock_set_get/64");
    writeln!(
        w,
        "\nlockticket vs the file + flock baseline at 64 B: {}.\n",
        opt(lt.zip(file), |(l, f)| format!("{} faster", ratio(f / l)))
    )
    .unwrap();
}

fn perl(w: &mut String, d: &Data) {
    writeln!(w, "## The Perl original (reference, not this run)\n").unwrap();
    writeln!(
        w,
        "**Perl original (IPC::LockTicket), measured on this project's development machine, not \
         in this run** — figures from the design brief, next to this run's lockticket figures.\n"
    )
    .unwrap();
    let lt = d.median("uncontended", "lockticket_exclusive");
    let c2 = d.ops("lockticket", 2);
    let pay = d.median("payload", "lockticket_set_get/64");
    writeln!(
        w,
        "| operation | Perl original (dev machine) | lockticket (this run) | ratio |"
    )
    .unwrap();
    writeln!(w, "|---|---:|---:|---:|").unwrap();
    writeln!(
        w,
        "| TokenLock + TokenUnlock | 38.5 µs | {} | {} |",
        opt(lt, ns),
        opt(lt, |l| format!("{} faster", ratio(PERL_LOCK_UNLOCK_NS / l)))
    )
    .unwrap();
    writeln!(
        w,
        "| 2 processes contending | 282 ops/s (its 10 ms sleep sets the pace) | {} | {} |",
        opt(c2, |v| format!("{} ops/s", mops(v))),
        opt(c2, |v| format!("{} more", ratio(v / PERL_CONTENDED_2)))
    )
    .unwrap();
    writeln!(
        w,
        "| custom-data round trip (set + get) | 22 µs | {} | {} |",
        opt(pay, ns),
        opt(pay, |p| format!("{} faster", ratio(PERL_PAYLOAD_NS / p)))
    )
    .unwrap();
    writeln!(w, "| New + MainLock | 2.1 ms | not measured here | |").unwrap();
    writeln!(
        w,
        "| one-shot process (flock(1): 1.7 ms) | 18.5 ms | not measured here | |\n"
    )
    .unwrap();
}

fn method(w: &mut String) {
    writeln!(
        w,
        "## Method\n\n\
         * `cargo bench -p lockticket-tools` runs three bench binaries: `uncontended` and `payload` (criterion, \
           0.7 s warm-up, 2 s measurement, 60 samples each) and `contended` (own harness: \
           4 rounds, each measuring every mechanism in turn — 150 ms warm-up, then 2 windows \
           of 200 ms — between two 30 ms no-lock ping-pong probes of the CPU link; throughput \
           is the median of the 8 windows, and of the windows in each link state; then a \
           separate 500 ms run for wait times; ping-pong likewise, 4 rounds of 3 windows of \
           100 ms; 21 reclaim runs per mechanism; the N-scan, 1 to 64 processes × three \
           workloads; 5 kill-storm runs per K). Total: the elapsed time in the header, plus \
           compilation.\n\
         * Quick mode: `LOCKTICKET_BENCH_QUICK=1 cargo bench -p lockticket-tools` (criterion groups 0.2 s + 0.5 s, \
           20 samples; short windows and 5 reclaim runs in `contended`: about 40 s plus \
           compilation), or `cargo bench -p lockticket-tools --benches -- --quick` (criterion's own quick mode; \
           `--benches` because the library's libtest harness rejects `--quick`). Quick \
           figures are for checking, not for publishing.\n\
         * Only part: `cargo bench -p lockticket-tools --bench contended -- contended/flock` (ids contain the \
           section, mechanism and process count; partial runs write \
           `contended-partial.json`, which the report ignores).\n\
         * Baselines live in `tools/benches/support/locks.rs`: flock and OFD locks on a tmpfs file \
           (one open file description per process), a robust process-shared pthread mutex and \
           a test-and-test-and-set CAS spin lock on a `MAP_SHARED` tmpfs mapping, a POSIX named \
           semaphore. lockticket is used through its public API (`token_lock()` and a guard \
           drop), on a table created by `main_lock(Share::Shared)`.\n\
         * The machine is shared and virtualised: figures move by ±10–20 % between runs; \
           compare ratios from the same run, as above. Timings are never asserted by tests.\n"
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The plots.

#[derive(Clone, Copy, PartialEq)]
enum Metric {
    Throughput,
    WorstWait,
}

/// One panel per workload: `metric` (log scale) versus N (log2 axis) per mechanism of the scan.
fn plot_scan(d: &Data, path: &Path, metric: Metric) {
    let value = |m: &str, wl: &str, n: u64| match metric {
        Metric::Throughput => d.wops(m, wl, n),
        Metric::WorstWait => d.wait_max(m, wl, n).map(|v| v / 1e6),
    };
    let root = SVGBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let (title, y_desc) = match metric {
        Metric::Throughput => (
            "Contended throughput versus processes (2 CPUs)",
            "operations per second (log scale)",
        ),
        Metric::WorstWait => (
            "Worst wait (longest lock call) versus processes (2 CPUs)",
            "worst wait, ms (log scale)",
        ),
    };
    let root = root.titled(title, ("sans-serif", 22)).unwrap();
    let panels = root.split_evenly((1, WORKLOADS.len()));
    let colors = [
        RGBColor(200, 30, 30),
        RGBColor(230, 140, 0),
        BLUE,
        RGBColor(0, 140, 0),
        RGBColor(120, 120, 120),
    ];
    for (panel, (wl, _)) in panels.iter().zip(WORKLOADS) {
        let series: Vec<(&str, Vec<(f64, f64)>)> = SCAN
            .iter()
            .map(|&m| {
                let pts = NS
                    .iter()
                    .filter_map(|&n| {
                        value(m, wl, n)
                            .filter(|&v| v > 0.0)
                            .map(|v| ((n as f64).log2(), v))
                    })
                    .collect();
                (m, pts)
            })
            .collect();
        let all: Vec<f64> = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
            .collect();
        let (lo, hi) = if all.is_empty() {
            (0.01, 100.0)
        } else {
            let lo = all.iter().cloned().fold(f64::INFINITY, f64::min) / 1.6;
            // Head room above for the legend; at least a factor of 8 for the log labels.
            let hi = all.iter().cloned().fold(0.0, f64::max) * 2.5;
            let widen = (8.0 / (hi / lo)).max(1.0).sqrt();
            (lo / widen, hi * widen)
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("workload {wl}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.3f64..6.3f64, (lo..hi).log_scale())
            .unwrap();
        chart
            .configure_mesh()
            .x_desc("processes (log2 scale)")
            .y_desc(y_desc)
            .x_labels(14)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 0.01 && x.round() >= 0.0 {
                    (1u64 << x.round() as u32).to_string()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| match metric {
                Metric::Throughput => axis(*y),
                Metric::WorstWait => ms_num(*y * 1e6),
            })
            .draw()
            .unwrap();
        for ((m, pts), color) in series.into_iter().zip(colors) {
            let style = ShapeStyle::from(&color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .unwrap()
                .label(short(m))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .unwrap();
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(match metric {
                Metric::Throughput => SeriesLabelPosition::UpperRight,
                Metric::WorstWait => SeriesLabelPosition::UpperLeft,
            })
            .draw()
            .unwrap();
    }
    root.present().unwrap();
}
