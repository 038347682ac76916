//! The async forms over etcd: [`EtcdRequest::lock_async`], [`EtcdLockTicket::token_lock_async`]
//! and the others, futures that any executor can drive (no runtime dependency).
//!
//! The client speaks HTTP over blocking sockets, so an async request runs the blocking request
//! on a thread of its own, started on the future's first poll (a request that is never polled
//! costs nothing): the executor's threads never wait on the network. The thread wakes the
//! task's [`Waker`] when the request ends (granted, timed out or failed), and hands the guard
//! over when the future is polled.
//!
//! **Cancel-safe**: dropping the future sets a stop flag and shuts down the socket of the watch
//! the thread is blocked on (if any), so the thread ends its wait at once; the request's keys
//! are named by the client, and the thread deletes them itself — also when the grant raced the
//! drop (the thread then releases the token it took), and also when the drop came while the
//! key was being written (the thread looks at the flag after every call). The drop itself makes
//! no network call and never blocks the executor. A call in flight when the future is dropped
//! (normally a millisecond; at most [`EtcdBuilder::call_timeout`] while etcd is unreachable)
//! is finished first; the keys are gone right after it.
//!
//! [`EtcdBuilder::call_timeout`]: super::EtcdBuilder::call_timeout

use std::future::Future;
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use super::http::Stream;
use super::{EtcdGuard, EtcdLockTicket, EtcdRequest};
use crate::error::{Error, Result};
use crate::patience::Patience;
use crate::share::Share;

/// The stack of a request's thread: it parses small JSON answers and reads 16 KiB at a time.
const THREAD_STACK: usize = 256 * 1024;

/// How a dropped future stops its request's thread: a flag looked at between calls, and the
/// socket of the watch the thread may be blocked on.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    stopped: AtomicBool,
    /// A second handle on the socket of the watch being waited on.
    watch: Mutex<Option<TcpStream>>,
}

/// While it lives, a stop shuts down the watch's socket (see [`Stop::watching`]).
pub(crate) struct Watching<'a>(Option<&'a Stop>);

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        if let Some(stop) = self.0 {
            *lock(&stop.watch) = None;
        }
    }
}

impl Stop {
    /// True once the future was dropped.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Makes the watch `w` interruptible by `stop` for as long as the result lives; `None`
    /// if stopped already (do not wait then). Without a stop (a blocking request), nothing
    /// to do.
    pub(crate) fn watching<'a>(stop: Option<&'a Stop>, w: &Stream) -> Option<Watching<'a>> {
        let Some(stop) = stop else {
            return Some(Watching(None));
        };
        let mut slot = lock(&stop.watch);
        // Looked at under the lock that `stop` takes after setting the flag: either it finds
        // our socket there, or we see the flag.
        if stop.stopped() {
            return None;
        }
        // Without a second handle (no descriptor left) the wait still ends at its next
        // recheck; the keys go then.
        *slot = w.interrupter().ok();
        Some(Watching(Some(stop)))
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&self.watch).take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A poisoned lock here only means a panic elsewhere; the data is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a future and its request's thread share.
#[derive(Debug, Default)]
struct Shared {
    stop: Stop,
    slot: Mutex<Slot>,
    /// Signalled when the output was taken or the future dropped.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    waker: Option<Waker>,
    out: Option<Result<Option<EtcdGuard>>>,
}

/// The thread of one async request: runs it, hands the output over, and cleans up after a
/// future that went away.
fn run(lt: EtcdLockTicket, share: Share, patience: Patience, shared: Arc<Shared>) {
    // A panic in the request (a bug) becomes an error, not a future that never ends.
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lt.acquire_with(share, patience, Some(&shared.stop))
    }))
    .unwrap_or_else(|_| {
        Err(Error::EtcdProtocol {
            name: lt.name().to_string(),
            endpoint: lt.inner.client.endpoints_text(),
            op: "async lock",
            detail: "the request's thread panicked (a bug: please report it)".to_string(),
        })
    });
    let mut slot = lock(&shared.slot);
    if shared.stop.stopped() {
        drop(slot);
        drop(out); // a grant that raced the drop: released here, off the executor
        return;
    }
    slot.out = Some(out);
    let waker = slot.waker.take();
    drop(slot);
    if let Some(w) = waker {
        w.wake();
    }
    // Keep the output until the future takes it, or release it if the future goes first.
    let mut slot = lock(&shared.slot);
    while slot.out.is_some() && !shared.stop.stopped() {
        slot = shared
            .changed
            .wait(slot)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    let left = slot.out.take();
    drop(slot);
    drop(left);
}

/// The future of an async token request on etcd ([`EtcdRequest::lock_async`],
/// [`EtcdLockTicket::lock_owned_async`], …): `Send` and `'static` (it keeps a clone of the
/// handle), so it can be given to `tokio::spawn`. Its output is the guard, or `None` if the
/// request's deadline passed (or `no_wait` found the lock taken) — no key is left then.
///
/// Dropping it at any point leaves no trace: a waiting request's keys are deleted, and a
/// token granted but not yet seen is released (see the module's notes in `docs/etcd.md`).
///
/// ```no_run
/// use std::time::Duration;
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
/// # fn main() -> lockticket::Result<()> {
/// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
/// let future = lt.request().timeout(Duration::from_secs(1)).lock_async();
/// match block_on(future)? {  // `.await` in async code
///     Some(token) => drop(token),
///     None => eprintln!("busy for a second: giving up (no key is left behind)"),
/// }
/// # Ok(()) }
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct EtcdLockFuture {
    lt: EtcdLockTicket,
    share: Share,
    patience: Patience,
    state: State,
}

enum State {
    /// Not polled yet: nothing sent.
    Start,
    /// The request's thread runs.
    Running(Arc<Shared>),
    /// The output was given.
    Done,
}

impl std::fmt::Debug for EtcdLockFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLockFuture")
            .field("name", &self.lt.name())
            .field("share", &self.share)
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

impl EtcdLockFuture {
    fn new(lt: &EtcdLockTicket, share: Share, patience: Patience) -> EtcdLockFuture {
        EtcdLockFuture {
            lt: lt.clone(),
            share,
            patience,
            state: State::Start,
        }
    }

    fn start(&mut self, waker: &Waker) -> Result<Arc<Shared>> {
        let shared = Arc::new(Shared::default());
        lock(&shared.slot).waker = Some(waker.clone());
        let (lt, share, patience, s) = (self.lt.clone(), self.share, self.patience, shared.clone());
        std::thread::Builder::new()
            .name("lockticket-etcd-async".into())
            .stack_size(THREAD_STACK)
            .spawn(move || run(lt, share, patience, s))
            .map_err(|e| Error::EtcdUnavailable {
                name: self.lt.name().to_string(),
                op: "start the thread of an async request",
                endpoints: self.lt.inner.client.endpoints_text(),
                detail: e.to_string(),
            })?;
        Ok(shared)
    }
}

impl Future for EtcdLockFuture {
    type Output = Result<Option<EtcdGuard>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &this.state {
            State::Start => match this.start(cx.waker()) {
                Ok(shared) => {
                    this.state = State::Running(shared);
                    Poll::Pending
                }
                Err(e) => {
                    this.state = State::Done;
                    Poll::Ready(Err(e))
                }
            },
            State::Running(shared) => {
                let mut slot = lock(&shared.slot);
                if let Some(out) = slot.out.take() {
                    drop(slot);
                    shared.changed.notify_all();
                    this.state = State::Done;
                    return Poll::Ready(out);
                }
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Done => Poll::Ready(Err(Error::InvalidOption(format!(
                "etcd lock {}: an async token request was polled after it ended",
                this.lt.name()
            )))),
        }
    }
}

impl Drop for EtcdLockFuture {
    fn drop(&mut self) {
        if let State::Running(shared) = &self.state {
            // The flag first, then the watch's socket; the thread deletes the keys (or
            // releases a grant nobody saw). Under the slot's lock, so that a thread about
            // to wait for the output to be taken sees the flag or gets the signal.
            shared.stop.stop();
            let _slot = lock(&shared.slot);
            shared.changed.notify_all();
        }
    }
}

/// A grant without deadline that ended without a guard (never happens).
fn not_granted(lt: &EtcdLockTicket) -> Error {
    Error::EtcdProtocol {
        name: lt.name().to_string(),
        endpoint: lt.inner.client.endpoints_text(),
        op: "async lock",
        detail: "a request without a deadline ended without a grant".to_string(),
    }
}

impl EtcdRequest<'_> {
    /// Sends the request without blocking a thread of the caller: a `'static` future, for
    /// async code on any executor (see [`EtcdLockFuture`]). Its output is that of
    /// [`lock`](EtcdRequest::lock); dropping it while it waits leaves no key behind.
    ///
    /// ```no_run
    /// use std::time::Duration;
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
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let reader = block_on(lt.request().shared().timeout(Duration::from_secs(2)).lock_async())?;
    /// # Ok(()) }
    /// ```
    pub fn lock_async(self) -> EtcdLockFuture {
        EtcdLockFuture::new(self.lt, self.share, self.patience)
    }
}

impl EtcdLockTicket {
    /// Takes the exclusive token without blocking a thread of the caller (the async form of
    /// [`token_lock`](EtcdLockTicket::token_lock)); the future is `Send` and `'static`.
    ///
    /// ```no_run
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
    /// # fn main() -> lockticket::Result<()> {
    /// use lockticket::Guard;
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let token = block_on(lt.token_lock_async())?; // or `.await` in async code
    /// println!("fencing token {}", token.fencing_token());
    /// # Ok(()) }
    /// ```
    pub fn token_lock_async(
        &self,
    ) -> impl Future<Output = Result<EtcdGuard>> + Send + 'static + use<> {
        self.granted_async(Share::Exclusive)
    }

    /// Takes a shared token without blocking a thread of the caller.
    ///
    /// ```no_run
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
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let reader = block_on(lt.token_lock_shared_async())?;
    /// # Ok(()) }
    /// ```
    pub fn token_lock_shared_async(
        &self,
    ) -> impl Future<Output = Result<EtcdGuard>> + Send + 'static + use<> {
        self.granted_async(Share::Shared)
    }

    fn granted_async(&self, share: Share) -> impl Future<Output = Result<EtcdGuard>> + use<> {
        let lt = self.clone();
        let future = EtcdLockFuture::new(self, share, Patience::Forever);
        async move { future.await?.ok_or_else(|| not_granted(&lt)) }
    }

    /// The owned form of [`token_lock_async`](EtcdLockTicket::token_lock_async), named as the
    /// local table's ([`LockTicket::token_lock_owned_async`](crate::LockTicket::token_lock_owned_async)):
    /// every etcd future is `'static` already (it keeps a clone of the handle). `Ok(None)`
    /// never comes out of this unbounded wait.
    ///
    /// ```no_run
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
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = std::sync::Arc::new(lockticket::etcd::EtcdLockTicket::from_env("jobs")?);
    /// let future = lt.token_lock_owned_async(); // e.g. for tokio::spawn
    /// let token = std::thread::spawn(move || block_on(future)).join().unwrap()?;
    /// # Ok(()) }
    /// ```
    pub fn token_lock_owned_async(&self) -> EtcdLockFuture {
        EtcdLockFuture::new(self, Share::Exclusive, Patience::Forever)
    }

    /// The owned form of an async request in `share` mode within `patience` (as
    /// [`LockTicket::lock_owned_async`](crate::LockTicket::lock_owned_async)).
    ///
    /// ```no_run
    /// use std::time::Instant;
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
    /// # fn main() -> lockticket::Result<()> {
    /// use lockticket::{Patience, Share};
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// let soon = Instant::now() + std::time::Duration::from_secs(1);
    /// let reader = block_on(lt.lock_owned_async(Share::Shared, Patience::Until(soon)))?;
    /// # Ok(()) }
    /// ```
    pub fn lock_owned_async(&self, share: Share, patience: Patience) -> EtcdLockFuture {
        EtcdLockFuture::new(self, share, patience)
    }
}

/// An async release: its outcome once known, and the task to wake then.
type Release = (Option<Result<()>>, Option<Waker>);

impl EtcdGuard {
    /// Releases the token without blocking a thread of the caller: the release (one etcd
    /// call, as [`unlock`](EtcdGuard::unlock) makes, and as dropping the guard makes on the
    /// dropping thread) runs on a thread of its own, started at once; the future says how it
    /// went. Dropping the future does not stop the release.
    ///
    /// ```no_run
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
    /// # fn main() -> lockticket::Result<()> {
    /// let lt = lockticket::etcd::EtcdLockTicket::from_env("jobs")?;
    /// block_on(async {
    ///     let token = lt.token_lock_async().await?;
    ///     // ... work ...
    ///     token.unlock_async().await // not `drop(token)`: that waits for etcd on this thread
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn unlock_async(self) -> impl Future<Output = Result<()>> + Send + 'static {
        let shared: Arc<Mutex<Release>> = Arc::default();
        let (name, endpoints) = (self.inner.name.clone(), self.inner.client.endpoints_text());
        let s = shared.clone();
        // (If no thread can be started, the guard goes with the closure: released here.)
        let started = std::thread::Builder::new()
            .name("lockticket-etcd-release".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let out = self.unlock();
                let waker = {
                    let mut slot = lock(&s);
                    slot.0 = Some(out);
                    slot.1.take()
                };
                if let Some(w) = waker {
                    w.wake();
                }
            });
        let mut failed = started.err().map(|e| Error::EtcdUnavailable {
            name,
            op: "start the thread of an async release",
            endpoints,
            detail: e.to_string(),
        });
        std::future::poll_fn(move |cx| {
            if let Some(e) = failed.take() {
                return Poll::Ready(Err(e));
            }
            let mut slot = lock(&shared);
            match slot.0.take() {
                Some(out) => Poll::Ready(out),
                None => {
                    slot.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_are_send_and_static() {
        fn send_static<T: Send + 'static>(_: &T) {}
        let lt = EtcdLockTicket::builder("n")
            .endpoints(["http://127.0.0.1:1"])
            .open()
            .unwrap();
        send_static(&lt.token_lock_async());
        send_static(&lt.token_lock_shared_async());
        send_static(&lt.request().no_wait().lock_async());
        send_static(&lt.token_lock_owned_async());
    }

    #[test]
    fn a_future_never_polled_sends_nothing_and_a_failed_one_says_why() {
        // Port 1 on loopback: refused at once; the request fails within its call deadline.
        let lt = EtcdLockTicket::builder("n")
            .endpoints(["http://127.0.0.1:1"])
            .call_timeout(std::time::Duration::from_millis(50))
            .open()
            .unwrap();
        drop(lt.token_lock_owned_async());
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark()
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(lt.request().no_wait().lock_async());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let out = loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                break out;
            }
            assert!(std::time::Instant::now() < deadline, "never ended");
            std::thread::park_timeout(std::time::Duration::from_millis(100));
        };
        assert!(matches!(out, Err(Error::EtcdUnavailable { .. })), "{out:?}");
        // Polled again: an error, not a panic.
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }
}
