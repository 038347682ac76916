//! What every token guard answers, whatever its shape (borrowed, owned, async) and backend
//! (a local table, etcd): code written against [`Guard`] works with all of them.

use crate::share::Share;

/// The questions every token guard answers. Implemented by every guard of the crate; in
/// scope with `use lockticket::*`.
///
/// ```
/// use lockticket::{Guard, LockTicket, Share};
/// # fn main() -> lockticket::Result<()> {
/// # let dir = std::env::temp_dir();
/// # let name = format!("doc-guard-{}", std::process::id());
/// fn report(g: &impl Guard) -> String {
///     format!("{} token #{}, previous holder died: {}",
///         g.share(), g.fencing_token(), g.previous_holder_died())
/// }
/// let lt = LockTicket::builder(&name).directory(&dir).open()?;
/// let _owner = lt.main_lock(Share::Shared)?;
/// let token = lt.token_lock()?;
/// assert!(report(&token).starts_with("exclusive token #"));
/// # Ok(()) }
/// ```
pub trait Guard {
    /// Exclusive or shared.
    fn share(&self) -> Share;

    /// True when the previous holder died holding the token (like `EOWNERDEAD`; over etcd:
    /// its lease ended instead of a release): the state it protected may be half-updated.
    fn previous_holder_died(&self) -> bool;

    /// A number that is larger for every later grant of the same table (shared holders
    /// granted together may share one), for *fencing*: a resource that remembers the largest
    /// token it has seen can refuse a write from a holder that was overtaken (paused, lost its
    /// lease) — the one way to make a lock hold across a pause of its holder. Stable for the
    /// life of the guard.
    fn fencing_token(&self) -> u64;

    /// True once the guard can no longer prove it holds the token (over etcd: its lease could
    /// have expired). A local token is never lost while its guard lives.
    fn lost(&self) -> bool {
        false
    }
}
