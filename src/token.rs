//! The token lock calls: the fast path, waiting, the guard.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handle::LockTicket;
use crate::liveness::Registration;
use crate::patience::Patience;
use crate::raw::{Place, RawToken};
use crate::region::Region;
use crate::ring::{Broken, Claim, Entry, Grant, Ticket};
use crate::share::Share;
use crate::sys;
use crate::wait::{self, Entered, Outcome, WaitError, Waiter};

/// Which way a request may be granted.
/// Bounded tables: how many times a request about to queue yields and tries to go ahead again
/// ([`LockTicket::bypass_for_a_moment`]).
const BYPASS_TRIES: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Any way the table allows: ahead of the queue in a bounded table, and with the kernel
    /// lock on a keyed table's lock file (`crate::lock_file`).
    Any,
    /// For the descriptor form (`crate::fd`): through the queue only, so that the guard holds
    /// a ring ticket it can hand over, and without the lock file's kernel lock, which the
    /// descriptor form takes on the caller's own descriptor.
    Descriptor,
}

/// A token request: the one value every way to ask for a token builds (the short forms,
/// [`TokenRequest`](crate::TokenRequest), the owned forms, the descriptor form), and the one
/// entry point, [`LockTicket::acquire`], takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ask<'c> {
    /// Exclusive or shared.
    pub share: Share,
    /// How long it may wait.
    pub patience: Patience,
    /// Which way it may be granted.
    pub route: Route,
    /// Ends the wait from another thread ([`TokenRequest::cancel_on`]).
    ///
    /// [`TokenRequest::cancel_on`]: crate::TokenRequest::cancel_on
    pub cancel: Option<&'c crate::cancel::Cancel>,
}

impl LockTicket {
    // -----------------------------------------------------------------------------------------
    // Token lock.

    /// Takes the exclusive token, waiting in FIFO order (the original's `TokenLock()`).
    #[inline]
    pub fn token_lock(&self) -> Result<TokenGuard<'_>> {
        self.acquire_forever(Share::Exclusive)
    }

    /// Takes a shared (reader) token, waiting in FIFO order. Consecutive shared requests hold
    /// together; a shared request behind a queued exclusive one waits for it.
    #[inline]
    pub fn token_lock_shared(&self) -> Result<TokenGuard<'_>> {
        self.acquire_forever(Share::Shared)
    }

    /// Takes the exclusive token if that is possible without waiting; never blocks and leaves
    /// no trace in the queue when it fails.
    pub fn try_token_lock(&self) -> Result<Option<TokenGuard<'_>>> {
        self.request().no_wait().lock()
    }

    /// Takes a shared token if that is possible without waiting.
    pub fn try_token_lock_shared(&self) -> Result<Option<TokenGuard<'_>>> {
        self.request().shared().no_wait().lock()
    }

    /// Takes the exclusive token, waiting at most `timeout`. `Ok(None)` on timeout; the
    /// request then leaves the queue without a trace.
    pub fn token_lock_timeout(&self, timeout: Duration) -> Result<Option<TokenGuard<'_>>> {
        self.request().timeout(timeout).lock()
    }

    /// Takes a shared token, waiting at most `timeout`.
    pub fn token_lock_shared_timeout(&self, timeout: Duration) -> Result<Option<TokenGuard<'_>>> {
        self.request().shared().timeout(timeout).lock()
    }

    /// The blocking short forms: the request with no deadline, whose only outcome without an
    /// error is the token.
    #[inline(always)]
    fn acquire_forever(&self, share: Share) -> Result<TokenGuard<'_>> {
        let ask = self.request().mode(share).forever().ask();
        // `acquire`, with the grant unwrapped: the fast path inline, the rest cold (returning
        // the `Option` through the hot path doubled the uncontended lock+unlock, measured).
        match self.fast(ask) {
            Fast::Granted(g) => Ok(g),
            other => self.acquire_blocking(ask, other),
        }
    }

    #[cold]
    #[inline(never)]
    fn acquire_blocking<'a>(&'a self, ask: Ask<'_>, fast: Fast<'a>) -> Result<TokenGuard<'a>> {
        match self.slow_keyed(ask, fast)? {
            Some(g) => Ok(g),
            None => Err(self.corrupted("a request without deadline returned without a grant")),
        }
    }

    /// The one entry point of every token request: the fast path (one claim attempt), else
    /// everything else from where it stopped; for a keyed table asked on the ordinary route,
    /// also the kernel lock on its lock file (`crate::lock_file`; the fast path leaves keyed
    /// tables to the slow one).
    #[inline(always)]
    pub(crate) fn acquire(&self, ask: Ask<'_>) -> Result<Option<TokenGuard<'_>>> {
        match self.fast(ask) {
            Fast::Granted(g) => Ok(Some(g)),
            other => self.slow_keyed(ask, other),
        }
    }

    /// [`Self::slow`], then, for a keyed table, the kernel lock on its lock file.
    #[cold]
    fn slow_keyed<'a>(&'a self, ask: Ask<'_>, fast: Fast<'a>) -> Result<Option<TokenGuard<'a>>> {
        match self.slow(ask, fast)? {
            // The table's own anchor, as the fast path and the release ask it.
            Some(g) if ask.route == Route::Any && g.region.anchor().is_some() => {
                self.lock_file_within(g, ask.patience)
            }
            g => Ok(g),
        }
    }

    /// Adds the kernel lock on the lock file (`crate::lock_file`) to `guard`, a token granted
    /// in the ring, waiting for it within `patience`; gives the ring token back when it is not
    /// obtained in time. The table keeps the lock's description for the guard's release
    /// (`Region::keep_kernel_lock`).
    #[cold]
    fn lock_file_within<'a>(
        &'a self,
        guard: TokenGuard<'a>,
        patience: Patience,
    ) -> Result<Option<TokenGuard<'a>>> {
        let path = self.lock_file_path.get().map(|p| p.as_path());
        let region = guard.region;
        let Some(lock_file) = region.anchor() else {
            return Ok(Some(guard)); // not keyed (the caller checked)
        };
        match crate::lock_file::take(lock_file, path, guard.share(), patience) {
            Ok(Some(file)) => {
                region.keep_kernel_lock(guard.raw.key(), file);
                Ok(Some(guard))
            }
            Ok(None) => {
                guard.unlock()?;
                Ok(None)
            }
            Err(e) => {
                drop(guard);
                Err(e)
            }
        }
    }

    /// The fast path: one claim attempt on the mapped table, granted at once. Everything else
    /// (waiting, a full ring, a retired table, a forked child) goes to [`Self::slow`].
    #[inline(always)]
    fn fast(&self, ask: Ask<'_>) -> Fast<'_> {
        let share = ask.share;
        let (pid, _) = sys::current_identity();
        if pid != self.creator.0 {
            return Fast::Missed; // a forked child: the slow path checks the parent
        }
        let Some(region) = self.mapped() else {
            return Fast::Missed;
        };
        let Some(me) = region.registration(pid) else {
            return Fast::Missed; // not registered yet: the slow path registers
        };
        if region.anchor().is_some() {
            return Fast::Missed; // a keyed table: the slow path adds the lock file's flock
        }
        let ring = region.ring();
        if ring.is_bounded() && share == Share::Exclusive && ask.route == Route::Any {
            match self.bypass(region, me, pid) {
                Some(g) => return Fast::Granted(g),
                None if region.retired() => return Fast::Missed,
                // Busy: try again for a moment before queueing (cold).
                None if ring.queued() != 0 && !matches!(ask.patience, Patience::NoWait) => {
                    if let Some(g) = self.bypass_for_a_moment(region, me, pid) {
                        return Fast::Granted(g);
                    }
                    if region.retired() {
                        return Fast::Missed;
                    }
                }
                None => {}
            }
        }
        let Claim::Claimed(tk) = ring.try_claim(share, me) else {
            return Fast::Missed;
        };
        ring.publish(tk, me.generation, pid, sys::coarse_now_ns());
        if ring.granted_at_once(tk)
            && !region.retired()
            && (!ring.is_bounded() || ring.enter(tk) == Entry::Clear)
        {
            return Fast::Granted(self.holding(region, tk, pid, false));
        }
        Fast::Claimed(region, tk)
    }

    /// The guard of a granted request, marked as holding; `died` when a bypasser it waited
    /// for died inside.
    #[inline(always)]
    fn holding<'a>(
        &'a self,
        region: &'a Region,
        tk: Ticket,
        pid: u32,
        died: bool,
    ) -> TokenGuard<'a> {
        let died = region.ring().mark_holding(tk) | died;
        TokenGuard {
            region,
            raw: RawToken::new(Place::Queued(tk), pid, died),
            _not_send: std::marker::PhantomData,
        }
    }

    /// Bounded tables: one attempt to take the exclusive token ahead of the queue (see
    /// `ring::bypass`), as registration `me` of process `pid`. Never in a retired table.
    #[inline]
    fn bypass<'a>(
        &'a self,
        region: &'a Region,
        me: Registration,
        pid: u32,
    ) -> Option<TokenGuard<'a>> {
        let ring = region.ring();
        let b = ring.try_bypass(me)?;
        if region.retired() {
            ring.release_bypass(b);
            return None;
        }
        Some(TokenGuard {
            region,
            raw: RawToken::new(Place::Ahead(b), pid, ring.bypass_died_before(b.head)),
            _not_send: std::marker::PhantomData,
        })
    }

    /// Bounded tables, a request that may wait: before it queues (and sleeps until its turn in
    /// arrival order), it gives the CPU away and tries to go ahead again, for a moment
    /// ([`BYPASS_TRIES`] yields; no clock: the coarse one ticks in milliseconds, and what was
    /// measured is the count). A critical section shorter than that
    /// ends meanwhile, and the request goes on running instead of joining a queue of sleepers
    /// that is served one wake-up at a time (the convoy that kept bounded tables below flock
    /// at 8–64 processes with short critical sections).
    #[cold]
    fn bypass_for_a_moment<'a>(
        &'a self,
        region: &'a Region,
        me: Registration,
        pid: u32,
    ) -> Option<TokenGuard<'a>> {
        let ring = region.ring();
        for _ in 0..BYPASS_TRIES {
            std::thread::yield_now();
            if ring.queued() == 0 || region.retired() {
                return None; // the claim is granted at once, or the table is gone
            }
            if let Some(g) = self.bypass(region, me, pid) {
                return Some(g);
            }
        }
        None
    }

    /// Everything the fast path did not finish, from where it stopped. The API edge of the
    /// slow path: a broken ring that could not be repaired becomes the public
    /// [`Error::Corrupted`] here, and only here.
    #[cold]
    fn slow<'a>(&'a self, ask: Ask<'_>, fast: Fast<'a>) -> Result<Option<TokenGuard<'a>>> {
        self.slow_steps(ask, fast).map_err(|f| match f {
            Failed::Broken(b) => self.broken(b),
            Failed::Error(e) => e,
        })
    }

    /// [`Self::slow`] before the edge: decides on a broken ring by its own type.
    fn slow_steps<'a>(
        &'a self,
        ask: Ask<'_>,
        fast: Fast<'a>,
    ) -> Result<Option<TokenGuard<'a>>, Failed> {
        let first = match fast {
            Fast::Granted(g) => return Ok(Some(g)),
            Fast::Claimed(region, tk) => self.wait_for_grant(region, tk, ask),
            Fast::Missed => self.claim_and_wait(ask),
        };
        match first {
            // The queue may be inconsistent (overwritten bytes): repair it when that is safe,
            // then try once more. Never a permanent outage (see `repair`).
            Err(Failed::Broken(_)) if self.recover(self.table()?)? => self.claim_and_wait(ask),
            other => other,
        }
    }

    fn claim_and_wait(&self, ask: Ask<'_>) -> Result<Option<TokenGuard<'_>>, Failed> {
        match self.claim(ask)? {
            Some(Claimed::Queued(region, tk)) => self.wait_for_grant(region, tk, ask),
            Some(Claimed::Holding(g)) => Ok(Some(g)),
            None => Ok(None),
        }
    }

    /// Enters the queue of the current table (waiting for a slot if the ring is full) and
    /// publishes the request — or, in a bounded table, takes the token ahead of the queue.
    /// `None`: no slot within `patience`.
    fn claim(&self, ask: Ask<'_>) -> Result<Option<Claimed<'_>>, Failed> {
        let Ask {
            share, patience, ..
        } = ask;
        let (pid, _) = sys::current_identity();
        self.check_parent(pid)?;
        let region = self.table()?;
        region.check_at_path()?;
        let me = region.register()?;
        let ring = region.ring();
        if ring.is_bounded()
            && share == Share::Exclusive
            && ask.route == Route::Any
            && let Some(g) = self.bypass(region, me, pid).or_else(|| {
                if matches!(patience, Patience::NoWait) {
                    return None;
                }
                self.bypass_for_a_moment(region, me, pid)
            })
        {
            return Ok(Some(Claimed::Holding(g)));
        }
        let tk = match patience {
            Patience::NoWait => {
                // Busy, or held by a dead process: one head check (cold) tells which, so a
                // dead holder never blocks callers that only ever try.
                let busy =
                    |ring: &crate::ring::Ring<'_>| share == Share::Exclusive && !ring.is_idle();
                if busy(ring) {
                    ring.check_head(&region.liveness())
                        .map_err(Failed::Broken)?;
                    if busy(ring) {
                        return Ok(None);
                    }
                }
                match ring.try_claim(share, me) {
                    Claim::Claimed(tk) => tk,
                    Claim::Broken(b) => return Err(Failed::Broken(b)),
                    Claim::Full | Claim::Retry => return Ok(None),
                }
            }
            Patience::Until(_) | Patience::Forever => {
                let mut waiter = Waiter {
                    deadline: patience.deadline(),
                    liveness: &region.liveness(),
                    check: || {
                        self.check_parent(pid)?;
                        region.check_at_path()
                    },
                };
                let claimed = match ask.cancel {
                    None => wait::claim(ring, share, me, &mut waiter),
                    Some(c) => wait::claim_on(&c.parker(), ring, share, me, &mut waiter),
                };
                match claimed {
                    Ok(Some(tk)) => tk,
                    Ok(None) => return Ok(None),
                    Err(w) => return Err(Failed::of_wait(self, w)),
                }
            }
        };
        ring.publish(tk, me.generation, self.creator.0, sys::coarse_now_ns());
        Ok(Some(Claimed::Queued(region, tk)))
    }

    /// After a published claim: leave a table retired meanwhile, else wait for the grant
    /// within `patience`; on any outcome but a grant, leave the queue.
    fn wait_for_grant<'a>(
        &'a self,
        region: &'a Region,
        tk: Ticket,
        ask: Ask<'_>,
    ) -> Result<Option<TokenGuard<'a>>, Failed> {
        let patience = ask.patience;
        let ring = region.ring();
        let pid = sys::current_identity().0;
        if ring.is_bounded() {
            // Bypassers compare this with their clock: the fast path's coarse one is too coarse.
            ring.set_since(tk, sys::now_ns());
        }
        if region.retired() {
            // The last owner retired this table after we looked: leave it, use the new one.
            let _ = ring.release(tk);
            return self.slow_steps(ask, Fast::Missed);
        }
        // Every sleep timeout (a few ms): the parent is alive, the table still at its path.
        let check = || {
            self.check_parent(pid)?;
            region.check_at_path()
        };
        let outcome = match (patience, ring.grant(tk)) {
            (_, Ok(Grant::Granted)) => Ok(Outcome::Granted),
            (_, Err(b)) => Err(WaitError::Broken(b)),
            (Patience::NoWait, Ok(Grant::Waiting { .. })) => {
                match wait::last_look(ring, tk, &region.liveness()) {
                    Ok(Grant::Granted) => Ok(Outcome::Granted),
                    Ok(Grant::Waiting { .. }) => Ok(Outcome::TimedOut),
                    Err(b) => Err(WaitError::Broken(b)),
                }
            }
            (_, Ok(Grant::Waiting { .. }))
                if ring.held_by_this_thread_before(tk)
                    || ring.bypass_held_by_this_thread(tk.word) =>
            {
                // Tokens are not re-entrant: this thread would wait for itself forever.
                Err(WaitError::Check(Error::WouldDeadlock {
                    path: region.path().to_path_buf(),
                }))
            }
            (_, Ok(Grant::Waiting { .. })) => {
                let mut waiter = Waiter {
                    deadline: patience.deadline(),
                    liveness: &region.liveness(),
                    check,
                };
                match ask.cancel {
                    None => wait::until_granted(ring, tk, &mut waiter),
                    Some(c) => wait::until_granted_on(&c.parker(), ring, tk, &mut waiter),
                }
            }
        };
        // Bounded tables: a granted request waits for a bypasser inside to leave.
        let mut bypass_died = false;
        let outcome = match outcome {
            Ok(Outcome::Granted) if ring.is_bounded() => {
                if ring.bypass_held_by_this_thread(tk.word) {
                    Err(WaitError::Check(Error::WouldDeadlock {
                        path: region.path().to_path_buf(),
                    }))
                } else {
                    let mut waiter = Waiter {
                        deadline: match patience {
                            Patience::NoWait => Some(Instant::now()),
                            other => other.deadline(),
                        },
                        liveness: &region.liveness(),
                        check,
                    };
                    let entered = match ask.cancel {
                        None => wait::until_entered(ring, tk, &mut waiter),
                        Some(c) => wait::until_entered_on(&c.parker(), ring, tk, &mut waiter),
                    };
                    match entered {
                        Ok(Entered::Clear { died }) => {
                            bypass_died = died;
                            Ok(Outcome::Granted)
                        }
                        Ok(Entered::TimedOut) => Ok(Outcome::TimedOut),
                        Err(e) => Err(e),
                    }
                }
            }
            other => other,
        };
        // A forked child's parent may have died while it waited: then the token is void.
        let outcome = match outcome {
            Ok(Outcome::Granted) if pid != self.creator.0 => match check() {
                Ok(()) => Ok(Outcome::Granted),
                Err(e) => Err(WaitError::Check(e)),
            },
            other => other,
        };
        match outcome {
            Ok(Outcome::Granted) => {
                ring.set_since(tk, sys::coarse_now_ns()); // now "held since", for status
                Ok(Some(self.holding(region, tk, pid, bypass_died)))
            }
            Ok(Outcome::TimedOut) => {
                ring.release(tk).map_err(Failed::Broken)?;
                Ok(None)
            }
            Err(e) => {
                let _ = ring.release(tk);
                Err(Failed::of_wait(self, e))
            }
        }
    }
}

/// Why a step of the slow path failed, before the API edge ([`LockTicket::slow`]): a broken
/// ring, which the slow path may repair and then ask again, or an error to report as it is.
/// The slow path decides on the ring's own [`Broken`], never on the public
/// [`Error::Corrupted`] it becomes at the edge.
#[derive(Debug)]
enum Failed {
    /// The ring makes no sense (see `Ring::inconsistency_of`).
    Broken(Broken),
    /// Anything else, reported as it is.
    Error(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        Failed::Error(e)
    }
}

impl Failed {
    /// What a failed wait in `lt`'s table means for the slow path.
    fn of_wait(lt: &LockTicket, e: WaitError<Error>) -> Failed {
        match e {
            WaitError::Broken(b) => Failed::Broken(b),
            WaitError::Check(e) => Failed::Error(e),
            WaitError::Cancelled => Failed::Error(Error::Cancelled {
                path: lt.path.clone(),
            }),
        }
    }
}

/// What a claim got.
enum Claimed<'a> {
    /// A published request in the queue.
    Queued(&'a Region, Ticket),
    /// The token, ahead of the queue (bounded tables).
    Holding(TokenGuard<'a>),
}

/// What the fast path got.
enum Fast<'a> {
    /// The token.
    Granted(TokenGuard<'a>),
    /// A published claim that must wait (or a retired table to leave).
    Claimed(&'a Region, Ticket),
    /// Nothing: take the slow path.
    Missed,
}

/// A held token. Released on [`unlock`](Self::unlock) or drop (the original's
/// `TokenUnlock()`); dropped in a forked child, it does nothing.
///
/// Like std's `MutexGuard`, it stays in the thread that took it (it is not `Send`): that is
/// what lets a thread that asks again for a token it holds get
/// [`Error::WouldDeadlock`] instead of waiting for itself.
///
/// ```compile_fail
/// # let lt = lockticket::LockTicket::open("doc-not-send").unwrap();
/// let guard = lt.token_lock().unwrap();
/// std::thread::spawn(move || drop(guard)); // error: `TokenGuard` cannot be sent
/// ```
#[must_use = "the token is released when the guard is dropped"]
pub struct TokenGuard<'a> {
    /// The table it was taken in (borrowed from the handle, which keeps it mapped).
    region: &'a Region,
    /// What is held (see `crate::raw`).
    raw: RawToken,
    /// Not `Send`, like std's `MutexGuard`: a token is released by the thread that took it,
    /// which is what lets a thread that asks again for it get an error instead of waiting
    /// for itself.
    /// (`MutexGuard` is `Sync` and not `Send`: exactly the auto traits wanted here.)
    _not_send: std::marker::PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl std::fmt::Debug for TokenGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGuard")
            .field("path", &self.region.path())
            .field("share", &self.share())
            .field("ticket", &self.raw.ticket_number())
            .field("pid", &self.raw.pid())
            .field("previous_holder_died", &self.raw.died())
            .finish()
    }
}

impl TokenGuard<'_> {
    /// True when the previous holder died while holding the token (like `EOWNERDEAD`): the
    /// state it protected may be half-updated; repair it before relying on it.
    pub fn previous_holder_died(&self) -> bool {
        self.raw.died()
    }

    /// Exclusive or shared.
    pub fn share(&self) -> Share {
        self.raw.share()
    }

    /// The fencing token of this grant: larger than that of every grant of this table before
    /// it (see [`Guard::fencing_token`](crate::Guard::fencing_token)); the same on every call.
    /// Taken from the table's counter the first time it is asked for, so the lock path pays
    /// nothing for it.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let dir = std::env::temp_dir();
    /// # let name = format!("doc-fence-{}", std::process::id());
    /// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
    /// let _owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let first = lt.token_lock()?.fencing_token();
    /// let second = lt.token_lock()?.fencing_token();
    /// assert!(second > first);
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.raw.fencing_token(self.region)
    }

    /// Releases the token. Fails if the table was corrupted meanwhile; with
    /// [`Error::NotOwner`] in a forked child that inherited the guard (the token stays the
    /// parent's); and with [`Error::TableRemoved`] (after releasing) when the table file was
    /// found removed or replaced while the token was held: processes that opened the path
    /// afterwards were not excluded.
    pub fn unlock(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        this.release()
    }

    /// For a token in a keyed table (a handle given its lock file, see
    /// [`LockTicket::set_lock_file`]): a new descriptor (`dup`, close-on-exec) of the open
    /// file description that holds the kernel `flock` on the lock file (`LOCK_EX` for an
    /// exclusive token, `LOCK_SH` for a shared one), which keeps processes that use another
    /// table for the same file (another directory, another `/dev/shm`) and plain flock(1)
    /// users excluded. The lock stays as long as some copy of the description is open, until
    /// this guard is released (which unlocks it for every copy).
    /// [`LockTicket::hold_across_exec`] hands it to the exec guardian by itself. `Ok(None)`
    /// for an ordinary table.
    ///
    /// ```
    /// # fn main() -> lockticket::Result<()> {
    /// # let lock_file = std::env::temp_dir().join(format!("doc-lock-file-fd-{}", std::process::id()));
    /// std::fs::write(&lock_file, b"").unwrap(); // a flock(1) user's lock file
    /// let table = lockticket::table_for_lock_file(&lock_file, None)?.unwrap();
    /// let lt = lockticket::LockTicket::open(&table)?;
    /// lt.set_lock_file(&lock_file)?;
    /// let owner = lt.main_lock(lockticket::Share::Shared)?;
    /// let token = lt.token_lock()?;
    /// assert!(token.lock_file_description()?.is_some()); // flock(1) on the file waits now
    /// token.unlock()?;
    /// owner.unlock()?;
    /// # std::fs::remove_file(&lock_file).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn lock_file_description(&self) -> Result<Option<std::fs::File>> {
        self.region.kernel_lock_description(self.raw.key())
    }

    #[inline]
    fn release(&self) -> Result<()> {
        self.raw.release(self.region)
    }
}

impl Drop for TokenGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        let _ = self.release();
    }
}

impl<'a> TokenGuard<'a> {
    /// The table it was taken in.
    pub(crate) fn region(&self) -> &'a Region {
        self.region
    }

    /// The table and the raw token, without releasing it: for a token handed over to another
    /// shape (an owned guard) or owner (the descriptor form, `crate::fd`).
    pub(crate) fn into_raw(self) -> (&'a Region, RawToken) {
        // The guard is never dropped (no release): its raw token lives on in the copy.
        let this = std::mem::ManuallyDrop::new(self);
        (this.region, this.raw.clone())
    }
}

impl crate::guard::Guard for TokenGuard<'_> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The slow path decides on a broken ring by the ring's own type: a failed wait on a
    /// broken ring is `Failed::Broken` (which the slow path may repair), everything else is
    /// reported as it is; only the edge turns a broken ring into the public `Corrupted`, with
    /// the ring's words.
    #[test]
    fn the_slow_path_decides_on_broken_not_on_corrupted() {
        let dir = std::env::temp_dir();
        let lt = LockTicket::builder("token-failed-unit")
            .directory(&dir)
            .open()
            .unwrap();
        let broken = || crate::ring::Broken("slot of ticket 7 expected lap 0".into());
        assert!(matches!(
            Failed::of_wait(&lt, WaitError::Broken(broken())),
            Failed::Broken(_)
        ));
        assert!(matches!(
            Failed::of_wait(&lt, WaitError::Cancelled),
            Failed::Error(Error::Cancelled { path }) if path == lt.path()
        ));
        // A public Corrupted from a check (not the ring) is reported, never taken for a
        // broken ring.
        let check = lt.corrupted("a check");
        assert!(matches!(
            Failed::of_wait(&lt, WaitError::Check(check)),
            Failed::Error(Error::Corrupted { .. })
        ));
        match lt.broken(broken()) {
            Error::Corrupted { detail, .. } => {
                assert_eq!(detail, "slot of ticket 7 expected lap 0")
            }
            other => panic!("{other:?}"),
        }
    }
}
