//! [`TokenLocks`]: what every handle that hands out tokens answers, whatever its backend (a
//! local table, etcd), so that code can be written once for both.

use std::future::Future;
use std::time::Duration;

use crate::error::Result;
use crate::guard::Guard;
use crate::patience::{Patience, patience_for};
use crate::share::Share;
use crate::token::TokenGuard;

/// A handle that hands out tokens: [`LockTicket`](crate::LockTicket), and
/// `lockticket::etcd::EtcdLockTicket` with the `etcd` feature. Two required methods, the
/// request and its async form; the short forms follow from them. In generic code, the guards
/// answer [`Guard`].
///
/// ```
/// use lockticket::{Guard, LockTicket, Share, TokenLocks};
/// # fn main() -> lockticket::Result<()> {
/// # let dir = std::env::temp_dir();
/// # let name = format!("doc-locks-{}", std::process::id());
/// // Written once, for a local table or a lock on etcd:
/// fn run_job<L: TokenLocks>(locks: &L) -> lockticket::Result<u64> {
///     let token = locks.token_lock()?;
///     if token.previous_holder_died() { /* repair */ }
///     Ok(token.fencing_token())
/// }
/// let lt = LockTicket::builder(&name).directory(&dir).open()?;
/// let _owner = lt.main_lock(Share::Shared)?;
/// assert!(run_job(&lt)? > 0);
/// # Ok(()) }
/// ```
pub trait TokenLocks {
    /// The guard of a granted token.
    type Guard<'a>: Guard
    where
        Self: 'a;

    /// The guard of a token granted to an async request: `Send` and `'static` on both
    /// backends.
    type AsyncGuard: Guard + Send + 'static;

    /// The future of an async request (it borrows the handle on a local table, and nothing
    /// on etcd).
    type LockFuture<'a>: Future<Output = Result<Option<Self::AsyncGuard>>> + Send + 'a
    where
        Self: 'a;

    /// A token of `share`, waiting as `patience` says: `None` if it was not granted in time.
    fn request_token(&self, share: Share, patience: Patience) -> Result<Option<Self::Guard<'_>>>;

    /// The async form of [`request_token`](TokenLocks::request_token): waits without
    /// blocking a thread of the caller; dropping the future while it waits leaves no trace.
    ///
    /// ```
    /// use lockticket::{Guard, LockTicket, Patience, Share, TokenLocks};
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
    /// # let name = format!("doc-locks-async-{}", std::process::id());
    /// // Written once, for a local table or a lock on etcd:
    /// async fn job<L: TokenLocks>(locks: &L) -> lockticket::Result<Option<u64>> {
    ///     let token = locks.request_token_async(Share::Exclusive, Patience::NoWait).await?;
    ///     Ok(token.map(|t| t.fencing_token()))
    /// }
    /// let lt = LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(Share::Shared)?;
    /// assert!(block_on(job(&lt))?.is_some());
    /// # Ok(()) }
    /// ```
    fn request_token_async(&self, share: Share, patience: Patience) -> Self::LockFuture<'_>;

    /// The exclusive token, waiting as long as it takes without blocking a thread.
    fn token_lock_async(&self) -> impl Future<Output = Result<Self::AsyncGuard>> + Send + '_ {
        let f = self.request_token_async(Share::Exclusive, Patience::Forever);
        async move {
            f.await
                .map(|g| g.expect("a request without a deadline is granted"))
        }
    }

    /// A shared token, waiting as long as it takes without blocking a thread.
    fn token_lock_shared_async(
        &self,
    ) -> impl Future<Output = Result<Self::AsyncGuard>> + Send + '_ {
        let f = self.request_token_async(Share::Shared, Patience::Forever);
        async move {
            f.await
                .map(|g| g.expect("a request without a deadline is granted"))
        }
    }

    /// The exclusive token, waiting as long as it takes.
    fn token_lock(&self) -> Result<Self::Guard<'_>> {
        self.request_token(Share::Exclusive, Patience::Forever)
            .map(|g| g.expect("a request without a deadline is granted"))
    }

    /// A shared token, waiting as long as it takes.
    fn token_lock_shared(&self) -> Result<Self::Guard<'_>> {
        self.request_token(Share::Shared, Patience::Forever)
            .map(|g| g.expect("a request without a deadline is granted"))
    }

    /// The exclusive token if it is free now.
    fn try_token_lock(&self) -> Result<Option<Self::Guard<'_>>> {
        self.request_token(Share::Exclusive, Patience::NoWait)
    }

    /// A shared token if no writer holds or waits now.
    fn try_token_lock_shared(&self) -> Result<Option<Self::Guard<'_>>> {
        self.request_token(Share::Shared, Patience::NoWait)
    }

    /// The exclusive token, waiting at most `timeout`.
    fn token_lock_timeout(&self, timeout: Duration) -> Result<Option<Self::Guard<'_>>> {
        self.request_token(Share::Exclusive, patience_for(timeout))
    }

    /// A shared token, waiting at most `timeout`.
    fn token_lock_shared_timeout(&self, timeout: Duration) -> Result<Option<Self::Guard<'_>>> {
        self.request_token(Share::Shared, patience_for(timeout))
    }
}

impl TokenLocks for crate::handle::LockTicket {
    type Guard<'a> = TokenGuard<'a>;
    type AsyncGuard = crate::AsyncTokenGuard;
    type LockFuture<'a> = crate::LockFuture<'a>;

    fn request_token(&self, share: Share, patience: Patience) -> Result<Option<TokenGuard<'_>>> {
        self.request().mode(share).patience(patience).lock()
    }

    fn request_token_async(&self, share: Share, patience: Patience) -> crate::LockFuture<'_> {
        self.request().mode(share).patience(patience).lock_async()
    }
}

#[cfg(feature = "etcd")]
impl TokenLocks for crate::etcd::EtcdLockTicket {
    type Guard<'a> = crate::etcd::EtcdGuard;
    type AsyncGuard = crate::etcd::EtcdGuard;
    type LockFuture<'a> = crate::etcd::EtcdLockFuture;

    fn request_token(
        &self,
        share: Share,
        patience: Patience,
    ) -> Result<Option<crate::etcd::EtcdGuard>> {
        self.request().mode(share).patience(patience).lock()
    }

    fn request_token_async(&self, share: Share, patience: Patience) -> crate::etcd::EtcdLockFuture {
        self.request().mode(share).patience(patience).lock_async()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic<L: TokenLocks>(l: &L) -> (u64, bool) {
        let token = l.token_lock().unwrap().fencing_token();
        let free = l.try_token_lock().unwrap().is_some();
        (token, free)
    }

    #[test]
    fn a_local_table_through_the_trait() {
        let dir = std::env::temp_dir();
        let name = format!("unit-locks-{}", std::process::id());
        let lt = crate::handle::LockTicket::builder(&name)
            .directory(&dir)
            .open()
            .unwrap();
        let _owner = lt.main_lock(Share::Shared).unwrap();
        let (token, free) = generic(&lt);
        assert!(token > 0 && free);
        assert!(
            TokenLocks::token_lock_shared_timeout(&lt, Duration::from_millis(1))
                .unwrap()
                .is_some()
        );
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn the_etcd_handle_is_a_token_locks() {
        fn is<L: TokenLocks>() {}
        is::<crate::etcd::EtcdLockTicket>();
    }
}
