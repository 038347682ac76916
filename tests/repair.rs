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

fn dispatch(role: &str, args: &[String]) {
    match role {
        // Two threads take the exclusive token `args[2]` times each and bump the counter
        // file `args[1]` under it (a lost increment is a broken exclusion).
        "busy" => {
            let lt = LockTicket::builder(&args[0])
                .ring_capacity(4)
                .open()
                .unwrap();
            let counter = Counter::open(Path::new(&args[1]));
            let n: u64 = args[2].parse().unwrap();
            say("ready");
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..n {
                            let g = lt
                                .token_lock_timeout(BOUND)
                                .unwrap()
                                .expect("the queue wedged");
                            counter.bump();
                            drop(g);
                        }
                    });
                }
            });
            say("done");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn helper_entry() {
    common::helper_entry(dispatch);
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

/// Issue 17: `repair` run again and again on a healthy table that 4 processes x 2 threads use
/// (ring of 4, so it laps constantly) is a no-op: it never rebuilds a ring that moves under
/// its look, so exclusion holds, nothing wedges, and no repair is counted.
#[test]
fn repair_on_a_busy_healthy_table_is_a_no_op() {
    let scratch = Scratch::new("repair-busy");
    let path = scratch.join("t.lt");
    let counter = scratch.join("counter");
    let lt = LockTicket::builder(&path).ring_capacity(4).open().unwrap();
    let main = lt.main_lock(Share::Shared).unwrap();
    let per = 3000u64;
    let mut helpers: Vec<Helper> = (0..4)
        .map(|_| {
            Helper::spawn(
                "busy",
                &[
                    path.to_str().unwrap(),
                    counter.to_str().unwrap(),
                    &per.to_string(),
                ],
            )
        })
        .collect();
    for h in &mut helpers {
        h.expect("ready");
    }
    let mut repairs = 0u64;
    let deadline = std::time::Instant::now() + 2 * BOUND;
    // Until every helper has exited (each says "done" first: checked below).
    while !helpers
        .iter_mut()
        .all(|h| h.child.try_wait().unwrap().is_some())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the helpers never finished"
        );
        for _ in 0..20 {
            if let Some(r) = lt.repair().unwrap() {
                repairs += 1;
                eprintln!("rebuilt a healthy ring: {r}");
            }
        }
    }
    for h in &mut helpers {
        h.expect("done");
    }
    assert_eq!(repairs, 0, "repair rebuilt a consistent ring");
    assert_eq!(
        Counter::open(&counter).get(),
        4 * 2 * per,
        "exclusion broke"
    );
    assert_eq!(lt.status().unwrap().repairs, 0);
    main.unlock().unwrap();
}
