//! Guards that own their handle: returned from helpers, kept in structs without a lifetime,
//! like lock_api's `arc_lock` guards. [`hold`] is the one-call form of the common case.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::handle::LockTicket;
use crate::main_lock::MainGuard;
use crate::share::Share;
use crate::token::TokenGuard;

/// A token guard that keeps its [`LockTicket`] alive (see
/// [`LockTicket::token_lock_owned`]). Releases on [`unlock`](Self::unlock) or drop; derefs to
/// [`TokenGuard`] for [`previous_holder_died`](TokenGuard::previous_holder_died) and
/// [`share`](TokenGuard::share).
#[must_use = "the token is released when the guard is dropped"]
pub struct OwnedTokenGuard {
    // Declared before `lt`: dropped (released) first, while the handle still lives.
    pub(crate) guard: Option<TokenGuard<'static>>,
    pub(crate) lt: Arc<LockTicket>,
}

/// A main-lock guard that keeps its [`LockTicket`] alive (see
/// [`LockTicket::main_lock_owned`]). Derefs to [`MainGuard`].
#[must_use = "the main lock is left when the guard is dropped"]
pub struct OwnedMainGuard {
    // Declared before `lt`: dropped (left) first, while the handle still lives.
    pub(crate) guard: Option<MainGuard<'static>>,
    pub(crate) lt: Arc<LockTicket>,
}

impl std::fmt::Debug for OwnedTokenGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OwnedTokenGuard").field(&self.guard).finish()
    }
}

impl std::fmt::Debug for OwnedMainGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OwnedMainGuard").field(&self.guard).finish()
    }
}

impl Deref for OwnedTokenGuard {
    type Target = TokenGuard<'static>;
    fn deref(&self) -> &Self::Target {
        match &self.guard {
            Some(g) => g,
            None => unreachable!("the guard is only taken by unlock, which consumes self"),
        }
    }
}

impl Deref for OwnedMainGuard {
    type Target = MainGuard<'static>;
    fn deref(&self) -> &Self::Target {
        match &self.guard {
            Some(g) => g,
            None => unreachable!("the guard is only taken by unlock, which consumes self"),
        }
    }
}

impl OwnedTokenGuard {
    /// Releases the token (see [`TokenGuard::unlock`]).
    pub fn unlock(mut self) -> Result<()> {
        match self.guard.take() {
            Some(g) => g.unlock(),
            None => Ok(()),
        }
    }

    /// The handle this guard keeps alive.
    pub fn handle(&self) -> &Arc<LockTicket> {
        &self.lt
    }
}

impl OwnedMainGuard {
    /// Leaves the main lock (see [`MainGuard::unlock`]).
    pub fn unlock(mut self) -> Result<()> {
        match self.guard.take() {
            Some(g) => g.unlock(),
            None => Ok(()),
        }
    }

    /// The handle this guard keeps alive.
    pub fn handle(&self) -> &Arc<LockTicket> {
        &self.lt
    }
}

/// The common case in one call: opens the table `name_or_path`, joins it as a shared owner
/// (creating it if needed), takes the exclusive token, and gives back one value that releases
/// the token and leaves the table (the last one out removes it) when dropped.
///
/// ```
/// # fn main() -> lockticket::Result<()> {
/// # let name = std::env::temp_dir().join(format!("doc-hold-{}.lt", std::process::id()));
/// fn exclusive_section(name: &std::path::Path) -> lockticket::Result<lockticket::Held> {
///     lockticket::hold(name) // a guard a function can return
/// }
/// let held = exclusive_section(&name)?;
/// if held.previous_holder_died() { /* repair */ }
/// drop(held); // token released, table left (and removed: we were the last)
/// assert!(!name.exists());
/// # Ok(()) }
/// ```
pub fn hold(name_or_path: impl AsRef<Path>) -> Result<Held> {
    let lt = Arc::new(LockTicket::open(name_or_path)?);
    let main = lt.main_lock_owned(Share::Shared)?;
    let token = lt.token_lock_owned()?;
    Ok(Held { token, _main: main })
}

/// What [`hold`] returns: the exclusive token and a shared main-lock registration of one
/// table. Derefs to the token guard.
#[derive(Debug)]
#[must_use = "the token is released when this is dropped"]
pub struct Held {
    // Field order: the token is released before the table is left.
    token: OwnedTokenGuard,
    _main: OwnedMainGuard,
}

impl Deref for Held {
    type Target = TokenGuard<'static>;
    fn deref(&self) -> &Self::Target {
        &self.token
    }
}

impl crate::Guard for OwnedTokenGuard {
    fn share(&self) -> Share {
        TokenGuard::share(self)
    }
    fn previous_holder_died(&self) -> bool {
        TokenGuard::previous_holder_died(self)
    }
    fn fencing_token(&self) -> u64 {
        TokenGuard::fencing_token(self)
    }
}

impl crate::Guard for Held {
    fn share(&self) -> Share {
        TokenGuard::share(self)
    }
    fn previous_holder_died(&self) -> bool {
        TokenGuard::previous_holder_died(self)
    }
    fn fencing_token(&self) -> u64 {
        TokenGuard::fencing_token(self)
    }
}
