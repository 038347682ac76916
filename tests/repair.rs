//! Never a permanent outage (issue 9): a token queue found inconsistent is rebuilt — by the
//! next token call when no live process has a request in it, by `repair` (what
//! `lockticket repair` calls) around the live requests otherwise — and never while a live
//! process holds the token.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use lockticket::layout;
use lockticket::{Error, LockTicket, Share};

fn read_u64(path: &Path, at: u64) -> u64 {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_ne_bytes(b)
}

fn write_u64(path: &Path, at: u64, v: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&v.to_ne_bytes(), at).unwrap();
}

/// Moves `head` back by two laps, as the stalled-releaser bug of issue 9 did: the slot of
/// the new head is then two laps ahead of it (an impossible state).
fn move_head_back_two_laps(path: &Path, capacity: u64) {
    let head = read_u64(path, layout::hot::HEAD);
    write_u64(path, layout::hot::HEAD, head.wrapping_sub(2 * capacity));
}

fn cycle(lt: &LockTicket, n: usize) {
    for _ in 0..n {
        let g = lt.token_lock().unwrap();
        assert!(!g.previous_holder_died());
        drop(g);
    }
}

#[test]
fn an_impossible_queue_with_nobody_in_it_is_repaired_by_the_next_call() {
    let scratch = Scratch::new("repair-auto");
    let path = scratch.join("t.lt");
    let lt = LockTicket::builder(&path).ring_capacity(4).open().unwrap();
    let main = lt.main_lock(Share::Exclusive).unwrap();
    cycle(&lt, 10); // three laps of a ring of 4 and a bit
    move_head_back_two_laps(&path, 4);
    // The blocking, timed and try forms all get through, and the repair is counted once.
    let g = lt
        .token_lock_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("granted after the repair");
    drop(g);
    assert!(lt.try_token_lock().unwrap().is_some());
    cycle(&lt, 10);
    let st = lt.status().unwrap();
    assert_eq!(st.repairs, 1, "{st}");
    assert!(st.to_string().contains("1 repaired"), "{st}");
    assert_eq!(lt.repair().unwrap(), None, "nothing left to repair");
    main.unlock().unwrap();
}

#[test]
fn a_live_holder_is_never_repaired_away() {
    let scratch = Scratch::new("repair-holder");
    let path = scratch.join("t.lt");
    let lt = LockTicket::builder(&path).ring_capacity(4).open().unwrap();
    let main = lt.main_lock(Share::Exclusive).unwrap();
    cycle(&lt, 6);
    // We hold the token; then garbage lands in the slot after ours (a claim two laps ahead).
    let g = lt.token_lock().unwrap();
    let head = read_u64(&path, layout::hot::HEAD);
    let next_slot = layout::HEADER_SIZE + ((head + 1) % 4) * layout::SLOT_SIZE;
    let lap = (head + 1) / 4;
    write_u64(&path, next_slot, ((lap + 2) << 32) | 12345);
    // Another caller cannot repair automatically (a live process has a request): a clear
    // error naming the command, never a grant beside the holder.
    let other = LockTicket::builder(&path).ring_capacity(4).open().unwrap();
    match other.token_lock_timeout(Duration::from_secs(10)) {
        Err(Error::Inconsistent { live, .. }) => assert_eq!(live, [std::process::id()]),
        other => panic!("expected Inconsistent, got {other:?}"),
    }
    // Nor can `repair`: the live process holds the token.
    match lt.repair() {
        Err(e @ Error::RepairRefused { .. }) => {
            assert!(e.to_string().contains("hold the token"), "{e}");
        }
        other => panic!("expected RepairRefused, got {other:?}"),
    }
    // Once the holder is done, the queue is rebuilt and works again.
    g.unlock().unwrap();
    let r = lt.repair().unwrap().expect("repaired");
    assert_eq!(r.kept, 0);
    cycle(&lt, 10);
    assert_eq!(lt.status().unwrap().repairs, 1);
    main.unlock().unwrap();
}
