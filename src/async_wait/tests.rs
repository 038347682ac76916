//! The waiter thread, std-only: wakers that count, a hand-rolled `block_on`, no sleeps as
//! synchronisation (the only timed waits turn a hang into a failure, or measure a quiet
//! interval).

use super::*;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::mpsc::{Sender, channel};
use std::task::{Context, Poll, Wake};
use std::thread::Thread;

/// Turns a hang into a failure; never a measure of speed.
const HANG: Duration = Duration::from_secs(20);

/// A waker that counts its wakes and reports them on a channel.
struct Flag {
    /// Which registration.
    id: usize,
    /// Wakes so far.
    fired: AtomicU32,
    /// Where wakes are reported.
    tx: Mutex<Sender<usize>>,
}

impl Flag {
    /// A fresh flag for registration `id`, reporting on `tx`.
    fn new(id: usize, tx: &Sender<usize>) -> Arc<Flag> {
        Arc::new(Flag {
            id,
            fired: AtomicU32::new(0),
            tx: Mutex::new(tx.clone()),
        })
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.fetch_add(1, SeqCst);
        let _ = self.tx.lock().unwrap().send(self.id);
    }
}

/// A small deterministic PRNG (xorshift64*), for random orders without a dependency.
struct Rng(u64);
impl Rng {
    /// The next number.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Fisher-Yates.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// `n` words, all 0, in one owner (as slots live in one mapping).
fn words(n: usize) -> Arc<Vec<AtomicU32>> {
    Arc::new((0..n).map(|_| AtomicU32::new(0)).collect())
}

/// Word `i` of `owner`, keeping `owner` alive.
fn word_ref(owner: &Arc<Vec<AtomicU32>>, i: usize) -> WordRef {
    WordRef::new(Arc::clone(owner), move |v: &Vec<AtomicU32>| &v[i])
}

/// Waits (bounded) until only `n` owners of `owner` are left: the threads let go of their
/// working copies when they next wake, which a drop asks for.
fn wait_for_owners<T>(owner: &Arc<T>, n: usize) {
    let start = Instant::now();
    while Arc::strong_count(owner) != n {
        assert!(
            start.elapsed() < HANG,
            "the waiter threads kept the words alive"
        );
        std::thread::yield_now();
    }
}

/// 500 registrations on distinct words; a thread changes them in random order, each with a
/// FUTEX_WAKE: every waker fires exactly once, and only after its word changed.
fn every_waker_fires_once_its_word_changes(reg: &Registry, n: usize) {
    let w = words(n);
    let (tx, rx) = channel();
    let flags: Vec<_> = (0..n).map(|i| Flag::new(i, &tx)).collect();
    let pendings: Vec<Pending> = (0..n)
        .map(|i| {
            reg.register(
                Some(word_ref(&w, i)),
                0,
                None,
                &Waker::from(flags[i].clone()),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(reg.len(), n);
    assert_eq!(reg.threads(), n.div_ceil(PER_THREAD));
    assert!(pendings.iter().all(Pending::is_armed));
    assert!(flags.iter().all(|f| f.fired.load(SeqCst) == 0));
    let mut order: Vec<usize> = (0..n).collect();
    Rng(0x9e37_79b9_7f4a_7c15).shuffle(&mut order);
    let changer = {
        let w = Arc::clone(&w);
        std::thread::spawn(move || {
            for i in order {
                w[i].store(1, SeqCst);
                sys::futex_wake(&w[i], i32::MAX);
            }
        })
    };
    let mut seen = vec![false; n];
    for _ in 0..n {
        let i = rx.recv_timeout(HANG).expect("a waker never fired");
        assert!(!seen[i], "waker {i} fired twice");
        seen[i] = true;
        assert_eq!(
            w[i].load(SeqCst),
            1,
            "waker {i} fired before its word changed"
        );
    }
    changer.join().unwrap();
    assert!(flags.iter().all(|f| f.fired.load(SeqCst) == 1));
    assert!(pendings.iter().all(|p| !p.is_armed()));
    drop(pendings);
    assert_eq!(reg.len(), 0);
    wait_for_owners(&w, 1);
}

#[test]
fn five_hundred_words_each_waker_fires_once_its_word_changes() {
    every_waker_fires_once_its_word_changes(&Registry::new(), 500);
}

#[test]
fn the_fallback_wakes_every_waker_too() {
    every_waker_fires_once_its_word_changes(&Registry::with_waitv(false), 200);
}

#[test]
fn dropping_registrations_at_random_leaves_the_registry_empty() {
    let reg = Registry::new();
    let n = 300;
    let w = words(n);
    let (tx, rx) = channel();
    let mut rng = Rng(42);
    let mut pendings: Vec<Option<Pending>> = (0..n)
        .map(|i| {
            let f = Flag::new(i, &tx);
            Some(
                reg.register(Some(word_ref(&w, i)), 0, None, &Waker::from(f))
                    .unwrap(),
            )
        })
        .collect();
    // Change a random third of the words meanwhile (some fire, some are dropped first).
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    for (k, &i) in order.iter().enumerate() {
        if k % 3 == 0 {
            w[i].store(1, SeqCst);
            sys::futex_wake(&w[i], i32::MAX);
        }
        pendings[i] = None;
        assert_eq!(reg.len(), n - k - 1);
    }
    assert_eq!(reg.len(), 0);
    wait_for_owners(&w, 1);
    // Every wake that came was for a changed word.
    while let Ok(i) = rx.try_recv() {
        assert_eq!(w[i].load(SeqCst), 1);
    }
    // The ids are reused: a new round fits the threads already running.
    let threads = reg.threads();
    let again: Vec<_> = (0..n)
        .map(|i| {
            let f = Flag::new(i, &tx);
            reg.register(Some(word_ref(&w, i)), 1, None, &Waker::from(f))
                .unwrap()
        })
        .collect();
    assert_eq!(reg.threads(), threads);
    drop(again);
    assert_eq!(reg.len(), 0);
}

#[test]
fn a_word_that_already_differs_fires_at_register() {
    let reg = Registry::new();
    let w = words(1);
    w[0].store(3, SeqCst);
    let (tx, rx) = channel();
    let f = Flag::new(0, &tx);
    // No FUTEX_WAKE will ever come: the register call itself must see the change.
    let mut p = reg
        .register(Some(word_ref(&w, 0)), 2, None, &Waker::from(f.clone()))
        .unwrap();
    assert_eq!(f.fired.load(SeqCst), 1, "fired from register itself");
    assert!(!p.is_armed());
    assert_eq!(rx.try_recv(), Ok(0));
    // And the same for a re-arm with a stale value.
    p.update(2, None, &Waker::from(f.clone())).unwrap();
    assert_eq!(f.fired.load(SeqCst), 2);
    assert_eq!(reg.threads(), 0, "nothing armed: no thread started");
}

#[test]
fn update_rearms_with_the_latest_waker() {
    let reg = Registry::new();
    let w = words(1);
    let (tx, rx) = channel();
    let first = Flag::new(1, &tx);
    let second = Flag::new(2, &tx);
    let mut p = reg
        .register(Some(word_ref(&w, 0)), 0, None, &Waker::from(first.clone()))
        .unwrap();
    assert!(p.is_armed());
    // A poll with a new waker (the task moved): only the new one fires.
    p.update(0, None, &Waker::from(second.clone())).unwrap();
    w[0].store(1, SeqCst);
    sys::futex_wake(&w[0], i32::MAX);
    assert_eq!(rx.recv_timeout(HANG), Ok(2));
    assert_eq!(first.fired.load(SeqCst), 0);
    // Fired once, disarmed: another change wakes nobody until re-armed.
    assert!(!p.is_armed());
    p.update(1, None, &Waker::from(second.clone())).unwrap();
    assert!(p.is_armed());
    w[0].store(2, SeqCst);
    sys::futex_wake(&w[0], i32::MAX);
    assert_eq!(rx.recv_timeout(HANG), Ok(2));
    assert_eq!(second.fired.load(SeqCst), 2);
}

#[test]
fn next_look_wakes_without_a_change() {
    let reg = Registry::new();
    let w = words(1);
    let (tx, rx) = channel();
    let f = Flag::new(0, &tx);
    let look = Instant::now() + Duration::from_millis(5);
    let mut p = reg
        .register(
            Some(word_ref(&w, 0)),
            0,
            Some(look),
            &Waker::from(f.clone()),
        )
        .unwrap();
    assert_eq!(rx.recv_timeout(HANG), Ok(0));
    assert!(Instant::now() >= look, "woken before its look was due");
    // A timer without a word works the same.
    let look = Instant::now() + Duration::from_millis(2);
    let t = reg
        .register(None, 0, Some(look), &Waker::from(Flag::new(9, &tx)))
        .unwrap();
    assert_eq!(rx.recv_timeout(HANG), Ok(9));
    assert!(Instant::now() >= look);
    // A look already due fires from the call.
    p.update(0, Some(Instant::now()), &Waker::from(f.clone()))
        .unwrap();
    assert_eq!(rx.try_recv(), Ok(0));
    drop((p, t));
    assert_eq!(reg.len(), 0);
}

#[test]
fn the_waiter_thread_sleeps_while_nothing_changes() {
    let reg = Registry::new();
    let w = words(10);
    let (tx, _rx) = channel();
    let pendings: Vec<_> = (0..10)
        .map(|i| {
            reg.register(
                Some(word_ref(&w, i)),
                0,
                None,
                &Waker::from(Flag::new(i, &tx)),
            )
            .unwrap()
        })
        .collect();
    let shard = Arc::clone(&reg.shards.lock().unwrap()[0]);
    let start = Instant::now();
    let tid = loop {
        let tid = shard.tid.load(Relaxed);
        if tid != 0 && sys::thread_state(tid) == Some(b'S') {
            break tid;
        }
        assert!(start.elapsed() < HANG, "the waiter thread never slept");
        std::thread::yield_now();
    };
    // A quiet interval (a measurement, not a synchronisation): the thread does not loop.
    let before = shard.loops.load(Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        shard.loops.load(Relaxed),
        before,
        "the waiter thread looped while quiet"
    );
    assert_eq!(sys::thread_state(tid), Some(b'S'));
    drop(pendings);
}

#[test]
fn registrations_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pending>();
    send_sync::<WordRef>();
    send_sync::<Registry>();
}

#[test]
fn a_dropped_registry_stops_its_threads() {
    let reg = Registry::new();
    let w = words(1);
    let (tx, _rx) = channel();
    let p = reg
        .register(
            Some(word_ref(&w, 0)),
            0,
            None,
            &Waker::from(Flag::new(0, &tx)),
        )
        .unwrap();
    let shard = Arc::clone(&reg.shards.lock().unwrap()[0]);
    drop(reg);
    // Still registered: the thread stays until the registration goes.
    drop(p);
    // The thread held the last other reference to the shard: it exits and lets go of it.
    wait_for_owners(&shard, 1);
    assert_eq!(shard.lock().thread_pid, 0);
}

// ---------------------------------------------------------------------------------------------
// A future over the registry, as `lock_async` will poll one, under a hand-rolled `block_on`.

/// Wakes a blocked thread.
struct Unpark(Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on this thread.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Resolves to the word's value once it differs from `expected`. The `poll` pattern the
/// request path follows: look; if not ready, register once, then re-arm on every poll with
/// the value just seen and the current waker; the registration goes with the future.
struct Changed<'r> {
    /// Where to register.
    reg: &'r Registry,
    /// The word.
    word: WordRef,
    /// Ready once the word differs from this.
    expected: u32,
    /// The registration while pending.
    pending: Option<Pending>,
}

impl Future for Changed<'_> {
    type Output = u32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let v = self.word.word().load(SeqCst);
        if v != self.expected {
            self.pending = None;
            return Poll::Ready(v);
        }
        let this = &mut *self;
        match &mut this.pending {
            Some(p) => p.update(v, None, cx.waker()).unwrap(),
            None => {
                this.pending = Some(
                    this.reg
                        .register(Some(this.word.clone()), v, None, cx.waker())
                        .unwrap(),
                )
            }
        }
        Poll::Pending
    }
}

#[test]
fn a_future_awaits_its_word_under_block_on() {
    // The process's own registry (no other test uses it).
    let reg = Registry::global();
    let w = words(1);
    let (tx, rx) = channel::<()>();
    let changer = {
        let w = Arc::clone(&w);
        std::thread::spawn(move || {
            rx.recv().unwrap();
            w[0].store(5, SeqCst);
            sys::futex_wake(&w[0], i32::MAX);
        })
    };
    let f = Changed {
        reg,
        word: word_ref(&w, 0),
        expected: 0,
        pending: None,
    };
    // The change comes while the future is pending or before its first poll: either way
    // it completes.
    tx.send(()).unwrap();
    assert_eq!(block_on(f), 5);
    changer.join().unwrap();
    assert_eq!(reg.len(), 0);
}

#[test]
fn a_future_dropped_while_pending_leaves_nothing() {
    let reg = Registry::new();
    let w = words(1);
    let mut f = Box::pin(Changed {
        reg: &reg,
        word: word_ref(&w, 0),
        expected: 0,
        pending: None,
    });
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    assert_eq!(f.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(f.as_mut().poll(&mut cx), Poll::Pending); // re-polled: still one registration
    assert_eq!(reg.len(), 1);
    drop(f);
    assert_eq!(reg.len(), 0);
    wait_for_owners(&w, 1);
}

// ---------------------------------------------------------------------------------------------
// The ring's own wake protocol (PARKED swapped to WOKEN, then FUTEX_WAKE) reaches a
// registration, as it will for a pending `lock_async`.

#[test]
fn a_release_in_the_ring_wakes_the_registered_next_request() {
    use crate::liveness::Registration;
    use crate::ring::model::MemRing;
    use crate::ring::{Claim, Grant, Ring, Ticket};
    use crate::share::Share;

    /// The production wake: a shared FUTEX_WAKE.
    fn wake(w: &AtomicU32) {
        sys::futex_wake(w, i32::MAX);
    }
    /// Claims and publishes an exclusive ticket for process-table entry `index`.
    fn queue(ring: &Ring<'_>, index: u32) -> Ticket {
        let me = Registration {
            index,
            generation: index,
        };
        match ring.try_claim(Share::Exclusive, me) {
            Claim::Claimed(tk) => {
                ring.publish(tk, index, 0, 0);
                tk
            }
            other => panic!("{other:?}"),
        }
    }

    let mem = Arc::new(MemRing::new(4));
    let ring = mem.ring(wake);
    let holder = queue(&ring, 0);
    ring.mark_holding(holder);
    let me = queue(&ring, 1);
    // What a future's poll does: store PARKED, re-check the grant, then register the word
    // with the PARKED value (the ring's lost-wake-up order, then the registry's).
    let (word, parked) = ring.park_word(me);
    assert!(matches!(ring.grant(me).unwrap(), Grant::Waiting { .. }));
    let t = me.t;
    let word_ref = WordRef::new(Arc::clone(&mem), move |m: &MemRing| {
        &m.ring(wake).slot(t).futex
    });
    assert!(std::ptr::eq(word_ref.word(), word));
    let reg = Registry::new();
    let (tx, rx) = channel();
    let f = Flag::new(1, &tx);
    let p = reg
        .register(Some(word_ref), parked, None, &Waker::from(f.clone()))
        .unwrap();
    assert!(p.is_armed());
    // The holder releases from another thread.
    let releaser = {
        let mem = Arc::clone(&mem);
        std::thread::spawn(move || mem.ring(wake).release_exclusive(holder).unwrap())
    };
    assert_eq!(
        rx.recv_timeout(HANG),
        Ok(1),
        "the release never woke the waker"
    );
    releaser.join().unwrap();
    assert_eq!(f.fired.load(SeqCst), 1);
    assert_eq!(ring.grant(me).unwrap(), Grant::Granted);
    drop(p);
    assert_eq!(reg.len(), 0);
    wait_for_owners(&mem, 1);
}
