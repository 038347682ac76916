//! Multi-process tests of the token lock: exclusion, FIFO order, shared/exclusive interplay,
//! death of holders and waiters, timeouts, a full ring.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use lockticket::{LockTicket, Share};

fn dispatch(role: &str, args: &[String]) {
    let name = &args[0];
    let lt = LockTicket::open(name).unwrap();
    match role {
        // Increments a file counter `n` times under the exclusive token.
        "count" => count_role(&lt, args),
        // Takes a token, says so, holds it until told to release (or killed).
        "hold" => {
            let share = if args[1] == "shared" {
                Share::Shared
            } else {
                Share::Exclusive
            };
            let t0 = Instant::now();
            let g = match share {
                Share::Shared => lt.token_lock_shared().unwrap(),
                Share::Exclusive => lt.token_lock().unwrap(),
            };
            say(format!(
                "held died={} waited_us={}",
                g.previous_holder_died(),
                t0.elapsed().as_micros()
            ));
            let cmd = hear();
            drop(g);
            say(format!("released {cmd}"));
        }
        // Takes the exclusive token, says its fencing token, holds it until killed.
        "fence" => {
            let g = lt.token_lock().unwrap();
            say(format!("fence {}", g.fencing_token()));
            let _ = hear();
            drop(g);
        }
        // Takes the token, appends its tag to a file under it, releases.
        "append" => {
            let g = lt.token_lock().unwrap();
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&args[1])
                .unwrap();
            writeln!(f, "{}", args[2]).unwrap();
            drop(g);
            say("appended");
        }
        "timeout" => {
            let ms: u64 = args[1].parse().unwrap();
            let got = lt.token_lock_timeout(Duration::from_millis(ms)).unwrap();
            say(format!("timeout got={}", got.is_some()));
            let tried = lt.try_token_lock().unwrap();
            say(format!("try got={}", tried.is_some()));
        }
        // Holds the token in this (non-main) thread, then makes the main thread exit alone:
        // the process lives on, its leader a zombie.
        "leader-exits" => {
            extern "C" fn exit_thread(_: libc::c_int) {
                // SAFETY: ends only the calling thread (the main one), as pthread_exit would.
                unsafe { libc::syscall(libc::SYS_exit, 0) };
            }
            let g = lt.token_lock().unwrap();
            // SAFETY: installs a handler that only ends the thread it runs on, then sends the
            // signal to the main thread (tid == pid).
            unsafe {
                libc::signal(
                    libc::SIGUSR1,
                    exit_thread as *const () as libc::sighandler_t,
                );
                let pid = libc::getpid();
                libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGUSR1);
            }
            wait_until("our main thread to be a zombie", || {
                let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
                stat.rsplit(')').next().unwrap().split_whitespace().next() == Some("Z")
            });
            say("held leader-gone");
            hear();
            drop(g);
            say("released");
            // SAFETY: ends the process from its last thread without unwinding a harness whose
            // main thread is gone.
            unsafe { libc::_exit(0) };
        }
        // Like "hold" (exclusive), with an interval timer sending SIGALRM to the waiting
        // thread every 0.5 ms while it waits; args[1]: "restart" for SA_RESTART, else none. Reports the signal count.
        "hold-itimer" => {
            static ALARMS: AtomicU64 = AtomicU64::new(0);
            extern "C" fn on_alarm(_: libc::c_int) {
                ALARMS.fetch_add(1, Relaxed);
            }
            let flags = if args[1] == "restart" {
                libc::SA_RESTART
            } else {
                0
            };
            // SAFETY: installs a handler that only bumps an atomic (async-signal-safe); the
            // sigaction, sigevent and itimerspec structs are fully initialised before use.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_alarm as *const () as libc::sighandler_t;
                sa.sa_flags = flags;
                libc::sigemptyset(&mut sa.sa_mask);
                assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
                // A process-directed SIGALRM (setitimer) would go to the helper's main
                // thread (libtest's), not to this one, which waits: aim the timer at us.
                let mut ev: libc::sigevent = std::mem::zeroed();
                ev.sigev_notify = libc::SIGEV_THREAD_ID;
                ev.sigev_signo = libc::SIGALRM;
                ev.sigev_notify_thread_id = libc::gettid();
                let mut timer: libc::timer_t = std::mem::zeroed();
                assert_eq!(
                    libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer),
                    0
                );
                let tick = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 500_000,
                };
                let it = libc::itimerspec {
                    it_interval: tick,
                    it_value: tick,
                };
                assert_eq!(libc::timer_settime(timer, 0, &it, std::ptr::null_mut()), 0);
            }
            let g = lt.token_lock().unwrap();
            let alarms = ALARMS.load(Relaxed);
            say(format!(
                "held died={} alarms={alarms}",
                g.previous_holder_died()
            ));
            hear();
            drop(g);
            say("released");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn table(tag: &str) -> (LockTicket, String) {
    let name = unique(tag);
    (LockTicket::open(&name).unwrap(), name)
}

/// Waits until the table's queue holds `n` waiters.
fn wait_queued(lt: &LockTicket, n: usize) {
    wait_until(&format!("{n} queued"), || {
        lt.status().unwrap().queue.len() == n
    });
}

#[test]
fn mutual_exclusion_between_processes() {
    let (lt, name) = table("excl");
    let _main = lt.main_lock(Share::Shared).unwrap();
    assert_eq!(count_together("excl", &name, 4, 500), 4 * 500);
}

#[test]
fn mutual_exclusion_between_threads() {
    let (lt, _name) = table("threads");
    let _main = lt.main_lock(Share::Exclusive).unwrap();
    let scratch = Scratch::new("threads");
    let counter = Counter::open(&scratch.join("counter"));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..2000 {
                    let g = lt.token_lock().unwrap();
                    counter.bump();
                    drop(g);
                }
            });
        }
    });
    assert_eq!(counter.get(), 8000);
}

#[test]
fn fifo_order_of_staggered_arrivals() {
    let (lt, name) = table("fifo");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let scratch = Scratch::new("fifo");
    let log = scratch.join("log");
    std::fs::write(&log, "").unwrap();
    let held = lt.token_lock().unwrap();
    let mut helpers = Vec::new();
    for i in 0..6 {
        helpers.push(Helper::spawn(
            "append",
            &[&name, log.to_str().unwrap(), &i.to_string()],
        ));
        wait_queued(&lt, i + 1); // arrival i is in the queue before arrival i+1 starts
    }
    let st = lt.status().unwrap();
    let queued: Vec<u32> = st.queue.iter().map(|t| t.pid).collect();
    let spawned: Vec<u32> = helpers.iter().map(|h| h.pid()).collect();
    assert_eq!(queued, spawned, "status lists the queue in arrival order");
    drop(held);
    for h in &mut helpers {
        h.expect("appended");
    }
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(order, "0\n1\n2\n3\n4\n5\n");
}

#[test]
fn shared_requests_hold_together_but_not_past_a_queued_exclusive() {
    let (lt, name) = table("shared");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mine = lt.token_lock_shared().unwrap();
    let mut reader = Helper::spawn("hold", &[&name, "shared"]);
    reader.expect("held"); // joins our shared hold at once
    let mut writer = Helper::spawn("hold", &[&name, "exclusive"]);
    wait_queued(&lt, 1);
    let mut late_reader = Helper::spawn("hold", &[&name, "shared"]);
    wait_queued(&lt, 2); // behind the writer, not beside us
    let st = lt.status().unwrap();
    assert_eq!(st.holders.len(), 2);
    assert_eq!(
        st.queue.iter().map(|t| t.pid).collect::<Vec<_>>(),
        [writer.pid(), late_reader.pid()]
    );
    // Shared try-lock must not barge past the queued writer either.
    assert!(lt.try_token_lock_shared().unwrap().is_none());
    drop(mine);
    reader.send("x");
    reader.expect("released");
    writer.expect("held");
    assert_eq!(
        lt.status().unwrap().queue.len(),
        1,
        "the late reader still waits"
    );
    writer.send("x");
    writer.expect("released");
    late_reader.expect("held");
    late_reader.send("x");
    late_reader.expect("released");
}

#[test]
fn a_sigkilled_holder_is_reclaimed_and_reported() {
    let (lt, name) = table("killholder");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name, "exclusive"]);
    holder.expect("held died=false");
    let mut waiter = Helper::spawn("hold", &[&name, "exclusive"]);
    wait_queued(&lt, 1);
    let killed_at = Instant::now();
    holder.kill();
    let got = waiter.expect("held");
    let reclaim = killed_at.elapsed();
    assert!(
        got.starts_with("died=true"),
        "the next holder learns the holder died: {got}"
    );
    eprintln!("reclaim after SIGKILL of the holder: {reclaim:?}");
    waiter.send("x");
    waiter.expect("released");
    let st = lt.status().unwrap();
    assert_eq!(st.reclaimed_slots, 1);
    assert!(st.holders.is_empty() && st.queue.is_empty());
    // And the lock works as before.
    let g = lt.token_lock().unwrap();
    assert!(!g.previous_holder_died(), "the death is reported once");
}

/// Issue 10 item 4: a waiter interrupted every 0.5 ms by a signal (with and without
/// SA_RESTART) still checks what blocks it on a deadline of its own, so a SIGKILLed holder is
/// reclaimed within the reclaim bound. Bounded, not timed: the bound is generous (before the
/// fix, the signals postponed every check: found after 0.06-1.1 s, or never).
#[test]
fn signals_never_delay_reclaim() {
    for mode in ["restart", "interrupt"] {
        let (lt, name) = table(&format!("itimer-{mode}"));
        let _main = lt.main_lock(Share::Shared).unwrap();
        let mut holder = Helper::spawn("hold", &[&name, "exclusive"]);
        holder.expect("held died=false");
        let mut waiter = Helper::spawn("hold-itimer", &[&name, mode]);
        wait_queued(&lt, 1);
        let killed_at = Instant::now();
        holder.kill();
        let got = waiter.expect("held");
        let reclaim = killed_at.elapsed();
        eprintln!("{mode}: reclaim under a 0.5 ms interval timer: {reclaim:?} ({got})");
        assert!(got.starts_with("died=true"), "{mode}: {got}");
        let alarms: u64 = got.rsplit("alarms=").next().unwrap().parse().unwrap();
        assert!(alarms > 0, "{mode}: no signal reached the waiter: {got}");
        // The reclaim bound is ~1 ms; 500 ms is generous for a loaded machine (before the
        // fix: 0.06-1.1 s here, or never).
        assert!(
            reclaim < Duration::from_millis(500),
            "{mode}: a dead holder found after {reclaim:?}"
        );
        waiter.send("x");
        waiter.expect("released");
    }
}

/// A holder and the waiters queued behind it are SIGKILLed together: the survivor behind
/// them sweeps all of them in one pass and is granted (bounded, not timed).
#[test]
fn a_kill_storm_is_swept_at_once() {
    const K: usize = 16;
    let (lt, name) = table("killstorm");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name, "exclusive"]);
    holder.expect("held died=false");
    let mut doomed = Vec::new();
    for i in 0..K {
        doomed.push(Helper::spawn("hold", &[&name, "exclusive"]));
        wait_queued(&lt, i + 1);
    }
    let mut survivor = Helper::spawn("hold", &[&name, "exclusive"]);
    wait_queued(&lt, K + 1);
    let killed_at = Instant::now();
    holder.kill();
    for d in &mut doomed {
        d.kill();
    }
    let got = survivor.expect("held");
    let reclaim = killed_at.elapsed();
    eprintln!(
        "kill storm of {}: survivor granted after {reclaim:?}",
        K + 1
    );
    assert!(got.starts_with("died=true"), "{got}");
    assert!(reclaim < Duration::from_secs(2), "{reclaim:?}");
    let st = lt.status().unwrap();
    assert_eq!(st.reclaimed_slots, K as u64 + 1, "{st}");
    survivor.send("x");
    survivor.expect("released");
}

#[test]
fn a_sigkilled_waiter_is_skipped() {
    let (lt, name) = table("killwaiter");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let held = lt.token_lock().unwrap();
    let mut w1 = Helper::spawn("hold", &[&name, "exclusive"]);
    wait_queued(&lt, 1);
    let mut w2 = Helper::spawn("hold", &[&name, "exclusive"]);
    wait_queued(&lt, 2);
    w1.kill();
    drop(held);
    let got = w2.expect("held");
    assert!(
        got.starts_with("died=false"),
        "a dead waiter never held: {got}"
    );
    w2.send("x");
    w2.expect("released");
}

#[test]
fn timeouts_and_try_locks_leave_no_trace() {
    let (lt, name) = table("timeout");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let held = lt.token_lock().unwrap();
    let mut h = Helper::spawn("timeout", &[&name, "30"]);
    assert_eq!(h.expect("timeout"), "got=false");
    assert_eq!(h.expect("try"), "got=false");
    let st = lt.status().unwrap();
    assert_eq!(st.queue.len(), 0, "{st}");
    assert_eq!(st.holders.len(), 1);
    drop(held);
    assert!(lt.try_token_lock().unwrap().is_some());
    let t = lt.token_lock_timeout(Duration::from_millis(10)).unwrap();
    assert!(t.is_some());
}

#[test]
fn more_requests_than_slots_wait_for_a_slot() {
    let name = unique("full");
    let lt = LockTicket::builder(&name).ring_capacity(2).open().unwrap();
    let _main = lt.main_lock(Share::Shared).unwrap();
    let scratch = Scratch::new("full");
    let counter = scratch.join("counter");
    let held = lt.token_lock().unwrap();
    let mut helpers: Vec<Helper> = (0..4)
        .map(|_| Helper::spawn("count", &[&name, counter.to_str().unwrap(), "50"]))
        .collect();
    for h in &mut helpers {
        h.expect("ready");
        h.send("go");
    }
    // The ring (2 slots) is full: we hold one, one waits, the rest wait for a slot.
    wait_until("a full ring", || lt.status().unwrap().queue.len() == 1);
    assert!(
        lt.token_lock_timeout(Duration::from_millis(5))
            .unwrap()
            .is_none()
    );
    drop(held);
    for h in &mut helpers {
        h.expect("done");
    }
    assert_eq!(Counter::open(&counter).get(), 200);
}

#[test]
fn token_calls_need_a_table() {
    let (lt, _) = table("nocreate");
    let e = lt.token_lock().unwrap_err();
    assert!(matches!(e, lockticket::Error::NotCreated { .. }), "{e}");
    assert!(e.to_string().contains("main lock"), "{e}");
    assert!(matches!(
        lt.payload(),
        Err(lockticket::Error::NotCreated { .. })
    ));
}

#[test]
fn a_holder_whose_main_thread_exited_still_holds() {
    let (lt, name) = table("leader");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("leader-exits", &[&name]);
    h.expect("held leader-gone");
    // Its thread group leader is a zombie, but another thread holds the token: not dead.
    assert!(
        lt.token_lock_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    let st = lt.status().unwrap();
    assert_eq!(st.holders.len(), 1);
    assert!(st.holders[0].alive, "{st}");
    assert_eq!(st.reclaimed_slots, 0);
    h.send("release");
    h.expect("released");
    let g = lt.token_lock().unwrap();
    assert!(!g.previous_holder_died());
}

#[test]
fn the_request_builder_deadline_and_closure_forms() {
    let (lt, _) = table("request");
    let _owner = lt.main_lock(Share::Shared).unwrap();
    // Free: every form gets it.
    assert!(lt.request().no_wait().lock().unwrap().is_some());
    assert!(lt.request().shared().lock().unwrap().is_some());
    let soon = Instant::now() + Duration::from_secs(5);
    assert!(lt.token_lock_until(soon).unwrap().is_some());
    assert!(lt.token_lock_shared_until(soon).unwrap().is_some());
    assert_eq!(lt.with_token(|g| g.share()).unwrap(), Share::Exclusive);
    assert_eq!(lt.with_token_shared(|g| g.share()).unwrap(), Share::Shared);
    // Held by a reader in another thread: an exclusive request with a past deadline, no
    // wait or a short timeout gets None and leaves no trace; a shared one joins the reader.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let lt = &lt;
        s.spawn(move || {
            let _reader = lt.token_lock_shared().unwrap();
            held_tx.send(()).unwrap();
            let _ = done_rx.recv();
        });
        held_rx.recv().unwrap();
        assert!(lt.token_lock_until(Instant::now()).unwrap().is_none());
        assert!(lt.request().no_wait().lock().unwrap().is_none());
        let timed = lt.request().timeout(Duration::from_millis(1)).lock();
        assert!(timed.unwrap().is_none());
        assert!(lt.request().shared().no_wait().lock().unwrap().is_some());
        done_tx.send(()).unwrap();
    });
    // Behind this very thread's own token, a timed wait would only ever time out: an error.
    let reader = lt.token_lock_shared().unwrap();
    let timed = lt.request().timeout(Duration::from_millis(1)).lock();
    assert!(
        matches!(timed, Err(lockticket::Error::WouldDeadlock { .. })),
        "{timed:?}"
    );
    drop(reader);
    let st = lt.status().unwrap();
    assert!(st.holders.is_empty() && st.queue.is_empty(), "{st}");
}

#[test]
fn asking_again_for_a_held_token_is_an_error_not_a_hang() {
    let (lt, _) = table("reentry");
    let _owner = lt.main_lock(Share::Shared).unwrap();
    let held = lt.token_lock().unwrap();
    for r in [lt.token_lock().map(Some), lt.token_lock_shared().map(Some)] {
        match r {
            Err(lockticket::Error::WouldDeadlock { .. }) => {}
            other => panic!("expected WouldDeadlock, got {other:?}"),
        }
    }
    // Another thread of the same process simply waits its turn.
    std::thread::scope(|s| {
        let t = s.spawn(|| lt.token_lock().map(|g| g.share()));
        wait_queued(&lt, 1);
        drop(held);
        assert_eq!(t.join().unwrap().unwrap(), Share::Exclusive);
    });
    // Shared tokens held by this thread do not block another shared one of it.
    let r1 = lt.token_lock_shared().unwrap();
    let r2 = lt.token_lock_shared().unwrap();
    drop((r1, r2));
}

#[test]
fn owned_guards_can_be_returned_and_hold_releases_everything() {
    use std::sync::Arc;
    fn take(lt: &Arc<LockTicket>) -> lockticket::Result<lockticket::OwnedTokenGuard> {
        lt.token_lock_owned() // returned from a function: no borrow of a local
    }
    let (lt, name) = table("owned");
    let lt = Arc::new(lt);
    let owner = lt.main_lock_owned(Share::Shared).unwrap();
    let g = take(&lt).unwrap();
    assert_eq!(g.share(), Share::Exclusive);
    let other = LockTicket::open(&name).unwrap();
    assert!(
        other.try_token_lock().unwrap().is_none(),
        "the owned guard holds"
    );
    g.unlock().unwrap();
    assert!(other.try_token_lock().unwrap().is_some());
    drop(owner);
    assert!(!lt.path().exists(), "the owned main guard left the table");

    let held = lockticket::hold(&name).unwrap();
    assert!(!held.previous_holder_died());
    assert!(
        other.try_token_lock().unwrap().is_none(),
        "hold holds the token"
    );
    let path = other.path().to_path_buf();
    assert!(path.exists());
    drop(held);
    assert!(
        !path.exists(),
        "hold's drop released the token and left the table"
    );
}

/// Issue 17: a process that already has the table open and only polls — `try_token_lock`, or
/// timeouts shorter than a waiter's check interval — finds a SIGKILLed holder on its first
/// call after the holder is gone (the kernel has dropped the dead process's registration by
/// the time it is reaped), in either mode.
#[test]
fn polling_and_short_timeouts_find_a_dead_holder_at_once() {
    type Poll = fn(&LockTicket) -> Option<lockticket::TokenGuard<'_>>;
    let polls: [(&str, Poll); 4] = [
        ("try", |lt| lt.try_token_lock().unwrap()),
        ("try shared", |lt| lt.try_token_lock_shared().unwrap()),
        ("500us", |lt| {
            lt.token_lock_timeout(Duration::from_micros(500)).unwrap()
        }),
        ("0s shared", |lt| {
            lt.token_lock_shared_timeout(Duration::ZERO).unwrap()
        }),
    ];
    for (what, poll) in polls {
        let (lt, name) = table("pollkill");
        let _main = lt.main_lock(Share::Shared).unwrap();
        // Warm: this process is registered and its fast path is live.
        drop(lt.token_lock().unwrap());
        let mut holder = Helper::spawn("hold", &[&name, "exclusive"]);
        holder.expect("held died=false");
        assert!(poll(&lt).is_none(), "{what}: granted beside a live holder");
        holder.kill(); // SIGKILL and reap
        let g = poll(&lt).unwrap_or_else(|| panic!("{what}: a dead holder blocks a poller"));
        assert!(g.previous_holder_died(), "{what}: the death is reported");
        drop(g);
        assert!(poll(&lt).is_some(), "{what}: and the lock works as before");
    }
}

/// Issue 19: fencing tokens grow with every grant of a table — across processes, a SIGKILLed
/// holder's reclaim, and a repair — and stay the same for the life of a guard.
#[test]
fn fencing_tokens_strictly_increase_across_grants_reclaims_and_repairs() {
    let (lt, name) = table("fence");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let g = lt.token_lock().unwrap();
    let first = g.fencing_token();
    assert_eq!(g.fencing_token(), first, "stable for the guard's life");
    drop(g);
    // Another process's grant, then its death holding the token.
    let mut holder = Helper::spawn("fence", &[&name]);
    let theirs: u64 = holder.expect("fence ").parse().unwrap();
    assert!(theirs > first, "{theirs} after {first}");
    holder.kill();
    let g = lt.token_lock().unwrap();
    assert!(g.previous_holder_died());
    let after_reclaim = g.fencing_token();
    assert!(after_reclaim > theirs);
    drop(g);
    assert_eq!(lt.repair().unwrap(), None);
    let g = lt.try_token_lock().unwrap().unwrap();
    assert!(g.fencing_token() > after_reclaim);
    assert_eq!(lt.status().unwrap().last_fencing_token, g.fencing_token());
}

/// Issue 19: a blocked `lock()` cancelled from another thread ends at once with its own
/// outcome and leaves no trace: the queue is empty again, and the next holder is served
/// without any reclaim.
#[test]
fn a_cancelled_blocking_wait_ends_at_once_and_leaves_no_trace() {
    let (lt, name) = table("cancel");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name, "exclusive"]);
    holder.expect("held died=false");
    let cancel = lockticket::Cancel::new();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| lt.request().cancel_on(&cancel).lock().map(|g| g.is_some()));
        wait_queued(&lt, 1); // it waits in the queue
        cancel.cancel();
        let outcome = waiter.join().unwrap();
        assert!(
            matches!(outcome, Err(lockticket::Error::Cancelled { .. })),
            "{outcome:?}"
        );
    });
    let st = lt.status().unwrap();
    assert!(
        st.queue.is_empty(),
        "the cancelled request left the queue: {st}"
    );
    // Cancelled before asking: refused at once, nothing queued.
    assert!(matches!(
        lt.request().cancel_on(&cancel).lock(),
        Err(lockticket::Error::Cancelled { .. })
    ));
    holder.send("x");
    holder.expect("released");
    let g = lt.try_token_lock().unwrap().expect("free at once");
    assert!(!g.previous_holder_died());
    assert_eq!(
        lt.status().unwrap().reclaimed_slots,
        0,
        "nothing to reclaim"
    );
}
