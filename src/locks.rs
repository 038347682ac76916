//! [`TokenLocks`]: what every handle that hands out tokens answers, whatever its backend (a
//! local table, etcd), so that code can be written once for both.

use std::time::Duration;

use crate::error::Result;
use crate::guard::Guard;
use crate::patience::{Patience, patience_for};
use crate::share::Share;
use crate::token::TokenGuard;

/// A handle that hands out tokens: [`LockTicket`](crate::LockTicket), and
/// `lockticket::etcd::EtcdLockTicket` with the `etcd` feature. One required method, the
/// request; the short forms follow from it. In generic code, the guard answers [`Guard`].
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

    /// A token of `share`, waiting as `patience` says: `None` if it was not granted in time.
    fn request_token(&self, share: Share, patience: Patience) -> Result<Option<Self::Guard<'_>>>;

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

    fn request_token(&self, share: Share, patience: Patience) -> Result<Option<TokenGuard<'_>>> {
        self.request().mode(share).patience(patience).lock()
    }
}

#[cfg(feature = "etcd")]
impl TokenLocks for crate::etcd::EtcdLockTicket {
    type Guard<'a> = crate::etcd::EtcdGuard;

    fn request_token(
        &self,
        share: Share,
        patience: Patience,
    ) -> Result<Option<crate::etcd::EtcdGuard>> {
        self.request().mode(share).patience(patience).lock()
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
