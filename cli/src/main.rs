//! The `lockticket` command: a fair (FIFO), crash-proof `flock(1)` for shell scripts, and the
//! tools to inspect and maintain lock tables.
//!
//! ```text
//! lockticket exec [OPTIONS] NAME|PATH COMMAND [ARGS...]
//! lockticket exec [OPTIONS] NAME|PATH -c 'SHELL COMMAND'
//! lockticket exec [-s|-x] [-n|-w SECS] FD          (flock's descriptor form; -u FD releases)
//! lockticket status NAME|PATH [--json]
//! lockticket payload get|set|clear NAME|PATH [VALUE|-]
//! lockticket list [DIR]
//! lockticket clean NAME|PATH | --all [--dir DIR]
//! lockticket man [SUBCOMMAND] | --out-dir DIR
//! lockticket completions SHELL
//! ```
//!
//! `lockticket man` prints the manual page (generated from the definitions below); see
//! `docs/cli.md` for the exit codes and the JSON schema of `status --json`.

mod escape;
#[cfg(feature = "etcd")]
mod etcd;
mod exec;
mod fd;
mod inspect;
mod man;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lockticket::{Error, LockTicket};

/// Exit codes (sysexits.h where one fits; flock(1) uses the same for usage errors).
pub(crate) mod code {
    /// Success; for `exec`, the command's own status is passed through instead.
    pub const OK: i32 = 0;
    /// The lock was not obtained with `-n` or within `-w` (the default of `-E`).
    pub const CONFLICT: u8 = 1;
    /// EX_USAGE: bad command line (unknown option, missing argument, invalid name or mode).
    pub const USAGE: i32 = 64;
    /// EX_DATAERR: the payload value does not fit the table.
    pub const DATA: i32 = 65;
    /// EX_NOINPUT: no lock table exists at that name or path, or its directory is missing
    /// (as flock(1) when it cannot open the lock file).
    pub const NO_TABLE: i32 = 66;
    /// EX_UNAVAILABLE: exec: the command was not found or cannot be executed (as flock(1)).
    pub const CANNOT_EXECUTE: i32 = 69;
    /// EX_OSERR: the operating system refused a resource (fork, signals, memory, descriptors).
    pub const OS: i32 = 71;
    /// EX_CANTCREAT: the table cannot be created: read-only filesystem or no space (as
    /// flock(1) when it cannot create the lock file).
    pub const CANT_CREATE: i32 = 73;
    /// EX_IOERR: the table cannot be used (not a lock table, corrupted, doubtful permissions,
    /// symlink, I/O error, busy with an exclusive owner…).
    pub const TABLE: i32 = 74;
    /// EX_TEMPFAIL: exec --etcd: the lock was lost while the command ran (the command was
    /// stopped: SIGTERM, SIGKILL after 5 s); or the lease ended while waiting.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub const LOST: i32 = 75;
    /// EX_PROTOCOL: --etcd: the etcd cluster did not answer in time, or refused the request.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub const ETCD: i32 = 76;
}

const EXIT_CODES: &str = "\
Exit status:
  0        success (exec: the command's own status is returned)
  1        exec: the lock was not obtained (-n, or -w expired); change with -E
  64       bad usage: unknown option, missing argument, invalid name or --mode
  65       payload set: the value does not fit the table's payload capacity
  66       no lock table exists at that name or path (status, payload), or
           the table cannot be opened: its directory is missing, permission
           denied (exec; as flock(1) when it cannot open the lock file)
  69       exec: the command was not found or cannot be executed
  71       the operating system refused a resource (fork, memory, descriptors)
  73       exec: the table cannot be created: read-only filesystem, no space
  74       the table cannot be used: not a lock table, corrupted, doubtful
           permissions, symbolic link, lock file on a network filesystem,
           I/O error
  75       exec --etcd: the lock was lost while the command ran (its lease
           could have expired); the command was stopped (SIGTERM, then
           SIGKILL after 5 s)
  76       --etcd: the etcd cluster did not answer within the call deadline,
           or refused the request
  128+N    exec: the command was killed by signal N
A status of lockticket's own (64-74) always comes with a one-line message on
stderr, starting with \"lockticket:\"; they are flock(1)'s where it has one.

A bare word NAME ([-_A-Za-z0-9]{1,218}) is a table name: the table lives in the
first writable memory filesystem among /dev/shm, /run/shm, /run, /tmp as
lockticket-NAME.lt (refused, 64, if the current directory has a file of that
name: write ./NAME for the file). Anything else is a PATH, relative to the
current directory as in flock(1): a missing path or a lock table is the table;
a directory or any other existing file is a lock file, never touched, whose
table is kept in that memory filesystem, keyed by its device and inode.

Manual: man lockticket (if installed), or lockticket man | man -l -";
// The help above states the table-name rule; `lockticket::MAX_NAME_LEN` is its one source.
const _: () = assert!(
    lockticket::MAX_NAME_LEN == 218,
    "update the NAME rule in EXIT_CODES"
);

const EXEC_AFTER: &str = "\
Like flock(1), but fair: waiting commands get the lock in the order they asked
for it (first come, first served), shared (-s) requests queued behind an
exclusive one wait for it, and a holder or waiter that dies (even by SIGKILL)
is replaced within milliseconds. `lockticket status NAME` shows who holds the
lock and who waits.

lockticket holds the lock itself while the command runs as its child, and
forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it. If
lockticket is killed (even by SIGKILL), the command is killed with it, so the
lock is never free while the command still runs. With -F the command replaces
lockticket (same PID) and holds the lock itself until it exits (not as long as
background children it leaves: a small guardian child of lockticket's keeps
the lock for the command and dies with it).

The command gets LOCKTICKET_PATH (the table file),
LOCKTICKET_PREVIOUS_HOLDER_DIED (1 when the previous holder died holding the
lock: repair what it protected) and LOCKTICKET_FENCING_TOKEN (larger than every
earlier holder's: for fencing writes outside the lock) in its environment.

As flock(1): -E sets the status of a conflict or timeout (default 1); -F and
-o cannot be combined (64); --verbose prints \"lockticket: getting lock took N
seconds\" and \"lockticket: executing CMD\" on stdout, and why the lock was not
obtained on stderr. -o is what lockticket always does: the command never gets
a descriptor of the lock, so programs it leaves running in the background do
not keep the lock held (with flock, only -o gives that). -c runs /bin/sh
(flock runs $SHELL).

The descriptor form, as flock(1)'s: `lockticket exec [-s|-x] [-n|-w SECS] FD`
(a number and no command) takes the lock for the file the shell opened on
descriptor FD (`exec 9>/var/lock/job`, `( ... ) 9>file`, `9<dir`), in the same
queue as `lockticket exec FILE CMD` naming that file, and exits 0 (1 or -E if
not obtained). It is held until that descriptor is closed in every process
that has it (the subshell ends, the shell exits or is killed) or `lockticket
exec -u FD` releases it. -u, or the end of a subshell, hands the lock on at
once; a bare close within a few milliseconds. Asked again for the same
descriptor it returns at once (same mode) or converts (releases, then waits
again). A descriptor that is not open, or on a device, socket or pipe, is a
usage error (64).

Not supported from flock(1): --fcntl, --start, --length.";

#[derive(Parser, Debug)]
#[command(
    name = "lockticket",
    version,
    propagate_version = true,
    about = "FIFO, crash-proof inter-process locks for shell scripts (a fair flock(1)), \
             and tools to inspect lock tables",
    after_help = EXIT_CODES,
    disable_help_subcommand = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command while holding a table's lock (flock(1)-compatible options)
    #[command(
        after_help = format!("{EXEC_AFTER}\n\n{EXIT_CODES}"),
        // As flock's getopt_long: a unique prefix of a long option is that option (--excl).
        infer_long_args = true,
        override_usage = "lockticket exec [OPTIONS] <NAME|PATH> <COMMAND> [ARGS]...\n       \
                          lockticket exec [OPTIONS] <NAME|PATH> -c <SHELL COMMAND>\n       \
                          lockticket exec [-s|-x] [-n|-w SECONDS] [-E N] [--verbose] <FD>\n       \
                          lockticket exec -u <FD>"
    )]
    Exec(ExecArgs),
    /// Show a table's owners, holders and queue (FIFO order, with wait times)
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// Get, set or clear a table's payload (a small value shared by its users)
    #[command(subcommand)]
    Payload(PayloadCommand),
    /// List the lock tables in the default directory (or DIR) with their state
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Remove tables whose owners are all dead and that no live process uses
    #[command(after_help = EXIT_CODES)]
    Clean(CleanArgs),
    /// Rebuild a table's token queue that was found inconsistent, keeping live requests in order
    #[command(after_help = REPAIR_AFTER)]
    Repair(PayloadTable),
    /// Print the manual page (roff; read it with `lockticket man | man -l -`)
    Man(man::ManArgs),
    /// Print a shell completion script (e.g. `lockticket completions bash > ~/.local/share/bash-completion/completions/lockticket`)
    Completions(man::CompletionsArgs),
}

/// Options of `exec`.
#[derive(Args, Debug)]
pub(crate) struct ExecArgs {
    /// Take a shared (reader) lock: shared holders run together
    #[arg(short = 's', long = "shared", overrides_with = "exclusive")]
    pub shared: bool,
    /// Take an exclusive (writer) lock [default]
    #[arg(
        short = 'x',
        visible_short_alias = 'e',
        long = "exclusive",
        overrides_with = "shared"
    )]
    pub exclusive: bool,
    /// Fail at once (with the conflict exit code) if the lock is not free
    #[arg(short = 'n', long = "nonblock", visible_aliases = ["nonblocking", "nb"])]
    pub nonblock: bool,
    /// Fail (with the conflict exit code) if the lock is not obtained within SECONDS
    /// (fractions allowed; 0 is the same as -n)
    #[arg(
        short = 'w',
        long = "timeout",
        visible_alias = "wait",
        value_name = "SECONDS",
        value_parser = parse_seconds
    )]
    pub timeout: Option<f64>,
    /// Exit status when the lock is not obtained with -n or -w
    #[arg(
        short = 'E',
        long = "conflict-exit-code",
        value_name = "N",
        default_value_t = code::CONFLICT
    )]
    pub conflict_exit_code: u8,
    /// Release the lock held for descriptor FD (lockticket exec -u FD; success when it holds
    /// none)
    #[arg(short = 'u', long = "unlock")]
    pub unlock: bool,
    /// Do not fork: replace lockticket by the command, which then holds the lock under the same
    /// PID until it exits (a guardian child keeps it for the command, not its children)
    #[arg(short = 'F', long = "no-fork")]
    pub no_fork: bool,
    /// Do not let the command hold the lock (flock(1)'s -o); lockticket always works so: the
    /// command gets no descriptor of the lock, which lockticket holds until the command exits
    #[arg(short = 'o', long = "close", conflicts_with = "no_fork")]
    pub close: bool,
    /// As flock(1): print how long getting the lock took and what runs, on stdout; who holds
    /// the lock while waiting, and why it was not obtained, go to stderr
    #[arg(long)]
    pub verbose: bool,
    /// Permissions of the table (octal, e.g. 0660 to share it with the group) [default: 0600]
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Keep the table and its payload after the last user leaves, for the next run
    /// (`lockticket clean NAME` removes it)
    #[arg(long)]
    pub keep: bool,
    /// Token slots of a table this call creates (requests queued at once) [default: 1024]
    #[arg(long, value_name = "SLOTS")]
    pub ring_capacity: Option<u32>,
    /// Payload bytes of a table this call creates [default: 4096]
    #[arg(long, value_name = "BYTES")]
    pub payload_capacity: Option<usize>,
    /// Process-table entries of a table this call creates: how many processes can use it at
    /// once (1 to 32768) [default: 1024]
    #[arg(long, value_name = "PROCESSES")]
    pub process_capacity: Option<u32>,
    /// Order of a table this call creates: strict (first come, first served), or bounded[:MS]
    /// (a running process may go ahead of a head that sleeps or was not run yet since its
    /// wake-up; once the head runs it waits for one critical section at most; MS is recorded
    /// and no longer limits anything). An existing table of another mode is refused (64)
    /// [default: the table's; strict for a new one]
    #[arg(long, value_name = "strict|bounded[:MS]")]
    pub fairness: Option<lockticket::Fairness>,
    /// Take the lock on an etcd cluster instead of this machine: its client URLs,
    /// comma-separated (http://HOST:PORT,...), or `env` for those in LOCKTICKET_ETCD. NAME is
    /// then a lock name on the cluster
    #[arg(long, value_name = "URLS")]
    pub etcd: Option<String>,
    /// With --etcd: the lease TTL in seconds: how long a killed holder keeps the lock, and
    /// how soon a holder cut off from etcd stops its command [default: 10]
    #[arg(long, value_name = "SECONDS", requires = "etcd", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ttl: Option<u64>,
    /// The table: a NAME ([-_A-Za-z0-9]), or a PATH (anything else; relative to the current directory)
    #[arg(value_name = "NAME|PATH")]
    pub table: OsString,
    /// Run SHELL COMMAND with /bin/sh -c
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SHELL COMMAND",
        conflicts_with = "argv"
    )]
    pub shell: Option<OsString>,
    /// The command to run and its arguments
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 1..
    )]
    pub argv: Vec<OsString>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The table: a NAME ([-_A-Za-z0-9]), or a PATH (anything else; relative to the current directory)
    #[arg(value_name = "NAME|PATH")]
    table: OsString,
    /// Print a JSON object (schema: docs/cli.md, "format": 1)
    #[arg(long)]
    json: bool,
    /// The lock is on an etcd cluster: its client URLs, comma-separated, or `env` for those in
    /// LOCKTICKET_ETCD
    #[arg(long, value_name = "URLS", conflicts_with = "mode")]
    etcd: Option<String>,
    /// Accept a table with these permissions (octal) [default: the file's own mode]
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    mode: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum PayloadCommand {
    /// Write the payload to stdout, byte for byte (no newline is added)
    #[command(after_help = EXIT_CODES)]
    Get(PayloadOn),
    /// Store VALUE (or stdin, with -) as the payload; the table must exist
    #[command(after_help = EXIT_CODES)]
    Set(PayloadSet),
    /// Empty the payload; the table must exist
    #[command(after_help = EXIT_CODES)]
    Clear(PayloadOn),
}

#[derive(Args, Debug)]
struct PayloadTable {
    /// The table: a NAME ([-_A-Za-z0-9]), or a PATH (anything else; relative to the current directory)
    #[arg(value_name = "NAME|PATH")]
    table: OsString,
    /// Permissions the table is expected to have (octal) [default: 0600]
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    mode: Option<u32>,
}

/// A payload's table, local or on etcd.
#[derive(Args, Debug)]
struct PayloadOn {
    #[command(flatten)]
    target: PayloadTable,
    /// The lock is on an etcd cluster: its client URLs, comma-separated, or `env` for those in
    /// LOCKTICKET_ETCD. `set` and `clear` are fenced: from the command of `exec --etcd` they
    /// write only while its lock is held (LOCKTICKET_ETCD_KEY), elsewhere they take the
    /// exclusive lock for the write
    #[arg(long, value_name = "URLS", conflicts_with = "mode")]
    etcd: Option<String>,
}

#[derive(Args, Debug)]
struct PayloadSet {
    #[command(flatten)]
    target: PayloadOn,
    /// The value, stored byte for byte; - reads it from stdin
    #[arg(value_name = "VALUE|-", allow_hyphen_values = true)]
    value: OsString,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Directory to list [default: the default directory of named tables]
    #[arg(value_name = "DIR", conflicts_with = "etcd")]
    dir: Option<PathBuf>,
    /// List the locks that have keys on an etcd cluster: its client URLs, comma-separated, or
    /// `env` for those in LOCKTICKET_ETCD
    #[arg(long, value_name = "URLS")]
    etcd: Option<String>,
}

#[derive(Args, Debug)]
struct CleanArgs {
    /// The table to clean: a NAME ([-_A-Za-z0-9]), or a PATH (anything else)
    #[arg(
        value_name = "NAME|PATH",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    table: Option<OsString>,
    /// Clean every table (lockticket-*.lt) in the default directory (or --dir)
    #[arg(long)]
    all: bool,
    /// With --all: the directory to clean
    #[arg(long, value_name = "DIR", requires = "all")]
    dir: Option<PathBuf>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?}: give a number of seconds, 0 or more"));
    }
    Ok(v)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("{s:?} is not an octal mode such as 0600 or 0660"));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    if mode > 0o777 || mode & 0o600 != 0o600 {
        return Err(format!(
            "{s:?}: give permission bits (at most 0777) that include owner read and write (0600)"
        ));
    }
    Ok(mode)
}

/// A failure to report: one line on stderr, and an exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// `what failed: the library's message` with the exit status its kind calls for.
    pub fn table(what: &str, e: &Error) -> Self {
        let lock_file = inspect::lock_file();
        let mut message = match e {
            // A lock file's table exists only while it is used: say so of the user's file.
            Error::NotCreated { path } if lock_file.is_some_and(|(keyed, _)| keyed == path) => {
                format!(
                    "{what}: {}: no process holds or waits for a lock on this file (the table \
                     lockticket keeps for it, {}, exists only while it is in use)",
                    lock_file.map_or(path, |(_, file)| file).display(),
                    path.display()
                )
            }
            // The library's advice (take the main lock) is for programs; say it for the CLI.
            Error::NotCreated { path } => format!(
                "{what}: {}: no lock table exists (`lockticket exec` creates one; the last \
                 process to leave removes it)",
                path.display()
            ),
            Error::InvalidName { .. } | Error::InvalidOption(_) | Error::BadDescriptor { .. } => {
                format!("bad usage: {e}")
            }
            Error::Io { path, .. } if missing_directory(e).is_some() => format!(
                "{what}: {}: the directory {} is missing (create it first)",
                path.display(),
                missing_directory(e).unwrap_or(path).display()
            ),
            _ => format!("{what}: {e}"),
        };
        if let Some((keyed, file)) = lock_file
            && !matches!(e, Error::NotCreated { .. })
            && message.contains(&*keyed.to_string_lossy())
        {
            message.push_str(&format!(
                " (the table lockticket keeps for the lock file {})",
                file.display()
            ));
        }
        if matches!(e, Error::DoubtfulPermissions { .. }) {
            message.push_str(" (if the table is shared on purpose, pass its mode with --mode)");
        }
        Failure {
            code: exit_code_of(e),
            message,
        }
    }
}

/// The missing directory, when `e` is a table that cannot be opened because its directory does
/// not exist (flock(1) exits with 66, EX_NOINPUT, when it cannot open the lock file).
fn missing_directory(e: &Error) -> Option<&std::path::Path> {
    let Error::Io { path, cause, .. } = e else {
        return None;
    };
    if cause.kind() != std::io::ErrorKind::NotFound {
        return None;
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    std::fs::symlink_metadata(dir).is_err().then_some(dir)
}

/// The exit status for a library error.
pub(crate) fn exit_code_of(e: &Error) -> i32 {
    match e {
        _ if missing_directory(e).is_some() => code::NO_TABLE,
        // flock(1)'s statuses when it cannot open or create the lock file.
        Error::Io { op, cause, .. } => match cause.raw_os_error() {
            Some(libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::ENOLCK) => code::OS,
            Some(libc::EROFS | libc::ENOSPC | libc::EDQUOT) => code::CANT_CREATE,
            _ if *op == lockticket::IoOp::Open => code::NO_TABLE,
            _ => code::TABLE,
        },
        Error::InvalidName { .. }
        | Error::InvalidOption(_)
        | Error::BadDescriptor { .. }
        | Error::FairnessMismatch { .. } => code::USAGE,
        Error::NotCreated { .. } | Error::Removed { .. } => code::NO_TABLE,
        Error::PayloadTooLarge { .. } => code::DATA,
        #[cfg(feature = "etcd")]
        Error::EtcdUnavailable { .. } | Error::EtcdProtocol { .. } => code::ETCD,
        #[cfg(feature = "etcd")]
        Error::EtcdLost { .. } | Error::EtcdLeaseExpired { .. } => code::LOST,
        _ => code::TABLE,
    }
}

fn main() {
    // Behave like other Unix tools when stdout is a closed pipe (`lockticket list | head -1`).
    // SAFETY: setting a signal disposition to its default at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let code = match Cli::try_parse() {
        Ok(cli) => match run(cli) {
            Ok(code) => code,
            Err(f) => {
                report(&f.message);
                f.code
            }
        },
        Err(e) => usage_error(e),
    };
    std::process::exit(code);
}

/// Prints `lockticket: MESSAGE` on one line of stderr.
pub(crate) fn report(message: &str) {
    // Messages quote paths, commands and holders' command lines: foreign bytes, which must
    // neither move the cursor nor start a line of their own (see `escape`).
    let line = escape::text(message);
    let _ = writeln!(std::io::stderr().lock(), "lockticket: {line}");
}

fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                code::USAGE
            } else {
                code::OK
            }
        }
        _ => {
            // The first paragraph of clap's message, on one line.
            let rendered = e.render().to_string();
            let first: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            // The subcommands as clap knows them (one source: a new one is never missed).
            let cli = <Cli as clap::CommandFactory>::command();
            let sub = std::env::args()
                .skip(1)
                .find(|a| cli.get_subcommands().any(|c| c.get_name() == a));
            let help = match sub {
                Some(s) => format!("lockticket {s} --help"),
                None => "lockticket --help".to_string(),
            };
            report(&format!("bad usage: {first} (see '{help}')"));
            code::USAGE
        }
    }
}

fn run(cli: Cli) -> Result<i32, Failure> {
    match cli.command {
        // `--etcd` names a lock on the cluster, never a descriptor (exec::run takes it).
        Command::Exec(a) if a.etcd.is_none() && fd::is_fd_form(&a) => fd::run(&a),
        Command::Exec(a) => exec::run(a),
        Command::Status(a) => match a.etcd {
            Some(urls) => etcd_call(|| etcd::status(&urls, &a.table, a.json)),
            None => inspect::status(&a.table, a.mode, a.json),
        },
        Command::Payload(p) => payload(p),
        Command::List(a) => match a.etcd {
            Some(urls) => etcd_call(|| etcd::list(&urls)),
            None => inspect::list(a.dir.as_deref()),
        },
        Command::Clean(a) => match (a.table, a.all) {
            (Some(t), false) => inspect::clean_one(&t),
            (None, true) => inspect::clean_all(a.dir.as_deref()),
            _ => Err(Failure::new(
                code::USAGE,
                "bad usage: give a NAME|PATH or --all",
            )),
        },
        Command::Repair(t) => repair(&t),
        Command::Man(a) => man::man(&a),
        Command::Completions(a) => man::completions(&a),
    }
}

const REPAIR_AFTER: &str = "Token calls repair an inconsistent queue themselves when no live \
process has a request in it. When some do, they fail with a message naming this command: it \
rebuilds the queue around the live requests, in their order, and refuses while a live process \
holds the token. A healthy table is left as it is.";

/// `lockticket repair`: rebuilds an inconsistent token queue (see the library's `repair`).
fn repair(t: &PayloadTable) -> Result<i32, Failure> {
    let lt = payload_table(t)?;
    match lt.repair() {
        Ok(None) => {
            println!(
                "{}: the token queue is consistent; nothing to repair",
                escape::path(std::path::Path::new(&t.table))
            );
            Ok(0)
        }
        Ok(Some(r)) => {
            println!(
                "{}: repaired: {r}",
                escape::path(std::path::Path::new(&t.table))
            );
            Ok(0)
        }
        Err(e) => Err(Failure::table("cannot repair the lock table", &e)),
    }
}

/// Opens a handle on an existing table for the payload commands.
fn payload_table(t: &PayloadTable) -> Result<LockTicket, Failure> {
    let table = inspect::lock_target(&t.table)?;
    LockTicket::builder(&table)
        .permissions(t.mode.unwrap_or(0o600))
        .open()
        .map_err(|e| Failure::table("cannot open the lock table", &e))
}

fn payload(p: PayloadCommand) -> Result<i32, Failure> {
    match p {
        PayloadCommand::Get(PayloadOn {
            target,
            etcd: Some(urls),
        }) => etcd_call(|| etcd::payload_get(&urls, &target.table)),
        PayloadCommand::Set(PayloadSet {
            target:
                PayloadOn {
                    target,
                    etcd: Some(urls),
                },
            value,
        }) => {
            let value = payload_value(value)?;
            etcd_call(|| etcd::payload_set(&urls, &target.table, &value))
        }
        PayloadCommand::Clear(PayloadOn {
            target,
            etcd: Some(urls),
        }) => etcd_call(|| etcd::payload_set(&urls, &target.table, b"")),
        p => local_payload(p),
    }
}

/// The value of `payload set`: VALUE, or stdin for `-`.
fn payload_value(value: OsString) -> Result<Vec<u8>, Failure> {
    Ok(if value == "-" {
        let mut v = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut v)
            .map_err(|e| Failure::new(code::TABLE, format!("cannot read stdin: {e}")))?;
        v
    } else {
        use std::os::unix::ffi::OsStringExt;
        value.into_vec()
    })
}

fn local_payload(p: PayloadCommand) -> Result<i32, Failure> {
    match p {
        PayloadCommand::Get(PayloadOn { target: t, .. }) => {
            let lt = payload_table(&t)?;
            let bytes = lt
                .payload()
                .map_err(|e| Failure::table("cannot read the payload", &e))?;
            write_stdout(&bytes)?;
        }
        PayloadCommand::Set(s) => {
            let lt = payload_table(&s.target.target)?;
            let value = payload_value(s.value)?;
            lt.set_payload(&value)
                .map_err(|e| Failure::table("cannot set the payload", &e))?;
        }
        PayloadCommand::Clear(PayloadOn { target: t, .. }) => {
            let lt = payload_table(&t)?;
            lt.clear_payload()
                .map_err(|e| Failure::table("cannot clear the payload", &e))?;
        }
    }
    Ok(code::OK)
}

/// Runs an `--etcd` form (a usage error in a build without the `etcd` feature).
#[cfg(feature = "etcd")]
fn etcd_call(f: impl FnOnce() -> Result<i32, Failure>) -> Result<i32, Failure> {
    f()
}

#[cfg(not(feature = "etcd"))]
fn etcd_call<F>(_: F) -> Result<i32, Failure> {
    Err(Failure::new(
        code::USAGE,
        "bad usage: this lockticket was built without etcd support (cargo install \
         lockticket-cli --features etcd)",
    ))
}

/// Stand-ins for the `--etcd` forms in a build without the `etcd` feature: never called.
#[cfg(not(feature = "etcd"))]
mod etcd {
    use super::{ExecArgs, Failure};
    use std::ffi::OsStr;
    pub fn exec(_: ExecArgs, _: &str) -> Result<i32, Failure> {
        unreachable!()
    }
    pub fn status(_: &str, _: &OsStr, _: bool) -> Result<i32, Failure> {
        unreachable!()
    }
    pub fn list(_: &str) -> Result<i32, Failure> {
        unreachable!()
    }
    pub fn payload_get(_: &str, _: &OsStr) -> Result<i32, Failure> {
        unreachable!()
    }
    pub fn payload_set(_: &str, _: &OsStr, _: &[u8]) -> Result<i32, Failure> {
        unreachable!()
    }
}

/// Writes all of `bytes` to stdout.
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(code::TABLE, format!("cannot write to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(op: lockticket::IoOp, errno: i32) -> Error {
        Error::Io {
            path: PathBuf::from("/nonexistent-dir-of-lockticket-tests/x.lt"),
            op,
            cause: std::io::Error::from_raw_os_error(errno),
        }
    }

    /// flock(1)'s statuses when it cannot open or create its lock file (sys-utils/flock.c,
    /// open_file): EX_OSERR for memory and descriptors, EX_CANTCREAT for a read-only or full
    /// filesystem, EX_NOINPUT otherwise; other I/O failures are lockticket's own 74.
    #[test]
    fn open_and_create_failures_exit_as_flocks() {
        for (op, errno, want) in [
            (lockticket::IoOp::Open, libc::ENOMEM, code::OS),
            (lockticket::IoOp::Open, libc::EMFILE, code::OS),
            (lockticket::IoOp::Open, libc::ENFILE, code::OS),
            (lockticket::IoOp::Open, libc::EROFS, code::CANT_CREATE),
            (lockticket::IoOp::Open, libc::ENOSPC, code::CANT_CREATE),
            (lockticket::IoOp::Allocate, libc::ENOSPC, code::CANT_CREATE),
            (
                lockticket::IoOp::LinkIntoPlace,
                libc::EROFS,
                code::CANT_CREATE,
            ),
            (lockticket::IoOp::Open, libc::EACCES, code::NO_TABLE),
            (lockticket::IoOp::Open, libc::ELOOP, code::NO_TABLE),
            (lockticket::IoOp::Read, libc::EIO, code::TABLE),
            (lockticket::IoOp::Map, libc::EINVAL, code::TABLE),
        ] {
            assert_eq!(exit_code_of(&io(op, errno)), want, "{op} {errno}");
        }
    }

    /// A descriptor the descriptor form cannot use is a usage error (64), as it was while the
    /// library reported it as `InvalidOption`, with the library's advice after "bad usage".
    #[test]
    fn a_bad_descriptor_is_a_usage_error() {
        for problem in [
            lockticket::DescriptorProblem::PathOnly,
            lockticket::DescriptorProblem::OtherFile,
        ] {
            let e = Error::BadDescriptor {
                path: PathBuf::from("/var/lock/job"),
                problem,
            };
            assert_eq!(exit_code_of(&e), code::USAGE);
            assert_eq!(exit_code_of(&Error::InvalidOption("x".into())), code::USAGE);
            let f = Failure::table("cannot lock descriptor 9", &e);
            assert_eq!(f.code, code::USAGE);
            assert_eq!(f.message, format!("bad usage: /var/lock/job: {problem}"));
        }
    }
}
