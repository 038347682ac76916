//! Property tests of the ring on an in-memory table (see `model`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use proptest::prelude::*;

use super::model::{MemRing, Op, PROCS, no_wake, run};
use super::*;

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PROCS;
    prop_oneof![
        4 => (p.clone(), any::<bool>()).prop_map(|(p, s)| Op::Enqueue(p, s)),
        1 => (p.clone(), any::<bool>()).prop_map(|(p, s)| Op::EnqueueAndDie(p, s)),
        3 => p.clone().prop_map(Op::Publish),
        5 => p.clone().prop_map(Op::Poll),
        4 => p.clone().prop_map(Op::Release),
        1 => p.clone().prop_map(Op::ReleaseAndDie),
        1 => p.clone().prop_map(Op::Kill),
        1 => p.clone().prop_map(Op::Reuse),
        2 => p.prop_map(Op::CheckHead),
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
        run(cap_shift, start, &ops);
    }
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
    let mine = ring.claim_word(1, Share::Exclusive, 9, 9);
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
    // A waiter parks (PARKED), the holder releases: the waiter's word is back to WAITING
    // and a wake was issued.
    static WOKEN: AtomicU64 = AtomicU64::new(0);
    fn count(_: &AtomicU32) {
        WOKEN.fetch_add(1, SeqCst);
    }
    let mem = MemRing::new(4);
    let ring = mem.ring(count);
    let Claim::Claimed(a) = ring.try_claim(Share::Exclusive, 1, 1) else {
        panic!()
    };
    let Claim::Claimed(b) = ring.try_claim(Share::Exclusive, 2, 2) else {
        panic!()
    };
    ring.publish(b, 2, 0, 0);
    let (word, parked) = ring.park_word(b);
    assert_eq!(
        ring.grant(b, Share::Exclusive).unwrap(),
        Grant::Waiting { ahead: 1 }
    );
    ring.release(a).unwrap();
    assert_ne!(
        word.load(SeqCst),
        parked,
        "the releaser un-parked the waiter"
    );
    assert_eq!(WOKEN.load(SeqCst), 1);
    assert_eq!(ring.grant(b, Share::Exclusive).unwrap(), Grant::Granted);
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

#[test]
fn a_late_head_store_moves_head_back_over_released_tickets_only() {
    // A holds t and releases its slot, then stalls before storing `head`. A waiter's head
    // check moves `head` on and B holds t + 1, releases; C waits at t + 2. A's late store of
    // `head = t + 1` moves `head` back over B's released ticket: nobody is granted by it, and
    // the next head check moves it on to C.
    let mem = MemRing::new(4);
    let ring = mem.ring(no_wake);
    let claim = |pid| match ring.try_claim(Share::Exclusive, pid, pid.into()) {
        Claim::Claimed(tk) => tk,
        other => panic!("{other:?}"),
    };
    let (a, b, c) = (claim(1), claim(2), claim(3));
    assert_eq!(ring.grant(a, Share::Exclusive), Ok(Grant::Granted));
    ring.release_slot(a).unwrap(); // ... and A stalls here
    struct AllAlive;
    impl crate::liveness::Liveness for AllAlive {
        fn is_alive(&self, _: crate::liveness::Owner) -> bool {
            true
        }
    }
    assert_eq!(ring.check_head(&AllAlive), Ok(HeadCheck::Advanced));
    assert_eq!(ring.grant(b, Share::Exclusive), Ok(Grant::Granted));
    ring.release_exclusive(b).unwrap();
    assert_eq!(ring.grant(c, Share::Exclusive), Ok(Grant::Granted));
    ring.words.head.store(a.t + 1, SeqCst); // A's late store
    assert_eq!(
        ring.grant(c, Share::Exclusive),
        Ok(Grant::Waiting { ahead: 1 })
    );
    assert_eq!(ring.check_head(&AllAlive), Ok(HeadCheck::Advanced));
    assert_eq!(ring.grant(c, Share::Exclusive), Ok(Grant::Granted));
}
