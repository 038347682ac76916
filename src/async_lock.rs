//! Awaiting a token without blocking a thread: the futures behind
//! [`TokenRequest::lock_async`](crate::TokenRequest::lock_async) and the async short forms.
//!
//! A pending future holds its ticket in the queue — polling again never queues anew — and
//! registers its slot's futex word with the process's waiter thread (`async_wait`), which
//! wakes the task's [`Waker`] when a release changes the word, or when it is time for the
//! periodic look at what blocks it (a dead holder is reclaimed by a waiting future as by a
//! blocked thread, on the same schedule). Dropping a pending future leaves no trace: its
//! registration goes, then its ticket leaves the queue at once (a grant that raced the drop
//! is released the same way), so the next waiter is served without a reclaim.
//!
//! No runtime is needed: any executor that polls futures and honours wakers drives them
//! (tokio, smol, a plain `block_on`). The guard, [`AsyncTokenGuard`], is `Send` and
//! `'static`: it keeps the mapped table alive by itself, and a token taken by a task is not
//! tied to the thread that polled it (a task moves between threads).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::async_wait::{Pending, Registry, WordRef};
use crate::error::{Error, Result};
use crate::handle::LockTicket;
use crate::patience::Patience;
use crate::raw::{ArcToken, Place, RawToken};
use crate::region::Region;
use crate::ring::{BypassCheck, Claim, Entry, Grant, Ticket};
use crate::share::Share;
use crate::sys;

/// How often a waiting future looks at what blocks it when it is next in line (as a blocked
/// waiter does: `wait::CHECK_NEXT`), and when it is farther back (`wait::CHECK_FAR`).
const LOOK_NEXT: Duration = Duration::from_millis(1);
const LOOK_FAR: Duration = Duration::from_millis(2);
/// A full ring: how soon to try for a slot again.
const FULL_RETRY: Duration = Duration::from_millis(1);

/// A token held by an async request (see [`TokenRequest::lock_async`]): `Send`, `'static`,
/// released on [`unlock`](Self::unlock) or drop, from any thread.
///
/// [`TokenRequest::lock_async`]: crate::TokenRequest::lock_async
#[must_use = "the token is released when the guard is dropped"]
pub struct AsyncTokenGuard {
    token: ArcToken,
}

impl std::fmt::Debug for AsyncTokenGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTokenGuard")
            .field("path", &self.token.region().path())
            .field("share", &self.share())
            .field("ticket", &self.token.raw().ticket_number())
            .field("previous_holder_died", &self.previous_holder_died())
            .finish()
    }
}

impl AsyncTokenGuard {
    /// See [`TokenGuard::previous_holder_died`](crate::TokenGuard::previous_holder_died).
    pub fn previous_holder_died(&self) -> bool {
        self.token.raw().died()
    }

    /// Exclusive or shared.
    pub fn share(&self) -> Share {
        self.token.raw().share()
    }

    /// See [`TokenGuard::fencing_token`](crate::TokenGuard::fencing_token).
    pub fn fencing_token(&self) -> u64 {
        self.token.fencing_token()
    }

    /// Releases the token (see [`TokenGuard::unlock`](crate::TokenGuard::unlock)).
    pub fn unlock(self) -> Result<()> {
        self.token.unlock()
    }
}

impl crate::guard::Guard for AsyncTokenGuard {
    fn share(&self) -> Share {
        Self::share(self)
    }
    fn previous_holder_died(&self) -> bool {
        Self::previous_holder_died(self)
    }
    fn fencing_token(&self) -> u64 {
        Self::fencing_token(self)
    }
}

/// Where an async request stands.
enum State {
    /// Not in the queue yet (or a full ring: try again at `retry`).
    Start { retry: Option<(Instant, Pending)> },
    /// In the queue with `tk` in `region`.
    Queued(Queued),
    /// Over: the output was given (or the request failed).
    Done,
}

struct Queued {
    region: Arc<Region>,
    tk: Ticket,
    pid: u32,
    /// When to look at what blocks us next (`None`: not waited yet — a request granted at
    /// once reads no clock).
    next_look: Option<Instant>,
    /// The waiter thread's registration of our slot word (or of the bypass word).
    pending: Option<Pending>,
    /// The registration is of the bypass word (bounded tables: granted, a bypasser inside).
    on_bypass: bool,
    /// A bypasser we waited for died inside.
    bypass_died: bool,
}

/// The state machine both future shapes run; it borrows nothing, so that an owned future can
/// hold an `Arc` of the handle beside it.
struct Core {
    share: Share,
    patience: Patience,
    state: State,
}

impl Core {
    fn new(share: Share, patience: Patience) -> Core {
        Core {
            share,
            patience,
            state: State::Start { retry: None },
        }
    }

    fn deadline_passed(&self, now: Instant) -> bool {
        match self.patience {
            Patience::NoWait => true,
            Patience::Until(d) => now >= d,
            Patience::Forever => false,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.patience {
            Patience::Until(d) => Some(d),
            Patience::NoWait | Patience::Forever => None,
        }
    }

    fn poll(
        &mut self,
        lt: &LockTicket,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<AsyncTokenGuard>>> {
        let out = self.step(lt, cx);
        if out.is_ready() {
            self.state = State::Done;
        }
        out
    }

    fn step(
        &mut self,
        lt: &LockTicket,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<AsyncTokenGuard>>> {
        loop {
            match &mut self.state {
                State::Done => {
                    return Poll::Ready(Err(
                        lt.corrupted("an async token request polled after it ended")
                    ));
                }
                State::Start { retry } => {
                    if let Some((at, _)) = retry
                        && Instant::now() < *at
                    {
                        // Woken early (a spurious wake): keep waiting for the retry time.
                        if let Some((at, p)) = retry {
                            let at = *at;
                            if let Err(e) = p.update(0, Some(at), cx.waker()) {
                                return Poll::Ready(Err(io_error(lt, e)));
                            }
                        }
                        return Poll::Pending;
                    }
                    match lt.enqueue_now(self.share) {
                        Err(e) => return Poll::Ready(Err(e)),
                        Ok(Enqueued::Queued(region, tk, pid)) => {
                            self.state = State::Queued(Queued {
                                region,
                                tk,
                                pid,
                                next_look: None,
                                pending: None,
                                on_bypass: false,
                                bypass_died: false,
                            });
                        }
                        Ok(Enqueued::Full) => {
                            let now = Instant::now();
                            if self.deadline_passed(now) {
                                return Poll::Ready(Ok(None));
                            }
                            let at = match self.deadline() {
                                Some(d) => (now + FULL_RETRY).min(d),
                                None => now + FULL_RETRY,
                            };
                            match Registry::global().register(None, 0, Some(at), cx.waker()) {
                                Ok(p) => {
                                    self.state = State::Start {
                                        retry: Some((at, p)),
                                    }
                                }
                                Err(e) => return Poll::Ready(Err(io_error(lt, e))),
                            }
                            return Poll::Pending;
                        }
                    }
                }
                State::Queued(q) => {
                    let out = poll_queued(lt, q, self.patience, cx);
                    if let Poll::Ready(r) = &out {
                        // On anything but a grant, the ticket leaves the queue (withdrawn,
                        // or a grant that came too late for a request that gave up).
                        if !matches!(r, Ok(Some(_))) {
                            q.pending = None;
                            let _ = q.region.ring().release(q.tk);
                        }
                    }
                    return out;
                }
            }
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let State::Queued(q) = &mut self.state {
            // Cancel-safety: the registration first (the waiter thread lets go of the word),
            // then the ticket — withdrawn if it was waiting, released if a grant raced the
            // drop. Either way the next request is served at once.
            q.pending = None;
            let _ = q.region.ring().release(q.tk);
        }
    }
}

fn io_error(lt: &LockTicket, cause: std::io::Error) -> Error {
    Error::Io {
        path: lt.path().to_path_buf(),
        op: crate::error::IoOp::StartAsyncWaiter,
        cause,
    }
}

/// One poll of a queued request. `Ready(Ok(None))`: the deadline passed (the caller releases
/// the ticket); `Ready(Err)`: a failed check (likewise).
fn poll_queued(
    lt: &LockTicket,
    q: &mut Queued,
    patience: Patience,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<AsyncTokenGuard>>> {
    let broken = |b: crate::ring::Broken| lt.broken(b);
    loop {
        let ring = q.region.ring();
        let granted = match ring.grant(q.tk) {
            Ok(g) => g,
            Err(b) => return Poll::Ready(Err(broken(b))),
        };
        if let Grant::Granted = granted {
            if ring.is_bounded()
                && let Entry::Busy(b) = ring.enter(q.tk)
            {
                // A bypasser is inside: wait for it on the bypass word.
                let now = Instant::now();
                let next = *q.next_look.get_or_insert(now + LOOK_NEXT);
                if now >= next || matches!(patience, Patience::NoWait) {
                    if let BypassCheck::Reclaimed { was_holding } =
                        ring.check_bypass(&q.region.liveness())
                    {
                        q.bypass_died |= was_holding;
                        continue;
                    }
                    q.next_look = Some(now + LOOK_NEXT);
                }
                if deadline_passed(patience, now) {
                    return Poll::Ready(Ok(None));
                }
                let word = ring.bypass_park_word();
                if word.load(std::sync::atomic::Ordering::SeqCst) != b {
                    continue;
                }
                if !q.on_bypass {
                    q.pending = None;
                    q.on_bypass = true;
                }
                let look = wake_at(q.next_look.unwrap_or_else(Instant::now), patience);
                let words = || {
                    WordRef::new(Arc::clone(&q.region), |r: &Region| {
                        r.ring().bypass_park_word()
                    })
                };
                if let Err(e) = arm(&mut q.pending, words, b, look, cx) {
                    return Poll::Ready(Err(io_error(lt, e)));
                }
                return Poll::Pending;
            }
            let died = ring.mark_holding(q.tk) | q.bypass_died;
            if q.next_look.is_some() {
                // It waited: now "held since", for status (granted at once: the enqueue time
                // already says so).
                ring.set_since(q.tk, sys::coarse_now_ns());
            }
            q.pending = None;
            let guard = AsyncTokenGuard {
                token: ArcToken::new(
                    RawToken::new(Place::Queued(q.tk), q.pid, died),
                    Arc::clone(&q.region),
                ),
            };
            // The ticket now belongs to the guard (the caller marks the request done).
            return Poll::Ready(Ok(Some(guard)));
        }
        let Grant::Waiting { ahead } = granted else {
            unreachable!("handled above")
        };
        let now = Instant::now();
        let next = *q.next_look.get_or_insert(now + LOOK_NEXT);
        if deadline_passed(patience, now) {
            // One last look: a dead holder never blocks a caller whose deadline is short.
            match crate::wait::last_look(ring, q.tk, &q.region.liveness()) {
                Ok(Grant::Granted) => continue,
                Ok(Grant::Waiting { .. }) => return Poll::Ready(Ok(None)),
                Err(b) => return Poll::Ready(Err(broken(b))),
            }
        }
        if now >= next {
            // The periodic look, as a blocked waiter's: every dead request ahead of us, then
            // the parent and the table's path.
            if let Err(b) = ring.sweep_dead(q.tk.t, &q.region.liveness()) {
                return Poll::Ready(Err(broken(b)));
            }
            if let Err(e) = lt
                .check_parent(sys::current_identity().0)
                .and_then(|()| q.region.check_at_path())
            {
                return Poll::Ready(Err(e));
            }
            q.next_look = Some(
                now + if ahead == 1 {
                    LOOK_NEXT
                } else if ahead <= 80 {
                    LOOK_FAR
                } else {
                    LOOK_FAR * 32 // wait.rs: WATCHED, CHECK_FAR << MAX_BACKOFF
                },
            );
            continue;
        }
        // Mark ourselves asleep, then look once more: a release between the two either sees
        // PARKED and wakes our word, or we see its grant here.
        let (_, parked) = ring.park_word(q.tk);
        match ring.grant(q.tk) {
            Ok(Grant::Granted) => continue,
            Ok(Grant::Waiting { .. }) => {}
            Err(b) => return Poll::Ready(Err(broken(b))),
        }
        if q.on_bypass {
            q.pending = None;
            q.on_bypass = false;
        }
        let t = q.tk.t;
        let look = wake_at(q.next_look.unwrap_or_else(Instant::now), patience);
        let words = || {
            WordRef::new(Arc::clone(&q.region), move |r: &Region| {
                r.ring().slot_word(t)
            })
        };
        if let Err(e) = arm(&mut q.pending, words, parked, look, cx) {
            return Poll::Ready(Err(io_error(lt, e)));
        }
        return Poll::Pending;
    }
}

fn deadline_passed(patience: Patience, now: Instant) -> bool {
    match patience {
        Patience::NoWait => true,
        Patience::Until(d) => now >= d,
        Patience::Forever => false,
    }
}

/// When the waiter thread should wake us without a change: the next look, or the deadline.
fn wake_at(next_look: Instant, patience: Patience) -> Instant {
    match patience {
        Patience::Until(d) => next_look.min(d),
        Patience::NoWait | Patience::Forever => next_look,
    }
}

/// Registers (the first time) or re-arms (every later poll) the waiter thread's watch.
fn arm(
    pending: &mut Option<Pending>,
    word: impl FnOnce() -> WordRef,
    expected: u32,
    look: Instant,
    cx: &mut Context<'_>,
) -> std::io::Result<()> {
    match pending {
        Some(p) => p.update(expected, Some(look), cx.waker()),
        None => {
            *pending = Some(Registry::global().register(
                Some(word()),
                expected,
                Some(look),
                cx.waker(),
            )?);
            Ok(())
        }
    }
}

/// What an async request's first step got.
pub(crate) enum Enqueued {
    /// A published ticket in `region`, of process `pid`.
    Queued(Arc<Region>, Ticket, u32),
    /// No free slot now.
    Full,
}

/// The future of [`TokenRequest::lock_async`](crate::TokenRequest::lock_async): borrows the
/// handle.
#[must_use = "futures do nothing unless awaited"]
pub struct LockFuture<'a> {
    lt: &'a LockTicket,
    core: Core,
}

impl std::fmt::Debug for LockFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFuture")
            .field("path", &self.lt.path())
            .field("share", &self.core.share)
            .finish_non_exhaustive()
    }
}

impl Future for LockFuture<'_> {
    type Output = Result<Option<AsyncTokenGuard>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.core.poll(this.lt, cx)
    }
}

/// The `'static` future of the owned async forms
/// ([`LockTicket::token_lock_owned_async`]): keeps an `Arc` of the handle, so that it can be
/// given to `tokio::spawn`.
#[must_use = "futures do nothing unless awaited"]
pub struct OwnedLockFuture {
    lt: Arc<LockTicket>,
    core: Core,
}

impl std::fmt::Debug for OwnedLockFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedLockFuture")
            .field("path", &self.lt.path())
            .field("share", &self.core.share)
            .finish_non_exhaustive()
    }
}

impl Future for OwnedLockFuture {
    type Output = Result<Option<AsyncTokenGuard>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.core.poll(&this.lt, cx)
    }
}

impl LockTicket {
    /// The first step of an async request (`crate::async_lock`): enters the queue of the
    /// current table and publishes the request, not tied to this thread; never ahead of the
    /// queue, never waiting. Keyed tables (a lock file's kernel lock is taken by a blocking
    /// call) are refused.
    pub(crate) fn enqueue_now(&self, share: Share) -> Result<Enqueued> {
        let (pid, _) = sys::current_identity();
        self.check_parent(pid)?;
        for attempt in 0..64 {
            // The mapped table as the blocking fast path finds it: no system call (the
            // table's path is checked by the looks of a request that waits, as a blocked
            // waiter's); anything else takes the checked way.
            let region = match self.mapped() {
                Some(r) if attempt == 0 && r.registration(pid).is_some() => r,
                _ => {
                    let r = self.table()?;
                    r.check_at_path()?;
                    r
                }
            };
            if region.anchor().is_some() {
                return Err(Error::InvalidOption(format!(
                    "{}: a table keyed by a lock file takes the file's kernel lock, which \
                     only the blocking calls wait for; use token_lock (in spawn_blocking) here",
                    region.path().display()
                )));
            }
            let me = region.register()?;
            let ring = region.ring();
            match ring.try_claim(share, me) {
                Claim::Claimed(tk) => {
                    ring.publish(tk, me.generation, self.creator.0, sys::coarse_now_ns());
                    ring.untag_thread(tk);
                    if ring.is_bounded() {
                        ring.set_since(tk, sys::now_ns());
                    }
                    if region.retired() {
                        // Retired after we looked: leave it, use the new one.
                        let _ = ring.release(tk);
                        continue;
                    }
                    let Some(arc) = self.region_arc(region) else {
                        let _ = ring.release(tk);
                        return Err(self.corrupted("a table this handle did not map"));
                    };
                    return Ok(Enqueued::Queued(arc, tk, pid));
                }
                Claim::Full => return Ok(Enqueued::Full),
                Claim::Retry => std::hint::spin_loop(),
                Claim::Broken(b) => return Err(self.broken(b)),
            }
        }
        Ok(Enqueued::Full)
    }

    /// The request's future (see [`TokenRequest::lock_async`](crate::TokenRequest::lock_async)).
    pub(crate) fn lock_async_as(&self, share: Share, patience: Patience) -> LockFuture<'_> {
        LockFuture {
            lt: self,
            core: Core::new(share, patience),
        }
    }

    /// Takes the exclusive token without blocking a thread (the async form of
    /// [`token_lock`](Self::token_lock)).
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-lock-async-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     struct Unpark(std::thread::Thread);
    /// #     impl std::task::Wake for Unpark {
    /// #         fn wake(self: std::sync::Arc<Self>) { self.0.unpark() }
    /// #     }
    /// #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop {
    /// #         if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) { return out; }
    /// #         std::thread::park();
    /// #     }
    /// # }
    /// let token = block_on(lt.token_lock_async())?; // or `.await` in async code
    /// assert!(!token.previous_holder_died());
    /// # Ok(()) }
    /// ```
    pub async fn token_lock_async(&self) -> Result<AsyncTokenGuard> {
        match self
            .lock_async_as(Share::Exclusive, Patience::Forever)
            .await?
        {
            Some(g) => Ok(g),
            None => Err(self.corrupted("a request without deadline returned without a grant")),
        }
    }

    /// Takes a shared token without blocking a thread.
    pub async fn token_lock_shared_async(&self) -> Result<AsyncTokenGuard> {
        match self.lock_async_as(Share::Shared, Patience::Forever).await? {
            Some(g) => Ok(g),
            None => Err(self.corrupted("a request without deadline returned without a grant")),
        }
    }

    /// The owned, `'static` form of [`token_lock_async`](Self::token_lock_async), for
    /// `tokio::spawn` and the like: `Ok(None)` never happens with this unbounded wait.
    pub fn token_lock_owned_async(self: &Arc<Self>) -> OwnedLockFuture {
        OwnedLockFuture {
            lt: Arc::clone(self),
            core: Core::new(Share::Exclusive, Patience::Forever),
        }
    }

    /// The owned, `'static` form of an async request in `share` mode within `patience`.
    pub fn lock_owned_async(self: &Arc<Self>, share: Share, patience: Patience) -> OwnedLockFuture {
        OwnedLockFuture {
            lt: Arc::clone(self),
            core: Core::new(share, patience),
        }
    }
}
