//! `lockticket exec [-s|-x] [-n|-w SECS] FD` and `lockticket exec -u FD`: flock(1)'s
//! descriptor form.
//!
//! The lock is taken for the open file description of descriptor FD, which this process
//! inherited from the shell (`exec 9>/var/lock/job`, `( … ) 9>file`, `9<dir`): it is held until
//! that description is closed everywhere, or `lockticket exec -u FD` runs. The table is the
//! one `lockticket exec FILE CMD` uses for the same file (keyed by the device and inode that
//! `fstat` gives for the descriptor), so both forms meet in one queue. This process waits in
//! the queue as itself (killing it while it waits leaves nothing held) and hands the token to
//! the description once granted (see the library's `LockTicket::lock_fd`).

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use lockticket::{Error, LockTicket, MainGuard, Share};

use crate::exec::{not_obtained, patience_of, verbose_line};
use crate::{ExecArgs, Failure, code, report};

/// True for the descriptor form: a number and no command (as flock(1) reads `flock 9`).
pub(crate) fn is_fd_form(a: &ExecArgs) -> bool {
    a.argv.is_empty()
        && a.shell.is_none()
        && !a.table.is_empty()
        && a.table.as_encoded_bytes().iter().all(u8::is_ascii_digit)
}

pub(crate) fn run(a: &ExecArgs) -> Result<i32, Failure> {
    let usage = |m: String| Failure::new(code::USAGE, format!("bad usage: {m}"));
    let arg = a.table.to_string_lossy();
    let fd: RawFd = arg
        .parse()
        .map_err(|_| usage(format!("{arg}: not a file descriptor number")))?;
    if a.no_fork {
        return Err(usage(
            "-F runs a command: the descriptor form takes none".into(),
        ));
    }
    // SAFETY: F_GETFD only reads our descriptor table; an unopened fd gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(usage(format!(
            "descriptor {fd} is not open (the descriptor form locks a file the shell opened \
             on it, e.g. `exec {fd}>/var/lock/job; lockticket exec {fd}`)"
        )));
    }
    // SAFETY: `fd` is open (checked above) and stays open for the whole run: nothing in this
    // process closes descriptors it did not open.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let table = lockticket::table_for_lock_fd(fd, None).map_err(|e| {
        let mut f = Failure::table(&format!("cannot lock descriptor {arg}"), &e);
        if matches!(e, Error::NotARegularFile { .. }) {
            f.code = code::USAGE;
        }
        f
    })?;
    let builder = crate::exec::builder_of(a, &table);
    let lt = builder
        .open()
        .map_err(|e| Failure::table("cannot open the lock table", &e))?;
    // The anchor before anything is mapped: every check of this run (the join's too) can
    // then judge holders in the descriptor form. A failure shows again in `lock_fd`.
    let _ = lt.set_lock_file(std::path::Path::new(&format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    )));
    if a.unlock {
        return unlock(&lt, fd, &table);
    }
    let share = if a.shared {
        Share::Shared
    } else {
        Share::Exclusive
    };
    let patience = patience_of(a);
    let t0 = Instant::now();
    // Joined for the time of the call, so that the table exists and no last owner removes
    // it under us; the token then keeps it (a table with a live request is never removed).
    let main = join(&lt, a.verbose)?;
    let got = lt.request().mode(share).patience(patience).lock_fd(fd);
    leave(main);
    let got = got.map_err(|e| Failure::table(&format!("cannot lock descriptor {arg}"), &e))?;
    let Some(got) = got else {
        if a.verbose {
            let (what, how) = not_obtained(patience, t0);
            report(&format!(
                "{what}: the {share} lock on descriptor {arg} ({}): {how}",
                lt.path().display()
            ));
        }
        return Ok(i32::from(a.conflict_exit_code));
    };
    if a.verbose {
        let took = t0.elapsed();
        verbose_line(&format!(
            "getting lock took {}.{:06} seconds",
            took.as_secs(),
            took.subsec_micros()
        ));
        if got.already_held {
            report(&format!(
                "descriptor {arg} holds the {share} lock already ({})",
                lt.path().display()
            ));
        }
        if got.previous_holder_died {
            report(&format!(
                "the previous holder of the {share} lock on {} died holding it",
                lt.path().display()
            ));
        }
    }
    Ok(code::OK)
}

/// `-u FD`: releases what the description holds (nothing held is a success, as for flock).
fn unlock(lt: &LockTicket, fd: BorrowedFd<'_>, table: &std::path::Path) -> Result<i32, Failure> {
    if std::fs::symlink_metadata(table).is_err() {
        return Ok(code::OK); // no table: nothing can be held
    }
    // Joined, so that the last one out (perhaps us) removes the table once nobody uses it.
    let main = join(lt, false)?;
    let done = lt.unlock_fd(fd);
    leave(main);
    done.map_err(|e| Failure::table("cannot release the lock", &e))?;
    Ok(code::OK)
}

/// Joins the table as a shared owner (creating it); `None` when an exclusive owner or a full
/// registry keeps us out (its owners keep it in place then).
fn join(lt: &LockTicket, verbose: bool) -> Result<Option<MainGuard<'_>>, Failure> {
    match lt.main_lock(Share::Shared) {
        Ok(g) => Ok(Some(g)),
        Err(e @ (Error::MainLockBusy { .. } | Error::RegistryFull { .. })) => {
            if verbose {
                report(&format!("using the table without joining its owners: {e}"));
            }
            Ok(None)
        }
        Err(e) => Err(Failure::table("cannot join the lock table", &e)),
    }
}

fn leave(main: Option<MainGuard<'_>>) {
    if let Some(main) = main
        && let Err(e) = main.unlock()
    {
        report(&Failure::table("cannot leave the lock table", &e).message);
    }
}
