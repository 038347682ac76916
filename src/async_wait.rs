//! Waiting without a thread: the waiter thread behind the async futures (issue 19).
//!
//! A pending future cannot sleep on its slot's futex word: it has no thread. It registers the
//! word instead ([`Registry::register`]) with the value it expects there and its task's
//! [`Waker`], and returns `Poll::Pending`. Per process, lazily started waiter threads sleep in
//! one `futex_waitv` call each on the words of all armed registrations plus a *control word*
//! of their own, bumped and woken whenever the set changes. When a word differs from its
//! expected value (a grant stores `WOKEN` there and calls `FUTEX_WAKE`, as for a blocked
//! thread), the thread wakes that registration's waker and *disarms* it: it fires once, until
//! the future's next `poll` re-arms it with [`Pending::update`] (the current value and the
//! latest waker). A registration may also carry a `next_look` instant: the thread wakes the
//! waker when it passes, so that the future's `poll` runs the liveness look the blocking
//! waiter runs every 1–2 ms.
//!
//! **At most [`PER_THREAD`] registrations per thread**: `futex_waitv` takes at most 128 words
//! (`FUTEX_WAITV_MAX`) and one is the control word. A registration goes to the first thread
//! with room; when all are full a new thread is started. So 1,000 pending futures cost 8
//! sleeping threads. Threads are never stopped in the global registry (a registry of a test
//! stops its threads when it is dropped and empty).
//!
//! **No lost wake-up** (the re-check order): [`Registry::register`] and [`Pending::update`]
//! store the expected value under the thread's lock, *then* read the word; if it already
//! differs, they wake the waker at once themselves (the registration is not armed). If it
//! still holds, any later change is seen by the thread: its scan runs under the same lock after
//! the arm (the arm bumps the control word, so a thread asleep on the old set returns from
//! `futex_waitv` with `EAGAIN` or a wake), and a change after the scan makes the kernel's
//! compare in `futex_waitv` fail or finds the thread queued on the word when the changer calls
//! `FUTEX_WAKE`. The writer's obligation is the usual one: change the word, then wake it.
//!
//! **Cancel-safety**: dropping a [`Pending`] removes its entry at once; the thread's working
//! copy of the word (which keeps the memory mapped, see [`WordRef`]) is let go when the thread
//! next wakes, which the drop asks for. Nothing is left in the registry.
//!
//! **Fallback** where `futex_waitv` is missing (Linux < 5.16, a seccomp filter, non-Linux):
//! the thread sleeps on its control word alone in naps of at most [`FALLBACK_NAP`] while any
//! registration is armed, and scans every word when it wakes: a change is seen up to 1 ms late
//! and each thread wakes up to 1,000 times a second while futures are pending (asleep with
//! none).
//!
//! A forked child's registry: registrations copied by `fork` belong to futures copied with
//! them, so the child's first arm starts the child's own threads. A child forked while another
//! thread held a registry lock deadlocks on it, as with any mutex.
// Crate-private until the request path polls through it (issue 19): only the tests use it yet.
#![cfg_attr(not(test), allow(dead_code))]

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::sys::{self, FUTEX_WAITV_MAX};

/// Registrations one waiter thread watches: `FUTEX_WAITV_MAX` less its control word.
pub(crate) const PER_THREAD: usize = FUTEX_WAITV_MAX - 1;

/// The longest nap of a waiter thread where `futex_waitv` is missing (while registrations
/// are armed): bounds how late a change is seen there.
pub(crate) const FALLBACK_NAP: Duration = Duration::from_millis(1);

/// How long a waiter thread sleeps at most when nothing asks for a deadline (it sleeps again
/// right after: this only bounds the timespec).
const IDLE_NAP: Duration = Duration::from_secs(3600);

/// Something that owns a futex word: the memory behind it stays valid while this lives.
trait WordSource: Send + Sync {
    /// The word.
    fn word(&self) -> &AtomicU32;
}

/// A word reached from an owner through a projection (e.g. a mapped region and a slot index).
struct Projected<O, F> {
    /// Keeps the memory alive.
    owner: Arc<O>,
    /// Finds the word in it.
    project: F,
}

impl<O, F> WordSource for Projected<O, F>
where
    O: Send + Sync,
    F: Fn(&O) -> &AtomicU32 + Send + Sync,
{
    fn word(&self) -> &AtomicU32 {
        (self.project)(&self.owner)
    }
}

/// A futex word together with what keeps its memory alive: a registration holds one, so a
/// mapped region cannot be unmapped while the waiter thread may sleep on it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct WordRef(Arc<dyn WordSource>);

impl WordRef {
    /// The word `project(&owner)`; `owner` stays alive as long as this (or a clone) does.
    pub(crate) fn new<O, F>(owner: Arc<O>, project: F) -> Self
    where
        O: Send + Sync + 'static,
        F: Fn(&O) -> &AtomicU32 + Send + Sync + 'static,
    {
        WordRef(Arc::new(Projected { owner, project }))
    }

    /// The word.
    pub(crate) fn word(&self) -> &AtomicU32 {
        self.0.word()
    }
}

impl fmt::Debug for WordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WordRef").field(&self.word()).finish()
    }
}

/// One registration.
struct Entry {
    /// The word to watch; `None`: a timer only (`next_look`).
    word: Option<WordRef>,
    /// The value the future saw there.
    expected: u32,
    /// Wake the waker at this instant even if nothing changed.
    next_look: Option<Instant>,
    /// The latest waker.
    waker: Waker,
    /// Watched by the thread; cleared when the waker is woken (fires once per arm).
    armed: bool,
}

/// What a waiter thread watches, under its lock.
#[derive(Default)]
struct ShardState {
    /// Registrations by id; `None`: a free id.
    entries: Vec<Option<Entry>>,
    /// Free ids.
    free: Vec<usize>,
    /// Registrations present (armed or not); at most [`PER_THREAD`].
    len: usize,
    /// The PID of the process whose thread serves this shard (0: none running). A forked
    /// child sees its parent's PID here and starts its own.
    thread_pid: u32,
    /// The registry is gone: the thread exits once no registration is left.
    closed: bool,
}

/// One waiter thread and what it watches.
struct Shard {
    /// The registrations.
    state: Mutex<ShardState>,
    /// Bumped and woken whenever the watched set changes; the thread sleeps on it too.
    control: AtomicU32,
    /// Use `futex_waitv` (else the napping fallback).
    waitv: bool,
    /// Times the thread went round its loop (for tests: a quiet thread does not loop).
    loops: AtomicU64,
    /// The thread's kernel id (for tests: its state in /proc).
    tid: AtomicU32,
}

impl Shard {
    /// Locks the state (a poisoned lock is taken over: no code panics while holding it).
    fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the thread that the watched set changed.
    fn poke(&self) {
        self.control.fetch_add(1, SeqCst);
        sys::futex_wake(&self.control, 1);
    }

    /// Arms registration `id` with `expected`, `next_look` and `waker`, re-checking the word
    /// after the store (see the module docs). Wakes the waker at once when the word already
    /// differs or `next_look` has passed.
    fn arm(
        self: &Arc<Self>,
        id: usize,
        expected: u32,
        next_look: Option<Instant>,
        waker: &Waker,
    ) -> io::Result<()> {
        let mut st = self.lock();
        let e = st.entries[id]
            .as_mut()
            .expect("a Pending's entry exists while it lives");
        let unchanged = e.armed && e.expected == expected && e.next_look == next_look;
        if !e.waker.will_wake(waker) {
            e.waker.clone_from(waker);
        }
        e.expected = expected;
        e.next_look = next_look;
        e.armed = true;
        let differs = e
            .word
            .as_ref()
            .is_some_and(|w| w.word().load(SeqCst) != expected);
        if differs || next_look.is_some_and(|t| t <= Instant::now()) {
            e.armed = false;
            let w = e.waker.clone();
            drop(st);
            w.wake();
            return Ok(());
        }
        let me = sys::current_identity().0;
        if st.thread_pid != me {
            // The first arm here, or the first in a forked child.
            let shard = Arc::clone(self);
            if let Err(e) = std::thread::Builder::new()
                .name("lockticket-waiter".into())
                .spawn(move || run(shard))
            {
                if let Some(e) = st.entries[id].as_mut() {
                    e.armed = false;
                }
                return Err(e);
            }
            st.thread_pid = me;
        } else if unchanged {
            // The thread watches exactly this already; it reads the new waker under the lock.
            return Ok(());
        }
        drop(st);
        self.poke();
        Ok(())
    }
}

/// The waiter threads of one process and their registrations. See the module docs.
pub(crate) struct Registry {
    /// One per waiter thread, each with at most [`PER_THREAD`] registrations.
    shards: Mutex<Vec<Arc<Shard>>>,
    /// Threads use `futex_waitv` (else the napping fallback).
    waitv: bool,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("registrations", &self.len())
            .field("waitv", &self.waitv)
            .finish()
    }
}

impl Registry {
    /// An empty registry; its threads start with the first armed registration.
    pub(crate) fn new() -> Self {
        Self::with_waitv(sys::futex_waitv_supported())
    }

    /// An empty registry whose threads use `futex_waitv` or, if `waitv` is false, the
    /// fallback.
    fn with_waitv(waitv: bool) -> Self {
        Registry {
            shards: Mutex::new(Vec::new()),
            waitv,
        }
    }

    /// The registry of this process.
    pub(crate) fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::new)
    }

    /// Registers `word` (`None`: a timer only) with the value the caller saw there and
    /// `waker`: the waker is woken once when the word differs from `expected` or `next_look`
    /// passes — at once, from this call, if that is already so. Re-arm with
    /// [`Pending::update`] after every wake; drop the [`Pending`] to deregister. Fails only
    /// when a waiter thread cannot be started.
    pub(crate) fn register(
        &self,
        word: Option<WordRef>,
        expected: u32,
        next_look: Option<Instant>,
        waker: &Waker,
    ) -> io::Result<Pending> {
        let entry = Entry {
            word,
            expected,
            next_look,
            waker: waker.clone(),
            armed: false,
        };
        let (shard, id) = {
            let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
            // Only `register` adds, under the `shards` lock we hold: a shard with room keeps it
            // until we insert.
            let room = shards
                .iter()
                .find(|shard| shard.lock().len < PER_THREAD)
                .cloned();
            let shard = room.unwrap_or_else(|| {
                let shard = Arc::new(Shard {
                    state: Mutex::new(ShardState::default()),
                    control: AtomicU32::new(0),
                    waitv: self.waitv,
                    loops: AtomicU64::new(0),
                    tid: AtomicU32::new(0),
                });
                shards.push(Arc::clone(&shard));
                shard
            });
            let id = shard.lock().insert(entry);
            (shard, id)
        };
        let pending = Pending { shard, id };
        pending.shard.arm(id, expected, next_look, waker)?;
        Ok(pending)
    }

    /// Registrations present (armed or not).
    pub(crate) fn len(&self) -> usize {
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        shards.iter().map(|s| s.lock().len).sum()
    }

    /// Waiter threads running (or started) in this process.
    pub(crate) fn threads(&self) -> usize {
        let me = sys::current_identity().0;
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        shards.iter().filter(|s| s.lock().thread_pid == me).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let shards = self
            .shards
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for shard in shards.iter() {
            shard.lock().closed = true;
            shard.poke();
        }
    }
}

impl ShardState {
    /// Stores `e` under a free id.
    fn insert(&mut self, e: Entry) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(id) => {
                self.entries[id] = Some(e);
                id
            }
            None => {
                self.entries.push(Some(e));
                self.entries.len() - 1
            }
        }
    }
}

/// A registration: its waker is woken once when its word changes or its `next_look` passes,
/// until re-armed. Dropping it deregisters (nothing is left behind).
pub(crate) struct Pending {
    /// The thread that watches it.
    shard: Arc<Shard>,
    /// Its id there.
    id: usize,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("armed", &self.is_armed())
            .finish()
    }
}

impl Pending {
    /// Re-arms with the value the caller sees in the word now and its latest waker, as a
    /// future's `poll` does each time it returns `Pending`. Wakes the waker at once when the
    /// word already differs or `next_look` has passed. Cheap when nothing but the waker
    /// changed (no system call).
    pub(crate) fn update(
        &mut self,
        expected: u32,
        next_look: Option<Instant>,
        waker: &Waker,
    ) -> io::Result<()> {
        self.shard.arm(self.id, expected, next_look, waker)
    }

    /// True while the thread watches it (not yet fired since the last arm).
    pub(crate) fn is_armed(&self) -> bool {
        self.shard.lock().entries[self.id]
            .as_ref()
            .is_some_and(|e| e.armed)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut st = self.shard.lock();
        let e = st.entries[self.id].take();
        st.free.push(self.id);
        st.len -= 1;
        let tell = st.closed || e.as_ref().is_some_and(|e| e.armed);
        drop(st);
        drop(e); // outside the lock: it may be the last owner of a mapping
        if tell {
            // The thread lets go of its copy of the word (and a closed one may exit).
            self.shard.poke();
        }
    }
}

/// A waiter thread: scan, wake the wakers whose word changed or whose look is due, sleep on
/// the rest and the control word until one changes or the earliest look.
fn run(shard: Arc<Shard>) {
    shard.tid.store(sys::gettid(), Relaxed);
    let mut watched: Vec<(WordRef, u32)> = Vec::with_capacity(PER_THREAD);
    let mut fire: Vec<Waker> = Vec::new();
    loop {
        shard.loops.fetch_add(1, Relaxed);
        let mut deadline: Option<Instant> = None;
        let control = {
            let mut st = shard.lock();
            if st.closed && st.len == 0 {
                st.thread_pid = 0;
                return;
            }
            // Read before the scan: a change after it bumps the word, so the sleep below
            // returns at once.
            let control = shard.control.load(SeqCst);
            let now = Instant::now();
            for e in st.entries.iter_mut().flatten().filter(|e| e.armed) {
                let changed = e
                    .word
                    .as_ref()
                    .is_some_and(|w| w.word().load(SeqCst) != e.expected);
                if changed || e.next_look.is_some_and(|t| t <= now) {
                    e.armed = false;
                    fire.push(e.waker.clone());
                    continue;
                }
                if let Some(t) = e.next_look {
                    deadline = Some(deadline.map_or(t, |d| d.min(t)));
                }
                if let Some(w) = &e.word {
                    watched.push((w.clone(), e.expected));
                }
            }
            control
        };
        for w in fire.drain(..) {
            // A panicking waker must not take the thread (and every registration it serves)
            // down with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut slept = false;
        if shard.waitv {
            let mut words: Vec<(&AtomicU32, u32)> = Vec::with_capacity(watched.len() + 1);
            words.push((&shard.control, control));
            words.extend(watched.iter().map(|(w, v)| (w.word(), *v)));
            // Any outcome means "scan again"; an error (none expected once the probe
            // succeeded) falls through to the nap below.
            slept = sys::futex_waitv(&words, timeout).is_ok();
        }
        if !slept {
            let cap = if watched.is_empty() {
                IDLE_NAP
            } else {
                FALLBACK_NAP
            };
            sys::futex_wait(&shard.control, control, timeout.unwrap_or(cap).min(cap));
        }
        watched.clear(); // lets go of the words' owners
    }
}

#[cfg(test)]
mod tests;
