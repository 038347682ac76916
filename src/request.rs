//! One way to ask for a token: [`TokenRequest`], the builder behind every token call, plus
//! the deadline and closure forms. The brief's names (`token_lock`, `try_token_lock_shared`,
//! `token_lock_timeout`, …) stay as thin wrappers, so the migration table keeps its names.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::handle::LockTicket;
use crate::patience::{Patience, patience_for};
use crate::share::Share;
use crate::token::{Ask, Route, TokenGuard};

/// A token request being put together: mode, then how long it may wait. Made by
/// [`LockTicket::request`].
///
/// ```
/// use std::time::Duration;
/// # fn main() -> lockticket::Result<()> {
/// # let dir = std::env::temp_dir();
/// # let name = format!("doc-request-{}", std::process::id());
/// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
/// let _owner = lt.main_lock(lockticket::Share::Shared)?;
/// // A shared token, waiting at most 50 ms (None if it timed out):
/// let reader = lt.request().shared().timeout(Duration::from_millis(50)).lock()?;
/// assert!(reader.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use = "a request does nothing until `lock` is called"]
pub struct TokenRequest<'a> {
    lt: &'a LockTicket,
    share: Share,
    patience: Patience,
    cancel: Option<&'a crate::cancel::Cancel>,
}

impl<'a> TokenRequest<'a> {
    /// Ask for a shared (reader) token.
    #[inline]
    pub fn shared(mut self) -> Self {
        self.share = Share::Shared;
        self
    }

    /// Ask for an exclusive token (the default).
    #[inline]
    pub fn exclusive(mut self) -> Self {
        self.share = Share::Exclusive;
        self
    }

    /// Ask in this mode.
    #[inline]
    pub fn mode(mut self, share: Share) -> Self {
        self.share = share;
        self
    }

    /// Do not wait at all: `lock` returns `None` unless the token is free now, and leaves no
    /// trace in the queue.
    #[inline]
    pub fn no_wait(mut self) -> Self {
        self.patience = Patience::NoWait;
        self
    }

    /// Wait at most `timeout`.
    #[inline]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.patience = patience_for(timeout);
        self
    }

    /// Wait until `deadline` at the latest.
    #[inline]
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.patience = Patience::Until(deadline);
        self
    }

    /// Wait as `patience` says (the other patience methods in one value).
    #[inline]
    pub fn patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// Lets another thread end the wait at once through `cancel` ([`Cancel::cancel`]): the
    /// request then leaves the queue without a trace, and `lock` fails with
    /// [`Error::Cancelled`](crate::Error::Cancelled) — also when the handle was cancelled
    /// before `lock` was called. A grant that came first wins: the token is then held.
    /// Not for the wait on a lock file's kernel lock (two tables of one lock file), which
    /// only the deadline ends.
    ///
    /// [`Cancel::cancel`]: crate::Cancel::cancel
    ///
    /// ```
    /// use std::time::Duration;
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-cancel-on-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let held = lt.token_lock()?;
    /// let cancel = lockticket::Cancel::new();
    /// std::thread::scope(|s| {
    ///     let waiter = s.spawn(|| lt.request().cancel_on(&cancel).lock().map(|g| g.is_some()));
    ///     cancel.cancel(); // from any thread, at any time
    ///     let outcome = waiter.join().unwrap();
    ///     assert!(matches!(outcome, Err(lockticket::Error::Cancelled { .. })));
    /// });
    /// drop(held);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn cancel_on(mut self, cancel: &'a crate::cancel::Cancel) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Wait as long as it takes (the default).
    #[inline]
    pub fn forever(mut self) -> Self {
        self.patience = Patience::Forever;
        self
    }

    /// Enters the queue and waits as asked. `Ok(None)` when the wait ended without the
    /// token (never with the default, unbounded wait).
    #[inline]
    pub fn lock(self) -> Result<Option<TokenGuard<'a>>> {
        if self.cancel.is_some_and(crate::cancel::Cancel::is_cancelled) {
            return Err(crate::error::Error::Cancelled {
                path: self.lt.path().to_path_buf(),
            });
        }
        self.lt.acquire(self.ask())
    }

    /// Locks the open file description `fd` refers to, as flock(1)'s `flock FD` does (see
    /// [`LockTicket::lock_fd`], the same with the mode and the wait as arguments).
    pub fn lock_fd(self, fd: std::os::fd::BorrowedFd<'_>) -> Result<Option<crate::fd::FdLock>> {
        self.lt.lock_fd_as(fd, self.share, self.patience)
    }

    /// Enters the queue and waits as asked without blocking a thread: a future, for async
    /// code on any executor (see [`crate::AsyncTokenGuard`]). Dropping it while it waits
    /// leaves no trace in the queue — the cancel of async code; [`cancel_on`](Self::cancel_on)
    /// is for blocking waits and is not looked at here.
    ///
    /// ```
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
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-request-async-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let reader = block_on(lt.request().shared().timeout(Duration::from_millis(50)).lock_async())?;
    /// assert!(reader.is_some()); // `.await` in async code
    /// # Ok(()) }
    /// ```
    pub fn lock_async(self) -> crate::async_lock::LockFuture<'a> {
        self.lt.lock_async_as(self.share, self.patience)
    }

    /// What this request asks for, on the ordinary route.
    #[inline]
    pub(crate) fn ask(self) -> Ask<'a> {
        Ask {
            share: self.share,
            patience: self.patience,
            route: Route::Any,
            cancel: self.cancel,
        }
    }
}

impl LockTicket {
    /// A token request: exclusive and unbounded unless told otherwise (see
    /// [`TokenRequest`]).
    #[inline]
    pub fn request(&self) -> TokenRequest<'_> {
        TokenRequest {
            lt: self,
            share: Share::Exclusive,
            patience: Patience::Forever,
            cancel: None,
        }
    }

    /// Takes the exclusive token, waiting until `deadline` at the latest; `Ok(None)` if it
    /// passed first (the request then leaves the queue without a trace).
    pub fn token_lock_until(&self, deadline: Instant) -> Result<Option<TokenGuard<'_>>> {
        self.request().deadline(deadline).lock()
    }

    /// Takes a shared token, waiting until `deadline` at the latest.
    pub fn token_lock_shared_until(&self, deadline: Instant) -> Result<Option<TokenGuard<'_>>> {
        self.request().shared().deadline(deadline).lock()
    }

    /// Runs `f` holding the exclusive token, and releases it afterwards (also if `f`
    /// panics). `f` gets the guard, to ask [`TokenGuard::previous_holder_died`].
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-with-token-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let n = lt.with_token(|token| {
    ///     if token.previous_holder_died() { /* repair */ }
    ///     42
    /// })?;
    /// assert_eq!(n, 42);
    /// # Ok(()) }
    /// ```
    pub fn with_token<T>(&self, f: impl FnOnce(&TokenGuard<'_>) -> T) -> Result<T> {
        let guard = self.token_lock()?;
        let out = f(&guard);
        guard.unlock()?;
        Ok(out)
    }

    /// Runs `f` holding a shared token, and releases it afterwards.
    pub fn with_token_shared<T>(&self, f: impl FnOnce(&TokenGuard<'_>) -> T) -> Result<T> {
        let guard = self.token_lock_shared()?;
        let out = f(&guard);
        guard.unlock()?;
        Ok(out)
    }
}
