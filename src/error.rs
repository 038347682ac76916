//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use crate::layout::HeaderError;
use crate::share::Share;

/// Everything that can go wrong, each variant saying what happened and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name is neither a table name nor a path.
    #[error(
        "invalid table name {name:?}: a name is 1 to {max} characters from A-Z a-z 0-9 - _; \
         give a path as /absolute, ./relative or ../relative",
        max = crate::name::MAX_NAME_LEN
    )]
    InvalidName {
        /// What was given.
        name: String,
    },
    /// A builder option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// No candidate directory for a named table is usable.
    #[error(
        "no usable directory for lock tables: none of {candidates} exists and is writable; \
         choose one with LockTicket::builder(..).directory(..)"
    )]
    NoDirectory {
        /// The directories tried.
        candidates: String,
    },
    /// A system call on the table failed.
    ///
    /// The OS error is part of the message and is not also given as
    /// [`source`](std::error::Error::source), so that an error chain prints it once.
    #[error("{path}: {op} failed: {cause}", path = path.display())]
    Io {
        /// The table path.
        path: PathBuf,
        /// What we were doing.
        op: IoOp,
        /// The OS error.
        cause: io::Error,
    },
    /// The path is a symbolic link; tables are never opened through one.
    #[error(
        "{path}: is a symbolic link; lock tables are never opened through symlinks \
         (remove it, or give the real path)",
        path = path.display()
    )]
    Symlink {
        /// The table path.
        path: PathBuf,
    },
    /// Something other than a regular file is at the path.
    #[error("{path}: is {kind}, not a lock table file; remove it or choose another name",
        path = path.display())]
    NotARegularFile {
        /// The table path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The existing file grants more access than requested ("doubtful permissions").
    #[error(
        "{path}: doubtful permissions: {reason}; fix its owner/mode, or remove it if no \
         process uses it",
        path = path.display()
    )]
    DoubtfulPermissions {
        /// The table path.
        path: PathBuf,
        /// Which rule it breaks.
        reason: String,
    },
    /// The table would live on a network filesystem.
    #[error(
        "{path}: is on a network filesystem ({fs}); a shared mapping is not coherent across \
         hosts, so locks there would not exclude anything: use a local directory such as \
         /dev/shm",
        path = path.display()
    )]
    NetworkFilesystem {
        /// The table path.
        path: PathBuf,
        /// The filesystem.
        fs: &'static str,
    },
    /// A lock file (see [`table_for_lock_file`](crate::table_for_lock_file)) on a network
    /// filesystem: flock(1) would lock it across hosts, a lock table only on this machine.
    #[error(
        "{path}: the lock file is on a network filesystem ({fs}): a lock table would exclude \
         only the processes of this machine, where flock would lock across hosts; use a \
         local path or a table name",
        path = path.display()
    )]
    LockFileOnNetwork {
        /// The lock file.
        path: PathBuf,
        /// The filesystem.
        fs: &'static str,
    },
    /// A descriptor given to the descriptor form ([`LockTicket::lock_fd`],
    /// [`LockTicket::unlock_fd`], `lockticket exec FD`) cannot be used for it. (The previous
    /// release reported these as [`Error::InvalidOption`].)
    ///
    /// [`LockTicket::lock_fd`]: crate::LockTicket::lock_fd
    /// [`LockTicket::unlock_fd`]: crate::LockTicket::unlock_fd
    #[error("{path}: {problem}", path = path.display())]
    BadDescriptor {
        /// What the descriptor names: the path the kernel shows, else `descriptor N`.
        path: PathBuf,
        /// What is wrong with it.
        problem: DescriptorProblem,
    },
    /// The bytes at the path are not a lock table this version can use.
    #[error("{path}: {}", invalid_advice(reason), path = path.display())]
    InvalidTable {
        /// The table path.
        path: PathBuf,
        /// What is wrong with it.
        reason: HeaderError,
    },
    /// The table was written by a newer lockticket.
    #[error(
        "{path}: table format version {found} is newer than this lockticket supports \
         ({supported}); upgrade lockticket, or remove the table once no process uses it",
        path = path.display()
    )]
    UnsupportedVersion {
        /// The table path.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
    /// Token or payload call on a table that does not exist.
    #[error(
        "{path}: no lock table exists; take the main lock first (main_lock) to create it",
        path = path.display()
    )]
    NotCreated {
        /// The table path.
        path: PathBuf,
    },
    /// The table this handle mapped has been removed by its last owner.
    #[error("{path}: the lock table was removed by its last owner; take the main lock again",
        path = path.display())]
    Removed {
        /// The table path.
        path: PathBuf,
    },
    /// The main lock is held by live processes in a conflicting mode.
    #[error("{path}: the main lock is held ({share}) by live process(es) {pids:?}",
        path = path.display())]
    MainLockBusy {
        /// The table path.
        path: PathBuf,
        /// Their mode.
        share: Share,
        /// Their PIDs.
        pids: Vec<u32>,
    },
    /// This process registered already.
    #[error("{path}: this process (pid {pid}) holds the main lock already",
        path = path.display())]
    AlreadyRegistered {
        /// The table path.
        path: PathBuf,
        /// Our PID.
        pid: u32,
    },
    /// The registry is full.
    #[error(
        "{path}: all {capacity} main-lock entries are in use; create the table with a larger \
         registry (builder().member_capacity(..))",
        path = path.display()
    )]
    RegistryFull {
        /// The table path.
        path: PathBuf,
        /// Entries in the table.
        capacity: u32,
    },
    /// The process that created this handle has exited: a child's tokens are void.
    #[error(
        "{path}: the process that created this handle (pid {parent}) has exited; a child's \
         token is void once its parent is gone",
        path = path.display()
    )]
    ParentGone {
        /// The table path.
        path: PathBuf,
        /// The parent's PID.
        parent: u32,
    },
    /// The table file this handle uses was removed or replaced under its users (`rm`,
    /// systemd-logind's `RemoveIPC=yes`, `mv`): processes that open the path now use another
    /// file. With `holder` (from a holder's `unlock()`): the token was released, but exclusion
    /// with those processes was not guaranteed while it was held.
    #[error(
        "{path}: the lock table file in use was {what} while in use (rm, systemd-logind \
         RemoveIPC=yes, mv?); processes that open this path now use another file{}; stop \
         every user and start again, and place tables where nothing removes them (see \
         docs/design.md, \"Removal\")",
        if *holder {
            ", so exclusion with them was not guaranteed while this token was held"
        } else {
            ""
        },
        path = path.display()
    )]
    TableRemoved {
        /// The table path.
        path: PathBuf,
        /// Removed, or replaced by another file.
        what: Removal,
        /// Reported by a holder's `unlock()`.
        holder: bool,
    },
    /// Every entry of the table's process table is held by a live process.
    #[error(
        "{path}: the table's process table is full ({capacity} processes use it); wait for \
         some to exit, or, once nobody uses the table, recreate it with more entries \
         (`Builder::process_capacity`, or `lockticket exec --process-capacity N`)",
        path = path.display()
    )]
    ProcessTableFull {
        /// The table path.
        path: PathBuf,
        /// Its capacity.
        capacity: u32,
    },
    /// A guard was used in a process that did not take it: a child inherited it through a
    /// fork. The lock it stands for is the parent's; it is neither released nor changed.
    #[error(
        "{path}: this {what} guard belongs to process {owner}, which this process (pid {pid}) \
         was forked from; only the process that took it can release it (the child's copy \
         does nothing, also on drop)",
        path = path.display()
    )]
    NotOwner {
        /// The table path.
        path: PathBuf,
        /// "token" or "main lock".
        what: &'static str,
        /// The PID of the process that took the guard.
        owner: u32,
        /// This process's PID.
        pid: u32,
    },
    /// The table's shared state makes no sense (overwritten by another process, or our
    /// registration was taken away).
    #[error(
        "{path}: the lock table is corrupted: {detail}; stop its users and remove the file",
        path = path.display()
    )]
    Corrupted {
        /// The table path.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The token queue is inconsistent (bytes overwritten, or a bug) and live processes have
    /// requests in it, so it was not rebuilt automatically.
    #[error(
        "{path}: the lock table's token queue is inconsistent ({detail}) and live process(es) \
         {live:?} have requests in it; once none of them holds the token, run \
         `lockticket repair {path}` (it keeps their requests in order)",
        path = path.display()
    )]
    Inconsistent {
        /// The table path.
        path: PathBuf,
        /// What is inconsistent.
        detail: String,
        /// Live processes with requests in the queue.
        live: Vec<u32>,
    },
    /// [`LockTicket::repair`](crate::LockTicket::repair) refused: live processes hold the
    /// token.
    #[error(
        "{path}: not repaired ({detail}): live process(es) {holders:?} hold the token; let them \
         unlock (or stop them) and run the repair again",
        path = path.display()
    )]
    RepairRefused {
        /// The table path.
        path: PathBuf,
        /// What is inconsistent.
        detail: String,
        /// Live holders.
        holders: Vec<u32>,
    },
    /// The table was created with another fairness mode than the one asked for
    /// ([`Builder::fairness`](crate::Builder::fairness), `lockticket exec --fairness`).
    #[error(
        "{path}: the lock table was created with {table} fairness, not the {requested} asked \
         for; every process must use the table's mode: ask for {table} (or for no mode, which \
         takes the table's), or create the table anew once no process uses it",
        path = path.display()
    )]
    FairnessMismatch {
        /// The table path.
        path: PathBuf,
        /// The mode recorded in the table.
        table: crate::fairness::Fairness,
        /// The mode asked for.
        requested: crate::fairness::Fairness,
    },
    /// The calling thread asked for a token that would wait for a token the same thread
    /// holds (tokens are not re-entrant): it would wait forever.
    #[error(
        "{path}: this thread already holds a token of this table that the new request would \
         wait for (tokens are not re-entrant); release it first",
        path = path.display()
    )]
    WouldDeadlock {
        /// The table path.
        path: PathBuf,
    },
    /// The request was cancelled through its [`Cancel`](crate::Cancel) handle before it was
    /// granted; it left the queue without a trace.
    #[error("{path}: the token request was cancelled before it was granted (nothing is held)", path = path.display())]
    Cancelled {
        /// The table path.
        path: PathBuf,
    },
    /// A payload larger than the table's payload capacity.
    #[error(
        "{path}: a payload of {len} bytes does not fit the table's capacity of {capacity} \
         bytes; store a path to the data instead, or create the table with a larger \
         payload_capacity",
        path = path.display()
    )]
    PayloadTooLarge {
        /// The table path.
        path: PathBuf,
        /// Bytes given.
        len: u64,
        /// Capacity.
        capacity: u64,
    },
    /// Writers kept replacing the payload while it was being read: nothing is wrong with the
    /// table, but no whole copy could be taken.
    #[error(
        "{path}: the payload kept changing during {attempts} read attempts (writers are \
         replacing it continuously); try again",
        path = path.display()
    )]
    PayloadBusy {
        /// The table path.
        path: PathBuf,
        /// How many copies were attempted.
        attempts: u32,
    },
    /// A structured payload could not be encoded or decoded.
    #[error("{path}: payload encoding: {detail}", path = path.display())]
    PayloadEncoding {
        /// The table path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// etcd did not answer within the call deadline (every endpoint tried).
    #[cfg(feature = "etcd")]
    #[error(
        "etcd lock {name}: {op} failed: {detail}; check that the etcd members {endpoints} are \
         up and reachable from this host (or allow more time: EtcdBuilder::call_timeout)"
    )]
    EtcdUnavailable {
        /// The lock's name.
        name: String,
        /// What we were doing.
        op: &'static str,
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        detail: String,
    },
    /// etcd answered something this client does not understand, or refused the request.
    #[cfg(feature = "etcd")]
    #[error(
        "etcd lock {name}: {op} on {endpoint} failed: {detail}; lockticket needs etcd 3.4 or \
         later with its JSON gateway on the client URL (the default), without authentication"
    )]
    EtcdProtocol {
        /// The lock's name.
        name: String,
        /// The member that answered.
        endpoint: String,
        /// What we were doing.
        op: &'static str,
        /// What it answered.
        detail: String,
    },
    /// A guard on etcd can no longer prove it holds the token: its lease could have expired,
    /// or its key is gone. Another process may hold the lock now.
    #[cfg(feature = "etcd")]
    #[error(
        "etcd lock {name}: the token (fencing token {token}) is lost: {why}; another process \
         may hold the lock now, so stop acting on it and take the lock again (this process was \
         paused or cut off from etcd for longer than the lease TTL)"
    )]
    EtcdLost {
        /// The lock's name.
        name: String,
        /// The guard's fencing token.
        token: u64,
        /// Why.
        why: &'static str,
    },
    /// The session lease ended while a request waited in the queue: the request left it.
    #[cfg(feature = "etcd")]
    #[error(
        "etcd lock {name}: the session lease ({ttl:?}) expired while the request waited (the \
         process was paused, or etcd was unreachable, for longer than the TTL); the request \
         lost its place in the queue: ask again"
    )]
    EtcdLeaseExpired {
        /// The lock's name.
        name: String,
        /// The lease TTL.
        ttl: std::time::Duration,
    },
    /// [`LockTicket::hold_across_exec`](crate::LockTicket::hold_across_exec) was called in a
    /// process with more than one thread: its guardian follows the thread that forks it, so
    /// the registration could end while the process lives.
    #[error(
        "{path}: cannot hold the lock across exec: this process has {threads} threads; call          it from a single-threaded process, right before exec",
        path = path.display()
    )]
    NotSingleThreaded {
        /// The table path.
        path: PathBuf,
        /// The threads the process had.
        threads: u64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message for a file that is not a usable table: what it is first, and removal advice
/// only for a file that is (or was) a lock table.
fn invalid_advice(reason: &HeaderError) -> String {
    match reason {
        HeaderError::Empty => {
            "an empty file, not a lock table: lockticket leaves it alone (use another path)".into()
        }
        HeaderError::BadMagic { .. } => {
            format!("{reason}: lockticket leaves it alone (use another path)")
        }
        _ => format!("not a valid lock table: {reason}; if no process uses it, remove it"),
    }
}

/// What an I/O operation of [`Error::Io`] was doing: code that decides on it matches a
/// variant, and the message shows the same words as ever.
///
/// ```
/// use lockticket::{Error, IoOp};
/// let e = Error::Io {
///     path: "/dev/shm/lockticket-x.lt".into(),
///     op: IoOp::Open,
///     cause: std::io::Error::from_raw_os_error(libc_enoent()),
/// };
/// # fn libc_enoent() -> i32 { 2 }
/// assert!(e.to_string().contains(": open failed: "));
/// assert!(matches!(e, Error::Io { op: IoOp::Open, .. }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOp {
    /// `open`.
    Open,
    /// `read`.
    Read,
    /// `stat`.
    Stat,
    /// `fstat`.
    Fstat,
    /// `flock`.
    Flock,
    /// `mmap`.
    Map,
    /// `mmap payload`.
    MapPayload,
    /// `chmod`.
    Chmod,
    /// `allocate`.
    Allocate,
    /// `dup`.
    Dup,
    /// `open the table's directory`.
    OpenDirectory,
    /// `name the table`.
    NameTable,
    /// `link new table into place`.
    LinkIntoPlace,
    /// `remove table`.
    RemoveTable,
    /// `reopen for registration`.
    ReopenForRegistration,
    /// `reopen for the cold-path lock`.
    ReopenForColdPathLock,
    /// `F_OFD_SETLK`.
    RegistrationLock,
    /// `F_OFD_SETLK F_UNLCK`.
    RegistrationUnlock,
    /// `fork the exec guardian`.
    ForkExecGuardian,
    /// `fcntl F_GETFL`.
    DescriptorFlags,
    /// `open /proc/self/fd read-only`.
    OpenDescriptorReadOnly,
    /// `dup the lock file's description`.
    DupLockFileDescription,
    /// `open the lock file again`.
    OpenLockFileAgain,
    /// `make the path absolute (the current directory is gone?)`.
    MakeAbsolute,
    /// `start the async waiter thread`.
    StartAsyncWaiter,
}

impl IoOp {
    /// The words of the message.
    pub fn as_str(self) -> &'static str {
        match self {
            IoOp::Open => "open",
            IoOp::Read => "read",
            IoOp::Stat => "stat",
            IoOp::Fstat => "fstat",
            IoOp::Flock => "flock",
            IoOp::Map => "mmap",
            IoOp::MapPayload => "mmap payload",
            IoOp::Chmod => "chmod",
            IoOp::Allocate => "allocate",
            IoOp::Dup => "dup",
            IoOp::OpenDirectory => "open the table's directory",
            IoOp::NameTable => "name the table",
            IoOp::LinkIntoPlace => "link new table into place",
            IoOp::RemoveTable => "remove table",
            IoOp::ReopenForRegistration => "reopen for registration",
            IoOp::ReopenForColdPathLock => "reopen for the cold-path lock",
            IoOp::RegistrationLock => "F_OFD_SETLK",
            IoOp::RegistrationUnlock => "F_OFD_SETLK F_UNLCK",
            IoOp::ForkExecGuardian => "fork the exec guardian",
            IoOp::DescriptorFlags => "fcntl F_GETFL",
            IoOp::OpenDescriptorReadOnly => "open /proc/self/fd read-only",
            IoOp::DupLockFileDescription => "dup the lock file's description",
            IoOp::OpenLockFileAgain => "open the lock file again",
            IoOp::MakeAbsolute => "make the path absolute (the current directory is gone?)",
            IoOp::StartAsyncWaiter => "start the async waiter thread",
        }
    }
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a descriptor cannot be used by the descriptor form (see [`Error::BadDescriptor`]): code
/// that decides on it matches a variant; the message says what to do.
///
/// ```
/// use lockticket::DescriptorProblem;
/// assert!(DescriptorProblem::PathOnly.to_string().contains("O_PATH"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DescriptorProblem {
    /// It is an `O_PATH` descriptor, which cannot hold a file lock.
    PathOnly,
    /// It names another file than the lock file this handle was given (or first used): its
    /// table is another one.
    OtherFile,
}

impl std::fmt::Display for DescriptorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DescriptorProblem::PathOnly => {
                "an O_PATH descriptor cannot hold a lock; open the file for reading or writing \
                 (as a shell's `exec 9<file` or `exec 9>file` does)"
            }
            DescriptorProblem::OtherFile => {
                "the descriptor names another file than this handle's lock file; lock it \
                 through the table kept for its own file (table_for_lock_fd), with a handle of \
                 that table"
            }
        })
    }
}

/// What happened to a table's file under its users (see [`Error::TableRemoved`]).
///
/// ```
/// assert_eq!(lockticket::Removal::Replaced.to_string(), "replaced by another file");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Removal {
    /// Its name no longer names any file.
    Removed,
    /// Its name names another file now.
    Replaced,
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Removal::Removed => "removed",
            Removal::Replaced => "replaced by another file",
        })
    }
}
