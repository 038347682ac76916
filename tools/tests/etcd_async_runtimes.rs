//! The etcd backend's futures on tokio, against a real etcd started by the test (the root
//! crate's tests/etcd_support; SKIP without an etcd binary, a failure under `CI=true`): tasks
//! of a `current_thread` runtime wait for the lock without stopping the runtime, and futures
//! cancelled by `tokio::time::timeout`, `select!` and `abort` leave no key.
#![cfg(feature = "etcd")]

// The root crate's test plumbing and etcd harness, shared.
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/etcd_support/mod.rs"]
mod etcd_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BOUND, unique};
use etcd_support::Cluster;
use lockticket::etcd::EtcdLockTicket;
use lockticket::{Patience, Share};

fn open(endpoints: &str, name: &str) -> EtcdLockTicket {
    EtcdLockTicket::builder(name)
        .endpoints([endpoints])
        .ttl(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(1))
        .open()
        .unwrap()
}

/// Polls `cond` on the runtime (an etcd read each time, off the runtime's thread) within
/// [`BOUND`].
async fn until(what: &str, cond: impl Fn() -> bool + Send + Sync + 'static) {
    let cond = Arc::new(cond);
    let deadline = Instant::now() + BOUND;
    loop {
        let c = cond.clone();
        if tokio::task::spawn_blocking(move || c()).await.unwrap() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling etcd, not synchronising
    }
}

#[test]
fn etcd_futures_on_a_current_thread_runtime_wait_without_blocking_it_and_cancel_without_a_trace() {
    let Some(c) = Cluster::start("tokio", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("etokio");
    let lt = Arc::new(open(&ep, &name));
    let holder = open(&ep, &name);
    let queue = {
        let lt = lt.clone();
        move || lt.status().unwrap().queue.len()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let g = holder.token_lock().unwrap();
        // A heartbeat task beats while 20 tasks of the same thread queue for the lock.
        let stop = Arc::new(AtomicBool::new(false));
        let gap_us = Arc::new(AtomicU64::new(0));
        let beat = {
            let (stop, gap_us) = (stop.clone(), gap_us.clone());
            tokio::spawn(async move {
                let mut last = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let now = Instant::now();
                    gap_us.fetch_max((now - last).as_micros() as u64, Ordering::SeqCst);
                    last = now;
                }
            })
        };
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let f = if i % 2 == 0 {
                    lt.token_lock_owned_async()
                } else {
                    lt.lock_owned_async(Share::Shared, Patience::Forever)
                };
                tokio::spawn(async move {
                    let g = f.await.unwrap().unwrap();
                    let token = g.fencing_token();
                    // Released off the runtime's thread (a drop would wait for etcd here).
                    g.unlock_async().await.unwrap();
                    token
                })
            })
            .collect();
        let q = queue.clone();
        until("20 tasks in the queue", move || q() == 21).await;
        // Cancelled three ways while they wait: none leaves a key.
        let timed_out =
            tokio::time::timeout(Duration::from_millis(50), lt.token_lock_async()).await;
        assert!(timed_out.is_err(), "the holder still holds");
        tokio::select! {
            _ = lt.token_lock_shared_async() => panic!("granted while held"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let aborted = tokio::spawn(lt.token_lock_owned_async());
        let q = queue.clone();
        until("the task to abort in the queue", move || q() >= 22).await;
        aborted.abort();
        assert!(aborted.await.unwrap_err().is_cancelled());
        let q = queue.clone();
        until("the cancelled requests' keys gone", move || q() == 21).await;
        // The holder (another handle, blocking) releases: every task is served in turn.
        let t0 = g.fencing_token();
        drop(g);
        let mut tokens = Vec::new();
        for t in tasks {
            tokens.push(tokio::time::timeout(BOUND, t).await.unwrap().unwrap());
        }
        assert!(tokens.iter().all(|&t| t > t0));
        stop.store(true, Ordering::SeqCst);
        beat.await.unwrap();
        // The runtime's one thread never waited on etcd (a figure, not an assertion: a
        // loaded machine delays timers too).
        eprintln!(
            "longest heartbeat gap while 20 tasks queued and were served: {:?}",
            Duration::from_micros(gap_us.load(Ordering::SeqCst))
        );
    });
    let q = queue.clone();
    let deadline = Instant::now() + BOUND;
    while q() != 0 {
        assert!(Instant::now() < deadline, "keys left behind");
        std::thread::sleep(Duration::from_millis(5)); // polling etcd, not synchronising
    }
    if let Some(keys) = c.keys(&format!("lockticket/{name}/")) {
        assert!(keys.is_empty(), "keys left behind: {keys:?}");
    }
}
