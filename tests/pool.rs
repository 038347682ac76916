//! A pool of 1,000 processes on one table with the default sizes (issue 11, item 4): each
//! takes the main lock and queues for the token at once, and the token goes round in arrival
//! order.

mod common;

use std::io::Write;
use std::time::Instant;

use common::*;
use lockticket::{LockTicket, Share};

/// Processes in the pool (`LOCKTICKET_TEST_POOL` overrides, for experiments).
fn pool_size() -> usize {
    std::env::var("LOCKTICKET_TEST_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn dispatch(role: &str, args: &[String]) {
    let name = &args[0];
    match role {
        // Forks POOL children one after another; each joins (main lock, shared) and queues for
        // the exclusive token; the next one is forked once the previous one is queued, so
        // arrival order is known. Each child appends its index to the order file when it gets
        // the token.
        "pool" => {
            let order = std::path::PathBuf::from(&args[1]);
            let lt = LockTicket::open(name).unwrap();
            let pool = pool_size();
            let mut kids = Vec::with_capacity(pool);
            let t0 = Instant::now();
            for i in 0..pool {
                let pid = fork_child(|| {
                    let lt = LockTicket::open(name).unwrap();
                    let main = lt
                        .main_lock(Share::Shared)
                        .unwrap_or_else(|e| panic!("child {i}: main_lock: {e}"));
                    let token = lt
                        .token_lock()
                        .unwrap_or_else(|e| panic!("child {i}: token_lock: {e}"));
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&order)
                        .unwrap();
                    writeln!(f, "{i}").unwrap();
                    drop(token);
                    drop(main);
                });
                kids.push(pid);
                wait_until(&format!("child {i} queued"), || {
                    lt.status().unwrap().queue.len() == i + 1
                });
            }
            let st = lt.status().unwrap();
            say(format!(
                "queued members={} in {:.2}s",
                st.members.len(),
                t0.elapsed().as_secs_f64()
            ));
            let mut failed = 0;
            for pid in kids {
                let mut status = 0;
                // SAFETY: waits for a child this process forked.
                let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
                if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                    failed += 1;
                }
            }
            say(format!("done failed={failed}"));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
}

#[test]
fn a_pool_of_1000_processes_joins_and_queues_in_arrival_order() {
    let name = unique("pool");
    let lt = LockTicket::open(&name).unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    let scratch = Scratch::new("pool");
    let order = scratch.join("order");
    std::fs::write(&order, "").unwrap();
    // Hold the token while the pool queues behind us.
    let token = lt.token_lock().unwrap();
    let mut pool = Helper::spawn("pool", &[&name, order.to_str().unwrap()]);
    let queued = pool.expect("queued");
    let n = pool_size();
    eprintln!("{n} processes queued: {queued}");
    assert!(
        queued.starts_with(&format!("members={}", n + 1)),
        "every process holds the main lock: {queued}"
    );
    let t0 = Instant::now();
    drop(token);
    assert_eq!(pool.expect("done"), "failed=0");
    eprintln!("{n} grants in arrival order took {:?}", t0.elapsed());
    let got: Vec<usize> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "arrival order kept");
    drop(main);
}
