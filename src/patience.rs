//! `Patience`: how long a request may wait — a value every way of asking for a lock shares
//! (the token calls, the descriptor form, the lock file's kernel lock, the async and etcd
//! forms).

use std::time::{Duration, Instant};

/// How long a token request may wait (see [`TokenRequest::patience`]).
///
/// [`TokenRequest::patience`]: crate::TokenRequest::patience
///
/// ```
/// use std::time::{Duration, Instant};
/// use lockticket::Patience;
/// # fn main() -> lockticket::Result<()> {
/// # let dir = std::env::temp_dir();
/// # let name = format!("doc-patience-{}", std::process::id());
/// let lt = lockticket::LockTicket::builder(&name).directory(&dir).open()?;
/// let _owner = lt.main_lock(lockticket::Share::Shared)?;
/// // A command-line tool's -n / -w SECONDS, decided once:
/// let patience = Patience::Until(Instant::now() + Duration::from_secs(2));
/// assert!(lt.request().patience(patience).lock()?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Not at all: granted now or never, leaving no trace in the queue.
    NoWait,
    /// Until this instant at the latest.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

impl Patience {
    /// The instant it ends, if it is one.
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Patience::Until(d) => Some(d),
            Patience::NoWait | Patience::Forever => None,
        }
    }
}

/// Patience for at most `timeout` from now (a timeout too far to name an instant waits as
/// long as it takes).
pub(crate) fn patience_for(timeout: Duration) -> Patience {
    match Instant::now().checked_add(timeout) {
        Some(d) => Patience::Until(d),
        None => Patience::Forever,
    }
}
