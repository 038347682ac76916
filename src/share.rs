//! [`Share`]: the mode of a main lock or a token, used from the ring up to the public API.

/// Exclusive or shared: the mode of a main lock or a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Share {
    /// One holder at a time (the original's `MainLock()`; a writer's token).
    Exclusive,
    /// Many holders together (the original's `MainLock(1)`; a reader's token).
    Shared,
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Share::Exclusive => "exclusive",
            Share::Shared => "shared",
        })
    }
}
