//! The etcd backend against real etcd servers started by the tests (see tests/etcd_support):
//! FIFO across processes, shared/exclusive, try/timeout/deadline, cancel storms, a killed
//! holder, a paused holder overtaken (fencing), and a 3-member cluster losing its leader.
#![cfg(feature = "etcd")]

mod common;
mod etcd_support;

use std::io::Write;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{BOUND, Helper, Scratch, hear, say, unique};
use etcd_support::{Cluster, SIGCONT, SIGSTOP, signal};
use lockticket::Error;
use lockticket::etcd::{EtcdGuard, EtcdLockTicket};

fn open(endpoints: &str, name: &str, ttl: u64) -> EtcdLockTicket {
    EtcdLockTicket::builder(name)
        .endpoints([endpoints])
        .ttl(Duration::from_secs(ttl))
        .call_timeout(Duration::from_secs(1))
        .open()
        .unwrap()
}

fn dispatch(role: &str, args: &[String]) {
    let (endpoints, name, ttl) = (&args[0], &args[1], args[2].parse().unwrap());
    let lt = open(endpoints, name, ttl);
    match role {
        // Takes a token, says so, then obeys commands until "release" or EOF.
        "hold" => {
            let g: EtcdGuard = if args[3] == "shared" {
                lt.token_lock_shared().unwrap()
            } else {
                lt.token_lock().unwrap()
            };
            say(format!(
                "held {} {}",
                g.fencing_token(),
                g.previous_holder_died()
            ));
            loop {
                let cmd = hear();
                if cmd.is_empty() || cmd == "release" {
                    let r = g.unlock();
                    say(format!("released {}", r.is_ok()));
                    return;
                }
                if cmd == "lost?" {
                    say(format!("lost {}", g.lost()));
                } else if let Some(v) = cmd.strip_prefix("payload ") {
                    match g.set_payload(v.as_bytes()) {
                        Ok(()) => say("payload ok"),
                        Err(e) => say(format!("payload err {e}")),
                    }
                }
            }
        }
        // Takes the token (waiting), appends its tag to a file under it, releases.
        "append" => {
            let g = lt.token_lock().unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&args[3])
                .unwrap();
            writeln!(f, "{}", args[4]).unwrap();
            drop(f);
            g.unlock().unwrap();
            say("appended");
        }
        // Bumps a file counter `args[4]` times under the exclusive token, and writes its
        // fencing token to the fence key (fenced), checking tokens only grow.
        "count" => {
            let counter = common::Counter::open(std::path::Path::new(&args[3]));
            let n: u64 = args[4].parse().unwrap();
            say("ready");
            assert_eq!(hear(), "go");
            let fence = format!("lockticket-test/{name}/fence");
            for _ in 0..n {
                let g = lt.token_lock().unwrap();
                counter.bump();
                g.put_fenced(&fence, g.fencing_token().to_string().as_bytes())
                    .unwrap();
                drop(g);
            }
            say("done");
        }
        _ => panic!("unknown role {role}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

/// Polls `cond` (an etcd read each time) until it holds, within [`BOUND`].
fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5)); // polling etcd, not synchronising
    }
}

fn queue_len(lt: &EtcdLockTicket) -> usize {
    lt.status().unwrap().queue.len()
}

/// No key of lock `name` is left on the cluster.
fn assert_no_keys(c: &Cluster, name: &str) {
    if let Some(keys) = c.keys(&format!("lockticket/{name}/")) {
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| !k.ends_with("/payload"))
            .collect();
        assert!(keys.is_empty(), "keys left behind: {keys:?}");
    }
}

#[test]
fn etcd_fifo_across_processes() {
    let Some(c) = Cluster::start("fifo", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("efifo");
    let scratch = Scratch::new("efifo");
    let file = scratch.join("order");
    std::fs::write(&file, "").unwrap();
    let lt = open(&ep, &name, 5);
    let first = lt.token_lock().unwrap();
    assert!(!first.previous_holder_died());
    let mut helpers = Vec::new();
    for i in 0..5 {
        helpers.push(Helper::spawn(
            "append",
            &[&ep, &name, "5", file.to_str().unwrap(), &i.to_string()],
        ));
        // The next one enters the queue only after this one is in it.
        poll("the helper's request in the queue", || {
            queue_len(&lt) == i + 2
        });
    }
    let st = lt.status().unwrap();
    assert!(st.queue[0].holding && st.queue[1..].iter().all(|e| !e.holding));
    assert_eq!(st.queue[0].fencing_token, first.fencing_token());
    let pids: Vec<u32> = st.queue[1..].iter().map(|e| e.pid).collect();
    assert_eq!(pids, helpers.iter().map(Helper::pid).collect::<Vec<_>>());
    assert!(st.queue.iter().all(|e| e.lease_ttl.is_some()));
    first.unlock().unwrap();
    for h in &mut helpers {
        h.expect("appended");
    }
    for h in helpers {
        assert!(h.finish().success());
    }
    let order = std::fs::read_to_string(&file).unwrap();
    assert_eq!(order, "0\n1\n2\n3\n4\n");
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_exclusion_across_processes() {
    let Some(c) = Cluster::start("excl", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("eexcl");
    let scratch = Scratch::new("eexcl");
    let counter = scratch.join("counter");
    let (procs, per) = (4, 25u64);
    let mut helpers: Vec<Helper> = (0..procs)
        .map(|_| {
            Helper::spawn(
                "count",
                &[&ep, &name, "5", counter.to_str().unwrap(), &per.to_string()],
            )
        })
        .collect();
    for h in &mut helpers {
        h.expect("ready");
    }
    for h in &mut helpers {
        h.send("go");
    }
    for h in &mut helpers {
        h.expect("done");
    }
    assert_eq!(
        common::Counter::open(&counter).get(),
        procs as u64 * per,
        "an increment was lost: two holders at once"
    );
    for h in helpers {
        assert!(h.finish().success());
    }
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_shared_and_exclusive() {
    let Some(c) = Cluster::start("share", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("eshare");
    let handles: Vec<EtcdLockTicket> = (0..4).map(|_| open(&ep, &name, 5)).collect();
    let r1 = handles[0].token_lock_shared().unwrap();
    let r2 = handles[1]
        .try_token_lock_shared()
        .unwrap()
        .expect("readers share");
    assert_eq!(r2.share(), lockticket::Share::Shared);
    assert!(
        !r2.previous_holder_died(),
        "a live reader beside it is not a death"
    );
    assert!(handles[2].try_token_lock().unwrap().is_none());
    let t0 = Instant::now();
    assert!(
        handles[2]
            .token_lock_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        queue_len(&handles[3]),
        2,
        "a timed-out request leaves the queue"
    );
    std::thread::scope(|s| {
        let (tx, rx) = channel();
        let w = &handles[2];
        s.spawn(move || {
            let g = w.token_lock().unwrap();
            tx.send(g.fencing_token()).unwrap();
            g.wait_lost_timeout(Duration::from_millis(50));
            drop(g);
        });
        poll("the writer waiting", || queue_len(&handles[3]) == 3);
        // A reader behind a waiting writer waits too (no barging).
        assert!(handles[3].try_token_lock_shared().unwrap().is_none());
        assert!(
            handles[3]
                .request()
                .shared()
                .deadline(Instant::now() + Duration::from_millis(50))
                .lock()
                .unwrap()
                .is_none()
        );
        let (t1, t2) = (r1.fencing_token(), r2.fencing_token());
        drop(r1);
        assert!(rx.try_recv().is_err(), "granted while a reader holds");
        drop(r2);
        let tw = rx.recv_timeout(BOUND).unwrap();
        assert!(tw > t1 && tw > t2);
    });
    let r3 = handles[3].token_lock_shared().unwrap();
    assert!(!r3.previous_holder_died());
    drop(r3);
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_try_timeout_and_cancel_storm_leave_no_keys() {
    let Some(c) = Cluster::start("storm", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("estorm");
    let holder = open(&ep, &name, 5);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let granted = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for i in 0..6u64 {
            let (ep, name, stop, granted) = (&ep, &name, &stop, &granted);
            s.spawn(move || {
                let lt = open(ep, name, 5);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let ms = (n * 7 + i * 13) % 40;
                    let got = match n % 3 {
                        0 => lt.try_token_lock().unwrap(),
                        1 => lt.token_lock_timeout(Duration::from_millis(ms)).unwrap(),
                        _ => lt
                            .request()
                            .shared()
                            .deadline(Instant::now() + Duration::from_millis(ms))
                            .lock()
                            .unwrap(),
                    };
                    if got.is_some() {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        // Grants race the timeouts: the holder comes and goes.
        for _ in 0..30 {
            let g = holder.token_lock().unwrap();
            std::thread::yield_now();
            drop(g);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(granted.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(queue_len(&holder), 0);
    assert_no_keys(&c, &name);
    // The lock still works.
    let _free = holder.try_token_lock().unwrap().expect("free");
}

#[test]
fn etcd_killed_holder_next_is_granted_within_ttl_and_told_it_died() {
    let Some(c) = Cluster::start("kill", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("ekill");
    let ttl = 2;
    // A released lock: the next holder is not told anything died.
    let mut h = Helper::spawn("hold", &[&ep, &name, "2", "exclusive"]);
    h.expect("held");
    h.send("release");
    assert_eq!(h.expect("released"), "true");
    let lt = open(&ep, &name, ttl);
    let g = lt.token_lock().unwrap();
    assert!(!g.previous_holder_died());
    drop(g);
    // A killed holder.
    let mut h = Helper::spawn("hold", &[&ep, &name, "2", "exclusive"]);
    let t1: u64 = h.expect("held").split(' ').next().unwrap().parse().unwrap();
    h.kill();
    let t0 = Instant::now();
    // The lease's end frees it (within TTL + 1 s: a bench figure, etcd_bench's failover; the
    // deadline here only turns "never" into a failure).
    let g = lt
        .token_lock_timeout(Duration::from_secs(ttl + 10))
        .unwrap()
        .expect("granted after the lease expired");
    eprintln!("granted {:?} after the kill (TTL {ttl} s)", t0.elapsed());
    assert!(g.previous_holder_died());
    assert!(g.fencing_token() > t1);
    drop(g);
    // Told once: the next holder after a release is not.
    assert!(!lt.token_lock().unwrap().previous_holder_died());

    // Shared holders: one of two readers killed; a later reader is told, and the live one
    // is not taken for dead.
    let mut h = Helper::spawn("hold", &[&ep, &name, "2", "shared"]);
    h.expect("held");
    let r1 = lt.token_lock_shared().unwrap();
    assert!(!r1.previous_holder_died());
    h.kill();
    poll("the killed reader's lease to expire", || {
        queue_len(&lt) == 1
    });
    let other = open(&ep, &name, ttl);
    let r2 = other
        .try_token_lock_shared()
        .unwrap()
        .expect("readers share");
    assert!(r2.previous_holder_died());
    drop((r1, r2));
    let r3 = other.try_token_lock_shared().unwrap().expect("free");
    assert!(!r3.previous_holder_died(), "told once");
    drop(r3);
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_paused_holder_is_overtaken_and_its_fenced_write_fails() {
    let Some(c) = Cluster::start("pause", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("epause");
    let mut h = Helper::spawn("hold", &[&ep, &name, "2", "exclusive"]);
    let t1: u64 = h.expect("held").split(' ').next().unwrap().parse().unwrap();
    h.send("payload first");
    assert_eq!(h.expect("payload"), "ok");
    h.send("lost?");
    assert_eq!(h.expect("lost"), "false");
    signal(h.pid(), SIGSTOP);
    let lt = open(&ep, &name, 2);
    let g = lt
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("granted once the paused holder's lease expired");
    assert!(g.fencing_token() > t1, "a larger fencing token");
    assert!(g.previous_holder_died());
    assert_eq!(lt.payload().unwrap(), b"first");
    g.set_payload(b"second").unwrap();
    signal(h.pid(), SIGCONT);
    h.send("lost?");
    assert_eq!(h.expect("lost"), "true", "the paused holder is told");
    h.send("payload third");
    let answer = h.expect("payload");
    assert!(answer.starts_with("err"), "{answer}");
    assert_eq!(
        lt.payload().unwrap(),
        b"second",
        "the fenced write was refused"
    );
    h.send("release");
    assert_eq!(h.expect("released"), "false", "unlock reports the loss");
    assert!(!g.lost());
    let e = g.unlock();
    assert!(e.is_ok(), "{e:?}");
    let _ = h.finish();
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_lost_guard_errors_say_what_to_do() {
    let Some(c) = Cluster::start("lost", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("elost");
    let lt = open(&ep, &name, 5);
    let g = lt.token_lock().unwrap();
    // Its key deleted by hand (an operator, `etcdctl del`): the guard finds out.
    let other = open(&ep, &name, 5);
    if c.keys("lockticket/").is_none() {
        println!("SKIP (part): no etcdctl");
        return;
    }
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "del", g.key()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = g.set_payload(b"x").unwrap_err();
    assert!(matches!(e, Error::EtcdLost { .. }), "{e}");
    assert!(e.to_string().contains("take the lock again"), "{e}");
    assert!(g.lost());
    assert!(g.wait_lost_timeout(Duration::from_millis(1)));
    assert!(other.try_token_lock().unwrap().is_some());
}

#[test]
fn etcd_three_members_stopped_member_and_leader_kill() {
    let Some(mut c) = Cluster::start("three", 3) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("ethree");
    let call = Duration::from_secs(1);
    let opener = || {
        EtcdLockTicket::builder(&name)
            .endpoints([ep.as_str()])
            .ttl(Duration::from_secs(3))
            .call_timeout(call)
            .open()
            .unwrap()
    };
    // The member a client talks to first is stopped: it carries on through the others.
    signal(c.members[0].pid() as u32, SIGSTOP);
    let lt = opener();
    let t0 = Instant::now();
    let g = lt.token_lock_timeout(Duration::from_secs(5)).unwrap();
    assert!(g.is_some(), "granted through another member");
    eprintln!("granted through another member after {:?}", t0.elapsed());
    drop(g);
    signal(c.members[0].pid() as u32, SIGCONT);
    assert!(c.wait_healthy(BOUND));

    // The leader killed while a lock is held: the holder keeps it.
    let holder = opener();
    let g = holder.token_lock().unwrap();
    let token = g.fencing_token();
    let Some(leader) = c.leader() else {
        println!("SKIP (part): no etcdctl to find the leader");
        return;
    };
    c.kill(leader);
    let waiter = opener();
    let t0 = Instant::now();
    // A request during the election returns within its bounds: not granted, or (if the
    // election outlasted the call deadline) etcd unavailable, never a hang.
    match waiter.try_token_lock() {
        Ok(busy) => assert!(busy.is_none()),
        Err(e) => assert!(matches!(e, Error::EtcdUnavailable { .. }), "{e}"),
    }
    // Never a hang (how long, against the call deadline, is a bench figure).
    assert!(t0.elapsed() < BOUND, "try took {:?}", t0.elapsed());
    eprintln!("a try during the election took {:?}", t0.elapsed());
    assert!(
        !g.wait_lost_timeout(Duration::from_secs(4)),
        "the holder kept its lock across the election"
    );
    std::thread::scope(|s| {
        let (tx, rx) = channel();
        let w = &waiter;
        s.spawn(move || {
            let r = w.token_lock_timeout(Duration::from_secs(10)).unwrap();
            tx.send(r.map(|g| g.fencing_token())).unwrap();
        });
        poll("the waiter queued", || queue_len(&holder) == 2);
        g.unlock().unwrap();
        let got = rx
            .recv_timeout(BOUND)
            .unwrap()
            .expect("the waiter is served");
        assert!(got > token);
    });
}

/// A handle reuses its requests' key names once their keys are deleted (etcd keeps every
/// deleted key in its index until it compacts, and the queue's range compare visits them), yet
/// every grant still gets a larger fencing token, a reused name is never taken for a death,
/// and two requests alive at once never share a name.
#[test]
fn etcd_request_names_are_reused_and_tokens_still_grow() {
    let Some(c) = Cluster::start("reuse", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("ereuse");
    let lt = open(&ep, &name, 5);
    let mut names = std::collections::HashSet::new();
    let mut last = 0;
    for i in 0..20 {
        let g = if i % 2 == 0 {
            lt.token_lock().unwrap()
        } else {
            lt.try_token_lock_shared().unwrap().unwrap()
        };
        assert!(g.fencing_token() > last, "tokens must grow");
        assert!(!g.previous_holder_died(), "a released name is not a death");
        last = g.fencing_token();
        names.insert(g.key().rsplit('/').next().unwrap().to_string());
        g.unlock().unwrap();
    }
    // One name, and one more for every call that had to be retried (a loaded machine).
    assert!(names.len() < 10, "names not reused: {names:?}");
    let a = lt.token_lock_shared().unwrap();
    let b = lt.token_lock_shared().unwrap();
    let w = lt
        .request()
        .exclusive()
        .timeout(Duration::from_millis(50))
        .lock();
    assert!(matches!(w, Ok(None)), "a writer waits for the readers");
    assert_ne!(a.key(), b.key());
    drop((a, b));
    let g = lt.token_lock().unwrap();
    assert!(!g.previous_holder_died());
    drop(g);
    assert_no_keys(&c, &name);
}
