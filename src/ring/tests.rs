//! Property tests of the ring on an in-memory table (see `model`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use proptest::prelude::*;

use super::model::{MemRing, Op, PROCS, no_wake, run};
use super::*;

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PROCS;
    prop_oneof![
        4 => (p.clone(), any::<bool>()).prop_map(|(p, s)| Op::Enqueue(p, s)),
        5 => p.clone().prop_map(Op::Poll),
        4 => p.clone().prop_map(Op::Release),
        2 => p.clone().prop_map(Op::CheckHead),
        4 => (p.clone(), 1u8..6).prop_map(|(p, n)| Op::Step(p, n)),
        1 => (p.clone(), Just(255u8)).prop_map(|(p, n)| Op::Step(p, n)),
        1 => p.clone().prop_map(Op::Kill),
        1 => p.clone().prop_map(Op::Reuse),
        1 => p.prop_map(Op::Repair),
    ]
}

/// The steps of a bounded ring: the same, plus bypass attempts and parking (only a sleeping
/// head may be gone ahead of).
fn bounded_op() -> impl Strategy<Value = Op> {
    let p = 0..PROCS;
    prop_oneof![
        10 => op(),
        6 => p.clone().prop_map(Op::Bypass),
        6 => p.prop_map(Op::Park),
    ]
}

/// Tickets to start from: zero, just before the u64 wrap, just before the 32-bit lap wrap.
fn start_ticket(cap_shift: u32) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        (0u64..64).prop_map(|d| u64::MAX - d),
        (0u64..64).prop_map(move |d| ((1u64 << 32) << cap_shift).wrapping_sub(d)),
        any::<u64>(),
    ]
}

proptest! {
    // Miri interprets every instruction: a handful of cases there, hundreds natively.
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 512 },
        // Miri isolates the file system: no regression files there.
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence }, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_interleaving(
        (cap_shift, start) in (1u32..4).prop_flat_map(|s| (Just(s), start_ticket(s))),
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        run(cap_shift, start, false, &ops);
    }

    /// The same in a bounded ring: exclusion between ring holders and bypassers after every
    /// step, no death reported that did not happen, no deadlock by death.
    #[test]
    fn bounded_invariants_hold_under_any_interleaving(
        (cap_shift, start) in (1u32..4).prop_flat_map(|s| (Just(s), start_ticket(s))),
        ops in proptest::collection::vec(bounded_op(), 0..120),
    ) {
        run(cap_shift, start, true, &ops);
    }
}

/// A bounded ring with a sleeping exclusive head (ticket of registration 1) behind holder 0.
fn bounded_with_sleeping_head(mem: &MemRing) -> (Ring<'_>, Ticket, Ticket) {
    let ring = mem.ring(no_wake);
    let holder = published(&ring, 0);
    ring.mark_holding(holder);
    let head = published(&ring, 1);
    let _ = ring.park_word(head);
    ring.release_exclusive(holder).unwrap();
    assert_eq!(ring.grant(head), Ok(Grant::Granted));
    (ring, holder, head)
}

#[test]
fn a_running_process_goes_ahead_of_a_sleeping_head_and_the_head_waits_for_it() {
    let mem = MemRing::with_bound(4, 1_000_000);
    let (ring, _, head) = bounded_with_sleeping_head(&mem);
    let b = ring
        .try_bypass(reg(2))
        .expect("a sleeping head may be gone ahead of");
    assert!(ring.try_bypass(reg(3)).is_none(), "one bypasser at a time");
    assert!(matches!(ring.enter(head), Entry::Busy(_)));
    // Once the head has left its sleeping state, nobody goes ahead of it.
    ring.release_bypass(b);
    assert!(ring.try_bypass(reg(2)).is_none(), "the head is entering");
    assert_eq!(ring.enter(head), Entry::Clear);
}

#[test]
fn no_bypass_in_a_strict_ring_or_of_a_running_or_shared_head_whatever_the_age() {
    let strict = MemRing::new(4);
    let (ring, _, _) = bounded_with_sleeping_head(&strict);
    assert!(ring.try_bypass(reg(2)).is_none(), "strict");

    // Issue 21: a sleeping head is gone ahead of whatever its age (it waited far longer than
    // the bound here: its enqueue time is 0).
    let mem = MemRing::with_bound(4, 1_000);
    let (ring, _, _) = bounded_with_sleeping_head(&mem);
    assert!(
        ring.try_bypass(reg(2)).is_some(),
        "a sleeping head, however old"
    );

    let mem = MemRing::with_bound(4, 1_000_000);
    let ring = mem.ring(no_wake);
    let holder = published(&ring, 0);
    ring.mark_holding(holder);
    assert!(ring.try_bypass(reg(2)).is_none(), "a holder is running");
    let waiter = published(&ring, 1);
    ring.release_exclusive(holder).unwrap();
    assert!(
        ring.try_bypass(reg(2)).is_none(),
        "a granted head that never slept"
    );
    assert_eq!(ring.enter(waiter), Entry::Clear);

    let mem = MemRing::with_bound(4, 1_000_000);
    let ring = mem.ring(no_wake);
    let Claim::Claimed(reader) = ring.try_claim(Share::Shared, reg(1)) else {
        panic!()
    };
    ring.publish(reader, reg(1).generation, 0, 0);
    let _ = ring.park_word(reader);
    assert!(ring.try_bypass(reg(2)).is_none(), "a shared head");
}

#[test]
fn a_dead_bypasser_is_cleared_and_reported_only_if_it_entered() {
    struct Dead(u32);
    impl Liveness for Dead {
        fn is_alive(&self, o: Owner) -> bool {
            o.index != self.0
        }
    }
    let mem = MemRing::with_bound(4, 1_000_000);
    let (ring, _, head) = bounded_with_sleeping_head(&mem);
    assert!(ring.try_bypass(reg(2)).is_some());
    assert_eq!(ring.check_bypass(&AllAlive), BypassCheck::Fine);
    assert_eq!(
        ring.check_bypass(&Dead(2)),
        BypassCheck::Reclaimed { was_holding: true }
    );
    assert_eq!(ring.enter(head), Entry::Clear);
    // A bypasser that died before entering (its CAS in, its look at the head not done).
    let mem = MemRing::with_bound(4, 1_000_000);
    let (ring, _, head) = bounded_with_sleeping_head(&mem);
    let owner = ((reg(2).generation & GEN_FP_MASK) << FP_SHIFT) | (2 + 1);
    ring.words.bypass.store(owner, SeqCst);
    assert!(matches!(ring.enter(head), Entry::Busy(_)));
    assert_eq!(
        ring.check_bypass(&Dead(2)),
        BypassCheck::Reclaimed { was_holding: false }
    );
    assert_eq!(ring.enter(head), Entry::Clear);
}

#[test]
fn a_slot_maps_to_one_ticket_per_capacity_window() {
    let mask = 7;
    for head in [0u64, 5, 8, 1 << 40, u64::MAX - 3] {
        for index in 0..8 {
            let t = ticket_of_slot(head, index, mask);
            assert_eq!(t & mask, index);
            assert!(
                t.wrapping_sub(head) <= mask,
                "head {head} index {index} -> {t}"
            );
        }
    }
}

#[test]
fn a_stale_claim_is_withdrawn_or_resolved() {
    // A claimer read slot 1 free for ticket 1, then stalled 2^32 laps: its CAS succeeds on the
    // slot's identical-looking word while the ring is elsewhere.
    let mem = MemRing::new(4);
    let slots = &mem.slots;
    let ring = mem.ring(no_wake);
    let far = (1u64 << 32) * 4 + 1; // same slot, same low lap bits as ticket 1
    ring.reset_at(far - 1);
    let mine = ring.claim_word(1, Share::Exclusive, reg(9));
    slots[1].word.store(mine, SeqCst);
    assert_eq!(
        ring.confirm_claim(1, mine),
        Claim::Claimed(Ticket { t: far, word: mine })
    );
    // Too far ahead to queue: withdrawn (released), and the caller retries.
    ring.reset_at(far - 5);
    slots[1].word.store(mine, SeqCst);
    assert_eq!(ring.confirm_claim(1, mine), Claim::Retry);
    assert_eq!(
        ring.state(far, slots[1].word.load(SeqCst)),
        SlotState::Released
    );
}

#[test]
fn wake_up_is_not_lost_when_parking_races_a_release() {
    // A waiter parks (PARKED), the holder releases: the waiter's word is moved to WOKEN
    // and a wake was issued.
    static WOKEN: AtomicU64 = AtomicU64::new(0);
    fn count(_: &AtomicU32) {
        WOKEN.fetch_add(1, SeqCst);
    }
    let mem = MemRing::new(4);
    let ring = mem.ring(count);
    let Claim::Claimed(a) = ring.try_claim(Share::Exclusive, reg(1)) else {
        panic!()
    };
    let Claim::Claimed(b) = ring.try_claim(Share::Exclusive, reg(2)) else {
        panic!()
    };
    ring.publish(b, 2, 0, 0);
    let (word, parked) = ring.park_word(b);
    assert_eq!(ring.grant(b).unwrap(), Grant::Waiting { ahead: 1 });
    ring.release(a).unwrap();
    assert_ne!(
        word.load(SeqCst),
        parked,
        "the releaser un-parked the waiter"
    );
    assert_eq!(WOKEN.load(SeqCst), 1);
    assert_eq!(ring.grant(b).unwrap(), Grant::Granted);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 256 },
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence }, ..ProptestConfig::default() })]

    /// The fuzz target's byte decoder drives the same model.
    #[test]
    fn the_fuzz_entry_point_runs_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        super::model::run_bytes(&data);
    }
}

/// Every liveness question answered "alive".
struct AllAlive;
impl crate::liveness::Liveness for AllAlive {
    fn is_alive(&self, _: crate::liveness::Owner) -> bool {
        true
    }
}

/// Registration `index` (generation = index) of a test process.
fn reg(index: u32) -> crate::liveness::Registration {
    crate::liveness::Registration {
        index,
        generation: index,
    }
}

/// A claim of registration `pid`, published.
fn published(ring: &Ring<'_>, pid: u32) -> Ticket {
    let tk = claim(ring, pid);
    ring.publish(tk, reg(pid).generation, 0, 0);
    tk
}

fn claim(ring: &Ring<'_>, pid: u32) -> Ticket {
    match ring.try_claim(Share::Exclusive, reg(pid)) {
        Claim::Claimed(tk) => tk,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_exclusive_releaser_stalled_anywhere_for_laps_does_no_harm() {
    // Issue 9: A holds ticket t and starts `release_exclusive`; it stalls after any of its
    // steps (preempted, SIGSTOPped) while the others go three times round the ring, then
    // resumes. Nothing may move `head` back, and the ring must stay usable.
    use super::interleave::{Procs, Status};
    use std::sync::Arc;
    for stall_after in 0.. {
        let mem = Arc::new(MemRing::new(4));
        let ring = mem.ring(no_wake);
        let a = claim(&ring, 1);
        assert_eq!(ring.grant(a), Ok(Grant::Granted));
        ring.mark_holding(a);
        let mut procs = Procs::<Result<(), Broken>>::default();
        let pa = procs.spawn();
        let m = Arc::clone(&mem);
        let mut status = procs.start(pa, move || m.ring(no_wake).release_exclusive(a));
        for _ in 0..stall_after {
            if let Status::Done(_) = status {
                break;
            }
            status = procs.step(pa);
        }
        let stalled = match status {
            Status::Paused => true,
            Status::Done(r) => {
                r.unwrap();
                if stall_after > 0 {
                    return; // every stall point of the release was tried
                }
                false
            }
        };
        // A is stalled. Others take turns for three laps, checking the head on the way as
        // waiters do.
        // (Stalled before its first write, A still holds: B then waits, and A resumes.)
        let mut last_head = ring.words.head.load(SeqCst);
        let mut waiting = None;
        for pid in 2..(2 + 3 * 4) {
            // A lagging slot of A's (head moved, slot not released yet) fills the ring at
            // A's ticket + capacity: the others then wait for A like for a full ring.
            let tk = match ring.try_claim(Share::Exclusive, reg(pid)) {
                Claim::Claimed(tk) => tk,
                Claim::Full => break,
                other => panic!("{other:?}"),
            };
            for _ in 0..8 {
                if ring.grant(tk) == Ok(Grant::Granted) {
                    break;
                }
                ring.check_head(&AllAlive).unwrap();
            }
            if ring.grant(tk) != Ok(Grant::Granted) {
                waiting = Some(tk);
                break;
            }
            ring.mark_holding(tk);
            ring.release_exclusive(tk).unwrap();
            let head = ring.words.head.load(SeqCst);
            assert!(head.wrapping_sub(last_head) <= 4, "head went back");
            last_head = head;
        }
        // A resumes and finishes its release.
        if stalled {
            procs.finish(pa).unwrap();
        }
        if let Some(tk) = waiting {
            assert_eq!(ring.grant(tk), Ok(Grant::Granted));
            ring.release_exclusive(tk).unwrap();
        }
        let head = ring.words.head.load(SeqCst);
        assert!(
            head.wrapping_sub(last_head) <= 4,
            "A's late write moved head from {last_head} back to {head} (stalled after step {stall_after})"
        );
        // And the ring still works, for a whole lap and more.
        for pid in 100..110 {
            let tk = claim(&ring, pid);
            assert_eq!(ring.grant(tk), Ok(Grant::Granted));
            ring.release_exclusive(tk).unwrap();
        }
    }
}

#[test]
fn fuzz_crash_death_reported_that_never_happened() {
    // Found by `ring_ops` (CI smoke run): kept as a regression test.
    super::model::run_bytes(&[
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 1, 0, 1, 24, 7, 1, 3, 38, 1, 1, 0, 0, 0, 7, 1, 2, 1,
        7, 1, 0, 0, 0, 252, 255, 6, 1, 2, 1, 7, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 128,
        0, 0, 0, 7, 0, 1, 3, 0, 0, 0, 7, 0, 1, 0, 1, 7, 1, 3, 1, 1, 0, 0, 0, 7, 1, 2, 0, 7, 0, 2,
        0, 4, 0, 5, 0, 0, 1, 7, 1, 1, 1, 7, 1, 3, 1, 7, 0, 0, 0, 31, 7, 1, 7, 1, 0, 1,
    ]);
}

/// `repair` leaves a consistent ring alone, and rebuilds one with an impossible word around
/// its live waiter (issue 17: it used to judge a ring that moved under its scan).
#[test]
fn repair_is_a_no_op_on_a_consistent_ring_and_rebuilds_a_broken_one() {
    use super::repair::RingRepair;
    struct Live(u32);
    impl crate::liveness::Liveness for Live {
        fn is_alive(&self, o: crate::liveness::Owner) -> bool {
            o.index == self.0
        }
    }
    let mem = MemRing::new(4);
    let ring = mem.ring(no_wake);
    let holder = published(&ring, 0);
    ring.mark_holding(holder);
    let waiter = published(&ring, 1);
    assert_eq!(ring.repair(&Live(1), true), RingRepair::NotNeeded);
    // A dead holder, and garbage two slots on: a live waiter is kept, in its place.
    mem.slots[3].word.store(0xdead_beef, SeqCst);
    match ring.repair(&Live(1), true) {
        RingRepair::Rebuilt { kept, dropped, .. } => assert_eq!((kept, dropped), (1, 2)),
        other => panic!("not rebuilt: {other:?}"),
    }
    assert_eq!(ring.grant(waiter), Ok(Grant::Granted));
    assert_eq!(ring.repair(&Live(1), true), RingRepair::NotNeeded);
    // A live holder is never rebuilt around.
    ring.mark_holding(waiter);
    mem.slots[3].word.store(0xdead_beef, SeqCst);
    assert!(matches!(
        ring.repair(&Live(1), true),
        RingRepair::Refused { .. }
    ));
}

/// A claim of registration `pid` in mode `share`, published and, when granted, holding.
fn queued(ring: &Ring<'_>, pid: u32, share: Share) -> Ticket {
    let tk = match ring.try_claim(share, reg(pid)) {
        Claim::Claimed(tk) => tk,
        other => panic!("{other:?}"),
    };
    ring.publish(tk, reg(pid).generation, 0, 0);
    if ring.grant(tk) == Ok(Grant::Granted) {
        ring.mark_holding(tk);
    }
    tk
}

#[test]
fn the_self_deadlock_look_finds_our_token_in_the_granted_run_only() {
    // This thread's shared token behind another process's, in the run granted at the head:
    // found, though it is not at the head.
    let mem = MemRing::new(8);
    let ring = mem.ring(no_wake);
    queued(&ring, 2, Share::Shared);
    let mine = queued(&ring, 1, Share::Shared);
    assert_eq!(ring.grant(mine), Ok(Grant::Granted));
    queued(&ring, 3, Share::Exclusive); // waits for both readers
    let again = queued(&ring, 1, Share::Exclusive);
    assert!(ring.held_by_this_thread_before(again));
    // Another process's exclusive token at the head: not ours, and nothing behind it holds.
    let mem = MemRing::new(8);
    let ring = mem.ring(no_wake);
    queued(&ring, 2, Share::Exclusive);
    let me = queued(&ring, 1, Share::Exclusive);
    assert!(!ring.held_by_this_thread_before(me));
    // Our process's token held by another thread: that thread releases it, we wait our turn.
    let mem = MemRing::new(8);
    let ring = mem.ring(no_wake);
    std::thread::scope(|s| {
        s.spawn(|| queued(&ring, 1, Share::Exclusive))
            .join()
            .unwrap();
    });
    let me = queued(&ring, 1, Share::Exclusive);
    assert!(!ring.held_by_this_thread_before(me));
}
