//! The table-name rule: what a bare word must be to name a table (`[-_A-Za-z0-9]{1,218}`).
//!
//! A leaf: no I/O and no errors, so that both `path` (which places names in directories and
//! reports [`Error::InvalidName`](crate::Error::InvalidName)) and `error` (whose message
//! states the rule) use it without importing each other.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Longest table name, as in the Perl original (`[-_A-Za-z0-9]{1,218}`). The one source of
/// the rule: the error message and the checks use it.
///
/// ```
/// assert!(lockticket::is_table_name(std::ffi::OsStr::new(&"x".repeat(lockticket::MAX_NAME_LEN))));
/// ```
pub const MAX_NAME_LEN: usize = 218;

/// True for a valid table name: `[-_A-Za-z0-9]{1,MAX_NAME_LEN}` (a bare word that
/// [`LockTicket::open`](crate::LockTicket::open) places in the default directory).
///
/// ```
/// use std::ffi::OsStr;
///
/// assert!(lockticket::is_table_name(OsStr::new("backup-2")));
/// assert!(!lockticket::is_table_name(OsStr::new("./backup")));
/// ```
pub fn is_table_name(s: &OsStr) -> bool {
    let b = s.as_bytes();
    (1..=MAX_NAME_LEN).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}
