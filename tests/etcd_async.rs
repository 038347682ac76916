//! The async forms over etcd against real etcd servers (tests/etcd_support): grants in FIFO
//! order among async and blocking requests of several processes, and cancel-safety — a future
//! dropped while it waits, dropped after a grant it never saw, timed out, or by the hundred,
//! leaves no key. Std only: a hand-rolled `block_on` polls the futures.
#![cfg(feature = "etcd")]

mod common;
mod etcd_support;

use std::task::Poll;
use std::time::{Duration, Instant};

use common::{BOUND, Helper, block_on, hear, poll_once, say, thread_waker, unique};
use etcd_support::Cluster;
use lockticket::etcd::{EtcdLockFuture, EtcdLockTicket};
use lockticket::{Patience, Share, TokenLocks};

fn open(endpoints: &str, name: &str, ttl: u64) -> EtcdLockTicket {
    EtcdLockTicket::builder(name)
        .endpoints([endpoints])
        .ttl(Duration::from_secs(ttl))
        .call_timeout(Duration::from_secs(1))
        .open()
        .unwrap()
}

fn dispatch(role: &str, args: &[String]) {
    let lt = open(&args[0], &args[1], 5);
    match role {
        // Takes the exclusive token (blocking), says so, releases when told.
        "hold" => {
            say("waiting");
            let g = lt.token_lock().unwrap();
            say(format!("held {}", g.fencing_token()));
            let _ = hear();
            g.unlock().unwrap();
            say("released");
        }
        other => panic!("unknown role {other}"),
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

/// The queue's length; a status call that fails (a call deadline passed while hundreds of
/// request threads load etcd on a busy CI machine) counts as "not yet" for [`poll`] (`None`), and is
/// printed: the question is asked again.
fn queue_len(lt: &EtcdLockTicket) -> Option<usize> {
    match lt.status() {
        Ok(st) => Some(st.queue.len()),
        Err(e) => {
            eprintln!("status failed, asking again: {e}");
            None
        }
    }
}

/// No key of lock `name` is left on the cluster (the payload aside).
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
fn etcd_async_grants_in_fifo_order_with_blocking_requests_of_other_processes() {
    let Some(c) = Cluster::start("afifo", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("eafifo");
    let lt = open(&ep, &name, 5);
    let waker = thread_waker();
    // Free: the async forms are granted, through the inherent methods and the trait.
    let g = block_on(lt.token_lock_async()).unwrap();
    assert!(!g.previous_holder_died() && g.share() == Share::Exclusive);
    let t0 = g.fencing_token();
    drop(g);
    let g = block_on(TokenLocks::request_token_async(
        &lt,
        Share::Exclusive,
        Patience::NoWait,
    ))
    .unwrap()
    .expect("free");
    assert!(g.fencing_token() > t0);
    drop(g);
    let readers = block_on(async {
        let a = lt.token_lock_shared_async().await?;
        let b = TokenLocks::token_lock_shared_async(&lt).await?;
        Ok::<_, lockticket::Error>((a, b))
    })
    .unwrap();
    assert_eq!(readers.0.share(), Share::Shared);
    drop(readers);

    // Queued: a blocking holder; an async writer; a blocking writer in another process; an
    // async reader (behind a writer: it waits).
    let holder = lt.token_lock().unwrap();
    let other = open(&ep, &name, 5);
    let mut writer: EtcdLockFuture = other.token_lock_owned_async();
    assert!(poll_once(&mut writer, &waker).is_pending());
    poll("the async writer in the queue", || {
        queue_len(&lt) == Some(2)
    });
    let mut h = Helper::spawn("hold", &[&ep, &name]);
    h.expect("waiting");
    poll("the blocking writer in the queue", || {
        queue_len(&lt) == Some(3)
    });
    let mut reader = lt.lock_owned_async(Share::Shared, Patience::Forever);
    assert!(poll_once(&mut reader, &waker).is_pending());
    poll("the async reader in the queue", || {
        queue_len(&lt) == Some(4)
    });
    let st = lt.status().unwrap();
    assert!(st.queue[0].holding && st.queue[1..].iter().all(|e| !e.holding));
    assert_eq!(st.queue[2].pid, h.pid());

    holder.unlock().unwrap();
    let w = block_on(&mut writer).unwrap().expect("granted");
    assert!(w.fencing_token() > st.queue[0].fencing_token);
    let st = lt.status().unwrap();
    assert!(st.queue[0].holding && st.queue[0].key == w.key());
    assert!(!st.queue[1].holding, "the blocking writer waits its turn");
    assert!(
        h.try_next().is_none(),
        "the blocking writer was not granted"
    );
    block_on(w.unlock_async()).unwrap();
    let th: u64 = h.expect("held").parse().unwrap();
    assert!(!lt.status().unwrap().queue[1].holding, "the reader waits");
    assert!(poll_once(&mut reader, &waker).is_pending());
    h.send("release");
    h.expect("released");
    let r = block_on(&mut reader).unwrap().expect("granted");
    assert!(r.fencing_token() > th && r.share() == Share::Shared);
    drop(r);
    assert!(h.finish().success());
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_async_dropped_while_pending_or_after_an_unseen_grant_leaves_no_key() {
    let Some(c) = Cluster::start("adrop", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("eadrop");
    let lt = open(&ep, &name, 5);
    let waker = thread_waker();
    let holder = lt.token_lock().unwrap();

    // Dropped while it waits in the queue (blocked on its predecessor's watch).
    let mut f = lt.token_lock_owned_async();
    assert!(poll_once(&mut f, &waker).is_pending());
    poll("the request in the queue", || queue_len(&lt) == Some(2));
    let t0 = Instant::now();
    drop(f);
    poll("the dropped request's key gone", || {
        queue_len(&lt) == Some(1)
    });
    eprintln!(
        "a dropped pending request's key was gone after {:?}",
        t0.elapsed()
    );

    // Dropped after its grant, never polled again: the grant is released.
    let mut f = lt.request().lock_async();
    assert!(poll_once(&mut f, &waker).is_pending());
    poll("the request in the queue", || queue_len(&lt) == Some(2));
    let hkey = holder.key().to_string();
    holder.unlock().unwrap();
    poll("the future granted on etcd", || {
        let q = lt.status().unwrap().queue;
        q.len() == 1 && q[0].holding && q[0].key != hkey
    });
    drop(f);
    poll("the unseen grant released", || queue_len(&lt) == Some(0));
    assert!(lt.try_token_lock().unwrap().is_some(), "free again");

    // Dropped before its first poll: nothing was ever sent.
    drop(lt.token_lock_owned_async());
    assert_eq!(queue_len(&lt), Some(0));
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_async_timeout_deadline_and_no_wait_leave_no_key() {
    let Some(c) = Cluster::start("atime", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("eatime");
    let lt = open(&ep, &name, 5);
    let holder = lt.token_lock().unwrap();
    let t0 = Instant::now();
    let r = block_on(
        lt.request()
            .timeout(Duration::from_millis(200))
            .lock_async(),
    )
    .unwrap();
    assert!(r.is_none());
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "not before its deadline"
    );
    // The request's keys are deleted before its output is handed over.
    assert_eq!(queue_len(&lt), Some(1));
    let soon = Instant::now() + Duration::from_millis(100);
    let r = block_on(lt.request().shared().deadline(soon).lock_async()).unwrap();
    assert!(r.is_none() && Instant::now() >= soon);
    assert_eq!(queue_len(&lt), Some(1));
    assert!(
        block_on(lt.request().no_wait().lock_async())
            .unwrap()
            .is_none()
    );
    assert!(
        block_on(lt.lock_owned_async(Share::Shared, Patience::NoWait))
            .unwrap()
            .is_none()
    );
    assert_eq!(queue_len(&lt), Some(1));
    drop(holder);
    let g = block_on(lt.request().timeout(Duration::from_secs(5)).lock_async())
        .unwrap()
        .expect("free");
    drop(g);
    assert_no_keys(&c, &name);
}

#[test]
fn etcd_async_cancel_storm_leaves_no_keys() {
    let Some(c) = Cluster::start("astorm", 1) else {
        return;
    };
    let ep = c.endpoints();
    let name = unique("eastorm");
    let handles: Vec<EtcdLockTicket> = (0..4).map(|_| open(&ep, &name, 5)).collect();
    let holder = open(&ep, &name, 5);
    let waker = thread_waker();
    let mut seed = u64::from(std::process::id()) | 1;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    const N: usize = 200;
    let mut g = Some(holder.token_lock().unwrap());
    let mut futures: Vec<EtcdLockFuture> = (0..N)
        .map(|i| {
            let lt = &handles[i % handles.len()];
            match rand(4) {
                0 => lt.token_lock_owned_async(),
                1 => lt.lock_owned_async(Share::Shared, Patience::Forever),
                2 => lt
                    .request()
                    .timeout(Duration::from_millis(rand(300)))
                    .lock_async(),
                _ => lt.request().shared().lock_async(),
            }
        })
        .collect();
    // Most are polled (their threads start and queue), some never are.
    for f in &mut futures {
        if rand(8) != 0 {
            let _ = poll_once(f, &waker);
        }
    }
    poll("most requests in the queue", || {
        queue_len(&holder).is_some_and(|n| n > N / 2)
    });
    // Drop them in random order while the holder comes and goes, so that grants race drops.
    let (mut dropped, mut granted) = (0, 0);
    while !futures.is_empty() {
        let i = rand(futures.len() as u64) as usize;
        let mut f = futures.swap_remove(i);
        if rand(3) == 0
            && let Poll::Ready(Ok(Some(_))) = poll_once(&mut f, &waker)
        {
            granted += 1; // seen and released at once
        }
        drop(f);
        dropped += 1;
        if rand(10) == 0 {
            g = match g.take() {
                Some(held) => {
                    drop(held);
                    None
                }
                // a failed try under load is a turn without the lock, not a failure of the
                // property under test (no key left behind)
                None => holder.try_token_lock().unwrap_or_else(|e| {
                    eprintln!("try failed: {e}");
                    None
                }),
            };
        }
    }
    drop(g);
    let t0 = Instant::now();
    poll("every dropped request's key gone", || {
        queue_len(&holder) == Some(0)
    });
    eprintln!(
        "{dropped} futures dropped ({granted} granted and seen); the queue was empty {:?} \
         after the last drop",
        t0.elapsed()
    );
    assert_no_keys(&c, &name);
    // The lock is free for anyone at once.
    assert!(holder.try_token_lock().unwrap().is_some());
}
