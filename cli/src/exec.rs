//! `lockticket exec`: join the table, take the token, run the command, release, leave.
//!
//! The token's owner is a PID. By default the token is taken by this process, the command runs
//! as its child, and the child is made to die with us (`PR_SET_PDEATHSIG` = `SIGKILL`): the
//! lock can never be free while the command still runs, even if we are killed by `SIGKILL`.
//! With `-F` the command replaces this process (same PID, same start time), so it is the
//! token's owner itself until it exits; a guardian child keeps the registration's descriptor
//! for it (the command and its children never inherit it) and dies with it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use lockticket::{Error, LockTicket, MainGuard, Share, TokenGuard};

use crate::{ExecArgs, Failure, code, inspect, report};

/// Signals sent to `lockticket` that are passed on to the command.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Main-lock registry entries of a table this command creates: many concurrent `exec`s
/// (xargs -P, parallel make) each register as an owner.
pub(crate) const MEMBERS: u32 = 1024;

/// How many times a vanished table is joined again before giving up.
const REJOIN_ATTEMPTS: u32 = 16;

/// The PID of the running command, for the signal handler (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);

pub(crate) use lockticket::Patience;

/// The table's builder with every option of `a` that shapes a table: one place for both the
/// command form and the descriptor form (two copies once let `--fairness` be lost).
pub(crate) fn builder_of(a: &ExecArgs, table: &std::path::Path) -> lockticket::Builder {
    let mut builder = LockTicket::builder(table)
        .permissions(a.mode.unwrap_or(0o600))
        .member_capacity(MEMBERS)
        .keep(a.keep);
    if let Some(slots) = a.ring_capacity {
        builder = builder.ring_capacity(slots);
    }
    if let Some(bytes) = a.payload_capacity {
        builder = builder.payload_capacity(bytes);
    }
    if let Some(entries) = a.process_capacity {
        builder = builder.process_capacity(entries);
    }
    if let Some(fairness) = a.fairness {
        builder = builder.fairness(fairness);
    }
    builder
}

/// How long `-n` / `-w` let us wait.
pub(crate) fn patience_of(a: &ExecArgs) -> Patience {
    if a.nonblock {
        Patience::NoWait
    } else {
        match a.timeout {
            None => Patience::Forever,
            Some(s) if s <= 0.0 => Patience::NoWait,
            Some(s) => Duration::try_from_secs_f64(s)
                .ok()
                .and_then(|d| Instant::now().checked_add(d))
                .map_or(Patience::Forever, Patience::Until),
        }
    }
}

pub(crate) fn run(a: ExecArgs) -> Result<i32, Failure> {
    if let Some(urls) = a.etcd.clone() {
        return crate::etcd_call(|| crate::etcd::exec(a, &urls));
    }
    if a.unlock {
        return Err(Failure::new(
            code::USAGE,
            "bad usage: -u unlocks a descriptor: lockticket exec -u FD (see 'lockticket exec \
             --help')",
        ));
    }
    let (program, args) = command_of(&a)?;
    let share = if a.shared {
        Share::Shared
    } else {
        Share::Exclusive
    };
    let patience = patience_of(&a);
    let table = inspect::lock_target(&a.table)?;
    let builder = builder_of(&a, std::path::Path::new(&table));
    let lt = builder
        .open()
        .map_err(|e| Failure::table("cannot open the lock table", &e))?;
    inspect::anchor_lock_file(&lt);

    let t0 = Instant::now();
    let Some((main, token)) = acquire(&lt, share, patience, a.verbose)? else {
        if a.verbose {
            let (what, how) = not_obtained(patience, t0);
            report(&format!(
                "{what}: the {share} lock on {}: {how}",
                lt.path().display()
            ));
        }
        return Ok(i32::from(a.conflict_exit_code));
    };
    let died = token.previous_holder_died();
    if a.verbose {
        // flock(1)'s own line, on stdout as flock prints it; what flock has no word for goes
        // to stderr.
        let took = t0.elapsed();
        verbose_line(&format!(
            "getting lock took {}.{:06} seconds",
            took.as_secs(),
            took.subsec_micros()
        ));
        if died {
            report(&format!(
                "the previous holder of the {share} lock on {} died holding it",
                lt.path().display()
            ));
        }
    }

    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env("LOCKTICKET_PATH", lt.path())
        .env(
            "LOCKTICKET_PREVIOUS_HOLDER_DIED",
            if died { "1" } else { "0" },
        )
        .env(
            "LOCKTICKET_FENCING_TOKEN",
            token.fencing_token().to_string(),
        );
    if a.verbose {
        verbose_line(&format!("executing {}", program.to_string_lossy()));
    }

    if a.no_fork {
        // On success `exec` does not return: the command is this process now, and holds the
        // token and the main-lock registration until it exits. The descriptor whose OFD lock
        // vouches for our registration stays close-on-exec (the command's children must not
        // keep the lock after it): a guardian child keeps it — and a keyed table's kernel lock
        // on the lock file — and the kernel kills the guardian when the command ends (see
        // `LockTicket::hold_across_exec`).
        let guardian = match lt.hold_across_exec() {
            Ok(g) => g,
            Err(e) => {
                release(token, main);
                return Err(Failure::table("cannot hold the lock across exec", &e));
            }
        };
        let err = cmd.exec();
        drop(guardian);
        let failure = spawn_failure(&program, &err);
        release(token, main);
        return Err(failure);
    }

    let outcome = run_child(cmd, &program);
    release(token, main);
    outcome.map(status_code)
}

/// The program and its arguments, from `COMMAND [ARGS...]` or `-c 'SHELL COMMAND'`.
pub(crate) fn command_of(a: &ExecArgs) -> Result<(OsString, Vec<OsString>), Failure> {
    match (&a.shell, a.argv.split_first()) {
        (Some(c), None) => Ok(("/bin/sh".into(), vec!["-c".into(), c.clone()])),
        (None, Some((program, args))) => Ok((program.clone(), args.to_vec())),
        (Some(_), Some(_)) => Err(Failure::new(
            code::USAGE,
            "bad usage: -c takes exactly one argument, the shell command (see 'lockticket exec \
             --help')",
        )),
        (None, None) => Err(Failure::new(
            code::USAGE,
            "bad usage: no command given: lockticket exec [OPTIONS] NAME|PATH COMMAND [ARGS...] \
             or lockticket exec [OPTIONS] FD for a descriptor (see 'lockticket exec --help')",
        )),
    }
}

/// Joins the table (shared main lock, creating it) and takes the token. `None` when the token
/// was not obtained within `patience`; the registration is then given up again.
fn acquire<'a>(
    lt: &'a LockTicket,
    share: Share,
    patience: Patience,
    verbose: bool,
) -> Result<Option<(Option<MainGuard<'a>>, TokenGuard<'a>)>, Failure> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let main = match lt.main_lock(Share::Shared) {
            Ok(g) => {
                if verbose && g.reclaimed() {
                    report(&format!(
                        "took over {}: its previous owners had all died",
                        lt.path().display()
                    ));
                }
                Some(g)
            }
            // An owner holds it exclusively, or its registry is full: use its tokens without
            // registering. Its owners keep it in place; a table is never removed while a live
            // process holds or waits for a token.
            Err(e @ (Error::MainLockBusy { .. } | Error::RegistryFull { .. })) => {
                if verbose {
                    report(&format!("using the table without joining its owners: {e}"));
                }
                None
            }
            Err(e) => return Err(Failure::table("cannot join the lock table", &e)),
        };
        if verbose && attempt == 1 {
            describe_contention(lt, share);
        }
        let got = lt.request().mode(share).patience(patience).lock();
        match got {
            Ok(Some(token)) => return Ok(Some((main, token))),
            Ok(None) => return Ok(None),
            // Not registered, and the owners removed the table meanwhile: join the new one.
            Err(Error::NotCreated { .. } | Error::Removed { .. })
                if main.is_none() && attempt < REJOIN_ATTEMPTS =>
            {
                continue;
            }
            Err(e) => return Err(Failure::table("cannot take the lock", &e)),
        }
    }
}

/// With --verbose: who holds the lock when we have to wait.
fn describe_contention(lt: &LockTicket, share: Share) {
    let Ok(st) = lt.status() else { return };
    if st.holders.is_empty() && st.queue.is_empty() {
        return;
    }
    let holders: Vec<String> = st
        .holders
        .iter()
        .map(|h| {
            let cmd = inspect::command_text(h.pid, h.alive)
                .map(|c| format!(" ({})", inspect::truncated(&c, 60)))
                .unwrap_or_default();
            format!("pid {} {}{}", h.pid, h.share, cmd)
        })
        .collect();
    report(&format!(
        "waiting for the {share} lock on {}: held by {}; {} waiting ahead",
        lt.path().display(),
        if holders.is_empty() {
            "nobody".to_string()
        } else {
            holders.join(", ")
        },
        st.queue.len()
    ));
}

/// Releases the token, then leaves the table (the last owner out removes it). Failures are
/// reported; the command's status is still what we exit with.
fn release(token: TokenGuard<'_>, main: Option<MainGuard<'_>>) {
    if let Err(e) = token.unlock() {
        report(&Failure::table("cannot release the lock", &e).message);
    }
    if let Some(main) = main
        && let Err(e) = main.unlock()
    {
        report(&Failure::table("cannot leave the lock table", &e).message);
    }
}

/// Runs the command as our child, forwarding signals to it, and waits for it.
pub(crate) fn run_child(mut cmd: Command, program: &OsStr) -> Result<ExitStatus, Failure> {
    let parent = std::process::id() as libc::pid_t;
    let os = |what: &str| {
        let e = io::Error::last_os_error();
        Failure::new(code::OS, format!("cannot {what}: {e}"))
    };
    // Block the forwarded signals until the child's PID is known to the handler; a signal that
    // comes meanwhile stays pending and is forwarded when they are unblocked.
    let mut ignored = [false; FORWARDED.len()];
    // SAFETY: plain libc calls on local, initialised sigset_t values.
    let old_mask = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return Err(os("block signals"));
        }
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = forward as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        act.sa_mask = set;
        for (i, s) in FORWARDED.into_iter().enumerate() {
            let mut prev: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(s, &act, &mut prev) != 0 {
                let f = os("install signal handlers");
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                return Err(f);
            }
            if prev.sa_sigaction == libc::SIG_IGN {
                // Ignored by whoever started us (nohup, a background job of a script): keep
                // ignoring it, and let the command inherit that, as it would under flock(1).
                libc::sigaction(s, &prev, std::ptr::null_mut());
                ignored[i] = true;
            }
        }
        old
    };
    let restore_mask = || {
        // SAFETY: restores a mask obtained from pthread_sigmask above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    };
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (signal, prctl, getppid, _exit, pthread_sigmask); it
    // allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            for (s, ignored) in FORWARDED.into_iter().zip(ignored) {
                if !ignored {
                    libc::signal(s, libc::SIG_DFL);
                }
            }
            // Die with lockticket: it owns the lock, so the command must not outlive it.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                if libc::getppid() != parent {
                    // lockticket died before prctl took effect: the lock is gone already.
                    libc::_exit(code::OS);
                }
            }
            let _ = parent;
            libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            restore_mask();
            return Err(spawn_failure(program, &e));
        }
    };
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    restore_mask();

    // Wait until it has exited, without reaping it: while it is not reaped its PID cannot be
    // reused, so a signal forwarded meanwhile cannot reach another process.
    loop {
        // SAFETY: waitid with a valid out-pointer; WNOWAIT leaves the child waitable.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    CHILD.store(0, Ordering::SeqCst);
    child
        .wait()
        .map_err(|e| Failure::new(code::OS, format!("cannot wait for the command: {e}")))
}

/// The PID of the command [`run_child`] runs, 0 before it is started and once it has exited
/// (it is not reaped before that, so its PID cannot be reused meanwhile).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn running_child() -> i32 {
    CHILD.load(Ordering::SeqCst)
}

/// Sends `sig` to the command if it is still running.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn signal_child(pid: i32, sig: libc::c_int) {
    if pid > 0 && CHILD.load(Ordering::SeqCst) == pid {
        // SAFETY: kill(2) on our unreaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Signal handler: passes the signal on to the command. Signals the terminal sent to the
/// whole foreground process group (Ctrl-C, Ctrl-\, hang-up) reached the command already and
/// are not sent twice.
extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid <= 0 {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO; errno is saved and restored
    // around kill(2), which is async-signal-safe.
    unsafe {
        if !info.is_null() && from_terminal(&*info) {
            return;
        }
        let errno = errno_location();
        let saved = *errno;
        libc::kill(pid, sig);
        *errno = saved;
    }
}

/// True for a signal the kernel sent on behalf of the terminal (to the whole foreground
/// process group, the command included).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn from_terminal(info: &libc::siginfo_t) -> bool {
    info.si_code == libc::SI_KERNEL
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn from_terminal(_info: &libc::siginfo_t) -> bool {
    false
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno; always valid.
    unsafe { libc::__errno_location() }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno; always valid.
    unsafe { libc::__error() }
}

/// The failure for a command that could not be started, with flock(1)'s exit statuses: 69
/// (EX_UNAVAILABLE) when it was not found or cannot be executed, 71 (EX_OSERR) when the system
/// refused a process.
fn spawn_failure(program: &OsStr, e: &io::Error) -> Failure {
    let (code, what) = match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => (code::CANNOT_EXECUTE, "command not found"),
        Some(libc::EAGAIN | libc::ENOMEM) => (code::OS, "cannot start a process"),
        _ => (code::CANNOT_EXECUTE, "cannot execute the command"),
    };
    Failure::new(code, format!("{what}: {}: {e}", program.to_string_lossy()))
}

/// The command's exit status, or 128 + the signal that killed it, as shells report it.
pub(crate) fn status_code(s: ExitStatus) -> i32 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 128,
    }
}

/// A `--verbose` line that flock(1) prints on stdout (`flock: executing CMD`), printed the
/// same way and flushed before the command writes to the same stdout.
/// Why `--verbose` says a lock was not obtained within `patience` (asked at `t0`): flock(1)'s
/// words first, then lockticket's.
pub(crate) fn not_obtained(patience: Patience, t0: Instant) -> (&'static str, String) {
    match patience {
        Patience::NoWait => ("failed to get lock", "it is not free".to_string()),
        _ => (
            "timeout while waiting to get lock",
            format!("not free after {:.6} seconds", t0.elapsed().as_secs_f64()),
        ),
    }
}

pub(crate) fn verbose_line(line: &str) {
    use std::io::Write;
    let line = crate::escape::text(line); // it may quote a command or path: foreign bytes
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "lockticket: {line}").and_then(|()| out.flush());
}
