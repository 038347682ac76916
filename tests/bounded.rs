//! Multi-process tests of a table created with `Fairness::Bounded`: exclusion between the
//! queue and processes that go ahead of it, the bound, a bypasser killed inside, the mode
//! recorded in the table.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lockticket::{Error, Fairness, LockTicket, Share};

/// A bound long enough that a loaded machine never exceeds it by accident.
const LONG: Duration = Duration::from_secs(30);

fn dispatch(role: &str, args: &[String]) {
    let name = &args[0];
    let lt = LockTicket::open(name).unwrap();
    match role {
        // Increments a file counter `n` times under the exclusive token.
        "count" => count_role(&lt, args),
        // Takes the exclusive token, says so, holds it until told to release (or killed).
        "hold" => {
            let g = lt.token_lock().unwrap();
            say(format!("held died={}", g.previous_holder_died()));
            let cmd = hear();
            drop(g);
            say(format!("released {cmd}"));
        }
        // Tries once; holds until told to release when it got the token.
        "try" => match lt.try_token_lock().unwrap() {
            Some(g) => {
                say(format!("held died={}", g.previous_holder_died()));
                hear();
                drop(g);
                say("released");
            }
            None => say("busy"),
        },
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn bounded(tag: &str, bound: Duration) -> (LockTicket, String) {
    let name = unique(tag);
    let lt = LockTicket::builder(&name)
        .fairness(Fairness::Bounded(bound))
        .open()
        .unwrap();
    (lt, name)
}

/// The state letter of every thread of process `pid` (R, S, T, ...).
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .chars()
                .next()
        })
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sends a signal to a helper process this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// The main process holds the token; helper W queues behind it and falls asleep; W is
/// stopped (SIGSTOP), then the token is released: W's turn has come while it cannot run.
fn sleeping_head(lt: &LockTicket, name: &str) -> Helper {
    let g = lt.token_lock().unwrap();
    let w = Helper::spawn("hold", &[name]);
    let pid = w.pid();
    wait_until("W queued and asleep", || {
        lt.status().unwrap().queue.len() == 1 && thread_states(pid).iter().all(|&s| s == 'S')
    });
    signal(pid, libc::SIGSTOP);
    wait_until("W stopped", || {
        thread_states(pid).iter().all(|&s| s == 'T' || s == 't')
    });
    drop(g);
    w
}

#[test]
fn mutual_exclusion_between_processes_in_a_bounded_table() {
    let (lt, name) = bounded("bexcl", Fairness::DEFAULT_BOUND);
    let _main = lt.main_lock(Share::Shared).unwrap();
    let per = 2000;
    assert_eq!(count_together("bexcl", &name, 6, per), 6 * per);
    let st = lt.status().unwrap();
    assert_eq!(st.fairness, Fairness::bounded());
    eprintln!(
        "{} of {} grants went ahead of the queue",
        st.bypasses,
        6 * per
    );
}

#[test]
fn a_running_process_goes_ahead_of_a_sleeping_head_which_then_waits_for_it() {
    let (lt, name) = bounded("bahead", LONG);
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut w = sleeping_head(&lt, &name);
    // W's turn has come, but W is not running: a running process takes the token ahead.
    let mut x = Helper::spawn("try", &[&name]);
    x.expect("held died=false");
    let st = lt.status().unwrap();
    assert!(st.holders.iter().any(|h| h.bypass), "{st}");
    assert!(
        lt.try_token_lock().unwrap().is_none(),
        "one holder at a time"
    );
    // W runs again: it must wait for X, asleep on the bypass word, not enter.
    signal(w.pid(), libc::SIGCONT);
    let pid = w.pid();
    wait_until("W asleep again", || {
        thread_states(pid).iter().all(|&s| s == 'S')
    });
    assert!(
        lt.try_token_lock().unwrap().is_none(),
        "W's turn came: nobody else goes ahead"
    );
    x.send("x");
    x.expect("released");
    w.expect("held died=false");
    w.send("x");
    w.expect("released");
    assert_eq!(lt.status().unwrap().bypasses, 1);
}

/// Issue 21: a head that cannot use the token (asleep, or woken and not run since) is gone
/// ahead of whatever its age — its wait is not a delay the lock could shorten — and once it
/// runs it waits for the one bypasser inside, then holds.
#[test]
fn a_sleeping_head_is_gone_ahead_of_whatever_its_age() {
    let bound = Duration::from_millis(1);
    let (lt, name) = bounded("bbound", bound);
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut w = sleeping_head(&lt, &name);
    let t0 = Instant::now(); // W waits since before this
    // W has now waited far longer than the bound: it is still gone ahead of while it sleeps.
    wait_until("the bound to pass", || t0.elapsed() > 3 * bound);
    let mut x = Helper::spawn("try", &[&name]);
    x.expect("held died=false");
    signal(w.pid(), libc::SIGCONT);
    x.send("x");
    x.expect("released");
    w.expect("held died=false");
    w.send("x");
    w.expect("released");
    assert_eq!(lt.status().unwrap().bypasses, 1);
}

#[test]
fn a_bypasser_killed_inside_is_cleared_and_its_death_reported() {
    let (lt, name) = bounded("bkill", LONG);
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut w = sleeping_head(&lt, &name);
    let mut x = Helper::spawn("try", &[&name]);
    x.expect("held died=false");
    x.kill();
    signal(w.pid(), libc::SIGCONT);
    w.expect("held died=true");
    w.send("x");
    w.expect("released");
    let g = lt.token_lock().unwrap();
    assert!(!g.previous_holder_died(), "reported once");
}

#[test]
fn the_mode_is_recorded_in_the_table_and_a_conflicting_one_refused() {
    let (lt, name) = bounded("bmode", Duration::from_micros(1500));
    let _main = lt.main_lock(Share::Shared).unwrap();
    // No mode asked: the table's.
    let plain = LockTicket::open(&name).unwrap();
    let st = plain.status().unwrap();
    assert_eq!(st.fairness, Fairness::Bounded(Duration::from_micros(1500)));
    assert!(st.to_string().contains("bounded:1500us"), "{st}");
    // Another mode asked: refused, naming both.
    let strict = LockTicket::builder(&name)
        .fairness(Fairness::Strict)
        .open()
        .unwrap();
    let err = strict.main_lock(Share::Shared).unwrap_err();
    assert!(matches!(err, Error::FairnessMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("bounded:1500us") && msg.contains("strict"),
        "{msg}"
    );
    // A bound out of range is refused when the handle is built.
    assert!(matches!(
        LockTicket::builder(&name)
            .fairness(Fairness::Bounded(Duration::ZERO))
            .open(),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn the_last_owner_out_keeps_a_table_whose_token_is_held_ahead_of_the_queue() {
    let (lt, name) = bounded("blast", LONG);
    let main = lt.main_lock(Share::Shared).unwrap();
    let mut w = sleeping_head(&lt, &name);
    let mut x = Helper::spawn("try", &[&name]);
    x.expect("held died=false");
    // Only X's bypass is left in use: W (the head it went ahead of) dies.
    w.kill();
    main.unlock().unwrap();
    assert!(
        lt.path().exists(),
        "the last owner out removed a table while a live process held its token"
    );
    x.send("x");
    x.expect("released");
    let _ = std::fs::remove_file(lt.path());
}

#[test]
fn asking_again_while_holding_ahead_of_the_queue_is_an_error_not_a_hang() {
    let (lt, name) = bounded("breenter", LONG);
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut w = sleeping_head(&lt, &name);
    let g = lt
        .try_token_lock()
        .unwrap()
        .expect("goes ahead of the stopped head");
    assert!(lt.status().unwrap().holders.iter().any(|h| h.bypass));
    match lt.try_token_lock() {
        Ok(None) | Err(Error::WouldDeadlock { .. }) => {}
        other => panic!("a try while this thread holds the token: {other:?}"),
    }
    assert!(
        matches!(lt.token_lock(), Err(Error::WouldDeadlock { .. })),
        "a blocking request would wait for this thread's own token"
    );
    drop(g);
    signal(w.pid(), libc::SIGCONT);
    w.expect("held died=false");
    w.send("x");
    w.expect("released");
}
