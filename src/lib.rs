//! # lockticket
//!
//! FIFO, crash-proof locks between the processes of one machine, and a small value they can
//! hand each other — all in a memory-mapped **lock table** file on tmpfs. The successor of
//! Perl's `IPC::LockTicket`.
//!
//! * **Main lock** — registers the owning processes of a table, exclusive or shared. The last
//!   owner to leave removes the file; a table whose owners all died is reclaimed.
//! * **Token lock** — a strictly first-come-first-served lock in exclusive and shared modes.
//!   A holder or waiter killed even by `SIGKILL` never blocks the others for long: its slot
//!   is reclaimed after a liveness check that is immune to PID reuse.
//! * **Payload** — a small value (a path, a row id) kept in its own mapped region; readers
//!   always see a complete value.
//!
//! ```
//! use lockticket::{LockTicket, Share};
//!
//! # fn main() -> lockticket::Result<()> {
//! # let dir = std::env::temp_dir();
//! # let name = format!("doc-example-{}", std::process::id());
//! let lt = LockTicket::builder(&name).directory(&dir).open()?;
//! let owner = lt.main_lock(Share::Shared)?;   // create the table, or join it
//! {
//!     let token = lt.token_lock()?;           // FIFO, exclusive; other processes wait
//!     if token.previous_holder_died() {
//!         // the last holder was killed holding the token: repair what it protected
//!     }
//!     // ... critical section ...
//! }                                           // released on drop
//! owner.unlock()?;                            // the last owner out removes the table
//! # Ok(()) }
//! ```
//!
//! ## Handing a value to the next holder
//!
//! The payload is a small value kept in its own mapped region: a path to a file holding big
//! data, a row id, a small struct. Readers take no lock and always get a complete value (the
//! previous one, or the new one whole), even when a writer is killed mid-write.
//!
//! ```
//! use lockticket::{LockTicket, Share};
//!
//! # fn main() -> lockticket::Result<()> {
//! # let name = format!("doc-handoff-{}", std::process::id());
//! let lt = LockTicket::open(&name)?;
//! let _owner = lt.main_lock(Share::Shared)?;
//! {
//!     let _token = lt.token_lock()?;
//!     // ... write the job's data to a file, then tell the next holder where it is:
//!     lt.set_payload(b"/var/tmp/job-17.json")?;
//! }
//! // The next holder (any process with the table open):
//! let _token = lt.token_lock()?;
//! let (path, generation) = lt.payload_with_generation()?;
//! assert_eq!(path, b"/var/tmp/job-17.json");
//! assert_eq!(generation, 1); // one value written so far
//! # Ok(()) }
//! ```
//!
//! Typed values: [`LockTicket::set_payload_pod`] / [`LockTicket::payload_pod`] for
//! `bytemuck::Pod` types, and `set_data` / `data` for any serde type with the `serde` feature.
//!
//! Child processes take tokens on the handle their parent opened (after `fork`), or open the
//! same name themselves. A child made by `fork(3)` never keeps its parent's tokens alive: when
//! the parent dies, its tokens are reclaimed even while the child runs on (a raw
//! `clone`/`syscall(SYS_fork)` child until its first call on the handle: docs/design.md). See `docs/design.md` for the algorithm and its crash analysis,
//! `docs/format.md` for the file layout, and `docs/migration.md` for the Perl original's calls.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod async_lock;
mod async_wait;
mod cancel;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod fairness;
mod fd;
mod guard;
mod handle;
pub mod layout;
mod liveness;
mod lock_file;
mod locks;
mod main_lock;
mod members;
mod name;
mod owned;
mod park;
mod path;
mod patience;
mod payload;
mod procs;
mod raw;
mod region;
mod repair;
mod request;
mod ring;
mod share;
mod status;
mod sys;
mod token;
mod wait;

/// Entry points for the fuzz targets (`fuzz/`); not a public API. They exist only under
/// `--cfg fuzzing`, which cargo-fuzz sets (and `fuzz/.cargo/config.toml` for `cargo check`).
/// The file format itself is the public [`layout`] module.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::payload::{PayloadError, PayloadValue, decode, region_len};
    pub use crate::ring::model::{Op, run, run_bytes};
}

pub use async_lock::{AsyncTokenGuard, LockFuture, OwnedLockFuture};
pub use cancel::Cancel;
pub use error::{DescriptorProblem, Error, IoOp, Removal, Result};
pub use fairness::{Fairness, ParseFairnessError};
pub use fd::{FdLock, table_for_lock_fd};
pub use guard::Guard;
pub use handle::{Builder, ExecGuardian, LockTicket};
pub use layout::HeaderError;
pub use lock_file::FdHolders;
pub use locks::TokenLocks;
pub use main_lock::MainGuard;
pub use name::{MAX_NAME_LEN, is_table_name};
pub use owned::{Held, OwnedMainGuard, OwnedTokenGuard, hold};
pub use path::{
    DEFAULT_DIRECTORIES, default_directory, is_table_path, table_file_name, table_for_lock_file,
    table_name, temp_file_creator, temp_file_table,
};
pub use patience::Patience;
pub use region::Repaired;
pub use request::TokenRequest;
pub use share::Share;
pub use status::{MemberInfo, Status, TokenInfo};
pub use token::TokenGuard;

/// The README's examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

#[cfg(test)]
mod tests {
    /// `LockTicket` is shared between threads; guards stay in theirs.
    #[test]
    fn public_types_are_send_sync_and_debug() {
        fn send_sync<T: Send + Sync>() {}
        fn debug<T: std::fmt::Debug>() {}
        send_sync::<crate::LockTicket>();
        send_sync::<crate::Error>();
        send_sync::<crate::Status>();
        debug::<crate::LockTicket>();
        debug::<crate::Builder>();
        debug::<crate::MainGuard<'_>>();
        debug::<crate::TokenGuard<'_>>();
        debug::<crate::Status>();
        debug::<crate::Share>();
    }
}
