//! Async acquisition (issue 19): futures that wait without a thread, keep their place while
//! pending, leave no trace when dropped (pending, or granted and never seen), find dead
//! holders, and hand out fencing tokens. Std only: a hand-rolled `block_on` and a counting
//! waker, so the tests drive the futures exactly.

mod common;

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::*;
use lockticket::{LockTicket, Share};

fn dispatch(role: &str, args: &[String]) {
    let lt = LockTicket::open(&args[0]).unwrap();
    match role {
        // Takes the exclusive token (blocking), says so, holds it until told (or killed).
        "hold" => {
            let g = lt.token_lock().unwrap();
            say(format!("held died={}", g.previous_holder_died()));
            let _ = hear();
            drop(g);
            say("released");
        }
        // Waits for the exclusive token (blocking), says when it has it, then releases.
        "wait" => {
            say("waiting");
            let g = lt.token_lock().unwrap();
            say(format!("got died={}", g.previous_holder_died()));
            drop(g);
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

fn queued(lt: &LockTicket) -> usize {
    lt.status().unwrap().queue.len()
}

#[test]
fn a_free_token_is_taken_at_once_and_carries_a_fencing_token() {
    let (lt, _name) = table("async-free");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let g = block_on(lt.token_lock_async()).unwrap();
    let first = g.fencing_token();
    drop(g);
    let g = block_on(lt.token_lock_shared_async()).unwrap();
    assert_eq!(g.share(), Share::Shared);
    assert!(g.fencing_token() > first);
    // Asking again on this thread while a task holds the token is no deadlock: it waits.
    let mut again = Box::pin(lt.request().shared().no_wait().lock_async());
    let waker = thread_waker();
    match poll_once(&mut again, &waker) {
        Poll::Ready(Ok(Some(_))) => {} // a shared request beside a shared holder
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pending_future_waits_without_a_thread_keeps_its_place_and_is_served_first() {
    let (lt, name) = table("async-wait");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    holder.expect("held died=false");
    let waker = thread_waker();
    let mut fut = Box::pin(lt.token_lock_async());
    assert!(poll_once(&mut fut, &waker).is_pending(), "returns at once");
    assert_eq!(queued(&lt), 1);
    // Polling again never queues again.
    for _ in 0..5 {
        assert!(poll_once(&mut fut, &waker).is_pending());
    }
    assert_eq!(queued(&lt), 1, "one request, however often polled");
    // A blocking waiter from another process queues behind it: FIFO across both kinds.
    let mut behind = Helper::spawn("wait", &[&name]);
    behind.expect("waiting");
    wait_until("two queued", || queued(&lt) == 2);
    holder.send("go");
    holder.expect("released");
    // Granted in arrival order: the future first, the blocking waiter still queued behind.
    let g = block_on(fut).unwrap();
    assert!(!g.previous_holder_died());
    let st = lt.status().unwrap();
    assert_eq!((st.holders.len(), st.queue.len()), (1, 1), "{st}");
    drop(g);
    behind.expect("got died=false");
}

#[test]
fn a_dropped_pending_future_leaves_no_trace() {
    let (lt, name) = table("async-drop");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    holder.expect("held died=false");
    let waker = thread_waker();
    // A cancel storm: many pending futures dropped at random points of their life.
    for i in 0..200 {
        let mut fut = Box::pin(if i % 2 == 0 {
            lt.request().lock_async()
        } else {
            lt.request()
                .shared()
                .timeout(Duration::from_secs(60))
                .lock_async()
        });
        assert!(poll_once(&mut fut, &waker).is_pending());
        if i % 3 == 0 {
            assert!(poll_once(&mut fut, &waker).is_pending());
        }
        drop(fut);
    }
    assert_eq!(queued(&lt), 0, "every dropped future left the queue");
    let mut behind = Helper::spawn("wait", &[&name]);
    behind.expect("waiting");
    wait_until("queued", || queued(&lt) == 1);
    holder.send("go");
    holder.expect("released");
    behind.expect("got died=false");
    assert_eq!(
        lt.status().unwrap().reclaimed_slots,
        0,
        "nothing had to be reclaimed"
    );
}

#[test]
fn a_future_granted_but_dropped_unseen_releases_the_token() {
    let (lt, name) = table("async-raced");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    holder.expect("held died=false");
    let waker = thread_waker();
    let mut fut = Box::pin(lt.token_lock_async());
    assert!(poll_once(&mut fut, &waker).is_pending());
    let mut behind = Helper::spawn("wait", &[&name]);
    behind.expect("waiting");
    wait_until("two queued", || queued(&lt) == 2);
    holder.send("go");
    holder.expect("released");
    // The release moved the head onto our ticket: the grant is ours, but the future is
    // dropped without being polled again.
    drop(fut);
    behind.expect("got died=false");
    assert_eq!(lt.status().unwrap().reclaimed_slots, 0);
}

#[test]
fn a_pending_future_finds_a_sigkilled_holder_and_is_told() {
    let (lt, name) = table("async-kill");
    let _main = lt.main_lock(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    holder.expect("held died=false");
    let waker = thread_waker();
    let mut fut = Box::pin(lt.token_lock_async());
    assert!(poll_once(&mut fut, &waker).is_pending());
    holder.kill();
    let g = block_on(fut).unwrap();
    assert!(g.previous_holder_died(), "the next holder is told");
}

#[test]
fn timeouts_and_no_wait_end_pending_futures_without_a_trace() {
    let (lt, name) = table("async-timeout");
    let lt = Arc::new(lt);
    let _main = lt.main_lock_owned(Share::Shared).unwrap();
    let mut holder = Helper::spawn("hold", &[&name]);
    holder.expect("held died=false");
    let got = block_on(lt.request().no_wait().lock_async()).unwrap();
    assert!(got.is_none());
    let got = block_on(lt.request().timeout(Duration::from_millis(30)).lock_async()).unwrap();
    assert!(got.is_none());
    assert_eq!(queued(&lt), 0);
    holder.send("go");
    holder.expect("released");
    // The owned form: 'static, Send, usable from another thread.
    let fut = lt.token_lock_owned_async();
    let g = std::thread::spawn(move || block_on(fut))
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
    std::thread::spawn(move || drop(g)).join().unwrap();
    assert!(lt.try_token_lock().unwrap().is_some());
}
