//! The exclusion checker of issue 20: several holder processes take one lock on a 3-member
//! etcd cluster again and again, while holders are SIGKILLed and SIGSTOPped past their lease
//! TTL and members are killed (and restarted) and stopped (and continued), at random from a
//! printed seed, for a minute under `CI=true` (10 s otherwise; `LOCKTICKET_ETCD_CHAOS_SECONDS`
//! sets it, `LOCKTICKET_ETCD_CHAOS_SEED` replays a schedule). Afterwards:
//!
//! * **No fenced write accepted out of order.** Every holder increments a counter kept in the
//!   lock's payload (read it, write `count+1 token` through the guard: a transaction
//!   conditioned on still holding). In etcd's history of that key the tokens never go back and
//!   every count is the one before plus one — a count written twice would be two holders at
//!   once whose writes were both accepted.
//! * **No two holders at once without one of them told it lost the lock.** Each holder writes
//!   down, on the machine's monotonic clock (shared by all processes), when each grant
//!   returned and every moment it asked `lost()` and was told "not lost". For any two grants,
//!   the earlier token's "not lost" moments all come before the later token's grant returned.
//! * Stale holders also write to a local resource that refuses tokens older than the newest it
//!   has seen (the fencing pattern for what etcd does not guard); it counts what it refused.
//! * When the chaos ends and the leases of killed holders have run out, no key is left.
//!
//! It prints what it did: grants, losses reported, fenced writes accepted and refused, faults.
//! No timing is asserted; sleeps only pace the faults and the holders' work.
#![cfg(feature = "etcd")]

mod common;
mod etcd_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{BOUND, Helper, Scratch, hear, say, unique};
use etcd_support::{Cluster, SIGCONT, SIGSTOP, signal};
use lockticket::Error;
use lockticket::etcd::EtcdLockTicket;

/// The holders' lease TTL (seconds): pauses past it are what overtakes a holder.
const TTL: u64 = 1;
/// Holder processes alive at any time.
const HOLDERS: usize = 4;

/// The monotonic clock in nanoseconds: one clock for every process of the machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A tiny xorshift generator: the schedule follows from the seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The local resource: `max_token count` in a file, changed under `flock`; refuses a token
/// older than the newest it accepted. True if accepted.
fn resource_write(path: &Path, token: u64) -> bool {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock(2) on a descriptor we own; released when `f` closes.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock: {}", std::io::Error::last_os_error());
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    let (max, count) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if token < max {
        return false;
    }
    // Fixed width, one write: a writer killed here leaves the old value or the new one.
    f.write_all_at(format!("{token:020} {:020}", count + 1).as_bytes(), 0)
        .unwrap();
    true
}

fn dispatch(role: &str, args: &[String]) {
    assert_eq!(role, "holder", "unknown role {role}");
    // endpoints, lock name, log file, resource file, seed.
    let (ep, name, log, resource) = (&args[0], &args[1], &args[2], Path::new(&args[3]));
    let mut rng = Rng(args[4].parse::<u64>().unwrap() | 1);
    let lt = EtcdLockTicket::builder(name.as_str())
        .endpoints([ep.as_str()])
        .ttl(Duration::from_secs(TTL))
        .call_timeout(Duration::from_secs(1))
        .open()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let _ = hear();
        s2.store(true, Ordering::SeqCst);
    });
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    // One write per line on an O_APPEND file: what was written survives a SIGKILL.
    let mut rec = |line: String| log.write_all(format!("{line}\n").as_bytes()).unwrap();
    say("ready");
    while !stop.load(Ordering::SeqCst) {
        let g = match lt.token_lock_timeout(Duration::from_secs(2)) {
            Ok(Some(g)) => g,
            Ok(None) => {
                rec("T".into());
                continue;
            }
            Err(e) => {
                rec(format!("E {}", kind(&e)));
                continue;
            }
        };
        let tok = g.fencing_token();
        rec(format!(
            "G {tok} {} {}",
            mono_ns(),
            u8::from(g.previous_holder_died())
        ));
        for _ in 0..3 {
            // The resource that checks tokens itself, written before asking `lost()`: a
            // holder resumed after a pause writes with its old token first.
            let accepted = resource_write(resource, tok);
            rec(format!("{} {tok}", if accepted { "A" } else { "F" }));
            let t = mono_ns();
            if g.lost() {
                rec(format!("L {tok} lost()"));
                break;
            }
            rec(format!("K {tok} {t}"));
            // The counter in the payload, through the guard (fenced by etcd).
            if let Ok(p) = lt.payload() {
                let text = String::from_utf8_lossy(&p).into_owned();
                let n: u64 = text
                    .split_whitespace()
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0);
                match g.set_payload(format!("{} {tok}", n + 1).as_bytes()) {
                    Ok(()) => rec(format!("W {tok} {}", n + 1)),
                    Err(Error::EtcdLost { .. }) => {
                        rec(format!("L {tok} fenced-write"));
                        break;
                    }
                    Err(e) => rec(format!("E {}", kind(&e))),
                }
            }
            // Some work while holding, so that pauses land inside critical sections.
            std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
        }
        match g.unlock() {
            Ok(()) => rec(format!("R {tok}")),
            Err(Error::EtcdLost { .. }) => rec(format!("L {tok} unlock")),
            Err(e) => rec(format!("E {}", kind(&e))),
        }
    }
    say("done");
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::EtcdUnavailable { .. } => "unavailable",
        Error::EtcdLeaseExpired { .. } => "lease-expired",
        Error::EtcdLost { .. } => "lost",
        Error::EtcdProtocol { .. } => "protocol",
        _ => "other",
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

/// A fault to undo later.
enum Undo {
    /// SIGCONT holder slot `.0` if it is still incarnation `.1`.
    Holder(usize, u32),
    MemberCont(usize),
    MemberRestart(usize),
}

struct Holders {
    ep: String,
    name: String,
    scratch: Scratch,
    resource: String,
    slots: Vec<(Helper, u32, bool)>, // helper, incarnation, stopped
    incarnations: u32,
    seed: u64,
}

impl Holders {
    fn spawn(&mut self) -> (Helper, u32) {
        self.incarnations += 1;
        let k = self.incarnations;
        let log = self.scratch.join(&format!("h{k}.log"));
        let seed = (self.seed ^ u64::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_string();
        let mut h = Helper::spawn(
            "holder",
            &[
                &self.ep,
                &self.name,
                log.to_str().unwrap(),
                &self.resource,
                &seed,
            ],
        );
        h.expect("ready");
        (h, k)
    }
}

#[derive(Default, Debug)]
struct Grant {
    granted_at: u64,
    died: bool,
    not_lost_at: Vec<u64>,
}

#[test]
fn etcd_chaos_exclusion_checker() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let secs: u64 = match std::env::var("LOCKTICKET_ETCD_CHAOS_SECONDS") {
        Ok(v) => v
            .parse()
            .expect("LOCKTICKET_ETCD_CHAOS_SECONDS: whole seconds"),
        Err(_) if ci => 60,
        Err(_) => 10,
    };
    let seed: u64 = match std::env::var("LOCKTICKET_ETCD_CHAOS_SEED") {
        Ok(v) => v.parse().expect("LOCKTICKET_ETCD_CHAOS_SEED: a number"),
        Err(_) => mono_ns() ^ u64::from(std::process::id()) << 32,
    };
    println!(
        "chaos: seed {seed}, {secs} s (replay the schedule with LOCKTICKET_ETCD_CHAOS_SEED={seed})"
    );
    let Some(mut c) = Cluster::start("chaos", 3) else {
        return;
    };
    if c.keys("lockticket/").is_none() {
        assert!(
            !ci,
            "no etcdctl under CI=true: .ci/run installs etcd-client"
        );
        println!("SKIP: no etcdctl to read the payload's history");
        return;
    }
    let ep = c.endpoints();
    let name = unique("echaos");
    let scratch = Scratch::new("echaos");
    let resource = scratch.join("resource");
    std::fs::write(&resource, "").unwrap();
    let mut hs = Holders {
        ep: ep.clone(),
        name: name.clone(),
        resource: resource.to_str().unwrap().to_string(),
        scratch,
        slots: Vec::new(),
        incarnations: 0,
        seed,
    };
    for _ in 0..HOLDERS {
        let (h, k) = hs.spawn();
        hs.slots.push((h, k, false));
    }

    let mut rng = Rng(seed | 1);
    let mut undo: Vec<(Instant, Undo)> = Vec::new();
    let mut member_busy = false;
    let (mut holder_stops, mut holder_kills, mut member_kills, mut member_stops) = (0, 0, 0, 0);
    let (mut holder_stops_holding, mut holder_kills_holding) = (0u32, 0u32);
    // Looking for the holder: tries, status failed, nobody held, held by a process gone.
    let mut lookups = [0u32; 4];
    // Asks who holds the lock (briefly: a member may be stopped).
    let watcher = EtcdLockTicket::builder(name.as_str())
        .endpoints([ep.as_str()])
        .call_timeout(Duration::from_millis(300))
        .open()
        .unwrap();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let ttl_ms = TTL * 1000;
    loop {
        let now = Instant::now();
        // Undo what is due (everything at the end).
        let done = now >= end;
        let mut i = 0;
        while i < undo.len() {
            if done || undo[i].0 <= now {
                match undo.swap_remove(i).1 {
                    Undo::Holder(slot, k) => {
                        let (h, inc, stopped) = &mut hs.slots[slot];
                        if *inc == k {
                            signal(h.pid(), SIGCONT);
                            *stopped = false;
                        }
                    }
                    Undo::MemberCont(m) => {
                        signal(c.members[m].pid() as u32, SIGCONT);
                        member_busy = false;
                    }
                    Undo::MemberRestart(m) => {
                        c.restart(m);
                        member_busy = false;
                    }
                }
            } else {
                i += 1;
            }
        }
        if done {
            break;
        }
        let mut slot = rng.below(HOLDERS as u64) as usize;
        let m = rng.below(3) as usize;
        let action = rng.below(100);
        // Half the holder faults hit the process that holds the lock now, or that is next
        // once a killed or stopped holder's lease ends (most of the time the others wait,
        // and a fault on a waiter only delays the queue).
        let mut on_holder = false;
        if action < 37 && rng.below(2) == 0 {
            lookups[0] += 1;
            match watcher.status() {
                Err(_) => lookups[1] += 1,
                Ok(st) => {
                    let first = st.queue.iter().find_map(|e| {
                        let i = hs.slots.iter().position(|s| s.0.pid() == e.pid && !s.2)?;
                        Some((i, e.holding))
                    });
                    match first {
                        None => lookups[2] += 1,
                        Some((i, holding)) => {
                            slot = i;
                            on_holder = holding;
                            lookups[3] += u32::from(holding);
                        }
                    }
                }
            }
        }
        match action {
            // A holder (or waiter) paused past its lease TTL.
            0..25 if !hs.slots[slot].2 => {
                let (h, k, stopped) = &mut hs.slots[slot];
                signal(h.pid(), SIGSTOP);
                *stopped = true;
                let pause = ttl_ms + 200 + rng.below(800);
                undo.push((now + Duration::from_millis(pause), Undo::Holder(slot, *k)));
                holder_stops += 1;
                holder_stops_holding += u32::from(on_holder);
            }
            // A holder (or waiter) killed; another takes its place.
            25..37 => {
                hs.slots[slot].0.kill();
                let (h, k) = hs.spawn();
                hs.slots[slot] = (h, k, false);
                holder_kills += 1;
                holder_kills_holding += u32::from(on_holder);
            }
            // A member killed, started again later (one member disturbed at a time: the
            // cluster keeps its quorum).
            37..47 if !member_busy => {
                c.kill(m);
                member_busy = true;
                let down = 300 + rng.below(2700);
                undo.push((now + Duration::from_millis(down), Undo::MemberRestart(m)));
                member_kills += 1;
            }
            // A member stopped, continued later.
            47..57 if !member_busy => {
                signal(c.members[m].pid() as u32, SIGSTOP);
                member_busy = true;
                let down = 200 + rng.below(2300);
                undo.push((now + Duration::from_millis(down), Undo::MemberCont(m)));
                member_stops += 1;
            }
            _ => {}
        }
        // The chaos schedule's pace (not synchronisation).
        std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
    }
    assert!(c.wait_healthy(BOUND), "the cluster came back");
    let mut exits = Vec::new();
    for (mut h, _, _) in hs.slots.drain(..) {
        h.send("stop");
        h.expect("done");
        exits.push(h.finish());
    }
    assert!(
        exits.iter().all(|e| e.success()),
        "a holder failed: {exits:?}"
    );
    println!(
        "chaos: {:.1} s of faults: {holder_stops} holder stops past the TTL \
         ({holder_stops_holding} while holding, the others while waiting), {holder_kills} holder \
         kills ({holder_kills_holding} while holding), {member_kills} member kills (restarted), \
         {member_stops} member stops; holder look-ups {lookups:?} (tries, status failed, \
         nobody running queued, found the holder)",
        t0.elapsed().as_secs_f64()
    );

    // The logs of every holder incarnation.
    let mut grants: BTreeMap<u64, Grant> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for k in 1..=hs.incarnations {
        let text =
            std::fs::read_to_string(hs.scratch.join(&format!("h{k}.log"))).unwrap_or_default();
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            let key = match w[0] {
                "L" | "E" => format!("{} {}", w[0], w.last().unwrap()),
                other => other.to_string(),
            };
            *counts.entry(key).or_default() += 1;
            let num = |i: usize| w.get(i).and_then(|x| x.parse::<u64>().ok());
            match (w[0], num(1), num(2)) {
                ("G", Some(token), Some(at)) => {
                    let g = grants.entry(token).or_default();
                    g.granted_at = at;
                    g.died = w.get(3) == Some(&"1");
                }
                ("K", Some(token), Some(at)) => {
                    grants.entry(token).or_default().not_lost_at.push(at)
                }
                _ => {}
            }
        }
    }
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    let losses: u64 = counts
        .iter()
        .filter(|(k, _)| k.starts_with("L "))
        .map(|(_, n)| n)
        .sum();
    println!(
        "chaos: {} grants ({} told the previous holder died), {} timeouts; losses reported: \
         {losses} ({} by lost(), {} by a refused fenced write, {} at unlock); etcd fenced \
         writes accepted {}; the resource accepted {} and refused {} stale tokens; errors: \
         {} unavailable, {} lease expired while waiting",
        grants.len(),
        grants.values().filter(|g| g.died).count(),
        count("T"),
        count("L lost()"),
        count("L fenced-write"),
        count("L unlock"),
        count("W"),
        count("A"),
        count("F"),
        count("E unavailable"),
        count("E lease-expired"),
    );
    assert!(count("W") > 0, "no fenced write was accepted: {counts:?}");

    // No two holders at once unless the earlier was told: its "not lost" moments all come
    // before any later grant returned.
    let list: Vec<(u64, &Grant)> = grants.iter().map(|(t, g)| (*t, g)).collect();
    let mut violations = Vec::new();
    for (i, (ta, a)) in list.iter().enumerate() {
        let Some(last_ok) = a.not_lost_at.iter().max() else {
            continue;
        };
        for (tb, b) in &list[i + 1..] {
            if b.granted_at != 0 && *last_ok >= b.granted_at {
                violations.push(format!(
                    "token {ta} was not lost {:.3} ms after token {tb} was granted",
                    (*last_ok - b.granted_at) as f64 / 1e6
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "two holders at once, the earlier not told (seed {seed}): {violations:?}"
    );

    // Once the killed holders' leases ran out, the queue is empty; one more grant clears the
    // holder records of holders that died holding; then no key is left.
    let lt = EtcdLockTicket::builder(name.as_str())
        .endpoints([ep.as_str()])
        .ttl(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(2))
        .open()
        .unwrap();
    let deadline = Instant::now() + BOUND;
    while !lt.status().is_ok_and(|s| s.queue.is_empty()) {
        assert!(Instant::now() < deadline, "the queue never emptied");
        std::thread::sleep(Duration::from_millis(20)); // polling etcd, not synchronising
    }
    let final_payload = lt.payload().unwrap();
    lt.token_lock().unwrap().unlock().unwrap();
    let keys: Vec<String> = c
        .keys(&format!("lockticket/{name}/"))
        .unwrap()
        .into_iter()
        .filter(|k| !k.ends_with("/payload"))
        .collect();
    assert!(keys.is_empty(), "keys left behind: {keys:?}");

    // Every accepted fenced write, in etcd's order (the whole history of the payload key).
    let history = payload_history(&c, &name, &final_payload);
    let mut prev: Option<(u64, u64)> = None;
    let mut repeats = 0;
    for (n, tok) in &history {
        if let Some((pn, ptok)) = prev {
            if (pn, ptok) == (*n, *tok) {
                repeats += 1; // one write applied twice (its answer was lost, it was retried)
                continue;
            }
            assert!(
                *tok >= ptok,
                "a fenced write went back (seed {seed}): token {tok} after {ptok}"
            );
            assert_eq!(
                *n,
                pn + 1,
                "the counter went from {pn} (token {ptok}) to {n} (token {tok}): two holders' \
                 writes were both accepted (seed {seed})"
            );
        }
        prev = Some((*n, *tok));
    }
    println!(
        "chaos: the payload's history: {} fenced writes ({repeats} retried), counter {}, tokens \
         never went back, no count written twice; no key left",
        history.len(),
        prev.map_or(0, |p| p.0)
    );
}

/// The payload key's values, in revision order, as (count, token), read with `etcdctl watch
/// --rev=1` until the last one is `last` (the current value).
fn payload_history(c: &Cluster, name: &str, last: &[u8]) -> Vec<(u64, u64)> {
    let m = c.members.iter().find(|m| m.child.is_some()).unwrap();
    let key = format!("lockticket/{name}/payload");
    let mut text = String::new();
    for secs in [3, 10, 30] {
        let out = std::process::Command::new("timeout")
            .args([&secs.to_string(), "etcdctl", "--endpoints", &m.client])
            .args(["watch", "--rev=1", &key])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut values = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            match lines[i] {
                "PUT" if i + 2 < lines.len() => {
                    values.push(lines[i + 2]);
                    i += 3;
                }
                "DELETE" => i += 2,
                _ => i += 1,
            }
        }
        if values.last().map(|v| v.as_bytes()) == Some(last) {
            return values
                .iter()
                .map(|v| {
                    let mut w = v.split(' ').map(|x| x.parse::<u64>().unwrap());
                    (w.next().unwrap(), w.next().unwrap())
                })
                .collect();
        }
    }
    panic!("could not read the payload's whole history: {text}");
}
