//! Pieces several test files use: the counting role and its run, and forking from a
//! single-threaded helper.

use lockticket::LockTicket;

use super::{Counter, Helper, Scratch, hear, say};

/// The "count" helper role: increments the counter file `args[1]` `args[2]` times, each time
/// under the exclusive token of `lt`, after the parent says "go".
pub fn count_role(lt: &LockTicket, args: &[String]) {
    let counter = Counter::open(std::path::Path::new(&args[1]));
    let n: u64 = args[2].parse().unwrap();
    say("ready");
    assert_eq!(hear(), "go");
    for _ in 0..n {
        let g = lt.token_lock().unwrap();
        counter.bump();
        drop(g);
    }
    say("done");
}

/// Starts `procs` helpers in the "count" role on table `name`, `per` increments each, lets
/// them go together and waits for all: returns the counter (exactly `procs * per` under
/// mutual exclusion).
pub fn count_together(tag: &str, name: &str, procs: usize, per: u64) -> u64 {
    let scratch = Scratch::new(tag);
    let counter = scratch.join("counter");
    let mut helpers: Vec<Helper> = (0..procs)
        .map(|_| {
            Helper::spawn(
                "count",
                &[name, counter.to_str().unwrap(), &per.to_string()],
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
    Counter::open(&counter).get()
}

/// Forks; 0 in the child, the child's PID in the parent. Only from a helper that runs its
/// work on one thread (libtest runs a helper's test on its main thread with
/// `--test-threads=1`).
pub fn fork() -> libc::pid_t {
    // SAFETY: the calling helper has one thread; the child only uses the allocator, handles
    // and stdio, then `_exit`s (see `child_main`).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// The forked child's whole life: runs `body`, then `_exit`s (101 if it panicked), never
/// returning into the test harness.
pub fn child_main(body: impl FnOnce()) -> ! {
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(()) => 0,
        Err(_) => 101,
    };
    // SAFETY: ends the child without running the test harness's exit path a second time.
    unsafe { libc::_exit(code) }
}

/// Forks a child that runs `body` (borrowing what it needs); returns its PID.
pub fn fork_child(body: impl FnOnce()) -> libc::pid_t {
    let pid = fork();
    if pid == 0 {
        child_main(body);
    }
    pid
}
