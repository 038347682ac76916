//! Guards that own their handle: returned from helpers, kept in structs without a lifetime,
//! like lock_api's `arc_lock` guards. [`hold`] is the one-call form of the common case.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::handle::LockTicket;
use crate::raw::{ArcToken, RawMember};
use crate::region::Region;
use crate::share::Share;
use crate::token::TokenGuard;

/// A token guard that keeps its table alive by itself (see
/// [`LockTicket::token_lock_owned`]): an `Arc` of the handle and of the mapped table, and the
/// raw token — no borrow, so it can be returned from a function or kept in a struct without
/// a lifetime (lock_api's `ArcMutexGuard` shape). Releases on [`unlock`](Self::unlock) or
/// drop.
#[must_use = "the token is released when the guard is dropped"]
pub struct OwnedTokenGuard {
    token: ArcToken,
    lt: Arc<LockTicket>,
    /// Not `Send`, like [`TokenGuard`].
    _not_send: std::marker::PhantomData<std::sync::MutexGuard<'static, ()>>,
}

/// A main-lock guard that keeps its table alive by itself (see
/// [`LockTicket::main_lock_owned`]). Leaves on [`unlock`](Self::unlock) or drop.
#[must_use = "the main lock is left when the guard is dropped"]
pub struct OwnedMainGuard {
    raw: RawMember,
    region: Arc<Region>,
    lt: Arc<LockTicket>,
    /// Left by `unlock` (the drop then has nothing to do).
    left: bool,
}

impl std::fmt::Debug for OwnedTokenGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedTokenGuard")
            .field("path", &self.token.region().path())
            .field("share", &self.share())
            .field("ticket", &self.token.raw().ticket_number())
            .field("previous_holder_died", &self.previous_holder_died())
            .finish()
    }
}

impl std::fmt::Debug for OwnedMainGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedMainGuard")
            .field("path", &self.region.path())
            .field("created", &self.raw.created)
            .field("reclaimed", &self.raw.reclaimed)
            .finish()
    }
}

impl OwnedTokenGuard {
    /// See [`TokenGuard::previous_holder_died`].
    pub fn previous_holder_died(&self) -> bool {
        self.token.raw().died()
    }

    /// See [`TokenGuard::share`].
    pub fn share(&self) -> Share {
        self.token.raw().share()
    }

    /// See [`TokenGuard::fencing_token`].
    pub fn fencing_token(&self) -> u64 {
        self.token.fencing_token()
    }

    /// Releases the token (see [`TokenGuard::unlock`]).
    pub fn unlock(self) -> Result<()> {
        self.token.unlock()
    }

    /// The handle this guard keeps alive.
    pub fn handle(&self) -> &Arc<LockTicket> {
        &self.lt
    }
}

impl OwnedMainGuard {
    /// See [`MainGuard::created`](crate::MainGuard::created).
    pub fn created(&self) -> bool {
        self.raw.created
    }

    /// See [`MainGuard::reclaimed`](crate::MainGuard::reclaimed).
    pub fn reclaimed(&self) -> bool {
        self.raw.reclaimed
    }

    /// Leaves the main lock (see [`MainGuard::unlock`](crate::MainGuard::unlock)).
    pub fn unlock(mut self) -> Result<()> {
        self.left = true;
        crate::main_lock::leave(&self.lt, &self.region, &self.raw)
    }

    /// The handle this guard keeps alive.
    pub fn handle(&self) -> &Arc<LockTicket> {
        &self.lt
    }
}

impl Drop for OwnedMainGuard {
    fn drop(&mut self) {
        if !self.left {
            let _ = crate::main_lock::leave(&self.lt, &self.region, &self.raw);
        }
    }
}

impl LockTicket {
    /// Takes the exclusive token (like [`token_lock`](Self::token_lock)) with a guard that
    /// owns a reference to the handle and to the table: it can be returned from a function or
    /// kept in a struct without a lifetime.
    ///
    /// ```
    /// use std::sync::Arc;
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-owned-{}", std::process::id());
    /// let lt = Arc::new(lockticket::LockTicket::builder(&name).directory(&dir).open()?);
    /// struct Job {
    ///     _owner: lockticket::OwnedMainGuard,
    ///     token: lockticket::OwnedTokenGuard,
    /// }
    /// let job = Job { _owner: lt.main_lock_owned(lockticket::Share::Shared)?, token: lt.token_lock_owned()? };
    /// assert!(!job.token.previous_holder_died());
    /// # Ok(()) }
    /// ```
    pub fn token_lock_owned(self: &Arc<Self>) -> Result<OwnedTokenGuard> {
        self.own_token(self.token_lock()?)
    }

    /// Takes a shared token (like [`token_lock_shared`](Self::token_lock_shared)) with an
    /// owned guard (see [`token_lock_owned`](Self::token_lock_owned)).
    pub fn token_lock_shared_owned(self: &Arc<Self>) -> Result<OwnedTokenGuard> {
        self.own_token(self.token_lock_shared()?)
    }

    /// The owned shape of `guard`: its raw token, with `Arc`s of the handle and the table.
    fn own_token(self: &Arc<Self>, guard: TokenGuard<'_>) -> Result<OwnedTokenGuard> {
        let Some(region) = self.region_arc(guard.region()) else {
            drop(guard);
            return Err(self.corrupted("a token of a table this handle did not map"));
        };
        let (_, raw) = guard.into_raw();
        Ok(OwnedTokenGuard {
            token: ArcToken::new(raw, region),
            lt: Arc::clone(self),
            _not_send: std::marker::PhantomData,
        })
    }

    /// Joins the table (like [`main_lock`](Self::main_lock)) with a guard that owns a
    /// reference to the handle and to the table (see
    /// [`token_lock_owned`](Self::token_lock_owned)).
    pub fn main_lock_owned(self: &Arc<Self>, share: Share) -> Result<OwnedMainGuard> {
        let guard = self.main_lock(share)?;
        let Some(region) = self.region_arc(guard.region()) else {
            drop(guard);
            return Err(self.corrupted("a membership of a table this handle did not map"));
        };
        let (_, _, raw) = guard.into_raw();
        Ok(OwnedMainGuard {
            raw,
            region,
            lt: Arc::clone(self),
            left: false,
        })
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
/// table.
#[derive(Debug)]
#[must_use = "the token is released when this is dropped"]
pub struct Held {
    // Field order: the token is released before the table is left.
    token: OwnedTokenGuard,
    _main: OwnedMainGuard,
}

impl Held {
    /// See [`TokenGuard::previous_holder_died`].
    pub fn previous_holder_died(&self) -> bool {
        self.token.previous_holder_died()
    }

    /// See [`TokenGuard::share`].
    pub fn share(&self) -> Share {
        self.token.share()
    }

    /// See [`TokenGuard::fencing_token`].
    pub fn fencing_token(&self) -> u64 {
        self.token.fencing_token()
    }

    /// Releases the token, then leaves the table (the last one out removes it).
    pub fn unlock(self) -> Result<()> {
        let Held { token, _main } = self;
        let released = token.unlock();
        _main.unlock().and(released)
    }
}

impl crate::guard::Guard for OwnedTokenGuard {
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

impl crate::guard::Guard for Held {
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
