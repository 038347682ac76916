//! Fork semantics: a handle inherited through `fork` works in the child under the child's PID
//! and names its creator as parent; once that parent is gone the child's lock calls fail with
//! `ParentGone` (also while waiting); guards dropped in a child never release what the parent
//! holds.
//!
//! Every `fork` happens inside a helper process (never in the multi-threaded test harness).
//! The forked child shares the helper's stdout, so it reports on the same pipe (messages
//! prefixed `child-`); the helper itself stays silent while the child may speak, so the order
//! of messages is fixed. Children end with `_exit`, never returning into the test harness.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lockticket::{Error, LockTicket, Share};

/// The variant of an error and its message, for reports between processes.
fn describe<T>(r: &lockticket::Result<T>) -> String {
    match r {
        Ok(_) => "Ok".to_string(),
        Err(e @ Error::ParentGone { parent, .. }) => format!("ParentGone parent={parent} {e}"),
        Err(e @ Error::NotOwner { owner, .. }) => format!("NotOwner:owner={owner} {e}"),
        Err(e) => format!("Err {e:?}"),
    }
}

/// A raw fork: `clone(SIGCHLD)` straight through `syscall`, as `syscall(SYS_fork)` or glibc's
/// `_Fork` do: no `pthread_atfork` handler runs in the child.
fn raw_fork() -> libc::pid_t {
    // SAFETY: as `common::fork` (one thread in this helper). With flags SIGCHLD and no new stack the
    // child continues on a copy of our stack, like fork(2); every other argument is 0 (the
    // order of the remaining clone arguments differs between architectures, zeroes do not).
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    assert!(pid >= 0, "clone: {}", std::io::Error::last_os_error());
    pid as libc::pid_t
}

/// `fork` or, when `how` is "raw", [`raw_fork`].
fn fork_by(how: &str) -> libc::pid_t {
    if how == "raw" { raw_fork() } else { fork() }
}

/// Waits for our child; its exit code (128 + signal if killed).
fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn my_pid() -> u32 {
    std::process::id()
}

fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

fn dispatch(role: &str, args: &[String]) {
    let lt = LockTicket::open(&args[0]).unwrap();
    match role {
        // (a) The child takes the token on the inherited handle and holds it until told.
        "child-takes" => {
            say(format!("helper pid={}", my_pid()));
            let child = fork_child(|| {
                let creator = format!("creator: {}", parent_pid());
                let creator_ok = format!("{lt:?}").contains(&creator);
                let g = lt.token_lock().unwrap();
                say(format!(
                    "child-held pid={} parent={} creator_ok={creator_ok}",
                    my_pid(),
                    parent_pid()
                ));
                let _ = hear();
                g.unlock().unwrap();
                say("child-released");
                // A shared token works the same way.
                let g = lt.token_lock_shared().unwrap();
                say(format!("child-held-shared pid={}", my_pid()));
                let _ = hear();
                drop(g);
                say("child-released-shared");
            });
            say(format!("child-exit {}", reap(child)));
            if hear() != "take" {
                return;
            }
            // The parent's own tokens still carry its PID.
            let g = lt.token_lock().unwrap();
            say(format!("helper-held pid={}", my_pid()));
            let _ = hear();
            drop(g);
            say("helper-released");
        }
        // (b) The helper forks, then dies (killed by the test, or exits when args[1] is
        // "exit"); the child then tries to lock.
        "orphan" => {
            say(format!("helper pid={}", my_pid()));
            let child = fork_child(|| {
                say(format!("child-ready pid={}", my_pid()));
                if hear() != "go" {
                    return;
                }
                say(format!("child-token_lock {}", describe(&lt.token_lock())));
                say(format!(
                    "child-try_token_lock {}",
                    describe(&lt.try_token_lock())
                ));
                say(format!(
                    "child-token_lock_timeout {}",
                    describe(&lt.token_lock_timeout(Duration::from_secs(5)))
                ));
                say(format!(
                    "child-token_lock_shared {}",
                    describe(&lt.token_lock_shared())
                ));
                // Reading the table is still fine: only locking is void.
                say(format!("child-status {}", describe(&lt.status())));
            });
            if args[1] == "exit" {
                return; // the helper exits; the child lives on
            }
            reap(child); // blocks until the test kills us
        }
        // (b) The child waits in token_lock (the test holds the token) when the helper dies.
        "orphan-waiter" => {
            let shared = args[1] == "shared";
            say(format!("helper pid={}", my_pid()));
            let child = fork_child(|| {
                say(format!("child-waiting pid={}", my_pid()));
                let r = if shared {
                    lt.token_lock_shared()
                } else {
                    lt.token_lock()
                };
                say(format!("child-result {}", describe(&r)));
            });
            reap(child); // blocks until the test kills us
        }
        // The child holds the token when the helper is killed, then releases on "go".
        "orphan-holder" => {
            say(format!("helper pid={}", my_pid()));
            let child = fork_child(|| {
                let g = lt.token_lock().unwrap();
                say(format!("child-held pid={}", my_pid()));
                if hear() != "go" {
                    return;
                }
                say(format!("child-unlock {}", describe(&g.unlock())));
            });
            reap(child); // blocks until the test kills us
        }
        // (c) The helper holds the token; its child drops (or unlocks) its copy of the guard.
        "child-drops-token" => {
            let unlock = args[1] == "unlock";
            let g = lt.token_lock().unwrap();
            say(format!("helper-held pid={}", my_pid()));
            let child = fork_by(&args[2]);
            if child == 0 {
                child_main(|| {
                    if unlock {
                        let r = g.unlock();
                        say(format!(
                            "child-dropped pid={} unlock={}",
                            my_pid(),
                            describe(&r)
                        ));
                    } else {
                        drop(g);
                        say(format!("child-dropped pid={} unlock=none", my_pid()));
                    }
                });
            }
            say(format!("child-exit {}", reap(child)));
            let _ = hear();
            g.unlock().unwrap();
            say("helper-released");
        }
        // (d) The helper owns the table; its child drops (or unlocks) its copy of the guard.
        "child-drops-main" => {
            let unlock = args[1] == "unlock";
            let main = lt.main_lock(Share::Exclusive).unwrap();
            say(format!("helper-owns pid={}", my_pid()));
            let child = fork_by(&args[2]);
            if child == 0 {
                child_main(|| {
                    if unlock {
                        let r = main.unlock();
                        say(format!(
                            "child-dropped pid={} unlock={}",
                            my_pid(),
                            describe(&r)
                        ));
                    } else {
                        drop(main);
                        say(format!("child-dropped pid={} unlock=none", my_pid()));
                    }
                });
            }
            say(format!("child-exit {}", reap(child)));
            let _ = hear();
            main.unlock().unwrap();
            say("helper-unlocked");
        }
        // Issue 17, item 6: the helper holds the token and forks a worker that never uses
        // the handle and outlives it (the test kills the helper, then the worker).
        "holder-forks-worker" => {
            let g = lt.token_lock().unwrap();
            let worker = fork_child(|| {
                loop {
                    // SAFETY: waits for a signal; the test SIGKILLs us.
                    unsafe { libc::pause() };
                }
            });
            say(format!("held pid={} worker={worker}", my_pid()));
            let _ = hear(); // killed by the test meanwhile
            drop(g);
        }
        // Issue 17, item 10b: the helper is in the table and holds the table's flock through
        // a description of its own (as during a cold path); its forked child, which inherited
        // every descriptor, must wait in its cold path (here: registering for a token).
        "cold-under-parent" => {
            let _main = lt.main_lock(Share::Shared).unwrap();
            let fd = flock_a_table_description(lt.path());
            let child = fork_child(|| {
                say(format!("child-calling pid={}", my_pid()));
                let r = lt.token_lock();
                say(format!("child-done {}", describe(&r)));
            });
            if hear() != "unlock" {
                return;
            }
            // SAFETY: drops our flock on a descriptor of ours.
            unsafe { libc::flock(fd, libc::LOCK_UN) };
            say(format!("child-exit {}", reap(child)));
        }
        // Issue 17, item 10b: the helper forks a worker (which never uses the handle), then
        // runs cold paths (`repair` of a healthy table) until the test kills it.
        "cold-loop-with-worker" => {
            drop(lt.token_lock().unwrap()); // mapped and registered before the fork
            let worker = fork_child(|| {
                loop {
                    // SAFETY: waits for a signal; the test SIGKILLs us.
                    unsafe { libc::pause() };
                }
            });
            say(format!("looping pid={} worker={worker}", my_pid()));
            loop {
                // A cold path on the handle's mapped table (`main_lock` would open the file
                // again: a description the worker does not share).
                assert_eq!(lt.repair().unwrap(), None);
            }
        }
        // Issue 17, item 5, through the library: a forked child of the helper (one thread,
        // as `hold_across_exec` requires) takes the token, forks its exec guardian and execs a
        // shell (args[1] "exec") that reports and waits for a line, or a missing program
        // (args[1] "fail"), then drops the guardian and goes on.
        "hold-across-exec" => {
            let child = fork_child(|| {
                use std::os::unix::process::CommandExt;
                let g = lt.token_lock().unwrap();
                let guardian = lt.hold_across_exec().unwrap();
                let gpid = guardian.pid().expect("a guardian");
                say(format!("guardian pid={} guardian={gpid}", my_pid()));
                let program = if args[1] == "exec" {
                    "/bin/sh"
                } else {
                    "/nonexistent/lockticket-test"
                };
                let err = std::process::Command::new(program)
                    .args(["-c", "echo '@@ execd'; read x"])
                    .exec();
                drop(guardian);
                // SAFETY: signal 0 only asks whether the (reaped) guardian still exists.
                let gone = unsafe { libc::kill(gpid as libc::pid_t, 0) } != 0;
                say(format!("exec-failed gone={gone} {:?}", err.kind()));
                let _ = hear();
                g.unlock().unwrap();
                say("released");
            });
            reap(child);
        }
        other => panic!("unknown role {other}"),
    }
}

/// Takes the table's flock (`LOCK_EX`, without waiting) through the first of our descriptors
/// of `path` that can take it, and returns that descriptor.
fn flock_a_table_description(path: &std::path::Path) -> i32 {
    use std::os::unix::fs::MetadataExt;
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let want = id(std::fs::metadata(path).unwrap());
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    for fd in fds {
        if std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .ok()
            .map(id)
            != Some(want)
        {
            continue;
        }
        // SAFETY: flock on a descriptor of ours, without waiting.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return fd;
        }
    }
    panic!("no descriptor of {} could take its flock", path.display());
}

/// True when /proc/locks shows `pid` waiting for a flock.
fn waits_for_flock(pid: u32) -> bool {
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(1) == Some(&"->")
                && w.get(2) == Some(&"FLOCK")
                && w.get(5) == Some(&&*pid.to_string())
        })
}

/// True when /proc/locks shows `pid` holding (not waiting for) a flock on inode `ino`.
fn holds_flock(pid: u32, ino: u64) -> bool {
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(1) == Some(&"FLOCK")
                && w.get(4) == Some(&&*pid.to_string())
                && w.get(5).and_then(|f| f.rsplit(':').next()) == Some(&*ino.to_string())
        })
}

/// True when process `pid` is stopped (state `T`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

fn table(tag: &str) -> (LockTicket, String) {
    let name = unique(tag);
    (LockTicket::open(&name).unwrap(), name)
}

/// Splits `key=value` words.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn a_forked_child_takes_tokens_under_its_own_pid() {
    let (lt, name) = table("forktake");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("child-takes", &[&name]);
    let helper: u32 = h.expect("helper pid=").parse().unwrap();
    assert_eq!(helper, h.pid());
    let held = h.expect("child-held");
    let child: u32 = field(&held, "pid").parse().unwrap();
    assert_ne!(child, helper);
    assert_eq!(field(&held, "parent"), helper.to_string());
    assert_eq!(
        field(&held, "creator_ok"),
        "true",
        "the handle's creator is the helper"
    );

    let st = lt.status().unwrap();
    assert_eq!(st.holders.len(), 1, "{st}");
    assert_eq!(
        st.holders[0].pid, child,
        "the token carries the child's PID: {st}"
    );
    assert_eq!(
        st.holders[0].parent, helper,
        "and names the handle's creator: {st}"
    );
    assert_eq!(st.holders[0].share, Share::Exclusive);
    assert!(st.holders[0].alive);
    assert!(
        lt.try_token_lock().unwrap().is_none(),
        "the child's token excludes us"
    );

    h.send("release");
    h.expect("child-released");
    let shared = h.expect("child-held-shared pid=");
    assert_eq!(shared, child.to_string());
    let st = lt.status().unwrap();
    assert_eq!(
        st.holders
            .iter()
            .map(|t| (t.pid, t.parent, t.share))
            .collect::<Vec<_>>(),
        [(child, helper, Share::Shared)],
        "{st}"
    );
    let mine = lt.try_token_lock_shared().unwrap();
    assert!(mine.is_some(), "a shared token joins the child's");
    drop(mine);
    h.send("release");
    h.expect("child-released-shared");
    assert_eq!(h.expect("child-exit"), "0");

    let st = lt.status().unwrap();
    assert!(st.holders.is_empty() && st.queue.is_empty(), "{st}");
    h.send("take");
    assert_eq!(h.expect("helper-held pid="), helper.to_string());
    let st = lt.status().unwrap();
    assert_eq!(
        st.holders
            .iter()
            .map(|t| (t.pid, t.parent))
            .collect::<Vec<_>>(),
        [(helper, helper)],
        "{st}"
    );
    h.send("release");
    h.expect("helper-released");
}

/// Runs the "orphan" scenario: the helper forks and dies (`how`), then the child locks.
fn orphaned_child_gets_parent_gone(how: &str) {
    let (lt, name) = table("orphan");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("orphan", &[&name, how]);
    let helper: u32 = h.expect("helper pid=").parse().unwrap();
    let child: u32 = h.expect("child-ready pid=").parse().unwrap();
    if how == "kill" {
        h.kill();
    } else {
        wait_until("the helper to exit", || {
            h.child.try_wait().unwrap().is_some()
        });
    }
    h.send("go"); // read by the child: the helper is gone
    for op in [
        "child-token_lock",
        "child-try_token_lock",
        "child-token_lock_timeout",
        "child-token_lock_shared",
    ] {
        let r = h.expect(op);
        assert!(
            r.starts_with(&format!("ParentGone parent={helper}")),
            "{how}: {op} in the orphaned child {child}: {r}"
        );
    }
    let st = h.expect("child-status");
    assert_eq!(st, "Ok", "status still works in the orphan");
    let st = lt.status().unwrap();
    assert!(
        st.holders.is_empty() && st.queue.is_empty(),
        "a refused call left a trace: {st}"
    );
    assert!(lt.try_token_lock().unwrap().is_some());
}

#[test]
fn a_child_whose_parent_was_killed_gets_parent_gone() {
    orphaned_child_gets_parent_gone("kill");
}

#[test]
fn a_child_whose_parent_exited_gets_parent_gone() {
    orphaned_child_gets_parent_gone("exit");
}

#[test]
fn a_child_waiting_when_its_parent_dies_gets_parent_gone() {
    for share in ["exclusive", "shared"] {
        let (lt, name) = table("orphanwait");
        let _main = lt.main_lock(Share::Shared).unwrap();
        let held = lt.token_lock().unwrap(); // another process holds: the child must wait
        let mut h = Helper::spawn("orphan-waiter", &[&name, share]);
        let helper: u32 = h.expect("helper pid=").parse().unwrap();
        let child: u32 = h.expect("child-waiting pid=").parse().unwrap();
        wait_until("the child to queue", || {
            lt.status().unwrap().queue.iter().any(|t| t.pid == child)
        });
        let st = lt.status().unwrap();
        assert_eq!(st.queue[0].parent, helper, "{st}");
        let killed = Instant::now();
        h.kill();
        let r = h.expect("child-result");
        let took = killed.elapsed();
        assert!(
            r.starts_with(&format!("ParentGone parent={helper}")),
            "{share}: the waiting child {child} got {r}"
        );
        eprintln!("{share} waiter: ParentGone {took:?} after its parent's SIGKILL");
        assert!(
            took < Duration::from_secs(10),
            "ParentGone took {took:?} (bound 10 s)"
        );
        let st = lt.status().unwrap();
        assert!(st.queue.is_empty(), "the void request left the queue: {st}");
        assert_eq!(st.holders.len(), 1, "{st}");
        drop(held);
        assert!(lt.try_token_lock().unwrap().is_some());
    }
}

/// A child that holds the token when its parent dies keeps mutual exclusion (nobody else is
/// granted behind its back) and can still release it; then the others go on.
#[test]
fn a_child_holding_the_token_when_its_parent_dies_can_release_it() {
    let (lt, name) = table("orphanhold");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("orphan-holder", &[&name]);
    let helper: u32 = h.expect("helper pid=").parse().unwrap();
    let child: u32 = h.expect("child-held pid=").parse().unwrap();
    h.kill();
    let st = lt.status().unwrap();
    assert_eq!(
        st.holders
            .iter()
            .map(|t| (t.pid, t.parent, t.alive))
            .collect::<Vec<_>>(),
        [(child, helper, true)],
        "{st}"
    );
    assert!(
        lt.token_lock_timeout(Duration::from_millis(20))
            .unwrap()
            .is_none(),
        "granted while the orphaned child still holds the token"
    );
    h.send("go");
    assert_eq!(h.expect("child-unlock"), "Ok");
    let g = lt.token_lock_timeout(common::BOUND).unwrap();
    assert!(g.is_some());
    assert!(!g.unwrap().previous_holder_died());
}

#[test]
fn a_token_guard_dropped_in_a_forked_child_keeps_the_parents_token() {
    for (how, fork_kind) in [
        ("drop", "fork"),
        ("unlock", "fork"),
        ("drop", "raw"),
        ("unlock", "raw"),
    ] {
        let how_s = format!("{how} after a {fork_kind} fork");
        let (lt, name) = table("forktoken");
        let _main = lt.main_lock(Share::Shared).unwrap();
        let mut h = Helper::spawn("child-drops-token", &[&name, how, fork_kind]);
        let helper: u32 = h.expect("helper-held pid=").parse().unwrap();
        let dropped = h.expect("child-dropped");
        assert_ne!(field(&dropped, "pid"), helper.to_string());
        if how == "unlock" {
            assert_eq!(
                field(&dropped, "unlock"),
                format!("NotOwner:owner={helper}"),
                "{how_s}: {dropped}"
            );
            assert!(dropped.contains("belongs to process"), "{dropped}");
        }
        assert_eq!(h.expect("child-exit"), "0");
        let st = lt.status().unwrap();
        assert_eq!(
            st.holders.iter().map(|t| t.pid).collect::<Vec<_>>(),
            [helper],
            "{how_s} in the child released the parent's token: {st}"
        );
        assert!(
            lt.try_token_lock().unwrap().is_none(),
            "{how_s} in the child released the parent's token"
        );
        h.send("release");
        h.expect("helper-released");
        assert!(lt.try_token_lock().unwrap().is_some());
    }
}

#[test]
fn a_main_guard_dropped_in_a_forked_child_keeps_the_parent_registered() {
    for (how, fork_kind) in [
        ("drop", "fork"),
        ("unlock", "fork"),
        ("drop", "raw"),
        ("unlock", "raw"),
    ] {
        let how_s = format!("{how} after a {fork_kind} fork");
        let (lt, name) = table("forkmain");
        let mut h = Helper::spawn("child-drops-main", &[&name, how, fork_kind]);
        let helper: u32 = h.expect("helper-owns pid=").parse().unwrap();
        let dropped = h.expect("child-dropped");
        assert_ne!(field(&dropped, "pid"), helper.to_string());
        if how == "unlock" {
            assert_eq!(
                field(&dropped, "unlock"),
                format!("NotOwner:owner={helper}"),
                "{how_s}: {dropped}"
            );
            assert!(dropped.contains("belongs to process"), "{dropped}");
        }
        assert_eq!(h.expect("child-exit"), "0");
        assert!(
            lt.path().exists(),
            "{how_s} in the child removed the parent's table"
        );
        let st = lt.status().unwrap();
        assert_eq!(
            st.members
                .iter()
                .map(|m| (m.pid, m.share))
                .collect::<Vec<_>>(),
            [(helper, Share::Exclusive)],
            "{how_s} in the child unregistered the parent: {st}"
        );
        let e = lt.main_lock(Share::Shared).unwrap_err();
        assert!(matches!(e, Error::MainLockBusy { .. }), "{e:?}");
        h.send("unlock");
        h.expect("helper-unlocked");
        assert!(!lt.path().exists());
    }
}

/// Issue 17, item 6: a holder that forked a worker (which never touches the handle) and then
/// died frees the token at once: the worker does not keep the holder's registration alive.
#[test]
fn a_holder_killed_after_forking_a_worker_is_reclaimed_while_the_worker_lives() {
    let (lt, name) = table("forkworker");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("holder-forks-worker", &[&name]);
    let line = h.expect("held");
    let worker: libc::pid_t = field(&line, "worker").parse().unwrap();
    assert!(worker > 0);
    /// SIGKILLs the worker at the end, whatever happens.
    struct KillOnDrop(libc::pid_t);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: signals one process by its PID (> 0).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _worker = KillOnDrop(worker);
    h.kill();
    let t0 = Instant::now();
    let g = lt
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("granted while the dead holder's worker still lives");
    assert!(g.previous_holder_died());
    // SAFETY: signal 0 only asks whether the worker exists.
    let alive = unsafe { libc::kill(worker, 0) };
    assert_eq!(
        alive,
        0,
        "the worker still lives ({:?} after the holder's death)",
        t0.elapsed()
    );
    drop(g);
}

/// Issue 17, item 10b: a forked child never runs a cold path through a description it shares
/// with its parent: while the parent holds the table's flock, the child's cold path waits.
#[test]
fn a_forked_childs_cold_path_waits_for_its_parents_flock() {
    let name = unique("coldfork");
    let mut h = Helper::spawn("cold-under-parent", &[&name]);
    let child: u32 = h.expect("child-calling pid=").parse().unwrap();
    let deadline = Instant::now() + common::BOUND;
    loop {
        if let Some(line) = h.try_next() {
            panic!("the child ran its cold path under its parent's flock: {line}");
        }
        if waits_for_flock(child) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child neither waits nor ends"
        );
        std::thread::sleep(Duration::from_millis(1)); // polling a state, not synchronising
    }
    h.send("unlock");
    assert_eq!(h.expect("child-done"), "Ok");
    assert_eq!(h.expect("child-exit"), "0");
}

/// Issue 17, item 10b: a process killed inside a cold path (holding the table's flock) while a
/// child it forked lives on does not leave the flock held: the child kept neither the cold
/// path's description (its copy was let go at fork) nor a mapping of it (it is never mapped).
#[test]
fn a_process_killed_in_a_cold_path_leaves_no_flock_to_its_forked_child() {
    use std::os::unix::fs::MetadataExt;
    let (lt, name) = table("coldkill");
    let _main = lt.main_lock(Share::Shared).unwrap(); // keeps the table in place
    let ino = std::fs::metadata(lt.path()).unwrap().ino();
    let mut h = Helper::spawn("cold-loop-with-worker", &[&name]);
    let line = h.expect("looping");
    let helper: u32 = field(&line, "pid").parse().unwrap();
    let worker: libc::pid_t = field(&line, "worker").parse().unwrap();
    assert!(worker > 0);
    /// SIGKILLs the worker at the end, whatever happens.
    struct KillOnDrop(libc::pid_t);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: signals one process by its PID (> 0).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _worker = KillOnDrop(worker);
    let signal = |sig| {
        // SAFETY: signals our helper, which is not reaped before `h.kill()`.
        unsafe { libc::kill(helper as libc::pid_t, sig) };
    };
    // Catch the helper inside a cold path: stopped while /proc/locks shows it holding.
    let deadline = Instant::now() + common::BOUND;
    loop {
        assert!(Instant::now() < deadline, "never caught inside a cold path");
        if !holds_flock(helper, ino) {
            std::thread::yield_now();
            continue;
        }
        signal(libc::SIGSTOP);
        wait_until("the helper stops", || stopped(helper));
        if holds_flock(helper, ino) {
            break;
        }
        signal(libc::SIGCONT);
    }
    h.kill();
    // The worker lives; the flock must be free (checked without waiting, on a description of
    // our own).
    let f = std::fs::File::open(lt.path()).unwrap();
    // SAFETY: flock on a descriptor we own, without waiting.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    // SAFETY: signal 0 only asks whether the worker exists.
    let alive = unsafe { libc::kill(worker, 0) };
    assert_eq!(alive, 0, "the worker still lives");
    assert_eq!(
        rc, 0,
        "the dead helper's flock is still held (its forked worker keeps it)"
    );
    drop(f);
    // And the table goes on.
    drop(
        lt.token_lock_timeout(common::BOUND)
            .unwrap()
            .expect("granted"),
    );
}

/// `hold_across_exec` forks a guardian whose death signal follows the forking *thread*: it
/// refuses a process with more than one thread (issue 17, item 5).
#[test]
fn hold_across_exec_refuses_a_multithreaded_process() {
    let (lt, _name) = table("holdmt");
    let _main = lt.main_lock(Share::Shared).unwrap();
    // A second thread for the length of the call, whatever thread libtest runs us on.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let r = lt.hold_across_exec();
    drop(tx);
    other.join().unwrap();
    match r {
        Err(Error::NotSingleThreaded { threads, .. }) => assert!(threads >= 2),
        other => panic!("expected NotSingleThreaded, got {other:?}"),
    }
}

/// `hold_across_exec` keeps the token held by the exec'd program, exactly until it exits.
#[test]
fn hold_across_exec_keeps_the_token_for_the_execd_program() {
    let (lt, name) = table("holdexec");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("hold-across-exec", &[&name, "exec"]);
    let line = h.expect("guardian");
    let pid: u32 = field(&line, "pid").parse().unwrap();
    h.expect("execd");
    // The shell is the helper's process: it holds the token, alive.
    let st = lt.status().unwrap();
    assert_eq!(
        st.holders
            .iter()
            .map(|t| (t.pid, t.alive))
            .collect::<Vec<_>>(),
        [(pid, true)],
        "{st}"
    );
    assert!(lt.try_token_lock().unwrap().is_none());
    h.send("end"); // the shell's `read` returns: it exits
    let g = lt
        .token_lock_timeout(common::BOUND)
        .unwrap()
        .expect("granted once the program exited");
    assert!(g.previous_holder_died());
}

/// When `exec` fails, dropping the guardian ends it, and the token is still the process's.
#[test]
fn a_dropped_exec_guardian_ends_and_the_process_keeps_its_token() {
    let (lt, name) = table("holdfail");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut h = Helper::spawn("hold-across-exec", &[&name, "fail"]);
    h.expect("guardian");
    assert_eq!(h.expect("exec-failed"), "gone=true NotFound");
    assert!(lt.try_token_lock().unwrap().is_none(), "still held");
    h.send("release");
    h.expect("released");
    let g = lt.try_token_lock().unwrap().expect("free");
    assert!(!g.previous_holder_died());
}
